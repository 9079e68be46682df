//! The OCI runtime behind a trait, so the task service can be driven by the
//! real runc CLI ([`runc::Runc`]) or by a recording fake in unit tests.
//!
//! A runtime instance is bound to one container's settings (binary, root,
//! log file); [`RuntimeFactory`] makes one per container at Create.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

pub mod limited;
pub mod runc;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fake;

pub use crate::ttrpc::BoxFuture;

/// Errors from the runtime CLI.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime binary could not be started (worded as the Go shim's
    /// `exec: "runc": executable file not found in $PATH` and
    /// `fork/exec /path: no such file or directory`).
    #[error("{}", spawn_text(.binary, .err))]
    Spawn {
        /// The binary.
        binary: String,
        /// The OS error.
        err: std::io::Error,
    },
    /// The runtime ran and failed; `message` is its last logged error.
    #[error("{message}")]
    Failed {
        /// The subcommand (`create`, `kill`, …).
        command: String,
        /// The runtime's exit status.
        status: u32,
        /// The runtime's own error text.
        message: String,
    },
    /// The runtime's output could not be read or parsed.
    #[error("{0}")]
    Output(String),
}

/// Why `binary` could not be started, in the words of Go's `os/exec`.
fn spawn_text(binary: &str, err: &std::io::Error) -> String {
    if err.kind() == std::io::ErrorKind::NotFound && !binary.contains('/') {
        format!("exec: {binary:?}: executable file not found in $PATH")
    } else {
        format!("fork/exec {binary}: {}", crate::error::OsText(err))
    }
}

impl RuntimeError {
    /// The runtime's message, for callers that classify errors by text.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

/// Result of a runtime call.
pub type Result<T> = std::result::Result<T, RuntimeError>;

/// The container-side stdio of a process the runtime starts. `None` means
/// `/dev/null`.
#[derive(Default)]
pub struct ProcessStdio {
    /// Standard input.
    pub stdin: Option<OwnedFd>,
    /// Standard output.
    pub stdout: Option<OwnedFd>,
    /// Standard error.
    pub stderr: Option<OwnedFd>,
}

/// What `create` needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateOpts {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Where the runtime writes the init pid.
    pub pid_file: PathBuf,
    /// Pass `--no-pivot`.
    pub no_pivot: bool,
    /// Pass `--no-new-keyring`.
    pub no_new_keyring: bool,
    /// `--console-socket` for a terminal.
    pub console_socket: Option<PathBuf>,
}

/// What `exec` needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOpts {
    /// Container id.
    pub id: String,
    /// The process spec (JSON) file.
    pub process: PathBuf,
    /// Where the runtime writes the pid.
    pub pid_file: PathBuf,
    /// `--console-socket` for a terminal.
    pub console_socket: Option<PathBuf>,
}

/// What `checkpoint` needs (`containerd.runc.v1.CheckpointOptions`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckpointOpts {
    /// `--image-path`.
    pub image_path: PathBuf,
    /// `--work-path`.
    pub work_path: PathBuf,
    /// Stop the container after checkpointing (otherwise `--leave-running`).
    pub exit: bool,
    /// `--tcp-established`.
    pub open_tcp: bool,
    /// `--ext-unix-sk`.
    pub external_unix_sockets: bool,
    /// `--shell-job`.
    pub terminal: bool,
    /// `--file-locks`.
    pub file_locks: bool,
    /// `--empty-ns` (repeated).
    pub empty_namespaces: Vec<String>,
    /// `--manage-cgroups-mode`.
    pub cgroups_mode: String,
}

/// What `restore` needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RestoreOpts {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Checkpoint image to restore from.
    pub image_path: PathBuf,
    /// CRIU work directory.
    pub work_path: PathBuf,
    /// `--parent-path` (an earlier checkpoint).
    pub parent_path: Option<PathBuf>,
    /// Where the runtime writes the init pid.
    pub pid_file: PathBuf,
    /// `--no-pivot`.
    pub no_pivot: bool,
    /// `--console-socket` for a terminal.
    pub console_socket: Option<PathBuf>,
}

/// An OCI runtime bound to one container's settings.
pub trait Runtime: Send + Sync {
    /// `create --bundle B --pid-file P ID` with the given stdio.
    fn create(&self, opts: CreateOpts, stdio: ProcessStdio) -> BoxFuture<'_, Result<()>>;
    /// `start ID`.
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;
    /// `exec --process P --detach --pid-file F ID` with the given stdio.
    fn exec(&self, opts: ExecOpts, stdio: ProcessStdio) -> BoxFuture<'_, Result<()>>;
    /// `kill [--all] ID SIG`.
    fn kill<'a>(&'a self, id: &'a str, signal: u32, all: bool) -> BoxFuture<'a, Result<()>>;
    /// `delete [--force] ID`.
    fn delete<'a>(&'a self, id: &'a str, force: bool) -> BoxFuture<'a, Result<()>>;
    /// `ps --format json ID`: the pids in the container.
    fn ps<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<u32>>>;
    /// `pause ID`.
    fn pause<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;
    /// `resume ID`.
    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;
    /// `update --resources - ID` with the JSON resources on stdin.
    fn update<'a>(&'a self, id: &'a str, resources: Vec<u8>) -> BoxFuture<'a, Result<()>>;
    /// `checkpoint … ID`.
    fn checkpoint<'a>(&'a self, id: &'a str, opts: CheckpointOpts) -> BoxFuture<'a, Result<()>>;
    /// `restore … ID` with the given stdio.
    fn restore(&self, opts: RestoreOpts, stdio: ProcessStdio) -> BoxFuture<'_, Result<()>>;
}

/// Settings that select and configure a runtime for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Binary name or path.
    pub binary: String,
    /// `--root` directory (already including the namespace).
    pub root: String,
    /// `--log` file (json).
    pub log: PathBuf,
    /// `--systemd-cgroup`.
    pub systemd_cgroup: bool,
    /// `--criu` path, if set.
    pub criu: String,
}

/// Makes a runtime for a container's settings.
pub type RuntimeFactory = Arc<dyn Fn(RuntimeConfig) -> Arc<dyn Runtime> + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime that cannot be started reads as the Go shim's error.
    #[test]
    fn spawn_errors_are_worded_as_go_words_them() {
        let spawn = |binary: &str, errno| RuntimeError::Spawn {
            binary: binary.into(),
            err: std::io::Error::from_raw_os_error(errno),
        };
        assert_eq!(
            spawn("nope", libc::ENOENT).to_string(),
            r#"exec: "nope": executable file not found in $PATH"#
        );
        assert_eq!(
            spawn("/opt/runc", libc::ENOENT).to_string(),
            "fork/exec /opt/runc: no such file or directory"
        );
        assert_eq!(
            spawn("/etc/hostname", libc::EACCES).to_string(),
            "fork/exec /etc/hostname: permission denied"
        );
    }
}
