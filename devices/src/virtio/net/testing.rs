//! Host-side helpers for virtio-net's tests, fuzzing and benchmarks: a private network
//! namespace to make taps in, and a raw packet socket on a tap interface to see the
//! frames the device writes to it and to send frames the device reads from it.
//!
//! This is test code: it needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for the
//! namespace), and returns errors rather than panicking so that a test can say why it
//! cannot run.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send>;

/// A network namespace of its own, held by a thread that does nothing but run the
/// closures given to [`NetNs::run`]. Taps and sockets made there stay in it; fds work
/// from any thread. The namespace goes when the thread ends (on drop) and the last fd
/// of it is closed: a tap goes with its fd, so nothing is left on the host.
pub struct NetNs {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl NetNs {
    /// Starts the thread and moves it into a new network namespace.
    pub fn new() -> io::Result<NetNs> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("husk-netns".into())
            .spawn(move || {
                // SAFETY: unshare only changes this thread's namespaces.
                let ok = unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0;
                let _ = ready_tx.send(if ok {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                });
                if ok {
                    for job in rx {
                        job();
                    }
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("the namespace thread died"))??;
        Ok(NetNs {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `f` in the namespace and returns what it returns.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .as_ref()
            .expect("the namespace thread is running")
            .send(job)
            .expect("the namespace thread is running");
        rx.recv().expect("a job in the namespace thread panicked")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Turns IPv6 off on interface `name` of the calling thread's namespace, so that the
/// kernel sends no router solicitations or MLD reports through it when it goes up: the
/// tests want to see their own frames only.
pub fn disable_ipv6(name: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1")
}

/// Sets the MTU of interface `name` (SIOCSIFMTU) in the calling thread's namespace.
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    // SAFETY: `ifreq` is plain old data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes().iter().take(15)) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    // SAFETY: SIOCSIFMTU reads one `ifreq`, which `req` is.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn socket(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A raw AF_PACKET socket bound to one interface: every frame that arrives on it (from
/// the tap's fd, i.e. the device's tx) can be received, and frames sent go out of it (to
/// the tap's fd, i.e. the device's rx). Frames it sent itself are filtered out.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: libc::c_int,
    vnet_hdr: bool,
}

impl PacketSocket {
    /// Binds to interface `name` of the calling thread's namespace. With `vnet_hdr`
    /// (PACKET_VNET_HDR), frames sent start with a 10-byte `virtio_net_hdr` (so a test
    /// can send partial checksums and GSO frames) and frames received do too.
    pub fn bind(name: &str, vnet_hdr: bool) -> io::Result<PacketSocket> {
        let cname = std::ffi::CString::new(name).map_err(io::Error::other)?;
        // SAFETY: `cname` is a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let fd = socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            libc::c_int::from(proto),
        )?;
        if vnet_hdr {
            let one: libc::c_int = 1;
            // SAFETY: the option value is one int, as long as the length says.
            let ret = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_VNET_HDR,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let socket = PacketSocket {
            fd,
            ifindex: ifindex as libc::c_int,
            vnet_hdr,
        };
        let addr = socket.address(proto);
        // SAFETY: `addr` is a `sockaddr_ll` and the length says so.
        let ret = unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(socket)
    }

    fn address(&self, proto: u16) -> libc::sockaddr_ll {
        // SAFETY: `sockaddr_ll` is plain old data; all zeros is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = self.ifindex;
        addr
    }

    /// Sends one frame (after its 10-byte `virtio_net_hdr` with `vnet_hdr`).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let addr = self.address(0);
        // SAFETY: `frame` is readable for its length; `addr` is a `sockaddr_ll`.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != frame.len() {
            return Err(io::Error::other("short send on a packet socket"));
        }
        Ok(())
    }

    /// Receives the next frame that arrived on the interface, waiting up to `timeout`;
    /// `None` if none came.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 70_000];
        loop {
            // SAFETY: `sockaddr_ll` is plain old data; all zeros is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: the kernel writes at most `buf.len()` bytes into `buf` and at most
            // `from_len` bytes into `from`.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n >= 0 {
                if from.sll_pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                buf.truncate(n as usize);
                return Ok(Some(buf));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {}
                _ => return Err(err),
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = (deadline - now).as_millis().clamp(1, 1000) as libc::c_int;
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, as the count says.
            unsafe { libc::poll(&mut pfd, 1, wait) };
        }
    }

    /// Whether frames carry a `virtio_net_hdr`.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}
