//! What the shim finishes after a Delete, with nobody waiting on it:
//! - a `runtime delete` that hung past [`DELETE_BOUND`] (Delete went on
//!   without it) is retried in the background until it works or
//!   [`RETRY_FOR`] has passed, so the runtime's state is not left behind
//!   once the runtime recovers; a shim told to shut down stays for those
//!   retries (its socket already gone);
//! - a shim whose last container was deleted and that is never told to
//!   shut down (containerd died between the Delete and the Shutdown, and
//!   its client then removed the container, so nothing will) shuts down by
//!   itself after [`ORPHAN_GRACE`].

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::task::{lock, TaskService, DELETE_ABANDONED, DELETE_BOUND};
use crate::container::Container;

/// How long an abandoned `runtime delete` is retried.
pub const RETRY_FOR: Duration = Duration::from_secs(60);
/// The first wait before a retry; it doubles up to [`RETRY_MAX_WAIT`].
const RETRY_FIRST_WAIT: Duration = Duration::from_secs(1);
const RETRY_MAX_WAIT: Duration = Duration::from_secs(8);
/// How long a shim with no container left waits for a Shutdown (containerd
/// sends it right after the Delete) before it shuts down by itself.
pub(crate) const ORPHAN_GRACE: Duration = Duration::from_secs(30);

/// Opens and locks the marker of an abandoned runtime delete.
fn hold_marker(path: &Path) -> Option<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).ok()?;
    Some(f)
}

/// Whether a live shim is retrying the runtime delete whose marker this is.
pub fn retried_by_a_live_shim(marker: &Path) -> bool {
    let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(marker)
    else {
        return false;
    };
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
}

/// Background retries of abandoned runtime deletes, one per container.
#[derive(Default)]
pub(crate) struct Retries {
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// Set once the shim is going: retries come at once, then every
    /// [`RETRY_FIRST_WAIT`] at most.
    hurry: Arc<(AtomicBool, Notify)>,
}

impl TaskService {
    /// Retries `runtime delete --force` of `c` (deleted from the shim
    /// already) until it works or [`RETRY_FOR`] passes; says how it went.
    pub(crate) fn retry_runtime_delete(&self, c: Arc<Container>) {
        let root = c.options.runtime_root(&self.namespace);
        // Held while the shim retries: `shim delete` leaves it to us.
        let held = hold_marker(&c.bundle.join(DELETE_ABANDONED));
        let hurry = self.retries.hurry.clone();
        let task = tokio::spawn(async move {
            let _held = held;
            let until = tokio::time::Instant::now() + RETRY_FOR;
            let mut wait = RETRY_FIRST_WAIT;
            let mut tries = 0;
            loop {
                let woken = hurry.1.notified();
                if hurry.0.load(Ordering::Acquire) {
                    wait = wait.min(RETRY_FIRST_WAIT);
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = woken => {}
                }
                tries += 1;
                let why =
                    match tokio::time::timeout(DELETE_BOUND, c.runtime.delete(&c.id, true)).await {
                        Ok(Ok(())) => break,
                        Ok(Err(e)) if e.message().contains("does not exist") => break,
                        Ok(Err(e)) => e.message(),
                        Err(_) => format!("did not finish within {DELETE_BOUND:?}"),
                    };
                crate::info!("{}: runtime delete retry {tries}: {why}", c.id);
                if tokio::time::Instant::now() + wait >= until {
                    crate::warn!(
                        "{}: runtime delete still did not finish after {tries} retries in {RETRY_FOR:?} \
                         ({why}); left behind: the runtime's state under {root}",
                        c.id
                    );
                    return;
                }
                wait = (wait * 2).min(RETRY_MAX_WAIT);
            }
            let _ = std::fs::remove_file(c.bundle.join(DELETE_ABANDONED));
            crate::info!("{}: runtime delete done on retry {tries}", c.id);
        });
        let mut retries = lock(&self.retries.tasks);
        retries.retain(|t| !t.is_finished());
        retries.push(task);
    }

    /// Whether a runtime delete is still being retried.
    pub(crate) fn retrying(&self) -> bool {
        lock(&self.retries.tasks).iter().any(|t| !t.is_finished())
    }

    /// Retries at once, then waits for them (at most `limit`); those still
    /// going then are stopped (their runtime call is killed with them).
    pub async fn retries_done(&self, limit: Duration) {
        let hurry = &self.retries.hurry;
        hurry.0.store(true, Ordering::Release);
        hurry.1.notify_waiters();
        let tasks = std::mem::take(&mut *lock(&self.retries.tasks));
        let deadline = tokio::time::Instant::now() + limit;
        for mut t in tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
            }
        }
    }

    /// After a Delete took the last container: unless a container is
    /// created or the shim is told to shut down within [`ORPHAN_GRACE`], it
    /// shuts down by itself (as on Shutdown: kept events and retries get
    /// their time first).
    pub(crate) fn watch_for_orphaning(self: &Arc<Self>, last: &str) {
        let generation = self.emptied.fetch_add(1, Ordering::AcqRel) + 1;
        let (svc, last) = (Arc::downgrade(self), last.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(ORPHAN_GRACE).await;
            let Some(svc) = svc.upgrade() else { return };
            if svc.idle() && svc.emptied.load(Ordering::Acquire) == generation {
                crate::warn!(
                    "no Shutdown within {ORPHAN_GRACE:?} of deleting the last container ({last}); \
                     shutting down"
                );
                svc.shutdown.notify_one();
            }
        });
    }
}
