//! The one reaper: the shim is the child subreaper of every container process,
//! and this module is the only code that calls `wait`.
//!
//! On every SIGCHLD it loops `waitpid(-1, WNOHANG)` until nothing is left, so
//! coalesced signals never lose an exit. Each exit goes to every subscriber:
//! runtime-command waiters (which filter for their own pid) and the task
//! service (which matches container and exec pids). A waiter subscribes
//! *before* it spawns, so an exit can never be reaped unseen.
//!
//! Each reap also gets a sequence number, and the last pids reaped are kept,
//! so that code which opens a pidfd can tell whether the pid was already
//! reaped (and could name another process) since a point it noted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustix::process::{WaitOptions, WaitStatus};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// One reaped child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The pid that exited.
    pub pid: i32,
    /// Exit code, or 128 + signal number when killed by a signal.
    pub status: u32,
    /// When the shim reaped it.
    pub at: SystemTime,
}

type Subscribers = Mutex<Vec<(u64, mpsc::UnboundedSender<Exit>)>>;

/// How many recent reaps are remembered for [`Reaper::reaped_since`].
const RECENT: usize = 256;

/// Fans reaped exits out to subscribers.
#[derive(Default)]
pub struct Reaper {
    subscribers: Subscribers,
    next_id: AtomicU64,
    /// (sequence number, pid) of the last reaps; the front is the oldest.
    recent: Mutex<VecDeque<(u64, i32)>>,
    reaps: AtomicU64,
}

/// A live subscription; dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    rx: mpsc::UnboundedReceiver<Exit>,
    reaper: Arc<Reaper>,
}

impl Subscription {
    /// The next exit of any child.
    pub async fn recv(&mut self) -> Option<Exit> {
        self.rx.recv().await
    }

    /// Waits for the exit of `pid`, ignoring the others.
    pub async fn wait_for(&mut self, pid: i32) -> Exit {
        loop {
            match self.rx.recv().await {
                Some(e) if e.pid == pid => return e,
                Some(_) => continue,
                // The reaper owns the senders and lives as long as the shim.
                None => std::future::pending::<()>().await,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut subs) = self.reaper.subscribers.lock() {
            subs.retain(|(id, _)| *id != self.id);
        }
    }
}

impl Reaper {
    /// A reaper with no subscribers.
    pub fn new() -> Arc<Self> {
        Arc::new(Reaper::default())
    }

    /// Starts receiving every exit from now on.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, tx));
        Subscription {
            id,
            rx,
            reaper: self.clone(),
        }
    }

    /// Delivers one exit to every subscriber.
    pub fn publish(&self, exit: Exit) {
        let subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        for (_, tx) in subs.iter() {
            let _ = tx.send(exit);
        }
    }

    /// The sequence number the next reap will get.
    pub fn seq(&self) -> u64 {
        self.reaps.load(Ordering::Acquire)
    }

    /// Whether `pid` may have been reaped since `seq` (true when too many
    /// reaps happened since to tell).
    pub fn reaped_since(&self, seq: u64, pid: i32) -> bool {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        match recent.front() {
            Some((oldest, _)) if *oldest > seq => true,
            _ => recent.iter().any(|(s, p)| *s >= seq && *p == pid),
        }
    }

    fn remember(&self, pid: i32) {
        let seq = self.reaps.fetch_add(1, Ordering::AcqRel);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back((seq, pid));
    }

    /// Reaps every exited child now, without blocking.
    /// Returns how many it reaped.
    pub fn reap_all(&self) -> usize {
        let mut n = 0;
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, st))) => {
                    let pid = pid.as_raw_nonzero().get();
                    self.remember(pid);
                    self.publish(Exit {
                        pid,
                        status: exit_code(st),
                        at: SystemTime::now(),
                    });
                    n += 1;
                }
                Ok(None) => return n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return n, // ECHILD: nothing left to reap.
            }
        }
    }

    /// Becomes the child subreaper and reaps on every SIGCHLD, forever.
    pub async fn run(self: Arc<Self>) -> std::io::Result<()> {
        let mut sigchld = signal(SignalKind::child())?;
        // Children that exited before this reaper ran (during an upgrade in
        // place, they waited as zombies for the new image).
        let n = self.reap_all();
        if n > 0 {
            crate::info!("reaped {n} children that exited before this image started");
        }
        while sigchld.recv().await.is_some() {
            let _ = self.reap_all();
        }
        Ok(())
    }
}

/// Makes this process the subreaper of all its descendants.
pub fn become_subreaper() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    Ok(())
}

/// The shell convention: the exit code, or 128 + signal when signalled.
pub fn exit_code(st: WaitStatus) -> u32 {
    if let Some(code) = st.exit_status() {
        code as u32
    } else if let Some(sig) = st.terminating_signal() {
        128 + sig as u32
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    // Reaps with waitpid(-1): run under nextest (one process per test) so no
    // other test's children are collected.
    #[tokio::test]
    #[allow(clippy::zombie_processes)] // the Reaper under test collects them
    async fn delivers_exit_codes_and_signals() {
        let reaper = Reaper::new();
        let mut sub = reaper.subscribe();
        let ok = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let killed = Command::new("sh")
            .args(["-c", "kill -9 $$"])
            .spawn()
            .unwrap();
        tokio::spawn(reaper.clone().run());
        let mut seen = std::collections::HashMap::new();
        while seen.len() < 2 {
            let e = sub.recv().await.unwrap();
            seen.insert(e.pid, e.status);
        }
        assert_eq!(seen[&(ok.id() as i32)], 3);
        assert_eq!(seen[&(killed.id() as i32)], 137);
    }

    #[test]
    fn remembers_recent_reaps() {
        let reaper = Reaper::new();
        let start = reaper.seq();
        reaper.remember(10);
        assert!(reaper.reaped_since(start, 10));
        assert!(!reaper.reaped_since(start, 11));
        let later = reaper.seq();
        assert!(!reaper.reaped_since(later, 10));
        for pid in 0..RECENT as i32 {
            reaper.remember(1000 + pid);
        }
        assert!(reaper.reaped_since(start, 99), "forgotten: assume reaped");
    }

    #[test]
    fn unsubscribes_on_drop() {
        let reaper = Reaper::new();
        let s = reaper.subscribe();
        assert_eq!(reaper.subscribers.lock().unwrap().len(), 1);
        drop(s);
        assert_eq!(reaper.subscribers.lock().unwrap().len(), 0);
    }
}
