//! The processes of a container's cgroup, and killing all of them when the
//! runtime cannot (it hangs or fails on `kill`).
//!
//! - v2: `cgroup.kill` (Linux 5.14+) kills the whole subtree atomically;
//!   without it, `cgroup.freeze`, SIGKILL every pid, thaw.
//! - v1: freeze through the freezer controller (so nothing forks or exits
//!   between reading the pids and killing them), SIGKILL every pid in
//!   `cgroup.procs`, thaw; without a freezer, kill what is listed until
//!   nothing is left.
//!
//! Pids read from a frozen cgroup cannot be reused under us: a frozen
//! process cannot exit on its own, and its zombie keeps the pid.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Cgroup;

/// How long freezing may take before the pids are killed anyway.
const FREEZE_WAIT: Duration = Duration::from_secs(1);

/// The pids listed in `cgroup.procs` of `dir` and every cgroup below it.
fn procs_under(dir: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = super::read(dir, "cgroup.procs")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(procs_under(&e.path()));
            }
        }
    }
    pids
}

/// Writes a cgroup control file that must exist (never creates one).
fn write_control(path: &Path, value: &str) -> io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

fn kill_each(pids: &[u32]) -> usize {
    pids.iter()
        .filter(|pid| crate::sys::send_signal(**pid as i32, libc::SIGKILL).is_ok())
        .count()
}

impl Cgroup {
    /// The directory whose `cgroup.procs` lists the container's processes.
    fn procs_dir(&self) -> Option<PathBuf> {
        match self {
            Cgroup::V2(d) => Some(d.clone()),
            Cgroup::V1(p) => ["freezer", "pids", "memory", "cpu", "devices"]
                .iter()
                .find_map(|c| p.get(*c))
                .or_else(|| p.values().next())
                .cloned(),
        }
    }

    /// Every process in the container's cgroup (and below it).
    pub fn procs(&self) -> Vec<u32> {
        let mut pids = self
            .procs_dir()
            .map(|d| procs_under(&d))
            .unwrap_or_default();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs every process of the cgroup; returns how many were signalled
    /// (with `cgroup.kill`, how many were listed). On v2 it says how in the
    /// log: this only happens when the runtime could not kill.
    pub async fn kill_all(&self) -> io::Result<usize> {
        match self {
            Cgroup::V2(dir) => {
                let listed = self.procs().len();
                match write_control(&dir.join("cgroup.kill"), "1") {
                    Ok(()) => {
                        crate::info!(
                            "killed the {listed} processes of {} through cgroup.kill",
                            dir.display()
                        );
                        Ok(listed)
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound && dir.exists() => {
                        let n = self
                            .frozen_kill(&dir.join("cgroup.freeze"), "1", "0")
                            .await?;
                        crate::info!(
                            "killed {n} processes of {} (frozen, killed, thawed: no cgroup.kill)",
                            dir.display()
                        );
                        Ok(n)
                    }
                    Err(e) => Err(e),
                }
            }
            Cgroup::V1(paths) => match paths.get("freezer") {
                Some(f) => {
                    self.frozen_kill(&f.join("freezer.state"), "FROZEN", "THAWED")
                        .await
                }
                None => {
                    let mut n = 0;
                    for _ in 0..10 {
                        let pids = self.procs();
                        if pids.is_empty() {
                            break;
                        }
                        n += kill_each(&pids);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(n)
                }
            },
        }
    }

    /// Removes the container's (empty) cgroup directories, deepest first,
    /// for when the runtime could not.
    pub fn remove_dirs(&self) -> io::Result<()> {
        fn remove(dir: &Path) -> io::Result<()> {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        remove(&e.path())?;
                    }
                }
            }
            match std::fs::remove_dir(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        let dirs: Vec<&PathBuf> = match self {
            Cgroup::V2(d) => vec![d],
            Cgroup::V1(p) => p.values().collect(),
        };
        let mut first_err = None;
        for d in dirs {
            if let Err(e) = remove(d) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Freezes through `state` (writing `freeze`), kills every pid, thaws.
    async fn frozen_kill(&self, state: &Path, freeze: &str, thaw: &str) -> io::Result<usize> {
        write_control(state, freeze)?;
        let deadline = tokio::time::Instant::now() + FREEZE_WAIT;
        while !frozen(state) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = kill_each(&self.procs());
        // Thawed, the killed processes die; a frozen one would hold SIGKILL.
        write_control(state, thaw)?;
        Ok(n)
    }
}

/// Whether the freeze written to `state` has taken effect.
fn frozen(state: &Path) -> bool {
    match state.file_name().and_then(|n| n.to_str()) {
        // v1: freezer.state reads FROZEN once done (FREEZING before).
        Some("freezer.state") => {
            super::read(state.parent().unwrap_or(state), "freezer.state") == "FROZEN"
        }
        // v2: cgroup.events has "frozen 1".
        _ => super::read_key(state.parent().unwrap_or(state), "cgroup.events", "frozen") == Some(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_pids_of_the_subtree() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.procs"), "10\n11\n").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/cgroup.procs"), "12\n10\n").unwrap();
        let cg = Cgroup::V2(d.path().to_path_buf());
        assert_eq!(cg.procs(), vec![10, 11, 12]);
    }

    /// On a v2 tree without `cgroup.kill`: freeze, kill, thaw (the recorded
    /// tree has no processes, so only the freeze protocol is checked).
    #[tokio::test]
    async fn freezes_and_thaws_without_cgroup_kill() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.procs"), "").unwrap();
        std::fs::write(d.path().join("cgroup.events"), "populated 0\nfrozen 1\n").unwrap();
        std::fs::write(d.path().join("cgroup.freeze"), "0").unwrap();
        let cg = Cgroup::V2(d.path().to_path_buf());
        assert_eq!(cg.kill_all().await.unwrap(), 0);
        assert_eq!(
            std::fs::read_to_string(d.path().join("cgroup.freeze")).unwrap(),
            "0"
        );
    }
}
