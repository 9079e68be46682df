//! The shim's fd limit. A shim holds a few descriptors per container and
//! per exec (pipes, FIFOs, sockets, kept cgroup files), so, as Go programs
//! do, the daemon raises its soft `RLIMIT_NOFILE` to the hard limit at start
//! and again whenever it meets EMFILE (someone may lower it with `prlimit`),
//! and every program it starts gets the soft limit the shim started with, so
//! a container sees the limit it would have seen under the Go shim.
//!
//! A spare descriptor (`/dev/null`) is kept open for what must not fail for
//! want of an fd — the exit record, a kept event, refusing a connection
//! instead of leaving it queued — and released just for that call.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The soft limit the shim started with ([`init`]); `u64::MAX` before.
static ORIGINAL: AtomicU64 = AtomicU64::new(u64::MAX);

/// The spare descriptor, when held.
static SPARE: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// Whether `e` says the process (or the system) has no descriptor left.
pub fn is_exhausted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The current soft and hard limits (hard `None`: unlimited).
pub fn limits() -> (u64, Option<u64>) {
    let l = getrlimit(Resource::Nofile);
    (l.current.unwrap_or(u64::MAX), l.maximum)
}

/// Raises the soft limit to the hard one if it is below; returns the limits
/// it moved between, or `None` when there was nothing to raise (or the
/// kernel refused).
pub fn raise() -> Option<(u64, u64)> {
    let (soft, hard) = limits();
    let hard = hard?;
    if soft >= hard {
        return None;
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        },
    )
    .ok()?;
    Some((soft, hard))
}

/// Records the soft limit the shim started with (what the programs it
/// starts get back), raises it (see [`raise`]) and opens the spare
/// descriptor: the daemon's first step after closing what it inherited.
pub fn init() {
    ORIGINAL.store(limits().0, Ordering::Relaxed);
    if let Some((from, to)) = raise() {
        crate::debug!("fd limit raised from {from} to {to}");
    }
    refill();
}

/// The soft limit programs started by the shim get (the one it started
/// with), when it is below the shim's own now.
fn original() -> Option<u64> {
    let soft = ORIGINAL.load(Ordering::Relaxed);
    (soft < limits().0).then_some(soft)
}

/// Puts the shim's original soft limit back in the process `cmd` starts
/// (no change while the shim's own is not above it).
pub fn restore_in(cmd: &mut Command) {
    let Some(soft) = original() else { return };
    // SAFETY: the closure runs between fork and exec and makes only the
    // getrlimit and setrlimit system calls, which are async-signal-safe; it
    // allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            let hard = getrlimit(Resource::Nofile).maximum;
            let current = Some(hard.map_or(soft, |h| soft.min(h)));
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current,
                    maximum: hard,
                },
            )?;
            Ok(())
        });
    }
}

/// Puts the original soft limit back in this process, before it replaces
/// its image (an upgrade in place), so the next image records the same
/// original; [`raise`] undoes it if the exec fails.
pub fn restore_here() {
    let Some(soft) = original() else { return };
    let hard = getrlimit(Resource::Nofile).maximum;
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard.map_or(soft, |h| soft.min(h))),
            maximum: hard,
        },
    );
}

fn lock() -> std::sync::MutexGuard<'static, Option<OwnedFd>> {
    SPARE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens the spare descriptor if it is not held; whether it is held now.
pub fn refill() -> bool {
    let mut spare = lock();
    if spare.is_none() {
        *spare = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok();
    }
    spare.is_some()
}

/// Runs `f`; if it fails for want of a descriptor, raises the limit and
/// runs it again, and if it still fails, runs it once more with the spare
/// descriptor released (then takes the spare back if it can).
pub fn with_spare<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    match f() {
        Err(e) if is_exhausted(&e) => {}
        r => return r,
    }
    if raise().is_some() {
        match f() {
            Err(e) if is_exhausted(&e) => {}
            r => return r,
        }
    }
    drop(lock().take());
    let r = f();
    refill();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_is_emfile_or_enfile_only() {
        assert!(is_exhausted(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_exhausted(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_exhausted(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(!is_exhausted(&io::Error::other("x")));
    }

    #[test]
    fn a_call_short_of_fds_runs_again_with_the_spare_released() {
        assert!(refill());
        // Fails for want of an fd until the spare is released.
        let mut calls = 0;
        let r = with_spare(|| {
            calls += 1;
            if lock().is_some() {
                Err(io::Error::from_raw_os_error(libc::EMFILE))
            } else {
                Ok(calls)
            }
        });
        assert!(matches!(r, Ok(2) | Ok(3)), "{r:?}");
        assert!(lock().is_some(), "the spare is taken back");
        // Other errors are not retried.
        let mut calls = 0;
        let r: io::Result<()> = with_spare(|| {
            calls += 1;
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
