//! cgroup v2 statistics → `io.containerd.cgroups.v2.Metrics`, read from one
//! unified directory: pids, cpu, memory, memory events, io, rdma, hugetlb, and
//! the pressure (PSI) of cpu, memory and io. A value of `max` (no limit) reads
//! as `u64::MAX` (rdma: `u32::MAX`), as containerd's Go shim reports it.
//!
//! [`Files`] opens the files once ([`super::kept`]); each Stats reads them
//! again in place. The parser is unit-tested on trees recorded in the cgroup
//! v2 guest (`tests/fixtures/cgroup/v2`); `tests/cgroup_v2.rs` compares it
//! with the live files there.

use std::io;
use std::path::Path;

use containerd_shim_protos::cgroups_v2::metrics::*;
use containerd_shim_protos::protobuf::MessageField;

use super::kept::{self, fields, lines, num, pairs, parse, split_once, Kept, Opener};

/// The memory counters' files, in [`MemoryStat`]'s order below.
const MEMORY_FILES: [&str; 6] = [
    "current",
    "max",
    "swap.current",
    "swap.max",
    "peak",
    "swap.peak",
];

/// The stat files of a container's unified cgroup directory.
pub struct Files {
    pids: [Kept; 2],
    cpu: [Kept; 2],
    memory: [Kept; 6],
    /// memory.stat, memory.pressure, memory.events
    memory_more: [Kept; 3],
    io: [Kept; 2],
    rdma: [Kept; 2],
    hugetlb: Vec<(String, [Kept; 3])>,
}

impl Files {
    /// Opens the stat files of `dir`; a missing directory is NotFound.
    pub fn open(dir: &Path, o: &mut Opener) -> io::Result<Files> {
        if !dir.is_dir() {
            return Err(kept::gone());
        }
        let mut hugetlb = Vec::new();
        for s in kept::hugetlb_sizes(dir, ".current") {
            let files = o.open_all(dir, &format!("hugetlb.{s}."), ["current", "max", "events"])?;
            hugetlb.push((s, files));
        }
        Ok(Files {
            pids: o.open_all(dir, "pids.", ["current", "max"])?,
            cpu: o.open_all(dir, "cpu.", ["stat", "pressure"])?,
            memory: o.open_all(dir, "memory.", MEMORY_FILES)?,
            memory_more: o.open_all(dir, "memory.", ["stat", "pressure", "events"])?,
            io: o.open_all(dir, "io.", ["stat", "pressure"])?,
            rdma: o.open_all(dir, "rdma.", ["current", "max"])?,
            hugetlb,
        })
    }

    /// Reads every statistic, with `buf` as the reading buffer.
    pub fn read(&mut self, buf: &mut Vec<u8>) -> io::Result<Metrics> {
        let mut m = Metrics::new();
        let [current, max] = &self.pids;
        if current.is_present() {
            m.pids = MessageField::some(PidsStat {
                current: num(current.read(buf)?, 0),
                limit: num(max.read(buf)?, u64::MAX),
                ..Default::default()
            });
        }
        let [stat, pressure] = &self.cpu;
        let mut c = CPUStat::new();
        let mut any = false;
        for (k, v) in pairs(stat.read(buf)?) {
            any = true;
            let field = match k {
                b"usage_usec" => &mut c.usage_usec,
                b"user_usec" => &mut c.user_usec,
                b"system_usec" => &mut c.system_usec,
                b"nr_periods" => &mut c.nr_periods,
                b"nr_throttled" => &mut c.nr_throttled,
                b"throttled_usec" => &mut c.throttled_usec,
                b"nr_bursts" => &mut c.nr_bursts,
                b"burst_usec" => &mut c.burst_usec,
                _ => continue,
            };
            *field = v;
        }
        if any {
            c.psi = psi(pressure.read_opt(buf)?);
            m.cpu = MessageField::some(c);
        }
        if self.memory[0].is_present() {
            let [stat, pressure, events] = &self.memory_more;
            let mut s = memory_stat(stat.read(buf)?);
            let [usage, limit, swap, swap_limit, peak, swap_peak] = &self.memory;
            s.usage = num(usage.read(buf)?, 0);
            s.usage_limit = num(limit.read(buf)?, u64::MAX);
            s.swap_usage = num(swap.read(buf)?, 0);
            s.swap_limit = num(swap_limit.read(buf)?, u64::MAX);
            s.max_usage = num(peak.read(buf)?, 0);
            s.swap_max_usage = num(swap_peak.read(buf)?, 0);
            s.psi = psi(pressure.read_opt(buf)?);
            m.memory = MessageField::some(s);
            let mut ev = MemoryEvents::new();
            for (k, v) in pairs(events.read(buf)?) {
                let field = match k {
                    b"low" => &mut ev.low,
                    b"high" => &mut ev.high,
                    b"max" => &mut ev.max,
                    b"oom" => &mut ev.oom,
                    b"oom_kill" => &mut ev.oom_kill,
                    b"oom_group_kill" => &mut ev.oom_group_kill,
                    _ => continue,
                };
                *field = v;
            }
            m.memory_events = MessageField::some(ev);
        }
        let [stat, pressure] = &self.io;
        let usage = io_entries(stat.read(buf)?);
        let io_psi = psi(pressure.read_opt(buf)?);
        if !usage.is_empty() || io_psi.is_some() {
            m.io = MessageField::some(IOStat {
                usage,
                psi: io_psi,
                ..Default::default()
            });
        }
        let [current, max] = &self.rdma;
        if current.is_present() {
            m.rdma = MessageField::some(RdmaStat {
                current: rdma_entries(current.read(buf)?),
                limit: rdma_entries(max.read(buf)?),
                ..Default::default()
            });
        }
        for (size, [current, max, events]) in &self.hugetlb {
            m.hugetlb.push(HugeTlbStat {
                current: num(current.read(buf)?, 0),
                max: num(max.read(buf)?, u64::MAX),
                failcnt: pairs(events.read(buf)?)
                    .find(|(k, _)| *k == b"max")
                    .map_or(0, |(_, v)| v),
                pagesize: size.clone(),
                ..Default::default()
            });
        }
        Ok(m)
    }
}

/// Pressure stall information (`cpu.pressure`, …): `some` and `full` lines
/// of `avg10=.. avg60=.. avg300=.. total=..`. None when the file is missing
/// or unreadable (a kernel without PSI, or booted `psi=0`).
fn psi(text: Option<&[u8]>) -> MessageField<PSIStats> {
    let Some(text) = text else {
        return MessageField::none();
    };
    let mut stats = PSIStats::new();
    for line in lines(text) {
        let mut f = fields(line);
        let slot = match f.next() {
            Some(b"some") => &mut stats.some,
            Some(b"full") => &mut stats.full,
            _ => continue,
        };
        let mut d = PSIData::new();
        for kv in f {
            match split_once(kv, b'=') {
                Some((b"avg10", v)) => d.avg10 = parse(v).unwrap_or(0.0),
                Some((b"avg60", v)) => d.avg60 = parse(v).unwrap_or(0.0),
                Some((b"avg300", v)) => d.avg300 = parse(v).unwrap_or(0.0),
                Some((b"total", v)) => d.total = parse(v).unwrap_or(0),
                _ => {}
            }
        }
        *slot = MessageField::some(d);
    }
    MessageField::some(stats)
}

/// Parses `rdma.current` / `rdma.max` lines:
/// `DEVICE hca_handle=N hca_object=N` (`max` for no limit).
pub fn rdma_entries(text: &[u8]) -> Vec<RdmaEntry> {
    lines(text)
        .filter_map(|l| {
            let mut f = fields(l);
            let mut e = RdmaEntry {
                device: String::from_utf8_lossy(f.next()?).into_owned(),
                ..Default::default()
            };
            for kv in f {
                let (k, v) = split_once(kv, b'=')?;
                let v = if v == b"max" { u32::MAX } else { parse(v)? };
                match k {
                    b"hca_handle" => e.hca_handles = v,
                    b"hca_object" => e.hca_objects = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

/// `memory.stat`.
fn memory_stat(text: &[u8]) -> MemoryStat {
    let mut s = MemoryStat::new();
    let (mut refault, mut activate) = ([0u64; 2], [0u64; 2]);
    for (k, v) in pairs(text) {
        let field = match k {
            b"anon" => &mut s.anon,
            b"file" => &mut s.file,
            b"kernel_stack" => &mut s.kernel_stack,
            b"slab" => &mut s.slab,
            b"sock" => &mut s.sock,
            b"shmem" => &mut s.shmem,
            b"file_mapped" => &mut s.file_mapped,
            b"file_dirty" => &mut s.file_dirty,
            b"file_writeback" => &mut s.file_writeback,
            b"anon_thp" => &mut s.anon_thp,
            b"inactive_anon" => &mut s.inactive_anon,
            b"active_anon" => &mut s.active_anon,
            b"inactive_file" => &mut s.inactive_file,
            b"active_file" => &mut s.active_file,
            b"unevictable" => &mut s.unevictable,
            b"slab_reclaimable" => &mut s.slab_reclaimable,
            b"slab_unreclaimable" => &mut s.slab_unreclaimable,
            b"pgfault" => &mut s.pgfault,
            b"pgmajfault" => &mut s.pgmajfault,
            // Linux 5.9+ splits these by anon and file; containerd reports the sum.
            b"workingset_refault" => &mut s.workingset_refault,
            b"workingset_refault_anon" => &mut refault[0],
            b"workingset_refault_file" => &mut refault[1],
            b"workingset_activate" => &mut s.workingset_activate,
            b"workingset_activate_anon" => &mut activate[0],
            b"workingset_activate_file" => &mut activate[1],
            b"workingset_nodereclaim" => &mut s.workingset_nodereclaim,
            b"pgrefill" => &mut s.pgrefill,
            b"pgscan" => &mut s.pgscan,
            b"pgsteal" => &mut s.pgsteal,
            b"pgactivate" => &mut s.pgactivate,
            b"pgdeactivate" => &mut s.pgdeactivate,
            b"pglazyfree" => &mut s.pglazyfree,
            b"pglazyfreed" => &mut s.pglazyfreed,
            b"thp_fault_alloc" => &mut s.thp_fault_alloc,
            b"thp_collapse_alloc" => &mut s.thp_collapse_alloc,
            _ => continue,
        };
        *field = v;
    }
    s.workingset_refault = s.workingset_refault.max(refault[0] + refault[1]);
    s.workingset_activate = s.workingset_activate.max(activate[0] + activate[1]);
    s
}

/// Parses `io.stat` lines: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. …`.
pub fn io_entries(text: &[u8]) -> Vec<IOEntry> {
    lines(text)
        .filter_map(|l| {
            let mut f = fields(l);
            let (maj, min) = split_once(f.next()?, b':')?;
            let mut e = IOEntry {
                major: parse(maj)?,
                minor: parse(min)?,
                ..Default::default()
            };
            for kv in f {
                let (k, v) = split_once(kv, b'=')?;
                let v: u64 = parse(v).unwrap_or(0);
                match k {
                    b"rbytes" => e.rbytes = v,
                    b"wbytes" => e.wbytes = v,
                    b"rios" => e.rios = v,
                    b"wios" => e.wios = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

/// Opens and reads once: what a test of a recorded tree needs.
#[cfg(test)]
pub fn stats(dir: &Path) -> Metrics {
    Files::open(dir, &mut Opener::new())
        .and_then(|mut f| f.read(&mut Vec::new()))
        .unwrap()
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
            b"mlx4_0 hca_handle=2 hca_object=2000\nocrdma1 hca_handle=3 hca_object=max\n",
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
        let e = io_entries(b"8:16 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\nbad line\n");
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
