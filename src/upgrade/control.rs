//! The control service on the shim's own socket
//! (`wedge.control.v1.Control`, same peer check as the Task API) and the
//! `upgrade` command that uses it.
//!
//! Methods (JSON payloads; both ends are Wedge):
//! - `Version` → `{"version", "revision"}`;
//! - `Upgrade` → a [`Report`]: the shim execs the binary installed at its
//!   own path and the new image answers (or the old one, with the reason,
//!   when the upgrade was refused or failed).
//!
//! `containerd-shim-wedge-v2 upgrade [-namespace NS] [-id ID] [PATH]` finds
//! the running shims started from PATH (default: the command's own path; by
//! `/proc/PID/exe`, also once the file was replaced), optionally those of
//! one namespace or the one serving container ID, and upgrades each to the
//! binary installed there now, printing one line per shim. (Naming PATH
//! lets an older binary drive the upgrade when the new one cannot run.) SIGUSR2 to a shim does the same, with the
//! outcome in its log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::ttrpc::{Code, Status};
use tokio::sync::{mpsc, oneshot};

use super::Report;
use crate::flags::Flags;
use crate::service::TaskService;
use crate::ttrpc::{status, BoxFuture, Client, Dispatch};

/// The control service's name.
pub const SERVICE: &str = "wedge.control.v1.Control";

/// An upgrade asked for: where to send the report (none for SIGUSR2).
pub type UpgradeAsk = Option<oneshot::Sender<Report>>;

/// The control service of one shim.
pub struct Control {
    asks: mpsc::UnboundedSender<UpgradeAsk>,
    /// What handed-over Upgrade calls are answered.
    report: Mutex<Option<Report>>,
}

impl Control {
    /// A control service that passes upgrade requests to `asks`, answering
    /// handed-over calls with `report`.
    pub fn new(asks: mpsc::UnboundedSender<UpgradeAsk>, report: Option<Report>) -> Arc<Control> {
        Arc::new(Control {
            asks,
            report: Mutex::new(report),
        })
    }

    /// What handed-over Upgrade calls are answered from now on.
    pub fn set_report(&self, report: Report) {
        *self.report.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(v).map_err(|e| status(Code::INTERNAL, e.to_string()))
}

/// The shim's whole ttrpc face: the Task API and the control service.
pub struct Front {
    /// The Task API.
    pub tasks: Arc<TaskService>,
    /// The control service.
    pub control: Arc<Control>,
}

impl Dispatch for Front {
    fn dispatch(
        self: Arc<Self>,
        service: String,
        method: String,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, Status>> {
        if service == crate::sandbox::service::SERVICE {
            let tasks = self.tasks.clone();
            return Box::pin(async move { tasks.dispatch_sandbox(&method, &payload).await });
        }
        if service != SERVICE {
            return self.tasks.clone().dispatch(service, method, payload);
        }
        Box::pin(async move {
            match method.as_str() {
                "Version" => json(&(crate::VERSION, crate::REVISION)),
                "Upgrade" => {
                    let (tx, rx) = oneshot::channel();
                    self.control
                        .asks
                        .send(Some(tx))
                        .map_err(|_| status(Code::UNAVAILABLE, "the shim is stopping"))?;
                    // Answered here when refused before the handover;
                    // otherwise this call is handed over and answered again.
                    let report = rx
                        .await
                        .map_err(|_| status(Code::UNAVAILABLE, "the upgrade was abandoned"))?;
                    json(&report)
                }
                other => Err(status(
                    Code::UNIMPLEMENTED,
                    format!("method {other} not found"),
                )),
            }
        })
    }

    fn resumable(&self, service: &str, method: &str) -> bool {
        match service {
            SERVICE => method == "Upgrade",
            _ => method == "Wait",
        }
    }

    fn redispatch(
        self: Arc<Self>,
        service: String,
        method: String,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, Status>> {
        if service == SERVICE && method == "Upgrade" {
            let report = self
                .control
                .report
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            return Box::pin(async move {
                match report {
                    Some(r) => json(&r),
                    None => Err(status(Code::UNKNOWN, "no upgrade report")),
                }
            });
        }
        self.dispatch(service, method, payload)
    }
}

/// A running shim: pid, namespace, id, and its listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimProcess {
    /// Its pid.
    pub pid: u32,
    /// `-namespace`.
    pub namespace: String,
    /// `-id`.
    pub id: String,
    /// The socket it listens on.
    pub socket: PathBuf,
}

/// The value of `-name` in a shim's argv.
fn flag(argv: &[String], name: &str) -> String {
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .cloned()
        .unwrap_or_default()
}

/// Listening unix sockets by inode (`/proc/net/unix`).
fn listening_sockets() -> std::collections::HashMap<String, PathBuf> {
    std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode Path; Flags has
            // __SO_ACCEPTCON (0x10000) for a listener.
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            if flags & 0x10000 == 0 {
                return None;
            }
            Some((f.get(6)?.to_string(), PathBuf::from(f.get(7)?)))
        })
        .collect()
}

/// The daemons (not `start`/`delete` calls) running from `exe`.
pub fn shims_of(exe: &Path) -> Vec<ShimProcess> {
    let listeners = listening_sockets();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(link) = std::fs::read_link(e.path().join("exe")) else {
            continue;
        };
        let link = link.to_string_lossy().into_owned();
        if Path::new(link.strip_suffix(" (deleted)").unwrap_or(&link)) != exe {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let action = crate::flags::parse(argv.get(1..).unwrap_or_default())
            .ok()
            .and_then(|f| f.action);
        if action.is_some() {
            continue;
        }
        let socket = std::fs::read_dir(e.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter_map(|l| {
                let l = l.to_string_lossy().into_owned();
                let inode = l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string();
                listeners.get(&inode).cloned()
            })
            .next();
        if let Some(socket) = socket {
            out.push(ShimProcess {
                pid,
                namespace: flag(&argv, "-namespace"),
                id: flag(&argv, "-id"),
                socket,
            });
        }
    }
    out.sort_by_key(|s| s.pid);
    out
}

async fn call(
    socket: &Path,
    method: &str,
    payload: Vec<u8>,
    wait: Duration,
) -> Result<Vec<u8>, String> {
    let mut c = Client::connect(&socket.display().to_string())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    c.call_with_deadline(SERVICE, method, payload, &[], None, wait)
        .await
        .map_err(|e| e.to_string())
}

/// Whether the shim at `socket` serves container `id`.
async fn serves(socket: &Path, id: &str) -> bool {
    use containerd_shim_protos::protobuf::Message;
    use containerd_shim_protos::shim::shim::{ConnectRequest, ConnectResponse};
    let req = ConnectRequest {
        id: id.to_string(),
        ..Default::default()
    };
    let Ok(mut c) = Client::connect(&socket.display().to_string()).await else {
        return false;
    };
    let Ok(bytes) = req.write_to_bytes() else {
        return false;
    };
    c.call(
        "containerd.task.v2.Task",
        "Connect",
        bytes,
        &[],
        Duration::from_secs(5),
    )
    .await
    .ok()
    .and_then(|r| ConnectResponse::parse_from_bytes(&r).ok())
    .is_some_and(|r| r.task_pid != 0)
}

/// `upgrade [-namespace NS] [-id ID] [PATH]`: upgrades the matching
/// shims; one line each; exit 0 when every one upgraded.
pub fn command(flags: &Flags) -> i32 {
    // Flags may also follow the action: `upgrade -namespace NS PATH`.
    let sub = match crate::flags::parse(&flags.args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("upgrade: {e}");
            return 2;
        }
    };
    let flags = Flags {
        namespace: if sub.namespace.is_empty() {
            flags.namespace.clone()
        } else {
            sub.namespace
        },
        id: if sub.id.is_empty() {
            flags.id.clone()
        } else {
            sub.id
        },
        args: sub.action.into_iter().chain(sub.args).collect(),
        ..flags.clone()
    };
    let exe = match (flags.args.first(), super::Exe::current()) {
        (Some(p), _) => match std::fs::canonicalize(p) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("upgrade: {p}: {e}");
                return 1;
            }
        },
        (None, Ok(e)) => e.path,
        (None, Err(e)) => {
            eprintln!("upgrade: {e}");
            return 1;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("upgrade: {e}");
            return 1;
        }
    };
    rt.block_on(async {
        let mut shims = Vec::new();
        for s in shims_of(&exe) {
            if !flags.namespace.is_empty() && s.namespace != flags.namespace {
                continue;
            }
            if !flags.id.is_empty() && s.id != flags.id && !serves(&s.socket, &flags.id).await {
                continue;
            }
            shims.push(s);
        }
        if shims.is_empty() {
            println!("no running shim of {} matches", exe.display());
            return 0;
        }
        let mut failed = 0;
        for s in shims {
            let who = format!("shim {} ({} {})", s.pid, s.namespace, s.id);
            let r = call(&s.socket, "Upgrade", Vec::new(), Duration::from_secs(120))
                .await
                .and_then(|b| serde_json::from_slice::<Report>(&b).map_err(|e| e.to_string()));
            match r {
                Ok(r) if r.ok => println!(
                    "{who}: {} ({}) -> {} ({}): ok",
                    r.from.0, r.from.1, r.to.0, r.to.1
                ),
                Ok(r) => {
                    failed += 1;
                    println!(
                        "{who}: {} ({}) -> {} ({}): not upgraded: {}",
                        r.from.0, r.from.1, r.to.0, r.to.1, r.error
                    );
                }
                Err(e) => {
                    failed += 1;
                    println!("{who}: not upgraded: {e}");
                }
            }
        }
        i32::from(failed > 0)
    })
}
