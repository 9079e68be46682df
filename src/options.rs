//! Runtime options: `containerd.runc.v1.Options` (what containerd and Docker
//! send) and `runtimeoptions.v1.Options` (what the CRI plugin sends to runtime
//! types not named `io.containerd.runc.*`). Any other type is refused.
//!
//! Also writes and reads the bundle's `options.json` and `runtime` files, the
//! record `shim delete` needs when the daemon is gone.

use std::path::Path;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{CodedInputStream, Message};
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use serde_json::json;

/// Errors decoding options.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    /// The Any names a type this shim does not understand.
    #[error("unsupported runtime options type {0:?}")]
    UnknownType(String),
    /// The bytes do not decode as the named type.
    #[error("malformed runtime options {type_url}: {reason}")]
    Malformed {
        /// The type that failed to decode.
        type_url: String,
        /// Decoder message.
        reason: String,
    },
}

/// The options the shim acts on, whatever message carried them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Runtime binary; empty means `runc`.
    pub binary_name: String,
    /// Runtime state root; empty means `/run/containerd/runc`.
    pub root: String,
    /// Pass `--systemd-cgroup`.
    pub systemd_cgroup: bool,
    /// Pass `--no-pivot` to create.
    pub no_pivot_root: bool,
    /// Pass `--no-new-keyring` to create.
    pub no_new_keyring: bool,
    /// Owner of the container ends of stdio pipes.
    pub io_uid: u32,
    /// Group of the container ends of stdio pipes.
    pub io_gid: u32,
    /// CRIU binary for checkpoint/restore.
    pub criu_path: String,
    /// cgroup the shim itself moves into (only read by `start`).
    pub shim_cgroup: String,
    /// Cap of each output stream's spill (`OutputSpillMax` in a CRI
    /// options file); `None` means the default.
    pub output_spill_max: Option<u64>,
}

/// Whether `type_url` names a runtime options message this shim reads.
pub fn is_options_type(type_url: &str) -> bool {
    matches!(
        type_url.rsplit('/').next().unwrap_or(type_url),
        "containerd.runc.v1.Options"
            | "runtimeoptions.v1.Options"
            | "cri.runtimeoptions.v1.Options"
            | "containerd.runtimeoptions.v1.Options"
    )
}

/// Default runtime state root.
pub const DEFAULT_ROOT: &str = "/run/containerd/runc";

impl Options {
    /// The runtime binary to execute.
    pub fn binary(&self) -> &str {
        if self.binary_name.is_empty() {
            "runc"
        } else {
            &self.binary_name
        }
    }

    /// The runtime's `--root` for namespace `ns`.
    pub fn runtime_root(&self, ns: &str) -> String {
        let root = if self.root.is_empty() {
            DEFAULT_ROOT
        } else {
            &self.root
        };
        format!("{}/{}", root.trim_end_matches('/'), ns)
    }

    /// Decodes the options carried in an Any (absent or empty means defaults).
    pub fn from_any(any: Option<&Any>) -> Result<Self, OptionsError> {
        match any {
            None => Ok(Options::default()),
            Some(a) if a.type_url.is_empty() => Ok(Options::default()),
            Some(a) => Self::decode(&a.type_url, &a.value),
        }
    }

    /// Decodes `value` as the message named by `type_url`.
    pub fn decode(type_url: &str, value: &[u8]) -> Result<Self, OptionsError> {
        let name = type_url.rsplit('/').next().unwrap_or(type_url);
        let malformed = |e: &dyn std::fmt::Display| OptionsError::Malformed {
            type_url: type_url.to_string(),
            reason: e.to_string(),
        };
        match name {
            "containerd.runc.v1.Options" => {
                let o = RuncOptions::parse_from_bytes(value).map_err(|e| malformed(&e))?;
                let criu_path = criu_path(&o);
                Ok(Options {
                    binary_name: o.binary_name,
                    root: o.root,
                    systemd_cgroup: o.systemd_cgroup,
                    no_pivot_root: o.no_pivot_root,
                    no_new_keyring: o.no_new_keyring,
                    io_uid: o.io_uid,
                    io_gid: o.io_gid,
                    criu_path,
                    shim_cgroup: o.shim_cgroup,
                    output_spill_max: None,
                })
            }
            "runtimeoptions.v1.Options"
            | "cri.runtimeoptions.v1.Options"
            | "containerd.runtimeoptions.v1.Options" => {
                let ro = decode_runtimeoptions(value).map_err(|e| malformed(&e))?;
                let body = if !ro.config_body.is_empty() {
                    ro.config_body
                } else if !ro.config_path.is_empty() {
                    read_config(&ro.config_path).map_err(|e| malformed(&e))?
                } else {
                    String::new()
                };
                Ok(Self::from_toml(&body))
            }
            _ => Err(OptionsError::UnknownType(type_url.to_string())),
        }
    }

    /// Reads the runc option keys from a flat TOML table (the file a CRI
    /// runtime handler's `ConfigPath` names). Unknown keys are ignored.
    pub fn from_toml(body: &str) -> Self {
        let mut o = Options::default();
        for line in body.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim();
            let s = v.trim_matches('"').to_string();
            match k.trim() {
                "BinaryName" => o.binary_name = s,
                "Root" => o.root = s,
                "CriuPath" => o.criu_path = s,
                "ShimCgroup" => o.shim_cgroup = s,
                "SystemdCgroup" => o.systemd_cgroup = v == "true",
                "NoPivotRoot" => o.no_pivot_root = v == "true",
                "NoNewKeyring" => o.no_new_keyring = v == "true",
                "IoUid" => o.io_uid = v.parse().unwrap_or(0),
                "IoGid" => o.io_gid = v.parse().unwrap_or(0),
                "OutputSpillMax" => o.output_spill_max = crate::stdio::spill::parse_size(&s),
                _ => {}
            }
        }
        o
    }

    /// The `options.json` record, with Go's field names.
    pub fn to_json(&self) -> String {
        json!({
            "NoPivotRoot": self.no_pivot_root,
            "NoNewKeyring": self.no_new_keyring,
            "ShimCgroup": self.shim_cgroup,
            "IoUid": self.io_uid,
            "IoGid": self.io_gid,
            "BinaryName": self.binary_name,
            "Root": self.root,
            "CriuPath": self.criu_path,
            "SystemdCgroup": self.systemd_cgroup,
            "CriuImagePath": "",
            "CriuWorkPath": "",
        })
        .to_string()
    }

    /// Parses an `options.json` record; missing fields take defaults.
    pub fn from_json(s: &str) -> Self {
        let v: serde_json::Value = serde_json::from_str(s).unwrap_or_default();
        let st = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        let b = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
        let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0) as u32;
        Options {
            binary_name: st("BinaryName"),
            root: st("Root"),
            systemd_cgroup: b("SystemdCgroup"),
            no_pivot_root: b("NoPivotRoot"),
            no_new_keyring: b("NoNewKeyring"),
            io_uid: n("IoUid"),
            io_gid: n("IoGid"),
            criu_path: st("CriuPath"),
            shim_cgroup: st("ShimCgroup"),
            output_spill_max: None,
        }
    }

    /// Writes `options.json` and `runtime` (mode 0600) into the bundle.
    pub fn write_bundle_files(&self, bundle: &Path) -> std::io::Result<()> {
        crate::fsutil::write_private(&bundle.join("options.json"), self.to_json().as_bytes())?;
        crate::fsutil::write_private(&bundle.join("runtime"), self.binary_name.as_bytes())
    }
}

/// `criu_path` (field 8) was dropped from the generated message; containerd
/// 1.6 still sends it, so read it from the unknown fields.
fn criu_path(o: &RuncOptions) -> String {
    use containerd_shim_protos::protobuf::UnknownValueRef;
    match o.special_fields.unknown_fields().get(8) {
        Some(UnknownValueRef::LengthDelimited(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    }
}

#[derive(Default)]
struct RuntimeOptionsMsg {
    config_path: String,
    config_body: String,
}

/// Largest CRI options file read (they hold a few keys).
const MAX_CONFIG: u64 = 1 << 20;

/// Reads a CRI options file: a regular file of at most [`MAX_CONFIG`] bytes
/// (never a FIFO or a device that would block or never end).
fn read_config(path: &str) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{path} is not a regular file"),
        ));
    }
    if meta.len() > MAX_CONFIG {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{path} is {} bytes, over {MAX_CONFIG}", meta.len()),
        ));
    }
    let mut s = String::new();
    f.take(MAX_CONFIG).read_to_string(&mut s)?;
    Ok(s)
}

/// Decodes `runtimeoptions.v1.Options{type_url=1, config_path=2, config_body=3}`.
fn decode_runtimeoptions(
    value: &[u8],
) -> containerd_shim_protos::protobuf::Result<RuntimeOptionsMsg> {
    let mut is = CodedInputStream::from_bytes(value);
    let mut m = RuntimeOptionsMsg::default();
    while let Some(tag) = is.read_raw_tag_or_eof()? {
        match tag {
            10 => {
                is.read_string()?;
            }
            18 => m.config_path = is.read_string()?,
            26 => m.config_body = is.read_string()?,
            _ => is.skip_field(
                containerd_shim_protos::protobuf::rt::WireType::new(tag & 7).ok_or_else(|| {
                    containerd_shim_protos::protobuf::Error::from(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "bad wire type",
                    ))
                })?,
            )?,
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(url: &str, value: Vec<u8>) -> Any {
        let mut a = Any::new();
        a.type_url = url.into();
        a.value = value;
        a
    }

    /// A CRI options file is a small regular file: a FIFO (which would
    /// block `start` for good) or a device is refused, not read.
    #[test]
    fn only_regular_options_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let file = dir.path().join("opts.toml");
        std::fs::write(&file, "BinaryName = \"crun\"\n").unwrap();
        // runtimeoptions.v1.Options{config_path}
        let msg = |p: &std::path::Path| {
            let p = p.to_str().unwrap().as_bytes();
            let mut v = vec![18, p.len() as u8];
            v.extend_from_slice(p);
            v
        };
        let o = Options::decode("runtimeoptions.v1.Options", &msg(&file)).unwrap();
        assert_eq!(o.binary_name, "crun");
        for refused in [fifo.as_path(), std::path::Path::new("/dev/zero")] {
            let e = Options::decode("runtimeoptions.v1.Options", &msg(refused)).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
    }

    #[test]
    fn decodes_runc_options() {
        let mut o = RuncOptions::new();
        o.binary_name = "/usr/bin/crun".into();
        o.root = "/run/x".into();
        o.systemd_cgroup = true;
        o.io_uid = 7;
        let a = any("containerd.runc.v1.Options", o.write_to_bytes().unwrap());
        let got = Options::from_any(Some(&a)).unwrap();
        assert_eq!(got.binary(), "/usr/bin/crun");
        assert_eq!(got.runtime_root("ns"), "/run/x/ns");
        assert!(got.systemd_cgroup);
        assert_eq!(got.io_uid, 7);
    }

    #[test]
    fn defaults_and_unknown_types() {
        let d = Options::from_any(None).unwrap();
        assert_eq!(d.binary(), "runc");
        assert_eq!(d.runtime_root("k8s.io"), "/run/containerd/runc/k8s.io");
        let bad = any("example.com/Other", vec![1, 2, 3]);
        assert_eq!(
            Options::from_any(Some(&bad)),
            Err(OptionsError::UnknownType("example.com/Other".into()))
        );
        let garbage = any("containerd.runc.v1.Options", vec![0xff, 0xff, 0xff]);
        assert!(matches!(
            Options::from_any(Some(&garbage)),
            Err(OptionsError::Malformed { .. })
        ));
    }

    #[test]
    fn decodes_cri_runtimeoptions_body() {
        // type_url (1) = "x", config_body (3) = toml
        let body = "BinaryName = \"/opt/runc\"\nSystemdCgroup = true\n";
        let mut v = vec![10, 1, b'x', 26, body.len() as u8];
        v.extend_from_slice(body.as_bytes());
        let got = Options::decode("runtimeoptions.v1.Options", &v).unwrap();
        assert_eq!(got.binary_name, "/opt/runc");
        assert!(got.systemd_cgroup);
        let got = Options::from_toml("OutputSpillMax = \"8M\"\n");
        assert_eq!(got.output_spill_max, Some(8 << 20));
    }

    #[test]
    fn json_round_trip_uses_go_names() {
        let o = Options {
            binary_name: "runc".into(),
            root: "/r".into(),
            no_pivot_root: true,
            ..Default::default()
        };
        let j = o.to_json();
        assert!(j.contains("\"BinaryName\":\"runc\""));
        assert_eq!(Options::from_json(&j), o);
    }
}
