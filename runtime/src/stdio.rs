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
