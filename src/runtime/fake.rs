//! A recording fake runtime for unit tests of the task service: it writes the
//! pid files it is asked for, records every call, and fails on demand.

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;

/// Records calls; `fail` maps a subcommand to the error message it returns.
#[derive(Default)]
pub struct FakeRuntime {
    /// Calls in order, e.g. `"kill c1 9 all=false"`.
    pub calls: Mutex<Vec<String>>,
    /// Subcommand → error message to fail with.
    pub fail: Mutex<HashMap<String, String>>,
    /// Pid written to the pid file by `create` and `restore`.
    pub pid: u32,
    /// Pid written by `exec` (incremented per exec).
    pub next_exec_pid: Mutex<u32>,
    /// What `ps` returns.
    pub ps: Vec<u32>,
    /// The last `update` payload.
    pub last_update: Mutex<Vec<u8>>,
    /// If set, `exec` makes its process "exit" (through this reaper, with
    /// this status) before the pid file is written.
    pub exit_during_exec: Mutex<Option<(std::sync::Arc<crate::reaper::Reaper>, u32)>>,
    /// Subcommands that never return (a hung runtime), after being recorded.
    pub hang: Mutex<std::collections::HashSet<String>>,
    /// Written to an exec's stdout before it "exits" (`exit_during_exec`).
    pub exec_output: Mutex<Vec<u8>>,
    /// If set, `exec` waits (after being recorded) for a permit of this
    /// semaphore before it succeeds or fails: a slow runtime.
    pub exec_gate: Mutex<Option<std::sync::Arc<tokio::sync::Semaphore>>>,
}

impl FakeRuntime {
    /// Records a call that may hang (`kill`, `delete`, `pause`, `resume`).
    async fn hangable(&self, cmd: &str, line: String) -> Result<()> {
        let hangs = self.hang.lock().unwrap().contains(cmd);
        let r = self.record(cmd, line);
        if hangs {
            std::future::pending::<()>().await;
        }
        r
    }

    fn record(&self, cmd: &str, line: String) -> Result<()> {
        self.calls.lock().unwrap().push(line);
        match self.fail.lock().unwrap().get(cmd) {
            Some(msg) => Err(RuntimeError::Failed {
                command: cmd.into(),
                status: 1,
                message: msg.clone(),
            }),
            None => Ok(()),
        }
    }

    fn write_pid(path: &std::path::Path, pid: u32) -> Result<()> {
        std::fs::write(path, pid.to_string()).map_err(|e| RuntimeError::Output(e.to_string()))
    }
}

impl Runtime for FakeRuntime {
    fn create(&self, opts: CreateOpts, _stdio: ProcessStdio) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.record("create", format!("create {}", opts.id))?;
            Self::write_pid(&opts.pid_file, self.pid)
        })
    }
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.record("start", format!("start {id}")) })
    }
    fn exec(&self, opts: ExecOpts, stdio: ProcessStdio) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let spec = std::fs::read_to_string(&opts.process).unwrap_or_default();
            self.calls
                .lock()
                .unwrap()
                .push(format!("exec {} {spec}", opts.id));
            let gate = self.exec_gate.lock().unwrap().clone();
            if let Some(gate) = gate {
                gate.acquire().await.expect("gate open").forget();
            }
            if let Some(msg) = self.fail.lock().unwrap().get("exec") {
                return Err(RuntimeError::Failed {
                    command: "exec".into(),
                    status: 1,
                    message: msg.clone(),
                });
            }
            let output = self.exec_output.lock().unwrap().clone();
            if let (Some(fd), false) = (stdio.stdout.as_ref(), output.is_empty()) {
                rustix::io::write(fd, &output).map_err(|e| RuntimeError::Output(e.to_string()))?;
            }
            let pid = {
                let mut p = self.next_exec_pid.lock().unwrap();
                *p += 1;
                *p
            };
            let early = self.exit_during_exec.lock().unwrap().clone();
            if let Some((reaper, status)) = early {
                reaper.publish(crate::reaper::Exit {
                    pid: pid as i32,
                    status,
                    at: std::time::SystemTime::now(),
                });
                // Let the exit handler see it while the pid is still unknown.
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
            }
            Self::write_pid(&opts.pid_file, pid)
        })
    }
    fn kill<'a>(&'a self, id: &'a str, signal: u32, all: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.hangable("kill", format!("kill {id} {signal} all={all}"))
                .await
        })
    }
    fn delete<'a>(&'a self, id: &'a str, force: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.hangable("delete", format!("delete {id} force={force}"))
                .await
        })
    }
    fn ps<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<u32>>> {
        Box::pin(async move {
            self.record("ps", format!("ps {id}"))
                .map(|_| self.ps.clone())
        })
    }
    fn pause<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.hangable("pause", format!("pause {id}")).await })
    }
    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.hangable("resume", format!("resume {id}")).await })
    }
    fn update<'a>(&'a self, id: &'a str, resources: Vec<u8>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            *self.last_update.lock().unwrap() = resources;
            self.record("update", format!("update {id}"))
        })
    }
    fn checkpoint<'a>(&'a self, id: &'a str, opts: CheckpointOpts) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.record(
                "checkpoint",
                format!("checkpoint {id} {}", opts.image_path.display()),
            )
        })
    }
    fn restore(&self, opts: RestoreOpts, _stdio: ProcessStdio) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.record("restore", format!("restore {}", opts.id))?;
            Self::write_pid(&opts.pid_file, self.pid)
        })
    }
}
