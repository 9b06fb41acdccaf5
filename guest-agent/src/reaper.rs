//! Reaping every child, its own and the orphans the kernel hands the agent (PID 1 in the
//! guest; a child subreaper on the host), and handing each exit status to whoever
//! waits for that pid.
//!
//! SIGCHLD is blocked in every thread from the start ([`block_sigchld`] runs before any
//! thread exists), so it stays pending until the reaper thread takes it with
//! `sigtimedwait` (an init process would otherwise drop a signal it has no handler for).
//! Each round reaps whatever has exited with `waitpid(-1, WNOHANG)`; the timeout is only
//! a safety net, so the thread never busy-loops.
//!
//! Nobody else may call `waitpid`: a child spawned with `std::process::Command` is
//! reaped here, never with `Child::wait`. Statuses nobody watches yet are kept for
//! [`UNCLAIMED_TTL`] (a watcher may register just after the exit) and then dropped
//! (orphans nobody cares about, and the container helpers).

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use husk_protocol::{ExitInfo, ExitStatus};

/// How long to sleep when no SIGCHLD arrives before checking again anyway.
const IDLE: Duration = Duration::from_secs(10);
/// How long an exit status nobody asked for is kept.
pub const UNCLAIMED_TTL: Duration = Duration::from_secs(120);

/// Called once with the exit of a watched pid, on the reaper thread: keep it short.
type ExitCallback = Box<dyn FnOnce(ExitInfo) + Send>;

#[derive(Default)]
struct State {
    /// Exits not claimed yet, with when they were reaped.
    exited: HashMap<i32, (ExitInfo, Instant)>,
    watchers: HashMap<i32, ExitCallback>,
}

pub struct Reaper {
    state: Mutex<State>,
}

/// Blocks SIGCHLD for the calling thread and every thread it creates later. Call it
/// first thing in `main`.
pub fn block_sigchld() {
    let set = sigchld_set();
    // SAFETY: `set` is an initialised signal set; the old mask is not asked for.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// The process's reaper, started on first use.
pub fn reaper() -> &'static Arc<Reaper> {
    static REAPER: OnceLock<Arc<Reaper>> = OnceLock::new();
    REAPER.get_or_init(|| {
        let reaper = Arc::new(Reaper {
            state: Mutex::new(State::default()),
        });
        let for_thread = reaper.clone();
        let spawned = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || for_thread.run());
        if let Err(e) = spawned {
            // Without its thread nothing is reaped; the agent still answers calls.
            log::error!("cannot start the reaper thread: {e}");
        }
        reaper
    })
}

impl Reaper {
    /// Calls `on_exit` once `pid` exits (at once if it already has).
    pub fn watch(&self, pid: i32, on_exit: impl FnOnce(ExitInfo) + Send + 'static) {
        let mut state = self.lock();
        if let Some((info, _)) = state.exited.remove(&pid) {
            drop(state);
            on_exit(info);
            return;
        }
        state.watchers.insert(pid, Box::new(on_exit));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn run(&self) {
        let set = sigchld_set();
        let timeout = libc::timespec {
            tv_sec: IDLE.as_secs() as libc::time_t,
            tv_nsec: 0,
        };
        loop {
            self.reap_exited();
            // SAFETY: `set` and `timeout` are valid for the call; no siginfo is asked
            // for. Its result does not matter: a SIGCHLD, the timeout (EAGAIN) and EINTR
            // all lead to another round of reaping.
            unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
        }
    }

    /// Reaps every child that has exited, without blocking.
    fn reap_exited(&self) {
        let mut reaped = Vec::new();
        loop {
            let mut status = 0;
            // SAFETY: `status` is valid for writing an int.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid > 0 {
                reaped.push((pid, decode(status)));
                continue;
            }
            if pid < 0 {
                let error = io::Error::last_os_error();
                match error.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ECHILD) => {}
                    _ => log::error!("waitpid(-1) failed: {error}"),
                }
            }
            break;
        }
        if reaped.is_empty() {
            return;
        }
        let now = Instant::now();
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut callbacks = Vec::new();
        {
            let mut state = self.lock();
            state
                .exited
                .retain(|_, (_, when)| now.duration_since(*when) < UNCLAIMED_TTL);
            for (pid, status) in reaped {
                let info = ExitInfo {
                    status,
                    exited_at_ns: at,
                };
                match state.watchers.remove(&pid) {
                    Some(callback) => callbacks.push((callback, info)),
                    None => {
                        state.exited.insert(pid, (info, now));
                    }
                }
            }
        }
        for (callback, info) in callbacks {
            callback(info);
        }
    }
}

/// A `waitpid` status as an exit code or a signal.
fn decode(status: i32) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    }
}

fn sigchld_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset() initialises the set it is given; SIGCHLD is a valid signal,
    // so neither call can fail.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGCHLD);
        set.assume_init()
    }
}
