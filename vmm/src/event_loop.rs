//! The VMM's event loop thread: one epoll (event-manager) for every device event that does
//! not happen on a vCPU. Virtio devices register their queue and backend events here; the
//! loop itself also watches its quit signal, written when the VM stops.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::exit::{ExitReason, ExitState};

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum EventLoopError {
    /// Cannot create the event loop: {0}
    Create(event_manager::Error),
    /// Cannot create an event fd: {0}
    EventFd(std::io::Error),
    /// Cannot start the event loop thread: {0}
    Spawn(std::io::Error),
}

/// Watches the loop's own quit signal.
struct QuitEvent {
    quit: EventFd,
    exit: Arc<ExitState>,
    quitting: bool,
}

impl MutEventSubscriber for QuitEvent {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.quit.read();
        self.quitting = true;
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.quit, EventSet::IN)) {
            self.exit.request(ExitReason::EventLoop(format!(
                "cannot watch an event: {e:?}"
            )));
        }
    }
}

/// A running event loop thread.
pub struct EventLoop {
    quit: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    /// Starts the loop; a failure of the loop itself stops the VM through `exit`.
    /// With `seccomp`, the thread installs its filter before it waits for anything.
    pub fn start(
        exit: Arc<ExitState>,
        subscribers: Vec<Subscriber>,
        seccomp: bool,
    ) -> Result<Self, EventLoopError> {
        let quit = EventFd::new(libc::EFD_NONBLOCK).map_err(EventLoopError::EventFd)?;
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(EventLoopError::Create)?;
        let quit_event = Arc::new(Mutex::new(QuitEvent {
            quit: quit.try_clone().map_err(EventLoopError::EventFd)?,
            exit: exit.clone(),
            quitting: false,
        }));
        manager.add_subscriber(quit_event.clone());
        for subscriber in subscribers {
            manager.add_subscriber(subscriber);
        }
        let thread = std::thread::Builder::new()
            .name("husk-event-loop".into())
            .spawn(move || {
                if seccomp {
                    if let Err(e) = husk_seccomp::confine(husk_seccomp::ThreadKind::EventLoop) {
                        exit.request(ExitReason::Seccomp(e.to_string()));
                        return;
                    }
                }
                loop {
                    if let Err(e) = manager.run() {
                        exit.request(ExitReason::EventLoop(format!("{e:?}")));
                        return;
                    }
                    if quit_event.lock().map(|q| q.quitting).unwrap_or(true) {
                        return;
                    }
                }
            })
            .map_err(EventLoopError::Spawn)?;
        Ok(Self {
            quit,
            thread: Some(thread),
        })
    }

    /// Stops the loop and waits for its thread.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if self.quit.write(1).is_ok() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}
