//! What `husk run` and `husk exec` share as foreground commands: signals typed at husk
//! go to the container's process, and the terminal's size follows husk's.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGWINCH};

use crate::agent::AgentClient;
use crate::container::Interrupt;
use crate::stdio::terminal_size;

/// The process signals go to.
struct Aim {
    agent: Arc<AgentClient>,
    container_id: String,
    exec_id: Option<String>,
}

/// Where signals go: nowhere yet (then they abandon a start in progress), then the
/// process.
pub struct SignalTarget {
    pub interrupt: Interrupt,
    aim: Mutex<Option<Aim>>,
    terminal: bool,
}

impl SignalTarget {
    pub fn new(terminal: bool) -> Arc<SignalTarget> {
        Arc::new(SignalTarget {
            interrupt: Arc::new(AtomicBool::new(false)),
            aim: Mutex::new(None),
            terminal,
        })
    }

    fn aim_lock(&self) -> MutexGuard<'_, Option<Aim>> {
        self.aim.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on signals go to this process; its terminal gets husk's size.
    pub fn aim(&self, agent: Arc<AgentClient>, container_id: &str, exec_id: Option<&str>) {
        let aim = Aim {
            agent,
            container_id: container_id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
        };
        if self.terminal {
            resize(&aim);
        }
        *self.aim_lock() = Some(aim);
    }

    /// A thread that hands SIGINT, SIGTERM, SIGHUP and SIGQUIT to the process (or, before
    /// there is one, sets the interrupt) and SIGWINCH to its terminal.
    pub fn forward(self: &Arc<Self>) -> Result<signal_hook::iterator::Handle, String> {
        let mut signals =
            signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH])
                .map_err(|e| format!("cannot handle signals: {e}"))?;
        let handle = signals.handle();
        let target = self.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    let aim = target.aim_lock();
                    match (aim.as_ref(), signal) {
                        (Some(aim), SIGWINCH) if target.terminal => resize(aim),
                        (_, SIGWINCH) => {}
                        (Some(aim), signal) => {
                            let sent = aim.agent.signal(
                                &aim.container_id,
                                aim.exec_id.as_deref(),
                                signal,
                                false,
                            );
                            if let Err(e) = sent {
                                log::debug!("forwarding signal {signal}: {e}");
                            }
                        }
                        (None, _) => target.interrupt.store(true, Ordering::SeqCst),
                    }
                }
            })
            .map_err(|e| format!("cannot start the signal thread: {e}"))?;
        Ok(handle)
    }
}

fn resize(aim: &Aim) {
    let size = terminal_size(std::io::stdin().as_fd())
        .or_else(|| terminal_size(std::io::stdout().as_fd()));
    if let Some((rows, cols)) = size {
        let resized =
            aim.agent
                .resize_terminal(&aim.container_id, aim.exec_id.as_deref(), rows, cols);
        if let Err(e) = resized {
            log::debug!("resizing the terminal: {e}");
        }
    }
}
