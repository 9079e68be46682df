//! The binary's command-line contract with containerd, without containerd:
//! flags, `start` (address only on stdout, socket file 0600, reuse by group),
//! the daemon's Shutdown, and an idempotent `delete`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use containerd_shim_protos::shim::shim::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, ShutdownRequest, StartRequest, StartResponse, WaitRequest, WaitResponse,
};

fn shim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_containerd-shim-wedge-v2"))
}

#[test]
fn version_help_and_missing_namespace() {
    let v = shim().arg("-v").output().unwrap();
    assert!(v.status.success());
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(
        text.contains(&format!("Version:  {}", wedge::VERSION)),
        "{text}"
    );
    // The revision is the commit the binary was built from.
    let head = head_commit();
    assert!(text.contains(&format!("Revision: {head}\n")), "{text}");
    for flag in ["-h", "-help", "--help"] {
        let h = shim().arg(flag).output().unwrap();
        assert_eq!(h.status.code(), Some(0), "{flag}");
        let usage = String::from_utf8_lossy(&h.stdout);
        for word in [
            "start",
            "delete",
            "-info",
            "-namespace",
            "io.containerd.wedge.v2",
        ] {
            assert!(usage.contains(word), "{flag}: {word} missing from {usage}");
        }
    }
    let no_ns = shim().args(["-id", "x", "start"]).output().unwrap();
    assert_eq!(no_ns.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&no_ns.stderr),
        "shim namespace cannot be empty\n"
    );
    let bad = shim()
        .args(["-namespace", "n", "-bogus", "start"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.starts_with("io.containerd.wedge.v2: flag provided but not defined: -bogus\n"),
        "{err}"
    );
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
    forget_runc_root();
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
    // Without the `runtime` record (Create never began) nothing ran in the
    // runtime: nothing to delete there, the rest is cleaned up as usual.
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        DeleteResponse::parse_from_bytes(&out.stdout).unwrap().pid,
        0
    );
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

/// A Create that fails at the rootfs mount has already recorded the
/// runtime, so containerd's cleanup (`shim delete`) works; nothing stays
/// mounted. Options a shim must never get are refused as invalid.
#[test]
fn a_create_that_fails_at_the_mount_leaves_a_bundle_delete_cleans() {
    let dir = tempfile::tempdir().unwrap();
    let address = dir.path().join("containerd.sock").display().to_string();
    let bundle = dir.path().join("failed");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), "{}").unwrap();
    let addr = start_in(&bundle, &address, "failed");
    let create = |options: &[&str]| {
        let req = CreateTaskRequest {
            id: "failed".into(),
            bundle: bundle.display().to_string(),
            rootfs: vec![containerd_shim_protos::types::mount::Mount {
                type_: "nosuchfs".into(),
                source: "none".into(),
                options: options.iter().map(|o| o.to_string()).collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        common::ttrpc_call::<_, CreateTaskResponse>(&addr, "Create", &req).unwrap_err()
    };
    let err = create(&["ro"]);
    assert!(
        format!("{err:?}").contains("mount nosuchfs none on"),
        "{err:?}"
    );
    let err = create(&["X-containerd.mkdir.path=/x"]);
    assert!(
        matches!(
            err,
            wedge::ttrpc::ClientError::Status {
                code: containerd_shim_protos::ttrpc::Code::INVALID_ARGUMENT,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(bundle.join("runtime").exists());
    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty =
        call(&addr, "Shutdown", &ShutdownRequest::default());
    let out = shim()
        .args([
            "-namespace",
            "cli-test",
            "-address",
            &address,
            "-id",
            "failed",
            "delete",
        ])
        .current_dir(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(dir.path().to_str().unwrap()), "{mounts}");
    forget_runc_root();
}

/// A rootfs that a fuse snapshotter hands the shim (`fuse3.fuse-overlayfs`)
/// is mounted through `mount.fuse3`, as containerd's mount code runs it: the
/// container runs on it, its writes land in the upper dir, and Delete
/// unmounts it, which ends the fuse daemon (a child of the subreaper shim).
#[test]
fn a_fuse_rootfs_is_mounted_through_its_helper() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let address = d.join("containerd.sock").display().to_string();
    let bundle = d.join("fuse");
    let (lower, upper, work) = (d.join("lower"), d.join("upper"), d.join("work"));
    for p in [&bundle, &upper, &work] {
        std::fs::create_dir(p).unwrap();
    }
    for sub in ["bin", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(lower.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", lower.join("bin/busybox")).unwrap();
    for tool in ["sh", "grep"] {
        std::os::unix::fs::symlink("busybox", lower.join("bin").join(tool)).unwrap();
    }
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!([
        "/bin/sh",
        "-c",
        "grep ' / / ' /proc/self/mountinfo | grep -q ' - fuse.fuse-overlayfs ' && echo on-fuse > /written"
    ]);
    spec["root"]["readonly"] = false.into();
    spec["linux"]["cgroupsPath"] = "/cli-test-fuse".into();
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();

    let addr = start_in(&bundle, &address, "fuse");
    let req = CreateTaskRequest {
        id: "fuse".into(),
        bundle: bundle.display().to_string(),
        rootfs: vec![containerd_shim_protos::types::mount::Mount {
            type_: "fuse3.fuse-overlayfs".into(),
            source: "overlay".into(),
            options: vec![format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            )],
            ..Default::default()
        }],
        ..Default::default()
    };
    let _: CreateTaskResponse = call(&addr, "Create", &req);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let rootfs = bundle.join("rootfs");
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(&format!(" {} ", rootfs.display()))
                && l.contains(" - fuse.fuse-overlayfs ")),
        "{mounts}"
    );
    let fuse_daemons = || {
        common::processes()
            .into_iter()
            .filter(|(_, c)| c.contains("fuse-overlayfs") && c.contains(d.to_str().unwrap()))
            .count()
    };
    assert_eq!(fuse_daemons(), 1);
    let task = |id: &str| StartRequest {
        id: id.into(),
        ..Default::default()
    };
    let _: StartResponse = call(&addr, "Start", &task("fuse"));
    let w: WaitResponse = call(
        &addr,
        "Wait",
        &WaitRequest {
            id: "fuse".into(),
            ..Default::default()
        },
    );
    assert_eq!(
        w.exit_status, 0,
        "the root the container saw was not the fuse mount"
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("written")).unwrap(),
        "on-fuse\n"
    );
    let _: DeleteResponse = call(
        &addr,
        "Delete",
        &DeleteRequest {
            id: "fuse".into(),
            ..Default::default()
        },
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(d.to_str().unwrap()), "{mounts}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while fuse_daemons() > 0 {
        assert!(
            Instant::now() < deadline,
            "the fuse daemon outlived its mount"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty =
        call(&addr, "Shutdown", &ShutdownRequest::default());
    forget_runc_root();
}

/// The fields of a `RuntimeInfo` (`-info`'s output).
#[derive(Debug, Default, PartialEq)]
struct Info {
    name: String,
    version: String,
    revision: String,
    options: Option<Any>,
    features: Option<(String, serde_json::Value)>,
}

fn decode_info(raw: &[u8]) -> Info {
    use containerd_shim_protos::protobuf::rt::WireType;
    use containerd_shim_protos::protobuf::CodedInputStream;
    let fields = |raw: &[u8]| -> Vec<(u32, Vec<u8>)> {
        let mut is = CodedInputStream::from_bytes(raw);
        let mut v = Vec::new();
        while let Some(tag) = is.read_raw_tag_or_eof().unwrap() {
            assert_eq!(tag & 7, 2, "every RuntimeInfo field is length-delimited");
            v.push((tag >> 3, is.read_bytes().unwrap()));
        }
        let _ = WireType::LengthDelimited;
        v
    };
    let mut info = Info::default();
    for (n, b) in fields(raw) {
        match n {
            1 => info.name = String::from_utf8(b).unwrap(),
            2 => {
                for (m, s) in fields(&b) {
                    let s = String::from_utf8(s).unwrap();
                    match m {
                        1 => info.version = s,
                        _ => info.revision = s,
                    }
                }
            }
            3 => info.options = Some(Any::parse_from_bytes(&b).unwrap()),
            4 => {
                let a = Any::parse_from_bytes(&b).unwrap();
                info.features = Some((a.type_url, serde_json::from_slice(&a.value).unwrap()));
            }
            other => panic!("unexpected RuntimeInfo field {other}"),
        }
    }
    info
}

fn run_info(bin: &Path, stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut c = Command::new(bin)
        .arg("-info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin).unwrap();
    c.wait_with_output().unwrap()
}

fn runc_options(binary: &str) -> Any {
    let mut o = RuncOptions::new();
    o.binary_name = binary.into();
    let mut a = Any::new();
    a.type_url = "containerd.runc.v1.Options".into();
    a.value = o.write_to_bytes().unwrap();
    a
}

/// `-info` answers what containerd 2.x asks: the runtime's name, Wedge's
/// version and revision, the options it was given, and the OCI runtime's
/// `features`; field for field what the Go shim of the containerd under test
/// prints, where that Go shim has `-info` (containerd 2.x).
#[test]
fn info_reports_name_version_options_and_runtime_features() {
    let me = Path::new(env!("CARGO_BIN_EXE_containerd-shim-wedge-v2"));
    let opts = runc_options("runc");
    let out = run_info(me, &opts.write_to_bytes().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = decode_info(&out.stdout);
    assert_eq!(ours.name, "io.containerd.wedge.v2");
    assert_eq!(
        (ours.version.as_str(), ours.revision.as_str()),
        (wedge::VERSION, wedge::REVISION)
    );
    assert_eq!(ours.options.as_ref(), Some(&opts));
    let runc = Command::new("runc").arg("features").output().unwrap();
    let want: serde_json::Value = serde_json::from_slice(&runc.stdout).unwrap();
    let (url, features) = ours.features.clone().expect("features");
    assert_eq!(
        url,
        "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
    );
    assert_eq!(features, want);

    // The Go shim of the containerd under test, when it has -info.
    let go = common::containerd_bin("containerd-shim-runc-v2");
    let go_out = run_info(&go, &opts.write_to_bytes().unwrap());
    if go_out.status.success() {
        let theirs = decode_info(&go_out.stdout);
        assert_eq!(theirs.name, "io.containerd.runc.v2");
        assert_eq!(theirs.options, ours.options);
        assert_eq!(theirs.features, ours.features);
    } else {
        let err = String::from_utf8_lossy(&go_out.stderr);
        assert!(
            err.contains("flag provided but not defined: -info"),
            "the Go shim failed otherwise: {err}"
        );
    }

    // No stdin: no options echoed.
    let bare = decode_info(&run_info(me, b"").stdout);
    assert_eq!(bare.options, None);
    assert!(bare.features.is_some());
    // A runtime without `features`: no features, still success, and said.
    let out = run_info(me, &runc_options("/bin/false").write_to_bytes().unwrap());
    assert!(out.status.success());
    assert_eq!(decode_info(&out.stdout).features, None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no features reported"));
    // A missing runtime, or stdin that is not options: exit 1 with a reason.
    let out = run_info(
        me,
        &runc_options("/nonexistent/runc").write_to_bytes().unwrap(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed to look up the path"));
    let out = run_info(me, &[0xff, 0xff, 0xff]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

/// containerd 2.3's `BootstrapParams`, encoded as containerd encodes it.
fn bootstrap_params(id: &str, ns: &str, grpc: &str, socket_dir: &Path) -> Vec<u8> {
    use containerd_shim_protos::protobuf::CodedOutputStream;
    let opts = runc_options("runc").write_to_bytes().unwrap();
    let mut ext = Vec::new();
    {
        let mut os = CodedOutputStream::vec(&mut ext);
        os.write_bytes(1, &opts).unwrap();
        os.flush().unwrap();
    }
    let mut v = Vec::new();
    {
        let mut os = CodedOutputStream::vec(&mut v);
        os.write_string(1, id).unwrap();
        os.write_string(2, ns).unwrap();
        os.write_string(4, "v2.3.4").unwrap();
        os.write_string(5, &format!("{grpc}.ttrpc")).unwrap();
        os.write_string(6, grpc).unwrap();
        os.write_string(7, "/usr/bin/containerd").unwrap();
        os.write_bytes(8, &ext).unwrap();
        os.write_string(9, socket_dir.to_str().unwrap()).unwrap();
        os.flush().unwrap();
    }
    v
}

/// Under containerd 2.3 `start` reads BootstrapParams, puts the socket in
/// the `socket_dir` it names, links that directory from the bundle, and
/// answers with a BootstrapResult; `delete` finds a dead shim's socket there.
#[test]
fn start_answers_bootstrap_params_and_uses_their_socket_dir() {
    use containerd_shim_protos::protobuf::CodedInputStream;
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let sockets = dir.path().join("s");
    let bundle = dir.path().join("bs");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), "{}").unwrap();
    let grpc = dir.path().join("containerd.sock").display().to_string();
    let mut child = shim()
        .args([
            "-namespace",
            "cli-test",
            "-address",
            &grpc,
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "bs",
            "start",
        ])
        .current_dir(&bundle)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&bootstrap_params("bs", "cli-test", &grpc, &sockets))
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty());
    let (mut version, mut address, mut protocol) = (0, String::new(), String::new());
    let mut is = CodedInputStream::from_bytes(&out.stdout);
    while let Some(tag) = is.read_raw_tag_or_eof().unwrap() {
        match tag >> 3 {
            1 => version = is.read_int32().unwrap(),
            2 => address = is.read_string().unwrap(),
            3 => protocol = is.read_string().unwrap(),
            other => panic!("unexpected BootstrapResult field {other}"),
        }
    }
    let socket = wedge::manager::socket_path_in(&sockets, &grpc, "cli-test", "bs");
    assert_eq!(
        (version, address.as_str(), protocol.as_str()),
        (3, format!("unix://{}", socket.display()).as_str(), "ttrpc")
    );
    assert_eq!(std::fs::read_link(bundle.join("s")).unwrap(), sockets);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let conn: ConnectResponse = call(&address, "Connect", &ConnectRequest::default());

    // The daemon dies: `delete` removes its socket from that directory.
    Command::new("kill")
        .args(["-9", &conn.shim_pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{}/exe", conn.shim_pid)).exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(socket.exists());
    std::fs::write(bundle.join("runtime"), "").unwrap();
    common::shim_delete("cli-test", &grpc, "bs", &bundle);
    assert!(!socket.exists(), "the dead shim's socket is left");
    forget_runc_root();
}

/// The shim's runtime calls leave runc's (empty) root for the namespace.
fn forget_runc_root() {
    let _ = std::fs::remove_dir("/run/containerd/runc/cli-test");
}

/// The checkout's HEAD commit: from git, or where git is not installed (the
/// cgroup v2 guest) from `.git` itself (a ref file or `packed-refs`).
fn head_commit() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    match Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root)
        .output()
    {
        Ok(out) => return String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "git: {e}"),
    }
    let git = root.join(".git");
    let head = std::fs::read_to_string(git.join("HEAD")).unwrap();
    let Some(name) = head.trim().strip_prefix("ref: ") else {
        return head.trim().to_string();
    };
    if let Ok(c) = std::fs::read_to_string(git.join(name)) {
        return c.trim().to_string();
    }
    let packed = std::fs::read_to_string(git.join("packed-refs")).unwrap();
    packed
        .lines()
        .find_map(|l| l.strip_suffix(name)?.strip_suffix(' ').map(str::to_string))
        .unwrap_or_else(|| panic!("{name} is in neither .git/{name} nor packed-refs"))
}
