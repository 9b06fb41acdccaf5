//! Running a command with a timeout and capturing what it printed.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Error;

/// The default bound on one VM run in the tests: generous for this slow PVM host, and
/// still far from a hang.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// What a finished command did.
#[derive(Debug)]
pub struct Run {
    /// The command line, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// The exit code, or None when a signal ended the process.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// A readable account of the run for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\nelapsed: {:.3} s\n--- stdout ---\n{}\n--- stderr ---\n{}\n---",
            self.command,
            self.status,
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }

    /// Asserts a clean run: exit 0, no error and no panic on stderr.
    pub fn assert_clean_exit(&self) {
        assert_eq!(
            self.code(),
            Some(0),
            "husk did not exit 0\n{}",
            self.describe()
        );
        assert!(
            self.error_lines().is_empty() && !self.stderr.contains("panicked"),
            "husk reported an error\n{}",
            self.describe()
        );
    }

    /// The stderr lines that start with `husk: error:`.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("husk: error:"))
            .collect()
    }
}

fn reader<R: Read + Send + 'static>(mut pipe: R) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error ends the capture; what was read so far is kept.
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

fn collect(handle: Option<JoinHandle<Vec<u8>>>) -> String {
    let bytes = handle.and_then(|h| h.join().ok()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Renders a command line for messages.
pub fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` (stdin from /dev/null, stdout and stderr captured) and waits at most
/// `timeout`. A command still running then is killed, and that is an error that carries
/// what it had printed.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Run, Error> {
    let command = command_line(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child: Child = cmd
        .spawn()
        .map_err(|e| Error(format!("cannot start `{command}`: {e}")))?;
    let stdout = child.stdout.take().map(reader);
    let stderr = child.stderr.take().map(reader);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let elapsed = start.elapsed();
                return Ok(Run {
                    command,
                    status,
                    stdout: collect(stdout),
                    stderr: collect(stderr),
                    elapsed,
                });
            }
            Ok(None) if start.elapsed() >= timeout => {
                // The process may exit between the check and the kill; both are fine.
                let _ = child.kill();
                let status = child.wait();
                return Err(Error(format!(
                    "`{command}` did not exit within {} s and was killed (a hang); status \
                     after kill: {status:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n---",
                    timeout.as_secs(),
                    collect(stdout),
                    collect(stderr)
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error(format!("cannot wait for `{command}`: {e}")));
            }
        }
    }
}

/// A guest console's lines (COM1 output ends lines with "\r\n").
pub fn console_lines(text: &str) -> Vec<&str> {
    text.lines().map(|l| l.trim_end_matches('\r')).collect()
}

/// The pids and command lines (arguments joined by spaces) of this host's processes, as
/// the caller's /proc shows them, whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// A fresh pseudo-terminal for a test: (master, slave), neither the caller's controlling
/// terminal.
pub fn pty() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), Error> {
    use rustix::pty::OpenptFlags;
    let err = |what: &str, e: rustix::io::Errno| Error(format!("{what}: {e}"));
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)
        .map_err(|e| err("openpt", e))?;
    rustix::pty::grantpt(&master).map_err(|e| err("grantpt", e))?;
    rustix::pty::unlockpt(&master).map_err(|e| err("unlockpt", e))?;
    let name = rustix::pty::ptsname(&master, Vec::new()).map_err(|e| err("ptsname", e))?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| err("opening the pty's slave", e))?;
    Ok((master, slave))
}
