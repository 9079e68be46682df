//! Reading a cgroup v2 directory the way the guest tests check Wedge: the
//! files themselves (numbers, `max`, key-value files), the shim's v2 Stats,
//! and the comparison of the two field by field. Part of
//! `tests/cgroup_v2.rs` (guest only).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common::*;
use containerd_shim_protos::cgroups_v2::metrics::Metrics;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::shim::*;

pub const ROOT: &str = "/sys/fs/cgroup";

/// The unified hierarchy is what these tests are about: refuse to run on
/// anything else rather than pass by checking nothing.
pub fn require_v2() {
    assert!(
        Path::new(ROOT).join("cgroup.controllers").exists(),
        "not a cgroup v2 host: these tests run in the guest (scripts/test-guest)"
    );
}

/// The cgroup directory of a live process.
pub fn cgroup_of(pid: u32) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no v2 entry in /proc/{pid}/cgroup: {text}"));
    Path::new(ROOT).join(rel.trim_start_matches('/'))
}

pub fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

/// A one-number file; `max` is `u64::MAX`.
pub fn num(dir: &Path, file: &str) -> u64 {
    match read(dir, file).as_str() {
        "max" => u64::MAX,
        v => v.parse().unwrap(),
    }
}

pub fn kv(dir: &Path, file: &str) -> HashMap<String, u64> {
    read(dir, file)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.parse().ok()?))
        })
        .collect()
}

/// The shim's Stats for `id`, which must be v2 metrics.
pub fn v2_stats(env: &Env, id: &str) -> Metrics {
    let r: StatsResponse = env
        .shim_call(
            id,
            "Stats",
            &StatsRequest {
                id: id.into(),
                ..Default::default()
            },
        )
        .unwrap();
    v2_metrics(r)
}

/// The v2 metrics a Stats response carries (it must carry v2 metrics).
pub fn v2_metrics(r: StatsResponse) -> Metrics {
    let any = r.stats.unwrap();
    assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
    Metrics::parse_from_bytes(&any.value).unwrap()
}

/// A counter read from the files before and after Stats: the reported
/// value must lie between.
pub fn between(what: &str, before: u64, v: u64, after: u64) {
    assert!(
        before <= v && v <= after,
        "{what}: {v} not within {before}..={after}"
    );
}

/// A gauge that may move a little between the reads.
pub fn near(what: &str, v: u64, file: u64, slack: u64) {
    assert!(
        v.abs_diff(file) <= slack,
        "{what}: {v} vs the file's {file}"
    );
}

/// The hugetlb page sizes the kernel has, named as cgroupfs names them
/// (`hugepages-2048kB` → `2MB`): an oracle independent of the cgroup files.
pub fn kernel_hugepage_sizes() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/kernel/mm/hugepages")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let kb: u64 = e
                        .file_name()
                        .to_str()?
                        .strip_prefix("hugepages-")?
                        .strip_suffix("kB")?
                        .parse()
                        .ok()?;
                    Some(match kb {
                        kb if kb >= 1 << 20 => format!("{}GB", kb >> 20),
                        kb if kb >= 1 << 10 => format!("{}MB", kb >> 10),
                        kb => format!("{kb}KB"),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Snapshot of the files Stats is built from.
pub struct Files {
    cpu: HashMap<String, u64>,
    mem: HashMap<String, u64>,
    peak: u64,
    io: HashMap<String, HashMap<String, u64>>,
    psi: HashMap<&'static str, u64>,
}

pub fn snapshot(dir: &Path) -> Files {
    let io = read(dir, "io.stat")
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let dev = f.next()?.to_string();
            let vals = f
                .filter_map(|x| {
                    let (k, v) = x.split_once('=')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect();
            Some((dev, vals))
        })
        .collect();
    let mut psi = HashMap::new();
    for f in ["cpu.pressure", "memory.pressure", "io.pressure"] {
        if let Ok(text) = std::fs::read_to_string(dir.join(f)) {
            let total = text
                .lines()
                .find(|l| l.starts_with("some "))
                .and_then(|l| l.rsplit("total=").next()?.trim().parse().ok())
                .unwrap();
            psi.insert(f, total);
        }
    }
    Files {
        cpu: kv(dir, "cpu.stat"),
        mem: kv(dir, "memory.stat"),
        peak: num(dir, "memory.peak"),
        io,
        psi,
    }
}

/// Stats of `id` field by field against its cgroup `dir`: every field the
/// kernel has a file or key for.
pub fn check_stats_against_files(env: &Env, id: &str, dir: &Path) -> Metrics {
    let before = snapshot(dir);
    let m = v2_stats(env, id);
    let after = snapshot(dir);

    assert_eq!(m.pids.current, num(dir, "pids.current"), "pids.current");
    assert_eq!(
        m.pids.limit,
        num(dir, "pids.max"),
        "pids.limit (max = u64::MAX)"
    );

    let cpu = m.cpu.as_ref().expect("cpu");
    for (k, v) in [
        ("usage_usec", cpu.usage_usec),
        ("user_usec", cpu.user_usec),
        ("system_usec", cpu.system_usec),
        ("nr_periods", cpu.nr_periods),
        ("nr_throttled", cpu.nr_throttled),
        ("throttled_usec", cpu.throttled_usec),
        ("nr_bursts", cpu.nr_bursts),
        ("burst_usec", cpu.burst_usec),
    ] {
        let (b, a) = (before.cpu[k], after.cpu[k]);
        between(&format!("cpu.{k}"), b, v, a);
    }
    assert!(cpu.usage_usec > 0);

    let mem = m.memory.as_ref().expect("memory");
    near(
        "memory.usage",
        mem.usage,
        num(dir, "memory.current"),
        1 << 20,
    );
    assert!(mem.usage > 0);
    assert_eq!(mem.usage_limit, num(dir, "memory.max"), "memory.max");
    assert_eq!(mem.swap_usage, num(dir, "memory.swap.current"));
    assert_eq!(mem.swap_limit, num(dir, "memory.swap.max"));
    between("memory.peak", before.peak, mem.max_usage, after.peak);
    assert!(mem.max_usage >= mem.usage.min(before.peak));
    let gauges = [
        ("anon", mem.anon),
        ("file", mem.file),
        ("kernel_stack", mem.kernel_stack),
        ("slab", mem.slab),
        ("sock", mem.sock),
        ("shmem", mem.shmem),
        ("file_mapped", mem.file_mapped),
        ("file_dirty", mem.file_dirty),
        ("file_writeback", mem.file_writeback),
        ("anon_thp", mem.anon_thp),
        ("inactive_anon", mem.inactive_anon),
        ("active_anon", mem.active_anon),
        ("inactive_file", mem.inactive_file),
        ("active_file", mem.active_file),
        ("unevictable", mem.unevictable),
        ("slab_reclaimable", mem.slab_reclaimable),
        ("slab_unreclaimable", mem.slab_unreclaimable),
    ];
    for (k, v) in gauges {
        let file = *after
            .mem
            .get(k)
            .unwrap_or_else(|| panic!("memory.stat has no {k}"));
        near(&format!("memory.stat {k}"), v, file, 1 << 20);
    }
    let counters = [
        ("pgfault", mem.pgfault),
        ("pgmajfault", mem.pgmajfault),
        ("workingset_nodereclaim", mem.workingset_nodereclaim),
        ("pgrefill", mem.pgrefill),
        ("pgscan", mem.pgscan),
        ("pgsteal", mem.pgsteal),
        ("pgactivate", mem.pgactivate),
        ("pgdeactivate", mem.pgdeactivate),
        ("pglazyfree", mem.pglazyfree),
        ("pglazyfreed", mem.pglazyfreed),
        ("thp_fault_alloc", mem.thp_fault_alloc),
        ("thp_collapse_alloc", mem.thp_collapse_alloc),
    ];
    for (k, v) in counters {
        let (b, a) = (before.mem[k], after.mem[k]);
        between(&format!("memory.stat {k}"), b, v, a);
    }
    // Linux 5.9+ splits the workingset counters by anon and file.
    let sum = |m: &HashMap<String, u64>, k: &str| m[&format!("{k}_anon")] + m[&format!("{k}_file")];
    for (k, v) in [
        ("workingset_refault", mem.workingset_refault),
        ("workingset_activate", mem.workingset_activate),
    ] {
        between(k, sum(&before.mem, k), v, sum(&after.mem, k));
    }
    assert!(mem.anon > 0 && mem.pgfault > 0 && mem.slab > 0, "{mem:?}");

    let ev = m.memory_events.as_ref().expect("memory_events");
    let file = kv(dir, "memory.events");
    assert_eq!(
        [
            ev.low,
            ev.high,
            ev.max,
            ev.oom,
            ev.oom_kill,
            ev.oom_group_kill
        ],
        ["low", "high", "max", "oom", "oom_kill", "oom_group_kill"].map(|k| file[k]),
        "memory.events"
    );

    let io = m.io.as_ref().expect("io");
    assert_eq!(io.usage.len(), after.io.len(), "one entry per io.stat line");
    for e in &io.usage {
        let dev = format!("{}:{}", e.major, e.minor);
        let (b, a) = (&before.io[&dev], &after.io[&dev]);
        for (k, v) in [
            ("rbytes", e.rbytes),
            ("wbytes", e.wbytes),
            ("rios", e.rios),
            ("wios", e.wios),
        ] {
            between(&format!("io {dev} {k}"), b[k], v, a[k]);
        }
    }

    for (file, psi) in [
        ("cpu.pressure", &cpu.psi),
        ("memory.pressure", &mem.psi),
        ("io.pressure", &io.psi),
    ] {
        match before.psi.get(file) {
            Some(b) => {
                let p = psi.as_ref().unwrap_or_else(|| panic!("no PSI from {file}"));
                between(file, *b, p.some.total, after.psi[file]);
                assert!(p.full.is_some(), "{file}: full");
            }
            None => assert!(psi.is_none(), "{file} is not readable here"),
        }
    }

    if dir.join("rdma.current").exists() {
        let r = m.rdma.as_ref().expect("rdma");
        let lines = |f| read(dir, f).lines().count();
        assert_eq!(
            (r.current.len(), r.limit.len()),
            (lines("rdma.current"), lines("rdma.max"))
        );
    } else {
        assert!(m.rdma.is_none());
    }

    if dir.join("hugetlb.2MB.current").exists() {
        let sizes: Vec<&str> = m.hugetlb.iter().map(|h| h.pagesize.as_str()).collect();
        assert_eq!(sizes, kernel_hugepage_sizes(), "one entry per page size");
        for h in &m.hugetlb {
            let s = &h.pagesize;
            assert_eq!(h.current, num(dir, &format!("hugetlb.{s}.current")));
            assert_eq!(h.max, num(dir, &format!("hugetlb.{s}.max")));
            assert_eq!(h.failcnt, kv(dir, &format!("hugetlb.{s}.events"))["max"]);
        }
    } else {
        assert!(m.hugetlb.is_empty());
    }
    m
}
