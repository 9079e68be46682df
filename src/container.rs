//! A container: its bundle, runtime, init process record and stdio.
//!
//! State lives behind a short `std` mutex that is never held across an
//! await, so State, Wait and Kill never queue behind a runtime call. The
//! `lifecycle` lock serialises the operations that must not interleave for
//! one container (start, delete, exit handling): it is what guarantees that
//! `/tasks/start` is published before `/tasks/exit`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::process::{ExitInfo, Status};
use crate::runtime::Runtime;
use crate::stdio::{ProcessIo, StdioSpec};

/// The mutable part of the init process record.
#[derive(Debug, Clone, Copy)]
pub struct InitState {
    /// Lifecycle state.
    pub status: Status,
    /// Set once the process has been reaped.
    pub exit: Option<ExitInfo>,
}

/// One container managed by this shim.
pub struct Container {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Whether the shim mounted `bundle/rootfs` (and must unmount it).
    pub mounted_rootfs: bool,
    /// Runtime bound to this container's options.
    pub runtime: Arc<dyn Runtime>,
    /// The stdio URIs from Create.
    pub stdio: StdioSpec,
    /// Init pid.
    pub pid: u32,
    /// Whether every process must be killed when init exits (the container
    /// shares or joins a pid namespace, so init's death does not end them).
    pub kill_all_on_exit: bool,
    /// Serialises start / delete / exit handling for this container.
    pub lifecycle: tokio::sync::Mutex<()>,
    state: Mutex<InitState>,
    exited: watch::Sender<Option<ExitInfo>>,
    io: tokio::sync::Mutex<Option<ProcessIo>>,
}

impl Container {
    /// A freshly created container in the `Created` state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        bundle: PathBuf,
        mounted_rootfs: bool,
        runtime: Arc<dyn Runtime>,
        stdio: StdioSpec,
        pid: u32,
        kill_all_on_exit: bool,
        io: ProcessIo,
    ) -> Arc<Self> {
        Arc::new(Container {
            id,
            bundle,
            mounted_rootfs,
            runtime,
            stdio,
            pid,
            kill_all_on_exit,
            lifecycle: tokio::sync::Mutex::new(()),
            state: Mutex::new(InitState {
                status: Status::Created,
                exit: None,
            }),
            exited: watch::channel(None).0,
            io: tokio::sync::Mutex::new(Some(io)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, InitState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A snapshot of the init state.
    pub fn state(&self) -> InitState {
        *self.lock()
    }

    /// Sets the lifecycle status (the caller has checked the guard).
    pub fn set_status(&self, status: Status) {
        self.lock().status = status;
    }

    /// Records the exit of init and wakes every waiter. Returns false if an
    /// exit was already recorded.
    pub fn set_exited(&self, exit: ExitInfo) -> bool {
        let mut st = self.lock();
        if st.exit.is_some() {
            return false;
        }
        st.status = st.status.on_exit();
        st.exit = Some(exit);
        drop(st);
        self.exited.send_replace(Some(exit));
        true
    }

    /// Waits until init has exited.
    pub async fn wait(&self) -> ExitInfo {
        let mut rx = self.exited.subscribe();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The sender lives inside self, which we borrow: unreachable,
                // but never spin.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Closes the shim's stdin writer (CloseIO).
    pub async fn close_stdin(&self) {
        if let Some(io) = self.io.lock().await.as_ref() {
            io.close_stdin();
        }
    }

    /// Lets output finish (up to `timeout`) and releases every stdio fd.
    pub async fn close_io(&self, timeout: std::time::Duration) {
        let io = self.io.lock().await.take();
        if let Some(mut io) = io {
            io.shutdown(timeout).await;
        }
    }
}

/// Whether init's exit must be followed by `kill --all`: true unless the spec
/// gives the container its own new pid namespace (a `pid` entry with no path).
pub fn should_kill_all_on_exit(config_json: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(config_json) else {
        return true;
    };
    let Some(nss) = v.pointer("/linux/namespaces").and_then(|n| n.as_array()) else {
        return true;
    };
    !nss.iter().any(|ns| {
        ns.get("type").and_then(|t| t.as_str()) == Some("pid")
            && ns
                .get("path")
                .and_then(|p| p.as_str())
                .unwrap_or("")
                .is_empty()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_all_decision_follows_the_pid_namespace() {
        assert!(!should_kill_all_on_exit(
            r#"{"linux":{"namespaces":[{"type":"mount"},{"type":"pid"}]}}"#
        ));
        assert!(should_kill_all_on_exit(
            r#"{"linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}"#
        ));
        assert!(should_kill_all_on_exit(
            r#"{"linux":{"namespaces":[{"type":"mount"}]}}"#
        ));
        assert!(should_kill_all_on_exit("not json"));
    }
}
