//! Connections between the host and the agent: stream sockets, vsock in the guest and a
//! Unix socket when the agent runs on the host.
//!
//! Both kinds end up as a [`Connection`] (a connected stream socket), so everything
//! above this module is the same for both. The agent accepts through a [`Listener`];
//! the host opens connections through a [`Connector`].

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rustix::net::addr::{SocketAddrArg, SocketAddrLen, SocketAddrOpaque};
use rustix::net::{AddressFamily, Shutdown, SocketFlags, SocketType};

/// The guest vsock port the agent listens on, for the control connection and the stdio
/// streams alike (the first frame says which a connection is).
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// A connected stream socket (Unix or vsock).
#[derive(Debug)]
pub struct Connection(OwnedFd);

impl Connection {
    /// A second handle on the same connection (one thread reads while another writes).
    pub fn try_clone(&self) -> io::Result<Connection> {
        Ok(Connection(self.0.try_clone()?))
    }

    /// Shuts down one or both directions for every handle on the connection.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        Ok(rustix::net::shutdown(&self.0, how)?)
    }

    /// A timeout on reads (`None`: block for ever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        Ok(rustix::net::sockopt::set_socket_timeout(
            &self.0,
            rustix::net::sockopt::Timeout::Recv,
            timeout,
        )?)
    }

    /// The socket, for handing to a process as its stdio.
    pub fn into_fd(self) -> OwnedFd {
        self.0
    }
}

impl From<UnixStream> for Connection {
    fn from(stream: UnixStream) -> Self {
        Connection(stream.into())
    }
}

impl From<Connection> for OwnedFd {
    fn from(connection: Connection) -> Self {
        connection.0
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Read for &Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match rustix::io::read(&self.0, &mut *buf) {
                Err(rustix::io::Errno::INTR) => continue,
                result => return Ok(result?),
            }
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // send() with NOSIGNAL: a peer that went away is an error, not a SIGPIPE.
            match rustix::net::send(&self.0, buf, rustix::net::SendFlags::NOSIGNAL) {
                Err(rustix::io::Errno::INTR) => continue,
                result => return Ok(result?),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where the agent listens: `unix:PATH` or `vsock:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    Unix(PathBuf),
    Vsock(u32),
}

impl FromStr for ListenAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("unix", path)) if !path.is_empty() => Ok(ListenAddress::Unix(path.into())),
            Some(("vsock", port)) => port
                .parse()
                .map(ListenAddress::Vsock)
                .map_err(|_| format!("'{port}' is not a vsock port number")),
            _ => Err(format!(
                "'{s}' is not a listen address: use unix:PATH or vsock:PORT"
            )),
        }
    }
}

/// The agent's side: where connections come from.
pub enum Listener {
    Unix(UnixListener),
    Vsock(OwnedFd),
}

impl Listener {
    /// Binds and listens. A Unix socket path must not exist yet.
    pub fn bind(address: &ListenAddress) -> io::Result<Listener> {
        match address {
            ListenAddress::Unix(path) => Ok(Listener::Unix(UnixListener::bind(path)?)),
            ListenAddress::Vsock(port) => {
                let socket = rustix::net::socket_with(
                    AddressFamily::VSOCK,
                    SocketType::STREAM,
                    SocketFlags::CLOEXEC,
                    None,
                )?;
                rustix::net::bind(&socket, &VsockAddr::any(*port))?;
                rustix::net::listen(&socket, 128)?;
                Ok(Listener::Vsock(socket))
            }
        }
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> io::Result<Connection> {
        loop {
            let result = match self {
                Listener::Unix(listener) => listener.accept().map(|(s, _)| Connection::from(s)),
                Listener::Vsock(socket) => rustix::net::accept_with(socket, SocketFlags::CLOEXEC)
                    .map(Connection)
                    .map_err(io::Error::from),
            };
            match result {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => return result,
            }
        }
    }
}

/// `struct sockaddr_vm`.
struct VsockAddr(libc::sockaddr_vm);

impl VsockAddr {
    /// Any local CID, `port`.
    fn any(port: u32) -> Self {
        // SAFETY: sockaddr_vm is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        addr.svm_port = port;
        VsockAddr(addr)
    }
}

// SAFETY: the pointer and length given to `f` describe `self.0`, a complete
// `sockaddr_vm` that lives for the whole call.
unsafe impl SocketAddrArg for VsockAddr {
    unsafe fn with_sockaddr<R>(
        &self,
        f: impl FnOnce(*const SocketAddrOpaque, SocketAddrLen) -> R,
    ) -> R {
        f(
            (&self.0 as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as SocketAddrLen,
        )
    }
}

/// The host's side: opens connections to the agent.
pub trait Connector: Send + Sync {
    fn connect(&self) -> io::Result<Connection>;
}

/// The agent on the host, listening on a Unix socket.
pub struct UnixConnector(pub PathBuf);

impl Connector for UnixConnector {
    fn connect(&self) -> io::Result<Connection> {
        Ok(UnixStream::connect(&self.0)?.into())
    }
}

/// The agent in a VM, through the VMM's hybrid vsock socket: connect to the Unix
/// socket, send `CONNECT <port>\n`, read `OK <host port>\n`.
pub struct HybridVsockConnector {
    pub uds_path: PathBuf,
    pub port: u32,
    /// How long the VMM and guest may take to answer the CONNECT.
    pub timeout: Duration,
}

impl Connector for HybridVsockConnector {
    fn connect(&self) -> io::Result<Connection> {
        hybrid_connect(&self.uds_path, self.port, self.timeout)
    }
}

fn hybrid_connect(uds: &Path, port: u32, timeout: Duration) -> io::Result<Connection> {
    let mut stream = UnixStream::connect(uds)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Byte by byte: nothing past the newline may be consumed, it is the stream's.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 32 {
        match stream.read(&mut byte)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("vsock port {port}: the guest refused the connection"),
                ))
            }
            _ if byte[0] == b'\n' => break,
            _ => line.push(byte[0]),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "vsock port {port}: unexpected answer {:?}",
                String::from_utf8_lossy(&line)
            ),
        ));
    }
    stream.set_read_timeout(None)?;
    Ok(stream.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "unix:/run/a.sock".parse(),
            Ok(ListenAddress::Unix("/run/a.sock".into()))
        );
        assert_eq!("vsock:1024".parse(), Ok(ListenAddress::Vsock(1024)));
        for bad in ["", "unix:", "vsock:x", "tcp:1", "/run/a.sock"] {
            assert!(bad.parse::<ListenAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn unix_connections_carry_bytes_both_ways() {
        let dir = std::env::temp_dir().join(format!("husk-protocol-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let path = dir.join("agent.sock");
        let listener = Listener::bind(&ListenAddress::Unix(path.clone())).expect("bind");
        let client = std::thread::spawn(move || {
            let mut c = UnixConnector(path).connect().expect("connect");
            c.write_all(b"ping").expect("write");
            let mut answer = [0u8; 4];
            c.read_exact(&mut answer).expect("read");
            answer
        });
        let mut server = listener.accept().expect("accept");
        let mut got = [0u8; 4];
        server.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"ping");
        server.write_all(b"pong").expect("write");
        assert_eq!(&client.join().expect("client thread"), b"pong");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
