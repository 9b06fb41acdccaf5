//! What the agent does to the guest machine as a whole: its clock, entropy, name
//! servers, drives, and power.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
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

/// How long [`find_drive`] waits for a drive: one attached to a running VM just before
/// the request appears once the guest kernel has handled the device's configuration
/// change, which takes a while on a slow (software) CPU.
const DRIVE_PATIENCE: Duration = Duration::from_secs(20);
const DRIVE_POLL: Duration = Duration::from_millis(10);

/// The block device whose virtio serial is `serial` (`/sys/block/vdX/serial`) and that
/// has media (a non-zero size: a spare slot reads as an empty disk until the host puts a
/// drive in it). Waits up to [`DRIVE_PATIENCE`] for it.
pub fn find_drive(serial: &str) -> Result<PathBuf, String> {
    let deadline = std::time::Instant::now() + DRIVE_PATIENCE;
    loop {
        if let Some(device) = drive_with_serial(serial)? {
            return Ok(device);
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "no drive with serial '{serial}' (and a non-zero size) appeared within {}s",
                DRIVE_PATIENCE.as_secs()
            ));
        }
        std::thread::sleep(DRIVE_POLL);
    }
}

fn drive_with_serial(serial: &str) -> Result<Option<PathBuf>, String> {
    let entries =
        std::fs::read_dir("/sys/block").map_err(|e| format!("cannot list /sys/block: {e}"))?;
    for entry in entries.flatten() {
        // The size first: reading the serial costs a request to the device (GET_ID).
        let size = std::fs::read_to_string(entry.path().join("size")).unwrap_or_default();
        if size.trim().parse::<u64>().unwrap_or(0) == 0 {
            continue;
        }
        let Ok(found) = std::fs::read_to_string(entry.path().join("serial")) else {
            continue;
        };
        if found.trim_end_matches(['\n', '\0']) == serial {
            return Ok(Some(Path::new("/dev").join(entry.file_name())));
        }
    }
    Ok(None)
}

/// Whether `name` can name a directory of the agent's own: letters, digits, '-', '_' and
/// '.', not empty and not starting with '.' (so never `.`, `..` or a path).
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The drives that hold container root file systems. Each is mounted once, under
/// `<dir>/<serial>`, and shared by the containers on it: the kernel refuses a second mount
/// of a device with another read-only flag, so containers with a read-only and a writable
/// root could not share a drive otherwise. A drive is mounted read-write unless the device
/// is read-only or refuses the mount's writes (a read-only drive attached to a running VM:
/// the guest kernel believes it writable); a container's read-only root is made read-only
/// after its mounts, as for a directory rootfs (and as runc does), so mount points can
/// still be made in it.
pub struct Drives {
    dir: PathBuf,
    /// Serial → (file system type, containers using it).
    mounted: Mutex<HashMap<String, (String, usize)>>,
}

impl Drives {
    pub fn new(dir: PathBuf) -> Drives {
        Drives {
            dir,
            mounted: Mutex::new(HashMap::new()),
        }
    }

    /// Mounts the drive with serial `serial` unless it is mounted; returns where. A drive
    /// that must stay unchanged (`read_only`: the lower layer of an overlay) is mounted
    /// read-only from the start: one attached while the VM runs looks writable to the
    /// kernel (its slot's features were fixed at boot), and the device would refuse the
    /// superblock write a read-write mount makes.
    pub fn acquire(&self, serial: &str, fs_type: &str, read_only: bool) -> Result<PathBuf, String> {
        if !is_plain_name(serial) {
            return Err(format!(
                "'{serial}' is not a drive serial: letters, digits, '-', '_' or '.'"
            ));
        }
        let mut mounted = self.mounted.lock().unwrap_or_else(|p| p.into_inner());
        let target = self.dir.join(serial);
        if let Some((mounted_type, users)) = mounted.get_mut(serial) {
            if mounted_type != fs_type {
                return Err(format!(
                    "drive '{serial}' is mounted as {mounted_type}, not {fs_type}"
                ));
            }
            *users += 1;
            return Ok(target);
        }
        // The wait for a drive still arriving must not hold up other mounts and releases.
        drop(mounted);
        let device = find_drive(serial)?;
        let mut mounted = self.mounted.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, users)) = mounted.get_mut(serial) {
            *users += 1;
            return Ok(target);
        }
        std::fs::create_dir_all(&target)
            .map_err(|e| format!("creating {}: {e}", target.display()))?;
        let mount = |flags: MountFlags| {
            rustix::mount::mount(&device, &target, fs_type, flags, None::<&std::ffi::CStr>)
        };
        let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
        if read_only {
            flags |= MountFlags::RDONLY;
        }
        let result = match mount(flags) {
            // A read-only device: a read-only mount.
            Err(rustix::io::Errno::ROFS | rustix::io::Errno::ACCESS) if !read_only => {
                mount(flags | MountFlags::RDONLY)
            }
            other => other,
        };
        if let Err(e) = result {
            let _ = std::fs::remove_dir(&target);
            return Err(format!(
                "cannot mount {} ({fs_type}, serial '{serial}') on {}: {e}",
                device.display(),
                target.display()
            ));
        }
        mounted.insert(serial.to_owned(), (fs_type.to_owned(), 1));
        Ok(target)
    }

    /// One container less on the drive; the last one unmounts it.
    pub fn release(&self, serial: &str) {
        let mut mounted = self.mounted.lock().unwrap_or_else(|p| p.into_inner());
        let Some((_, users)) = mounted.get_mut(serial) else {
            return;
        };
        *users -= 1;
        if *users == 0 {
            mounted.remove(serial);
            let target = self.dir.join(serial);
            // Not lazily if it can be helped: the host may take the drive away next and
            // put other media in its slot, which a lingering superblock must not meet.
            if rustix::mount::unmount(&target, UnmountFlags::empty()).is_err() {
                unmount(&target);
            }
            let _ = std::fs::remove_dir(&target);
        }
    }
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
