//! A container: its bundle, runtime, init process, exec processes, cgroup
//! and OOM watch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use tokio::task::AbortHandle;

use crate::cgroup::oom::OomWatch;
use crate::cgroup::{Cgroup, StatFiles};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::options::Options;
use crate::process::Process;
use crate::runtime::{ProcessStdio, Runtime};
use crate::stdio::console::ConsoleSocket;
use crate::stdio::SpillPolicy;

/// A checkpoint a container is created from (restored at Start).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Image directory.
    pub image: PathBuf,
    /// Parent checkpoint, if any.
    pub parent: Option<PathBuf>,
}

/// What a created-from-checkpoint container keeps for its restore: the
/// container side of its stdio and its console socket.
pub struct PendingRestore {
    /// Container-side stdio.
    pub stdio: ProcessStdio,
    /// Console socket, for a terminal.
    pub console: Option<ConsoleSocket>,
}

/// A container taken apart for an upgrade in place.
pub struct ContainerHandover {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Whether the shim mounted `bundle/rootfs`.
    pub mounted_rootfs: bool,
    /// The options it was created with.
    pub options: Options,
    /// Whether init's exit ends the rest.
    pub kill_all_on_exit: bool,
    /// The checkpoint it was created from, if any.
    pub checkpoint: Option<Checkpoint>,
    /// Its processes' spill policy.
    pub spill: SpillPolicy,
    /// The runtime's kill hung for it before.
    pub kill_hung: bool,
    /// Its OOM watch: cgroup v2 or not, and the OOM kills counted so far.
    pub oom: Option<(bool, Option<u64>)>,
    /// Init.
    pub init: crate::process::ProcessHandover,
    /// Execs.
    pub execs: Vec<crate::process::ProcessHandover>,
}

/// One container managed by this shim.
pub struct Container {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Whether the shim mounted `bundle/rootfs` (and must unmount it).
    pub mounted_rootfs: bool,
    /// Runtime bound to this container's options.
    pub runtime: Arc<dyn Runtime>,
    /// The options it was created with.
    pub options: Options,
    /// Whether every process must be killed when init exits (the container
    /// shares or joins a pid namespace, so init's death does not end them).
    pub kill_all_on_exit: bool,
    /// The checkpoint to restore at Start, if created from one.
    pub checkpoint: Option<Checkpoint>,
    /// Where and how much its processes' output spills.
    pub spill: SpillPolicy,
    /// How its cgroup is found.
    host: Arc<dyn Host>,
    /// The init process.
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    cgroup: Mutex<Option<Arc<Cgroup>>>,
    /// Its cgroup's stat files, open from the first Stats until Delete.
    stat_files: Mutex<Option<StatFiles>>,
    oom: Mutex<Option<(Arc<OomWatch>, AbortHandle)>>,
    /// Set for a container created from a checkpoint, until Start.
    pub pending_restore: Mutex<Option<PendingRestore>>,
    /// The runtime's `kill` hung for this container once: later signals are
    /// delivered by the shim without waiting for it again.
    kill_hung: AtomicBool,
    /// An exec's start ended or its exit was recorded (see
    /// [`Container::execs_ended`]).
    exec_settled: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Container {
    /// A new container around its init process.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        bundle: PathBuf,
        mounted_rootfs: bool,
        runtime: Arc<dyn Runtime>,
        options: Options,
        kill_all_on_exit: bool,
        checkpoint: Option<Checkpoint>,
        spill: SpillPolicy,
        host: Arc<dyn Host>,
        init: Arc<Process>,
    ) -> Arc<Self> {
        Arc::new(Container {
            id,
            bundle,
            mounted_rootfs,
            runtime,
            options,
            kill_all_on_exit,
            checkpoint,
            spill,
            host,
            init,
            execs: Mutex::new(HashMap::new()),
            cgroup: Mutex::new(None),
            stat_files: Mutex::new(None),
            oom: Mutex::new(None),
            pending_restore: Mutex::new(None),
            kill_hung: AtomicBool::new(false),
            exec_settled: tokio::sync::Notify::new(),
        })
    }

    /// Wakes [`Container::execs_ended`]: an exec's start failed or its exit
    /// was recorded.
    pub fn exec_settled(&self) {
        self.exec_settled.notify_waiters();
    }

    /// Waits until no exec is being started and every exec that ran has its
    /// exit recorded. Init's exit waits for this, as in the Go shim: a
    /// container's init exit is published after its execs' exits, and an
    /// exec started while init was dying has either failed or exited by
    /// then (init's end ends its pid namespace; a container without its own
    /// one has every process killed first).
    pub async fn execs_ended(&self) {
        loop {
            let settled = self.exec_settled.notified();
            if !self.execs().iter().any(|e| e.holds_init_exit()) {
                return;
            }
            settled.await;
        }
    }

    /// The process named by `exec_id` (init when empty).
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("process does not exist {exec_id}")))
    }

    /// Registers a new exec; a duplicate id is refused.
    pub fn add_exec(&self, p: Arc<Process>) -> Result<()> {
        let mut execs = lock(&self.execs);
        if execs.contains_key(&p.exec_id) {
            return Err(Error::AlreadyExists(format!("id {}", p.exec_id)));
        }
        execs.insert(p.exec_id.clone(), p);
        Ok(())
    }

    /// Forgets an exec.
    pub fn remove_exec(&self, exec_id: &str) {
        lock(&self.execs).remove(exec_id);
    }

    /// Every exec process.
    pub fn execs(&self) -> Vec<Arc<Process>> {
        lock(&self.execs).values().cloned().collect()
    }

    /// The process (init or exec) with this pid.
    pub fn find_pid(&self, pid: u32) -> Option<Arc<Process>> {
        if pid == 0 {
            return None;
        }
        if self.init.pid() == pid && !self.init.is_reaped() {
            return Some(self.init.clone());
        }
        lock(&self.execs)
            .values()
            .find(|p| p.pid() == pid && !p.is_reaped())
            .cloned()
    }

    /// The container's cgroup, loaded from init's pid on first use.
    pub fn cgroup(&self) -> Option<Arc<Cgroup>> {
        let mut cg = lock(&self.cgroup);
        if cg.is_none() && self.init.pid() != 0 {
            *cg = self.host.cgroup_of(self.init.pid()).map(Arc::new);
        }
        cg.clone()
    }

    /// The container's cgroup statistics. The stat files are opened on the
    /// first call and kept for the next ones; a removed cgroup is NotFound.
    pub fn stats(&self) -> std::io::Result<Any> {
        let mut kept = lock(&self.stat_files);
        let mut files = match kept.take() {
            Some(f) => f,
            None => self
                .cgroup()
                .ok_or_else(crate::cgroup::kept::gone)?
                .stat_files()?,
        };
        let any = files.read()?;
        if files.keep() {
            *kept = Some(files);
        }
        Ok(any)
    }

    /// Closes the stat files (Delete: the cgroup is gone).
    pub fn close_stat_files(&self) {
        lock(&self.stat_files).take();
    }

    /// Whether init has been reaped and no process is left in the
    /// container's cgroup (false when the cgroup is not known): then
    /// `runtime kill --all` has nothing to signal.
    pub fn nothing_left(&self) -> bool {
        self.init.is_reaped() && self.cgroup().is_some_and(|cg| cg.procs().is_empty())
    }

    /// Installs the OOM watch and the task that reports it.
    pub fn set_oom(&self, watch: Arc<OomWatch>, task: AbortHandle) {
        if let Some((_, old)) = lock(&self.oom).replace((watch, task)) {
            old.abort();
        }
    }

    /// The OOM watch, if registered.
    pub fn oom(&self) -> Option<Arc<OomWatch>> {
        lock(&self.oom).as_ref().map(|(w, _)| w.clone())
    }

    /// Takes the container apart for an upgrade in place: its OOM watch
    /// stops (its count is kept), its processes' stdio pauses.
    pub async fn hand_over(&self) -> ContainerHandover {
        let oom = lock(&self.oom).take().map(|(w, task)| {
            task.abort();
            let v2 = matches!(self.cgroup().as_deref(), Some(Cgroup::V2(_)));
            (v2, w.baseline())
        });
        let mut execs = Vec::new();
        for p in self.execs() {
            execs.push(p.hand_over().await);
        }
        ContainerHandover {
            id: self.id.clone(),
            bundle: self.bundle.clone(),
            mounted_rootfs: self.mounted_rootfs,
            options: self.options.clone(),
            kill_all_on_exit: self.kill_all_on_exit,
            checkpoint: self.checkpoint.clone(),
            spill: self.spill.clone(),
            kill_hung: self.kill_hung(),
            oom,
            init: self.init.hand_over().await,
            execs,
        }
    }

    /// A container handed over by a previous image of the shim (its OOM
    /// watch is registered by the task service).
    pub fn take_over(
        h: ContainerHandover,
        runtime: Arc<dyn Runtime>,
        host: Arc<dyn Host>,
        reaper: &Arc<crate::reaper::Reaper>,
    ) -> Arc<Self> {
        let c = Container::new(
            h.id,
            h.bundle,
            h.mounted_rootfs,
            runtime,
            h.options,
            h.kill_all_on_exit,
            h.checkpoint,
            h.spill,
            host,
            Arc::new(Process::take_over(h.init, reaper)),
        );
        for e in h.execs {
            lock(&c.execs).insert(e.exec_id.clone(), Arc::new(Process::take_over(e, reaper)));
        }
        if h.kill_hung {
            c.set_kill_hung();
        }
        c
    }

    /// Remembers that the runtime's `kill` hung for this container.
    pub fn set_kill_hung(&self) {
        self.kill_hung.store(true, Ordering::Release);
    }

    /// Whether the runtime's `kill` hung for this container before.
    pub fn kill_hung(&self) -> bool {
        self.kill_hung.load(Ordering::Acquire)
    }

    /// Stops watching for OOM.
    pub fn stop_oom(&self) {
        if let Some((_, task)) = lock(&self.oom).take() {
            task.abort();
        }
    }
}

/// Annotation that sets the cap of each output stream's spill (bytes, or
/// with a k/M/G suffix; 0 turns the spill off).
pub const SPILL_ANNOTATION: &str = "wedge.output-spill-max";

/// What the shim takes from the bundle's `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecFacts {
    /// Whether init's exit must be followed by `kill --all`: true unless the
    /// spec gives the container its own new pid namespace (a `pid` entry
    /// with no path).
    pub kill_all_on_exit: bool,
    /// The spill cap the spec's annotation asks for.
    pub spill_max: Option<u64>,
}

impl SpecFacts {
    /// Reads the facts from `config.json`'s text (unreadable: the cautious
    /// defaults).
    pub fn parse(config_json: &str) -> SpecFacts {
        let v = serde_json::from_str::<serde_json::Value>(config_json).unwrap_or_default();
        let own_pid_ns = v
            .pointer("/linux/namespaces")
            .and_then(|n| n.as_array())
            .is_some_and(|nss| {
                nss.iter().any(|ns| {
                    ns.get("type").and_then(|t| t.as_str()) == Some("pid")
                        && ns
                            .get("path")
                            .and_then(|p| p.as_str())
                            .unwrap_or("")
                            .is_empty()
                })
            });
        let spill_max = v
            .pointer("/annotations")
            .and_then(|a| a.get(SPILL_ANNOTATION))
            .and_then(|x| x.as_str())
            .and_then(crate::stdio::spill::parse_size);
        SpecFacts {
            kill_all_on_exit: !own_pid_ns,
            spill_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_all_decision_follows_the_pid_namespace() {
        let kill_all = |s: &str| SpecFacts::parse(s).kill_all_on_exit;
        assert!(!kill_all(
            r#"{"linux":{"namespaces":[{"type":"mount"},{"type":"pid"}]}}"#
        ));
        assert!(kill_all(
            r#"{"linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}"#
        ));
        assert!(kill_all(r#"{"linux":{"namespaces":[{"type":"mount"}]}}"#));
        assert!(kill_all("not json"));
    }

    #[test]
    fn spill_cap_from_the_annotation() {
        let facts = SpecFacts::parse(r#"{"annotations":{"wedge.output-spill-max":"1M"}}"#);
        assert_eq!(facts.spill_max, Some(1 << 20));
        assert_eq!(SpecFacts::parse("{}").spill_max, None);
    }
}
