//! Terminals: the console socket the runtime sends a pty master to
//! (`--console-socket`, the fd arrives by SCM_RIGHTS), and window resizing.
//!
//! The socket lives in a private directory (0700) under `$XDG_RUNTIME_DIR`
//! or `/tmp`, removed when the [`ConsoleSocket`] drops.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use tokio::io::Interest;
use tokio::net::UnixListener;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A listening console socket in its own private directory.
pub struct ConsoleSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Creates the directory and binds the socket.
    pub fn new() -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let dir = base.join(format!(
            "wedge-pty-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("pty.sock");
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        Ok(ConsoleSocket {
            dir,
            path,
            listener,
        })
    }

    /// The socket path to pass as `--console-socket`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the runtime's connection and receives the pty master.
    pub async fn receive(&self, timeout: Duration) -> io::Result<OwnedFd> {
        tokio::time::timeout(timeout, self.receive_inner())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no pty master received"))?
    }

    async fn receive_inner(&self) -> io::Result<OwnedFd> {
        let (stream, _) = self.listener.accept().await?;
        loop {
            stream.readable().await?;
            let got = stream.try_io(Interest::READABLE, || {
                let mut data = [0u8; 4096];
                let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut cmsg = RecvAncillaryBuffer::new(&mut space);
                let mut iov = [io::IoSliceMut::new(&mut data)];
                rustix::net::recvmsg(stream.as_fd(), &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC)?;
                for msg in cmsg.drain() {
                    if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
                        if let Some(fd) = fds.next() {
                            return Ok(Some(fd));
                        }
                    }
                }
                Ok(None)
            });
            match got {
                Ok(Some(fd)) => return Ok(fd),
                Ok(None) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "console socket message carried no fd",
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sets a terminal's window size.
pub fn resize(fd: impl AsFd, width: u32, height: u32) -> io::Result<()> {
    let ws = rustix::termios::Winsize {
        ws_row: height.min(u16::MAX as u32) as u16,
        ws_col: width.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(fd, ws)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn receives_an_fd_and_cleans_up() {
        let sock = ConsoleSocket::new().unwrap();
        let dir = sock.dir.clone();
        let path = sock.path().to_path_buf();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let sender = std::thread::spawn(move || {
            use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
            let s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            let fds = [w.as_fd()];
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut cmsg = SendAncillaryBuffer::new(&mut space);
            assert!(cmsg.push(SendAncillaryMessage::ScmRights(&fds)));
            rustix::net::sendmsg(
                &s,
                &[io::IoSlice::new(b"/dev/pts/9")],
                &mut cmsg,
                SendFlags::empty(),
            )
            .unwrap();
        });
        let got = sock.receive(Duration::from_secs(5)).await.unwrap();
        sender.join().unwrap();
        rustix::io::write(&got, b"x").unwrap();
        let mut b = [0u8; 1];
        rustix::io::read(&r, &mut b).unwrap();
        assert_eq!(&b, b"x");
        drop(sock);
        assert!(!dir.exists());
    }

    #[test]
    fn resizes_a_pty() {
        let master =
            rustix::pty::openpt(rustix::pty::OpenptFlags::RDWR | rustix::pty::OpenptFlags::NOCTTY);
        let Ok(master) = master else { return };
        resize(&master, 111, 33).unwrap();
        let ws = rustix::termios::tcgetwinsize(&master).unwrap();
        assert_eq!((ws.ws_col, ws.ws_row), (111, 33));
    }
}
