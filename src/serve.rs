//! Serve mode: the long-running shim daemon.
//!
//! One thread: a current-thread tokio runtime runs the ttrpc server, the
//! reaper, the exit handler and the event forwarder. Runtime calls are child
//! processes awaited through the reaper, so nothing blocks the thread.
//!
//! Shutdown: on the `Shutdown` RPC once no container remains, or on SIGTERM /
//! SIGINT (containers keep running, orphaned). Queued events get up to 5 s to
//! be sent or kept in the event store (`<socket>.events`), then the socket
//! file is removed and the process exits.

use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::events::Publisher;
use crate::flags::Flags;
use crate::reaper::{become_subreaper, Reaper};
use crate::runtime::runc::Runc;
use crate::runtime::{Runtime, RuntimeFactory};
use crate::service::TaskService;

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
    crate::sys::close_inherited_fds();
    redirect_log();
    become_subreaper().map_err(|e| format!("set child subreaper: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(serve(flags))
}

async fn serve(flags: &Flags) -> Result<(), String> {
    let (listener, socket) = listener(flags)?;
    let reaper = Reaper::new();
    let service_exits = reaper.subscribe();
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("signals: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("signals: {e}"))?;
    tokio::spawn({
        let r = reaper.clone();
        async move {
            if let Err(e) = r.run().await {
                crate::error!("reaper: {e}");
            }
        }
    });

    let events = Publisher::spawn(
        std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        flags.namespace.clone(),
        socket.as_deref().map(crate::events::Store::for_socket),
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
    tokio::spawn(service.clone().handle_exits(service_exits));
    tokio::spawn(crate::ttrpc::serve(listener, service.clone()));
    crate::info!(
        "wedge shim started, namespace {} id {}",
        flags.namespace,
        flags.id
    );

    tokio::select! {
        _ = shutdown.notified() => crate::info!("shutdown requested"),
        _ = term.recv() => crate::info!("SIGTERM: shutting down"),
        _ = int.recv() => crate::info!("SIGINT: shutting down"),
    }
    if let Some(p) = &socket {
        let _ = std::fs::remove_file(p);
    }
    let drained = events.flush(Duration::from_secs(5)).await;
    // Let the Shutdown response reach the client.
    tokio::time::sleep(Duration::from_millis(20)).await;
    if !drained {
        return Err("publisher not closed".into());
    }
    Ok(())
}
