//! Events to containerd, sent by a thread of their own.
//!
//! A Task call never waits for containerd to take an event (containerd may be busy with
//! that very call, or restarting), and events leave in the order they were published:
//! TaskCreate before TaskStart before TaskExit.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::time::Duration;

use containerd_shim as shim;
use shim::protos::protobuf::MessageDyn;
use shim::protos::ttrpc::context::Context as TtrpcCallContext;
use shim::publisher::RemotePublisher;

enum Outgoing {
    Event {
        topic: &'static str,
        event: Box<dyn MessageDyn>,
    },
    /// Answered once everything before it was sent.
    Flush(Sender<()>),
}

pub struct Events {
    queue: Mutex<Sender<Outgoing>>,
}

impl Events {
    /// Starts the sending thread. Should that fail (the process is out of threads), every
    /// event is reported lost in the log.
    pub fn start(namespace: String, publisher: RemotePublisher) -> Events {
        let (queue, outgoing) = mpsc::channel();
        let started = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || send_all(&namespace, publisher, outgoing));
        if let Err(e) = started {
            log::error!("cannot start the thread that sends events to containerd: {e}");
        }
        Events {
            queue: Mutex::new(queue),
        }
    }

    /// Queues an event for containerd.
    pub fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        self.send(Outgoing::Event { topic, event });
    }

    /// Waits (at most `patience`) until every event queued so far was sent: before the
    /// shim exits.
    pub fn flush(&self, patience: Duration) {
        let (done, sent) = mpsc::channel();
        self.send(Outgoing::Flush(done));
        if sent.recv_timeout(patience).is_err() {
            log::warn!("events to containerd not all sent within {patience:?}");
        }
    }

    fn send(&self, outgoing: Outgoing) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.send(outgoing).is_err() {
            log::warn!("the events thread is gone: an event to containerd was lost");
        }
    }
}

/// The sending thread. A failure is logged, not fatal. The connection does not survive a
/// restart of containerd, so after a failure it is made again (containerd's address is in
/// `TTRPC_ADDRESS`) and the event sent once more.
fn send_all(namespace: &str, mut publisher: RemotePublisher, outgoing: Receiver<Outgoing>) {
    let send = |publisher: &RemotePublisher, topic: &str, event| {
        publisher.publish(TtrpcCallContext::default(), topic, namespace, event)
    };
    for item in outgoing {
        let (topic, event) = match item {
            Outgoing::Event { topic, event } => (topic, event),
            Outgoing::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let Err(first) = send(&publisher, topic, event.clone_box()) else {
            continue;
        };
        let again = std::env::var("TTRPC_ADDRESS")
            .map_err(|e| shim::Error::Other(format!("TTRPC_ADDRESS: {e}")))
            .and_then(RemotePublisher::new)
            .and_then(|fresh| {
                send(&fresh, topic, event)?;
                Ok(fresh)
            });
        match again {
            Ok(fresh) => publisher = fresh,
            Err(e) => log::warn!("publishing {topic}: {first}; connecting again: {e}"),
        }
    }
}
