//! Calls straight to shims, as containerd makes them; `bench/bench.py` runs
//! it for Wedge and the Go shim and reads the shims' CPU time around it.
//!
//! - `shim_load calls N ADDRESS ID`: N Stats back to back to one container,
//!   over one connection.
//! - `shim_load node SECONDS ADDRESS=ID…`: Stats as containerd's CRI stats
//!   collector sends them: every container once a second, one after
//!   another, the calls spread evenly over the second, for SECONDS seconds.
//!   Both print `{"calls": …, "failed": …, "late_ms": …}` (how far the last
//!   round ended behind its second).
//! - `shim_load start RUNS DIR NS ADDRESS TTRPC_ADDRESS LABEL=BINARY…`: a
//!   shim's `start` as containerd 1.6 runs it (cwd the bundle, whose
//!   `config.json` is `DIR/config.json`, and its `log` FIFO open), then
//!   `Connect` until the daemon answers; the binaries take turns. Prints
//!   `{LABEL: [{"wall_us", "start_cpu_us", "daemon_cpu_us"}…]…}`: wall time
//!   from spawning `start` to the answer, the `start` process's CPU (its
//!   rusage) and the daemon's CPU until it answered (its schedstat). Each
//!   daemon is then shut down.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::shim::{
    ConnectRequest, ConnectResponse, ShutdownRequest, StatsRequest,
};
use tokio::time::Instant;
use wedge::ttrpc::Client;

const TASK: &str = "containerd.task.v2.Task";

/// One Task API call (10 s timeout); the answer's payload.
async fn call(c: &mut Client, method: &str, req: &impl Message) -> Option<Vec<u8>> {
    let payload = req.write_to_bytes().expect("encode the request");
    c.call(TASK, method, payload, &[], Duration::from_secs(10))
        .await
        .ok()
}

async fn stats(c: &mut Client, id: &str) -> bool {
    let req = StatsRequest {
        id: id.to_string(),
        ..Default::default()
    };
    call(c, "Stats", &req).await.is_some()
}

/// CPU time every thread of `pid` has run (the scheduler's account).
fn cpu(pid: u32) -> Duration {
    let mut ns = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        ns += s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(ns)
}

/// One `start` of `binary` for a container `id`, to the daemon's answer.
async fn start_once(
    binary: &str,
    dir: &Path,
    id: &str,
    ns: &str,
    address: &str,
    ttrpc: &str,
) -> String {
    let bundle = dir.join(id);
    std::fs::create_dir_all(&bundle).expect("bundle");
    std::fs::copy(dir.join("config.json"), bundle.join("config.json")).expect("config.json");
    // containerd opens the bundle's `log` FIFO before it runs `start`.
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        bundle.join("log"),
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .expect("log FIFO");
    let _log = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(bundle.join("log"))
        .expect("open log FIFO");
    let t0 = std::time::Instant::now();
    // Waited for by `wait_with_cpu`, which also reads the CPU time it used.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(binary)
        .args([
            "-namespace",
            ns,
            "-address",
            address,
            "-publish-binary",
            "containerd",
            "-id",
            id,
            "start",
        ])
        .current_dir(&bundle)
        .env("TTRPC_ADDRESS", ttrpc)
        .env("GOMAXPROCS", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    let pid = child.id() as i32;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.expect("stdout"), &mut out)
        .expect("read start's output");
    let (status, start_cpu) = wedge::sys::wait_with_cpu(pid).expect("wait for start");
    assert!(status == 0, "{binary} start failed: {out}");
    let start_cpu_us = start_cpu.as_micros();
    let addr = out.trim().to_string();
    let mut c = Client::connect(&addr).await.expect("connect");
    let req = ConnectRequest {
        id: id.to_string(),
        ..Default::default()
    };
    let resp = call(&mut c, "Connect", &req).await.expect("Connect");
    let wall = t0.elapsed();
    let shim = ConnectResponse::parse_from_bytes(&resp)
        .expect("ConnectResponse")
        .shim_pid;
    let daemon_cpu = cpu(shim);
    let req = ShutdownRequest {
        id: id.to_string(),
        ..Default::default()
    };
    let _ = call(&mut c, "Shutdown", &req).await;
    drop(c);
    for _ in 0..200 {
        if !Path::new(&format!("/proc/{shim}")).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = std::fs::remove_dir_all(&bundle);
    format!(
        "{{\"wall_us\": {}, \"start_cpu_us\": {start_cpu_us}, \"daemon_cpu_us\": {}}}",
        wall.as_micros(),
        daemon_cpu.as_micros()
    )
}

fn main() {
    // cargo bench appends `--bench`.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    if let ["start", runs, dir, ns, address, ttrpc, shims @ ..] = argv.as_slice() {
        let runs: u32 = runs.parse().expect("RUNS is a number");
        let mut out: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        rt.block_on(async {
            for i in 0..runs {
                // Take turns, each run in the other order.
                let mut order: Vec<&&str> = shims.iter().collect();
                if i % 2 == 1 {
                    order.reverse();
                }
                for s in order {
                    let (label, binary) = s.split_once('=').expect("LABEL=BINARY");
                    let id = format!("start-{label}-{i}");
                    let r = start_once(binary, Path::new(dir), &id, ns, address, ttrpc).await;
                    out.entry(label).or_default().push(r);
                }
            }
        });
        let parts: Vec<String> = out
            .iter()
            .map(|(k, v)| format!("\"{k}\": [{}]", v.join(", ")))
            .collect();
        println!("{{{}}}", parts.join(", "));
        return;
    }
    let (calls, failed, late) = rt.block_on(async {
        match args
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["calls", n, addr, id] => {
                let n: u32 = n.parse().expect("N is a number");
                let mut c = Client::connect(addr).await.expect("connect");
                let mut failed = 0;
                for _ in 0..n {
                    failed += u32::from(!stats(&mut c, id).await);
                }
                (n, failed, Duration::ZERO)
            }
            ["node", secs, targets @ ..] => {
                let secs: u32 = secs.parse().expect("SECONDS is a number");
                let mut conns = Vec::new();
                for t in targets {
                    let (addr, id) = t.split_once('=').expect("ADDRESS=ID");
                    conns.push((Client::connect(addr).await.expect("connect"), id));
                }
                let step = Duration::from_secs(1) / conns.len().max(1) as u32;
                let start = Instant::now();
                let (mut calls, mut failed) = (0, 0);
                for s in 0..secs {
                    let second = start + Duration::from_secs(u64::from(s));
                    for (i, (c, id)) in conns.iter_mut().enumerate() {
                        tokio::time::sleep_until(second + step * i as u32).await;
                        calls += 1;
                        failed += u32::from(!stats(c, id).await);
                    }
                }
                let end = start + Duration::from_secs(u64::from(secs));
                (calls, failed, Instant::now().saturating_duration_since(end))
            }
            _ => {
                eprintln!(
                    "usage: shim_load calls N ADDRESS ID | node SECONDS ADDRESS=ID… \
                     | start RUNS DIR NS ADDRESS TTRPC_ADDRESS LABEL=BINARY…"
                );
                std::process::exit(2);
            }
        }
    });
    println!(
        "{{\"calls\": {calls}, \"failed\": {failed}, \"late_ms\": {}}}",
        late.as_millis()
    );
}
