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
        let name = self.name();
        Err(match op {
            Op::Kill | Op::Delete if self == Deleted => {
                Error::NotFound("process already deleted".into())
            }
            Op::Start => Error::Unknown(format!("cannot start a {name} process")),
            Op::Delete => Error::FailedPrecondition(format!("cannot delete a {name} process")),
            Op::Kill => Error::Unknown(format!("cannot kill a {name} process")),
            Op::Pause => Error::Unknown(format!("cannot pause task in {name} state")),
            Op::Resume => Error::Unknown(format!("cannot resume task in {name} state")),
            Op::Update => Error::Unknown(format!("cannot update a {name} task")),
            Op::Checkpoint => Error::Unknown(format!("cannot checkpoint a {name} task")),
            Op::Exec => Error::Unknown(format!("cannot exec in a {name} state")),
        })
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
