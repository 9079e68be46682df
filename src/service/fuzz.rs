//! A bounded, seeded fuzzer over every Task RPC, run as a unit test against
//! the fake runtime: random bytes and structurally valid requests with
//! hostile fields (ids with `/` and `..`, huge strings, unknown Any types,
//! non-JSON specs, any signal). Every call must return a response or a
//! status with a known code, never panic, and the service must keep serving.
//!
//! `WEDGE_FUZZ_ITERS=200000 cargo test --lib fuzz -- --nocapture` runs longer
//! (CI runs the default count); `WEDGE_FUZZ_SEED` picks another seed.

use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use containerd_shim_protos::shim::shim::*;
use containerd_shim_protos::ttrpc::Code;
use tokio::sync::Notify;

use super::TaskService;
use crate::events::Publisher;
use crate::reaper::Reaper;
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{Runtime, RuntimeFactory};
use crate::ttrpc::Dispatch;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max);
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Method names the service has not, besides [`super::METHODS`].
const OTHER: &[&str] = &["Bogus", ""];

fn id(r: &mut Rng) -> String {
    let fixed = [
        "c",
        "c",
        "d",
        "",
        ".",
        "..",
        "../../etc",
        "a/b",
        "x\0y",
        "e1",
        "e2",
    ];
    if r.below(10) == 0 {
        "z".repeat(r.below(5000) as usize)
    } else {
        r.pick(&fixed).to_string()
    }
}

fn any(r: &mut Rng) -> MessageField<Any> {
    if r.below(3) == 0 {
        return MessageField::none();
    }
    let mut a = Any::new();
    a.type_url = r
        .pick(&[
            "",
            "containerd.runc.v1.Options",
            "runtimeoptions.v1.Options",
            "x/y",
            "containerd.runc.v1.CheckpointOptions",
        ])
        .to_string();
    a.value = match r.below(4) {
        0 => {
            let mut o = RuncOptions::new();
            o.binary_name = r.pick(&["", "runc", "/nonexistent"]).into();
            o.write_to_bytes().unwrap()
        }
        1 => br#"{"args":["sh"],"cwd":"/","memory":{"limit":1}}"#.to_vec(),
        2 => b"[1,2".to_vec(),
        _ => r.bytes(300),
    };
    MessageField::some(a)
}

fn request(r: &mut Rng, bundle: &str, method: &str) -> Vec<u8> {
    if r.below(4) == 0 {
        return r.bytes(600);
    }
    let (id, exec_id) = (
        id(r),
        if r.below(2) == 0 {
            String::new()
        } else {
            id(r)
        },
    );
    let res = match method {
        "Create" => CreateTaskRequest {
            id,
            bundle: r
                .pick(&[bundle, "", "relative", "/nonexistent"])
                .to_string(),
            stdout: r
                .pick(&["", "gopher://x", "file://rel", "binary:///nonexistent"])
                .to_string(),
            terminal: r.below(8) == 0,
            options: any(r),
            ..Default::default()
        }
        .write_to_bytes(),
        "Exec" => ExecProcessRequest {
            id,
            exec_id,
            spec: any(r),
            terminal: r.below(4) == 0,
            ..Default::default()
        }
        .write_to_bytes(),
        "Kill" => KillRequest {
            id,
            exec_id,
            signal: r.next() as u32 % 200,
            all: r.below(2) == 0,
            ..Default::default()
        }
        .write_to_bytes(),
        "Update" => UpdateTaskRequest {
            id,
            resources: any(r),
            ..Default::default()
        }
        .write_to_bytes(),
        "Checkpoint" => CheckpointTaskRequest {
            id,
            path: r.pick(&["", "/tmp/wedge-fuzz-cp"]).to_string(),
            options: any(r),
            ..Default::default()
        }
        .write_to_bytes(),
        "ResizePty" => ResizePtyRequest {
            id,
            exec_id,
            width: r.next() as u32,
            height: r.next() as u32,
            ..Default::default()
        }
        .write_to_bytes(),
        _ => StartRequest {
            id,
            exec_id,
            ..Default::default()
        }
        .write_to_bytes(),
    };
    res.unwrap_or_default()
}

#[tokio::test]
async fn every_rpc_survives_hostile_input() {
    let iters: u64 = std::env::var("WEDGE_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let seed: u64 = std::env::var("WEDGE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let rt = Arc::new(FakeRuntime {
        pid: 4242,
        next_exec_pid: std::sync::Mutex::new(5000),
        ..Default::default()
    });
    let rtc = rt.clone();
    let factory: RuntimeFactory = Arc::new(move |_| rtc.clone() as Arc<dyn Runtime>);
    let (events, _rx) = Publisher::channel();
    let svc = TaskService::new(
        "ns".into(),
        factory,
        events,
        Reaper::new(),
        Arc::new(crate::host::NoHost),
        Arc::new(Notify::new()),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let bundle = dir.path().display().to_string();
    let mut r = Rng(seed | 1);
    let known = [
        Code::NOT_FOUND,
        Code::ALREADY_EXISTS,
        Code::FAILED_PRECONDITION,
        Code::INVALID_ARGUMENT,
        Code::UNIMPLEMENTED,
        Code::UNKNOWN,
    ];
    for i in 0..iters {
        let method = match r.below(19) {
            i @ 0..=16 => super::METHODS[i as usize],
            i => OTHER[i as usize - 17],
        };
        let service = if r.below(20) == 0 {
            "other.Service"
        } else {
            "containerd.task.v2.Task"
        };
        let payload = request(&mut r, &bundle, method);
        let call = svc.clone().dispatch(service.into(), method.into(), payload);
        // Wait legitimately blocks on a live process: bound every call.
        if let Ok(Err(status)) = tokio::time::timeout(Duration::from_millis(20), call).await {
            assert!(
                known.contains(&status.code()),
                "iteration {i}: {method}: {status:?}"
            );
            assert!(!status.message.is_empty());
        }
    }
    // Still serving.
    let c = svc.clone().dispatch(
        "containerd.task.v2.Task".into(),
        "Connect".into(),
        ConnectRequest::new().write_to_bytes().unwrap(),
    );
    assert!(c.await.is_ok());
}
