//! The ttrpc face of the Task service: decodes each request, calls
//! [`task::TaskService`], encodes the response. Serves the
//! `containerd.task.v2.Task` service (and the same methods under
//! `containerd.task.v3.Task`, whose messages are wire-compatible).

mod afterlife;
pub mod task;
pub mod task_ops;

use std::sync::Arc;

use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::ttrpc::{Code, Status};

use crate::error::Error;
use crate::ttrpc::{status, BoxFuture, Dispatch};
pub use afterlife::{retried_by_a_live_shim, RETRY_FOR};
pub use task::TaskService;

/// The Task methods this shim answers (the same under both service names).
pub const METHODS: [&str; 17] = [
    "State",
    "Create",
    "Start",
    "Delete",
    "Pids",
    "Pause",
    "Resume",
    "Checkpoint",
    "Kill",
    "Exec",
    "ResizePty",
    "CloseIO",
    "Update",
    "Wait",
    "Stats",
    "Connect",
    "Shutdown",
];

/// Task service names this shim answers to.
pub const SERVICES: [&str; 2] = ["containerd.task.v2.Task", "containerd.task.v3.Task"];

pub(crate) fn decode<M: Message>(payload: &[u8]) -> Result<M, Status> {
    M::parse_from_bytes(payload)
        .map_err(|e| Error::InvalidArgument(format!("malformed request: {e}")).to_status())
}

pub(crate) fn encode<M: Message>(r: Result<M, Error>) -> Result<Vec<u8>, Status> {
    match r {
        Ok(m) => m
            .write_to_bytes()
            .map_err(|e| Error::Unknown(format!("encode response: {e}")).to_status()),
        Err(e) => {
            crate::debug!("rpc error: {e}");
            Err(e.to_status())
        }
    }
}

fn empty(r: Result<(), Error>) -> Result<Vec<u8>, Status> {
    encode(r.map(|_| Empty::new()))
}

impl Dispatch for TaskService {
    fn dispatch(
        self: Arc<Self>,
        service: String,
        method: String,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, Status>> {
        Box::pin(async move {
            if !SERVICES.contains(&service.as_str()) {
                return Err(status(
                    Code::UNIMPLEMENTED,
                    format!("service {service} not found"),
                ));
            }
            crate::debug!("rpc {method}");
            // A request means containerd is up: kept events can go.
            self.events.containerd_seen();
            if matches!(method.as_str(), "Create" | "Start" | "Exec") {
                // They open descriptors: a limit lowered since (prlimit)
                // is raised again first.
                if let Some((from, to)) = crate::sys::nofile::raise() {
                    crate::warn!("fd limit was {from}; raised to {to}");
                }
            }
            match method.as_str() {
                "Create" => encode(self.create(decode(&payload)?).await),
                "Start" => encode(self.start(decode(&payload)?).await),
                "Delete" => encode(self.delete(decode(&payload)?).await),
                "State" => encode(self.state(decode(&payload)?)),
                "Kill" => empty(self.kill(decode(&payload)?).await),
                "Wait" => encode(self.wait(decode(&payload)?).await),
                "Pids" => encode(self.pids(decode(&payload)?).await),
                "CloseIO" => empty(self.close_io(decode(&payload)?).await),
                "Exec" => empty(self.exec(decode(&payload)?).await),
                "ResizePty" => empty(self.resize_pty(decode(&payload)?).await),
                "Pause" => empty(self.pause(decode(&payload)?).await),
                "Resume" => empty(self.resume(decode(&payload)?).await),
                "Update" => empty(self.update(decode(&payload)?).await),
                "Checkpoint" => empty(self.checkpoint(decode(&payload)?).await),
                "Stats" => encode(self.stats(decode(&payload)?).await),
                "Connect" => encode(self.connect(decode(&payload)?)),
                "Shutdown" => empty(self.shutdown(decode(&payload)?)),
                other => Err(status(
                    Code::UNIMPLEMENTED,
                    format!("method {other} not found"),
                )),
            }
        })
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
