//! `husk-agent`: PID 1 of the husk guest (the initramfs's `/init`), and the same agent as
//! a host process for the host backend and the tests.
//!
//! As PID 1 (no arguments) it:
//! 1. mounts proc, sysfs, devtmpfs, devpts, `/dev/shm`, `/run` and cgroup v2;
//! 2. prints `husk-agent: cpus=<online cpus> mem_total_kib=<MemTotal>`;
//! 3. listens on vsock port 1024 (`husk_protocol::AGENT_VSOCK_PORT`), prints
//!    `husk-agent ready` and writes one byte to the VMM's boot-timer port 0x440, so the
//!    VMM timestamps readiness without parsing the console;
//! 4. with `husk.exit_after_ready` on the kernel command line, syncs and resets (husk
//!    runs the kernel with `reboot=k`, so `husk vmm` ends with status 0); otherwise it
//!    serves the protocol (see `husk-protocol`) and reaps every process for ever.
//!
//! `husk-agent --listen unix:PATH [--run-dir DIR]` serves the protocol from a host
//! process (as root): containers are created the same way, without a VM around them.
//! The agent makes itself a child subreaper so that container processes are its
//! children, as they are of PID 1 in a VM.
//!
//! `husk-agent container-init|container-exec` are the agent's own helpers for creating
//! a container process (see `container::spawn`); nobody else runs them.
//!
//! It never panics: a PID 1 exit panics the kernel. Errors are logged (console, and the
//! host as `Log` events) and the agent carries on.

mod console;
mod container;
mod error;
mod events;
mod isolate;
mod mounts;
mod network;
mod ready;
mod reaper;
mod sandbox;
mod server;
mod stdio;
mod sysinfo;
mod system;

use std::path::PathBuf;
use std::sync::Arc;

use husk_protocol::{ListenAddress, Listener, AGENT_VSOCK_PORT};

use error::Error;
use sandbox::Sandbox;

/// The kernel command-line word that makes the agent reboot the guest once it is ready.
const EXIT_AFTER_READY: &str = "husk.exit_after_ready";
/// Where container directories go in the guest.
const GUEST_RUN_DIR: &str = "/run/husk";

const USAGE: &str = "usage: husk-agent                       (as PID 1 in a husk VM)
       husk-agent --listen unix:PATH [--run-dir DIR] [--isolate [--shared DIR]]   (on the host, as root)
       husk-agent container-run BUNDLE     (run one bundle's config.json in the foreground)";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The agent's own helpers, before any thread or logger exists.
    match args.first().map(String::as_str) {
        Some(kind @ ("container-init" | "container-exec")) => {
            std::process::exit(container::spawn::helper_main(kind))
        }
        Some("container-run") => match args.get(1) {
            Some(bundle) => std::process::exit(container::spawn::run_bundle(bundle.as_ref())),
            None => {
                console::error(&"container-run needs a bundle directory");
                std::process::exit(2);
            }
        },
        _ => {}
    }
    // Before any thread exists: SIGCHLD stays pending for the reaper.
    reaper::block_sigchld();
    events::init_logging();

    // SAFETY: getpid() has no preconditions and cannot fail.
    let pid = unsafe { libc::getpid() };
    // PID 1 of a VM, not of the PID namespace of an isolated host agent (`--listen`).
    if pid == 1 && !args.iter().any(|a| a == "--listen") {
        // The kernel hands init the words of its command line that it does not know
        // (`nomodule`, say): PID 1 must not exit over them, it would panic the guest.
        if !args.is_empty() {
            log::info!("ignoring arguments from the kernel: {}", args.join(" "));
        }
        run_as_init();
    }
    match parse_host_args(&args) {
        Ok(host) if host.isolate => isolate::run_isolated(&args, host.shared.as_deref()),
        Ok(host) => run_on_host(&host.address, host.run_dir),
        Err(message) => {
            console::error(&message);
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

/// How the agent runs on the host.
struct HostArgs {
    address: ListenAddress,
    run_dir: PathBuf,
    /// Serve from PID 1 of new PID and mount namespaces (see `isolate`).
    isolate: bool,
    /// With `isolate`: the one host directory whose later mounts the namespace receives.
    shared: Option<PathBuf>,
}

fn parse_host_args(args: &[String]) -> Result<HostArgs, String> {
    let mut address = None;
    let mut run_dir = PathBuf::from("/run/husk-agent");
    let mut isolate = false;
    let mut shared = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => address = Some(value()?.parse::<ListenAddress>()?),
            "--run-dir" => run_dir = PathBuf::from(value()?),
            "--isolate" => isolate = true,
            "--shared" => shared = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    let address = address.ok_or("--listen is required when not running as PID 1")?;
    Ok(HostArgs {
        address,
        run_dir,
        isolate,
        shared,
    })
}

fn run_on_host(address: &ListenAddress, run_dir: PathBuf) -> ! {
    if rustix::process::getpid().is_init() {
        isolate::enter_as_inner();
    }
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        log::warn!("cannot become a child subreaper: {e}; container exits may be missed");
    }
    let listener = match Listener::bind(address) {
        Ok(listener) => listener,
        Err(e) => {
            console::error(&format_args!("cannot listen on {address:?}: {e}"));
            std::process::exit(1);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&run_dir) {
        console::error(&format_args!("cannot create {}: {e}", run_dir.display()));
        std::process::exit(1);
    }
    let sandbox = Arc::new(Sandbox::new(run_dir, false));
    start_background(&sandbox);
    log::info!("listening on {address:?}");
    server::serve(listener, sandbox)
}

fn run_as_init() -> ! {
    if let Err(error) = mounts::leave_initramfs() {
        console::error(&error);
    }
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
    let listener = Listener::bind(&ListenAddress::Vsock(AGENT_VSOCK_PORT));
    if let Err(e) = &listener {
        // A VM without a vsock device (a bare `husk vmm`) is not an error: nobody will
        // call.
        log::warn!("not serving the protocol: cannot listen on vsock port {AGENT_VSOCK_PORT} (no vsock device?): {e}");
    }
    console::say(format_args!("husk-agent ready"));
    if let Err(error) = ready::signal_ready() {
        console::error(&error);
    }
    match sysinfo::kernel_cmdline() {
        Ok(cmdline) if sysinfo::has_word(&cmdline, EXIT_AFTER_READY) => system::power_off(),
        Ok(_) => {}
        Err(error) => console::error(&error),
    }
    let sandbox = Arc::new(Sandbox::new(PathBuf::from(GUEST_RUN_DIR), true));
    start_background(&sandbox);
    match listener {
        Ok(listener) => server::serve(listener, sandbox),
        // Nothing to serve: stay PID 1 and keep reaping.
        Err(_) => loop {
            std::thread::park();
        },
    }
}

/// The reaper and the OOM watcher.
fn start_background(sandbox: &Arc<Sandbox>) {
    reaper::reaper();
    let for_oom = sandbox.clone();
    if let Err(e) = std::thread::Builder::new()
        .name("oom-watch".into())
        .spawn(move || for_oom.watch_oom())
    {
        log::error!("cannot start the OOM watcher: {e}");
    }
}

/// Prints `result`'s error, if any, and passes its value on.
fn report<T>(result: Result<T, Error>) -> Option<T> {
    result.map_err(|error| console::error(&error)).ok()
}

/// A value for the report line: the number, or `?` when it could not be read.
fn display(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}
