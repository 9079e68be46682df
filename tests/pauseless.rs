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
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

const PAUSELESS: &str = r#"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.pauseless]
      runtime_type = "io.containerd.wedge.v2"
      sandboxer = "shim"
"#;

/// StopContainer (with `timeout` seconds) and RemoveContainer.
async fn stop_and_remove(rt: &mut RuntimeServiceClient<Channel>, id: &str, timeout: i64) {
    rt.stop_container(StopContainerRequest {
        container_id: id.into(),
        timeout,
    })
    .await
    .unwrap();
    rt.remove_container(RemoveContainerRequest {
        container_id: id.into(),
    })
    .await
    .unwrap();
}

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
    block_on(async {
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
        stop_and_remove(&mut rt, &id, 1).await;
        remove_pod(&mut rt, &env, &pod, Duration::from_secs(10)).await;
    });
    env.assert_clean();
}

/// Pod start to first container running, through CRI as the kubelet asks
/// (RunPodSandbox, CreateContainer, StartContainer), interleaved round by
/// round: Wedge without a pause container, Wedge with one (podsandbox), and
/// the Go shim of the containerd under test with one. Prints medians and
/// ratios; asserts nothing about speed.
#[test]
fn bench_pod_start_to_first_container_running() {
    let go_shim = containerd_bin("containerd-shim-runc-v2");
    let extra = format!(
        "{PAUSELESS}
    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.goshim]
      runtime_type = \"{}\"
",
        go_shim.display()
    );
    let env = Env::start_custom(Install::Wedge, true, &extra);
    let rounds: usize = std::env::var("WEDGE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let handlers = ["pauseless", "wedge", "goshim"];
    let mut took: Vec<Vec<f64>> = vec![Vec::new(); handlers.len()];
    // What a pod costs beside its container: memory (PSS, KiB) of its
    // processes but the container's, and mounts the pod added.
    let mut pss: Vec<Vec<u64>> = vec![Vec::new(); handlers.len()];
    let mut mounts: Vec<Vec<usize>> = vec![Vec::new(); handlers.len()];
    let mut procs: Vec<usize> = vec![0; handlers.len()];
    block_on(async {
        let mut rt = connect(&env.address).await;
        for round in 0..rounds + 1 {
            for (i, h) in handlers.iter().enumerate() {
                let name = format!("b{round}-{h}");
                let mounts_before = mount_count();
                let t = std::time::Instant::now();
                let (pod, cfg) = start_pod(&mut rt, &env, &name, h).await;
                let id = start_container(&mut rt, &pod, &cfg, "c", "sleep 600").await;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                // The first round warms the caches up.
                if round > 0 {
                    took[i].push(ms);
                    let (kib, n) = pod_overhead(&env);
                    pss[i].push(kib);
                    procs[i] = n;
                    mounts[i].push(mount_count() - mounts_before);
                }
                stop_and_remove(&mut rt, &id, 0).await;
                remove_pod(&mut rt, &env, &pod, Duration::from_secs(20)).await;
            }
        }
    });
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let m: Vec<f64> = took.iter_mut().map(median).collect();
    eprintln!(
        "pod start to first container running, {rounds} rounds, medians: \
         pauseless (Wedge) {:.1} ms, pause (Wedge) {:.1} ms, pause (Go shim) {:.1} ms; \
         pauseless/pause(Wedge) {:.2}, pauseless/pause(Go) {:.2}",
        m[0],
        m[1],
        m[2],
        m[0] / m[1],
        m[0] / m[2]
    );
    for (i, h) in handlers.iter().enumerate() {
        pss[i].sort_unstable();
        mounts[i].sort_unstable();
        eprintln!(
            "{h}: per pod beside its container, medians: {} KiB PSS in {} processes \
             (shim and holder or pause), {} mounts",
            pss[i][pss[i].len() / 2],
            procs[i],
            mounts[i][mounts[i].len() / 2]
        );
    }
    env.assert_clean();
}

/// Mounts in this mount namespace (the host's).
fn mount_count() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count()
}

/// The PSS (KiB) of the pod's processes but its container's `sleep 600`:
/// the shim and its children (the holder, or the pause container's
/// process); and how many they are. One pod runs at a time.
fn pod_overhead(env: &Env) -> (u64, usize) {
    let shims = cri_common::shims_in_k8s_ns(env);
    let children: Vec<u32> = processes()
        .into_iter()
        .filter(|(p, cmd)| {
            let ppid = std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok());
            ppid.is_some_and(|pp: u32| shims.contains(&pp)) && !cmd.contains("sleep 600")
        })
        .map(|(p, _)| p)
        .collect();
    let all: Vec<u32> = shims.iter().chain(&children).copied().collect();
    let kib = all
        .iter()
        .filter_map(|p| {
            let r = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok()?;
            r.lines()
                .find_map(|l| l.strip_prefix("Pss:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum();
    (kib, all.len())
}

/// A CNI plugin for the tests: an `eth0` that is one end of a veth pair
/// whose other end stays in the pod's own namespace too (CRI wants an eth0
/// with an address; this one goes nowhere, so the pod has no route off the
/// machine), with a link-local address and no route.
const LOCAL_VETH_CNI: &str = r#"#!/bin/sh
set -e
PATH=/usr/sbin:/usr/bin:/sbin:/bin
in=$(cat)
case "$CNI_COMMAND" in
ADD)
  nsenter --net="$CNI_NETNS" ip link add "$CNI_IFNAME" type veth peer name pair0
  nsenter --net="$CNI_NETNS" ip addr add 169.254.77.2/32 dev "$CNI_IFNAME"
  nsenter --net="$CNI_NETNS" ip link set "$CNI_IFNAME" up
  printf '{"cniVersion":"1.0.0","interfaces":[{"name":"%s","sandbox":"%s"}],"ips":[{"address":"169.254.77.2/32","interface":0}]}' "$CNI_IFNAME" "$CNI_NETNS"
  ;;
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}' ;;
*) : ;;
esac
"#;

/// A pod with its own network namespace (CRI made it; the test CNI gives
/// it lo and an eth0 going nowhere: no route at all), its own hostname, ipc
/// and pid namespace (shareProcessNamespace): two containers see the pod's
/// hostname, no interface that goes anywhere, each other's processes and
/// the holder as pid 1, and share the holder's ipc, uts and net namespaces.
#[test]
fn two_containers_share_a_pauseless_pods_namespaces() {
    let env = Env::start_custom(Install::Wedge, true, PAUSELESS);
    let cni = env.dir.path().join("cni");
    // CRI sets lo up with the loopback plugin itself.
    std::os::unix::fs::symlink("/usr/lib/cni/loopback", cni.join("bin/loopback")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let plugin = cni.join("bin/wedge-local-veth");
        std::fs::write(&plugin, LOCAL_VETH_CNI).unwrap();
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(
        cni.join("conf/10-local-veth.conflist"),
        r#"{"cniVersion": "1.0.0", "name": "local-veth-only", "plugins": [{"type": "wedge-local-veth"}]}"#,
    )
    .unwrap();
    block_on(async {
        let mut rt = connect(&env.address).await;
        let mut cfg = pod_config(&env, "pl-own", &format!("/{}-cri/pl-own", env.ns));
        cfg.hostname = "pl-own".into();
        cfg.dns_config = Some(DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        });
        let ns = cfg
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .namespace_options
            .as_mut()
            .unwrap();
        ns.network = NamespaceMode::Pod as i32;
        ns.pid = NamespaceMode::Pod as i32;
        std::fs::create_dir_all(&cfg.log_directory).unwrap();
        // CRI reloads its CNI config from the folder a moment after it changes.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let pod = loop {
            match rt
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(cfg.clone()),
                    runtime_handler: "pauseless".into(),
                })
                .await
            {
                Ok(r) => break r.into_inner().pod_sandbox_id,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("RunPodSandbox: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        let a = start_container(&mut rt, &pod, &cfg, "a", "sleep 600").await;
        let b = start_container(&mut rt, &pod, &cfg, "b", "sleep 600").await;
        let mut cri = rt.clone();
        let exec = |id: String, cmd: &'static str| {
            let mut rt = rt.clone();
            async move {
                let out = rt
                    .exec_sync(ExecSyncRequest {
                        container_id: id,
                        cmd: vec!["sh".into(), "-c".into(), cmd.into()],
                        timeout: 10,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(
                    out.exit_code,
                    0,
                    "{cmd}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            }
        };
        for id in [&a, &b] {
            assert_eq!(exec(id.clone(), "hostname").await, "pl-own");
            let dev = exec(id.clone(), "cat /proc/net/dev").await;
            let links: Vec<&str> = dev
                .lines()
                .filter_map(|l| Some(l.split_once(':')?.0.trim()))
                .collect();
            assert_eq!(links.len(), 3, "{dev}");
            assert!(links.contains(&"eth0") && links.contains(&"pair0"), "{dev}");
            let routes = exec(id.clone(), "cat /proc/net/route | tail -n +2").await;
            assert_eq!(routes, "", "no route at all");
            // The holder is pid 1 of the pod's pid namespace (no pause).
            let init = exec(id.clone(), "tr '\\0' ' ' < /proc/1/cmdline").await;
            assert!(!init.contains("pause"), "pid 1 is {init}");
        }
        // The pod's files, as a pause pod has them: hostname, resolv.conf
        // from the pod's DNS, the node's hosts, one /dev/shm for the pod.
        for id in [&a, &b] {
            assert_eq!(exec(id.clone(), "cat /etc/hostname").await, "pl-own");
            assert_eq!(
                exec(id.clone(), "cat /etc/hosts").await,
                std::fs::read_to_string("/etc/hosts").unwrap().trim(),
                "the node's hosts"
            );
            assert_eq!(
                exec(id.clone(), "cat /etc/resolv.conf").await,
                "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5"
            );
            let shm = exec(id.clone(), "grep ' /dev/shm ' /proc/mounts").await;
            assert!(
                shm.contains("tmpfs") && shm.contains("size=65536k"),
                "{shm}"
            );
        }
        // The holder (pid 1 here) lives in the pod's cgroup, as pause would:
        // `<cgroup parent>/<pod id>` (cgroupfs driver).
        let holder_cg = exec(a.clone(), "grep ':memory:' /proc/1/cgroup").await;
        assert!(
            holder_cg.ends_with(&format!(":/{}-cri/pl-own/{pod}", env.ns)),
            "{holder_cg}"
        );
        // A container's output reaches its CRI log whole and in order.
        // Ten runs of a fast producer writing right up to its exit.
        for run in 0..10 {
            let name = format!("c{run}");
            let c = start_container(&mut cri, &pod, &cfg, &name, "seq 1 20000").await;
            let log = std::path::Path::new(&cfg.log_directory).join(format!("{name}.log"));
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let numbers = loop {
                let st = container_status(&mut cri, &c).await;
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let numbers: Vec<String> = text
                    .lines()
                    .filter_map(|l| Some(l.splitn(4, ' ').nth(3)?.to_string()))
                    .collect();
                if st.state == ContainerState::ContainerExited as i32 && numbers.len() >= 20000 {
                    assert_eq!(st.exit_code, 0);
                    break numbers;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name}: {} lines logged",
                    numbers.len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let expected: Vec<String> = (1..=20000).map(|n| n.to_string()).collect();
            assert!(
                numbers == expected,
                "{name}: the log is not 1..20000 in order"
            );
            stop_and_remove(&mut cri, &c, 0).await;
        }
        // Stats through CRI: the container's (its cgroup) and the pod's
        // (CRI reads the cgroup parent).
        let stats = cri
            .container_stats(ContainerStatsRequest {
                container_id: a.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);
        let pod_stats = cri
            .pod_sandbox_stats(PodSandboxStatsRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        let linux = pod_stats.linux.unwrap();
        assert!(
            linux.memory.unwrap().working_set_bytes.unwrap().value > 0,
            "the pod's memory"
        );
        assert_eq!(linux.containers.len(), 2, "a and b");
        exec(a.clone(), "echo shared > /dev/shm/x").await;
        assert_eq!(exec(b.clone(), "cat /dev/shm/x").await, "shared");
        // Each sees the other's processes.
        let ps = exec(a.clone(), "ls /proc | grep -c '^[0-9]'").await;
        assert!(ps.parse::<u32>().unwrap() >= 3, "{ps} processes");
        for kind in ["ipc", "uts", "net", "pid"] {
            let x = exec(
                a.clone(),
                "readlink /proc/self/ns/KIND".replace("KIND", kind).leak(),
            )
            .await;
            let y = exec(
                b.clone(),
                "readlink /proc/self/ns/KIND".replace("KIND", kind).leak(),
            )
            .await;
            assert_eq!(x, y, "{kind}");
        }
        for id in [a, b] {
            stop_and_remove(&mut rt, &id, 0).await;
        }
        remove_pod(&mut rt, &env, &pod, Duration::from_secs(20)).await;
        // The pod's files went with it.
        let cri = |base: &str| {
            env.dir
                .path()
                .join(base)
                .join("io.containerd.grpc.v1.cri/sandboxes")
                .join(&pod)
        };
        assert!(
            !cri("root").exists() && !cri("state").exists(),
            "the pod's files are left"
        );
    });
    env.assert_clean();
}

/// containerd restarts with a pauseless pod running: it reconnects to the
/// shim (Connect with the sandbox's id), finds the pod READY, and the pod
/// takes a new container; the old one still execs; all goes at removal.
#[test]
fn a_pauseless_pod_survives_a_containerd_restart() {
    let mut env = Env::start_custom(Install::Wedge, true, PAUSELESS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (pod, cfg, a) = rt.block_on(async {
        let mut rt = connect(&env.address).await;
        let (pod, cfg) = start_pod(&mut rt, &env, "pl-restart", "pauseless").await;
        let a = start_container(&mut rt, &pod, &cfg, "a", "sleep 600").await;
        (pod, cfg, a)
    });
    env.kill_containerd();
    env.start_containerd();
    rt.block_on(async {
        let mut rt = connect(&env.address).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let st = rt
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: pod.clone(),
                    verbose: false,
                })
                .await
                .map(|r| r.into_inner().status.unwrap().state);
            if matches!(st, Ok(s) if s == PodSandboxState::SandboxReady as i32) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pod not READY after the restart: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let b = start_container(&mut rt, &pod, &cfg, "b", "sleep 600").await;
        for id in [&a, &b] {
            let out = rt
                .exec_sync(ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: vec!["echo".into(), "alive".into()],
                    timeout: 10,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(String::from_utf8_lossy(&out.stdout), "alive\n");
        }
        for id in [a.clone(), b] {
            stop_and_remove(&mut rt, &id, 0).await;
        }
        remove_pod(&mut rt, &env, &pod, Duration::from_secs(20)).await;
    });
    env.assert_clean();
}

/// The pod's shim is SIGKILLed with a container running: containerd
/// cleans up after it (`shim delete` of the sandbox: the holder killed,
/// its cgroup and the pod's files removed, and the pod's container's
/// runtime state and rootfs), CRI reports the container exited and the
/// pod not ready, and stopping and removing the pod leaves nothing.
#[test]
fn a_pauseless_pods_killed_shim_leaves_nothing_behind() {
    let env = Env::start_custom(Install::Wedge, true, PAUSELESS);
    block_on(async {
        let mut rt = connect(&env.address).await;
        let (pod, cfg) = start_pod(&mut rt, &env, "pl-kill", "pauseless").await;
        let id = start_container(&mut rt, &pod, &cfg, "c", "sleep 600").await;
        let holders = || {
            processes()
                .iter()
                .filter(|(p, _)| {
                    std::fs::read(format!("/proc/{p}/environ"))
                        .is_ok_and(|e| e.windows(17).any(|w| w == b"WEDGE_POD_HOLDER="))
                })
                .count()
        };
        assert_eq!(holders(), 1);
        let holder_cgroup = std::path::Path::new("/sys/fs/cgroup/memory")
            .join(format!("{}-cri/pl-kill/{pod}", env.ns));
        assert!(holder_cgroup.is_dir(), "{}", holder_cgroup.display());
        let shims = shims_in_k8s_ns(&env);
        assert_eq!(shims.len(), 1, "one shim for the pod");
        let _ = std::process::Command::new("kill")
            .args(["-9", &shims[0].to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let c = container_status(&mut rt, &id).await;
            let p = rt
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: pod.clone(),
                    verbose: false,
                })
                .await
                .map(|r| r.into_inner().status.unwrap().state);
            // Right after the kill CRI may still ask the dead shim (an error).
            if c.state == ContainerState::ContainerExited as i32
                && p.as_ref().ok() == Some(&(PodSandboxState::SandboxNotready as i32))
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "container {:?}, pod {:?}",
                c.state,
                p
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The pod's container too: containerd 2.x runs `shim delete` only
        // for the sandbox, which cleans up the pod's containers with it.
        let runtime_state = std::path::Path::new("/run/containerd/runc/k8s.io").join(&id);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while holders() > 0 || holder_cgroup.exists() || runtime_state.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "holder {} left, cgroup {}, the container's runtime state {}",
                holders(),
                holder_cgroup.exists(),
                runtime_state.exists()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rt.remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        remove_pod(&mut rt, &env, &pod, Duration::from_secs(20)).await;
    });
    env.assert_clean();
}
