//! cgroup v2 with systemd: what Wedge does with cgroups on a unified
//! hierarchy, checked against the kernel's own files. Built and run only in
//! the cgroup v2 guest (`scripts/test-guest`; a `[[test]]` with `test =
//! false`, so `cargo test` on the v1 host leaves it out), under the guest's
//! containerd 1.6, runc 1.1 and crun 1.8, on Linux 6.1 and systemd 252.
//!
//! - cgroupfs driver: Stats (every v2 field the kernel has, compared with the
//!   files), pause/resume through `cgroup.freeze`, Update landing in
//!   `memory.max`, `pids.max` and `cpu.max`, OOM counted from
//!   `memory.events` (an exec's, and init's before its exit), grouping, the
//!   end of a shared pid namespace, a hung runtime's kill through
//!   `cgroup.kill`.
//! - systemd driver (`SystemdCgroup`), runc and crun: the container in its
//!   scope (crun: `<scope>/container`), Stats and OOM found there, Update,
//!   the scope gone after delete.
//! - CRI with the systemd driver: one shim per pod, the pod's cgroups under a
//!   kubelet-style slice, stats and OOMKilled from the scope, `ShimCgroup`
//!   (given on `start`'s stdin) moving the pod's shim.

#[path = "guest/cgroup_files.rs"]
mod cgroup_files;
mod common;
#[path = "guest/cri_client.rs"]
mod cri_client;
#[path = "common/cri.rs"]
mod cri_common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cgroup_files::*;
use common::*;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim::shim::*;
use containerd_shim_protos::types::task::Status;
use cri_client::*;
use cri_common::*;
use k8s_cri::v1::*;

/// `ctr task metrics ID` as (name, value) pairs.
fn ctr_metrics(env: &Env, id: &str) -> HashMap<String, String> {
    stdout(&env.ctr(&["task", "metrics", id]))
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
}

fn update(env: &Env, id: &str, resources: &str) {
    let mut any = Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
    any.value = resources.as_bytes().to_vec();
    let _: Empty = env
        .shim_call(
            id,
            "Update",
            &UpdateTaskRequest {
                id: id.into(),
                resources: MessageField::some(any),
                ..Default::default()
            },
        )
        .unwrap();
}

/// An exec that allocates past the memory limit: OOM-killed (137), reported
/// as `/tasks/oom` for the container, counted in `memory.events` of `dir`
/// and in Stats; the container itself goes on.
fn oom_an_exec(env: &Env, events: &Events, id: &str, dir: &Path) {
    let before = kv(dir, "memory.events")["oom_kill"];
    let out = env.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "hog",
        id,
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/null bs=100M count=1",
    ]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    events.wait_for(id, &["/tasks/oom"]);
    assert_eq!(kv(dir, "memory.events")["oom_kill"], before + 1);
    let m = v2_stats(env, id);
    assert_eq!(m.memory_events.oom_kill, before + 1);
    assert_eq!(
        env.state(id, "").status.enum_value().unwrap(),
        Status::RUNNING
    );
}

/// Waits until `path` no longer exists.
fn wait_gone(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} is still there",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cgroupfs driver: Stats against the files, pause/resume, Update, an
/// exec's OOM, init's OOM before its exit, the cgroup gone after delete.
#[test]
fn stats_pause_update_and_oom_on_the_unified_hierarchy() {
    require_v2();
    let env = Env::start(Install::Wedge);
    let events = env.events();
    // Some disk I/O for io.stat and memory for memory.stat.
    let out = env.run(
        "v2",
        &["-d"],
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/tmp/x bs=1M count=4 2>/dev/null; sync; exec sleep 600",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("v2", "RUNNING");
    let pid = env.state("v2", "").pid;
    let dir = cgroup_of(pid);
    assert_eq!(dir, Path::new(ROOT).join(&env.ns).join("v2"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while read(&dir, "io.stat").is_empty() {
        assert!(Instant::now() < deadline, "no I/O in io.stat");
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = check_stats_against_files(&env, "v2", &dir);
    // No limits: `max` everywhere, as the Go shim reports it.
    assert_eq!(read(&dir, "pids.max"), "max");
    assert_eq!((m.pids.limit, m.memory.usage_limit), (u64::MAX, u64::MAX));
    let ctr = ctr_metrics(&env, "v2");
    assert_eq!(
        ctr.get("pids.limit").map(String::as_str),
        Some("18446744073709551615"),
        "{ctr:?}"
    );

    // Pause and resume: cgroup.freeze.
    assert!(env.ctr(&["task", "pause", "v2"]).status.success());
    env.wait_status("v2", "PAUSED");
    assert_eq!(read(&dir, "cgroup.freeze"), "1");
    assert_eq!(kv(&dir, "cgroup.events")["frozen"], 1);
    let out = env.ctr(&["task", "exec", "--exec-id", "no", "v2", "true"]);
    assert!(!out.status.success(), "exec while paused");
    assert!(env.ctr(&["task", "resume", "v2"]).status.success());
    env.wait_status("v2", "RUNNING");
    assert_eq!(read(&dir, "cgroup.freeze"), "0");
    assert_eq!(kv(&dir, "cgroup.events")["frozen"], 0);
    let topics = events.wait_for("v2", &["/tasks/paused", "/tasks/resumed"]);
    assert!(
        topics.iter().position(|t| t == "/tasks/paused")
            < topics.iter().position(|t| t == "/tasks/resumed")
    );

    // Update: the limits land in memory.max, pids.max and cpu.max.
    update(
        &env,
        "v2",
        r#"{"memory":{"limit":52428800},"pids":{"limit":64},"cpu":{"quota":50000,"period":100000}}"#,
    );
    assert_eq!(read(&dir, "memory.max"), "52428800");
    assert_eq!(read(&dir, "pids.max"), "64");
    assert_eq!(read(&dir, "cpu.max"), "50000 100000");
    // A throttled burner, then Stats again (throttling counted).
    let out = env.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "burn",
        "v2",
        "sh",
        "-c",
        "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = check_stats_against_files(&env, "v2", &dir);
    assert_eq!((m.memory.usage_limit, m.pids.limit), (52428800, 64));
    assert!(m.cpu.nr_periods > 0, "{:?}", m.cpu);
    let ctr = ctr_metrics(&env, "v2");
    assert_eq!(
        ctr.get("memory.usage_limit").map(String::as_str),
        Some("52428800")
    );

    // An exec's OOM: counted, reported, the container unharmed.
    oom_an_exec(&env, &events, "v2", &dir);
    env.finish("v2");
    wait_gone(&dir);

    // Init's OOM: /tasks/oom before /tasks/exit 137, once.
    let out = env.run(
        "oom",
        &["--rm", "--memory-limit", "33554432"],
        &["sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=4"],
    );
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    let topics = events.wait_for("oom", &["/tasks/oom", "/tasks/exit"]);
    let oom = topics.iter().position(|t| t == "/tasks/oom").unwrap();
    let exit = topics.iter().position(|t| t == "/tasks/exit").unwrap();
    assert!(oom < exit, "{topics:?}");
    assert_eq!(topics.iter().filter(|t| *t == "/tasks/oom").count(), 1);
    env.assert_clean();
}

/// Kills what systemd units a failed test leaves running.
struct Units(Vec<String>);

impl Drop for Units {
    fn drop(&mut self) {
        for u in &self.0 {
            let _ = Command::new("systemctl")
                .args(["kill", "-s", "KILL", u])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("systemctl")
                .args(["stop", u])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn unit_active(unit: &str) -> bool {
    Command::new("systemctl")
        .args(["is-active", "--quiet", unit])
        .status()
        .unwrap()
        .success()
}

/// `ctr run` with the systemd driver (`SystemdCgroup`, `--cgroup
/// system.slice:<prefix>:<name>`) and runtime `binary`: the container lives
/// in the scope (crun: in `<scope>/container`), where Stats, Update and the
/// OOM watch find it; the scope goes with the container.
fn systemd_driver(binary: Option<&str>) {
    require_v2();
    let env = Env::start(Install::DropIn);
    let events = env.events();
    let prefix = format!("wedge-{}", env.ns);
    let scope = format!("{prefix}-sd.scope");
    let _units = Units(vec![scope.clone()]);
    let cgroup = format!("system.slice:{prefix}:sd");
    let mut extra = vec![
        "-d",
        "--runc-systemd-cgroup",
        "--cgroup",
        &cgroup,
        "--memory-limit",
        "67108864",
    ];
    if let Some(b) = binary {
        extra.extend(["--runc-binary", b]);
    }
    let out = env.run("sd", &extra, &["sleep", "600"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("sd", "RUNNING");
    assert!(unit_active(&scope), "{scope} is not active");
    let scope_dir = Path::new(ROOT).join("system.slice").join(&scope);
    let pid = env.state("sd", "").pid;
    let dir = cgroup_of(pid);
    // runc puts the process in the scope, crun in a `container` cgroup below.
    let expected = match binary {
        Some(b) if b.ends_with("crun") => scope_dir.join("container"),
        _ => scope_dir.clone(),
    };
    assert_eq!(dir, expected);
    let m = check_stats_against_files(&env, "sd", &dir);
    assert_eq!(
        m.memory.usage_limit, 67108864,
        "the limit, found where the process is"
    );
    if dir == scope_dir {
        // The scope's TasksMax (systemd's DefaultTasksMax), not `max`.
        assert_ne!(m.pids.limit, u64::MAX);
    }

    update(&env, "sd", r#"{"memory":{"limit":52428800}}"#);
    assert_eq!(read(&dir, "memory.max"), "52428800");
    assert_eq!(v2_stats(&env, "sd").memory.usage_limit, 52428800);
    oom_an_exec(&env, &events, "sd", &dir);

    env.finish("sd");
    wait_gone(&scope_dir);
    assert!(!unit_active(&scope), "{scope} outlived its container");
    env.assert_clean();
}

#[test]
fn systemd_driver_with_runc() {
    systemd_driver(None);
}

#[test]
fn systemd_driver_with_crun() {
    systemd_driver(Some("/usr/bin/crun"));
}

/// Grouped containers share one shim, each with its own cgroup (Stats per
/// container); when init of a container sharing another's pid namespace
/// exits, what it left in its cgroup is killed.
#[test]
fn grouped_containers_keep_their_own_cgroups_and_a_shared_pid_namespace_ends_with_init() {
    require_v2();
    let env = Env::start(Install::Wedge);
    let ann = "io.containerd.runc.v2.group=pod-v2";
    for (id, limit) in [("g1", "33554432"), ("g2", "50331648")] {
        let out = env.run(
            id,
            &["-d", "--annotation", ann, "--memory-limit", limit],
            &["sleep", "600"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        env.wait_status(id, "RUNNING");
    }
    let connect = |id: &str| -> ConnectResponse {
        env.shim_call(
            id,
            "Connect",
            &ConnectRequest {
                id: id.into(),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let shim = connect("g1").shim_pid;
    assert_eq!(connect("g2").shim_pid, shim, "one shim");
    for (id, limit) in [("g1", 33554432), ("g2", 50331648)] {
        let dir = cgroup_of(env.state(id, "").pid);
        assert_eq!(dir, Path::new(ROOT).join(&env.ns).join(id));
        assert_eq!(v2_stats(&env, id).memory.usage_limit, limit, "{id}");
    }
    // The shim is in none of them.
    assert!(!cgroup_of(shim).starts_with(Path::new(ROOT).join(&env.ns)));

    // g2's pid namespace, joined by a container whose init leaves a child.
    let ns = format!("pid:/proc/{}/ns/pid", env.state("g2", "").pid);
    let out = env.run(
        "joiner",
        &["-d", "--annotation", ann, "--with-ns", &ns],
        &["sh", "-c", "sleep 600 & sleep 1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = Path::new(ROOT).join(&env.ns).join("joiner");
    env.wait_status("joiner", "STOPPED");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = read(&dir, "cgroup.procs");
        if procs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left in joiner's cgroup: {procs}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(env.ctr(&["task", "rm", "joiner"]).status.success());
    assert!(env.ctr(&["container", "rm", "joiner"]).status.success());
    wait_gone(&dir);
    env.finish("g1");
    assert!(alive(shim), "the group's shim stays while g2 runs");
    env.finish("g2");
    env.assert_clean();
}

/// A runtime whose `kill` hangs: the shim kills the container itself, on v2
/// through `cgroup.kill`, within the bound. The container shares another's
/// pid namespace, so its init's death does not take the child it forked
/// along: only the cgroup-wide kill does.
#[test]
fn a_hung_runtime_kill_goes_through_cgroup_kill() {
    use wedge::service::task::KILL_BOUND;
    require_v2();
    let env = Env::start(Install::DropIn);
    env.sleeper("anchor");
    let ns = format!("pid:/proc/{}/ns/pid", env.state("anchor", "").pid);
    let rt = env.hang_runc().display().to_string();
    let out = env.run(
        "hk",
        &["-d", "--runc-binary", &rt, "--with-ns", &ns],
        &["sh", "-c", "sleep 600 & exec sleep 601"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("hk", "RUNNING");
    let dir = cgroup_of(env.state("hk", "").pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while read(&dir, "cgroup.procs").lines().count() < 2 {
        assert!(Instant::now() < deadline, "the child did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    env.set_hang("kill", true);
    let t = Instant::now();
    let out = env.ctr(&["task", "kill", "-s", "KILL", "hk"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("hk", "STOPPED");
    assert!(
        t.elapsed() < KILL_BOUND + slack(Duration::from_secs(3)),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(env.state("hk", "").exit_status, 137);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !read(&dir, "cgroup.procs").is_empty() {
        assert!(
            Instant::now() < deadline,
            "left in the cgroup: {}",
            read(&dir, "cgroup.procs")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = env.containerd_log();
    assert!(log.contains("hk: runtime kill did not finish"), "{log}");
    let prefix = "killed the ";
    let suffix = format!(" processes of {} through cgroup.kill", dir.display());
    let killed: Vec<u32> = log
        .lines()
        .filter_map(|l| {
            let at = l.find(&suffix)?;
            l[..at].rsplit(prefix).next()?.parse().ok()
        })
        .collect();
    assert!(
        killed.iter().any(|n| *n >= 1),
        "no cgroup.kill of a live process: {killed:?}\n{log}"
    );
    env.set_hang("kill", false);
    assert!(env.ctr(&["task", "rm", "hk"]).status.success());
    assert!(env.ctr(&["container", "rm", "hk"]).status.success());
    env.finish("anchor");
    env.assert_clean();
}

// ---- CRI with the systemd driver ----

/// One pod on `handler`: sandbox, a sleeper and a container that is
/// OOM-killed, all in scopes under the pod's slice; one shim; stats from
/// the scopes; the scopes gone after the pod is removed. `shim_cgroup`: the
/// cgroup the handler's `ShimCgroup` names.
async fn systemd_pod(env: &Env, handler: &str, shim_cgroup: Option<&Path>, units: &mut Units) {
    let mut rt = connect(&env.address).await;
    let uid = format!("{}_{handler}", std::process::id()).replace('-', "_");
    let slice = format!("kubepods-besteffort-pod{uid}.slice");
    units.0.push(slice.clone());
    let slice_dir = Path::new(ROOT)
        .join("kubepods.slice/kubepods-besteffort.slice")
        .join(&slice);
    let crun = handler.ends_with("crun");
    let cfg = pod_config(env, &format!("pod-{handler}"), &slice);
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
    let mut ids = Vec::new();
    for (name, script, memory) in [
        (
            "app",
            "trap 'exit 0' TERM; while :; do sleep 0.1; done",
            64 << 20,
        ),
        // dd is OOM-killed; sh goes on for a moment, so the scope is still
        // there when the shim reads memory.events (see OOM_RACE below).
        (
            "hog",
            "sleep 4; dd if=/dev/zero of=/dev/null bs=64M count=4; sleep 1; exit 3",
            32 << 20,
        ),
    ] {
        let id = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(limited_container(name, script, memory)),
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
        ids.push(id);
    }
    // The shim's Stats of each container come from its own cgroup: the
    // limit CRI set is there.
    for (id, limit) in [(&ids[0], 64 << 20), (&ids[1], 32 << 20)] {
        let (pid, m) = k8s_state_and_stats(env, id);
        assert_eq!(
            m.memory.usage_limit,
            limit,
            "{id}: Stats from the wrong cgroup? init is in {}",
            cgroup_of(pid).display()
        );
    }
    // Each in its scope under the pod's slice (crun: `<scope>/container`).
    let mut scopes = Vec::new();
    for id in [&pod, &ids[0]] {
        let unit = format!("cri-containerd-{id}.scope");
        let scope = slice_dir.join(&unit);
        let dir = if crun {
            scope.join("container")
        } else {
            scope.clone()
        };
        let procs = read(&dir, "cgroup.procs");
        assert!(!procs.is_empty(), "no process in {}", dir.display());
        assert!(unit_active(&unit), "{unit}");
        scopes.push(scope);
    }
    let shims = shims_in_k8s_ns(env);
    assert_eq!(shims.len(), 1, "one shim per pod: {shims:?}");
    if let Some(cg) = shim_cgroup {
        assert_eq!(cgroup_of(shims[0]), cg, "ShimCgroup");
    }

    // Stats come from the container's scope.
    let app_dir = if crun {
        scopes[1].join("container")
    } else {
        scopes[1].clone()
    };
    let stats = rt
        .container_stats(ContainerStatsRequest {
            container_id: ids[0].clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let usage = stats.memory.unwrap().usage_bytes.unwrap().value;
    near(
        "CRI memory usage",
        usage,
        num(&app_dir, "memory.current"),
        1 << 20,
    );
    assert!(usage > 0);
    let cpu = stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value;
    let file_cpu = kv(&app_dir, "cpu.stat")["usage_usec"] * 1000;
    assert!(
        cpu > 0 && cpu <= file_cpu,
        "CRI cpu {cpu} vs the file's {file_cpu}"
    );

    // The OOM is seen in the hog's scope: CRI says OOMKilled (CRI learns
    // the exit from Wait and the OOM from the event stream, so the reason
    // may follow the exit by a moment). OOM_RACE: when the OOM-killed
    // process is the scope's last, systemd removes the scope at once and a
    // shim may find memory.events gone before it reads the kill (containerd's
    // Go shim alike; see the README's "cgroup v2 guest" section).
    let mut st = wait_exited(&mut rt, &ids[1]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while st.reason != "OOMKilled" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        st = wait_exited(&mut rt, &ids[1]).await;
    }
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (3, "OOMKilled"),
        "{}",
        log_excerpt(env)
    );

    rt.stop_container(StopContainerRequest {
        container_id: ids[0].clone(),
        timeout: 5,
    })
    .await
    .unwrap();
    for id in &ids {
        rt.remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    }
    remove_pod(&mut rt, env, &pod, Duration::from_secs(15)).await;
    for id in ids.iter().chain([&pod]) {
        let unit = format!("cri-containerd-{id}.scope");
        wait_gone(&slice_dir.join(&unit));
        assert!(!unit_active(&unit), "{unit} outlived its container");
        assert!(!Path::new("/run/containerd/runc/k8s.io").join(id).exists());
    }
}

/// CRI handlers with `SystemdCgroup = true`, for runc (with `ShimCgroup`)
/// and crun (`BinaryName`), both served by Wedge as the drop-in.
#[test]
fn cri_pods_with_the_systemd_cgroup_driver() {
    require_v2();
    let shim_cg = Path::new(ROOT).join(format!("wedge-shims-{}", std::process::id()));
    std::fs::create_dir_all(&shim_cg).unwrap();
    let rel = shim_cg.strip_prefix(ROOT).unwrap().display().to_string();
    let base = r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes"#;
    let extra = format!(
        r#"{base}.sd-runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.sd-runc.options]
        SystemdCgroup = true
        ShimCgroup = "/{rel}"
{base}.sd-crun]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.sd-crun.options]
        SystemdCgroup = true
        BinaryName = "/usr/bin/crun"
"#
    );
    let env = Env::start_custom(Install::Wedge, true, &extra);
    let mut units = Units(Vec::new());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        systemd_pod(&env, "sd-runc", Some(&shim_cg), &mut units).await;
        systemd_pod(&env, "sd-crun", None, &mut units).await;
    });
    assert_eq!(read(&shim_cg, "cgroup.procs"), "", "the shim is gone");
    std::fs::remove_dir(&shim_cg).unwrap();
    drop(units);
    let _ = std::fs::remove_dir("/run/containerd/runc/k8s.io");
}

/// A pod without a pause container (the Sandbox service) with each driver:
/// its holder in `<parent>/<sandbox id>` (cgroupfs) or in systemd's
/// transient scope `cri-containerd-<id>.scope` in the pod's slice (the
/// shim asks systemd over D-Bus, as runc does); SandboxMetrics reads it;
/// StopSandbox leaves neither behind.
#[test]
fn pod_holders_live_in_the_pods_cgroup_with_either_driver() {
    use containerd_shim_protos::protobuf::Message as _;
    use containerd_shim_protos::sandbox_api::*;
    require_v2();
    let env = Env::start(Install::Wedge);
    env.sleeper("anchor");
    let addr = env.shim_address("anchor");
    let slice = format!("wedgetest-pod{}.slice", std::process::id());
    let _units = Units(vec![slice.clone(), "wedgetest.slice".into()]);
    let cgroupfs_parent = format!("/wedge-test-{}", std::process::id());
    let cases = [
        (
            "pod-sd",
            slice.clone(),
            Path::new(ROOT)
                .join("wedgetest.slice")
                .join(&slice)
                .join("cri-containerd-pod-sd.scope"),
        ),
        (
            "pod-fs",
            cgroupfs_parent.clone(),
            Path::new(ROOT).join(&cgroupfs_parent[1..]).join("pod-fs"),
        ),
    ];
    for (id, parent, dir) in &cases {
        let bundle = tempfile::tempdir().unwrap();
        let started = create_and_start_sandbox(
            &addr,
            CreateSandboxRequest {
                sandbox_id: id.to_string(),
                bundle_path: bundle.path().display().to_string(),
                // A host-network pod: no netns to pin.
                options: MessageField::some(pod_options("h", &[8, 2], parent)),
                ..Default::default()
            },
        );
        assert_eq!(cgroup_of(started.pid), *dir, "{id}");
        let metrics: SandboxMetricsResponse = sandbox_call(
            &addr,
            "SandboxMetrics",
            &SandboxMetricsRequest {
                sandbox_id: id.to_string(),
                ..Default::default()
            },
        )
        .unwrap();
        let data = metrics.metrics.data.clone().unwrap();
        assert_eq!(data.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = containerd_shim_protos::cgroups_v2::metrics::Metrics::parse_from_bytes(&data.value)
            .unwrap();
        assert_eq!(m.pids.current, 1, "{id}: the holder alone");
        let _: StopSandboxResponse = sandbox_call(
            &addr,
            "StopSandbox",
            &StopSandboxRequest {
                sandbox_id: id.to_string(),
                ..Default::default()
            },
        )
        .unwrap();
        wait_gone(dir);
        let _: ShutdownSandboxResponse = sandbox_call(
            &addr,
            "ShutdownSandbox",
            &ShutdownSandboxRequest {
                sandbox_id: id.to_string(),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let _ = std::fs::remove_dir(Path::new(ROOT).join(&cgroupfs_parent[1..]));
    env.finish("anchor");
    env.assert_clean();
}
