//! The init process state machine (the Go shim's `init_state.go`), as our own
//! enum with one guard per operation. Guards run before any side effect; the
//! transition table is tested below.

use crate::error::Error;

/// Lifecycle state of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created by the runtime, not started.
    Created,
    /// Running.
    Running,
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
    /// Start.
    Start,
    /// Delete.
    Delete,
    /// Kill.
    Kill,
    /// Pause.
    Pause,
    /// Resume.
    Resume,
}

impl Status {
    /// The containerd `Status` value reported by State.
    pub fn to_proto(self) -> containerd_shim_protos::types::task::Status {
        use containerd_shim_protos::types::task::Status as P;
        match self {
            Status::Created => P::CREATED,
            Status::Running => P::RUNNING,
            Status::Paused => P::PAUSED,
            Status::Stopped => P::STOPPED,
            Status::Deleted => P::STOPPED,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
            Status::Deleted => "deleted",
        }
    }

    /// Checks whether `op` is allowed now; the error says why not.
    pub fn check(self, op: Op) -> Result<(), Error> {
        use Status::*;
        let ok = match op {
            Op::Start => matches!(self, Created),
            Op::Delete => matches!(self, Created | Stopped),
            Op::Kill => matches!(self, Created | Running | Paused | Stopped),
            Op::Pause => matches!(self, Running),
            Op::Resume => matches!(self, Paused),
        };
        if ok {
            return Ok(());
        }
        Err(match (self, op) {
            (Deleted, Op::Kill) | (Deleted, Op::Delete) => {
                Error::NotFound("process already deleted".into())
            }
            (_, Op::Start) => Error::Unknown(format!("cannot start a {} process", self.name())),
            (_, Op::Delete) => {
                Error::FailedPrecondition(format!("cannot delete a {} process", self.name()))
            }
            (_, Op::Pause) => Error::Unknown(format!("cannot pause task in {} state", self.name())),
            (_, Op::Resume) => {
                Error::Unknown(format!("cannot resume task in {} state", self.name()))
            }
            (_, Op::Kill) => Error::Unknown(format!("cannot kill a {} process", self.name())),
        })
    }

    /// The state after an exit is observed.
    pub fn on_exit(self) -> Status {
        match self {
            Status::Deleted => Status::Deleted,
            Status::Created | Status::Running | Status::Paused | Status::Stopped => Status::Stopped,
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
        // state, [start, delete, kill, pause, resume]
        let table = [
            (Created, [true, true, true, false, false]),
            (Running, [false, false, true, true, false]),
            (Paused, [false, false, true, false, true]),
            (Stopped, [false, true, true, false, false]),
            (Deleted, [false, false, false, false, false]),
        ];
        for (st, allowed) in table {
            for (op, ok) in [Start, Delete, Kill, Pause, Resume]
                .into_iter()
                .zip(allowed)
            {
                assert_eq!(st.check(op).is_ok(), ok, "{st:?} {op:?}");
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
        assert_eq!(Deleted.on_exit(), Deleted);
    }
}
