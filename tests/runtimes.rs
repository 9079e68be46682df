//! OCI runtimes other than runc, selected with `BinaryName` (ctr's
//! `--runc-binary`, which ctr only passes to io.containerd.runc.v2: Wedge
//! runs as the drop-in here).
//!
//! crun: Debian 12's crun 1.8.1 refuses this machine's hybrid cgroup layout
//! ("cgroups in hybrid mode not supported, drop all controllers from
//! cgroupv2"), and the crun builds of Debian's newer suites need a newer glibc
//! than Debian 12 has. What can be tested is that Wedge drives crun, reports
//! its error verbatim with the right code, and leaves nothing behind.

mod common;

use common::*;

#[test]
fn crun_is_driven_and_its_refusal_is_reported_cleanly() {
    let env = Env::start(Install::DropIn);
    env.track("cr");
    let out = env.ctr(&[
        "run",
        "--rm",
        "--runtime",
        env.install.runtime(),
        "--runc-binary",
        "/usr/bin/crun",
        IMAGE,
        "cr",
        "sh",
        "-c",
        "echo hello from crun",
    ]);
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
