//! Event publisher: task events go to containerd's ttrpc events service
//! (`containerd.services.events.ttrpc.v1.Events/Forward` on `$TTRPC_ADDRESS`)
//! through one ordered queue and one forwarder task.
//!
//! Order is preserved: an event is retried in place (5 s per attempt, a delay
//! of 1 s × attempt between attempts) before the next one is sent. An event
//! containerd does not take within those retries (about 15 s: it is down or
//! restarting) is not dropped: it goes to the shim's event [`store`], and so
//! does every later event while the store holds any, so order is kept. The
//! forwarder then waits for containerd: the next request containerd makes
//! ([`Publisher::containerd_seen`]) or a probe of the events socket (backoff
//! from 1 s to 60 s). Once it answers, the forwarder waits [`REPLAY_GRACE`]
//! (so that clients reconnecting after containerd's restart, CRI's event
//! monitor or an event subscriber, are listening) and replays the kept
//! events oldest first, removing each once delivered, then sends the rest.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::ttrpc::Client;

pub mod store;

pub use store::Store;

const SERVICE: &str = "containerd.services.events.ttrpc.v1.Events";
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after containerd answers again kept events are replayed.
pub const REPLAY_GRACE: Duration = Duration::from_secs(3);

/// The forwarder's timing (shortened in tests).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Retries of one event before it is kept in the store.
    pub retries: u32,
    /// Delay unit between retries (× attempt number).
    pub retry_delay: Duration,
    /// Wait after containerd answers again before replaying.
    pub grace: Duration,
    /// First and longest interval between probes of the events socket.
    pub probe: (Duration, Duration),
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            retries: 5,
            retry_delay: Duration::from_secs(1),
            grace: REPLAY_GRACE,
            probe: (Duration::from_secs(1), Duration::from_secs(60)),
        }
    }
}

/// A task event ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Topic, e.g. `/tasks/exit`.
    pub topic: &'static str,
    /// Type URL of the payload, e.g. `containerd.events.TaskExit`.
    pub type_url: &'static str,
    /// Encoded payload.
    pub value: Vec<u8>,
}

impl Event {
    fn new(topic: &'static str, type_url: &'static str, m: &impl Message) -> Event {
        Event {
            topic,
            type_url,
            value: m.write_to_bytes().unwrap_or_default(),
        }
    }

    /// `/tasks/create`.
    pub fn create(m: &TaskCreate) -> Event {
        Event::new("/tasks/create", "containerd.events.TaskCreate", m)
    }
    /// `/tasks/start`.
    pub fn start(m: &TaskStart) -> Event {
        Event::new("/tasks/start", "containerd.events.TaskStart", m)
    }
    /// `/tasks/exit`.
    pub fn exit(m: &TaskExit) -> Event {
        Event::new("/tasks/exit", "containerd.events.TaskExit", m)
    }
    /// `/tasks/delete`.
    pub fn delete(m: &TaskDelete) -> Event {
        Event::new("/tasks/delete", "containerd.events.TaskDelete", m)
    }
    /// `/tasks/exec-added`.
    pub fn exec_added(m: &TaskExecAdded) -> Event {
        Event::new("/tasks/exec-added", "containerd.events.TaskExecAdded", m)
    }
    /// `/tasks/exec-started`.
    pub fn exec_started(m: &TaskExecStarted) -> Event {
        Event::new(
            "/tasks/exec-started",
            "containerd.events.TaskExecStarted",
            m,
        )
    }
    /// `/tasks/paused`.
    pub fn paused(m: &TaskPaused) -> Event {
        Event::new("/tasks/paused", "containerd.events.TaskPaused", m)
    }
    /// `/tasks/resumed`.
    pub fn resumed(m: &TaskResumed) -> Event {
        Event::new("/tasks/resumed", "containerd.events.TaskResumed", m)
    }
    /// `/tasks/oom`.
    pub fn oom(m: &TaskOOM) -> Event {
        Event::new("/tasks/oom", "containerd.events.TaskOOM", m)
    }
}

/// Converts a time to a protobuf timestamp.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

enum Msg {
    Event(Event, SystemTime),
    Flush(oneshot::Sender<()>),
}

/// An event ready to forward: its topic and the encoded `ForwardRequest`.
pub type Encoded = (String, Vec<u8>);

/// The forwarder's pause switch and task (for an upgrade in place).
type Control = Arc<std::sync::Mutex<Option<(watch::Sender<bool>, JoinHandle<Vec<Encoded>>)>>>;

/// The sending side of the event queue. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Msg>,
    seen: Arc<Notify>,
    control: Control,
}

impl Publisher {
    /// Starts the forwarder for `namespace`, sending to `address` (or
    /// discarding events when `address` is empty); events containerd does
    /// not take go to `store` (without one they are dropped after the
    /// retries).
    pub fn spawn(address: String, namespace: String, store: Option<Store>) -> Publisher {
        Publisher::spawn_with(address, namespace, store, Timing::default(), Vec::new())
    }

    /// [`Publisher::spawn`] with explicit timing, and events a previous image
    /// of the shim had not sent yet (sent first, in order).
    pub fn spawn_with(
        address: String,
        namespace: String,
        store: Option<Store>,
        timing: Timing,
        pending: Vec<Encoded>,
    ) -> Publisher {
        let (tx, rx) = mpsc::unbounded_channel();
        let seen = Arc::new(Notify::new());
        let (pause_tx, pause) = watch::channel(false);
        let f = Forwarder {
            address,
            namespace,
            client: None,
            store,
            seen: seen.clone(),
            timing,
            pause,
        };
        let task = tokio::spawn(f.run(rx, pending.into()));
        Publisher {
            tx,
            seen,
            control: Arc::new(std::sync::Mutex::new(Some((pause_tx, task)))),
        }
    }

    /// Stops the forwarder between two sends and returns the events it had
    /// not sent, in order (for an upgrade in place). Events kept in the
    /// store stay there.
    pub async fn pause(&self) -> Vec<Encoded> {
        let ctl = self
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some((switch, task)) = ctl else {
            return Vec::new();
        };
        let _ = switch.send(true);
        task.await.unwrap_or_default()
    }

    /// containerd made a request: it is up (kept events may go now).
    pub fn containerd_seen(&self) {
        self.seen.notify_one();
    }

    /// Waits until `store` holds no kept event (the forwarder replayed them
    /// all), for at most `limit` (the caller holds the store: [`Store::hold`]), telling the forwarder every second that
    /// containerd may be back. What is still kept then is dropped, said in
    /// the log, and the store file removed: nobody would read it after this
    /// shim exits. Returns whether every kept event was delivered.
    pub async fn deliver_kept(&self, store: &Store, limit: Duration) -> bool {
        if store.is_empty() {
            return true;
        }
        crate::info!("shutting down with kept events: delivering them first");
        let deadline = tokio::time::Instant::now() + limit;
        let mut nudge = tokio::time::Instant::now();
        while !store.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                let lost = store.load().map(|r| r.len()).unwrap_or_default();
                crate::error!(
                    "containerd took none of {lost} kept events within {limit:?} of the shim's \
                     shutdown: dropping them"
                );
                let _ = std::fs::remove_file(store.path());
                return false;
            }
            if tokio::time::Instant::now() >= nudge {
                self.containerd_seen();
                nudge += Duration::from_secs(1);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// A publisher whose events are received by the returned channel (tests).
    pub fn channel() -> (Publisher, mpsc::UnboundedReceiver<Event>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (etx, erx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                match m {
                    Msg::Event(e, _) => {
                        let _ = etx.send(e);
                    }
                    Msg::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        (
            Publisher {
                tx,
                seen: Arc::new(Notify::new()),
                control: Arc::new(std::sync::Mutex::new(None)),
            },
            erx,
        )
    }

    /// Queues an event; it is stamped now.
    pub fn publish(&self, e: Event) {
        let _ = self.tx.send(Msg::Event(e, SystemTime::now()));
    }

    /// Waits until everything queued before this call was sent, kept or
    /// dropped, for at most `timeout`. Returns false on timeout.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).is_err() {
            return true;
        }
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

fn envelope(e: &Event, at: SystemTime, namespace: &str) -> Vec<u8> {
    let mut any = Any::new();
    any.type_url = e.type_url.to_string();
    any.value = e.value.clone();
    let mut env = Envelope::new();
    env.timestamp = MessageField::some(timestamp(at));
    env.namespace = namespace.to_string();
    env.topic = e.topic.to_string();
    env.event = MessageField::some(any);
    let mut req = ForwardRequest::new();
    req.envelope = MessageField::some(env);
    req.write_to_bytes().unwrap_or_default()
}

/// The task an encoded `ForwardRequest` is about: its event's first field
/// (`container_id` in every task event), for the log.
fn task_of(payload: &[u8]) -> String {
    ForwardRequest::parse_from_bytes(payload)
        .ok()
        .and_then(|r| {
            let value = r.envelope.into_option()?.event.into_option()?.value;
            let mut input = containerd_shim_protos::protobuf::CodedInputStream::from_bytes(&value);
            while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
                if tag == (1 << 3) | 2 {
                    return input.read_string().ok();
                }
                containerd_shim_protos::protobuf::rt::skip_field_for_tag(tag, &mut input).ok()?;
            }
            None
        })
        .unwrap_or_else(|| "?".into())
}

struct Forwarder {
    address: String,
    namespace: String,
    client: Option<Client>,
    store: Option<Store>,
    seen: Arc<Notify>,
    timing: Timing,
    pause: watch::Receiver<bool>,
}

/// Forwards one encoded `ForwardRequest` to containerd's events service.
pub async fn forward(
    c: &mut Client,
    namespace: &str,
    payload: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    c.call(
        SERVICE,
        "Forward",
        payload.to_vec(),
        &[("containerd-namespace-ttrpc", namespace)],
        timeout,
    )
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Resolves once a pause is asked for (never if the switch is gone).
async fn paused(pause: &mut watch::Receiver<bool>) {
    if pause.wait_for(|p| *p).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// How a wait of the forwarder ended.
enum Wake {
    /// Go on.
    Go,
    /// The queue closed: the shim is exiting.
    Closed,
    /// A pause was asked for.
    Paused,
}

impl Forwarder {
    fn paused(&self) -> bool {
        *self.pause.borrow()
    }

    /// Forwards events in order until the queue closes (returns nothing) or
    /// a pause is asked for (returns what was not sent, in order). A send in
    /// progress is finished first, so no event goes twice.
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        mut pending: std::collections::VecDeque<Encoded>,
    ) -> Vec<Encoded> {
        loop {
            if self.paused() {
                return self.hand_back(pending, rx);
            }
            if self.store.as_ref().is_some_and(|s| !s.is_empty()) {
                // Queued events go behind the kept ones.
                while let Some(p) = pending.pop_front() {
                    self.keep(&p.1);
                }
                match self.replay(&mut rx).await {
                    Wake::Go => continue,
                    Wake::Closed => return Vec::new(),
                    Wake::Paused => return self.hand_back(pending, rx),
                }
            }
            let next = match pending.pop_front() {
                Some(p) => p,
                None => {
                    let mut pause = self.pause.clone();
                    tokio::select! {
                        _ = paused(&mut pause) => continue,
                        m = rx.recv() => match m {
                            None => return Vec::new(),
                            Some(Msg::Flush(done)) => {
                                let _ = done.send(());
                                continue;
                            }
                            Some(Msg::Event(e, at)) => {
                                (e.topic.to_string(), envelope(&e, at, &self.namespace))
                            }
                        },
                    }
                }
            };
            if self.address.is_empty() {
                continue;
            }
            if let Wake::Paused = self.deliver(&next.0, &next.1).await {
                pending.push_front(next);
                return self.hand_back(pending, rx);
            }
        }
    }

    /// What was not sent when a pause came: `pending`, then the queue.
    fn hand_back(
        &self,
        mut pending: std::collections::VecDeque<Encoded>,
        mut rx: mpsc::UnboundedReceiver<Msg>,
    ) -> Vec<Encoded> {
        while let Ok(m) = rx.try_recv() {
            match m {
                Msg::Event(e, at) => {
                    pending.push_back((e.topic.to_string(), envelope(&e, at, &self.namespace)))
                }
                Msg::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
        pending.into()
    }

    /// One attempt to forward an encoded `ForwardRequest`.
    async fn send(&mut self, payload: &[u8]) -> Result<(), String> {
        if self.client.is_none() {
            match Client::connect(&self.address).await {
                Ok(c) => self.client = Some(c),
                Err(e) => return Err(e.to_string()),
            }
        }
        let c = self.client.as_mut().expect("connected above");
        forward(c, &self.namespace, payload, ATTEMPT_TIMEOUT)
            .await
            .inspect_err(|_| self.client = None)
    }

    /// Sleeps, unless a pause comes first.
    async fn sleep(&mut self, d: Duration) -> Wake {
        let mut pause = self.pause.clone();
        tokio::select! {
            _ = paused(&mut pause) => Wake::Paused,
            _ = tokio::time::sleep(d) => Wake::Go,
        }
    }

    /// Sends one event, retrying in place; what containerd does not take
    /// goes to the store. An event that needed retries is logged with its
    /// task when it goes (so a reader of the log can follow it).
    async fn deliver(&mut self, topic: &str, payload: &[u8]) -> Wake {
        let mut attempt = 0;
        loop {
            let Err(err) = self.send(payload).await else {
                if attempt > 0 {
                    crate::info!(
                        "published {topic} of {} at attempt {}",
                        task_of(payload),
                        attempt + 1
                    );
                }
                return Wake::Go;
            };
            attempt += 1;
            if attempt > self.timing.retries {
                match &self.store {
                    Some(_) => {
                        crate::warn!(
                            "containerd did not take event {topic} of {} ({err}): keeping it until it does",
                            task_of(payload)
                        );
                        self.keep(payload);
                    }
                    None => crate::error!("dropping event {topic}: {err}"),
                }
                return Wake::Go;
            }
            crate::warn!(
                "publish {topic} of {} (attempt {attempt}): {err}",
                task_of(payload)
            );
            if let Wake::Paused = self.sleep(self.timing.retry_delay * attempt).await {
                return Wake::Paused;
            }
        }
    }

    fn keep(&self, payload: &[u8]) {
        let Some(store) = &self.store else { return };
        match crate::sys::nofile::with_spare(|| store.append(payload)) {
            Ok(0) => {}
            Ok(n) => crate::error!("event store full: dropped the {n} oldest kept events"),
            Err(e) => crate::error!("event store {}: {e}; event dropped", store.path().display()),
        }
    }

    /// Handles what arrives while kept events wait: new events are kept
    /// behind them.
    fn queue(&mut self, m: Option<Msg>) -> Wake {
        match m {
            None => Wake::Closed,
            Some(Msg::Flush(done)) => {
                let _ = done.send(());
                Wake::Go
            }
            Some(Msg::Event(e, at)) => {
                let payload = envelope(&e, at, &self.namespace);
                self.keep(&payload);
                Wake::Go
            }
        }
    }

    /// Waits until containerd answers, then replays the kept events oldest
    /// first (each removed once delivered).
    async fn replay(&mut self, rx: &mut mpsc::UnboundedReceiver<Msg>) -> Wake {
        let (mut probe, longest) = self.timing.probe;
        let mut pause = self.pause.clone();
        loop {
            tokio::select! {
                _ = paused(&mut pause) => return Wake::Paused,
                m = rx.recv() => if let w @ (Wake::Closed | Wake::Paused) = self.queue(m) { return w },
                _ = self.seen.notified() => break,
                _ = tokio::time::sleep(probe) => {
                    if Client::connect(&self.address).await.is_ok() {
                        break;
                    }
                    probe = (probe * 2).min(longest);
                }
            }
        }
        let until = tokio::time::Instant::now() + self.timing.grace;
        loop {
            tokio::select! {
                _ = paused(&mut pause) => return Wake::Paused,
                m = rx.recv() => if let w @ (Wake::Closed | Wake::Paused) = self.queue(m) { return w },
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        let Some(store) = self.store.clone() else {
            return Wake::Go;
        };
        let records = match store.load() {
            Ok(r) => r,
            Err(e) => {
                crate::error!("event store {}: {e}", store.path().display());
                return Wake::Go;
            }
        };
        let mut sent = 0;
        for r in &records {
            if self.paused() {
                return Wake::Paused;
            }
            if let Err(e) = self.send(r).await {
                crate::warn!("replaying kept events: {e}; {} left", records.len() - sent);
                break;
            }
            sent += 1;
            if let Err(e) = store.replace(&records[sent..]) {
                crate::error!("event store {}: {e}", store.path().display());
            }
        }
        if sent == records.len() {
            crate::info!("containerd is back: delivered {sent} kept events");
        }
        Wake::Go
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ttrpc::{serve, BoxFuture, Dispatch};
    use containerd_shim_protos::ttrpc::Status;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Sink {
        got: Mutex<Vec<(String, String, String)>>,
    }
    impl Dispatch for Sink {
        fn dispatch(
            self: Arc<Self>,
            _service: String,
            _method: String,
            payload: Vec<u8>,
        ) -> BoxFuture<'static, Result<Vec<u8>, Status>> {
            Box::pin(async move {
                let req = ForwardRequest::parse_from_bytes(&payload).unwrap();
                let env = req.envelope.unwrap();
                self.got.lock().unwrap().push((
                    env.namespace.clone(),
                    env.topic.clone(),
                    env.event.type_url.clone(),
                ));
                Ok(vec![])
            })
        }
    }

    #[test]
    fn a_forwarded_event_names_its_task() {
        let exit = TaskExit {
            container_id: "c1".into(),
            id: "e1".into(),
            exit_status: 3,
            ..Default::default()
        };
        let payload = envelope(&Event::exit(&exit), SystemTime::now(), "ns");
        assert_eq!(task_of(&payload), "c1");
        assert_eq!(task_of(b"\xff\xff"), "?");
    }

    #[tokio::test]
    async fn forwards_in_order_with_namespace() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ttrpc.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let sink = Arc::new(Sink::default());
        tokio::spawn(serve(listener, sink.clone()));
        let p = Publisher::spawn(path.display().to_string(), "ns1".into(), None);
        p.publish(Event::start(&TaskStart::new()));
        p.publish(Event::exit(&TaskExit::new()));
        assert!(p.flush(Duration::from_secs(5)).await);
        let got = sink.got.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![
                (
                    "ns1".into(),
                    "/tasks/start".into(),
                    "containerd.events.TaskStart".into()
                ),
                (
                    "ns1".into(),
                    "/tasks/exit".into(),
                    "containerd.events.TaskExit".into()
                ),
            ]
        );
    }

    /// A publisher to `path` that keeps in `store` what one quick retry does
    /// not deliver, probing containerd at `probe` intervals.
    fn keeping(path: &std::path::Path, store: &Store, probe: (Duration, Duration)) -> Publisher {
        let timing = Timing {
            retries: 1,
            retry_delay: Duration::from_millis(10),
            grace: Duration::from_millis(50),
            probe,
        };
        Publisher::spawn_with(
            path.display().to_string(),
            "ns1".into(),
            Some(store.clone()),
            timing,
            Vec::new(),
        )
    }

    /// containerd is away for longer than the retries: the events are kept,
    /// in order, and replayed once it answers, before any later event; the
    /// store is emptied.
    #[tokio::test]
    async fn keeps_events_while_containerd_is_away_and_replays_them_in_order() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ttrpc.sock");
        let store = Store::for_socket(&d.path().join("shim.sock"));
        let p = keeping(
            &path,
            &store,
            (Duration::from_millis(20), Duration::from_millis(100)),
        );
        p.publish(Event::start(&TaskStart::new()));
        p.publish(Event::oom(&TaskOOM::new()));
        p.publish(Event::exit(&TaskExit::new()));
        assert!(p.flush(Duration::from_secs(5)).await);
        assert_eq!(store.load().unwrap().len(), 3, "kept, not dropped");

        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let sink = Arc::new(Sink::default());
        tokio::spawn(serve(listener, sink.clone()));
        p.publish(Event::delete(&TaskDelete::new()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while sink.got.lock().unwrap().len() < 4 {
            assert!(tokio::time::Instant::now() < deadline, "not replayed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let topics: Vec<String> = sink
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|g| g.1.clone())
            .collect();
        assert_eq!(
            topics,
            ["/tasks/start", "/tasks/oom", "/tasks/exit", "/tasks/delete"]
        );
        // Each is removed from the store once containerd answered it, just
        // after the sink above saw it.
        while !store.is_empty() || store.path().exists() {
            assert!(tokio::time::Instant::now() < deadline, "store not emptied");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A shim told to shut down while it keeps events (containerd deleted
    /// its task while still loading) delivers them once containerd takes
    /// events, even though its probe backoff had grown long; if containerd
    /// never does, the kept events are dropped and the store file removed.
    #[tokio::test]
    async fn kept_events_are_delivered_before_a_shutdown_completes() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ttrpc.sock");
        let store = Store::for_socket(&d.path().join("shim.sock"));
        // Probes as long apart as a real shim's after a long outage.
        let long = (Duration::from_secs(60), Duration::from_secs(60));
        let p = keeping(&path, &store, long);
        p.publish(Event::exit(&TaskExit::new()));
        p.publish(Event::delete(&TaskDelete::new()));
        assert!(p.flush(Duration::from_secs(5)).await);
        assert_eq!(store.load().unwrap().len(), 2);
        let sink = Arc::new(Sink::default());
        let (path2, sink2) = (path.clone(), sink.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let listener = tokio::net::UnixListener::bind(&path2).unwrap();
            serve(listener, sink2).await
        });
        let held = store.hold().unwrap();
        assert!(p.deliver_kept(&store, Duration::from_secs(20)).await);
        drop(held);
        let topics: Vec<String> = sink
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|g| g.1.clone())
            .collect();
        assert_eq!(topics, ["/tasks/exit", "/tasks/delete"]);
        assert!(!store.path().exists());

        // containerd never takes them: dropped within the limit, file gone.
        let _ = std::fs::remove_file(&path);
        let lone = keeping(&d.path().join("nobody.sock"), &store, long);
        lone.publish(Event::exit(&TaskExit::new()));
        assert!(lone.flush(Duration::from_secs(5)).await);
        assert!(!store.is_empty());
        assert!(!lone.deliver_kept(&store, Duration::from_millis(500)).await);
        assert!(!store.path().exists());
    }
}
