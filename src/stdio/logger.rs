//! `binary://` logging drivers, with containerd's protocol: the logger is
//! started with only `CONTAINER_ID` and `CONTAINER_NAMESPACE` in its
//! environment, the container's stdout on fd 3, stderr on fd 4 and a ready
//! pipe on fd 5; the shim waits until it writes a byte to fd 5 or, for a
//! `binary://` logger, closes it (a `binary-v2://` logger that closes it
//! without a byte has failed, as containerd 2.2+ defines the scheme).
//! On close: EOF on its pipes, then SIGTERM, then SIGKILL after 12 s.
//!
//! The shim keeps its own read end of both pipes: if the logger dies, the
//! shim drains them so the container neither blocks nor gets SIGPIPE.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{kill_process, Pid, Signal};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::Ready;
use crate::reaper::Reaper;

/// How long the logger may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Grace after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(12);

/// A running logger process.
pub struct Logger {
    pid: i32,
    exited: watch::Receiver<bool>,
}

/// Parses the query of a `binary://` URI into argv: `k v` pairs in order.
pub fn args_from_query(query: &str) -> Vec<String> {
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        args.push(super::percent_decode(k));
        if !v.is_empty() {
            args.push(super::percent_decode(v));
        }
    }
    args
}

impl Logger {
    /// Starts the logger with the read ends of the container's stdout and
    /// stderr pipes and waits until it is ready.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        path: &PathBuf,
        args: &[String],
        ready_when: Ready,
        namespace: &str,
        id: &str,
        stdout_r: &OwnedFd,
        stderr_r: &OwnedFd,
        reaper: &Arc<Reaper>,
    ) -> io::Result<Logger> {
        let (ready_r, ready_w) = pipe_with(PipeFlags::CLOEXEC)?;
        let mut cmd = Command::new(path);
        cmd.args(args)
            .env_clear()
            .env("CONTAINER_ID", id)
            .env("CONTAINER_NAMESPACE", namespace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        crate::sys::pass_fds(&mut cmd, &[(stdout_r, 3), (stderr_r, 4), (&ready_w, 5)]);
        crate::sys::nofile::restore_in(&mut cmd);
        let mut exits = reaper.subscribe();
        let child = cmd.spawn()?;
        drop(cmd);
        drop(ready_w);
        let pid = child.id() as i32;
        drop(child);
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let e = exits.wait_for(pid).await;
            crate::debug!("logger {pid} exited with {}", e.status);
            let _ = tx.send(true);
        });
        let logger = Logger { pid, exited: rx };
        let mut ready = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r)?;
        let mut b = [0u8; 1];
        match tokio::time::timeout(READY_TIMEOUT, ready.read(&mut b)).await {
            Ok(Ok(0)) if ready_when == Ready::Byte => {
                logger.kill();
                Err(io::Error::other(
                    "logging binary did not call ready (it may have crashed or exited prematurely)",
                ))
            }
            Ok(Ok(_)) => Ok(logger),
            Ok(Err(e)) => {
                logger.kill();
                Err(e)
            }
            Err(_) => {
                logger.kill();
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "logger did not become ready",
                ))
            }
        }
    }

    /// A logger that was started by a previous image of this shim (an
    /// upgrade in place): its exit is learned from `reaper` from now on.
    pub fn adopt(pid: i32, reaper: &Arc<Reaper>) -> Logger {
        let mut exits = reaper.subscribe();
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let e = exits.wait_for(pid).await;
            crate::debug!("logger {pid} exited with {}", e.status);
            let _ = tx.send(true);
        });
        Logger { pid, exited: rx }
    }

    /// The logger's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A receiver that turns true when the logger has exited.
    pub fn exited(&self) -> watch::Receiver<bool> {
        self.exited.clone()
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = Pid::from_raw(self.pid) {
            if !*self.exited.borrow() {
                let _ = kill_process(pid, sig);
            }
        }
    }

    fn kill(&self) {
        self.signal(Signal::KILL);
    }

    async fn wait(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.exited.wait_for(|e| *e))
            .await
            .is_ok()
    }

    /// Ends the logger: waits `grace` for it to exit after its input ended,
    /// then SIGTERM, then SIGKILL after 12 s.
    pub async fn stop(mut self, grace: Duration) {
        if self.wait(grace).await {
            return;
        }
        self.signal(Signal::TERM);
        if self.wait(TERM_GRACE).await {
            return;
        }
        self.kill();
        self.wait(Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An executable `#!/bin/sh` script `name` in `dir`.
    fn script(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    }

    /// Starts `script` as container `c`'s logger on the read ends `r`.
    async fn start(
        script: &PathBuf,
        ready: Ready,
        r: &(OwnedFd, OwnedFd),
        reaper: &Arc<Reaper>,
    ) -> io::Result<Logger> {
        Logger::start(script, &[], ready, "ns", "c", &r.0, &r.1, reaper).await
    }

    // Reaps with waitpid(-1): run under nextest (one process per test).
    #[tokio::test]
    async fn stop_sends_sigterm_to_a_logger_that_outlives_its_input() {
        let reaper = Reaper::new();
        tokio::spawn(reaper.clone().run());
        let d = tempfile::tempdir().unwrap();
        let mark = d.path().join("term");
        let script = script(
            d.path(),
            "logger.sh",
            &format!(
                "trap 'echo term > {}; exit 0' TERM\nexec 5>&-\nwhile :; do /bin/sleep 0.05; done\n",
                mark.display()
            ),
        );
        let (r1, w1) = pipe_with(PipeFlags::CLOEXEC).unwrap();
        let (r2, w2) = pipe_with(PipeFlags::CLOEXEC).unwrap();
        let logger = start(&script, Ready::ByteOrClose, &(r1, r2), &reaper)
            .await
            .unwrap();
        let exited = logger.exited();
        drop((w1, w2));
        logger.stop(Duration::from_millis(200)).await;
        assert!(*exited.borrow(), "the logger is gone");
        assert_eq!(
            std::fs::read_to_string(&mark).unwrap(),
            "term\n",
            "it got SIGTERM, not SIGKILL"
        );
    }

    // Reaps with waitpid(-1): run under nextest (one process per test).
    #[tokio::test]
    async fn a_binary_v2_logger_is_ready_only_with_a_byte() {
        let reaper = Reaper::new();
        tokio::spawn(reaper.clone().run());
        let d = tempfile::tempdir().unwrap();
        // Closes its ready pipe without a byte, then lives on.
        let closes = script(d.path(), "closes.sh", "exec 5>&-\nexec /bin/sleep 30\n");
        // Writes the byte, closes the pipe, then lives on.
        let says = script(
            d.path(),
            "says.sh",
            "printf r >&5\nexec 5>&-\nexec /bin/sleep 30\n",
        );
        let (r1, _w1) = pipe_with(PipeFlags::CLOEXEC).unwrap();
        let (r2, _w2) = pipe_with(PipeFlags::CLOEXEC).unwrap();
        let r = (r1, r2);

        let err = start(&closes, Ready::Byte, &r, &reaper)
            .await
            .err()
            .expect("a closed pipe is not ready under binary-v2");
        assert_eq!(
            err.to_string(),
            "logging binary did not call ready (it may have crashed or exited prematurely)"
        );
        // binary:// takes the same close as ready.
        let legacy = start(&closes, Ready::ByteOrClose, &r, &reaper)
            .await
            .unwrap();
        let v2 = start(&says, Ready::Byte, &r, &reaper).await.unwrap();
        for l in [&legacy, &v2] {
            l.kill();
            let mut exited = l.exited();
            tokio::time::timeout(Duration::from_secs(10), exited.wait_for(|e| *e))
                .await
                .expect("killed logger reaped")
                .unwrap();
        }
    }

    #[test]
    fn query_to_args() {
        assert_eq!(
            args_from_query("id=abc&flag&path=%2Fvar%2Flog"),
            ["id", "abc", "flag", "path", "/var/log"]
        );
        assert!(args_from_query("").is_empty());
    }
}
