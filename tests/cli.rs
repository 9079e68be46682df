//! The binary's command-line contract with containerd, without containerd:
//! flags, `start` (address only on stdout, socket file 0600, reuse by group),
//! the daemon's Shutdown, and an idempotent `delete`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::shim::{
    ConnectRequest, ConnectResponse, DeleteResponse, ShutdownRequest,
};

fn shim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_containerd-shim-wedge-v2"))
}

#[test]
fn version_and_missing_namespace() {
    let v = shim().arg("-v").output().unwrap();
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).contains("Version:"));
    let no_ns = shim().args(["-id", "x", "start"]).output().unwrap();
    assert_eq!(no_ns.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&no_ns.stderr),
        "shim namespace cannot be empty"
    );
    let bad = shim()
        .args(["-namespace", "n", "-bogus", "start"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

fn call<Req: Message, Resp: Message>(addr: &str, method: &str, req: &Req) -> Resp {
    common::ttrpc_call(addr, method, req).unwrap()
}

fn start_in(bundle: &Path, address: &str, id: &str) -> String {
    let out = shim()
        .args([
            "-namespace",
            "cli-test",
            "-address",
            address,
            "-publish-binary",
            "/bin/true",
            "-id",
            id,
            "start",
        ])
        .current_dir(bundle)
        .stdin(Stdio::null())
        .env_remove("TTRPC_ADDRESS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // containerd reads stdout and stderr combined: only the address may be there.
    assert!(
        out.stderr.is_empty(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn start_prints_only_the_address_and_groups_share_one_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let address = dir.path().join("containerd.sock").display().to_string();
    let group = r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#;
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("config.json"), group).unwrap();
    }
    let addr_a = start_in(&a, &address, "a");
    let expected = wedge::manager::socket_path(&address, "cli-test", "pod1");
    assert_eq!(addr_a, format!("unix://{}", expected.display()));
    assert_eq!(std::fs::read_to_string(a.join("address")).unwrap(), addr_a);
    let mode = std::fs::metadata(&expected).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let first: ConnectResponse = call(&addr_a, "Connect", &ConnectRequest::default());
    // Same group: same address, same daemon.
    let addr_b = start_in(&b, &address, "b");
    assert_eq!(addr_b, addr_a);
    assert_eq!(std::fs::read_to_string(b.join("address")).unwrap(), addr_a);
    let second: ConnectResponse = call(&addr_b, "Connect", &ConnectRequest::default());
    assert_eq!(first.shim_pid, second.shim_pid);
    assert_eq!(second.task_pid, 0);

    // Shutdown with no container: the daemon exits and removes its socket.
    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty =
        call(&addr_a, "Shutdown", &ShutdownRequest::default());
    let deadline = Instant::now() + Duration::from_secs(10);
    while expected.exists()
        || Path::new(&format!("/proc/{}", first.shim_pid))
            .join("exe")
            .exists()
    {
        assert!(
            Instant::now() < deadline,
            "daemon {} did not exit",
            first.shim_pid
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn delete_is_idempotent_and_reports_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("gone");
    std::fs::create_dir(&bundle).unwrap();
    let run = || {
        shim()
            .args([
                "-namespace",
                "cli-test-del",
                "-address",
                "/nonexistent.sock",
                "-id",
                "gone",
                "-bundle",
            ])
            .arg(&bundle)
            .arg("delete")
            .current_dir(&bundle)
            .output()
            .unwrap()
    };
    // Without the `runtime` record there is nothing to act on: an error.
    assert!(!run().status.success());
    std::fs::write(bundle.join("runtime"), "").unwrap();
    std::fs::write(bundle.join("init.pid"), "4242").unwrap();
    for _ in 0..2 {
        let out = run();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let resp = DeleteResponse::parse_from_bytes(&out.stdout).unwrap();
        assert_eq!((resp.pid, resp.exit_status), (4242, 137));
        assert!(resp.exited_at.is_some());
    }
    let _ = std::fs::remove_dir_all("/run/containerd/runc/cli-test-del");
}
