//! The short-lived invocations containerd makes around the long-running
//! daemon: `start`, `delete` and `-info`.
//!
//! `start` (cwd = bundle): reads its stdin ([`crate::bootstrap::StartInput`]:
//! containerd 2.3's BootstrapParams, the legacy options Any, or nothing),
//! picks the group from the spec's annotations, derives the socket
//! `<socket dir>/<sha256(address/ns/group)>` (the socket dir is containerd
//! 2.3's `socket_dir`, else `/run/containerd/s`), reuses a live shim of the
//! same group or binds a new socket (a file, 0600, never abstract), writes
//! `address` atomically, starts the daemon with the listener as fd 3, applies
//! `shim_cgroup` and `oom_score_adj`, and prints only its reply: a
//! BootstrapResult to containerd 2.3+, the plain address to older ones.
//!
//! `delete` (cwd = bundle): runs after every container, so it is idempotent:
//! `runtime delete --force`, unmount `rootfs`, and print a `DeleteResponse`.
//!
//! `-info`: the `RuntimeInfo` containerd 2.x asks for: name, version, the
//! options given on stdin, and the OCI runtime's `features` document.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::shim::DeleteResponse;
use sha2::{Digest, Sha256};

use crate::bootstrap::{RuntimeInfo, StartInput};
use crate::flags::Flags;
use crate::options::Options;

/// Most bytes read from stdin (the Go shim's limit too).
const STDIN_MAX: u64 = 10 << 20;
/// How long `shim delete` lets `runtime delete --force` run: containerd
/// kills `shim delete` itself after 5 s, and it must print its answer first.
const SHIM_DELETE_RUNTIME_BOUND: Duration = Duration::from_secs(4);

/// Directory of shim sockets, shared by every containerd on the machine.
pub const SOCKET_DIR: &str = "/run/containerd/s";

/// Annotation that groups containers into one shim (explicit).
pub const GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";
/// Annotation CRI sets to the pod sandbox id.
pub const SANDBOX_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The group id: explicit group annotation, else the CRI sandbox id, else id.
pub fn group_id(config_json: &str, id: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(config_json).unwrap_or_default();
    let ann = |k: &str| {
        v.pointer("/annotations")
            .and_then(|a| a.get(k))
            .and_then(|x| x.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    ann(GROUP_ANNOTATION)
        .or_else(|| ann(SANDBOX_ANNOTATION))
        .unwrap_or_else(|| id.to_string())
}

/// Lexically cleans a path as Go's `filepath.Clean` does.
pub fn clean_path(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            x => out.push(x),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// The socket path for (containerd address, namespace, group) in the
/// default socket directory.
pub fn socket_path(address: &str, namespace: &str, group: &str) -> PathBuf {
    socket_path_in(Path::new(SOCKET_DIR), address, namespace, group)
}

/// The socket path for (containerd address, namespace, group) in `dir`.
pub fn socket_path_in(dir: &Path, address: &str, namespace: &str, group: &str) -> PathBuf {
    let joined = clean_path(&format!("{address}/{namespace}/{group}"));
    let digest = Sha256::digest(joined.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(hex)
}

/// The bundle's link to a socket directory containerd chose (`s`, as the Go
/// shim names it), so that `delete` can find a dead shim's socket there.
const SOCKET_DIR_LINK: &str = "s";

fn e<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |err| format!("{what}: {err}")
}

/// `start`: prints the reply for a (new or reused) shim for this group.
pub fn start(flags: &Flags) -> Result<(), String> {
    let mut raw = Vec::new();
    std::io::stdin()
        .take(STDIN_MAX)
        .read_to_end(&mut raw)
        .map_err(e("read stdin"))?;
    let input = StartInput::decode(&raw, &flags.id, &flags.namespace)?;
    let opts = Options::from_any(input.options()).map_err(|err| err.to_string())?;
    let (grpc, ttrpc, debug) = match &input {
        StartInput::Bootstrap(p) => (
            Some(p.grpc_address.as_str()).filter(|a| !a.is_empty()),
            Some(p.ttrpc_address.as_str()).filter(|a| !a.is_empty()),
            flags.debug || p.debug(),
        ),
        _ => (None, None, flags.debug),
    };
    let grpc = grpc.unwrap_or(&flags.address);
    // A pod's sandbox bundle (CRI's `sandboxer = "shim"`) has no config.json:
    // the sandbox is its own group.
    let config = match std::fs::read_to_string("config.json") {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        r => r.map_err(e("read config.json"))?,
    };
    let group = group_id(&config, &flags.id);
    let dir = Path::new(input.socket_dir().unwrap_or(SOCKET_DIR));
    let path = socket_path_in(dir, grpc, &flags.namespace, &group);
    let address = format!("unix://{}", path.display());
    let reply = input.reply(&address);

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(e("create socket dir"))?;
    if input.socket_dir().is_some() {
        link_socket_dir(dir).map_err(e("link socket dir"))?;
    }
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            if shim_alive(&path) {
                // Grouping: another container of this group already has a shim.
                crate::fsutil::write_atomic(Path::new("address"), address.as_bytes(), 0o666)
                    .map_err(e("write address"))?;
                return print_reply(&reply);
            }
            std::fs::remove_file(&path).map_err(e("remove stale socket"))?;
            UnixListener::bind(&path).map_err(e("listen"))?
        }
        Err(err) => return Err(format!("listen on {}: {err}", path.display())),
    };
    let cleanup = |msg: String| {
        let _ = std::fs::remove_file(&path);
        msg
    };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|err| cleanup(format!("chmod socket: {err}")))?;
    crate::fsutil::write_atomic(Path::new("address"), address.as_bytes(), 0o666)
        .map_err(|err| cleanup(format!("write address: {err}")))?;

    let fd = OwnedFd::from(listener);
    let exe = std::env::current_exe().map_err(|err| cleanup(format!("current exe: {err}")))?;
    let mut cmd = Command::new(&exe);
    // argv[0] keeps the installed name so the daemon reports the same runtime.
    {
        use std::os::unix::process::CommandExt;
        cmd.arg0(std::env::args().next().unwrap_or_default())
            .process_group(0);
    }
    cmd.args([
        "-namespace",
        &flags.namespace,
        "-id",
        &flags.id,
        "-address",
        grpc,
    ]);
    if debug {
        cmd.arg("-debug");
    }
    if let Some(t) = ttrpc {
        cmd.env("TTRPC_ADDRESS", t);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    crate::sys::pass_fds(&mut cmd, &[(&fd, crate::sys::LISTENER_FD)]);
    let mut child = cmd
        .spawn()
        .map_err(|err| cleanup(format!("start shim daemon: {err}")))?;
    drop(fd);

    let setup = || -> Result<(), String> {
        if !opts.shim_cgroup.is_empty() {
            join_cgroup(child.id(), &opts.shim_cgroup)?;
        }
        adjust_oom_score(child.id())
    };
    if let Err(err) = setup() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(cleanup(err));
    }
    print_reply(&reply)
}

fn print_reply(reply: &[u8]) -> Result<(), String> {
    let mut out = std::io::stdout();
    out.write_all(reply)
        .and_then(|()| out.flush())
        .map_err(e("write reply"))
}

/// Points the bundle's `s` link at `dir` (replacing an older link).
fn link_socket_dir(dir: &Path) -> std::io::Result<()> {
    if std::fs::read_link(SOCKET_DIR_LINK).is_ok_and(|t| t == dir) {
        return Ok(());
    }
    let tmp = format!(".{SOCKET_DIR_LINK}.{}", std::process::id());
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(dir, &tmp)?;
    std::fs::rename(&tmp, SOCKET_DIR_LINK)
}

/// `-info`: the runtime's `RuntimeInfo`, with the options on stdin (a
/// runtime options Any, or nothing) applied and echoed.
pub fn info(name: &str) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    std::io::stdin()
        .take(STDIN_MAX)
        .read_to_end(&mut raw)
        .map_err(e("read stdin"))?;
    let options = if raw.is_empty() {
        None
    } else {
        Some(Any::parse_from_bytes(&raw).map_err(e("decode runtime options"))?)
    };
    let opts = Options::from_any(options.as_ref())
        .map_err(|err| format!("failed to read runtime options: {err}"))?;
    let binary = look_path(opts.binary())
        .ok_or_else(|| format!("failed to look up the path of {:?}", opts.binary()))?;
    Ok(RuntimeInfo {
        name: name.to_string(),
        version: crate::VERSION.to_string(),
        revision: crate::REVISION.to_string(),
        options,
        features: runtime_features(&binary),
    }
    .encode())
}

/// Resolves a binary name as `exec.LookPath` does: a path with a slash as
/// is, otherwise the first executable match on `$PATH`.
fn look_path(binary: &str) -> Option<PathBuf> {
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if binary.contains('/') {
        let p = PathBuf::from(binary);
        return executable(&p).then_some(p);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(binary))
        .find(|p| executable(p))
}

/// Runs a runtime command (stdin null, output captured) in its own process
/// group; past `limit` the group is killed and the call is an error.
fn run_bounded(mut cmd: Command, limit: Duration) -> std::io::Result<std::process::Output> {
    use std::os::unix::process::CommandExt;
    // Dies with us: containerd kills `shim delete` when it takes too long.
    crate::sys::kill_on_parent_death(&mut cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    // Drain both pipes while waiting, so a chatty command cannot block.
    let (mut so, mut se) = (child.stdout.take(), child.stderr.take());
    let readers = [
        std::thread::spawn(move || read_to_end(so.as_mut())),
        std::thread::spawn(move || read_to_end(se.as_mut())),
    ];
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = crate::sys::kill_process_group(child.id() as i32, libc::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("did not finish within {limit:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let [out, err] = readers.map(|r| r.join().unwrap_or_default());
    Ok(std::process::Output {
        status,
        stdout: out,
        stderr: err,
    })
}

fn read_to_end(r: Option<&mut impl Read>) -> Vec<u8> {
    let mut v = Vec::new();
    if let Some(r) = r {
        let _ = r.read_to_end(&mut v);
    }
    v
}

/// The OCI runtime's `features` JSON, or `None` (said on stderr) when it
/// has none.
fn runtime_features(binary: &Path) -> Option<Vec<u8>> {
    let mut cmd = Command::new(binary);
    cmd.arg("features");
    let out = match run_bounded(cmd, Duration::from_secs(10)) {
        Ok(o) => o,
        Err(err) => {
            eprintln!("{} features: {err}; no features reported", binary.display());
            return None;
        }
    };
    let json = out.stdout.trim_ascii();
    if out.status.success() && serde_json::from_slice::<serde_json::Value>(json).is_ok() {
        return Some(json.to_vec());
    }
    eprintln!(
        "{} features: {} {}; no features reported",
        binary.display(),
        out.status,
        String::from_utf8_lossy(out.stderr.trim_ascii())
    );
    None
}

/// Whether a shim listens on `path`. A non-blocking connect answers at
/// once and never by timing: refused or missing means no listener; a
/// connection, or EAGAIN (a full backlog: a daemon still starting, or busy),
/// means one is there.
fn shim_alive(path: &Path) -> bool {
    use rustix::net::{
        connect, socket_with, AddressFamily, SocketAddrUnix, SocketFlags, SocketType,
    };
    let Ok(addr) = SocketAddrUnix::new(path) else {
        return false;
    };
    let Ok(sock) = socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    ) else {
        return false;
    };
    match connect(&sock, &addr) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INPROGRESS,
    }
}

/// The socket named by the bundle's address (`shim_address`), if no shim answers on
/// it any more (the daemon died). A live socket (another container of the
/// group still served) is not returned.
fn dead_shim_socket(bundle: &Path) -> Option<PathBuf> {
    let addr = shim_address(bundle)?;
    let path = PathBuf::from(addr.trim().trim_start_matches("unix://"));
    let chosen = std::fs::read_link(bundle.join(SOCKET_DIR_LINK)).ok();
    let ours = path
        .parent()
        .is_some_and(|d| d == Path::new(SOCKET_DIR) || chosen.as_deref().is_some_and(|c| d == c));
    (ours && !shim_alive(&path)).then_some(path)
}

/// The address a bundle's shim served on: its `address` file, or the
/// `bootstrap.json` containerd 2.x writes for a shim that answered `start`
/// with a BootstrapResult (the Go shim writes no `address` file there).
fn shim_address(bundle: &Path) -> Option<String> {
    if let Ok(a) = std::fs::read_to_string(bundle.join("address")) {
        return Some(a);
    }
    let json = std::fs::read_to_string(bundle.join("bootstrap.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&json).ok()?;
    Some(v.get("address")?.as_str()?.to_string())
}

/// What a dead shim left: its socket is removed, and the events it kept for
/// containerd (the event store beside the socket) are said on stderr (which
/// containerd logs), delivered if containerd takes them now, and removed.
fn clean_up_dead_shim(bundle: &Path, namespace: &str) {
    let Some(socket) = dead_shim_socket(bundle) else {
        return;
    };
    let _ = std::fs::remove_file(&socket);
    let store = crate::events::Store::for_socket(&socket);
    let Ok(records) = store.load() else { return };
    if records.is_empty() {
        return;
    }
    if store.is_held() {
        // The shim was shut down and stays until containerd takes them.
        eprintln!(
            "the shim is still delivering {} events containerd had not taken",
            records.len()
        );
        return;
    }
    let topics: Vec<String> = records
        .iter()
        .filter_map(|r| {
            containerd_shim_protos::shim::events::ForwardRequest::parse_from_bytes(r).ok()
        })
        .map(|f| f.envelope.topic.clone())
        .collect();
    // containerd may be restoring its shims and not serving yet: what it
    // does not take now is reported here, in its log, and not kept.
    let address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
    let sent = deliver(&address, namespace, &records);
    let _ = store.replace(&[]);
    eprintln!(
        "the shim left {} events containerd had not taken ({}); delivered {sent} now{}",
        records.len(),
        topics.join(", "),
        if sent < records.len() {
            ", the others are only in this log"
        } else {
            ""
        }
    );
}

/// Sends kept events (encoded `ForwardRequest`s) to containerd; returns how
/// many it took, in order.
fn deliver(address: &str, namespace: &str, records: &[Vec<u8>]) -> usize {
    if address.is_empty() {
        return 0;
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return 0;
    };
    rt.block_on(async {
        let Ok(mut c) = crate::ttrpc::Client::connect(address).await else {
            return 0;
        };
        let mut sent = 0;
        for r in records {
            if crate::events::forward(&mut c, namespace, r, Duration::from_secs(2))
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        sent
    })
}

/// Moves `pid` into the cgroup `path` (v2 unified, else every v1 hierarchy).
fn join_cgroup(pid: u32, path: &str) -> Result<(), String> {
    let rel = path.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return std::fs::write(root.join(rel).join("cgroup.procs"), pid.to_string())
            .map_err(e("join shim cgroup"));
    }
    let entries = std::fs::read_dir(root).map_err(e("list cgroup hierarchies"))?;
    for ent in entries.flatten() {
        let dir = ent.path().join(rel);
        if ent.path().join("cgroup.procs").exists() && dir.is_dir() {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())
                .map_err(e("join shim cgroup"))?;
        }
    }
    Ok(())
}

/// Sets the daemon's `oom_score_adj` to containerd's + 1 (clamped).
fn adjust_oom_score(pid: u32) -> Result<(), String> {
    let ppid = rustix::process::getppid()
        .map(|p| p.as_raw_nonzero().get())
        .unwrap_or(1);
    let parent: i32 = std::fs::read_to_string(format!("/proc/{ppid}/oom_score_adj"))
        .map_err(e("read oom_score_adj"))?
        .trim()
        .parse()
        .map_err(e("parse oom_score_adj"))?;
    let score = (parent + 1).clamp(-1000, 1000);
    std::fs::write(format!("/proc/{pid}/oom_score_adj"), score.to_string())
        .map_err(e("set oom_score_adj"))
}

/// What `delete` does for one task in bundle `dir`: the runtime's state
/// deleted (unless a live shim still retries it), the rootfs unmounted,
/// a dead shim's socket and undelivered events dealt with.
fn clean_up_task(dir: &Path, id: &str, namespace: &str) -> Result<(), String> {
    // Written by Create before anything that can fail; a bundle without it
    // (Create never began, or an older shim's failed Create) has nothing in
    // the runtime to delete.
    let binary = crate::fsutil::read_optional(&dir.join("runtime")).map_err(e("read runtime"))?;
    let opts = crate::fsutil::read_optional(&dir.join("options.json"))
        .ok()
        .flatten()
        .map(|s| Options::from_json(&s))
        .unwrap_or_default();
    if let Some(binary) = binary {
        let binary = match binary.trim() {
            "" => "runc",
            b => b,
        };
        let mut cmd = Command::new(binary);
        cmd.args(["--root", &opts.runtime_root(namespace), "--log"])
            .arg(dir.join("log.json"))
            .args(["--log-format", "json", "delete", "--force", id])
            .env_remove("NOTIFY_SOCKET");
        // A live shim (staying after its Shutdown) may still be retrying a
        // runtime delete that hung: left to it. Otherwise it runs (again),
        // bounded.
        let marker = dir.join(crate::service::task::DELETE_ABANDONED);
        if crate::service::retried_by_a_live_shim(&marker) {
            eprintln!(
                "{}: runtime delete hung when the shim deleted the task; the shim retries it",
                id
            );
        } else {
            match run_bounded(cmd, SHIM_DELETE_RUNTIME_BOUND) {
                Ok(o) if !o.status.success() => {
                    let err = String::from_utf8_lossy(&o.stderr);
                    if !(marker.exists() && err.contains("does not exist")) {
                        eprintln!("{binary} delete: {}", err.trim());
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::TimedOut => eprintln!(
                    "{}: runtime delete still did not finish ({binary} {err}); \
                     left behind: the runtime's state under {}",
                    id,
                    opts.runtime_root(namespace)
                ),
                Err(err) => eprintln!("{binary} delete: {err}"),
                _ => {}
            }
        }
    }
    crate::mount::unmount_all(&dir.join("rootfs")).map_err(|err| err.to_string())?;
    clean_up_dead_shim(dir, namespace);
    Ok(())
}

/// `delete`: cleans up after a container whose shim may be gone.
pub fn delete(flags: &Flags) -> Result<(), String> {
    let cwd = std::env::current_dir().map_err(e("cwd"))?;
    let dir = cwd.parent().unwrap_or(Path::new("/")).join(&flags.id);
    crate::service::task::validate_id(&flags.id).map_err(|err| err.to_string())?;
    clean_up_task(&dir, &flags.id, &flags.namespace)?;
    if crate::exitfile::oom_recorded(&dir) {
        eprintln!("{}: the container was OOM-killed", flags.id);
    }
    let mut pid = std::fs::read_to_string(dir.join("init.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    // A pod's sandbox: its holder and files go with the dead shim.
    if let Some(holder) = kill_pod_holder(&dir) {
        pid = holder;
        if let Some(files) = crate::sandbox::files::PodFiles::locate(&dir, &flags.id) {
            files.remove();
        }
        crate::sandbox::cgroup::remove_listed(&dir);
        clean_up_pod_containers(&dir, &flags.id, &flags.namespace);
    }
    // The container's own exit when the shim recorded one; otherwise it was
    // still running and `delete --force` just killed it.
    let (status, at) = match crate::exitfile::read(&dir) {
        Some(e) => (e.status, e.at),
        None => (128 + 9, SystemTime::now()),
    };
    let resp = DeleteResponse {
        pid,
        exit_status: status,
        exited_at: MessageField::some(crate::events::timestamp(at)),
        ..Default::default()
    };
    let bytes = resp.write_to_bytes().map_err(e("encode"))?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(e("write response"))?;
    Ok(())
}

/// After a pod's shim died: the pod's containers, which it served too
/// (containerd 2.x runs `shim delete` only for the sandbox, and deletes
/// the containers' tasks on the dead shim without it), get what `delete`
/// does for a task, so no runtime state or mount of theirs is left. They
/// are the task bundles of the namespace CRI marked with the sandbox's id.
fn clean_up_pod_containers(sandbox: &Path, id: &str, namespace: &str) {
    if shim_address(sandbox)
        .is_some_and(|a| shim_alive(Path::new(a.trim().trim_start_matches("unix://"))))
    {
        return; // not dead: its containers are its own business
    }
    // The sandbox's bundle is `<state>/io.containerd.sandbox.controller.v1.
    // shim/<ns>/<id>`, its containers' `<state>/io.containerd.runtime.v2.
    // task/<ns>/<cid>` (or beside it, as for a pause pod's).
    let ns_dir = sandbox.parent();
    let tasks = ns_dir
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|state| state.join("io.containerd.runtime.v2.task").join(namespace));
    let mut dirs: Vec<PathBuf> = ns_dir.into_iter().map(Path::to_path_buf).collect();
    dirs.extend(tasks.filter(|t| Some(t.as_path()) != ns_dir));
    let bundles = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|r| r.flatten().map(|e| e.path()));
    for bundle in bundles {
        let Some(cid) = bundle
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let of_pod = std::fs::read(bundle.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["annotations"]["io.kubernetes.cri.sandbox-id"] == id);
        if cid == id || !of_pod || crate::service::task::validate_id(&cid).is_err() {
            continue;
        }
        if let Err(err) = clean_up_task(&bundle, &cid, namespace) {
            eprintln!("{cid} (of pod {id}): {err}");
        }
    }
    // A container whose bundle containerd removed already (its task delete
    // on the dead shim failed, and containerd went on): the runtime's state
    // is found by the sandbox's id among its labels (runc's default root).
    let root = Options::default().runtime_root(namespace);
    let Ok(states) = std::fs::read_dir(&root) else {
        return;
    };
    let label = format!("io.kubernetes.cri.sandbox-id={id}");
    for state in states.flatten() {
        let cid = state.file_name().to_string_lossy().into_owned();
        let of_pod = std::fs::read(state.path().join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["config"]["labels"].as_array().cloned())
            .is_some_and(|labels| labels.iter().any(|l| l == label.as_str()));
        if !of_pod || cid == id || crate::service::task::validate_id(&cid).is_err() {
            continue;
        }
        let mut cmd = Command::new("runc");
        cmd.args(["--root", &root, "delete", "--force", &cid])
            .env_remove("NOTIFY_SOCKET");
        match run_bounded(cmd, SHIM_DELETE_RUNTIME_BOUND) {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "{cid} (of pod {id}): runc delete: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(err) => eprintln!("{cid} (of pod {id}): runc delete: {err}"),
        }
    }
}

/// Kills the pod holder a sandbox's bundle names, if it still runs (and is
/// one: its environment says so, so a reused pid is never hit); its pid.
fn kill_pod_holder(bundle: &Path) -> Option<u32> {
    let file = bundle.join(crate::sandbox::service::HOLDER_PID_FILE);
    let pid: u32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let marker = format!("{}=", crate::sandbox::holder::HOLDER_ENV);
    if env
        .split(|b| *b == 0)
        .any(|v| v.starts_with(marker.as_bytes()))
    {
        let _ = crate::sys::send_signal(pid as i32, libc::SIGKILL);
    }
    Some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that has not accepted anything yet, even with its backlog
    /// full, is a live shim; a socket file nobody listens on is not.
    #[test]
    fn a_slow_listener_is_alive_and_a_stale_socket_is_not() {
        use rustix::net::{
            connect, socket_with, AddressFamily, SocketAddrUnix, SocketFlags, SocketType,
        };
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s");
        assert!(!shim_alive(&path), "no file");
        let listener = UnixListener::bind(&path).unwrap();
        assert!(shim_alive(&path));
        let addr = SocketAddrUnix::new(&path).unwrap();
        let mut held = Vec::new();
        let full = (0..100_000).any(|_| {
            let s = socket_with(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                None,
            )
            .unwrap();
            let r = connect(&s, &addr);
            held.push(s);
            r.is_err()
        });
        assert!(full, "the backlog never filled");
        assert!(shim_alive(&path), "a full backlog is a live listener");
        drop(held);
        drop(listener);
        assert!(path.exists());
        // A child that another test forks at this moment holds a copy of
        // the listener until it execs (close-on-exec): wait that out.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while shim_alive(&path) {
            assert!(std::time::Instant::now() < deadline, "stale socket file");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn groups_by_annotation() {
        let id = "c1";
        assert_eq!(group_id("{}", id), "c1");
        assert_eq!(group_id("not json", id), "c1");
        assert_eq!(
            group_id(
                r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod"}}"#,
                id
            ),
            "pod"
        );
        assert_eq!(
            group_id(
                r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod","io.containerd.runc.v2.group":"g"}}"#,
                id
            ),
            "g"
        );
    }

    #[test]
    fn socket_path_hashes_like_the_go_shim() {
        // sha256("/run/containerd/containerd.sock/default/c1")
        let p = socket_path("/run/containerd/containerd.sock", "default", "c1");
        let expect: String = Sha256::digest(b"/run/containerd/containerd.sock/default/c1")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(p, Path::new(SOCKET_DIR).join(expect));
        assert_eq!(p.file_name().unwrap().len(), 64);
        // filepath.Join cleans: doubled or trailing slashes do not change it.
        assert_eq!(
            socket_path("/run/containerd/containerd.sock/", "default", "c1"),
            p
        );
    }

    #[test]
    fn cleans_paths() {
        assert_eq!(clean_path("/a//b/./c/../d/"), "/a/b/d");
        assert_eq!(clean_path("/../a"), "/a");
        assert_eq!(clean_path("a/../.."), "..");
        assert_eq!(clean_path(""), ".");
    }

    #[test]
    fn finds_binaries_like_exec_lookpath() {
        assert_eq!(look_path("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert!(look_path("sh").is_some_and(|p| p.is_absolute()));
        assert_eq!(look_path("/nonexistent/runc"), None);
        assert_eq!(look_path("no-such-binary-anywhere"), None);
    }
}
