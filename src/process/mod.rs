//! Process state: the domain enum every RPC checks before it has side
//! effects, and the record of a process's pid, exit and stdio.

pub mod state;

pub use state::{Op, Status};

use std::time::SystemTime;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, or 128 + signal.
    pub status: u32,
    /// When it was reaped.
    pub at: SystemTime,
}
