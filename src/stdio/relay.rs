//! Moves bytes from a pipe to a pipe, FIFO or file without copying them
//! through userspace: `splice(2)` with non-blocking ends, driven by tokio's
//! readiness. Falls back to read/write when the kernel refuses to splice.
//!
//! A relay ends at EOF on its source and then drops both ends, which is how
//! readers of the destination FIFO learn that the output is complete. If the
//! destination breaks (EPIPE), the relay keeps draining the source into
//! nothing, so the container is never blocked on a dead reader.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::pipe::{splice, SpliceFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

const CHUNK: usize = 1 << 20;

/// Where a relay writes.
pub enum Sink {
    /// A pipe or FIFO: non-blocking, polled for space.
    Pollable(OwnedFd),
    /// A regular file (always writable).
    File(OwnedFd),
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
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

/// Relays `src` (a pipe or FIFO read end) into `sink` until EOF. Returns the
/// number of bytes that reached the sink.
pub async fn relay(src: OwnedFd, sink: Sink) -> io::Result<u64> {
    set_nonblocking(&src)?;
    let src = crate::sys::async_fd(src, Interest::READABLE)?;
    let (dst, pollable) = match sink {
        Sink::Pollable(fd) => {
            set_nonblocking(&fd)?;
            (fd, true)
        }
        Sink::File(fd) => (fd, false),
    };
    let dst = if pollable {
        Dst::Poll(crate::sys::async_fd(dst, Interest::WRITABLE)?)
    } else {
        Dst::Plain(dst)
    };
    let mut total = 0u64;
    let mut use_splice = true;
    let mut buf = Vec::new();
    loop {
        let mut ready = src.readable().await?;
        let res = if use_splice {
            splice(
                src.get_ref(),
                None,
                dst.fd(),
                None,
                CHUNK,
                SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
            )
        } else {
            copy_once(src.get_ref(), dst.fd(), &mut buf)
        };
        match res {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                if let Dst::Poll(d) = &dst {
                    if !writable_now(d.get_ref()) {
                        wait_writable(d).await?;
                        continue;
                    }
                }
                ready.clear_ready();
            }
            Err(Errno::INVAL) if use_splice => use_splice = false,
            Err(e) => {
                crate::debug!("relay: destination failed ({e}); discarding the rest");
                drop(ready);
                drain(&src).await;
                return Ok(total);
            }
        }
    }
}

enum Dst {
    Poll(AsyncFd<OwnedFd>),
    Plain(OwnedFd),
}

impl Dst {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Dst::Poll(a) => a.get_ref().as_fd(),
            Dst::Plain(f) => f.as_fd(),
        }
    }
}

async fn wait_writable(d: &AsyncFd<OwnedFd>) -> io::Result<()> {
    loop {
        let mut g = d.writable().await?;
        if writable_now(d.get_ref()) {
            return Ok(());
        }
        g.clear_ready();
    }
}

/// One read/write step for sinks that cannot splice. Partial writes are
/// finished in place (the sink is a file or a pipe with room).
fn copy_once(src: impl AsFd, dst: impl AsFd, buf: &mut Vec<u8>) -> Result<usize, Errno> {
    buf.resize(64 * 1024, 0);
    let n = rustix::io::read(&src, &mut buf[..])?;
    let mut off = 0;
    while off < n {
        match rustix::io::write(&dst, &buf[off..n]) {
            Ok(w) => off += w,
            Err(Errno::AGAIN) | Err(Errno::INTR) => std::thread::yield_now(),
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads and drops everything left in `src` until EOF.
async fn drain(src: &AsyncFd<OwnedFd>) {
    let mut buf = vec![0u8; 64 * 1024];
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
