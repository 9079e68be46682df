//! Upgrade in place under a real containerd: a second build of Wedge (the
//! same code, another version string) takes over running shims without a
//! container restarting and without containerd noticing; broken candidates
//! are refused or handed back from, and the old code serves on.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim::shim::*;

/// The version string of the second build.
fn next_version() -> String {
    format!("{}-next", wedge::VERSION)
}

/// Builds Wedge twice more, once per test run, sharing one target dir (so
/// only Wedge itself is compiled twice): with another version string, and
/// with a fault that makes it panic while restoring. Returns (next, faulty).
fn variants() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/upgrade-builds");
    std::fs::create_dir_all(&dir).unwrap();
    let (next, faulty) = (dir.join("next"), dir.join("faulty"));
    // One builder at a time (tests run as parallel processes).
    let lock = std::fs::File::create(dir.join("lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let me = std::fs::metadata(env!("CARGO_BIN_EXE_containerd-shim-wedge-v2"))
        .unwrap()
        .modified()
        .unwrap();
    let fresh = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.modified().unwrap() >= me);
    for (out, env) in [
        (&next, vec![("WEDGE_VERSION", next_version())]),
        (
            &faulty,
            vec![
                ("WEDGE_VERSION", "faulty".to_string()),
                ("WEDGE_FAULT", "panic-on-restore".to_string()),
            ],
        ),
    ] {
        if fresh(out) {
            continue;
        }
        let b = Command::new(env!("CARGO"))
            .args(["build", "--bin", "containerd-shim-wedge-v2", "--target-dir"])
            .arg(dir.join("target"))
            .current_dir(root)
            .envs(env)
            .output()
            .unwrap();
        assert!(
            b.status.success(),
            "build: {}",
            String::from_utf8_lossy(&b.stderr)
        );
        std::fs::copy(dir.join("target/debug/containerd-shim-wedge-v2"), out).unwrap();
    }
    (next, faulty)
}

fn current() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-wedge-v2"))
}

fn shim_name(env: &Env) -> &'static str {
    match env.install {
        Install::Wedge => "containerd-shim-wedge-v2",
        Install::DropIn => "containerd-shim-runc-v2",
    }
}

/// Installs `bin` at the env's shim path, replacing the file as `install`
/// does (running shims keep their old image).
fn install(env: &Env, bin: &Path) -> PathBuf {
    let dst = env.dir.path().join("bin").join(shim_name(env));
    let tmp = env.dir.path().join("bin").join(".shim.new");
    std::fs::copy(bin, &tmp).unwrap();
    std::fs::rename(&tmp, &dst).unwrap();
    dst
}

/// Runs the installed binary's `upgrade` command: success and output.
fn upgrade(env: &Env, args: &[&str]) -> (bool, String) {
    let t = std::time::Instant::now();
    let out = Command::new(env.dir.path().join("bin").join(shim_name(env)))
        .arg("upgrade")
        .args(args)
        .output()
        .unwrap();
    // (How long it took, for the record: shown with --nocapture.)
    eprintln!("upgrade {args:?}: {:?}", t.elapsed());
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The version a shim answers through its control service.
fn shim_version(env: &Env, id: &str) -> String {
    let addr = std::fs::read_to_string(env.bundle(id).join("address")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = wedge::ttrpc::Client::connect(&addr).await.unwrap();
        let b = c
            .call(
                wedge::upgrade::control::SERVICE,
                "Version",
                vec![],
                &[],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        let (v, _r): (String, String) = serde_json::from_slice(&b).unwrap();
        v
    })
}

/// Whether the shim `pid` runs the file installed at `path` now.
fn runs(pid: u32, path: &Path) -> bool {
    let a = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap();
    let b = std::fs::metadata(path).unwrap();
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

/// Every shim daemon of this env.
fn shims(env: &Env) -> Vec<u32> {
    let mut v: Vec<u32> = processes()
        .into_iter()
        .filter(|(_, c)| {
            c.contains(&env.address) && c.contains("containerd-shim") && !c.ends_with(" start")
        })
        .map(|(p, _)| p)
        .collect();
    v.sort_unstable();
    v
}

const NUMBERS: &str = "i=0; while :; do i=$((i+1)); echo $i; done";

/// Checks `text` is "1\n2\n…" up to its last complete line; returns how
/// many lines.
fn assert_numbered(what: &str, text: &str) -> usize {
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let mut n = 0usize;
    for (i, l) in complete.lines().enumerate() {
        assert_eq!(
            l,
            (i + 1).to_string(),
            "{what}: line {} is {l:?}: a gap or a duplicate",
            i + 1
        );
        n = i + 1;
    }
    n
}

/// Reads a child's stdout in a thread.
fn collect(child: &mut Child) -> std::thread::JoinHandle<String> {
    let mut out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

fn exec_ok(env: &Env, id: &str, exec_id: &str, cmd: &[&str]) -> String {
    let mut args = vec!["task", "exec", "--exec-id", exec_id, id];
    args.extend_from_slice(cmd);
    let out = env.ctr(&args);
    assert!(out.status.success(), "{id} {exec_id}: {}", stderr(&out));
    stdout(&out)
}

/// Twenty containers in all kinds of states, one upgrade: nothing restarts,
/// containerd notices nothing, no byte or exit is lost, and everything
/// works afterwards with the new binary.
#[test]
fn running_shims_are_upgraded_in_place() {
    let (next, _) = variants();
    let env = Env::start(Install::Wedge);
    let rt = WEDGE_RUNTIME;
    let events = env.events();

    // Numbered lines at full speed to an attached client's FIFO…
    env.track("lines");
    let mut lines = env
        .ctr_cmd(&["run", "--runtime", rt, IMAGE, "lines", "sh", "-c", NUMBERS])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines_out = collect(&mut lines);
    // …and to a binary:// logger.
    let logdir = env.dir.path().join("logger-out");
    std::fs::create_dir(&logdir).unwrap();
    let logger = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/loggers/record.sh");
    let uri = format!("binary://{}?dir={}", logger.display(), logdir.display());
    let out = env.run("logged", &["-d", "--log-uri", &uri], &["sh", "-c", NUMBERS]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Attached stdin, echoed.
    env.track("echo");
    let mut echo = env
        .ctr_cmd(&["run", "--runtime", rt, IMAGE, "echo", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut echo_in = echo.stdin.take().unwrap();
    let echo_out = collect(&mut echo);
    echo_in.write_all(b"before\n").unwrap();
    // A TTY exec (resized after the upgrade).
    env.sleeper("tty");
    let out = in_terminal(&format!(
        "{} -a {} -n {} task exec -d -t --exec-id t1 tty sleep 600",
        containerd_bin("ctr").display(),
        env.address,
        env.ns
    ));
    assert!(out.status.success(), "{}", stdout(&out));
    // Under a memory limit, pushed over it after the upgrade.
    let out = env.run(
        "oom",
        &["-d", "--memory-limit", "67108864"],
        &[
            "sh",
            "-c",
            "while [ ! -e /tmp/go ]; do sleep 0.1; done; dd if=/dev/zero of=/dev/null bs=128M count=1",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // A Wait issued before the upgrade (ctr run waits), answered after.
    env.track("waiter");
    let mut waiter = env
        .ctr_cmd(&[
            "run",
            "--runtime",
            rt,
            IMAGE,
            "waiter",
            "sh",
            "-c",
            "while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 7",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Ten in one shim, and plain sleepers.
    for i in 0..10 {
        let id = format!("g{i}");
        let out = env.run(
            &id,
            &["-d", "--annotation", "io.containerd.runc.v2.group=grp"],
            &["sleep", "600"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    env.sleeper("plain");
    for id in ["lines", "logged", "echo", "oom", "waiter", "g9", "plain"] {
        env.wait_status(id, "RUNNING");
    }

    let before_main = shims(&env);
    let inits: Vec<(String, u32)> = [
        "lines", "logged", "echo", "tty", "oom", "waiter", "g0", "g9", "plain",
    ]
    .iter()
    .map(|id| (id.to_string(), env.state(id, "").pid))
    .collect();
    let path = install(&env, &next);
    // Containers that exit around the handover (their shims start now:
    // one `ctr run -d` each, about a third of a second apart).
    let quick: Vec<String> = (0..5).map(|i| format!("q{i}")).collect();
    let mut starters = Vec::new();
    for (i, id) in quick.iter().enumerate() {
        env.track(id);
        let script = format!("sleep {}; exit {}", 0.6 + 0.15 * i as f64, 10 + i);
        starters.push(
            env.ctr_cmd(&["run", "-d", "--runtime", rt, IMAGE, id, "sh", "-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    for mut s in starters {
        assert!(s.wait().unwrap().success());
    }
    let t = Instant::now();
    let (ok, report) = upgrade(&env, &[]);
    let took = t.elapsed();
    assert!(ok, "{report}");
    let before: Vec<u32> = shims(&env)
        .into_iter()
        .filter(|p| before_main.contains(p))
        .collect();
    assert_eq!(before, before_main, "a shim changed pid");
    assert!(
        report.lines().filter(|l| l.ends_with(": ok")).count() >= before.len(),
        "{report}"
    );

    // Same shims, same containers; the new binary runs.
    for (id, pid) in &inits {
        assert_eq!(env.state(id, "").pid, *pid, "{id}");
        assert!(alive(*pid), "{id} died");
    }
    for pid in &before {
        assert!(runs(*pid, &path), "shim {pid} does not run the new binary");
    }
    assert_eq!(shim_version(&env, "plain"), next_version());
    assert_eq!(shim_version(&env, "g3"), next_version());
    let log = env.containerd_log();
    for bad in ["shim disconnected", "cleaning up"] {
        assert!(!log.contains(bad), "containerd saw {bad:?}");
    }

    // stdin still reaches the container; the TTY still resizes.
    echo_in.write_all(b"after\n").unwrap();
    drop(echo_in);
    let _: Empty = env
        .shim_call(
            "tty",
            "ResizePty",
            &ResizePtyRequest {
                id: "tty".into(),
                exec_id: "t1".into(),
                width: 123,
                height: 45,
                ..Default::default()
            },
        )
        .unwrap();
    let sizes = exec_ok(
        &env,
        "tty",
        "sz",
        &[
            "sh",
            "-c",
            "for t in /dev/pts/[0-9]*; do stty size < $t; done",
        ],
    );
    assert!(sizes.contains("45 123"), "{sizes}");

    // Exec, pause/resume, update and stats work.
    assert_eq!(exec_ok(&env, "plain", "e1", &["echo", "hi"]), "hi\n");
    assert!(env.ctr(&["task", "pause", "plain"]).status.success());
    env.wait_status("plain", "PAUSED");
    assert!(env.ctr(&["task", "resume", "plain"]).status.success());
    env.wait_status("plain", "RUNNING");
    let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
    any.value = br#"{"cpu":{"shares":512}}"#.to_vec();
    let _: Empty = env
        .shim_call(
            "plain",
            "Update",
            &UpdateTaskRequest {
                id: "plain".into(),
                resources: containerd_shim_protos::protobuf::MessageField::some(any),
                ..Default::default()
            },
        )
        .unwrap();
    let st: StatsResponse = env
        .shim_call(
            "plain",
            "Stats",
            &StatsRequest {
                id: "plain".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(st.stats.is_some());

    // The Wait from before the upgrade gets the real exit code; the OOM is
    // reported before its exit.
    exec_ok(&env, "waiter", "go", &["touch", "/tmp/go"]);
    assert_eq!(waiter.wait().unwrap().code(), Some(7));
    exec_ok(&env, "oom", "go", &["touch", "/tmp/go"]);
    events.wait_for("oom", &["/tasks/oom"]);
    let init_exit = |l: &String| l.contains("/tasks/exit") && l.contains("\"id\":\"oom\"");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !events.lines("\"oom\"").iter().any(init_exit) {
        assert!(Instant::now() < deadline, "no exit of oom's init");
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines_oom = events.lines("\"oom\"");
    let o = lines_oom
        .iter()
        .position(|l| l.contains("/tasks/oom"))
        .unwrap();
    let x = lines_oom.iter().position(init_exit).unwrap();
    assert!(o < x, "{lines_oom:?}");
    assert!(
        lines_oom[x].contains("\"exit_status\":137"),
        "{}",
        lines_oom[x]
    );

    // Exits around the handover: each reported once, with its code.
    for (i, id) in quick.iter().enumerate() {
        env.wait_status(id, "STOPPED");
        let exits: Vec<String> = events
            .lines(&format!("\"{id}\""))
            .into_iter()
            .filter(|l| l.contains("/tasks/exit"))
            .collect();
        assert_eq!(exits.len(), 1, "{id} (upgrade took {took:?}): {exits:?}");
        assert!(
            exits[0].contains(&format!("\"exit_status\":{}", 10 + i)),
            "{id}: {}",
            exits[0]
        );
    }

    // Numbered lines: no gap, no duplicate, and they went on after.
    std::thread::sleep(Duration::from_secs(1));
    for id in ["lines", "logged", "echo"] {
        let _ = env.ctr(&["task", "kill", "-s", "KILL", id]);
    }
    let _ = lines.wait();
    let text = lines_out.join().unwrap();
    let n = assert_numbered("FIFO", &text);
    assert!(n > 1000, "only {n} lines");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logdir.join("finished").exists() {
        assert!(Instant::now() < deadline, "logger did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let logged = std::fs::read_to_string(logdir.join("stdout")).unwrap();
    assert!(assert_numbered("logger", &logged) > 1000);
    let _ = echo.wait();
    assert_eq!(echo_out.join().unwrap(), "before\nafter\n");

    // Kill works; everything goes.
    for id in ["lines", "logged", "echo", "oom", "waiter"] {
        let _ = env.ctr(&["task", "rm", "-f", id]);
        let _ = env.ctr(&["container", "rm", id]);
    }
    for id in quick.iter() {
        assert!(env.ctr(&["task", "rm", id]).status.success());
        assert!(env.ctr(&["container", "rm", id]).status.success());
    }
    for i in 0..10 {
        env.finish(&format!("g{i}"));
    }
    for id in ["tty", "plain"] {
        env.finish(id);
    }
    env.assert_clean();
}

/// A candidate that fails at once, and one that panics while restoring:
/// every container keeps running, served by the old code, nothing is lost,
/// and the command says why.
#[test]
fn a_broken_new_binary_changes_nothing() {
    let (_, faulty) = variants();
    let env = Env::start(Install::Wedge);
    env.track("lines");
    let mut lines = env
        .ctr_cmd(&[
            "run",
            "--runtime",
            WEDGE_RUNTIME,
            IMAGE,
            "lines",
            "sh",
            "-c",
            NUMBERS,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines_out = collect(&mut lines);
    env.sleeper("keep");
    env.wait_status("lines", "RUNNING");
    let before = shims(&env);
    let old = current();

    // A binary that exits 1 at once: refused before anything stops.
    let broken = env.dir.path().join("broken");
    std::fs::write(&broken, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    install(&env, &broken);
    let installed = env.dir.path().join("bin").join(shim_name(&env));
    let (ok, out) = std::process::Command::new(&old)
        .arg("upgrade")
        .arg("-namespace")
        .arg(&env.ns)
        .arg(&installed)
        .output()
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
            )
        })
        .unwrap();
    assert!(!ok, "{out}");
    assert!(
        out.contains("not upgraded") && out.contains("-upgrade-check failed"),
        "{out}"
    );
    assert_eq!(shims(&env), before);
    assert_eq!(shim_version(&env, "keep"), wedge::VERSION);

    // A binary that panics while restoring: it goes back to the old image.
    install(&env, &faulty);
    let (ok, out) = upgrade(&env, &["-namespace", &env.ns]);
    assert!(!ok, "{out}");
    assert!(out.contains("panicked while restoring"), "{out}");
    assert_eq!(shims(&env), before, "a shim changed pid");
    assert_eq!(shim_version(&env, "keep"), wedge::VERSION);
    for pid in &before {
        assert!(!runs(
            *pid,
            &env.dir.path().join("bin").join(shim_name(&env))
        ));
    }
    assert_eq!(exec_ok(&env, "keep", "e1", &["echo", "ok"]), "ok\n");
    let log = env.containerd_log();
    assert!(
        !log.contains("shim disconnected"),
        "containerd saw a disconnect"
    );

    std::thread::sleep(Duration::from_millis(500));
    let _ = env.ctr(&["task", "kill", "-s", "KILL", "lines"]);
    let _ = lines.wait();
    assert!(assert_numbered("FIFO", &lines_out.join().unwrap()) > 1000);
    let _ = env.ctr(&["task", "rm", "-f", "lines"]);
    let _ = env.ctr(&["container", "rm", "lines"]);
    env.finish("keep");
    env.assert_clean();
}

/// Twenty upgrades back and forth between the two builds (one container by
/// id each time, the other shim by namespace): the shims' fds, threads and
/// anonymous memory stay where they were.
#[test]
fn upgrades_back_and_forth_leak_nothing() {
    let (next, _) = variants();
    let env = Env::start(Install::Wedge);
    env.sleeper("a");
    let out = env.run(
        "b",
        &[
            "-d",
            "--log-uri",
            &format!("file://{}", env.dir.path().join("b.log").display()),
        ],
        &["sh", "-c", "while :; do echo tick; sleep 0.1; done"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("b", "RUNNING");
    let shim = env.shim_pid("a").unwrap();
    // One round first, so both images have run (allocator, caches).
    install(&env, &next);
    assert!(upgrade(&env, &["-id", "a"]).0);
    install(&env, &current());
    assert!(upgrade(&env, &["-id", "a"]).0);
    // A leak is what grows with the rounds: anonymous memory (heap, not
    // the two binaries' code pages, which come and go with each exec),
    // fds and threads.
    // The upgrade command's own connections close a moment after it exits:
    // count once they have.
    let before = settled_threads_and_fds(shim);
    let anon = anon_kb(shim);
    for i in 0..20 {
        let bin = if i % 2 == 0 { &next } else { &current() };
        install(&env, bin);
        let (ok, out) = upgrade(&env, &["-namespace", &env.ns]);
        assert!(ok, "round {i}: {out}");
        assert_eq!(out.lines().count(), 2, "{out}");
    }
    assert_eq!(shim_version(&env, "a"), wedge::VERSION);
    assert_eq!(settled_threads_and_fds(shim), before, "threads and fds");
    let after = anon_kb(shim);
    assert!(
        after < anon + 64,
        "anonymous memory grew from {anon} kB to {after} kB over 20 upgrades"
    );
    assert_eq!(exec_ok(&env, "b", "e", &["echo", "ok"]), "ok\n");
    env.finish("a");
    env.finish("b");
    env.assert_clean();
}

/// Events the shim keeps for containerd (it is down) survive an upgrade in
/// place: the new image delivers them once containerd is back.
#[test]
fn kept_events_survive_an_upgrade_in_place() {
    let (next, _) = variants();
    let mut env = Env::start(Install::Wedge);
    let out = env.run("late", &["-d"], &["sh", "-c", "sleep 1; exit 3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let addr = std::fs::read_to_string(env.bundle("late").join("address")).unwrap();
    let store =
        wedge::events::Store::for_socket(Path::new(addr.trim().trim_start_matches("unix://")));
    let shim = env.shim_pid("late").unwrap();
    env.kill_containerd();
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.load().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the exit was not kept");
        std::thread::sleep(Duration::from_millis(200));
    }
    install(&env, &next);
    let (ok, out) = upgrade(&env, &[]);
    assert!(ok, "{out}");
    assert_eq!(env.shim_pid("late"), Some(shim));
    assert_eq!(shim_version(&env, "late"), next_version());
    assert!(
        !store.load().unwrap().is_empty(),
        "the kept events are still kept"
    );
    env.start_containerd();
    if containerd_version() >= (1, 7) {
        // containerd 1.7 and later delete, while they restore, a task whose
        // processes are gone (before they serve events): the shim's kept
        // events can then only be reported, in containerd's log.
        let want = "events containerd had not taken (/tasks/exit";
        let deadline = Instant::now() + Duration::from_secs(20);
        while !env.containerd_log().contains(want) {
            assert!(
                Instant::now() < deadline,
                "no report of the kept exit: {}",
                env.containerd_log()
                    .lines()
                    .filter(|l| l.contains("late") || l.contains("cleanup") || l.contains("kept"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    } else {
        let events = env.events();
        events.wait_for("late", &["/tasks/exit"]);
        let exit = events.lines("\"late\"");
        assert!(
            exit.iter()
                .any(|l| l.contains("/tasks/exit") && l.contains("\"exit_status\":3")),
            "{exit:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.path().exists() {
        assert!(Instant::now() < deadline, "the store was not emptied");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = env.ctr(&["task", "rm", "late"]);
    assert!(env.ctr(&["container", "rm", "late"]).status.success());
    env.assert_clean();
}
