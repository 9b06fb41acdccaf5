//! A Linux tap interface: the host end of a virtio-net device.
//!
//! The tap carries whole Ethernet frames, each preceded by a 12-byte
//! `virtio_net_hdr_v1` (IFF_VNET_HDR with the header size set to 12), so frames go
//! between the guest's buffers and the tap with their offload header as is: the kernel
//! does the checksums and segmentation the header asks for. The fd is nonblocking: the
//! device waits for it in the event loop and never blocks there.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};

/// The length of `virtio_net_hdr_v1` (num_buffers included), the header of every frame
/// on the tap.
pub const VNET_HDR_LEN: usize = 12;

const TUN_PATH: &str = "/dev/net/tun";

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum TapError {
    /// the tap name {0:?} is invalid: it must be 1 to 15 bytes, without NUL or '/'
    InvalidName(String),
    /// cannot open /dev/net/tun: {0}
    OpenTun(io::Error),
    /// cannot attach to or create the tap interface {name}: {source}
    Attach { name: String, source: io::Error },
    /// the tap interface {name} does not take virtio-net headers: {source}
    VnetHeader { name: String, source: io::Error },
    /// cannot set the offloads {flags:#x} of the tap interface {name}: {source}
    Offload {
        name: String,
        flags: u32,
        source: io::Error,
    },
    /// cannot bring the tap interface {name} up: {source}
    Up { name: String, source: io::Error },
}

/// An open queue of a tap interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// A zeroed `struct ifreq` with `name` in it; the name must have been checked.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data (a name and a union of integers, addresses and a
    // pointer): all zeros is a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

/// A name the kernel takes: shorter than IFNAMSIZ (which includes the NUL), not empty,
/// no NUL, and no '/' (it becomes a sysfs directory).
fn check_name(name: &str) -> Result<(), TapError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == 0 || b == b'/')
    {
        return Err(TapError::InvalidName(name.to_owned()));
    }
    Ok(())
}

impl Tap {
    /// Opens /dev/net/tun and attaches to (or creates) the tap interface `name` in the
    /// calling thread's network namespace, with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, and
    /// sets the virtio-net header size to 12 ([`VNET_HDR_LEN`]), little-endian. `name`
    /// may be a pattern such as "tap%d", for which the kernel picks a free name
    /// ([`Tap::name`]). The fd is nonblocking and close-on-exec.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        check_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(TapError::OpenTun)?;
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes back one `struct ifreq`, which `req` is;
        // the fd is ours.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(TapError::Attach {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        // The kernel wrote back the interface's name (the one it picked for a pattern).
        // SAFETY: `ifr_name` is IFNAMSIZ bytes and the kernel NUL-terminates it within
        // them; the last byte was zero before and the kernel copies at most IFNAMSIZ - 1.
        let kernel_name = unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let tap = Tap {
            file,
            name: kernel_name,
        };
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points to one.
        if unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(tap.vnet_error());
        }
        // Virtio 1.x headers are little-endian whatever the host is; the tap's default
        // is the host's order (the same on x86 and arm64, but not on every host).
        let le: libc::c_int = 1;
        // SAFETY: TUNSETVNETLE reads one int through the pointer, which points to one.
        if unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETVNETLE, &le) } < 0 {
            return Err(tap.vnet_error());
        }
        // No offloads until a driver asks for them: the tap hands out only frames any
        // driver can take (no partial checksums, no GSO).
        tap.set_offload(0)?;
        Ok(tap)
    }

    fn vnet_error(&self) -> TapError {
        TapError::VnetHeader {
            name: self.name.clone(),
            source: io::Error::last_os_error(),
        }
    }

    /// The kernel's name for the interface.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the offloads (`TUN_F_*`) the reader of the tap takes: which frames the tap may
    /// hand out with a partial checksum or as one GSO frame (TUNSETOFFLOAD). Frames
    /// written to the tap may always carry them.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is involved.
        let ret = unsafe {
            libc::ioctl(
                self.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Sets IFF_UP on the interface (SIOCSIFFLAGS), as `ip link set NAME up` does. The
    /// VMM's network setup normally does this; tests and benchmarks use it.
    pub fn set_up(&self) -> Result<(), TapError> {
        let err = |source| TapError::Up {
            name: self.name.clone(),
            source,
        };
        // SAFETY: plain socket creation; the result is checked and owned below.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: `sock` is a fresh fd nobody else owns.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
        let mut req = ifreq(&self.name);
        // SAFETY: SIOCGIFFLAGS reads the name and writes `ifru_flags` of one `ifreq`.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: SIOCGIFFLAGS filled `ifru_flags`, a plain integer.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as i16;
        // SAFETY: SIOCSIFFLAGS reads one `ifreq`, which `req` is.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Reads one frame (its header first) into `buf`. A frame longer than `buf` is cut
    /// short by the kernel. `WouldBlock` when there is none.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
            let n = unsafe { libc::read(self.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Writes one frame (its header first) from `buf`.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: the iovec covers `buf`, which lives across the call; the kernel only
        // reads from it.
        unsafe { self.writev(&[iov]) }
    }

    /// Writes one frame (its header first) gathered from `iovecs`.
    ///
    /// # Safety
    ///
    /// Every iovec must point to `iov_len` readable bytes that stay mapped for the call
    /// (the kernel reads them; guest memory may change under it, which is harmless).
    pub unsafe fn writev(&self, iovecs: &[libc::iovec]) -> io::Result<usize> {
        let count = libc::c_int::try_from(iovecs.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        loop {
            // SAFETY: the caller vouches for the iovecs; `count` is their number.
            let n = unsafe { libc::writev(self.as_raw_fd(), iovecs.as_ptr(), count) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_the_kernel_sees_them() {
        for bad in ["", "0123456789abcdef", "a/b", "a\0b"] {
            assert!(
                matches!(check_name(bad), Err(TapError::InvalidName(_))),
                "{bad:?}"
            );
        }
        for good in ["tap0", "tap%d", "0123456789abcde"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }
}
