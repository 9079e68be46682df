//! Upgrade in place: a new Wedge binary, installed at the same path, takes
//! over a running shim without restarting a container and without
//! containerd noticing.
//!
//! The shim keeps its pid (it stays the subreaper of its containers), its
//! listening socket and containerd's live connections. On request (the
//! control call `wedge.control.v1.Control/Upgrade` on its own socket, or
//! SIGUSR2) it:
//!
//! 1. asks the candidate binary (`<path> -upgrade-check`) for its version and
//!    the state versions it reads; a missing, broken or incompatible binary
//!    is refused here and the shim serves on;
//! 2. stops taking requests between two of them and lets calls in flight
//!    finish (a `Wait`, and the Upgrade call itself, are abandoned and handed
//!    over, to be answered by the next image); stops reaping (exits that
//!    happen now wait as zombies); lets exits being reported finish; pauses
//!    every output relay where it stands (spill and bytes in hand included),
//!    stdin relays, OOM watches (their counts kept) and the event forwarder
//!    (events not sent yet handed over, in order);
//! 3. records all of it ([`state`]) and lets the candidate check the record
//!    (`-upgrade-check` with the record on stdin);
//! 4. writes the record to a memfd, clears close-on-exec on exactly the
//!    descriptors the record names, and execs the candidate with
//!    `WEDGE_RESTORE_FD` naming the memfd. The new image adopts the
//!    descriptors, rebuilds containers, processes, relays, OOM watches, the
//!    event queue and the server (answering the handed-over calls), then
//!    reaps whatever exited meanwhile: reported once, after.
//!
//! Never worse than before: a refusal before step 4 resumes the shim in
//! place from the same handover (the same code the new image runs). If the
//! new image fails or panics while restoring, it execs the previous image
//! (kept open as [`Exe`], so this works even after its file was replaced)
//! with the same record and `WEDGE_UPGRADE_FAILED` saying why; that image
//! restores and reports the failure.

pub mod control;
pub mod state;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::container::ContainerHandover;
use crate::events::Encoded;
use crate::ttrpc::ServerHandover;

/// The environment variable naming the memfd that holds the record.
pub const RESTORE_FD: &str = "WEDGE_RESTORE_FD";
/// Set by a new image that could not restore, when it hands back.
pub const UPGRADE_FAILED: &str = "WEDGE_UPGRADE_FAILED";
/// How long calls in flight get to finish before an upgrade is refused.
pub const QUIESCE: Duration = Duration::from_secs(10);

/// What a shim hands over to its next image (descriptors owned here until
/// the exec, so a refusal can resume from it in place).
pub struct Handover {
    /// The listener and connections.
    pub server: ServerHandover,
    /// The containers.
    pub containers: Vec<ContainerHandover>,
    /// Events not sent yet, in order.
    pub events: Vec<Encoded>,
    /// The handing image's executable.
    pub exe: OwnedFd,
    /// The handing image's version and revision.
    pub from: (String, String),
    /// What to answer handed-over Upgrade calls.
    pub report: Option<Report>,
}

/// The outcome of an upgrade, as the control call answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Version and revision before.
    pub from: (String, String),
    /// Version and revision now (or attempted, when not ok).
    pub to: (String, String),
    /// Whether the new binary serves now.
    pub ok: bool,
    /// Why not.
    pub error: String,
}

/// This image's own executable: its path (where a new binary is installed)
/// and an open handle on the file it was started from.
pub struct Exe {
    /// The installed path.
    pub path: PathBuf,
    /// The image's own file.
    pub fd: OwnedFd,
}

impl Exe {
    /// The running image's executable.
    pub fn current() -> std::io::Result<Exe> {
        let fd: OwnedFd = std::fs::File::open("/proc/self/exe")?.into();
        let path = std::fs::read_link("/proc/self/exe")?;
        let s = path.to_string_lossy();
        let path = PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s));
        Ok(Exe { path, fd })
    }
}

/// This binary's version, revision and the state versions it reads, as
/// `-upgrade-check` prints them.
fn check_line() -> String {
    format!(
        "wedge {} {} state {} {}\n",
        crate::VERSION,
        crate::REVISION,
        state::OLDEST_STATE,
        state::STATE_VERSION
    )
}

/// `-upgrade-check`: with nothing on stdin, prints what this binary is and
/// reads; with a record on stdin, checks that it can take it over.
pub fn check_main() -> i32 {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("read state: {e}");
        return 1;
    }
    if input.is_empty() {
        print!("{}", check_line());
        return 0;
    }
    match serde_json::from_slice::<state::StateRecord>(&input)
        .map_err(|e| format!("the state does not decode: {e}"))
        .and_then(|r| state::validate(&r))
    {
        Ok(()) => {
            print!("{}", check_line());
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Runs `<path> -upgrade-check` with `input`; its stdout, or why it failed.
fn run_check(path: &Path, input: &[u8]) -> Result<String, String> {
    let mut cmd = Command::new(path);
    crate::sys::nofile::restore_in(&mut cmd);
    let mut child = cmd
        .arg("-upgrade-check")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(input);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} -upgrade-check did not answer", path.display()));
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} -upgrade-check failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Asks the candidate what it is: its version and revision, if it can read
/// this image's state.
pub fn check_candidate(path: &Path) -> Result<(String, String), String> {
    let line = run_check(path, b"")?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let (min, max) = match f.as_slice() {
        ["wedge", _, _, "state", min, max] => (
            min.parse::<u32>().unwrap_or(u32::MAX),
            max.parse::<u32>().unwrap_or(0),
        ),
        _ => {
            return Err(format!(
                "{} is not a Wedge binary: {line:?}",
                path.display()
            ))
        }
    };
    if !(min..=max).contains(&state::STATE_VERSION) {
        return Err(format!(
            "{} reads state versions {min} to {max}, not this shim's {}",
            path.display(),
            state::STATE_VERSION
        ));
    }
    Ok((f[1].to_string(), f[2].to_string()))
}

/// Lets the candidate check the record itself.
pub fn check_record(path: &Path, record: &[u8]) -> Result<(), String> {
    run_check(path, record).map(|_| ())
}

/// Where the exec goes.
pub enum Target<'a> {
    /// The binary at this path (an upgrade).
    Path(&'a Path),
    /// The image open as this descriptor (going back after a failure).
    Fd(RawFd),
}

/// The environment for the next image: ours, with `RESTORE_FD` (and
/// `UPGRADE_FAILED`, when going back).
fn next_env(memfd: RawFd, failed: Option<&str>) -> Vec<String> {
    let mut env: Vec<String> = std::env::vars()
        .filter(|(k, _)| k != RESTORE_FD && k != UPGRADE_FAILED)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.push(format!("{RESTORE_FD}={memfd}"));
    if let Some(why) = failed {
        env.push(format!("{UPGRADE_FAILED}={}", why.replace('\0', " ")));
    }
    env
}

/// Writes `record` into a memfd, clears close-on-exec on `fds` and the
/// memfd, and execs `target`. Returns only on failure (close-on-exec is
/// set again then).
pub fn exec_handover(target: Target<'_>, record: &[u8], fds: &[RawFd]) -> String {
    let memfd = match rustix::fs::memfd_create("wedge-handover", rustix::fs::MemfdFlags::CLOEXEC) {
        Ok(m) => m,
        Err(e) => return format!("memfd: {e}"),
    };
    let mut f = std::fs::File::from(memfd);
    if let Err(e) = f.write_all(record) {
        return format!("write the state: {e}");
    }
    let memfd = OwnedFd::from(f);
    let argv = match crate::sys::ExecArgs::new(std::env::args()) {
        Ok(a) => a,
        Err(e) => return format!("argv: {e}"),
    };
    let env = match crate::sys::ExecArgs::new(next_env(memfd.as_raw_fd(), None)) {
        Ok(e) => e,
        Err(e) => return format!("environment: {e}"),
    };
    let all: Vec<RawFd> = fds.iter().copied().chain([memfd.as_raw_fd()]).collect();
    for fd in &all {
        if let Err(e) = crate::sys::set_cloexec(*fd, false) {
            reset(&all);
            return format!("hand over fd {fd}: {e}");
        }
    }
    let err = match target {
        Target::Path(p) => crate::sys::exec_path(p, &argv, &env),
        Target::Fd(fd) => crate::sys::exec_fd(fd, &argv, &env),
    };
    reset(&all);
    format!("exec: {err}")
}

fn reset(fds: &[RawFd]) {
    for fd in fds {
        let _ = crate::sys::set_cloexec(*fd, true);
    }
}

/// The record handed over to this image, if it was started by an upgrade:
/// the memfd and its content (the variable is removed).
pub fn take_record() -> Option<Result<(OwnedFd, Vec<u8>), String>> {
    let n = std::env::var(RESTORE_FD).ok()?;
    std::env::remove_var(RESTORE_FD);
    Some((|| {
        let n: RawFd = n.parse().map_err(|_| format!("{RESTORE_FD}={n}"))?;
        let fd = crate::sys::adopt_fd(n).map_err(|e| format!("state fd {n}: {e}"))?;
        let mut f = std::fs::File::from(fd.try_clone().map_err(|e| e.to_string())?);
        let mut data = Vec::new();
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(0))
            .and_then(|_| f.read_to_end(&mut data))
            .map_err(|e| format!("read the state: {e}"))?;
        Ok((fd, data))
    })())
}

/// Why the previous attempt failed, when this image was brought back.
pub fn take_failure() -> Option<String> {
    let why = std::env::var(UPGRADE_FAILED).ok()?;
    std::env::remove_var(UPGRADE_FAILED);
    Some(why)
}

/// Prepared to go back to the previous image if restoring fails: its
/// handle, the memfd and the descriptors the record names keep no
/// close-on-exec until [`Fallback::disarm`].
pub struct Fallback {
    exe: RawFd,
    memfd: RawFd,
    argv: crate::sys::ExecArgs,
}

impl Fallback {
    /// Arms going back to the image open as `exe` with the record in
    /// `memfd`; a panic while restoring does it too.
    pub fn arm(exe: RawFd, memfd: RawFd) -> std::sync::Arc<Fallback> {
        let argv = crate::sys::ExecArgs::new(std::env::args()).unwrap_or_else(|_| {
            crate::sys::ExecArgs::new(["containerd-shim-wedge-v2"]).expect("no NUL")
        });
        let fb = std::sync::Arc::new(Fallback { exe, memfd, argv });
        let hook_fb = fb.clone();
        std::panic::set_hook(Box::new(move |info| {
            let why = format!("the new binary panicked while restoring: {info}");
            crate::error!("{why}");
            hook_fb.go_back(&why);
        }));
        fb
    }

    /// Execs the previous image with the record; returns only if that fails.
    pub fn go_back(&self, why: &str) {
        if let Ok(env) = crate::sys::ExecArgs::new(next_env(self.memfd, Some(why))) {
            let err = crate::sys::exec_fd(self.exe, &self.argv, &env);
            crate::error!("going back to the previous image failed: {err}");
        }
    }

    /// Restoring worked: panics are panics again.
    pub fn disarm(&self) {
        let _ = std::panic::take_hook();
    }
}

/// A test hook: a binary built with `WEDGE_FAULT=panic-on-restore` panics
/// while restoring (to test going back to the previous image).
pub fn injected_fault() {
    if option_env!("WEDGE_FAULT") == Some("panic-on-restore") {
        panic!("injected fault: panic on restore");
    }
}
