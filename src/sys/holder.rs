//! Process-wide calls the pod's namespace holder needs (`crate::sandbox`):
//! leaving namespaces, forking into a new pid namespace, waiting for
//! signals. Called only in the holder's own process, single-threaded,
//! before anything else runs there.

use std::io;

/// Moves this (single-threaded) process into new namespaces (`CLONE_*`
/// flags); a new pid namespace applies to the children forked after it.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare changes only this process's namespaces; the holder
    // is single-threaded when it calls it, so no other thread's
    // assumptions about shared state can break.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What [`fork`] returned, seen from either side.
pub enum Forked {
    Parent(i32),
    Child,
}

/// Forks this single-threaded process.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the holder is single-threaded when it forks (no lock can be
    // held by a thread that does not exist in the child), and the child
    // only makes async-signal-safe calls and plain syscalls afterwards.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// Blocks `signals` for this process so that [`wait_signal`] takes them.
pub fn block_signals(signals: &[libc::c_int]) -> io::Result<()> {
    // SAFETY: a zeroed sigset_t is a valid argument for sigemptyset, which
    // initialises it; sigaddset and sigprocmask only read and write the
    // set passed by pointer, which lives for the whole call.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits for one of the (blocked) `signals`; returns it.
pub fn wait_signal(signals: &[libc::c_int]) -> io::Result<libc::c_int> {
    // SAFETY: as in block_signals; sigwait writes the signal number into a
    // local that outlives the call.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        let mut sig: libc::c_int = 0;
        match libc::sigwait(&set, &mut sig) {
            0 => Ok(sig),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Joins the namespace `fd` refers to (`nstype` a `CLONE_NEW*` flag).
pub fn setns(fd: std::os::fd::BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is borrowed, so open for the whole call; setns changes
    // only this single-threaded process's namespace.
    if unsafe { libc::setns(fd.as_raw_fd(), nstype) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the hostname of this process's UTS namespace.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, which live
    // for the whole call; the kernel copies them.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
