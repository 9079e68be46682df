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

/// Waits (up to a bound) for a CRI container to be EXITED; its status.
pub async fn wait_exited(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = rt
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if st.state == ContainerState::ContainerExited as i32 {
            return st;
        }
        assert!(Instant::now() < deadline, "{id} did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
