//! Kubernetes CRI: containerd's CRI plugin with runtime handlers whose
//! `runtime_type` is Wedge (`wedge` → io.containerd.wedge.v2, `dropin` →
//! io.containerd.runc.v2 installed as Wedge), driven over the CRI gRPC API
//! the way the kubelet drives it. Pods use the host network (no CNI).

mod common;
#[path = "common/cri.rs"]
mod cri_common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use cri_common::*;
use k8s_cri::v1::*;

async fn pod_lifecycle(env: &Env, handler: &str) {
    let sock = env.address.clone();
    let mut rt = connect(&sock).await;
    let (pod, cfg) = start_pod(&mut rt, env, &format!("pod-{handler}"), handler).await;
    let mut ids = HashMap::new();
    for (name, script) in [
        (
            "app",
            "echo hello-log; echo to-stderr >&2; trap '' TERM; while :; do sleep 0.1; done",
        ),
        ("side", "trap 'exit 0' TERM; while :; do sleep 0.1; done"),
    ] {
        let id = start_container(&mut rt, &pod, &cfg, name, script).await;
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
        let st = container_status(&mut rt, &ids[name]).await;
        assert_eq!(st.exit_code, want, "{name}");
    }
    remove_pod(&mut rt, env, &pod, Duration::from_secs(10)).await;
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

#[test]
fn cri_pods_run_on_wedge_through_both_runtime_handlers() {
    let env = Env::start_with(Install::Wedge, true);
    block_on(async {
        pod_lifecycle(&env, "wedge").await;
        pod_lifecycle(&env, "dropin").await;
    });
    cleanup_cgroups(&env);
}

/// The content of a CRI log file's stdout lines (the kubelet's format:
/// `<time> <stream> <P|F> <text>`; `P` lines continue into the next one).
fn cri_log_stdout(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::new();
    for line in text.lines() {
        let mut f = line.splitn(4, ' ');
        let (_, stream, tag, body) = (f.next(), f.next(), f.next(), f.next().unwrap_or(""));
        if stream != Some("stdout") {
            continue;
        }
        out.push_str(body);
        if tag == Some("F") {
            out.push('\n');
        }
    }
    out
}

/// Numbered lines at full speed right up to the exit: the CRI log has every
/// one. ExecSync returns a 1 MiB output whole, every time.
#[test]
fn cri_log_and_exec_sync_output_are_complete() {
    const N: u64 = 200_000;
    const BURST: usize = 1 << 20;
    let env = Env::start_with(Install::Wedge, true);
    block_on(async {
        let mut rt = connect(&env.address).await;
        let (pod, cfg) = start_pod(&mut rt, &env, "pod-out", "wedge").await;
        let writer = start_container(
            &mut rt,
            &pod,
            &cfg,
            "writer",
            &format!("i=0; while [ $i -lt {N} ]; do i=$((i+1)); echo $i; done"),
        )
        .await;
        let st = wait_exited(&mut rt, &writer).await;
        assert_eq!(st.exit_code, 0);
        let want: String = (1..=N).map(|i| format!("{i}\n")).collect();
        let got = cri_log_stdout(&std::path::Path::new(&cfg.log_directory).join("writer.log"));
        assert!(
            got == want,
            "CRI log has {} bytes of numbered lines, want {}",
            got.len(),
            want.len()
        );

        let host = start_container(&mut rt, &pod, &cfg, "host", "sleep 600").await;
        for i in 0..10 {
            let r = rt
                .exec_sync(ExecSyncRequest {
                    container_id: host.clone(),
                    cmd: vec![
                        "sh".into(),
                        "-c".into(),
                        format!("head -c {BURST} /dev/zero | tr '\\0' x"),
                    ],
                    timeout: 30,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.exit_code, 0);
            assert_eq!(r.stdout.len(), BURST, "ExecSync run {i}");
        }
        remove_pod(&mut rt, &env, &pod, Duration::from_secs(10)).await;
    });
    cleanup_cgroups(&env);
}

/// Prints numbered lines `"<n> <unix second>"` at roughly 1 MB/s, forever;
/// the second comes from a ticker inside the container, so the lines show
/// the container's own write rate whatever happens to their readers.
const NUMBERED_AT_1MBPS: &str = "date +%s > /tmp/t; \
(while :; do date +%s > /tmp/t.n; mv /tmp/t.n /tmp/t; sleep 0.2; done) & \
i=0; while :; do read t < /tmp/t; j=0; \
while [ $j -lt 500 ]; do i=$((i+1)); j=$((j+1)); echo \"$i $t\"; done; sleep 0.005; done";

/// Parses `"<n> <second>"` lines; a trailing partial line is ignored.
fn numbered_lines(text: &str) -> Vec<(u64, u64)> {
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| {
            let (n, t) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (n.parse().unwrap(), t.parse().unwrap())
        })
        .collect()
}

/// Asserts lines 1..=k in order, each once, and a line in every second
/// between `from` and `to` (the writer never stopped).
fn assert_consecutive_and_never_stalled(
    what: &str,
    lines: &[(u64, u64)],
    from: u64,
    to: u64,
    marks: &[(&str, u64)],
) {
    assert!(!lines.is_empty(), "{what}: no lines");
    if let Some(i) = (0..lines.len()).find(|&i| lines[i].0 != i as u64 + 1) {
        panic!(
            "{what}: line {} is {:?} (after {:?}; {marks:?})",
            i + 1,
            lines[i],
            lines.get(i.wrapping_sub(1))
        );
    }
    let seconds: std::collections::BTreeSet<u64> = lines.iter().map(|l| l.1).collect();
    let gaps: Vec<u64> = (from..=to).filter(|s| !seconds.contains(s)).collect();
    assert!(
        gaps.is_empty(),
        "{what}: the writer wrote nothing in seconds {gaps:?} (checked {from}..={to}; {marks:?}; \
         lines per second around the first gap: {:?})",
        gaps.first().map(|g| (g.saturating_sub(3)..=g + 3)
            .map(|s| (s, lines.iter().filter(|l| l.1 == s).count()))
            .collect::<Vec<_>>())
    );
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Collects a child's stdout in a thread.
fn collect_stdout(child: &mut std::process::Child) -> std::thread::JoinHandle<String> {
    use std::io::Read;
    let mut out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

/// containerd is SIGKILLed for 30 s while two containers write numbered
/// lines at ~1 MB/s: one into a CRI log, one to a `ctr task attach` client
/// that dies and is started again. Nothing blocks the writers (a line in
/// every second), and once containerd is back every line arrives, in order.
#[test]
fn no_line_is_lost_while_containerd_is_down_for_30_s() {
    use std::process::Stdio;
    let mut env = Env::start_with(Install::Wedge, true);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (pod, cfg, started) = rt.block_on(async {
        let mut rt = connect(&env.address).await;
        let (pod, cfg) = start_pod(&mut rt, &env, "pod-down", "wedge").await;
        let started = unix_now();
        start_container(&mut rt, &pod, &cfg, "chatty", NUMBERED_AT_1MBPS).await;
        (pod, cfg, started)
    });
    let out = env.run("fifo-chatty", &["-d"], &["sh", "-c", NUMBERED_AT_1MBPS]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut client1 = env
        .ctr_cmd(&["task", "attach", "fifo-chatty"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let got1 = collect_stdout(&mut client1);
    std::thread::sleep(Duration::from_secs(3));
    // Take the first client away with nothing in flight: freeze the writer,
    // let the client read everything, then kill it.
    // (runc's cgroup v1 freezer may give up on a container that forks this
    // fast: "unable to freeze"; it is asked again.)
    let mut paused = env.ctr(&["task", "pause", "fifo-chatty"]);
    for _ in 0..5 {
        if paused.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        paused = env.ctr(&["task", "pause", "fifo-chatty"]);
    }
    assert!(paused.status.success(), "pause: {}", stderr(&paused));
    std::thread::sleep(Duration::from_millis(1500));
    let _ = client1.kill();
    let _ = client1.wait();
    let got1 = got1.join().unwrap();
    let resumed = env.ctr(&["task", "resume", "fifo-chatty"]);
    assert!(resumed.status.success(), "resume: {}", stderr(&resumed));

    let down = unix_now();
    env.kill_containerd();
    std::thread::sleep(Duration::from_secs(30));
    env.start_containerd();
    let up = unix_now();

    let mut client2 = env
        .ctr_cmd(&["task", "attach", "fifo-chatty"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let got2 = collect_stdout(&mut client2);
    // Both readers catch up with the live output.
    let log = std::path::Path::new(&cfg.log_directory).join("chatty.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = numbered_lines(&cri_log_stdout(&log));
        if lines.last().is_some_and(|l| l.1 >= up + 3) {
            break;
        }
        if Instant::now() >= deadline {
            let said: Vec<String> = env
                .containerd_log()
                .lines()
                .filter(|l| l.contains("output") || l.contains("chatty") || l.contains("spill"))
                .map(str::to_string)
                .collect();
            panic!(
                "the CRI log did not catch up: last line {:?} (down {down}, up {up}, now {}); \
                 containerd's log on output:\n{}",
                lines.last(),
                unix_now(),
                said[said.len().saturating_sub(40)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let _ = client2.kill();
    let _ = client2.wait();
    let got2 = got2.join().unwrap();

    let cri = numbered_lines(&cri_log_stdout(&log));
    let marks = [("started", started), ("down", down), ("up", up)];
    assert_consecutive_and_never_stalled("CRI log", &cri, started + 1, up + 2, &marks);
    // `ctr run -d` itself copies the FIFO to its stdout until it exits: the
    // first lines may have gone to it.
    let mut fifo = String::from_utf8_lossy(&out.stdout).into_owned();
    fifo.push_str(&got1);
    fifo.push_str(&got2);
    let fifo = numbered_lines(&fifo);
    assert_consecutive_and_never_stalled("ctr attach clients", &fifo, down, up + 2, &marks);
    assert!(
        got2.len() > 4 << 20,
        "the restarted client got only {} bytes: nothing was held for it",
        got2.len()
    );

    env.finish("fifo-chatty");
    rt.block_on(async {
        let mut rt = connect(&env.address).await;
        remove_pod(&mut rt, &env, &pod, Duration::from_secs(10)).await;
    });
    cleanup_cgroups(&env);
}

/// StopContainer ends a container whose OCI runtime hangs on `kill` and
/// `delete`: the shim delivers SIGTERM itself past the kill bound, then, after
/// the stop timeout, SIGKILL to the whole cgroup; the exit is 137 and the
/// container is removed.
#[test]
fn stop_container_ends_a_container_whose_runtime_hangs() {
    use wedge::service::task::KILL_BOUND;
    let env = Env::start_with(Install::Wedge, true);
    block_on(async {
        let mut rt = connect(&env.address).await;
        let (pod, cfg) = start_pod(&mut rt, &env, "pod-hang", "hang").await;
        let id = start_container(
            &mut rt,
            &pod,
            &cfg,
            "stubborn",
            "trap '' TERM; while :; do sleep 0.1; done",
        )
        .await;
        env.set_hang("kill", true);
        env.set_hang("delete", true);
        let t = Instant::now();
        rt.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 2,
        })
        .await
        .unwrap();
        // The stop timeout, plus one kill bound for SIGTERM and one for
        // SIGKILL, plus a little.
        let limit = Duration::from_secs(2) + 2 * KILL_BOUND + slack(Duration::from_secs(3));
        assert!(t.elapsed() < limit, "StopContainer took {:?}", t.elapsed());
        let st = wait_exited(&mut rt, &id).await;
        assert_eq!(st.exit_code, 137);
        env.set_hang("kill", false);
        env.set_hang("delete", false);
        rt.remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        remove_pod(&mut rt, &env, &pod, Duration::from_secs(10)).await;
        // The `runtime delete` that hung (CRI deletes the task when it
        // exits) was retried by the shim until the runtime answered again.
        assert!(env
            .containerd_log()
            .contains("going on without it and retrying"));
        let state = std::path::Path::new("/run/containerd/runc/k8s.io").join(&id);
        let deadline = Instant::now() + Duration::from_secs(30);
        while state.exists() {
            assert!(
                Instant::now() < deadline,
                "{} is left: {}",
                state.display(),
                env.containerd_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert!(
        env.containerd_log()
            .contains("the shim delivers signal 9 itself"),
        "the shim did not kill the container itself"
    );
    cleanup_cgroups(&env);
}

/// containerd is SIGKILLed for 90 s, longer than the shim's retry window:
/// meanwhile a CRI container is OOM-killed and a ctr container exits 7.
/// The shim keeps the events and replays them once containerd is back:
/// `ctr events`, started after the restart, sees `/tasks/oom` then
/// `/tasks/exit` 137 for the first and `/tasks/exit` 7 for the second, and
/// CRI reports the first as OOMKilled (with exit 137 under containerd 1.6).
/// containerd 1.7+ deletes the ended tasks and shuts their shims down while
/// it loads, before it takes events: the shim stays until it has delivered.
#[test]
fn no_event_is_lost_however_long_containerd_is_down() {
    let mut env = Env::start_with(Install::Wedge, true);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (pod, hog) = rt.block_on(async {
        let mut rt = connect(&env.address).await;
        let (pod, cfg) = start_pod(&mut rt, &env, "pod-away", "wedge").await;
        let mut c = container_config(
            "hog",
            "sleep 5; dd if=/dev/zero of=/dev/null bs=64M count=4",
        );
        c.linux = Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: 32 << 20,
                ..Default::default()
            }),
            ..Default::default()
        });
        let hog = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(c),
                sandbox_config: Some(cfg.clone()),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        rt.start_container(StartContainerRequest {
            container_id: hog.clone(),
        })
        .await
        .unwrap();
        (pod, hog)
    });
    let out = env.run("seven", &["-d"], &["sh", "-c", "sleep 5; exit 7"]);
    assert!(out.status.success(), "{}", stderr(&out));

    env.kill_containerd();
    std::thread::sleep(Duration::from_secs(90));
    env.start_containerd();
    let events = env.events();
    let hog_topics = events.wait_for(&hog, &["/tasks/oom", "/tasks/exit"]);
    let oom = hog_topics.iter().position(|t| t == "/tasks/oom").unwrap();
    let exit = hog_topics.iter().position(|t| t == "/tasks/exit").unwrap();
    assert!(oom < exit, "{hog_topics:?}");
    events.wait_for("seven", &["/tasks/exit"]);
    let exit7 = events.lines("\"seven\"");
    assert!(
        exit7
            .iter()
            .any(|l| l.contains("/tasks/exit") && l.contains("\"exit_status\":7")),
        "{exit7:?}"
    );
    assert!(
        events
            .lines(&format!("\"{hog}\""))
            .iter()
            .any(|l| l.contains("/tasks/exit") && l.contains("\"exit_status\":137")),
        "the hog's exit says 137"
    );
    // containerd 1.7 and later, while they load, delete every task whose
    // processes all ended (both shims), and CRI, finding the task gone when
    // it recovers, records exit code 255 before any event can reach it; the
    // events above still say 137, and then the OOM.
    let deleted_at_load = containerd_version() >= (1, 7);
    rt.block_on(async {
        let mut rt = connect(&env.address).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = container_status(&mut rt, &hog).await;
            if st.reason == "OOMKilled" {
                if !deleted_at_load {
                    assert_eq!(st.exit_code, 137);
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "CRI status: {} {} {:?}",
                st.exit_code,
                st.reason,
                st.state
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        remove_pod(&mut rt, &env, &pod, Duration::from_secs(10)).await;
    });
    if !deleted_at_load {
        assert!(env.ctr(&["task", "rm", "seven"]).status.success());
    }
    assert!(env.ctr(&["container", "rm", "seven"]).status.success());
    cleanup_cgroups(&env);
    env.assert_clean();
}

/// A kubelet exec probe: ExecSync of a command that prints, with a 1 s
/// timeout. containerd attaches its output readers only after Start has
/// returned and starts the probe's timer then, so a Start that waited for the
/// output to be read would stall every probe by the shim's idle bound while
/// the exit code still said 0: each of 20 probes through each install form is
/// answered, with its output, in under a second, and the shim never reports
/// an exit with output nobody took.
#[test]
fn a_printing_exec_probe_is_answered_within_its_one_second_timeout() {
    let env = Env::start_with(Install::Wedge, true);
    block_on(async {
        let mut rt = connect(&env.address).await;
        for handler in ["wedge", "dropin"] {
            let (pod, cfg) =
                start_pod(&mut rt, &env, &format!("pod-probe-{handler}"), handler).await;
            let id = start_container(&mut rt, &pod, &cfg, "probed", "sleep 600").await;
            let mut took = Vec::new();
            for i in 0..20 {
                let t = Instant::now();
                let r = rt
                    .exec_sync(ExecSyncRequest {
                        container_id: id.clone(),
                        cmd: vec!["echo".into(), format!("probe-{i}")],
                        timeout: 1,
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{handler}: probe {i}: {e}"))
                    .into_inner();
                took.push(t.elapsed());
                assert_eq!(
                    (r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned()),
                    (0, format!("probe-{i}\n")),
                    "{handler}: probe {i}"
                );
            }
            took.sort();
            eprintln!("{handler}: probes answered in {took:?}");
            let slow: Vec<_> = took
                .iter()
                .filter(|d| **d >= Duration::from_secs(1))
                .collect();
            assert!(slow.is_empty(), "{handler}: probes answered in {took:?}");
            remove_pod(&mut rt, &env, &pod, Duration::from_secs(10)).await;
        }
    });
    let log = env.containerd_log();
    assert!(
        !log.contains("not taken by a reader"),
        "the shim held an exit for a reader: {}",
        log.lines()
            .filter(|l| l.contains("not taken by a reader"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    cleanup_cgroups(&env);
}

/// Streaming exec as `kubectl exec` runs it (CRI Exec, then the streaming
/// server's websocket): a 1 MiB burst right before the exit arrives whole,
/// with stderr and the exit status, in each of 10 runs through each install.
#[test]
fn streaming_exec_output_is_complete() {
    const BURST: usize = 1 << 20;
    let env = Env::start_with(Install::Wedge, true);
    block_on(async {
        let mut rt = connect(&env.address).await;
        for handler in ["wedge", "dropin"] {
            let (pod, cfg) =
                start_pod(&mut rt, &env, &format!("pod-stream-{handler}"), handler).await;
            let id = start_container(&mut rt, &pod, &cfg, "streamed", "sleep 600").await;
            for i in 0..10 {
                let script = format!("head -c {BURST} /dev/zero | tr '\\0' x; echo err-{i} >&2");
                let got = stream_exec(&mut rt, &id, &["sh", "-c", &script]).await;
                assert_eq!(
                    got.stdout.len(),
                    BURST,
                    "{handler}: run {i}: {:?}",
                    got.status
                );
                assert!(got.stdout.iter().all(|b| *b == b'x'));
                assert_eq!(
                    got.stderr,
                    format!("err-{i}\n").as_bytes(),
                    "{handler}: run {i}"
                );
                assert!(got.status.contains("Success"), "{handler}: {}", got.status);
            }
            let failed = stream_exec(&mut rt, &id, &["sh", "-c", "echo bye; exit 3"]).await;
            assert_eq!(failed.stdout, b"bye\n");
            assert!(
                failed.status.contains("ExitCode") && failed.status.contains("\"3\""),
                "{handler}: {}",
                failed.status
            );
            remove_pod(&mut rt, &env, &pod, Duration::from_secs(10)).await;
        }
    });
    cleanup_cgroups(&env);
}
