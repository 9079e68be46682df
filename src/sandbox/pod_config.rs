//! What the shim needs of the pod's `runtime.v1.PodSandboxConfig` (the Any
//! in CreateSandbox), read field by field from its protobuf wire form: the
//! hostname, DNS, sysctls, namespace modes and cgroup parent. The rest (the
//! CRI API has far more) is skipped, so newer fields never break it.

use std::collections::BTreeMap;

use containerd_shim_protos::protobuf::rt::skip_field_for_tag;
use containerd_shim_protos::protobuf::CodedInputStream;

/// The type URL CRI gives the options of CreateSandbox.
pub const TYPE_URL: &str = "runtime.v1.PodSandboxConfig";

/// A namespace's mode (`runtime.v1.NamespaceMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// The pod's own (the default).
    #[default]
    Pod,
    /// Each container's own (pid only).
    Container,
    /// The node's.
    Node,
    /// Another container's (pid only).
    Target,
}

impl Mode {
    fn from(v: u64) -> Mode {
        match v {
            1 => Mode::Container,
            2 => Mode::Node,
            3 => Mode::Target,
            _ => Mode::Pod,
        }
    }
}

/// The DNS of the pod (`runtime.v1.DNSConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// What the shim uses of a pod's config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodConfig {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub dns: Option<Dns>,
    pub cgroup_parent: String,
    pub network: Mode,
    pub pid: Mode,
    pub ipc: Mode,
    /// User namespace mode (`NamespaceOption.userns_options.mode`): `Pod`
    /// asks for a user namespace of the pod's own.
    pub userns: Mode,
    pub sysctls: BTreeMap<String, String>,
}

type Result<T> = std::result::Result<T, String>;

/// Reads the fields of one message: `f(field number, wire type, value)`
/// for each varint or length-delimited field, skipping the others.
fn fields(bytes: &[u8], mut f: impl FnMut(u32, Value<'_>) -> Result<()>) -> Result<()> {
    let mut is = CodedInputStream::from_bytes(bytes);
    let e = |e: containerd_shim_protos::protobuf::Error| e.to_string();
    while let Some(tag) = is.read_raw_tag_or_eof().map_err(e)? {
        let (number, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => f(number, Value::Varint(is.read_raw_varint64().map_err(e)?))?,
            2 => {
                let b = is.read_bytes().map_err(e)?;
                f(number, Value::Bytes(&b))?
            }
            _ => skip_field_for_tag(tag, &mut is).map_err(e)?,
        }
    }
    Ok(())
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn string(v: Value<'_>) -> Result<String> {
    match v {
        Value::Bytes(b) => {
            String::from_utf8(b.to_vec()).map_err(|_| "a string that is not UTF-8".into())
        }
        Value::Varint(_) => Err("a number where a string belongs".into()),
    }
}

fn message<'a>(v: Value<'a>) -> Result<&'a [u8]> {
    match v {
        Value::Bytes(b) => Ok(b),
        Value::Varint(_) => Err("a number where a message belongs".into()),
    }
}

fn varint(v: Value<'_>) -> Result<u64> {
    match v {
        Value::Varint(n) => Ok(n),
        Value::Bytes(_) => Err("bytes where a number belongs".into()),
    }
}

impl PodConfig {
    /// Decodes the wire form of a `runtime.v1.PodSandboxConfig`.
    pub fn decode(bytes: &[u8]) -> Result<PodConfig> {
        let mut c = PodConfig {
            userns: Mode::Node,
            ..Default::default()
        };
        fields(bytes, |n, v| {
            match n {
                // metadata: name 1, uid 2, namespace 3, attempt 4
                1 => fields(message(v)?, |n, v| {
                    match n {
                        1 => c.name = string(v)?,
                        3 => c.namespace = string(v)?,
                        _ => {}
                    }
                    Ok(())
                })?,
                2 => c.hostname = string(v)?,
                4 => {
                    let mut d = Dns::default();
                    fields(message(v)?, |n, v| {
                        match n {
                            1 => d.servers.push(string(v)?),
                            2 => d.searches.push(string(v)?),
                            3 => d.options.push(string(v)?),
                            _ => {}
                        }
                        Ok(())
                    })?;
                    c.dns = Some(d);
                }
                8 => c.linux(message(v)?)?,
                _ => {}
            }
            Ok(())
        })?;
        Ok(c)
    }

    /// `LinuxPodSandboxConfig`: cgroup_parent 1, security_context 2,
    /// sysctls 3.
    fn linux(&mut self, bytes: &[u8]) -> Result<()> {
        fields(bytes, |n, v| {
            match n {
                1 => self.cgroup_parent = string(v)?,
                2 => fields(message(v)?, |n, v| {
                    // LinuxSandboxSecurityContext.namespace_options 1
                    if n == 1 {
                        self.namespaces(message(v)?)?;
                    }
                    Ok(())
                })?,
                3 => {
                    let (mut key, mut value) = (String::new(), String::new());
                    fields(message(v)?, |n, v| {
                        match n {
                            1 => key = string(v)?,
                            2 => value = string(v)?,
                            _ => {}
                        }
                        Ok(())
                    })?;
                    self.sysctls.insert(key, value);
                }
                _ => {}
            }
            Ok(())
        })
    }

    /// `NamespaceOption`: network 1, pid 2, ipc 3, target_id 4,
    /// userns_options 5 (mode 1).
    fn namespaces(&mut self, bytes: &[u8]) -> Result<()> {
        // An absent userns_options means the node's user namespace.
        self.userns = Mode::Node;
        fields(bytes, |n, v| {
            match n {
                1 => self.network = Mode::from(varint(v)?),
                2 => self.pid = Mode::from(varint(v)?),
                3 => self.ipc = Mode::from(varint(v)?),
                5 => {
                    self.userns = Mode::Pod;
                    fields(message(v)?, |n, v| {
                        if n == 1 {
                            self.userns = Mode::from(varint(v)?);
                        }
                        Ok(())
                    })?
                }
                _ => {}
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes fields by hand, as a protobuf encoder would.
    fn tag(n: u32, wire: u32) -> Vec<u8> {
        varint_bytes(((n << 3) | wire) as u64)
    }
    fn varint_bytes(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }
    fn bytes(n: u32, b: &[u8]) -> Vec<u8> {
        let mut out = tag(n, 2);
        out.extend(varint_bytes(b.len() as u64));
        out.extend_from_slice(b);
        out
    }
    fn num(n: u32, v: u64) -> Vec<u8> {
        let mut out = tag(n, 0);
        out.extend(varint_bytes(v));
        out
    }

    #[test]
    fn decodes_what_the_shim_uses_and_skips_the_rest() {
        let metadata = [
            bytes(1, b"web"),
            bytes(2, b"uid-1"),
            bytes(3, b"default"),
            num(4, 2),
        ]
        .concat();
        let dns = [
            bytes(1, b"10.96.0.10"),
            bytes(2, b"default.svc.cluster.local"),
            bytes(2, b"cluster.local"),
            bytes(3, b"ndots:5"),
        ]
        .concat();
        let ns = [num(1, 2), num(2, 1), num(3, 0), bytes(5, &num(1, 2))].concat();
        let security = [bytes(1, &ns), num(6, 1)].concat();
        let linux = [
            bytes(1, b"/kubepods/besteffort/pod1"),
            bytes(2, &security),
            bytes(
                3,
                &[bytes(1, b"net.ipv4.ip_forward"), bytes(2, b"1")].concat(),
            ),
            bytes(
                3,
                &[bytes(1, b"kernel.shm_rmid_forced"), bytes(2, b"1")].concat(),
            ),
        ]
        .concat();
        let config = [
            bytes(1, &metadata),
            bytes(2, b"web-0"),
            bytes(3, b"/var/log/pods/x"),
            bytes(4, &dns),
            bytes(6, &[bytes(1, b"app"), bytes(2, b"web")].concat()),
            bytes(8, &linux),
            // A field from a newer CRI API, and a fixed64: skipped.
            bytes(42, b"future"),
            [tag(43, 1), vec![0; 8]].concat(),
        ]
        .concat();
        let c = PodConfig::decode(&config).unwrap();
        assert_eq!(c.name, "web");
        assert_eq!(c.namespace, "default");
        assert_eq!(c.hostname, "web-0");
        let d = c.dns.unwrap();
        assert_eq!(d.servers, ["10.96.0.10"]);
        assert_eq!(d.searches, ["default.svc.cluster.local", "cluster.local"]);
        assert_eq!(d.options, ["ndots:5"]);
        assert_eq!(c.cgroup_parent, "/kubepods/besteffort/pod1");
        assert_eq!(
            (c.network, c.pid, c.ipc),
            (Mode::Node, Mode::Container, Mode::Pod)
        );
        assert_eq!(c.userns, Mode::Node);
        assert_eq!(c.sysctls["net.ipv4.ip_forward"], "1");
        assert_eq!(c.sysctls["kernel.shm_rmid_forced"], "1");
        // A user namespace of the pod's own.
        let ns = [bytes(5, &num(1, 0))].concat();
        let config = bytes(8, &bytes(2, &bytes(1, &ns)));
        assert_eq!(PodConfig::decode(&config).unwrap().userns, Mode::Pod);
        // Defaults: the pod's own namespaces, no user namespace asked.
        let c = PodConfig::decode(&[]).unwrap();
        assert_eq!((c.network, c.pid, c.ipc), (Mode::Pod, Mode::Pod, Mode::Pod));
        assert_eq!(c.userns, Mode::Node);
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        assert!(PodConfig::decode(&[0x12, 0xff]).is_err());
        assert!(PodConfig::decode(&bytes(2, &[0xff, 0xfe])).is_err());
        assert!(PodConfig::decode(&num(2, 5)).is_err());
    }
}
