//! `husk vmm`: boot a bare VM from flags or a JSON file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use clap::Args;
use husk_protocol::MacAddress;
use husk_vmm::{
    ConsoleConfig, DriveConfig, KernelConfig, MemoryConfig, NetConfig, StopHandle, Tap, VcpuConfig,
    Vmm, VmmConfig, VsockConfig, DEFAULT_CMDLINE,
};
use serde::Deserialize;

use super::EXIT_GUEST_FAILED;
use crate::guest;

const DEFAULT_MEM_MIB: u64 = 128;
const DEFAULT_VCPUS: u64 = 1;

#[derive(Args, Debug, Default)]
pub struct VmmArgs {
    /// Guest kernel: ELF vmlinux (PVH or 64-bit entry) or bzImage [default: the built guest]
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs [default: the built guest's, when --kernel is not given]
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line, passed verbatim (husk appends what its devices need)
    /// [default: "console=ttyS0 reboot=k panic=-1 nomodule"]
    #[arg(long)]
    cmdline: Option<String>,
    /// Guest memory in MiB [default: 128]
    #[arg(long)]
    mem_mib: Option<u64>,
    /// Number of vCPUs [default: 1]
    #[arg(long)]
    vcpus: Option<u64>,
    /// Guest console: stdout, file=PATH or off [default: stdout]
    #[arg(long, value_parser = parse_console)]
    console: Option<ConsoleConfig>,
    /// A virtio-blk drive backed by a raw file: path=FILE[,ro=on|off][,id=SERIAL]
    /// (repeatable; the guest sees them as /dev/vda, /dev/vdb, ... in this order)
    #[arg(long = "drive", value_name = "SPEC", value_parser = parse_drive)]
    drives: Vec<DriveConfig>,
    /// A virtio-vsock device: cid=N,uds=PATH (N >= 3). Host clients connect to PATH and
    /// send "CONNECT <port>"; guest connections to the host's port P go to PATH_P
    #[arg(long, value_name = "SPEC", value_parser = parse_vsock)]
    vsock: Option<VsockConfig>,
    /// A virtio-net interface on the tap NAME (opened, or created, in husk's network
    /// namespace): tap=NAME[,mac=MAC] (repeatable; the guest finds them in this order;
    /// without mac=, a random locally administered one)
    #[arg(long = "net", value_name = "SPEC", value_parser = parse_net)]
    nets: Vec<NetSpec>,
    /// Read these settings from a JSON file (keys: kernel, initrd, cmdline, mem_mib, vcpus,
    /// console, drives, vsock, nets); flags given as well override it
    #[arg(long)]
    config: Option<PathBuf>,
    /// The vCPU and event-loop threads' confinement (seccomp filters, no capabilities,
    /// an empty root for vCPU threads): on, or off only to debug
    #[arg(long, value_name = "on|off", value_parser = parse_on_off, default_value = "on", action = clap::ArgAction::Set)]
    seccomp: bool,
}

fn parse_on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("'{other}' is neither on nor off")),
    }
}

/// The JSON form of the same settings.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct VmmFile {
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    mem_mib: Option<u64>,
    vcpus: Option<u64>,
    console: Option<String>,
    drives: Option<Vec<DriveFile>>,
    vsock: Option<VsockFile>,
    nets: Option<Vec<NetSpec>>,
}

/// A network interface as asked for: the tap is opened only when the VM is built.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct NetSpec {
    tap: String,
    mac: Option<MacAddress>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct DriveFile {
    path: PathBuf,
    #[serde(default)]
    read_only: bool,
    id: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct VsockFile {
    cid: u64,
    uds: PathBuf,
}

/// Splits `key=value,key=value` into pairs; every item must have a value.
fn key_values<'a>(what: &str, spec: &'a str) -> Result<Vec<(&'a str, &'a str)>, String> {
    spec.split(',')
        .map(|item| {
            item.split_once('=')
                .filter(|(key, _)| !key.is_empty())
                .ok_or_else(|| format!("{what} '{spec}': '{item}' is not key=value"))
        })
        .collect()
}

fn parse_net(spec: &str) -> Result<NetSpec, String> {
    let mut tap = None;
    let mut mac = None;
    for (key, value) in key_values("net", spec)? {
        match key {
            "tap" if !value.is_empty() => tap = Some(value.to_owned()),
            "mac" => mac = Some(value.parse().map_err(|e| format!("net '{spec}': {e}"))?),
            _ => {
                return Err(format!(
                    "net '{spec}': unknown or empty key '{key}' (use tap=NAME[,mac=MAC])"
                ))
            }
        }
    }
    let tap = tap.ok_or_else(|| format!("net '{spec}': tap=NAME is missing"))?;
    Ok(NetSpec { tap, mac })
}

/// Opens the taps; an interface without a MAC gets a random one with the locally
/// administered bit set and the multicast bit clear.
fn open_nets(specs: Vec<NetSpec>) -> Result<Vec<NetConfig>, String> {
    specs
        .into_iter()
        .map(|spec| {
            let tap = Tap::open(&spec.tap).map_err(|e| format!("net tap={}: {e}", spec.tap))?;
            let mac = spec.mac.unwrap_or_else(crate::network::random_mac).0;
            Ok(NetConfig { tap, mac })
        })
        .collect()
}

fn parse_drive(spec: &str) -> Result<DriveConfig, String> {
    let mut path = None;
    let mut read_only = false;
    let mut id = None;
    for (key, value) in key_values("drive", spec)? {
        match key {
            "path" if !value.is_empty() => path = Some(PathBuf::from(value)),
            "ro" => {
                read_only = match value {
                    "on" | "true" => true,
                    "off" | "false" => false,
                    _ => return Err(format!("drive '{spec}': ro must be on or off")),
                }
            }
            "id" if !value.is_empty() => id = Some(value.to_string()),
            _ => {
                return Err(format!(
                "drive '{spec}': unknown or empty key '{key}' (use path=FILE[,ro=on][,id=SERIAL])"
            ))
            }
        }
    }
    let path = path.ok_or_else(|| format!("drive '{spec}': path=FILE is missing"))?;
    Ok(DriveConfig {
        path,
        read_only,
        id,
    })
}

fn parse_vsock(spec: &str) -> Result<VsockConfig, String> {
    let mut cid = None;
    let mut uds = None;
    for (key, value) in key_values("vsock", spec)? {
        match key {
            "cid" => {
                cid = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| format!("vsock '{spec}': cid '{value}' is not a number"))?,
                )
            }
            "uds" if !value.is_empty() => uds = Some(PathBuf::from(value)),
            _ => {
                return Err(format!(
                    "vsock '{spec}': unknown or empty key '{key}' (use cid=N,uds=PATH)"
                ))
            }
        }
    }
    Ok(VsockConfig {
        guest_cid: cid.ok_or_else(|| format!("vsock '{spec}': cid=N is missing"))?,
        uds_path: uds.ok_or_else(|| format!("vsock '{spec}': uds=PATH is missing"))?,
    })
}

fn parse_console(value: &str) -> Result<ConsoleConfig, String> {
    match value {
        "stdout" => Ok(ConsoleConfig::Stdout),
        "off" => Ok(ConsoleConfig::Off),
        _ => match value.strip_prefix("file=") {
            Some(path) if !path.is_empty() => Ok(ConsoleConfig::File(PathBuf::from(path))),
            _ => Err(format!(
                "'{value}' is not a console: use stdout, file=PATH or off"
            )),
        },
    }
}

fn read_file_settings(path: &Path) -> Result<VmmFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read VM config {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("VM config {}: {e}", path.display()))
}

/// Merges flags over the file over the defaults into a `VmmConfig`.
fn build_config(args: VmmArgs, start: Instant) -> Result<VmmConfig, String> {
    let file = match &args.config {
        Some(path) => read_file_settings(path)?,
        None => VmmFile::default(),
    };
    let console = match args.console {
        Some(c) => c,
        None => match file.console.as_deref() {
            Some(c) => parse_console(c)?,
            None => ConsoleConfig::Stdout,
        },
    };
    let kernel = args.kernel.or(file.kernel);
    let initrd = args.initrd.or(file.initrd);
    let (kernel, initrd) = match kernel {
        Some(kernel) => (kernel, initrd),
        None => {
            let kernel = guest::default_kernel();
            if !kernel.is_file() {
                return Err(format!(
                    "no --kernel given and the built guest kernel {} does not exist \
                     (build it with resources/build-guest.sh)",
                    kernel.display()
                ));
            }
            (kernel, initrd.or_else(|| Some(guest::default_initrd())))
        }
    };
    let drives = if args.drives.is_empty() {
        file.drives
            .unwrap_or_default()
            .into_iter()
            .map(|d| DriveConfig {
                path: d.path,
                read_only: d.read_only,
                id: d.id,
            })
            .collect()
    } else {
        args.drives
    };
    let vsock = match (args.vsock, file.vsock) {
        (Some(flag), _) => Some(flag),
        (None, Some(f)) => Some(VsockConfig {
            guest_cid: f.cid,
            uds_path: f.uds,
        }),
        (None, None) => None,
    };
    let nets = if args.nets.is_empty() {
        file.nets.unwrap_or_default()
    } else {
        args.nets
    };
    let mem_mib = args.mem_mib.or(file.mem_mib).unwrap_or(DEFAULT_MEM_MIB);
    let vcpus = args.vcpus.or(file.vcpus).unwrap_or(DEFAULT_VCPUS);
    let vcpus = u8::try_from(vcpus).map_err(|_| {
        format!(
            "{vcpus} vCPUs requested, but at most {} are supported",
            husk_vmm::MAX_CPUS
        )
    })?;
    Ok(VmmConfig {
        memory: MemoryConfig { size_mib: mem_mib },
        vcpus: VcpuConfig { count: vcpus },
        kernel: KernelConfig {
            path: kernel,
            initrd,
            cmdline: args
                .cmdline
                .or(file.cmdline)
                .unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
        },
        console,
        drives,
        vsock,
        nets: open_nets(nets)?,
        kvm_device: guest::kvm_device(),
        start_time: start,
        seccomp: args.seccomp,
    })
}

pub fn run(args: VmmArgs, start: Instant) -> Result<ExitCode, String> {
    let config = build_config(args, start)?;
    if config.seccomp {
        husk_vmm::confine_process().map_err(|e| e.to_string())?;
    }
    let vmm = Vmm::new(config).map_err(|e| e.to_string())?;
    let stopped_by = stop_on_signals(vmm.stop_handle())?;
    let exit = vmm.run().map_err(|e| e.to_string())?;
    if let Some(signal) = stopped_by.get() {
        // Stopped by SIGINT/SIGTERM: the VM was torn down; report it the shell's way.
        log::info!("VM stopped on signal {signal}");
        return Ok(ExitCode::from(128 + *signal as u8));
    }
    if exit.reason.is_clean() {
        log::debug!("VM ended: {}", exit.reason);
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("husk: error: the VM failed: {}", exit.reason);
        Ok(ExitCode::from(EXIT_GUEST_FAILED))
    }
}

/// Turns SIGINT and SIGTERM into a clean stop of the VM, remembering which arrived.
fn stop_on_signals(stop: StopHandle) -> Result<Arc<OnceLock<i32>>, String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot watch for signals: {e}"))?;
    let received = Arc::new(OnceLock::new());
    let record = received.clone();
    std::thread::Builder::new()
        .name("husk-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let _ = record.set(signal);
                stop.stop();
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(received)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_values() {
        assert_eq!(parse_console("stdout"), Ok(ConsoleConfig::Stdout));
        assert_eq!(parse_console("off"), Ok(ConsoleConfig::Off));
        assert_eq!(
            parse_console("file=/tmp/x"),
            Ok(ConsoleConfig::File("/tmp/x".into()))
        );
        assert!(parse_console("file=").is_err());
        assert!(parse_console("serial").is_err());
    }

    #[test]
    fn drive_specs() {
        assert_eq!(
            parse_drive("path=/img,ro=on,id=disk1"),
            Ok(DriveConfig {
                path: "/img".into(),
                read_only: true,
                id: Some("disk1".into())
            })
        );
        assert_eq!(parse_drive("path=/img").map(|d| d.read_only), Ok(false));
        for bad in [
            "",
            "/img",
            "ro=on",
            "path=",
            "path=/img,ro=yes",
            "path=/img,size=3",
            "path=/img,id=",
        ] {
            assert!(parse_drive(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn net_specs() {
        assert_eq!(
            parse_net("tap=tap0,mac=02:00:00:00:00:01"),
            Ok(NetSpec {
                tap: "tap0".into(),
                mac: Some(MacAddress([2, 0, 0, 0, 0, 1]))
            })
        );
        assert_eq!(parse_net("tap=t").map(|n| n.mac), Ok(None));
        for bad in [
            "",
            "tap=",
            "mac=02:00:00:00:00:01",
            "tap=t,mac=02:00",
            "tap=t,x=1",
        ] {
            assert!(parse_net(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn vsock_specs() {
        assert_eq!(
            parse_vsock("cid=3,uds=/run/v.sock"),
            Ok(VsockConfig {
                guest_cid: 3,
                uds_path: "/run/v.sock".into()
            })
        );
        // The cid's range is the device's to check.
        for bad in [
            "cid=3",
            "uds=/v",
            "cid=x,uds=/v",
            "cid=3,uds=",
            "cid=3,uds=/v,x=1",
        ] {
            assert!(parse_vsock(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn flags_override_file_and_unknown_keys_fail() {
        let dir = std::env::temp_dir().join(format!("husk-vmm-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vm.json");
        std::fs::write(
            &file,
            r#"{"kernel": "/k", "mem_mib": 64, "vcpus": 2, "console": "off", "cmdline": "x"}"#,
        )
        .unwrap();
        let args = VmmArgs {
            config: Some(file.clone()),
            vcpus: Some(3),
            ..Default::default()
        };
        let config = build_config(args, Instant::now()).unwrap();
        assert_eq!(config.memory.size_mib, 64);
        assert_eq!(config.vcpus.count, 3);
        assert_eq!(config.console, ConsoleConfig::Off);
        assert_eq!(config.kernel.cmdline, "x");
        assert_eq!(config.kernel.initrd, None);

        std::fs::write(&file, r#"{"kernel": "/k", "memory": 64}"#).unwrap();
        let err = build_config(
            VmmArgs {
                config: Some(file),
                ..Default::default()
            },
            Instant::now(),
        )
        .unwrap_err();
        assert!(err.contains("unknown field `memory`"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
