//! What the agent does to the guest machine as a whole: its clock, entropy, name
//! servers, drives, and power.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::mount::{MountFlags, UnmountFlags};

/// Sets the wall clock.
pub fn set_clock(unix_ns: u64) -> io::Result<()> {
    let time = rustix::time::Timespec {
        tv_sec: (unix_ns / 1_000_000_000) as i64,
        tv_nsec: (unix_ns % 1_000_000_000) as _,
    };
    Ok(rustix::time::clock_settime(
        rustix::time::ClockId::Realtime,
        time,
    )?)
}

/// Adds `bytes` to the kernel's entropy pool and credits them (RNDADDENTROPY): they come
/// from the host's CSPRNG, so they count as entropy.
pub fn add_entropy(bytes: &[u8]) -> io::Result<()> {
    let random = File::options().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    let bits = i32::try_from(bytes.len() * 8).map_err(|_| io::ErrorKind::InvalidInput)?;
    let len = i32::try_from(bytes.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(bytes);
    // Pad to whole u32 words, as the struct is declared.
    info.resize(info.len().div_ceil(4) * 4, 0);
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info: two ints and `buf_size` bytes,
    // which `info` holds; the kernel does not keep the pointer.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `/etc/resolv.conf`.
pub fn write_resolv_conf(servers: &[String], search: &[String]) -> io::Result<()> {
    let mut text = String::new();
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    for server in servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    std::fs::create_dir_all("/etc")?;
    std::fs::write("/etc/resolv.conf", text)
}

/// The block device whose virtio serial is `serial` (`/sys/block/vdX/serial`).
pub fn find_drive(serial: &str) -> Result<PathBuf, String> {
    let entries =
        std::fs::read_dir("/sys/block").map_err(|e| format!("cannot list /sys/block: {e}"))?;
    for entry in entries.flatten() {
        let Ok(found) = std::fs::read_to_string(entry.path().join("serial")) else {
            continue;
        };
        if found.trim_end_matches(['\n', '\0']) == serial {
            return Ok(Path::new("/dev").join(entry.file_name()));
        }
    }
    Err(format!("no drive with serial '{serial}'"))
}

/// Mounts the drive with serial `serial` on `target` (created if missing).
pub fn mount_drive(
    serial: &str,
    fs_type: &str,
    target: &Path,
    read_only: bool,
) -> Result<(), String> {
    let device = find_drive(serial)?;
    std::fs::create_dir_all(target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
    if read_only {
        flags |= MountFlags::RDONLY;
    }
    rustix::mount::mount(&device, target, fs_type, flags, None::<&std::ffi::CStr>).map_err(|e| {
        format!(
            "cannot mount {} ({fs_type}, serial '{serial}') on {}: {e}",
            device.display(),
            target.display()
        )
    })
}

/// Detaches the mount on `path`; failures are logged.
pub fn unmount(path: &Path) {
    if let Err(e) = rustix::mount::unmount(path, UnmountFlags::DETACH) {
        log::warn!("unmounting {}: {e}", path.display());
    }
}

/// Syncs and resets the machine after a moment, so the reply to `Shutdown` can leave
/// first. (husk runs the guest with `reboot=k`: a reset ends the VM.)
pub fn power_off_soon() {
    let spawned = std::thread::Builder::new()
        .name("power-off".into())
        .spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            power_off();
        });
    if spawned.is_err() {
        power_off();
    }
}

/// Syncs and resets the machine; returns (after logging why) only if that failed.
pub fn power_off() {
    rustix::fs::sync();
    if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::Restart) {
        log::error!("reboot failed: {e}");
    }
}
