//! Output integrity under a real containerd: every byte a process writes
//! before it exits reaches the client, counted end to end. A fast producer
//! writes a 1 MiB burst right before its exit, many runs in a row, through
//! `ctr run --rm` and `ctr task exec`, on stdout, on stderr and through a
//! terminal; then 1 GiB through the FIFO. Each scenario runs with Wedge by
//! name and as the drop-in `containerd-shim-runc-v2`.

#[macro_use]
mod common;

use std::process::Stdio;

use common::*;

/// Runs per burst scenario.
const RUNS: usize = 50;
/// The burst: 1 MiB.
const BURST: usize = 1 << 20;

both_installs!(
    burst_before_exit_on_stdout,
    burst_before_exit_on_stderr,
    burst_before_exit_through_a_terminal,
    exec_burst_before_exit_on_stdout,
    exec_burst_before_exit_on_stderr,
    exec_burst_before_exit_through_a_terminal,
    one_gib_through_the_fifo,
);

/// A shell line that writes the burst of `x` (no newline, so a terminal
/// passes it unchanged) shortly after the client has attached.
fn burst_script(to_stderr: bool) -> String {
    let redirect = if to_stderr { " >&2" } else { "" };
    format!("sleep 0.2; head -c {BURST} /dev/zero | tr '\\0' x{redirect}")
}

/// Asserts that every run delivered exactly the burst; reports all short runs.
fn assert_all_complete(what: &str, got: &[usize]) {
    let short: Vec<(usize, usize)> = got
        .iter()
        .enumerate()
        .filter(|(_, n)| **n != BURST)
        .map(|(i, n)| (i, *n))
        .collect();
    assert!(
        short.is_empty(),
        "{what}: {} of {} runs were not byte-exact (run, bytes): {short:?}",
        short.len(),
        got.len()
    );
}

fn count_x(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| **b == b'x').count()
}

fn run_bursts(install: Install, to_stderr: bool) {
    let env = Env::start(install);
    let script = burst_script(to_stderr);
    let mut got = Vec::new();
    for i in 0..RUNS {
        let id = format!("b{i}");
        let out = env.run(&id, &["--rm"], &["sh", "-c", &script]);
        assert!(out.status.success(), "run {i}: {}", stderr(&out));
        let stream = if to_stderr { &out.stderr } else { &out.stdout };
        got.push(stream.len());
    }
    assert_all_complete("ctr run --rm", &got);
    env.assert_clean();
}

fn burst_before_exit_on_stdout(install: Install) {
    run_bursts(install, false)
}

fn burst_before_exit_on_stderr(install: Install) {
    run_bursts(install, true)
}

fn burst_before_exit_through_a_terminal(install: Install) {
    let env = Env::start(install);
    let script = burst_script(false);
    let mut got = Vec::new();
    for i in 0..RUNS {
        let id = format!("t{i}");
        env.track(&id);
        let out = in_terminal(&format!(
            "{} -a {} -n {} run -t --rm --runtime {} {IMAGE} {id} sh -c \"{script}\"",
            containerd_bin("ctr").display(),
            env.address,
            env.ns,
            install.runtime(),
        ));
        assert!(out.status.success(), "run {i}: {}", stderr(&out));
        got.push(count_x(&out.stdout));
    }
    assert_all_complete("ctr run -t --rm", &got);
    env.assert_clean();
}

fn exec_bursts(install: Install, to_stderr: bool) {
    let env = Env::start(install);
    env.sleeper("host");
    let script = burst_script(to_stderr);
    let mut got = Vec::new();
    for i in 0..RUNS {
        let exec_id = format!("e{i}");
        let out = env.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &exec_id,
            "host",
            "sh",
            "-c",
            &script,
        ]);
        assert!(out.status.success(), "exec {i}: {}", stderr(&out));
        let stream = if to_stderr { &out.stderr } else { &out.stdout };
        got.push(stream.len());
    }
    assert_all_complete("ctr task exec", &got);
    env.finish("host");
    env.assert_clean();
}

fn exec_burst_before_exit_on_stdout(install: Install) {
    exec_bursts(install, false)
}

fn exec_burst_before_exit_on_stderr(install: Install) {
    exec_bursts(install, true)
}

fn exec_burst_before_exit_through_a_terminal(install: Install) {
    let env = Env::start(install);
    env.sleeper("host");
    let script = burst_script(false);
    let mut got = Vec::new();
    for i in 0..RUNS {
        let out = in_terminal(&format!(
            "{} -a {} -n {} task exec -t --exec-id t{i} host sh -c \"{script}\"",
            containerd_bin("ctr").display(),
            env.address,
            env.ns,
        ));
        assert!(out.status.success(), "exec {i}: {}", stderr(&out));
        got.push(count_x(&out.stdout));
    }
    assert_all_complete("ctr task exec -t", &got);
    env.finish("host");
    env.assert_clean();
}

/// 1 GiB through the stdout FIFO, counted by a reader of ctr's stdout.
fn one_gib_through_the_fifo(install: Install) {
    const GIB: u64 = 1 << 30;
    let env = Env::start(install);
    for i in 0..10 {
        let id = format!("g{i}");
        env.track(&id);
        let mut child = env
            .ctr_cmd(&[
                "run",
                "--rm",
                "--runtime",
                install.runtime(),
                IMAGE,
                &id,
                "dd",
                "if=/dev/zero",
                "bs=64k",
                "count=16384",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut pipe = child.stdout.take().unwrap();
        let n = std::io::copy(&mut pipe, &mut std::io::sink()).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "run {i}: {status}");
        assert_eq!(n, GIB, "run {i}: {} bytes short", GIB - n);
    }
    env.assert_clean();
}

/// Lines `1..=n`, as the test containers print them.
fn numbered(n: u64) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

/// A detached container that waits for its client to leave, prints lines
/// `1..=n` as fast as it can, then marks `/tmp/done` and sleeps.
fn start_numbered_writer(env: &Env, id: &str, n: u64, extra: &[&str]) {
    let script =
        format!("sleep 1; i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo $i; done; touch /tmp/done; sleep 600");
    let mut args = vec!["-d"];
    args.extend_from_slice(extra);
    let out = env.run(id, &args, &["sh", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Waits until the container has written everything, with nobody reading
/// its output: it was never blocked for long.
fn wait_done_without_reader(env: &Env, id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for k in 0.. {
        let out = env.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &format!("probe{k}"),
            id,
            "test",
            "-f",
            "/tmp/done",
        ]);
        if out.status.success() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the container is blocked on output nobody reads"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Attaches a new `ctr task attach` client and collects its stdout until
/// `want` bytes arrived or nothing came for `quiet`.
fn attach_and_read(env: &Env, id: &str, want: usize, quiet: std::time::Duration) -> Vec<u8> {
    use std::io::Read;
    let mut child = env
        .ctr_cmd(&["task", "attach", id])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pipe = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    while got.len() < want {
        match rx.recv_timeout(quiet) {
            Ok(chunk) => got.extend_from_slice(&chunk),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(rx);
    let _ = reader.join();
    got
}

/// Nobody reads for several seconds while the container writes 2 MB: the
/// container is not blocked, and a client that attaches later gets every
/// line, in order, once.
#[test]
fn spilled_output_is_replayed_in_order_when_a_reader_attaches() {
    const N: u64 = 300_000;
    let env = Env::start(Install::Wedge);
    start_numbered_writer(&env, "spiller", N, &[]);
    wait_done_without_reader(&env, "spiller");
    let want = numbered(N);
    let got = attach_and_read(
        &env,
        "spiller",
        want.len(),
        std::time::Duration::from_secs(10),
    );
    assert!(
        got == want.as_bytes(),
        "attached client got {} bytes, want {} (first difference at {:?})",
        got.len(),
        want.len(),
        got.iter().zip(want.as_bytes()).position(|(a, b)| a != b)
    );
    assert!(
        env.containerd_log()
            .contains("spiller stdout: output reader took nothing"),
        "the output did not go through the spill"
    );
    env.finish("spiller");
    env.assert_clean();
}

/// With a small spill cap (annotation), the container is still never
/// blocked; a later client gets an in-order prefix, and the shim logs how
/// many bytes it dropped.
#[test]
fn output_over_the_spill_cap_is_dropped_counted_and_logged() {
    const N: u64 = 300_000;
    let env = Env::start(Install::Wedge);
    start_numbered_writer(
        &env,
        "capped",
        N,
        &["--annotation", "wedge.output-spill-max=100k"],
    );
    wait_done_without_reader(&env, "capped");
    let want = numbered(N);
    let got = attach_and_read(
        &env,
        "capped",
        want.len(),
        std::time::Duration::from_secs(3),
    );
    assert!(
        !got.is_empty() && want.as_bytes().starts_with(&got),
        "the client got {} bytes that are not an in-order prefix",
        got.len()
    );
    // The FIFO's 64 KiB plus the 100 KiB spill, give or take a line.
    assert!(
        got.len() <= (64 + 100) * 1024 + 16,
        "more than the cap was kept: {}",
        got.len()
    );
    let dropped = want.len() - got.len();
    let needle = format!("dropped {dropped} bytes");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !env.containerd_log().contains(&needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "the shim did not log {needle:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    env.finish("capped");
    env.assert_clean();
}
