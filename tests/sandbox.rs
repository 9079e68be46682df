//! Pods without a pause container (`wedge::sandbox`). The namespace holder,
//! started from the real binary as the shim starts it: the namespaces,
//! names and settings a pod's containers join, pid 1 of the pod's pid
//! namespace reaping orphans, gone with one SIGKILL; a bad spec fails with a
//! clear error. And the shim's Sandbox service, called as containerd 2.3's
//! `sandboxer = "shim"` calls it (the whole path through CRI runs by hand:
//! `tests/pauseless.rs`).

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{pod_options, sandbox_call};
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::sandbox_api::*;
use wedge::sandbox::holder::{command, parse_reply, HolderSpec};
use wedge::ttrpc::ClientError;

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-wedge-v2"))
}

/// A network namespace pinned on a file (as CRI pins a pod's), unmounted
/// and removed when dropped.
struct PinnedNetns(PathBuf);

impl PinnedNetns {
    fn new(dir: &Path) -> PinnedNetns {
        let path = dir.join("netns");
        std::fs::write(&path, "").unwrap();
        let ok = Command::new("unshare")
            .arg(format!("--net={}", path.display()))
            .arg("true")
            .status()
            .unwrap()
            .success();
        assert!(ok, "pin a network namespace");
        PinnedNetns(path)
    }
}

impl Drop for PinnedNetns {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The inode of a namespace file.
fn ns(path: impl AsRef<Path>) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

fn start(spec: &HolderSpec) -> Result<u32, String> {
    let out = command(&binary(), spec).output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    parse_reply(&out.stdout).ok_or_else(|| format!("reply {:?}", out.stdout))
}

/// `cmd` run in the holder's namespaces (`nsenter` with `flags`).
fn inside(pid: u32, flags: &[&str], cmd: &[&str]) -> String {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string()])
        .args(flags)
        .args(cmd)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "{cmd:?} in the holder's namespaces");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn kill_and_wait_gone(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Reparented to the machine's init (the test is no subreaper), which
    // reaps it.
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "holder {pid} lives on");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_holder_holds_the_pods_namespaces_and_reaps_as_pid_1() {
    let dir = tempfile::tempdir().unwrap();
    let netns = PinnedNetns::new(dir.path());
    let spec = HolderSpec {
        netns: Some(netns.0.clone()),
        new_ipc: true,
        hostname: Some("pod-a".into()),
        new_pid: true,
        sysctls: BTreeMap::from([
            ("net.ipv4.ip_unprivileged_port_start".into(), "0".into()),
            ("net.ipv4.ping_group_range".into(), "0 2147483647".into()),
            ("kernel.shm_rmid_forced".into(), "1".into()),
        ]),
        cgroup_procs: Vec::new(),
        // CRI's -998 needs CAP_SYS_RESOURCE, which this machine's root
        // lacks; raising it is always allowed.
        oom_score_adj: Some(500),
    };
    let pid = start(&spec).unwrap();
    let proc = PathBuf::from(format!("/proc/{pid}"));
    assert_eq!(ns(proc.join("ns/net")), ns(&netns.0), "the pod's netns");
    for kind in ["ipc", "uts", "pid"] {
        assert_ne!(
            ns(proc.join("ns").join(kind)),
            ns(format!("/proc/self/ns/{kind}")),
            "a {kind} namespace of its own"
        );
    }
    assert_eq!(ns(proc.join("ns/mnt")), ns("/proc/self/ns/mnt"));
    let status = std::fs::read_to_string(proc.join("status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        nspid.ends_with("\t1"),
        "pid 1 in its pid namespace: {nspid}"
    );
    assert_eq!(
        std::fs::read_to_string(proc.join("oom_score_adj"))
            .unwrap()
            .trim(),
        "500"
    );
    assert_eq!(inside(pid, &["-u"], &["hostname"]), "pod-a");
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        "pod-a"
    );
    assert_eq!(
        inside(
            pid,
            &["-n"],
            &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]
        ),
        "0"
    );
    assert_eq!(
        inside(
            pid,
            &["-n"],
            &["cat", "/proc/sys/net/ipv4/ping_group_range"]
        )
        .split_whitespace()
        .collect::<Vec<_>>(),
        ["0", "2147483647"]
    );
    assert_eq!(
        inside(pid, &["-i"], &["cat", "/proc/sys/kernel/shm_rmid_forced"]),
        "1"
    );
    // Only lo in the pod's network namespace.
    let dev = inside(pid, &["-n"], &["cat", "/proc/net/dev"]);
    let links: Vec<&str> = dev
        .lines()
        .filter_map(|l| Some(l.split_once(':')?.0.trim()))
        .collect();
    assert_eq!(links, ["lo"], "{dev}");
    // Orphans in the pod's pid namespace are reparented to the holder and
    // reaped: no zombie stays.
    for _ in 0..5 {
        inside(pid, &["-p"], &["sh", "-c", "sleep 0.1 & exit 0"]);
    }
    std::thread::sleep(Duration::from_millis(500));
    let children = std::fs::read_to_string(proc.join(format!("task/{pid}/children"))).unwrap();
    assert_eq!(children.trim(), "", "left unreaped: {children}");
    kill_and_wait_gone(pid);
}

/// Host network, ipc and pid (hostNetwork, hostIPC, hostPID): the holder
/// keeps the host's namespaces, so the containers that join it do too.
#[test]
fn a_host_namespace_pod_holder_stays_in_the_hosts_namespaces() {
    let pid = start(&HolderSpec::default()).unwrap();
    for kind in ["net", "ipc", "uts", "pid"] {
        assert_eq!(
            ns(format!("/proc/{pid}/ns/{kind}")),
            ns(format!("/proc/self/ns/{kind}")),
            "{kind}"
        );
    }
    kill_and_wait_gone(pid);
}

#[test]
fn a_holder_that_cannot_set_up_says_why() {
    let spec = HolderSpec {
        netns: Some("/nonexistent/netns".into()),
        ..Default::default()
    };
    let err = start(&spec).unwrap_err();
    assert!(err.contains("pod holder: /nonexistent/netns"), "{err}");
    let spec = HolderSpec {
        sysctls: BTreeMap::from([("net/../../x".into(), "1".into())]),
        ..Default::default()
    };
    let err = start(&spec).unwrap_err();
    assert!(err.contains("not a sysctl name"), "{err}");
}

/// The Sandbox service of a running shim (containerd 1.6 started it for a
/// container): a pod created and started (its holder in the pod's netns,
/// with its hostname), READY with the holder's pid, Platform, Connect with
/// the sandbox's id gives the holder; WaitSandbox pends until StopSandbox
/// kills the holder, then NOTREADY; ShutdownSandbox forgets it while the
/// shim's container keeps it alive. Bad requests get clear codes.
#[test]
fn the_shims_sandbox_service_holds_a_pod_from_create_to_shutdown() {
    use containerd_shim_protos::ttrpc::Code;
    let env = common::Env::start(common::Install::Wedge);
    env.sleeper("anchor");
    let addr = env.shim_address("anchor");
    let dir = tempfile::tempdir().unwrap();
    let netns = PinnedNetns::new(dir.path());
    let id = "pod1";
    let created: CreateSandboxResponse = sandbox_call(
        &addr,
        "CreateSandbox",
        &CreateSandboxRequest {
            sandbox_id: id.into(),
            bundle_path: dir.path().display().to_string(),
            netns_path: netns.0.display().to_string(),
            options: MessageField::some(pod_options("pod-one", &[], "")),
            ..Default::default()
        },
    )
    .unwrap();
    drop(created);
    let again = sandbox_call::<_, CreateSandboxResponse>(
        &addr,
        "CreateSandbox",
        &CreateSandboxRequest {
            sandbox_id: id.into(),
            netns_path: netns.0.display().to_string(),
            ..Default::default()
        },
    );
    assert!(
        matches!(
            &again,
            Err(ClientError::Status {
                code: Code::ALREADY_EXISTS,
                ..
            })
        ),
        "{again:?}"
    );
    // Two StartSandbox at once: one starts the holder, the other is refused.
    let starts: Vec<_> = (0..2)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                sandbox_call::<_, StartSandboxResponse>(
                    &addr,
                    "StartSandbox",
                    &StartSandboxRequest {
                        sandbox_id: id.into(),
                        ..Default::default()
                    },
                )
            })
        })
        .collect();
    let (mut started, mut refused) = (Vec::new(), Vec::new());
    for t in starts {
        match t.join().unwrap() {
            Ok(r) => started.push(r),
            Err(e) => refused.push(e),
        }
    }
    assert_eq!(started.len(), 1, "{refused:?}");
    assert!(
        matches!(
            refused.as_slice(),
            [ClientError::Status {
                code: Code::FAILED_PRECONDITION,
                ..
            }]
        ),
        "{refused:?}"
    );
    let started = started.remove(0);
    let pid = started.pid;
    assert!(pid > 0);
    let holders = common::processes()
        .iter()
        .filter(|(p, _)| {
            std::fs::read(format!("/proc/{p}/environ"))
                .is_ok_and(|e| e.windows(17).any(|w| w == b"WEDGE_POD_HOLDER="))
                && std::fs::metadata(format!("/proc/{p}/ns/net"))
                    .is_ok_and(|m| m.ino() == ns(&netns.0))
        })
        .count();
    assert_eq!(holders, 1, "one holder in the pod's netns");
    assert_eq!(ns(format!("/proc/{pid}/ns/net")), ns(&netns.0));
    assert_eq!(inside(pid, &["-u"], &["hostname"]), "pod-one");
    let spec: serde_json::Value = serde_json::from_slice(&started.spec.value).unwrap();
    assert_eq!(spec["hostname"], "pod-one");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("holder.pid")).unwrap(),
        pid.to_string()
    );
    let status = |addr: &str| -> SandboxStatusResponse {
        sandbox_call(
            addr,
            "SandboxStatus",
            &SandboxStatusRequest {
                sandbox_id: id.into(),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let st = status(&addr);
    assert_eq!(
        (st.sandbox_id.as_str(), st.pid, st.state.as_str()),
        (id, pid, "SANDBOX_READY")
    );
    let platform: PlatformResponse = sandbox_call(
        &addr,
        "Platform",
        &PlatformRequest {
            sandbox_id: id.into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(platform.platform.os, "linux");
    let connect: containerd_shim_protos::shim::shim::ConnectResponse = env
        .shim_call(
            "anchor",
            "Connect",
            &containerd_shim_protos::shim::shim::ConnectRequest {
                id: id.into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(connect.task_pid, pid, "Connect with the sandbox's id");
    // WaitSandbox pends while the pod lives, and returns once it stops.
    let waiter = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            sandbox_call::<_, WaitSandboxResponse>(
                &addr,
                "WaitSandbox",
                &WaitSandboxRequest {
                    sandbox_id: id.into(),
                    ..Default::default()
                },
            )
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !waiter.is_finished(),
        "WaitSandbox returned while the pod lives"
    );
    let _: StopSandboxResponse = sandbox_call(
        &addr,
        "StopSandbox",
        &StopSandboxRequest {
            sandbox_id: id.into(),
            ..Default::default()
        },
    )
    .unwrap();
    let waited = waiter.join().unwrap().unwrap();
    assert_eq!(waited.exit_status, 137);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the holder was reaped"
    );
    let st = status(&addr);
    assert_eq!(st.state, "SANDBOX_NOTREADY");
    assert!(st.exited_at.is_some());
    // Stop again (CRI's RemovePodSandbox stops first): fine.
    let _: StopSandboxResponse = sandbox_call(
        &addr,
        "StopSandbox",
        &StopSandboxRequest {
            sandbox_id: id.into(),
            ..Default::default()
        },
    )
    .unwrap();
    let _: ShutdownSandboxResponse = sandbox_call(
        &addr,
        "ShutdownSandbox",
        &ShutdownSandboxRequest {
            sandbox_id: id.into(),
            ..Default::default()
        },
    )
    .unwrap();
    let gone = sandbox_call::<_, SandboxStatusResponse>(
        &addr,
        "SandboxStatus",
        &SandboxStatusRequest {
            sandbox_id: id.into(),
            ..Default::default()
        },
    );
    assert!(
        matches!(
            &gone,
            Err(ClientError::Status {
                code: Code::NOT_FOUND,
                ..
            })
        ),
        "{gone:?}"
    );
    // A pod with a user namespace of its own is refused, clearly.
    let userns = sandbox_call::<_, CreateSandboxResponse>(
        &addr,
        "CreateSandbox",
        &CreateSandboxRequest {
            sandbox_id: "pod2".into(),
            netns_path: netns.0.display().to_string(),
            // NamespaceOption.userns_options (5) with mode POD (0).
            options: MessageField::some(pod_options("pod-two", &[(5 << 3) | 2, 2, 1 << 3, 0], "")),
            ..Default::default()
        },
    );
    match &userns {
        Err(ClientError::Status {
            code: Code::INVALID_ARGUMENT,
            message,
        }) => {
            assert!(message.contains("user namespace"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // The shim's container is untouched; then all goes as usual.
    assert_eq!(
        env.state("anchor", "").status.enum_value().unwrap(),
        containerd_shim_protos::types::task::Status::RUNNING
    );
    env.finish("anchor");
    env.assert_clean();
}

/// A pod's cgroup parent's directories in every mounted hierarchy, removed
/// (deepest first) when dropped.
struct ParentCgroup(Vec<PathBuf>);

impl ParentCgroup {
    fn new(parent: &str) -> ParentCgroup {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mut dirs = Vec::new();
        for line in mountinfo.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let sep = f.iter().position(|x| *x == "-").unwrap();
            if f[3] == "/" && (f[sep + 1] == "cgroup" || f[sep + 1] == "cgroup2") {
                dirs.push(Path::new(f[4]).join(parent.trim_start_matches('/')));
            }
        }
        ParentCgroup(dirs)
    }
}

impl Drop for ParentCgroup {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir(d);
            let _ = std::fs::remove_dir(d.parent().unwrap());
        }
    }
}

/// The holder of a pod with a cgroup parent (cgroupfs driver) lives in
/// `<parent>/<sandbox id>` in every hierarchy, as a pause container would
/// (a new cpuset directory given its parent's cpus, or joining it fails);
/// SandboxMetrics reads that cgroup; StopSandbox removes it. A shim
/// SIGKILLed with a pod running: `shim delete` of the sandbox kills the
/// holder and removes its cgroup and files.
#[test]
fn a_pods_holder_lives_in_the_pods_cgroup_until_the_pod_or_its_shim_goes() {
    let env = common::Env::start(common::Install::Wedge);
    env.sleeper("anchor");
    let addr = env.shim_address("anchor");
    let parent = format!("/wedge-test-{}/pod-x", std::process::id());
    let parents = ParentCgroup::new(&parent);
    let dir = tempfile::tempdir().unwrap();
    let netns = PinnedNetns::new(dir.path());
    let start_pod = |id: &str| -> u32 {
        let bundle = dir.path().join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        common::create_and_start_sandbox(
            &addr,
            CreateSandboxRequest {
                sandbox_id: id.into(),
                bundle_path: bundle.display().to_string(),
                netns_path: netns.0.display().to_string(),
                options: MessageField::some(pod_options("pod-x", &[], &parent)),
                ..Default::default()
            },
        )
        .pid
    };
    let own_dirs = |id: &str| -> Vec<PathBuf> { parents.0.iter().map(|d| d.join(id)).collect() };
    let pid = start_pod("pod-a");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let wanted = format!("{parent}/pod-a");
    for hierarchy in ["memory", "cpuset", "name=systemd"] {
        assert!(
            cgroups.lines().any(|l| l
                .split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|x| x == hierarchy))
                && l.ends_with(&format!(":{wanted}"))),
            "{hierarchy} not {wanted}: {cgroups}"
        );
    }
    assert!(own_dirs("pod-a").iter().all(|d| d.is_dir()));
    let metrics: SandboxMetricsResponse = sandbox_call(
        &addr,
        "SandboxMetrics",
        &SandboxMetricsRequest {
            sandbox_id: "pod-a".into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(metrics.metrics.id, "pod-a");
    let data = metrics.metrics.data.clone().unwrap();
    assert_eq!(data.type_url, "io.containerd.cgroups.v1.Metrics");
    let m =
        containerd_shim_protos::cgroups::metrics::Metrics::parse_from_bytes(&data.value).unwrap();
    assert_eq!(m.pids.current, 1, "the holder alone: {m:?}");
    assert!(m.memory.usage.usage > 0, "{m:?}");
    let _: StopSandboxResponse = sandbox_call(
        &addr,
        "StopSandbox",
        &StopSandboxRequest {
            sandbox_id: "pod-a".into(),
            ..Default::default()
        },
    )
    .unwrap();
    for d in own_dirs("pod-a") {
        assert!(!d.exists(), "{} left after StopSandbox", d.display());
    }
    // The shim killed with a pod running; containerd would run `shim
    // delete` in the sandbox's bundle.
    let pid = start_pod("pod-b");
    assert!(own_dirs("pod-b").iter().all(|d| d.is_dir()));
    let shim = env.shim_pid("anchor").unwrap();
    let _ = Command::new("kill")
        .args(["-9", &shim.to_string()])
        .status();
    let bundle = dir.path().join("pod-b");
    common::shim_delete(&env.ns, "/nonexistent.sock", "pod-b", &bundle);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(Instant::now() < deadline, "holder {pid} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    for d in own_dirs("pod-b") {
        assert!(!d.exists(), "{} left after shim delete", d.display());
    }
    assert!(!bundle.join("holder.cgroups").exists());
    drop(parents);
    env.assert_clean();
}
