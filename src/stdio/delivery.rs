//! Delivery: how the exit path knows that a process's output has arrived.
//!
//! A process's exit is reported (event, Wait, State) only after every byte
//! it wrote before exiting has been delivered: written to the file, or, for
//! a FIFO, read out of it by the client. Clients built on containerd's Go
//! client close their FIFO readers as soon as they see the exit, so whatever
//! was still in the shim's pipes at that moment would be lost.
//!
//! At the exit, each output stream's target is what its relay has taken so
//! far plus what waits in the source pipe now (the process is gone, so that
//! is all it wrote; a surviving child that keeps the pipe open adds only
//! later bytes). A pty master has no reliable count of what waits in it, so
//! a terminal's output is delivered once its relay ends (the slave closed)
//! and the FIFO is empty. Delivered means: sent into the destination, minus
//! what still sits in the FIFO (counted through the shim's own reader),
//! plus what was dropped (never deliverable).
//!
//! The wait is bounded: it gives up after [`IDLE`] with no byte moving (no
//! reader, a reader that takes nothing) and after [`LIMIT`] in all.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::relay::Flow;

/// The exit waits at most this long for output that does not move.
pub const IDLE: Duration = Duration::from_secs(1);
/// The exit waits at most this long for its output in all.
pub const LIMIT: Duration = Duration::from_secs(5);

/// One output stream of a process, as the exit path sees it.
pub struct Outlet {
    flow: Arc<Flow>,
    /// The source the relay reads (the pipe's read end or the pty master).
    src: Arc<OwnedFd>,
    /// The shim's own reader on the destination FIFO, if the destination
    /// is one: what waits in the FIFO is counted through it.
    fifo_reader: std::sync::Mutex<Option<OwnedFd>>,
    pty: bool,
}

fn waiting_in(fd: impl AsFd) -> u64 {
    rustix::io::ioctl_fionread(fd).unwrap_or(0)
}

impl Outlet {
    /// An outlet for a relay reporting into `flow`.
    pub fn new(
        flow: Arc<Flow>,
        src: Arc<OwnedFd>,
        fifo_reader: Option<OwnedFd>,
        pty: bool,
    ) -> Outlet {
        Outlet {
            flow,
            src,
            fifo_reader: std::sync::Mutex::new(fifo_reader),
            pty,
        }
    }

    /// Takes the outlet apart (for a handover).
    pub fn take_parts(&self) -> OutletParts {
        OutletParts {
            src: self.src.clone(),
            fifo_reader: self
                .fifo_reader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
            pty: self.pty,
            counts: (self.flow.taken(), self.flow.sent(), self.flow.dropped()),
        }
    }

    /// What must be delivered: everything taken so far plus what waits in
    /// the source now (`None` for a pty: its relay must end).
    fn target(&self) -> Option<u64> {
        (!self.pty).then(|| self.flow.taken() + waiting_in(&*self.src))
    }

    fn in_fifo(&self) -> u64 {
        self.fifo_reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, waiting_in)
    }

    /// Bytes that have left the shim's hands for good.
    fn delivered(&self) -> u64 {
        (self.flow.sent() + self.flow.dropped()).saturating_sub(self.in_fifo())
    }

    fn is_delivered(&self, target: Option<u64>) -> bool {
        match target {
            _ if self.flow.ended() => self.in_fifo() == 0,
            Some(t) => self.delivered() >= t,
            None => false,
        }
    }
}

/// An outlet's parts, for a handover.
pub struct OutletParts {
    /// The relay's source.
    pub src: Arc<OwnedFd>,
    /// The shim's reader on the destination FIFO.
    pub fifo_reader: Option<OwnedFd>,
    /// The source is a pty master.
    pub pty: bool,
    /// Bytes taken, sent and dropped.
    pub counts: (u64, u64, u64),
}

/// Why delivery was not confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undelivered {
    /// Bytes still held (in the pipes, the spill or the FIFO) when the wait
    /// gave up, for the streams that were not delivered.
    pub pending: u64,
    /// How long the wait took.
    pub waited: Duration,
}

/// Waits until every outlet has delivered what its process wrote so far,
/// or until nothing moved for `idle`, or `limit` passed.
pub async fn settle(
    outlets: &[Arc<Outlet>],
    idle: Duration,
    limit: Duration,
) -> Result<(), Undelivered> {
    let targets: Vec<Option<u64>> = outlets.iter().map(|o| o.target()).collect();
    let start = Instant::now();
    let progress = || -> u64 { outlets.iter().map(|o| o.flow.taken() + o.delivered()).sum() };
    let (mut moved_at, mut seen) = (start, progress());
    let mut pause = Duration::from_millis(1);
    loop {
        let open: Vec<usize> = (0..outlets.len())
            .filter(|&i| !outlets[i].is_delivered(targets[i]))
            .collect();
        if open.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let p = progress();
        if p != seen {
            (moved_at, seen) = (now, p);
            pause = Duration::from_millis(1);
        }
        if now - moved_at >= idle || now - start >= limit {
            let pending = open
                .iter()
                .map(|&i| {
                    let o = &outlets[i];
                    let t = targets[i].unwrap_or(o.flow.taken()) + waiting_in(&*o.src);
                    t.saturating_sub(o.delivered())
                })
                .sum();
            return Err(Undelivered {
                pending,
                waited: now - start,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(16));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stdio::relay::{relay_counted, Sink, STALL};
    use crate::stdio::spill::SpillPolicy;
    use std::io::{Read, Write};

    fn fifo(dir: &std::path::Path) -> (OwnedFd, OwnedFd) {
        let p = dir.join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &p, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
        let r = rustix::fs::open(
            &p,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let w = rustix::fs::open(
            &p,
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        (r, w)
    }

    /// Settles only once the client has read the burst out of the FIFO.
    #[tokio::test]
    async fn settles_when_the_reader_has_taken_everything() {
        let d = tempfile::tempdir().unwrap();
        let (keeper, w) = fifo(d.path());
        let client = rustix::fs::open(
            d.path().join("fifo"),
            rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let (src, cw) = rustix::pipe::pipe().unwrap();
        rustix::pipe::fcntl_setpipe_size(&cw, 1 << 20).unwrap();
        // The whole burst is written before the "exit": it sits in the pipe.
        let burst = vec![b'x'; 900 * 1024];
        let writer = std::thread::spawn(move || {
            std::fs::File::from(cw).write_all(&burst).unwrap();
        });
        writer.join().unwrap();
        let src = Arc::new(src);
        let flow = Arc::new(Flow::default());
        let outlet = Arc::new(Outlet::new(flow.clone(), src.clone(), Some(keeper), false));
        let relay = tokio::spawn(relay_counted(
            src,
            Sink::Output(w, SpillPolicy::new(d.path().to_path_buf())),
            flow,
            STALL,
        ));
        let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let reader = {
            let read = read.clone();
            std::thread::spawn(move || {
                let mut f = std::fs::File::from(client);
                let mut buf = vec![0u8; 4096];
                loop {
                    match f.read(&mut buf).unwrap() {
                        0 => break,
                        n => {
                            read.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                            std::thread::sleep(Duration::from_micros(50));
                        }
                    }
                }
            })
        };
        settle(&[outlet], IDLE, LIMIT).await.unwrap();
        assert_eq!(
            read.load(std::sync::atomic::Ordering::SeqCst),
            900 * 1024,
            "settled before the client had read everything"
        );
        relay.await.unwrap().unwrap();
        reader.join().unwrap();
    }

    /// With nobody reading, the wait gives up after the idle bound.
    #[tokio::test]
    async fn gives_up_when_nothing_moves() {
        let d = tempfile::tempdir().unwrap();
        let (keeper, w) = fifo(d.path());
        let (src, cw) = rustix::pipe::pipe().unwrap();
        rustix::io::write(&cw, &[b'y'; 1000]).unwrap();
        drop(cw);
        let src = Arc::new(src);
        let flow = Arc::new(Flow::default());
        let outlet = Arc::new(Outlet::new(flow.clone(), src.clone(), Some(keeper), false));
        let _relay = tokio::spawn(relay_counted(
            src,
            Sink::Output(w, SpillPolicy::new(d.path().to_path_buf())),
            flow,
            STALL,
        ));
        let t = Instant::now();
        let e = settle(&[outlet], Duration::from_millis(200), LIMIT)
            .await
            .unwrap_err();
        assert_eq!(e.pending, 1000);
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
