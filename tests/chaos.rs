//! The chaos run, by hand: `scripts/chaos [MINUTES]` (default 20). One
//! private containerd with Wedge as the drop-in runc shim; for the whole
//! run, containers (alone and in groups of one shim) and execs churn while
//! containerd and shims are SIGKILLed, runtime calls hang (the wrapper's
//! `kill` and `delete`), `binary://` loggers die at once, attached readers
//! are stopped for seconds, and shims are upgraded in place (SIGUSR2, the
//! same binary). Every container prints numbered lines, then exits with a
//! code of its own. Afterwards:
//! - every container's exit was published exactly once (`/tasks/exit` seen
//!   by a `ctr events` that reconnects at once after each containerd
//!   restart), with its own code, or 137 where it was killed;
//! - a `file://` log holds every line in order (a prefix where its shim was
//!   killed), and so does an attached reader that was only stalled;
//! - an exec answered with its code also gave its output;
//! - nothing is left: no shim, container process, hung runtime call, mount,
//!   socket, cgroup or runtime state.
//!
//! Seeded (`WEDGE_CHAOS_SEED`); prints what it injected and counted. A
//! `test = false` target: it runs for minutes.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// `ctr run -d` with a `file://` log.
    FileLog,
    /// `ctr run -d` with a `binary://` logger that dies at once.
    DyingLogger,
    /// `ctr run` attached: its stdout is the reader.
    Attached,
}

struct Container {
    id: String,
    kind: Kind,
    lines: u64,
    code: i32,
    log: PathBuf,
    attached: Option<Child>,
    /// containerd was killed while the attached reader lived.
    reader_lost: bool,
    /// We killed it (ctr task kill -s KILL): 137 or its own code.
    killed: bool,
    /// Its shim was SIGKILLed: 137 or its own code; the log is a prefix.
    shim_killed: bool,
    /// …while the runtime's `delete` hung: containerd's cleanup (`shim
    /// delete`) could not delete it in the runtime, and nothing will.
    shim_killed_while_hung: bool,
    started: bool,
    /// Its task and container were deleted (after its exit).
    deleted: bool,
}

/// `ctr events`, reconnected as soon as containerd is back, appended to one file.
struct Subscriber {
    stop: Arc<AtomicBool>,
    pid: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
    log: PathBuf,
}

impl Subscriber {
    fn start(env: &Env) -> Subscriber {
        let log = env.dir.path().join("chaos-events.txt");
        let (stop, pid) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU32::new(0)),
        );
        let (s, p, l) = (stop.clone(), pid.clone(), log.clone());
        let mut cmd = env.ctr_cmd(&["events"]);
        let sock = env.address.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                // Only once containerd accepts connections: a `ctr` that
                // dials a containerd still down waits out gRPC's backoff
                // (1 s, then 1.6 s, …), and events published meanwhile
                // (a restarted containerd takes them at once) would be
                // missed by the record, not by containerd.
                if std::os::unix::net::UnixStream::connect(&sock).is_err() {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let mut out = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&l)
                    .unwrap();
                // When this subscription began; each line is stamped with
                // when it came (the first one says when the subscription
                // was live at the latest: an event's own time may be far
                // older, when a shim retried or kept it).
                let _ = writeln!(out, "{SUBSCRIBED} {}", now_nanos());
                if let Ok(mut c) = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn() {
                    p.store(c.id(), Ordering::Relaxed);
                    if let Some(o) = c.stdout.take() {
                        use std::io::BufRead;
                        for line in std::io::BufReader::new(o).lines().map_while(Result::ok) {
                            let _ = writeln!(out, "{RECEIVED}{} {line}", now_nanos());
                        }
                    }
                    let _ = c.wait();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Subscriber {
            stop,
            pid,
            thread: Some(thread),
            log,
        }
    }

    /// Init exits of `id`: their exit statuses, in order; and those seen
    /// after its `/tasks/delete` (containerd's dead-shim cleanup publishes
    /// the exit again when a shim goes after its task was deleted but
    /// before containerd shut it down: containerd died in between).
    fn exits(&self, id: &str) -> (Vec<u64>, Vec<u64>) {
        let (mut before, mut after, mut deleted) = (Vec::new(), Vec::new(), false);
        for l in std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
        {
            let exit = l.contains(" /tasks/exit ");
            if !exit && !l.contains(" /tasks/delete ") {
                continue;
            }
            let Some(v) = l
                .find('{')
                .and_then(|i| serde_json::from_str::<serde_json::Value>(&l[i..]).ok())
            else {
                continue;
            };
            if v["container_id"] != id {
                continue;
            }
            if !exit {
                deleted = true;
            } else if v["id"] == id {
                let status = v["exit_status"].as_u64().unwrap_or(0);
                if deleted { &mut after } else { &mut before }.push(status);
            }
        }
        (before, after)
    }
}

/// The record's line before each (re)subscription: `# subscribed NANOS`.
const SUBSCRIBED: &str = "# subscribed";
/// Each event line of the record starts with when it came: `@NANOS `.
const RECEIVED: &str = "@";

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

impl Subscriber {
    /// The exit time the record's `/tasks/delete` of `id` says.
    fn deleted_exit_time(&self, id: &str) -> Option<std::time::SystemTime> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        let l = log.lines().find(|l| {
            l.contains(" /tasks/delete ") && l.contains(&format!("\"container_id\":\"{id}\""))
        })?;
        let v: serde_json::Value = serde_json::from_str(&l[l.find('{')?..]).ok()?;
        event_time(&v["exited_at"].as_str()?.replace('T', " ").replace('Z', ""))
    }

    /// Each subscription: when it began, and when its first event came, if
    /// any.
    fn subscriptions(&self) -> Vec<(std::time::SystemTime, Option<std::time::SystemTime>)> {
        let mut v: Vec<(std::time::SystemTime, Option<std::time::SystemTime>)> = Vec::new();
        for l in std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
        {
            if let Some(n) = l.strip_prefix(SUBSCRIBED) {
                let ns: u128 = n.trim().parse().unwrap_or(0);
                v.push((
                    std::time::UNIX_EPOCH + Duration::from_nanos(ns as u64),
                    None,
                ));
            } else if let Some(last) = v.last_mut() {
                if last.1.is_none() {
                    last.1 = l
                        .strip_prefix(RECEIVED)
                        .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
                        .map(|ns| std::time::UNIX_EPOCH + Duration::from_nanos(ns));
                }
            }
        }
        v
    }
}

/// The time `ctr events` prints first on a line (`2026-12-04
/// 22:18:03.141296974 +0000 UTC …`).
fn event_time(line: &str) -> Option<std::time::SystemTime> {
    let mut f = line.split_whitespace();
    let (date, time) = (f.next()?, f.next()?);
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<u64> = hms
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date.
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let nanos: u64 = format!("{frac:0<9}")[..9].parse().ok()?;
    Some(
        std::time::UNIX_EPOCH
            + Duration::from_secs(days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2])
            + Duration::from_nanos(nanos),
    )
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.pid.load(Ordering::Relaxed) as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The ids of running tasks and of stopped ones.
fn tasks(env: &Env) -> (Vec<String>, Vec<String>) {
    let (mut running, mut stopped) = (Vec::new(), Vec::new());
    for l in String::from_utf8_lossy(&env.ctr(&["task", "ls"]).stdout).lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.get(2) {
            Some(&"RUNNING") => running.push(f[0].to_string()),
            Some(&"STOPPED") => stopped.push(f[0].to_string()),
            _ => {}
        }
    }
    (running, stopped)
}

/// The socket address of the shim serving `id`, while its bundle exists.
fn address(env: &Env, id: &str) -> Option<String> {
    std::fs::read_to_string(env.bundle(id).join("address")).ok()
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Numbered lines `l 0`…: how many, and whether they are in order.
fn numbered(text: &str) -> (u64, bool) {
    let mut n = 0;
    for l in text.lines() {
        if l != format!("l {n}") {
            return (n, false);
        }
        n += 1;
    }
    (n, true)
}

#[derive(Default, Debug)]
struct Counts {
    containers: u64,
    start_failed: u64,
    execs: u64,
    execs_answered: u64,
    containerd_kills: u64,
    shim_kills: u64,
    container_kills: u64,
    hung_windows: u64,
    stalls: u64,
    upgrades: u64,
    deletes: u64,
    lines_checked: u64,
}

#[test]
fn chaos() {
    let minutes: u64 = std::env::var("WEDGE_CHAOS_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("WEDGE_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xc4a05);
    let mut r = Rng(seed | 1);
    let mut env = Env::start(Install::DropIn);
    let rt = env.hang_runc().display().to_string();
    let subscriber = Subscriber::start(&env);
    let logger = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/loggers/crash.sh");
    let mut cs: Vec<Container> = Vec::new();
    let mut n = Counts::default();
    let mut stalled: Vec<(u32, Instant)> = Vec::new();
    let mut hang_until: Option<Instant> = None;
    let t0 = Instant::now();
    // When containerd was killed: an exit it took just before dying may
    // never have reached its subscribers.
    let mut kills: Vec<std::time::SystemTime> = Vec::new();
    // When it served again after each kill.
    let mut restarts: Vec<std::time::SystemTime> = Vec::new();
    let end = t0 + Duration::from_secs(minutes * 60);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100 + r.below(300)));
        let now = Instant::now();
        stalled.retain(|(pid, at)| {
            let go = *at <= now;
            if go {
                signal(*pid, rustix::process::Signal::CONT);
            }
            !go
        });
        if hang_until.is_some_and(|t| t <= now) {
            env.set_hang("kill", false);
            env.set_hang("delete", false);
            hang_until = None;
        }
        // Running containers are the targets; stopped ones are deleted.
        let (running, stopped) = tasks(&env);
        let live: Vec<usize> = (0..cs.len())
            .filter(|&i| cs[i].started && !cs[i].shim_killed && running.contains(&cs[i].id))
            .collect();
        match r.below(100) {
            0..=34 if live.len() < 30 => {
                let id = format!("c{}", cs.len());
                let kind = match r.below(20) {
                    0..=11 => Kind::FileLog,
                    12..=14 => Kind::DyingLogger,
                    _ => Kind::Attached,
                };
                let (lines, code) = (1000 + r.below(40_000), r.below(100) as i32);
                let script = format!(
                    "i=0; while [ $i -lt {lines} ]; do echo \"l $i\"; i=$((i+1)); done; sleep {}; exit {code}",
                    r.below(20)
                );
                let log = env.dir.path().join(format!("{id}.log"));
                let group = format!("io.containerd.runc.v2.group=g{}", r.below(4));
                let mut args = vec!["--runc-binary", &rt];
                if r.below(2) == 0 {
                    args.extend(["--annotation", &group]);
                }
                let uri = match kind {
                    Kind::FileLog => format!("file://{}", log.display()),
                    _ => format!("binary://{}", logger.display()),
                };
                env.track(&id);
                let mut c = Container {
                    id: id.clone(),
                    kind,
                    lines,
                    code,
                    log,
                    attached: None,
                    reader_lost: false,
                    killed: false,
                    shim_killed: false,
                    shim_killed_while_hung: false,
                    started: false,
                    deleted: false,
                };
                n.containers += 1;
                if kind == Kind::Attached {
                    let mut a = vec!["run", "--runtime", Install::DropIn.runtime()];
                    a.extend(args.iter());
                    a.extend([IMAGE, &id, "sh", "-c", &script]);
                    let child = env
                        .ctr_cmd(&a)
                        .stdout(std::fs::File::create(&c.log).unwrap())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap();
                    c.attached = Some(child);
                    c.started = true;
                } else {
                    args.extend(["-d", "--log-uri", &uri]);
                    let out = env.run(&id, &args, &["sh", "-c", &script]);
                    c.started = out.status.success();
                    if !c.started {
                        n.start_failed += 1;
                        eprintln!("{id}: start failed: {}", stderr(&out));
                    }
                }
                cs.push(c);
            }
            35..=54 if !live.is_empty() => {
                let c = &cs[live[r.below(live.len() as u64) as usize]];
                let k = r.below(50);
                let e = format!("e{}", n.execs);
                n.execs += 1;
                let out = env
                    .ctr_cmd(&["task", "exec", "--exec-id", &e, &c.id, "sh", "-c"])
                    .arg(format!("echo {e}; exit {k}"))
                    .output()
                    .unwrap();
                if out.status.code() == Some(k as i32) {
                    n.execs_answered += 1;
                    assert_eq!(stdout(&out), format!("{e}\n"), "{}/{e}: output", c.id);
                } else {
                    eprintln!(
                        "{}/{e}: {:?} {}",
                        c.id,
                        out.status.code(),
                        stderr(&out).trim()
                    );
                }
            }
            55..=57 => {
                n.containerd_kills += 1;
                eprintln!("{:?}: containerd SIGKILLed", t0.elapsed());
                kills.push(std::time::SystemTime::now());
                env.kill_containerd();
                for c in cs.iter_mut().filter(|c| c.attached.is_some()) {
                    c.reader_lost = true;
                }
                std::thread::sleep(Duration::from_millis(500 + r.below(6000)));
                env.start_containerd();
                restarts.push(std::time::SystemTime::now());
            }
            58..=59 if !live.is_empty() => {
                let id = cs[live[r.below(live.len() as u64) as usize]].id.clone();
                // A group's shim is named after its first container.
                if let (Some(shim), Some(addr)) = (env.shim_pid(&id), address(&env, &id)) {
                    n.shim_kills += 1;
                    for c in cs.iter_mut().filter(|c| c.started) {
                        if address(&env, &c.id).as_ref() == Some(&addr) {
                            c.shim_killed = true;
                            c.shim_killed_while_hung |= hang_until.is_some();
                        }
                    }
                    eprintln!("{:?}: shim {shim} ({id}'s) SIGKILLed", t0.elapsed());
                    signal(shim, rustix::process::Signal::KILL);
                }
            }
            66..=71 if !live.is_empty() => {
                let i = live[r.below(live.len() as u64) as usize];
                if hang_until.is_none() && r.below(2) == 0 {
                    n.hung_windows += 1;
                    env.set_hang("kill", true);
                    env.set_hang("delete", true);
                    hang_until = Some(now + Duration::from_secs(3 + r.below(8)));
                }
                n.container_kills += 1;
                cs[i].killed = true;
                let _ = env.ctr(&["task", "kill", "-s", "KILL", &cs[i].id]);
            }
            72..=79 => {
                if let Some(c) = cs
                    .iter()
                    .filter(|c| c.attached.is_some())
                    .nth(r.below(4) as usize)
                {
                    n.stalls += 1;
                    let pid = c.attached.as_ref().unwrap().id();
                    signal(pid, rustix::process::Signal::STOP);
                    stalled.push((pid, now + Duration::from_secs(1 + r.below(6))));
                }
            }
            80..=84 if !live.is_empty() => {
                let id = &cs[live[r.below(live.len() as u64) as usize]].id;
                if let Some(shim) = env.shim_pid(id) {
                    n.upgrades += 1;
                    signal(shim, rustix::process::Signal::USR2);
                }
            }
            85..=99 if !stopped.is_empty() => {
                // As containerd's clients do once a task has exited.
                let id = &stopped[r.below(stopped.len() as u64) as usize];
                if let Some(c) = cs.iter_mut().find(|c| &c.id == id && c.attached.is_none()) {
                    c.deleted = true;
                    n.deletes += 1;
                    let _ = env.ctr(&["task", "rm", id]);
                    let _ = env.ctr(&["container", "rm", id]);
                }
            }
            _ => {}
        }
        for c in cs.iter_mut() {
            if let Some(a) = c.attached.as_mut() {
                if let Ok(Some(_)) = a.try_wait() {
                    c.attached = None;
                }
            }
        }
    }

    // Quiet: everything resumes and every container ends by itself (20 s of
    // sleep at most), or is killed.
    for (pid, _) in stalled.drain(..) {
        signal(pid, rustix::process::Signal::CONT);
    }
    env.set_hang("kill", false);
    env.set_hang("delete", false);
    std::thread::sleep(Duration::from_secs(30));
    let mut failures = Vec::new();
    for c in cs.iter_mut().filter(|c| c.started) {
        if let Some(mut a) = c.attached.take() {
            // The reader lost to a containerd restart may never end.
            let deadline = Instant::now() + Duration::from_secs(10);
            while a.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = a.kill();
            let _ = a.wait();
        }
    }
    // Events a shim kept while containerd was down are delivered 3 s after it is back.
    std::thread::sleep(Duration::from_secs(10));
    let mut by_code: HashMap<&str, u64> = HashMap::new();
    let subscriptions = subscriber.subscriptions();
    // The record is blind from each containerd kill (its `ctr events` dies
    // with it) until the first event it printed once subscribed again.
    let blind_windows: Vec<(std::time::SystemTime, std::time::SystemTime)> = kills
        .iter()
        .filter_map(|k| {
            let (_, first) = subscriptions.iter().find(|(s, _)| s >= k)?;
            Some((*k, (*first)?))
        })
        .collect();
    // When a shim's retried exit went to containerd (its log says).
    let delivered_at: HashMap<String, std::time::SystemTime> = env
        .containerd_log()
        .lines()
        .filter_map(|l| {
            let rest = l.split("published /tasks/exit of ").nth(1)?;
            let id = rest.split_whitespace().next()?.to_string();
            let t = l.strip_prefix("time=\"")?.split('"').next()?;
            Some((id, event_time(&t.replace('T', " ").replace('Z', ""))?))
        })
        .collect();
    for c in cs.iter().filter(|c| c.started) {
        let (exits, again) = subscriber.exits(&c.id);
        if !again.is_empty() {
            if again.iter().all(|s| exits.contains(s)) {
                *by_code
                    .entry("published again after its delete (by containerd's cleanup)")
                    .or_default() += 1;
            } else {
                failures.push(format!(
                    "{}: exits {exits:?}, then after its delete {again:?}",
                    c.id
                ));
            }
        }
        let ok_codes: Vec<u64> = if c.killed || c.shim_killed {
            vec![c.code as u64, 137]
        } else {
            vec![c.code as u64]
        };
        let valid = exits.iter().all(|s| ok_codes.contains(s));
        match exits.as_slice() {
            [s] if ok_codes.contains(s) => {
                *by_code.entry("exactly once, right code").or_default() += 1
            }
            // A dead shim's exit is containerd's to publish: 1.6's cleanup
            // publishes it again after the shim did. Counted apart.
            [] | [_, _] if c.shim_killed && valid => {
                *by_code
                    .entry(if exits.is_empty() {
                        "shim killed: no exit seen"
                    } else {
                        "shim killed: exit published again by containerd"
                    })
                    .or_default() += 1
            }
            _ => {
                // When it exited: the shim's State, or (deleted) the
                // record's /tasks/delete.
                let state = (!c.deleted && address(&env, &c.id).is_some()).then(|| {
                    env.shim_call::<_, containerd_shim_protos::shim::shim::StateResponse>(
                        &c.id,
                        "State",
                        &containerd_shim_protos::shim::shim::StateRequest {
                            id: c.id.clone(),
                            ..Default::default()
                        },
                    )
                });
                let exited = match &state {
                    Some(Ok(s)) if s.exited_at.seconds > 0 => Some(
                        std::time::UNIX_EPOCH
                            + Duration::new(s.exited_at.seconds as u64, s.exited_at.nanos as u32),
                    ),
                    _ => subscriber.deleted_exit_time(&c.id),
                };
                // When it went to containerd: the shim logs an event that
                // needed retries when it goes; else at its exit.
                let delivered = delivered_at.get(c.id.as_str()).copied().or(exited);
                let blind = delivered.and_then(|d| {
                    blind_windows
                        .iter()
                        .find(|(k, f)| *k <= d && d <= *f)
                        .copied()
                });
                let when = exited.map(|at| {
                    let rel = |t: std::time::SystemTime| {
                        t.duration_since(at)
                            .map(|d| format!("+{d:?}"))
                            .unwrap_or_else(|e| format!("-{:?}", e.duration()))
                    };
                    let next_kill = kills.iter().filter_map(|k| k.duration_since(at).ok()).min();
                    let last_kill = kills.iter().filter(|k| **k <= at).max();
                    let window = last_kill
                        .and_then(|k| blind_windows.iter().find(|(wk, _)| wk == k))
                        .map(|(k, f)| format!("[{}, {}]", rel(*k), rel(*f)))
                        .unwrap_or_default();
                    format!(
                        "exited {:?} ago; delivered at {}; containerd killed {next_kill:?} after \
                         it; the record's blind time after the last kill before it: {window}",
                        at.elapsed().unwrap_or_default(),
                        delivered.map(rel).unwrap_or_default(),
                    )
                });
                let status = match &state {
                    Some(Ok(s)) => format!("{:?} {}", s.status, s.exit_status),
                    Some(Err(e)) => format!("{e:?}"),
                    None => "deleted".into(),
                };
                let line = format!(
                    "{} ({:?}, killed {}, shim killed {}, deleted {}): exits {exits:?} \
                     (after its delete {again:?}), want one of {ok_codes:?}; the shim: {status}; \
                     {}",
                    c.id,
                    c.kind,
                    c.killed,
                    c.shim_killed,
                    c.deleted,
                    when.unwrap_or_default()
                );
                if exits.is_empty() && again.is_empty() && blind.is_some() {
                    // Published after containerd was killed and before the
                    // record's first event once it was back: containerd
                    // took it while the record was not subscribed.
                    eprintln!(
                        "not seen by the record, published while it was resubscribing: {line}"
                    );
                    *by_code
                        .entry("not seen: published while the record was resubscribing")
                        .or_default() += 1;
                } else {
                    failures.push(line);
                }
            }
        }
        let check_lines = match c.kind {
            Kind::FileLog => true,
            Kind::Attached => !c.reader_lost && !c.shim_killed && exits == [c.code as u64],
            Kind::DyingLogger => false,
        };
        if check_lines {
            let text = std::fs::read_to_string(&c.log).unwrap_or_default();
            let (got, in_order) = numbered(&text);
            let complete = got == c.lines || ((c.killed || c.shim_killed) && got <= c.lines);
            if !in_order || !complete {
                let at = text.lines().nth(got as usize).unwrap_or("");
                failures.push(format!(
                    "{} ({:?}, killed {}, deleted {}): {got} of {} lines, in order: {in_order}; \
                     {} bytes, line {got} is {:?}",
                    c.id,
                    c.kind,
                    c.killed,
                    c.deleted,
                    c.lines,
                    text.len(),
                    &at[..at.len().min(60)]
                ));
            }
            n.lines_checked += got;
        }
    }
    let log = env.containerd_log();
    let upgraded = log.matches("upgraded in place").count();
    eprintln!(
        "chaos: {minutes} min, seed {seed:#x}: {n:#?}; {by_code:#?}; upgrades done: {upgraded}"
    );
    // How long the record was blind after each restart: from containerd
    // serving again to the record's first event after it.
    let mut blind: Vec<Duration> = kills
        .iter()
        .zip(&restarts)
        .filter_map(|(k, r)| {
            let (_, first) = subscriptions.iter().find(|(s, _)| s >= k)?;
            Some(first.as_ref()?.duration_since(*r).unwrap_or_default())
        })
        .collect();
    blind.sort();
    if let (Some(max), false) = (blind.last(), blind.is_empty()) {
        eprintln!(
            "the record after {} restarts: first event {:?} after containerd served again \
             (median), {max:?} at most (bounds of its blind time)",
            blind.len(),
            blind[blind.len() / 2]
        );
    }
    let keep = std::env::temp_dir().join(format!("wedge-chaos-{seed:x}.log"));
    let _ = std::fs::write(&keep, &log);
    let _ = std::fs::copy(&subscriber.log, keep.with_extension("events"));
    eprintln!("containerd's log: {}", keep.display());
    for c in cs.iter() {
        let _ = env.ctr(&["task", "kill", "-s", "KILL", &c.id]);
        let _ = env.ctr(&["task", "rm", "-f", &c.id]);
        let _ = env.ctr(&["container", "rm", &c.id]);
    }
    drop(subscriber);
    // What a hung runtime left, reported: the runtime's state (and cgroups)
    // of a container whose Delete went on without `runtime delete` (the
    // shim's warning names it), or whose shim was killed while the runtime
    // hung (containerd's cleanup could not delete it). Deleted by hand, as an
    // operator would, and counted.
    let by_hand: Vec<&str> = cs
        .iter()
        .filter(|c| {
            c.shim_killed_while_hung
                || log.contains(&format!("{}: runtime delete still did not finish", c.id))
        })
        .filter(|c| {
            std::process::Command::new("runc")
                .args(["--root", &format!("/run/containerd/runc/{}", env.ns)])
                .args(["delete", "--force", &c.id])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|c| c.id.as_str())
        .collect();
    eprintln!("left by a hung runtime (reported), deleted by hand: {by_hand:?}");
    let hung: Vec<_> = processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(HUNG_CMDLINE))
        .collect();
    assert!(hung.is_empty(), "hung runtime calls left: {hung:?}");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // A shim stays up to a minute after its Shutdown to retry a runtime
    // delete that hung, or to deliver events it kept.
    env.assert_clean_within(Duration::from_secs(75));
}

#[test]
fn event_times_read_as_ctr_prints_them() {
    let t = event_time("2026-12-04 22:18:03.141296974 +0000 UTC k8s.io /tasks/exit {}").unwrap();
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    // date -d '2026-12-04 22:18:03 UTC' +%s
    assert_eq!(d.as_secs(), 1_796_422_683);
    assert_eq!(d.subsec_nanos(), 141_296_974);
    assert_eq!(
        event_time("2000-03-01 00:00:00.5 +0000 UTC")
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap(),
        Duration::from_millis(951_868_800_500)
    );
    assert!(event_time("# subscribed 1").is_none());
}
