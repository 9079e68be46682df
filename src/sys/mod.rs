//! The only module that may use `unsafe`: raw fd adoption, fork-time hooks
//! for spawned commands, and process-wide calls that need libc directly.
//!
//! Every block carries a `// SAFETY:` line naming the invariant it relies on.
//! Nothing else in the crate touches raw file descriptors.
#![allow(unsafe_code)]

pub mod holder;
pub mod nofile;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The fd on which containerd hands the listening socket to the daemon.
pub const LISTENER_FD: RawFd = 3;

/// Takes ownership of fd 3 if it is an open socket, marking it close-on-exec so
/// it never leaks into runtime or container processes.
pub fn take_listener_fd() -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_GETFD) only queries the descriptor table; an invalid fd
    // yields -1/EBADF, which we report instead of adopting the number.
    let flags = unsafe { libc::fcntl(LISTENER_FD, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd 3 is open (checked above), was placed there by our parent for
    // us alone, and nothing else in this process has adopted it: `serve` calls
    // this once, before any other fd is opened.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTENER_FD) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    Ok(fd)
}

/// Closes every descriptor above fd 3 that the daemon inherited (from
/// containerd or whoever started it), so none can leak into a container.
/// Must run first in serve mode, before this process opens anything.
pub fn close_inherited_fds() {
    // SAFETY: called before the daemon opens any descriptor of its own, so
    // every fd above 3 is an inherited one that nothing in this process owns;
    // close_range touches only the descriptor table.
    unsafe {
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
    }
}

/// Makes the spawned command receive SIGKILL if the shim dies, so a runtime
/// call never outlives the shim that waits for it.
pub fn kill_on_parent_death(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and calls only prctl,
    // which is async-signal-safe; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Places each `(fd, target)` pair's fd at the target number in the spawned
/// command (without close-on-exec): the daemon's listener at fd 3, a
/// logger's pipes at fds 3, 4 and 5. At most 8 pairs.
pub fn pass_fds(cmd: &mut Command, fds: &[(&OwnedFd, RawFd)]) {
    let pairs: Vec<(RawFd, RawFd)> = fds
        .iter()
        .take(8)
        .map(|(fd, t)| (fd.as_raw_fd(), *t))
        .collect();
    // SAFETY: the closure runs between fork and exec and calls only fcntl,
    // dup2 and close, which are async-signal-safe; it allocates nothing (the
    // pair list and the scratch array exist before the fork). Every source fd
    // is open in the parent until spawn returns, because the caller borrows
    // it for the whole spawn. Sources are first duplicated above 64 so that no
    // dup2 overwrites a source another pair still needs.
    unsafe {
        cmd.pre_exec(move || {
            let mut tmp = [-1 as RawFd; 8];
            for (i, (src, _)) in pairs.iter().enumerate() {
                tmp[i] = libc::fcntl(*src, libc::F_DUPFD, 64);
                if tmp[i] < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, (_, dst)) in pairs.iter().enumerate() {
                if libc::dup2(tmp[i], *dst) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(tmp[i]);
            }
            Ok(())
        });
    }
}

/// Registers an owned fd with the tokio reactor.
pub fn async_fd(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of `fd`, so the descriptor stays
    // open for exactly as long as it is registered and is closed only after
    // deregistration when the AsyncFd drops.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into())
}

/// Registers a shared fd with the tokio reactor (the relay's source, which
/// the exit path also looks at).
pub fn async_fd_shared(
    fd: std::sync::Arc<OwnedFd>,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<std::sync::Arc<OwnedFd>>> {
    // SAFETY: the AsyncFd holds one reference to the OwnedFd, which closes the
    // descriptor only when its last reference drops, so the fd stays open and
    // names the same file for as long as it is registered; an `Arc` gives no
    // way to swap the descriptor inside.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into())
}

/// Sends signal number `sig` (any, including real-time signals) to `pid`.
pub fn send_signal(pid: i32, sig: i32) -> io::Result<()> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: kill(2) takes plain integers and touches no memory; pid > 0
    // (checked above) so it never targets a process group or every process.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends signal number `sig` through a pidfd, so the signal can only reach
/// the process the pidfd was opened for, never a later owner of its pid.
pub fn pidfd_send_signal(pidfd: std::os::fd::BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: pidfd_send_signal(2) takes a descriptor the caller borrows for
    // the duration of the call, a signal number, a null siginfo (the kernel
    // then fills in a plain kill()) and flags 0; it touches no user memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `sig` to every process of the group `pgid` (a runtime call and
/// whatever it spawned).
pub fn kill_process_group(pgid: i32, sig: i32) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: kill(2) takes plain integers and touches no memory; -pgid with
    // pgid > 1 (checked above) names one process group, never every process.
    if unsafe { libc::kill(-pgid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of descriptor `n`, handed over by a previous image of
/// the shim (an upgrade in place). Fails if `n` is not open.
pub fn adopt_fd(n: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_GETFD) only queries the descriptor table; an invalid fd
    // yields -1/EBADF, which we report instead of adopting the number.
    if n < 0 || unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: `n` is open (checked above) and was handed over by the previous
    // image for exactly one owner: the handover record names each descriptor
    // once and the caller (upgrade::state::Adopter) adopts each name once;
    // nothing else in this fresh image has touched it.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Sets or clears close-on-exec on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: the caller names a descriptor it owns (or borrows) for the
    // duration of the call; borrowing it only for fcntl's flag update.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = if on {
        rustix::io::FdFlags::CLOEXEC
    } else {
        rustix::io::FdFlags::empty()
    };
    rustix::io::fcntl_setfd(fd, flags)?;
    Ok(())
}

/// An argv or environment, ready for exec (prepared before anything that
/// must not allocate, such as a panic hook).
pub struct ExecArgs {
    _strings: Vec<std::ffi::CString>,
    ptrs: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into `_strings`, which the struct owns and
// never changes; moving the struct moves the CStrings' heap buffers' owners,
// not the buffers.
unsafe impl Send for ExecArgs {}
// SAFETY: as above; the struct is never mutated after construction.
unsafe impl Sync for ExecArgs {}

impl ExecArgs {
    /// From strings (one with a NUL byte is refused).
    pub fn new<I: IntoIterator<Item = S>, S: Into<Vec<u8>>>(items: I) -> io::Result<ExecArgs> {
        let strings: Vec<std::ffi::CString> = items
            .into_iter()
            .map(std::ffi::CString::new)
            .collect::<Result<_, _>>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        Ok(ExecArgs {
            _strings: strings,
            ptrs,
        })
    }
}

/// Replaces this process's image with the executable open as `exe` (even
/// if its file was replaced since), keeping the pid, the children and every
/// descriptor without close-on-exec. The fd limit the shim started with is
/// put back first (the next image raises it again, and records the same
/// original), and raised again if the exec fails. Returns only on failure.
pub fn exec_fd(exe: RawFd, argv: &ExecArgs, env: &ExecArgs) -> io::Error {
    nofile::restore_here();
    // SAFETY: argv and env are NULL-terminated arrays of pointers to
    // NUL-terminated strings owned by the ExecArgs, which outlive the call;
    // `exe` is an open descriptor of an executable. On success the call does
    // not return; on failure nothing was changed.
    unsafe {
        libc::fexecve(exe, argv.ptrs.as_ptr(), env.ptrs.as_ptr());
    }
    let err = io::Error::last_os_error();
    nofile::raise();
    err
}

/// Replaces this process's image with the program at `path` (see
/// [`exec_fd`]). Returns only on failure.
pub fn exec_path(path: &std::path::Path, argv: &ExecArgs, env: &ExecArgs) -> io::Error {
    use std::os::unix::ffi::OsStrExt;
    let Ok(p) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return io::Error::from(io::ErrorKind::InvalidInput);
    };
    nofile::restore_here();
    // SAFETY: as in `exec_fd`, with `p` a NUL-terminated path that outlives
    // the call.
    unsafe {
        libc::execve(p.as_ptr(), argv.ptrs.as_ptr(), env.ptrs.as_ptr());
    }
    let err = io::Error::last_os_error();
    nofile::raise();
    err
}

/// Waits for the child `pid` (not yet waited for) and returns its wait
/// status and the CPU time it used (user + system, with that of its own
/// waited-for children). For the bench, which counts a shim's `start`.
pub fn wait_with_cpu(pid: i32) -> io::Result<(i32, std::time::Duration)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage (integers and timevals) is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes only into `status` and `usage`, both live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Ok((
        status,
        std::time::Duration::from_micros(us(usage.ru_utime) + us(usage.ru_stime)),
    ))
}

/// Returns freed heap memory to the kernel, so a shim's resident size comes
/// back down after bursts of work (many execs) instead of keeping its peak.
pub fn trim_heap() {
    // SAFETY: malloc_trim only walks and releases the allocator's own free
    // lists; it is safe to call at any point outside a signal handler.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keeps only the code a shim actually runs resident. The kernel maps a
/// file's pages around each one faulted in ("fault-around", 64 KiB), so a
/// daemon that touched a little of every part of its binary at start holds
/// nearly all of it. This marks the read-only file mappings random-access
/// (no fault-around from now on) and lets go of the pages of the executable
/// ones, which fault back in, one page at a time, when run again.
///
/// Writable mappings and read-only ones that may hold relocated data are
/// never released: only code (`r-x`, never written) is.
pub fn trim_code_residency() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        // A file mapping: offset, device, inode (non-zero), path.
        let (_, _, inode, path) = (f.next(), f.next(), f.next(), f.next());
        if inode.is_none_or(|i| i == "0") || path.is_none_or(|p| !p.starts_with('/')) {
            continue;
        }
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            continue;
        };
        let p = perms.as_bytes();
        if p.len() < 3 || p[1] == b'w' || p[0] != b'r' {
            continue;
        }
        let addr = lo as *mut libc::c_void;
        let len = hi - lo;
        // SAFETY: [lo, hi) is a whole read-only, file-backed mapping of this
        // process as listed by the kernel. MADV_RANDOM changes only how
        // later faults read ahead. MADV_DONTNEED is applied only to
        // executable, never-written (`r-x`, private or shared) mappings of
        // a file: their pages are identical to the file's, so dropping them
        // loses nothing; the next access faults them back in from the page
        // cache. No Rust reference points into code pages.
        unsafe {
            libc::madvise(addr, len, libc::MADV_RANDOM);
            if p[2] == b'x' {
                libc::madvise(addr, len, libc::MADV_DONTNEED);
            }
        }
    }
}

/// Sets `MOUNT_ATTR_IDMAP` with the user namespace `userns` on the detached
/// mount tree `tree` (from `open_tree(OPEN_TREE_CLONE)`).
pub fn mount_setattr_idmap(
    tree: std::os::fd::BorrowedFd<'_>,
    userns: std::os::fd::BorrowedFd<'_>,
) -> io::Result<()> {
    /// `struct mount_attr` (linux/mount.h).
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr reads `size` bytes from `attr`, a live repr(C)
    // struct of exactly that size; the path is an empty NUL-terminated string
    // (AT_EMPTY_PATH: `tree` itself); both fds are borrowed for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A child process waiting in a new user namespace of its own (whose
/// mappings the parent writes, then opens `/proc/PID/ns/user`). Dropping it
/// kills and reaps the child.
pub struct UsernsChild {
    pid: i32,
}

impl UsernsChild {
    /// Forks the child; returns once it is in its new user namespace.
    pub fn spawn() -> io::Result<UsernsChild> {
        use rustix::pipe::{pipe_with, PipeFlags};
        let (ready_r, ready_w) = pipe_with(PipeFlags::CLOEXEC)?;
        // SAFETY: between fork and its death the child calls only async-
        // signal-safe functions (prctl, unshare, write, close_range, pause)
        // on descriptors opened before the fork; it allocates nothing, takes
        // no lock and never returns into Rust code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: see above: the child's whole life, async-signal-safe.
            // It holds no descriptor once it has said it is ready (none of
            // the shim's pipes or sockets stays open in it), and dies with
            // the shim.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                let ok: u8 = u8::from(libc::unshare(libc::CLONE_NEWUSER) == 0);
                libc::write(ready_w.as_raw_fd(), (&ok as *const u8).cast(), 1);
                libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
                loop {
                    libc::pause();
                }
            }
        }
        drop(ready_w);
        let child = UsernsChild { pid };
        let mut b = [0u8];
        match rustix::io::read(&ready_r, &mut b) {
            Ok(1) if b[0] == 1 => Ok(child),
            Ok(_) => Err(io::Error::other(
                "unshare(CLONE_NEWUSER) failed in the child",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for UsernsChild {
    fn drop(&mut self) {
        // Reaped here unless the shim's reaper (waitpid(-1)) got it first.
        let _ = send_signal(self.pid, libc::SIGKILL);
        let _ = rustix::process::waitpid(
            rustix::process::Pid::from_raw(self.pid),
            rustix::process::WaitOptions::empty(),
        );
    }
}

/// Runs `f` on a thread of its own whose working directory is `dir`: the
/// thread unshares its filesystem context (CLONE_FS) first, so the shim's
/// own working directory never changes. For mount(2) with relative paths.
pub fn in_dir<T: Send>(
    dir: &std::path::Path,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare(CLONE_FS) gives this new thread, before it does
            // anything else, its own copy of the cwd/root/umask; no other
            // thread's state changes, and the thread ends after `f`.
            if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                return Err(io::Error::last_os_error());
            }
            std::env::set_current_dir(dir)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the mount thread panicked")))
    })
}

/// Attaches `file` to a free loop device with autoclear (the kernel detaches
/// it when its last user goes: the mount), read-only and with direct I/O as
/// asked. Returns the device's path and an open fd that holds it until the
/// mount has taken it.
pub fn attach_loop(
    file: &std::path::Path,
    read_only: bool,
    direct_io: bool,
) -> io::Result<(std::path::PathBuf, OwnedFd)> {
    use rustix::fs::{open, Mode, OFlags};
    /// `struct loop_info64` (linux/loop.h).
    #[repr(C)]
    struct LoopInfo64 {
        device: u64,
        inode: u64,
        rdevice: u64,
        offset: u64,
        sizelimit: u64,
        number: u32,
        encrypt_type: u32,
        encrypt_key_size: u32,
        flags: u32,
        file_name: [u8; 64],
        crypt_name: [u8; 64],
        encrypt_key: [u8; 32],
        init: [u64; 2],
    }
    /// `struct loop_config` (linux/loop.h).
    #[repr(C)]
    struct LoopConfig {
        fd: u32,
        block_size: u32,
        info: LoopInfo64,
        reserved: [u64; 8],
    }
    const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
    const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
    const LO_FLAGS_READ_ONLY: u32 = 1;
    const LO_FLAGS_AUTOCLEAR: u32 = 4;
    const LO_FLAGS_DIRECT_IO: u32 = 16;
    let mode = if read_only {
        OFlags::RDONLY
    } else {
        OFlags::RDWR
    };
    let backing = open(file, mode | OFlags::CLOEXEC, Mode::empty())?;
    let control = open(
        "/dev/loop-control",
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut flags = LO_FLAGS_AUTOCLEAR;
    if read_only {
        flags |= LO_FLAGS_READ_ONLY;
    }
    if direct_io {
        flags |= LO_FLAGS_DIRECT_IO;
    }
    // Another process may take the free device first: ask again.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device
        // number; `control` is an open /dev/loop-control.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let path = std::path::PathBuf::from(format!("/dev/loop{n}"));
        let dev = open(&path, mode | OFlags::CLOEXEC, Mode::empty())?;
        let cfg = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                sizelimit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags,
                file_name: [0; 64],
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `cfg`
        // is (repr(C), the kernel's layout), alive for the call; `dev` is an
        // open loop device.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
        if r == 0 {
            return Ok((path, dev));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(err);
        }
    }
    Err(io::Error::other("no free loop device"))
}
