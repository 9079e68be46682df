//! The handover state: what one image of the shim writes for the next,
//! as JSON in a memfd.
//!
//! File descriptors are carried by number: the handing image clears
//! close-on-exec on exactly the descriptors the record names (and the
//! memfd), then execs; the taking image adopts each named number once
//! ([`Adopter`]). A descriptor shared by two holders (a relay's source is
//! also its outlet's) appears twice with the same number and is adopted
//! once, shared. Byte strings are hex.
//!
//! The record carries [`STATE_VERSION`]; a taking image accepts every
//! version from [`OLDEST_STATE`] to its own, and says clearly when it
//! cannot (newer, or too old).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::container::{Checkpoint, ContainerHandover};
use crate::options::Options;
use crate::process::{ExitInfo, ProcState, ProcessHandover, Status};
use crate::stdio::relay::{Phase, RelayState, Sink};
use crate::stdio::spill::{Spill, SpillParts, SpillPolicy};
use crate::stdio::{IoState, LoggerState, OutputState, StdioSpec};
use crate::ttrpc::{ConnHandover, ServerHandover};

use super::{Handover, Report};

/// The version of the state this image writes.
pub const STATE_VERSION: u32 = 1;
/// The oldest state version this image reads.
pub const OLDEST_STATE: u32 = 1;

/// Bytes as a hex string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hex(pub Vec<u8>);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(self.0.len() * 2);
        for b in &self.0 {
            out.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&out)
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd hex length"));
        }
        if !s.is_ascii() {
            return Err(serde::de::Error::custom("not hex"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map(Hex)
            .map_err(serde::de::Error::custom)
    }
}

/// The whole record.
#[derive(Debug, Serialize, Deserialize)]
pub struct StateRecord {
    /// [`STATE_VERSION`] of the image that wrote it.
    pub state_version: u32,
    /// That image's version and revision.
    pub from: (String, String),
    /// A handle on that image's executable (to go back to it).
    pub exe_fd: RawFd,
    /// The listening socket.
    pub listener_fd: RawFd,
    /// containerd's connections.
    pub conns: Vec<ConnRecord>,
    /// The containers.
    pub containers: Vec<ContainerRecord>,
    /// Events not sent yet, in order: (topic, encoded `ForwardRequest`).
    pub events: Vec<(String, Hex)>,
    /// Set when an image hands back after a failed upgrade.
    pub report: Option<Report>,
}

/// One connection.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConnRecord {
    fd: RawFd,
    unread: Hex,
    pending: Vec<(u32, Hex)>,
}

/// One container.
#[derive(Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    id: String,
    bundle: PathBuf,
    mounted_rootfs: bool,
    options: String,
    kill_all_on_exit: bool,
    checkpoint: Option<Checkpoint>,
    spill: SpillPolicy,
    kill_hung: bool,
    oom: Option<(bool, Option<u64>)>,
    init: ProcessRecord,
    execs: Vec<ProcessRecord>,
}

/// One process.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProcessRecord {
    exec_id: String,
    stdio: StdioSpec,
    spec: Hex,
    pid: u32,
    status: String,
    exit: Option<(u32, u64, u32)>,
    stdin_closed: bool,
    pidfd: Option<RawFd>,
    io: Option<IoRecord>,
}

/// A process's stdio.
#[derive(Debug, Serialize, Deserialize)]
pub struct IoRecord {
    outputs: Vec<OutputRecord>,
    stdin: Option<RelayRecord>,
    stdin_closer: Option<RawFd>,
    console: Option<RawFd>,
    logger: Option<(i32, RawFd, RawFd)>,
}

/// One output stream.
#[derive(Debug, Serialize, Deserialize)]
pub struct OutputRecord {
    relay: Option<RelayRecord>,
    src: RawFd,
    fifo_reader: Option<RawFd>,
    pty: bool,
    counts: (u64, u64, u64),
}

/// One relay.
#[derive(Debug, Serialize, Deserialize)]
pub struct RelayRecord {
    src: RawFd,
    sink: SinkRecord,
    splice: bool,
    phase: PhaseRecord,
}

/// A relay's destination.
#[derive(Debug, Serialize, Deserialize)]
pub enum SinkRecord {
    /// Waits for room.
    Pollable(RawFd),
    /// Spills when its reader stalls.
    Output(RawFd, SpillPolicy),
    /// A regular file.
    File(RawFd),
}

/// Where a relay was.
#[derive(Debug, Serialize, Deserialize)]
pub enum PhaseRecord {
    /// Flowing.
    Flowing,
    /// Destination full, with bytes still to write.
    Full(Hex),
    /// Spilling.
    Spilling {
        /// Spill policy.
        policy: SpillPolicy,
        /// Bytes held in memory.
        mem: Hex,
        /// The spill file with its read and write offsets.
        file: Option<(RawFd, u64, u64)>,
        /// Bytes kept.
        kept: u64,
        /// Bytes dropped.
        dropped: u64,
        /// The source ended.
        eof: bool,
        /// The reader was taking bytes again.
        replaying: bool,
    },
    /// Draining a broken destination.
    Draining,
}

/// The descriptors a record names (to clear close-on-exec on exactly
/// those).
#[derive(Default)]
pub struct FdList(pub Vec<RawFd>);

impl FdList {
    fn add(&mut self, fd: &OwnedFd) -> RawFd {
        let n = fd.as_raw_fd();
        if !self.0.contains(&n) {
            self.0.push(n);
        }
        n
    }
}

/// Records a handover (borrowing its descriptors, which stay owned by it
/// until the exec).
pub fn record(h: &Handover, fds: &mut FdList) -> StateRecord {
    StateRecord {
        state_version: STATE_VERSION,
        from: h.from.clone(),
        exe_fd: fds.add(&h.exe),
        listener_fd: fds.add(&h.server.listener),
        conns: h
            .server
            .conns
            .iter()
            .map(|c| ConnRecord {
                fd: fds.add(&c.fd),
                unread: Hex(c.unread.clone()),
                pending: c
                    .pending
                    .iter()
                    .map(|(id, r)| (*id, Hex(r.clone())))
                    .collect(),
            })
            .collect(),
        containers: h
            .containers
            .iter()
            .map(|c| record_container(c, fds))
            .collect(),
        events: h
            .events
            .iter()
            .map(|(t, p)| (t.clone(), Hex(p.clone())))
            .collect(),
        report: h.report.clone(),
    }
}

fn record_container(c: &ContainerHandover, fds: &mut FdList) -> ContainerRecord {
    ContainerRecord {
        id: c.id.clone(),
        bundle: c.bundle.clone(),
        mounted_rootfs: c.mounted_rootfs,
        options: c.options.to_json(),
        kill_all_on_exit: c.kill_all_on_exit,
        checkpoint: c.checkpoint.clone(),
        spill: c.spill.clone(),
        kill_hung: c.kill_hung,
        oom: c.oom,
        init: record_process(&c.init, fds),
        execs: c.execs.iter().map(|p| record_process(p, fds)).collect(),
    }
}

fn record_process(p: &ProcessHandover, fds: &mut FdList) -> ProcessRecord {
    ProcessRecord {
        exec_id: p.exec_id.clone(),
        stdio: p.stdio.clone(),
        spec: Hex(p.spec.clone()),
        pid: p.pid,
        status: p.state.status.name().to_string(),
        exit: p.state.exit.map(|e| {
            let d = e.at.duration_since(UNIX_EPOCH).unwrap_or_default();
            (e.status, d.as_secs(), d.subsec_nanos())
        }),
        stdin_closed: p.stdin_closed,
        pidfd: p.pidfd.as_ref().map(|f| fds.add(f)),
        io: p.io.as_ref().map(|io| IoRecord {
            outputs: io
                .outputs
                .iter()
                .map(|o| OutputRecord {
                    relay: o.relay.as_ref().map(|r| record_relay(r, fds)),
                    src: fds.add(&o.src),
                    fifo_reader: o.fifo_reader.as_ref().map(|f| fds.add(f)),
                    pty: o.pty,
                    counts: o.counts,
                })
                .collect(),
            stdin: io.stdin.as_ref().map(|r| record_relay(r, fds)),
            stdin_closer: io.stdin_closer.as_ref().map(|f| fds.add(f)),
            console: io.console.as_ref().map(|f| fds.add(f)),
            logger: io
                .logger
                .as_ref()
                .map(|l| (l.pid, fds.add(&l.pipes[0]), fds.add(&l.pipes[1]))),
        }),
    }
}

fn record_relay(r: &RelayState, fds: &mut FdList) -> RelayRecord {
    RelayRecord {
        src: fds.add(&r.src),
        sink: match &r.sink {
            Sink::Pollable(f) => SinkRecord::Pollable(fds.add(f)),
            Sink::Output(f, p) => SinkRecord::Output(fds.add(f), p.clone()),
            Sink::File(f) => SinkRecord::File(fds.add(f)),
        },
        splice: r.splice,
        phase: match &r.phase {
            Phase::Flowing => PhaseRecord::Flowing,
            Phase::Full(b) => PhaseRecord::Full(Hex(b.clone())),
            Phase::Spilling {
                spill,
                eof,
                replaying,
            } => {
                let v = spill.view();
                PhaseRecord::Spilling {
                    policy: v.policy.clone(),
                    mem: Hex(v.mem.to_vec()),
                    file: v.file.map(|(f, r, w)| (fds.add(f), r, w)),
                    kept: v.kept,
                    dropped: v.dropped,
                    eof: *eof,
                    replaying: *replaying,
                }
            }
            Phase::Draining => PhaseRecord::Draining,
            // The next image tries the file again at once.
            Phase::NoRoom(_) => PhaseRecord::Flowing,
        },
    }
}

/// Takes each descriptor a record names, once.
pub struct Adopter {
    owned: HashMap<RawFd, Arc<OwnedFd>>,
}

impl Adopter {
    /// An adopter of nothing yet.
    pub fn new() -> Adopter {
        Adopter {
            owned: HashMap::new(),
        }
    }

    /// Every descriptor adopted so far.
    pub fn adopted(&self) -> Vec<RawFd> {
        self.owned.keys().copied().collect()
    }

    /// The descriptor `n`, shared with its other holders.
    fn shared(&mut self, n: RawFd) -> Result<Arc<OwnedFd>, String> {
        if let Some(fd) = self.owned.get(&n) {
            return Ok(fd.clone());
        }
        let fd = Arc::new(crate::sys::adopt_fd(n).map_err(|e| format!("fd {n}: {e}"))?);
        self.owned.insert(n, fd.clone());
        Ok(fd)
    }

    /// The descriptor `n`, owned by one holder only.
    fn owned(&mut self, n: RawFd) -> Result<OwnedFd, String> {
        let shared = self.shared(n)?;
        self.owned.remove(&n);
        Arc::try_unwrap(shared).map_err(|_| format!("fd {n} is named twice"))
    }
}

impl Default for Adopter {
    fn default() -> Self {
        Adopter::new()
    }
}

/// Checks a record's version; the error says why it cannot be taken.
pub fn check_version(r: &StateRecord) -> Result<(), String> {
    if r.state_version > STATE_VERSION {
        return Err(format!(
            "state version {} is newer than this binary's {STATE_VERSION} (from Wedge {})",
            r.state_version, r.from.0
        ));
    }
    if r.state_version < OLDEST_STATE {
        return Err(format!(
            "state version {} is older than the oldest this binary reads ({OLDEST_STATE})",
            r.state_version
        ));
    }
    Ok(())
}

/// Checks everything in a record that does not touch a descriptor (what
/// `-upgrade-check` runs on the candidate binary).
pub fn validate(r: &StateRecord) -> Result<(), String> {
    check_version(r)?;
    for c in &r.containers {
        for p in std::iter::once(&c.init).chain(&c.execs) {
            Status::from_name(&p.status)
                .ok_or_else(|| format!("{}: unknown status {:?}", c.id, p.status))?;
        }
    }
    Ok(())
}

/// Rebuilds a handover from its record, adopting its descriptors.
pub fn handover(r: StateRecord, a: &mut Adopter) -> Result<Handover, String> {
    validate(&r)?;
    let mut conns = Vec::new();
    for c in r.conns {
        conns.push(ConnHandover {
            fd: a.owned(c.fd)?,
            unread: c.unread.0,
            pending: c.pending.into_iter().map(|(i, h)| (i, h.0)).collect(),
        });
    }
    let server = ServerHandover {
        listener: a.owned(r.listener_fd)?,
        conns,
    };
    let mut containers = Vec::new();
    for c in r.containers {
        containers.push(ContainerHandover {
            init: take_process(c.init, a)?,
            execs: c
                .execs
                .into_iter()
                .map(|p| take_process(p, a))
                .collect::<Result<_, _>>()?,
            id: c.id,
            bundle: c.bundle,
            mounted_rootfs: c.mounted_rootfs,
            options: Options::from_json(&c.options),
            kill_all_on_exit: c.kill_all_on_exit,
            checkpoint: c.checkpoint,
            spill: c.spill,
            kill_hung: c.kill_hung,
            oom: c.oom,
        });
    }
    Ok(Handover {
        server,
        containers,
        events: r.events.into_iter().map(|(t, p)| (t, p.0)).collect(),
        exe: a.owned(r.exe_fd)?,
        from: r.from,
        report: r.report,
    })
}

fn take_process(p: ProcessRecord, a: &mut Adopter) -> Result<ProcessHandover, String> {
    let status =
        Status::from_name(&p.status).ok_or_else(|| format!("unknown status {:?}", p.status))?;
    let io = match p.io {
        None => None,
        Some(io) => {
            let mut outputs = Vec::new();
            for o in io.outputs {
                outputs.push(OutputState {
                    relay: o.relay.map(|r| take_relay(r, a)).transpose()?,
                    src: a.shared(o.src)?,
                    fifo_reader: o.fifo_reader.map(|f| a.owned(f)).transpose()?,
                    pty: o.pty,
                    counts: o.counts,
                });
            }
            Some(IoState {
                outputs,
                stdin: io.stdin.map(|r| take_relay(r, a)).transpose()?,
                stdin_closer: io.stdin_closer.map(|f| a.owned(f)).transpose()?,
                console: io.console.map(|f| a.owned(f)).transpose()?,
                logger: match io.logger {
                    Some((pid, r1, r2)) => Some(LoggerState {
                        pid,
                        pipes: [a.shared(r1)?, a.shared(r2)?],
                    }),
                    None => None,
                },
            })
        }
    };
    Ok(ProcessHandover {
        exec_id: p.exec_id,
        stdio: p.stdio,
        spec: p.spec.0,
        pid: p.pid,
        state: ProcState {
            status,
            exit: p.exit.map(|(status, secs, nanos)| ExitInfo {
                status,
                at: UNIX_EPOCH + Duration::new(secs, nanos),
            }),
        },
        stdin_closed: p.stdin_closed,
        pidfd: p.pidfd.map(|f| a.owned(f)).transpose()?,
        io,
    })
}

fn take_relay(r: RelayRecord, a: &mut Adopter) -> Result<RelayState, String> {
    Ok(RelayState {
        src: a.shared(r.src)?,
        sink: match r.sink {
            SinkRecord::Pollable(f) => Sink::Pollable(a.owned(f)?),
            SinkRecord::Output(f, p) => Sink::Output(a.owned(f)?, p),
            SinkRecord::File(f) => Sink::File(a.owned(f)?),
        },
        splice: r.splice,
        phase: match r.phase {
            PhaseRecord::Flowing => Phase::Flowing,
            PhaseRecord::Full(b) => Phase::Full(b.0),
            PhaseRecord::Spilling {
                policy,
                mem,
                file,
                kept,
                dropped,
                eof,
                replaying,
            } => Phase::Spilling {
                spill: Spill::from_parts(SpillParts {
                    policy,
                    mem: mem.0,
                    file: match file {
                        Some((f, r, w)) => Some((a.owned(f)?, r, w)),
                        None => None,
                    },
                    kept,
                    dropped,
                }),
                eof,
                replaying,
            },
            PhaseRecord::Draining => Phase::Draining,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_versions() {
        let h = Hex(vec![0, 1, 0xab, 0xff]);
        let j = serde_json::to_string(&h).unwrap();
        assert_eq!(j, "\"0001abff\"");
        assert_eq!(serde_json::from_str::<Hex>(&j).unwrap(), h);
        assert!(serde_json::from_str::<Hex>("\"abc\"").is_err());
        let mut r = StateRecord {
            state_version: STATE_VERSION,
            from: ("0.1.0".into(), "rev".into()),
            exe_fd: 10,
            listener_fd: 3,
            conns: Vec::new(),
            containers: Vec::new(),
            events: Vec::new(),
            report: None,
        };
        assert!(validate(&r).is_ok());
        r.state_version = STATE_VERSION + 1;
        let e = validate(&r).unwrap_err();
        assert!(e.contains("newer than this binary"), "{e}");
        r.state_version = 0;
        assert!(validate(&r).unwrap_err().contains("older than the oldest"));
    }

    /// Found by the `handover_state` fuzz target: hex with a multibyte
    /// character is refused, not a panic in the image taking over.
    #[test]
    fn non_ascii_hex_is_refused() {
        let e = serde_json::from_str::<Hex>("\"0\u{599}f\"").unwrap_err();
        assert!(e.to_string().contains("not hex"), "{e}");
        assert_eq!(
            serde_json::from_str::<Hex>("\"00ff\"").unwrap(),
            Hex(vec![0, 255])
        );
    }
}
