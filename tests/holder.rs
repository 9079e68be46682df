//! The pod's namespace holder (`wedge::sandbox::holder`), started from the
//! real binary as the shim starts it: the namespaces, names and settings a
//! pod's containers join, pid 1 of the pod's pid namespace reaping orphans,
//! gone with one SIGKILL; a bad spec fails with a clear error.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wedge::sandbox::holder::{command, parse_reply, HolderSpec};

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-wedge-v2"))
}

/// A network namespace pinned on a file (as CRI pins a pod's), unmounted
/// and removed when dropped.
struct PinnedNetns(PathBuf);

impl PinnedNetns {
    fn new(dir: &Path) -> PinnedNetns {
        let path = dir.join("netns");
        std::fs::write(&path, "").unwrap();
        let ok = Command::new("unshare")
            .arg(format!("--net={}", path.display()))
            .arg("true")
            .status()
            .unwrap()
            .success();
        assert!(ok, "pin a network namespace");
        PinnedNetns(path)
    }
}

impl Drop for PinnedNetns {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The inode of a namespace file.
fn ns(path: impl AsRef<Path>) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

fn start(spec: &HolderSpec) -> Result<u32, String> {
    let out = command(&binary(), spec).output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    parse_reply(&out.stdout).ok_or_else(|| format!("reply {:?}", out.stdout))
}

/// `cmd` run in the holder's namespaces (`nsenter` with `flags`).
fn inside(pid: u32, flags: &[&str], cmd: &[&str]) -> String {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string()])
        .args(flags)
        .args(cmd)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "{cmd:?} in the holder's namespaces");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn kill_and_wait_gone(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Reparented to the machine's init (the test is no subreaper), which
    // reaps it.
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "holder {pid} lives on");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_holder_holds_the_pods_namespaces_and_reaps_as_pid_1() {
    let dir = tempfile::tempdir().unwrap();
    let netns = PinnedNetns::new(dir.path());
    let spec = HolderSpec {
        netns: Some(netns.0.clone()),
        new_ipc: true,
        hostname: Some("pod-a".into()),
        new_pid: true,
        sysctls: BTreeMap::from([
            ("net.ipv4.ip_unprivileged_port_start".into(), "0".into()),
            ("net.ipv4.ping_group_range".into(), "0 2147483647".into()),
            ("kernel.shm_rmid_forced".into(), "1".into()),
        ]),
        cgroup_procs: Vec::new(),
        // CRI's -998 needs CAP_SYS_RESOURCE, which this machine's root
        // lacks; raising it is always allowed.
        oom_score_adj: Some(500),
    };
    let pid = start(&spec).unwrap();
    let proc = PathBuf::from(format!("/proc/{pid}"));
    assert_eq!(ns(proc.join("ns/net")), ns(&netns.0), "the pod's netns");
    for kind in ["ipc", "uts", "pid"] {
        assert_ne!(
            ns(proc.join("ns").join(kind)),
            ns(format!("/proc/self/ns/{kind}")),
            "a {kind} namespace of its own"
        );
    }
    assert_eq!(ns(proc.join("ns/mnt")), ns("/proc/self/ns/mnt"));
    let status = std::fs::read_to_string(proc.join("status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        nspid.ends_with("\t1"),
        "pid 1 in its pid namespace: {nspid}"
    );
    assert_eq!(
        std::fs::read_to_string(proc.join("oom_score_adj"))
            .unwrap()
            .trim(),
        "500"
    );
    assert_eq!(inside(pid, &["-u"], &["hostname"]), "pod-a");
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        "pod-a"
    );
    assert_eq!(
        inside(
            pid,
            &["-n"],
            &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]
        ),
        "0"
    );
    assert_eq!(
        inside(
            pid,
            &["-n"],
            &["cat", "/proc/sys/net/ipv4/ping_group_range"]
        )
        .split_whitespace()
        .collect::<Vec<_>>(),
        ["0", "2147483647"]
    );
    assert_eq!(
        inside(pid, &["-i"], &["cat", "/proc/sys/kernel/shm_rmid_forced"]),
        "1"
    );
    // Only lo in the pod's network namespace.
    let dev = inside(pid, &["-n"], &["cat", "/proc/net/dev"]);
    let links: Vec<&str> = dev
        .lines()
        .filter_map(|l| Some(l.split_once(':')?.0.trim()))
        .collect();
    assert_eq!(links, ["lo"], "{dev}");
    // Orphans in the pod's pid namespace are reparented to the holder and
    // reaped: no zombie stays.
    for _ in 0..5 {
        inside(pid, &["-p"], &["sh", "-c", "sleep 0.1 & exit 0"]);
    }
    std::thread::sleep(Duration::from_millis(500));
    let children = std::fs::read_to_string(proc.join(format!("task/{pid}/children"))).unwrap();
    assert_eq!(children.trim(), "", "left unreaped: {children}");
    kill_and_wait_gone(pid);
}

/// Host network, ipc and pid (hostNetwork, hostIPC, hostPID): the holder
/// keeps the host's namespaces, so the containers that join it do too.
#[test]
fn a_host_namespace_pod_holder_stays_in_the_hosts_namespaces() {
    let pid = start(&HolderSpec::default()).unwrap();
    for kind in ["net", "ipc", "uts", "pid"] {
        assert_eq!(
            ns(format!("/proc/{pid}/ns/{kind}")),
            ns(format!("/proc/self/ns/{kind}")),
            "{kind}"
        );
    }
    kill_and_wait_gone(pid);
}

#[test]
fn a_holder_that_cannot_set_up_says_why() {
    let spec = HolderSpec {
        netns: Some("/nonexistent/netns".into()),
        ..Default::default()
    };
    let err = start(&spec).unwrap_err();
    assert!(err.contains("pod holder: /nonexistent/netns"), "{err}");
    let spec = HolderSpec {
        sysctls: BTreeMap::from([("net/../../x".into(), "1".into())]),
        ..Default::default()
    };
    let err = start(&spec).unwrap_err();
    assert!(err.contains("not a sysctl name"), "{err}");
}
