//! A process record (a container's init or one of its execs): its state
//! machine, pid, exit, and stdio.
//!
//! State lives behind a short `std` mutex that is never held across an
//! await, so State, Wait and Kill never queue behind a runtime call. The
//! per-process `lifecycle` lock serialises what must not interleave for one
//! process (start, delete, exit handling): it is what guarantees that a start
//! event precedes the exit event.

pub mod state;

pub use state::{Op, Status};

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::stdio::{ProcessIo, StdioSpec, Undelivered};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, or 128 + signal.
    pub status: u32,
    /// When it was reaped.
    pub at: SystemTime,
}

/// The mutable part of a process record.
#[derive(Debug, Clone, Copy)]
pub struct ProcState {
    /// Lifecycle state.
    pub status: Status,
    /// Set once the process has been reaped.
    pub exit: Option<ExitInfo>,
}

/// A process taken apart for an upgrade in place (its stdio paused).
pub struct ProcessHandover {
    /// Exec id; empty for init.
    pub exec_id: String,
    /// The stdio URIs.
    pub stdio: StdioSpec,
    /// For an exec: its process spec.
    pub spec: Vec<u8>,
    /// The pid, 0 if not started.
    pub pid: u32,
    /// Lifecycle state and exit.
    pub state: ProcState,
    /// CloseIO arrived.
    pub stdin_closed: bool,
    /// The pidfd, while the process lives.
    pub pidfd: Option<OwnedFd>,
    /// The paused stdio, if set up.
    pub io: Option<crate::stdio::IoState>,
}

/// One process: init (`exec_id` empty) or an exec.
pub struct Process {
    /// Exec id; empty for init.
    pub exec_id: String,
    /// The stdio URIs.
    pub stdio: StdioSpec,
    /// For an exec: the process spec (JSON) to run.
    pub spec: Vec<u8>,
    /// Serialises start / delete / exit handling of this process.
    pub lifecycle: tokio::sync::Mutex<()>,
    pid: AtomicU32,
    state: Mutex<ProcState>,
    exited: watch::Sender<Option<ExitInfo>>,
    io: tokio::sync::Mutex<Option<ProcessIo>>,
    /// CloseIO arrived (possibly before the stdio existed).
    stdin_closed: AtomicBool,
    /// The reaper collected it; its exit may not be reported yet (its output
    /// is still being delivered), but its pid is no longer its own.
    reaped: AtomicBool,
    /// A pidfd for the process while it is alive: signals through it cannot
    /// reach a later owner of the pid.
    pidfd: Mutex<Option<OwnedFd>>,
    /// An exec whose Start is in flight.
    starting: AtomicBool,
}

impl Process {
    /// A process record in `status`, with no pid yet.
    pub fn new(exec_id: String, stdio: StdioSpec, spec: Vec<u8>, status: Status) -> Process {
        Process {
            exec_id,
            stdio,
            spec,
            lifecycle: tokio::sync::Mutex::new(()),
            pid: AtomicU32::new(0),
            state: Mutex::new(ProcState { status, exit: None }),
            exited: watch::channel(None).0,
            io: tokio::sync::Mutex::new(None),
            stdin_closed: AtomicBool::new(false),
            reaped: AtomicBool::new(false),
            pidfd: Mutex::new(None),
            starting: AtomicBool::new(false),
        }
    }

    /// Takes the process apart for an upgrade in place: its stdio is
    /// paused. The process must have no exit in progress (reaped, not
    /// reported).
    pub async fn hand_over(&self) -> ProcessHandover {
        let io = match self.io.lock().await.take() {
            Some(io) => Some(io.pause().await),
            None => None,
        };
        ProcessHandover {
            exec_id: self.exec_id.clone(),
            stdio: self.stdio.clone(),
            spec: self.spec.clone(),
            pid: self.pid(),
            state: self.state(),
            stdin_closed: self.stdin_closed.load(Ordering::Acquire),
            pidfd: self.pidfd.lock().unwrap_or_else(|p| p.into_inner()).take(),
            io,
        }
    }

    /// A process handed over by a previous image of the shim.
    pub fn take_over(
        h: ProcessHandover,
        reaper: &std::sync::Arc<crate::reaper::Reaper>,
    ) -> Process {
        let p = Process::new(h.exec_id, h.stdio, h.spec, h.state.status);
        p.set_pid(h.pid);
        p.stdin_closed.store(h.stdin_closed, Ordering::Release);
        if let Some(exit) = h.state.exit {
            p.set_exited(exit);
        }
        *p.pidfd.lock().unwrap_or_else(|p| p.into_inner()) = h.pidfd;
        if let Some(io) = h.io {
            *p.io.try_lock().expect("a new process's stdio is free") =
                Some(ProcessIo::resume(io, reaper));
        }
        p
    }

    fn lock(&self) -> MutexGuard<'_, ProcState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pid, 0 until the runtime has started the process.
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Acquire)
    }

    /// Records the pid reported by the runtime.
    pub fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Ordering::Release);
    }

    /// A snapshot of the state.
    pub fn state(&self) -> ProcState {
        *self.lock()
    }

    /// Sets the lifecycle status (the caller has checked the guard). An
    /// exit that was already recorded wins over anything but Deleted.
    pub fn set_status(&self, status: Status) {
        let mut st = self.lock();
        if st.exit.is_none() || status == Status::Deleted {
            st.status = status;
        }
    }

    /// Marks the process as reaped (and lets its pidfd go). Returns false
    /// if it already was.
    pub fn mark_reaped(&self) -> bool {
        self.pidfd.lock().unwrap_or_else(|p| p.into_inner()).take();
        !self.reaped.swap(true, Ordering::AcqRel)
    }

    /// Keeps a pidfd opened for the process while it was known to be alive.
    pub fn set_pidfd(&self, fd: OwnedFd) {
        if !self.is_reaped() {
            *self.pidfd.lock().unwrap_or_else(|p| p.into_inner()) = Some(fd);
        }
    }

    /// Sends `sig` to the process through its pidfd; never once it was
    /// reaped (its pid may be someone else's by then), never by bare pid.
    pub fn signal(&self, sig: i32) -> std::io::Result<()> {
        if self.is_reaped() {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        match self
            .pidfd
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(fd) => crate::sys::pidfd_send_signal(fd.as_fd(), sig),
            None => Err(std::io::Error::other("no pidfd for the process")),
        }
    }

    /// Whether the reaper has collected the process (its pid may be reused).
    pub fn is_reaped(&self) -> bool {
        self.reaped.load(Ordering::Acquire)
    }

    /// Waits until what the process wrote so far has been delivered, within
    /// the given bounds.
    pub async fn settle_output(
        &self,
        idle: std::time::Duration,
        limit: std::time::Duration,
    ) -> Result<(), Undelivered> {
        let outlets = match self.io.lock().await.as_ref() {
            Some(io) => io.outlets(),
            None => return Ok(()),
        };
        crate::stdio::delivery::settle(&outlets, idle, limit).await
    }

    /// Records the exit and wakes every waiter. Returns false if an exit was
    /// already recorded.
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

    /// Marks an exec whose Start is in flight (`true`) or has succeeded
    /// (`false`, after its status became running). A new start forgets what
    /// a failed one told its waiters.
    pub fn set_starting(&self, on: bool) {
        self.starting.store(on, Ordering::Release);
        if on && self.lock().exit.is_none() {
            self.exited.send_replace(None);
        }
    }

    /// A Start that failed: the process stays as it was (`created`, as the
    /// Go shim leaves it) and its waiters are released with `exit`.
    pub fn start_failed(&self, exit: ExitInfo) {
        self.starting.store(false, Ordering::Release);
        self.exited.send_replace(Some(exit));
    }

    /// Whether this exec holds back its container's init exit: its Start is
    /// in flight, or it ran and its exit is not recorded yet.
    pub fn holds_init_exit(&self) -> bool {
        let st = self.state();
        self.starting.load(Ordering::Acquire)
            || (st.exit.is_none() && matches!(st.status, Status::Running))
    }

    /// Waits until the process has exited.
    pub async fn wait(&self) -> ExitInfo {
        let mut rx = self.exited.subscribe();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The sender lives inside self, which we borrow.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Installs the shim side of the stdio.
    pub async fn set_io(&self, io: ProcessIo) {
        if self.stdin_closed.load(Ordering::Acquire) {
            io.close_stdin();
        }
        *self.io.lock().await = Some(io);
    }

    /// Closes the shim's stdin writer (CloseIO). A CloseIO that arrives
    /// before Start is remembered and applied when the stdio is set up.
    pub async fn close_stdin(&self) {
        self.stdin_closed.store(true, Ordering::Release);
        if let Some(io) = self.io.lock().await.as_ref() {
            io.close_stdin();
        }
    }

    /// Resizes the terminal, if any.
    pub async fn resize(&self, width: u32, height: u32) -> std::io::Result<()> {
        match self.io.lock().await.as_ref() {
            Some(io) => io.resize(width, height),
            None => Ok(()),
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
