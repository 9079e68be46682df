//! Entry points of the coverage-guided fuzz targets in `fuzz/` (built only
//! with the `fuzzing` feature): one function per input Wedge takes from
//! outside. Each must return, without panicking, whatever the bytes.
//!
//! Requests reach a real [`TaskService`] driven by the recording fake
//! runtime. Before a request runs, what would touch the machine is pointed
//! into a private scratch folder (the bundle, checkpoint paths, stdio URIs)
//! and rootfs mounts are dropped, so a fuzz run mounts, starts and writes
//! nothing outside that folder (`$TMPDIR/wedge-fuzz-<pid>`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::CheckpointOptions;
use containerd_shim_protos::shim::shim::{
    CheckpointTaskRequest, CreateTaskRequest, ExecProcessRequest,
};
use containerd_shim_protos::ttrpc::Request;

use crate::events::Publisher;
use crate::reaper::Reaper;
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{Runtime, RuntimeFactory};
use crate::service::{TaskService, METHODS};
use crate::ttrpc::Dispatch;

/// Method names the service has not (after [`METHODS`] in a call's first byte).
const OTHER: &[&str] = &["Bogus"];

/// How long one call may take here: a `Wait` on a process of the fake
/// runtime never ends by itself.
const CALL_BOUND: Duration = Duration::from_millis(5);

/// The scratch folder of this process (created once).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("wedge-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
}

/// A fresh bundle (with an empty `config.json`) for one input.
fn fresh_bundle() -> PathBuf {
    let b = scratch().join("bundle");
    let _ = std::fs::remove_dir_all(&b);
    std::fs::create_dir_all(&b).expect("bundle");
    std::fs::write(b.join("config.json"), "{}").expect("config.json");
    b
}

/// A stdio URI or FIFO path made harmless: empty stays empty; anything else
/// becomes a missing FIFO, a log file or an unknown scheme in the scratch
/// folder (chosen by its length, so the fuzzer reaches all three).
fn safe_stdio(s: &str) -> String {
    match (s.is_empty(), s.len() % 3) {
        (true, _) => String::new(),
        (false, 0) => scratch().join("no-fifo").display().to_string(),
        (false, 1) => format!("file://{}", scratch().join("log").display()),
        (false, _) => format!("gopher://{s}"),
    }
}

fn re(m: impl Message) -> Vec<u8> {
    m.write_to_bytes().unwrap_or_default()
}

/// Points what a request would touch into the scratch folder.
fn sanitize(method: &str, payload: Vec<u8>, bundle: &Path) -> Vec<u8> {
    match method {
        "Create" => match CreateTaskRequest::parse_from_bytes(&payload) {
            Ok(mut r) => {
                r.bundle = bundle.display().to_string();
                r.rootfs.clear();
                r.stdin = safe_stdio(&r.stdin);
                r.stdout = safe_stdio(&r.stdout);
                r.stderr = safe_stdio(&r.stderr);
                if !r.checkpoint.is_empty() {
                    r.checkpoint = scratch().join("cp").display().to_string();
                }
                if !r.parent_checkpoint.is_empty() {
                    r.parent_checkpoint = scratch().join("parent").display().to_string();
                }
                re(r)
            }
            Err(_) => payload,
        },
        "Exec" => match ExecProcessRequest::parse_from_bytes(&payload) {
            Ok(mut r) => {
                r.stdin = safe_stdio(&r.stdin);
                r.stdout = safe_stdio(&r.stdout);
                r.stderr = safe_stdio(&r.stderr);
                re(r)
            }
            Err(_) => payload,
        },
        "Checkpoint" => match CheckpointTaskRequest::parse_from_bytes(&payload) {
            Ok(mut r) => {
                r.path = scratch().join("cp").display().to_string();
                if let Some(a) = r.options.as_mut() {
                    if let Ok(mut o) = CheckpointOptions::parse_from_bytes(&a.value) {
                        if !o.image_path.is_empty() {
                            o.image_path = scratch().join("cp").display().to_string();
                        }
                        if !o.work_path.is_empty() {
                            o.work_path = scratch().join("work").display().to_string();
                        }
                        a.value = re(o);
                    }
                }
                re(r)
            }
            Err(_) => payload,
        },
        _ => payload,
    }
}

/// Runs `f` against a fresh task service on a fresh runtime, which is
/// dropped afterwards with every task it still holds.
fn with_service(f: impl AsyncFnOnce(&Arc<TaskService>, &Path)) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let fake = Arc::new(FakeRuntime {
            // Above the largest pid_max (2^22): no real process is ever signalled.
            pid: 4_999_999,
            next_exec_pid: std::sync::Mutex::new(4_900_000),
            ..Default::default()
        });
        let factory: RuntimeFactory = Arc::new(move |_| fake.clone() as Arc<dyn Runtime>);
        let (events, _rx) = Publisher::channel();
        let svc = TaskService::new(
            "fuzz".into(),
            factory,
            events,
            Reaper::new(),
            Arc::new(crate::host::NoHost),
            Arc::new(tokio::sync::Notify::new()),
        );
        f(&svc, &fresh_bundle()).await;
    });
}

/// One call, sanitized and bounded; a status must carry a message.
async fn call(
    svc: &Arc<TaskService>,
    bundle: &Path,
    service: &str,
    method: &str,
    payload: Vec<u8>,
) {
    let payload = sanitize(method, payload, bundle);
    let c = svc
        .clone()
        .dispatch(service.to_string(), method.to_string(), payload);
    if let Ok(Err(status)) = tokio::time::timeout(CALL_BOUND, c).await {
        assert!(
            !status.message.is_empty(),
            "{method}: a status without a message"
        );
    }
}

/// A byte stream as a ttrpc connection carries it: frames are split as the
/// server splits them, each request frame decoded and dispatched.
pub fn ttrpc_frames(data: &[u8]) {
    with_service(async |svc, bundle| {
        let mut buf = data.to_vec();
        while let Ok(Some(f)) = crate::ttrpc::take_frame(&mut buf) {
            if f.kind != crate::ttrpc::TYPE_REQUEST {
                continue;
            }
            if let Ok(r) = Request::parse_from_bytes(&f.payload) {
                call(svc, bundle, &r.service, &r.method, r.payload).await;
            }
        }
    });
}

/// A sequence of Task calls on one service: each is a method byte (its top
/// bit picks the v3 service name), a little-endian u16 length and the payload.
pub fn task_calls(data: &[u8]) {
    with_service(async |svc, bundle| {
        let mut rest = data;
        while let [m, l0, l1, tail @ ..] = rest {
            let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
            let (payload, next) = tail.split_at(len);
            rest = next;
            let i = usize::from(*m & 0x7f) % (METHODS.len() + OTHER.len());
            let method = METHODS.get(i).copied().unwrap_or(OTHER[0]);
            let service = crate::service::SERVICES[usize::from(*m >> 7)];
            call(svc, bundle, service, method, payload.to_vec()).await;
        }
    });
}

/// `start`'s stdin (containerd 2.3's BootstrapParams, or the legacy Any of
/// runtime options) and the options it carries.
pub fn start_stdin(data: &[u8]) {
    let _ = crate::bootstrap::BootstrapParams::decode(data).map(|p| {
        let _ = crate::options::Options::from_any(p.options());
        p.debug()
    });
    if let Ok(input) = crate::bootstrap::StartInput::decode(data, "c1", "capture") {
        let _ = crate::options::Options::from_any(input.options());
        let _ = input.socket_dir();
        let _ = input.reply("unix:///run/x.sock");
    }
}

/// Runtime options: the Any's value under each type a shim is sent (the
/// first byte picks one), the bundle's `options.json`, and the TOML of a CRI
/// runtime handler's options file.
pub fn runtime_options(data: &[u8]) {
    const TYPES: &[&str] = &[
        "containerd.runc.v1.Options",
        "type.googleapis.com/containerd.runc.v1.Options",
        "runtimeoptions.v1.Options",
        "cri.runtimeoptions.v1.Options",
        "containerd.runtimeoptions.v1.Options",
        "unknown.v1.Options",
    ];
    let Some((pick, value)) = data.split_first() else {
        return;
    };
    let ty = TYPES[usize::from(*pick) % TYPES.len()];
    if let Ok(o) = crate::options::Options::decode(ty, value) {
        // What is decoded survives the bundle's options.json.
        let back = crate::options::Options::from_json(&o.to_json());
        assert_eq!(back.binary_name, o.binary_name);
    }
    let text = String::from_utf8_lossy(value);
    let _ = crate::options::Options::from_json(&text);
    let _ = crate::options::Options::from_toml(&text);
}

/// An exec's process spec (JSON of an OCI `Process`).
pub fn exec_spec(data: &[u8]) {
    for terminal in [false, true] {
        if let Ok(spec) = crate::service::task_ops::exec_spec(data, terminal) {
            let v: serde_json::Value = serde_json::from_slice(&spec).expect("re-encoded JSON");
            assert_eq!(v["terminal"], serde_json::Value::Bool(terminal));
        }
    }
}

/// The state an upgrade in place hands to the next image, checked as
/// `-upgrade-check` checks it (adopting its descriptors is left out: they
/// are this process's own).
pub fn handover_state(data: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<crate::upgrade::state::StateRecord>(data) {
        let _ = crate::upgrade::state::validate(&r);
    }
}

/// The kept-events store file: its records, each decoded as the forwarded
/// event `shim delete` and the replay read.
pub fn kept_events(data: &[u8]) {
    for r in crate::events::store::parse(data) {
        if let Ok(f) = containerd_shim_protos::shim::events::ForwardRequest::parse_from_bytes(&r) {
            let _ = f.envelope.topic.len();
        }
    }
}

/// The exit record: Wedge's `init.exit` and the Go shim's `exit.json`.
pub fn exit_record(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::exitfile::parse_own(&text);
    let _ = crate::exitfile::parse_go(&text);
}
