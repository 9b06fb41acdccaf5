//! Boots a guest with spare drive slots and attaches and detaches drives on the guest's
//! request, through the VMM's `DriveHandle`: the host side of the lab's `hotplug` test
//! (tests/lab/guest/init.sh, `husk.test=hotplug`), or a way to try drive attach by hand.
//!
//! ```text
//! spare_drives --kernel K [--initrd I] [--cmdline C] [--mem-mib M] --console FILE
//!              [--spares N] [--drive ID=PATH[,ro]]...
//! ```
//!
//! The guest's console goes to FILE, which this program follows. A console line
//! `LABGUEST-ATTACH <id>` attaches the `--drive` of that id to a free spare slot;
//! `LABGUEST-DETACH <id>` detaches it. Each action is reported on stderr as
//! `spare_drives: attached <id>` (or `detached`) or `spare_drives: FAIL ...`. The exit
//! status is 0 when the VM ended cleanly and every action succeeded, 1 otherwise.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_vmm::{
    ConsoleConfig, DriveConfig, DriveHandle, KernelConfig, MemoryConfig, VcpuConfig, Vmm,
    VmmConfig, DEFAULT_CMDLINE,
};

struct Args {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
    mem_mib: u64,
    console: PathBuf,
    spares: u8,
    drives: HashMap<String, DriveConfig>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut kernel = None;
    let mut initrd = None;
    let mut cmdline = DEFAULT_CMDLINE.to_owned();
    let mut mem_mib = 256;
    let mut console = None;
    let mut spares = 2;
    let mut drives = HashMap::new();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--initrd" => initrd = Some(PathBuf::from(value()?)),
            "--cmdline" => cmdline = value()?,
            "--mem-mib" => mem_mib = value()?.parse().map_err(|e| format!("--mem-mib: {e}"))?,
            "--console" => console = Some(PathBuf::from(value()?)),
            "--spares" => spares = value()?.parse().map_err(|e| format!("--spares: {e}"))?,
            "--drive" => {
                let spec = value()?;
                let (id, rest) = spec
                    .split_once('=')
                    .ok_or(format!("--drive {spec}: expected ID=PATH[,ro]"))?;
                let (path, read_only) = match rest.strip_suffix(",ro") {
                    Some(path) => (path, true),
                    None => (rest, false),
                };
                drives.insert(
                    id.to_owned(),
                    DriveConfig {
                        path: PathBuf::from(path),
                        read_only,
                        id: Some(id.to_owned()),
                    },
                );
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        kernel: kernel.ok_or("--kernel is required")?,
        initrd,
        cmdline,
        mem_mib,
        console: console.ok_or("--console is required")?,
        spares,
        drives,
    })
}

/// Follows the console file until `done`, acting on the guest's requests; returns how
/// many actions failed.
fn follow(args: &Args, drives: &DriveHandle, done: &AtomicBool) -> usize {
    let mut failures = 0;
    let mut file = None;
    let mut line = String::new();
    loop {
        let Some(reader) = file.as_mut() else {
            match std::fs::File::open(&args.console) {
                Ok(f) => file = Some(BufReader::new(f)),
                Err(_) if !done.load(Ordering::SeqCst) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    eprintln!("spare_drives: FAIL cannot read the console: {e}");
                    return failures + 1;
                }
            }
            continue;
        };
        match reader.read_line(&mut line) {
            // A line is complete only with its newline; the rest comes later.
            Ok(_) if line.ends_with('\n') => {
                let text = line.trim_end_matches(['\n', '\r']);
                let action = text
                    .strip_prefix("LABGUEST-ATTACH ")
                    .map(|id| (true, id))
                    .or_else(|| text.strip_prefix("LABGUEST-DETACH ").map(|id| (false, id)));
                if let Some((attach, id)) = action {
                    let result = if attach {
                        match args.drives.get(id) {
                            Some(drive) => drives.attach(drive.clone()).map_err(|e| e.to_string()),
                            None => Err(format!("no --drive has the id {id}")),
                        }
                    } else {
                        drives.detach(id).map_err(|e| e.to_string())
                    };
                    let what = if attach { "attached" } else { "detached" };
                    match result {
                        Ok(()) => eprintln!(
                            "spare_drives: {what} {id} ({} of {} slots free)",
                            drives.free_slots(),
                            drives.slots()
                        ),
                        Err(e) => {
                            eprintln!("spare_drives: FAIL {id} not {what}: {e}");
                            failures += 1;
                        }
                    }
                }
                line.clear();
            }
            Ok(_) => {
                if done.load(Ordering::SeqCst) {
                    return failures;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                eprintln!("spare_drives: FAIL reading the console: {e}");
                return failures + 1;
            }
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("spare_drives: {e}");
            return ExitCode::from(2);
        }
    };
    let config = VmmConfig {
        memory: MemoryConfig {
            size_mib: args.mem_mib,
        },
        vcpus: VcpuConfig { count: 1 },
        kernel: KernelConfig {
            path: args.kernel.clone(),
            initrd: args.initrd.clone(),
            cmdline: args.cmdline.clone(),
        },
        console: ConsoleConfig::File(args.console.clone()),
        drives: Vec::new(),
        vsock: None,
        nets: Vec::new(),
        kvm_device: PathBuf::from("/dev/kvm"),
        start_time: Instant::now(),
        seccomp: true,
    };
    let vmm = match Vmm::with_spare_drives(config, args.spares) {
        Ok(vmm) => vmm,
        Err(e) => {
            eprintln!("spare_drives: FAIL cannot build the VM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let drives = vmm.drive_handle();
    let done = Arc::new(AtomicBool::new(false));
    let follower = {
        let done = done.clone();
        std::thread::spawn(move || follow(&args, &drives, &done))
    };
    let exit = vmm.run();
    done.store(true, Ordering::SeqCst);
    let failures = follower.join().unwrap_or(1);
    match exit {
        Ok(exit) if exit.reason.is_clean() && failures == 0 => {
            eprintln!("spare_drives: the VM ended: {}", exit.reason);
            ExitCode::SUCCESS
        }
        Ok(exit) => {
            eprintln!(
                "spare_drives: FAIL the VM ended: {} ({failures} failed actions)",
                exit.reason
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("spare_drives: FAIL the VM failed: {e}");
            ExitCode::FAILURE
        }
    }
}
