//! What the task service does to processes and cgroups directly, without the
//! OCI runtime: opening a pidfd for a process it launched, and finding a
//! process's cgroup. The service reaches them only through [`Host`], so its
//! unit tests (which invent pids) never open, signal or kill a real process.

use std::os::fd::OwnedFd;

use crate::cgroup::Cgroup;

/// Direct access to processes and cgroups.
pub trait Host: Send + Sync {
    /// A pidfd for `pid`, if the process exists.
    fn open_pidfd(&self, pid: u32) -> Option<OwnedFd>;
    /// The cgroup of the live process `pid`.
    fn cgroup_of(&self, pid: u32) -> Option<Cgroup>;
}

/// The machine itself.
pub struct RealHost;

impl Host for RealHost {
    fn open_pidfd(&self, pid: u32) -> Option<OwnedFd> {
        let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
    }

    fn cgroup_of(&self, pid: u32) -> Option<Cgroup> {
        Cgroup::for_pid(pid).ok()
    }
}

/// No processes and no cgroups: for unit tests and fuzzing.
#[cfg(any(test, feature = "fuzzing"))]
pub struct NoHost;

#[cfg(any(test, feature = "fuzzing"))]
impl Host for NoHost {
    fn open_pidfd(&self, _pid: u32) -> Option<OwnedFd> {
        None
    }

    fn cgroup_of(&self, _pid: u32) -> Option<Cgroup> {
        None
    }
}
