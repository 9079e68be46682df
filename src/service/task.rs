//! The Task service: what each RPC does, in terms of containers, processes,
//! the runtime and events. Decoding and encoding live in `service/mod.rs`;
//! the less central RPCs (exec, pause, update, stats, checkpoint, …) live in
//! `service/task_ops.rs`.
//!
//! Locking: the container map is a short `std` mutex; per-process state is
//! another; runtime calls happen outside both, under one process's
//! `lifecycle` lock only where ordering demands it (create, start, delete,
//! exit handling). Kill, State, Wait, Connect and Pids never wait for another
//! process's runtime call.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskOOM, TaskStart};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim::shim::*;
use tokio::sync::Notify;

use crate::container::{Checkpoint, Container, ContainerHandover, PendingRestore, SpecFacts};
use crate::error::{Error, Result};
use crate::events::{timestamp, Event, Publisher};
use crate::host::Host;
use crate::mount::{mount_all, unmount_all, MountSpec};
use crate::options::Options;
use crate::process::{ExitInfo, Op, Process, Status};
use crate::reaper::{Exit, Reaper, Subscription};
use crate::runtime::{CreateOpts, RuntimeConfig, RuntimeError, RuntimeFactory};
use crate::stdio::{delivery, Owner, Prepared, ProcessIo, SpillPolicy, StdioSpec};

/// How long Delete waits for a process's output to drain.
pub(crate) const IO_DRAIN: Duration = Duration::from_secs(2);
/// How long the runtime may take to send a pty master.
pub(crate) const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `runtime kill` of init may take (less if the request's
/// deadline comes first); past it, or when the runtime fails, the shim
/// delivers the signal itself: through init's pidfd, and for SIGKILL to
/// every process of the container's cgroup.
pub const KILL_BOUND: Duration = Duration::from_secs(5);
/// How long `runtime delete` may take before Delete goes on without it.
pub const DELETE_BOUND: Duration = Duration::from_secs(5);
/// Left in the bundle when Delete went on without `runtime delete`, so that
/// `shim delete` does not wait for the same hung runtime again.
pub const DELETE_ABANDONED: &str = "runtime-delete-abandoned";
/// How long after a container's start the shim lets go of the code pages
/// creating and starting it touched.
const CODE_TRIM_DELAY: Duration = Duration::from_secs(1);
/// Time kept back from a request's deadline to answer it.
const ANSWER_MARGIN: Duration = Duration::from_millis(200);

/// The time a runtime call that must finish may take: `bound`, or less when
/// the request's deadline comes first.
fn budget(bound: Duration) -> Duration {
    match crate::ttrpc::deadline() {
        Some(at) => at
            .saturating_duration_since(tokio::time::Instant::now())
            .saturating_sub(ANSWER_MARGIN)
            .min(bound),
        None => bound,
    }
}

/// Exits that arrived while a process launch was in flight and matched no
/// known pid (the process may exit before its pid file is read).
#[derive(Default)]
pub(crate) struct EarlyExits {
    in_flight: usize,
    exits: Vec<Exit>,
}

/// The Task API implementation.
pub struct TaskService {
    pub(crate) namespace: String,
    pub(crate) factory: RuntimeFactory,
    pub(crate) events: Publisher,
    pub(crate) reaper: Arc<Reaper>,
    pub(crate) host: Arc<dyn Host>,
    pub(crate) containers: Mutex<HashMap<String, Arc<Container>>>,
    pub(crate) reserved: Mutex<HashSet<String>>,
    early: Mutex<EarlyExits>,
    pub(crate) shutdown: Arc<Notify>,
    /// Pods held for CRI's `sandboxer = "shim"` ([`crate::sandbox`]).
    pub(crate) sandboxes: crate::sandbox::service::Sandboxes,
    /// Abandoned runtime deletes being retried ([`super::afterlife`]).
    pub(super) retries: super::afterlife::Retries,
    /// How many times a Delete took the last container.
    pub(super) emptied: std::sync::atomic::AtomicU64,
    /// Exits being handled (their output delivered, then published).
    exiting: std::sync::atomic::AtomicUsize,
    exits_idle: Notify,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An OOM kill in a container's cgroup: recorded beside its exit record
/// (for `shim delete` after a shim crash) and published.
fn oom_happened(events: &Publisher, id: &str, bundle: &Path) {
    if let Err(e) = crate::exitfile::write_oom(bundle) {
        crate::warn!("record OOM of {id}: {e}");
    }
    let mut ev = TaskOOM::new();
    ev.container_id = id.to_string();
    events.publish(Event::oom(&ev));
}

/// Rejects ids that could escape a directory or are empty.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id == "."
        || id == ".."
        || id.contains('/')
        || id.contains('\0')
        || id.len() > 1024
    {
        return Err(Error::InvalidArgument(format!("invalid id {id:?}")));
    }
    Ok(())
}

/// Maps a runtime kill failure to the codes containerd expects.
fn kill_error(e: RuntimeError) -> Error {
    let msg = e.message();
    let lower = msg.to_lowercase();
    if lower.contains("process already finished")
        || lower.contains("container not running")
        || lower.contains("no such process")
    {
        Error::NotFound("process already finished".into())
    } else if lower.contains("does not exist") {
        Error::NotFound("no such container".into())
    } else {
        Error::Unknown(format!("unknown error after kill: {msg}"))
    }
}

fn read_pid(path: &Path) -> Result<u32> {
    match std::fs::read_to_string(path).map(|s| s.trim().parse::<u32>()) {
        Ok(Ok(pid)) if pid > 0 => Ok(pid),
        other => Err(Error::Unknown(format!(
            "read pid file {}: {other:?}",
            path.display()
        ))),
    }
}

/// Guard for a launch in flight: exits of unknown pids are kept meanwhile.
pub(crate) struct Launch<'a> {
    svc: &'a TaskService,
}

impl Drop for Launch<'_> {
    fn drop(&mut self) {
        let mut e = lock(&self.svc.early);
        e.in_flight -= 1;
        if e.in_flight == 0 {
            e.exits.clear();
        }
    }
}

impl Launch<'_> {
    /// An exit of `pid` that arrived before its owner was known.
    pub(crate) fn take_early(&self, pid: u32) -> Option<Exit> {
        let mut e = lock(&self.svc.early);
        let i = e.exits.iter().position(|x| x.pid == pid as i32)?;
        Some(e.exits.remove(i))
    }
}

impl TaskService {
    /// A service for `namespace` with no containers.
    pub fn new(
        namespace: String,
        factory: RuntimeFactory,
        events: Publisher,
        reaper: Arc<Reaper>,
        host: Arc<dyn Host>,
        shutdown: Arc<Notify>,
    ) -> Arc<Self> {
        Arc::new(TaskService {
            namespace,
            factory,
            events,
            reaper,
            host,
            containers: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashSet::new()),
            early: Mutex::new(EarlyExits::default()),
            shutdown,
            exiting: std::sync::atomic::AtomicUsize::new(0),
            exits_idle: Notify::new(),
            retries: Default::default(),
            emptied: Default::default(),
            sandboxes: Default::default(),
        })
    }

    pub(crate) fn begin_launch(&self) -> Launch<'_> {
        lock(&self.early).in_flight += 1;
        Launch { svc: self }
    }

    /// Receives every reaped exit and applies those of container processes.
    pub async fn handle_exits(self: Arc<Self>, mut exits: Subscription) {
        while let Some(exit) = exits.recv().await {
            self.on_exit(exit);
        }
    }

    fn on_exit(self: &Arc<Self>, exit: Exit) {
        let found = lock(&self.containers)
            .values()
            .find_map(|c| c.find_pid(exit.pid as u32).map(|p| (c.clone(), p)));
        match found {
            Some((c, p)) => self.exited(c, p, exit),
            None => {
                let mut early = lock(&self.early);
                if early.in_flight > 0 {
                    early.exits.push(exit);
                }
            }
        }
    }

    /// A process of `c` was reaped: its exit is handled on a task of its
    /// own, never inside a request. Delivering its output may wait for a
    /// reader that a client attaches only once the request that started the
    /// process has been answered (CRI's exec does).
    pub(crate) fn exited(self: &Arc<Self>, c: Arc<Container>, p: Arc<Process>, exit: Exit) {
        if !p.mark_reaped() {
            return;
        }
        let this = self.clone();
        self.exiting
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        tokio::spawn(async move {
            this.process_exited(&c, &p, exit).await;
            this.exiting
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            this.exits_idle.notify_waiters();
        });
    }

    /// Records an exit and publishes it: after the output the process
    /// wrote has been delivered (bounded, see `stdio::delivery`), after any
    /// OOM of the container, and for init after the exit of every exec that
    /// was running or being started (as the Go shim orders them).
    async fn process_exited(&self, c: &Container, p: &Process, exit: Exit) {
        let _order = p.lifecycle.lock().await;
        if p.state().exit.is_some() {
            return;
        }
        let is_init = p.exec_id.is_empty();
        if is_init && c.kill_all_on_exit && !c.nothing_left() {
            // The rest of a shared pid namespace goes with init; a hung
            // runtime is not waited for.
            let hung = c.kill_hung()
                || match tokio::time::timeout(KILL_BOUND, c.runtime.kill(&c.id, 9, true)).await {
                    Ok(Ok(())) => false,
                    Ok(Err(e)) => {
                        crate::debug!("kill --all after init exit of {}: {e}", c.id);
                        false
                    }
                    Err(_) => {
                        c.set_kill_hung();
                        true
                    }
                };
            if hung {
                crate::warn!(
                    "{}: the runtime's kill hangs: the shim kills what is left of the cgroup after init's exit",
                    c.id
                );
                if let Some(cg) = c.cgroup() {
                    let _ = cg.kill_all().await;
                }
            }
        }
        let info = ExitInfo {
            status: exit.status,
            at: exit.at,
        };
        if is_init {
            // Durable before it is published: `shim delete` reports it even
            // if this shim dies before containerd hears of the exit.
            if let Err(e) = crate::exitfile::write(&c.bundle, p.pid(), &info) {
                crate::warn!("record exit of {}: {e}", c.id);
            }
        }
        // Clients close their output readers when they see the exit: it
        // waits for the output to be delivered.
        if let Err(u) = p.settle_output(delivery::IDLE, delivery::LIMIT).await {
            crate::warn!(
                "{} {}: exit reported with {} bytes of output not taken by a reader after {:?}",
                c.id,
                p.exec_id,
                u.pending,
                u.waited
            );
        }
        if is_init {
            self.report_oom(c);
            c.execs_ended().await;
        }
        if !p.set_exited(info) {
            return;
        }
        if !is_init {
            c.exec_settled();
        }
        let mut ev = TaskExit::new();
        ev.container_id = c.id.clone();
        ev.id = if is_init {
            c.id.clone()
        } else {
            p.exec_id.clone()
        };
        ev.pid = p.pid();
        ev.exit_status = info.status;
        ev.exited_at = MessageField::some(timestamp(info.at));
        self.events.publish(Event::exit(&ev));
    }

    /// Publishes `/tasks/oom` if the container's cgroup saw an OOM kill.
    pub(crate) fn report_oom(&self, c: &Container) {
        if let Some(w) = c.oom() {
            if w.check() {
                oom_happened(&self.events, &c.id, &c.bundle);
            }
        }
    }

    pub(crate) fn get(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound("container not created".into()))
    }

    pub(crate) fn owner<'a>(
        &'a self,
        id: &'a str,
        opts: &Options,
        spill: &SpillPolicy,
    ) -> Owner<'a> {
        Owner {
            namespace: &self.namespace,
            id,
            reaper: &self.reaper,
            uid: opts.io_uid,
            gid: opts.io_gid,
            spill: spill.clone(),
        }
    }

    /// After a runtime call that created a process: receive its console,
    /// install its stdio, read its pid and open a pidfd for it. `since` is
    /// the reaper's sequence number from before the runtime call: a pid
    /// reaped since then may already name another process, so it gets no
    /// pidfd (its exit is among the early exits).
    pub(crate) async fn finish_launch(
        &self,
        p: &Process,
        prepared: Prepared,
        pid_file: &Path,
        since: u64,
    ) -> Result<()> {
        let Prepared {
            mut io, console, ..
        } = prepared;
        if let Some(cs) = console {
            let master = cs
                .receive(CONSOLE_TIMEOUT)
                .await
                .map_err(|e| Error::Unknown(format!("receive console: {e}")))?;
            io.attach_console(master)?;
        }
        io.release();
        p.set_io(io).await;
        let pid = read_pid(pid_file)?;
        p.set_pid(pid);
        self.open_pidfd(p, pid, since);
        Ok(())
    }

    /// Opens a pidfd for a process just launched, unless its pid was reaped
    /// since `since` (then it may name another process; its exit is among
    /// the early exits). No await between opening and checking: the reaper
    /// cannot run in between.
    pub(crate) fn open_pidfd(&self, p: &Process, pid: u32, since: u64) {
        if let Some(fd) = self.host.open_pidfd(pid) {
            if !self.reaper.reaped_since(since, pid as i32) {
                p.set_pidfd(fd);
            }
        }
    }

    /// Create: mount the rootfs, record options, set up stdio, `runtime create`.
    pub async fn create(self: &Arc<Self>, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        validate_id(&req.id)?;
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() || !bundle.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "bundle {:?} is not a directory",
                req.bundle
            )));
        }
        let opts = Options::from_any(req.options.as_ref())?;
        {
            let mut reserved = lock(&self.reserved);
            if lock(&self.containers).contains_key(&req.id) || !reserved.insert(req.id.clone()) {
                return Err(Error::AlreadyExists(format!("container {}", req.id)));
            }
        }
        let launch = self.begin_launch();
        let res = self.create_reserved(&req, &bundle, opts).await;
        lock(&self.reserved).remove(&req.id);
        let c = res?;
        let pid = c.init.pid();
        let mut ev = TaskCreate::new();
        ev.container_id = c.id.clone();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        let io = ev.io.mut_or_insert_default();
        io.stdin = req.stdin.clone();
        io.stdout = req.stdout.clone();
        io.stderr = req.stderr.clone();
        io.terminal = req.terminal;
        ev.checkpoint = req.checkpoint.clone();
        ev.pid = pid;
        self.events.publish(Event::create(&ev));
        if let Some(exit) = launch.take_early(pid) {
            self.exited(c.clone(), c.init.clone(), exit);
        }
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn create_reserved(
        &self,
        req: &CreateTaskRequest,
        bundle: &Path,
        opts: Options,
    ) -> Result<Arc<Container>> {
        let rootfs = bundle.join("rootfs");
        let mounts: Vec<MountSpec> = req
            .rootfs
            .iter()
            .map(|m| MountSpec {
                fstype: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        // The bundle's options and `runtime` first: `shim delete` reads them
        // to clean up after a Create that fails anywhere below.
        opts.write_bundle_files(bundle)
            .map_err(|e| Error::Unknown(format!("write bundle options: {e}")))?;
        let mounted = !mounts.is_empty();
        if mounted {
            if !rootfs.exists() {
                std::fs::DirBuilder::new()
                    .mode(0o711)
                    .create(&rootfs)
                    .map_err(|e| Error::Unknown(format!("create rootfs dir: {e}")))?;
            }
            mount_all(&mounts, &rootfs)?;
        }
        let undo = |e: Error| {
            if mounted {
                let _ = unmount_all(&rootfs);
            }
            e
        };
        let stdio = StdioSpec {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let facts = std::fs::read_to_string(bundle.join("config.json"))
            .map(|s| SpecFacts::parse(&s))
            .unwrap_or(SpecFacts::parse(""));
        let spill = SpillPolicy {
            max: facts
                .spill_max
                .or(opts.output_spill_max)
                .unwrap_or(crate::stdio::spill::DEFAULT_MAX),
            label: req.id.clone(),
            ..SpillPolicy::new(bundle.to_path_buf())
        };
        let mut prepared = ProcessIo::prepare(&stdio, self.owner(&req.id, &opts, &spill))
            .await
            .map_err(|e| undo(e.into()))?;
        let runtime = self.runtime_for(&opts, bundle);
        let checkpoint = (!req.checkpoint.is_empty()).then(|| Checkpoint {
            image: PathBuf::from(&req.checkpoint),
            parent: (!req.parent_checkpoint.is_empty())
                .then(|| PathBuf::from(&req.parent_checkpoint)),
        });
        let status = if checkpoint.is_some() {
            Status::CreatedCheckpoint
        } else {
            Status::Created
        };
        let init = Arc::new(Process::new(String::new(), stdio, Vec::new(), status));
        let c = Container::new(
            req.id.clone(),
            bundle.to_path_buf(),
            mounted,
            runtime.clone(),
            opts.clone(),
            facts.kill_all_on_exit,
            checkpoint,
            spill,
            self.host.clone(),
            init.clone(),
        );
        if c.checkpoint.is_some() {
            // Nothing runs until Start restores it: keep the stdio for then.
            let mut io = std::mem::take(&mut prepared.io);
            io.release();
            init.set_io(io).await;
            *lock(&c.pending_restore) = Some(PendingRestore {
                stdio: prepared.stdio,
                console: prepared.console,
            });
        } else {
            let pid_file = bundle.join("init.pid");
            let create = CreateOpts {
                id: req.id.clone(),
                bundle: bundle.to_path_buf(),
                pid_file: pid_file.clone(),
                no_pivot: opts.no_pivot_root,
                no_new_keyring: opts.no_new_keyring,
                console_socket: prepared.console.as_ref().map(|s| s.path().to_path_buf()),
            };
            let cside = std::mem::take(&mut prepared.stdio);
            let since = self.reaper.seq();
            if let Err(e) = runtime.create(create, cside).await {
                prepared.io.discard().await;
                return Err(undo(Error::Unknown(format!(
                    "OCI runtime create failed: {e}"
                ))));
            }
            if let Err(e) = self.finish_launch(&init, prepared, &pid_file, since).await {
                let _ = runtime.delete(&req.id, true).await;
                init.close_io(Duration::from_millis(100)).await;
                return Err(undo(e));
            }
            // Before the process runs: an OOM at its first allocation counts.
            self.watch_oom(&c);
        }
        lock(&self.containers).insert(req.id.clone(), c.clone());
        Ok(c)
    }

    /// Start: `runtime start` (or restore, or an exec), then the start event
    /// (before any exit event of the process).
    pub async fn start(self: &Arc<Self>, req: StartRequest) -> Result<StartResponse> {
        let c = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            return self.start_exec(&c, &req.exec_id).await;
        }
        let init = &c.init;
        let _order = init.lifecycle.lock().await;
        let status = init.state().status;
        status.check(Op::Start)?;
        if status == Status::CreatedCheckpoint {
            self.restore(&c).await?;
        } else {
            c.runtime
                .start(&c.id)
                .await
                .map_err(|e| Error::Unknown(format!("OCI runtime start failed: {e}")))?;
        }
        init.set_status(Status::Running);
        self.watch_oom(&c);
        let mut ev = TaskStart::new();
        ev.container_id = c.id.clone();
        ev.pid = init.pid();
        self.events.publish(Event::start(&ev));
        // Creating and starting ran code a running container's shim does not
        // need resident: let go of it once the start has settled (it faults
        // back in, a page at a time, if run again).
        tokio::spawn(async {
            tokio::time::sleep(CODE_TRIM_DELAY).await;
            crate::sys::trim_code_residency();
        });
        Ok(StartResponse {
            pid: init.pid(),
            ..Default::default()
        })
    }

    /// Registers the OOM watch of a created container (once; a container
    /// restored from a checkpoint gets it at Start).
    fn watch_oom(&self, c: &Arc<Container>) {
        self.watch_oom_from(c, None)
    }

    /// [`Self::watch_oom`], counting from a handed-over watch's count.
    fn watch_oom_from(&self, c: &Arc<Container>, from: Option<(bool, Option<u64>)>) {
        if c.oom().is_some() {
            return;
        }
        let Some(cg) = c.cgroup() else { return };
        let Some(dir) = cg.memory_dir() else { return };
        let v2 = matches!(&*cg, crate::cgroup::Cgroup::V2(_));
        let baseline = from.and_then(|(_, b)| b);
        let watch = crate::cgroup::oom::OomWatch::resume(dir, v2, baseline);
        let watch = match watch {
            Ok(w) => Arc::new(w),
            Err(e) => {
                crate::warn!("OOM watch for {}: {e}", c.id);
                return;
            }
        };
        let (w, events, id, bundle) = (
            watch.clone(),
            self.events.clone(),
            c.id.clone(),
            c.bundle.clone(),
        );
        let task = tokio::spawn(async move {
            while w.changed().await {
                if w.check() {
                    oom_happened(&events, &id, &bundle);
                }
            }
        });
        c.set_oom(watch, task.abort_handle());
    }

    /// Delete: init (runtime delete, stdio, unmount, `/tasks/delete`) or an
    /// exec (its record and pid file).
    pub async fn delete(self: &Arc<Self>, req: DeleteRequest) -> Result<DeleteResponse> {
        let c = self.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let _order = p.lifecycle.lock().await;
        let st = p.state();
        st.status.check(Op::Delete)?;
        if req.exec_id.is_empty() {
            let bound = budget(DELETE_BOUND);
            match tokio::time::timeout(bound, c.runtime.delete(&c.id, false)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.message().contains("does not exist") => {}
                Ok(Err(e)) => {
                    return Err(Error::Unknown(format!("OCI runtime delete failed: {e}")));
                }
                Err(_) => {
                    // The container is gone (Delete needs it stopped): what
                    // the shim owns is released all the same, and the
                    // runtime's state once the runtime answers again.
                    let removed = c.cgroup().map(|cg| cg.remove_dirs());
                    let _ = std::fs::write(c.bundle.join(DELETE_ABANDONED), "");
                    crate::warn!(
                        "{}: runtime delete did not finish within {bound:?}; going on without it \
                         and retrying for {:?}{}",
                        c.id,
                        super::afterlife::RETRY_FOR,
                        match removed {
                            Some(Err(e)) => format!(". Not cleaned: the cgroup ({e})"),
                            _ => String::new(),
                        }
                    );
                    self.retry_runtime_delete(c.clone());
                }
            }
            c.stop_oom();
            c.close_stat_files();
            p.close_io(IO_DRAIN).await;
            for e in c.execs() {
                e.close_io(Duration::ZERO).await;
            }
            if c.mounted_rootfs {
                unmount_all(&c.bundle.join("rootfs"))?;
            }
            let last = {
                let mut all = lock(&self.containers);
                all.remove(&c.id);
                all.is_empty()
            };
            if last {
                self.watch_for_orphaning(&c.id);
            }
        } else {
            p.close_io(IO_DRAIN).await;
            let _ = std::fs::remove_file(c.bundle.join(format!("{}.pid", req.exec_id)));
            c.remove_exec(&req.exec_id);
        }
        p.set_status(Status::Deleted);
        let (status, at) = st
            .exit
            .map(|e| (e.status, e.at))
            .unwrap_or((0, SystemTime::now()));
        crate::sys::trim_heap();
        if req.exec_id.is_empty() {
            let mut ev = TaskDelete::new();
            ev.container_id = c.id.clone();
            ev.pid = p.pid();
            ev.exit_status = status;
            ev.exited_at = MessageField::some(timestamp(at));
            self.events.publish(Event::delete(&ev));
        }
        Ok(DeleteResponse {
            pid: p.pid(),
            exit_status: status,
            exited_at: MessageField::some(timestamp(at)),
            ..Default::default()
        })
    }

    /// State: the recorded state, never a runtime call.
    pub fn state(&self, req: StateRequest) -> Result<StateResponse> {
        let c = self.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let st = p.state();
        let mut status = st.status;
        // An exec reports its container's pause.
        if !req.exec_id.is_empty() && status == Status::Running {
            let init = c.init.state().status;
            if matches!(init, Status::Paused | Status::Pausing) {
                status = init;
            }
        }
        let mut r = StateResponse::new();
        r.id = if req.exec_id.is_empty() {
            c.id.clone()
        } else {
            req.exec_id.clone()
        };
        r.bundle = c.bundle.display().to_string();
        r.pid = p.pid();
        r.status = status.to_proto().into();
        r.stdin = p.stdio.stdin.clone();
        r.stdout = p.stdio.stdout.clone();
        r.stderr = p.stdio.stderr.clone();
        r.terminal = p.stdio.terminal;
        if let Some(e) = st.exit {
            r.exit_status = e.status;
            r.exited_at = MessageField::some(timestamp(e.at));
        }
        Ok(r)
    }

    /// Kill: init through `runtime kill [--all]`, an exec by its pid; errors
    /// normalised as containerd expects.
    pub async fn kill(&self, req: KillRequest) -> Result<()> {
        if req.signal > 64 {
            return Err(Error::InvalidArgument(format!(
                "invalid signal {}",
                req.signal
            )));
        }
        let c = self.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let st = p.state();
        st.status.check(Op::Kill)?;
        if req.exec_id.is_empty() {
            if st.status == Status::Stopped && !req.all {
                return Err(Error::NotFound("process already finished".into()));
            }
            // What `runtime kill --all` would signal is the cgroup's
            // processes: once init is gone and none is left (containerd's
            // Delete after every CRI container's exit asks), no runtime call.
            if req.all && c.nothing_left() {
                return Ok(());
            }
            if c.kill_hung() {
                let why = "the runtime's kill hung before";
                return self
                    .signal_directly(&c, req.signal as i32, req.all, why)
                    .await;
            }
            let bound = budget(KILL_BOUND);
            let why = match tokio::time::timeout(bound, c.runtime.kill(&c.id, req.signal, req.all))
                .await
            {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => match kill_error(e) {
                    Error::Unknown(msg) => msg,
                    not_found => return Err(not_found),
                },
                Err(_) => {
                    c.set_kill_hung();
                    format!("runtime kill did not finish within {bound:?}")
                }
            };
            return self
                .signal_directly(&c, req.signal as i32, req.all, &why)
                .await;
        }
        match (st.status, p.pid()) {
            (Status::Stopped, _) => Err(Error::NotFound("process already finished".into())),
            (_, 0) => Err(Error::FailedPrecondition("process not created".into())),
            // Through its pidfd; a reaped process (exit still being
            // reported) is "already finished", whoever has its pid now.
            _ => p.signal(req.signal as i32).map_err(|e| {
                if e.raw_os_error() == Some(libc::ESRCH) {
                    Error::NotFound("process already finished".into())
                } else {
                    Error::Unknown(format!("unknown error after kill: {e}"))
                }
            }),
        }
    }

    /// Delivers a signal to a container without the runtime (which failed or
    /// hangs): to init through its pidfd; SIGKILL to every process of the
    /// cgroup (v2 `cgroup.kill`, v1 freeze-kill-thaw); another signal with
    /// `all` to every listed process.
    async fn signal_directly(&self, c: &Container, sig: i32, all: bool, why: &str) -> Result<()> {
        crate::warn!("{}: {why}: the shim delivers signal {sig} itself", c.id);
        let init = c.init.signal(sig);
        let group = match (c.cgroup(), sig == libc::SIGKILL, all) {
            (Some(cg), true, _) => cg.kill_all().await.map(Some),
            (Some(cg), false, true) => Ok(Some(
                cg.procs()
                    .iter()
                    .filter(|pid| crate::sys::send_signal(**pid as i32, sig).is_ok())
                    .count(),
            )),
            _ => Ok(None),
        };
        match (init, group) {
            (Ok(()), _) | (_, Ok(Some(1..))) => Ok(()),
            (Err(e), _) if e.raw_os_error() == Some(libc::ESRCH) => {
                Err(Error::NotFound("process already finished".into()))
            }
            (Err(e), g) => Err(Error::Unknown(format!(
                "unknown error after kill: {why}; signalling init: {e}; the cgroup: {g:?}"
            ))),
        }
    }

    /// Wait: blocks until the process exits.
    pub async fn wait(&self, req: WaitRequest) -> Result<WaitResponse> {
        let p = self.get(&req.id)?.process(&req.exec_id)?;
        let e = p.wait().await;
        Ok(WaitResponse {
            exit_status: e.status,
            exited_at: MessageField::some(timestamp(e.at)),
            ..Default::default()
        })
    }

    /// Connect: the shim's pid and the task's init pid.
    pub fn connect(&self, req: ConnectRequest) -> Result<ConnectResponse> {
        // A sandbox's "task" is its holder (containerd reconnects to a
        // sandbox shim with the sandbox's id).
        let task_pid = lock(&self.containers)
            .get(&req.id)
            .map(|c| c.init.pid())
            .or_else(|| self.sandboxes.pid(&req.id))
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            ..Default::default()
        })
    }

    /// Shutdown: exits the shim once no container (and no sandbox) is left.
    pub fn shutdown(&self, _req: ShutdownRequest) -> Result<()> {
        self.shutdown_if_idle();
        Ok(())
    }

    /// Whether nothing is left to serve: no container, none being
    /// created, no sandbox.
    pub(crate) fn idle(&self) -> bool {
        lock(&self.containers).is_empty()
            && lock(&self.reserved).is_empty()
            && self.sandboxes.is_empty()
    }

    /// Exits the shim if it is [`TaskService::idle`].
    pub(crate) fn shutdown_if_idle(&self) {
        if self.idle() {
            self.shutdown.notify_one();
        }
    }

    /// Waits until no exit is being handled (at most `limit`). The reaper
    /// must be stopped first, so that no new one starts.
    pub async fn exits_settled(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.exits_idle.notified();
            if self.exiting.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return false;
            }
        }
    }

    /// Why the shim cannot hand its containers over now, if it cannot.
    pub fn handover_blocker(&self) -> Option<String> {
        if !lock(&self.reserved).is_empty() {
            return Some("a container is being created".into());
        }
        if self.retrying() {
            return Some("a runtime delete is being retried".into());
        }
        if !self.sandboxes.is_empty() {
            return Some("it holds a pod's sandbox".into());
        }
        lock(&self.containers)
            .values()
            .find(|c| lock(&c.pending_restore).is_some())
            .map(|c| format!("container {} waits to be restored from a checkpoint", c.id))
    }

    /// Takes every container apart for an upgrade in place (the server is
    /// stopped, the reaper too, and no exit is being handled).
    pub async fn hand_over(&self) -> Vec<ContainerHandover> {
        let all: Vec<Arc<Container>> = lock(&self.containers).drain().map(|(_, c)| c).collect();
        let mut out = Vec::new();
        for c in all {
            out.push(c.hand_over().await);
        }
        out
    }

    /// Takes over containers handed over by a previous image of the shim.
    pub fn take_over(&self, containers: Vec<ContainerHandover>) {
        for h in containers {
            let runtime = self.runtime_for(&h.options, &h.bundle);
            let oom = h.oom;
            let c = Container::take_over(h, runtime, self.host.clone(), &self.reaper);
            if let Some((v2, baseline)) = oom {
                self.watch_oom_from(&c, Some((v2, baseline)));
            }
            lock(&self.containers).insert(c.id.clone(), c);
        }
    }

    /// The runtime for a container's options (at most two calls at once).
    fn runtime_for(&self, opts: &Options, bundle: &Path) -> Arc<dyn crate::runtime::Runtime> {
        Arc::new(crate::runtime::limited::Limited::new((self.factory)(
            RuntimeConfig {
                binary: opts.binary().to_string(),
                root: opts.runtime_root(&self.namespace),
                log: bundle.join("log.json"),
                systemd_cgroup: opts.systemd_cgroup,
                criu: opts.criu_path.clone(),
            },
        )))
    }

    /// Number of containers.
    pub fn len(&self) -> usize {
        lock(&self.containers).len()
    }

    /// Whether no container is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
