//! OOM notification for a container's memory cgroup.
//!
//! - v1: an eventfd registered through `cgroup.event_control` for
//!   `memory.oom_control` wakes the watcher; an OOM is an increase of
//!   `oom_kill` in `memory.oom_control` (kernels without that counter: each
//!   wake-up is one OOM, unless the cgroup was removed, which also wakes it).
//! - v2: inotify on `memory.events`; an OOM is an increase of `oom_kill`.
//!
//! Counting against the value at registration means an OOM between the
//! registration and the first wake-up is still seen: the watch is set up at
//! Create, before the container's process runs.
//!
//! [`OomWatch::check`] is non-blocking and consumes what happened, so the
//! watcher task and the exit handler can both call it: whoever comes first
//! reports the OOM, exactly once, and the exit handler's call guarantees that
//! `/tasks/oom` precedes `/tasks/exit`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::event::{eventfd, EventfdFlags};
use rustix::fs::inotify;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

enum Kind {
    V1 {
        _control: OwnedFd,
        /// `oom_kill` at the last check (`None`: the kernel has no counter).
        last: Option<Mutex<u64>>,
    },
    V2 {
        events: PathBuf,
        last: Mutex<u64>,
    },
}

/// A registered OOM watch.
pub struct OomWatch {
    fd: AsyncFd<OwnedFd>,
    dir: PathBuf,
    kind: Kind,
}

fn oom_kills(events: &Path) -> u64 {
    v1_oom_kills(events.parent().unwrap_or(Path::new("/")), "memory.events").unwrap_or(0)
}

/// The `oom_kill` counter of `file` in `dir`, if it has one.
fn v1_oom_kills(dir: &Path, file: &str) -> Option<u64> {
    super::read_key(dir, file, "oom_kill")
}

/// Whether `now` is past the last count (and remembers it).
fn grew(last: &Mutex<u64>, now: u64) -> bool {
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    let grew = now > *last;
    *last = now.max(*last);
    grew
}

impl OomWatch {
    /// Registers a v1 watch on the memory cgroup directory `dir`.
    pub fn v1(dir: &Path) -> io::Result<OomWatch> {
        Self::v1_from(dir, None)
    }

    /// The OOM kills counted so far (what the next check compares with).
    pub fn baseline(&self) -> Option<u64> {
        let last = match &self.kind {
            Kind::V1 { last, .. } => last.as_ref()?,
            Kind::V2 { last, .. } => last,
        };
        Some(*last.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Registers a watch on `dir` (v2 when `v2`) that counts OOM kills from
    /// `baseline` (a watch handed over by a previous image of the shim), or
    /// from now.
    pub fn resume(dir: &Path, v2: bool, baseline: Option<u64>) -> io::Result<OomWatch> {
        if v2 {
            Self::v2_from(dir, baseline)
        } else {
            Self::v1_from(dir, baseline)
        }
    }

    fn v1_from(dir: &Path, baseline: Option<u64>) -> io::Result<OomWatch> {
        let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let control: OwnedFd = std::fs::File::open(dir.join("memory.oom_control"))?.into();
        std::fs::write(
            dir.join("cgroup.event_control"),
            format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()),
        )?;
        let last =
            v1_oom_kills(dir, "memory.oom_control").map(|now| Mutex::new(baseline.unwrap_or(now)));
        Ok(OomWatch {
            fd: crate::sys::async_fd(efd, Interest::READABLE)?,
            dir: dir.to_path_buf(),
            kind: Kind::V1 {
                _control: control,
                last,
            },
        })
    }

    /// Registers a v2 watch on the cgroup directory `dir`.
    pub fn v2(dir: &Path) -> io::Result<OomWatch> {
        Self::v2_from(dir, None)
    }

    fn v2_from(dir: &Path, baseline: Option<u64>) -> io::Result<OomWatch> {
        let events = dir.join("memory.events");
        let ino = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        inotify::add_watch(&ino, &events, inotify::WatchFlags::MODIFY)?;
        let last = baseline.unwrap_or_else(|| oom_kills(&events));
        Ok(OomWatch {
            fd: crate::sys::async_fd(ino, Interest::READABLE)?,
            dir: dir.to_path_buf(),
            kind: Kind::V2 {
                events,
                last: Mutex::new(last),
            },
        })
    }

    /// Whether an OOM happened since the last call (non-blocking).
    pub fn check(&self) -> bool {
        match &self.kind {
            Kind::V1 { last, .. } => {
                let mut buf = [0u8; 8];
                let woke = matches!(rustix::io::read(self.fd.get_ref(), &mut buf), Ok(8));
                match (last, v1_oom_kills(&self.dir, "memory.oom_control")) {
                    (Some(last), Some(now)) => grew(last, now),
                    // Removal of the cgroup also wakes the eventfd: not an OOM.
                    _ => woke && self.dir.exists(),
                }
            }
            Kind::V2 { events, last } => {
                let mut buf = [0u8; 1024];
                while matches!(rustix::io::read(self.fd.get_ref(), &mut buf), Ok(n) if n > 0) {}
                grew(last, oom_kills(events))
            }
        }
    }

    /// Waits until something may have happened; then call [`check`](Self::check).
    /// Returns false once the cgroup is gone.
    pub async fn changed(&self) -> bool {
        match self.fd.readable().await {
            Ok(mut g) => {
                g.clear_ready();
                self.dir.exists()
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An OOM that happened after registration but before any wake-up
    /// is seen through the counter, once.
    #[tokio::test]
    async fn v1_counts_oom_kill_increases_once() {
        let d = tempfile::tempdir().unwrap();
        let ctl = d.path().join("memory.oom_control");
        std::fs::write(&ctl, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        std::fs::write(d.path().join("cgroup.event_control"), "").unwrap();
        let w = OomWatch::v1(d.path()).unwrap();
        assert!(!w.check(), "earlier kills are not this container's");
        std::fs::write(&ctl, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert!(w.check());
        assert!(!w.check(), "reported once");
    }

    #[tokio::test]
    async fn v2_counts_oom_kill_increases_once() {
        let d = tempfile::tempdir().unwrap();
        let ev = d.path().join("memory.events");
        std::fs::write(&ev, "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n").unwrap();
        let w = OomWatch::v2(d.path()).unwrap();
        assert!(!w.check());
        std::fs::write(&ev, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert!(w.changed().await);
        assert!(w.check());
        assert!(!w.check(), "reported once");
    }
}
