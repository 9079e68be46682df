//! The CRI client side of the guest's CRI test: connecting over the
//! containerd socket, pod and container configs as the kubelet's systemd
//! driver sends them, and reaching a CRI container's shim directly (the client
//! itself is `tests/common/cri.rs`). Part of
//! `tests/cgroup_v2.rs` (guest only).

use crate::common::*;
use crate::cri_common::container_config;
use containerd_shim_protos::cgroups_v2::metrics::Metrics;
use containerd_shim_protos::shim::shim::*;
use k8s_cri::v1::*;

/// containerd's log without its start-up chatter, for failure messages.
pub fn log_excerpt(env: &Env) -> String {
    env.containerd_log()
        .lines()
        .filter(|l| !l.contains("loading plugin") && !l.contains("skip loading plugin"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// [`container_config`] with a memory limit (0: none).
pub fn limited_container(name: &str, script: &str, memory: i64) -> ContainerConfig {
    let mut c = container_config(name, script);
    c.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: memory,
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// Init's pid and the shim's Stats of a CRI container (namespace k8s.io).
/// (On a thread of its own: the ttrpc client runs its own runtime.)
pub fn k8s_state_and_stats(env: &Env, id: &str) -> (u32, Metrics) {
    let bundle = env
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task/k8s.io")
        .join(id);
    let addr = std::fs::read_to_string(bundle.join("address")).unwrap();
    let id = id.to_string();
    std::thread::spawn(move || state_and_stats(&addr, &id))
        .join()
        .unwrap()
}

pub fn state_and_stats(addr: &str, id: &str) -> (u32, Metrics) {
    let st: StateResponse = ttrpc_call(
        addr,
        "State",
        &StateRequest {
            id: id.into(),
            ..Default::default()
        },
    )
    .unwrap();
    let r: StatsResponse = ttrpc_call(
        addr,
        "Stats",
        &StatsRequest {
            id: id.into(),
            ..Default::default()
        },
    )
    .unwrap();
    (st.pid, crate::cgroup_files::v2_metrics(r))
}
