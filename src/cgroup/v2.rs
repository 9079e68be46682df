//! cgroup v2 statistics → `io.containerd.cgroups.v2.Metrics`, read from one
//! unified directory: pids, cpu, memory, memory events, io, rdma, hugetlb, and
//! the pressure (PSI) of cpu, memory and io. A value of `max` (no limit) reads
//! as `u64::MAX` (rdma: `u32::MAX`), as containerd's Go shim reports it.
//!
//! The parser is unit-tested on trees recorded in the cgroup v2 guest
//! (`tests/fixtures/cgroup/v2`); `tests/cgroup_v2.rs` compares it with the
//! live files there.

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
            limit: read_u64(dir, "pids.max", u64::MAX),
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
            psi: psi(dir, "cpu.pressure"),
            ..Default::default()
        });
    }
    if dir.join("memory.current").exists() {
        m.memory = MessageField::some(MemoryStat {
            psi: psi(dir, "memory.pressure"),
            ..memory(dir)
        });
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
    let io_psi = psi(dir, "io.pressure");
    if !io.is_empty() || io_psi.is_some() {
        m.io = MessageField::some(IOStat {
            usage: io,
            psi: io_psi,
            ..Default::default()
        });
    }
    if dir.join("rdma.current").exists() {
        m.rdma = MessageField::some(RdmaStat {
            current: rdma_entries(&read(dir, "rdma.current")),
            limit: rdma_entries(&read(dir, "rdma.max")),
            ..Default::default()
        });
    }
    m.hugetlb = hugetlb(dir);
    m
}

/// Pressure stall information from `file` (`cpu.pressure`, …): `some` and
/// `full` lines of `avg10=.. avg60=.. avg300=.. total=..`. None when the
/// file is missing or unreadable (a kernel without PSI, or booted `psi=0`).
fn psi(dir: &Path, file: &str) -> MessageField<PSIStats> {
    let Ok(text) = std::fs::read_to_string(dir.join(file)) else {
        return MessageField::none();
    };
    let mut stats = PSIStats::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let slot = match f.next() {
            Some("some") => &mut stats.some,
            Some("full") => &mut stats.full,
            _ => continue,
        };
        let mut d = PSIData::new();
        for kv in f {
            match kv.split_once('=') {
                Some(("avg10", v)) => d.avg10 = v.parse().unwrap_or(0.0),
                Some(("avg60", v)) => d.avg60 = v.parse().unwrap_or(0.0),
                Some(("avg300", v)) => d.avg300 = v.parse().unwrap_or(0.0),
                Some(("total", v)) => d.total = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        *slot = MessageField::some(d);
    }
    MessageField::some(stats)
}

/// Parses `rdma.current` / `rdma.max` lines:
/// `DEVICE hca_handle=N hca_object=N` (`max` for no limit).
pub fn rdma_entries(text: &str) -> Vec<RdmaEntry> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let mut e = RdmaEntry {
                device: f.next()?.to_string(),
                ..Default::default()
            };
            for kv in f {
                let (k, v) = kv.split_once('=')?;
                let v = if v == "max" {
                    u32::MAX
                } else {
                    v.parse().ok()?
                };
                match k {
                    "hca_handle" => e.hca_handles = v,
                    "hca_object" => e.hca_objects = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
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

    fn fixture(tree: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cgroup/v2")
            .join(tree)
    }

    /// Recorded in the guest: runc with the systemd driver (a scope with
    /// TasksMax), 64 MiB, `--cpus 0.2`, after a CPU burner and an exec that
    /// was OOM-killed.
    #[test]
    fn reads_a_recorded_systemd_scope() {
        let m = stats(&fixture("system.slice/wedge-fx.scope"));
        assert_eq!((m.pids.current, m.pids.limit), (1, 2340));
        let cpu = m.cpu.as_ref().unwrap();
        assert_eq!(
            (cpu.usage_usec, cpu.user_usec, cpu.system_usec),
            (6_547_916, 4_842_082, 1_705_834)
        );
        assert_eq!(
            (cpu.nr_periods, cpu.nr_throttled, cpu.throttled_usec),
            (317, 306, 24_894_195)
        );
        let cpu_psi = cpu.psi.as_ref().unwrap();
        assert_eq!(cpu_psi.some.avg10, 56.52);
        assert_eq!(cpu_psi.full.total, 22_366_662);
        let mem = m.memory.as_ref().unwrap();
        assert_eq!((mem.usage, mem.usage_limit), (294_912, 67_108_864));
        assert_eq!((mem.swap_usage, mem.swap_limit), (0, u64::MAX));
        assert_eq!(mem.max_usage, 67_108_864, "memory.peak");
        assert_eq!((mem.anon, mem.file, mem.slab), (53_248, 4_096, 176_496));
        assert_eq!(
            (mem.pgfault, mem.pgscan, mem.pgsteal),
            (4_110, 2_066, 2_055)
        );
        assert_eq!(mem.thp_fault_alloc, 27);
        assert_eq!(mem.psi.as_ref().unwrap().some.total, 344_390);
        let ev = m.memory_events.as_ref().unwrap();
        assert_eq!((ev.max, ev.oom, ev.oom_kill), (67, 1, 1));
        let io = m.io.as_ref().unwrap();
        assert_eq!(io.usage.len(), 1);
        let e = &io.usage[0];
        assert_eq!(
            (e.major, e.minor, e.rbytes, e.wbytes, e.rios, e.wios),
            (254, 0, 28_672, 8_388_608, 1, 7)
        );
        assert_eq!(io.psi.as_ref().unwrap().full.total, 54);
        let rdma = m.rdma.as_ref().unwrap();
        assert!(rdma.current.is_empty() && rdma.limit.is_empty());
        // One entry per page size; the `.rsvd` files are not sizes.
        let sizes: Vec<_> = m.hugetlb.iter().map(|h| h.pagesize.as_str()).collect();
        assert_eq!(sizes, ["1GB", "2MB"]);
        assert!(m
            .hugetlb
            .iter()
            .all(|h| (h.current, h.max, h.failcnt) == (0, u64::MAX, 0)));
    }

    /// Recorded in the guest: runc with the cgroupfs driver, no pids limit.
    /// containerd's Go shim reports `max` as 18446744073709551615.
    #[test]
    fn pids_max_reads_as_no_limit() {
        let m = stats(&fixture("default/fx"));
        assert_eq!(m.pids.limit, u64::MAX);
        assert!(m.pids.current >= 1);
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("pids.current"), "3\n").unwrap();
        std::fs::write(d.path().join("pids.max"), "1024\n").unwrap();
        assert_eq!(
            (stats(d.path()).pids.current, stats(d.path()).pids.limit),
            (3, 1024)
        );
    }

    #[test]
    fn parses_rdma_lines() {
        let e = rdma_entries(
            "mlx4_0 hca_handle=2 hca_object=2000\nocrdma1 hca_handle=3 hca_object=max\n",
        );
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].device.as_str(), e[0].hca_handles, e[0].hca_objects),
            ("mlx4_0", 2, 2000)
        );
        assert_eq!((e[1].hca_handles, e[1].hca_objects), (3, u32::MAX));
    }

    #[test]
    fn psi_is_absent_without_pressure_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cpu.stat"), "usage_usec 5\n").unwrap();
        let m = stats(d.path());
        assert_eq!(m.cpu.usage_usec, 5);
        assert!(m.cpu.psi.is_none());
        assert!(m.io.is_none() && m.rdma.is_none());
    }

    #[test]
    fn hugetlb_failcnt_is_the_max_event_count() {
        let d = tempfile::tempdir().unwrap();
        for (f, v) in [
            ("hugetlb.2MB.current", "4194304"),
            ("hugetlb.2MB.max", "8388608"),
            ("hugetlb.2MB.events", "max 4"),
            ("hugetlb.2MB.rsvd.current", "0"),
            ("hugetlb.2MB.rsvd.max", "max"),
        ] {
            std::fs::write(d.path().join(f), format!("{v}\n")).unwrap();
        }
        let h = stats(d.path()).hugetlb;
        assert_eq!(h.len(), 1);
        assert_eq!(
            (h[0].pagesize.as_str(), h[0].current, h[0].max, h[0].failcnt),
            ("2MB", 4_194_304, 8_388_608, 4)
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
