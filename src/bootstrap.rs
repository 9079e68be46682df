//! The wire formats of containerd's short-lived shim calls, apart from the
//! Task API: what `start` reads on stdin and prints, and what `-info` prints.
//!
//! `start`'s stdin comes in one of three forms:
//!
//! | containerd | stdin | reply Wedge prints |
//! |---|---|---|
//! | 1.6 – 2.2 | a `google.protobuf.Any` with the runtime options, or nothing | the plain socket address (Task API v2) |
//! | 2.3, 2.4 | `containerd.runtime.bootstrap.v1.BootstrapParams` | a `BootstrapResult` protobuf: version 3, the address, `ttrpc` |
//!
//! The two protobufs cannot be told apart by decoding alone: an options Any
//! (type_url = 1, value = 2) decodes as a BootstrapParams (instance_id = 1,
//! namespace = 2), and a BootstrapParams decodes as an Any. A BootstrapParams
//! is recognised by its instance id and namespace, which must equal the `-id`
//! and `-namespace` flags containerd passes with it; anything else is read as
//! the legacy Any. Only a containerd that sent BootstrapParams gets a
//! BootstrapResult back: containerd 2.2 and older cannot parse one.
//!
//! `BootstrapParams` (field numbers): 1 instance_id, 2 namespace, 3 log_level
//! (open enum, negative for debug and trace), 4 containerd_version, 5 ttrpc
//! address, 6 gRPC address, 7 containerd binary, 8 repeated Extension
//! `{ Any value = 1 }` (the runtime options), 9 optional socket_dir.
//! `BootstrapResult`: 1 version, 2 address, 3 protocol, (4 capabilities,
//! 5 metadata, and since containerd 2.4, 6 repeated Extension: a
//! `containerd.types.MountCapabilities { repeated string types = 1;
//! repeated string transforms = 2 }` there names the mount types and
//! transforms a shim performs itself, so that containerd's mount manager
//! skips them).
//!
//! Wedge declares no mount capabilities, as the Go shim declares none. The
//! mount manager's types and transforms are not rootfs mounts a runc shim
//! can take over: `loop` hands later mounts a device node (for VM shims
//! that pass the image to a guest), `erofs` layers and the `format`,
//! `mkfs` and `mkdir` transforms need containerd's own state (templates
//! naming earlier mounts, its mkfs cache, its garbage collector). Left to
//! containerd, they reach Wedge as the plain mounts it applies: overlay
//! (idmapped or long), bind, and filesystems with a `loop` option. A shim
//! that declared them would get mounts it cannot perform.
//! `containerd.types.RuntimeInfo` (`-info`): 1 name, 2 version `{ version = 1,
//! revision = 2 }`, 3 options (the Any given on stdin), 4 features (an Any
//! holding the OCI runtime's `features` JSON), 5 annotations.

use containerd_shim_protos::protobuf::rt::WireType;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{CodedInputStream, CodedOutputStream, Message};

/// Log level containerd sends for debug (`LOG_LEVEL_DEBUG`).
pub const LOG_LEVEL_DEBUG: i32 = -4;
/// The type URL of an OCI runtime `features` document inside an Any.
pub const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// containerd 2.3's `BootstrapParams`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BootstrapParams {
    /// The task (or sandbox) id.
    pub instance_id: String,
    /// The namespace.
    pub namespace: String,
    /// containerd's log level (0 info, -4 debug, -8 trace).
    pub log_level: i32,
    /// containerd's version.
    pub containerd_version: String,
    /// containerd's ttrpc socket (events go there).
    pub ttrpc_address: String,
    /// containerd's gRPC socket.
    pub grpc_address: String,
    /// containerd's binary.
    pub containerd_binary: String,
    /// Extensions: the runtime options Any among them.
    pub extensions: Vec<Any>,
    /// Where the shim's socket goes, if containerd says.
    pub socket_dir: Option<String>,
}

fn bad(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl BootstrapParams {
    /// Decodes the protobuf (fails on malformed input or wrong wire types).
    pub fn decode(raw: &[u8]) -> Result<BootstrapParams, String> {
        let mut is = CodedInputStream::from_bytes(raw);
        let mut p = BootstrapParams::default();
        while let Some(tag) = is.read_raw_tag_or_eof().map_err(bad)? {
            let (field, wire) = (tag >> 3, tag & 7);
            let wire = WireType::new(wire).ok_or("bad wire type")?;
            let string_field = |is: &mut CodedInputStream| -> Result<String, String> {
                if wire != WireType::LengthDelimited {
                    return Err(format!("field {field}: wire type {wire:?}"));
                }
                is.read_string().map_err(bad)
            };
            match field {
                1 => p.instance_id = string_field(&mut is)?,
                2 => p.namespace = string_field(&mut is)?,
                3 if wire == WireType::Varint => p.log_level = is.read_int32().map_err(bad)?,
                4 => p.containerd_version = string_field(&mut is)?,
                5 => p.ttrpc_address = string_field(&mut is)?,
                6 => p.grpc_address = string_field(&mut is)?,
                7 => p.containerd_binary = string_field(&mut is)?,
                8 if wire == WireType::LengthDelimited => {
                    let ext = is.read_bytes().map_err(bad)?;
                    p.extensions.push(decode_extension(&ext)?);
                }
                9 => p.socket_dir = Some(string_field(&mut is)?),
                f if f <= 9 => return Err(format!("field {f}: wire type {wire:?}")),
                _ => is.skip_field(wire).map_err(bad)?,
            }
        }
        Ok(p)
    }

    /// The runtime options among the extensions: the first Any of a runtime
    /// options type.
    pub fn options(&self) -> Option<&Any> {
        self.extensions
            .iter()
            .find(|a| crate::options::is_options_type(&a.type_url))
    }

    /// Whether containerd logs at debug level or finer.
    pub fn debug(&self) -> bool {
        self.log_level <= LOG_LEVEL_DEBUG
    }
}

/// `Extension { google.protobuf.Any value = 1; }`.
fn decode_extension(raw: &[u8]) -> Result<Any, String> {
    let mut is = CodedInputStream::from_bytes(raw);
    let mut value = Any::new();
    while let Some(tag) = is.read_raw_tag_or_eof().map_err(bad)? {
        let wire = WireType::new(tag & 7).ok_or("bad wire type")?;
        if tag >> 3 == 1 && wire == WireType::LengthDelimited {
            value = Any::parse_from_bytes(&is.read_bytes().map_err(bad)?).map_err(bad)?;
        } else {
            is.skip_field(wire).map_err(bad)?;
        }
    }
    Ok(value)
}

/// What `start` found on stdin.
#[derive(Debug, Clone, PartialEq)]
pub enum StartInput {
    /// Nothing (containerd 1.6 – 2.2 without runtime options).
    Empty,
    /// The legacy runtime options Any (containerd 1.6 – 2.2).
    Legacy(Any),
    /// containerd 2.3's BootstrapParams.
    Bootstrap(BootstrapParams),
}

impl StartInput {
    /// Reads `start`'s stdin; `id` and `namespace` are the flags that came
    /// with it.
    pub fn decode(raw: &[u8], id: &str, namespace: &str) -> Result<StartInput, String> {
        if raw.is_empty() {
            return Ok(StartInput::Empty);
        }
        if let Ok(p) = BootstrapParams::decode(raw) {
            if p.instance_id == id && p.namespace == namespace {
                return Ok(StartInput::Bootstrap(p));
            }
        }
        Any::parse_from_bytes(raw)
            .map(StartInput::Legacy)
            .map_err(|e| format!("decode options: {e}"))
    }

    /// The runtime options Any, in whichever form it came.
    pub fn options(&self) -> Option<&Any> {
        match self {
            StartInput::Empty => None,
            StartInput::Legacy(a) => Some(a),
            StartInput::Bootstrap(p) => p.options(),
        }
    }

    /// The socket directory containerd asks for, if any.
    pub fn socket_dir(&self) -> Option<&str> {
        match self {
            StartInput::Bootstrap(p) => p.socket_dir.as_deref().filter(|d| !d.is_empty()),
            _ => None,
        }
    }

    /// What `start` prints for `address`: a `BootstrapResult` protobuf to a
    /// containerd that sent BootstrapParams, the plain address otherwise.
    pub fn reply(&self, address: &str) -> Vec<u8> {
        match self {
            StartInput::Bootstrap(_) => bootstrap_result(address),
            _ => address.as_bytes().to_vec(),
        }
    }
}

fn encode(
    f: impl FnOnce(&mut CodedOutputStream) -> containerd_shim_protos::protobuf::Result<()>,
) -> Vec<u8> {
    let mut v = Vec::new();
    {
        let mut os = CodedOutputStream::vec(&mut v);
        // Writing into a Vec cannot fail.
        f(&mut os)
            .and_then(|()| os.flush())
            .expect("encode into memory");
    }
    v
}

/// `BootstrapResult { version: 3, address, protocol: "ttrpc" }`.
pub fn bootstrap_result(address: &str) -> Vec<u8> {
    encode(|os| {
        os.write_int32(1, 3)?;
        os.write_string(2, address)?;
        os.write_string(3, "ttrpc")
    })
}

/// `containerd.types.RuntimeInfo`, as `-info` prints it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeInfo {
    /// Runtime name (`io.containerd.wedge.v2`, or `io.containerd.runc.v2`
    /// when installed as the drop-in).
    pub name: String,
    /// Wedge's version.
    pub version: String,
    /// The revision Wedge was built from.
    pub revision: String,
    /// The options Any given on stdin, echoed.
    pub options: Option<Any>,
    /// The OCI runtime's `features` JSON, if it has one.
    pub features: Option<Vec<u8>>,
}

impl RuntimeInfo {
    /// The protobuf encoding.
    pub fn encode(&self) -> Vec<u8> {
        let version = encode(|os| {
            os.write_string(1, &self.version)?;
            os.write_string(2, &self.revision)
        });
        encode(|os| {
            os.write_string(1, &self.name)?;
            os.write_bytes(2, &version)?;
            if let Some(o) = &self.options {
                os.write_bytes(3, &o.write_to_bytes()?)?;
            }
            if let Some(f) = &self.features {
                let mut any = Any::new();
                any.type_url = FEATURES_TYPE_URL.into();
                any.value = f.clone();
                os.write_bytes(4, &any.write_to_bytes()?)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/bootstrap")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn containerd_2_3_start_without_options() {
        let raw = fixture("v2.3.4-start-no-options.stdin");
        let StartInput::Bootstrap(p) = StartInput::decode(&raw, "c1", "capture").unwrap() else {
            panic!("not read as BootstrapParams");
        };
        assert_eq!(p.containerd_version, "v2.3.4");
        assert_eq!(p.log_level, 0);
        assert!(p.grpc_address.ends_with("/containerd.sock"));
        assert!(p.ttrpc_address.ends_with("/containerd.sock.ttrpc"));
        assert!(p.containerd_binary.ends_with("/containerd"));
        assert!(p.socket_dir.as_deref().is_some_and(|d| d.ends_with("/s")));
        assert!(p.options().is_none());
        // The same bytes with other flags are not ours: read as an Any, they
        // name no options type, which is what Wedge used to refuse.
        let legacy = StartInput::decode(&raw, "other", "capture").unwrap();
        assert!(matches!(legacy, StartInput::Legacy(ref a) if a.type_url == "c1"));
    }

    #[test]
    fn containerd_2_3_start_with_runc_options_and_debug() {
        let raw = fixture("v2.3.4-start-runc-binary-debug.stdin");
        let input = StartInput::decode(&raw, "c7", "capture").unwrap();
        let StartInput::Bootstrap(p) = &input else {
            panic!("not read as BootstrapParams");
        };
        assert!(p.debug());
        assert_eq!(p.log_level, LOG_LEVEL_DEBUG);
        let opts = crate::options::Options::from_any(input.options()).unwrap();
        assert_eq!(opts.binary(), "/usr/sbin/runc");
    }

    #[test]
    fn containerd_2_3_start_with_cri_style_runtime_options() {
        let raw = fixture("v2.3.4-start-runtime-config-path.stdin");
        let input = StartInput::decode(&raw, "c2", "capture").unwrap();
        let a = input.options().expect("options extension");
        assert_eq!(a.type_url, "runtimeoptions.v1.Options");
    }

    #[test]
    fn containerd_2_4_beta_start() {
        let raw = fixture("v2.4.0-beta.0-start-runc-binary.stdin");
        let StartInput::Bootstrap(p) = StartInput::decode(&raw, "c2", "capture").unwrap() else {
            panic!("not read as BootstrapParams");
        };
        assert_eq!(p.containerd_version, "v2.4.0-beta.0");
        assert!(p.options().is_some());
    }

    #[test]
    fn legacy_forms_of_containerd_1_6_and_2_1() {
        for (name, id) in [
            ("v1.6.20-start-runc-options.stdin", "l1"),
            ("v2.1.9-start-runc-options.stdin", "l2"),
        ] {
            let raw = fixture(name);
            let input = StartInput::decode(&raw, id, "capture").unwrap();
            let StartInput::Legacy(a) = &input else {
                panic!("{name}: not read as the legacy Any");
            };
            assert_eq!(a.type_url, "containerd.runc.v1.Options", "{name}");
            assert_eq!(input.reply("unix:///s/x"), b"unix:///s/x", "{name}");
            assert_eq!(input.socket_dir(), None);
        }
        assert_eq!(
            StartInput::decode(b"", "x", "y").unwrap(),
            StartInput::Empty
        );
        assert!(StartInput::decode(&[0xff, 0xff], "x", "y").is_err());
    }

    #[test]
    fn bootstrap_result_matches_the_go_shims_bytes() {
        let go = fixture("v2.3.4-go-shim-start.stdout");
        let BootstrapResultView {
            version,
            address,
            protocol,
        } = view_result(&go);
        assert_eq!((version, protocol.as_str()), (3, "ttrpc"));
        assert_eq!(bootstrap_result(&address), go);
    }

    struct BootstrapResultView {
        version: i32,
        address: String,
        protocol: String,
    }

    fn view_result(raw: &[u8]) -> BootstrapResultView {
        let mut is = CodedInputStream::from_bytes(raw);
        let mut v = BootstrapResultView {
            version: 0,
            address: String::new(),
            protocol: String::new(),
        };
        while let Some(tag) = is.read_raw_tag_or_eof().unwrap() {
            match tag >> 3 {
                1 => v.version = is.read_int32().unwrap(),
                2 => v.address = is.read_string().unwrap(),
                3 => v.protocol = is.read_string().unwrap(),
                _ => is.skip_field(WireType::new(tag & 7).unwrap()).unwrap(),
            }
        }
        v
    }

    /// Field numbers and wire types of a message, in order.
    fn shape(raw: &[u8]) -> Vec<(u32, u32)> {
        let mut is = CodedInputStream::from_bytes(raw);
        let mut v = Vec::new();
        while let Some(tag) = is.read_raw_tag_or_eof().unwrap() {
            v.push((tag >> 3, tag & 7));
            is.skip_field(WireType::new(tag & 7).unwrap()).unwrap();
        }
        v
    }

    #[test]
    fn runtime_info_has_the_go_shims_fields() {
        // The Go shim of containerd 2.3.4, `-info` with runc options on
        // stdin: name, version, options, features.
        let go = fixture("v2.3.4-go-shim-info-runc-options.stdout");
        let mut opts = Any::new();
        opts.type_url = "containerd.runc.v1.Options".into();
        let ours = RuntimeInfo {
            name: "io.containerd.runc.v2".into(),
            version: "0.1.0".into(),
            revision: "abc".into(),
            options: Some(opts),
            features: Some(br#"{"ociVersionMin":"1.0.0"}"#.to_vec()),
        }
        .encode();
        assert_eq!(shape(&ours), shape(&go));
        let features = |raw: &[u8]| {
            let mut is = CodedInputStream::from_bytes(raw);
            while let Some(tag) = is.read_raw_tag_or_eof().unwrap() {
                if tag >> 3 == 4 {
                    return Any::parse_from_bytes(&is.read_bytes().unwrap()).unwrap();
                }
                is.skip_field(WireType::new(tag & 7).unwrap()).unwrap();
            }
            panic!("no features");
        };
        assert_eq!(features(&ours).type_url, features(&go).type_url);
        // Without options and without features: name and version only.
        let bare = RuntimeInfo {
            name: "io.containerd.wedge.v2".into(),
            ..Default::default()
        }
        .encode();
        assert_eq!(shape(&bare), vec![(1, 2), (2, 2)]);
    }
}
