//! Where task events go. The shim publishes to containerd through a single
//! thread, so events keep their order and no request waits on containerd.
//!
//! Events are encoded through their concrete types and wrapped in `Any`
//! with the type name given here: anything that goes through protobuf
//! reflection (`MessageDyn`, `descriptor()`) builds the reflective
//! descriptors of the whole proto set, some 460 KiB of heap in every shim
//! process.

use anyhow::Context;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::ttrpc::proto::{MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX, MESSAGE_TYPE_RESPONSE};
use containerd_shim::protos::ttrpc::{Code, MessageHeader};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

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
        topics::TASK_EXEC_ADDED_EVENT_TOPIC => "containerd.events.TaskExecAdded",
        topics::TASK_EXEC_STARTED_EVENT_TOPIC => "containerd.events.TaskExecStarted",
        topics::TASK_PAUSED_EVENT_TOPIC => "containerd.events.TaskPaused",
        topics::TASK_RESUMED_EVENT_TOPIC => "containerd.events.TaskResumed",
        _ => return None,
    })
}

/// Publishes to containerd's event service (`TTRPC_ADDRESS`).
pub struct RemoteEvents {
    tx: mpsc::Sender<(&'static str, Event)>,
}

/// How long one event is retried (reconnecting) before it is given up:
/// long enough for containerd to restart.
const RETRY_FOR: Duration = Duration::from_secs(30);

/// containerd's event service, as its ttrpc clients name it.
const EVENTS_SERVICE: &str = "containerd.services.events.ttrpc.v1.Events";

/// How long a call may wait on the socket (one read or one write) before it
/// fails: a wedged containerd must not hold up the events thread for good.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A blocking ttrpc connection to containerd's event service, for its one
/// call, `Forward`.
///
/// ttrpc's own sync client keeps a receiver thread that polls the socket
/// every 10 ms for as long as the connection lives, so even an idle shim
/// woke up 100 times a second. Here the events thread writes a request and
/// reads its answer, and nothing else touches the socket: between events
/// the thread sleeps in the channel receive. The socket timeouts are no
/// timers; they only bound a read or write that is under way.
///
/// Calls go one at a time, so the answer to a call is the next frame.
/// A connection whose call failed is not used again: the late answer to a
/// timed-out call would be read as the next call's.
struct EventsConn {
    stream: UnixStream,
    /// The stream id of the next call: a client's ids are odd and go up by 2.
    next_stream_id: u32,
}

impl EventsConn {
    /// Connects to `address`, a socket path, bare or as `unix://<path>`
    /// (the forms `containerd_shim::util::connect` takes).
    fn connect(address: &str) -> anyhow::Result<EventsConn> {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        let stream = UnixStream::connect(path).with_context(|| format!("connecting to {address}"))?;
        EventsConn::new(stream)
    }

    fn new(stream: UnixStream) -> anyhow::Result<EventsConn> {
        stream.set_read_timeout(Some(CALL_TIMEOUT)).context("setting the socket's read timeout")?;
        stream.set_write_timeout(Some(CALL_TIMEOUT)).context("setting the socket's write timeout")?;
        Ok(EventsConn { stream, next_stream_id: 1 })
    }

    /// Calls `Events.Forward` and waits for the answer: an error unless
    /// containerd answers with an OK status.
    fn forward(&mut self, req: &ForwardRequest) -> anyhow::Result<()> {
        let request = ttrpc::Request {
            service: EVENTS_SERVICE.to_string(),
            method: "Forward".to_string(),
            payload: req.write_to_bytes().context("encoding the forward request")?,
            // containerd's deadline for the call, the one this side keeps.
            timeout_nano: CALL_TIMEOUT.as_nanos() as i64,
            ..Default::default()
        };
        let body = request.write_to_bytes().context("encoding the ttrpc request")?;
        anyhow::ensure!(body.len() <= MESSAGE_LENGTH_MAX, "a request of {} bytes is over ttrpc's limit", body.len());
        let stream_id = self.next_stream_id;
        self.next_stream_id = stream_id.wrapping_add(2);
        let mut frame: Vec<u8> = MessageHeader::new_request(stream_id, body.len() as u32).into();
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame).context("sending the request")?;

        let mut header = [0u8; MESSAGE_HEADER_LENGTH];
        self.stream.read_exact(&mut header).context("reading the answer's header")?;
        let header = MessageHeader::from(header);
        anyhow::ensure!(
            header.type_ == MESSAGE_TYPE_RESPONSE,
            "answered with a frame of type {} where a response was due",
            header.type_
        );
        anyhow::ensure!(
            header.stream_id == stream_id,
            "answered on stream {} a call made on stream {stream_id}",
            header.stream_id
        );
        let len = header.length as usize;
        anyhow::ensure!(len <= MESSAGE_LENGTH_MAX, "an answer of {len} bytes is over ttrpc's limit");
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).context("reading the answer")?;
        let response = ttrpc::Response::parse_from_bytes(&body).context("decoding the answer")?;
        // No status is an OK one, as with ttrpc's own client.
        let status = response.status();
        anyhow::ensure!(status.code() == Code::OK, "containerd answered {:?}: {}", status.code(), status.message);
        Ok(())
    }
}

impl RemoteEvents {
    pub fn new(address: &str, namespace: String) -> anyhow::Result<RemoteEvents> {
        let mut conn = Some(EventsConn::connect(address)?);
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
                let mut pause = Duration::from_millis(20);
                loop {
                    // The connection is kept only if the call succeeds.
                    let sent = match conn.take() {
                        Some(c) => Ok(c),
                        None => EventsConn::connect(&address),
                    }
                    .and_then(|mut c| {
                        c.forward(&req)?;
                        Ok(c)
                    });
                    let e = match sent {
                        Ok(c) => {
                            conn = Some(c);
                            break;
                        }
                        Err(e) => e,
                    };
                    if std::time::Instant::now() > deadline {
                        log::warn!("publishing {topic}: {e:#}; giving the event up");
                        break;
                    }
                    log::debug!("publishing {topic}: {e:#}; reconnecting to {address}");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
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
    use containerd_shim::protos::events::task::{
        TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused, TaskResumed, TaskStart,
    };
    use containerd_shim::protos::protobuf::MessageFull;
    use containerd_shim::protos::ttrpc::proto::MESSAGE_TYPE_REQUEST;

    #[test]
    fn type_urls_match_the_messages() {
        let cases: [(&str, String); 9] = [
            (topics::TASK_CREATE_EVENT_TOPIC, TaskCreate::descriptor().full_name().to_string()),
            (topics::TASK_START_EVENT_TOPIC, TaskStart::descriptor().full_name().to_string()),
            (topics::TASK_EXIT_EVENT_TOPIC, TaskExit::descriptor().full_name().to_string()),
            (topics::TASK_DELETE_EVENT_TOPIC, TaskDelete::descriptor().full_name().to_string()),
            (topics::TASK_PAUSED_EVENT_TOPIC, TaskPaused::descriptor().full_name().to_string()),
            (topics::TASK_RESUMED_EVENT_TOPIC, TaskResumed::descriptor().full_name().to_string()),
            (topics::TASK_OOM_EVENT_TOPIC, TaskOOM::descriptor().full_name().to_string()),
            (topics::TASK_EXEC_ADDED_EVENT_TOPIC, TaskExecAdded::descriptor().full_name().to_string()),
            (topics::TASK_EXEC_STARTED_EVENT_TOPIC, TaskExecStarted::descriptor().full_name().to_string()),
        ];
        for (topic, name) in cases {
            assert_eq!(type_url(topic), Some(name.as_str()), "{topic}");
        }
        assert_eq!(type_url("/tasks/unknown"), None);
    }

    /// Plays containerd for one call: reads a request frame, checks it is an
    /// `Events.Forward` carrying a `ForwardRequest`, and answers `status` on
    /// the request's stream. Gives the call's stream id and event topic.
    fn serve_forward(stream: &mut UnixStream, status: ttrpc::Status) -> (u32, String) {
        let mut header = [0u8; MESSAGE_HEADER_LENGTH];
        stream.read_exact(&mut header).unwrap();
        let header = MessageHeader::from(header);
        assert_eq!(header.type_, MESSAGE_TYPE_REQUEST);
        let mut body = vec![0u8; header.length as usize];
        stream.read_exact(&mut body).unwrap();
        let req = ttrpc::Request::parse_from_bytes(&body).unwrap();
        assert_eq!(req.service, "containerd.services.events.ttrpc.v1.Events");
        assert_eq!(req.method, "Forward");
        let forward = ForwardRequest::parse_from_bytes(&req.payload).unwrap();
        let response = ttrpc::Response { status: MessageField::some(status), ..Default::default() };
        let body = response.write_to_bytes().unwrap();
        let mut frame: Vec<u8> = MessageHeader::new_response(header.stream_id, body.len() as u32).into();
        frame.extend_from_slice(&body);
        stream.write_all(&frame).unwrap();
        (header.stream_id, forward.envelope.topic.clone())
    }

    #[test]
    fn events_are_forwarded_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ttrpc.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // The address as containerd_shim::util::connect took it too.
        let events = RemoteEvents::new(&format!("unix://{}", path.display()), "default".into()).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        // A client that never calls fails the test instead of hanging it.
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        events.publish(topics::TASK_START_EVENT_TOPIC, encode(&TaskStart { pid: 7, ..Default::default() }));
        events.publish(topics::TASK_EXIT_EVENT_TOPIC, encode(&TaskExit { pid: 7, ..Default::default() }));
        let ok = || ttrpc::get_status(Code::OK, "");
        assert_eq!(serve_forward(&mut stream, ok()), (1, topics::TASK_START_EVENT_TOPIC.to_string()));
        assert_eq!(serve_forward(&mut stream, ok()), (3, topics::TASK_EXIT_EVENT_TOPIC.to_string()));
    }

    #[test]
    fn a_call_fails_on_a_non_ok_status() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            serve_forward(&mut server, ttrpc::get_status(Code::NOT_FOUND, "no such namespace"));
        });
        let mut conn = EventsConn::new(client).unwrap();
        let req = ForwardRequest {
            envelope: MessageField::some(Envelope {
                topic: topics::TASK_CREATE_EVENT_TOPIC.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = conn.forward(&req).unwrap_err();
        // Closed, so a server still waiting for a request fails instead of hanging.
        drop(conn);
        server.join().unwrap();
        let e = format!("{e:#}");
        assert!(e.contains("NOT_FOUND") && e.contains("no such namespace"), "{e}");
    }

    #[test]
    fn a_first_connect_that_fails_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(RemoteEvents::new(dir.path().join("absent.sock").to_str().unwrap(), "default".into()).is_err());
    }
}
