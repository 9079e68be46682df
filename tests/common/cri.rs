//! The CRI client side shared by the CRI suites (`tests/cri.rs` and the
//! guest's `tests/cgroup_v2.rs`): a RuntimeService client over containerd's
//! socket, the pod's shims, and waiting for a container's exit.

use std::time::{Duration, Instant};

use crate::common::*;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

/// A CRI RuntimeService client on containerd's socket `sock`.
pub async fn connect(sock: &str) -> RuntimeServiceClient<Channel> {
    let path = sock.to_string();
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap();
    RuntimeServiceClient::new(channel)
}

/// The shims containerd started in the `k8s.io` namespace.
pub fn shims_in_k8s_ns(env: &Env) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, c)| {
            c.contains(&env.address) && c.contains("-namespace k8s.io") && !c.ends_with(" start")
        })
        .map(|(p, _)| p)
        .collect()
}

/// A CRI container's status.
pub async fn container_status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> ContainerStatus {
    rt.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

/// Waits (up to a bound) for a CRI container to be EXITED; its status.
pub async fn wait_exited(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = container_status(rt, id).await;
        if st.state == ContainerState::ContainerExited as i32 {
            return st;
        }
        assert!(Instant::now() < deadline, "{id} did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A host-network pod (no CNI) under `cgroup_parent`, logging to a folder of
/// the test's own.
pub fn pod_config(env: &Env, name: &str, cgroup_parent: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: env
            .dir
            .path()
            .join("pod-logs")
            .join(name)
            .display()
            .to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Stops and removes a pod, then waits (up to `bound`) for its shim to go.
pub async fn remove_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    env: &Env,
    pod: &str,
    bound: Duration,
) {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .unwrap();
    let deadline = Instant::now() + bound;
    while !shims_in_k8s_ns(env).is_empty() {
        assert!(Instant::now() < deadline, "pod shim still running");
        std::thread::sleep(Duration::from_millis(100));
    }
}
