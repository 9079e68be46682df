//! The Task service: what each RPC does, in terms of containers, processes,
//! the runtime and events. Decoding and encoding live in `service/mod.rs`.
//!
//! Locking: the container map is a short `std` mutex; per-container state is
//! another; runtime calls happen outside both, under the container's
//! `lifecycle` lock only where ordering demands it (create, start, delete,
//! exit handling). Kill, State, Wait, Connect and Pids never wait for another
//! container's runtime call.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim::shim::*;
use containerd_shim_protos::types::task::ProcessInfo;
use tokio::sync::Notify;

use crate::container::{should_kill_all_on_exit, Container};
use crate::error::{Error, Result};
use crate::events::{timestamp, Event, Publisher};
use crate::mount::{mount_all, unmount_all, MountSpec};
use crate::options::Options;
use crate::process::{ExitInfo, Op, Status};
use crate::reaper::{Exit, Subscription};
use crate::runtime::{CreateOpts, RuntimeConfig, RuntimeError, RuntimeFactory};
use crate::stdio::{ProcessIo, StdioSpec};

/// How long Delete waits for a process's output to drain.
const IO_DRAIN: Duration = Duration::from_secs(2);

/// Exits that arrived while a create was in flight and matched no known pid.
#[derive(Default)]
struct EarlyExits {
    in_flight: usize,
    exits: Vec<Exit>,
}

/// The Task API implementation.
pub struct TaskService {
    namespace: String,
    factory: RuntimeFactory,
    events: Publisher,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    reserved: Mutex<HashSet<String>>,
    early: Mutex<EarlyExits>,
    shutdown: Arc<Notify>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Rejects ids that could escape a directory or are empty.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() || id == "." || id == ".." || id.contains('/') || id.contains('\0') {
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

impl TaskService {
    /// A service for `namespace` with no containers.
    pub fn new(
        namespace: String,
        factory: RuntimeFactory,
        events: Publisher,
        shutdown: Arc<Notify>,
    ) -> Arc<Self> {
        Arc::new(TaskService {
            namespace,
            factory,
            events,
            containers: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashSet::new()),
            early: Mutex::new(EarlyExits::default()),
            shutdown,
        })
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
            .find(|c| c.pid as i32 == exit.pid)
            .cloned();
        match found {
            Some(c) => {
                let this = self.clone();
                tokio::spawn(async move { this.init_exited(c, exit).await });
            }
            None => {
                let mut early = lock(&self.early);
                if early.in_flight > 0 {
                    early.exits.push(exit);
                }
            }
        }
    }

    async fn init_exited(&self, c: Arc<Container>, exit: Exit) {
        let _order = c.lifecycle.lock().await;
        if c.kill_all_on_exit {
            if let Err(e) = c.runtime.kill(&c.id, 9, true).await {
                crate::debug!("kill --all after init exit of {}: {e}", c.id);
            }
        }
        let info = ExitInfo {
            status: exit.status,
            at: exit.at,
        };
        if !c.set_exited(info) {
            return;
        }
        let mut ev = TaskExit::new();
        ev.container_id = c.id.clone();
        ev.id = c.id.clone();
        ev.pid = c.pid;
        ev.exit_status = info.status;
        ev.exited_at = MessageField::some(timestamp(info.at));
        self.events.publish(Event::exit(&ev));
    }

    fn get(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound("container not created".into()))
    }

    fn no_exec(exec_id: &str) -> Result<()> {
        if exec_id.is_empty() {
            Ok(())
        } else {
            Err(Error::NotFound(format!("process does not exist {exec_id}")))
        }
    }

    /// Create: mount the rootfs, record options, set up stdio, `runtime create`.
    pub async fn create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        validate_id(&req.id)?;
        if req.terminal {
            return Err(Error::Unimplemented("terminal (tty) processes".into()));
        }
        if !req.checkpoint.is_empty() {
            return Err(Error::Unimplemented("restore from checkpoint".into()));
        }
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
        lock(&self.early).in_flight += 1;
        let res = self.create_reserved(&req, &bundle, opts).await;
        lock(&self.reserved).remove(&req.id);
        let early = {
            let mut e = lock(&self.early);
            e.in_flight -= 1;
            let found = match &res {
                Ok(c) => e.exits.iter().find(|x| x.pid == c.pid as i32).copied(),
                Err(_) => None,
            };
            if e.in_flight == 0 {
                e.exits.clear();
            }
            found
        };
        let c = res?;
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
        ev.pid = c.pid;
        self.events.publish(Event::create(&ev));
        if let Some(exit) = early {
            let this_c = c.clone();
            self.init_exited(this_c, exit).await;
        }
        Ok(CreateTaskResponse {
            pid: c.pid,
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
        opts.write_bundle_files(bundle)
            .map_err(|e| undo(Error::Unknown(format!("write bundle options: {e}"))))?;
        let stdio = StdioSpec {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let (mut io, cside) =
            ProcessIo::open(&stdio, opts.io_uid, opts.io_gid).map_err(|e| undo(e.into()))?;
        let runtime = (self.factory)(RuntimeConfig {
            binary: opts.binary().to_string(),
            root: opts.runtime_root(&self.namespace),
            log: bundle.join("log.json"),
            systemd_cgroup: opts.systemd_cgroup,
            criu: opts.criu_path.clone(),
        });
        let pid_file = bundle.join("init.pid");
        let create = CreateOpts {
            id: req.id.clone(),
            bundle: bundle.to_path_buf(),
            pid_file: pid_file.clone(),
            no_pivot: opts.no_pivot_root,
            no_new_keyring: opts.no_new_keyring,
        };
        if let Err(e) = runtime.create(create, cside).await {
            io.shutdown(Duration::from_millis(100)).await;
            return Err(undo(Error::Unknown(format!(
                "OCI runtime create failed: {e}"
            ))));
        }
        let pid = match std::fs::read_to_string(&pid_file).map(|s| s.trim().parse::<u32>()) {
            Ok(Ok(pid)) if pid > 0 => pid,
            other => {
                let _ = runtime.delete(&req.id, true).await;
                io.shutdown(Duration::from_millis(100)).await;
                return Err(undo(Error::Unknown(format!(
                    "read init pid file: {other:?}"
                ))));
            }
        };
        let kill_all = std::fs::read_to_string(bundle.join("config.json"))
            .map(|s| should_kill_all_on_exit(&s))
            .unwrap_or(true);
        let c = Container::new(
            req.id.clone(),
            bundle.to_path_buf(),
            mounted,
            runtime,
            stdio,
            pid,
            kill_all,
            io,
        );
        lock(&self.containers).insert(req.id.clone(), c.clone());
        Ok(c)
    }

    /// Start: `runtime start`, then `/tasks/start` (before any exit event).
    pub async fn start(&self, req: StartRequest) -> Result<StartResponse> {
        Self::no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let _order = c.lifecycle.lock().await;
        c.state().status.check(Op::Start)?;
        c.runtime
            .start(&c.id)
            .await
            .map_err(|e| Error::Unknown(format!("OCI runtime start failed: {e}")))?;
        if c.state().status == Status::Created {
            c.set_status(Status::Running);
        }
        let mut ev = TaskStart::new();
        ev.container_id = c.id.clone();
        ev.pid = c.pid;
        self.events.publish(Event::start(&ev));
        Ok(StartResponse {
            pid: c.pid,
            ..Default::default()
        })
    }

    /// Delete: `runtime delete`, close stdio, unmount, `/tasks/delete`.
    pub async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        Self::no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let _order = c.lifecycle.lock().await;
        let st = c.state();
        st.status.check(Op::Delete)?;
        if let Err(e) = c.runtime.delete(&c.id, false).await {
            if !e.message().contains("does not exist") {
                return Err(Error::Unknown(format!("OCI runtime delete failed: {e}")));
            }
        }
        c.close_io(IO_DRAIN).await;
        if c.mounted_rootfs {
            unmount_all(&c.bundle.join("rootfs"))?;
        }
        c.set_status(Status::Deleted);
        lock(&self.containers).remove(&c.id);
        let (status, at) = st
            .exit
            .map(|e| (e.status, timestamp(e.at)))
            .unwrap_or((0, timestamp(std::time::SystemTime::now())));
        let mut ev = TaskDelete::new();
        ev.container_id = c.id.clone();
        ev.pid = c.pid;
        ev.exit_status = status;
        ev.exited_at = MessageField::some(at.clone());
        self.events.publish(Event::delete(&ev));
        Ok(DeleteResponse {
            pid: c.pid,
            exit_status: status,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    /// State: the recorded state, never a runtime call.
    pub fn state(&self, req: StateRequest) -> Result<StateResponse> {
        Self::no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let st = c.state();
        let mut r = StateResponse::new();
        r.id = c.id.clone();
        r.bundle = c.bundle.display().to_string();
        r.pid = c.pid;
        r.status = st.status.to_proto().into();
        r.stdin = c.stdio.stdin.clone();
        r.stdout = c.stdio.stdout.clone();
        r.stderr = c.stdio.stderr.clone();
        r.terminal = c.stdio.terminal;
        if let Some(e) = st.exit {
            r.exit_status = e.status;
            r.exited_at = MessageField::some(timestamp(e.at));
        }
        Ok(r)
    }

    /// Kill: `runtime kill [--all]`, errors normalised as containerd expects.
    pub async fn kill(&self, req: KillRequest) -> Result<()> {
        if req.signal > 64 {
            return Err(Error::InvalidArgument(format!(
                "invalid signal {}",
                req.signal
            )));
        }
        Self::no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let st = c.state();
        st.status.check(Op::Kill)?;
        if st.status == Status::Stopped && !req.all {
            return Err(Error::NotFound("process already finished".into()));
        }
        c.runtime
            .kill(&c.id, req.signal, req.all)
            .await
            .map_err(kill_error)
    }

    /// Wait: blocks until init exits.
    pub async fn wait(&self, req: WaitRequest) -> Result<WaitResponse> {
        Self::no_exec(&req.exec_id)?;
        let c = self.get(&req.id)?;
        let e = c.wait().await;
        Ok(WaitResponse {
            exit_status: e.status,
            exited_at: MessageField::some(timestamp(e.at)),
            ..Default::default()
        })
    }

    /// Pids: the processes in the container.
    pub async fn pids(&self, req: PidsRequest) -> Result<PidsResponse> {
        let c = self.get(&req.id)?;
        let pids = c
            .runtime
            .ps(&c.id)
            .await
            .map_err(|e| Error::Unknown(format!("failed to list pids: {e}")))?;
        let mut r = PidsResponse::new();
        r.processes = pids
            .into_iter()
            .map(|pid| ProcessInfo {
                pid,
                ..Default::default()
            })
            .collect();
        Ok(r)
    }

    /// CloseIO: closes the shim's writer on the process's stdin FIFO.
    pub async fn close_io(&self, req: CloseIORequest) -> Result<()> {
        Self::no_exec(&req.exec_id)?;
        self.get(&req.id)?.close_stdin().await;
        Ok(())
    }

    /// Connect: the shim's pid and the task's init pid.
    pub fn connect(&self, req: ConnectRequest) -> Result<ConnectResponse> {
        let task_pid = lock(&self.containers)
            .get(&req.id)
            .map(|c| c.pid)
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            ..Default::default()
        })
    }

    /// Shutdown: exits the shim once no container is left.
    pub fn shutdown(&self, _req: ShutdownRequest) -> Result<()> {
        if lock(&self.containers).is_empty() && lock(&self.reserved).is_empty() {
            self.shutdown.notify_one();
        }
        Ok(())
    }

    /// Number of containers (for tests and diagnostics).
    pub fn len(&self) -> usize {
        lock(&self.containers).len()
    }

    /// Whether no container is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reaper::Reaper;
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::Runtime;
    use std::time::SystemTime;

    struct Harness {
        svc: Arc<TaskService>,
        rt: Arc<FakeRuntime>,
        events: tokio::sync::mpsc::UnboundedReceiver<Event>,
        reaper: Arc<Reaper>,
        bundle: tempfile::TempDir,
        shutdown: Arc<Notify>,
    }

    fn harness() -> Harness {
        let rt = Arc::new(FakeRuntime {
            pid: 4242,
            ps: vec![4242, 4243],
            ..Default::default()
        });
        let rtc = rt.clone();
        let factory: RuntimeFactory = Arc::new(move |_cfg| rtc.clone() as Arc<dyn Runtime>);
        let (events, rx) = Publisher::channel();
        let shutdown = Arc::new(Notify::new());
        let svc = TaskService::new("ns".into(), factory, events, shutdown.clone());
        let reaper = Reaper::new();
        tokio::spawn(svc.clone().handle_exits(reaper.subscribe()));
        let bundle = tempfile::tempdir().unwrap();
        std::fs::write(
            bundle.path().join("config.json"),
            r#"{"linux":{"namespaces":[{"type":"pid"}]}}"#,
        )
        .unwrap();
        Harness {
            svc,
            rt,
            events: rx,
            reaper,
            bundle,
            shutdown,
        }
    }

    fn create_req(h: &Harness, id: &str) -> CreateTaskRequest {
        CreateTaskRequest {
            id: id.into(),
            bundle: h.bundle.path().display().to_string(),
            ..Default::default()
        }
    }

    async fn next_topic(h: &mut Harness) -> &'static str {
        tokio::time::timeout(Duration::from_secs(5), h.events.recv())
            .await
            .unwrap()
            .unwrap()
            .topic
    }

    #[tokio::test]
    async fn lifecycle_events_and_states() {
        let mut h = harness();
        let r = h.svc.create(create_req(&h, "c1")).await.unwrap();
        assert_eq!(r.pid, 4242);
        assert_eq!(next_topic(&mut h).await, "/tasks/create");
        assert!(h.bundle.path().join("options.json").exists());
        assert!(h.bundle.path().join("runtime").exists());
        let st = |h: &Harness| {
            h.svc
                .state(StateRequest {
                    id: "c1".into(),
                    ..Default::default()
                })
                .unwrap()
        };
        assert_eq!(
            st(&h).status.enum_value().unwrap(),
            containerd_shim_protos::types::task::Status::CREATED
        );

        h.svc
            .start(StartRequest {
                id: "c1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(next_topic(&mut h).await, "/tasks/start");
        assert_eq!(
            st(&h).status.enum_value().unwrap(),
            containerd_shim_protos::types::task::Status::RUNNING
        );

        // Start again is refused before any runtime call.
        let calls = h.rt.calls.lock().unwrap().len();
        assert!(h
            .svc
            .start(StartRequest {
                id: "c1".into(),
                ..Default::default()
            })
            .await
            .is_err());
        assert_eq!(h.rt.calls.lock().unwrap().len(), calls);

        // Delete while running is refused.
        let err = h
            .svc
            .delete(DeleteRequest {
                id: "c1".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)));

        let svc = h.svc.clone();
        let waiter = tokio::spawn(async move {
            svc.wait(WaitRequest {
                id: "c1".into(),
                ..Default::default()
            })
            .await
        });
        h.reaper.publish(Exit {
            pid: 4242,
            status: 3,
            at: SystemTime::now(),
        });
        assert_eq!(next_topic(&mut h).await, "/tasks/exit");
        assert_eq!(waiter.await.unwrap().unwrap().exit_status, 3);
        assert_eq!(st(&h).exit_status, 3);

        // A second kill after exit is NotFound, without a runtime call.
        let err = h
            .svc
            .kill(KillRequest {
                id: "c1".into(),
                signal: 9,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");

        let d = h
            .svc
            .delete(DeleteRequest {
                id: "c1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((d.pid, d.exit_status), (4242, 3));
        assert_eq!(next_topic(&mut h).await, "/tasks/delete");
        assert!(matches!(
            h.svc.state(StateRequest {
                id: "c1".into(),
                ..Default::default()
            }),
            Err(Error::NotFound(_))
        ));
        let calls = h.rt.calls.lock().unwrap().clone();
        assert_eq!(calls, ["create c1", "start c1", "delete c1 force=false"]);
        // The pid namespace is private: no kill --all after init exits.
        h.svc.shutdown(ShutdownRequest::default()).unwrap();
        tokio::time::timeout(Duration::from_secs(1), h.shutdown.notified())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn bad_input_gets_clear_codes() {
        let h = harness();
        for id in ["", "..", "a/b"] {
            let err = h.svc.create(create_req(&h, id)).await.unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{id:?}: {err:?}");
        }
        let mut req = create_req(&h, "c2");
        let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
        any.type_url = "example.com/Unknown".into();
        req.options = MessageField::some(any);
        assert!(matches!(
            h.svc.create(req).await,
            Err(Error::InvalidArgument(_))
        ));
        let mut req = create_req(&h, "c2");
        req.stdout = "gopher://x".into();
        assert!(matches!(
            h.svc.create(req).await,
            Err(Error::InvalidArgument(_))
        ));
        let err = h
            .svc
            .kill(KillRequest {
                id: "nope".into(),
                signal: 9,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "container not created: not found");
        h.svc.create(create_req(&h, "c3")).await.unwrap();
        let err = h
            .svc
            .kill(KillRequest {
                id: "c3".into(),
                signal: 99,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
        assert!(matches!(
            h.svc.create(create_req(&h, "c3")).await,
            Err(Error::AlreadyExists(_))
        ));
        // Shutdown with a container left does nothing.
        h.svc.shutdown(ShutdownRequest::default()).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(100), h.shutdown.notified())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn runtime_failures_are_reported_and_cleaned_up() {
        let h = harness();
        h.rt.fail
            .lock()
            .unwrap()
            .insert("create".into(), "exec: \"nope\": not found".into());
        let err = h.svc.create(create_req(&h, "c4")).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "OCI runtime create failed: exec: \"nope\": not found"
        );
        assert!(h.svc.is_empty());
        h.rt.fail.lock().unwrap().clear();
        h.svc.create(create_req(&h, "c4")).await.unwrap();
        h.rt.fail
            .lock()
            .unwrap()
            .insert("kill".into(), "container not running".into());
        let err = h
            .svc
            .kill(KillRequest {
                id: "c4".into(),
                signal: 15,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(ref m) if m == "process already finished"));
        h.rt.fail
            .lock()
            .unwrap()
            .insert("kill".into(), "container \"c4\" does not exist".into());
        let err = h
            .svc
            .kill(KillRequest {
                id: "c4".into(),
                signal: 15,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(ref m) if m == "no such container"));
        h.rt.fail
            .lock()
            .unwrap()
            .insert("kill".into(), "permission denied".into());
        let err = h
            .svc
            .kill(KillRequest {
                id: "c4".into(),
                signal: 15,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unknown(_)));
        let pids = h
            .svc
            .pids(PidsRequest {
                id: "c4".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            pids.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
            [4242, 4243]
        );
    }

    #[tokio::test]
    async fn shared_pid_namespace_kills_all_on_init_exit() {
        let mut h = harness();
        std::fs::write(
            h.bundle.path().join("config.json"),
            r#"{"linux":{"namespaces":[]}}"#,
        )
        .unwrap();
        h.svc.create(create_req(&h, "c5")).await.unwrap();
        h.svc
            .start(StartRequest {
                id: "c5".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        h.reaper.publish(Exit {
            pid: 4242,
            status: 0,
            at: SystemTime::now(),
        });
        assert_eq!(next_topic(&mut h).await, "/tasks/create");
        assert_eq!(next_topic(&mut h).await, "/tasks/start");
        assert_eq!(next_topic(&mut h).await, "/tasks/exit");
        assert!(h
            .rt
            .calls
            .lock()
            .unwrap()
            .contains(&"kill c5 9 all=true".to_string()));
    }
}
