//! `husk-agent`: PID 1 of the husk guest (the initramfs's `/init`).
//!
//! For now it brings the guest up and proves that it got there:
//! 1. mounts proc on `/proc`, sysfs on `/sys` and devtmpfs on `/dev` (creating the mount
//!    points if missing, skipping what is already mounted);
//! 2. prints `husk-agent: cpus=<online cpus> mem_total_kib=<MemTotal>` and then
//!    `husk-agent ready` on its stdout (the kernel's console);
//! 3. writes one byte to the VMM's boot-timer port 0x440, so the VMM timestamps readiness
//!    without parsing the console;
//! 4. with the word `husk.exit_after_ready` on the kernel command line, syncs and reboots
//!    (husk runs the kernel with `reboot=k`: an i8042 reset, which ends `husk vmm` with
//!    status 0); otherwise it stays PID 1 forever, reaping every child.
//!
//! It never panics and never returns: a PID 1 exit panics the kernel. Errors are printed as
//! `husk-agent: error: ...` and the agent carries on.

mod console;
mod error;
mod mounts;
mod ready;
mod reaper;
mod sysinfo;

use error::Error;

/// The kernel command-line word that makes the agent reboot the guest once it is ready.
const EXIT_AFTER_READY: &str = "husk.exit_after_ready";

fn main() {
    // SAFETY: getpid() has no preconditions and cannot fail.
    let pid = unsafe { libc::getpid() };
    if pid != 1 {
        console::error(&Error::NotPid1(pid));
        std::process::exit(2);
    }
    // Before anything else: keep SIGCHLD pending for the reaper (see reaper.rs).
    reaper::block_sigchld();

    for error in mounts::mount_all() {
        console::error(&error);
    }

    let cpus = report(sysinfo::online_cpus());
    let mem = report(sysinfo::mem_total_kib());
    console::say(format_args!(
        "husk-agent: cpus={} mem_total_kib={}",
        display(cpus),
        display(mem)
    ));
    console::say(format_args!("husk-agent ready"));

    if let Err(error) = ready::signal_ready() {
        console::error(&error);
    }

    match sysinfo::kernel_cmdline() {
        Ok(cmdline) if sysinfo::has_word(&cmdline, EXIT_AFTER_READY) => power_off(),
        Ok(_) => {}
        Err(error) => console::error(&error),
    }

    reaper::reap_forever()
}

/// Prints `result`'s error, if any, and passes its value on.
fn report<T>(result: Result<T, Error>) -> Option<T> {
    result.map_err(|error| console::error(&error)).ok()
}

/// A value for the report line: the number, or `?` when it could not be read.
fn display(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

/// Syncs and resets the machine. Only returns (after printing why) if reboot() failed; the
/// caller then goes on as PID 1.
fn power_off() {
    // SAFETY: sync() and reboot() take no pointers. reboot(RB_AUTOBOOT) restarts the
    // machine; file systems were just synced and nothing else in the guest holds state.
    let rc = unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT)
    };
    if rc != 0 {
        console::error(&Error::Reboot(std::io::Error::last_os_error()));
    }
}
