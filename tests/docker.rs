//! Docker on Wedge. Docker 20.10 (Debian 12's docker.io) always uses
//! `io.containerd.runc.v2`: Wedge is installed as the drop-in
//! `containerd-shim-runc-v2`. Docker 28 (Debian sid's, unpacked privately)
//! selects Wedge by name with `--runtime io.containerd.wedge.v2`. dockerd runs
//! against the test's private containerd (own data-root, exec-root, socket,
//! cgroup parent; no bridge, no iptables).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Docker {
    env: Env,
    dockerd: Child,
    sock: String,
    cgroup_parent: String,
}

/// Debian sid's dockerd 28, unpacked by `scripts/fetch-debian sid docker.io`
/// (path in `WEDGE_DOCKERD`).
fn dockerd_28() -> PathBuf {
    let p = std::env::var_os("WEDGE_DOCKERD")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/e2e/docker.io-sid/usr/sbin/dockerd")
        });
    assert!(
        p.exists(),
        "{p:?} missing: run scripts/fetch-debian sid docker.io"
    );
    p
}

impl Docker {
    /// Debian 12's dockerd with Wedge as the drop-in `containerd-shim-runc-v2`.
    fn start() -> Docker {
        Docker::start_with(std::path::Path::new("/usr/sbin/dockerd"), Install::DropIn)
    }

    fn start_with(dockerd_bin: &std::path::Path, install: Install) -> Docker {
        let env = Env::start(install);
        let d = env.dir.path();
        let sock = d.join("docker.sock").display().to_string();
        let cgroup_parent = format!("/{}-docker", env.ns);
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let path = format!(
            "{}:{}",
            d.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let dockerd = Command::new(dockerd_bin)
            .arg(format!("--containerd={}", env.address))
            .arg(format!("--data-root={}", d.join("docker").display()))
            .arg(format!("--exec-root={}", d.join("exec").display()))
            .arg(format!("--pidfile={}", d.join("docker.pid").display()))
            .arg(format!("--host=unix://{sock}"))
            .arg(format!("--cgroup-parent={cgroup_parent}"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
            ])
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd (apt-get install docker.io)");
        let dk = Docker {
            env,
            dockerd,
            sock,
            cgroup_parent,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dk.docker(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "dockerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let tar = docker_image_tar();
        let out = dk.docker(&["load", "-i", tar.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        dk
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("/usr/bin/docker");
        c.arg("-H").arg(format!("unix://{}", self.sock)).args(args);
        c
    }

    fn docker(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    fn shims(&self) -> Vec<(u32, String)> {
        processes()
            .into_iter()
            .filter(|(_, c)| {
                c.contains(&self.env.address)
                    && c.contains("-namespace moby")
                    && !c.ends_with(" start")
            })
            .collect()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let ids = stdout(&self.docker(&["ps", "-aq"]));
        for id in ids.split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.dockerd.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.dockerd.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.dockerd.kill();
        let _ = self.dockerd.wait();
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .map(|r| r.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let parent = h.join(self.cgroup_parent.trim_start_matches('/'));
            if let Ok(rd) = std::fs::read_dir(&parent) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&parent);
        }
        // runc's root for dockerd's namespace, when nothing else uses it.
        let _ = std::fs::remove_dir("/run/containerd/runc/moby");
    }
}

const IMG: &str = "wedge-busybox:latest";

#[test]
fn docker_runs_on_wedge_as_the_drop_in_shim() {
    let dk = Docker::start();
    // run: output and exit code.
    let out = dk.docker(&[
        "run",
        "--rm",
        IMG,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");
    // run -i: stdin.
    let mut c = dk
        .cmd(&["run", "--rm", "-i", IMG, "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut s = c.stdin.take().unwrap();
        s.write_all(b"piped in\n").unwrap();
    }
    let out = c.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "piped in\n");
    // run -t (under a terminal): a tty inside.
    let out = in_terminal(&format!(
        "/usr/bin/docker -H unix://{} run --rm -t {IMG} sh -c 'tty'",
        dk.sock
    ));
    assert!(stdout(&out).contains("/dev/pts/0"), "{}", stdout(&out));

    // A long-running container served by Wedge.
    let out = dk.docker(&[
        "run",
        "-d",
        "--name",
        "c1",
        IMG,
        "sh",
        "-c",
        "trap 'exit 0' TERM; i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1; done",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shims = dk.shims();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", shims[0].0)).unwrap();
    assert_eq!(
        exe,
        dk.env.dir.path().join("bin/containerd-shim-runc-v2"),
        "docker's shim is Wedge"
    );
    let out = dk.docker(&["exec", "c1", "sh", "-c", "echo in exec; exit 4"]);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(4), "in exec\n")
    );
    let mut c = dk
        .cmd(&["exec", "-i", "c1", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        c.stdin.take().unwrap().write_all(b"exec stdin\n").unwrap();
    }
    assert_eq!(stdout(&c.wait_with_output().unwrap()), "exec stdin\n");
    let out = in_terminal(&format!(
        "/usr/bin/docker -H unix://{} exec -t c1 tty",
        dk.sock
    ));
    assert!(stdout(&out).contains("/dev/pts/"), "{}", stdout(&out));
    std::thread::sleep(Duration::from_millis(500));
    assert!(stdout(&dk.docker(&["logs", "c1"])).starts_with("tick 0\ntick 1\n"));
    assert!(stdout(&dk.docker(&["top", "c1"])).contains("sleep"));
    assert!(dk.docker(&["pause", "c1"]).status.success());
    assert!(stdout(&dk.docker(&["inspect", "-f", "{{.State.Status}}", "c1"])).contains("paused"));
    assert!(dk.docker(&["unpause", "c1"]).status.success());
    let stats = stdout(&dk.docker(&["stats", "--no-stream", "--format", "{{.MemUsage}}", "c1"]));
    assert!(stats.contains("iB /"), "{stats}");
    // stop: SIGTERM, which this container handles → 0.
    assert!(dk.docker(&["stop", "-t", "10", "c1"]).status.success());
    assert_eq!(
        stdout(&dk.docker(&["inspect", "-f", "{{.State.ExitCode}}", "c1"])).trim(),
        "0"
    );
    // restart, then kill → 137 through wait.
    assert!(dk.docker(&["restart", "-t", "1", "c1"]).status.success());
    assert!(stdout(&dk.docker(&["inspect", "-f", "{{.State.Running}}", "c1"])).contains("true"));
    assert!(dk.docker(&["kill", "c1"]).status.success());
    assert_eq!(stdout(&dk.docker(&["wait", "c1"])).trim(), "137");
    // stop of a container that ignores SIGTERM: SIGKILL after the timeout.
    assert!(dk
        .docker(&["run", "-d", "--name", "c2", IMG, "sleep", "600"])
        .status
        .success());
    assert!(dk.docker(&["stop", "-t", "1", "c2"]).status.success());
    assert_eq!(
        stdout(&dk.docker(&["inspect", "-f", "{{.State.ExitCode}}", "c2"])).trim(),
        "137"
    );
    for c in ["c1", "c2"] {
        assert!(dk.docker(&["rm", c]).status.success());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dk.shims().is_empty() {
        assert!(Instant::now() < deadline, "shims left: {:?}", dk.shims());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn docker_containers_survive_a_containerd_restart() {
    let mut dk = Docker::start();
    let out = dk.docker(&[
        "run",
        "-d",
        "--name",
        "live",
        IMG,
        "sh",
        "-c",
        "i=0; while :; do echo n $i; i=$((i+1)); sleep 0.1; done",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid: u32 = stdout(&dk.docker(&["inspect", "-f", "{{.State.Pid}}", "live"]))
        .trim()
        .parse()
        .unwrap();
    dk.env.kill_containerd();
    std::thread::sleep(Duration::from_secs(1));
    assert!(alive(pid));
    dk.env.start_containerd();
    // dockerd reconnects on its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = dk.docker(&["exec", "live", "echo", "after restart"]);
        if out.status.success() {
            assert_eq!(stdout(&out), "after restart\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "exec after restart: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(stdout(&dk.docker(&["logs", "live"])).contains("n 1\n"));
    assert!(dk.docker(&["kill", "live"]).status.success());
    assert_eq!(stdout(&dk.docker(&["wait", "live"])).trim(), "137");
    assert!(dk.docker(&["rm", "live"]).status.success());
}

#[test]
fn newer_docker_selects_wedge_by_runtime_name() {
    // dockerd 28 with Wedge installed only as containerd-shim-wedge-v2.
    let dk = Docker::start_with(&dockerd_28(), Install::Wedge);
    let version = stdout(&dk.docker(&["version", "--format", "{{.Server.Version}}"]));
    assert!(version.starts_with("28."), "{version}");
    let out = dk.docker(&[
        "run",
        "--rm",
        "--runtime",
        WEDGE_RUNTIME,
        IMG,
        "sh",
        "-c",
        "echo on wedge; exit 6",
    ]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert_eq!(stdout(&out), "on wedge\n");
    let out = dk.docker(&[
        "run",
        "-d",
        "--name",
        "w1",
        "--runtime",
        WEDGE_RUNTIME,
        IMG,
        "sleep",
        "600",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shims = dk.shims();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", shims[0].0)).unwrap();
    assert_eq!(exe, dk.env.dir.path().join("bin/containerd-shim-wedge-v2"));
    let out = dk.docker(&["exec", "w1", "sh", "-c", "echo exec; exit 2"]);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(2), "exec\n")
    );
    assert!(dk.docker(&["kill", "w1"]).status.success());
    assert_eq!(stdout(&dk.docker(&["wait", "w1"])).trim(), "137");
    assert!(dk.docker(&["rm", "w1"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dk.shims().is_empty() {
        assert!(Instant::now() < deadline, "shims left: {:?}", dk.shims());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A 1 MiB burst right before the exit reaches `docker run --rm`'s attached
/// stream and `docker logs`, byte for byte, every run.
#[test]
fn docker_gets_every_byte_of_a_burst_before_exit() {
    const RUNS: usize = 20;
    const BURST: usize = 1 << 20;
    let dk = Docker::start();
    let script = format!("sleep 0.2; head -c {BURST} /dev/zero | tr '\\0' x");
    let mut attached = Vec::new();
    let mut logged = Vec::new();
    for i in 0..RUNS {
        let out = dk.docker(&["run", "--rm", IMG, "sh", "-c", &script]);
        assert!(out.status.success(), "run {i}: {}", stderr(&out));
        attached.push(out.stdout.len());
        let name = format!("burst{i}");
        let out = dk.docker(&["run", "--name", &name, IMG, "sh", "-c", &script]);
        assert!(out.status.success(), "run {i}: {}", stderr(&out));
        let logs = dk.docker(&["logs", &name]);
        assert!(logs.status.success(), "logs {i}: {}", stderr(&logs));
        logged.push(logs.stdout.len());
        assert!(dk.docker(&["rm", &name]).status.success());
    }
    let short = |v: &[usize]| -> Vec<(usize, usize)> {
        v.iter()
            .enumerate()
            .filter(|(_, n)| **n != BURST)
            .map(|(i, n)| (i, *n))
            .collect()
    };
    assert!(
        short(&attached).is_empty() && short(&logged).is_empty(),
        "short runs (run, bytes): attached {:?}, docker logs {:?}",
        short(&attached),
        short(&logged)
    );
}
