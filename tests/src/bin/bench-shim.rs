//! containerd shim benchmark (issue 6): husk's `containerd-shim-husk-v2` with the host
//! backend against `containerd-shim-runc-v2`, side by side in one private containerd
//! driven by the unmodified `ctr`:
//!
//! 1. `ctr run --rm` of the busybox image running `echo hello`, N runs of each runtime,
//!    interleaved; medians and the husk/runc ratio (goal ≤ 1.3×);
//! 2. the footprint of one idle pod (`ctr run -d … sleep`): the PSS of the shim process,
//!    and separately of everything else the pod keeps on the host (goal: husk's shim
//!    ≤ 10 MiB);
//! 3. P idle pods started one after another with each runtime: host memory per pod.
//!
//! ```sh
//! cargo build --release -p husk-runtime -p husk-agent
//! cargo run --release -p husk-tests --bin bench-shim -- --runs 15
//! ```
//!
//! As root, with Debian's containerd and runc. The husk binaries are the ones of this
//! build profile ($HUSK_BIN names another `husk`; the shim and husk-agent are found next
//! to it). The builtin backend needs hardware KVM, which the development machine lacks:
//! husk runs here with the host backend (the agent as a host process in fresh
//! namespaces, no VM), so there is no guest RAM in these figures.
//!
//! Every `ctr run` must succeed (and `echo hello` print `hello`), or the benchmark fails:
//! nothing is dropped from the medians. Memory is the PSS of /proc/PID/smaps_rollup
//! (shared pages divided among the processes that map them); kernel memory (page
//! tables, kernel stacks, the containers' cgroups and mounts) is not in it, for either
//! runtime.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use husk_tests::containerd::{
    husk_shim_env, husk_state_root, Containerd, BUSYBOX_IMAGE, HUSK_RUNTIME, NAMESPACE,
};
use husk_tests::process::{processes_with, run_with_timeout, Run};
use husk_tests::rootfs::busybox_image;
use husk_tests::{scratch_dir, Error, ScratchDir};

const USAGE: &str = "usage: bench-shim [--runs N (default 15)] [--pods N (default 20)]";

const RUNC_RUNTIME: &str = "io.containerd.runc.v2";

/// The name of this benchmark's containerd and husk state root.
const NAME: &str = "bench-shim";

/// How long an idle pod is left alone before its memory is read: the shim's and the
/// agent's start-up allocations settle, as they would in a pod that runs for long.
const SETTLE: Duration = Duration::from_millis(1500);

struct Options {
    runs: usize,
    pods: usize,
}

fn parse_options() -> Result<Options, Error> {
    let mut options = Options { runs: 15, pods: 20 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<usize, Error> {
            let v = args
                .next()
                .ok_or_else(|| Error(format!("{name} needs a value\n{USAGE}")))?;
            v.parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| Error(format!("{name} wants a positive number, not `{v}`")))
        };
        match arg.as_str() {
            "--runs" => options.runs = number("--runs")?,
            "--pods" => options.pods = number("--pods")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(Error(format!("unknown argument `{other}`\n{USAGE}"))),
        }
    }
    Ok(options)
}

/// The two runtimes compared.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Runtime {
    Husk = 0,
    Runc = 1,
}

impl Runtime {
    const BOTH: [Runtime; 2] = [Runtime::Husk, Runtime::Runc];

    fn runtime_type(self) -> &'static str {
        match self {
            Runtime::Husk => HUSK_RUNTIME,
            Runtime::Runc => RUNC_RUNTIME,
        }
    }

    fn shim_binary(self) -> &'static str {
        match self {
            Runtime::Husk => "containerd-shim-husk-v2",
            Runtime::Runc => "containerd-shim-runc-v2",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Runtime::Husk => "husk (host backend)",
            Runtime::Runc => "runc",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Runtime::Husk => "h",
            Runtime::Runc => "r",
        }
    }
}

/// The private containerd with husk's shim on its PATH, and everything this benchmark
/// must leave behind clean: dropping it removes every container it started (through
/// containerd, then by force), stops containerd and removes husk's state root.
struct Bench {
    containerd: Option<Containerd>,
    _scratch: ScratchDir,
    state_root: String,
    /// `sleep SECONDS` of this run's idle pods: a duration no other program uses, so
    /// that leftover sleeps can be found and killed.
    sleep_seconds: String,
    /// Every container this run started, for the shim sockets check.
    containers: RefCell<Vec<(Runtime, String)>>,
}

impl Bench {
    fn start() -> Result<Bench, Error> {
        if !rustix::process::geteuid().is_root() {
            return Err(Error(
                "containerd runs containers and must run as root".into(),
            ));
        }
        let scratch = scratch_dir(NAME)?;
        let image = busybox_image(scratch.path())?;
        let env: Vec<(&str, OsString)> = husk_shim_env(NAME, scratch.path())?;
        let mut bench = Bench {
            containerd: None,
            _scratch: scratch,
            state_root: husk_state_root(NAME),
            sleep_seconds: format!("{}", 900_000 + std::process::id() % 99_999),
            containers: RefCell::default(),
        };
        let containerd = Containerd::start_with_env(NAME, &env)?;
        containerd.import(&image)?;
        bench.containerd = Some(containerd);
        Ok(bench)
    }

    fn containerd(&self) -> &Containerd {
        self.containerd
            .as_ref()
            .expect("containerd runs until the drop")
    }

    /// Runs `ctr ARGS`, which must exit 0.
    fn ctr_ok(&self, args: &[&str]) -> Result<Run, Error> {
        check_interrupted()?;
        let run = self.containerd().ctr(args)?;
        if run.code() != Some(0) {
            return Err(Error(format!(
                "ctr failed\n{}\n--- containerd's log (end) ---\n{}",
                run.describe(),
                tail(&self.containerd().log(), 20)
            )));
        }
        Ok(run)
    }

    /// One `ctr run --rm` of `echo hello`: its wall time; it must print `hello` and exit 0.
    fn run_echo(&self, runtime: Runtime, id: &str) -> Result<Duration, Error> {
        let mut cmd = self.containerd().ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            runtime.runtime_type(),
            BUSYBOX_IMAGE,
            id,
            "echo",
            "hello",
        ]);
        check_interrupted()?;
        self.containers.borrow_mut().push((runtime, id.to_owned()));
        let start = Instant::now();
        let run = run_with_timeout(&mut cmd, Duration::from_secs(60))?;
        let elapsed = start.elapsed();
        if run.code() != Some(0) || run.stdout != "hello\n" {
            return Err(Error(format!(
                "{}: `ctr run --rm` of echo hello failed\n{}\n--- containerd's log (end) ---\n{}",
                runtime.label(),
                run.describe(),
                tail(&self.containerd().log(), 20)
            )));
        }
        Ok(elapsed)
    }

    /// Starts an idle pod, `ctr run -d … sleep`, and waits until its sleep runs; returns
    /// the time `ctr run -d` took.
    fn start_idle(&self, runtime: Runtime, id: &str) -> Result<Duration, Error> {
        self.containers.borrow_mut().push((runtime, id.to_owned()));
        let start = Instant::now();
        self.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            runtime.runtime_type(),
            BUSYBOX_IMAGE,
            id,
            "sleep",
            &self.sleep_seconds,
        ])?;
        Ok(start.elapsed())
    }

    /// Kills and deletes the tasks and containers `ids`, then waits until their shims
    /// have exited. A shim that outlives its last container is reported and killed.
    fn remove(&self, ids: &[String]) -> Result<(), Error> {
        for id in ids {
            let _ = self
                .containerd()
                .ctr(&["task", "kill", "--signal", "SIGKILL", id]);
        }
        for id in ids {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let run = self.containerd().ctr(&["task", "delete", id])?;
                if run.code() == Some(0) || run.stderr.contains("not found") {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(Error(format!(
                        "the task {id} could not be deleted\n{}",
                        run.describe()
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let run = self.containerd().ctr(&["container", "rm", id])?;
            if run.code() != Some(0) && !run.stderr.contains("not found") {
                return Err(Error(format!(
                    "the container {id} could not be removed\n{}",
                    run.describe()
                )));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left: Vec<(i32, String)> =
                ids.iter().flat_map(|id| self.shim_processes(id)).collect();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                for (pid, _) in &left {
                    kill(*pid);
                }
                return Err(Error(format!(
                    "shims still running 10 s after their containers were deleted \
                     (killed): {left:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The long-lived shim process(es) of container `id` (not a `start` or `delete`
    /// invocation of the shim binary).
    fn shim_processes(&self, id: &str) -> Vec<(i32, String)> {
        let address = self.containerd().address().to_string_lossy().into_owned();
        let id_arg = format!(" -id {id} ");
        processes_with(&address)
            .into_iter()
            .filter(|(_, cmdline)| {
                cmdline.contains(&id_arg)
                    && cmdline.contains("containerd-shim-")
                    && !cmdline.ends_with(" start ")
                    && !cmdline.ends_with(" delete ")
            })
            .collect()
    }

    /// The processes of the idle pod `id`: its shim, and the rest (every descendant of
    /// the shim: with husk's host backend the sandbox's husk-agent processes and the
    /// container's; with runc the container's). Fails unless exactly one shim and one
    /// `sleep` of this run are found, the sleep under the shim.
    fn pod(&self, runtime: Runtime, id: &str, table: &ProcTable) -> Result<Pod, Error> {
        let shims = self.shim_processes(id);
        let [(shim, cmdline)] = shims.as_slice() else {
            return Err(Error(format!(
                "{}: not exactly one shim for {id}: {shims:?}",
                runtime.label()
            )));
        };
        if !cmdline.contains(runtime.shim_binary()) {
            return Err(Error(format!(
                "the shim of {id} is not {}: {cmdline}",
                runtime.shim_binary()
            )));
        }
        // The check on which the sockets' clean-up relies.
        let socket = self.shim_socket(id)?;
        if !socket.exists() {
            return Err(Error(format!(
                "the shim of {id} does not serve on {}, as this benchmark computes: \
                 {cmdline}",
                socket.display()
            )));
        }
        let rest = table.descendants(*shim);
        let sleeps = rest
            .iter()
            .filter(|pid| table.cmdline(**pid) == format!("sleep {} ", self.sleep_seconds))
            .count();
        if sleeps != 1 {
            return Err(Error(format!(
                "{}: {sleeps} sleeps of pod {id} under its shim {shim}, not 1: {:?}",
                runtime.label(),
                rest.iter()
                    .map(|p| (*p, table.cmdline(*p)))
                    .collect::<Vec<_>>()
            )));
        }
        Ok(Pod { shim: *shim, rest })
    }

    /// The socket a shim of container `id` serves on: `/run/containerd/s/` and the
    /// SHA-256 of containerd's address, the namespace and the id joined by `/` (the
    /// scheme of containerd's Go shims and of the containerd-shim crate alike).
    fn shim_socket(&self, id: &str) -> Result<PathBuf, Error> {
        let key = self
            .containerd()
            .address()
            .join(NAMESPACE)
            .join(id)
            .to_string_lossy()
            .into_owned();
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Error(format!("sha256sum: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(key.as_bytes())
                .map_err(|e| Error(format!("sha256sum: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error(format!("sha256sum: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let hash = text.split_whitespace().next().unwrap_or_default();
        if !out.status.success() || hash.len() != 64 {
            return Err(Error(format!("sha256sum printed `{text}`")));
        }
        Ok(Path::new("/run/containerd/s").join(hash))
    }

    /// The shim sockets that outlived their shims, by runtime (husk, runc): a shim
    /// should remove its socket when it exits. They are removed here (nothing listens
    /// on them any more), and forgotten with their containers.
    fn remove_leaked_sockets(&self) -> Result<[usize; 2], Error> {
        let mut leaked = [0, 0];
        let containers = std::mem::take(&mut *self.containers.borrow_mut());
        for (runtime, id) in containers {
            let socket = self.shim_socket(&id)?;
            if socket.exists() {
                leaked[runtime as usize] += 1;
                let _ = std::fs::remove_file(&socket);
            }
        }
        Ok(leaked)
    }

    /// Every sleep of this run still alive: none should be after [`Bench::remove`].
    fn sleeps(&self) -> Vec<(i32, String)> {
        let needle = format!("sleep {} ", self.sleep_seconds);
        processes_with(&needle)
            .into_iter()
            .filter(|(_, cmdline)| *cmdline == needle)
            .collect()
    }

    /// Fails when anything of the pods is left: a shim, a husk agent, a sleep.
    fn check_nothing_left(&self) -> Result<(), Error> {
        let address = self.containerd().address().to_string_lossy().into_owned();
        let mut left = processes_with(&address);
        left.extend(processes_with(&self.state_root));
        left.extend(self.sleeps());
        left.retain(|(pid, _)| *pid != std::process::id() as i32);
        if left.is_empty() {
            Ok(())
        } else {
            Err(Error(format!(
                "processes left after the pods' removal: {left:?}"
            )))
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        // The harness's drop kills and deletes every task and container through
        // containerd, stops containerd, kills its shims and unmounts what they left.
        // Sockets first: their names derive from containerd's address.
        if self.containerd.is_some() {
            let _ = self.remove_leaked_sockets();
        }
        drop(self.containerd.take());
        // A sandbox's agent dies with its shim; a runc container's processes are no
        // children of anything we stopped.
        for _ in 0..50 {
            let mut left = self.sleeps();
            left.extend(processes_with(&self.state_root));
            left.retain(|(pid, _)| *pid != std::process::id() as i32);
            if left.is_empty() {
                break;
            }
            for (pid, _) in left {
                kill(pid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.state_root);
    }
}

/// Set by SIGINT, SIGTERM or SIGHUP: the benchmark stops at its next step and cleans up
/// (the drop of [`Bench`]) instead of dying with its pods left running.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn catch_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the
        // sigaction structure is fully initialized (zeroed, then the handler set).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

fn check_interrupted() -> Result<(), Error> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(Error("interrupted".into()));
    }
    Ok(())
}

fn kill(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// The last `n` lines of containerd's log `text` that are not `level=info`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains("level=info")).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A snapshot of the host's processes: parent and command line of each.
struct ProcTable {
    parent: BTreeMap<i32, i32>,
    cmdline: BTreeMap<i32, String>,
}

impl ProcTable {
    fn read() -> ProcTable {
        let mut table = ProcTable {
            parent: BTreeMap::new(),
            cmdline: BTreeMap::new(),
        };
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<i32>().ok())
            else {
                continue;
            };
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some(ppid) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            table.parent.insert(pid, ppid);
            table
                .cmdline
                .insert(pid, String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
        table
    }

    fn cmdline(&self, pid: i32) -> &str {
        self.cmdline.get(&pid).map_or("", String::as_str)
    }

    /// Every descendant of `root`, not `root` itself.
    fn descendants(&self, root: i32) -> BTreeSet<i32> {
        let mut found = BTreeSet::new();
        let mut frontier = vec![root];
        while let Some(p) = frontier.pop() {
            for (child, parent) in &self.parent {
                if *parent == p && found.insert(*child) {
                    frontier.push(*child);
                }
            }
        }
        found
    }
}

/// The processes of one idle pod.
struct Pod {
    shim: i32,
    rest: BTreeSet<i32>,
}

/// PSS and RSS of a process, in KiB, from /proc/PID/smaps_rollup.
#[derive(Clone, Copy, Default)]
struct Mem {
    pss_kib: u64,
    rss_kib: u64,
}

impl std::ops::AddAssign for Mem {
    fn add_assign(&mut self, other: Mem) {
        self.pss_kib += other.pss_kib;
        self.rss_kib += other.rss_kib;
    }
}

impl Mem {
    fn pss_mib(self) -> f64 {
        self.pss_kib as f64 / 1024.0
    }
    fn rss_mib(self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
}

fn memory(pid: i32) -> Result<Mem, Error> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).map_err(|e| Error(format!("reading {path}: {e}")))?;
    let field = |name: &str| -> Result<u64, Error> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error(format!("no {name} in {path}")))
    };
    Ok(Mem {
        pss_kib: field("Pss:")?,
        rss_kib: field("Rss:")?,
    })
}

/// The memory of a set of pods: their shims, the rest, and the rest by program name.
#[derive(Default)]
struct PodsMemory {
    shims: Mem,
    rest: Mem,
    shim_count: usize,
    /// program name → (processes, memory).
    by_program: BTreeMap<String, (usize, Mem)>,
}

impl PodsMemory {
    fn of(pods: &[Pod], table: &ProcTable) -> Result<PodsMemory, Error> {
        let mut total = PodsMemory::default();
        for pod in pods {
            total.shims += memory(pod.shim)?;
            total.shim_count += 1;
            for pid in &pod.rest {
                let mem = memory(*pid)?;
                total.rest += mem;
                let program = program_name(*pid, table.cmdline(*pid));
                let entry = total.by_program.entry(program).or_default();
                entry.0 += 1;
                entry.1 += mem;
            }
        }
        Ok(total)
    }

    fn total(&self) -> Mem {
        let mut total = self.shims;
        total += self.rest;
        total
    }

    fn breakdown(&self) -> String {
        self.by_program
            .iter()
            .map(|(program, (n, mem))| format!("{n}× {program} {:.2} MiB", mem.pss_mib()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A process's program for the breakdowns: the base name of its argv[0], or for a
/// program that re-executed itself through /proc/self/exe (husk-agent does, to serve
/// from PID 1 of its own PID namespace), the base name of its executable.
fn program_name(pid: i32, cmdline: &str) -> String {
    let argv0 = cmdline.split(' ').next().unwrap_or_default();
    let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_owned();
    if argv0 == "/proc/self/exe" {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| base(&p.to_string_lossy()))
            .unwrap_or_else(|_| "?".into());
        format!("{exe} (re-executed)")
    } else {
        base(argv0)
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// The first line a command prints, or `unknown`.
fn version(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{model}, {cpus} CPUs, {mem_gib:.1} GiB, Linux {}, load average {}",
        kernel.trim(),
        load.join(" ")
    )
}

fn bench(options: &Options) -> Result<(), Error> {
    let kvm = if Path::new("/sys/module/kvm_pvm").exists() {
        "this host's /dev/kvm is PVM, no hardware virtualization"
    } else if Path::new("/dev/kvm").exists() {
        "this host has a /dev/kvm, unused here"
    } else {
        "this host has no /dev/kvm"
    };
    println!("# bench-shim: husk's containerd shim v2 against runc's, side by side");
    println!("how measured:");
    println!("- machine: {}", machine());
    println!(
        "- {}, {}, `ctr` against a private containerd (overlayfs snapshotter), \
         busybox image (busybox-static)",
        version("containerd", &["--version"]),
        version("runc", &["--version"]),
    );
    println!(
        "- husk: containerd-shim-husk-v2 with the HOST backend (`hypervisor = \"host\"`: \
         the agent as a host process in fresh namespaces, no VM); the builtin backend \
         needs hardware KVM ({kvm}), so there is no guest RAM in these figures"
    );
    println!("- runc: containerd-shim-runc-v2 (io.containerd.runc.v2), default options");
    println!(
        "- time: wall time of the whole `ctr run --rm` command, {} runs of each runtime, \
         interleaved, after one warm-up run each; median",
        options.runs
    );
    println!(
        "- memory: PSS from /proc/PID/smaps_rollup (shared pages divided among their \
         users; containerd itself and kernel memory not counted), read {} ms after the \
         pods started; {} idle pods (`sleep`) per runtime, started one after another",
        SETTLE.as_millis(),
        options.pods
    );
    println!();

    let started = Instant::now();
    let bench = Bench::start()?;
    let pid = std::process::id();

    // 1. ctr run --rm, interleaved.
    for runtime in Runtime::BOTH {
        bench.run_echo(runtime, &format!("warm-{pid}-{}", runtime.tag()))?;
    }
    let (mut husk_times, mut runc_times) = (Vec::new(), Vec::new());
    for n in 0..options.runs {
        // Alternate which runtime goes first, so neither always follows the other.
        let order = if n % 2 == 0 {
            Runtime::BOTH
        } else {
            [Runtime::Runc, Runtime::Husk]
        };
        for runtime in order {
            let id = format!("echo-{pid}-{}{n}", runtime.tag());
            let elapsed = bench.run_echo(runtime, &id)?;
            match runtime {
                Runtime::Husk => husk_times.push(elapsed),
                Runtime::Runc => runc_times.push(elapsed),
            }
        }
    }
    let (husk_min, runc_min) = (
        husk_times.iter().min().copied().unwrap_or_default(),
        runc_times.iter().min().copied().unwrap_or_default(),
    );
    let (husk_ms, runc_ms) = (ms(median(&mut husk_times)), ms(median(&mut runc_times)));
    let run_ratio = husk_ms / runc_ms;
    println!(
        "## 1. `ctr run --rm` busybox `echo hello`, {} runs each, interleaved",
        options.runs
    );
    println!();
    println!("| | median (ms) | min (ms) | / runc |");
    println!("|---|---|---|---|");
    println!(
        "| husk shim (host backend) | {husk_ms:.1} | {:.1} | {run_ratio:.2} |",
        ms(husk_min)
    );
    println!("| runc shim | {runc_ms:.1} | {:.1} | 1.00 |", ms(runc_min));
    println!();
    println!(
        "goal: husk / runc ≤ 1.3×: {run_ratio:.2}×, {}",
        verdict(run_ratio <= 1.3)
    );
    println!();

    // 2. One idle pod of each runtime, one at a time.
    let mut one = Vec::new();
    for runtime in Runtime::BOTH {
        let id = format!("idle-{pid}-{}", runtime.tag());
        bench.start_idle(runtime, &id)?;
        std::thread::sleep(SETTLE);
        let table = ProcTable::read();
        let pod = bench.pod(runtime, &id, &table)?;
        let mem = PodsMemory::of(std::slice::from_ref(&pod), &table)?;
        bench.remove(std::slice::from_ref(&id))?;
        bench.check_nothing_left()?;
        one.push(mem);
    }
    let (husk_one, runc_one) = (&one[0], &one[1]);
    println!("## 2. one idle pod (`ctr run -d` busybox `sleep`)");
    println!();
    println!("| PSS (MiB) | husk (host backend) | runc | husk / runc |");
    println!("|---|---|---|---|");
    for (what, husk, runc) in [
        ("shim process", husk_one.shims, runc_one.shims),
        ("rest of the pod", husk_one.rest, runc_one.rest),
        ("whole pod", husk_one.total(), runc_one.total()),
    ] {
        println!(
            "| {what} | {:.2} | {:.2} | {:.2} |",
            husk.pss_mib(),
            runc.pss_mib(),
            husk.pss_mib() / runc.pss_mib()
        );
    }
    println!(
        "| (shim RSS) | {:.2} | {:.2} | {:.2} |",
        husk_one.shims.rss_mib(),
        runc_one.shims.rss_mib(),
        husk_one.shims.rss_mib() / runc_one.shims.rss_mib()
    );
    println!();
    println!("rest of the pod, husk: {}", husk_one.breakdown());
    println!("rest of the pod, runc: {}", runc_one.breakdown());
    println!();
    let shim_mib = husk_one.shims.pss_mib();
    println!(
        "goal: husk shim PSS ≤ 10 MiB (no guest RAM: host backend): {shim_mib:.2} MiB, {}",
        verdict(shim_mib <= 10.0)
    );
    println!();

    // 3. P idle pods of each runtime.
    let mut many = Vec::new();
    for runtime in Runtime::BOTH {
        let ids: Vec<String> = (0..options.pods)
            .map(|n| format!("pod-{pid}-{}{n}", runtime.tag()))
            .collect();
        let mut start_times = Vec::new();
        let started = (|| -> Result<PodsMemory, Error> {
            for id in &ids {
                start_times.push(bench.start_idle(runtime, id)?);
            }
            std::thread::sleep(SETTLE);
            let table = ProcTable::read();
            let pods = ids
                .iter()
                .map(|id| bench.pod(runtime, id, &table))
                .collect::<Result<Vec<_>, _>>()?;
            PodsMemory::of(&pods, &table)
        })();
        // Removed whether or not the measurement worked.
        let removed = bench.remove(&ids);
        let mem = started?;
        removed?;
        bench.check_nothing_left()?;
        many.push((mem, ms(median(&mut start_times))));
    }
    let ((husk_many, husk_start), (runc_many, runc_start)) = (&many[0], &many[1]);
    let pods = options.pods as f64;
    let per_pod = |m: &PodsMemory| m.total().pss_mib() / pods;
    let many_ratio = per_pod(husk_many) / per_pod(runc_many);
    println!("## 3. {} idle pods per runtime", options.pods);
    println!();
    println!("| | husk (host backend) | runc | husk / runc |");
    println!("|---|---|---|---|");
    println!(
        "| total PSS, all pods (MiB) | {:.1} | {:.1} | {:.2} |",
        husk_many.total().pss_mib(),
        runc_many.total().pss_mib(),
        husk_many.total().pss_mib() / runc_many.total().pss_mib()
    );
    println!(
        "| host memory per pod (MiB) | {:.2} | {:.2} | {many_ratio:.2} |",
        per_pod(husk_many),
        per_pod(runc_many)
    );
    println!(
        "| of which shim per pod (MiB) | {:.2} | {:.2} | {:.2} |",
        husk_many.shims.pss_mib() / pods,
        runc_many.shims.pss_mib() / pods,
        husk_many.shims.pss_mib() / runc_many.shims.pss_mib()
    );
    println!(
        "| median `ctr run -d` (ms) | {husk_start:.1} | {runc_start:.1} | {:.2} |",
        husk_start / runc_start
    );
    println!();
    println!("rest of the pods, husk: {}", husk_many.breakdown());
    println!("rest of the pods, runc: {}", runc_many.breakdown());
    println!();
    let [husk_leaked, runc_leaked] = bench.remove_leaked_sockets()?;
    // Per runtime: the warm-up, the runs, the idle pod, the pods.
    let shims = options.runs + 2 + options.pods;
    if husk_leaked + runc_leaked > 0 {
        println!(
            "note: shim sockets left in /run/containerd/s after their shims exited \
             (removed here): husk {husk_leaked} of {shims}, runc {runc_leaked} of {shims}"
        );
    }
    println!(
        "(whole benchmark: {:.0} s; every container, shim, agent, sleep and socket removed)",
        started.elapsed().as_secs_f64()
    );
    drop(bench);

    println!();
    println!("README lines:");
    println!();
    println!(
        "husk's containerd shim (`io.containerd.husk.v2`, host backend: no VM, so no guest \
         RAM) against runc's (`io.containerd.runc.v2`, Debian's runc 1.1.5), through one \
         private containerd (Debian's 1.6.20) driven by `ctr` ({}, the development \
         machine, 2 cores; {} runs of each interleaved, median wall time of the whole \
         command; memory is PSS from /proc/PID/smaps_rollup of idle busybox `sleep` pods, \
         containerd itself not counted):",
        version("date", &["-u", "+%F"]),
        options.runs
    );
    println!();
    println!("```sh");
    println!("cargo build --release -p husk-runtime -p husk-agent");
    println!(
        "cargo run --release -p husk-tests --bin bench-shim -- --runs {}",
        options.runs
    );
    println!("```");
    println!();
    println!(
        "| containerd shim, host backend ({} runs; {} pods) | husk | runc | husk / runc | goal |",
        options.runs, options.pods
    );
    println!("|---|---|---|---|---|");
    println!(
        "| `ctr run --rm` busybox `echo hello`, median | {husk_ms:.1} ms | {runc_ms:.1} ms | \
         {run_ratio:.2} | ≤ 1.3 ({}) |",
        verdict(run_ratio <= 1.3)
    );
    println!(
        "| one idle pod: shim PSS | {:.2} MiB | {:.2} MiB | {:.2} | husk ≤ 10 MiB ({}) |",
        husk_one.shims.pss_mib(),
        runc_one.shims.pss_mib(),
        husk_one.shims.pss_mib() / runc_one.shims.pss_mib(),
        verdict(shim_mib <= 10.0)
    );
    println!(
        "| one idle pod: rest of the pod PSS | {:.2} MiB | {:.2} MiB | {:.2} | |",
        husk_one.rest.pss_mib(),
        runc_one.rest.pss_mib(),
        husk_one.rest.pss_mib() / runc_one.rest.pss_mib()
    );
    println!(
        "| {} idle pods: host memory (PSS) per pod | {:.2} MiB | {:.2} MiB | {many_ratio:.2} | |",
        options.pods,
        per_pod(husk_many),
        per_pod(runc_many)
    );
    Ok(())
}

fn main() -> ExitCode {
    catch_signals();
    match parse_options().and_then(|o| bench(&o)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-shim: {}", e.0);
            ExitCode::FAILURE
        }
    }
}
