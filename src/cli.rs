//! Command line: Go `flag`-style parsing (`-x v`, `--x=v`, boolean `-debug`),
//! then dispatch to `start`, `delete` or serve mode (no action).
//!
//! Contract with containerd: `start` prints only the socket address on stdout
//! (containerd reads stdout and stderr combined); `delete` prints a
//! protobuf `DeleteResponse`. Any fatal error is printed to stderr as
//! `<runtime name>: <error>` and the process exits 1.

use std::path::Path;

/// Parsed flags and action.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flags {
    /// `-namespace`.
    pub namespace: String,
    /// `-id`.
    pub id: String,
    /// `-address`: containerd's gRPC socket.
    pub address: String,
    /// `-publish-binary` (accepted, unused: events go over ttrpc).
    pub publish_binary: String,
    /// `-bundle`.
    pub bundle: String,
    /// `-socket`: serve on this path instead of fd 3.
    pub socket: String,
    /// `-debug`.
    pub debug: bool,
    /// `-v`.
    pub version: bool,
    /// `start`, `delete`, or `None` for serve mode.
    pub action: Option<String>,
}

/// Parses arguments (without argv\[0\]) the way Go's `flag` package does:
/// flags stop at the first non-flag argument or at `--`.
pub fn parse(args: &[String]) -> Result<Flags, String> {
    let mut f = Flags::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') || a == "-" {
            break;
        }
        let body = a.trim_start_matches('-');
        if a.starts_with("---") || body.is_empty() {
            return Err(format!("bad flag syntax: {a}"));
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let boolean = |v: Option<String>| -> Result<bool, String> {
            match v.as_deref() {
                None | Some("true") | Some("1") | Some("t") | Some("T") | Some("TRUE")
                | Some("True") => Ok(true),
                Some("false") | Some("0") | Some("f") | Some("F") | Some("FALSE")
                | Some("False") => Ok(false),
                Some(other) => Err(format!("invalid boolean value {other:?} for -{name}")),
            }
        };
        match name {
            "debug" => f.debug = boolean(inline)?,
            "v" => f.version = boolean(inline)?,
            "namespace" | "id" | "address" | "publish-binary" | "bundle" | "socket" => {
                let v = match inline {
                    Some(v) => v,
                    None => {
                        i += 1;
                        args.get(i)
                            .cloned()
                            .ok_or_else(|| format!("flag needs an argument: -{name}"))?
                    }
                };
                match name {
                    "namespace" => f.namespace = v,
                    "id" => f.id = v,
                    "address" => f.address = v,
                    "publish-binary" => f.publish_binary = v,
                    "bundle" => f.bundle = v,
                    _ => f.socket = v,
                }
            }
            other => return Err(format!("flag provided but not defined: -{other}")),
        }
        i += 1;
    }
    f.action = args.get(i).cloned();
    Ok(f)
}

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

/// Runs the binary; returns the process exit code.
pub fn run() -> i32 {
    let argv: Vec<String> = std::env::args().collect();
    let argv0 = argv.first().cloned().unwrap_or_default();
    let name = runtime_name(&argv0);
    let flags = match parse(argv.get(1..).unwrap_or_default()) {
        Ok(f) => f,
        Err(e) => {
            eprint!("{name}: {e}");
            return 2;
        }
    };
    if flags.version {
        println!(
            "{argv0}:\n  Version:  {}\n  Revision: wedge\n  Rust shim",
            env!("CARGO_PKG_VERSION")
        );
        return 0;
    }
    if flags.namespace.is_empty() {
        eprint!("shim namespace cannot be empty");
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
            eprint!("{name}: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_containerd_start_line() {
        let f = parse(&args(
            "-namespace default -address /run/c.sock -publish-binary /usr/bin/containerd -id c1 -debug start",
        ))
        .unwrap();
        assert_eq!(f.namespace, "default");
        assert_eq!(f.address, "/run/c.sock");
        assert_eq!(f.id, "c1");
        assert!(f.debug);
        assert_eq!(f.action.as_deref(), Some("start"));
    }

    #[test]
    fn go_flag_forms() {
        let f = parse(&args(
            "--namespace=ns --id x -debug=false -bundle=/b delete",
        ))
        .unwrap();
        assert_eq!(
            (f.namespace.as_str(), f.id.as_str(), f.bundle.as_str()),
            ("ns", "x", "/b")
        );
        assert!(!f.debug);
        assert_eq!(f.action.as_deref(), Some("delete"));
        assert_eq!(parse(&args("-namespace ns")).unwrap().action, None);
        assert!(parse(&args("-v")).unwrap().version);
        assert!(parse(&args("-nope 1")).is_err());
        assert!(parse(&args("-id")).is_err());
        assert!(parse(&args("-debug=maybe")).is_err());
    }

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
}
