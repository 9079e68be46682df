//! cgroup v2 statistics → `io.containerd.cgroups.v2.Metrics`, read from one
//! unified directory. (This machine runs cgroup v1; the parser is tested on a
//! recorded v2 tree in `tests/fixtures/cgroup/v2`.)

use std::path::Path;

use containerd_shim_protos::cgroups_v2::metrics::*;
use containerd_shim_protos::protobuf::MessageField;

use super::{hugetlb_sizes, read, read_kv, read_u64};

/// Collects every statistic available in `dir`.
pub fn stats(dir: &Path) -> Metrics {
    let mut m = Metrics::new();
    if dir.join("pids.current").exists() {
        m.pids = MessageField::some(PidsStat {
            current: read_u64(dir, "pids.current", 0),
            limit: read_u64(dir, "pids.max", 0),
            ..Default::default()
        });
    }
    let cpu = read_kv(dir, "cpu.stat");
    if !cpu.is_empty() {
        let g = |k: &str| cpu.get(k).copied().unwrap_or(0);
        m.cpu = MessageField::some(CPUStat {
            usage_usec: g("usage_usec"),
            user_usec: g("user_usec"),
            system_usec: g("system_usec"),
            nr_periods: g("nr_periods"),
            nr_throttled: g("nr_throttled"),
            throttled_usec: g("throttled_usec"),
            nr_bursts: g("nr_bursts"),
            burst_usec: g("burst_usec"),
            ..Default::default()
        });
    }
    if dir.join("memory.current").exists() {
        m.memory = MessageField::some(memory(dir));
        let ev = read_kv(dir, "memory.events");
        let g = |k: &str| ev.get(k).copied().unwrap_or(0);
        m.memory_events = MessageField::some(MemoryEvents {
            low: g("low"),
            high: g("high"),
            max: g("max"),
            oom: g("oom"),
            oom_kill: g("oom_kill"),
            oom_group_kill: g("oom_group_kill"),
            ..Default::default()
        });
    }
    let io = io_entries(&read(dir, "io.stat"));
    if !io.is_empty() {
        m.io = MessageField::some(IOStat {
            usage: io,
            ..Default::default()
        });
    }
    m.hugetlb = hugetlb(dir);
    m
}

fn memory(d: &Path) -> MemoryStat {
    let st = read_kv(d, "memory.stat");
    let g = |k: &str| st.get(k).copied().unwrap_or(0);
    MemoryStat {
        anon: g("anon"),
        file: g("file"),
        kernel_stack: g("kernel_stack"),
        slab: g("slab"),
        sock: g("sock"),
        shmem: g("shmem"),
        file_mapped: g("file_mapped"),
        file_dirty: g("file_dirty"),
        file_writeback: g("file_writeback"),
        anon_thp: g("anon_thp"),
        inactive_anon: g("inactive_anon"),
        active_anon: g("active_anon"),
        inactive_file: g("inactive_file"),
        active_file: g("active_file"),
        unevictable: g("unevictable"),
        slab_reclaimable: g("slab_reclaimable"),
        slab_unreclaimable: g("slab_unreclaimable"),
        pgfault: g("pgfault"),
        pgmajfault: g("pgmajfault"),
        workingset_refault: g("workingset_refault")
            .max(g("workingset_refault_anon") + g("workingset_refault_file")),
        workingset_activate: g("workingset_activate")
            .max(g("workingset_activate_anon") + g("workingset_activate_file")),
        workingset_nodereclaim: g("workingset_nodereclaim"),
        pgrefill: g("pgrefill"),
        pgscan: g("pgscan"),
        pgsteal: g("pgsteal"),
        pgactivate: g("pgactivate"),
        pgdeactivate: g("pgdeactivate"),
        pglazyfree: g("pglazyfree"),
        pglazyfreed: g("pglazyfreed"),
        thp_fault_alloc: g("thp_fault_alloc"),
        thp_collapse_alloc: g("thp_collapse_alloc"),
        usage: read_u64(d, "memory.current", 0),
        usage_limit: read_u64(d, "memory.max", u64::MAX),
        swap_usage: read_u64(d, "memory.swap.current", 0),
        swap_limit: read_u64(d, "memory.swap.max", u64::MAX),
        max_usage: read_u64(d, "memory.peak", 0),
        swap_max_usage: read_u64(d, "memory.swap.peak", 0),
        ..Default::default()
    }
}

/// Parses `io.stat` lines: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. …`.
pub fn io_entries(text: &str) -> Vec<IOEntry> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (maj, min) = f.next()?.split_once(':')?;
            let mut e = IOEntry {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                ..Default::default()
            };
            for kv in f {
                let (k, v) = kv.split_once('=')?;
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => e.rbytes = v,
                    "wbytes" => e.wbytes = v,
                    "rios" => e.rios = v,
                    "wios" => e.wios = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

fn hugetlb(d: &Path) -> Vec<HugeTlbStat> {
    hugetlb_sizes(d, ".current")
        .into_iter()
        .map(|s| HugeTlbStat {
            current: read_u64(d, &format!("hugetlb.{s}.current"), 0),
            max: read_u64(d, &format!("hugetlb.{s}.max"), u64::MAX),
            failcnt: read_kv(d, &format!("hugetlb.{s}.events"))
                .get("max")
                .copied()
                .unwrap_or(0),
            pagesize: s,
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_recorded_v2_tree() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroup/v2/pod/ctr");
        let m = stats(&dir);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.pids.limit, 1024);
        let cpu = m.cpu.as_ref().unwrap();
        assert_eq!(
            (cpu.usage_usec, cpu.user_usec, cpu.system_usec),
            (48_210, 30_101, 18_109)
        );
        assert_eq!(
            (cpu.nr_periods, cpu.nr_throttled, cpu.throttled_usec),
            (12, 2, 5_400)
        );
        let mem = m.memory.as_ref().unwrap();
        assert_eq!(mem.usage, 2_240_512);
        assert_eq!(mem.usage_limit, 67_108_864);
        assert_eq!(mem.swap_limit, u64::MAX, "max means no limit");
        assert_eq!(mem.anon, 356_352);
        assert_eq!(mem.file, 1_245_184);
        assert_eq!(mem.pgfault, 2_101);
        assert_eq!(mem.max_usage, 3_145_728);
        assert_eq!(mem.workingset_refault, 3);
        let ev = m.memory_events.as_ref().unwrap();
        assert_eq!((ev.max, ev.oom, ev.oom_kill), (9, 1, 1));
        let io = &m.io.as_ref().unwrap().usage;
        assert_eq!(io.len(), 2);
        assert_eq!(
            (io[0].major, io[0].minor, io[0].rbytes, io[0].wios),
            (254, 0, 1_228_800, 14)
        );
        assert_eq!(m.hugetlb.len(), 1);
        assert_eq!(
            (m.hugetlb[0].pagesize.as_str(), m.hugetlb[0].failcnt),
            ("2MB", 4)
        );
    }

    #[test]
    fn parses_io_stat_lines() {
        let e = io_entries("8:16 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\nbad line\n");
        assert_eq!(e.len(), 1);
        assert_eq!(
            (
                e[0].major,
                e[0].minor,
                e[0].rbytes,
                e[0].wbytes,
                e[0].rios,
                e[0].wios
            ),
            (8, 16, 1, 2, 3, 4)
        );
    }
}
