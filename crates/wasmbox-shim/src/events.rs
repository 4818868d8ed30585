//! Where task events go. The shim publishes to containerd through a single
//! thread, so events keep their order and no request waits on containerd.
//!
//! Events are encoded through their concrete types and wrapped in `Any`
//! with the type name given here: anything that goes through protobuf
//! reflection (`MessageDyn`, `descriptor()`) builds the reflective
//! descriptors of the whole proto set, some 460 KiB of heap in every shim
//! process.

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim::events_ttrpc::EventsClient;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc;
use std::sync::mpsc;

/// An encoded event message, of the type [`type_url`] names for its topic.
pub type Event = Vec<u8>;

pub trait EventSink: Send + Sync + 'static {
    fn publish(&self, topic: &'static str, event: Event);
}

/// Encodes an event with its generated code (no reflection).
pub fn encode(event: &impl Message) -> Event {
    event.write_to_bytes().unwrap_or_default()
}

/// The protobuf type of the event published on `topic`.
pub fn type_url(topic: &str) -> Option<&'static str> {
    Some(match topic {
        topics::TASK_CREATE_EVENT_TOPIC => "containerd.events.TaskCreate",
        topics::TASK_START_EVENT_TOPIC => "containerd.events.TaskStart",
        topics::TASK_EXIT_EVENT_TOPIC => "containerd.events.TaskExit",
        topics::TASK_DELETE_EVENT_TOPIC => "containerd.events.TaskDelete",
        topics::TASK_OOM_EVENT_TOPIC => "containerd.events.TaskOOM",
        _ => return None,
    })
}

/// Publishes to containerd's event service (`TTRPC_ADDRESS`).
pub struct RemoteEvents {
    tx: mpsc::Sender<(&'static str, Event)>,
}

/// How long one event is retried (reconnecting) before it is given up:
/// long enough for containerd to restart.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(30);

fn events_client(address: &str) -> anyhow::Result<EventsClient> {
    let fd = containerd_shim::util::connect(address).map_err(|e| anyhow::anyhow!("connecting to {address}: {e}"))?;
    Ok(EventsClient::new(ttrpc::Client::new(fd)?))
}

impl RemoteEvents {
    pub fn new(address: &str, namespace: String) -> anyhow::Result<RemoteEvents> {
        let mut client = Some(events_client(address)?);
        let address = address.to_string();
        let (tx, rx) = mpsc::channel::<(&'static str, Event)>();
        std::thread::Builder::new().name("events".into()).spawn(move || {
            for (topic, value) in rx {
                let Some(type_url) = type_url(topic) else {
                    log::warn!("cannot publish an event on {topic}");
                    continue;
                };
                let req = ForwardRequest {
                    envelope: MessageField::some(Envelope {
                        timestamp: MessageField::some(Timestamp::now()),
                        namespace: namespace.clone(),
                        topic: topic.to_string(),
                        event: MessageField::some(Any { type_url: type_url.to_string(), value, ..Default::default() }),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                // A connection broken by a containerd restart does not come
                // back by itself: reconnect and retry, in order, for a while.
                let deadline = std::time::Instant::now() + RETRY_FOR;
                let mut pause = std::time::Duration::from_millis(20);
                loop {
                    let sent = match &client {
                        Some(c) => c
                            .forward(ttrpc::context::with_timeout(5_000_000_000), &req)
                            .map(|_| ())
                            .map_err(anyhow::Error::from),
                        None => Err(anyhow::anyhow!("not connected")),
                    };
                    let Err(e) = sent else { break };
                    if std::time::Instant::now() > deadline {
                        log::warn!("publishing {topic}: {e}; giving the event up");
                        break;
                    }
                    log::debug!("publishing {topic}: {e}; reconnecting to {address}");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_secs(1));
                    client = events_client(&address).ok();
                }
            }
        })?;
        Ok(RemoteEvents { tx })
    }
}

impl EventSink for RemoteEvents {
    fn publish(&self, topic: &'static str, event: Event) {
        let _ = self.tx.send((topic, event));
    }
}

/// Keeps the topics it is handed (for tests).
#[derive(Default)]
pub struct Recorder(pub std::sync::Mutex<Vec<&'static str>>);

impl EventSink for Recorder {
    fn publish(&self, topic: &'static str, _event: Event) {
        self.0.lock().unwrap().push(topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
    use containerd_shim::protos::protobuf::MessageFull;

    #[test]
    fn type_urls_match_the_messages() {
        let cases: [(&str, String); 4] = [
            (topics::TASK_CREATE_EVENT_TOPIC, TaskCreate::descriptor().full_name().to_string()),
            (topics::TASK_START_EVENT_TOPIC, TaskStart::descriptor().full_name().to_string()),
            (topics::TASK_EXIT_EVENT_TOPIC, TaskExit::descriptor().full_name().to_string()),
            (topics::TASK_DELETE_EVENT_TOPIC, TaskDelete::descriptor().full_name().to_string()),
        ];
        for (topic, name) in cases {
            assert_eq!(type_url(topic), Some(name.as_str()), "{topic}");
        }
        assert_eq!(type_url("/tasks/unknown"), None);
    }
}
