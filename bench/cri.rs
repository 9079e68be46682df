//! CRI latency, Wedge beside the Go shim: one private containerd with CRI
//! on, handler `wedge` (Wedge) and handler `runc` (the Go shim of the
//! containerd under test), driven over the CRI API as the kubelet drives it,
//! the two interleaved round by round. Host-network pods.
//!
//! Per round and shim: RunPodSandbox → CreateContainer → StartContainer
//! (pod start to container started); ExecSync of `true` and of `echo`;
//! streaming exec of `echo` (CRI Exec, then the streaming server's
//! websocket, to the exit status); ContainerStats (answered from the
//! shim's Stats); StopContainer (a container that exits on
//! SIGTERM); StopPodSandbox + RemovePodSandbox.
//!
//! `cargo bench --bench cri -- [--rounds N] [--execs N] [--json FILE]`
//! (`--execs`: calls of each exec kind per round, default 5); `bench/run`
//! calls it with `WEDGE_SHIM_UNDER_TEST` set to the release binary (and
//! `WEDGE_CONTAINERD_DIR` for another containerd) and prints its rows.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/cri.rs"]
mod cri_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use cri_common::*;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

/// The shims compared: CRI handler and label.
const SHIMS: [(&str, &str); 2] = [("wedge", "wedge"), ("runc", "go")];

type Samples = BTreeMap<String, Vec<f64>>;

fn record(s: &mut Samples, what: &str, shim: &str, t: Instant) {
    s.entry(format!("{what}-{shim}"))
        .or_default()
        .push(t.elapsed().as_secs_f64());
}

async fn exec_sync(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    cmd: &[&str],
) -> ExecSyncResponse {
    rt.exec_sync(ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 10,
    })
    .await
    .unwrap()
    .into_inner()
}

/// One pod's life through `handler`, with `execs` calls of each exec kind.
async fn round(
    rt: &mut RuntimeServiceClient<Channel>,
    env: &Env,
    n: usize,
    (handler, shim): (&str, &str),
    execs: usize,
    s: &mut Samples,
) {
    let t = Instant::now();
    let (pod, cfg) = start_pod(rt, env, &format!("bench-{shim}-{n}"), handler).await;
    let id = start_container(
        rt,
        &pod,
        &cfg,
        "app",
        "trap 'exit 0' TERM; sleep 600 & wait",
    )
    .await;
    record(s, "pod-start", shim, t);
    for _ in 0..execs {
        let t = Instant::now();
        let r = exec_sync(rt, &id, &["true"]).await;
        record(s, "execsync-true", shim, t);
        assert_eq!(r.exit_code, 0);
        let t = Instant::now();
        let r = exec_sync(rt, &id, &["echo", "probe"]).await;
        record(s, "execsync-echo", shim, t);
        assert_eq!(r.stdout, b"probe\n");
        let t = Instant::now();
        let r = stream_exec(rt, &id, &["echo", "probe"]).await;
        record(s, "stream-echo", shim, t);
        assert_eq!(r.stdout, b"probe\n", "{}", r.status);
        // The kubelet's stats loop: containerd answers from the shim's Stats.
        let t = Instant::now();
        let st = rt
            .container_stats(ContainerStatsRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        record(s, "container-stats", shim, t);
        assert!(st.stats.and_then(|c| c.memory).is_some(), "no memory stats");
    }
    let t = Instant::now();
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 10,
    })
    .await
    .unwrap();
    record(s, "stop-container", shim, t);
    let t = Instant::now();
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    record(s, "remove-pod", shim, t);
    // The next round starts on a quiet node: this pod's shim has gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !shims_in_k8s_ns(env).is_empty() {
        assert!(Instant::now() < deadline, "the pod's shim stayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() {
    let mut rounds = 20;
    let mut execs = 5;
    let mut json = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rounds N")
            }
            "--execs" => execs = args.next().and_then(|v| v.parse().ok()).expect("--execs N"),
            "--json" => json = args.next(),
            _ => {} // cargo bench passes --bench
        }
    }
    let env = Env::start_beside_go_shim();
    let version = String::from_utf8_lossy(
        &std::process::Command::new(containerd_bin("containerd"))
            .arg("--version")
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let samples = runtime.block_on(async {
        let mut rt = connect(&env.address).await;
        let mut s = Samples::new();
        for n in 0..rounds {
            let order: Vec<_> = if n % 2 == 0 {
                SHIMS.to_vec()
            } else {
                SHIMS.iter().rev().copied().collect()
            };
            for shim in order {
                round(&mut rt, &env, n, shim, execs, &mut s).await;
            }
        }
        s
    });
    cleanup_cgroups(&env);
    drop(env);
    let out = serde_json::json!({ "containerd": version, "rounds": rounds, "samples": samples });
    match json {
        Some(path) => std::fs::write(path, out.to_string()).unwrap(),
        None => println!("{out}"),
    }
}
