//! Reliability and security under a real containerd: manager restarts, a
//! killed shim, stalled output readers, slow loggers, bad runtimes, load,
//! fd hygiene and peer checks.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use containerd_shim_protos::shim::shim::*;
use containerd_shim_protos::types::task::Status;

const I: Install = Install::Wedge;

#[test]
fn containers_survive_a_containerd_crash_with_real_exit_codes_and_logs() {
    let mut env = Env::start(I);
    env.sleeper("keep");
    let log = env.dir.path().join("late.log");
    let uri = format!("file://{}", log.display());
    let out = env.run(
        "late",
        &["-d", "--log-uri", &uri],
        &["sh", "-c", "sleep 2; seq 1 5000; exit 7"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let keep_pid = env.state("keep", "").pid;

    env.kill_containerd();
    // "late" exits and writes its log while containerd is down.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        alive(keep_pid),
        "containers keep running without containerd"
    );
    env.start_containerd();

    env.wait_status("keep", "RUNNING");
    let cleans_up_exited = containerd_version() >= (1, 7);
    if cleans_up_exited {
        // containerd 1.7 and later delete, while they restore shims, every task
        // whose processes are all gone (with their own Go shim too).
        let deadline = Instant::now() + Duration::from_secs(10);
        while stdout(&env.ctr(&["task", "ls"])).contains("late") {
            assert!(Instant::now() < deadline, "late was not cleaned up");
            std::thread::sleep(Duration::from_millis(100));
        }
    } else {
        env.wait_status("late", "STOPPED");
        let st = env.state("late", "");
        assert_eq!(st.exit_status, 7);
        assert!(st.exited_at.is_some());
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let want: String = (1..=5000).map(|i| format!("{i}\n")).collect();
    assert!(text == want, "file log incomplete: {} bytes", text.len());

    // Exec, kill and events work after the restart.
    let events = env.events();
    let out = env.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "after",
        "keep",
        "echo",
        "still",
    ]);
    assert_eq!(stdout(&out), "still\n");
    assert!(env
        .ctr(&["task", "kill", "-s", "KILL", "keep"])
        .status
        .success());
    env.wait_status("keep", "STOPPED");
    assert_eq!(env.state("keep", "").exit_status, 137);
    events.wait_for("keep", &["/tasks/exit"]);
    assert!(env.ctr(&["task", "rm", "keep"]).status.success());
    assert!(env.ctr(&["container", "rm", "keep"]).status.success());
    if !cleans_up_exited {
        assert!(env.ctr(&["task", "rm", "late"]).status.success());
    }
    assert!(env.ctr(&["container", "rm", "late"]).status.success());
    env.assert_clean();
}

#[test]
fn a_killed_shim_reports_the_real_exit_status() {
    let env = Env::start(I);
    let out = env.run("done", &["-d"], &["sh", "-c", "exit 9"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("done", "STOPPED");
    env.sleeper("alive");
    let events = env.events();
    for id in ["done", "alive"] {
        let shim = env.shim_pid(id).unwrap();
        assert!(Command::new("kill")
            .args(["-9", &shim.to_string()])
            .status()
            .unwrap()
            .success());
    }
    // containerd runs `shim delete` for each and publishes what it reports.
    let deadline = Instant::now() + Duration::from_secs(20);
    let delete_status = |id: &str| {
        events
            .lines(&format!("\"{id}\""))
            .iter()
            .filter(|l| l.contains("/tasks/delete"))
            .find_map(|l| {
                let i = l.find("\"exit_status\":")? + "\"exit_status\":".len();
                l[i..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
    };
    while delete_status("done").is_none() || delete_status("alive").is_none() {
        assert!(
            Instant::now() < deadline,
            "no delete events: {:?}",
            events.lines("tasks")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        delete_status("done"),
        Some(9),
        "the recorded exit, not a made-up 137"
    );
    assert_eq!(
        delete_status("alive"),
        Some(137),
        "a running container is killed"
    );
    for id in ["done", "alive"] {
        let _ = env.ctr(&["task", "rm", id]);
        assert!(env.ctr(&["container", "rm", id]).status.success());
    }
    env.assert_clean();
}

#[test]
fn a_stalled_output_reader_does_not_block_the_container() {
    let env = Env::start(I);
    // ctr -d leaves: nobody reads the stdout FIFO any more.
    let out = env.run(
        "chatty",
        &["-d"],
        &[
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo line $i; echo $i > /tmp/c.new; mv /tmp/c.new /tmp/count; done",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // The counter is replaced by rename, so a read never sees it half-written.
    let seq = std::cell::Cell::new(0);
    let count = || -> u64 {
        seq.set(seq.get() + 1);
        let out = env.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &format!("c{}", seq.get()),
            "chatty",
            "cat",
            "/tmp/count",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().parse().unwrap()
    };
    std::thread::sleep(Duration::from_secs(12));
    let a = count();
    std::thread::sleep(Duration::from_secs(2));
    let b = count();
    assert!(
        b > a,
        "the container is blocked on its output ({a} then {b})"
    );
    env.finish("chatty");
    env.assert_clean();
}

#[test]
fn a_slow_logger_gets_every_byte_of_a_100_mb_burst() {
    let env = Env::start(I);
    let dir = run_with_logger(
        &env,
        "burst",
        "slow.sh",
        &["sh", "-c", "dd if=/dev/zero bs=1M count=100 2>/dev/null"],
        Duration::from_secs(120),
    );
    assert_eq!(
        std::fs::metadata(dir.join("stdout")).unwrap().len(),
        100 << 20
    );
    env.assert_clean();
}

#[test]
fn missing_and_hanging_runtimes_get_clear_errors() {
    // ctr passes --runc-binary only to io.containerd.runc.v2: Wedge as drop-in.
    let env = Env::start(Install::DropIn);
    let out = env.run(
        "nort",
        &["--rm", "--runc-binary", "/nonexistent/runc"],
        &["true"],
    );
    // Worded as the Go shim words them (Docker, for one, matches "no such
    // file or directory" and "executable file not found").
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("fork/exec /nonexistent/runc: no such file or directory"),
        "{}",
        stderr(&out)
    );
    let _ = env.ctr(&["container", "rm", "nort"]);
    let out = env.run(
        "nort",
        &["--rm", "--runc-binary", "no-such-runc"],
        &["true"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            r#"OCI runtime create failed: exec: "no-such-runc": executable file not found in $PATH"#
        ),
        "{}",
        stderr(&out)
    );
    let _ = env.ctr(&["container", "rm", "nort"]);
    // The runtime's own error is the request's error, not the container's
    // output (it fails before the process runs).
    let out = env.run("nocmd", &["--rm"], &["/no/such/command"]);
    assert!(!out.status.success());
    let lines: Vec<&str> = std::str::from_utf8(&out.stderr).unwrap().lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("ctr: ") && lines[0].contains("/no/such/command"),
        "{lines:?}"
    );
    let _ = env.ctr(&["container", "rm", "nocmd"]);

    // A runtime that hangs: the request's deadline kills it, the shim stays up.
    env.sleeper("host");
    let hang = env.dir.path().join("hang-runtime");
    std::fs::write(&hang, "#!/bin/sh\nexec /bin/sleep 600\n").unwrap();
    std::fs::set_permissions(&hang, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bundle = env.dir.path().join("hang-bundle");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::copy(
        env.bundle("host").join("config.json"),
        bundle.join("config.json"),
    )
    .unwrap();
    let mut opts = RuncOptions::new();
    opts.binary_name = hang.display().to_string();
    let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
    any.type_url = "containerd.runc.v1.Options".into();
    any.value = opts.write_to_bytes().unwrap();
    let req = CreateTaskRequest {
        id: "hung".into(),
        bundle: bundle.display().to_string(),
        options: MessageField::some(any),
        ..Default::default()
    };
    let addr = std::fs::read_to_string(env.bundle("host").join("address")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    let res = rt.block_on(async {
        let mut c = wedge::ttrpc::Client::connect(&addr).await.unwrap();
        c.call_with_deadline(
            "containerd.task.v2.Task",
            "Create",
            req.write_to_bytes().unwrap(),
            &[],
            Some(Duration::from_secs(2)),
            Duration::from_secs(30),
        )
        .await
    });
    match res {
        Err(wedge::ttrpc::ClientError::Status { message, .. }) => {
            assert!(message.contains("deadline"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(25));
    assert!(
        !processes()
            .iter()
            .any(|(_, c)| c.contains("/bin/sleep 600") && c.contains("hang")),
        "the hung runtime was killed"
    );
    let st: Result<StateResponse, _> = env.shim_call(
        "host",
        "State",
        &StateRequest {
            id: "hung".into(),
            ..Default::default()
        },
    );
    assert!(st.is_err(), "no half-created container");
    assert_eq!(
        env.state("host", "").status.enum_value().unwrap(),
        Status::RUNNING
    );
    env.finish("host");
    env.assert_clean();
}

#[test]
fn no_shim_fd_leaks_into_containers() {
    let env = Env::start(I);
    env.sleeper("fds");
    let out = env.ctr(&["task", "exec", "--exec-id", "l1", "fds", "ls", "/proc/1/fd"]);
    let fds: Vec<String> = stdout(&out)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(fds, ["0", "1", "2"], "init's fds");
    let out = env.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "l2",
        "fds",
        "sh",
        "-c",
        "ls /proc/$$/fd; true",
    ]);
    let fds: Vec<String> = stdout(&out)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        fds,
        ["0", "1", "2"],
        "an exec's fds (a shell that stays alive)"
    );
    // The shim socket is a file with mode 0600.
    let sock = wedge::manager::socket_path(&env.address, &env.ns, "fds");
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    env.finish("fds");
    env.assert_clean();
}

/// Run as another user by `peers_with_another_uid_are_refused`: tries a
/// Connect call and prints what happened.
#[test]
fn peer_client_helper() {
    let Ok(addr) = std::env::var("WEDGE_PEER_ADDR") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt.block_on(async {
        let mut c = wedge::ttrpc::Client::connect(&addr)
            .await
            .map_err(|e| e.to_string())?;
        c.call(
            "containerd.task.v2.Task",
            "Connect",
            ConnectRequest::new().write_to_bytes().unwrap(),
            &[],
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| e.to_string())
    });
    println!(
        "PEER-RESULT {}",
        if res.is_ok() { "accepted" } else { "refused" }
    );
}

#[test]
fn peers_with_another_uid_are_refused() {
    let env = Env::start(I);
    env.sleeper("peer");
    let sock = wedge::manager::socket_path(&env.address, &env.ns, "peer");
    let exe = std::env::current_exe().unwrap();
    let run_as_nobody = || {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe)
            .args([
                "--exact",
                "peer_client_helper",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("WEDGE_PEER_ADDR", &sock)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        stdout(&out)
    };
    // The socket's mode keeps other users out...
    assert!(run_as_nobody().contains("PEER-RESULT refused"));
    // ...and so does the shim's own credential check when the mode would not.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = run_as_nobody();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(out.contains("PEER-RESULT refused"), "{out}");
    // Root (the same uid as the shim) is served.
    let c: ConnectResponse = env
        .shim_call("peer", "Connect", &ConnectRequest::default())
        .unwrap();
    assert!(c.shim_pid > 0);
    env.finish("peer");
    env.assert_clean();
}

#[test]
fn load_200_containers_and_1000_execs_leave_nothing_behind() {
    let env = Env::start(I);
    // 200 containers in 10 groups of 20 (one shim each), 8 clients at a time.
    let ids: Vec<(String, String)> = (0..200)
        .map(|i| (format!("l{i}"), format!("group-{}", i % 10)))
        .collect();
    for (id, _) in &ids {
        env.track(id);
    }
    for chunk in ids.chunks(8) {
        let children: Vec<_> = chunk
            .iter()
            .map(|(id, g)| {
                env.ctr_cmd(&[
                    "run",
                    "-d",
                    "--runtime",
                    WEDGE_RUNTIME,
                    "--annotation",
                    &format!("io.containerd.runc.v2.group={g}"),
                    IMAGE,
                    id,
                    "sleep",
                    "600",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let shims: Vec<u32> = processes()
        .into_iter()
        .filter(|(_, c)| {
            c.contains(&env.address) && c.contains("containerd-shim") && !c.ends_with(" start")
        })
        .map(|(p, _)| p)
        .collect();
    assert_eq!(shims.len(), 10, "one shim per group");
    let shim = env.shim_pid("l0").unwrap();
    let before = settled_threads_and_fds(shim);
    // 1000 execs spread over the group of l0 (shim `shim`): 4 clients at a time.
    let targets: Vec<&str> = ids
        .iter()
        .filter(|(_, g)| g == "group-0")
        .map(|(id, _)| id.as_str())
        .collect();
    for batch in 0..250 {
        let children: Vec<_> = (0..4)
            .map(|k| {
                let n = batch * 4 + k;
                env.ctr_cmd(&[
                    "task",
                    "exec",
                    "--exec-id",
                    &format!("x{n}"),
                    targets[n % targets.len()],
                    "true",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads_and_fds(shim) != before {
        assert!(
            Instant::now() < deadline,
            "before {before:?}, after {:?}",
            threads_and_fds(shim)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // No zombies under any shim.
    for s in &shims {
        let children =
            std::fs::read_to_string(format!("/proc/{s}/task/{s}/children")).unwrap_or_default();
        for c in children.split_whitespace() {
            let stat = std::fs::read_to_string(format!("/proc/{c}/stat")).unwrap_or_default();
            assert!(
                !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z'),
                "zombie {c} under shim {s}"
            );
        }
    }
    for chunk in ids.chunks(20) {
        for (id, _) in chunk {
            let _ = env.ctr(&["task", "kill", "-s", "KILL", id]);
        }
        for (id, _) in chunk {
            env.wait_status(id, "STOPPED");
            assert!(env.ctr(&["task", "rm", id]).status.success());
            assert!(env.ctr(&["container", "rm", id]).status.success());
        }
    }
    env.assert_clean();
    let _ = std::io::stdout().flush();
}

/// Direct children of `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(p, _)| parent_of(*p) == Some(pid))
        .map(|(p, _)| p)
        .collect()
}

/// An OCI runtime whose `kill` and `delete` hang forever (a wedged cgroup, a
/// frozen process, a runtime bug) never leaves a container unkillable: past
/// the kill bound the shim kills it itself (pidfd, then the whole cgroup),
/// the exit is 137, Delete goes on past its bound, and nothing piles up.
#[test]
fn a_hung_runtime_never_leaves_a_container_unkillable() {
    use wedge::service::task::{DELETE_BOUND, KILL_BOUND};
    let grace = slack(Duration::from_secs(3));
    let env = Env::start(Install::DropIn);
    let rt = env.hang_runc().display().to_string();
    let group = "io.containerd.runc.v2.group=hung";
    let run_d = |id: &str| {
        let out = env.run(
            id,
            &["-d", "--runc-binary", &rt, "--annotation", group],
            &["sleep", "600"],
        );
        assert!(out.status.success(), "{id}: {}", stderr(&out));
    };
    // An anchor keeps the group's shim alive for the before/after counts.
    run_d("anchor");
    env.wait_status("anchor", "RUNNING");
    let shim = env.shim_pid("anchor").expect("shim");
    let before = settled_threads_and_fds(shim);

    run_d("victim");
    env.wait_status("victim", "RUNNING");
    env.set_hang("kill", true);
    env.set_hang("delete", true);
    let t = Instant::now();
    let out = env.ctr(&["task", "kill", "-s", "KILL", "victim"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("victim", "STOPPED");
    let took = t.elapsed();
    assert!(took < KILL_BOUND + grace, "the kill took {took:?}");
    assert_eq!(env.state("victim", "").exit_status, 137);
    let t = Instant::now();
    let out = env.ctr(&["task", "rm", "victim"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        t.elapsed() < DELETE_BOUND + grace,
        "delete took {:?}: {}",
        t.elapsed(),
        env.containerd_log()
            .lines()
            .filter(|l| l.contains("victim"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(env
        .containerd_log()
        .contains("runtime delete did not finish"));

    // 100 Stats while a kill hangs: answered, no process or memory piles up.
    run_d("stats");
    env.wait_status("stats", "RUNNING");
    let anon0 = anon_kb(shim);
    let mut kill = env
        .ctr_cmd(&["task", "kill", "-s", "KILL", "stats"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hung_runtime_calls(shim).1.len(), 1, "the kill hangs");
    for _ in 0..100 {
        let _: StatsResponse = env
            .shim_call(
                "stats",
                "Stats",
                &StatsRequest {
                    id: "stats".into(),
                    ..Default::default()
                },
            )
            .unwrap();
    }
    let kids = children_of(shim);
    assert!(
        kids.len() <= 1 + 3,
        "runtime processes piled up under the shim: {kids:?}"
    );
    assert!(
        anon_kb(shim) < anon0 + 512,
        "anonymous memory grew from {anon0} kB to {} kB",
        anon_kb(shim)
    );
    assert!(kill.wait().unwrap().success());
    env.wait_status("stats", "STOPPED");

    // 50 more kills through the hung runtime (deletes no longer hang).
    env.set_hang("delete", false);
    assert!(env.ctr(&["task", "rm", "stats"]).status.success());
    let ids: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    for id in &ids {
        run_d(id);
    }
    for id in &ids {
        env.wait_status(id, "RUNNING");
    }
    for batch in ids.chunks(25) {
        let kills: Vec<_> = batch
            .iter()
            .map(|id| {
                env.ctr_cmd(&["task", "kill", "-s", "KILL", id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut k in kills {
            assert!(k.wait().unwrap().success());
        }
    }
    for id in &ids {
        env.wait_status(id, "STOPPED");
        assert_eq!(env.state(id, "").exit_status, 137, "{id}");
        assert!(env.ctr(&["task", "rm", id]).status.success(), "{id}");
    }
    env.set_hang("kill", false);
    // The shim retried the hung `runtime delete` of the victim until the
    // runtime answered again: its state is gone too.
    let state = Path::new("/run/containerd/runc")
        .join(&env.ns)
        .join("victim");
    let deadline = Instant::now() + Duration::from_secs(30);
    while state.exists()
        || !env
            .containerd_log()
            .contains("victim: runtime delete done on retry")
    {
        assert!(
            Instant::now() < deadline,
            "{} is left: {}",
            state.display(),
            env.containerd_log()
                .lines()
                .filter(|l| l.contains("victim") || l.contains("retr"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hung_runtime_calls(shim).1.is_empty() || threads_and_fds(shim) != before {
        assert!(
            Instant::now() < deadline,
            "left: runtime calls {:?}; threads and fds {:?}, before {before:?}",
            hung_runtime_calls(shim),
            threads_and_fds(shim)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Only the anchor's processes are left in the namespace's cgroups.
    let anchor = env.state("anchor", "").pid;
    let left: Vec<u32> = pids_in_namespace_cgroup(&env.ns)
        .into_iter()
        .filter(|p| *p != anchor)
        .collect();
    assert!(left.is_empty(), "container processes left: {left:?}");
    for id in ["victim", "stats"]
        .into_iter()
        .chain(ids.iter().map(|s| s.as_str()))
    {
        let _ = env.ctr(&["container", "rm", id]);
    }
    env.finish("anchor");
    env.assert_clean();
    // No runtime call outlived its caller (orphans are reparented to init).
    let orphans: Vec<u32> = hung_runtime_calls(1).1;
    assert!(orphans.is_empty(), "orphaned runtime calls: {orphans:?}");
}

/// Events the shim kept while containerd was down outlive the shim: killed
/// with SIGKILL, it leaves its event store, and `shim delete` (which
/// containerd runs when it finds the dead shim) says what it found (and the
/// OOM recorded beside the exit) in containerd's log, and removes it.
#[test]
fn kept_events_outlive_a_killed_shim() {
    let mut env = Env::start(I);
    let out = env.run(
        "oomed",
        &["-d", "--memory-limit", "33554432"],
        &[
            "sh",
            "-c",
            "sleep 3; dd if=/dev/zero of=/dev/null bs=64M count=4",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let addr = std::fs::read_to_string(env.bundle("oomed").join("address")).unwrap();
    let store =
        wedge::events::Store::for_socket(Path::new(addr.trim().trim_start_matches("unix://")));
    let shim = env.shim_pid("oomed").unwrap();
    env.kill_containerd();
    // The OOM and the exit happen, and the retries run out.
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.load().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "the events were not kept");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(Command::new("kill")
        .args(["-9", &shim.to_string()])
        .status()
        .unwrap()
        .success());
    env.start_containerd();
    let want = "the shim left 2 events containerd had not taken (/tasks/oom, /tasks/exit)";
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(env.containerd_log().contains(want)
        && env
            .containerd_log()
            .contains("oomed: the container was OOM-killed"))
    {
        assert!(
            Instant::now() < deadline,
            "shim delete did not report the kept events: {}",
            env.containerd_log()
                .lines()
                .filter(|l| l.contains("oomed") || l.contains("cleanup"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!store.path().exists(), "the store is removed");
    let _ = env.ctr(&["task", "rm", "oomed"]);
    assert!(env.ctr(&["container", "rm", "oomed"]).status.success());
    env.assert_clean();
}

/// `kill --all` after init's exit (containerd's Delete asks for it after
/// every CRI container's exit) signals the cgroup's processes: when none is
/// left, it is answered without a runtime call, so even a runtime whose
/// `kill` hangs does not hold it.
#[test]
fn kill_all_with_nothing_left_needs_no_runtime() {
    use wedge::service::task::KILL_BOUND;
    let env = Env::start(Install::DropIn);
    let rt = env.hang_runc().display().to_string();
    let group = "io.containerd.runc.v2.group=killall";
    let out = env.run(
        "anchor",
        &["-d", "--runc-binary", &rt, "--annotation", group],
        &["sleep", "600"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(
        "brief",
        &["-d", "--runc-binary", &rt, "--annotation", group],
        &["sh", "-c", "sleep 1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("brief", "STOPPED");
    let shim = env.shim_pid("anchor").expect("shim");
    env.set_hang("kill", true);
    let t = Instant::now();
    let out = env.ctr(&["task", "kill", "--all", "-s", "KILL", "brief"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        t.elapsed() < KILL_BOUND,
        "kill --all took {:?}",
        t.elapsed()
    );
    assert!(
        hung_runtime_calls(shim).1.is_empty(),
        "the runtime was called"
    );
    env.set_hang("kill", false);
    assert!(env.ctr(&["task", "rm", "brief"]).status.success());
    assert!(env.ctr(&["container", "rm", "brief"]).status.success());
    env.finish("anchor");
    env.assert_clean();
}
