//! The Sandbox service (`containerd.runtime.sandbox.v1.Sandbox`), served on
//! the shim's socket beside the Task service: CRI's `sandboxer = "shim"`
//! creates a pod here instead of running a pause container. The pod's
//! namespaces are held by a [`holder`] the shim starts (no image, no
//! runtime); its pid is what the pod's containers join
//! (`/proc/<pid>/ns/…`), so StartSandbox and SandboxStatus return it.
//!
//! Life: CreateSandbox (the pod's config, its netns) → StartSandbox (the
//! holder) → WaitSandbox (pending while the pod lives) → StopSandbox (the
//! holder killed; the shim stays) → ShutdownSandbox (the shim goes once no
//! container is left).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::sandbox_api::*;
use containerd_shim_protos::ttrpc::{Code, Status};
use containerd_shim_protos::types::platform::Platform;
use tokio::sync::watch;

use super::cgroup::{self, Placement};
use super::files::PodFiles;
use super::holder::{self, HolderSpec};
use super::pod_config::{Mode, PodConfig, TYPE_URL};
use crate::error::Error;
use crate::events::timestamp;
use crate::service::task::{lock, validate_id};
use crate::service::{decode, encode, TaskService};

/// The service name containerd calls.
pub const SERVICE: &str = "containerd.runtime.sandbox.v1.Sandbox";
/// The state strings CRI knows (anything else is NOTREADY to it).
pub const READY: &str = "SANDBOX_READY";
pub const NOT_READY: &str = "SANDBOX_NOTREADY";
/// What the holder gets of the OOM killer's favour, as CRI gives a pause
/// container.
const HOLDER_OOM_SCORE_ADJ: i32 = -998;
/// How long StopSandbox waits for the killed holder to be reaped.
const STOP_BOUND: Duration = Duration::from_secs(10);
/// The holder's pid in the sandbox's bundle (for `shim delete`).
pub const HOLDER_PID_FILE: &str = "holder.pid";

/// The pods this shim holds.
#[derive(Default)]
pub struct Sandboxes(Mutex<HashMap<String, Arc<Sandbox>>>);

impl Sandboxes {
    pub fn is_empty(&self) -> bool {
        lock(&self.0).is_empty()
    }

    /// The holder's pid of sandbox `id`, if it is one and runs.
    pub fn pid(&self, id: &str) -> Option<u32> {
        lock(&self.0).get(id).and_then(|s| s.running_pid())
    }

    fn get(&self, id: &str) -> Result<Arc<Sandbox>, Error> {
        lock(&self.0)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("sandbox {id} not found")))
    }
}

/// One pod.
pub struct Sandbox {
    id: String,
    bundle: PathBuf,
    spec: HolderSpec,
    pod: PodConfig,
    /// The holder's cgroup (the pod's).
    cgroup: Placement,
    /// Where CRI looks for the pod's hostname, hosts, resolv.conf and shm.
    files: Option<PodFiles>,
    state: Mutex<State>,
    /// The holder's exit, once it is reaped (or the sandbox stopped before
    /// it started).
    exited: watch::Sender<Option<(u32, SystemTime)>>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Created {
        at: SystemTime,
    },
    /// StartSandbox is on it (a second one is refused meanwhile).
    Starting {
        at: SystemTime,
    },
    Running {
        pid: u32,
        at: SystemTime,
    },
    Stopped {
        pid: u32,
        at: SystemTime,
    },
}

impl Sandbox {
    fn running_pid(&self) -> Option<u32> {
        match *lock(&self.state) {
            State::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    fn created_at(&self) -> SystemTime {
        match *lock(&self.state) {
            State::Created { at }
            | State::Starting { at }
            | State::Running { at, .. }
            | State::Stopped { at, .. } => at,
        }
    }

    /// Waits for the exit (it may have come already).
    async fn wait(&self) -> (u32, SystemTime) {
        let mut rx = self.exited.subscribe();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The holder's spec for a pod: its namespaces as the pod's config asks,
/// and CRI's defaults a pause container would have had.
/// The OCI spec of the pod's sandbox as a pause container's would read:
/// the holder's namespaces (those of the pod's own; the host's are left
/// out, as OCI means) and the hostname. containerd keeps it as the
/// sandbox's spec (and logs an error for each call when it does not
/// decode).
fn synthesized_spec(
    spec: &HolderSpec,
    pid: u32,
) -> containerd_shim_protos::protobuf::well_known_types::any::Any {
    let ns = |kind: &str, file: &str| serde_json::json!({ "type": kind, "path": format!("/proc/{pid}/ns/{file}") });
    let mut namespaces = Vec::new();
    if spec.netns.is_some() {
        namespaces.push(ns("network", "net"));
    }
    if spec.new_ipc {
        namespaces.push(ns("ipc", "ipc"));
    }
    if spec.hostname.is_some() {
        namespaces.push(ns("uts", "uts"));
    }
    if spec.new_pid {
        namespaces.push(ns("pid", "pid"));
    }
    let mut oci = serde_json::json!({
        "ociVersion": "1.2.0",
        "linux": { "namespaces": namespaces },
    });
    if let Some(h) = &spec.hostname {
        oci["hostname"] = h.clone().into();
    }
    containerd_shim_protos::protobuf::well_known_types::any::Any {
        type_url: SPEC_TYPE_URL.into(),
        value: oci.to_string().into_bytes(),
        ..Default::default()
    }
}

/// containerd's type URL of an OCI runtime spec (JSON).
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

fn holder_spec(config: &PodConfig, netns: &str) -> Result<HolderSpec, Error> {
    if config.userns == Mode::Pod {
        return Err(Error::InvalidArgument(
            "a pod with a user namespace of its own is not supported with sandboxer \"shim\" \
             (use the default sandboxer, \"podsandbox\")"
                .into(),
        ));
    }
    let host_network = config.network == Mode::Node;
    if !host_network && netns.is_empty() {
        return Err(Error::InvalidArgument(
            "the pod has its own network but no network namespace was given".into(),
        ));
    }
    let mut sysctls = config.sysctls.clone();
    if !host_network {
        for (k, v) in [
            ("net.ipv4.ip_unprivileged_port_start", "0"),
            ("net.ipv4.ping_group_range", "0 2147483647"),
        ] {
            sysctls.entry(k.into()).or_insert_with(|| v.into());
        }
    }
    Ok(HolderSpec {
        netns: (!host_network).then(|| PathBuf::from(netns)),
        new_ipc: config.ipc != Mode::Node,
        // A host-network pod keeps the host's uts namespace, as pause does.
        hostname: (!host_network).then(|| config.hostname.clone()),
        new_pid: config.pid == Mode::Pod,
        sysctls,
        cgroup_procs: Vec::new(),
        oom_score_adj: Some(HOLDER_OOM_SCORE_ADJ),
    })
}

impl TaskService {
    /// Answers one Sandbox call.
    pub async fn dispatch_sandbox(
        self: Arc<Self>,
        method: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>, Status> {
        match method {
            "CreateSandbox" => encode(self.create_sandbox(decode(payload)?)),
            "StartSandbox" => encode(self.start_sandbox(decode(payload)?).await),
            "Platform" => encode(self.sandbox_platform(decode(payload)?)),
            "StopSandbox" => encode(self.stop_sandbox(decode(payload)?).await),
            "WaitSandbox" => encode(self.wait_sandbox(decode(payload)?).await),
            "SandboxStatus" => encode(self.sandbox_status(decode(payload)?)),
            "PingSandbox" => encode(self.ping_sandbox(decode(payload)?)),
            "ShutdownSandbox" => encode(self.shutdown_sandbox(decode(payload)?)),
            "SandboxMetrics" => encode(self.sandbox_metrics(decode(payload)?)),
            other => Err(crate::ttrpc::status(
                Code::UNIMPLEMENTED,
                format!("{SERVICE}/{other} is not implemented"),
            )),
        }
    }

    fn create_sandbox(&self, req: CreateSandboxRequest) -> Result<CreateSandboxResponse, Error> {
        validate_id(&req.sandbox_id)?;
        let config = match req.options.as_ref() {
            Some(any) if any.type_url.ends_with(TYPE_URL) => PodConfig::decode(&any.value)
                .map_err(|e| {
                    Error::InvalidArgument(format!("the pod's config does not decode: {e}"))
                })?,
            Some(any) if !any.type_url.is_empty() => {
                return Err(Error::InvalidArgument(format!(
                    "sandbox options of type {:?}: want {TYPE_URL}",
                    any.type_url
                )))
            }
            // No config: a pod of the defaults.
            _ => PodConfig::decode(&[]).unwrap_or_default(),
        };
        let spec = holder_spec(&config, &req.netns_path)?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let cgroup = Placement::plan(&config.cgroup_parent, &req.sandbox_id, &mountinfo)
            .map_err(Error::InvalidArgument)?;
        let mut all = lock(&self.sandboxes.0);
        if all.contains_key(&req.sandbox_id) || lock(&self.containers).contains_key(&req.sandbox_id)
        {
            return Err(Error::AlreadyExists(format!(
                "sandbox {} already exists",
                req.sandbox_id
            )));
        }
        let (exited, _) = watch::channel(None);
        all.insert(
            req.sandbox_id.clone(),
            Arc::new(Sandbox {
                id: req.sandbox_id.clone(),
                bundle: PathBuf::from(&req.bundle_path),
                files: PodFiles::locate(std::path::Path::new(&req.bundle_path), &req.sandbox_id),
                spec,
                pod: config.clone(),
                cgroup,
                state: Mutex::new(State::Created {
                    at: SystemTime::now(),
                }),
                exited,
            }),
        );
        crate::info!(
            "sandbox {} created (pod {}/{})",
            req.sandbox_id,
            config.namespace,
            config.name
        );
        Ok(CreateSandboxResponse::new())
    }

    async fn start_sandbox(&self, req: StartSandboxRequest) -> Result<StartSandboxResponse, Error> {
        let sb = self.sandboxes.get(&req.sandbox_id)?;
        let created = {
            let mut st = lock(&sb.state);
            match *st {
                State::Created { at } => {
                    *st = State::Starting { at };
                    at
                }
                State::Starting { .. } => {
                    return Err(Error::FailedPrecondition(format!(
                        "sandbox {} is being started",
                        sb.id
                    )))
                }
                _ => {
                    return Err(Error::FailedPrecondition(format!(
                        "sandbox {} was started already",
                        sb.id
                    )))
                }
            }
        };
        let started = self.start_holder(&sb).await;
        if started.is_err() {
            *lock(&sb.state) = State::Created { at: created };
        }
        started
    }

    /// StartSandbox once the sandbox is marked Starting.
    async fn start_holder(&self, sb: &Arc<Sandbox>) -> Result<StartSandboxResponse, Error> {
        if let Some(files) = &sb.files {
            files.write(&sb.pod).map_err(|e| {
                files.remove();
                Error::Unknown(format!(
                    "the pod's files under {}: {e}",
                    files.root_dir.display()
                ))
            })?;
        }
        let pid = match self.spawn_holder(sb).await {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(files) = &sb.files {
                    files.remove();
                }
                return Err(e);
            }
        };
        let at = SystemTime::now();
        {
            // Unless the holder is gone already (its watcher said so).
            let mut st = lock(&sb.state);
            if let State::Starting { .. } = *st {
                *st = State::Running { pid, at };
            }
        }
        if !sb.bundle.as_os_str().is_empty() {
            let _ = std::fs::write(sb.bundle.join(HOLDER_PID_FILE), pid.to_string());
        }
        crate::info!("sandbox {}: holder {pid} started", sb.id);
        Ok(StartSandboxResponse {
            pid,
            created_at: MessageField::some(timestamp(at)),
            spec: MessageField::some(synthesized_spec(&sb.spec, pid)),
            ..Default::default()
        })
    }

    /// Starts the holder (through the reaper: the first process is the
    /// shim's child, the holder its grandchild, reparented to the shim) and
    /// watches for its exit.
    async fn spawn_holder(&self, sb: &Arc<Sandbox>) -> Result<u32, Error> {
        let mut spec = sb.spec.clone();
        spec.cgroup_procs = sb
            .cgroup
            .prepare()
            .map_err(|e| Error::Unknown(format!("the pod's cgroup: {e}")))?;
        if let (Placement::Dirs(dirs), false) = (&sb.cgroup, sb.bundle.as_os_str().is_empty()) {
            let list: String = dirs.iter().map(|d| format!("{}\n", d.display())).collect();
            let _ = std::fs::write(sb.bundle.join(cgroup::DIRS_FILE), list);
        }
        match self.spawn_holder_in(sb, &spec).await {
            Ok(pid) => Ok(pid),
            Err(e) => {
                sb.cgroup.remove().await;
                Err(e)
            }
        }
    }

    async fn spawn_holder_in(&self, sb: &Arc<Sandbox>, spec: &HolderSpec) -> Result<u32, Error> {
        let mut cmd = holder::command(std::path::Path::new("/proc/self/exe"), spec);
        crate::sys::kill_on_parent_death(&mut cmd);
        // Subscribed before anything can exit: the holder's exit too.
        let mut exits = self.reaper.subscribe();
        let mut holder_exits = self.reaper.subscribe();
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Unknown(format!("start the pod's holder: {e}")))?;
        let first = child.id() as i32;
        let out = child.stdout.take().map(std::os::fd::OwnedFd::from);
        let err = child.stderr.take().map(std::os::fd::OwnedFd::from);
        drop(child);
        let (out, err, exit) = tokio::join!(
            crate::runtime::runc::read_all(out),
            crate::runtime::runc::read_all(err),
            exits.wait_for(first)
        );
        let said = String::from_utf8_lossy(&err).trim().to_string();
        let pid = match holder::parse_reply(&out) {
            Some(pid) if exit.status == 0 => pid,
            _ => {
                return Err(Error::Unknown(if said.is_empty() {
                    format!("the pod's holder failed (status {})", exit.status)
                } else {
                    said
                }))
            }
        };
        if !said.is_empty() {
            crate::warn!("sandbox {}: {said}", sb.id);
        }
        if let Err(e) = sb.cgroup.attach(pid).await {
            let _ = crate::sys::send_signal(pid as i32, libc::SIGKILL);
            let _ = tokio::time::timeout(STOP_BOUND, holder_exits.wait_for(pid as i32)).await;
            return Err(Error::Unknown(format!("the pod's cgroup: {e}")));
        }
        let sb = sb.clone();
        tokio::spawn(async move {
            let e = holder_exits.wait_for(pid as i32).await;
            sb.cgroup.remove().await;
            if !sb.bundle.as_os_str().is_empty() {
                let _ = std::fs::remove_file(sb.bundle.join(cgroup::DIRS_FILE));
            }
            {
                let mut st = lock(&sb.state);
                if let State::Running { at, .. } | State::Starting { at } = *st {
                    *st = State::Stopped { pid, at };
                }
            }
            crate::info!("sandbox {}: holder {pid} exited ({})", sb.id, e.status);
            sb.exited.send_replace(Some((e.status, e.at)));
        });
        Ok(pid)
    }

    fn sandbox_platform(&self, req: PlatformRequest) -> Result<PlatformResponse, Error> {
        self.sandboxes.get(&req.sandbox_id)?;
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Ok(PlatformResponse {
            platform: MessageField::some(Platform {
                os: "linux".into(),
                architecture: architecture.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Kills the holder (every process of a pid namespace it is pid 1 of
    /// goes with it) and waits for its exit; the shim stays.
    async fn stop_sandbox(&self, req: StopSandboxRequest) -> Result<StopSandboxResponse, Error> {
        let sb = self.sandboxes.get(&req.sandbox_id)?;
        let pid = {
            let mut st = lock(&sb.state);
            match *st {
                State::Running { pid, .. } => Some(pid),
                State::Created { at } => {
                    *st = State::Stopped { pid: 0, at };
                    sb.exited.send_replace(Some((0, SystemTime::now())));
                    None
                }
                State::Stopped { .. } => None,
                State::Starting { .. } => {
                    return Err(Error::FailedPrecondition(format!(
                        "sandbox {} is being started; stop it once StartSandbox returns",
                        sb.id
                    )))
                }
            }
        };
        if let Some(pid) = pid {
            // Not reaped yet (its exit is recorded when it is), so the pid
            // is still the holder's.
            let _ = crate::sys::send_signal(pid as i32, libc::SIGKILL);
            if tokio::time::timeout(STOP_BOUND, sb.wait()).await.is_err() {
                return Err(Error::Unknown(format!(
                    "sandbox {}: holder {pid} not gone {STOP_BOUND:?} after SIGKILL",
                    sb.id
                )));
            }
        }
        Ok(StopSandboxResponse::new())
    }

    async fn wait_sandbox(&self, req: WaitSandboxRequest) -> Result<WaitSandboxResponse, Error> {
        let sb = self.sandboxes.get(&req.sandbox_id)?;
        let (status, at) = sb.wait().await;
        Ok(WaitSandboxResponse {
            exit_status: status,
            exited_at: MessageField::some(timestamp(at)),
            ..Default::default()
        })
    }

    fn sandbox_status(&self, req: SandboxStatusRequest) -> Result<SandboxStatusResponse, Error> {
        let sb = self.sandboxes.get(&req.sandbox_id)?;
        let st = *lock(&sb.state);
        let (pid, state, exited) = match st {
            State::Running { pid, .. } => (pid, READY, None),
            State::Created { .. } | State::Starting { .. } => (0, NOT_READY, None),
            State::Stopped { pid, .. } => (pid, NOT_READY, *sb.exited.borrow()),
        };
        Ok(SandboxStatusResponse {
            sandbox_id: sb.id.clone(),
            pid,
            state: state.into(),
            created_at: MessageField::some(timestamp(sb.created_at())),
            exited_at: exited
                .map(|(_, at)| timestamp(at))
                .map(MessageField::some)
                .unwrap_or_default(),
            ..Default::default()
        })
    }

    /// The statistics of the pod's cgroup, where the holder lives (none
    /// for a pod without a cgroup parent: the holder is in the shim's).
    fn sandbox_metrics(&self, req: SandboxMetricsRequest) -> Result<SandboxMetricsResponse, Error> {
        let sb = self.sandboxes.get(&req.sandbox_id)?;
        if sb.cgroup == Placement::Shim {
            return Err(Error::NotFound(format!(
                "sandbox {}: the pod has no cgroup parent, so no cgroup of its own",
                sb.id
            )));
        }
        let pid = sb
            .running_pid()
            .ok_or_else(|| Error::NotFound(format!("sandbox {} is not running", sb.id)))?;
        let data = crate::cgroup::Cgroup::for_pid(pid)
            .and_then(|c| c.stat_files())
            .and_then(|mut f| f.read())
            .map_err(|e| Error::NotFound(format!("sandbox {}: its cgroup: {e}", sb.id)))?;
        let mut resp = SandboxMetricsResponse::new();
        // (The crate does not export the Metric type by name.)
        let m = resp.metrics.mut_or_insert_default();
        m.timestamp = MessageField::some(timestamp(SystemTime::now()));
        m.id = sb.id.clone();
        m.data = MessageField::some(data);
        Ok(resp)
    }

    fn ping_sandbox(&self, req: PingRequest) -> Result<PingResponse, Error> {
        self.sandboxes.get(&req.sandbox_id)?;
        Ok(PingResponse::new())
    }

    /// Forgets the sandbox (its holder killed if it still runs); the shim
    /// exits once no container is left either.
    fn shutdown_sandbox(
        &self,
        req: ShutdownSandboxRequest,
    ) -> Result<ShutdownSandboxResponse, Error> {
        let sb = self.sandboxes.get(&req.sandbox_id)?;
        if let Some(pid) = sb.running_pid() {
            let _ = crate::sys::send_signal(pid as i32, libc::SIGKILL);
        }
        lock(&self.sandboxes.0).remove(&sb.id);
        if let Some(files) = &sb.files {
            files.remove();
        }
        if !sb.bundle.as_os_str().is_empty() {
            let _ = std::fs::remove_file(sb.bundle.join(HOLDER_PID_FILE));
        }
        crate::info!("sandbox {} shut down", sb.id);
        self.shutdown_if_idle();
        Ok(ShutdownSandboxResponse::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_follows_the_pods_namespace_modes() {
        let pod = PodConfig {
            hostname: "web-0".into(),
            userns: Mode::Node,
            ..Default::default()
        };
        let s = holder_spec(&pod, "/var/run/netns/cni-1").unwrap();
        assert_eq!(s.netns, Some(PathBuf::from("/var/run/netns/cni-1")));
        assert_eq!(s.hostname.as_deref(), Some("web-0"));
        assert!(s.new_ipc && s.new_pid);
        assert_eq!(s.sysctls["net.ipv4.ip_unprivileged_port_start"], "0");
        assert_eq!(s.oom_score_adj, Some(-998));
        // hostNetwork, hostIPC, hostPID: the host's, and no netns needed.
        let host = PodConfig {
            network: Mode::Node,
            ipc: Mode::Node,
            pid: Mode::Node,
            userns: Mode::Node,
            ..Default::default()
        };
        let s = holder_spec(&host, "").unwrap();
        assert_eq!(
            (s.netns, s.hostname, s.new_ipc, s.new_pid),
            (None, None, false, false)
        );
        assert!(s.sysctls.is_empty());
        // Each container its own pid namespace: the holder needs none.
        let s = holder_spec(
            &PodConfig {
                pid: Mode::Container,
                userns: Mode::Node,
                ..pod.clone()
            },
            "/n",
        )
        .unwrap();
        assert!(!s.new_pid);
        // A pod's own sysctl wins over the default.
        let mut own = pod.clone();
        own.sysctls
            .insert("net.ipv4.ip_unprivileged_port_start".into(), "1024".into());
        assert_eq!(
            holder_spec(&own, "/n").unwrap().sysctls["net.ipv4.ip_unprivileged_port_start"],
            "1024"
        );
    }

    #[test]
    fn pods_the_holder_cannot_serve_are_refused_clearly() {
        let userns = PodConfig {
            userns: Mode::Pod,
            ..Default::default()
        };
        let err = holder_spec(&userns, "/n").unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("user namespace")),
            "{err}"
        );
        let own_net = PodConfig {
            userns: Mode::Node,
            ..Default::default()
        };
        assert!(matches!(
            holder_spec(&own_net, ""),
            Err(Error::InvalidArgument(_))
        ));
    }
}
