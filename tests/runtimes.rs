//! OCI runtimes other than runc, selected with `BinaryName` (ctr's
//! `--runc-binary`, which ctr only passes to io.containerd.runc.v2: Wedge
//! runs as the drop-in here).
//!
//! youki: built from crates.io with cgroup v1 support (scripts/build-youki);
//! it runs containers under Wedge like runc.
//!
//! crun: Debian 12's crun 1.8.1 refuses this machine's hybrid cgroup layout
//! ("cgroups in hybrid mode not supported, drop all controllers from
//! cgroupv2"), and the crun builds of Debian's newer suites need a newer glibc
//! than Debian 12 has. What can be tested is that Wedge drives crun, reports
//! its error verbatim with the right code, and leaves nothing behind.

mod common;

use common::*;

/// youki, built by scripts/build-youki (path in `WEDGE_YOUKI`).
fn youki() -> String {
    let p = std::env::var("WEDGE_YOUKI")
        .unwrap_or_else(|_| format!("{}/target/e2e/youki/bin/youki", env!("CARGO_MANIFEST_DIR")));
    assert!(
        std::path::Path::new(&p).exists(),
        "youki missing at {p}: run scripts/build-youki"
    );
    p
}

#[test]
fn youki_runs_containers_under_wedge() {
    let env = Env::start(Install::DropIn);
    let y = youki();
    let out = env.run(
        "y1",
        &["--rm", "--runc-binary", &y],
        &["sh", "-c", "echo hi from youki; echo e >&2; exit 5"],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hi from youki\n");
    assert_eq!(stderr(&out), "e\n");
    let out = env.run("y2", &["-d", "--runc-binary", &y], &["sleep", "600"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_status("y2", "RUNNING");
    let out = env.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e",
        "y2",
        "sh",
        "-c",
        "echo exec ok; exit 2",
    ]);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(2), "exec ok\n")
    );
    assert!(env.ctr(&["task", "pause", "y2"]).status.success());
    env.wait_status("y2", "PAUSED");
    assert!(env.ctr(&["task", "resume", "y2"]).status.success());
    env.wait_status("y2", "RUNNING");
    env.finish("y2");
    assert_eq!(env.ctr(&["task", "ls", "-q"]).stdout, b"");
    env.assert_clean();
}

#[test]
fn crun_is_driven_and_its_refusal_is_reported_cleanly() {
    let env = Env::start(Install::DropIn);
    let out = env.run(
        "cr",
        &["--rm", "--runc-binary", "/usr/bin/crun"],
        &["sh", "-c", "echo hello from crun"],
    );
    let err = stderr(&out);
    if out.status.success() {
        // A crun that supports this cgroup layout: it just works.
        assert_eq!(stdout(&out), "hello from crun\n");
    } else {
        assert!(
            err.contains("OCI runtime create failed: cgroups in hybrid mode not supported"),
            "{err}"
        );
    }
    let _ = env.ctr(&["container", "rm", "cr"]);
    env.assert_clean();
}
