//! The runc-compatible CLI driver (runc, crun, youki share this CLI).
//!
//! Every call is `BINARY --root R --log BUNDLE/log.json --log-format json
//! [--systemd-cgroup] [--criu P] <cmd> …`, run with SIGKILL as its parent-death
//! signal and without `NOTIFY_SOCKET`. The child is reaped by the shim's one
//! [`Reaper`]: we subscribe before spawning and wait for our pid. On failure
//! the error text is the last `"level":"error"` message the runtime appended
//! to its json log during this call.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use tokio::io::AsyncReadExt;

use super::{BoxFuture, CreateOpts, ProcessStdio, Result, Runtime, RuntimeConfig, RuntimeError};
use crate::reaper::Reaper;

/// A runtime CLI bound to one container's settings.
pub struct Runc {
    cfg: RuntimeConfig,
    reaper: Arc<Reaper>,
}

struct Output {
    stdout: Vec<u8>,
}

fn stdio_or_null(fd: Option<OwnedFd>) -> Stdio {
    fd.map(Stdio::from).unwrap_or_else(Stdio::null)
}

impl Runc {
    /// A driver for `cfg`, reaped through `reaper`.
    pub fn new(cfg: RuntimeConfig, reaper: Arc<Reaper>) -> Self {
        Runc { cfg, reaper }
    }

    /// The global flags that precede every subcommand.
    pub fn global_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--root".into(),
            self.cfg.root.clone().into(),
            "--log".into(),
            self.cfg.log.clone().into(),
            "--log-format".into(),
            "json".into(),
        ];
        if self.cfg.systemd_cgroup {
            a.push("--systemd-cgroup".into());
        }
        if !self.cfg.criu.is_empty() {
            a.push("--criu".into());
            a.push(self.cfg.criu.clone().into());
        }
        a
    }

    async fn run(&self, args: Vec<OsString>, stdio: Option<ProcessStdio>) -> Result<Output> {
        let command = args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let log_start = std::fs::metadata(&self.cfg.log)
            .map(|m| m.len())
            .unwrap_or(0);
        let mut cmd = Command::new(&self.cfg.binary);
        cmd.args(self.global_args())
            .args(&args)
            .env_remove("NOTIFY_SOCKET");
        let capture = stdio.is_none();
        match stdio {
            Some(s) => {
                cmd.stdin(stdio_or_null(s.stdin))
                    .stdout(stdio_or_null(s.stdout))
                    .stderr(stdio_or_null(s.stderr));
            }
            None => {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
            }
        }
        crate::sys::kill_on_parent_death(&mut cmd);
        // Subscribe before spawning so the exit cannot be reaped unseen.
        let mut exits = self.reaper.subscribe();
        let mut child = cmd.spawn().map_err(|err| RuntimeError::Spawn {
            binary: self.cfg.binary.clone(),
            err,
        })?;
        // The Command holds copies of the stdio fds; drop them now so the
        // container's pipes see EOF when the container closes its ends.
        drop(cmd);
        let pid = child.id() as i32;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        if capture {
            let so = child.stdout.take().map(OwnedFd::from);
            let se = child.stderr.take().map(OwnedFd::from);
            let (a, b) = tokio::join!(read_all(so), read_all(se));
            out = a;
            err = b;
        }
        let exit = exits.wait_for(pid).await;
        if exit.status == 0 {
            return Ok(Output { stdout: out });
        }
        let mut message = last_error(&self.cfg.log, log_start).unwrap_or_default();
        if message.is_empty() {
            message = String::from_utf8_lossy(&err).trim().to_string();
        }
        if message.is_empty() {
            message = format!(
                "{} {} exited with status {}",
                self.cfg.binary, command, exit.status
            );
        }
        Err(RuntimeError::Failed {
            command,
            status: exit.status,
            message,
        })
    }
}

/// Reads a pipe to EOF without blocking the runtime thread.
async fn read_all(fd: Option<OwnedFd>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(fd) = fd {
        if let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
            let _ = rx.read_to_end(&mut buf).await;
        }
    }
    buf
}

/// The last error message the runtime wrote to its json log after `from`.
pub fn last_error(log: &Path, from: u64) -> Option<String> {
    let mut f = std::fs::File::open(log).ok()?;
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut s = String::new();
    f.read_to_string(&mut s).ok()?;
    s.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("level").and_then(|l| l.as_str()) == Some("error"))
        .filter_map(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_string))
        .next_back()
}

impl Runtime for Runc {
    fn create(&self, opts: CreateOpts, stdio: ProcessStdio) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut a: Vec<OsString> = vec![
                "create".into(),
                "--bundle".into(),
                opts.bundle.into(),
                "--pid-file".into(),
                opts.pid_file.into(),
            ];
            if opts.no_pivot {
                a.push("--no-pivot".into());
            }
            if opts.no_new_keyring {
                a.push("--no-new-keyring".into());
            }
            a.push(opts.id.into());
            self.run(a, Some(stdio)).await.map(|_| ())
        })
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.run(vec!["start".into(), id.into()], None)
                .await
                .map(|_| ())
        })
    }

    fn kill<'a>(&'a self, id: &'a str, signal: u32, all: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut a: Vec<OsString> = vec!["kill".into()];
            if all {
                a.push("--all".into());
            }
            a.push(id.into());
            a.push(signal.to_string().into());
            self.run(a, None).await.map(|_| ())
        })
    }

    fn delete<'a>(&'a self, id: &'a str, force: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut a: Vec<OsString> = vec!["delete".into()];
            if force {
                a.push("--force".into());
            }
            a.push(id.into());
            self.run(a, None).await.map(|_| ())
        })
    }

    fn ps<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<u32>>> {
        Box::pin(async move {
            let out = self
                .run(
                    vec!["ps".into(), "--format".into(), "json".into(), id.into()],
                    None,
                )
                .await?;
            parse_ps(&out.stdout)
        })
    }
}

/// Parses `ps --format json` output: a JSON array of pids (or `null`).
pub fn parse_ps(out: &[u8]) -> Result<Vec<u32>> {
    let v: Option<Vec<u32>> = serde_json::from_slice(out)
        .map_err(|e| RuntimeError::Output(format!("runtime ps output: {e}")))?;
    Ok(v.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_args_match_the_go_shim() {
        let r = Runc::new(
            RuntimeConfig {
                binary: "runc".into(),
                root: "/run/containerd/runc/ns".into(),
                log: "/b/log.json".into(),
                systemd_cgroup: true,
                criu: "/usr/sbin/criu".into(),
            },
            Reaper::new(),
        );
        let got: Vec<String> = r
            .global_args()
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            got,
            [
                "--root",
                "/run/containerd/runc/ns",
                "--log",
                "/b/log.json",
                "--log-format",
                "json",
                "--systemd-cgroup",
                "--criu",
                "/usr/sbin/criu"
            ]
        );
    }

    #[test]
    fn last_error_reads_only_new_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.json");
        std::fs::write(&p, "{\"level\":\"error\",\"msg\":\"old\"}\n").unwrap();
        let start = std::fs::metadata(&p).unwrap().len();
        assert_eq!(last_error(&p, start), None);
        let mut s = std::fs::read_to_string(&p).unwrap();
        s.push_str("{\"level\":\"info\",\"msg\":\"x\"}\n{\"level\":\"error\",\"msg\":\"container not running\"}\n");
        std::fs::write(&p, s).unwrap();
        assert_eq!(
            last_error(&p, start).as_deref(),
            Some("container not running")
        );
        assert_eq!(last_error(&p, 0).as_deref(), Some("container not running"));
    }

    #[test]
    fn parses_ps_output() {
        assert_eq!(parse_ps(b"[1,22]").unwrap(), vec![1, 22]);
        assert_eq!(parse_ps(b"null").unwrap(), Vec::<u32>::new());
        assert!(parse_ps(b"oops").is_err());
    }
}
