//! End-to-end tests of the rest of the Task API under a real containerd:
//! exec (exit codes, stdin, tty, churn), terminals and resize, CloseIO,
//! binary loggers, pause/resume, update, stats, OOM, checkpoint, grouping.

mod common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use containerd_shim_protos::cgroups::metrics::Metrics;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::shim::*;
use containerd_shim_protos::ttrpc::Code;
use containerd_shim_protos::types::task::Status;
use wedge::ttrpc::ClientError;

const I: Install = Install::Wedge;

#[test]
fn exec_exit_codes_stdin_events_and_pids() {
    let env = Env::start(I);
    let events = env.events();
    env.sleeper("ex");
    let out = env.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "ex",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");

    // stdin is relayed and CloseIO ends `cat`.
    let mut child = env
        .ctr_cmd(&["task", "exec", "--exec-id", "e2", "ex", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"through stdin\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(stdout(&out), "through stdin\n");

    // A detached exec shows up in Pids with its exec id.
    assert!(env
        .ctr(&[
            "task",
            "exec",
            "-d",
            "--exec-id",
            "bg",
            "ex",
            "sleep",
            "300"
        ])
        .status
        .success());
    let ps = stdout(&env.ctr(&["task", "ps", "ex"]));
    // ctr 1.6 prints `ExecID:bg`, 1.7 and later `exec_id:"bg"`.
    assert!(
        ps.contains("ExecID:bg") || ps.contains("exec_id:\"bg\""),
        "{ps}"
    );
    let bg = env.state("ex", "bg");
    assert_eq!(bg.status.enum_value().unwrap(), Status::RUNNING);
    // Exec kill by pid; a second kill is NotFound.
    let kill = |sig: u32| -> Result<Empty, ClientError> {
        env.shim_call(
            "ex",
            "Kill",
            &KillRequest {
                id: "ex".into(),
                exec_id: "bg".into(),
                signal: sig,
                ..Default::default()
            },
        )
    };
    kill(9).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.state("ex", "bg").status.enum_value().unwrap() != Status::STOPPED {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(env.state("ex", "bg").exit_status, 137);
    assert!(matches!(
        kill(9),
        Err(ClientError::Status {
            code: Code::NOT_FOUND,
            ..
        })
    ));

    // Duplicate exec id, bad spec, unknown exec.
    let mut any = Any::new();
    any.value = br#"{"args":["true"],"cwd":"/"}"#.to_vec();
    let dup = ExecProcessRequest {
        id: "ex".into(),
        exec_id: "bg".into(),
        spec: MessageField::some(any),
        ..Default::default()
    };
    let r: Result<Empty, _> = env.shim_call("ex", "Exec", &dup);
    assert!(
        matches!(
            r,
            Err(ClientError::Status {
                code: Code::ALREADY_EXISTS,
                ..
            })
        ),
        "{r:?}"
    );
    let mut any = Any::new();
    any.value = b"not json".to_vec();
    let bad = ExecProcessRequest {
        id: "ex".into(),
        exec_id: "x".into(),
        spec: MessageField::some(any),
        ..Default::default()
    };
    let r: Result<Empty, _> = env.shim_call("ex", "Exec", &bad);
    assert!(
        matches!(
            r,
            Err(ClientError::Status {
                code: Code::INVALID_ARGUMENT,
                ..
            })
        ),
        "{r:?}"
    );
    // An exec that was added but never started has no pid to signal.
    let mut any = Any::new();
    any.value = br#"{"args":["true"],"cwd":"/"}"#.to_vec();
    let idle = ExecProcessRequest {
        id: "ex".into(),
        exec_id: "idle".into(),
        spec: MessageField::some(any),
        ..Default::default()
    };
    let _: Empty = env.shim_call("ex", "Exec", &idle).unwrap();
    let r: Result<Empty, _> = env.shim_call(
        "ex",
        "Kill",
        &KillRequest {
            id: "ex".into(),
            exec_id: "idle".into(),
            signal: 9,
            ..Default::default()
        },
    );
    assert!(
        matches!(
            r,
            Err(ClientError::Status {
                code: Code::FAILED_PRECONDITION,
                ..
            })
        ),
        "{r:?}"
    );
    let _: DeleteResponse = env
        .shim_call(
            "ex",
            "Delete",
            &DeleteRequest {
                id: "ex".into(),
                exec_id: "idle".into(),
                ..Default::default()
            },
        )
        .unwrap();

    let topics = events.wait_for("ex", &["/tasks/exec-added", "/tasks/exec-started"]);
    let added = topics
        .iter()
        .position(|t| t == "/tasks/exec-added")
        .unwrap();
    let started = topics
        .iter()
        .position(|t| t == "/tasks/exec-started")
        .unwrap();
    let exit = topics.iter().position(|t| t == "/tasks/exit").unwrap();
    assert!(added < started && started < exit, "{topics:?}");
    assert!(events
        .lines("\"e1\"")
        .iter()
        .any(|l| l.contains("/tasks/exit") && l.contains("\"exit_status\":5")));
    env.finish("ex");
    env.assert_clean();
}

#[test]
fn exec_churn_leaves_no_threads_or_fds() {
    let env = Env::start(I);
    env.sleeper("churn");
    // Warm up, then measure.
    assert!(env
        .ctr(&["task", "exec", "--exec-id", "w", "churn", "true"])
        .status
        .success());
    let shim = env.shim_pid("churn").unwrap();
    let before = settled_threads_and_fds(shim);
    for i in 0..200 {
        let id = format!("s{i}");
        let out = env.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &id,
            "churn",
            "sh",
            "-c",
            "echo $0",
            &id,
        ]);
        assert!(out.status.success(), "{id}: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("{id}\n"));
    }
    // With stdin, too.
    for i in 0..20 {
        let id = format!("in{i}");
        let mut c = env
            .ctr_cmd(&["task", "exec", "--exec-id", &id, "churn", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut s = c.stdin.take().unwrap();
        s.write_all(id.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop(s);
        let out = c.wait_with_output().unwrap();
        assert_eq!(stdout(&out), id);
    }
    let children: Vec<_> = (0..50)
        .map(|i| {
            env.ctr_cmd(&[
                "task",
                "exec",
                "--exec-id",
                &format!("p{i}"),
                "churn",
                "sh",
                "-c",
                "exit 3",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
        })
        .collect();
    for mut c in children {
        assert_eq!(c.wait().unwrap().code(), Some(3));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = threads_and_fds(shim);
        if after == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "threads/fds before {before:?}, after {after:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(before.0 <= 2, "{} threads", before.0);
    // No FIFO or exec pid file is left in the bundle.
    let left: Vec<_> = std::fs::read_dir(env.bundle("churn"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pid") && n != "init.pid" || n.starts_with(".exec-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    env.finish("churn");
    env.assert_clean();
}

fn tty_cmd(env: &Env, rows: u32, cols: u32, args: &str) -> String {
    format!(
        "stty rows {rows} cols {cols}; {} -a {} -n {} {args}",
        containerd_bin("ctr").display(),
        env.address,
        env.ns
    )
}

#[test]
fn terminal_resize_and_large_output() {
    let env = Env::start(I);
    env.track("tty1");
    // ctr sends the client's terminal size with ResizePty right after Start.
    let out = in_terminal(&tty_cmd(
        &env,
        33,
        111,
        &format!(
            "run -t --rm --runtime {WEDGE_RUNTIME} {IMAGE} tty1 sh -c 'sleep 1; tty; stty size'"
        ),
    ));
    let text = stdout(&out);
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    assert!(text.contains("33 111"), "{text:?}");

    env.track("tty2");
    let out = in_terminal(&tty_cmd(
        &env,
        24,
        80,
        &format!("run -t --rm --runtime {WEDGE_RUNTIME} {IMAGE} tty2 seq 1 50000"),
    ));
    let text = stdout(&out);
    // `script` echoes the NUL the runtime writes first as "^@".
    let nums: Vec<&str> = text
        .lines()
        .map(|l| {
            l.trim_start_matches("^@")
                .trim_matches(|c| c == '\r' || c == '\0')
        })
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        nums.first(),
        Some(&"1"),
        "{:?}",
        &text[..text.len().min(200)]
    );
    assert_eq!(nums.last(), Some(&"50000"));
    assert_eq!(nums.len(), 50000);

    env.sleeper("ttyx");
    let out = in_terminal(&tty_cmd(
        &env,
        40,
        100,
        "task exec -t --exec-id t1 ttyx sh -c 'sleep 1; stty size'",
    ));
    assert!(stdout(&out).contains("40 100"), "{:?}", stdout(&out));
    // ResizePty directly, then read it back from inside.
    let out = in_terminal(&tty_cmd(
        &env,
        24,
        80,
        "task exec -d -t --exec-id t2 ttyx sleep 5",
    ));
    assert!(out.status.success(), "{}", stdout(&out));
    let _: Empty = env
        .shim_call(
            "ttyx",
            "ResizePty",
            &ResizePtyRequest {
                id: "ttyx".into(),
                exec_id: "t2".into(),
                width: 123,
                height: 45,
                ..Default::default()
            },
        )
        .unwrap();
    // Every pty in the container: t2's shows the new size.
    let out = env.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "t4",
        "ttyx",
        "sh",
        "-c",
        "for t in /dev/pts/[0-9]*; do stty size < $t; done",
    ]);
    assert!(stdout(&out).contains("45 123"), "{}", stdout(&out));
    env.finish("ttyx");
    env.assert_clean();
}

#[test]
fn closeio_ends_cat_in_init() {
    let env = Env::start(I);
    env.track("cat");
    let mut child = env
        .ctr_cmd(&[
            "run",
            "--rm",
            "--runtime",
            WEDGE_RUNTIME,
            IMAGE,
            "cat",
            "cat",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"line one\nline two\n").unwrap();
    // Close stdin once cat echoed it: the task is running by then. (ctr
    // arms its CloseIO on EOF only after NewTask returns; an EOF before
    // that, on a slow host, would never reach the shim.)
    let mut echoed = vec![0u8; 18];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut echoed)
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&echoed) + stdout(&out).as_str(),
        "line one\nline two\n"
    );
    env.assert_clean();
}

/// Writes 100,000 numbered lines to stdout and 2,000 to stderr.
const TWO_STREAMS: &[&str] = &["sh", "-c", "seq 1 100000; seq 1 2000 | sed s/^/e/ >&2"];

/// A logger's folder holds exactly what [`TWO_STREAMS`] wrote.
fn assert_two_streams(dir: &std::path::Path) {
    let want_out: String = (1..=100000).map(|i| format!("{i}\n")).collect();
    let want_err: String = (1..=2000).map(|i| format!("e{i}\n")).collect();
    assert!(
        std::fs::read_to_string(dir.join("stdout")).unwrap() == want_out,
        "stdout differs"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("stderr")).unwrap(),
        want_err
    );
}

#[test]
fn binary_logger_gets_exact_bytes_and_only_its_env() {
    let env = Env::start(I);
    let dir = run_with_logger(
        &env,
        "lg",
        "record.sh",
        TWO_STREAMS,
        Duration::from_secs(10),
    );
    assert_two_streams(&dir);
    let envs = std::fs::read_to_string(dir.join("env")).unwrap();
    let mut names: Vec<&str> = envs.lines().filter(|l| !l.is_empty()).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "CONTAINER_ID=lg".to_string(),
            format!("CONTAINER_NAMESPACE={}", env.ns)
        ]
    );
    env.assert_clean();
}

#[test]
fn a_binary_v2_logger_must_say_ready_with_a_byte() {
    let env = Env::start(I);
    // One that writes its byte gets every byte of both streams, written
    // just before the exit, run after run.
    for run in 0..10 {
        let dir = run_with_logger_scheme(
            &env,
            "binary-v2",
            &format!("l2-{run}"),
            "record-v2.sh",
            TWO_STREAMS,
            Duration::from_secs(10),
        );
        assert_two_streams(&dir);
    }

    // One that closes its ready pipe without a byte (fine for binary://)
    // has failed: the task is not created, the error says why, and the
    // logger is not left running.
    let (dir, uri) = logger_uri(&env, "binary-v2", "l2x", "record.sh");
    let out = env.run("l2x", &["--rm", "--log-uri", &uri], &["echo", "lost"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("logging binary did not call ready"),
        "{}",
        stderr(&out)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes()
        .iter()
        .any(|(_, c)| c.contains(dir.to_str().unwrap()))
    {
        assert!(Instant::now() < deadline, "the logger was left running");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = env.ctr(&["container", "rm", "l2x"]);
    env.assert_clean();
}

#[test]
fn a_crashing_logger_does_not_stop_the_container() {
    let env = Env::start(I);
    let logger = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/loggers/crash.sh");
    let uri = format!("binary://{}", logger.display());
    let out = env.run(
        "lc",
        &["--rm", "--log-uri", &uri],
        &["sh", "-c", "sleep 0.5; seq 1 300000; echo done >&2; exit 4"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    env.assert_clean();
}

#[test]
fn pause_resume_update_and_stats() {
    let env = Env::start(I);
    let events = env.events();
    env.sleeper("pr");
    assert!(env.ctr(&["task", "pause", "pr"]).status.success());
    env.wait_status("pr", "PAUSED");
    let freezer = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/freezer/{}/pr/freezer.state",
        env.ns
    ))
    .unwrap();
    assert_eq!(freezer.trim(), "FROZEN");
    // Exec is refused while paused.
    let out = env.ctr(&["task", "exec", "--exec-id", "no", "pr", "true"]);
    assert!(!out.status.success());
    assert!(env.ctr(&["task", "resume", "pr"]).status.success());
    env.wait_status("pr", "RUNNING");
    let topics = events.wait_for("pr", &["/tasks/paused", "/tasks/resumed"]);
    assert!(
        topics.iter().position(|t| t == "/tasks/paused")
            < topics.iter().position(|t| t == "/tasks/resumed")
    );

    // Update: the memory limit lands in the cgroup.
    let mut any = Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
    any.value = br#"{"memory":{"limit":52428800}}"#.to_vec();
    let _: Empty = env
        .shim_call(
            "pr",
            "Update",
            &UpdateTaskRequest {
                id: "pr".into(),
                resources: MessageField::some(any),
                ..Default::default()
            },
        )
        .unwrap();
    let mem_dir = format!("/sys/fs/cgroup/memory/{}/pr", env.ns);
    let limit = std::fs::read_to_string(format!("{mem_dir}/memory.limit_in_bytes")).unwrap();
    assert_eq!(limit.trim(), "52428800");

    // Stats: v1 metrics matching the cgroup files.
    assert!(env
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "burn",
            "pr",
            "sh",
            "-c",
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"
        ])
        .status
        .success());
    let r: StatsResponse = env
        .shim_call(
            "pr",
            "Stats",
            &StatsRequest {
                id: "pr".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let any = r.stats.unwrap();
    assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
    let m = Metrics::parse_from_bytes(&any.value).unwrap();
    let mem = m.memory.as_ref().unwrap();
    let usage = mem.usage.as_ref().unwrap();
    assert_eq!(usage.limit, 52428800);
    assert!(usage.usage > 0 && usage.max >= usage.usage, "{usage:?}");
    let file_usage: u64 = std::fs::read_to_string(format!("{mem_dir}/memory.usage_in_bytes"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        usage.usage.abs_diff(file_usage) < 4 << 20,
        "{} vs {file_usage}",
        usage.usage
    );
    let cpu = m.cpu.as_ref().unwrap().usage.as_ref().unwrap();
    assert!(cpu.total > 0 && !cpu.per_cpu.is_empty());
    let pids_file: u64 =
        std::fs::read_to_string(format!("/sys/fs/cgroup/pids/{}/pr/pids.current", env.ns))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    assert_eq!(m.pids.current, pids_file);
    assert!(m.pids.current >= 1);
    // ctr shows the same numbers.
    let metrics = stdout(&env.ctr(&["task", "metrics", "pr"]));
    assert!(
        metrics.contains("memory.limit_in_bytes    52428800"),
        "{metrics}"
    );
    env.finish("pr");
    env.assert_clean();
}

#[test]
fn oom_kill_is_reported_before_the_exit() {
    let env = Env::start(I);
    let events = env.events();
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
    assert_eq!(
        topics.iter().filter(|t| *t == "/tasks/oom").count(),
        1,
        "{topics:?}"
    );
    env.assert_clean();
}

/// containerd 2.3+'s CRI asks for Stats after a 137 exit, before Delete,
/// to read the OOM-kill count: the exited container's Stats still answer,
/// with the kill counted.
#[test]
fn stats_after_an_oom_exit_count_the_kill() {
    let env = Env::start(I);
    let out = env.run(
        "oomed",
        &["-d", "--memory-limit", "33554432"],
        &["sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=4"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("oomed", "STOPPED");
    assert_eq!(env.state("oomed", "").exit_status, 137);
    let r: StatsResponse = env
        .shim_call(
            "oomed",
            "Stats",
            &StatsRequest {
                id: "oomed".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let any = r.stats.unwrap();
    let kills = match any.type_url.as_str() {
        "io.containerd.cgroups.v1.Metrics" => {
            let m = Metrics::parse_from_bytes(&any.value).unwrap();
            m.memory_oom_control.oom_kill
        }
        "io.containerd.cgroups.v2.Metrics" => {
            let m =
                containerd_shim_protos::cgroups_v2::metrics::Metrics::parse_from_bytes(&any.value)
                    .unwrap();
            m.memory_events.oom_kill
        }
        other => panic!("stats of type {other}"),
    };
    assert!(kills >= 1, "OOM kills in Stats after the exit: {kills}");
    assert!(env.ctr(&["task", "rm", "oomed"]).status.success());
    assert!(env.ctr(&["container", "rm", "oomed"]).status.success());
    env.assert_clean();
}

/// The shim's fds once they have settled (a closed connection's fd goes a
/// moment after the client's).
fn settled_fds(shim: u32) -> usize {
    let mut last = threads_and_fds(shim).1;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = threads_and_fds(shim).1;
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Stats keeps a container's stat files open from the first call: a fixed
/// number of fds, the same after 1 call and after 100, and closed at the
/// container's Delete: deleting it frees exactly that many fds more than
/// deleting a twin that never had Stats.
#[test]
fn stat_files_stay_open_until_delete_and_no_longer() {
    let env = Env::start(I);
    let group = "io.containerd.runc.v2.group=stats";
    for id in ["st1", "st2", "st3"] {
        let out = env.run(id, &["-d", "--annotation", group], &["sleep", "600"]);
        assert!(out.status.success(), "{}", stderr(&out));
        env.wait_status(id, "RUNNING");
    }
    let shim = env.shim_pid("st1").unwrap();
    assert!(
        env.shim_pid("st2").is_none() && env.shim_pid("st3").is_none(),
        "one shim for the group"
    );
    let metrics = |id: &str| {
        let out = env.ctr(&["task", "metrics", id]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let before = settled_fds(shim);
    assert!(metrics("st1").contains("pids.current"));
    let kept = settled_fds(shim) - before;
    assert!(kept > 0, "the stat files are kept open");
    for _ in 0..100 {
        metrics("st1");
    }
    assert_eq!(settled_fds(shim), before + kept, "no fd per call");

    let fds = settled_fds(shim);
    env.finish("st2");
    let freed_without = fds - settled_fds(shim);
    let fds = settled_fds(shim);
    env.finish("st1");
    let freed_with = fds - settled_fds(shim);
    assert_eq!(
        freed_with,
        freed_without + kept,
        "Delete closes the {kept} stat files"
    );
    env.finish("st3");
    env.assert_clean();
}

#[test]
fn failed_checkpoint_names_the_criu_log() {
    let env = Env::start(I);
    env.sleeper("cp");
    let out = env.ctr(&["task", "checkpoint", "cp"]);
    let bundle = env.bundle("cp");
    let log = bundle.join("criu-dump.log");
    if out.status.success() {
        // CRIU worked on this kernel: the container keeps running.
        env.wait_status("cp", "RUNNING");
    } else {
        let err = stderr(&out);
        assert!(err.contains(&format!("path= {}", log.display())), "{err}");
        assert!(log.exists(), "the CRIU log is kept in the bundle");
        assert!(
            !bundle.join("work/criu-work").exists(),
            "the default work dir is removed"
        );
    }
    // The container is unharmed.
    let out = env.ctr(&["task", "exec", "--exec-id", "after", "cp", "echo", "alive"]);
    assert_eq!(stdout(&out), "alive\n");
    env.finish("cp");
    env.assert_clean();
}

/// A grouped shim outlives the bundle it started in (the first container's,
/// deleted): a runtime behind a shell wrapper still runs in a directory that
/// exists (its container's bundle), so nothing but the container's own
/// output reaches its log (found by the chaos run: "sh: 0: getcwd() failed"
/// at the top of a `file://` log).
#[test]
fn runtime_calls_run_in_the_bundle_of_their_container() {
    let env = Env::start(Install::DropIn);
    let rt = env.hang_runc().display().to_string();
    let group = "io.containerd.runc.v2.group=cwd";
    let run = |id: &str, extra: &[&str], cmd: &[&str]| {
        let mut a = vec!["--runc-binary", rt.as_str(), "--annotation", group];
        a.extend_from_slice(extra);
        let out = env.run(id, &a, cmd);
        assert!(out.status.success(), "{id}: {}", stderr(&out));
    };
    run("first", &["-d"], &["sleep", "600"]);
    run("anchor", &["-d"], &["sleep", "600"]);
    env.wait_status("anchor", "RUNNING");
    env.finish("first");
    let log = env.dir.path().join("second.log");
    let uri = format!("file://{}", log.display());
    run("second", &["-d", "--log-uri", &uri], &["echo", "only this"]);
    env.wait_status("second", "STOPPED");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&log).unwrap_or_default().is_empty() {
        assert!(Instant::now() < deadline, "no output");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "only this\n");
    env.finish("second");
    env.finish("anchor");
    env.assert_clean();
}

#[test]
fn a_group_shares_one_shim_until_the_last_container_goes() {
    let env = Env::start(I);
    let ann = "io.containerd.runc.v2.group=pod-a";
    for id in ["g1", "g2"] {
        let out = env.run(id, &["-d", "--annotation", ann], &["sleep", "600"]);
        assert!(out.status.success(), "{}", stderr(&out));
        env.wait_status(id, "RUNNING");
    }
    let a1 = std::fs::read_to_string(env.bundle("g1").join("address")).unwrap();
    let a2 = std::fs::read_to_string(env.bundle("g2").join("address")).unwrap();
    assert_eq!(a1, a2);
    let c1: ConnectResponse = env
        .shim_call(
            "g1",
            "Connect",
            &ConnectRequest {
                id: "g1".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let c2: ConnectResponse = env
        .shim_call(
            "g2",
            "Connect",
            &ConnectRequest {
                id: "g2".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(c1.shim_pid, c2.shim_pid);
    assert_ne!(c1.task_pid, c2.task_pid);
    let shim_count = processes()
        .iter()
        .filter(|(_, cmd)| {
            cmd.contains(&env.address)
                && cmd.contains("containerd-shim")
                && !cmd.ends_with(" start")
        })
        .count();
    assert_eq!(shim_count, 1);
    // Exits are matched per container; the shim stays while one is left.
    env.finish("g1");
    assert!(alive(c1.shim_pid));
    assert_eq!(
        env.state("g2", "").status.enum_value().unwrap(),
        Status::RUNNING
    );
    let out = env.ctr(&["task", "exec", "--exec-id", "x", "g2", "echo", "still here"]);
    assert_eq!(stdout(&out), "still here\n");
    env.finish("g2");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(c1.shim_pid) {
        assert!(Instant::now() < deadline, "group shim still running");
        std::thread::sleep(Duration::from_millis(50));
    }
    env.assert_clean();
}

#[test]
fn init_exit_in_a_shared_pid_namespace_kills_the_rest() {
    let env = Env::start(I);
    env.sleeper("host");
    let host_pid = env.state("host", "").pid;
    // A container that joins host's pid namespace: its init exits, leaving a
    // child behind that only `kill --all` can reach.
    let ns = format!("pid:/proc/{host_pid}/ns/pid");
    let out = env.run(
        "guest",
        &["-d", "--with-ns", &ns],
        &["sh", "-c", "sleep 600 & sleep 1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("guest", "STOPPED");
    let cg = format!("/sys/fs/cgroup/pids/{}/guest/cgroup.procs", env.ns);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = std::fs::read_to_string(&cg).unwrap_or_default();
        if procs.trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left in guest's cgroup: {procs}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(env.ctr(&["task", "rm", "guest"]).status.success());
    assert!(env.ctr(&["container", "rm", "guest"]).status.success());
    env.finish("host");
    env.assert_clean();
}

/// Init dies while an exec's Start is in flight (the runtime's `exec` is
/// slow): as the Go shim does, the shim holds init's exit (State `running`,
/// no `/tasks/exit`) until that Start has returned; the exec, whose Start
/// failed, stays `created`; then init's exit is reported as usual.
#[test]
fn init_exit_is_held_while_an_exec_is_being_started() {
    let env = Env::start(Install::DropIn);
    let events = env.events();
    let rt = env.hang_runc().display().to_string();
    let out = env.run("dying", &["-d", "--runc-binary", &rt], &["sleep", "600"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("dying", "RUNNING");
    let init_pid = env.state("dying", "").pid;
    let begun = env.set_slow_exec(6);
    let mut any = Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
    any.value = br#"{"args":["echo","hi"],"cwd":"/","env":["PATH=/bin"]}"#.to_vec();
    let exec = ExecProcessRequest {
        id: "dying".into(),
        exec_id: "slow".into(),
        spec: MessageField::some(any),
        ..Default::default()
    };
    let _: Empty = env.shim_call("dying", "Exec", &exec).unwrap();
    let addr = env.shim_address("dying");
    let starting = std::thread::spawn(move || {
        let r: Result<StartResponse, ClientError> = ttrpc_call(
            &addr,
            "Start",
            &StartRequest {
                id: "dying".into(),
                exec_id: "slow".into(),
                ..Default::default()
            },
        );
        r
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !begun.exists() {
        assert!(Instant::now() < deadline, "the runtime's exec never began");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(env
        .ctr(&["task", "kill", "-s", "KILL", "dying"])
        .status
        .success());
    while alive(init_pid) {
        assert!(Instant::now() < deadline, "init did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Init is gone, the exec's Start is still in flight: init's exit waits.
    let mut looked = 0;
    while !starting.is_finished() {
        let st = env.state("dying", "").status.enum_value().unwrap();
        if starting.is_finished() {
            break;
        }
        assert_eq!(st, Status::RUNNING, "init's exit was not held");
        assert!(
            !events.topics("dying").iter().any(|t| t == "/tasks/exit"),
            "init's exit published while an exec was being started"
        );
        looked += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        looked > 0,
        "the exec's Start returned before init was reaped"
    );
    let r = starting.join().unwrap();
    assert!(r.is_err(), "an exec started in a dead container: {r:?}");
    env.set_slow_exec(0);
    events.wait_for("dying", &["/tasks/exit"]);
    env.wait_status("dying", "STOPPED");
    assert_eq!(env.state("dying", "").exit_status, 137);
    assert_eq!(
        env.state("dying", "slow").status.enum_value().unwrap(),
        Status::CREATED
    );
    let _: DeleteResponse = env
        .shim_call(
            "dying",
            "Delete",
            &DeleteRequest {
                id: "dying".into(),
                exec_id: "slow".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(env.ctr(&["task", "rm", "dying"]).status.success());
    assert!(env.ctr(&["container", "rm", "dying"]).status.success());
    env.assert_clean();
}
