//! Processes' stdio: the host's stream connections, handed to a process as its fds 0-2,
//! or a pty the agent copies to and from one terminal stream.
//!
//! The host opens a process's stream connections before the call that creates the
//! process; they wait here, keyed by (container, exec, stream), until that call takes
//! them. A plain stream becomes the process's fd itself: its bytes never pass through
//! the agent. A terminal is a pty: its slave is the process's fds 0-2, and two threads
//! copy between the master and the connection.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;

use husk_protocol::{Connection, StdioConfig, StreamKind};

use crate::container::spawn::ProcessStdio;
use rustix::net::Shutdown;
use rustix::pty::OpenptFlags;

/// How long a call waits for a stream the host said it would open.
pub const STREAM_WAIT: Duration = Duration::from_secs(10);
/// Streams nobody took are closed after this long.
const PENDING_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum StdioError {
    /// the host did not open the {0:?} stream within 10 s
    StreamMissing(StreamKind),
    /// cannot open /dev/null: {0}
    DevNull(io::Error),
    /// cannot open a pty: {0}
    Pty(io::Error),
    /// cannot duplicate a stream: {0}
    Dup(io::Error),
}

type Key = (String, Option<String>, StreamKind);

/// Stream connections waiting for their process.
#[derive(Default)]
pub struct PendingStreams {
    streams: Mutex<HashMap<Key, (Connection, Instant)>>,
    arrived: Condvar,
}

impl PendingStreams {
    pub fn add(
        &self,
        container_id: String,
        exec_id: Option<String>,
        kind: StreamKind,
        conn: Connection,
    ) {
        let now = Instant::now();
        let mut streams = self.lock();
        streams.retain(|_, (_, at)| now.duration_since(*at) < PENDING_TTL);
        streams.insert((container_id, exec_id, kind), (conn, now));
        drop(streams);
        self.arrived.notify_all();
    }

    /// Takes a stream, waiting for it up to [`STREAM_WAIT`].
    fn take(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        kind: StreamKind,
    ) -> Result<Connection, StdioError> {
        let key = (container_id.to_owned(), exec_id.map(str::to_owned), kind);
        let deadline = Instant::now() + STREAM_WAIT;
        let mut streams = self.lock();
        loop {
            if let Some((conn, _)) = streams.remove(&key) {
                return Ok(conn);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StdioError::StreamMissing(kind));
            }
            streams = self
                .arrived
                .wait_timeout(streams, left)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (Connection, Instant)>> {
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A process's stdio as the agent keeps it after the process started.
pub struct ProcessIo {
    /// The stdin connection (or the terminal's), for `CloseStdin`.
    stdin: Option<Connection>,
    /// The pty master, for resizing.
    pty_master: Option<OwnedFd>,
}

/// Collects the streams `config` names and prepares the process's fds.
pub fn prepare(
    pending: &PendingStreams,
    container_id: &str,
    exec_id: Option<&str>,
    config: StdioConfig,
) -> Result<(ProcessStdio, ProcessIo), StdioError> {
    if config.terminal {
        let conn = pending.take(container_id, exec_id, StreamKind::Terminal)?;
        return terminal(conn);
    }
    let null = || -> Result<OwnedFd, StdioError> {
        Ok(File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(StdioError::DevNull)?
            .into())
    };
    let mut keep_stdin = None;
    let stdin = if config.stdin {
        let conn = pending.take(container_id, exec_id, StreamKind::Stdin)?;
        keep_stdin = Some(conn.try_clone().map_err(StdioError::Dup)?);
        conn.into_fd()
    } else {
        null()?
    };
    let stdout = if config.stdout {
        pending
            .take(container_id, exec_id, StreamKind::Stdout)?
            .into_fd()
    } else {
        null()?
    };
    let stderr = if config.stderr {
        pending
            .take(container_id, exec_id, StreamKind::Stderr)?
            .into_fd()
    } else {
        null()?
    };
    Ok((
        ProcessStdio {
            stdin,
            stdout,
            stderr,
        },
        ProcessIo {
            stdin: keep_stdin,
            pty_master: None,
        },
    ))
}

/// A pty whose slave becomes the process's stdio, copied to and from `conn`.
fn terminal(conn: Connection) -> Result<(ProcessStdio, ProcessIo), StdioError> {
    let pty = |e: rustix::io::Errno| StdioError::Pty(e.into());
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .map_err(pty)?;
    rustix::pty::grantpt(&master).map_err(pty)?;
    rustix::pty::unlockpt(&master).map_err(pty)?;
    let name = rustix::pty::ptsname(&master, Vec::new()).map_err(pty)?;
    // NOCTTY: the agent may be a session leader without a terminal, and must not
    // acquire this one; the process makes it its own.
    let slave: OwnedFd = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(std::ffi::OsStr::from_bytes(name.to_bytes()))
        .map_err(StdioError::Pty)?
        .into();
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(StdioError::Dup);
    let fds = ProcessStdio {
        stdin: dup(&slave)?,
        stdout: dup(&slave)?,
        stderr: slave,
    };
    let keep = conn.try_clone().map_err(StdioError::Dup)?;
    let master_in: File = dup(&master)?.into();
    let master_out: File = dup(&master)?.into();
    let conn_in = conn.try_clone().map_err(StdioError::Dup)?;
    // Host → terminal. Ends when the host closes its side.
    spawn_copy("tty-in", conn_in, master_in, |_| {});
    // Terminal → host. Ends when every holder of the slave closed it (read gives EIO);
    // then the host sees the end of the stream.
    spawn_copy("tty-out", master_out, conn, |conn: Connection| {
        let _ = conn.shutdown(Shutdown::Both);
    });
    Ok((
        fds,
        ProcessIo {
            stdin: Some(keep),
            pty_master: Some(master),
        },
    ))
}

/// Copies `from` to `to` on its own thread until either end stops, then hands `to` to
/// `done`.
fn spawn_copy<R, W>(name: &str, mut from: R, mut to: W, done: impl FnOnce(W) + Send + 'static)
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            done(to);
        });
    if let Err(e) = spawned {
        log::error!("cannot start a {name} thread: {e}");
    }
}

impl ProcessIo {
    /// The process reads end of file from now on.
    pub fn close_stdin(&self) -> io::Result<()> {
        match (&self.stdin, &self.pty_master) {
            // A terminal: EOF is the terminal's EOF character at the start of a line; the
            // connection's reading side closes, so nothing more is copied.
            (Some(conn), Some(master)) => {
                let mut master = File::from(master.try_clone()?);
                master.write_all(&[0x04])?;
                conn.shutdown(Shutdown::Read)
            }
            (Some(conn), None) => conn.shutdown(Shutdown::Read),
            (None, _) => Ok(()),
        }
    }

    /// Sets the terminal's size; an error if the process has no terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        let Some(master) = &self.pty_master else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the process has no terminal",
            ));
        };
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        Ok(rustix::termios::tcsetwinsize(master, size)?)
    }
}
