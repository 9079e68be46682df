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
//! calls, and serialises responses through one writer per connection. It reads
//! into its own buffer, so it can stop between any two requests and hand its
//! listener, its connections, their unread bytes and the calls to answer
//! again over to the next image of the shim ([`Server::handover`]).

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
pub(crate) const TYPE_REQUEST: u8 = 1;
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

    /// Whether a call in flight may be abandoned at a handover and handled
    /// again by the next image (a `Wait`). Others are let finish.
    fn resumable(&self, _service: &str, _method: &str) -> bool {
        false
    }

    /// Handles a call handed over by a previous image (see `resumable`).
    fn redispatch(
        self: Arc<Self>,
        service: String,
        method: String,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, Status>> {
        self.dispatch(service, method, payload)
    }
}

pub(crate) struct Frame {
    pub(crate) stream_id: u32,
    pub(crate) kind: u8,
    pub(crate) payload: Vec<u8>,
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

/// Where the server stands: serving, draining (no new request is read or
/// dispatched; calls in flight finish), or handing over (connections stop
/// and give back their sockets and unread bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    Draining,
    Handover,
}

/// A request being handled.
struct Entry {
    /// The encoded `ttrpc.Request`.
    request: Vec<u8>,
    /// Whether it can be abandoned here and handled again after a handover.
    resumable: bool,
    task: Option<tokio::task::JoinHandle<()>>,
}

type Writer = Arc<Mutex<tokio::net::unix::OwnedWriteHalf>>;

/// A connection as it stopped for a handover.
struct Stopped {
    id: u64,
    rd: tokio::net::unix::OwnedReadHalf,
    wr: Writer,
    buf: Vec<u8>,
}

/// One connection, handed over: its socket, the bytes read but not yet
/// handled, and the requests to handle again (stream id, encoded request).
pub struct ConnHandover {
    /// The connected socket.
    pub fd: std::os::fd::OwnedFd,
    /// Bytes read from it that were not handled yet.
    pub unread: Vec<u8>,
    /// Requests that were in flight (Wait) and are handled again.
    pub pending: Vec<(u32, Vec<u8>)>,
}

/// A server, handed over to the next image of the shim.
pub struct ServerHandover {
    /// The listening socket.
    pub listener: std::os::fd::OwnedFd,
    /// The accepted connections (containerd's).
    pub conns: Vec<ConnHandover>,
}

/// A ttrpc server that can stop between requests and hand its listener and
/// connections over (an upgrade in place).
pub struct Server<D: Dispatch> {
    handler: Arc<D>,
    gate: tokio::sync::watch::Sender<Gate>,
    inflight: std::sync::Mutex<std::collections::HashMap<(u64, u32), Entry>>,
    idle: tokio::sync::Notify,
    next_conn: std::sync::atomic::AtomicU64,
    conns: std::sync::Mutex<Vec<tokio::task::JoinHandle<Option<Stopped>>>>,
    accept: std::sync::Mutex<Option<tokio::task::JoinHandle<Option<UnixListener>>>>,
}

/// Accepts a waiting connection now, or says `WouldBlock` (and then the
/// listener waits for readiness again, as after any `WouldBlock`).
fn try_accept(listener: &UnixListener) -> io::Result<UnixStream> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match listener.poll_accept(&mut cx) {
        std::task::Poll::Ready(r) => r.map(|(s, _)| s),
        std::task::Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

/// What went wrong in accepting, said once and then at most every
/// [`AcceptFaults::EVERY`], with counts, so a lasting fault cannot flood
/// the log.
#[derive(Default)]
struct AcceptFaults {
    refused: u64,
    failed: u64,
    said: Option<std::time::Instant>,
}

impl AcceptFaults {
    const EVERY: Duration = Duration::from_secs(10);

    /// Counts one fault: a connection closed for want of an fd (`refused`)
    /// or a failed accept.
    fn note(&mut self, e: &std::io::Error, refused: bool) {
        if refused {
            self.refused += 1;
        } else {
            self.failed += 1;
        }
        if self.said.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return;
        }
        let (soft, _) = crate::sys::nofile::limits();
        crate::warn!(
            "ttrpc accept: {e} (fd limit {soft}); {} connection(s) closed unserved, {} failed accept(s) since the last report",
            self.refused,
            self.failed
        );
        (self.refused, self.failed) = (0, 0);
        self.said = Some(std::time::Instant::now());
    }
}

/// Accepts connections on `listener` forever, serving each with `handler`.
pub async fn serve<D: Dispatch>(listener: UnixListener, handler: Arc<D>) {
    let server = Server::start(listener, handler, Vec::new());
    std::future::pending::<()>().await;
    drop(server);
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<D: Dispatch> Server<D> {
    /// Serves `listener` (and `conns`, handed over by a previous image).
    pub fn start(listener: UnixListener, handler: Arc<D>, conns: Vec<ConnHandover>) -> Arc<Self> {
        let server = Arc::new(Server {
            handler,
            gate: tokio::sync::watch::channel(Gate::Open).0,
            inflight: std::sync::Mutex::new(std::collections::HashMap::new()),
            idle: tokio::sync::Notify::new(),
            next_conn: std::sync::atomic::AtomicU64::new(0),
            conns: std::sync::Mutex::new(Vec::new()),
            accept: std::sync::Mutex::new(None),
        });
        for c in conns {
            let stream = std::os::unix::net::UnixStream::from(c.fd);
            match stream
                .set_nonblocking(true)
                .and_then(|()| UnixStream::from_std(stream))
            {
                Ok(s) => server.add_conn(s, c.unread, c.pending),
                Err(e) => crate::warn!("ttrpc: a handed-over connection is unusable: {e}"),
            }
        }
        let task = tokio::spawn(server.clone().accept_loop(listener));
        *lock(&server.accept) = Some(task);
        server
    }

    async fn accept_loop(self: Arc<Self>, listener: UnixListener) -> Option<UnixListener> {
        let mut gate = self.gate.subscribe();
        let mut faults = AcceptFaults::default();
        loop {
            tokio::select! {
                r = gate.changed() => {
                    if r.is_err() || *gate.borrow() == Gate::Handover {
                        return Some(listener);
                    }
                }
                r = listener.accept(), if *gate.borrow() == Gate::Open => match r {
                    Ok((s, _)) => match check_peer(&s) {
                        Ok(()) => self.add_conn(s, Vec::new(), Vec::new()),
                        Err(e) => crate::warn!("ttrpc: refusing connection: {e}"),
                    },
                    Err(e) if crate::sys::nofile::is_exhausted(&e) => {
                        if crate::sys::nofile::raise().is_none() {
                            // No fd to serve it: the connection is refused
                            // (closed) rather than left queued for ever.
                            match crate::sys::nofile::with_spare(|| try_accept(&listener)) {
                                Ok(refused) => {
                                    drop(refused);
                                    faults.note(&e, true);
                                }
                                // Nothing was waiting (the kernel takes the
                                // fd before it looks).
                                Err(w) if w.kind() == io::ErrorKind::WouldBlock => {}
                                Err(_) => {
                                    faults.note(&e, false);
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        faults.note(&e, false);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    fn add_conn(
        self: &Arc<Self>,
        stream: UnixStream,
        unread: Vec<u8>,
        pending: Vec<(u32, Vec<u8>)>,
    ) {
        let id = self
            .next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (rd, wr) = stream.into_split();
        let wr: Writer = Arc::new(Mutex::new(wr));
        for (stream_id, request) in pending {
            self.handle(id, stream_id, request, &wr, true);
        }
        let task = tokio::spawn(self.clone().conn_loop(id, rd, wr, unread));
        let mut conns = lock(&self.conns);
        conns.retain(|t| !t.is_finished());
        conns.push(task);
    }

    async fn conn_loop(
        self: Arc<Self>,
        id: u64,
        mut rd: tokio::net::unix::OwnedReadHalf,
        wr: Writer,
        mut buf: Vec<u8>,
    ) -> Option<Stopped> {
        let mut gate = self.gate.subscribe();
        loop {
            while *gate.borrow() == Gate::Open {
                match take_frame(&mut buf) {
                    Ok(Some(f)) if f.kind == TYPE_REQUEST => {
                        self.handle(id, f.stream_id, f.payload, &wr, false)
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        crate::debug!("ttrpc read: {e}");
                        return None;
                    }
                }
            }
            tokio::select! {
                r = gate.changed() => {
                    if r.is_err() {
                        return None;
                    }
                    if *gate.borrow() == Gate::Handover {
                        return Some(Stopped { id, rd, wr, buf });
                    }
                }
                r = rd.read_buf(&mut buf), if *gate.borrow() == Gate::Open => match r {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(e) => {
                        crate::debug!("ttrpc read: {e}");
                        return None;
                    }
                },
            }
        }
    }

    /// Handles one request in its own task, so a blocking `Wait` never
    /// holds up other calls. `again`: a request handed over by a previous
    /// image, handled again.
    fn handle(
        self: &Arc<Self>,
        conn: u64,
        stream_id: u32,
        request: Vec<u8>,
        wr: &Writer,
        again: bool,
    ) {
        let req = Request::parse_from_bytes(&request);
        let resumable = req
            .as_ref()
            .is_ok_and(|r| self.handler.resumable(&r.service, &r.method));
        let mut inflight = lock(&self.inflight);
        let (this, wr) = (self.clone(), wr.clone());
        let task = tokio::spawn(async move {
            let mut resp = Response::new();
            match req {
                Ok(req) => {
                    // The caller's deadline bounds the runtime calls the
                    // handler makes (see `deadline`); the handler itself runs
                    // to completion so it can clean up.
                    let deadline = u64::try_from(req.timeout_nano)
                        .ok()
                        .filter(|ns| *ns > 0)
                        .map(|ns| tokio::time::Instant::now() + Duration::from_nanos(ns));
                    let h = this.handler.clone();
                    let call = if again {
                        h.redispatch(req.service, req.method, req.payload)
                    } else {
                        h.dispatch(req.service, req.method, req.payload)
                    };
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
            match resp.write_to_bytes() {
                Ok(payload) => {
                    let out = Frame {
                        stream_id,
                        kind: TYPE_RESPONSE,
                        payload,
                    };
                    let mut w = wr.lock().await;
                    if let Err(e) = write_frame(&mut *w, &out).await {
                        crate::debug!("ttrpc write: {e}");
                    }
                }
                Err(e) => crate::error!("ttrpc encode: {e}"),
            }
            lock(&this.inflight).remove(&(conn, stream_id));
            this.idle.notify_waiters();
        });
        inflight.insert(
            (conn, stream_id),
            Entry {
                request,
                resumable,
                task: Some(task),
            },
        );
    }

    /// Stops between requests and hands the listener and every connection
    /// over: no new request is taken; calls in flight get up to `wait` to
    /// finish (resumable ones, `Wait`, are abandoned and handed over to be
    /// handled again). If they do not finish in time, the server serves on
    /// and the names of the busy calls come back as the error.
    pub async fn handover(&self, wait: Duration) -> Result<ServerHandover, String> {
        self.gate.send_replace(Gate::Draining);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let idle = self.idle.notified();
            let busy: Vec<String> = lock(&self.inflight)
                .values()
                .filter(|e| !e.resumable)
                .map(|e| {
                    Request::parse_from_bytes(&e.request)
                        .map(|r| format!("{}/{}", r.service, r.method))
                        .unwrap_or_default()
                })
                .collect();
            if busy.is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                self.gate.send_replace(Gate::Open);
                return Err(format!("calls still running: {}", busy.join(", ")));
            }
        }
        self.gate.send_replace(Gate::Handover);
        let accept = lock(&self.accept).take();
        let listener = match accept {
            Some(t) => t.await.ok().flatten(),
            None => None,
        };
        let listener = listener.ok_or("the listener is gone")?;
        let mut stopped = Vec::new();
        let tasks: Vec<_> = std::mem::take(&mut *lock(&self.conns));
        for t in tasks {
            if let Ok(Some(s)) = t.await {
                stopped.push(s);
            }
        }
        // The calls still in flight are resumable ones: abandon them here.
        let entries: Vec<((u64, u32), Entry)> = lock(&self.inflight).drain().collect();
        let mut pending: std::collections::HashMap<u64, Vec<(u32, Vec<u8>)>> =
            std::collections::HashMap::new();
        for ((conn, stream_id), mut e) in entries {
            if let Some(t) = e.task.take() {
                t.abort();
                let _ = t.await;
            }
            pending
                .entry(conn)
                .or_default()
                .push((stream_id, e.request));
        }
        let mut conns = Vec::new();
        for s in stopped {
            let wr = Arc::try_unwrap(s.wr)
                .map_err(|_| "a connection's writer is still in use")?
                .into_inner();
            let stream =
                s.rd.reunite(wr)
                    .map_err(|e| format!("reunite connection: {e}"))?;
            let std = stream.into_std().map_err(|e| format!("connection: {e}"))?;
            let mut calls = pending.remove(&s.id).unwrap_or_default();
            calls.sort_by_key(|c| c.0);
            conns.push(ConnHandover {
                fd: std.into(),
                unread: s.buf,
                pending: calls,
            });
        }
        let listener = listener.into_std().map_err(|e| format!("listener: {e}"))?;
        Ok(ServerHandover {
            listener: listener.into(),
            conns,
        })
    }
}

/// Takes one complete frame off the front of `buf`, if there is one.
pub(crate) fn take_frame(buf: &mut Vec<u8>) -> io::Result<Option<Frame>> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message length {len} exceeds maximum message size of {MAX_MESSAGE}"),
        ));
    }
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    let stream_id = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let kind = buf[8];
    let payload = buf[HEADER_LEN..HEADER_LEN + len].to_vec();
    buf.drain(..HEADER_LEN + len);
    Ok(Some(Frame {
        stream_id,
        kind,
        payload,
    }))
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

    /// A `Wait`-like call on the handler that answers when told.
    struct Resumable {
        answer: tokio::sync::watch::Receiver<bool>,
        name: &'static str,
    }
    impl Dispatch for Resumable {
        fn dispatch(
            self: Arc<Self>,
            _service: String,
            method: String,
            payload: Vec<u8>,
        ) -> BoxFuture<'static, Result<Vec<u8>, Status>> {
            Box::pin(async move {
                if method == "Wait" {
                    let mut a = self.answer.clone();
                    let _ = a.wait_for(|v| *v).await;
                }
                let mut out = self.name.as_bytes().to_vec();
                out.extend_from_slice(&payload);
                Ok(out)
            })
        }
        fn resumable(&self, _service: &str, method: &str) -> bool {
            method == "Wait"
        }
    }

    /// A server hands its listener and a connection with a pending `Wait`
    /// over to another server (the next image): the client's call is
    /// answered, on the same connection and stream, by the new one; a call
    /// sent while the first was stopping is served by the second.
    #[tokio::test]
    async fn hands_over_listener_connections_and_pending_calls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let (_never, rx) = tokio::sync::watch::channel(false);
        let old = Server::start(
            UnixListener::bind(&path).unwrap(),
            Arc::new(Resumable {
                answer: rx.clone(),
                name: "old:",
            }),
            Vec::new(),
        );
        let addr = path.to_str().unwrap().to_string();
        let mut c = Client::connect(&addr).await.unwrap();
        assert_eq!(
            c.call("s", "Echo", b"1".to_vec(), &[], Duration::from_secs(5))
                .await
                .unwrap(),
            b"old:1"
        );
        let a = addr.clone();
        let waiter = tokio::spawn(async move {
            let mut w = Client::connect(&a).await.unwrap();
            w.call("s", "Wait", b"w".to_vec(), &[], Duration::from_secs(10))
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let h = old.handover(Duration::from_secs(1)).await.unwrap();
        assert_eq!(h.conns.len(), 2);
        assert_eq!(h.conns.iter().map(|c| c.pending.len()).sum::<usize>(), 1);
        // A call made now waits, unread, in the socket.
        let echo = tokio::spawn(async move {
            c.call("s", "Echo", b"2".to_vec(), &[], Duration::from_secs(10))
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let listener = std::os::unix::net::UnixListener::from(h.listener);
        listener.set_nonblocking(true).unwrap();
        let (tx, rx) = tokio::sync::watch::channel(true);
        let _new = Server::start(
            UnixListener::from_std(listener).unwrap(),
            Arc::new(Resumable {
                answer: rx,
                name: "new:",
            }),
            h.conns,
        );
        drop(tx);
        assert_eq!(waiter.await.unwrap().unwrap(), b"new:w");
        assert_eq!(echo.await.unwrap().unwrap(), b"new:2");
        let mut fresh = Client::connect(&addr).await.unwrap();
        assert_eq!(
            fresh
                .call("s", "Echo", b"3".to_vec(), &[], Duration::from_secs(5))
                .await
                .unwrap(),
            b"new:3"
        );
    }

    /// A call that does not finish keeps the server from handing over: it
    /// serves on.
    #[tokio::test]
    async fn a_busy_server_refuses_the_handover_and_serves_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let server = Server::start(
            UnixListener::bind(&path).unwrap(),
            Arc::new(Echo),
            Vec::new(),
        );
        let addr = path.to_str().unwrap().to_string();
        let a = addr.clone();
        let _slow = tokio::spawn(async move {
            let mut s = Client::connect(&a).await.unwrap();
            let _ = s
                .call("s", "Slow", vec![], &[], Duration::from_secs(30))
                .await;
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let err = server
            .handover(Duration::from_millis(200))
            .await
            .err()
            .unwrap();
        assert!(err.contains("s/Slow"), "{err}");
        let mut c = Client::connect(&addr).await.unwrap();
        assert_eq!(
            c.call("s", "Echo", b"x".to_vec(), &[], Duration::from_secs(5))
                .await
                .unwrap(),
            b"x"
        );
    }
}
