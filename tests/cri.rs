//! Kubernetes CRI: containerd's CRI plugin with runtime handlers whose
//! `runtime_type` is Wedge (`wedge` → io.containerd.wedge.v2, `dropin` →
//! io.containerd.runc.v2 installed as Wedge), driven over the CRI gRPC API
//! the way the kubelet drives it. Pods use the host network (no CNI).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

async fn connect(sock: &str) -> RuntimeServiceClient<Channel> {
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

fn pod_config(env: &Env, name: &str) -> PodSandboxConfig {
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
            cgroup_parent: format!("/{}-cri/{name}", env.ns),
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

fn container_config(name: &str, script: &str) -> ContainerConfig {
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

fn shims_in_k8s_ns(env: &Env) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, c)| {
            c.contains(&env.address) && c.contains("-namespace k8s.io") && !c.ends_with(" start")
        })
        .map(|(p, _)| p)
        .collect()
}

async fn pod_lifecycle(env: &Env, handler: &str) {
    let sock = env.address.clone();
    let mut rt = connect(&sock).await;
    let cfg = pod_config(env, &format!("pod-{handler}"));
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
    let mut ids = HashMap::new();
    for (name, script) in [
        (
            "app",
            "echo hello-log; echo to-stderr >&2; trap '' TERM; while :; do sleep 0.1; done",
        ),
        ("side", "trap 'exit 0' TERM; while :; do sleep 0.1; done"),
    ] {
        let id = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
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
        ids.insert(name, id);
    }
    // One Wedge process serves the whole pod.
    let shims = shims_in_k8s_ns(env);
    assert_eq!(shims.len(), 1, "{shims:?}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", shims[0])).unwrap();
    assert!(exe.starts_with(env.dir.path().join("bin")), "{exe:?}");

    let r = rt
        .exec_sync(ExecSyncRequest {
            container_id: ids["app"].clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; exit 3".into(),
            ],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.exit_code, r.stdout.as_slice(), r.stderr.as_slice()),
        (3, &b"out\n"[..], &b"err\n"[..])
    );

    // Logs in the CRI format: "<time> stdout F hello-log".
    let log = std::path::Path::new(&cfg.log_directory).join("app.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(" stdout F hello-log") && text.contains(" stderr F to-stderr") {
            break;
        }
        assert!(Instant::now() < deadline, "CRI log: {text:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let stats = rt
        .container_stats(ContainerStatsRequest {
            container_id: ids["app"].clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let mem = stats.memory.unwrap().working_set_bytes.unwrap().value;
    assert!(mem > 0, "working set {mem}");
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.is_some());

    // Graceful stop (handles TERM) and forced stop (pid 1 ignores TERM).
    for (name, want) in [("side", 0), ("app", 137)] {
        rt.stop_container(StopContainerRequest {
            container_id: ids[name].clone(),
            timeout: 2,
        })
        .await
        .unwrap();
        let st = rt
            .container_status(ContainerStatusRequest {
                container_id: ids[name].clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(st.exit_code, want, "{name}");
    }
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while !shims_in_k8s_ns(env).is_empty() {
        assert!(Instant::now() < deadline, "pod shim still running");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing of the pod is left: no process in its cgroups, no runtime state.
    let parent = format!("{}-cri", env.ns);
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = h.path().join(&parent);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                let procs =
                    std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
                assert!(procs.trim().is_empty(), "{:?}: {procs}", e.path());
            }
        }
    }
    for id in ids.values().chain([&pod]) {
        assert!(!std::path::Path::new("/run/containerd/runc/k8s.io")
            .join(id)
            .exists());
    }
}

fn cleanup_cgroups(env: &Env) {
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

#[test]
fn cri_pods_run_on_wedge_through_both_runtime_handlers() {
    let env = Env::start_with(Install::Wedge, true);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        pod_lifecycle(&env, "wedge").await;
        pod_lifecycle(&env, "dropin").await;
    });
    cleanup_cgroups(&env);
    // The runtime's state dir for the k8s.io namespace, if now empty.
    let _ = std::fs::remove_dir("/run/containerd/runc/k8s.io");
}
