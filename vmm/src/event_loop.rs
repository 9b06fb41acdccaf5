//! The VMM's event loop thread: one epoll (event-manager) for every device event that does
//! not happen on a vCPU. For now it turns the i8042 reset line into the VM's exit, and it
//! is woken to quit when the VM stops; virtio devices will register their queue and
//! backend events here.

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

/// Watches the guest's reset line and the loop's own quit signal.
struct VmEvents {
    reset: EventFd,
    quit: EventFd,
    exit: Arc<ExitState>,
    quitting: bool,
}

impl MutEventSubscriber for VmEvents {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        use std::os::fd::AsRawFd;
        if events.fd() == self.reset.as_raw_fd() {
            let _ = self.reset.read();
            self.exit.request(ExitReason::GuestReset);
        } else if events.fd() == self.quit.as_raw_fd() {
            let _ = self.quit.read();
            self.quitting = true;
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [&self.reset, &self.quit] {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                self.exit.request(ExitReason::EventLoop(format!(
                    "cannot watch an event: {e:?}"
                )));
            }
        }
    }
}

/// A running event loop thread.
pub struct EventLoop {
    quit: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    /// Starts the loop; `reset` is the eventfd the i8042 writes.
    pub fn start(reset: EventFd, exit: Arc<ExitState>) -> Result<Self, EventLoopError> {
        let quit = EventFd::new(libc::EFD_NONBLOCK).map_err(EventLoopError::EventFd)?;
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(EventLoopError::Create)?;
        let vm_events = Arc::new(Mutex::new(VmEvents {
            reset,
            quit: quit.try_clone().map_err(EventLoopError::EventFd)?,
            exit: exit.clone(),
            quitting: false,
        }));
        manager.add_subscriber(vm_events.clone());
        let thread = std::thread::Builder::new()
            .name("husk-event-loop".into())
            .spawn(move || loop {
                if let Err(e) = manager.run() {
                    exit.request(ExitReason::EventLoop(format!("{e:?}")));
                    return;
                }
                if vm_events.lock().map(|v| v.quitting).unwrap_or(true) {
                    return;
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
