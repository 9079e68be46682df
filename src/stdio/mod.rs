//! Process stdio: parses the stdio URIs containerd sends, creates the pipes
//! the container writes into, and runs the relays that carry the bytes to
//! their destination.
//!
//! | URI | container side | shim side |
//! |---|---|---|
//! | all empty | `/dev/null` | nothing |
//! | plain path (FIFO) | a pipe per stream | splice relay into the FIFO; the shim also keeps a reader open so a container never gets SIGPIPE when the client leaves |
//! | `file:///path` | a pipe per stream | splice relay into the file (created 0644, appended) |
//! | other schemes | — | refused with a clear error |
//!
//! stdin (a FIFO) is relayed into a pipe; the shim holds a writer on the
//! stdin FIFO (the CloseIO handle) so that reads wait for data instead of
//! seeing EOF before the client connects.

pub mod relay;

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rustix::fs::{Gid, Uid};
use rustix::pipe::{pipe_with, PipeFlags};
use tokio::task::JoinHandle;

use crate::runtime::ProcessStdio;
use relay::{relay, Sink};

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
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// Where one stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Not connected.
    Null,
    /// A FIFO the client reads (or, for stdin, writes).
    Fifo(PathBuf),
    /// A file the shim appends to.
    File(PathBuf),
}

/// The three stdio URIs of a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    match scheme {
        "fifo" => Ok(Target::Fifo(PathBuf::from(rest))),
        "file" => {
            let path = rest.split(['?', '#']).next().unwrap_or("");
            if !path.starts_with('/') {
                return Err(StdioError::BadUri(uri.to_string()));
            }
            Ok(Target::File(PathBuf::from(percent_decode(path))))
        }
        other => Err(StdioError::UnknownScheme(other.to_string())),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
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

/// The shim side of a process's stdio: running relays and the stdin handle.
pub struct ProcessIo {
    outputs: Vec<JoinHandle<()>>,
    stdin_relay: Option<JoinHandle<()>>,
    stdin_closer: Mutex<Option<OwnedFd>>,
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

impl ProcessIo {
    /// Sets up stdio for a new process. Returns the shim side (relays already
    /// running) and the container side to hand to the runtime.
    pub fn open(
        spec: &StdioSpec,
        uid: u32,
        gid: u32,
    ) -> Result<(ProcessIo, ProcessStdio), StdioError> {
        let (stdin_t, stdout_t, stderr_t) = (
            parse_target(&spec.stdin)?,
            parse_target(&spec.stdout)?,
            parse_target(&spec.stderr)?,
        );
        let mut io = ProcessIo {
            outputs: Vec::new(),
            stdin_relay: None,
            stdin_closer: Mutex::new(None),
        };
        let mut cside = ProcessStdio::default();
        let pipe =
            || pipe_with(PipeFlags::CLOEXEC).map_err(|e| StdioError::Io("pipe".into(), e.into()));
        let chown = |fd: &OwnedFd| {
            if uid != 0 || gid != 0 {
                let _ = rustix::fs::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
            }
        };

        // One shared file description when stdout and stderr name one file.
        let mut shared_file: Option<(PathBuf, OwnedFd)> = None;
        for (target, is_err) in [(&stdout_t, false), (&stderr_t, true)] {
            let (sink, keeper) = match target {
                Target::Null => continue,
                Target::Fifo(path) if is_fifo(path)? => {
                    // Our own reader first: it keeps the FIFO open for writing
                    // (no ENXIO, no SIGPIPE) whether or not a client reads.
                    // It lives as long as the relay's writer.
                    let keeper = open_fifo(path, false)?;
                    let w = open_fifo(path, true)?;
                    (Sink::Pollable(w), Some(keeper))
                }
                // A plain path that is an existing regular file is appended to.
                Target::Fifo(path) | Target::File(path) => {
                    let create = matches!(target, Target::File(_));
                    let fd = match &shared_file {
                        Some((p, fd)) if p == path => fd.try_clone().map_err(io_err(path))?,
                        _ => {
                            let fd = open_log_file(path, create)?;
                            shared_file =
                                Some((path.clone(), fd.try_clone().map_err(io_err(path))?));
                            fd
                        }
                    };
                    (Sink::File(fd), None)
                }
            };
            let (r, w) = pipe()?;
            chown(&w);
            if is_err {
                cside.stderr = Some(w);
            } else {
                cside.stdout = Some(w);
            }
            io.outputs.push(tokio::spawn(async move {
                if let Err(e) = relay(r, sink).await {
                    crate::warn!("stdio relay: {e}");
                }
                drop(keeper);
            }));
        }

        match &stdin_t {
            Target::Null => {}
            Target::Fifo(path) => {
                let src = open_fifo(path, false)?;
                let closer = open_fifo(path, true)?;
                let (r, w) = pipe()?;
                chown(&r);
                cside.stdin = Some(r);
                *io.stdin_closer.lock().unwrap_or_else(|p| p.into_inner()) = Some(closer);
                io.stdin_relay = Some(tokio::spawn(async move {
                    let _ = relay(src, Sink::Pollable(w)).await;
                }));
            }
            Target::File(path) => {
                let f = std::fs::File::open(path).map_err(io_err(path))?;
                cside.stdin = Some(f.into());
            }
        }
        Ok((io, cside))
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
    /// everything and releases every fd.
    pub async fn shutdown(&mut self, timeout: Duration) {
        let outputs = std::mem::take(&mut self.outputs);
        let aborts: Vec<_> = outputs.iter().map(|h| h.abort_handle()).collect();
        let all = async {
            for h in outputs {
                let _ = h.await;
            }
        };
        if tokio::time::timeout(timeout, all).await.is_err() {
            for a in aborts {
                a.abort();
            }
        }
        self.close_stdin();
        if let Some(h) = self.stdin_relay.take() {
            h.abort();
        }
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        for h in &self.outputs {
            h.abort();
        }
        if let Some(h) = &self.stdin_relay {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[tokio::test]
    async fn plain_path_to_a_regular_file_is_appended_and_missing_path_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("out.log");
        std::fs::write(&f, "old\n").unwrap();
        let spec = StdioSpec {
            stdout: f.display().to_string(),
            stderr: d.path().join("missing").display().to_string(),
            ..Default::default()
        };
        assert!(matches!(
            ProcessIo::open(&spec, 0, 0),
            Err(StdioError::Io(..))
        ));
        let spec = StdioSpec {
            stdout: f.display().to_string(),
            ..Default::default()
        };
        let (mut io, cside) = ProcessIo::open(&spec, 0, 0).unwrap();
        rustix::io::write(cside.stdout.as_ref().unwrap(), b"new\n").unwrap();
        drop(cside);
        io.shutdown(Duration::from_secs(5)).await;
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "old\nnew\n");
    }

    #[tokio::test]
    async fn fifo_output_survives_client_absence_and_file_gets_both_streams() {
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
        let (mut io, cside) = ProcessIo::open(&spec, 0, 0).unwrap();
        // No client reads the FIFO: a small write still succeeds.
        rustix::io::write(cside.stdout.as_ref().unwrap(), b"hello").unwrap();
        rustix::io::write(cside.stderr.as_ref().unwrap(), b"oops\n").unwrap();
        drop(cside);
        io.shutdown(Duration::from_secs(5)).await;
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "oops\n");
    }
}
