//! Why a VM stopped, and the one place that records it: the first reason wins, every
//! thread sees that the VM is stopping.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

/// The reason a VM ended.
#[derive(Clone, Debug, PartialEq, Eq, displaydoc::Display)]
pub enum ExitReason {
    /// the guest reset the machine
    GuestReset,
    /// the guest shut the machine down
    GuestShutdown,
    /// the VM was stopped on request
    Stopped,
    /// vCPU {vcpu} triple-faulted (KVM_EXIT_SHUTDOWN)
    TripleFault { vcpu: u8 },
    /// vCPU {vcpu} stopped with a KVM internal error (KVM_EXIT_INTERNAL_ERROR, suberror {suberror})
    InternalError { vcpu: u8, suberror: u32 },
    /// vCPU {vcpu} failed to enter the guest (hardware reason {reason:#x} on CPU {cpu})
    FailEntry { vcpu: u8, reason: u64, cpu: u32 },
    /// vCPU {vcpu} exited for an unhandled reason: {what}
    UnexpectedExit { vcpu: u8, what: String },
    /// KVM_RUN failed on vCPU {vcpu} with errno {errno}
    VcpuFailed { vcpu: u8, errno: i32 },
    /// the VMM event loop failed: {0}
    EventLoop(String),
    /// {0}
    Seccomp(String),
}

impl ExitReason {
    /// True when the guest (or the user) ended the VM on purpose.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            ExitReason::GuestReset | ExitReason::GuestShutdown | ExitReason::Stopped
        )
    }
}

#[derive(Default)]
pub struct ExitState {
    reason: Mutex<Option<ExitReason>>,
    changed: Condvar,
    stopping: AtomicBool,
}

impl ExitState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `reason` unless another was recorded first, and marks the VM as stopping.
    pub fn request(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Blocks until some thread records a reason, and returns it.
    pub fn wait(&self) -> ExitReason {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(reason) = slot.as_ref() {
                return reason.clone();
            }
            slot = self.changed.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_reason_wins_and_wakes_waiters() {
        let state = Arc::new(ExitState::new());
        let waiter = {
            let state = state.clone();
            std::thread::spawn(move || state.wait())
        };
        state.request(ExitReason::TripleFault { vcpu: 1 });
        state.request(ExitReason::GuestReset);
        assert!(state.is_stopping());
        assert_eq!(waiter.join().unwrap(), ExitReason::TripleFault { vcpu: 1 });
        assert!(!ExitReason::TripleFault { vcpu: 1 }.is_clean());
        assert!(ExitReason::GuestReset.is_clean());
    }
}
