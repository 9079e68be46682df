//! The parsed command line, shared by [`crate::cli`] (which dispatches on
//! it), [`crate::manager`] and [`crate::serve`]. Parsing follows Go's `flag`
//! package, as containerd's shims do: `-x v`, `-x=v`, `--x=v`, boolean
//! `-debug` / `-debug=false`, flags stop at the first non-flag argument or
//! at `--`.

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
    /// `-v` / `-version`.
    pub version: bool,
    /// `-info`: print the runtime's `RuntimeInfo`.
    pub info: bool,
    /// `-h` / `-help`.
    pub help: bool,
    /// `-upgrade-check`: say what this binary is, or check a handover state
    /// on stdin (asked by a shim about to upgrade to it).
    pub upgrade_check: bool,
    /// `start`, `delete`, `upgrade`, or `None` for serve mode.
    pub action: Option<String>,
    /// Arguments after the action.
    pub args: Vec<String>,
}

/// The flags and what they mean, for the usage text.
pub const FLAG_HELP: &[(&str, &str)] = &[
    ("-namespace string", "namespace of the container (required)"),
    ("-id string", "id of the task"),
    ("-address string", "containerd's gRPC socket"),
    (
        "-publish-binary string",
        "containerd binary (accepted; events go to $TTRPC_ADDRESS)",
    ),
    ("-bundle string", "bundle directory (delete)"),
    (
        "-socket string",
        "serve on this socket path instead of fd 3 (daemon)",
    ),
    ("-debug", "log at debug level"),
    (
        "-info",
        "print the runtime's RuntimeInfo protobuf (name, version, options, OCI features)",
    ),
    ("-v, -version", "print the version and revision"),
    (
        "-upgrade-check",
        "print what this binary is, or check a handover state on stdin (asked by an upgrading shim)",
    ),
    ("-h, -help", "print this help"),
];

fn boolean(name: &str, v: Option<&str>) -> Result<bool, String> {
    match v {
        None | Some("true" | "1" | "t" | "T" | "TRUE" | "True") => Ok(true),
        Some("false" | "0" | "f" | "F" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(format!("invalid boolean value {other:?} for -{name}")),
    }
}

/// Parses arguments (without argv\[0\]).
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
        match name {
            "debug" => f.debug = boolean(name, inline.as_deref())?,
            "v" | "version" => f.version = boolean(name, inline.as_deref())?,
            "info" => f.info = boolean(name, inline.as_deref())?,
            "h" | "help" => f.help = boolean(name, inline.as_deref())?,
            "upgrade-check" => f.upgrade_check = boolean(name, inline.as_deref())?,
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
    f.args = args.get(i + 1..).unwrap_or_default().to_vec();
    Ok(f)
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
        assert!(parse(&args("--version")).unwrap().version);
        assert!(parse(&args("-info")).unwrap().info);
        assert!(parse(&args("-h")).unwrap().help);
        assert!(parse(&args("-help")).unwrap().help);
        assert!(parse(&args("-nope 1")).is_err());
        assert!(parse(&args("-id")).is_err());
        assert!(parse(&args("-debug=maybe")).is_err());
    }
}
