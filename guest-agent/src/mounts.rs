//! The kernel file systems PID 1 mounts: proc, sysfs and devtmpfs.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;

use crate::error::Error;

struct Mount {
    fstype: &'static CStr,
    target: &'static CStr,
    flags: libc::c_ulong,
    data: Option<&'static CStr>,
}

const MOUNTS: [Mount; 3] = [
    Mount {
        fstype: c"proc",
        target: c"/proc",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: None,
    },
    Mount {
        fstype: c"sysfs",
        target: c"/sys",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: None,
    },
    Mount {
        fstype: c"devtmpfs",
        target: c"/dev",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: Some(c"mode=0755"),
    },
];

/// Mounts proc, sysfs and devtmpfs; returns the errors (each mount is tried regardless of
/// the others).
pub fn mount_all() -> Vec<Error> {
    MOUNTS.iter().filter_map(|m| mount(m).err()).collect()
}

fn mount(m: &Mount) -> Result<(), Error> {
    let target = name(m.target);
    let fstype = name(m.fstype);
    // SAFETY: `m.target` is a NUL-terminated string that outlives the call.
    if unsafe { libc::mkdir(m.target.as_ptr(), 0o755) } != 0 {
        let source = io::Error::last_os_error();
        if source.raw_os_error() != Some(libc::EEXIST) {
            return Err(Error::MountPoint {
                path: target,
                source,
            });
        }
    }
    if is_mount_point(m.target)? {
        return Ok(());
    }
    let data = m.data.map_or(std::ptr::null(), |d| d.as_ptr().cast());
    // SAFETY: all pointers are NUL-terminated strings (or null for `data`) that outlive
    // the call; the source name is the file system type, as the kernel ignores it here.
    let rc = unsafe {
        libc::mount(
            m.fstype.as_ptr(),
            m.target.as_ptr(),
            m.fstype.as_ptr(),
            m.flags,
            data,
        )
    };
    if rc != 0 {
        return Err(Error::Mount {
            fstype,
            target,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Whether `path` (a directory directly under `/`) is already a mount point: its device
/// differs from the root's.
fn is_mount_point(path: &'static CStr) -> Result<bool, Error> {
    Ok(device(path)? != device(c"/")?)
}

fn device(path: &'static CStr) -> Result<libc::dev_t, Error> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `path` is NUL-terminated and `st` is valid for writing a `struct stat`.
    if unsafe { libc::stat(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(Error::Read {
            path: name(path),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: stat() succeeded, so it filled in `st`.
    Ok(unsafe { st.assume_init() }.st_dev)
}

/// The `&'static str` form of one of this module's constant names (all ASCII).
fn name(s: &'static CStr) -> &'static str {
    s.to_str().unwrap_or("?")
}
