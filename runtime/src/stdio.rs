//! A process's stdio on the host side: the agent's stream connections, and the threads
//! that copy between them and this process's own descriptors (the caller's terminal, a
//! pipe, a file).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_protocol::{Connection, StdioConfig, StreamKind};
use rustix::net::Shutdown;
use rustix::termios::{self, OptionalActions, Termios};

use crate::agent::{AgentClient, ClientError};

/// The host ends of one process's streams.
#[derive(Default)]
pub struct Streams {
    pub stdin: Option<Connection>,
    pub stdout: Option<Connection>,
    pub stderr: Option<Connection>,
    pub terminal: Option<Connection>,
}

impl Streams {
    /// Opens the streams `config` names, before the call that creates the process.
    pub fn open(
        agent: &AgentClient,
        container_id: &str,
        exec_id: Option<&str>,
        config: StdioConfig,
    ) -> Result<Streams, ClientError> {
        let open = |wanted: bool, kind| -> Result<Option<Connection>, ClientError> {
            match wanted {
                true => agent.open_stream(container_id, exec_id, kind).map(Some),
                false => Ok(None),
            }
        };
        if config.terminal {
            return Ok(Streams {
                terminal: open(true, StreamKind::Terminal)?,
                ..Streams::default()
            });
        }
        Ok(Streams {
            stdin: open(config.stdin, StreamKind::Stdin)?,
            stdout: open(config.stdout, StreamKind::Stdout)?,
            stderr: open(config.stderr, StreamKind::Stderr)?,
            terminal: None,
        })
    }
}

/// This process's side: where the process's input comes from and its output goes.
pub struct HostStdio {
    /// `None`: the process's stdin is /dev/null (or was never opened).
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

impl HostStdio {
    /// This process's own fds 0, 1 and 2 (duplicated); stdin only if `with_stdin`.
    pub fn inherited(with_stdin: bool) -> io::Result<HostStdio> {
        let stdin = match with_stdin {
            true => Some(io::stdin().as_fd().try_clone_to_owned()?),
            false => None,
        };
        Ok(HostStdio {
            stdin,
            stdout: io::stdout().as_fd().try_clone_to_owned()?,
            stderr: io::stderr().as_fd().try_clone_to_owned()?,
        })
    }
}

/// The copying threads of one process.
pub struct Relay {
    /// The threads copying the process's output; done when it closed its end.
    outputs: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Starts copying. The input thread is not waited for: it may sit in a read of a
    /// terminal nobody types into, and dies with the process.
    pub fn start(streams: Streams, host: HostStdio) -> io::Result<Relay> {
        let mut outputs = Vec::new();
        if let Some(terminal) = streams.terminal {
            if let Some(input) = host.stdin {
                let to_terminal = terminal.try_clone()?;
                spawn("stdin", move || copy_input(input, to_terminal))?;
            }
            outputs.push(spawn("terminal", move || {
                copy_output(terminal, host.stdout)
            })?);
            return Ok(Relay { outputs });
        }
        if let Some(stdin) = streams.stdin {
            match host.stdin {
                Some(input) => {
                    spawn("stdin", move || copy_input(input, stdin))?;
                }
                // Nothing to send: the process reads end of file at once.
                None => {
                    let _ = stdin.shutdown(Shutdown::Write);
                }
            }
        }
        if let Some(stdout) = streams.stdout {
            outputs.push(spawn("stdout", move || copy_output(stdout, host.stdout))?);
        }
        if let Some(stderr) = streams.stderr {
            outputs.push(spawn("stderr", move || copy_output(stderr, host.stderr))?);
        }
        Ok(Relay { outputs })
    }

    /// Waits for the output to be copied out, at most `patience` (a process's child that
    /// keeps the stream open would otherwise hold us for ever).
    pub fn finish(self, patience: Duration) {
        let deadline = Instant::now() + patience;
        let (tx, rx) = mpsc::channel();
        let count = self.outputs.len();
        for handle in self.outputs {
            let tx = tx.clone();
            let _ = std::thread::Builder::new().spawn(move || {
                let _ = handle.join();
                let _ = tx.send(());
            });
        }
        for _ in 0..count {
            let left = deadline.saturating_duration_since(Instant::now());
            if rx.recv_timeout(left).is_err() {
                log::debug!("the process's output did not end within {patience:?}");
                return;
            }
        }
    }
}

fn spawn(name: &str, work: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("stdio-{name}"))
        .spawn(work)
}

fn copy_input(input: OwnedFd, to: Connection) {
    let mut input = File::from(input);
    let mut to_process = &to;
    let _ = copy(&mut input, &mut to_process);
    // End of our input: the process reads end of file.
    let _ = to.shutdown(Shutdown::Write);
}

fn copy_output(from: Connection, output: OwnedFd) {
    let mut from_process = &from;
    let mut output = File::from(output);
    let _ = copy(&mut from_process, &mut output);
}

/// Like `io::copy`, but flushes each read at once (a terminal echoes keystrokes).
fn copy(from: &mut impl Read, to: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}

/// The caller's terminal in raw mode (keys go to the container's terminal as typed,
/// Ctrl-C included); restored on drop.
pub struct RawTerminal {
    fd: OwnedFd,
    saved: Termios,
}

impl RawTerminal {
    /// `None` if `fd` is not a terminal.
    pub fn enter(fd: BorrowedFd<'_>) -> io::Result<Option<RawTerminal>> {
        if !termios::isatty(fd) {
            return Ok(None);
        }
        let saved = termios::tcgetattr(fd)?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(fd, OptionalActions::Now, &raw)?;
        Ok(Some(RawTerminal {
            fd: fd.try_clone_to_owned()?,
            saved,
        }))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(&self.fd, OptionalActions::Now, &self.saved);
    }
}

/// The size of the terminal at `fd`, as (rows, columns).
pub fn terminal_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let size = termios::tcgetwinsize(fd).ok()?;
    (size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

/// A host pseudo-terminal for a container whose terminal another program owns (runc's
/// `--console-socket`): its master goes to that program, and its slave is where the
/// container's terminal stream is copied to and from.
pub struct ConsolePty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

impl ConsolePty {
    pub fn open() -> io::Result<ConsolePty> {
        use rustix::pty::OpenptFlags;
        let master =
            rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let name = rustix::pty::ptsname(&master, Vec::new())?;
        let slave = rustix::fs::open(
            name.as_c_str(),
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        // The container's own terminal (in the sandbox) does the line discipline; this
        // one only carries bytes.
        let mut raw = termios::tcgetattr(&slave)?;
        raw.make_raw();
        termios::tcsetattr(&slave, OptionalActions::Now, &raw)?;
        Ok(ConsolePty { master, slave })
    }

    /// Sends the master end over the Unix socket at `socket`, as runc does: one message
    /// whose data is the terminal's name and whose SCM_RIGHTS holds the fd.
    pub fn send_master(&self, socket: &std::path::Path) -> io::Result<()> {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("console socket {}: {e}", socket.display()),
            )
        })?;
        let name = rustix::pty::ptsname(&self.master, Vec::new())?;
        let fds = [self.master.as_fd()];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        rustix::net::sendmsg(
            &stream,
            &[io::IoSlice::new(name.as_bytes())],
            &mut control,
            SendFlags::empty(),
        )?;
        Ok(())
    }

    /// Husk's side of the copying: the slave, as the process's input and output.
    pub fn host_stdio(&self) -> io::Result<HostStdio> {
        Ok(HostStdio {
            stdin: Some(self.slave.try_clone()?),
            stdout: self.slave.try_clone()?,
            stderr: self.slave.try_clone()?,
        })
    }
}

/// Follows the size of the terminal at `fd` (one whose owner resizes it without telling
/// us, like a console socket's master): polls it and calls `resize` with each new size,
/// until `resize` returns false.
pub fn follow_terminal_size(
    fd: OwnedFd,
    mut resize: impl FnMut(u16, u16) -> bool + Send + 'static,
) -> io::Result<()> {
    spawn("resize", move || {
        let mut last = None;
        loop {
            let size = terminal_size(fd.as_fd());
            if size.is_some() && size != last {
                last = size;
                if let Some((rows, cols)) = size {
                    if !resize(rows, cols) {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .map(|_| ())
}
