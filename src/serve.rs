//! Serve mode: the long-running shim daemon.
//!
//! One thread: a current-thread tokio runtime runs the ttrpc server, the
//! reaper, the exit handler and the event forwarder. Runtime calls are child
//! processes awaited through the reaper, so nothing blocks the thread.
//!
//! Shutdown: on the `Shutdown` RPC once no container remains, or on SIGTERM /
//! SIGINT (containers keep running, orphaned). Queued events get up to 5 s to
//! be sent or kept in the event store (`<socket>.events`), then the socket
//! file is removed and the process exits. After a Shutdown (no container
//! left, so no `shim delete` will read the store) kept events are delivered
//! first, for up to [`KEPT_EVENTS_LINGER`]; what containerd did not take by
//! then is logged and dropped. Runtime deletes that hung get their retries
//! in the same time (`service::afterlife`).
//!
//! Upgrade in place ([`crate::upgrade`]): on the control call or SIGUSR2 the
//! daemon hands everything over to the binary installed at its own path; an
//! image started that way (`WEDGE_RESTORE_FD` set) takes it over instead of
//! starting fresh. A refused upgrade resumes from the same handover, in place.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::container::ContainerHandover;

/// How long a shim told to shut down stays to deliver the events it kept
/// while containerd was away (containerd restarting deletes the tasks whose
/// processes ended meanwhile, and shuts their shims down, while it is still
/// loading: before it takes events). Its socket is already gone.
const KEPT_EVENTS_LINGER: Duration = Duration::from_secs(60);
use crate::events::{Encoded, Publisher};
use crate::flags::Flags;
use crate::reaper::{become_subreaper, Reaper};
use crate::runtime::runc::Runc;
use crate::runtime::{Runtime, RuntimeFactory};
use crate::service::TaskService;
use crate::ttrpc::{ConnHandover, Server};
use crate::upgrade::control::{Control, Front, UpgradeAsk};
use crate::upgrade::{state, Exe, Handover, Report};

/// Points stderr at the bundle's `log` FIFO (non-blocking, so a stalled
/// reader costs log lines, never progress).
fn redirect_log() {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log");
    if let Ok(f) = f {
        let _ = rustix::stdio::dup2_stderr(&f);
    }
}

fn listener(flags: &Flags) -> Result<(tokio::net::UnixListener, Option<PathBuf>), String> {
    let std_listener = if flags.socket.is_empty() {
        let fd: OwnedFd =
            crate::sys::take_listener_fd().map_err(|e| format!("listener fd 3: {e}"))?;
        std::os::unix::net::UnixListener::from(fd)
    } else {
        if flags.socket.len() > 106 {
            return Err(format!("socket path {} is too long", flags.socket));
        }
        let _ = std::fs::remove_file(&flags.socket);
        let l = std::os::unix::net::UnixListener::bind(&flags.socket)
            .map_err(|e| format!("listen: {e}"))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&flags.socket, std::fs::Permissions::from_mode(0o600));
        l
    };
    std_listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let path = std_listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()));
    let l =
        tokio::net::UnixListener::from_std(std_listener).map_err(|e| format!("listener: {e}"))?;
    Ok((l, path))
}

/// Runs the daemon until shutdown.
pub fn run(flags: &Flags) -> Result<(), String> {
    // Before any thread exists: the handover's variables are read and removed.
    let record = crate::upgrade::take_record();
    let failure = crate::upgrade::take_failure();
    if record.is_none() {
        crate::sys::close_inherited_fds();
        redirect_log();
    }
    crate::sys::nofile::init();
    become_subreaper().map_err(|e| format!("set child subreaper: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(serve(flags, record, failure))
}

/// What a daemon is built from: fresh, or taken over.
struct Parts {
    listener: UnixListener,
    conns: Vec<ConnHandover>,
    containers: Vec<ContainerHandover>,
    events: Vec<Encoded>,
    report: Option<Report>,
}

/// The running daemon's pieces.
struct Daemon {
    flags: Flags,
    socket: Option<PathBuf>,
    exe: Exe,
    reaper: Arc<Reaper>,
    reaper_task: JoinHandle<()>,
    exits_task: JoinHandle<()>,
    events: Publisher,
    service: Arc<TaskService>,
    front: Arc<Front>,
    server: Arc<Server<Front>>,
    shutdown: Arc<Notify>,
}

/// Runs the reaper: every SIGCHLD, every exit to its subscribers.
fn spawn_reaper(reaper: &Arc<Reaper>) -> JoinHandle<()> {
    let reaper = reaper.clone();
    tokio::spawn(async move {
        if let Err(e) = reaper.run().await {
            crate::error!("reaper: {e}");
        }
    })
}

impl Daemon {
    /// Wires a daemon together. Everything that learns of exits subscribes
    /// before the reaper starts, so that exits from before (a handover) are
    /// seen.
    fn build(
        flags: &Flags,
        socket: Option<PathBuf>,
        exe: Exe,
        parts: Parts,
        asks: mpsc::UnboundedSender<UpgradeAsk>,
    ) -> Daemon {
        let reaper = Reaper::new();
        let events = Publisher::spawn_with(
            std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
            flags.namespace.clone(),
            socket.as_deref().map(crate::events::Store::for_socket),
            crate::events::Timing::default(),
            parts.events,
        );
        let factory: RuntimeFactory = {
            let reaper = reaper.clone();
            Arc::new(move |cfg| Arc::new(Runc::new(cfg, reaper.clone())) as Arc<dyn Runtime>)
        };
        let shutdown = Arc::new(Notify::new());
        let service = TaskService::new(
            flags.namespace.clone(),
            factory,
            events.clone(),
            reaper.clone(),
            Arc::new(crate::host::RealHost),
            shutdown.clone(),
        );
        let exits_task = tokio::spawn(service.clone().handle_exits(reaper.subscribe()));
        service.take_over(parts.containers);
        let front = Arc::new(Front {
            tasks: service.clone(),
            control: Control::new(asks, parts.report),
        });
        let server = Server::start(parts.listener, front.clone(), parts.conns);
        let reaper_task = spawn_reaper(&reaper);
        Daemon {
            flags: flags.clone(),
            socket,
            exe,
            reaper,
            reaper_task,
            front,
            exits_task,
            events,
            service,
            server,
            shutdown,
        }
    }

    /// A daemon from a handover (in the new image, or in place after a
    /// refusal).
    fn from_handover(
        flags: &Flags,
        socket: Option<PathBuf>,
        exe: Exe,
        h: Handover,
        asks: mpsc::UnboundedSender<UpgradeAsk>,
    ) -> Result<Daemon, String> {
        let parts = Parts {
            listener: listener_from(h.server.listener)?,
            conns: h.server.conns,
            containers: h.containers,
            events: h.events,
            report: h.report,
        };
        Ok(Daemon::build(flags, socket, exe, parts, asks))
    }

    /// Upgrades in place to the binary at this image's path. Returns the
    /// daemon that serves on: this one (refused before anything stopped,
    /// the report sent to `ask`), or one resumed in place from the handover
    /// (the report goes to the handed-over call). When the exec works, it
    /// does not return.
    async fn upgrade(self, ask: UpgradeAsk, asks: mpsc::UnboundedSender<UpgradeAsk>) -> Daemon {
        let from = (crate::VERSION.to_string(), crate::REVISION.to_string());
        let refuse = |d: Daemon, to: (String, String), error: String| {
            crate::warn!("upgrade refused: {error}");
            if let Some(ask) = ask {
                let _ = ask.send(Report {
                    from: from.clone(),
                    to,
                    ok: false,
                    error,
                });
            }
            d
        };
        let unknown = (String::new(), String::new());
        let to = match crate::upgrade::check_candidate(&self.exe.path) {
            Ok(v) => v,
            Err(e) => return refuse(self, unknown, e),
        };
        if let Some(b) = self.service.handover_blocker() {
            return refuse(self, to, b);
        }
        crate::info!(
            "upgrading in place: {} ({}) to {} ({})",
            from.0,
            from.1,
            to.0,
            to.1
        );
        let server = match self.server.handover(crate::upgrade::QUIESCE).await {
            Ok(s) => s,
            Err(e) => return refuse(self, to, e),
        };
        // From here on, the call that asked is handed over: the report
        // travels in the handover.
        self.reaper_task.abort();
        if !self.service.exits_settled(crate::upgrade::QUIESCE).await {
            // Nothing was taken apart yet: serve on as before.
            let error = "exits still being reported".to_string();
            crate::warn!("upgrade refused: {error}");
            self.front.control.set_report(Report {
                from,
                to,
                ok: false,
                error,
            });
            let mut d = self;
            d.reaper_task = spawn_reaper(&d.reaper);
            match serve_on(d.front.clone(), server) {
                Ok(s) => d.server = s,
                Err(e) => {
                    crate::error!("serving on after a refused upgrade: {e}");
                    std::process::exit(1);
                }
            }
            return d;
        }
        let containers = self.service.hand_over().await;
        let events = self.events.pause().await;
        self.exits_task.abort();
        let Daemon {
            flags, socket, exe, ..
        } = self;
        let path = exe.path.clone();
        let mut h = Handover {
            server,
            containers,
            events,
            exe: exe.fd,
            from: from.clone(),
            report: Some(Report {
                from: from.clone(),
                to: to.clone(),
                ok: true,
                error: String::new(),
            }),
        };
        let failed = {
            let mut fds = state::FdList::default();
            let record = state::record(&h, &mut fds);
            match serde_json::to_vec(&record) {
                Err(e) => format!("encode the state: {e}"),
                Ok(json) => match crate::upgrade::check_record(&path, &json) {
                    Err(e) => e,
                    Ok(()) => crate::upgrade::exec_handover(
                        crate::upgrade::Target::Path(&path),
                        &json,
                        &fds.0,
                    ),
                },
            }
        };
        crate::warn!("upgrade failed: {failed}; serving on");
        if let Some(r) = h.report.as_mut() {
            r.ok = false;
            r.error = failed;
        }
        let exe = match Exe::current() {
            Ok(e) => e,
            Err(_) => Exe {
                path,
                fd: h.exe.try_clone().expect("dup the image handle"),
            },
        };
        match Daemon::from_handover(&flags, socket, exe, h, asks) {
            Ok(d) => d,
            Err(e) => {
                crate::error!("resuming after a failed upgrade: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Serves a handed-over listener and connections again with `front`.
fn serve_on(
    front: Arc<Front>,
    h: crate::ttrpc::ServerHandover,
) -> Result<Arc<Server<Front>>, String> {
    Ok(Server::start(listener_from(h.listener)?, front, h.conns))
}

/// A handed-over listening socket, for the runtime.
fn listener_from(fd: OwnedFd) -> Result<UnixListener, String> {
    let l = std::os::unix::net::UnixListener::from(fd);
    l.set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    UnixListener::from_std(l).map_err(|e| format!("listener: {e}"))
}

/// Takes over from a previous image: the record, its descriptors, and (in a
/// new image) the way back if that fails.
fn take_over(
    flags: &Flags,
    memfd: OwnedFd,
    data: &[u8],
    failure: Option<String>,
    asks: mpsc::UnboundedSender<UpgradeAsk>,
) -> Result<Daemon, String> {
    let record: state::StateRecord =
        serde_json::from_slice(data).map_err(|e| format!("the state does not decode: {e}"))?;
    // A new image can go back to the one that handed over; an image that
    // was brought back cannot go further back.
    let fallback = failure
        .is_none()
        .then(|| crate::upgrade::Fallback::arm(record.exe_fd, memfd.as_raw_fd()));
    let fail = |e: String| {
        if let Some(fb) = &fallback {
            fb.go_back(&e);
        }
        e
    };
    let mut adopter = state::Adopter::new();
    let mut h = state::handover(record, &mut adopter).map_err(fail)?;
    if fallback.is_some() {
        crate::upgrade::injected_fault();
    }
    if let Some(r) = h.report.as_mut() {
        match &failure {
            Some(why) => {
                r.ok = false;
                r.error = why.clone();
            }
            None => r.to = (crate::VERSION.to_string(), crate::REVISION.to_string()),
        }
    }
    let exe = Exe::current().map_err(|e| fail(format!("own executable: {e}")))?;
    let socket = listener_path(&h.server.listener);
    let fds = adopter.adopted();
    let d = Daemon::from_handover(flags, socket, exe, h, asks).map_err(fail)?;
    // Restored: nothing is handed on again by accident.
    for fd in fds {
        let _ = crate::sys::set_cloexec(fd, true);
    }
    drop(memfd);
    if let Some(fb) = fallback {
        fb.disarm();
    }
    match &failure {
        Some(why) => crate::warn!("upgrade failed, serving on the previous binary: {why}"),
        None => crate::info!(
            "upgraded in place to {} ({})",
            crate::VERSION,
            crate::REVISION
        ),
    }
    Ok(d)
}

fn listener_path(fd: &OwnedFd) -> Option<PathBuf> {
    let addr = rustix::net::getsockname(fd).ok()?;
    let unix = rustix::net::SocketAddrUnix::try_from(addr).ok()?;
    unix.path()
        .map(|p| PathBuf::from(p.to_string_lossy().into_owned()))
}

async fn serve(
    flags: &Flags,
    record: Option<Result<(OwnedFd, Vec<u8>), String>>,
    failure: Option<String>,
) -> Result<(), String> {
    let (asks_tx, mut asks) = mpsc::unbounded_channel::<UpgradeAsk>();
    let mut d = match record {
        None => {
            let (listener, socket) = listener(flags)?;
            let exe = Exe::current().map_err(|e| format!("own executable: {e}"))?;
            let parts = Parts {
                listener,
                conns: Vec::new(),
                containers: Vec::new(),
                events: Vec::new(),
                report: None,
            };
            let d = Daemon::build(flags, socket, exe, parts, asks_tx.clone());
            crate::info!(
                "wedge shim started, namespace {} id {}",
                flags.namespace,
                flags.id
            );
            d
        }
        Some(Err(e)) => return Err(format!("take over: {e}")),
        Some(Ok((memfd, data))) => take_over(flags, memfd, &data, failure, asks_tx.clone())?,
    };
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("signals: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("signals: {e}"))?;
    let mut usr2 = signal(SignalKind::user_defined2()).map_err(|e| format!("signals: {e}"))?;
    // Started: what start-up alone ran need not stay resident.
    crate::sys::trim_code_residency();
    let mut asked = false;
    loop {
        tokio::select! {
            _ = d.shutdown.notified() => {
                crate::info!("shutdown requested");
                asked = true;
                break;
            }
            _ = term.recv() => {
                crate::info!("SIGTERM: shutting down");
                break;
            }
            _ = int.recv() => {
                crate::info!("SIGINT: shutting down");
                break;
            }
            _ = usr2.recv() => {
                crate::info!("SIGUSR2: upgrading in place");
                d = d.upgrade(None, asks_tx.clone()).await;
            }
            Some(ask) = asks.recv() => {
                d = d.upgrade(ask, asks_tx.clone()).await;
            }
        }
    }
    // After a Shutdown, events containerd did not take (it was down when
    // they happened, and is still loading when it deletes the task and shuts
    // the shim down) are delivered before this process goes. The store is
    // held from before the socket goes: `shim delete`, which containerd runs
    // as soon as it sees the connection close, leaves them to us.
    let store = d
        .socket
        .as_deref()
        .filter(|_| asked)
        .map(crate::events::Store::for_socket)
        .filter(|s| !s.is_empty());
    let held = store.as_ref().and_then(|s| s.hold().ok());
    if let Some(p) = &d.socket {
        let _ = std::fs::remove_file(p);
    }
    let drained = d.events.flush(Duration::from_secs(5)).await;
    let kept = async {
        if let (Some(store), Some(_)) = (&store, &held) {
            d.events.deliver_kept(store, KEPT_EVENTS_LINGER).await;
        }
    };
    // Abandoned runtime deletes are retried for a while (afterlife).
    let retries = d.service.retries_done(if asked {
        crate::service::RETRY_FOR
    } else {
        Duration::ZERO
    });
    tokio::join!(kept, retries);
    drop(held);
    // Let the Shutdown response reach the client.
    tokio::time::sleep(Duration::from_millis(20)).await;
    if !drained {
        return Err("publisher not closed".into());
    }
    Ok(())
}
