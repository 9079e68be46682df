//! The CRI client side shared by the CRI suites (`tests/cri.rs` and the
//! guest's `tests/cgroup_v2.rs`): a RuntimeService client over containerd's
//! socket, pods and containers, the pod's shims, waiting for a container's
//! exit, and streaming exec.
#![allow(dead_code)]

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

/// What a streaming exec delivered: stdout, stderr, and the status the
/// streaming server sent on its error channel (JSON of a `metav1.Status`;
/// `"status":"Success"` for exit code 0).
#[derive(Debug, Default)]
pub struct Streamed {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: String,
}

/// A streaming exec as `kubectl exec` and `crictl exec` run it: CRI Exec
/// for a URL, then the streaming server's websocket (`v4.channel.k8s.io`:
/// each binary message starts with its channel, 1 stdout, 2 stderr, 3 the
/// status) until the server closes it.
pub async fn stream_exec(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    cmd: &[&str],
) -> Streamed {
    let url = rt
        .exec(ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    websocket_streams(&url).await
}

/// Reads a `v4.channel.k8s.io` websocket at `url` (`http://host:port/path`)
/// to its end. A minimal client: the handshake, then unmasked server frames.
async fn websocket_streams(url: &str) -> Streamed {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let rest = url
        .strip_prefix("http://")
        .expect("an http:// streaming URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut conn = BufReader::new(stream);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: d2VkZ2Utc3RyZWFtLWV4ZWM=\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
    );
    conn.get_mut().write_all(request.as_bytes()).await.unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).await.unwrap();
    assert!(line.contains(" 101 "), "websocket handshake: {line:?}");
    loop {
        line.clear();
        conn.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut out = Streamed::default();
    let mut message = Vec::new();
    loop {
        let mut head = [0u8; 2];
        if conn.read_exact(&mut head).await.is_err() {
            break;
        }
        let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
        let len = match head[1] & 0x7f {
            126 => conn.read_u16().await.unwrap() as usize,
            127 => conn.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).await.unwrap();
        match opcode {
            0x8 => break,
            0x9 | 0xa => continue,
            _ => message.extend_from_slice(&payload),
        }
        if !fin {
            continue;
        }
        if let Some((&channel, data)) = message.split_first() {
            match channel {
                1 => out.stdout.extend_from_slice(data),
                2 => out.stderr.extend_from_slice(data),
                3 => out.status.push_str(&String::from_utf8_lossy(data)),
                _ => {}
            }
        }
        message.clear();
    }
    out
}

/// A container of the busybox image running `sh -c script`, logging to
/// `<name>.log` in its pod's log directory.
pub fn container_config(name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// Starts a host-network pod `name` through `handler`, its log directory made.
pub async fn start_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    env: &Env,
    name: &str,
    handler: &str,
) -> (String, PodSandboxConfig) {
    let cfg = pod_config(env, name, &format!("/{}-cri/{name}", env.ns));
    std::fs::create_dir_all(&cfg.log_directory).unwrap();
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    (pod, cfg)
}

/// Creates and starts container `name` in `pod`.
pub async fn start_container(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    cfg: &PodSandboxConfig,
    name: &str,
    script: &str,
) -> String {
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(container_config(name, script)),
            sandbox_config: Some(cfg.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    id
}

/// Removes the pod cgroups a CRI env's pods left (empty ones), then the
/// runtime's state dir of the `k8s.io` namespace if empty.
pub fn cleanup_cgroups(env: &Env) {
    let parent = format!("{}-cri", env.ns);
    // runc removes only each container's own cgroup; the pod and parent
    // levels it created are ours to remove, once they are empty.
    for _ in 0..50 {
        remove_cgroup_tree(&parent);
        if !std::path::Path::new("/sys/fs/cgroup/memory")
            .join(&parent)
            .exists()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir("/run/containerd/runc/k8s.io");
}

fn remove_cgroup_tree(parent: &str) {
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = h.path().join(parent);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                if let Ok(sub) = std::fs::read_dir(e.path()) {
                    for s in sub.flatten().filter(|s| s.path().is_dir()) {
                        let _ = std::fs::remove_dir(s.path());
                    }
                }
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

/// Runs a CRI client's future to its end on a runtime of its own.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}
