//! The process state machine (the Go shim's `init_state.go` and exec
//! states), as our own enum with one guard per operation. Guards run before
//! any side effect; the transition table is tested below.

use crate::error::Error;

/// Lifecycle state of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created by the runtime, not started.
    Created,
    /// Created from a checkpoint: Start restores it.
    CreatedCheckpoint,
    /// Running.
    Running,
    /// `pause` is in progress.
    Pausing,
    /// Frozen.
    Paused,
    /// Exited; the exit status is recorded.
    Stopped,
    /// Deleted from the runtime; only its record remains.
    Deleted,
}

/// An operation requested on a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Start (or restore).
    Start,
    /// Delete.
    Delete,
    /// Kill.
    Kill,
    /// Pause.
    Pause,
    /// Resume.
    Resume,
    /// Update resources.
    Update,
    /// Checkpoint.
    Checkpoint,
    /// Add an exec process (asked of init).
    Exec,
}

impl Op {
    /// The operation's verb in messages.
    fn verb(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Delete => "delete",
            Op::Kill => "kill",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Update => "update",
            Op::Checkpoint => "checkpoint",
            Op::Exec => "exec",
        }
    }
}

impl Status {
    /// The containerd `Status` value reported by State.
    pub fn to_proto(self) -> containerd_shim_protos::types::task::Status {
        use containerd_shim_protos::types::task::Status as P;
        match self {
            Status::Created | Status::CreatedCheckpoint => P::CREATED,
            Status::Running => P::RUNNING,
            Status::Pausing => P::PAUSING,
            Status::Paused => P::PAUSED,
            Status::Stopped | Status::Deleted => P::STOPPED,
        }
    }

    /// The lower-case name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::CreatedCheckpoint => "created checkpoint",
            Status::Running => "running",
            Status::Pausing => "pausing",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
            Status::Deleted => "deleted",
        }
    }

    /// The status named `name` (see [`Status::name`]).
    pub fn from_name(name: &str) -> Option<Status> {
        use Status::*;
        [
            Created,
            CreatedCheckpoint,
            Running,
            Pausing,
            Paused,
            Stopped,
            Deleted,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }

    /// Checks whether `op` is allowed now; the error says why not.
    pub fn check(self, op: Op) -> Result<(), Error> {
        use Status::*;
        let ok = match op {
            Op::Start => matches!(self, Created | CreatedCheckpoint),
            Op::Delete => matches!(self, Created | CreatedCheckpoint | Stopped),
            Op::Kill => matches!(
                self,
                Created | CreatedCheckpoint | Running | Pausing | Paused | Stopped
            ),
            Op::Pause => matches!(self, Running),
            Op::Resume => matches!(self, Paused),
            Op::Update => matches!(
                self,
                Created | CreatedCheckpoint | Running | Pausing | Paused
            ),
            Op::Checkpoint => matches!(self, Running | Paused),
            Op::Exec => matches!(self, Created | Running),
        };
        if ok {
            return Ok(());
        }
        Err(self.refusal(op))
    }

    /// Why `op` is refused in this state, worded as the Go shim words it
    /// (`init_state.go`, `deleted_state.go`): clients and operators match
    /// these texts. Plain refusals are Unknown, as there; a deleted process
    /// is NotFound.
    fn refusal(self, op: Op) -> Error {
        use Status::*;
        let name = self.name();
        let msg = match (op, self) {
            (Op::Kill | Op::Delete, Deleted) => {
                let verb = if op == Op::Kill { "kill" } else { "delete" };
                return Error::NotFound(format!("cannot {verb} a deleted process"));
            }
            (Op::Delete, _) => {
                return Error::FailedPrecondition(format!("cannot delete a {name} process"))
            }
            (Op::Start, _) => format!("cannot start a {name} process"),
            (Op::Kill, _) => format!("cannot kill a {name} process"),
            (Op::Pause | Op::Resume | Op::Checkpoint, Created | CreatedCheckpoint) => {
                let what = match op {
                    Op::Pause => "pause task",
                    Op::Resume => "resume task",
                    _ => "checkpoint a task",
                };
                format!("cannot {what} in created state")
            }
            (Op::Resume, Running) => "cannot resume a running process".into(),
            (Op::Pause | Op::Resume | Op::Update | Op::Checkpoint, Deleted) => {
                format!("cannot {} a deleted process", op.verb())
            }
            (Op::Pause | Op::Resume | Op::Update | Op::Checkpoint, _) => {
                format!("cannot {} a {name} container", op.verb())
            }
            (Op::Exec, CreatedCheckpoint) => "cannot exec in a created state".into(),
            (Op::Exec, _) => format!("cannot exec in a {name} state"),
        };
        Error::Unknown(msg)
    }

    /// The state after an exit is observed.
    pub fn on_exit(self) -> Status {
        match self {
            Status::Deleted => Status::Deleted,
            _ => Status::Stopped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Op::*;
    use Status::*;

    #[test]
    fn transition_table() {
        let ops = [Start, Delete, Kill, Pause, Resume, Update, Checkpoint, Exec];
        // state: [start, delete, kill, pause, resume, update, checkpoint, exec]
        let table = [
            (Created, [1, 1, 1, 0, 0, 1, 0, 1]),
            (CreatedCheckpoint, [1, 1, 1, 0, 0, 1, 0, 0]),
            (Running, [0, 0, 1, 1, 0, 1, 1, 1]),
            (Pausing, [0, 0, 1, 0, 0, 1, 0, 0]),
            (Paused, [0, 0, 1, 0, 1, 1, 1, 0]),
            (Stopped, [0, 1, 1, 0, 0, 0, 0, 0]),
            (Deleted, [0, 0, 0, 0, 0, 0, 0, 0]),
        ];
        for (st, allowed) in table {
            for (op, ok) in ops.into_iter().zip(allowed) {
                assert_eq!(st.check(op).is_ok(), ok == 1, "{st:?} {op:?}");
            }
        }
    }

    /// The refusals read as the Go shim's (`init_state.go`,
    /// `deleted_state.go`, containerd 1.6 to 2.x).
    #[test]
    fn refusals_are_worded_as_the_go_shims() {
        let cases = [
            (Running, Start, "cannot start a running process"),
            (Paused, Start, "cannot start a paused process"),
            (Stopped, Start, "cannot start a stopped process"),
            (Deleted, Start, "cannot start a deleted process"),
            (Running, Delete, "cannot delete a running process"),
            (Paused, Delete, "cannot delete a paused process"),
            (Deleted, Delete, "cannot delete a deleted process"),
            (Deleted, Kill, "cannot kill a deleted process"),
            (Created, Pause, "cannot pause task in created state"),
            (
                CreatedCheckpoint,
                Pause,
                "cannot pause task in created state",
            ),
            (Paused, Pause, "cannot pause a paused container"),
            (Stopped, Pause, "cannot pause a stopped container"),
            (Deleted, Pause, "cannot pause a deleted process"),
            (Created, Resume, "cannot resume task in created state"),
            (Running, Resume, "cannot resume a running process"),
            (Stopped, Resume, "cannot resume a stopped container"),
            (Deleted, Resume, "cannot resume a deleted process"),
            (Stopped, Update, "cannot update a stopped container"),
            (Deleted, Update, "cannot update a deleted process"),
            (
                Created,
                Checkpoint,
                "cannot checkpoint a task in created state",
            ),
            (Stopped, Checkpoint, "cannot checkpoint a stopped container"),
            (Deleted, Checkpoint, "cannot checkpoint a deleted process"),
            (CreatedCheckpoint, Exec, "cannot exec in a created state"),
            (Paused, Exec, "cannot exec in a paused state"),
            (Stopped, Exec, "cannot exec in a stopped state"),
            (Deleted, Exec, "cannot exec in a deleted state"),
        ];
        for (st, op, want) in cases {
            let got = match st.check(op).unwrap_err() {
                Error::Unknown(m) | Error::NotFound(m) | Error::FailedPrecondition(m) => m,
                other => panic!("{st:?} {op:?}: {other:?}"),
            };
            assert_eq!(got, want, "{st:?} {op:?}");
        }
    }

    #[test]
    fn error_codes() {
        assert!(matches!(Deleted.check(Kill), Err(Error::NotFound(_))));
        assert!(matches!(
            Running.check(Delete),
            Err(Error::FailedPrecondition(_))
        ));
        assert_eq!(
            Created.check(Pause).unwrap_err().to_string(),
            "cannot pause task in created state"
        );
        assert_eq!(Running.on_exit(), Stopped);
        assert_eq!(Paused.on_exit(), Stopped);
        assert_eq!(Deleted.on_exit(), Deleted);
        assert_eq!(
            Status::from_name("created checkpoint"),
            Some(CreatedCheckpoint)
        );
        assert_eq!(Status::from_name("nope"), None);
    }
}
