//! Unit tests of the task service against the recording fake runtime: state
//! transitions, events and their order, error codes, exec bookkeeping.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::{CheckpointOptions, ProcessDetails};
use containerd_shim_protos::shim::shim::*;
use containerd_shim_protos::types::task::Status as PStatus;
use tokio::sync::Notify;

use super::TaskService;
use crate::error::Error;
use crate::events::{Event, Publisher};
use crate::reaper::{Exit, Reaper};
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{Runtime, RuntimeFactory};

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
        ps: vec![4242, 4243, 5001],
        next_exec_pid: std::sync::Mutex::new(5000),
        ..Default::default()
    });
    let rtc = rt.clone();
    let factory: RuntimeFactory = Arc::new(move |_cfg| rtc.clone() as Arc<dyn Runtime>);
    let (events, rx) = Publisher::channel();
    let shutdown = Arc::new(Notify::new());
    let reaper = Reaper::new();
    let svc = TaskService::new(
        "ns".into(),
        factory,
        events,
        reaper.clone(),
        Arc::new(crate::host::NoHost),
        shutdown.clone(),
    );
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

fn exit(pid: i32, status: u32) -> Exit {
    Exit {
        pid,
        status,
        at: SystemTime::now(),
    }
}

fn state(h: &Harness, id: &str, exec_id: &str) -> Result<StateResponse, Error> {
    h.svc.state(StateRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    })
}

fn status(h: &Harness, id: &str, exec_id: &str) -> PStatus {
    state(h, id, exec_id).unwrap().status.enum_value().unwrap()
}

async fn start(h: &Harness, id: &str, exec_id: &str) -> Result<StartResponse, Error> {
    h.svc
        .start(StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        })
        .await
}

async fn kill(h: &Harness, id: &str, exec_id: &str, signal: u32) -> Result<(), Error> {
    h.svc
        .kill(KillRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            signal,
            ..Default::default()
        })
        .await
}

async fn delete(h: &Harness, id: &str, exec_id: &str) -> Result<DeleteResponse, Error> {
    h.svc
        .delete(DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        })
        .await
}

fn exec_req(id: &str, exec_id: &str, spec: &[u8]) -> ExecProcessRequest {
    let mut any = Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
    any.value = spec.to_vec();
    ExecProcessRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        spec: MessageField::some(any),
        ..Default::default()
    }
}

#[tokio::test]
async fn lifecycle_events_and_states() {
    let mut h = harness();
    let r = h.svc.create(create_req(&h, "c1")).await.unwrap();
    assert_eq!(r.pid, 4242);
    assert_eq!(next_topic(&mut h).await, "/tasks/create");
    assert!(h.bundle.path().join("options.json").exists());
    assert!(h.bundle.path().join("runtime").exists());
    assert_eq!(status(&h, "c1", ""), PStatus::CREATED);

    start(&h, "c1", "").await.unwrap();
    assert_eq!(next_topic(&mut h).await, "/tasks/start");
    assert_eq!(status(&h, "c1", ""), PStatus::RUNNING);

    // Start again is refused before any runtime call.
    let calls = h.rt.calls.lock().unwrap().len();
    assert!(start(&h, "c1", "").await.is_err());
    assert_eq!(h.rt.calls.lock().unwrap().len(), calls);

    // Delete while running is refused.
    assert!(matches!(
        delete(&h, "c1", "").await,
        Err(Error::FailedPrecondition(_))
    ));

    let svc = h.svc.clone();
    let waiter = tokio::spawn(async move {
        svc.wait(WaitRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
    });
    h.reaper.publish(exit(4242, 3));
    assert_eq!(next_topic(&mut h).await, "/tasks/exit");
    assert_eq!(waiter.await.unwrap().unwrap().exit_status, 3);
    assert_eq!(state(&h, "c1", "").unwrap().exit_status, 3);

    // A second kill after exit is NotFound, without a runtime call.
    let err = kill(&h, "c1", "", 9).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");

    let d = delete(&h, "c1", "").await.unwrap();
    assert_eq!((d.pid, d.exit_status), (4242, 3));
    assert_eq!(next_topic(&mut h).await, "/tasks/delete");
    assert!(matches!(state(&h, "c1", ""), Err(Error::NotFound(_))));
    // containerd 2.4 may retry a Delete whose answer it lost: NotFound
    // (which it takes as done), no second runtime call, no second event.
    let err = delete(&h, "c1", "").await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    let calls = h.rt.calls.lock().unwrap().clone();
    assert_eq!(calls, ["create c1", "start c1", "delete c1 force=false"]);
    h.svc.shutdown(ShutdownRequest::default()).unwrap();
    tokio::time::timeout(Duration::from_secs(1), h.shutdown.notified())
        .await
        .unwrap();
    assert!(h.events.try_recv().is_err(), "no event after the delete");
}

#[tokio::test]
async fn bad_input_gets_clear_codes() {
    let h = harness();
    for id in ["", "..", "a/b"] {
        let err = h.svc.create(create_req(&h, id)).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{id:?}: {err:?}");
    }
    let mut req = create_req(&h, "c2");
    let mut any = Any::new();
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
    let err = kill(&h, "nope", "", 9).await.unwrap_err();
    assert_eq!(err.to_string(), "container not created: not found");
    h.svc.create(create_req(&h, "c3")).await.unwrap();
    assert!(matches!(
        kill(&h, "c3", "", 99).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        h.svc.create(create_req(&h, "c3")).await,
        Err(Error::AlreadyExists(_))
    ));
    let mut upd = UpdateTaskRequest {
        id: "c3".into(),
        ..Default::default()
    };
    let mut any = Any::new();
    any.value = b"{not json".to_vec();
    upd.resources = MessageField::some(any);
    assert!(matches!(
        h.svc.update(upd).await,
        Err(Error::InvalidArgument(_))
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
    let fail = |msg: &str| {
        h.rt.fail.lock().unwrap().insert("kill".into(), msg.into());
    };
    fail("container not running");
    let err = kill(&h, "c4", "", 15).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(ref m) if m == "process already finished"));
    fail("container \"c4\" does not exist");
    let err = kill(&h, "c4", "", 15).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(ref m) if m == "no such container"));
    fail("permission denied");
    assert!(matches!(
        kill(&h, "c4", "", 15).await,
        Err(Error::Unknown(_))
    ));
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
    start(&h, "c5", "").await.unwrap();
    h.reaper.publish(exit(4242, 0));
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

#[tokio::test]
async fn exec_lifecycle_and_codes() {
    let mut h = harness();
    h.svc.create(create_req(&h, "c")).await.unwrap();
    start(&h, "c", "").await.unwrap();
    assert_eq!(next_topic(&mut h).await, "/tasks/create");
    assert_eq!(next_topic(&mut h).await, "/tasks/start");

    let spec = br#"{"args":["sh","-c","exit 4"],"cwd":"/"}"#;
    h.svc.exec(exec_req("c", "e1", spec)).await.unwrap();
    assert_eq!(next_topic(&mut h).await, "/tasks/exec-added");
    assert!(matches!(
        h.svc.exec(exec_req("c", "e1", spec)).await,
        Err(Error::AlreadyExists(ref m)) if m == "id e1"
    ));
    assert!(matches!(
        h.svc.exec(exec_req("c", "e2", b"nope")).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(status(&h, "c", "e1"), PStatus::CREATED);
    // Not started yet: no pid to signal.
    assert!(matches!(
        kill(&h, "c", "e1", 9).await,
        Err(Error::FailedPrecondition(_))
    ));

    let pid = start(&h, "c", "e1").await.unwrap().pid;
    assert_eq!(pid, 5001);
    assert_eq!(next_topic(&mut h).await, "/tasks/exec-started");
    let calls = h.rt.calls.lock().unwrap().clone();
    assert!(calls
        .iter()
        .any(|c| c.starts_with("exec c ") && c.contains("\"terminal\":false")));
    assert!(
        !h.bundle.path().join(".exec-e1.json").exists(),
        "spec file removed"
    );
    assert_eq!(status(&h, "c", "e1"), PStatus::RUNNING);

    // Pids tags the exec's pid with its id.
    let pids = h
        .svc
        .pids(PidsRequest {
            id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let tagged: Vec<(u32, String)> = pids
        .processes
        .iter()
        .filter_map(|p| {
            let a = p.info.as_ref()?;
            assert_eq!(a.type_url, "containerd.runc.v1.ProcessDetails");
            Some((
                p.pid,
                ProcessDetails::parse_from_bytes(&a.value).ok()?.exec_id,
            ))
        })
        .collect();
    assert_eq!(tagged, vec![(5001, "e1".to_string())]);

    // Delete of a running exec is refused; after its exit it works.
    assert!(matches!(
        delete(&h, "c", "e1").await,
        Err(Error::FailedPrecondition(_))
    ));
    h.reaper.publish(exit(5001, 4));
    let ev = tokio::time::timeout(Duration::from_secs(5), h.events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.topic, "/tasks/exit");
    let te = containerd_shim_protos::events::task::TaskExit::parse_from_bytes(&ev.value).unwrap();
    assert_eq!((te.id.as_str(), te.pid, te.exit_status), ("e1", 5001, 4));
    assert!(matches!(
        kill(&h, "c", "e1", 9).await,
        Err(Error::NotFound(_))
    ));
    let d = delete(&h, "c", "e1").await.unwrap();
    assert_eq!(d.exit_status, 4);
    assert!(matches!(state(&h, "c", "e1"), Err(Error::NotFound(_))));
    // Exec refused once init has stopped.
    h.reaper.publish(exit(4242, 0));
    assert_eq!(next_topic(&mut h).await, "/tasks/exit");
    assert!(matches!(
        h.svc.exec(exec_req("c", "e3", spec)).await,
        Err(Error::Unknown(_))
    ));
}

#[tokio::test]
async fn exit_before_the_pid_is_known_is_not_lost() {
    let mut h = harness();
    h.svc.create(create_req(&h, "c")).await.unwrap();
    start(&h, "c", "").await.unwrap();
    h.svc
        .exec(exec_req("c", "fast", br#"{"args":["true"]}"#))
        .await
        .unwrap();
    // The exec exits before its pid file is read.
    *h.rt.exit_during_exec.lock().unwrap() = Some((h.reaper.clone(), 7));
    start(&h, "c", "fast").await.unwrap();
    let mut topics = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(500), h.events.recv()).await
    {
        topics.push(e.topic);
    }
    let started = topics
        .iter()
        .position(|t| *t == "/tasks/exec-started")
        .unwrap();
    let exited = topics.iter().rposition(|t| *t == "/tasks/exit").unwrap();
    assert!(started < exited, "{topics:?}");
    assert_eq!(status(&h, "c", "fast"), PStatus::STOPPED);
    assert_eq!(state(&h, "c", "fast").unwrap().exit_status, 7);
}

#[tokio::test]
async fn pause_resume_update_and_checkpoint() {
    let mut h = harness();
    h.svc.create(create_req(&h, "c")).await.unwrap();
    assert!(matches!(
        h.svc.pause(PauseRequest { id: "c".into(), ..Default::default() }).await,
        Err(Error::Unknown(ref m)) if m == "cannot pause task in created state"
    ));
    start(&h, "c", "").await.unwrap();
    h.svc
        .exec(exec_req("c", "e", br#"{"args":["sleep","1"]}"#))
        .await
        .unwrap();
    start(&h, "c", "e").await.unwrap();
    h.svc
        .pause(PauseRequest {
            id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(status(&h, "c", ""), PStatus::PAUSED);
    assert_eq!(
        status(&h, "c", "e"),
        PStatus::PAUSED,
        "an exec reports its container's pause"
    );
    assert!(matches!(
        h.svc.exec(exec_req("c", "e2", b"{}")).await,
        Err(Error::Unknown(_))
    ));
    h.svc
        .resume(ResumeRequest {
            id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(status(&h, "c", ""), PStatus::RUNNING);
    let mut topics = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), h.events.recv()).await
    {
        topics.push(e.topic);
    }
    let p = topics.iter().position(|t| *t == "/tasks/paused").unwrap();
    let r = topics.iter().position(|t| *t == "/tasks/resumed").unwrap();
    assert!(p < r);

    let mut any = Any::new();
    any.value = br#"{"memory":{"limit":52428800}}"#.to_vec();
    h.svc
        .update(UpdateTaskRequest {
            id: "c".into(),
            resources: MessageField::some(any),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        &*h.rt.last_update.lock().unwrap(),
        br#"{"memory":{"limit":52428800}}"#
    );

    // A failed checkpoint names the CRIU log kept in the bundle.
    h.rt.fail.lock().unwrap().insert(
        "checkpoint".into(),
        "criu failed: type NOTIFY errno 0\nmore".into(),
    );
    let work = h.bundle.path().join("work/criu-work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("dump.log"), "criu says no\n").unwrap();
    let mut opts = CheckpointOptions::new();
    opts.exit = true;
    let mut any = Any::new();
    any.type_url = "containerd.runc.v1.CheckpointOptions".into();
    any.value = opts.write_to_bytes().unwrap();
    let err = h
        .svc
        .checkpoint(CheckpointTaskRequest {
            id: "c".into(),
            path: "/tmp/img".into(),
            options: MessageField::some(any),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let dump = h.bundle.path().join("criu-dump.log");
    assert_eq!(
        err.to_string(),
        format!("criu failed: type NOTIFY errno 0 path= {}", dump.display())
    );
    assert_eq!(std::fs::read_to_string(dump).unwrap(), "criu says no\n");
    assert!(!work.exists(), "default work dir removed");
}

#[tokio::test]
async fn created_from_checkpoint_restores_at_start() {
    let mut h = harness();
    let mut req = create_req(&h, "r");
    req.checkpoint = "/tmp/cp-image".into();
    let r = h.svc.create(req).await.unwrap();
    assert_eq!(r.pid, 0, "nothing runs before Start");
    assert_eq!(status(&h, "r", ""), PStatus::CREATED);
    assert!(matches!(
        h.svc.exec(exec_req("r", "e", b"{}")).await,
        Err(Error::Unknown(_))
    ));
    let pid = start(&h, "r", "").await.unwrap().pid;
    assert_eq!(pid, 4242);
    assert_eq!(next_topic(&mut h).await, "/tasks/create");
    assert_eq!(next_topic(&mut h).await, "/tasks/start");
    let calls = h.rt.calls.lock().unwrap().clone();
    assert_eq!(calls, ["restore r"]);
}

/// A runtime whose kill hangs does not hang Kill: past the kill bound the
/// shim acts itself (here, with no host, it can only say why it could not).
#[tokio::test(start_paused = true)]
async fn a_hung_runtime_kill_is_bounded() {
    let h = harness();
    h.svc.create(create_req(&h, "hk")).await.unwrap();
    start(&h, "hk", "").await.unwrap();
    h.rt.hang.lock().unwrap().insert("kill".into());
    let t = tokio::time::Instant::now();
    let err = kill(&h, "hk", "", 9).await.unwrap_err();
    assert_eq!(t.elapsed(), super::task::KILL_BOUND);
    assert!(
        matches!(&err, Error::Unknown(m) if m.contains("did not finish within")),
        "{err}"
    );
}

/// A runtime whose delete hangs does not keep Delete from releasing the
/// task once the bound has passed.
#[tokio::test(start_paused = true)]
async fn a_hung_runtime_delete_still_releases_the_task() {
    let h = harness();
    h.svc.create(create_req(&h, "hd")).await.unwrap();
    start(&h, "hd", "").await.unwrap();
    h.reaper.publish(exit(4242, 137));
    h.svc
        .wait(WaitRequest {
            id: "hd".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    h.rt.hang.lock().unwrap().insert("delete".into());
    let t = tokio::time::Instant::now();
    let d = delete(&h, "hd", "").await.unwrap();
    assert_eq!(d.exit_status, 137);
    assert!(t.elapsed() >= super::task::DELETE_BOUND);
    assert!(h.svc.is_empty());
    // The runtime delete is retried (forced) until the runtime answers;
    // meanwhile `shim delete` sees a live shim doing it.
    let marker = h.bundle.path().join(super::task::DELETE_ABANDONED);
    assert!(super::retried_by_a_live_shim(&marker));
    tokio::time::sleep(Duration::from_secs(20)).await;
    let forced = |h: &Harness| {
        let calls = h.rt.calls.lock().unwrap();
        calls
            .iter()
            .filter(|c| *c == "delete hd force=true")
            .count()
    };
    assert!(forced(&h) >= 2, "{:?}", h.rt.calls.lock().unwrap());
    assert!(h.svc.retrying());
    h.rt.hang.lock().unwrap().clear();
    let tries = forced(&h);
    h.svc.retries_done(super::RETRY_FOR).await;
    assert_eq!(forced(&h), tries + 1);
    assert!(!h.svc.retrying());
    assert!(!marker.exists(), "the marker goes once the delete is done");
    assert!(!super::retried_by_a_live_shim(&marker));
}

/// A runtime delete that never recovers is retried for a while, then
/// given up (said in the log); nothing waits on it for longer.
#[tokio::test(start_paused = true)]
async fn a_runtime_delete_that_stays_hung_is_given_up() {
    let h = harness();
    h.svc.create(create_req(&h, "hd")).await.unwrap();
    h.rt.hang.lock().unwrap().insert("delete".into());
    delete(&h, "hd", "").await.unwrap();
    let t = tokio::time::Instant::now();
    h.svc.retries_done(Duration::from_secs(3600)).await;
    assert!(
        t.elapsed() <= super::RETRY_FOR + super::task::DELETE_BOUND,
        "{:?}",
        t.elapsed()
    );
    assert!(!h.svc.retrying());
}

/// containerd died between a Delete and its Shutdown (and its client then
/// removed the container): with no container left the shim shuts down by
/// itself after a grace; a Create within the grace keeps it.
#[tokio::test(start_paused = true)]
async fn a_shim_never_told_to_shut_down_after_its_last_delete_goes_by_itself() {
    let h = harness();
    let shut = {
        let n = h.shutdown.clone();
        tokio::spawn(async move { n.notified().await })
    };
    for id in ["a", "b"] {
        h.svc.create(create_req(&h, id)).await.unwrap();
    }
    for id in ["a", "b"] {
        delete(&h, id, "").await.unwrap();
        if id == "a" {
            tokio::time::sleep(super::afterlife::ORPHAN_GRACE * 2).await;
            assert!(!shut.is_finished(), "a container is left");
        }
    }
    // Recreated within the grace: kept.
    tokio::time::sleep(super::afterlife::ORPHAN_GRACE / 2).await;
    h.svc.create(create_req(&h, "c")).await.unwrap();
    tokio::time::sleep(super::afterlife::ORPHAN_GRACE).await;
    assert!(!shut.is_finished(), "a container was created in the grace");
    delete(&h, "c", "").await.unwrap();
    let t = tokio::time::Instant::now();
    shut.await.unwrap();
    assert_eq!(t.elapsed(), super::afterlife::ORPHAN_GRACE);
}

/// An exec that prints and exits before its Start is answered: Start answers
/// at once; the exit is reported only once a reader took the output (CRI
/// attaches its readers after Start returns).
#[tokio::test]
async fn an_exec_start_is_answered_before_its_output_is_read() {
    use std::io::Read;
    let mut h = harness();
    h.svc.create(create_req(&h, "c")).await.unwrap();
    start(&h, "c", "").await.unwrap();
    let fifo = h.bundle.path().join("exec-stdout");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let mut req = exec_req("c", "probe", br#"{"args":["echo","hi"]}"#);
    req.stdout = fifo.display().to_string();
    h.svc.exec(req).await.unwrap();
    *h.rt.exec_output.lock().unwrap() = b"hi\n".to_vec();
    *h.rt.exit_during_exec.lock().unwrap() = Some((h.reaper.clone(), 0));
    while next_topic(&mut h).await != "/tasks/exec-added" {}
    tokio::time::timeout(Duration::from_millis(500), start(&h, "c", "probe"))
        .await
        .expect("Start answered without waiting for a reader")
        .unwrap();
    assert_eq!(next_topic(&mut h).await, "/tasks/exec-started");
    // Nobody read the output yet: the exit is not reported.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), h.events.recv())
            .await
            .is_err(),
        "exit reported before its output was read"
    );
    assert_eq!(status(&h, "c", "probe"), PStatus::RUNNING);
    // The client's reader comes: it gets the output, then the exit.
    // (Non-blocking, as containerd's clients open it: the shim's writer is
    // gone once its relay ended.)
    let got = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)?;
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        while got.len() < 3 {
            match f.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(got, b"hi\n");
    assert_eq!(next_topic(&mut h).await, "/tasks/exit");
    assert_eq!(status(&h, "c", "probe"), PStatus::STOPPED);
}

/// Init dies while an exec's Start is in flight (a slow `runtime exec`):
/// as in the Go shim, init's exit is held (State `running`, no
/// `/tasks/exit`) until that Start has returned; the exec whose Start failed
/// stays `created`, its Wait released; no exec starts after init's exit.
#[tokio::test]
async fn init_exit_waits_for_an_exec_start_in_flight() {
    let mut h = harness();
    h.svc.create(create_req(&h, "c")).await.unwrap();
    start(&h, "c", "").await.unwrap();
    h.svc
        .exec(exec_req("c", "slow", br#"{"args":["true"]}"#))
        .await
        .unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *h.rt.exec_gate.lock().unwrap() = Some(gate.clone());
    let svc = h.svc.clone();
    let starting = tokio::spawn(async move {
        svc.start(StartRequest {
            id: "c".into(),
            exec_id: "slow".into(),
            ..Default::default()
        })
        .await
    });
    while !h
        .rt
        .calls
        .lock()
        .unwrap()
        .iter()
        .any(|c| c.starts_with("exec c"))
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waiter = {
        let svc = h.svc.clone();
        tokio::spawn(async move {
            svc.wait(WaitRequest {
                id: "c".into(),
                exec_id: "slow".into(),
                ..Default::default()
            })
            .await
        })
    };
    h.reaper.publish(exit(4242, 137));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(&h, "c", ""), PStatus::RUNNING, "init's exit is held");
    let mut topics = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(100), h.events.recv()).await
    {
        topics.push(e.topic);
    }
    assert!(!topics.contains(&"/tasks/exit"), "{topics:?}");
    // No other exec starts once init has exited.
    h.svc
        .exec(exec_req("c", "late", br#"{"args":["true"]}"#))
        .await
        .unwrap();
    assert!(matches!(
        start(&h, "c", "late").await,
        Err(Error::FailedPrecondition(ref m)) if m == "container c init process is not running"
    ));
    // The slow exec fails (its container is gone); then init's exit goes.
    h.rt.fail
        .lock()
        .unwrap()
        .insert("exec".into(), "cannot exec in a stopped container".into());
    gate.add_permits(1);
    assert!(starting.await.unwrap().is_err());
    tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("the failed exec's Wait returns")
        .unwrap()
        .unwrap();
    loop {
        if next_topic(&mut h).await == "/tasks/exit" {
            break;
        }
    }
    assert_eq!(status(&h, "c", ""), PStatus::STOPPED);
    assert_eq!(state(&h, "c", "").unwrap().exit_status, 137);
    assert_eq!(status(&h, "c", "slow"), PStatus::CREATED);
    delete(&h, "c", "slow").await.unwrap();
}

/// Init's exit is published after the exits of the execs that ran (the
/// kernel ends them with init's pid namespace, in any order).
#[tokio::test]
async fn init_exit_follows_its_running_execs_exits() {
    let mut h = harness();
    h.svc.create(create_req(&h, "c")).await.unwrap();
    start(&h, "c", "").await.unwrap();
    h.svc
        .exec(exec_req("c", "e", br#"{"args":["sleep","60"]}"#))
        .await
        .unwrap();
    let pid = start(&h, "c", "e").await.unwrap().pid;
    while next_topic(&mut h).await != "/tasks/exec-started" {}
    h.reaper.publish(exit(4242, 137));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), h.events.recv())
            .await
            .is_err(),
        "init's exit came before its exec's"
    );
    h.reaper.publish(exit(pid as i32, 137));
    let first = h.events.recv().await.unwrap();
    let second = h.events.recv().await.unwrap();
    assert_eq!((first.topic, second.topic), ("/tasks/exit", "/tasks/exit"));
    let ids: Vec<String> = [first, second]
        .iter()
        .map(|e| {
            containerd_shim_protos::events::task::TaskExit::parse_from_bytes(&e.value)
                .unwrap()
                .id
        })
        .collect();
    assert_eq!(ids, ["e", "c"]);
}
