//! PID 1's duty: reaping every child, its own and the orphans the kernel hands it.
//!
//! SIGCHLD is blocked from the start, so it stays pending until `sigtimedwait` takes it
//! (an init process would otherwise drop a signal it has no handler for). The loop reaps
//! whatever has exited, then sleeps until the next SIGCHLD; the timeout is only a safety
//! net, so the agent never busy-loops, with or without children.
//! Children the agent starts later must unblock SIGCHLD after fork (the mask is inherited).

use std::io;
use std::mem::MaybeUninit;

use crate::console;
use crate::error::Error;

/// How long to sleep when no SIGCHLD arrives before checking again anyway.
const IDLE_SECONDS: libc::time_t = 60;

/// Blocks SIGCHLD for the whole process.
pub fn block_sigchld() {
    let set = sigchld_set();
    // SAFETY: `set` is an initialised signal set; the old mask is not asked for.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Reaps children forever.
pub fn reap_forever() -> ! {
    let set = sigchld_set();
    let timeout = libc::timespec {
        tv_sec: IDLE_SECONDS,
        tv_nsec: 0,
    };
    loop {
        reap_exited();
        // SAFETY: `set` and `timeout` are valid for the call; no siginfo is asked for.
        // Its result does not matter: a SIGCHLD, the timeout (EAGAIN) and EINTR all lead
        // to another round of reaping.
        unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
    }
}

/// Reaps every child that has exited, without blocking.
fn reap_exited() {
    loop {
        let mut status = 0;
        // SAFETY: `status` is valid for writing an int.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            continue;
        }
        if pid == 0 {
            return; // children remain, none has exited
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return, // no children at all
            _ => {
                console::error(&Error::Wait(error));
                return;
            }
        }
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
