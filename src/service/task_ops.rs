//! The rest of the Task API: exec processes, pause/resume, update, stats,
//! checkpoint/restore, pids, terminal resize and CloseIO.

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim_protos::events::task::{
    TaskExecAdded, TaskExecStarted, TaskPaused, TaskResumed,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::{CheckpointOptions, ProcessDetails};
use containerd_shim_protos::shim::shim::*;
use containerd_shim_protos::types::task::ProcessInfo;

use super::task::{lock, validate_id, TaskService};
use crate::container::Container;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::process::{Op, Process, Status};
use crate::runtime::{CheckpointOpts, ExecOpts, RestoreOpts};
use crate::stdio::{ProcessIo, SpillPolicy, StdioSpec};

/// Largest exec spec accepted (the ttrpc message limit bounds it anyway).
const MAX_SPEC: usize = 1 << 20;

/// Parses an exec spec (JSON of an OCI `Process`) and sets its terminal flag.
pub fn exec_spec(value: &[u8], terminal: bool) -> Result<Vec<u8>> {
    if value.len() > MAX_SPEC {
        return Err(Error::InvalidArgument(format!(
            "exec spec of {} bytes is too large",
            value.len()
        )));
    }
    let mut v: serde_json::Value = serde_json::from_slice(value)
        .map_err(|e| Error::InvalidArgument(format!("exec spec is not JSON: {e}")))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| Error::InvalidArgument("exec spec is not a JSON object".into()))?;
    obj.insert("terminal".into(), serde_json::Value::Bool(terminal));
    serde_json::to_vec(&v).map_err(|e| Error::Unknown(e.to_string()))
}

impl TaskService {
    /// Exec: records a new process; nothing runs until Start.
    pub async fn exec(&self, req: ExecProcessRequest) -> Result<()> {
        validate_id(&req.exec_id)?;
        let c = self.get(&req.id)?;
        c.init.state().status.check(Op::Exec)?;
        let spec = exec_spec(
            req.spec.as_ref().map(|a| a.value.as_slice()).unwrap_or(b""),
            req.terminal,
        )?;
        let stdio = StdioSpec {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        c.add_exec(Arc::new(Process::new(
            req.exec_id.clone(),
            stdio,
            spec,
            Status::Created,
        )))?;
        let mut ev = TaskExecAdded::new();
        ev.container_id = c.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.events.publish(Event::exec_added(&ev));
        Ok(())
    }

    /// Start of an exec: `runtime exec --detach`, then `/tasks/exec-started`.
    ///
    /// Once init has exited no exec starts. While one is being started,
    /// init's exit is held (see [`Container::execs_ended`]); an exec whose
    /// start failed stays `created`, its waiters released.
    pub(crate) async fn start_exec(
        self: &Arc<Self>,
        c: &Arc<Container>,
        exec_id: &str,
    ) -> Result<StartResponse> {
        let p = c.process(exec_id)?;
        let _order = p.lifecycle.lock().await;
        p.state().status.check(Op::Start)?;
        if c.init.is_reaped() {
            return Err(Error::FailedPrecondition(format!(
                "container {} init process is not running",
                c.id
            )));
        }
        c.init.state().status.check(Op::Exec)?;
        let launch = self.begin_launch();
        p.set_starting(true);
        if let Err(e) = self.launch_exec(c, &p).await {
            p.start_failed(crate::process::ExitInfo {
                status: 255,
                at: std::time::SystemTime::now(),
            });
            c.exec_settled();
            return Err(e);
        }
        p.set_status(Status::Running);
        p.set_starting(false);
        let pid = p.pid();
        let mut ev = TaskExecStarted::new();
        ev.container_id = c.id.clone();
        ev.exec_id = exec_id.to_string();
        ev.pid = pid;
        self.events.publish(Event::exec_started(&ev));
        drop(_order);
        if let Some(exit) = launch.take_early(pid) {
            self.exited(c.clone(), p, exit);
        }
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn launch_exec(&self, c: &Container, p: &Process) -> Result<()> {
        let spec_file = c.bundle.join(format!(".exec-{}.json", p.exec_id));
        crate::fsutil::write_private(&spec_file, &p.spec)?;
        let pid_file = c.bundle.join(format!("{}.pid", p.exec_id));
        let res = async {
            let mut prepared = ProcessIo::prepare(
                &p.stdio,
                self.owner(
                    &c.id,
                    &c.options,
                    &SpillPolicy {
                        label: format!("{}/{}", c.id, p.exec_id),
                        ..c.spill.clone()
                    },
                ),
            )
            .await?;
            let opts = ExecOpts {
                id: c.id.clone(),
                process: spec_file.clone(),
                pid_file: pid_file.clone(),
                console_socket: prepared.console.as_ref().map(|s| s.path().to_path_buf()),
            };
            let cside = std::mem::take(&mut prepared.stdio);
            let since = self.reaper.seq();
            if let Err(e) = c.runtime.exec(opts, cside).await {
                prepared.io.discard().await;
                return Err(Error::Unknown(format!("OCI runtime exec failed: {e}")));
            }
            self.finish_launch(p, prepared, &pid_file, since).await
        }
        .await;
        let _ = std::fs::remove_file(&spec_file);
        res
    }

    /// Restore of a container created from a checkpoint (at Start).
    pub(crate) async fn restore(&self, c: &Container) -> Result<()> {
        let Some(cp) = c.checkpoint.clone() else {
            return Err(Error::Unknown("no checkpoint to restore".into()));
        };
        let pending = lock(&c.pending_restore).take();
        let Some(pending) = pending else {
            return Err(Error::FailedPrecondition(
                "restore already attempted".into(),
            ));
        };
        let launch = self.begin_launch();
        let pid_file = c.bundle.join("init.pid");
        let opts = RestoreOpts {
            id: c.id.clone(),
            bundle: c.bundle.clone(),
            image_path: cp.image,
            work_path: c.bundle.join("work"),
            parent_path: cp.parent,
            pid_file: pid_file.clone(),
            no_pivot: c.options.no_pivot_root,
            console_socket: pending.console.as_ref().map(|s| s.path().to_path_buf()),
        };
        let since = self.reaper.seq();
        c.runtime
            .restore(opts, pending.stdio)
            .await
            .map_err(|e| Error::Unknown(format!("OCI runtime restore failed: {e}")))?;
        if let Some(cs) = pending.console {
            let master = cs
                .receive(super::task::CONSOLE_TIMEOUT)
                .await
                .map_err(|e| Error::Unknown(format!("receive console: {e}")))?;
            let mut io = ProcessIo::default();
            io.attach_console(master)?;
            c.init.set_io(io).await;
        }
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Error::Unknown("read restored pid".into()))?;
        c.init.set_pid(pid);
        self.open_pidfd(&c.init, pid, since);
        if let Some(exit) = launch.take_early(pid) {
            c.init.set_exited(crate::process::ExitInfo {
                status: exit.status,
                at: exit.at,
            });
        }
        Ok(())
    }

    /// Pause: `runtime pause`, then `/tasks/paused`.
    pub async fn pause(&self, req: PauseRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        c.init.state().status.check(Op::Pause)?;
        c.init.set_status(Status::Pausing);
        if let Err(e) = c.runtime.pause(&c.id).await {
            c.init.set_status(Status::Running);
            return Err(Error::Unknown(format!("OCI runtime pause failed: {e}")));
        }
        c.init.set_status(Status::Paused);
        let mut ev = TaskPaused::new();
        ev.container_id = c.id.clone();
        self.events.publish(Event::paused(&ev));
        Ok(())
    }

    /// Resume: `runtime resume`, then `/tasks/resumed`.
    pub async fn resume(&self, req: ResumeRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        c.init.state().status.check(Op::Resume)?;
        c.runtime
            .resume(&c.id)
            .await
            .map_err(|e| Error::Unknown(format!("OCI runtime resume failed: {e}")))?;
        c.init.set_status(Status::Running);
        let mut ev = TaskResumed::new();
        ev.container_id = c.id.clone();
        self.events.publish(Event::resumed(&ev));
        Ok(())
    }

    /// Update: `runtime update --resources -` with the JSON LinuxResources.
    pub async fn update(&self, req: UpdateTaskRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        c.init.state().status.check(Op::Update)?;
        let value = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&value)
            .map_err(|e| Error::InvalidArgument(format!("resources are not JSON: {e}")))?;
        if !v.is_object() {
            return Err(Error::InvalidArgument(
                "resources are not a JSON object".into(),
            ));
        }
        c.runtime
            .update(&c.id, value)
            .await
            .map_err(|e| Error::Unknown(format!("OCI runtime update failed: {e}")))
    }

    /// Stats: the container's cgroup metrics.
    pub async fn stats(&self, req: StatsRequest) -> Result<StatsResponse> {
        let c = self.get(&req.id)?;
        let any = c.stats().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound("cgroup does not exist".into()),
            _ => Error::Unknown(format!("stats: {e}")),
        })?;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    /// Checkpoint: `runtime checkpoint`; on failure the CRIU log is kept in
    /// the bundle and named in the error.
    pub async fn checkpoint(&self, req: CheckpointTaskRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        c.init.state().status.check(Op::Checkpoint)?;
        let o = match req.options.as_ref() {
            Some(a) if !a.type_url.is_empty() => {
                if !a.type_url.ends_with("containerd.runc.v1.CheckpointOptions") {
                    return Err(Error::InvalidArgument(format!(
                        "unsupported checkpoint options {}",
                        a.type_url
                    )));
                }
                CheckpointOptions::parse_from_bytes(&a.value).map_err(|e| {
                    Error::InvalidArgument(format!("malformed checkpoint options: {e}"))
                })?
            }
            _ => CheckpointOptions::new(),
        };
        let image = if o.image_path.is_empty() {
            req.path.clone()
        } else {
            o.image_path.clone()
        };
        if image.is_empty() {
            return Err(Error::InvalidArgument("no checkpoint image path".into()));
        }
        let default_work = o.work_path.is_empty();
        let work = if default_work {
            c.bundle.join("work").join("criu-work")
        } else {
            PathBuf::from(&o.work_path)
        };
        let opts = CheckpointOpts {
            image_path: PathBuf::from(&image),
            work_path: work.clone(),
            exit: o.exit,
            open_tcp: o.open_tcp,
            external_unix_sockets: o.external_unix_sockets,
            terminal: o.terminal,
            file_locks: o.file_locks,
            empty_namespaces: o.empty_namespaces.clone(),
            cgroups_mode: o.cgroups_mode.clone(),
        };
        let res = c.runtime.checkpoint(&c.id, opts).await;
        let out = match res {
            Ok(()) => Ok(()),
            Err(e) => {
                let dump = c.bundle.join("criu-dump.log");
                let _ = std::fs::copy(work.join("dump.log"), &dump);
                let msg = e.message();
                let first = msg.lines().next().unwrap_or("");
                Err(Error::Unknown(format!("{first} path= {}", dump.display())))
            }
        };
        if default_work {
            let _ = std::fs::remove_dir_all(&work);
        }
        out
    }

    /// Pids: the processes in the container, with exec ids.
    pub async fn pids(&self, req: PidsRequest) -> Result<PidsResponse> {
        let c = self.get(&req.id)?;
        // From the cgroup: no runtime process, so Pids is answered even while
        // a runtime call hangs.
        let pids = match c.cgroup() {
            Some(cg) => cg.procs(),
            None => c
                .runtime
                .ps(&c.id)
                .await
                .map_err(|e| Error::Unknown(format!("failed to list pids: {e}")))?,
        };
        let execs = c.execs();
        let mut r = PidsResponse::new();
        for pid in pids {
            let mut info = ProcessInfo {
                pid,
                ..Default::default()
            };
            if let Some(e) = execs.iter().find(|e| e.pid() == pid) {
                let d = ProcessDetails {
                    exec_id: e.exec_id.clone(),
                    ..Default::default()
                };
                let mut any = Any::new();
                any.type_url = "containerd.runc.v1.ProcessDetails".into();
                any.value = d
                    .write_to_bytes()
                    .map_err(|e| Error::Unknown(e.to_string()))?;
                info.info = MessageField::some(any);
            }
            r.processes.push(info);
        }
        Ok(r)
    }

    /// ResizePty: sets the process's terminal size (no-op without one).
    pub async fn resize_pty(&self, req: ResizePtyRequest) -> Result<()> {
        let p = self.get(&req.id)?.process(&req.exec_id)?;
        // Init's terminal can be resized until Delete (clients resize right
        // after Start, which may be after a quick exit); an exec's only
        // while it runs.
        let st = p.state().status;
        if !req.exec_id.is_empty() && matches!(st, Status::Stopped | Status::Deleted) {
            return Err(Error::Unknown("cannot resize a stopped container".into()));
        }
        p.resize(req.width, req.height)
            .await
            .map_err(|e| Error::Unknown(format!("resize pty: {e}")))
    }

    /// CloseIO: closes the shim's writer on the process's stdin FIFO.
    pub async fn close_io(&self, req: CloseIORequest) -> Result<()> {
        self.get(&req.id)?
            .process(&req.exec_id)?
            .close_stdin()
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_spec_validation() {
        let s = exec_spec(br#"{"args":["sh"],"terminal":false}"#, true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&s).unwrap();
        assert_eq!(v["terminal"], true);
        assert_eq!(v["args"][0], "sh");
        assert!(matches!(
            exec_spec(b"not json", false),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            exec_spec(b"[1]", false),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            exec_spec(&vec![b' '; MAX_SPEC + 1], false),
            Err(Error::InvalidArgument(_))
        ));
    }
}
