//! The floor for a shim's Stats: the CPU a plain program spends reading the
//! cgroup files a Stats answer is made of, with no parsing and no protocol.
//! `bench/bench.py` runs it on the files of the container it measures the
//! shims' Stats on, and reports each shim's CPU per Stats beside it.
//!
//! Two floors, each as CPU time (the scheduler's account) per round of
//! reading every file once:
//! - `open`: open, read into a reused buffer, close (what a program that
//!   keeps nothing open between calls must do);
//! - `pread`: the files kept open, read with `pread` from offset 0 (what a
//!   shim that keeps its containers' stat files open can do).
//!
//! `cargo bench --bench stats_floor -- ROUNDS FILE…` prints one JSON object:
//! `{"files": N, "open_ns": …, "pread_ns": …}`.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// CPU time this (one-threaded) process has run, from the scheduler's
/// account (`/proc/self/schedstat`, nanoseconds).
fn cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/self/schedstat").expect("schedstat");
    let ns: u64 = s
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("schedstat's first field");
    Duration::from_nanos(ns)
}

fn main() {
    // cargo bench appends `--bench`.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some((rounds, files)) = args.split_first() else {
        eprintln!("usage: stats_floor ROUNDS FILE…");
        std::process::exit(2);
    };
    let rounds: u32 = rounds.parse().expect("ROUNDS is a number");
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0usize;

    let start = cpu();
    for _ in 0..rounds {
        for f in files {
            if let Ok(mut file) = File::open(f) {
                total += file.read(&mut buf).unwrap_or(0);
            }
        }
    }
    let open = (cpu() - start) / rounds;

    let kept: Vec<File> = files.iter().filter_map(|f| File::open(f).ok()).collect();
    let start = cpu();
    for _ in 0..rounds {
        for file in &kept {
            total += file.read_at(&mut buf, 0).unwrap_or(0);
        }
    }
    let pread = (cpu() - start) / rounds;
    std::hint::black_box(total);
    println!(
        "{{\"files\": {}, \"open_ns\": {}, \"pread_ns\": {}}}",
        kept.len(),
        open.as_nanos(),
        pread.as_nanos()
    );
}
