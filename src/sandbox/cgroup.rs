//! The pod's cgroup for its holder, where a pause container would be:
//! `<parent>/<sandbox id>` in every mounted hierarchy under the cgroupfs
//! driver; a transient scope `cri-containerd-<id>.scope` in the pod's
//! slice under the systemd driver (kubelet names the parent a slice, e.g.
//! `kubepods-besteffort-pod<uid>.slice`, exactly then). A pod without a
//! cgroup parent leaves the holder in the shim's cgroup.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the holder goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// No cgroup parent: the shim's own cgroup.
    Shim,
    /// cgroupfs: one directory per hierarchy, made before the holder
    /// starts, joined by it, removed after it.
    Dirs(Vec<PathBuf>),
    /// systemd: a scope systemd makes for the running holder and removes
    /// once it is empty.
    Scope { slice: String, unit: String },
}

/// The pod's cgroup directories a sandbox's bundle lists (for `shim
/// delete` after a killed shim), one a line.
pub const DIRS_FILE: &str = "holder.cgroups";

impl Placement {
    /// The placement of sandbox `id`'s holder under `parent` (the pod's
    /// `cgroup_parent`) on a host with mount table `mountinfo`.
    pub fn plan(parent: &str, id: &str, mountinfo: &str) -> Result<Placement, String> {
        if parent.is_empty() {
            return Ok(Placement::Shim);
        }
        if parent.ends_with(".slice") && !parent.contains('/') {
            let ok = parent
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":-_.\\".contains(&b));
            if !ok || parent.len() > 255 {
                return Err(format!("cgroup parent {parent:?} is not a slice name"));
            }
            return Ok(Placement::Scope {
                slice: parent.to_string(),
                unit: format!("cri-containerd-{id}.scope"),
            });
        }
        let rel = Path::new(parent.trim_start_matches('/'));
        let ok = parent.split('/').all(|p| p != "." && p != "..");
        if !ok || parent.contains('\0') {
            return Err(format!("cgroup parent {parent:?} is not a cgroup path"));
        }
        let points = hierarchies(mountinfo);
        if points.is_empty() {
            return Err("no cgroup hierarchy is mounted".into());
        }
        Ok(Placement::Dirs(
            points.iter().map(|p| p.join(rel).join(id)).collect(),
        ))
    }

    /// Makes the directories (cgroupfs); the `cgroup.procs` files the
    /// holder joins before it forks.
    pub fn prepare(&self) -> io::Result<Vec<PathBuf>> {
        let Placement::Dirs(dirs) = self else {
            return Ok(Vec::new());
        };
        for d in dirs {
            make(d).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", d.display())))?;
        }
        Ok(dirs.iter().map(|d| d.join("cgroup.procs")).collect())
    }

    /// Puts the running holder `pid` in its scope (systemd), and waits a
    /// little for systemd to have moved it.
    pub async fn attach(&self, pid: u32) -> Result<(), String> {
        let Placement::Scope { slice, unit } = self else {
            return Ok(());
        };
        crate::cgroup::systemd::start_scope(
            crate::cgroup::systemd::PRIVATE_SOCKET,
            unit,
            slice,
            pid,
        )
        .await?;
        // The scope's job runs after systemd answers.
        let wanted = format!("/{unit}");
        for _ in 0..100 {
            let now = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if now.lines().any(|l| l.ends_with(&wanted)) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("systemd did not move the holder into {unit}"))
    }

    /// Removes what [`Placement::prepare`] made (once the holder is gone).
    pub async fn remove(&self) {
        if let Placement::Dirs(dirs) = self {
            remove_dirs(dirs).await;
        }
    }
}

/// Removes the pod's cgroup directories; a just-reaped holder may keep
/// one busy for a moment.
pub async fn remove_dirs(dirs: &[PathBuf]) {
    for d in dirs {
        for tries in 0.. {
            if remove_dir(d, tries) {
                break;
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// The same from `shim delete` (no runtime): the directories a sandbox's
/// bundle lists ([`DIRS_FILE`]), whose holder was just killed.
pub fn remove_listed(bundle: &Path) {
    let list = bundle.join(DIRS_FILE);
    let Ok(text) = std::fs::read_to_string(&list) else {
        return;
    };
    for d in text.lines().filter(|l| !l.is_empty()).map(Path::new) {
        for tries in 0.. {
            if remove_dir(d, tries) {
                break;
            }
            std::thread::sleep(RETRY);
        }
    }
    let _ = std::fs::remove_file(list);
}

const RETRY: Duration = Duration::from_millis(20);

/// One attempt at removing `d`: false to try again (busy, after fewer than
/// 50 tries: a second).
fn remove_dir(d: &Path, tries: u32) -> bool {
    match std::fs::remove_dir(d) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => false,
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            crate::warn!("pod cgroup {}: {e}", d.display());
            true
        }
        _ => true,
    }
}

/// Mount points of the host's cgroup hierarchies (each v1 hierarchy once,
/// and the unified one), seen from their roots.
fn hierarchies(mountinfo: &str) -> Vec<PathBuf> {
    let mut seen: Vec<String> = Vec::new();
    let mut points = Vec::new();
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        let (Some(root), Some(point)) = (f.get(3), f.get(4)) else {
            continue;
        };
        let fstype = f.get(sep + 1).copied().unwrap_or("");
        let key = match fstype {
            "cgroup" => f.get(sep + 3).copied().unwrap_or("").to_string(),
            "cgroup2" => "unified".to_string(),
            _ => continue,
        };
        if *root != "/" || seen.contains(&key) {
            continue;
        }
        seen.push(key);
        points.push(PathBuf::from(point));
    }
    points
}

/// `mkdir -p` of a cgroup directory; a new v1 cpuset directory gets its
/// parent's cpus and mems (it is empty, and so unjoinable, otherwise), a
/// new v2 one its parent's controllers.
fn make(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no hierarchy"))?;
    make(parent)?;
    // v2: the parent hands its controllers down, as runc's cgroupfs driver
    // has it (kubelet's pod cgroups have them already; best effort).
    if let Ok(ctrls) = std::fs::read_to_string(parent.join("cgroup.controllers")) {
        let wanted: Vec<String> = ctrls.split_whitespace().map(|c| format!("+{c}")).collect();
        if !wanted.is_empty() {
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), wanted.join(" "));
        }
    }
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    if dir.join("cgroup.controllers").exists() {
        return Ok(()); // v2: an empty cpuset is the parent's
    }
    for f in ["cpuset.cpus", "cpuset.mems"] {
        match std::fs::read_to_string(dir.join(f)) {
            Ok(v) if v.trim().is_empty() => {
                let from = std::fs::read_to_string(parent.join(f))?;
                std::fs::write(dir.join(f), from.trim())?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
31 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
32 25 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
33 25 0:31 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset
90 40 0:30 /kubepods /var/lib/x/memory rw - cgroup cgroup rw,memory
91 40 0:30 / /mnt/memory-again rw - cgroup cgroup rw,memory
";

    #[test]
    fn cgroupfs_pods_get_a_directory_in_every_hierarchy() {
        let p = Placement::plan("/kubepods/besteffort/pod1", "sb1", HYBRID).unwrap();
        let dirs: Vec<String> = match p {
            Placement::Dirs(d) => d.iter().map(|d| d.display().to_string()).collect(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            dirs,
            [
                "/sys/fs/cgroup/unified/kubepods/besteffort/pod1/sb1",
                "/sys/fs/cgroup/systemd/kubepods/besteffort/pod1/sb1",
                "/sys/fs/cgroup/cpu,cpuacct/kubepods/besteffort/pod1/sb1",
                "/sys/fs/cgroup/memory/kubepods/besteffort/pod1/sb1",
                "/sys/fs/cgroup/cpuset/kubepods/besteffort/pod1/sb1",
            ]
        );
        let v2 = "40 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            Placement::plan("kubepods/pod2", "sb", v2).unwrap(),
            Placement::Dirs(vec!["/sys/fs/cgroup/kubepods/pod2/sb".into()])
        );
    }

    #[test]
    fn systemd_pods_get_a_scope_in_their_slice() {
        assert_eq!(
            Placement::plan("kubepods-besteffort-pod1_2.slice", "sb1", HYBRID).unwrap(),
            Placement::Scope {
                slice: "kubepods-besteffort-pod1_2.slice".into(),
                unit: "cri-containerd-sb1.scope".into()
            }
        );
        assert_eq!(Placement::plan("", "sb1", HYBRID).unwrap(), Placement::Shim);
    }

    #[test]
    fn bad_parents_are_refused() {
        for bad in ["/kubepods/../etc", "a/./b", "bad name.slice", "x\0y"] {
            assert!(Placement::plan(bad, "sb", HYBRID).is_err(), "{bad:?}");
        }
        assert!(
            Placement::plan("/kubepods", "sb", "").is_err(),
            "no cgroupfs"
        );
    }
}
