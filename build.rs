//! Stamps the binary with its version and the commit it was built from:
//! `WEDGE_VERSION` (default: the package version) and `WEDGE_REVISION`
//! (default: `git rev-parse HEAD` of the checkout; `unknown` outside one).
//! Both can be set in the environment.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=WEDGE_VERSION");
    println!("cargo:rerun-if-env-changed=WEDGE_REVISION");
    let version = std::env::var("WEDGE_VERSION")
        .unwrap_or_else(|_| std::env::var("CARGO_PKG_VERSION").unwrap_or_default());
    let revision = std::env::var("WEDGE_REVISION").ok().unwrap_or_else(|| {
        if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
            // Only files that exist: cargo reruns a build script whose
            // watched file is missing on every build (a fresh clone has no
            // loose ref or no packed-refs).
            let mut watched = vec![format!("{dir}/HEAD"), format!("{dir}/packed-refs")];
            if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watched.push(format!("{dir}/{r}"));
            }
            for f in watched.iter().filter(|f| Path::new(f).exists()) {
                println!("cargo:rerun-if-changed={f}");
            }
        }
        git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
    });
    println!("cargo:rustc-env=WEDGE_VERSION={version}");
    println!("cargo:rustc-env=WEDGE_REVISION={revision}");
}
