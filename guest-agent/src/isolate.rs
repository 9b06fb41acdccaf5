//! `--isolate`: the host agent serves from PID 1 of its own PID and mount namespaces, as
//! the runtime's host backend runs it. Nothing it starts can then outlive it: when PID 1
//! of a PID namespace dies the kernel kills every process in the namespace, and a mount
//! namespace (with every container rootfs mount in it) goes with its last process.
//!
//! A process cannot move itself into a new PID namespace, only its children. So the agent
//! started with `--isolate` (the outer one) unshares, starts itself again without the
//! flag (the inner one, PID 1 of the new namespace) and waits for it, exiting with its
//! status. The inner one dies with the outer one (`PR_SET_PDEATHSIG`), so that killing
//! the process the runtime started, even with SIGKILL, ends the whole sandbox. (Should
//! the outer one die in the instant before the inner one asks for this, the inner one
//! would live on; nothing closes that window yet.)

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use rustix::mount::MountPropagationFlags;
use rustix::thread::UnshareFlags;

use crate::console;

/// The outer agent: never returns.
pub fn run_isolated(args: &[String], shared: Option<&Path>) -> ! {
    // SAFETY: unshare is unsafe because it can split the fd table (CLONE_FILES) from
    // other threads' view; the flags do not include CLONE_FILES, and no thread has been
    // started yet (CLONE_NEWNS would fail in a threaded process).
    let unshared =
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS | UnshareFlags::NEWPID) };
    if let Err(e) = unshared {
        fail(&format_args!("cannot create PID and mount namespaces: {e}"));
    }
    // Mounts made inside stay inside. Slaves first, not private: the directory the
    // runtime shares with us (`shared`, a shared mount it made before starting us) must
    // go on passing in the mounts made under it on the host, which is how a pod's later
    // containers' root file systems arrive. Every other mount that would receive from
    // the host (another sandbox's shared directory, say) is then made private.
    if let Err(e) = rustix::mount::mount_change(
        "/",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    ) {
        fail(&format_args!("cannot make the mounts slaves: {e}"));
    }
    if let Err(e) = receive_only_into(shared) {
        fail(&format_args!("cannot make the mounts private: {e}"));
    }
    let inner_args = args.iter().filter(|a| *a != "--isolate");
    let status = Command::new("/proc/self/exe")
        .args(inner_args)
        .status()
        .unwrap_or_else(|e| fail(&format_args!("cannot start the isolated agent: {e}")));
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    std::process::exit(code)
}

/// Makes every mount that receives mounts from the host private, except `shared`.
fn receive_only_into(shared: Option<&Path>) -> Result<(), String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    for line in table.lines() {
        // Fields: id, parent, dev, root, mount point, options, optional fields up to "-".
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4) else {
            continue;
        };
        let optional = fields.iter().skip(6).take_while(|f| **f != "-");
        let receives = optional.into_iter().any(|f| f.starts_with("master:"));
        if !receives || shared == Some(Path::new(point)) {
            continue;
        }
        // A point with characters mountinfo escapes (`\040` for a space) is not found
        // under its escaped name and stays a slave: harmless, and logged.
        if let Err(e) = rustix::mount::mount_change(*point, MountPropagationFlags::PRIVATE) {
            console::error(&format_args!("leaving {point} a slave: {e}"));
        }
    }
    Ok(())
}

/// The inner agent, PID 1 of the new PID namespace, before it serves: it dies with the
/// outer one, and mounts a /proc of its own PID namespace over the host's (in its own
/// mount namespace), so that pids and /proc agree.
pub fn enter_as_inner() {
    if let Err(e) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
    {
        fail(&format_args!("cannot tie the agent to its parent: {e}"));
    }
    let flags = rustix::mount::MountFlags::NOSUID
        | rustix::mount::MountFlags::NODEV
        | rustix::mount::MountFlags::NOEXEC;
    if let Err(e) = rustix::mount::mount("proc", "/proc", "proc", flags, None::<&std::ffi::CStr>) {
        fail(&format_args!(
            "cannot mount /proc for the agent's PID namespace: {e}"
        ));
    }
}

fn fail(message: &dyn std::fmt::Display) -> ! {
    console::error(message);
    std::process::exit(1)
}
