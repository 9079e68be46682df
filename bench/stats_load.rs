//! Stats as containerd's CRI stats collector asks for them: one call per
//! container, one container after another, over connections kept open to
//! the shims. `bench/bench.py` runs it against Wedge's and the Go shim's
//! containers and reads the shims' CPU time around it.
//!
//! - `stats_load calls N ADDRESS ID`: N Stats back to back to one container.
//! - `stats_load node SECONDS ADDRESS=ID…`: every container once a second,
//!   the calls spread evenly over the second, for SECONDS seconds.
//!
//! Prints one JSON object: `{"calls": …, "failed": …, "late_ms": …}` (how
//! far the last round ended behind its second).

use std::time::Duration;

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::shim::StatsRequest;
use tokio::time::Instant;
use wedge::ttrpc::Client;

const TASK: &str = "containerd.task.v2.Task";

async fn stats(c: &mut Client, id: &str) -> bool {
    let req = StatsRequest {
        id: id.to_string(),
        ..Default::default()
    };
    let payload = req.write_to_bytes().expect("encode StatsRequest");
    c.call(TASK, "Stats", payload, &[], Duration::from_secs(10))
        .await
        .is_ok()
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
                eprintln!("usage: stats_load calls N ADDRESS ID | node SECONDS ADDRESS=ID…");
                std::process::exit(2);
            }
        }
    });
    println!(
        "{{\"calls\": {calls}, \"failed\": {failed}, \"late_ms\": {}}}",
        late.as_millis()
    );
}
