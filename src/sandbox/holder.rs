//! The pod's namespace holder: what a pause container is, without an image
//! or a runtime. A re-exec of this binary (marked by [`HOLDER_ENV`]) that
//! joins the pod's network namespace (CRI made and pinned it), makes the
//! pod's ipc and uts namespaces (unless the pod shares the host's), sets
//! the hostname and the pod's sysctls, joins the pod's cgroup, and forks
//! the holder proper: in a new pid namespace (shareProcessNamespace) as its
//! pid 1, reaping what is reparented to it. The first process prints the
//! holder's host pid and exits; the holder is then a child of the shim (its
//! subreaper), which kills it with SIGKILL to end the pod.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::sys::holder::{self as sys, Forked};

/// Set (to the [`HolderSpec`] as JSON) in the holder's environment.
pub const HOLDER_ENV: &str = "WEDGE_POD_HOLDER";

/// What the holder sets up.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HolderSpec {
    /// The pod's network namespace; none: the host's.
    pub netns: Option<PathBuf>,
    /// An ipc namespace of its own (not for hostIPC).
    pub new_ipc: bool,
    /// A uts namespace of its own with this hostname (not for hostNetwork).
    pub hostname: Option<String>,
    /// A pid namespace of its own, the holder its pid 1
    /// (shareProcessNamespace).
    pub new_pid: bool,
    /// Sysctls (`net.ipv4.ip_unprivileged_port_start` = `0`, …), set
    /// inside the pod's namespaces.
    pub sysctls: BTreeMap<String, String>,
    /// `cgroup.procs` files to join first (the pod's cgroup).
    pub cgroup_procs: Vec<PathBuf>,
    /// The holder's `oom_score_adj` (CRI gives the pause container -998).
    pub oom_score_adj: Option<i32>,
}

/// The command that starts a holder of `spec` from this binary `exe`. Its
/// stdout says the holder's pid ([`parse_reply`]) and it exits 0 (stderr
/// may carry warnings); on an error it says why on stderr and exits 1.
pub fn command(exe: &Path, spec: &HolderSpec) -> Command {
    let mut cmd = Command::new(exe);
    cmd.env_clear()
        .env(HOLDER_ENV, serde_json::to_string(spec).unwrap_or_default())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The holder's pid from what [`command`]'s process printed.
pub fn parse_reply(stdout: &[u8]) -> Option<u32> {
    std::str::from_utf8(stdout)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// In a process started by [`command`]: sets up and forks the holder, and
/// never returns. Elsewhere: `None`.
pub fn run_if_holder() -> Option<std::convert::Infallible> {
    let spec = std::env::var(HOLDER_ENV).ok()?;
    let code = match serde_json::from_str::<HolderSpec>(&spec)
        .map_err(|e| format!("holder spec: {e}"))
        .and_then(|s| set_up(&s))
    {
        Ok(Forked::Child) => hold(),
        Ok(Forked::Parent(pid)) => {
            let _ = writeln!(std::io::stdout(), "{pid}");
            0
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "pod holder: {e}");
            1
        }
    };
    std::process::exit(code)
}

/// Everything but holding: namespaces, names, sysctls, cgroup; then forks.
fn set_up(spec: &HolderSpec) -> Result<Forked, String> {
    for procs in &spec.cgroup_procs {
        std::fs::write(procs, "0").map_err(|e| format!("join {}: {e}", procs.display()))?;
    }
    if let Some(adj) = spec.oom_score_adj {
        // Lowering it needs CAP_SYS_RESOURCE: without it the holder keeps
        // the shim's and says so (on stderr, which the shim logs).
        match std::fs::write("/proc/self/oom_score_adj", adj.to_string()) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let _ = writeln!(
                    std::io::stderr(),
                    "pod holder: oom_score_adj {adj}: {e}; keeping {}",
                    std::fs::read_to_string("/proc/self/oom_score_adj")
                        .unwrap_or_default()
                        .trim()
                );
            }
            r => r.map_err(|e| format!("oom_score_adj {adj}: {e}"))?,
        }
    }
    if let Some(ns) = &spec.netns {
        let f = std::fs::File::open(ns).map_err(|e| format!("{}: {e}", ns.display()))?;
        sys::setns(f.as_fd(), libc::CLONE_NEWNET)
            .map_err(|e| format!("join {}: {e}", ns.display()))?;
    }
    let mut flags = 0;
    if spec.new_ipc {
        flags |= libc::CLONE_NEWIPC;
    }
    if spec.hostname.is_some() {
        flags |= libc::CLONE_NEWUTS;
    }
    if spec.new_pid {
        flags |= libc::CLONE_NEWPID;
    }
    if flags != 0 {
        sys::unshare(flags).map_err(|e| format!("unshare: {e}"))?;
    }
    if let Some(name) = &spec.hostname {
        sys::sethostname(name).map_err(|e| format!("hostname {name:?}: {e}"))?;
    }
    for (key, value) in &spec.sysctls {
        let path = sysctl_path(key).ok_or_else(|| format!("sysctl {key:?}: not a sysctl name"))?;
        std::fs::write(&path, value).map_err(|e| format!("sysctl {key}={value}: {e}"))?;
    }
    // The holder proper is the child: in the new pid namespace, if any.
    sys::fork().map_err(|e| format!("fork: {e}"))
}

/// `/proc/sys/…` of a sysctl name (`a.b.c` or `a/b/c`), if it is one.
fn sysctl_path(key: &str) -> Option<PathBuf> {
    // With a '/', dots are part of a name (`net/ipv4/conf/eth0.1/…`).
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    let ok = !rel.is_empty()
        && rel
            .split('/')
            .all(|p| !p.is_empty() && p != ".." && p != "." && !p.contains('\0'));
    ok.then(|| Path::new("/proc/sys").join(rel))
}

/// The holder: holds the namespaces and reaps until it is killed.
fn hold() -> i32 {
    // Nothing of the first process's pipes stays open here.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
    }
    let signals = [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT];
    if sys::block_signals(&signals).is_err() {
        return 1;
    }
    loop {
        match sys::wait_signal(&signals) {
            Ok(libc::SIGCHLD) => while let Ok(Some(_)) = reap_one() {},
            Ok(_) => return 0,
            Err(_) => return 1,
        }
    }
}

fn reap_one() -> rustix::io::Result<Option<()>> {
    rustix::process::wait(rustix::process::WaitOptions::NOHANG).map(|r| r.map(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names_map_under_proc_sys_only() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_unprivileged_port_start"),
            Some(PathBuf::from(
                "/proc/sys/net/ipv4/ip_unprivileged_port_start"
            ))
        );
        assert_eq!(
            sysctl_path("kernel/shm_rmid_forced"),
            Some(PathBuf::from("/proc/sys/kernel/shm_rmid_forced"))
        );
        for bad in ["", "..", "net..x", "net/../../etc/passwd", "a.\0"] {
            assert_eq!(sysctl_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn replies_are_a_positive_pid() {
        assert_eq!(parse_reply(b"4242\n"), Some(4242));
        assert_eq!(parse_reply(b"0\n"), None);
        assert_eq!(parse_reply(b"pod holder: x"), None);
    }
}
