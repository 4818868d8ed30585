//! Where task events go. The shim publishes to containerd through a single
//! thread, so events keep their order and no request waits on containerd.

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;
use std::sync::mpsc;

pub type Event = Box<dyn MessageDyn + Send>;

pub trait EventSink: Send + Sync + 'static {
    fn publish(&self, topic: &'static str, event: Event);
}

/// Publishes to containerd's event service (`TTRPC_ADDRESS`).
pub struct RemoteEvents {
    tx: mpsc::Sender<(&'static str, Event)>,
}

impl RemoteEvents {
    pub fn new(publisher: RemotePublisher, namespace: String) -> RemoteEvents {
        let (tx, rx) = mpsc::channel::<(&'static str, Event)>();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                for (topic, event) in rx {
                    if let Err(e) = publisher.publish(Context::default(), topic, &namespace, event) {
                        log::warn!("publishing {topic}: {e}");
                    }
                }
            })
            .expect("spawn event publisher");
        RemoteEvents { tx }
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
