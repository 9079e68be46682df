//! A small ttrpc server and client over unix sockets, on the tokio runtime.
//!
//! Wire format (containerd/ttrpc): each message is a 10-byte header
//! `length:u32be stream_id:u32be type:u8 flags:u8` followed by `length` bytes.
//! Type 1 carries a `ttrpc.Request{service, method, payload, timeout_nano,
//! metadata}`, type 2 a `ttrpc.Response{status, payload}`. Clients use odd
//! stream ids. Messages over 4 MiB are refused.
//!
//! The server checks the peer's credentials (same uid and gid as the shim),
//! runs every request in its own task so a blocking `Wait` never holds up other
//! calls, and serialises responses through one writer per connection.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::ttrpc::proto::KeyValue;
use containerd_shim_protos::ttrpc::{Code, Request, Response, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

/// Largest message either side accepts.
pub const MAX_MESSAGE: usize = 4 << 20;
const HEADER_LEN: usize = 10;
const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;

/// A boxed future returned by a [`Dispatch`] implementation.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

tokio::task_local! {
    static DEADLINE: Option<tokio::time::Instant>;
}

/// The deadline of the request being handled by the current task, if the
/// caller set one.
pub fn deadline() -> Option<tokio::time::Instant> {
    DEADLINE.try_with(|d| *d).ok().flatten()
}

/// The request handler a server calls for every request.
pub trait Dispatch: Send + Sync + 'static {
    /// Handles `service/method` with its encoded payload and returns the
    /// encoded response or an error status.
    fn dispatch(
        self: Arc<Self>,
        service: String,
        method: String,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, Status>>;
}

struct Frame {
    stream_id: u32,
    kind: u8,
    payload: Vec<u8>,
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut header = [0u8; HEADER_LEN];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let stream_id = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message length {len} exceeds maximum message size of {MAX_MESSAGE}"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some(Frame {
        stream_id,
        kind: header[8],
        payload,
    }))
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> io::Result<()> {
    let mut buf = Vec::with_capacity(HEADER_LEN + f.payload.len());
    buf.extend_from_slice(&(f.payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(&f.stream_id.to_be_bytes());
    buf.push(f.kind);
    buf.push(0);
    buf.extend_from_slice(&f.payload);
    w.write_all(&buf).await
}

/// A ttrpc status with `code` and `message`.
pub fn status(code: Code, message: impl Into<String>) -> Status {
    let mut s = Status::new();
    s.set_code(code);
    s.message = message.into();
    s
}

/// Accepts connections on `listener` forever, serving each with `handler`.
pub async fn serve<D: Dispatch>(listener: UnixListener, handler: Arc<D>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                crate::warn!("ttrpc accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = check_peer(&stream) {
            crate::warn!("ttrpc: refusing connection: {e}");
            continue;
        }
        tokio::spawn(serve_conn(stream, handler.clone()));
    }
}

/// Refuses peers whose uid or gid differ from the shim's effective ones.
fn check_peer(stream: &UnixStream) -> io::Result<()> {
    let cred = rustix::net::sockopt::socket_peercred(stream)?;
    let (uid, gid) = (rustix::process::geteuid(), rustix::process::getegid());
    if cred.uid != uid || cred.gid != gid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "peer uid {} gid {} is not {} {}",
                cred.uid.as_raw(),
                cred.gid.as_raw(),
                uid.as_raw(),
                gid.as_raw()
            ),
        ));
    }
    Ok(())
}

async fn serve_conn<D: Dispatch>(stream: UnixStream, handler: Arc<D>) {
    let (mut rd, wr) = stream.into_split();
    let wr = Arc::new(Mutex::new(wr));
    loop {
        let frame = match read_frame(&mut rd).await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                crate::debug!("ttrpc read: {e}");
                return;
            }
        };
        if frame.kind != TYPE_REQUEST {
            continue;
        }
        let (handler, wr) = (handler.clone(), wr.clone());
        tokio::spawn(async move {
            let mut resp = Response::new();
            match Request::parse_from_bytes(&frame.payload) {
                Ok(req) => {
                    // The caller's deadline bounds the runtime calls the
                    // handler makes (see `deadline`); the handler itself runs
                    // to completion so it can clean up.
                    let deadline = u64::try_from(req.timeout_nano)
                        .ok()
                        .filter(|ns| *ns > 0)
                        .map(|ns| tokio::time::Instant::now() + Duration::from_nanos(ns));
                    let call = handler.dispatch(req.service, req.method, req.payload);
                    match DEADLINE.scope(deadline, call).await {
                        Ok(payload) => resp.payload = payload,
                        Err(s) => resp.status = Some(s).into(),
                    }
                }
                Err(e) => {
                    resp.status =
                        Some(status(Code::INVALID_ARGUMENT, format!("bad request: {e}"))).into()
                }
            }
            let payload = match resp.write_to_bytes() {
                Ok(p) => p,
                Err(e) => {
                    crate::error!("ttrpc encode: {e}");
                    return;
                }
            };
            let out = Frame {
                stream_id: frame.stream_id,
                kind: TYPE_RESPONSE,
                payload,
            };
            let mut w = wr.lock().await;
            if let Err(e) = write_frame(&mut *w, &out).await {
                crate::debug!("ttrpc write: {e}");
            }
        });
    }
}

/// Errors of a ttrpc client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection failed or broke.
    #[error("ttrpc transport: {0}")]
    Io(#[from] io::Error),
    /// The peer answered with an error status.
    #[error("ttrpc status {code:?}: {message}")]
    Status {
        /// The gRPC code.
        code: Code,
        /// The message.
        message: String,
    },
    /// The call did not finish in time.
    #[error("ttrpc call timed out")]
    Timeout,
    /// A message could not be encoded or decoded.
    #[error("ttrpc protobuf: {0}")]
    Proto(String),
}

/// A sequential ttrpc client: one call in flight at a time.
pub struct Client {
    stream: UnixStream,
    next_stream: u32,
}

impl Client {
    /// Connects to a unix socket path (a leading `unix://` is accepted).
    pub async fn connect(addr: &str) -> io::Result<Self> {
        let path = addr.strip_prefix("unix://").unwrap_or(addr);
        let stream = UnixStream::connect(Path::new(path)).await?;
        Ok(Client {
            stream,
            next_stream: 1,
        })
    }

    /// Calls `service/method` with an encoded payload and metadata pairs;
    /// `timeout` is both the request's deadline and how long to wait.
    pub async fn call(
        &mut self,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        metadata: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        self.call_with_deadline(service, method, payload, metadata, Some(timeout), timeout)
            .await
    }

    /// Like [`call`](Self::call), with the deadline sent to the server
    /// (`None`: no deadline) separate from how long to wait for the answer.
    pub async fn call_with_deadline(
        &mut self,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        metadata: &[(&str, &str)],
        deadline: Option<Duration>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        let mut req = Request::new();
        req.service = service.to_string();
        req.method = method.to_string();
        req.payload = payload;
        req.timeout_nano = deadline.map(|d| d.as_nanos() as i64).unwrap_or(0);
        for (k, v) in metadata {
            let mut kv = KeyValue::new();
            kv.key = k.to_string();
            kv.value = v.to_string();
            req.metadata.push(kv);
        }
        let stream_id = self.next_stream;
        self.next_stream = self.next_stream.wrapping_add(2);
        let frame = Frame {
            stream_id,
            kind: TYPE_REQUEST,
            payload: req
                .write_to_bytes()
                .map_err(|e| ClientError::Proto(e.to_string()))?,
        };
        let exchange = async {
            write_frame(&mut self.stream, &frame).await?;
            loop {
                match read_frame(&mut self.stream).await? {
                    Some(f) if f.kind == TYPE_RESPONSE && f.stream_id == stream_id => return Ok(f),
                    Some(_) => continue,
                    None => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                }
            }
        };
        let f = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout)??;
        let resp = Response::parse_from_bytes(&f.payload)
            .map_err(|e| ClientError::Proto(e.to_string()))?;
        if let Some(s) = resp.status.as_ref() {
            if s.code() != Code::OK {
                return Err(ClientError::Status {
                    code: s.code(),
                    message: s.message.clone(),
                });
            }
        }
        Ok(resp.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Dispatch for Echo {
        fn dispatch(
            self: Arc<Self>,
            service: String,
            method: String,
            payload: Vec<u8>,
        ) -> BoxFuture<'static, Result<Vec<u8>, Status>> {
            Box::pin(async move {
                match method.as_str() {
                    "Echo" => Ok(payload),
                    "Slow" => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(vec![])
                    }
                    _ => Err(status(Code::UNIMPLEMENTED, format!("{service}/{method}"))),
                }
            })
        }
    }

    #[tokio::test]
    async fn round_trip_errors_and_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(serve(listener, Arc::new(Echo)));
        let addr = path.to_str().unwrap();

        // A slow call on one connection must not hold up another connection.
        let mut slow = Client::connect(addr).await.unwrap();
        let slow_call = tokio::spawn(async move {
            slow.call("s", "Slow", vec![], &[], Duration::from_millis(200))
                .await
        });
        let mut c = Client::connect(addr).await.unwrap();
        let out = c
            .call(
                "s",
                "Echo",
                b"hello".to_vec(),
                &[("k", "v")],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(out, b"hello");
        match c
            .call("s", "Nope", vec![], &[], Duration::from_secs(5))
            .await
        {
            Err(ClientError::Status { code, message }) => {
                assert_eq!(code, Code::UNIMPLEMENTED);
                assert_eq!(message, "s/Nope");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            slow_call.await.unwrap(),
            Err(ClientError::Timeout)
        ));
    }

    #[tokio::test]
    async fn random_streams_never_panic_the_decoder() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 300) as usize;
            let bytes: Vec<u8> = (0..n).map(|i| (x >> (i % 56)) as u8).collect();
            let mut r: &[u8] = &bytes;
            while let Ok(Some(f)) = read_frame(&mut r).await {
                let _ = Request::parse_from_bytes(&f.payload);
                let _ = Response::parse_from_bytes(&f.payload);
            }
        }
    }

    #[tokio::test]
    async fn oversized_frame_is_refused() {
        let mut bytes: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0];
        let err = read_frame(&mut bytes).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
