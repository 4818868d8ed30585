//! Where task events go. The shim publishes to containerd through a single
//! thread, so events keep their order and no request waits on containerd.
//!
//! Events are wrapped in `Any` with their type name given here, not looked
//! up through protobuf reflection: building the reflective descriptors
//! costs a few hundred KiB of heap in every shim process.

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim::events_ttrpc::EventsClient;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc;
use containerd_shim::Context;
use std::sync::mpsc;

pub type Event = Box<dyn MessageDyn + Send>;

pub trait EventSink: Send + Sync + 'static {
    fn publish(&self, topic: &'static str, event: Event);
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

impl RemoteEvents {
    pub fn new(address: &str, namespace: String) -> anyhow::Result<RemoteEvents> {
        let fd =
            containerd_shim::util::connect(address).map_err(|e| anyhow::anyhow!("connecting to {address}: {e}"))?;
        let client = EventsClient::new(ttrpc::Client::new(fd)?);
        let (tx, rx) = mpsc::channel::<(&'static str, Event)>();
        std::thread::Builder::new().name("events".into()).spawn(move || {
            for (topic, event) in rx {
                let event: Box<dyn MessageDyn> = event;
                let mut value = Vec::new();
                let (Some(type_url), Ok(())) = (type_url(topic), event.write_to_vec_dyn(&mut value)) else {
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
                if let Err(e) = client.forward(Context::default(), &req) {
                    log::warn!("publishing {topic}: {e}");
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
