//! Process stdio: parses the stdio URIs containerd sends, creates the pipes
//! (or the terminal) the container writes into, and runs the relays that
//! carry the bytes to their destination.
//!
//! | URI | container side | shim side |
//! |---|---|---|
//! | all empty | `/dev/null` | nothing |
//! | plain path to a FIFO | a pipe per stream | splice relay into the FIFO, paced by its reader; a reader that takes nothing for a second sends the output to a bounded spill ([`spill`]) that is replayed when it reads again; the shim also keeps a reader open so a container never gets SIGPIPE when the client leaves |
//! | plain path to a regular file | a pipe per stream | relay appending to the file |
//! | `file:///path` | a pipe per stream | relay into the file (created 0644 with its directory) |
//! | `binary:///path?k=v` | a pipe per stream | the pipes' read ends go to a logger process ([`logger`]) |
//! | terminal | a pty (via [`console`]) | pty master → stdout destination; stdin → master; stderr unused |
//! | other schemes | — | refused with a clear error |
//!
//! A process's exit is reported only once what it wrote has been delivered
//! ([`delivery`]): each output relay counts what it moved, and the exit path
//! waits (bounded) until the destination has it.
//!
//! stdin (a FIFO) is relayed into a pipe (or the pty); the shim holds a writer
//! on the stdin FIFO (the CloseIO handle) so reads wait for data instead of
//! seeing EOF before the client connects.

pub mod console;
pub mod delivery;
pub mod logger;
pub mod relay;
pub mod spill;

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::fs::{Gid, Uid};
use rustix::pipe::{pipe_with, PipeFlags};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::reaper::Reaper;
use crate::runtime::ProcessStdio;
use console::ConsoleSocket;
pub use delivery::{Outlet, Undelivered};
use logger::Logger;
use relay::{Flow, Outcome, PauseSignal, Phase, RelayState, Sink};
pub use spill::SpillPolicy;

/// Errors setting up stdio.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// The URI scheme is not one this shim relays.
    #[error("unknown STDIO scheme {0}")]
    UnknownScheme(String),
    /// The URI cannot be used (e.g. `file://` without a path).
    #[error("invalid STDIO uri {0:?}")]
    BadUri(String),
    /// Opening or creating a stream failed.
    #[error("{}: {}", .0, crate::error::OsText(.1))]
    Io(String, std::io::Error),
}

/// Where one stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Not connected.
    Null,
    /// A FIFO the client reads (or, for stdin, writes), or an existing file.
    Fifo(PathBuf),
    /// A file the shim appends to, created if needed.
    File(PathBuf),
    /// A logger binary, its arguments, and how it reports ready.
    Binary(PathBuf, Vec<String>, Ready),
}

/// How a logger binary says it is ready (the URI's scheme).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// `binary://`: a byte on its ready pipe, or the pipe closed.
    ByteOrClose,
    /// `binary-v2://` (containerd 2.2+): a byte on its ready pipe; a pipe
    /// closed without one means the logger failed.
    Byte,
}

/// The three stdio URIs of a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StdioSpec {
    /// stdin URI.
    pub stdin: String,
    /// stdout URI.
    pub stdout: String,
    /// stderr URI.
    pub stderr: String,
    /// Whether the process has a terminal.
    pub terminal: bool,
}

/// Parses one stdio URI.
pub fn parse_target(uri: &str) -> Result<Target, StdioError> {
    if uri.is_empty() {
        return Ok(Target::Null);
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Ok(Target::Fifo(PathBuf::from(uri)));
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, q.split('#').next().unwrap_or("")),
        None => (rest.split('#').next().unwrap_or(""), ""),
    };
    let absolute = |p: &str| {
        if p.starts_with('/') {
            Ok(PathBuf::from(percent_decode(p)))
        } else {
            Err(StdioError::BadUri(uri.to_string()))
        }
    };
    match scheme {
        "fifo" => Ok(Target::Fifo(absolute(path)?)),
        "file" => Ok(Target::File(absolute(path)?)),
        "binary" | "binary-v2" => Ok(Target::Binary(
            absolute(path)?,
            logger::args_from_query(query),
            if scheme == "binary" {
                Ready::ByteOrClose
            } else {
                Ready::Byte
            },
        )),
        other => Err(StdioError::UnknownScheme(other.to_string())),
    }
}

/// Decodes `%XX` escapes.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn io_err(what: &Path) -> impl FnOnce(std::io::Error) -> StdioError + '_ {
    move |e| StdioError::Io(what.display().to_string(), e)
}

fn open_fifo(path: &Path, write: bool) -> Result<OwnedFd, StdioError> {
    let mut o = OpenOptions::new();
    if write {
        o.write(true);
    } else {
        o.read(true);
    }
    o.custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map(OwnedFd::from)
        .map_err(io_err(path))
}

/// Whether `path` is a FIFO; a missing path is an error.
fn is_fifo(path: &Path) -> Result<bool, StdioError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    Ok(meta.file_type().is_fifo())
}

/// Opens a log file positioned at its end. `create` (for `file://`) makes
/// the file and its directory; a plain path must already exist.
fn open_log_file(path: &Path, create: bool) -> Result<OwnedFd, StdioError> {
    if let (true, Some(dir)) = (create, path.parent()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io_err(dir))?;
    }
    // Not O_APPEND: splice refuses append-mode files. One open file
    // description (shared offset) serves both streams, starting at the end.
    let f = OpenOptions::new()
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .map_err(io_err(path))?;
    let fd = OwnedFd::from(f);
    rustix::fs::seek(&fd, rustix::fs::SeekFrom::End(0))
        .map_err(|e| StdioError::Io(path.display().to_string(), e.into()))?;
    Ok(fd)
}

/// Capacity asked for the container's stdio pipes: fewer, larger splices
/// and wake-ups under heavy output. The kernel allocates pages only as data
/// arrives, so an idle pipe costs nothing more.
const PIPE_SIZE: usize = 1 << 20;

fn pipe() -> Result<(OwnedFd, OwnedFd), StdioError> {
    let (r, w) =
        pipe_with(PipeFlags::CLOEXEC).map_err(|e| StdioError::Io("pipe".into(), e.into()))?;
    // Best effort: above /proc/sys/fs/pipe-max-size an unprivileged shim
    // keeps the default.
    let _ = rustix::pipe::fcntl_setpipe_size(&w, PIPE_SIZE);
    Ok((r, w))
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, StdioError> {
    fd.try_clone().map_err(|e| StdioError::Io("dup".into(), e))
}

/// A relay destination plus the fd that must live as long as it (the
/// shim's own reader on an output FIFO).
struct Dest {
    sink: Sink,
    keeper: Option<OwnedFd>,
}

/// Opens the destination of an output stream that is not a logger.
fn open_dest(
    target: &Target,
    shared: &mut Option<(PathBuf, OwnedFd)>,
    spill: SpillPolicy,
) -> Result<Option<Dest>, StdioError> {
    let path = match target {
        Target::Null | Target::Binary(..) => return Ok(None),
        Target::Fifo(p) | Target::File(p) => p,
    };
    if matches!(target, Target::Fifo(_)) && is_fifo(path)? {
        // Our own reader first: it keeps the FIFO open for writing (no
        // ENXIO, no SIGPIPE) whether or not a client reads.
        let keeper = open_fifo(path, false)?;
        let w = open_fifo(path, true)?;
        return Ok(Some(Dest {
            sink: Sink::Output(w, spill),
            keeper: Some(keeper),
        }));
    }
    let fd = match shared {
        Some((p, fd)) if p == path => dup(fd)?,
        _ => {
            let fd = open_log_file(path, matches!(target, Target::File(_)))?;
            *shared = Some((path.clone(), dup(&fd)?));
            fd
        }
    };
    Ok(Some(Dest {
        sink: Sink::File(fd),
        keeper: None,
    }))
}

/// What a process needs before the runtime call, and what to hand it.
pub struct Prepared {
    /// The shim side: relays already running (or waiting for the console).
    pub io: ProcessIo,
    /// The container side, for the runtime.
    pub stdio: ProcessStdio,
    /// The console socket for `--console-socket`, for a terminal.
    pub console: Option<ConsoleSocket>,
}

/// Identity passed to logger binaries.
pub struct Owner<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Container id.
    pub id: &'a str,
    /// The reaper (to learn when a logger exits).
    pub reaper: &'a Arc<Reaper>,
    /// Owner of the container ends of pipes (IoUid/IoGid).
    pub uid: u32,
    /// Group of the container ends of pipes.
    pub gid: u32,
    /// Where output spills while a FIFO reader is stalled, and how much.
    pub spill: SpillPolicy,
}

type RelayTask = JoinHandle<std::io::Result<Outcome>>;

/// One output stream: its relay and what the exit path looks at.
struct Output {
    outlet: Arc<Outlet>,
    task: RelayTask,
}

/// A logger process with the shim's own read ends of its pipes (drained by
/// `watch` if the logger dies).
struct LoggerIo {
    logger: Logger,
    pipes: [Arc<OwnedFd>; 2],
    watch: JoinHandle<()>,
}

/// The shim side of a process's stdio: running relays, the stdin handle,
/// the console, and the logger.
#[derive(Default)]
pub struct ProcessIo {
    outputs: Vec<Output>,
    stdin_relay: Option<RelayTask>,
    stdin_closer: Mutex<Option<OwnedFd>>,
    console: Mutex<Option<OwnedFd>>,
    logger: Option<LoggerIo>,
    /// For a terminal: where the master's output goes, and the stdin source,
    /// until the master arrives.
    pending_console: Option<(Option<Dest>, Option<OwnedFd>)>,
    /// Pauses every relay of the process (an upgrade in place).
    pause: Option<watch::Sender<bool>>,
    /// Holds the output relays of a process being launched until the
    /// runtime call succeeded (`true`): what the runtime itself writes to
    /// the process's stderr when it fails (its error) is not the process's
    /// output, and is dropped with the pipes, as the Go shim drops it.
    held: Option<watch::Sender<bool>>,
}

/// One output stream as it was paused: the relay (`None` once it ended) and
/// what the exit path needs (the source, the shim's own FIFO reader, the
/// counts).
pub struct OutputState {
    /// The paused relay, if it had not ended.
    pub relay: Option<RelayState>,
    /// The source (also the relay's).
    pub src: Arc<OwnedFd>,
    /// The shim's reader on the destination FIFO.
    pub fifo_reader: Option<OwnedFd>,
    /// The source is a pty master.
    pub pty: bool,
    /// Bytes taken, sent and dropped so far.
    pub counts: (u64, u64, u64),
}

/// A logger as it was paused.
pub struct LoggerState {
    /// Its pid (the shim's child).
    pub pid: i32,
    /// The shim's read ends of its stdout and stderr pipes.
    pub pipes: [Arc<OwnedFd>; 2],
}

/// A process's stdio, paused: everything to resume it after an upgrade.
#[derive(Default)]
pub struct IoState {
    /// Output streams.
    pub outputs: Vec<OutputState>,
    /// The stdin relay, if running.
    pub stdin: Option<RelayState>,
    /// The shim's writer on the stdin FIFO (the CloseIO handle).
    pub stdin_closer: Option<OwnedFd>,
    /// A terminal's master.
    pub console: Option<OwnedFd>,
    /// The logger.
    pub logger: Option<LoggerState>,
}

impl ProcessIo {
    /// Sets up stdio for a new process.
    pub async fn prepare(spec: &StdioSpec, owner: Owner<'_>) -> Result<Prepared, StdioError> {
        let (stdin_t, stdout_t, stderr_t) = (
            parse_target(&spec.stdin)?,
            parse_target(&spec.stdout)?,
            parse_target(&spec.stderr)?,
        );
        let mut io = ProcessIo::default();
        io.held = Some(watch::channel(false).0);
        let mut cside = ProcessStdio::default();
        let chown = |fd: &OwnedFd| {
            if owner.uid != 0 || owner.gid != 0 {
                let _ = rustix::fs::fchown(
                    fd,
                    Some(Uid::from_raw(owner.uid)),
                    Some(Gid::from_raw(owner.gid)),
                );
            }
        };

        // A logger takes both streams' pipes.
        let mut logger_stdout_w = None;
        if let Target::Binary(path, args, ready) = &stdout_t {
            let (r1, w1) = pipe()?;
            let (r2, w2) = pipe()?;
            let logger = Logger::start(
                path,
                args,
                *ready,
                owner.namespace,
                owner.id,
                &r1,
                &r2,
                owner.reaper,
            )
            .await
            .map_err(io_err(path))?;
            io.logger = Some(LoggerIo::new(logger, [Arc::new(r1), Arc::new(r2)]));
            if spec.terminal {
                logger_stdout_w = Some(w1);
            } else {
                chown(&w1);
                chown(&w2);
                cside.stdout = Some(w1);
                cside.stderr = Some(w2);
            }
        }

        let mut shared = None;
        let stdin_src = match &stdin_t {
            Target::Null => None,
            Target::Fifo(path) => {
                let src = open_fifo(path, false)?;
                *io.stdin_closer.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(open_fifo(path, true)?);
                Some(src)
            }
            Target::File(path) => Some(std::fs::File::open(path).map_err(io_err(path))?.into()),
            Target::Binary(..) => return Err(StdioError::BadUri(spec.stdin.clone())),
        };

        if spec.terminal {
            let console =
                ConsoleSocket::new().map_err(|e| StdioError::Io("console socket".into(), e))?;
            let dest = match logger_stdout_w {
                Some(w) => Some(Dest {
                    sink: Sink::Pollable(w),
                    keeper: None,
                }),
                None => open_dest(&stdout_t, &mut shared, owner.spill.for_stream("tty"))?,
            };
            io.pending_console = Some((dest, stdin_src));
            return Ok(Prepared {
                io,
                stdio: cside,
                console: Some(console),
            });
        }

        for (target, is_err) in [(&stdout_t, false), (&stderr_t, true)] {
            let stream = if is_err { "stderr" } else { "stdout" };
            let Some(dest) = open_dest(target, &mut shared, owner.spill.for_stream(stream))? else {
                continue;
            };
            let (r, w) = pipe()?;
            chown(&w);
            if is_err {
                cside.stderr = Some(w);
            } else {
                cside.stdout = Some(w);
            }
            io.spawn_relay(r, dest, false);
        }
        if let Some(src) = stdin_src {
            let (r, w) = pipe()?;
            chown(&r);
            cside.stdin = Some(r);
            io.spawn_stdin(src, w);
        }
        Ok(Prepared {
            io,
            stdio: cside,
            console: None,
        })
    }

    /// Starts relaying a terminal once its pty master has arrived.
    pub fn attach_console(&mut self, master: OwnedFd) -> Result<(), StdioError> {
        let (dest, stdin_src) = self.pending_console.take().unwrap_or((None, None));
        if let Some(dest) = dest {
            self.spawn_relay(dup(&master)?, dest, true);
        }
        if let Some(src) = stdin_src {
            let to_master = dup(&master)?;
            self.spawn_stdin(src, to_master);
        }
        *self.console.lock().unwrap_or_else(|p| p.into_inner()) = Some(master);
        Ok(())
    }

    /// The signal that pauses this process's relays.
    fn pause_signal(&mut self) -> PauseSignal {
        let (tx, signal) = PauseSignal::new();
        match &self.pause {
            Some(tx) => PauseSignal::from(tx.subscribe()),
            None => {
                self.pause = Some(tx);
                signal
            }
        }
    }

    /// Lets the output relays of a launched process run (the runtime call
    /// succeeded).
    pub fn release(&mut self) {
        if let Some(held) = self.held.take() {
            let _ = held.send(true);
        }
    }

    /// After a failed runtime call: drops what sits in the output pipes (the
    /// runtime's own error text), then releases every fd and the logger.
    pub async fn discard(&mut self) {
        self.held.take();
        self.shutdown(Duration::from_millis(100)).await;
    }

    /// Runs one relay in its own task; an output relay of a process being
    /// launched waits until [`ProcessIo::release`], and never runs if the
    /// launch fails.
    fn spawn(&mut self, state: RelayState, flow: Arc<Flow>, output: bool) -> RelayTask {
        let signal = self.pause_signal();
        let mut held = self.held.as_ref().filter(|_| output).map(|h| h.subscribe());
        tokio::spawn(async move {
            if let Some(h) = held.as_mut() {
                if h.wait_for(|go| *go).await.is_err() {
                    return Ok(Outcome::Ended);
                }
            }
            let r = relay::run(state, flow, relay::STALL, signal).await;
            if let Err(e) = &r {
                crate::warn!("stdio relay: {e}");
            }
            r
        })
    }

    /// Starts relaying one output stream, and records it for delivery.
    fn spawn_relay(&mut self, src: OwnedFd, dest: Dest, pty: bool) {
        let src = Arc::new(src);
        let flow = Arc::new(Flow::default());
        let outlet = Arc::new(Outlet::new(flow.clone(), src.clone(), dest.keeper, pty));
        let state = RelayState {
            src,
            sink: dest.sink,
            splice: true,
            phase: Phase::Flowing,
        };
        let task = self.spawn(state, flow, true);
        self.outputs.push(Output { outlet, task });
    }

    /// Starts relaying stdin into the container (waits as long as it takes).
    fn spawn_stdin(&mut self, src: OwnedFd, to: OwnedFd) {
        let state = RelayState {
            src: Arc::new(src),
            sink: Sink::Pollable(to),
            splice: true,
            phase: Phase::Flowing,
        };
        self.stdin_relay = Some(self.spawn(state, Arc::new(Flow::default()), false));
    }

    /// The output streams, for the exit path to wait on their delivery.
    pub fn outlets(&self) -> Vec<Arc<Outlet>> {
        self.outputs.iter().map(|o| o.outlet.clone()).collect()
    }

    /// Pauses every relay where it stands and takes the stdio apart (for an
    /// upgrade in place).
    pub async fn pause(mut self) -> IoState {
        if let Some(tx) = &self.pause {
            let _ = tx.send(true);
        }
        let mut state = IoState::default();
        for out in std::mem::take(&mut self.outputs) {
            let relay = match (&mut { out.task }).await {
                Ok(Ok(Outcome::Paused(r))) => Some(*r),
                Ok(Ok(Outcome::Ended)) | Ok(Err(_)) | Err(_) => None,
            };
            let parts = out.outlet.take_parts();
            state.outputs.push(OutputState {
                relay,
                src: parts.src,
                fifo_reader: parts.fifo_reader,
                pty: parts.pty,
                counts: parts.counts,
            });
        }
        if let Some(t) = self.stdin_relay.take() {
            if let Ok(Ok(Outcome::Paused(r))) = t.await {
                state.stdin = Some(*r);
            }
        }
        state.stdin_closer = self
            .stdin_closer
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        state.console = self
            .console
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(l) = self.logger.take() {
            l.watch.abort();
            state.logger = Some(LoggerState {
                pid: l.logger.pid(),
                pipes: l.pipes.clone(),
            });
        }
        state
    }

    /// Resumes a paused stdio (after an upgrade in place).
    pub fn resume(state: IoState, reaper: &Arc<Reaper>) -> ProcessIo {
        let mut io = ProcessIo::default();
        for out in state.outputs {
            let (taken, sent, dropped) = out.counts;
            let flow = Arc::new(Flow::resumed(taken, sent, dropped));
            let outlet = Arc::new(Outlet::new(flow.clone(), out.src, out.fifo_reader, out.pty));
            let task = match out.relay {
                Some(r) => io.spawn(r, flow, true),
                None => {
                    flow.mark_ended();
                    tokio::spawn(async { Ok(Outcome::Ended) })
                }
            };
            io.outputs.push(Output { outlet, task });
        }
        if let Some(r) = state.stdin {
            io.stdin_relay = Some(io.spawn(r, Arc::new(Flow::default()), false));
        }
        *io.stdin_closer.get_mut().unwrap_or_else(|p| p.into_inner()) = state.stdin_closer;
        *io.console.get_mut().unwrap_or_else(|p| p.into_inner()) = state.console;
        if let Some(l) = state.logger {
            io.logger = Some(LoggerIo::new(Logger::adopt(l.pid, reaper), l.pipes));
        }
        io
    }

    /// Resizes the terminal, if the process has one.
    pub fn resize(&self, width: u32, height: u32) -> std::io::Result<()> {
        match self
            .console
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(m) => console::resize(m, width, height),
            None => Ok(()),
        }
    }

    /// Closes the shim's writer on the stdin FIFO (CloseIO): once the client
    /// closes its end too, the container reads EOF.
    pub fn close_stdin(&self) {
        self.stdin_closer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Waits up to `timeout` for the output relays to reach EOF, then stops
    /// everything (the logger last) and releases every fd.
    pub async fn shutdown(&mut self, timeout: Duration) {
        // The console's master: once the process is gone nothing more comes.
        self.console
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let outputs = std::mem::take(&mut self.outputs);
        let aborts: Vec<_> = outputs.iter().map(|o| o.task.abort_handle()).collect();
        let all = async {
            for o in outputs {
                let _ = o.task.await;
            }
        };
        let logger = self.logger.take();
        if tokio::time::timeout(timeout, all).await.is_err() {
            for a in aborts {
                a.abort();
            }
        }
        self.close_stdin();
        if let Some(h) = self.stdin_relay.take() {
            h.abort();
        }
        if let Some(l) = logger {
            l.watch.abort();
            l.logger.stop(timeout).await;
        }
    }
}

impl LoggerIo {
    /// Watches `logger`; if it dies, the shim drains its pipes so the
    /// container neither blocks nor gets SIGPIPE.
    fn new(logger: Logger, pipes: [Arc<OwnedFd>; 2]) -> LoggerIo {
        let mut exited = logger.exited();
        let [a, b] = pipes.clone();
        let watch = tokio::spawn(async move {
            if exited.wait_for(|e| *e).await.is_ok() {
                crate::warn!("logger exited; discarding the container's output");
                tokio::join!(relay::discard_shared(a), relay::discard_shared(b));
            }
        });
        LoggerIo {
            logger,
            pipes,
            watch,
        }
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        for o in &self.outputs {
            o.task.abort();
        }
        if let Some(h) = &self.stdin_relay {
            h.abort();
        }
        if let Some(l) = &self.logger {
            l.watch.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(reaper: &Arc<Reaper>) -> Owner<'_> {
        Owner {
            namespace: "ns",
            id: "c",
            reaper,
            uid: 0,
            gid: 0,
            spill: SpillPolicy::new(std::env::temp_dir()),
        }
    }

    #[test]
    fn parses_uris() {
        assert_eq!(parse_target("").unwrap(), Target::Null);
        assert_eq!(
            parse_target("/run/containerd/fifo/1/c-stdout").unwrap(),
            Target::Fifo("/run/containerd/fifo/1/c-stdout".into())
        );
        assert_eq!(
            parse_target("file:///var/log/c%201.log").unwrap(),
            Target::File("/var/log/c 1.log".into())
        );
        assert_eq!(
            parse_target("binary:///usr/bin/logger?id=x&verbose").unwrap(),
            Target::Binary(
                "/usr/bin/logger".into(),
                vec!["id".into(), "x".into(), "verbose".into()],
                Ready::ByteOrClose
            )
        );
        assert_eq!(
            parse_target("binary-v2:///usr/bin/logger?id=x").unwrap(),
            Target::Binary(
                "/usr/bin/logger".into(),
                vec!["id".into(), "x".into()],
                Ready::Byte
            )
        );
        assert!(matches!(
            parse_target("binary-v2://relative"),
            Err(StdioError::BadUri(_))
        ));
        assert!(matches!(
            parse_target("file://relative"),
            Err(StdioError::BadUri(_))
        ));
        match parse_target("gopher://x") {
            Err(e @ StdioError::UnknownScheme(_)) => {
                assert_eq!(e.to_string(), "unknown STDIO scheme gopher")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(percent_decode("a%2Fb%"), "a/b%");
    }

    #[tokio::test]
    async fn plain_path_to_a_regular_file_is_appended_and_missing_path_is_an_error() {
        let reaper = Reaper::new();
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("out.log");
        std::fs::write(&f, "old\n").unwrap();
        let spec = StdioSpec {
            stdout: f.display().to_string(),
            stderr: d.path().join("missing").display().to_string(),
            ..Default::default()
        };
        assert!(matches!(
            ProcessIo::prepare(&spec, owner(&reaper)).await,
            Err(StdioError::Io(..))
        ));
        let spec = StdioSpec {
            stdout: f.display().to_string(),
            ..Default::default()
        };
        let mut p = ProcessIo::prepare(&spec, owner(&reaper)).await.unwrap();
        p.io.release();
        rustix::io::write(p.stdio.stdout.as_ref().unwrap(), b"new\n").unwrap();
        drop(p.stdio);
        p.io.shutdown(Duration::from_secs(5)).await;
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "old\nnew\n");
    }

    /// What a runtime writes on the process's stderr when its call fails
    /// (its error) is not relayed; after a successful call everything is.
    #[tokio::test]
    async fn output_flows_only_once_the_launch_succeeded() {
        let reaper = Reaper::new();
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("out.log");
        let spec = StdioSpec {
            stdout: format!("file://{}", f.display()),
            stderr: format!("file://{}", f.display()),
            ..Default::default()
        };
        let mut failed = ProcessIo::prepare(&spec, owner(&reaper)).await.unwrap();
        rustix::io::write(failed.stdio.stderr.as_ref().unwrap(), b"runc: failed\n").unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(failed.stdio);
        failed.io.discard().await;
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "");
        let mut ok = ProcessIo::prepare(&spec, owner(&reaper)).await.unwrap();
        rustix::io::write(ok.stdio.stdout.as_ref().unwrap(), b"before\n").unwrap();
        ok.io.release();
        rustix::io::write(ok.stdio.stderr.as_ref().unwrap(), b"after\n").unwrap();
        drop(ok.stdio);
        ok.io.shutdown(Duration::from_secs(5)).await;
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "before\nafter\n");
    }

    #[tokio::test]
    async fn fifo_output_survives_client_absence_and_file_gets_both_streams() {
        let reaper = Reaper::new();
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("out");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let log = d.path().join("sub/log");
        let spec = StdioSpec {
            stdout: fifo.display().to_string(),
            stderr: format!("file://{}", log.display()),
            ..Default::default()
        };
        let mut p = ProcessIo::prepare(&spec, owner(&reaper)).await.unwrap();
        p.io.release();
        // No client reads the FIFO: a small write still succeeds.
        rustix::io::write(p.stdio.stdout.as_ref().unwrap(), b"hello").unwrap();
        rustix::io::write(p.stdio.stderr.as_ref().unwrap(), b"oops\n").unwrap();
        drop(p.stdio);
        p.io.shutdown(Duration::from_secs(5)).await;
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "oops\n");
    }

    #[tokio::test]
    async fn terminal_waits_for_the_master_and_copies_both_ways() {
        let reaper = Reaper::new();
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out.log");
        let spec = StdioSpec {
            stdout: format!("file://{}", out.display()),
            terminal: true,
            ..Default::default()
        };
        let mut p = ProcessIo::prepare(&spec, owner(&reaper)).await.unwrap();
        assert!(p.console.is_some());
        assert!(
            p.stdio.stdout.is_none(),
            "the runtime gives a terminal its pty"
        );
        // Stand in for a pty with a pipe: output flows from the "master".
        let (r, w) = rustix::pipe::pipe().unwrap();
        p.io.attach_console(r).unwrap();
        p.io.release();
        rustix::io::write(&w, b"tty says hi\r\n").unwrap();
        drop(w);
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.io.shutdown(Duration::from_secs(5)).await;
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "tty says hi\r\n");
    }
}
