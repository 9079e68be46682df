//! Moves bytes from a pipe, FIFO or pty to a pipe, FIFO, pty or file without
//! copying them through userspace where the kernel allows: `splice(2)` with
//! non-blocking ends, driven by tokio's readiness. Falls back to read/write
//! when the kernel refuses to splice (ptys, append-only files).
//!
//! A destination that takes nothing for [`STALL`] (a FIFO whose reader is
//! gone or stuck: client killed, containerd down) does not block the
//! container: the relay discards what the container writes, counting it,
//! and resumes as soon as the destination has room again. What was already
//! in the FIFO (up to its 64 KiB buffer) stays there for the next reader.
//!
//! A relay ends at EOF on its source (EIO from a pty master whose slave is
//! closed counts as EOF) and then drops both ends, which is how readers of
//! the destination FIFO learn that the output is complete. If the
//! destination breaks (EPIPE), the relay keeps draining the source into
//! nothing, so the container is never blocked on a dead reader.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::pipe::{splice, SpliceFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

const CHUNK: usize = 1 << 20;
/// How long a destination may take no bytes before output is discarded.
pub const STALL: Duration = Duration::from_secs(10);
const BUF: usize = 64 * 1024;

/// Where a relay writes.
pub enum Sink {
    /// A pipe, FIFO or pty: non-blocking, polled for space; the source
    /// waits for as long as it takes (stdin into a container).
    Pollable(OwnedFd),
    /// Like `Pollable`, for container output: a destination stalled for
    /// [`STALL`] makes the relay discard instead of blocking the container.
    Output(OwnedFd),
    /// A regular file (always writable).
    File(OwnedFd),
}

/// Puts `fd` in non-blocking mode.
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

fn readable_now(fd: impl AsFd) -> bool {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&now)), Ok(n) if n > 0)
}

fn writable_now(fd: impl AsFd) -> bool {
    let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&now)), Ok(n) if n > 0)
        && fds[0].revents().contains(PollFlags::OUT)
}

enum Dst {
    /// Polled destination, and how long it may stall before output is
    /// discarded (`None`: wait as long as it takes).
    Poll(AsyncFd<OwnedFd>, Option<Duration>),
    Plain(OwnedFd),
}

impl Dst {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Dst::Poll(a, _) => a.get_ref().as_fd(),
            Dst::Plain(f) => f.as_fd(),
        }
    }

    /// Waits until the destination can take more bytes; if it stays full
    /// for its stall limit, discards the source's output until it has room.
    /// Returns true when the source ended while discarding.
    async fn wait_or_discard(&self, src: &AsyncFd<OwnedFd>) -> io::Result<bool> {
        let Dst::Poll(_, Some(stall)) = self else {
            return self.wait_writable().await.map(|_| false);
        };
        if tokio::time::timeout(*stall, self.wait_writable())
            .await
            .is_ok()
        {
            return Ok(false);
        }
        let mut dropped = 0u64;
        let mut buf = vec![0u8; BUF];
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                r = src.readable() => {
                    let mut g = r?;
                    match rustix::io::read(src.get_ref(), &mut buf[..]) {
                        Ok(0) => {
                            crate::warn!("output destination stalled: discarded {dropped} bytes");
                            return Ok(true);
                        }
                        Ok(n) => dropped += n as u64,
                        Err(Errno::AGAIN) => g.clear_ready(),
                        Err(Errno::INTR) => {}
                        Err(_) => return Ok(true),
                    }
                }
                _ = tick.tick() => {
                    if writable_now(self.fd()) {
                        break;
                    }
                }
            }
        }
        crate::warn!("output destination stalled for {stall:?}: discarded {dropped} bytes");
        Ok(false)
    }

    /// Waits until the destination can take more bytes.
    async fn wait_writable(&self) -> io::Result<()> {
        let Dst::Poll(d, _) = self else {
            return Ok(());
        };
        loop {
            let mut g = d.writable().await?;
            if writable_now(d.get_ref()) {
                return Ok(());
            }
            g.clear_ready();
        }
    }

    /// Writes all of `data`, waiting for room as needed.
    async fn write_all(&self, mut data: &[u8]) -> Result<(), Errno> {
        while !data.is_empty() {
            match rustix::io::write(self.fd(), data) {
                Ok(n) => data = &data[n..],
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => self.wait_writable().await.map_err(|_| Errno::IO)?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Relays `src` (a pipe, FIFO or pty) into `sink` until EOF. Returns the
/// number of bytes that reached the sink.
pub async fn relay(src: OwnedFd, sink: Sink) -> io::Result<u64> {
    relay_with_stall(src, sink, STALL).await
}

/// [`relay`] with an explicit stall limit for [`Sink::Output`].
pub async fn relay_with_stall(src: OwnedFd, sink: Sink, stall: Duration) -> io::Result<u64> {
    set_nonblocking(&src)?;
    let src = crate::sys::async_fd(src, Interest::READABLE)?;
    let dst = match sink {
        Sink::Pollable(fd) => {
            set_nonblocking(&fd)?;
            Dst::Poll(crate::sys::async_fd(fd, Interest::WRITABLE)?, None)
        }
        Sink::Output(fd) => {
            set_nonblocking(&fd)?;
            Dst::Poll(crate::sys::async_fd(fd, Interest::WRITABLE)?, Some(stall))
        }
        Sink::File(fd) => Dst::Plain(fd),
    };
    let mut total = 0u64;
    let mut use_splice = true;
    let mut buf = Vec::new();
    loop {
        let mut ready = src.readable().await?;
        if use_splice {
            let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
            match splice(src.get_ref(), None, dst.fd(), None, CHUNK, flags) {
                Ok(0) | Err(Errno::IO) => return Ok(total),
                Ok(n) => total += n as u64,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => {
                    // Either side may be the blocked one, and the other end
                    // of each pipe moves concurrently: ask the kernel about
                    // both now rather than inferring one from the other.
                    let room = !matches!(dst, Dst::Poll(..)) || writable_now(dst.fd());
                    if !room {
                        drop(ready);
                        if dst.wait_or_discard(&src).await? {
                            return Ok(total);
                        }
                    } else if !readable_now(src.get_ref()) {
                        ready.clear_ready();
                    }
                }
                Err(Errno::INVAL) => use_splice = false,
                Err(e) => {
                    crate::debug!("relay: destination failed ({e}); discarding the rest");
                    drop(ready);
                    drain(&src).await;
                    return Ok(total);
                }
            }
        } else {
            buf.resize(BUF, 0);
            match rustix::io::read(src.get_ref(), &mut buf[..]) {
                Ok(0) | Err(Errno::IO) => return Ok(total),
                Ok(n) => {
                    drop(ready);
                    if let Err(e) = dst.write_all(&buf[..n]).await {
                        crate::debug!("relay: destination failed ({e}); discarding the rest");
                        drain(&src).await;
                        return Ok(total);
                    }
                    total += n as u64;
                }
                Err(Errno::AGAIN) => ready.clear_ready(),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Reads and drops everything left in `src` until EOF.
async fn drain(src: &AsyncFd<OwnedFd>) {
    let mut buf = vec![0u8; BUF];
    loop {
        let Ok(mut g) = src.readable().await else {
            return;
        };
        match rustix::io::read(src.get_ref(), &mut buf[..]) {
            Ok(0) => return,
            Ok(_) | Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => g.clear_ready(),
            Err(_) => return,
        }
    }
}

/// Reads and drops everything from a pipe until EOF (a reader of last resort).
pub async fn discard(src: OwnedFd) {
    if set_nonblocking(&src).is_err() {
        return;
    }
    if let Ok(a) = crate::sys::async_fd(src, Interest::READABLE) {
        drain(&a).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[tokio::test]
    async fn relays_pipe_to_pipe_and_file_completely() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let (r2, w2) = rustix::pipe::pipe().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || std::fs::File::from(w).write_all(&data).unwrap())
        };
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            std::fs::File::from(r2).read_to_end(&mut v).unwrap();
            v
        });
        let n = relay(r, Sink::Pollable(w2)).await.unwrap();
        writer.join().unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(reader.join().unwrap(), data);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let f = std::fs::File::create(&path).unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || std::fs::File::from(w).write_all(&data).unwrap())
        };
        relay(r, Sink::File(f.into())).await.unwrap();
        writer.join().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[tokio::test]
    async fn falls_back_to_copying_into_an_append_only_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, b"head\n").unwrap();
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::from(w);
            for i in 0..1000 {
                writeln!(f, "line {i}").unwrap();
            }
        });
        relay(r, Sink::File(f.into())).await.unwrap();
        writer.join().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("head\nline 0\n"));
        assert_eq!(text.lines().count(), 1001);
    }

    // A reader draining the destination concurrently, in small reads, must
    // never leave the relay waiting on a full source.
    #[tokio::test]
    async fn concurrent_small_reads_get_every_byte() {
        for round in 0..4 {
            let (r, w) = rustix::pipe::pipe().unwrap();
            let (r2, w2) = rustix::pipe::pipe().unwrap();
            let total = 32 << 20;
            let writer = std::thread::spawn(move || {
                let mut f = std::fs::File::from(w);
                let chunk = vec![3u8; 1 << 20];
                for _ in 0..32 {
                    f.write_all(&chunk).unwrap();
                }
            });
            let reader = std::thread::spawn(move || {
                let mut f = std::fs::File::from(r2);
                let mut buf = vec![0u8; 4096 + round * 1000];
                let mut n = 0;
                loop {
                    match f.read(&mut buf).unwrap() {
                        0 => return n,
                        k => n += k,
                    }
                }
            });
            let relayed = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                relay(r, Sink::Output(w2)),
            )
            .await
            .expect("relay stalled")
            .unwrap();
            writer.join().unwrap();
            assert_eq!(relayed, total as u64);
            assert_eq!(reader.join().unwrap(), total);
        }
    }

    #[tokio::test]
    async fn a_stalled_output_discards_instead_of_blocking_the_writer() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        // A destination nobody reads: it fills up and stays full.
        let (_unread, w2) = rustix::pipe::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::from(w);
            for _ in 0..256 {
                f.write_all(&[1u8; 65536]).unwrap();
            }
        });
        let n = relay_with_stall(r, Sink::Output(w2), Duration::from_millis(300))
            .await
            .unwrap();
        writer.join().unwrap();
        assert!(n <= 65536, "only the destination's buffer was filled: {n}");
    }

    #[tokio::test]
    async fn broken_destination_still_drains_the_source() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let (r2, w2) = rustix::pipe::pipe().unwrap();
        drop(r2);
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::from(w);
            for _ in 0..64 {
                f.write_all(&[7u8; 65536]).unwrap();
            }
        });
        relay(r, Sink::Pollable(w2)).await.unwrap();
        writer.join().unwrap();
    }
}
