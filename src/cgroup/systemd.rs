//! Just enough of systemd's D-Bus API to put a running process in a
//! transient scope of a slice (`StartTransientUnit`), as runc's systemd
//! cgroup driver does for a container: the pod holder under the systemd
//! driver. Spoken on systemd's private socket (root only, no bus daemon,
//! no `Hello`), with the D-Bus wire format written and read here (a
//! method call with strings, booleans and a `u32` array; its reply or
//! error), so no D-Bus library is linked for one call.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// systemd's own socket: D-Bus to the manager without a bus daemon.
pub const PRIVATE_SOCKET: &str = "/run/systemd/private";
/// How long the whole call may take.
const BOUND: Duration = Duration::from_secs(10);

/// A property of the unit: `(name, value)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Bool(bool),
    U32s(Vec<u32>),
}

/// Starts transient scope `unit` in `slice` holding `pid` (its cgroup is
/// made by systemd, and removed by it once the scope is empty).
pub async fn start_scope(socket: &str, unit: &str, slice: &str, pid: u32) -> Result<(), String> {
    let props = scope_properties(slice, pid);
    let msg = start_transient_unit(unit, &props, 1);
    tokio::time::timeout(BOUND, call(socket, &msg))
        .await
        .map_err(|_| format!("systemd did not answer within {BOUND:?}"))?
}

/// What runc gives a container's scope, for a process already running.
pub fn scope_properties(slice: &str, pid: u32) -> Vec<(&'static str, Value)> {
    vec![
        ("Description", Value::Str("pod holder".into())),
        ("Slice", Value::Str(slice.into())),
        ("PIDs", Value::U32s(vec![pid])),
        ("Delegate", Value::Bool(true)),
        ("DefaultDependencies", Value::Bool(false)),
        ("MemoryAccounting", Value::Bool(true)),
        ("CPUAccounting", Value::Bool(true)),
        ("TasksAccounting", Value::Bool(true)),
    ]
}

/// Sends one method call and reads until its reply.
async fn call(socket: &str, msg: &[u8]) -> Result<(), String> {
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect to systemd ({socket}): {e}"))?;
    let uid = rustix::process::getuid().as_raw().to_string();
    let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
    s.write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())
        .await
        .map_err(|e| format!("systemd: {e}"))?;
    let line = read_line(&mut s).await?;
    if !line.starts_with("OK ") {
        return Err(format!("systemd refused authentication: {line:?}"));
    }
    s.write_all(b"BEGIN\r\n").await.map_err(|e| e.to_string())?;
    s.write_all(msg)
        .await
        .map_err(|e| format!("systemd: {e}"))?;
    loop {
        let mut fixed = [0u8; 16];
        s.read_exact(&mut fixed)
            .await
            .map_err(|e| format!("systemd's reply: {e}"))?;
        let (fields_len, body_len) = lengths(&fixed)?;
        let total = pad8(16 + fields_len) + body_len;
        if total > 1 << 20 {
            return Err("systemd's reply is too long".into());
        }
        let mut rest = vec![0u8; total - 16];
        s.read_exact(&mut rest)
            .await
            .map_err(|e| format!("systemd's reply: {e}"))?;
        let whole = [&fixed[..], &rest].concat();
        match parse_reply(&whole)? {
            Reply::Return { reply_to: 1 } => return Ok(()),
            Reply::Error {
                reply_to: 1,
                name,
                message,
            } => return Err(format!("systemd: {name}: {message}")),
            _ => {} // a signal or another call's: not ours
        }
    }
}

async fn read_line(s: &mut tokio::net::UnixStream) -> Result<String, String> {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        if line.len() > 512 {
            return Err("systemd's authentication line is too long".into());
        }
        line.push(s.read_u8().await.map_err(|e| format!("systemd: {e}"))?);
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// Header fields' and body's lengths from a message's first 16 bytes.
fn lengths(fixed: &[u8; 16]) -> Result<(usize, usize), String> {
    let u = |i: usize| {
        let b = [fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]];
        match fixed[0] {
            b'l' => Ok(u32::from_le_bytes(b) as usize),
            b'B' => Ok(u32::from_be_bytes(b) as usize),
            e => Err(format!("systemd's reply: byte order {e:#x}")),
        }
    };
    Ok((u(12)?, u(4)?))
}

/// The message `StartTransientUnit(unit, "fail", props, [])`, serial
/// `serial`, little-endian.
pub fn start_transient_unit(unit: &str, props: &[(&str, Value)], serial: u32) -> Vec<u8> {
    let mut body = Writer::default();
    body.str(unit);
    // "fail": an existing unit of that name is an error, never replaced.
    body.str("fail");
    body.array(8, |w| {
        for (name, value) in props {
            w.align(8);
            w.str(name);
            match value {
                Value::Str(s) => {
                    w.sig("s");
                    w.str(s);
                }
                Value::Bool(b) => {
                    w.sig("b");
                    w.u32(u32::from(*b));
                }
                Value::U32s(v) => {
                    w.sig("au");
                    w.array(4, |w| v.iter().for_each(|x| w.u32(*x)));
                }
            }
        }
    });
    body.array(8, |_| {}); // aux units: none
    let mut m = Writer::default();
    m.buf.extend_from_slice(&[b'l', 1, 0, 1]); // method call, no flags, v1
    m.u32(body.buf.len() as u32);
    m.u32(serial);
    m.array(8, |w| {
        let field = |w: &mut Writer, code: u8, sig: &str, val: &str| {
            w.align(8);
            w.buf.push(code);
            w.sig(sig);
            if sig == "g" {
                w.sig(val);
            } else {
                w.str(val);
            }
        };
        field(w, 1, "o", "/org/freedesktop/systemd1");
        field(w, 2, "s", "org.freedesktop.systemd1.Manager");
        field(w, 3, "s", "StartTransientUnit");
        field(w, 6, "s", "org.freedesktop.systemd1");
        field(w, 8, "g", "ssa(sv)a(sa(sv))");
    });
    m.align(8);
    m.buf.extend_from_slice(&body.buf);
    m.buf
}

/// D-Bus marshalling (little-endian), aligned from the buffer's start
/// (a body starts 8-aligned in its message, so the same holds there).
#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn align(&mut self, n: usize) {
        while !self.buf.len().is_multiple_of(n) {
            self.buf.push(0);
        }
    }
    fn u32(&mut self, v: u32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }
    fn sig(&mut self, s: &str) {
        self.buf.push(s.len() as u8);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }
    /// An array whose elements align to `elem_align`: its byte length
    /// leaves out the padding before the first element.
    fn array(&mut self, elem_align: usize, f: impl FnOnce(&mut Writer)) {
        self.u32(0);
        let len_at = self.buf.len() - 4;
        self.align(elem_align);
        let start = self.buf.len();
        f(self);
        let len = (self.buf.len() - start) as u32;
        self.buf[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// What a message read back is, as far as a caller cares.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Return {
        reply_to: u32,
    },
    Error {
        reply_to: u32,
        name: String,
        message: String,
    },
    Other,
}

/// Reads a whole message's kind, reply serial, and for an error its name
/// and first string argument.
fn parse_reply(m: &[u8]) -> Result<Reply, String> {
    let bad = || "systemd's reply does not parse".to_string();
    let le = match m.first() {
        Some(b'l') => true,
        Some(b'B') => false,
        _ => return Err(bad()),
    };
    let mut r = Reader { m, pos: 0, le };
    let kind = *m.get(1).ok_or_else(bad)?;
    r.pos = 12;
    let fields_len = r.u32().ok_or_else(bad)? as usize;
    let end = r.pos + fields_len;
    let (mut reply_to, mut name, mut sig) = (0, String::new(), String::new());
    while r.pos < end {
        r.align(8);
        let code = r.byte().ok_or_else(bad)?;
        let vsig = r.sig().ok_or_else(bad)?;
        match vsig.as_str() {
            "s" | "o" => {
                let v = r.str().ok_or_else(bad)?;
                if code == 4 {
                    name = v;
                }
            }
            "g" => {
                let v = r.sig().ok_or_else(bad)?;
                if code == 8 {
                    sig = v;
                }
            }
            "u" => {
                let v = r.u32().ok_or_else(bad)?;
                if code == 5 {
                    reply_to = v;
                }
            }
            _ => return Err(bad()),
        }
    }
    r.pos = pad8(end);
    Ok(match kind {
        2 => Reply::Return { reply_to },
        3 => Reply::Error {
            reply_to,
            name,
            message: if sig.starts_with('s') {
                r.str().unwrap_or_default()
            } else {
                String::new()
            },
        },
        _ => Reply::Other,
    })
}

struct Reader<'a> {
    m: &'a [u8],
    pos: usize,
    le: bool,
}

impl Reader<'_> {
    fn align(&mut self, n: usize) {
        self.pos = self.pos.div_ceil(n) * n;
    }
    fn byte(&mut self) -> Option<u8> {
        let b = *self.m.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        self.align(4);
        let b: [u8; 4] = self.m.get(self.pos..self.pos + 4)?.try_into().ok()?;
        self.pos += 4;
        Some(if self.le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }
    fn bytes(&mut self, n: usize) -> Option<String> {
        let s = self.m.get(self.pos..self.pos + n)?;
        self.pos += n + 1; // and its NUL
        Some(String::from_utf8_lossy(s).into_owned())
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }
    fn sig(&mut self) -> Option<String> {
        let n = self.byte()? as usize;
        self.bytes(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The call's bytes, checked field by field against the D-Bus
    /// specification's layout (offsets worked out by hand).
    #[test]
    fn the_call_is_laid_out_as_the_specification_says() {
        let props = [
            ("Slice", Value::Str("a.slice".into())),
            ("PIDs", Value::U32s(vec![7, 9])),
            ("Delegate", Value::Bool(true)),
        ];
        let m = start_transient_unit("x.scope", &props, 5);
        assert_eq!(&m[..4], &[b'l', 1, 0, 1]);
        let u = |i: usize| u32::from_le_bytes(m[i..i + 4].try_into().unwrap());
        assert_eq!(u(8), 5, "serial");
        let fields_len = u(12) as usize;
        let body_at = pad8(16 + fields_len);
        assert_eq!(m.len(), body_at + u(4) as usize, "body length");
        let header = &m[16..16 + fields_len];
        for needle in [
            &b"\x01\x01o\x00\x19\x00\x00\x00/org/freedesktop/systemd1\x00"[..],
            b"\x03\x01s\x00\x12\x00\x00\x00StartTransientUnit\x00",
            b"\x08\x01g\x00\x10ssa(sv)a(sa(sv))\x00",
        ] {
            assert!(
                header.windows(needle.len()).any(|w| w == needle),
                "{needle:?}"
            );
        }
        let body = &m[body_at..];
        let expect: Vec<u8> = [
            &b"\x07\0\0\0x.scope\0"[..], // s unit: 0..12
            b"\x04\0\0\0fail\0",         // s mode: ..21
            b"\0\0\0",                   // pad to 4: ..24
            b"\x54\0\0\0",               // a(sv) length 84: ..28
            b"\0\0\0\0",                 // pad to 8: ..32
            // ("Slice", <s "a.slice">): 32..60
            b"\x05\0\0\0Slice\0\x01s\0\0\0\0\x07\0\0\0a.slice\0",
            b"\0\0\0\0", // pad to 8: ..64
            // ("PIDs", <au [7, 9]>): 64..92
            b"\x04\0\0\0PIDs\0\x02au\0\0\0\0\x08\0\0\0\x07\0\0\0\x09\0\0\0",
            b"\0\0\0\0", // pad to 8: ..96
            // ("Delegate", <b true>): 96..116
            b"\x08\0\0\0Delegate\0\x01b\0\x01\0\0\0",
            b"\0\0\0\0", // a(sa(sv)) empty, 8-aligned after: ..120
        ]
        .concat();
        assert_eq!(body, &expect[..]);
    }

    fn reply(kind: u8, fields: &[u8], body: &[u8]) -> Vec<u8> {
        let mut m = vec![b'l', kind, 1, 1];
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(&9u32.to_le_bytes());
        m.extend_from_slice(&(fields.len() as u32).to_le_bytes());
        m.extend_from_slice(fields);
        m.resize(pad8(m.len()), 0);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn replies_and_errors_are_told_apart_with_their_message() {
        // REPLY_SERIAL (5, u 1), SIGNATURE (8, g "o").
        let ok = reply(
            2,
            b"\x05\x01u\x00\x01\x00\x00\x00\x08\x01g\x00\x01o\x00",
            b"\x05\x00\x00\x00/job1\x00",
        );
        assert_eq!(parse_reply(&ok), Ok(Reply::Return { reply_to: 1 }));
        let fixed: [u8; 16] = ok[..16].try_into().unwrap();
        assert_eq!(lengths(&fixed).unwrap(), (15, 10));
        // ERROR_NAME (4, s), REPLY_SERIAL (5, u 1), SIGNATURE (8, g "s").
        let name = "org.freedesktop.systemd1.UnitExists";
        let mut fields = vec![4, 1, b's', 0];
        fields.extend_from_slice(&(name.len() as u32).to_le_bytes());
        fields.extend_from_slice(name.as_bytes());
        fields.push(0);
        fields.resize(pad8(fields.len()), 0);
        fields.extend_from_slice(b"\x05\x01u\x00\x01\x00\x00\x00\x08\x01g\x00\x01s\x00");
        let err = reply(3, &fields, b"\x06\x00\x00\x00exists\x00");
        assert_eq!(
            parse_reply(&err),
            Ok(Reply::Error {
                reply_to: 1,
                name: name.into(),
                message: "exists".into()
            })
        );
        assert!(parse_reply(b"x").is_err());
        assert!(parse_reply(&ok[..20]).is_err());
    }
}
