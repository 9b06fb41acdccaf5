//! Layer 1 (DESIGN.md): the VMM driven by real vCPUs on this host's KVM, through
//! `husk vmm`, with the freestanding test guests of `tests/guests/`.

use std::path::{Path, PathBuf};

use husk_tests::guests::{guest_dir, guest_path, Guest};
use husk_tests::husk::husk_vmm;
use husk_tests::process::{console_lines, Run};
use husk_tests::{path_str, scratch_dir};

const HELLO_MARKER: &str = "husk-test-guest: hello";
/// What husk's memory map leaves out of RAM below 1 MiB (contract addendum of 16:50):
/// the EBDA [0x9fc00, 0xa0000) is reserved and [0xa0000, 0x100000) is not in the map, so
/// RAM total = M - (0x100000 - 0x9fc00) for every size.
const NOT_RAM_BELOW_1MIB: u64 = 0x10_0000 - 0x9_fc00;
const MIB: u64 = 1 << 20;

fn guest(g: Guest) -> PathBuf {
    guest_path(g).expect("building the test guests")
}

fn run(args: &[&str]) -> Run {
    husk_vmm(args).expect("running husk vmm")
}

/// The one console line starting with `prefix`; fails if there is none or more than one.
fn report_line<'a>(run: &'a Run, prefix: &str) -> &'a str {
    let lines: Vec<&str> = console_lines(&run.stdout)
        .into_iter()
        .filter(|l| l.starts_with(prefix))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one `{prefix}` line\n{}",
        run.describe()
    );
    lines[0]
}

/// A 4 KiB initrd with a known content, and the byte sum the guests report for it.
fn write_initrd(dir: &Path) -> (PathBuf, usize, u32) {
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i * 7 + i / 256) as u8).collect();
    let sum = bytes.iter().map(|b| u32::from(*b)).sum();
    let path = dir.join("initrd.bin");
    std::fs::write(&path, &bytes).expect("writing the test initrd");
    (path, bytes.len(), sum)
}

/// Checks a `bootinfo`/`bootinfo64` report: exactly the configured RAM (as husk's memory
/// map defines it), one MP processor entry per vCPU with APIC ids 0..n-1, the initrd and
/// the command line.
fn check_boot_report(g: Guest, mem_mib: u64, vcpus: u32) {
    let dir = scratch_dir(g.name()).expect("scratch dir");
    let (initrd, initrd_len, initrd_sum) = write_initrd(&dir);
    let kernel = guest(g);
    let cmdline = format!("husk-test {} mem={mem_mib} x=\"a b\"", g.name());
    let mem = mem_mib.to_string();
    let cpus = vcpus.to_string();
    let run = run(&[
        "--kernel",
        path_str(&kernel),
        "--initrd",
        path_str(&initrd),
        "--cmdline",
        &cmdline,
        "--mem-mib",
        &mem,
        "--vcpus",
        &cpus,
    ]);
    run.assert_clean_exit();
    assert!(
        !run.stdout.contains(": error:"),
        "the guest reported an error\n{}",
        run.describe()
    );
    let line = report_line(&run, &format!("{}: ", g.name()));
    let apic_ids: Vec<String> = (0..vcpus).map(|i| i.to_string()).collect();
    let expected = format!(
        "{}: ram_bytes={} cpus={vcpus} apic_ids={} initrd_bytes={initrd_len} initrd_sum={initrd_sum} cmdline=",
        g.name(),
        mem_mib * MIB - NOT_RAM_BELOW_1MIB,
        apic_ids.join(","),
    );
    let rest = line.strip_prefix(&expected).unwrap_or_else(|| {
        panic!(
            "boot report differs\nexpected: {expected}{cmdline}\n     got: {line}\n{}",
            run.describe()
        )
    });
    // The command line is passed verbatim; husk may append what its devices need.
    assert!(
        rest == cmdline || rest.starts_with(&format!("{cmdline} ")),
        "the guest's command line `{rest}` is not `{cmdline}` (plus husk's additions)\n{}",
        run.describe()
    );
}

#[test]
fn guests_build_as_elf64_with_pvh_note_where_expected() {
    for g in Guest::ALL {
        let path = guest(g);
        let bytes = std::fs::read(&path).expect("reading a built guest");
        husk_tests::guests::check_guest_elf(&bytes, g.entry())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    // Built once, then cached by content: the directory name is the hash.
    let dir = guest_dir().expect("guest dir");
    assert!(dir.join("complete").is_file(), "{}", dir.display());
}

#[test]
fn hello_prints_and_exits_zero() {
    let kernel = guest(Guest::Hello);
    let run = run(&["--kernel", path_str(&kernel)]);
    run.assert_clean_exit();
    assert_eq!(
        console_lines(&run.stdout),
        vec![HELLO_MARKER],
        "the console should hold exactly the hello line\n{}",
        run.describe()
    );
}

#[test]
fn bootinfo_pvh_64mib_1vcpu() {
    check_boot_report(Guest::Bootinfo, 64, 1);
}

#[test]
fn bootinfo_pvh_256mib_3vcpus() {
    check_boot_report(Guest::Bootinfo, 256, 3);
}

/// Above 3 GiB the RAM continues at 4 GiB, past the MMIO hole: still M - 0x60400 bytes.
#[test]
fn bootinfo_pvh_4608mib_2vcpus_crosses_the_mmio_hole() {
    check_boot_report(Guest::Bootinfo, 4608, 2);
}

#[test]
fn bootinfo64_64mib_1vcpu() {
    check_boot_report(Guest::Bootinfo64, 64, 1);
}

#[test]
fn bootinfo64_256mib_3vcpus() {
    check_boot_report(Guest::Bootinfo64, 256, 3);
}

#[test]
fn bootinfo64_4608mib_2vcpus_crosses_the_mmio_hole() {
    check_boot_report(Guest::Bootinfo64, 4608, 2);
}

fn check_smp(vcpus: u32) {
    let kernel = guest(Guest::Smp);
    let n = vcpus.to_string();
    let run = run(&["--kernel", path_str(&kernel), "--vcpus", &n]);
    run.assert_clean_exit();
    let ap_ids: Vec<String> = (1..vcpus).map(|i| i.to_string()).collect();
    let expected = format!("smp: cpus_online={vcpus} ap_apic_ids={}", ap_ids.join(","));
    assert_eq!(
        console_lines(&run.stdout),
        vec![expected.as_str()],
        "every AP should start and report its APIC id\n{}",
        run.describe()
    );
}

#[test]
fn smp_2_vcpus_all_online() {
    check_smp(2);
}

#[test]
fn smp_4_vcpus_all_online() {
    check_smp(4);
}

#[test]
fn triple_fault_exits_nonzero_naming_the_reason() {
    let kernel = guest(Guest::TripleFault);
    let run = run(&["--kernel", path_str(&kernel)]);
    assert!(
        matches!(run.code(), Some(c) if c != 0),
        "a triple fault must end husk with a non-zero exit code\n{}",
        run.describe()
    );
    assert_eq!(
        console_lines(&run.stdout),
        vec!["triple_fault: faulting now"],
        "the guest should print its marker and nothing after the fault\n{}",
        run.describe()
    );
    let errors = run.error_lines();
    assert_eq!(
        errors.len(),
        1,
        "exactly one error line\n{}",
        run.describe()
    );
    // On hardware KVM: KVM_EXIT_SHUTDOWN. On a PVM host the instruction emulator may stop
    // on the undeliverable exception first: KVM_EXIT_INTERNAL_ERROR. Both are documented
    // failure reasons.
    let error = errors[0];
    assert!(
        (error.contains("triple-fault") && error.contains("KVM_EXIT_SHUTDOWN"))
            || error.contains("KVM_EXIT_INTERNAL_ERROR"),
        "the error should name the triple fault (or PVM's internal error): {error}\n{}",
        run.describe()
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.describe());
}

#[test]
fn console_file_receives_the_output() {
    let dir = scratch_dir("console-file").expect("scratch dir");
    let out = dir.join("console.log");
    let kernel = guest(Guest::Hello);
    let console = format!("file={}", out.display());
    let run = run(&["--kernel", path_str(&kernel), "--console", &console]);
    run.assert_clean_exit();
    assert_eq!(run.stdout, "", "nothing on stdout\n{}", run.describe());
    let text = std::fs::read_to_string(&out).expect("reading the console file");
    assert_eq!(
        console_lines(&text),
        vec![HELLO_MARKER],
        "console file content: {text:?}"
    );
}

#[test]
fn console_off_prints_nothing() {
    let kernel = guest(Guest::Hello);
    let run = run(&["--kernel", path_str(&kernel), "--console", "off"]);
    run.assert_clean_exit();
    assert_eq!(run.stdout, "", "nothing on stdout\n{}", run.describe());
    assert_eq!(run.stderr, "", "nothing on stderr\n{}", run.describe());
}

#[test]
fn config_file_run_equals_flags_run() {
    let dir = scratch_dir("config-file").expect("scratch dir");
    let (initrd, _, _) = write_initrd(&dir);
    let kernel = guest(Guest::Bootinfo);
    let cmdline = "husk-test config \"quoted\" \\backslash";
    let flags = run(&[
        "--kernel",
        path_str(&kernel),
        "--initrd",
        path_str(&initrd),
        "--cmdline",
        cmdline,
        "--mem-mib",
        "96",
        "--vcpus",
        "2",
        "--console",
        "stdout",
    ]);
    flags.assert_clean_exit();
    let config = dir.join("vm.json");
    let json = serde_json::json!({
        "kernel": kernel,
        "initrd": initrd,
        "cmdline": cmdline,
        "mem_mib": 96,
        "vcpus": 2,
        "console": "stdout",
    });
    std::fs::write(&config, json.to_string()).expect("writing the config file");
    let file = run(&["--config", path_str(&config)]);
    file.assert_clean_exit();
    assert_eq!(
        file.stdout,
        flags.stdout,
        "the JSON config run should print what the flags run printed\nflags run:\n{}\nconfig run:\n{}",
        flags.describe(),
        file.describe()
    );
    // And the report is the one those settings give, so the equality means something.
    let line = report_line(&file, "bootinfo: ");
    assert!(
        line.starts_with(&format!(
            "bootinfo: ram_bytes={} cpus=2 apic_ids=0,1 initrd_bytes=4096 ",
            96 * MIB - NOT_RAM_BELOW_1MIB
        )) && line.contains(&format!("cmdline={cmdline}")),
        "unexpected report: {line}"
    );
}

/// The boot-timer port: the first write to 0x440 makes husk print, once, how long after
/// its own start the guest said it was ready.
#[test]
fn ready_port_reports_the_boot_time_once() {
    let kernel = guest(Guest::Ready);
    let run = run(&["--kernel", path_str(&kernel)]);
    run.assert_clean_exit();
    assert_eq!(
        console_lines(&run.stdout),
        vec!["ready: signalled"],
        "{}",
        run.describe()
    );
    let ready: Vec<&str> = run
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("husk: guest ready after "))
        .collect();
    assert_eq!(
        ready.len(),
        1,
        "exactly one ready line for two writes\n{}",
        run.describe()
    );
    let ms: f64 = ready[0]
        .strip_suffix(" ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the time in `{}`", ready[0]));
    // Measured from husk's own start, so it is positive and within the process lifetime.
    assert!(
        ms > 0.0 && ms <= run.elapsed.as_secs_f64() * 1000.0,
        "ready after {ms} ms, but the whole run took {:.3} ms\n{}",
        run.elapsed.as_secs_f64() * 1000.0,
        run.describe()
    );
}

/// SIGTERM (and SIGINT) stop a running VM cleanly: husk tears the VM down and exits
/// with the shell's 128 + signal status, saying why.
#[test]
fn a_signal_stops_a_running_vm() {
    use husk_tests::process::DEFAULT_TIMEOUT;
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    for (signal, name) in [(libc::SIGTERM, "15"), (libc::SIGINT, "2")] {
        let mut child = husk_tests::husk::husk_command()
            .unwrap()
            .args(["vmm", "--vcpus", "2", "--kernel"])
            .arg(guest(Guest::Spin))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim_end(), "spin: running");
        let pid = child.id() as libc::pid_t;
        // SAFETY: plain kill(2) of our own child, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("husk did not stop within {DEFAULT_TIMEOUT:?} of signal {name}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert_eq!(status.code(), Some(128 + signal), "{stderr}");
        assert!(
            stderr.contains(&format!("VM stopped on signal {name}")),
            "{stderr}"
        );
    }
}

/// How one of a running husk's threads is confined: from /proc/PID/task/TID, its
/// seccomp mode (`Seccomp:` of `status`: 2 is a filter), its effective capabilities
/// (`CapEff:`) and its root directory.
#[derive(Debug)]
struct ThreadConfinement {
    name: String,
    seccomp: String,
    cap_eff: String,
    root: PathBuf,
}

fn thread_confinement(pid: u32) -> Vec<ThreadConfinement> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(Result::ok)
        .map(|task| {
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
            let field = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            };
            ThreadConfinement {
                name: name.trim().to_owned(),
                seccomp: field("Seccomp:"),
                cap_eff: field("CapEff:"),
                root: std::fs::read_link(path.join("root")).unwrap_or_default(),
            }
        })
        .collect()
}

/// The `VmFlags:` of every mapping of process `pid` at least `min_kib` KiB large
/// (/proc/PID/smaps).
fn large_mappings(pid: u32, min_kib: u64) -> Vec<String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut found = Vec::new();
    let mut size_kib = 0;
    for line in smaps.lines() {
        if let Some(size) = line.strip_prefix("Size:") {
            size_kib = size
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            if size_kib >= min_kib {
                found.push(flags.trim().to_owned());
            }
        }
    }
    found
}

/// Issue 8: the vCPU and event-loop threads run confined by default: under their
/// seccomp filters (mode 2), with no capabilities, and the vCPU threads in an empty root;
/// and unconfined only when asked (`--seccomp off`). The other threads (the runtime's)
/// keep the process's root and capabilities, under the process's deny-list only.
#[test]
fn vcpu_and_event_loop_threads_run_confined() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    assert!(
        rustix::process::geteuid().is_root(),
        "the confinement checked here is root's (an empty root needs CAP_SYS_CHROOT)"
    );
    const NO_CAPS: &str = "0000000000000000";
    for confined in [true, false] {
        let mut command = husk_tests::husk::husk_command().unwrap();
        command
            .args(["vmm", "--vcpus", "2", "--kernel"])
            .arg(guest(Guest::Spin));
        if !confined {
            command.args(["--seccomp", "off"]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim_end(), "spin: running");
        let threads = thread_confinement(child.id());
        let guest_ram = large_mappings(child.id(), 100 << 10);
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let named = |prefix: &str| -> Vec<&ThreadConfinement> {
            threads
                .iter()
                .filter(|t| t.name.starts_with(prefix))
                .collect()
        };
        // The guest's 128 MiB are the only mapping that large, and never in a core dump.
        assert_eq!(guest_ram.len(), 1, "{guest_ram:?}");
        assert!(
            guest_ram[0].split_whitespace().any(|flag| flag == "dd"),
            "guest memory without MADV_DONTDUMP: {guest_ram:?}"
        );
        // No core dumps of a process holding a VM.
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap_or_default();
        let no_core = core.split_whitespace().skip(4).take(2).all(|v| v == "0");
        assert_eq!(no_core, confined, "{core}");
        let (vcpus, event_loop) = (named("husk-vcpu-"), named("husk-event-loop"));
        assert_eq!((vcpus.len(), event_loop.len()), (2, 1), "{threads:?}");
        let main = threads
            .iter()
            .find(|t| t.name == "husk")
            .expect("the main thread");
        let process_filter = if confined { "2" } else { "0" };
        assert_eq!(main.seccomp, process_filter, "{threads:?}");
        assert_ne!(main.cap_eff, NO_CAPS, "{threads:?}");
        assert_eq!(main.root, Path::new("/"), "{threads:?}");
        for thread in vcpus.iter().chain(&event_loop) {
            let expected_root = match (confined, thread.name.starts_with("husk-vcpu-")) {
                // husk_seccomp::jail::EMPTY_ROOT
                (true, true) => Path::new("/run/husk/.empty"),
                _ => Path::new("/"),
            };
            assert_eq!(thread.root, expected_root, "{confined}: {threads:?}");
            if confined {
                assert_eq!(
                    (thread.seccomp.as_str(), thread.cap_eff.as_str()),
                    ("2", NO_CAPS),
                    "{threads:?}"
                );
            } else {
                assert_eq!(
                    (thread.seccomp.as_str(), thread.cap_eff.as_str()),
                    ("0", main.cap_eff.as_str()),
                    "{threads:?}"
                );
            }
        }
    }
}
