//! cgroup v1 statistics → `io.containerd.cgroups.v1.Metrics`. Every field the
//! kernel exposes in the container's controller directories is filled.
//!
//! [`Files`] opens the files once ([`super::kept`]); each Stats reads them
//! again in place.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;

use containerd_shim_protos::cgroups::metrics::*;
use containerd_shim_protos::protobuf::MessageField;

use super::kept::{self, fields, lines, num, pairs, parse, split_once, Devices, Kept, Opener};

/// USER_HZ: cpuacct.stat counts in these ticks.
const TICKS_PER_SEC: u64 = 100;

/// The prefixes of the four memory counters (usage, max, failcnt, limit).
const MEMORY_ENTRIES: [&str; 4] = [
    "memory.",
    "memory.memsw.",
    "memory.kmem.",
    "memory.kmem.tcp.",
];
const ENTRY_FILES: [&str; 4] = [
    "usage_in_bytes",
    "max_usage_in_bytes",
    "failcnt",
    "limit_in_bytes",
];
/// blkio counters read from the I/O scheduler's files (CFQ, BFQ) when they
/// have entries, else from the throttle layer's, which count all I/O.
const BLKIO_PICKED: [&str; 2] = ["io_service_bytes_recursive", "io_serviced_recursive"];
const BLKIO_LAYERS: [&str; 3] = ["blkio.", "blkio.bfq.", "blkio.throttle."];
/// blkio counters only CFQ has.
const BLKIO_ONLY: [&str; 6] = [
    "io_queued_recursive",
    "io_service_time_recursive",
    "io_wait_time_recursive",
    "io_merged_recursive",
    "time_recursive",
    "sectors_recursive",
];

/// The stat files of a container's v1 controllers; a controller whose
/// directory did not exist at open is left out of the metrics.
pub struct Files {
    pids: Option<[Kept; 2]>,
    cpuacct: Option<[Kept; 3]>,
    cpu: Option<Kept>,
    memory: Option<Memory>,
    blkio: Option<Blkio>,
    hugetlb: Option<Vec<(String, [Kept; 3])>>,
    devices: Devices,
}

struct Memory {
    stat: Kept,
    oom_control: Kept,
    entries: [[Kept; 4]; 4],
}

struct Blkio {
    picked: [[Kept; 3]; 2],
    only: [Kept; 6],
}

impl Files {
    /// Opens the stat files under `paths` (controller → dir).
    pub fn open(paths: &HashMap<String, PathBuf>, o: &mut Opener) -> io::Result<Files> {
        let dir = |c: &str| paths.get(c).filter(|d| d.is_dir()).map(PathBuf::as_path);
        let mut f = Files {
            pids: None,
            cpuacct: None,
            cpu: None,
            memory: None,
            blkio: None,
            hugetlb: None,
            devices: Devices::default(),
        };
        if let Some(d) = dir("pids") {
            f.pids = Some(o.open_all(d, "pids.", ["current", "max"])?);
        }
        if let Some(d) = dir("cpuacct") {
            f.cpuacct = Some(o.open_all(d, "cpuacct.", ["stat", "usage", "usage_percpu"])?);
        }
        if let Some(d) = dir("cpu") {
            f.cpu = Some(o.open(d, "cpu.stat")?);
        }
        if let Some(d) = dir("memory") {
            let mut entries: [[Kept; 4]; 4] = Default::default();
            for (slot, prefix) in entries.iter_mut().zip(MEMORY_ENTRIES) {
                *slot = o.open_all(d, prefix, ENTRY_FILES)?;
            }
            f.memory = Some(Memory {
                stat: o.open(d, "memory.stat")?,
                oom_control: o.open(d, "memory.oom_control")?,
                entries,
            });
        }
        if let Some(d) = dir("blkio") {
            let mut picked: [[Kept; 3]; 2] = Default::default();
            for (slot, name) in picked.iter_mut().zip(BLKIO_PICKED) {
                for (k, layer) in slot.iter_mut().zip(BLKIO_LAYERS) {
                    *k = o.open(d, &format!("{layer}{name}"))?;
                }
            }
            f.blkio = Some(Blkio {
                picked,
                only: o.open_all(d, "blkio.", BLKIO_ONLY)?,
            });
        }
        if let Some(d) = dir("hugetlb") {
            let mut sizes = Vec::new();
            for s in kept::hugetlb_sizes(d, ".usage_in_bytes") {
                let files = o.open_all(
                    d,
                    &format!("hugetlb.{s}."),
                    ["usage_in_bytes", "max_usage_in_bytes", "failcnt"],
                )?;
                sizes.push((s, files));
            }
            f.hugetlb = Some(sizes);
        }
        Ok(f)
    }

    /// Reads every statistic, with `buf` as the reading buffer.
    pub fn read(&mut self, buf: &mut Vec<u8>) -> io::Result<Metrics> {
        let mut m = Metrics::new();
        if let Some([current, max]) = &self.pids {
            m.pids = MessageField::some(PidsStat {
                current: num(current.read(buf)?, 0),
                limit: num(max.read(buf)?, 0),
                ..Default::default()
            });
        }
        if self.cpuacct.is_some() || self.cpu.is_some() {
            let mut c = CPUStat::new();
            if let Some([stat, usage, percpu]) = &self.cpuacct {
                let mut u = CPUUsage::new();
                for (k, v) in pairs(stat.read(buf)?) {
                    let ns = v * (1_000_000_000 / TICKS_PER_SEC);
                    match k {
                        b"user" => u.user = ns,
                        b"system" => u.kernel = ns,
                        _ => {}
                    }
                }
                u.total = num(usage.read(buf)?, 0);
                u.per_cpu = fields(percpu.read(buf)?).filter_map(parse).collect();
                c.usage = MessageField::some(u);
            }
            if let Some(stat) = &self.cpu {
                let mut t = Throttle::new();
                for (k, v) in pairs(stat.read(buf)?) {
                    match k {
                        b"nr_periods" => t.periods = v,
                        b"nr_throttled" => t.throttled_periods = v,
                        b"throttled_time" => t.throttled_time = v,
                        _ => {}
                    }
                }
                c.throttling = MessageField::some(t);
            }
            m.cpu = MessageField::some(c);
        }
        if let Some(mem) = &self.memory {
            let mut s = memory_stat(mem.stat.read(buf)?);
            let [usage, swap, kernel, kernel_tcp] = &mem.entries;
            s.usage = entry(usage, buf)?;
            s.swap = entry(swap, buf)?;
            s.kernel = entry(kernel, buf)?;
            s.kernel_tcp = entry(kernel_tcp, buf)?;
            m.memory = MessageField::some(s);
            let mut oc = MemoryOomControl::new();
            for (k, v) in pairs(mem.oom_control.read(buf)?) {
                match k {
                    b"oom_kill_disable" => oc.oom_kill_disable = v,
                    b"under_oom" => oc.under_oom = v,
                    b"oom_kill" => oc.oom_kill = v,
                    _ => {}
                }
            }
            m.memory_oom_control = MessageField::some(oc);
        }
        if let Some(b) = &self.blkio {
            let dev = &mut self.devices;
            let mut picked = [Vec::new(), Vec::new()];
            for (out, layers) in picked.iter_mut().zip(&b.picked) {
                for k in layers {
                    *out = blkio_entries(k.read(buf)?, dev);
                    if !out.is_empty() {
                        break;
                    }
                }
            }
            let [bytes, serviced] = picked;
            let [queued, service_time, wait_time, merged, time, sectors] = &b.only;
            m.blkio = MessageField::some(BlkIOStat {
                io_service_bytes_recursive: bytes,
                io_serviced_recursive: serviced,
                io_queued_recursive: blkio_entries(queued.read(buf)?, dev),
                io_service_time_recursive: blkio_entries(service_time.read(buf)?, dev),
                io_wait_time_recursive: blkio_entries(wait_time.read(buf)?, dev),
                io_merged_recursive: blkio_entries(merged.read(buf)?, dev),
                io_time_recursive: blkio_entries(time.read(buf)?, dev),
                sectors_recursive: blkio_entries(sectors.read(buf)?, dev),
                ..Default::default()
            });
        }
        if let Some(sizes) = &self.hugetlb {
            for (size, [usage, max, failcnt]) in sizes {
                m.hugetlb.push(HugetlbStat {
                    usage: num(usage.read(buf)?, 0),
                    max: num(max.read(buf)?, 0),
                    failcnt: num(failcnt.read(buf)?, 0),
                    pagesize: size.clone(),
                    ..Default::default()
                });
            }
        }
        Ok(m)
    }
}

/// A memory counter (usage, max, failcnt, limit); absent without its usage file.
fn entry(files: &[Kept; 4], buf: &mut Vec<u8>) -> io::Result<MessageField<MemoryEntry>> {
    let [usage, max, failcnt, limit] = files;
    if !usage.is_present() {
        return Ok(MessageField::none());
    }
    Ok(MessageField::some(MemoryEntry {
        usage: num(usage.read(buf)?, 0),
        max: num(max.read(buf)?, 0),
        failcnt: num(failcnt.read(buf)?, 0),
        limit: num(limit.read(buf)?, 0),
        ..Default::default()
    }))
}

/// `memory.stat`.
fn memory_stat(text: &[u8]) -> MemoryStat {
    let mut s = MemoryStat::new();
    for (k, v) in pairs(text) {
        let field = match k {
            b"cache" => &mut s.cache,
            b"rss" => &mut s.rss,
            b"rss_huge" => &mut s.rss_huge,
            b"mapped_file" => &mut s.mapped_file,
            b"dirty" => &mut s.dirty,
            b"writeback" => &mut s.writeback,
            b"pgpgin" => &mut s.pg_pg_in,
            b"pgpgout" => &mut s.pg_pg_out,
            b"pgfault" => &mut s.pg_fault,
            b"pgmajfault" => &mut s.pg_maj_fault,
            b"inactive_anon" => &mut s.inactive_anon,
            b"active_anon" => &mut s.active_anon,
            b"inactive_file" => &mut s.inactive_file,
            b"active_file" => &mut s.active_file,
            b"unevictable" => &mut s.unevictable,
            b"hierarchical_memory_limit" => &mut s.hierarchical_memory_limit,
            b"hierarchical_memsw_limit" => &mut s.hierarchical_swap_limit,
            b"total_cache" => &mut s.total_cache,
            b"total_rss" => &mut s.total_rss,
            b"total_rss_huge" => &mut s.total_rss_huge,
            b"total_mapped_file" => &mut s.total_mapped_file,
            b"total_dirty" => &mut s.total_dirty,
            b"total_writeback" => &mut s.total_writeback,
            b"total_pgpgin" => &mut s.total_pg_pg_in,
            b"total_pgpgout" => &mut s.total_pg_pg_out,
            b"total_pgfault" => &mut s.total_pg_fault,
            b"total_pgmajfault" => &mut s.total_pg_maj_fault,
            b"total_inactive_anon" => &mut s.total_inactive_anon,
            b"total_active_anon" => &mut s.total_active_anon,
            b"total_inactive_file" => &mut s.total_inactive_file,
            b"total_active_file" => &mut s.total_active_file,
            b"total_unevictable" => &mut s.total_unevictable,
            _ => continue,
        };
        *field = v;
    }
    s
}

/// Parses `MAJ:MIN [Op] value` lines; the `Total` line is skipped.
pub fn blkio_entries(text: &[u8], devices: &mut Devices) -> Vec<BlkIOEntry> {
    lines(text)
        .filter_map(|l| {
            let mut f = fields(l);
            let (dev, a, b) = (f.next()?, f.next()?, f.next());
            let (op, value) = match b {
                Some(v) => (a, v),
                None => (&b""[..], a),
            };
            let (maj, min) = split_once(dev, b':')?;
            let (major, minor) = (parse(maj)?, parse(min)?);
            Some(BlkIOEntry {
                op: String::from_utf8_lossy(op).into_owned(),
                device: devices.name(major, minor),
                major,
                minor,
                value: parse(value)?,
                ..Default::default()
            })
        })
        .collect()
}

/// Opens and reads once: what a test of a recorded tree needs.
#[cfg(test)]
pub fn stats(paths: &HashMap<String, PathBuf>) -> Metrics {
    Files::open(paths, &mut Opener::new())
        .and_then(|mut f| f.read(&mut Vec::new()))
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture() -> HashMap<String, PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroup/v1");
        ["memory", "cpu", "cpuacct", "pids", "blkio", "hugetlb"]
            .iter()
            .map(|c| (c.to_string(), root.join(c)))
            .collect()
    }

    #[test]
    fn reads_every_controller_of_a_recorded_tree() {
        let m = stats(&fixture());
        let mem = m.memory.as_ref().unwrap();
        let usage = mem.usage.as_ref().unwrap();
        assert_eq!(usage.usage, 1_552_384);
        assert_eq!(usage.limit, 52_428_800);
        assert_eq!(usage.max, 2_248_704);
        assert_eq!(mem.rss, 53_248);
        assert_eq!(mem.total_cache, 1_032_192);
        assert_eq!(mem.pg_fault, 726);
        assert_eq!(mem.hierarchical_memory_limit, 52_428_800);
        assert_eq!(mem.kernel.as_ref().unwrap().usage, 278_528);
        assert_eq!(mem.swap.as_ref().unwrap().usage, 1_552_384);
        assert_eq!(m.memory_oom_control.oom_kill, 0);
        let cpu = m.cpu.as_ref().unwrap();
        let u = cpu.usage.as_ref().unwrap();
        assert_eq!(u.total, 15_271_030);
        assert_eq!(u.per_cpu, vec![9_726_101, 5_544_929]);
        assert_eq!(u.user, 0);
        assert_eq!(u.kernel, 10_000_000);
        assert_eq!(cpu.throttling.periods, 0);
        assert_eq!(m.pids.current, 1);
        assert_eq!(m.pids.limit, 0, "max means no limit");
        let b = m.blkio.as_ref().unwrap();
        assert_eq!(
            b.io_service_bytes_recursive.len(),
            6,
            "device lines, not the bare Total"
        );
        assert_eq!(b.io_serviced_recursive[1].value, 12);
        assert_eq!(b.io_service_bytes_recursive[0].op, "Read");
        assert_eq!(b.io_service_bytes_recursive[0].value, 4096);
        assert_eq!(
            (
                b.io_service_bytes_recursive[0].major,
                b.io_service_bytes_recursive[0].minor
            ),
            (254, 0)
        );
        assert_eq!(m.hugetlb.len(), 1);
        assert_eq!(m.hugetlb[0].pagesize, "2MB");
        assert_eq!(m.hugetlb[0].usage, 2_097_152);
    }

    #[test]
    fn missing_controllers_are_left_out() {
        let mut p = HashMap::new();
        p.insert("memory".to_string(), PathBuf::from("/nonexistent"));
        let m = stats(&p);
        assert!(m.memory.is_none() && m.cpu.is_none() && m.pids.is_none());
    }
}
