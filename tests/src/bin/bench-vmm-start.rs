//! VMM start-up benchmark (issue 2, host part): starts the `hello` test guest (print on
//! COM1, then reset) N times with `husk vmm` and N times with QEMU's microvm, interleaved,
//! and prints the median and minimum time from process spawn to process exit and the
//! median peak RSS of each, with the ratios husk/QEMU.
//!
//!     cargo run --release -p husk-tests --bin bench-vmm-start -- --runs 20
//!
//! Every run must print the guest's marker and exit as expected (husk: 0 after the i8042
//! reset; QEMU: 1, from isa-debug-exit's (0 << 1) | 1); a run that does not is an error,
//! not a sample. Absolute times on a PVM host are slow and noisy: read the ratios.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_tests::guests::{guest_path, Guest};
use husk_tests::husk::husk_command;
use husk_tests::Error;

const MARKER: &str = "husk-test-guest: hello";
const QEMU_EXIT_CODE: i32 = 1;

struct Options {
    runs: usize,
    mem_mib: u64,
    qemu: PathBuf,
    timeout: Duration,
}

const USAGE: &str = "usage: bench-vmm-start [--runs N (default 20)] [--mem-mib M (default 128)] \
                     [--qemu PATH (default qemu-system-x86_64)] [--timeout SECONDS (default 60)]\n\
                     The husk binary is the one of this build profile (built first), or $HUSK_BIN.";

fn parse_options() -> Result<Options, Error> {
    let mut options = Options {
        runs: 20,
        mem_mib: 128,
        qemu: PathBuf::from("qemu-system-x86_64"),
        timeout: Duration::from_secs(60),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| Error(format!("{name} needs a value\n{USAGE}")))
        };
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| Error(format!("{name} wants a positive number, not `{v}`")))
        };
        match arg.as_str() {
            "--runs" => options.runs = number("--runs", value("--runs")?)? as usize,
            "--mem-mib" => options.mem_mib = number("--mem-mib", value("--mem-mib")?)?,
            "--qemu" => options.qemu = PathBuf::from(value("--qemu")?),
            "--timeout" => {
                options.timeout = Duration::from_secs(number("--timeout", value("--timeout")?)?)
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(Error(format!("unknown argument `{other}`\n{USAGE}"))),
        }
    }
    Ok(options)
}

/// One measured run.
struct Sample {
    /// From just before spawn to the moment the process had exited.
    elapsed: Duration,
    /// Peak resident set size, KiB (wait4's ru_maxrss).
    max_rss_kib: u64,
}

fn reader<R: Read + Send + 'static>(mut pipe: R) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `pid` to exit without reaping it (so its pid cannot be reused yet).
fn wait_exited(pid: libc::pid_t) -> Result<(), Error> {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a siginfo_t; WNOWAIT leaves the child waitable.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error(format!("waitid({pid}): {err}")));
        }
    }
}

/// Reaps `pid`, returning its wait status and resource usage.
fn reap(pid: libc::pid_t) -> Result<(libc::c_int, libc::rusage), Error> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to a c_int and an rusage.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            return Ok((status, usage));
        }
        let err = std::io::Error::last_os_error();
        if rc < 0 && err.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return Err(Error(format!("wait4({pid}): {err}")));
    }
}

/// Runs `cmd` once: measures spawn to exit and peak RSS, checks the exit code and the
/// marker. A watchdog kills a run that exceeds `timeout` (then it is an error).
fn measure(cmd: &mut Command, expected_code: i32, timeout: Duration) -> Result<Sample, Error> {
    let line = husk_tests::process::command_line(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| Error(format!("cannot start `{line}`: {e}")))?;
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().map(reader);
    let stderr = child.stderr.take().map(reader);

    // The watchdog may kill the child only while it is unreaped (the flag is set under
    // the lock before the reap), so it never signals a reused pid.
    let state = Arc::new((Mutex::new((false, false)), Condvar::new())); // (exited, killed)
    let watchdog = {
        let state = state.clone();
        std::thread::spawn(move || {
            let (lock, cvar) = &*state;
            let mut guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            let deadline = Instant::now() + timeout;
            while !guard.0 {
                let now = Instant::now();
                if now >= deadline {
                    // SAFETY: plain kill(2) of our own unreaped child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    guard.1 = true;
                    return;
                }
                guard = cvar
                    .wait_timeout(guard, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        })
    };
    let waited = wait_exited(pid);
    let elapsed = start.elapsed();
    let killed = {
        let (lock, cvar) = &*state;
        let mut guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        guard.0 = true;
        cvar.notify_all();
        guard.1
    };
    let _ = watchdog.join();
    waited?;
    let (status, usage) = reap(pid)?;
    drop(child);
    let out = stdout.and_then(|h| h.join().ok()).unwrap_or_default();
    let err = stderr.and_then(|h| h.join().ok()).unwrap_or_default();

    let describe = || format!("`{line}`\n--- stdout ---\n{out}\n--- stderr ---\n{err}\n---");
    if killed {
        return Err(Error(format!(
            "the run did not exit within {} s and was killed: {}",
            timeout.as_secs(),
            describe()
        )));
    }
    if !libc::WIFEXITED(status) {
        return Err(Error(format!(
            "the run was killed by signal {}: {}",
            libc::WTERMSIG(status),
            describe()
        )));
    }
    let code = libc::WEXITSTATUS(status);
    if code != expected_code {
        return Err(Error(format!(
            "the run exited with {code}, expected {expected_code}: {}",
            describe()
        )));
    }
    if !out.lines().any(|l| l.trim_end_matches('\r') == MARKER) {
        return Err(Error(format!(
            "the run did not print the guest marker `{MARKER}`: {}",
            describe()
        )));
    }
    Ok(Sample {
        elapsed,
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

struct Summary {
    median_ms: f64,
    min_ms: f64,
    median_rss_mib: f64,
}

fn summarize(samples: &[Sample]) -> Summary {
    let mut ms: Vec<f64> = samples
        .iter()
        .map(|s| s.elapsed.as_secs_f64() * 1000.0)
        .collect();
    let mut rss: Vec<f64> = samples
        .iter()
        .map(|s| s.max_rss_kib as f64 / 1024.0)
        .collect();
    Summary {
        median_ms: median(&mut ms),
        min_ms: ms.iter().copied().fold(f64::INFINITY, f64::min),
        median_rss_mib: median(&mut rss),
    }
}

fn qemu_version(qemu: &PathBuf) -> Result<String, Error> {
    let out = Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            Error(format!(
                "cannot run {} ({e}): install Debian's qemu-system-x86 \
                 (apt-get install qemu-system-x86) or pass --qemu PATH",
                qemu.display()
            ))
        })?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("unknown version")
        .to_string())
}

fn run() -> Result<(), Error> {
    let options = parse_options()?;
    let guest = guest_path(Guest::Hello)?;
    let husk = husk_command()?;
    let husk_bin = PathBuf::from(husk.get_program());
    let qemu_version = qemu_version(&options.qemu)?;
    let mem = options.mem_mib.to_string();

    let husk_cmd = || -> Result<Command, Error> {
        let mut cmd = husk_command()?;
        cmd.arg("vmm")
            .arg("--kernel")
            .arg(&guest)
            .args(["--mem-mib", &mem]);
        Ok(cmd)
    };
    let qemu_cmd = || {
        let mut cmd = Command::new(&options.qemu);
        cmd.args([
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=off",
            "-enable-kvm",
            "-cpu",
            "kvm64",
            "-m",
            &mem,
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel",
        ])
        .arg(&guest);
        cmd
    };

    println!("husk vmm start-up benchmark");
    println!("  guest:  {} (print + reset)", guest.display());
    println!("  husk:   {}", husk_bin.display());
    println!("  QEMU:   {} ({qemu_version})", options.qemu.display());
    println!(
        "  {} runs each, {} MiB guest memory, interleaved, after one unmeasured warm-up run each",
        options.runs, options.mem_mib
    );
    println!("  time = process spawn -> process exit; RSS = wait4 ru_maxrss of the process");

    // Warm-up: page cache, binaries, KVM module state.
    measure(&mut husk_cmd()?, 0, options.timeout)?;
    measure(&mut qemu_cmd(), QEMU_EXIT_CODE, options.timeout)?;

    let mut husk_samples = Vec::with_capacity(options.runs);
    let mut qemu_samples = Vec::with_capacity(options.runs);
    for i in 0..options.runs {
        // Alternate which goes first, so neither always runs right after the other.
        if i % 2 == 0 {
            husk_samples.push(measure(&mut husk_cmd()?, 0, options.timeout)?);
            qemu_samples.push(measure(&mut qemu_cmd(), QEMU_EXIT_CODE, options.timeout)?);
        } else {
            qemu_samples.push(measure(&mut qemu_cmd(), QEMU_EXIT_CODE, options.timeout)?);
            husk_samples.push(measure(&mut husk_cmd()?, 0, options.timeout)?);
        }
    }
    let h = summarize(&husk_samples);
    let q = summarize(&qemu_samples);

    println!();
    println!(
        "{:<16} {:>12} {:>12} {:>22}",
        "", "median (ms)", "min (ms)", "median peak RSS (MiB)"
    );
    println!(
        "{:<16} {:>12.2} {:>12.2} {:>22.2}",
        "husk vmm", h.median_ms, h.min_ms, h.median_rss_mib
    );
    println!(
        "{:<16} {:>12.2} {:>12.2} {:>22.2}",
        "QEMU microvm", q.median_ms, q.min_ms, q.median_rss_mib
    );
    println!(
        "{:<16} {:>12.3} {:>12.3} {:>22.3}",
        "husk / QEMU",
        h.median_ms / q.median_ms,
        h.min_ms / q.min_ms,
        h.median_rss_mib / q.median_rss_mib
    );
    println!();
    let time_ok = h.median_ms / q.median_ms <= 0.4;
    let rss_ok = h.median_rss_mib < 8.0;
    println!(
        "target: husk median time <= 0.4x QEMU's: {} ({:.3}x)",
        if time_ok { "met" } else { "NOT met" },
        h.median_ms / q.median_ms
    );
    println!(
        "target: husk peak RSS < 8 MiB with {} MiB configured: {} ({:.2} MiB)",
        options.mem_mib,
        if rss_ok { "met" } else { "NOT met" },
        h.median_rss_mib
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-vmm-start: error: {e}");
            ExitCode::FAILURE
        }
    }
}
