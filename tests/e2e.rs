//! End-to-end: Wedge under a real containerd, driven by `ctr` and, for exact
//! error codes, by ttrpc calls to the shim's own socket. Every scenario runs
//! twice: installed as `containerd-shim-wedge-v2` and as a drop-in
//! `containerd-shim-runc-v2`.

#[macro_use]
mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim::shim::*;
use containerd_shim_protos::ttrpc::Code;
use containerd_shim_protos::types::task::Status;
use wedge::ttrpc::ClientError;

both_installs!(
    exit_codes,
    stdout_and_stderr_are_separate_and_complete,
    file_log_is_complete,
    detached_container_outlives_its_client,
    kill_wait_state_delete,
    error_codes,
    kill_after_runtime_deleted_the_container,
    events_are_published_in_order,
    dead_shim_is_cleaned_up_by_delete,
    an_image_of_81_layers_runs,
);

fn code_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Code {
    match r {
        Err(ClientError::Status { code, .. }) => code,
        other => panic!("expected an error status, got {other:?}"),
    }
}

fn exit_codes(install: Install) {
    let env = Env::start(install);
    for (id, script, want) in [("zero", "exit 0", 0), ("three", "exit 3", 3)] {
        let out = env.run(id, &["--rm"], &["sh", "-c", script]);
        assert_eq!(out.status.code(), Some(want), "{id}: {}", stderr(&out));
    }
    // Null IO: no FIFOs at all.
    let out = env.run(
        "nullio",
        &["--rm", "--null-io"],
        &["sh", "-c", "echo invisible; exit 5"],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(!stdout(&out).contains("invisible"));
    // Killed by SIGKILL from outside: 128 + 9.
    env.track("killed");
    let mut client = env
        .ctr_cmd(&[
            "run",
            "--rm",
            "--runtime",
            install.runtime(),
            IMAGE,
            "killed",
            "sleep",
            "60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    env.wait_status("killed", "RUNNING");
    assert!(env
        .ctr(&["task", "kill", "-s", "KILL", "killed"])
        .status
        .success());
    assert_eq!(client.wait().unwrap().code(), Some(137));
    env.assert_clean();
}

fn stdout_and_stderr_are_separate_and_complete(install: Install) {
    let env = Env::start(install);
    let out = env.run(
        "io",
        &["--rm"],
        &[
            "sh",
            "-c",
            "seq 1 200000; seq 1 3000 | sed s/^/err/ >&2; exit 0",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let want_out: String = (1..=200000).map(|i| format!("{i}\n")).collect();
    let want_err: String = (1..=3000).map(|i| format!("err{i}\n")).collect();
    assert!(
        stdout(&out) == want_out,
        "stdout differs ({} bytes, want {})",
        out.stdout.len(),
        want_out.len()
    );
    assert_eq!(stderr(&out), want_err);
    env.assert_clean();
}

fn file_log_is_complete(install: Install) {
    let env = Env::start(install);
    let log = env.dir.path().join("logs/sub/c.log");
    let uri = format!("file://{}", log.display());
    let out = env.run(
        "filelog",
        &["--rm", "--log-uri", &uri],
        &["sh", "-c", "seq 1 100000; seq 1 500 | sed s/^/e/ >&2"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&log).unwrap();
    let mut got: Vec<&str> = text.lines().collect();
    got.sort_unstable();
    let mut want: Vec<String> = (1..=100000)
        .map(|i| i.to_string())
        .chain((1..=500).map(|i| format!("e{i}")))
        .collect();
    want.sort_unstable();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "file log content differs");
    // Both streams arrive in order within themselves.
    let outs: Vec<u32> = text
        .lines()
        .filter(|l| !l.starts_with('e'))
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(outs.windows(2).all(|w| w[0] < w[1]));
    env.assert_clean();
}

fn detached_container_outlives_its_client(install: Install) {
    let env = Env::start(install);
    let out = env.run(
        "bg",
        &["-d"],
        &[
            "sh",
            "-c",
            "i=0; while true; do echo tick $i; echo tock $i >&2; i=$((i+1)); sleep 0.02; done",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // The client is gone; the container keeps writing and must not die of SIGPIPE.
    std::thread::sleep(Duration::from_millis(1500));
    env.wait_status("bg", "RUNNING");
    let st: StateResponse = env
        .shim_call(
            "bg",
            "State",
            &StateRequest {
                id: "bg".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::RUNNING);
    assert!(alive(st.pid));
    assert!(env
        .ctr(&["task", "kill", "-s", "KILL", "bg"])
        .status
        .success());
    env.wait_status("bg", "STOPPED");
    let st: StateResponse = env
        .shim_call(
            "bg",
            "State",
            &StateRequest {
                id: "bg".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(st.exit_status, 137);
    assert!(env.ctr(&["task", "rm", "bg"]).status.success());
    assert!(env.ctr(&["container", "rm", "bg"]).status.success());
    env.assert_clean();
}

fn kill_wait_state_delete(install: Install) {
    let env = Env::start(install);
    let out = env.run("kw", &["-d"], &["sleep", "600"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("kw", "RUNNING");
    let shim = env.shim_pid("kw").expect("shim daemon");
    let exe = std::fs::read_link(format!("/proc/{shim}/exe")).unwrap();
    let want = match install {
        Install::Wedge => "containerd-shim-wedge-v2",
        Install::DropIn => "containerd-shim-runc-v2",
    };
    assert_eq!(
        exe,
        env.dir.path().join("bin").join(want),
        "the shim is Wedge"
    );
    let threads = std::fs::read_to_string(format!("/proc/{shim}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Threads:")
                .map(|v| v.trim().parse::<u32>().unwrap())
        })
        .unwrap();
    assert!(threads <= 2, "shim runs {threads} threads");
    // oom_score_adj is containerd's + 1 (clamped), as the Go shim sets it.
    let score = |pid: u32| -> i32 {
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(
        score(shim),
        (score(env.containerd_pid()) + 1).clamp(-1000, 1000)
    );

    let state: StateResponse = env
        .shim_call(
            "kw",
            "State",
            &StateRequest {
                id: "kw".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(state.status.enum_value().unwrap(), Status::RUNNING);
    let ps = stdout(&env.ctr(&["task", "ps", "kw"]));
    assert!(ps.contains(&state.pid.to_string()), "ctr task ps: {ps}");

    // Wait blocks in one call while other calls are answered.
    let waiter = {
        let addr = std::fs::read_to_string(env.bundle("kw").join("address")).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut c = wedge::ttrpc::Client::connect(&addr).await.unwrap();
                let req = WaitRequest {
                    id: "kw".into(),
                    ..Default::default()
                };
                use containerd_shim_protos::protobuf::Message;
                let out = c
                    .call(
                        "containerd.task.v2.Task",
                        "Wait",
                        req.write_to_bytes().unwrap(),
                        &[],
                        Duration::from_secs(60),
                    )
                    .await
                    .unwrap();
                WaitResponse::parse_from_bytes(&out).unwrap()
            })
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let _: StateResponse = env
        .shim_call(
            "kw",
            "State",
            &StateRequest {
                id: "kw".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(!waiter.is_finished());
    assert!(t.elapsed() < Duration::from_secs(5));

    assert!(env
        .ctr(&["task", "kill", "-s", "KILL", "kw"])
        .status
        .success());
    let w = waiter.join().unwrap();
    assert_eq!(w.exit_status, 137);
    assert!(w.exited_at.is_some());
    let state: StateResponse = env
        .shim_call(
            "kw",
            "State",
            &StateRequest {
                id: "kw".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(state.status.enum_value().unwrap(), Status::STOPPED);
    assert_eq!(state.exit_status, 137);
    assert!(!alive(state.pid));

    // A second kill after exit is NotFound, through ctr and directly.
    let again = env.ctr(&["task", "kill", "-s", "KILL", "kw"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("not found"), "{}", stderr(&again));
    let direct: Result<Empty, _> = env.shim_call(
        "kw",
        "Kill",
        &KillRequest {
            id: "kw".into(),
            signal: 9,
            ..Default::default()
        },
    );
    assert_eq!(code_of(direct), Code::NOT_FOUND);

    assert!(env.ctr(&["task", "rm", "kw"]).status.success());
    assert!(env.ctr(&["container", "rm", "kw"]).status.success());
    // The shim exits once its last container is deleted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(shim) {
        assert!(Instant::now() < deadline, "shim {shim} still running");
        std::thread::sleep(Duration::from_millis(50));
    }
    env.assert_clean();
}

fn error_codes(install: Install) {
    let env = Env::start(install);
    let out = env.run("ec", &["-d"], &["sleep", "600"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("ec", "RUNNING");
    // The gRPC code of a call to the shim (Empty reads any response).
    fn code<M: containerd_shim_protos::protobuf::Message>(
        env: &Env,
        method: &str,
        req: &M,
    ) -> Code {
        match env.shim_call::<M, Empty>("ec", method, req) {
            Ok(_) => Code::OK,
            Err(ClientError::Status { code, .. }) => code,
            Err(e) => panic!("{method}: {e}"),
        }
    }
    let kill = |id: &str, signal: u32| KillRequest {
        id: id.into(),
        signal,
        ..Default::default()
    };
    let state = |exec_id: &str| StateRequest {
        id: "ec".into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    assert_eq!(code(&env, "Kill", &kill("nope", 9)), Code::NOT_FOUND);
    assert_eq!(code(&env, "Kill", &kill("ec", 99)), Code::INVALID_ARGUMENT);
    assert_eq!(
        code(
            &env,
            "State",
            &StateRequest {
                id: "nope".into(),
                ..Default::default()
            }
        ),
        Code::NOT_FOUND
    );
    assert_eq!(code(&env, "State", &state("x")), Code::NOT_FOUND);
    assert_eq!(
        code(
            &env,
            "Start",
            &StartRequest {
                id: "ec".into(),
                ..Default::default()
            }
        ),
        Code::UNKNOWN
    );
    assert_eq!(
        code(
            &env,
            "Delete",
            &DeleteRequest {
                id: "ec".into(),
                ..Default::default()
            }
        ),
        Code::FAILED_PRECONDITION
    );
    assert_eq!(
        code(&env, "NoSuchMethod", &Empty::new()),
        Code::UNIMPLEMENTED
    );
    let bundle = env.bundle("ec").display().to_string();
    let create = |id: &str, options: Option<Any>| CreateTaskRequest {
        id: id.into(),
        bundle: bundle.clone(),
        options: options.into(),
        ..Default::default()
    };
    let mut bad = Any::new();
    bad.type_url = "example.com/NotOptions".into();
    bad.value = vec![1, 2, 3];
    assert_eq!(
        code(&env, "Create", &create("other", Some(bad))),
        Code::INVALID_ARGUMENT
    );
    assert_eq!(
        code(&env, "Create", &create("ec", None)),
        Code::ALREADY_EXISTS
    );
    assert_eq!(
        code(&env, "Create", &create("../x", None)),
        Code::INVALID_ARGUMENT
    );
    // Malformed protobuf.
    let addr = std::fs::read_to_string(env.bundle("ec").join("address")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let malformed = rt.block_on(async {
        let mut c = wedge::ttrpc::Client::connect(&addr).await.unwrap();
        c.call(
            "containerd.task.v2.Task",
            "Kill",
            vec![0xff, 0xff, 0xff],
            &[],
            Duration::from_secs(10),
        )
        .await
    });
    assert!(
        matches!(
            malformed,
            Err(ClientError::Status {
                code: Code::INVALID_ARGUMENT,
                ..
            })
        ),
        "{malformed:?}"
    );
    // After all that the shim still serves its container.
    assert_eq!(code(&env, "State", &state("")), Code::OK);
    env.finish("ec");
    env.assert_clean();
}

fn kill_after_runtime_deleted_the_container(install: Install) {
    let env = Env::start(install);
    let out = env.run("gone", &["-d"], &["sleep", "600"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("gone", "RUNNING");
    let root = format!("/run/containerd/runc/{}", env.ns);
    let del = std::process::Command::new("runc")
        .args(["--root", &root, "delete", "--force", "gone"])
        .output()
        .unwrap();
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    let kill: Result<Empty, _> = env.shim_call(
        "gone",
        "Kill",
        &KillRequest {
            id: "gone".into(),
            signal: 9,
            ..Default::default()
        },
    );
    assert_eq!(code_of(kill), Code::NOT_FOUND);
    env.wait_status("gone", "STOPPED");
    assert!(
        env.ctr(&["task", "rm", "gone"]).status.success(),
        "delete after external runc delete"
    );
    assert!(env.ctr(&["container", "rm", "gone"]).status.success());
    env.assert_clean();
}

fn events_are_published_in_order(install: Install) {
    let env = Env::start(install);
    let events = env.events();
    let out = env.run("ev", &["--rm"], &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let want = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ];
    let topics = events.wait_for("ev", &want);
    let pos = |t: &str| topics.iter().position(|x| x == t).unwrap();
    assert!(
        pos(want[0]) < pos(want[1]) && pos(want[1]) < pos(want[2]) && pos(want[2]) < pos(want[3]),
        "{topics:?}"
    );
    assert!(
        events
            .lines("\"ev\"")
            .iter()
            .any(|l| l.contains("/tasks/exit") && l.contains("\"exit_status\":7")),
        "{:?}",
        events.lines("ev")
    );
    env.assert_clean();
}

fn dead_shim_is_cleaned_up_by_delete(install: Install) {
    let env = Env::start(install);
    let out = env.run("orphan", &["-d"], &["sleep", "600"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("orphan", "RUNNING");
    let bundle = env.bundle("orphan");
    assert!(std::fs::read_to_string(bundle.join("runtime")).is_ok());
    assert!(std::fs::read_to_string(bundle.join("options.json"))
        .unwrap()
        .contains("\"BinaryName\""));
    // containerd notices the dead shim and runs `shim delete`, which must
    // kill the container, delete its runtime state and unmount its rootfs.
    kill_shim_and_wait(&env, "orphan");
    let _ = env.ctr(&["task", "rm", "orphan"]);
    assert!(env.ctr(&["container", "rm", "orphan"]).status.success());
    env.assert_clean();
}

/// An image of 81 layers: containerd's overlay options for it pass a page,
/// so the shim mounts from the layers' common folder with relative
/// lowerdirs, as containerd does; every layer is there.
fn an_image_of_81_layers_runs(install: Install) {
    let env = Env::start(install);
    let tar = many_layers_tar();
    let out = env.ctr(&["images", "import", tar.to_str().unwrap()]);
    assert!(out.status.success(), "import: {}", stderr(&out));
    env.track("layered");
    let out = env.ctr(&[
        "run",
        "--rm",
        "--runtime",
        install.runtime(),
        MANY_LAYERS_IMAGE,
        "layered",
        "sh",
        "-c",
        "ls /layers | wc -l; cat /layers/1 /layers/80; echo written > /new; cat /new",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).split_whitespace().collect::<Vec<_>>(),
        ["80", "1", "80", "written"]
    );
    env.assert_clean();
}

/// Whether the shim serving `id` runs the binary at `path` (compared by
/// content: the file at its path may have been replaced since).
fn shim_runs(env: &Env, id: &str, path: &std::path::Path) -> bool {
    let pid = env
        .shim_pid(id)
        .unwrap_or_else(|| panic!("no shim for {id}"));
    std::fs::read(format!("/proc/{pid}/exe")).unwrap() == std::fs::read(path).unwrap()
}

/// Kills `id`'s shim; containerd then runs the installed binary's `shim
/// delete` on its bundle, removes the bundle and forgets the task. Returns
/// once it has.
fn kill_shim_and_wait(env: &Env, id: &str) {
    let pid = env.shim_pid(id).unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ls = stdout(&env.ctr(&["task", "ls"]));
        if !ls.lines().any(|l| l.starts_with(&format!("{id} "))) && !env.bundle(id).exists() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id}'s task stayed after its shim died: {ls}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node moves from containerd's Go shim to Wedge installed as the drop-in
/// and back, with containers running: after each move (and containerd's
/// restart) the containers of the other shim keep running and stay
/// manageable (exec, kill, exit codes), new containers run on the installed
/// binary, and a shim of the other kind that dies is cleaned up by the
/// installed binary's `shim delete` (container killed, rootfs unmounted,
/// nothing left).
#[test]
fn a_node_moves_between_the_go_shim_and_wedge_with_containers_running() {
    let mut env = Env::start(Install::Wedge);
    let run_d = |env: &Env, id: &str, cmd: &[&str]| {
        env.track(id);
        let mut args = vec!["run", "-d", "--runtime", RUNC_RUNTIME, IMAGE, id];
        args.extend_from_slice(cmd);
        let out = env.ctr(&args);
        assert!(out.status.success(), "{id}: {}", stderr(&out));
        env.wait_status(id, "RUNNING");
    };
    // Under the Go shim, installed as containerd-shim-runc-v2.
    env.install_runc_shim(false);
    env.kill_containerd();
    env.start_containerd();
    run_d(&env, "go-a", &["sleep", "600"]);
    run_d(&env, "go-b", &["sleep", "600"]);
    run_d(&env, "go-c", &["sh", "-c", "sleep 4; exit 7"]);
    let go = go_shim_binary();
    assert!(shim_runs(&env, "go-a", &go));

    // Wedge becomes the drop-in (the same path).
    env.install_runc_shim(true);
    env.kill_containerd();
    env.start_containerd();
    run_d(&env, "wedge-a", &["sleep", "600"]);
    run_d(&env, "wedge-b", &["sleep", "600"]);
    let wedge = env.dir.path().join("bin/containerd-shim-wedge-v2");
    assert!(shim_runs(&env, "wedge-a", &wedge));
    // The Go shims still serve their containers.
    let out = env.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "go-a",
        "sh",
        "-c",
        "echo in-go; exit 3",
    ]);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(3), "in-go\n"),
        "{}",
        stderr(&out)
    );
    env.wait_status("go-c", "STOPPED");
    let ls = stdout(&env.ctr(&["task", "ls"]));
    assert!(
        ls.lines()
            .any(|l| l.starts_with("go-c ") && l.contains("STOPPED")),
        "{ls}"
    );
    // A Go shim dies: Wedge's `shim delete` cleans its bundle up.
    kill_shim_and_wait(&env, "go-b");
    let (address, ns) = (env.address.clone(), env.ns.clone());
    let socket = move |id: &str| wedge::manager::socket_path(&address, &ns, id);
    assert!(
        !socket("go-b").exists(),
        "Wedge's delete left the dead Go shim's socket: {}",
        env.containerd_log()
            .lines()
            .filter(|l| l.contains("cleanup") || l.contains("go-b"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(env.ctr(&["container", "rm", "go-b"]).status.success());

    // Back to the Go shim (the same path again).
    env.install_runc_shim(false);
    env.kill_containerd();
    env.start_containerd();
    run_d(&env, "go-d", &["sleep", "600"]);
    assert!(shim_runs(&env, "go-d", &go));
    let out = env.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e2",
        "wedge-a",
        "sh",
        "-c",
        "echo in-wedge; exit 4",
    ]);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(4), "in-wedge\n"),
        "{}\n{}",
        stderr(&out),
        env.containerd_log()
            .lines()
            .filter(|l| l.contains("wedge-a") || l.contains("level=error"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A Wedge shim dies: the Go shim's `shim delete` cleans its bundle up.
    kill_shim_and_wait(&env, "wedge-b");
    assert!(env.ctr(&["container", "rm", "wedge-b"]).status.success());
    // (The Go shim's delete leaves a dead shim's socket file behind.)
    let _ = std::fs::remove_file(socket("wedge-b"));

    for id in ["go-a", "wedge-a", "go-d"] {
        env.finish(id);
    }
    let _ = env.ctr(&["task", "rm", "go-c"]);
    assert!(env.ctr(&["container", "rm", "go-c"]).status.success());
    env.assert_clean();
}
