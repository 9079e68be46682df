//! Stamps the binary with its version and the commit it was built from:
//! `WEDGE_VERSION` (default: the package version) and `WEDGE_REVISION`
//! (default: `git rev-parse HEAD` of the checkout; `unknown` outside one).
//! Both can be set in the environment.

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
            println!("cargo:rerun-if-changed={dir}/HEAD");
            if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                println!("cargo:rerun-if-changed={dir}/{r}");
            }
            println!("cargo:rerun-if-changed={dir}/packed-refs");
        }
        git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
    });
    println!("cargo:rustc-env=WEDGE_VERSION={version}");
    println!("cargo:rustc-env=WEDGE_REVISION={revision}");
}
