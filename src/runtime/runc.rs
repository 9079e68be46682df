//! The runc-compatible CLI driver (runc, crun, youki share this CLI).
//!
//! Every call is `BINARY --root R --log BUNDLE/log.json --log-format json
//! [--systemd-cgroup] [--criu P] <cmd> …`, run with SIGKILL as its parent-death
//! signal and without `NOTIFY_SOCKET`. The child is reaped by the shim's one
//! [`Reaper`]: we subscribe before spawning and wait for our pid. On failure
//! the error text is the last `"level":"error"` message the runtime appended
//! to its json log during this call.
//!
//! Argument lists are built by pure functions (`*_args`) so they are tested
//! without running anything.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::reaper::Reaper;

/// A runtime CLI bound to one container's settings.
pub struct Runc {
    cfg: RuntimeConfig,
    reaper: Arc<Reaper>,
}

/// What the runtime process's stdio is.
enum Io {
    /// Capture stdout and stderr (for output and error text).
    Capture,
    /// Capture, and feed these bytes on stdin.
    Input(Vec<u8>),
    /// Hand these fds to the runtime (they become the container's stdio).
    Process(ProcessStdio),
}

struct Output {
    stdout: Vec<u8>,
}

fn stdio_or_null(fd: Option<OwnedFd>) -> Stdio {
    fd.map(Stdio::from).unwrap_or_else(Stdio::null)
}

fn push_console(a: &mut Vec<OsString>, console: Option<PathBuf>) {
    if let Some(s) = console {
        a.push("--console-socket".into());
        a.push(s.into());
    }
}

/// `create` arguments.
pub fn create_args(o: CreateOpts) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "create".into(),
        "--bundle".into(),
        o.bundle.into(),
        "--pid-file".into(),
        o.pid_file.into(),
    ];
    push_console(&mut a, o.console_socket);
    if o.no_pivot {
        a.push("--no-pivot".into());
    }
    if o.no_new_keyring {
        a.push("--no-new-keyring".into());
    }
    a.push(o.id.into());
    a
}

/// `exec` arguments.
pub fn exec_args(o: ExecOpts) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "exec".into(),
        "--process".into(),
        o.process.into(),
        "--detach".into(),
        "--pid-file".into(),
        o.pid_file.into(),
    ];
    push_console(&mut a, o.console_socket);
    a.push(o.id.into());
    a
}

/// `checkpoint` arguments.
pub fn checkpoint_args(id: &str, o: CheckpointOpts) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "checkpoint".into(),
        "--image-path".into(),
        o.image_path.into(),
        "--work-path".into(),
        o.work_path.into(),
    ];
    if !o.exit {
        a.push("--leave-running".into());
    }
    if o.open_tcp {
        a.push("--tcp-established".into());
    }
    if o.external_unix_sockets {
        a.push("--ext-unix-sk".into());
    }
    if o.terminal {
        a.push("--shell-job".into());
    }
    if o.file_locks {
        a.push("--file-locks".into());
    }
    for ns in o.empty_namespaces {
        a.push("--empty-ns".into());
        a.push(ns.into());
    }
    if !o.cgroups_mode.is_empty() {
        a.push("--manage-cgroups-mode".into());
        a.push(o.cgroups_mode.into());
    }
    a.push(id.into());
    a
}

/// `restore` arguments.
pub fn restore_args(o: RestoreOpts) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "restore".into(),
        "--image-path".into(),
        o.image_path.into(),
        "--work-path".into(),
        o.work_path.into(),
    ];
    if let Some(p) = o.parent_path {
        a.push("--parent-path".into());
        a.push(p.into());
    }
    a.push("--pid-file".into());
    a.push(o.pid_file.into());
    a.push("--detach".into());
    a.push("--no-subreaper".into());
    if o.no_pivot {
        a.push("--no-pivot".into());
    }
    push_console(&mut a, o.console_socket);
    a.push("--bundle".into());
    a.push(o.bundle.into());
    a.push(o.id.into());
    a
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

    async fn run(&self, args: Vec<OsString>, io: Io) -> Result<Output> {
        let command = args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let log_start = std::fs::metadata(&self.cfg.log)
            .map(|m| m.len())
            .unwrap_or(0);
        let mut global = self.global_args();
        // A bundle containerd removed already (a delete retried after the
        // task went) has nowhere for the log: the runtime says it on stderr.
        if self.cfg.log.parent().is_some_and(|b| !b.exists()) {
            global.drain(2..4);
        }
        let mut cmd = Command::new(&self.cfg.binary);
        cmd.args(global).args(&args).env_remove("NOTIFY_SOCKET");
        // In the container's bundle: a grouped shim's own directory is the
        // first container's bundle, gone once that one is deleted (a shell
        // wrapper around the runtime then says so into the container's
        // output, which is its stdio at create).
        if let Some(bundle) = self.cfg.log.parent().filter(|b| b.is_dir()) {
            cmd.current_dir(bundle);
        }
        let input = match io {
            Io::Process(s) => {
                cmd.stdin(stdio_or_null(s.stdin))
                    .stdout(stdio_or_null(s.stdout))
                    .stderr(stdio_or_null(s.stderr));
                None
            }
            Io::Capture | Io::Input(_) => {
                let input = match io {
                    Io::Input(data) => {
                        cmd.stdin(Stdio::piped());
                        Some(data)
                    }
                    _ => {
                        cmd.stdin(Stdio::null());
                        None
                    }
                };
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
                input
            }
        };
        crate::sys::kill_on_parent_death(&mut cmd);
        crate::sys::nofile::restore_in(&mut cmd);
        // Its own process group: an abandoned call is killed with everything
        // it started (a wrapper script's children too).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
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
        // If the caller gives up (request deadline, client gone), the runtime
        // process must not outlive the call: kill it; the reaper collects it.
        let mut guard = KillOnDrop(pid);
        let stdin = child.stdin.take().map(OwnedFd::from);
        let so = child.stdout.take().map(OwnedFd::from);
        let se = child.stderr.take().map(OwnedFd::from);
        drop(child);
        let work = async {
            let (_, out, err) = tokio::join!(write_all(stdin, input), read_all(so), read_all(se));
            (out, err, exits.wait_for(pid).await)
        };
        // The request's deadline bounds the runtime: past it, kill and report.
        let now = tokio::time::Instant::now();
        let deadline =
            crate::ttrpc::deadline().map(|at| if at > now { at } else { now + CLEANUP_GRACE });
        let done = match deadline {
            Some(at) => tokio::time::timeout_at(at, work).await.ok(),
            None => Some(work.await),
        };
        let Some((out, err, exit)) = done else {
            kill_call(pid);
            exits.wait_for(pid).await;
            guard.0 = 0;
            return Err(RuntimeError::Failed {
                command,
                status: 137,
                message: format!(
                    "{} did not finish before the request deadline",
                    self.cfg.binary
                ),
            });
        };
        guard.0 = 0;
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

    async fn simple(&self, args: Vec<OsString>) -> Result<()> {
        self.run(args, Io::Capture).await.map(|_| ())
    }
}

/// Kills a runtime call: its process group (the runtime and whatever it
/// started that is still in the group), and the process itself.
fn kill_call(pid: i32) {
    let _ = crate::sys::kill_process_group(pid, libc::SIGKILL);
    let _ = crate::sys::send_signal(pid, libc::SIGKILL);
}

/// Kills a runtime call that was abandoned before it exited (set to 0 once
/// the exit was seen).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0 > 0 {
            crate::warn!(
                "runtime call abandoned; killing pid {} and its group",
                self.0
            );
            kill_call(self.0);
        }
    }
}

/// Grace for runtime calls made after the request's deadline has passed
/// (cleanup after a timed-out call).
const CLEANUP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes `data` into a pipe, then closes it.
async fn write_all(fd: Option<OwnedFd>, data: Option<Vec<u8>>) {
    if let (Some(fd), Some(data)) = (fd, data) {
        if let Ok(mut tx) = tokio::net::unix::pipe::Sender::from_owned_fd(fd) {
            let _ = tx.write_all(&data).await;
        }
    }
}

/// Reads a pipe to EOF without blocking the runtime thread.
pub(crate) async fn read_all(fd: Option<OwnedFd>) -> Vec<u8> {
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
            self.run(create_args(opts), Io::Process(stdio))
                .await
                .map(|_| ())
        })
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.simple(vec!["start".into(), id.into()]))
    }

    fn exec(&self, opts: ExecOpts, stdio: ProcessStdio) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.run(exec_args(opts), Io::Process(stdio))
                .await
                .map(|_| ())
        })
    }

    fn kill<'a>(&'a self, id: &'a str, signal: u32, all: bool) -> BoxFuture<'a, Result<()>> {
        let mut a: Vec<OsString> = vec!["kill".into()];
        if all {
            a.push("--all".into());
        }
        a.push(id.into());
        a.push(signal.to_string().into());
        Box::pin(self.simple(a))
    }

    fn delete<'a>(&'a self, id: &'a str, force: bool) -> BoxFuture<'a, Result<()>> {
        let mut a: Vec<OsString> = vec!["delete".into()];
        if force {
            a.push("--force".into());
        }
        a.push(id.into());
        Box::pin(self.simple(a))
    }

    fn ps<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<u32>>> {
        Box::pin(async move {
            let out = self
                .run(
                    vec!["ps".into(), "--format".into(), "json".into(), id.into()],
                    Io::Capture,
                )
                .await?;
            parse_ps(&out.stdout)
        })
    }

    fn pause<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.simple(vec!["pause".into(), id.into()]))
    }

    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.simple(vec!["resume".into(), id.into()]))
    }

    fn update<'a>(&'a self, id: &'a str, resources: Vec<u8>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let a = vec!["update".into(), "--resources".into(), "-".into(), id.into()];
            self.run(a, Io::Input(resources)).await.map(|_| ())
        })
    }

    fn checkpoint<'a>(&'a self, id: &'a str, opts: CheckpointOpts) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.simple(checkpoint_args(id, opts)))
    }

    fn restore(&self, opts: RestoreOpts, stdio: ProcessStdio) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.run(restore_args(opts), Io::Process(stdio))
                .await
                .map(|_| ())
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

    fn strs(v: Vec<OsString>) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

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
        assert_eq!(
            strs(r.global_args()),
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
    fn command_lines() {
        let c = create_args(CreateOpts {
            id: "c".into(),
            bundle: "/b".into(),
            pid_file: "/b/init.pid".into(),
            no_pivot: true,
            no_new_keyring: true,
            console_socket: Some("/tmp/p/pty.sock".into()),
        });
        assert_eq!(
            strs(c).join(" "),
            "create --bundle /b --pid-file /b/init.pid --console-socket /tmp/p/pty.sock --no-pivot --no-new-keyring c"
        );
        let e = exec_args(ExecOpts {
            id: "c".into(),
            process: "/b/.e1.json".into(),
            pid_file: "/b/e1.pid".into(),
            console_socket: None,
        });
        assert_eq!(
            strs(e).join(" "),
            "exec --process /b/.e1.json --detach --pid-file /b/e1.pid c"
        );
    }

    #[test]
    fn checkpoint_and_restore_command_lines() {
        let all = CheckpointOpts {
            image_path: "/img".into(),
            work_path: "/work".into(),
            exit: false,
            open_tcp: true,
            external_unix_sockets: true,
            terminal: true,
            file_locks: true,
            empty_namespaces: vec!["network".into(), "ipc".into()],
            cgroups_mode: "soft".into(),
        };
        assert_eq!(
            strs(checkpoint_args("c", all)).join(" "),
            "checkpoint --image-path /img --work-path /work --leave-running --tcp-established \
             --ext-unix-sk --shell-job --file-locks --empty-ns network --empty-ns ipc \
             --manage-cgroups-mode soft c"
        );
        let exit = CheckpointOpts {
            image_path: "/img".into(),
            work_path: "/work".into(),
            exit: true,
            ..Default::default()
        };
        assert_eq!(
            strs(checkpoint_args("c", exit)).join(" "),
            "checkpoint --image-path /img --work-path /work c"
        );
        let r = restore_args(RestoreOpts {
            id: "c".into(),
            bundle: "/b".into(),
            image_path: "/img".into(),
            work_path: "/b/work".into(),
            parent_path: Some("/parent".into()),
            pid_file: "/b/init.pid".into(),
            no_pivot: true,
            console_socket: Some("/s".into()),
        });
        assert_eq!(
            strs(r).join(" "),
            "restore --image-path /img --work-path /b/work --parent-path /parent --pid-file /b/init.pid \
             --detach --no-subreaper --no-pivot --console-socket /s --bundle /b c"
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
