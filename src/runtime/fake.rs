//! A recording fake runtime for unit tests of the task service: it writes the
//! pid file `create` is asked for, records every call, and fails on demand.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{BoxFuture, CreateOpts, ProcessStdio, Result, Runtime, RuntimeError};

/// Records calls; `fail` maps a subcommand to the error message it returns.
#[derive(Default)]
pub struct FakeRuntime {
    /// Calls in order, e.g. `"kill c1 9 all=false"`.
    pub calls: Mutex<Vec<String>>,
    /// Subcommand → error message to fail with.
    pub fail: Mutex<HashMap<String, String>>,
    /// Pid written to the pid file by `create`.
    pub pid: u32,
    /// What `ps` returns.
    pub ps: Vec<u32>,
}

impl FakeRuntime {
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
}

impl Runtime for FakeRuntime {
    fn create(&self, opts: CreateOpts, _stdio: ProcessStdio) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.record("create", format!("create {}", opts.id))?;
            std::fs::write(&opts.pid_file, self.pid.to_string())
                .map_err(|e| RuntimeError::Output(e.to_string()))
        })
    }
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.record("start", format!("start {id}")) })
    }
    fn kill<'a>(&'a self, id: &'a str, signal: u32, all: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.record("kill", format!("kill {id} {signal} all={all}")) })
    }
    fn delete<'a>(&'a self, id: &'a str, force: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.record("delete", format!("delete {id} force={force}")) })
    }
    fn ps<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<u32>>> {
        Box::pin(async move {
            self.record("ps", format!("ps {id}"))
                .map(|_| self.ps.clone())
        })
    }
}
