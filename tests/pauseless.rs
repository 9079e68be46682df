//! Pods without a pause container through CRI, on a containerd that serves
//! `sandboxer = "shim"` (2.3+; not in Debian: run by hand with
//! `WEDGE_CONTAINERD_DIR` naming its bin folder). Handler `pauseless` is
//! Wedge with `sandboxer = "shim"`; no pause container runs.

mod common;
#[path = "common/cri.rs"]
mod cri_common;

use std::time::Duration;

use common::*;
use cri_common::*;
use k8s_cri::v1::*;

const PAUSELESS: &str = r#"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.pauseless]
      runtime_type = "io.containerd.wedge.v2"
      sandboxer = "shim"
"#;

fn processes_named(name: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(name))
        .count()
}

#[test]
fn a_host_network_pod_runs_without_a_pause_container() {
    let env = Env::start_custom(Install::Wedge, true, PAUSELESS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut rt = connect(&env.address).await;
        let pauses = processes_named("/pause");
        let (pod, cfg) = start_pod(&mut rt, &env, "pl-host", "pauseless").await;
        assert_eq!(processes_named("/pause"), pauses, "a pause container runs");
        let st = rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
        let id = start_container(&mut rt, &pod, &cfg, "c1", "echo hello; sleep 600").await;
        let out = rt
            .exec_sync(ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["sh".into(), "-c".into(), "echo from-exec".into()],
                timeout: 10,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "from-exec\n");
        eprintln!("{}", env.containerd_log());
        rt.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
        rt.remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        remove_pod(&mut rt, &env, &pod, Duration::from_secs(10)).await;
    });
    env.assert_clean();
}
