//! Faults a node really has, under a real containerd: too few file
//! descriptors, a log disk that fills, a full state directory, a tight
//! memory cgroup. The container never blocks or dies because of the shim,
//! nothing is lost without being counted and said, and the shim recovers by
//! itself when the fault goes away.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const I: Install = Install::Wedge;

/// The soft and hard `RLIMIT_NOFILE` of `pid`.
fn nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (f[0], f[1])
}

/// Sets the soft (and, when given, hard) fd limit of `pid`.
fn set_nofile(pid: u32, soft: u64, hard: Option<u64>) {
    let hard = hard.unwrap_or_else(|| nofile(pid).1);
    let out = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={soft}:{hard}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "prlimit --pid {pid} --nofile={soft}:{hard}: {}; {}",
        stderr(&out),
        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
    );
}

/// `ctr run -d` of a `sleep 600` in shim group `group`, bounded by `limit`.
fn run_in_group(env: &Env, id: &str, group: &str, limit: Duration) -> (Output, Duration) {
    env.track(id);
    let annotation = format!("io.containerd.runc.v2.group={group}");
    let args = [
        "run",
        "-d",
        "--runtime",
        WEDGE_RUNTIME,
        "--annotation",
        &annotation,
        IMAGE,
        id,
        "sleep",
        "600",
    ];
    bounded(env.ctr_cmd(&args), limit)
}

/// Runs `cmd` to its end, killing it past `limit`; its output and how long
/// it took.
fn bounded(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), start.elapsed())
}

/// An exec of `echo` in `id`: its output, bounded.
fn echo(env: &Env, id: &str, exec_id: &str, limit: Duration) -> (Output, Duration) {
    let args = ["task", "exec", "--exec-id", exec_id, id, "echo", exec_id];
    bounded(env.ctr_cmd(&args), limit)
}

#[test]
fn the_shim_raises_its_fd_limit_and_gives_what_it_starts_the_original() {
    // Installed as the Go shim (ctr's --runc-binary wants that runtime).
    let env = Env::start(Install::DropIn);
    // A containerd built with Go before 1.21 passes its raised limit on:
    // lower it, as a node's service manager would have it.
    let hard = nofile(env.containerd_pid()).1;
    set_nofile(env.containerd_pid(), CONTAINERD_SOFT_NOFILE, Some(hard));
    // A runtime that records the soft limit it was started with.
    let record = env.dir.path().join("runc-limits");
    let wrapper = env.dir.path().join("bin/limits-runc");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -Sn >> {}\nexec runc \"$@\"\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = env.run(
        "limits",
        &["-d", "--runc-binary", wrapper.to_str().unwrap()],
        &["sleep", "600"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("limits", "RUNNING");
    let shim = env.shim_pid("limits").unwrap();
    let (soft, hard) = nofile(shim);
    assert_eq!(
        soft, hard,
        "the shim's soft limit is raised to its hard one"
    );
    assert!(
        hard > CONTAINERD_SOFT_NOFILE,
        "the test needs room to raise"
    );
    let out = env.ctr(&["task", "exec", "--exec-id", "e", "limits", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = std::fs::read_to_string(&record).unwrap();
    let seen: Vec<&str> = seen.lines().collect();
    assert!(seen.len() >= 3, "create, start, exec: {seen:?}");
    assert!(
        seen.iter()
            .all(|l| *l == CONTAINERD_SOFT_NOFILE.to_string()),
        "every runtime call gets containerd's soft limit back: {seen:?}"
    );
    env.finish("limits");
    env.assert_clean();
}

/// Ten containers in one shim (over 100 fds), its fd limit lowered under
/// its feet: first the soft limit to 64 (the shim raises it again and
/// everything goes on), then the hard one too (new calls fail fast and
/// clearly, nothing hangs, and the exit of a container that ends meanwhile
/// is recorded and reported once the limit is back).
#[test]
fn a_shim_out_of_fds_answers_fast_loses_no_exit_and_recovers() {
    let env = Env::start(I);
    let limit = slack(Duration::from_secs(20));
    let ids: Vec<String> = (0..10).map(|i| format!("fd{i}")).collect();
    for id in &ids {
        let (out, _) = run_in_group(&env, id, "fds", limit);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    for id in &ids {
        env.wait_status(id, "RUNNING");
    }
    let shim = env.shim_pid("fd0").unwrap();
    let (_, fds) = threads_and_fds(shim);
    assert!(fds > 64, "ten containers hold {fds} fds");
    let (_, hard) = nofile(shim);

    // The soft limit alone: raised again at the next call.
    set_nofile(shim, 64, None);
    for i in 0..3 {
        let id = format!("fdnew{i}");
        let (out, _) = run_in_group(&env, &id, "fds", limit);
        assert!(out.status.success(), "{id}: {}", stderr(&out));
    }
    assert_eq!(nofile(shim).0, hard, "raised again");
    for id in &ids {
        let (out, _) = echo(&env, id, "soft", limit);
        assert!(out.status.success(), "{id}: {}", stderr(&out));
        assert_eq!(stdout(&out), "soft\n");
    }

    // The hard limit too (which nothing can raise again here: no
    // CAP_SYS_RESOURCE), just above what the shim holds: no room.
    let (_, fds) = threads_and_fds(shim);
    let low = fds as u64 + 1;
    set_nofile(shim, low, Some(low));
    let (out, took) = run_in_group(&env, "fdnone", "fds", limit);
    assert!(!out.status.success(), "created with no fd to spare");
    assert!(took < limit, "Create answered in {took:?}");
    let (out, took) = echo(&env, "fd1", "hard", limit);
    assert!(!out.status.success(), "exec with no fd to spare");
    assert!(took < limit, "Exec answered in {took:?}");
    assert!(
        stderr(&out).contains("too many open files"),
        "a clear error: {}",
        stderr(&out)
    );
    // Containers that end now (killed without the runtime, which cannot
    // start): each exit is recorded all the same.
    let ending: Vec<String> = ids[2..]
        .iter()
        .cloned()
        .chain((0..3).map(|i| format!("fdnew{i}")))
        .collect();
    let events = env.events();
    for id in &ending {
        let out = env.ctr(&["task", "kill", "-s", "KILL", id]);
        assert!(out.status.success(), "{id}: {}", stderr(&out));
    }
    for id in &ending {
        let record = env.bundle(id).join("init.exit");
        let deadline = Instant::now() + limit;
        while !record.exists() {
            assert!(Instant::now() < deadline, "no exit record for {id}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let line = std::fs::read_to_string(&record).unwrap();
        assert!(line.starts_with("137 "), "{id}: SIGKILL's status: {line}");
    }

    // Their fds freed, the shim serves again within the low limit (new
    // connections, cgroup reads, runtime calls; not an exec: runc cannot
    // give it the spec's 1024-fd limit above a hard limit now lower), and
    // every exit was reported once.
    let deadline = Instant::now() + limit;
    while threads_and_fds(shim).1 as u64 + 16 > low {
        assert!(Instant::now() < deadline, "the ended containers' fds stay");
        std::thread::sleep(Duration::from_millis(50));
    }
    for id in &ids[..2] {
        assert!(env.state(id, "").pid > 0, "State over a new connection");
        let out = env.ctr(&["task", "ps", id]);
        assert!(out.status.success(), "{id}: {}", stderr(&out));
    }
    for id in &ending {
        env.wait_status(id, "STOPPED");
        let exits = events
            .wait_for(id, &["/tasks/exit"])
            .into_iter()
            .filter(|t| t == "/tasks/exit")
            .count();
        assert_eq!(exits, 1, "{id}: one exit event");
    }
    let _ = env.ctr(&["container", "rm", "fdnone"]);
    for id in ids[..2].iter().chain(&ending) {
        env.finish(id);
    }
    env.assert_clean();
}

/// A tmpfs of `size` mounted at `dir` for as long as the guard lives.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Bytes the shim said it dropped for want of room, in its "room again"
/// lines, summed.
fn dropped_for_room(log: &str) -> Option<u64> {
    let counts: Vec<u64> = log
        .lines()
        .filter_map(|l| {
            if let Some(i) = l.find("room again after") {
                let (_, n) = l[i..].split_once(": ")?;
                n.split_whitespace().next()?.parse().ok()
            } else {
                let i = l.find("output ended with ")? + "output ended with ".len();
                l[i..].split_whitespace().next()?.parse().ok()
            }
        })
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// A `file://` log on a file system that fills during a burst: the
/// container goes on (it never blocks on its output), the shim says at
/// warning level which file has no room and, once there is room again, how
/// many bytes it dropped; writing resumes, and what is in the file plus what
/// was dropped is exactly what the container wrote.
#[test]
fn a_full_log_disk_drops_counted_output_and_resumes_when_room_returns() {
    let env = Env::start(I);
    let logs = Tmpfs::mount(&env.dir.path().join("logs"), "4m");
    let filler = logs.0.join("filler");
    std::fs::write(&filler, vec![1u8; 3 << 20]).unwrap();
    let log = logs.0.join("out.log");
    let burst: u64 = 8 << 20;
    let script = format!(
        "head -c {burst} /dev/zero; touch /burst-done; \
         while [ ! -e /go ]; do sleep 0.05; done; echo AFTER; exit 3"
    );
    let uri = format!("file://{}", log.display());
    let out = env.run("full", &["-d", "--log-uri", &uri], &["sh", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let limit = slack(Duration::from_secs(20));
    // The burst ends although the disk is full: the container is not held.
    let (out, _) = bounded(
        env.ctr_cmd(&[
            "task",
            "exec",
            "--exec-id",
            "w",
            "full",
            "sh",
            "-c",
            "while [ ! -e /burst-done ]; do sleep 0.05; done",
        ]),
        limit,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = Instant::now() + limit;
    while !env
        .containerd_log()
        .contains("dropping output until it has room again")
    {
        assert!(
            Instant::now() < deadline,
            "no warning: {}",
            env.containerd_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        env.containerd_log()
            .contains(&format!("{}: no space left on device", log.display()))
            || env
                .containerd_log()
                .contains(&format!("{}: No space left on device", log.display())),
        "the warning names the file: {}",
        env.containerd_log()
    );
    // Room again; the container writes on.
    std::fs::remove_file(&filler).unwrap();
    let out = env.ctr(&["task", "exec", "--exec-id", "go", "full", "touch", "/go"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("full", "STOPPED");
    assert_eq!(env.state("full", "").exit_status, 3);
    let deadline = Instant::now() + limit;
    let dropped = loop {
        if let Some(n) = dropped_for_room(&env.containerd_log()) {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "no count: {}",
            env.containerd_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let kept = std::fs::read(&log).unwrap();
    eprintln!(
        "full log disk: {} bytes written, {} kept, {dropped} dropped and counted",
        burst + 6,
        kept.len()
    );
    assert!(kept.ends_with(b"AFTER\n"), "writing resumed");
    assert!(dropped > 0, "the burst did not fit");
    assert_eq!(
        kept.len() as u64 + dropped,
        burst + 6,
        "kept {} + dropped {dropped}",
        kept.len()
    );
    env.finish("full");
    drop(logs);
    env.assert_clean();
}

/// A fast producer whose burst into a full `file://` log ends right at its
/// exit, many runs: every run, what is in the file plus what the shim says
/// it dropped is exactly what the container wrote, and the exit is the
/// container's own.
#[test]
fn a_burst_into_a_full_log_disk_right_before_exit_is_counted_every_run() {
    const RUNS: usize = 20;
    let env = Env::start(I);
    let logs = Tmpfs::mount(&env.dir.path().join("logs"), "1m");
    std::fs::write(logs.0.join("filler"), vec![1u8; 768 << 10]).unwrap();
    let burst: u64 = 512 << 10;
    let limit = slack(Duration::from_secs(20));
    let (mut kept_all, mut dropped_all) = (0u64, 0u64);
    for i in 0..RUNS {
        let (id, log) = (format!("burst{i}"), logs.0.join(format!("burst{i}.log")));
        let uri = format!("file://{}", log.display());
        let script = format!("head -c {burst} /dev/zero; exit 7");
        let out = env.run(&id, &["-d", "--log-uri", &uri], &["sh", "-c", &script]);
        assert!(out.status.success(), "{id}: {}", stderr(&out));
        env.wait_status(&id, "STOPPED");
        assert_eq!(env.state(&id, "").exit_status, 7, "{id}");
        let name = log.display().to_string();
        let deadline = Instant::now() + limit;
        let dropped = loop {
            let ours: String = env
                .containerd_log()
                .lines()
                .filter(|l| l.contains(&name))
                .map(|l| format!("{l}\n"))
                .collect();
            if ours.contains("output ended with") {
                break dropped_for_room(&ours).unwrap();
            }
            assert!(Instant::now() < deadline, "{id}: no count: {ours}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let kept = std::fs::metadata(&log).unwrap().len();
        assert!(dropped > 0, "{id}: the burst fit");
        assert_eq!(
            kept + dropped,
            burst,
            "{id}: kept {kept} + dropped {dropped}"
        );
        kept_all += kept;
        dropped_all += dropped;
        assert!(env.ctr(&["task", "rm", &id]).status.success());
        assert!(env.ctr(&["container", "rm", &id]).status.success());
        std::fs::remove_file(&log).unwrap();
    }
    eprintln!(
        "{RUNS} bursts of {burst} bytes right before exit into a full log disk: \
         {kept_all} kept, {dropped_all} dropped and counted"
    );
    drop(logs);
    env.assert_clean();
}

/// `ctr run -d` of `script` in `id` (the output FIFOs then have no reader).
fn detached(env: &Env, id: &str, group: Option<&str>, script: &str) {
    let annotation = group.map(|g| format!("io.containerd.runc.v2.group={g}"));
    let mut extra = vec!["-d"];
    if let Some(a) = &annotation {
        extra.extend(["--annotation", a]);
    }
    let out = env.run(id, &extra, &["sh", "-c", script]);
    assert!(out.status.success(), "{id}: {}", stderr(&out));
}

/// Waits (through an exec) until the file `path` exists in container `id`.
fn wait_file(env: &Env, id: &str, path: &str, limit: Duration) {
    let script = format!("while [ ! -e {path} ]; do sleep 0.05; done");
    let exec_id = format!("wait{}", path.replace('/', "-"));
    let (out, took) = bounded(
        env.ctr_cmd(&[
            "task",
            "exec",
            "--exec-id",
            &exec_id,
            id,
            "sh",
            "-c",
            &script,
        ]),
        limit,
    );
    assert!(
        out.status.success(),
        "{id}: {path} after {took:?}: {}",
        stderr(&out)
    );
}

fn free_bytes(dir: &std::path::Path) -> (u64, u64) {
    let out = Command::new("stat")
        .args(["-f", "-c", "%a %b %S"])
        .arg(dir)
        .output()
        .unwrap();
    let f: Vec<u64> = stdout(&out)
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    (f[0] * f[2], f[1] * f[2])
}

/// Twenty containers whose output readers are gone, each writing far more
/// than containerd's state directory (a small tmpfs, as `/run` is) can hold:
/// their spills stop with a quarter of it still free, the containers go on
/// and still exec, and the shims say why they drop.
#[test]
fn stalled_readers_never_fill_the_state_file_system() {
    let env = Env::start_with_state_tmpfs(I, "64m");
    let state = env.dir.path().join("state");
    let limit = slack(Duration::from_secs(60));
    let ids: Vec<String> = (0..20).map(|i| format!("st{i}")).collect();
    for id in &ids {
        detached(
            &env,
            id,
            None,
            "head -c 16777216 /dev/zero; touch /done; sleep 600",
        );
    }
    for id in &ids {
        wait_file(&env, id, "/done", limit);
    }
    let (free, size) = free_bytes(&state);
    let said = env
        .containerd_log()
        .lines()
        .filter(|l| l.contains("a spill leaves 1/4"))
        .count();
    eprintln!(
        "20 stalled streams × 16 MiB on a {size}-byte state tmpfs: {free} bytes free; {said} lines saying why bytes were dropped"
    );
    assert!(
        free >= size / 4 - (1 << 20),
        "{free} of {size} bytes free with twenty spills"
    );
    assert!(
        env.containerd_log()
            .contains("a spill leaves 1/4 of its file system available"),
        "the shims say why they drop"
    );
    // Everything still works: an exec's output, a container's exit.
    let (out, _) = echo(&env, "st7", "still", limit);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "still\n");
    for id in &ids {
        env.finish(id);
    }
    env.assert_clean();
}

/// A memory cgroup of `limit` for the shim (what `ShimCgroup` names),
/// removed when dropped; on cgroup v1 or v2.
struct MemoryCgroup(std::path::PathBuf);

impl MemoryCgroup {
    fn new(name: &str, limit: u64) -> MemoryCgroup {
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let (dir, file) = if v2 {
            (format!("/sys/fs/cgroup/{name}"), "memory.max")
        } else {
            (
                format!("/sys/fs/cgroup/memory/{name}"),
                "memory.limit_in_bytes",
            )
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), limit.to_string()).unwrap();
        MemoryCgroup(dir)
    }

    fn join(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    /// The most the cgroup has used, in bytes.
    fn peak(&self) -> Option<u64> {
        ["memory.peak", "memory.max_usage_in_bytes"]
            .iter()
            .find_map(|f| {
                std::fs::read_to_string(self.0.join(f))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
    }

    /// OOM kills in the cgroup so far.
    fn oom_kills(&self) -> u64 {
        ["memory.events", "memory.oom_control"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.0.join(f)).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.strip_prefix("oom_kill "))
                    .map(|n| n.trim().parse::<u64>().unwrap())
                    .collect::<Vec<_>>()
            })
            .sum()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A shim in a memory cgroup of 32 MiB (`ShimCgroup`), its containers'
/// readers gone while they write 3 × 32 MiB, and 100 execs: the spill
/// (tmpfs pages, charged to the shim) grows only while the cgroup uses a
/// quarter of its limit, leaving room for the runtime calls (in the same
/// cgroup); nothing is OOM-killed, and every exec's output arrives.
#[test]
fn a_shim_in_a_32_mib_memory_cgroup_survives_stalled_readers_and_100_execs() {
    let env = Env::start_with_state_tmpfs(I, "256m");
    let limit = slack(Duration::from_secs(60));
    let ids = ["mem0", "mem1", "mem2"];
    let script = "while [ ! -e /go ]; do sleep 0.05; done; \
                  head -c 33554432 /dev/zero; touch /done; sleep 600";
    for id in ids {
        detached(&env, id, Some("mem"), script);
    }
    let shim = env.shim_pid("mem0").unwrap();
    let cg = MemoryCgroup::new(&format!("{}-shim", env.ns), 32 << 20);
    cg.join(shim);
    for id in ids {
        let out = env.ctr(&["task", "exec", "--exec-id", "go", id, "touch", "/go"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    for id in ids {
        wait_file(&env, id, "/done", limit);
    }
    // Two at a time: each `runc exec` (and its `runc init`) is charged to
    // this cgroup too, kernel memory included on v2, and four at once
    // under the guest's slow emulation came near 32 MiB with the spill.
    for round in 0..50 {
        let children: Vec<_> = (0..2)
            .map(|k| {
                let id = ids[k % ids.len()];
                let n = format!("x{round}-{k}");
                env.ctr_cmd(&["task", "exec", "--exec-id", &n, id, "echo", &n])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (k, c) in children.into_iter().enumerate() {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}; the cgroup's peak {:?}, OOM kills {}",
                stderr(&out),
                cg.peak(),
                cg.oom_kills()
            );
            assert_eq!(stdout(&out), format!("x{round}-{k}\n"));
        }
    }
    assert!(alive(shim), "the shim lives");
    assert_eq!(
        cg.oom_kills(),
        0,
        "no OOM kill in the shim's cgroup (peak {:?})",
        cg.peak()
    );
    assert!(
        env.containerd_log()
            .contains("a spill on tmpfs stays within 1/4 of it"),
        "the shim says why it drops"
    );
    for id in ids {
        env.finish(id);
    }
    env.assert_clean();
    drop(cg);
}
