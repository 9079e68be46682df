//! End-to-end harness: a private containerd (own root, state, sockets, opt
//! dir; CRI off) with Wedge on its PATH, a locally built busybox image, and
//! helpers to drive it through `ctr` and to talk to the shim over ttrpc.
//!
//! Every `Env` owns a unique namespace. `assert_clean` checks that nothing of
//! it is left (shim processes, container processes, sockets, mounts, runtime
//! state, cgroups); `Drop` removes whatever a failed test left behind.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use containerd_shim_protos::protobuf::Message;
use wedge::ttrpc::{Client, ClientError};

pub const IMAGE: &str = "docker.io/library/wedge-busybox:latest";
/// The pod sandbox image: busybox whose command sleeps forever.
pub const PAUSE_IMAGE: &str = "docker.io/library/wedge-pause:latest";
pub const WEDGE_RUNTIME: &str = "io.containerd.wedge.v2";
/// Keeps ctr 2.2+ from printing containerd's deprecation warnings (cgroup v1
/// on this host) into the output the tests count.
pub const QUIET_CTR: (&str, &str) = ("CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS", "1");
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";

/// Declares, for each scenario `fn name(install: Install)`, a module with
/// two tests: Wedge by name and as the drop-in `containerd-shim-runc-v2`.
#[macro_export]
macro_rules! both_installs {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn wedge() {
                super::$name(super::Install::Wedge)
            }
            #[test]
            fn drop_in() {
                super::$name(super::Install::DropIn)
            }
        }
    )*};
}

/// `d` of slack in a time bound, at the pace of the machine the tests run
/// on: `WEDGE_TEST_PACE` times it (the guest sets 2, or 4 under TCG's
/// emulation), else as given. Only slack is scaled, never the shim's own
/// bounds that a test checks.
pub fn slack(d: Duration) -> Duration {
    let pace: u32 = std::env::var("WEDGE_TEST_PACE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    d * pace.max(1)
}

/// Anonymous resident memory of `pid` (heap, stacks: what a leak grows),
/// in kB.
pub fn anon_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// How Wedge is installed for this containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// As `containerd-shim-wedge-v2`, selected with `--runtime io.containerd.wedge.v2`.
    Wedge,
    /// As `containerd-shim-runc-v2` first on containerd's PATH (drop-in).
    DropIn,
}

impl Install {
    /// The `--runtime` value ctr should use.
    pub fn runtime(self) -> &'static str {
        match self {
            Install::Wedge => WEDGE_RUNTIME,
            Install::DropIn => RUNC_RUNTIME,
        }
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub address: String,
    pub ns: String,
    pub install: Install,
    containerd: std::process::Child,
    ids: std::sync::Mutex<Vec<String>>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// containerd and ctr to test against: `$WEDGE_CONTAINERD_DIR/{containerd,ctr}`
/// when set (a newer containerd unpacked by `scripts/fetch-debian`),
/// otherwise the system's.
pub fn containerd_bin(name: &str) -> PathBuf {
    match std::env::var_os("WEDGE_CONTAINERD_DIR") {
        Some(d) => PathBuf::from(d).join(name),
        None => PathBuf::from(name),
    }
}

/// The (major, minor) version of the containerd under test.
pub fn containerd_version() -> (u32, u32) {
    let out = Command::new(containerd_bin("containerd"))
        .arg("--version")
        .output()
        .expect("containerd --version");
    // "containerd github.com/containerd/containerd[/v2] v2.3.4 <rev>" or
    // Debian's "containerd containerd.io 1.6.20~ds1 ..."
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .trim_start_matches('v');
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let num = |p: Option<&str>| p.and_then(|x| x.parse().ok()).unwrap_or(0);
    (num(parts.next()), num(parts.next()))
}

/// The shim the suites install: Wedge, or the binary `WEDGE_SHIM_UNDER_TEST`
/// names (containerd's Go shim, to measure it side by side on the same
/// scenarios; the suites assert what Wedge promises, so expect failures).
fn wedge_binary() -> PathBuf {
    match std::env::var_os("WEDGE_SHIM_UNDER_TEST") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-wedge-v2")),
    }
}

/// containerd's Go shim for the containerd under test: beside it
/// (`WEDGE_CONTAINERD_DIR`), else the system's.
pub fn go_shim_binary() -> PathBuf {
    let beside = containerd_bin("containerd-shim-runc-v2");
    if beside.is_absolute() && beside.exists() {
        return beside;
    }
    PathBuf::from("/usr/bin/containerd-shim-runc-v2")
}

/// Builds (once) an image archive `target/e2e/<file>` named `name`, with
/// extra environment for the build script (IMAGE_CMD, DOCKER_OUT), and
/// returns its path. `made` is the file whose existence means "built".
pub fn build_image(file: &str, name: &str, env: &[(&str, &str)], made: &Path) -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/e2e")
        .join(file);
    if !made.exists() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/image/build-busybox-oci.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(&target)
            .arg(name)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "image build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    target
}

fn e2e_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/e2e")
        .join(file)
}

/// The busybox OCI archive.
pub fn image_tar() -> PathBuf {
    build_image("busybox-oci.tar", IMAGE, &[], &e2e_path("busybox-oci.tar"))
}

/// The pod sandbox ("pause") image archive: busybox that sleeps forever.
pub fn pause_tar() -> PathBuf {
    let cmd = [("IMAGE_CMD", r#"["/bin/sleep","2147483647"]"#)];
    build_image(
        "pause-oci.tar",
        PAUSE_IMAGE,
        &cmd,
        &e2e_path("pause-oci.tar"),
    )
}

/// An image of 81 layers: busybox and 80 more, layer i adding `/layers/i`
/// (its overlay's options pass a page).
pub const MANY_LAYERS_IMAGE: &str = "docker.io/library/wedge-many-layers:latest";

/// The archive of [`MANY_LAYERS_IMAGE`].
pub fn many_layers_tar() -> PathBuf {
    build_image(
        "many-layers-oci.tar",
        MANY_LAYERS_IMAGE,
        &[("EXTRA_LAYERS", "80")],
        &e2e_path("many-layers-oci.tar"),
    )
}

/// The busybox image as a `docker save` archive (for Docker 20.10's `load`).
pub fn docker_image_tar() -> PathBuf {
    let docker = e2e_path("busybox-docker.tar");
    let out = docker.display().to_string();
    build_image(
        "busybox-oci-for-docker.tar",
        IMAGE,
        &[("DOCKER_OUT", &out)],
        &docker,
    );
    docker
}

/// A runc wrapper (in the env's `bin`) whose `kill` and `delete` hang while
/// `hang-kill` / `hang-delete` exist beside it: a wedged runtime. While
/// `slow-exec` exists, `exec` first creates `exec-begun` and sleeps for the
/// seconds `slow-exec` holds: a slow runtime.
pub const HANG_RUNC: &str = "hang-runc";

/// The soft fd limit containerd starts with (and gives its shims).
pub const CONTAINERD_SOFT_NOFILE: u64 = 1024;
/// What the wrapper's hung calls run as (to find leftovers).
pub const HUNG_CMDLINE: &str = "/bin/sleep 2147483646";

fn write_hanging_runtime(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let script = format!(
        r#"#!/bin/sh
# runc, except that `kill` and `delete` hang while their flag file exists.
dir=$(dirname "$0")
for a in "$@"; do
  case "$a" in
    kill|delete) [ -e "$dir/hang-$a" ] && exec {HUNG_CMDLINE}; break ;;
    exec) if [ -e "$dir/slow-exec" ]; then : > "$dir/exec-begun"; sleep "$(cat "$dir/slow-exec")"; fi; break ;;
    create|start|ps|pause|resume|update|state|features|checkpoint|restore) break ;;
  esac
done
exec runc "$@"
"#
    );
    std::fs::write(path, script).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Env {
    /// The hanging runc wrapper's path.
    pub fn hang_runc(&self) -> PathBuf {
        self.dir.path().join("bin").join(HANG_RUNC)
    }

    /// Installs Wedge (`wedge`) or the Go shim of the containerd under test
    /// as `containerd-shim-runc-v2` first on containerd's PATH, replacing
    /// what was there, as a package upgrade or rollback does (containerd
    /// remembers that path for the shims it started). containerd resolves
    /// shim binaries once: restart it after.
    pub fn install_runc_shim(&self, wedge: bool) {
        let at = self.dir.path().join("bin/containerd-shim-runc-v2");
        let from = if wedge {
            wedge_binary()
        } else {
            go_shim_binary()
        };
        let tmp = at.with_extension("new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(tmp, at).unwrap();
    }

    /// Makes the wrapper's `exec` take `secs` seconds (0: as fast as runc),
    /// after it created `exec-begun` (whose path this returns).
    pub fn set_slow_exec(&self, secs: u32) -> PathBuf {
        let bin = self.dir.path().join("bin");
        let begun = bin.join("exec-begun");
        let _ = std::fs::remove_file(&begun);
        if secs > 0 {
            std::fs::write(bin.join("slow-exec"), secs.to_string()).unwrap();
        } else {
            let _ = std::fs::remove_file(bin.join("slow-exec"));
        }
        begun
    }

    /// Makes the wrapper's `kill` and/or `delete` hang (or not).
    pub fn set_hang(&self, cmd: &str, on: bool) {
        let flag = self.dir.path().join("bin").join(format!("hang-{cmd}"));
        if on {
            std::fs::write(flag, "").unwrap();
        } else {
            let _ = std::fs::remove_file(flag);
        }
    }
}

/// The parent of `pid`.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Processes running a hung runtime call, anywhere, and under `shim`.
pub fn hung_runtime_calls(shim: u32) -> (Vec<u32>, Vec<u32>) {
    let all: Vec<u32> = processes()
        .into_iter()
        .filter(|(_, c)| c == HUNG_CMDLINE)
        .map(|(p, _)| p)
        .collect();
    let ours = all
        .iter()
        .copied()
        .filter(|p| parent_of(*p) == Some(shim))
        .collect();
    (all, ours)
}

/// Runs `cmd` in container `id` with output to the `binary://` logger
/// `tests/loggers/<script>` (which writes into a fresh folder), waits until
/// the logger has finished, and returns that folder.
pub fn run_with_logger(env: &Env, id: &str, script: &str, cmd: &[&str], wait: Duration) -> PathBuf {
    run_with_logger_scheme(env, "binary", id, script, cmd, wait)
}

/// [`run_with_logger`] with the URI scheme given (`binary`, `binary-v2`).
pub fn run_with_logger_scheme(
    env: &Env,
    scheme: &str,
    id: &str,
    script: &str,
    cmd: &[&str],
    wait: Duration,
) -> PathBuf {
    let (dir, uri) = logger_uri(env, scheme, id, script);
    let out = env.run(id, &["--rm", "--log-uri", &uri], cmd);
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = Instant::now() + wait;
    while !dir.join("finished").exists() {
        assert!(Instant::now() < deadline, "logger did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    dir
}

/// A fresh folder for a logger of container `id` and the `scheme://` URI
/// that runs `tests/loggers/<script>` writing into it.
pub fn logger_uri(env: &Env, scheme: &str, id: &str, script: &str) -> (PathBuf, String) {
    let dir = env.dir.path().join(format!("logger-{id}"));
    std::fs::create_dir(&dir).unwrap();
    let logger = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/loggers")
        .join(script);
    let uri = format!("{scheme}://{}?dir={}", logger.display(), dir.display());
    (dir, uri)
}

impl Env {
    /// Starts a private containerd with Wedge installed as `install` and the
    /// image imported into a fresh namespace.
    pub fn start(install: Install) -> Env {
        Env::start_with(install, false)
    }

    /// Like [`Env::start`]; with `cri`, containerd's CRI plugin is on, with
    /// runtime handlers `wedge` (io.containerd.wedge.v2), `dropin` and
    /// `runc` (io.containerd.runc.v2, which is Wedge here too) and `hang`
    /// (the drop-in with the hanging runc wrapper), host-network pods only,
    /// and the busybox and pause images imported into `k8s.io`.
    pub fn start_with(install: Install, cri: bool) -> Env {
        Env::start_custom(install, cri, "")
    }

    /// Like [`Env::start_with`], with `extra` appended to containerd's
    /// config (e.g. more CRI runtime handlers; `@BIN@` names the env's bin
    /// folder, where Wedge's copies are).
    pub fn start_custom(install: Install, cri: bool, extra: &str) -> Env {
        Env::start_inner(install, cri, extra, true, None)
    }

    /// A CRI env where Wedge (`containerd-shim-wedge-v2`, handler `wedge`)
    /// runs beside the Go shim of the containerd under test (handler
    /// `runc`, io.containerd.runc.v2): the two side by side, as a node
    /// that tries Wedge for some pods has them.
    pub fn start_beside_go_shim() -> Env {
        Env::start_inner(Install::Wedge, true, "", false, None)
    }

    /// [`Env::start`] with containerd's state directory (the bundles, and
    /// so the output spills) on a tmpfs of `size`, as `/run` is on a node.
    pub fn start_with_state_tmpfs(install: Install, size: &str) -> Env {
        Env::start_inner(install, false, "", true, Some(size))
    }

    fn start_inner(
        install: Install,
        cri: bool,
        extra: &str,
        cri_drop_in: bool,
        state_tmpfs: Option<&str>,
    ) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("wedge-e2e-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let bin = d.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(d.join("opt")).unwrap();
        let name = match install {
            Install::Wedge => "containerd-shim-wedge-v2",
            Install::DropIn => "containerd-shim-runc-v2",
        };
        std::fs::copy(wedge_binary(), bin.join(name)).unwrap();
        write_hanging_runtime(&bin.join(HANG_RUNC));
        if cri {
            std::fs::create_dir_all(d.join("cni/bin")).unwrap();
            std::fs::create_dir_all(d.join("cni/conf")).unwrap();
            if cri_drop_in {
                std::fs::copy(wedge_binary(), bin.join("containerd-shim-runc-v2")).unwrap();
            }
            std::fs::copy(wedge_binary(), bin.join("containerd-shim-wedge-v2")).unwrap();
        }
        let address = d.join("c.sock").display().to_string();
        let disabled = if cri {
            ""
        } else {
            "\"io.containerd.grpc.v1.cri\", "
        };
        let mut config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [{disabled}"io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{address}"
[ttrpc]
  address = "{address}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#,
            d = d.display()
        );
        if cri {
            config.push_str(&format!(
                r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "wedge"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wedge]
      runtime_type = "io.containerd.wedge.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.dropin]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hang]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hang.options]
        BinaryName = "{d}/bin/{HANG_RUNC}"
"#,
                d = d.display()
            ));
        }
        // `@BIN@` in the extra config: the env's own bin folder (Wedge's copies).
        config.push_str(&extra.replace("@BIN@", &bin.display().to_string()));
        std::fs::write(d.join("config.toml"), config).unwrap();
        if let Some(size) = state_tmpfs {
            // Unmounted by Drop, with every mount under the env's folder.
            std::fs::create_dir_all(d.join("state")).unwrap();
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(d.join("state"))
                .status()
                .unwrap()
                .success();
            assert!(ok, "mount a tmpfs on the state directory");
        }
        let containerd = spawn_containerd(d);
        let ns = format!(
            "wedge-e2e-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let env = Env {
            dir,
            address,
            ns,
            install,
            containerd,
            ids: Default::default(),
        };
        env.wait_ready();
        let tar = image_tar();
        if cri {
            let pause = pause_tar();
            for t in [&tar, &pause] {
                let out = env.ctr(&["-n", "k8s.io", "images", "import", t.to_str().unwrap()]);
                assert!(out.status.success(), "import: {}", stderr(&out));
            }
        }
        let out = env.ctr(&["images", "import", tar.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        env
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                self.containerd_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills containerd with SIGKILL (it leaves its shims running).
    pub fn kill_containerd(&mut self) {
        let _ = self.containerd.kill();
        let _ = self.containerd.wait();
    }

    /// Starts containerd again on the same root, state and sockets.
    pub fn start_containerd(&mut self) {
        self.containerd = spawn_containerd(self.dir.path());
        self.wait_ready();
    }

    pub fn containerd_pid(&self) -> u32 {
        self.containerd.id()
    }

    pub fn containerd_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr -a ADDR -n NS ARGS…` and returns its output.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new(containerd_bin("ctr"))
            .env(QUIET_CTR.0, QUIET_CTR.1)
            .args(["-a", &self.address, "-n", &self.ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `ctr` with output captured into files (for large outputs).
    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(containerd_bin("ctr"));
        c.env(QUIET_CTR.0, QUIET_CTR.1)
            .args(["-a", &self.address, "-n", &self.ns])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Remembers a container id for the leak checks.
    pub fn track(&self, id: &str) {
        self.ids.lock().unwrap().push(id.to_string());
    }

    /// `ctr run` with this env's runtime: returns the output.
    pub fn run(&self, id: &str, extra: &[&str], cmd: &[&str]) -> Output {
        self.track(id);
        let mut args = vec!["run", "--runtime", self.install.runtime()];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.push(id);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// Starts a detached `sleep 600` container and waits until it runs.
    pub fn sleeper(&self, id: &str) {
        let out = self.run(id, &["-d"], &["sleep", "600"]);
        assert!(out.status.success(), "{}", stderr(&out));
        self.wait_status(id, "RUNNING");
    }

    /// Kills a container, waits for its exit, and removes task and container.
    pub fn finish(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "KILL", id]);
        self.wait_status(id, "STOPPED");
        assert!(self.ctr(&["task", "rm", id]).status.success());
        assert!(self.ctr(&["container", "rm", id]).status.success());
    }

    /// The shim's State of a process (`exec_id` empty for init).
    pub fn state(
        &self,
        id: &str,
        exec_id: &str,
    ) -> containerd_shim_protos::shim::shim::StateResponse {
        let req = containerd_shim_protos::shim::shim::StateRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.shim_call(id, "State", &req).unwrap()
    }

    /// The bundle directory of a task.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir
            .path()
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.ns)
            .join(id)
    }

    /// The pid of the shim daemon serving `id`.
    pub fn shim_pid(&self, id: &str) -> Option<u32> {
        let needle = format!("-id {id} -address {}", self.address);
        processes()
            .into_iter()
            .find(|(_, cmd)| cmd.contains(&needle))
            .map(|(p, _)| p)
    }

    /// Waits until `ctr task ls` reports `status` for `id`.
    pub fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = String::from_utf8_lossy(&self.ctr(&["task", "ls"]).stdout).into_owned();
            if out.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&id) && f.get(2) == Some(&status)
            }) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never reached {status}: {out}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Calls the shim of `id` directly over ttrpc.
    pub fn shim_call<Req: Message, Resp: Message>(
        &self,
        id: &str,
        method: &str,
        req: &Req,
    ) -> Result<Resp, ClientError> {
        ttrpc_call(&self.shim_address(id), method, req)
    }

    /// The address of the shim serving `id`: its bundle's `address` file,
    /// or (a Go shim under containerd 2.x) `bootstrap.json`'s address.
    pub fn shim_address(&self, id: &str) -> String {
        let bundle = self.bundle(id);
        if let Ok(a) = std::fs::read_to_string(bundle.join("address")) {
            return a;
        }
        let json = std::fs::read_to_string(bundle.join("bootstrap.json")).expect("address file");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["address"].as_str().unwrap().to_string()
    }

    /// Asserts that nothing of this env's containers remains.
    pub fn assert_clean(&self) {
        self.assert_clean_within(Duration::from_secs(10))
    }

    /// [`Env::assert_clean`], waiting up to `limit` for what goes by itself.
    pub fn assert_clean_within(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            match self.leftovers() {
                v if v.is_empty() => return,
                v if Instant::now() > deadline => panic!("left behind: {v:#?}"),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn leftovers(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (pid, cmd) in processes() {
            if cmd.contains(&self.address) && cmd.contains("containerd-shim") {
                v.push(format!("shim process {pid}: {cmd}"));
            }
        }
        for pid in pids_in_namespace_cgroup(&self.ns) {
            v.push(format!("container process {pid}"));
        }
        for id in self.ids.lock().unwrap().iter() {
            let sock = wedge::manager::socket_path(&self.address, &self.ns, id);
            if sock.exists() {
                v.push(format!("socket {}", sock.display()));
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        // The state directory's own tmpfs (start_with_state_tmpfs) stays.
        let state = format!(" {} ", self.dir.path().join("state").display());
        for l in mounts.lines() {
            if l.contains(self.dir.path().to_str().unwrap()) && !l.contains(&state) {
                v.push(format!("mount {l}"));
            }
        }
        let runc_state = Path::new("/run/containerd/runc").join(&self.ns);
        if let Ok(rd) = std::fs::read_dir(&runc_state) {
            for e in rd.flatten() {
                v.push(format!("runtime state {}", e.path().display()));
            }
        }
        for h in cgroup_hierarchies() {
            if let Ok(rd) = std::fs::read_dir(h.join(&self.ns)) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        v.push(format!("cgroup {}", e.path().display()));
                    }
                }
            }
        }
        v
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Stop containers and shims that a failed test left running.
        for (pid, cmd) in processes() {
            if cmd.contains(&self.address) && cmd.contains("containerd-shim") {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        for pid in pids_in_namespace_cgroup(&self.ns) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.containerd.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.containerd.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.containerd.kill();
        let _ = self.containerd.wait();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|p| p.starts_with(self.dir.path().to_str().unwrap()))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", p]).status();
        }
        let _ = Command::new("rm")
            .arg("-rf")
            .arg(Path::new("/run/containerd/runc").join(&self.ns))
            .status();
        for id in self.ids.lock().unwrap().iter() {
            let _ = std::fs::remove_file(wedge::manager::socket_path(&self.address, &self.ns, id));
        }
        // Sockets of shims killed above (any namespace, e.g. k8s.io or moby).
        let tasks = self.dir.path().join("state/io.containerd.runtime.v2.task");
        for ns in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
            for b in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                if let Ok(a) = std::fs::read_to_string(b.path().join("address")) {
                    let _ = std::fs::remove_file(a.trim().trim_start_matches("unix://"));
                }
            }
        }
        // The namespace's cgroups, and CRI's pod cgroups under `<ns>-cri`
        // (left when a CRI test fails before it removes its pods).
        for h in cgroup_hierarchies() {
            for d in [h.join(&self.ns), h.join(format!("{}-cri", self.ns))] {
                remove_empty_cgroups(&d);
            }
        }
    }
}

/// Removes a cgroup directory and every cgroup below it that has no
/// process, deepest first.
fn remove_empty_cgroups(d: &Path) {
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            remove_empty_cgroups(&e.path());
        }
    }
    let _ = std::fs::remove_dir(d);
}

/// Calls a Task API method on the shim at `addr` (10 s timeout). Wedge
/// serves both names; a Go shim of containerd 2.x only v3.
pub fn ttrpc_call<Req: Message, Resp: Message>(
    addr: &str,
    method: &str,
    req: &Req,
) -> Result<Resp, ClientError> {
    ttrpc_call_on(
        addr,
        &["containerd.task.v2.Task", "containerd.task.v3.Task"],
        method,
        req,
    )
}

/// Calls `method` of the first of `services` the shim at `addr` has (10 s
/// timeout).
pub fn ttrpc_call_on<Req: Message, Resp: Message>(
    addr: &str,
    services: &[&str],
    method: &str,
    req: &Req,
) -> Result<Resp, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = Client::connect(addr).await?;
        let payload = req.write_to_bytes().unwrap();
        let timeout = Duration::from_secs(10);
        let mut out = Err(ClientError::Status {
            code: containerd_shim_protos::ttrpc::Code::UNIMPLEMENTED,
            message: "no service".into(),
        });
        for service in services {
            out = c.call(service, method, payload.clone(), &[], timeout).await;
            if !matches!(
                out,
                Err(ClientError::Status {
                    code: containerd_shim_protos::ttrpc::Code::UNIMPLEMENTED,
                    ..
                })
            ) {
                break;
            }
        }
        Ok(Resp::parse_from_bytes(&out?).unwrap())
    })
}

/// Starts containerd with the env's config, Wedge first on its PATH.
fn spawn_containerd(d: &Path) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(d.join("containerd.log"))
        .unwrap();
    // Wedge first, then the shims of the containerd under test (its own Go
    // shim), then the system's.
    let mut path = d.join("bin").display().to_string();
    if let Some(dir) = std::env::var_os("WEDGE_CONTAINERD_DIR") {
        path = format!("{path}:{}", Path::new(&dir).display());
    }
    let path = format!("{path}:{}", std::env::var("PATH").unwrap_or_default());
    // With the soft fd limit a service gets from systemd by default (its
    // hard limit stays), which containerd gives back to the shims it starts.
    Command::new("prlimit")
        .arg(format!("--nofile={CONTAINERD_SOFT_NOFILE}:"))
        .arg(containerd_bin("containerd"))
        .arg("--config")
        .arg(d.join("config.toml"))
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("containerd (apt-get install containerd)")
}

/// Every process as (pid, space-joined cmdline).
pub fn processes() -> Vec<(u32, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = raw
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        if !cmd.is_empty() {
            v.push((pid, cmd));
        }
    }
    v
}

/// The cgroup hierarchies' roots: `/sys/fs/cgroup` itself on a unified (v2)
/// host, else each v1 hierarchy mounted below it.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("cgroup.procs").exists())
                .collect()
        })
        .unwrap_or_default()
}

/// Pids whose cgroup path lies under `/<ns>/` (where runc puts containers
/// that ctr creates).
pub fn pids_in_namespace_cgroup(ns: &str) -> Vec<u32> {
    let needle = format!(":/{ns}/");
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cg) = std::fs::read_to_string(e.path().join("cgroup")) {
            if cg.contains(&needle) {
                v.push(pid);
            }
        }
    }
    v
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A running `ctr events` subscription, recorded to a file.
pub struct Events {
    child: std::process::Child,
    log: PathBuf,
}

impl Env {
    /// Starts recording containerd's events.
    pub fn events(&self) -> Events {
        let log = self.dir.path().join(format!(
            "events-{}.txt",
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let child = self
            .ctr_cmd(&["events"])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        Events { child, log }
    }
}

impl Events {
    /// The raw lines mentioning `needle` (e.g. a quoted container id).
    pub fn lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Topics of events about container `id`, in order.
    pub fn topics(&self, id: &str) -> Vec<String> {
        self.lines(&format!("\"{id}\""))
            .iter()
            .filter_map(|l| {
                l.split_whitespace()
                    .find(|w| w.starts_with("/tasks/"))
                    .map(str::to_string)
            })
            .collect()
    }

    /// Waits until every topic in `want` has been seen for `id`.
    pub fn wait_for(&self, id: &str, want: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let t = self.topics(id);
            if want.iter().all(|w| t.iter().any(|x| x == w)) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "events for {id}: {t:?}, want {want:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Threads and open fds of a process.
pub fn threads_and_fds(pid: u32) -> (usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|l| {
            l.strip_prefix("Threads:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (threads, fds)
}

/// [`threads_and_fds`] once it has stopped moving (the same in three reads
/// 200 ms apart, within 10 s): a baseline taken while the shim is still
/// closing what a previous call used would be too high.
pub fn settled_threads_and_fds(pid: u32) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut last, mut same) = (threads_and_fds(pid), 0);
    while same < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = threads_and_fds(pid);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// Runs a shell command line under `script`, so the client has a terminal.
pub fn in_terminal(cmdline: &str) -> Output {
    Command::new("script")
        .env(QUIET_CTR.0, QUIET_CTR.1)
        .args(["-qec", cmdline, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// One Sandbox call on the shim at `addr`.
pub fn sandbox_call<Req: Message, Resp: Message>(
    addr: &str,
    method: &str,
    req: &Req,
) -> Result<Resp, ClientError> {
    ttrpc_call_on(addr, &[wedge::sandbox::service::SERVICE], method, req)
}

/// A pod's config as CRI sends it (`runtime.v1.PodSandboxConfig`, wire
/// form): hostname, the namespace options given, and a cgroup parent.
pub fn pod_options(
    hostname: &str,
    namespace_options: &[u8],
    cgroup_parent: &str,
) -> containerd_shim_protos::protobuf::well_known_types::any::Any {
    let field = |n: u8, b: &[u8]| [&[(n << 3) | 2, b.len() as u8][..], b].concat();
    let linux = [
        field(1, cgroup_parent.as_bytes()),
        field(2, &field(1, namespace_options)),
    ]
    .concat();
    containerd_shim_protos::protobuf::well_known_types::any::Any {
        type_url: "runtime.v1.PodSandboxConfig".into(),
        value: [field(2, hostname.as_bytes()), field(8, &linux)].concat(),
        ..Default::default()
    }
}

/// `shim delete` of task `id` in its `bundle`, as containerd runs it after
/// the shim died; asserts it succeeded.
pub fn shim_delete(namespace: &str, address: &str, id: &str, bundle: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_containerd-shim-wedge-v2"))
        .args([
            "-namespace",
            namespace,
            "-address",
            address,
            "-id",
            id,
            "-bundle",
        ])
        .arg(bundle)
        .arg("delete")
        .current_dir(bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shim delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// CreateSandbox (`req`) then StartSandbox of its pod on the shim at
/// `addr`; StartSandbox's answer (the holder's pid).
pub fn create_and_start_sandbox(
    addr: &str,
    req: containerd_shim_protos::sandbox_api::CreateSandboxRequest,
) -> containerd_shim_protos::sandbox_api::StartSandboxResponse {
    use containerd_shim_protos::sandbox_api::*;
    let id = req.sandbox_id.clone();
    let _: CreateSandboxResponse = sandbox_call(addr, "CreateSandbox", &req).unwrap();
    sandbox_call(
        addr,
        "StartSandbox",
        &StartSandboxRequest {
            sandbox_id: id,
            ..Default::default()
        },
    )
    .unwrap()
}
