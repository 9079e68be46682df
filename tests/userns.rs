//! User-namespaced pods through CRI (Kubernetes' `hostUsers: false`):
//! containerd 2.x's overlay snapshotter hands the shim rootfs mounts with
//! `uidmap=`/`gidmap=`, which only the shim applies (idmapped layers).
//! Needs containerd 2.x (`WEDGE_CONTAINERD_DIR`) and an OCI runtime whose
//! `features` list user namespaces and idmapped mounts (`WEDGE_USERNS_RUNC`:
//! sid's runc 1.3, `scripts/sid-runc`); `scripts/test` runs it under sid's
//! containerd. A `test = false` target: a plain `cargo test` on Debian 12's
//! containerd 1.6 cannot run it.

mod common;
#[path = "common/cri.rs"]
mod cri_common;

use std::time::Duration;

use common::*;
use cri_common::*;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

const HOST_BASE: u32 = 65536;

fn userns() -> UserNamespace {
    let map = vec![IdMapping {
        host_id: HOST_BASE,
        container_id: 0,
        length: 65536,
    }];
    UserNamespace {
        mode: NamespaceMode::Pod as i32,
        uids: map.clone(),
        gids: map,
    }
}

async fn exec(rt: &mut RuntimeServiceClient<Channel>, id: &str, script: &str) -> String {
    let r = rt
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 20,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.exit_code,
        0,
        "{script}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).trim().to_string()
}

/// The host uid of a CRI container's init.
async fn host_uid(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> u32 {
    let st = rt
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    let pid = info["pid"].as_u64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Namespaces of a user-namespaced pod: its own network namespace (a user
/// namespace is pinned beside it; CNI gives it only `lo`) and the mapping.
fn pod_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        userns_options: Some(userns()),
        ..Default::default()
    }
}

async fn userns_pod(rt: &mut RuntimeServiceClient<Channel>, env: &Env, handler: &str) {
    let mut cfg = pod_config(
        env,
        &format!("pod-{handler}"),
        &format!("/{}-cri/{handler}", env.ns),
    );
    cfg.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options = Some(pod_namespaces());
    std::fs::create_dir_all(&cfg.log_directory).unwrap();
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{handler}: RunPodSandbox: {e}\n{}", env.containerd_log()))
        .into_inner()
        .pod_sandbox_id;
    // One image of one layer, one of 81 (every layer idmapped, the options
    // compacted).
    for (name, image, owner_of) in [
        ("one", IMAGE, "/bin/busybox"),
        ("many", MANY_LAYERS_IMAGE, "/layers/80"),
    ] {
        let mut c = container_config(name, "sleep 600");
        c.image = Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        });
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(pod_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(c),
                sandbox_config: Some(cfg.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("{handler} {name}: CreateContainer: {e}"))
            .into_inner()
            .container_id;
        rt.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{handler} {name}: StartContainer: {e}\n{}",
                env.containerd_log()
            )
        });
        // Root inside, the mapped range outside.
        assert_eq!(
            exec(rt, &id, "id -u; id -g").await,
            "0\n0",
            "{handler} {name}"
        );
        assert_eq!(
            exec(rt, &id, "cat /proc/self/uid_map")
                .await
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["0", "65536", "65536"]
        );
        assert_eq!(host_uid(rt, &id).await, HOST_BASE, "{handler} {name}");
        // The image's files are root's inside (the layers are idmapped).
        assert_eq!(
            exec(rt, &id, &format!("stat -c '%u %g' {owner_of}")).await,
            "0 0",
            "{handler} {name}"
        );
        // Writes work, as root.
        assert_eq!(
            exec(
                rt,
                &id,
                "echo w > /written && stat -c %u /written && cat /written"
            )
            .await,
            "0\nw"
        );
        if name == "many" {
            assert_eq!(exec(rt, &id, "ls /layers | wc -l").await, "80");
        }
    }
    remove_pod(rt, env, &pod, Duration::from_secs(20)).await;
}

#[test]
fn user_namespaced_pods_run_with_idmapped_layers() {
    let runc = std::env::var("WEDGE_USERNS_RUNC").expect(
        "WEDGE_USERNS_RUNC: an OCI runtime with user namespaces and idmap (scripts/sid-runc)",
    );
    assert!(
        containerd_version().0 >= 2,
        "user-namespaced pods need containerd 2.x (WEDGE_CONTAINERD_DIR)"
    );
    // CRI asks a runtime's features (`-info`) only of runtime type
    // io.containerd.runc.v2: Wedge by its own name is that type with its
    // binary as the runtime path.
    let extra = format!(
        r#"    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.userns-wedge]
      runtime_type = "io.containerd.runc.v2"
      runtime_path = "@BIN@/containerd-shim-wedge-v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.userns-wedge.options]
        BinaryName = {runc:?}
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.userns-dropin]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.userns-dropin.options]
        BinaryName = {runc:?}
"#
    );
    let env = Env::start_custom(Install::Wedge, true, &extra);
    // The pods' network namespaces get `lo` and an `eth0` that is an
    // interface connected to nothing (CRI wants one with an address).
    let cni = env.dir.path().join("cni");
    std::fs::copy("/usr/lib/cni/loopback", cni.join("bin/loopback"))
        .expect("the CNI loopback plugin (containernetworking-plugins)");
    let dummy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cni/isolated-eth0");
    std::fs::copy(dummy, cni.join("bin/isolated-eth0")).unwrap();
    std::fs::write(
        cni.join("conf/10-isolated.conflist"),
        r#"{"cniVersion":"1.0.0","name":"isolated","plugins":[{"type":"loopback"},{"type":"isolated-eth0","podAddress":"10.89.0.2/32"}]}"#,
    )
    .unwrap();
    let tar = many_layers_tar();
    let out = env.ctr(&["-n", "k8s.io", "images", "import", tar.to_str().unwrap()]);
    assert!(out.status.success(), "import: {}", stderr(&out));
    block_on(async {
        let mut rt = connect(&env.address).await;
        // CRI learned from `-info` (the runtime's features, through Wedge)
        // that both handlers support user namespaces.
        let status = rt
            .status(StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner();
        for handler in ["userns-wedge", "userns-dropin"] {
            let h = status.runtime_handlers.iter().find(|h| h.name == handler);
            assert!(
                h.and_then(|h| h.features)
                    .is_some_and(|f| f.user_namespaces),
                "{handler}: {:?}\n{}",
                status.runtime_handlers,
                env.containerd_log()
                    .lines()
                    .filter(|l| l.contains("introspect")
                        || l.contains("info") && l.contains("wedge")
                        || l.contains("feature"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        for handler in ["userns-wedge", "userns-dropin"] {
            userns_pod(&mut rt, &env, handler).await;
        }
    });
    cleanup_cgroups(&env);
}
