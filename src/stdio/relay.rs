//! Moves bytes from a pipe, FIFO or pty to a pipe, FIFO, pty or file without
//! copying them through userspace where the kernel allows: `splice(2)` with
//! non-blocking ends, driven by tokio's readiness. Falls back to read/write
//! when the kernel refuses to splice (ptys, append-only files).
//!
//! Container output into a FIFO ([`Sink::Output`]) is paced by the FIFO's
//! reader while it takes bytes, as with every shim. A reader that takes
//! nothing for [`STALL`] (client killed, containerd down) does not block the
//! container: the relay keeps what the container writes in a [`Spill`]
//! (memory, then an unnamed file, up to a cap; beyond the cap it drops and
//! counts) and replays it, in order, as soon as the reader takes bytes again.
//! While it replays, what the container writes goes on after what is held, at
//! up to half the pace the reader takes the replay: the container is not
//! stopped by a reader catching up, and the backlog shrinks however slow the
//! reader is; once the spill is empty the relay splices directly again.
//!
//! Every relay counts what it took from its source, what it wrote to its
//! destination and what it dropped ([`Flow`]): the exit path uses the
//! counters to report an exit only after the output written before it has
//! been delivered (`stdio::delivery`).
//!
//! A relay ends at EOF on its source (EIO from a pty master whose slave is
//! closed counts as EOF) once nothing is held back, and then drops its
//! destination, which is how readers of the FIFO learn that the output is
//! complete. If the destination breaks (EPIPE), the relay keeps draining the
//! source into nothing, so the container is never blocked on a dead reader.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::pipe::{splice, SpliceFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;

use super::spill::{Spill, SpillPolicy};

const CHUNK: usize = 1 << 20;
/// How long a FIFO reader may take nothing before output goes to the spill.
pub const STALL: Duration = Duration::from_secs(1);
const BUF: usize = 64 * 1024;

/// What a relay has moved, shared with whoever waits for its delivery.
#[derive(Debug, Default)]
pub struct Flow {
    taken: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
    ended: AtomicBool,
}

impl Flow {
    /// A flow that has already moved these counts (a relay handed over).
    pub fn resumed(taken: u64, sent: u64, dropped: u64) -> Flow {
        Flow {
            taken: AtomicU64::new(taken),
            sent: AtomicU64::new(sent),
            dropped: AtomicU64::new(dropped),
            ended: AtomicBool::new(false),
        }
    }

    /// Bytes taken out of the source.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Acquire)
    }

    /// Bytes written into the destination.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    /// Bytes taken that will never reach the destination (spill full,
    /// destination broken).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Acquire)
    }

    /// Whether the relay has finished: the source is at EOF and nothing is
    /// held back.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    pub(super) fn add_taken(&self, n: usize) {
        self.taken.fetch_add(n as u64, Ordering::AcqRel);
    }

    pub(super) fn add_sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::AcqRel);
    }

    pub(super) fn add_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::AcqRel);
    }

    pub(super) fn mark_ended(&self) {
        self.ended.store(true, Ordering::Release);
    }
}

/// Where a relay writes.
pub enum Sink {
    /// A pipe, FIFO or pty: non-blocking, polled for space; the source
    /// waits for as long as it takes (stdin into a container, a logger).
    Pollable(OwnedFd),
    /// A FIFO that receives container output: a reader that takes nothing
    /// for [`STALL`] sends the output to a spill with this policy.
    Output(OwnedFd, SpillPolicy),
    /// A regular file (always writable).
    File(OwnedFd),
}

/// Asks relays to stop at their next wait and hand back their state (for an
/// upgrade in place). A relay with a signal that never fires runs to EOF.
#[derive(Clone)]
pub struct PauseSignal(watch::Receiver<bool>);

impl PauseSignal {
    /// A signal and the switch that fires it.
    pub fn new() -> (watch::Sender<bool>, PauseSignal) {
        let (tx, rx) = watch::channel(false);
        (tx, PauseSignal(rx))
    }

    /// A signal that never fires.
    pub fn never() -> PauseSignal {
        PauseSignal::new().1
    }

    /// Another signal fired by the same switch.
    pub fn from(rx: watch::Receiver<bool>) -> PauseSignal {
        PauseSignal(rx)
    }

    async fn requested(&mut self) {
        loop {
            if *self.0.borrow_and_update() {
                return;
            }
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// What a relay was doing when it paused.
pub enum Phase {
    /// Moving bytes straight through.
    Flowing,
    /// The destination is full; these bytes (copy mode) are still to write.
    Full(Vec<u8>),
    /// The reader stalled: output is held in a spill (and being replayed
    /// when `replaying`); `eof` once the source ended.
    Spilling {
        /// What is held.
        spill: Spill,
        /// The source ended.
        eof: bool,
        /// The reader was taking bytes again.
        replaying: bool,
    },
    /// The destination broke: the source is drained into nothing.
    Draining,
    /// The destination file has no room (its file system or quota is
    /// full): each chunk the source writes is tried on the file (one failed
    /// write costs what the read did) and what does not fit is dropped and
    /// counted. Handed over as `Flowing`, which finds out again.
    NoRoom(NoRoom),
}

/// How often a relay still dropping for want of room says so.
const NO_ROOM_REPORT: Duration = Duration::from_secs(10);

/// What a relay dropped since its file ran out of room.
pub struct NoRoom {
    dropped: u64,
    since: std::time::Instant,
    said_at: std::time::Instant,
}

impl NoRoom {
    fn new() -> NoRoom {
        let now = std::time::Instant::now();
        NoRoom {
            dropped: 0,
            since: now,
            said_at: now,
        }
    }
}

/// Whether a write failed because the file (system, quota) is full.
fn is_no_room(e: Errno) -> bool {
    matches!(e, Errno::NOSPC | Errno::DQUOT | Errno::FBIG)
}

/// A paused relay: everything needed to resume it, here or in the next
/// image after an upgrade.
pub struct RelayState {
    /// The source.
    pub src: Arc<OwnedFd>,
    /// The destination and how it is used.
    pub sink: Sink,
    /// Whether splice still works between the two.
    pub splice: bool,
    /// Where it was.
    pub phase: Phase,
}

/// How a relay run ended.
pub enum Outcome {
    /// The source ended and everything was delivered (or dropped).
    Ended,
    /// It paused; this resumes it.
    Paused(Box<RelayState>),
}

/// Puts `fd` in non-blocking mode.
pub fn set_nonblocking(fd: &impl AsFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

fn poll_now(fd: impl AsFd, flags: PollFlags) -> bool {
    let mut fds = [PollFd::new(&fd, flags)];
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&now)), Ok(n) if n > 0) && fds[0].revents().intersects(flags)
}

fn readable_now(fd: impl AsFd) -> bool {
    poll_now(fd, PollFlags::IN | PollFlags::HUP)
}

pub(super) fn writable_now(fd: impl AsFd) -> bool {
    poll_now(fd, PollFlags::OUT)
}

enum Dst {
    /// A polled destination that may make the source wait forever.
    Poll(AsyncFd<OwnedFd>),
    /// A polled destination that spills when its reader stalls.
    Output(AsyncFd<OwnedFd>, SpillPolicy),
    /// A regular file.
    Plain(OwnedFd),
}

impl Dst {
    fn new(sink: Sink) -> io::Result<Dst> {
        Ok(match sink {
            Sink::Pollable(fd) => {
                set_nonblocking(&fd)?;
                Dst::Poll(crate::sys::async_fd(fd, Interest::WRITABLE)?)
            }
            Sink::Output(fd, policy) => {
                set_nonblocking(&fd)?;
                Dst::Output(crate::sys::async_fd(fd, Interest::WRITABLE)?, policy)
            }
            Sink::File(fd) => Dst::Plain(fd),
        })
    }

    /// Back to a sink (deregistered), for a paused relay.
    fn into_sink(self) -> Sink {
        match self {
            Dst::Poll(a) => Sink::Pollable(a.into_inner()),
            Dst::Output(a, policy) => Sink::Output(a.into_inner(), policy),
            Dst::Plain(f) => Sink::File(f),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Dst::Poll(a) | Dst::Output(a, _) => a.get_ref().as_fd(),
            Dst::Plain(f) => f.as_fd(),
        }
    }

    /// Whether the destination can take bytes now (a file always can).
    fn has_room(&self) -> bool {
        matches!(self, Dst::Plain(_)) || writable_now(self.fd())
    }

    /// Waits until the destination can take more bytes.
    async fn wait_writable(&self) -> io::Result<()> {
        let (Dst::Poll(d) | Dst::Output(d, _)) = self else {
            return Ok(());
        };
        loop {
            let mut g = d.writable().await?;
            if writable_now(d.get_ref()) {
                return Ok(());
            }
            g.clear_ready();
        }
    }
}
/// What one read into the spill found.
enum Take {
    /// Bytes (or an interrupted read: try again).
    Took,
    /// Nothing now.
    Empty,
    /// The source ended.
    Eof,
}

/// What one step of the relay did.
enum Step {
    /// Bytes moved (or an interrupted call to retry).
    Moved,
    /// The source has nothing now.
    SourceEmpty,
    /// The destination is full; these bytes (copy mode) are still to write.
    DestFull(Vec<u8>),
    /// The source is at EOF.
    Eof,
    /// The destination failed.
    Broken(Errno),
    /// The kernel cannot splice between these two: copy instead.
    CannotSplice,
}

struct Relay {
    src: AsyncFd<Arc<OwnedFd>>,
    dst: Dst,
    flow: Arc<Flow>,
    stall: Duration,
    splice: bool,
}

/// Relays `src` (a pipe, FIFO or pty) into `sink` until EOF (no pause).
/// Returns the number of bytes that reached the sink.
#[cfg(test)]
pub async fn relay(src: OwnedFd, sink: Sink) -> io::Result<u64> {
    let flow = Arc::new(Flow::default());
    relay_counted(Arc::new(src), sink, flow.clone(), STALL).await?;
    Ok(flow.sent())
}

/// [`relay`] that reports into `flow`, with an explicit stall limit for
/// [`Sink::Output`]. The caller may keep `src` to look at what waits in it.
#[cfg(test)]
pub async fn relay_counted(
    src: Arc<OwnedFd>,
    sink: Sink,
    flow: Arc<Flow>,
    stall: Duration,
) -> io::Result<()> {
    let state = RelayState {
        src,
        sink,
        splice: true,
        phase: Phase::Flowing,
    };
    run(state, flow, stall, PauseSignal::never())
        .await
        .map(|_| ())
}

/// Runs a relay from `state` until its source ends or `pause` fires.
pub async fn run(
    state: RelayState,
    flow: Arc<Flow>,
    stall: Duration,
    pause: PauseSignal,
) -> io::Result<Outcome> {
    set_nonblocking(&*state.src)?;
    let relay = Relay {
        src: crate::sys::async_fd_shared(state.src, Interest::READABLE)?,
        dst: Dst::new(state.sink)?,
        flow: flow.clone(),
        stall,
        splice: state.splice,
    };
    let res = relay.drive(state.phase, pause).await;
    if matches!(res, Ok(Outcome::Ended) | Err(_)) {
        flow.ended.store(true, Ordering::Release);
    }
    res
}

impl Relay {
    /// The phase machine: each phase waits for something (racing the pause
    /// signal) and says which phase comes next.
    async fn drive(mut self, mut phase: Phase, mut pause: PauseSignal) -> io::Result<Outcome> {
        loop {
            let next = tokio::select! {
                biased;
                _ = pause.requested() => None,
                next = self.step(&mut phase) => Some(next?),
            };
            match next {
                None => return Ok(Outcome::Paused(Box::new(self.into_state(phase)))),
                Some(None) => return Ok(Outcome::Ended),
                Some(Some(p)) => phase = p,
            }
        }
    }

    fn into_state(self, phase: Phase) -> RelayState {
        RelayState {
            src: self.src.into_inner(),
            sink: self.dst.into_sink(),
            splice: self.splice,
            phase,
        }
    }

    /// Runs `phase` until it changes (`Some`) or the relay ends (`None`).
    /// Cancelled at its awaits when a pause fires: every byte taken from the
    /// source is by then written or held in `phase` (never in a local).
    async fn step(&mut self, phase: &mut Phase) -> io::Result<Option<Phase>> {
        match phase {
            Phase::Flowing => self.flowing().await,
            Phase::Full(pending) => self.full(pending).await,
            Phase::Spilling {
                spill,
                eof,
                replaying,
            } => self.spilling(spill, eof, replaying).await,
            Phase::Draining => {
                drain(&self.src, Some(&self.flow)).await;
                Ok(None)
            }
            Phase::NoRoom(state) => self.no_room(state).await,
        }
    }

    /// The file a failed write went to, for the operator.
    fn dst_name(&self) -> String {
        std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&self.dst.fd())
        ))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "output file".into())
    }

    /// The phase after a failed write to the destination.
    fn broken(&self, e: Errno) -> Phase {
        if is_no_room(e) {
            crate::warn!(
                "{}: {}: dropping output until it has room again",
                self.dst_name(),
                io::Error::from(e)
            );
            return Phase::NoRoom(NoRoom::new());
        }
        crate::debug!("relay: destination failed ({e}); discarding the rest");
        Phase::Draining
    }

    /// The file has no room: write what the source writes as far as it
    /// fits, drop (and count) the rest, and flow again once a chunk goes in
    /// whole.
    async fn no_room(&mut self, state: &mut NoRoom) -> io::Result<Option<Phase>> {
        let mut buf = vec![0u8; BUF];
        loop {
            let mut ready = self.src.readable().await?;
            let n = match rustix::io::read(self.src.get_ref(), &mut buf[..]) {
                Ok(0) | Err(Errno::IO) => {
                    crate::warn!(
                        "{}: output ended with {} bytes dropped for want of room",
                        self.dst_name(),
                        state.dropped
                    );
                    return Ok(None);
                }
                Ok(n) => n,
                Err(Errno::AGAIN) => {
                    ready.clear_ready();
                    continue;
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            self.flow.add_taken(n);
            let written = match self.write_some(&buf[..n]) {
                Ok(w) => w,
                Err((w, e)) if is_no_room(e) => w,
                Err((w, e)) => {
                    self.flow.add_dropped((n - w) as u64);
                    return Ok(Some(self.broken(e)));
                }
            };
            self.flow.add_dropped((n - written) as u64);
            state.dropped += (n - written) as u64;
            if written == n {
                crate::warn!(
                    "{}: room again after {:?}: {} bytes were dropped",
                    self.dst_name(),
                    state.since.elapsed(),
                    state.dropped
                );
                return Ok(Some(Phase::Flowing));
            }
            if state.said_at.elapsed() >= NO_ROOM_REPORT {
                state.said_at = std::time::Instant::now();
                crate::warn!(
                    "{}: still no room: {} bytes dropped so far",
                    self.dst_name(),
                    state.dropped
                );
            }
        }
    }

    async fn flowing(&mut self) -> io::Result<Option<Phase>> {
        let mut buf = Vec::new();
        loop {
            let mut ready = self.src.readable().await?;
            let step = if self.splice {
                self.splice_once()
            } else {
                self.copy_once(&mut buf)
            };
            match step {
                Step::Moved => {}
                Step::CannotSplice => self.splice = false,
                Step::SourceEmpty => ready.clear_ready(),
                Step::Eof => return Ok(None),
                Step::Broken(e) => return Ok(Some(self.broken(e))),
                Step::DestFull(pending) => return Ok(Some(Phase::Full(pending))),
            }
        }
    }

    /// The destination is full: wait for room (an output FIFO whose reader
    /// takes nothing for the stall limit makes the relay spill instead).
    async fn full(&mut self, pending: &mut Vec<u8>) -> io::Result<Option<Phase>> {
        if let Dst::Output(_, policy) = &self.dst {
            match tokio::time::timeout(self.stall, self.dst.wait_writable()).await {
                Ok(r) => r?,
                Err(_) => {
                    crate::warn!(
                        "{}: output reader took nothing for {:?}: holding output (up to {} bytes) until it reads again",
                        policy.label,
                        self.stall,
                        policy.max
                    );
                    let mut spill = Spill::new(policy.clone());
                    spill.push(pending, &self.flow);
                    return Ok(Some(Phase::Spilling {
                        spill,
                        eof: false,
                        replaying: false,
                    }));
                }
            }
        } else {
            self.dst.wait_writable().await?;
        }
        match self.write_some(pending) {
            Ok(n) if n == pending.len() => Ok(Some(Phase::Flowing)),
            Ok(n) => {
                pending.drain(..n);
                Ok(Some(Phase::Full(std::mem::take(pending))))
            }
            Err((n, e)) => {
                self.flow.add_dropped((pending.len() - n) as u64);
                Ok(Some(self.broken(e)))
            }
        }
    }

    /// The reader is stalled: keep the container's output in the spill; when
    /// it takes bytes again, replay in order while still keeping what the
    /// container writes; stalled again, back to only keeping.
    async fn spilling(
        &self,
        spill: &mut Spill,
        eof: &mut bool,
        replaying: &mut bool,
    ) -> io::Result<Option<Phase>> {
        let Dst::Output(dst, _) = &self.dst else {
            return Ok(Some(Phase::Flowing));
        };
        let mut buf = vec![0u8; BUF];
        // What was sent and taken when this replay began.
        let mut mark = (self.flow.sent(), self.flow.taken());
        loop {
            if !*replaying {
                // Stalled: take what the container writes; watch the reader.
                tokio::select! {
                    r = self.src.readable(), if !*eof => {
                        let mut g = r?;
                        match self.take_into(spill, &mut buf)? {
                            Take::Eof => {
                                *eof = true;
                                if spill.is_empty() {
                                    spill.report();
                                    return Ok(None);
                                }
                            }
                            Take::Empty => g.clear_ready(),
                            Take::Took => {}
                        }
                    }
                    r = dst.writable() => {
                        let mut g = r?;
                        if writable_now(dst.get_ref()) {
                            *replaying = true;
                            mark = (self.flow.sent(), self.flow.taken());
                        } else {
                            g.clear_ready();
                        }
                    }
                }
                continue;
            }
            // The reader is back: replay, in order, and keep taking the
            // container's output after what is held, at up to half the pace
            // the reader takes the replay: the container never stops while
            // the reader reads, and what is held always shrinks, however
            // slow the reader. (A spill whose footprint reached the cap
            // takes nothing more until it is empty.)
            match spill.send(dst.get_ref(), &self.flow) {
                Ok(true) => {
                    spill.report();
                    return Ok(if *eof { None } else { Some(Phase::Flowing) });
                }
                Ok(false) => {}
                Err(e) => {
                    spill.abandon(&self.flow, e);
                    return Ok(Some(Phase::Draining));
                }
            }
            let stalled = tokio::time::sleep(self.stall);
            tokio::pin!(stalled);
            loop {
                let replayed = self.flow.sent() - mark.0;
                let admitted = self.flow.taken() - mark.1;
                let share =
                    usize::try_from((replayed / 2).saturating_sub(admitted)).unwrap_or(usize::MAX);
                let room = spill.room_while_replaying().min(share).min(BUF);
                tokio::select! {
                    r = self.src.readable(), if !*eof && room > 0 => {
                        let mut g = r?;
                        match self.take_into(spill, &mut buf[..room])? {
                            Take::Eof => *eof = true,
                            Take::Empty => g.clear_ready(),
                            Take::Took => {}
                        }
                    }
                    r = dst.writable() => {
                        let mut g = r?;
                        if writable_now(dst.get_ref()) {
                            break;
                        }
                        g.clear_ready();
                    }
                    () = &mut stalled => {
                        // Stalled again: back to only keeping the output.
                        *replaying = false;
                        break;
                    }
                }
            }
        }
    }

    /// Reads what the container wrote (up to `buf`'s length) into the spill.
    fn take_into(&self, spill: &mut Spill, buf: &mut [u8]) -> io::Result<Take> {
        match rustix::io::read(self.src.get_ref(), &mut *buf) {
            Ok(0) | Err(Errno::IO) => Ok(Take::Eof),
            Ok(n) => {
                self.flow.add_taken(n);
                spill.push(&buf[..n], &self.flow);
                Ok(Take::Took)
            }
            Err(Errno::AGAIN) => Ok(Take::Empty),
            Err(Errno::INTR) => Ok(Take::Took),
            Err(e) => Err(e.into()),
        }
    }

    /// One splice from the source into the destination.
    fn splice_once(&self) -> Step {
        let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
        match splice(self.src.get_ref(), None, self.dst.fd(), None, CHUNK, flags) {
            Ok(0) | Err(Errno::IO) => Step::Eof,
            Ok(n) => {
                self.flow.add_taken(n);
                self.flow.add_sent(n);
                Step::Moved
            }
            Err(Errno::INTR) => Step::Moved,
            Err(Errno::AGAIN) => {
                // Either side may be the blocked one, and the other end of
                // each pipe moves concurrently: ask the kernel about both now
                // rather than inferring one from the other.
                if !self.dst.has_room() {
                    Step::DestFull(Vec::new())
                } else if !readable_now(self.src.get_ref()) {
                    Step::SourceEmpty
                } else {
                    Step::Moved
                }
            }
            Err(Errno::INVAL) => Step::CannotSplice,
            Err(e) => Step::Broken(e),
        }
    }

    /// One read from the source and as much of a write as fits.
    fn copy_once(&self, buf: &mut Vec<u8>) -> Step {
        buf.resize(BUF, 0);
        match rustix::io::read(self.src.get_ref(), &mut buf[..]) {
            Ok(0) | Err(Errno::IO) => Step::Eof,
            Ok(n) => {
                self.flow.add_taken(n);
                match self.write_some(&buf[..n]) {
                    Ok(w) if w == n => Step::Moved,
                    Ok(w) => Step::DestFull(buf[w..n].to_vec()),
                    Err((w, e)) => {
                        self.flow.add_dropped((n - w) as u64);
                        Step::Broken(e)
                    }
                }
            }
            Err(Errno::AGAIN) => Step::SourceEmpty,
            Err(Errno::INTR) => Step::Moved,
            Err(e) => Step::Broken(e),
        }
    }

    /// Writes what fits of `data` now; counts it as sent. On an error, how
    /// much was written before it.
    fn write_some(&self, mut data: &[u8]) -> Result<usize, (usize, Errno)> {
        let mut done = 0;
        while !data.is_empty() {
            match rustix::io::write(self.dst.fd(), data) {
                Ok(n) => {
                    self.flow.add_sent(n);
                    done += n;
                    data = &data[n..];
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => break,
                Err(e) => return Err((done, e)),
            }
        }
        Ok(done)
    }
}

/// Reads and drops everything left in `src` until EOF, counting it.
async fn drain<T: AsFd + std::os::fd::AsRawFd>(src: &AsyncFd<T>, flow: Option<&Flow>) {
    let mut buf = vec![0u8; BUF];
    loop {
        let Ok(mut g) = src.readable().await else {
            return;
        };
        match rustix::io::read(src.get_ref(), &mut buf[..]) {
            Ok(0) => return,
            Ok(n) => {
                if let Some(f) = flow {
                    f.add_taken(n);
                    f.add_dropped(n as u64);
                }
            }
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => g.clear_ready(),
            Err(_) => return,
        }
    }
}

/// Reads and drops everything from a pipe until EOF (a reader of last
/// resort); the source may be shared with whoever keeps it for a handover.
pub async fn discard_shared(src: Arc<OwnedFd>) {
    if set_nonblocking(&*src).is_err() {
        return;
    }
    if let Ok(a) = crate::sys::async_fd_shared(src, Interest::READABLE) {
        drain(&a, None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Instant;

    fn policy(max: u64) -> (tempfile::TempDir, SpillPolicy) {
        let d = tempfile::tempdir().unwrap();
        let p = SpillPolicy {
            max,
            ..SpillPolicy::new(d.path().to_path_buf())
        };
        (d, p)
    }

    /// Numbered 16-byte records, so order, gaps and duplicates show.
    fn records(from: u64, to: u64) -> Vec<u8> {
        (from..to)
            .flat_map(|i| format!("{i:015}\n").into_bytes())
            .collect()
    }

    #[tokio::test]
    async fn relays_pipe_to_pipe_and_file_completely() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let (r2, w2) = rustix::pipe::pipe().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || std::fs::File::from(w).write_all(&data).unwrap())
        };
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            std::fs::File::from(r2).read_to_end(&mut v).unwrap();
            v
        });
        let n = relay(r, Sink::Pollable(w2)).await.unwrap();
        writer.join().unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(reader.join().unwrap(), data);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let f = std::fs::File::create(&path).unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || std::fs::File::from(w).write_all(&data).unwrap())
        };
        relay(r, Sink::File(f.into())).await.unwrap();
        writer.join().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[tokio::test]
    async fn falls_back_to_copying_into_an_append_only_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, b"head\n").unwrap();
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::from(w);
            for i in 0..1000 {
                writeln!(f, "line {i}").unwrap();
            }
        });
        relay(r, Sink::File(f.into())).await.unwrap();
        writer.join().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("head\nline 0\n"));
        assert_eq!(text.lines().count(), 1001);
    }

    // A reader draining the destination concurrently, in small reads, must
    // never leave the relay waiting on a full source.
    #[tokio::test]
    async fn concurrent_small_reads_get_every_byte() {
        for round in 0..4 {
            let (r, w) = rustix::pipe::pipe().unwrap();
            let (r2, w2) = rustix::pipe::pipe().unwrap();
            let total = 32 << 20;
            let writer = std::thread::spawn(move || {
                let mut f = std::fs::File::from(w);
                let chunk = vec![3u8; 1 << 20];
                for _ in 0..32 {
                    f.write_all(&chunk).unwrap();
                }
            });
            let reader = std::thread::spawn(move || {
                let mut f = std::fs::File::from(r2);
                let mut buf = vec![0u8; 4096 + round * 1000];
                let mut n = 0;
                loop {
                    match f.read(&mut buf).unwrap() {
                        0 => return n,
                        k => n += k,
                    }
                }
            });
            let (_d, p) = policy(1 << 20);
            let relayed = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                relay(r, Sink::Output(w2, p)),
            )
            .await
            .expect("relay stalled")
            .unwrap();
            writer.join().unwrap();
            assert_eq!(relayed, total as u64);
            assert_eq!(reader.join().unwrap(), total);
        }
    }

    /// A reader that stops for longer than the stall limit, then comes back:
    /// the writer is never blocked for long, and the reader gets every
    /// record, in order, once.
    #[tokio::test]
    async fn a_stalled_reader_gets_everything_in_order_when_it_returns() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let (r2, w2) = rustix::pipe::pipe().unwrap();
        const N: u64 = 200_000; // 3.2 MB: memory stage and file
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::from(w);
            let mut longest = Duration::ZERO;
            for chunk in records(0, N).chunks(4096) {
                let t = Instant::now();
                f.write_all(chunk).unwrap();
                longest = longest.max(t.elapsed());
            }
            longest
        });
        let reader = std::thread::spawn(move || {
            let mut f = std::fs::File::from(r2);
            let mut first = vec![0u8; 8192];
            f.read_exact(&mut first).unwrap();
            // Stall, long enough for the relay to start spilling.
            std::thread::sleep(Duration::from_millis(1500));
            let mut rest = Vec::new();
            f.read_to_end(&mut rest).unwrap();
            first.extend_from_slice(&rest);
            first
        });
        let (_d, p) = policy(64 << 20);
        let flow = Arc::new(Flow::default());
        relay_counted(
            Arc::new(r),
            Sink::Output(w2, p),
            flow.clone(),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        let longest = writer.join().unwrap();
        let got = reader.join().unwrap();
        assert!(got == records(0, N), "records lost, reordered or repeated");
        assert_eq!(flow.sent(), 16 * N);
        assert_eq!(flow.dropped(), 0);
        assert!(
            longest < Duration::from_millis(1200),
            "the writer was blocked for {longest:?}"
        );
    }

    /// A reader that comes back slower than the writer: the replay keeps
    /// taking the writer's output (it is never stopped for longer than the
    /// stall limit) and every record still arrives once, in order.
    #[tokio::test]
    async fn a_reader_catching_up_slowly_does_not_stop_the_writer() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let (r2, w2) = rustix::pipe::pipe().unwrap();
        const CHUNKS: u64 = 120;
        const PER_CHUNK: u64 = 4096; // 16-byte records: 64 KiB a chunk
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::from(w);
            let mut longest = Duration::ZERO;
            for c in 0..CHUNKS {
                let t = Instant::now();
                f.write_all(&records(c * PER_CHUNK, (c + 1) * PER_CHUNK))
                    .unwrap();
                longest = longest.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(20));
            }
            longest
        });
        let reader = std::thread::spawn(move || {
            let mut f = std::fs::File::from(r2);
            let mut got = vec![0u8; 8192];
            f.read_exact(&mut got).unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            // About two thirds of the writer's rate.
            let mut chunk = vec![0u8; 64 << 10];
            loop {
                match f.read(&mut chunk).unwrap() {
                    0 => break got,
                    n => got.extend_from_slice(&chunk[..n]),
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        let (_d, p) = policy(64 << 20);
        let flow = Arc::new(Flow::default());
        relay_counted(
            Arc::new(r),
            Sink::Output(w2, p),
            flow.clone(),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        let longest = writer.join().unwrap();
        let got = reader.join().unwrap();
        assert!(
            got == records(0, CHUNKS * PER_CHUNK),
            "records lost, reordered or repeated"
        );
        assert_eq!(flow.dropped(), 0);
        assert!(
            longest < Duration::from_millis(1000),
            "the writer was stopped for {longest:?} while the reader caught up"
        );
    }

    /// A 1 MiB burst written just before the writer ends, while the reader
    /// is stalled long enough for the relay to spill, then reads at once:
    /// every byte arrives, in order, once, in each of 20 runs (spilling,
    /// replaying and EOF all meet near the end).
    #[tokio::test]
    async fn a_burst_before_the_end_survives_a_stall_every_time() {
        const N: u64 = 65_536; // 16-byte records: 1 MiB
        for run in 0..20 {
            let (r, w) = rustix::pipe::pipe().unwrap();
            let (r2, w2) = rustix::pipe::pipe().unwrap();
            let writer = std::thread::spawn(move || {
                std::fs::File::from(w).write_all(&records(0, N)).unwrap();
            });
            let reader = std::thread::spawn(move || {
                let mut f = std::fs::File::from(r2);
                std::thread::sleep(Duration::from_millis(80));
                let mut got = Vec::new();
                f.read_to_end(&mut got).unwrap();
                got
            });
            let (_d, p) = policy(64 << 20);
            let flow = Arc::new(Flow::default());
            relay_counted(
                Arc::new(r),
                Sink::Output(w2, p),
                flow.clone(),
                Duration::from_millis(30),
            )
            .await
            .unwrap();
            writer.join().unwrap();
            let got = reader.join().unwrap();
            assert_eq!(got.len() as u64, 16 * N, "run {run}: bytes");
            assert!(
                got == records(0, N),
                "run {run}: records lost, reordered or repeated"
            );
            assert_eq!(
                (flow.taken(), flow.sent(), flow.dropped()),
                (16 * N, 16 * N, 0)
            );
        }
    }

    /// Beyond the spill cap, output is dropped and counted; what arrives is
    /// in order, and everything taken is either sent or counted as dropped.
    #[tokio::test]
    async fn a_full_spill_drops_and_counts() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let (r2, w2) = rustix::pipe::pipe().unwrap();
        const N: u64 = 100_000;
        let writer = std::thread::spawn(move || {
            std::fs::File::from(w).write_all(&records(0, N)).unwrap();
        });
        let reader = std::thread::spawn(move || {
            let mut f = std::fs::File::from(r2);
            std::thread::sleep(Duration::from_millis(1500));
            let mut all = Vec::new();
            f.read_to_end(&mut all).unwrap();
            all
        });
        let (_d, p) = policy(256 * 1024);
        let flow = Arc::new(Flow::default());
        relay_counted(
            Arc::new(r),
            Sink::Output(w2, p),
            flow.clone(),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        writer.join().unwrap();
        let got = reader.join().unwrap();
        assert_eq!(flow.taken(), 16 * N);
        assert!(flow.dropped() > 0);
        assert_eq!(flow.sent() + flow.dropped(), flow.taken());
        assert_eq!(got.len() as u64, flow.sent());
        let nums: Vec<u64> = got
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| std::str::from_utf8(l).unwrap().parse().unwrap())
            .collect();
        assert!(nums.windows(2).all(|w| w[0] < w[1]), "out of order");
    }

    /// With no spill allowed, a stalled reader makes the relay discard
    /// instead of blocking the writer.
    #[tokio::test]
    async fn a_stalled_output_without_spill_discards_instead_of_blocking_the_writer() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        // A destination nobody reads: it fills up and stays full.
        let (_unread, w2) = rustix::pipe::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::from(w);
            for _ in 0..256 {
                f.write_all(&[1u8; 65536]).unwrap();
            }
        });
        let (_d, p) = policy(0);
        let flow = Arc::new(Flow::default());
        let relay = relay_counted(
            Arc::new(r),
            Sink::Output(w2, p),
            flow.clone(),
            Duration::from_millis(300),
        );
        tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .expect("the relay ends with its source")
            .unwrap();
        writer.join().unwrap();
        assert!(flow.sent() <= 65536, "only the FIFO's buffer was filled");
        assert_eq!(flow.sent() + flow.dropped(), 256 * 65536);
    }

    #[tokio::test]
    async fn broken_destination_still_drains_the_source() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let (r2, w2) = rustix::pipe::pipe().unwrap();
        drop(r2);
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::from(w);
            for _ in 0..64 {
                f.write_all(&[7u8; 65536]).unwrap();
            }
        });
        relay(r, Sink::Pollable(w2)).await.unwrap();
        writer.join().unwrap();
    }

    /// Paused and resumed (as across an upgrade) while flowing, while the
    /// destination is full and while spilling: every record arrives, in
    /// order, once.
    #[tokio::test]
    async fn pausing_and_resuming_loses_and_repeats_nothing() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let (r2, w2) = rustix::pipe::pipe().unwrap();
        const N: u64 = 300_000;
        let writer = std::thread::spawn(move || {
            std::fs::File::from(w).write_all(&records(0, N)).unwrap();
        });
        let reader = std::thread::spawn(move || {
            let mut f = std::fs::File::from(r2);
            let mut got = vec![0u8; 100_000];
            f.read_exact(&mut got).unwrap();
            // Stall long enough for the relay to spill.
            std::thread::sleep(Duration::from_millis(700));
            f.read_to_end(&mut got).unwrap();
            got
        });
        let (_d, p) = policy(64 << 20);
        let flow = Arc::new(Flow::default());
        let mut state = RelayState {
            src: Arc::new(r),
            sink: Sink::Output(w2, p),
            splice: true,
            phase: Phase::Flowing,
        };
        let mut phases = Vec::new();
        for round in 0.. {
            let (switch, signal) = PauseSignal::new();
            let run = tokio::spawn(run(state, flow.clone(), Duration::from_millis(200), signal));
            // Some pauses come before the stall limit, some after.
            let wait = if round % 2 == 0 { 50 } else { 350 };
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let _ = switch.send(true);
            match run.await.unwrap().unwrap() {
                Outcome::Ended => break,
                Outcome::Paused(s) => {
                    let s = *s;
                    phases.push(match &s.phase {
                        Phase::Flowing => "flowing",
                        Phase::Full(_) => "full",
                        Phase::Spilling { .. } => "spilling",
                        Phase::Draining => "draining",
                        Phase::NoRoom(_) => "no room",
                    });
                    state = s;
                }
            }
        }
        writer.join().unwrap();
        let got = reader.join().unwrap();
        assert!(got == records(0, N), "records lost, reordered or repeated");
        assert!(
            phases.contains(&"spilling"),
            "never paused while spilling: {phases:?}"
        );
        assert_eq!(flow.sent(), 16 * N);
    }
}
