//! cgroup v1 statistics → `io.containerd.cgroups.v1.Metrics`. Every field the
//! kernel exposes in the container's controller directories is filled.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_shim_protos::cgroups::metrics::*;
use containerd_shim_protos::protobuf::MessageField;

use super::{hugetlb_sizes, read, read_kv, read_u64};

/// USER_HZ: cpuacct.stat counts in these ticks.
const TICKS_PER_SEC: u64 = 100;

/// Collects every statistic available under `paths` (controller → dir).
pub fn stats(paths: &HashMap<String, PathBuf>) -> Metrics {
    let mut m = Metrics::new();
    let dir = |c: &str| paths.get(c).filter(|d| d.exists()).map(PathBuf::as_path);
    if let Some(d) = dir("pids") {
        m.pids = MessageField::some(PidsStat {
            current: read_u64(d, "pids.current", 0),
            limit: read_u64(d, "pids.max", 0),
            ..Default::default()
        });
    }
    let cpuacct = dir("cpuacct");
    let cpu = dir("cpu");
    if cpuacct.is_some() || cpu.is_some() {
        let mut c = CPUStat::new();
        if let Some(d) = cpuacct {
            let st = read_kv(d, "cpuacct.stat");
            let ns = |k: &str| st.get(k).copied().unwrap_or(0) * (1_000_000_000 / TICKS_PER_SEC);
            c.usage = MessageField::some(CPUUsage {
                total: read_u64(d, "cpuacct.usage", 0),
                user: ns("user"),
                kernel: ns("system"),
                per_cpu: read(d, "cpuacct.usage_percpu")
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect(),
                ..Default::default()
            });
        }
        if let Some(d) = cpu {
            let st = read_kv(d, "cpu.stat");
            let g = |k: &str| st.get(k).copied().unwrap_or(0);
            c.throttling = MessageField::some(Throttle {
                periods: g("nr_periods"),
                throttled_periods: g("nr_throttled"),
                throttled_time: g("throttled_time"),
                ..Default::default()
            });
        }
        m.cpu = MessageField::some(c);
    }
    if let Some(d) = dir("memory") {
        m.memory = MessageField::some(memory(d));
        let oc = read_kv(d, "memory.oom_control");
        let g = |k: &str| oc.get(k).copied().unwrap_or(0);
        m.memory_oom_control = MessageField::some(MemoryOomControl {
            oom_kill_disable: g("oom_kill_disable"),
            under_oom: g("under_oom"),
            oom_kill: g("oom_kill"),
            ..Default::default()
        });
    }
    if let Some(d) = dir("blkio") {
        m.blkio = MessageField::some(blkio(d));
    }
    if let Some(d) = dir("hugetlb") {
        m.hugetlb = hugetlb(d);
    }
    m
}

fn entry(d: &Path, prefix: &str) -> MessageField<MemoryEntry> {
    if !d.join(format!("{prefix}.usage_in_bytes")).exists() {
        return MessageField::none();
    }
    MessageField::some(MemoryEntry {
        usage: read_u64(d, &format!("{prefix}.usage_in_bytes"), 0),
        max: read_u64(d, &format!("{prefix}.max_usage_in_bytes"), 0),
        failcnt: read_u64(d, &format!("{prefix}.failcnt"), 0),
        limit: read_u64(d, &format!("{prefix}.limit_in_bytes"), 0),
        ..Default::default()
    })
}

fn memory(d: &Path) -> MemoryStat {
    let st = read_kv(d, "memory.stat");
    let g = |k: &str| st.get(k).copied().unwrap_or(0);
    MemoryStat {
        cache: g("cache"),
        rss: g("rss"),
        rss_huge: g("rss_huge"),
        mapped_file: g("mapped_file"),
        dirty: g("dirty"),
        writeback: g("writeback"),
        pg_pg_in: g("pgpgin"),
        pg_pg_out: g("pgpgout"),
        pg_fault: g("pgfault"),
        pg_maj_fault: g("pgmajfault"),
        inactive_anon: g("inactive_anon"),
        active_anon: g("active_anon"),
        inactive_file: g("inactive_file"),
        active_file: g("active_file"),
        unevictable: g("unevictable"),
        hierarchical_memory_limit: g("hierarchical_memory_limit"),
        hierarchical_swap_limit: g("hierarchical_memsw_limit"),
        total_cache: g("total_cache"),
        total_rss: g("total_rss"),
        total_rss_huge: g("total_rss_huge"),
        total_mapped_file: g("total_mapped_file"),
        total_dirty: g("total_dirty"),
        total_writeback: g("total_writeback"),
        total_pg_pg_in: g("total_pgpgin"),
        total_pg_pg_out: g("total_pgpgout"),
        total_pg_fault: g("total_pgfault"),
        total_pg_maj_fault: g("total_pgmajfault"),
        total_inactive_anon: g("total_inactive_anon"),
        total_active_anon: g("total_active_anon"),
        total_inactive_file: g("total_inactive_file"),
        total_active_file: g("total_active_file"),
        total_unevictable: g("total_unevictable"),
        usage: entry(d, "memory"),
        swap: entry(d, "memory.memsw"),
        kernel: entry(d, "memory.kmem"),
        kernel_tcp: entry(d, "memory.kmem.tcp"),
        ..Default::default()
    }
}

/// Device name for `major:minor` from sysfs (`/dev/<DEVNAME>`), if known.
fn device_name(major: u64, minor: u64) -> String {
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .unwrap_or_default();
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(|n| format!("/dev/{n}"))
        .unwrap_or_default()
}

/// Parses `MAJ:MIN [Op] value` lines; the `Total` line is skipped.
pub fn blkio_entries(text: &str) -> Vec<BlkIOEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dev, op, value) = match f.as_slice() {
                [dev, op, v] => (*dev, *op, *v),
                [dev, v] => (*dev, "", *v),
                _ => return None,
            };
            let (maj, min) = dev.split_once(':')?;
            let (major, minor) = (maj.parse().ok()?, min.parse().ok()?);
            Some(BlkIOEntry {
                op: op.to_string(),
                device: device_name(major, minor),
                major,
                minor,
                value: value.parse().ok()?,
                ..Default::default()
            })
        })
        .collect()
}

fn blkio(d: &Path) -> BlkIOStat {
    // The I/O scheduler's files (CFQ, BFQ) when they have entries, else the
    // throttle layer's, which count all I/O.
    let pick = |name: &str| {
        ["blkio.", "blkio.bfq.", "blkio.throttle."]
            .iter()
            .map(|p| blkio_entries(&read(d, &format!("{p}{name}"))))
            .find(|e| !e.is_empty())
            .unwrap_or_default()
    };
    let only = |name: &str| blkio_entries(&read(d, &format!("blkio.{name}")));
    BlkIOStat {
        io_service_bytes_recursive: pick("io_service_bytes_recursive"),
        io_serviced_recursive: pick("io_serviced_recursive"),
        io_queued_recursive: only("io_queued_recursive"),
        io_service_time_recursive: only("io_service_time_recursive"),
        io_wait_time_recursive: only("io_wait_time_recursive"),
        io_merged_recursive: only("io_merged_recursive"),
        io_time_recursive: only("time_recursive"),
        sectors_recursive: only("sectors_recursive"),
        ..Default::default()
    }
}

fn hugetlb(d: &Path) -> Vec<HugetlbStat> {
    hugetlb_sizes(d, ".usage_in_bytes")
        .into_iter()
        .map(|s| HugetlbStat {
            usage: read_u64(d, &format!("hugetlb.{s}.usage_in_bytes"), 0),
            max: read_u64(d, &format!("hugetlb.{s}.max_usage_in_bytes"), 0),
            failcnt: read_u64(d, &format!("hugetlb.{s}.failcnt"), 0),
            pagesize: s,
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
