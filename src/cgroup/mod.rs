//! cgroups of a container: where they are (v1 per-controller directories, or
//! one v2 directory), their statistics as containerd's `Metrics` messages,
//! OOM notification ([`oom`]), and killing every process of it ([`kill`]).
//! A container's stat files stay open between Stats calls ([`StatFiles`],
//! [`kept`]).
//!
//! The layout is read from `/proc/<pid>/cgroup` and `/proc/self/mountinfo`,
//! so it works in nested setups where a hierarchy is mounted with a non-root
//! `root`. Parsing takes plain directories, so both versions are unit-tested
//! on recorded cgroupfs trees (`tests/fixtures/cgroup/`).

pub mod kept;
pub mod kill;
pub mod oom;
pub mod systemd;
pub mod v1;
pub mod v2;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;

/// The key of a hybrid host's unified-hierarchy directory among the v1
/// paths (a directory the runtime makes, with no controller in it).
pub const UNIFIED: &str = "unified";

/// A container's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroup {
    /// cgroup v1 (also hybrid): one directory per controller.
    V1(HashMap<String, PathBuf>),
    /// cgroup v2: one directory in the unified hierarchy.
    V2(PathBuf),
}

/// A container's open stat files and the buffer they are read into.
pub struct StatFiles {
    files: Files,
    buf: Vec<u8>,
    keep: bool,
}

enum Files {
    V1(v1::Files),
    V2(v2::Files),
}

impl StatFiles {
    /// The container's statistics, as containerd's Any-wrapped `Metrics`.
    /// NotFound once the cgroup is removed.
    pub fn read(&mut self) -> io::Result<Any> {
        let (url, value) = match &mut self.files {
            Files::V1(f) => (V1_METRICS, f.read(&mut self.buf)?.write_to_bytes()),
            Files::V2(f) => (V2_METRICS, f.read(&mut self.buf)?.write_to_bytes()),
        };
        let mut any = Any::new();
        any.type_url = url.to_string();
        any.value = value.map_err(io::Error::other)?;
        Ok(any)
    }

    /// Whether to keep the files open for the next call.
    pub fn keep(&self) -> bool {
        self.keep
    }
}

/// Type URL of v1 metrics.
pub const V1_METRICS: &str = "io.containerd.cgroups.v1.Metrics";
/// Type URL of v2 metrics.
pub const V2_METRICS: &str = "io.containerd.cgroups.v2.Metrics";

impl Cgroup {
    /// The cgroup of a live process.
    pub fn for_pid(pid: u32) -> io::Result<Cgroup> {
        let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        Cgroup::resolve(&proc_cgroup, &mountinfo, unified)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "cgroup does not exist"))
    }

    /// Resolves a `/proc/<pid>/cgroup` text against the mount table.
    /// On a hybrid host the v1 paths include the unified hierarchy's, as
    /// [`UNIFIED`].
    pub fn resolve(proc_cgroup: &str, mountinfo: &str, unified: bool) -> Option<Cgroup> {
        // (fstype, super options) → (mount root, mount point)
        let mut v1_mounts: Vec<(Vec<String>, String, PathBuf)> = Vec::new();
        let mut v2_mount: Option<(String, PathBuf)> = None;
        for line in mountinfo.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some(sep) = f.iter().position(|x| *x == "-") else {
                continue;
            };
            let (root, point) = (f.get(3)?, f.get(4)?);
            let fstype = f.get(sep + 1).copied().unwrap_or("");
            let superopts = f.get(sep + 3).copied().unwrap_or("");
            match fstype {
                "cgroup" => v1_mounts.push((
                    superopts.split(',').map(str::to_string).collect(),
                    root.to_string(),
                    PathBuf::from(point),
                )),
                "cgroup2" if v2_mount.is_none() || unified => {
                    v2_mount = Some((root.to_string(), PathBuf::from(point)))
                }
                _ => {}
            }
        }
        let join = |root: &str, point: &Path, path: &str| {
            let rel = path.strip_prefix(root).unwrap_or(path);
            point.join(rel.trim_start_matches('/'))
        };
        if unified {
            let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
            let (root, point) = v2_mount?;
            return Some(Cgroup::V2(join(&root, &point, path)));
        }
        let mut paths = HashMap::new();
        let (mut unified_path, mut v1_paths) = (None, Vec::new());
        for line in proc_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            if ctrls.is_empty() {
                unified_path = Some(path);
                continue;
            }
            v1_paths.push(path);
            for ctrl in ctrls.split(',').filter(|c| !c.is_empty()) {
                if let Some((_, root, point)) = v1_mounts
                    .iter()
                    .find(|(o, _, _)| o.iter().any(|x| x == ctrl))
                {
                    paths.insert(ctrl.to_string(), join(root, point, path));
                }
            }
        }
        // Hybrid: the runtime makes the container's directory in the
        // unified hierarchy too (`0::`), to be removed with the others; only
        // when it is the container's own (never a hierarchy's root).
        if let (Some(p), Some((root, point))) = (unified_path, &v2_mount) {
            if p != "/" && v1_paths.contains(&p) {
                paths.insert(UNIFIED.to_string(), join(root, point, p));
            }
        }
        (!paths.is_empty()).then_some(Cgroup::V1(paths))
    }

    /// Opens the cgroup's stat files, to be read by each Stats.
    pub fn stat_files(&self) -> io::Result<StatFiles> {
        let mut o = kept::Opener::new();
        let files = match self {
            Cgroup::V1(paths) => Files::V1(v1::Files::open(paths, &mut o)?),
            Cgroup::V2(dir) => Files::V2(v2::Files::open(dir, &mut o)?),
        };
        // Kept open only while fds are plentiful: a shim with many
        // containers under a low fd limit opens them for each call instead.
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        Ok(StatFiles {
            files,
            buf: Vec::new(),
            keep: u64::try_from(o.max_fd).unwrap_or(0) < soft / 2,
        })
    }

    /// The memory controller's directory.
    pub fn memory_dir(&self) -> Option<&Path> {
        match self {
            Cgroup::V1(p) => p.get("memory").map(PathBuf::as_path),
            Cgroup::V2(d) => Some(d),
        }
    }
}

/// The shim's own memory cgroup, which is charged for the pages it writes
/// to a tmpfs (a spill in the bundle under `/run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnMemory {
    dir: PathBuf,
    v2: bool,
}

impl OwnMemory {
    /// The shim's memory cgroup now (`ShimCgroup` moves it at start).
    pub fn find() -> Option<OwnMemory> {
        let cg = Cgroup::for_pid(std::process::id()).ok()?;
        Some(OwnMemory {
            dir: cg.memory_dir()?.to_path_buf(),
            v2: matches!(cg, Cgroup::V2(_)),
        })
    }

    /// Bytes used and the limit; `None` when it has no limit. Used leaves
    /// out file cache (the kernel reclaims it before it OOM-kills: a shim
    /// writing `file://` logs fills its cgroup with it); a tmpfs's pages
    /// are shmem, never file cache, so a spill's pages count.
    pub fn usage(&self) -> Option<(u64, u64)> {
        let (usage, limit, [active, inactive]) = if self.v2 {
            (
                "memory.current",
                "memory.max",
                ["active_file", "inactive_file"],
            )
        } else {
            (
                "memory.usage_in_bytes",
                "memory.limit_in_bytes",
                ["total_active_file", "total_inactive_file"],
            )
        };
        // v1 says "no limit" with a number near 2^63, v2 with "max".
        let limit: u64 = read(&self.dir, limit)
            .parse()
            .ok()
            .filter(|l| *l < 1 << 60)?;
        let used: u64 = read(&self.dir, usage).parse().ok()?;
        let cache = [active, inactive]
            .iter()
            .filter_map(|k| read_key(&self.dir, "memory.stat", k))
            .sum::<u64>();
        Some((used.saturating_sub(cache), limit))
    }
}

/// Reads a file as one trimmed string (empty when missing).
pub(crate) fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The value of `key` in a file of `key value` lines (memory.events,
/// cgroup.events, …), if the file has it.
pub(crate) fn read_key(dir: &Path, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read(dir.join(file)).ok()?;
    let value = kept::pairs(&text).find_map(|(k, v)| (k == key.as_bytes()).then_some(v));
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shim's memory use and limit as v1 and v2 write them; no limit
    /// (v1's huge number, v2's "max") reads as none.
    #[test]
    fn own_memory_reads_usage_and_limit_on_v1_and_v2() {
        let d = tempfile::tempdir().unwrap();
        let w = |f: &str, v: &str| std::fs::write(d.path().join(f), v).unwrap();
        let m = |v2| OwnMemory {
            dir: d.path().to_path_buf(),
            v2,
        };
        w("memory.current", "1048576\n");
        w("memory.max", "33554432\n");
        assert_eq!(m(true).usage(), Some((1 << 20, 32 << 20)));
        w("memory.max", "max\n");
        assert_eq!(m(true).usage(), None);
        w("memory.usage_in_bytes", "2097152\n");
        w("memory.limit_in_bytes", "33554432\n");
        assert_eq!(m(false).usage(), Some((2 << 20, 32 << 20)));
        w("memory.limit_in_bytes", "9223372036854771712\n");
        assert_eq!(m(false).usage(), None);
        // File cache is left out (v1's hierarchical totals), shmem is not.
        w("memory.limit_in_bytes", "33554432\n");
        let v1_stat = "cache 1048576\nshmem 524288\nactive_file 1\ntotal_shmem 524288\n\
                       total_active_file 262144\ntotal_inactive_file 524288\n";
        w("memory.stat", v1_stat);
        assert_eq!(m(false).usage(), Some(((2 << 20) - (768 << 10), 32 << 20)));
        w("memory.max", "33554432\n");
        w(
            "memory.stat",
            "anon 4096\nfile 1048576\nshmem 262144\nactive_file 262144\ninactive_file 524288\n",
        );
        assert_eq!(m(true).usage(), Some(((1 << 20) - (768 << 10), 32 << 20)));
    }

    const MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 30 0:31 /outer /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";

    #[test]
    fn resolves_v1_hierarchies_with_mount_roots() {
        let pc =
            "12:pids:/outer/ns/c1\n4:memory:/ns/c1\n3:cpu,cpuacct:/ns/c1\n1:name=systemd:/\n0::/\n";
        let Some(Cgroup::V1(p)) = Cgroup::resolve(pc, MOUNTINFO, false) else {
            panic!()
        };
        assert_eq!(p["memory"], Path::new("/sys/fs/cgroup/memory/ns/c1"));
        assert_eq!(p["cpuacct"], Path::new("/sys/fs/cgroup/cpu,cpuacct/ns/c1"));
        assert_eq!(p["pids"], Path::new("/sys/fs/cgroup/pids/ns/c1"));
        assert!(!p.contains_key(UNIFIED), "never a hierarchy's root: {p:?}");
        let pc = "4:memory:/ns/c1\n1:name=systemd:/ns/c1\n0::/ns/c1\n";
        let Some(Cgroup::V1(p)) = Cgroup::resolve(pc, MOUNTINFO, false) else {
            panic!()
        };
        assert_eq!(p[UNIFIED], Path::new("/sys/fs/cgroup/unified/ns/c1"));
    }

    /// A real cgroup (pids controller on v1, the unified hierarchy on v2):
    /// its kept files read the live values, and once it is removed a read
    /// says NotFound instead of stale numbers.
    #[test]
    fn kept_stat_files_follow_a_real_cgroup_until_it_is_removed() {
        let name = format!("wedge-unit-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists();
        let dir = if v1 {
            Path::new("/sys/fs/cgroup/pids").join(&name)
        } else {
            Path::new("/sys/fs/cgroup").join(&name)
        };
        if let Err(e) = std::fs::create_dir(&dir) {
            // Only root makes cgroups.
            assert!(!rustix::process::geteuid().is_root(), "{dir:?}: {e}");
            return;
        }
        let cg = if v1 {
            Cgroup::V1(HashMap::from([("pids".to_string(), dir.clone())]))
        } else {
            Cgroup::V2(dir.clone())
        };
        let mut files = cg.stat_files().unwrap();
        assert!(files.keep());
        let limit = |any: Any| -> u64 {
            if v1 {
                containerd_shim_protos::cgroups::metrics::Metrics::parse_from_bytes(&any.value)
                    .unwrap()
                    .pids
                    .limit
            } else {
                containerd_shim_protos::cgroups_v2::metrics::Metrics::parse_from_bytes(&any.value)
                    .unwrap()
                    .pids
                    .limit
            }
        };
        std::fs::write(dir.join("pids.max"), "7").unwrap();
        assert_eq!(limit(files.read().unwrap()), 7);
        std::fs::write(dir.join("pids.max"), "9").unwrap();
        assert_eq!(limit(files.read().unwrap()), 9, "read again, not cached");
        std::fs::remove_dir(&dir).unwrap();
        let err = files.read().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    #[test]
    fn resolves_v2() {
        let mi = "31 30 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            Cgroup::resolve("0::/k8s/pod1/c1\n", mi, true),
            Some(Cgroup::V2("/sys/fs/cgroup/k8s/pod1/c1".into()))
        );
    }
}
