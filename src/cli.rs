//! Command line: parses the flags ([`crate::flags`]) and dispatches to `-h`,
//! `-v`, `-info`, `start`, `delete` ([`crate::manager`]) or serve mode
//! ([`crate::serve`], no action).
//!
//! Contract with containerd: `start` prints only its reply on stdout
//! (containerd reads stdout and stderr combined; the forms are in
//! [`crate::bootstrap`]); `delete` prints a protobuf `DeleteResponse`; `-info`
//! prints a protobuf `RuntimeInfo`. A fatal error is printed to stderr as
//! `<runtime name>: <error>` and the process exits 1 (2 for a bad command
//! line).

use std::io::Write;
use std::path::Path;

use crate::flags::{Flags, FLAG_HELP};

/// The runtime name for messages, derived from the binary name:
/// `containerd-shim-NAME-v2` → `io.containerd.NAME.v2`.
pub fn runtime_name(argv0: &str) -> String {
    let base = Path::new(argv0)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match base
        .strip_prefix("containerd-shim-")
        .and_then(|s| s.strip_suffix("-v2"))
    {
        Some(name) if !name.is_empty() => format!("io.containerd.{name}.v2"),
        _ => "io.containerd.wedge.v2".to_string(),
    }
}

/// The `-h` text.
pub fn usage(argv0: &str, name: &str) -> String {
    let bin = Path::new(argv0)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "containerd-shim-wedge-v2".into());
    let mut s = format!(
        "Usage:\n  {bin} -namespace NS -id ID -address ADDR [-debug] start\n  \
         {bin} -namespace NS -id ID -bundle DIR delete\n  \
         {bin} -namespace NS -id ID -address ADDR [-socket PATH]   (the daemon)\n  \
         {bin} -info\n  {bin} -v\n  \
         {bin} upgrade [-namespace NS] [-id ID] [PATH]\n\n\
         Wedge, a containerd shim v2 that runs containers with an OCI runtime (runc, crun, youki).\n\
         containerd runs it; this binary answers as runtime {name}. Installed as\n\
         containerd-shim-wedge-v2 it is io.containerd.wedge.v2; installed as\n\
         containerd-shim-runc-v2 it replaces the Go shim for io.containerd.runc.v2 (Docker, CRI).\n\n\
         Actions:\n  \
         start    start (or reuse) the shim of this container's group and print its address\n  \
         delete   clean up after a container whose shim is gone; prints a DeleteResponse\n  \
         upgrade  hand every running shim started from PATH (default: this binary's path; of\n           \
         namespace NS, or the one serving container ID) over to the binary now installed\n           \
         there, without restarting any container; one line per shim\n  \
         (none)   serve the Task API over ttrpc on fd 3 (or -socket)\n\nFlags:\n"
    );
    for (flag, help) in FLAG_HELP {
        s.push_str(&format!("  {flag:<24} {help}\n"));
    }
    s
}

/// Runs the binary; returns the process exit code.
pub fn run() -> i32 {
    // A pod's namespace holder is this binary too, told so by its
    // environment: it never returns.
    if let Some(never) = crate::sandbox::holder::run_if_holder() {
        match never {}
    }
    let argv: Vec<String> = std::env::args().collect();
    let argv0 = argv.first().cloned().unwrap_or_default();
    let name = runtime_name(&argv0);
    let flags: Flags = match crate::flags::parse(argv.get(1..).unwrap_or_default()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{name}: {e}");
            eprint!("{}", usage(&argv0, &name));
            return 2;
        }
    };
    if flags.help {
        print!("{}", usage(&argv0, &name));
        return 0;
    }
    if flags.version {
        println!(
            "{argv0}:\n  Version:  {}\n  Revision: {}\n  Runtime:  {name} (Wedge, Rust)",
            crate::VERSION,
            crate::REVISION
        );
        return 0;
    }
    if flags.info {
        return match crate::manager::info(&name) {
            Ok(bytes) => {
                let mut out = std::io::stdout();
                match out.write_all(&bytes).and_then(|()| out.flush()) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("{name}: write runtime info: {e}");
                        1
                    }
                }
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                1
            }
        };
    }
    if flags.upgrade_check {
        return crate::upgrade::check_main();
    }
    if flags.action.as_deref() == Some("upgrade") {
        return crate::upgrade::control::command(&flags);
    }
    if flags.namespace.is_empty() {
        eprintln!("shim namespace cannot be empty");
        return 1;
    }
    crate::log::set_debug(flags.debug);
    let res = match flags.action.as_deref() {
        Some("start") => crate::manager::start(&flags),
        Some("delete") => crate::manager::delete(&flags),
        None => crate::serve::run(&flags),
        Some(other) => Err(format!("invalid action {other:?}")),
    };
    match res {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{name}: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_names() {
        assert_eq!(
            runtime_name("/usr/bin/containerd-shim-runc-v2"),
            "io.containerd.runc.v2"
        );
        assert_eq!(
            runtime_name("containerd-shim-wedge-v2"),
            "io.containerd.wedge.v2"
        );
        assert_eq!(runtime_name("other"), "io.containerd.wedge.v2");
    }

    #[test]
    fn usage_names_every_flag_and_action() {
        let u = usage("/usr/bin/containerd-shim-runc-v2", "io.containerd.runc.v2");
        for (flag, _) in FLAG_HELP {
            assert!(u.contains(flag), "{flag}");
        }
        for word in ["start", "delete", "-info", "io.containerd.runc.v2"] {
            assert!(u.contains(word), "{word}");
        }
        assert!(u.ends_with('\n'));
    }
}
