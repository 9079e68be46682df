//! Event publisher: task events go to containerd's ttrpc events service
//! (`containerd.services.events.ttrpc.v1.Events/Forward` on `$TTRPC_ADDRESS`)
//! through one ordered queue and one forwarder task.
//!
//! Order is preserved: an event is retried in place (5 s per attempt, a delay
//! of 1 s × attempt between attempts, dropped after 5 retries) before the next
//! one is sent. The connection is made lazily and remade after any failure.

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
use tokio::sync::{mpsc, oneshot};

use crate::ttrpc::Client;

const SERVICE: &str = "containerd.services.events.ttrpc.v1.Events";
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_RETRIES: u32 = 5;

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

/// The sending side of the event queue. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Publisher {
    /// Starts the forwarder for `namespace`, sending to `address` (or
    /// discarding events when `address` is empty).
    pub fn spawn(address: String, namespace: String) -> Publisher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(forward(rx, address, namespace));
        Publisher { tx }
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
        (Publisher { tx }, erx)
    }

    /// Queues an event; it is stamped now.
    pub fn publish(&self, e: Event) {
        let _ = self.tx.send(Msg::Event(e, SystemTime::now()));
    }

    /// Waits until everything queued before this call was sent or dropped,
    /// for at most `timeout`. Returns false on timeout.
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

async fn forward(mut rx: mpsc::UnboundedReceiver<Msg>, address: String, namespace: String) {
    let mut client: Option<Client> = None;
    while let Some(m) = rx.recv().await {
        let (e, at) = match m {
            Msg::Event(e, at) => (e, at),
            Msg::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        if address.is_empty() {
            continue;
        }
        let payload = envelope(&e, at, &namespace);
        let mut attempt = 0;
        loop {
            let res = async {
                if client.is_none() {
                    client = Some(Client::connect(&address).await?);
                }
                let c = client.as_mut().expect("connected above");
                c.call(
                    SERVICE,
                    "Forward",
                    payload.clone(),
                    &[("containerd-namespace-ttrpc", namespace.as_str())],
                    ATTEMPT_TIMEOUT,
                )
                .await
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string()))
            }
            .await;
            match res {
                Ok(()) => break,
                Err(err) => {
                    client = None;
                    attempt += 1;
                    if attempt > MAX_RETRIES {
                        crate::error!("dropping event {}: {err}", e.topic);
                        break;
                    }
                    crate::warn!("publish {} (attempt {attempt}): {err}", e.topic);
                    tokio::time::sleep(Duration::from_secs(attempt as u64)).await;
                }
            }
        }
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

    #[tokio::test]
    async fn forwards_in_order_with_namespace() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ttrpc.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let sink = Arc::new(Sink::default());
        tokio::spawn(serve(listener, sink.clone()));
        let p = Publisher::spawn(path.display().to_string(), "ns1".into());
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
}
