//! `husk vmm` with bad input: each case must end with a non-zero exit code, exactly one
//! clear `husk: error:` line that names the problem, no panic and no hang (every run is
//! bounded by the support library's timeout).

use std::path::PathBuf;

use husk_tests::elf::{program_headers, EM_AARCH64, PT_LOAD};
use husk_tests::guests::{guest_dir, guest_path, Guest};
use husk_tests::husk::{husk_command, husk_vmm};
use husk_tests::process::{run_with_timeout, Run, DEFAULT_TIMEOUT};
use husk_tests::{path_str, scratch_dir};

/// A file that open(2) refuses even to root: sysctl files are checked against their mode
/// bits for every user, and this one is write-only (0200).
const WRITE_ONLY_SYSCTL: &str = "/proc/sys/vm/drop_caches";

fn hello() -> PathBuf {
    guest_path(Guest::Hello).expect("building the test guests")
}

/// Asserts the shape every bad-input failure must have, and that the one error line
/// contains each of `needles` (case-insensitive). Returns the error line.
fn assert_rejected<'a>(run: &'a Run, needles: &[&str]) -> &'a str {
    assert!(
        matches!(run.code(), Some(c) if c != 0),
        "husk must exit with a non-zero code (not a signal)\n{}",
        run.describe()
    );
    assert!(
        !run.stderr.contains("panicked") && !run.stdout.contains("panicked"),
        "husk panicked\n{}",
        run.describe()
    );
    let errors = run.error_lines();
    assert_eq!(
        errors.len(),
        1,
        "exactly one `husk: error:` line expected\n{}",
        run.describe()
    );
    let error = errors[0];
    let lower = error.to_lowercase();
    for needle in needles {
        assert!(
            lower.contains(&needle.to_lowercase()),
            "the error should mention `{needle}`: {error}\n{}",
            run.describe()
        );
    }
    // Nothing reached the guest console: the VM never ran.
    assert_eq!(
        run.stdout,
        "",
        "no guest output expected\n{}",
        run.describe()
    );
    error
}

fn vmm(args: &[&str]) -> Run {
    husk_vmm(args).expect("running husk vmm")
}

/// Runs `husk vmm --kernel <hello> ARGS`: a valid kernel, so only ARGS can be wrong.
fn vmm_hello(args: &[&str]) -> Run {
    let kernel = hello();
    let mut all = vec!["--kernel", path_str(&kernel)];
    all.extend_from_slice(args);
    husk_vmm(&all).expect("running husk vmm")
}

fn host_mem_mib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("reading /proc/meminfo");
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal in /proc/meminfo");
    kib / 1024
}

// ---- the kernel -------------------------------------------------------------------

#[test]
fn missing_kernel() {
    let dir = scratch_dir("missing-kernel").expect("scratch dir");
    let missing = dir.join("no-such-vmlinux");
    let run = vmm(&["--kernel", path_str(&missing)]);
    assert_rejected(&run, &["kernel", path_str(&missing), "no such file"]);
}

#[test]
fn kernel_is_a_directory() {
    let dir = scratch_dir("kernel-dir").expect("scratch dir");
    let run = vmm(&["--kernel", path_str(&dir)]);
    assert_rejected(&run, &["kernel", path_str(&dir), "not a regular file"]);
}

/// A FIFO with no writer: opening it for reading would block forever.
#[test]
fn kernel_is_a_fifo_without_writer() {
    let dir = scratch_dir("kernel-fifo").expect("scratch dir");
    let fifo = dir.join("vmlinux.fifo");
    let c_path = std::ffi::CString::new(path_str(&fifo)).expect("no NUL in path");
    // SAFETY: c_path is a valid NUL-terminated string.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
    let run = vmm(&["--kernel", path_str(&fifo)]);
    assert_rejected(&run, &["kernel", path_str(&fifo), "not a regular file"]);
}

/// A regular file that cannot be opened for reading, even by root.
#[test]
fn kernel_unreadable() {
    let err = std::fs::File::open(WRITE_ONLY_SYSCTL)
        .err()
        .unwrap_or_else(|| {
            panic!("{WRITE_ONLY_SYSCTL} is readable here: this test needs an unreadable file")
        });
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    let run = vmm(&["--kernel", WRITE_ONLY_SYSCTL]);
    assert_rejected(&run, &["kernel", WRITE_ONLY_SYSCTL, "permission denied"]);
}

#[test]
fn kernel_of_random_bytes() {
    let dir = scratch_dir("kernel-random").expect("scratch dir");
    // A fixed pseudo-random sequence (xorshift64), so a failure is reproducible.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..65536)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    assert!(!bytes.starts_with(b"\x7fELF") && &bytes[0x202..0x206] != b"HdrS");
    let path = dir.join("random.bin");
    std::fs::write(&path, &bytes).expect("writing the random file");
    let run = vmm(&["--kernel", path_str(&path)]);
    assert_rejected(&run, &["kernel", path_str(&path), "not a kernel"]);
}

#[test]
fn kernel_empty_file() {
    let dir = scratch_dir("kernel-empty").expect("scratch dir");
    let path = dir.join("empty");
    std::fs::write(&path, b"").expect("writing the empty file");
    let run = vmm(&["--kernel", path_str(&path)]);
    assert_rejected(&run, &["kernel", path_str(&path), "not a kernel"]);
}

/// The ELF header is whole but the file ends inside the loadable segment.
#[test]
fn kernel_truncated_elf_segment() {
    let bytes = std::fs::read(hello()).expect("reading the hello guest");
    let headers = program_headers(&bytes).expect("parsing the hello guest");
    let load = headers
        .iter()
        .find(|ph| ph.p_type == PT_LOAD && ph.filesz > 16)
        .expect("a loadable segment with content");
    let cut = (load.offset + load.filesz / 2) as usize;
    let dir = scratch_dir("kernel-truncated").expect("scratch dir");
    let path = dir.join("truncated.elf");
    std::fs::write(&path, &bytes[..cut]).expect("writing the truncated ELF");
    let run = vmm(&["--kernel", path_str(&path)]);
    assert_rejected(&run, &["kernel", path_str(&path), "truncated"]);
}

/// The file ends inside the ELF header itself.
#[test]
fn kernel_truncated_elf_header() {
    let bytes = std::fs::read(hello()).expect("reading the hello guest");
    let dir = scratch_dir("kernel-truncated-header").expect("scratch dir");
    let path = dir.join("header.elf");
    std::fs::write(&path, &bytes[..40]).expect("writing the truncated ELF");
    let run = vmm(&["--kernel", path_str(&path)]);
    assert_rejected(&run, &["kernel", path_str(&path), "truncated"]);
}

/// A well-formed ELF64 for aarch64 (the hello guest with another e_machine).
#[test]
fn kernel_elf_for_another_machine() {
    let mut bytes = std::fs::read(hello()).expect("reading the hello guest");
    bytes[18..20].copy_from_slice(&EM_AARCH64.to_le_bytes());
    let dir = scratch_dir("kernel-aarch64").expect("scratch dir");
    let path = dir.join("aarch64.elf");
    std::fs::write(&path, &bytes).expect("writing the aarch64 ELF");
    let run = vmm(&["--kernel", path_str(&path)]);
    assert_rejected(&run, &["kernel", path_str(&path), "x86_64", "183"]);
}

/// The 32-bit ELF the PVH guests are linked as, before the ELF64 conversion.
#[test]
fn kernel_elf32() {
    let elf32 = guest_dir()
        .expect("building the test guests")
        .join("hello.elf32");
    let run = vmm(&["--kernel", path_str(&elf32)]);
    assert_rejected(&run, &["kernel", path_str(&elf32), "32-bit"]);
}

/// A kernel whose segment lies beyond the end of guest memory.
#[test]
fn kernel_larger_than_guest_memory() {
    let mut bytes = std::fs::read(hello()).expect("reading the hello guest");
    // Grow the first loadable segment's memory size to 64 MiB, then boot with 16 MiB.
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes")) as usize;
    let phnum = u16::from_le_bytes(bytes[56..58].try_into().expect("2 bytes")) as usize;
    let ph = (0..phnum)
        .map(|i| phoff + i * 56)
        .find(|&ph| bytes[ph..ph + 4] == 1u32.to_le_bytes())
        .expect("a loadable segment");
    bytes[ph + 40..ph + 48].copy_from_slice(&(64u64 << 20).to_le_bytes());
    let dir = scratch_dir("kernel-too-big").expect("scratch dir");
    let path = dir.join("big.elf");
    std::fs::write(&path, &bytes).expect("writing the ELF");
    let run = vmm(&["--kernel", path_str(&path), "--mem-mib", "16"]);
    assert_rejected(&run, &["kernel", path_str(&path), "does not fit"]);
}

// ---- the initrd -------------------------------------------------------------------

#[test]
fn initrd_does_not_fit_in_guest_memory() {
    let dir = scratch_dir("initrd-too-big").expect("scratch dir");
    let path = dir.join("initrd.img");
    // 32 MiB (sparse) for a 16 MiB guest.
    let file = std::fs::File::create(&path).expect("creating the initrd");
    file.set_len(32 << 20).expect("sizing the initrd");
    drop(file);
    let run = vmm_hello(&["--mem-mib", "16", "--initrd", path_str(&path)]);
    assert_rejected(&run, &["initrd", path_str(&path), "does not fit"]);
}

#[test]
fn initrd_missing() {
    let dir = scratch_dir("initrd-missing").expect("scratch dir");
    let path = dir.join("no-such-initrd");
    let run = vmm_hello(&["--initrd", path_str(&path)]);
    assert_rejected(&run, &["initrd", path_str(&path), "no such file"]);
}

#[test]
fn initrd_is_a_directory() {
    let dir = scratch_dir("initrd-dir").expect("scratch dir");
    let run = vmm_hello(&["--initrd", path_str(&dir)]);
    assert_rejected(&run, &["initrd", path_str(&dir), "not a regular file"]);
}

// ---- memory -----------------------------------------------------------------------

#[test]
fn zero_memory() {
    let run = vmm_hello(&["--mem-mib", "0"]);
    assert_rejected(&run, &["memory", "0 MiB"]);
}

#[test]
fn more_memory_than_the_host_has() {
    let host = host_mem_mib();
    let asked = host * 2 + 1024;
    let run = vmm_hello(&["--mem-mib", &asked.to_string()]);
    assert_rejected(&run, &["memory", &format!("{asked} MiB")]);
}

#[test]
fn memory_not_a_number() {
    let run = vmm_hello(&["--mem-mib", "lots"]);
    assert_rejected(&run, &["--mem-mib", "lots"]);
}

// ---- vCPUs ------------------------------------------------------------------------

#[test]
fn zero_vcpus() {
    let run = vmm_hello(&["--vcpus", "0"]);
    assert_rejected(&run, &["vcpu"]);
}

#[test]
fn too_many_vcpus() {
    let run = vmm_hello(&["--vcpus", "1000"]);
    assert_rejected(&run, &["1000 vcpus", "at most"]);
}

// ---- the KVM device -----------------------------------------------------------------

fn vmm_hello_with_kvm_device(device: &str) -> Run {
    let kernel = hello();
    let mut cmd = husk_command().expect("the husk binary");
    cmd.env("HUSK_KVM_DEVICE", device)
        .args(["vmm", "--kernel", path_str(&kernel)]);
    run_with_timeout(&mut cmd, DEFAULT_TIMEOUT).expect("running husk vmm")
}

#[test]
fn no_kvm_device() {
    let dir = scratch_dir("no-kvm").expect("scratch dir");
    let missing = dir.join("kvm");
    let run = vmm_hello_with_kvm_device(path_str(&missing));
    assert_rejected(&run, &["kvm", path_str(&missing), "no such file"]);
}

#[test]
fn kvm_device_is_not_kvm() {
    let run = vmm_hello_with_kvm_device("/dev/null");
    assert_rejected(&run, &["kvm", "/dev/null"]);
}

/// Opening the device fails with EACCES (a write-only sysctl file refuses O_RDWR to
/// every user, root included): what a user outside the kvm group gets from /dev/kvm.
#[test]
fn kvm_device_without_permission() {
    let run = vmm_hello_with_kvm_device(WRITE_ONLY_SYSCTL);
    assert_rejected(&run, &["kvm", WRITE_ONLY_SYSCTL, "permission denied"]);
}

// ---- the command line and the config file -------------------------------------------

#[test]
fn bad_console_value() {
    let run = vmm_hello(&["--console", "serial"]);
    assert_rejected(&run, &["console", "serial"]);
}

#[test]
fn console_file_in_missing_directory() {
    let dir = scratch_dir("console-missing-dir").expect("scratch dir");
    let path = dir.join("no-such-dir").join("console.log");
    let console = format!("file={}", path.display());
    let run = vmm_hello(&["--console", &console]);
    assert_rejected(&run, &["console", path_str(&path)]);
}

#[test]
fn unknown_flag() {
    let run = vmm_hello(&["--frobnicate"]);
    assert_rejected(&run, &["--frobnicate"]);
}

#[test]
fn command_line_too_long() {
    let long = "x".repeat(4096);
    let run = vmm_hello(&["--cmdline", &long]);
    assert_rejected(&run, &["command line"]);
}

#[test]
fn config_file_missing() {
    let dir = scratch_dir("config-missing").expect("scratch dir");
    let path = dir.join("vm.json");
    let run = vmm(&["--config", path_str(&path)]);
    assert_rejected(&run, &["config", path_str(&path)]);
}

#[test]
fn config_file_not_json() {
    let dir = scratch_dir("config-bad").expect("scratch dir");
    let path = dir.join("vm.json");
    std::fs::write(&path, "mem_mib = 128\n").expect("writing the config file");
    let run = vmm(&["--config", path_str(&path)]);
    assert_rejected(&run, &["config", path_str(&path)]);
}

#[test]
fn config_file_unknown_key() {
    let dir = scratch_dir("config-key").expect("scratch dir");
    let path = dir.join("vm.json");
    let json = serde_json::json!({ "kernel": hello(), "memory": 128 });
    std::fs::write(&path, json.to_string()).expect("writing the config file");
    let run = vmm(&["--config", path_str(&path)]);
    assert_rejected(&run, &["config", "memory"]);
}

// ---- devices ------------------------------------------------------------------------

#[test]
fn drive_spec_without_path() {
    let run = vmm_hello(&["--drive", "ro=on"]);
    assert_rejected(&run, &["drive", "path"]);
}

#[test]
fn drive_file_missing() {
    let dir = scratch_dir("drive-missing").expect("scratch dir");
    let path = dir.join("disk.img");
    let spec = format!("path={}", path.display());
    let run = vmm_hello(&["--drive", &spec]);
    assert_rejected(&run, &["drive", path_str(&path)]);
}

#[test]
fn drive_is_a_directory() {
    let dir = scratch_dir("drive-dir").expect("scratch dir");
    let spec = format!("path={}", dir.display());
    let run = vmm_hello(&["--drive", &spec]);
    assert_rejected(&run, &["drive", path_str(&dir)]);
}

#[test]
fn drive_id_too_long() {
    let dir = scratch_dir("drive-id").expect("scratch dir");
    let path = dir.join("disk.img");
    std::fs::write(&path, vec![0u8; 4096]).expect("writing the drive");
    let spec = format!("path={},id={}", path.display(), "x".repeat(21));
    let run = vmm_hello(&["--drive", &spec]);
    assert_rejected(&run, &["drive", "id"]);
}

#[test]
fn vsock_reserved_cid() {
    let dir = scratch_dir("vsock-cid").expect("scratch dir");
    let spec = format!("cid=2,uds={}", dir.join("v.sock").display());
    let run = vmm_hello(&["--vsock", &spec]);
    assert_rejected(&run, &["vsock", "cid"]);
}

#[test]
fn vsock_socket_path_taken() {
    let dir = scratch_dir("vsock-taken").expect("scratch dir");
    let path = dir.join("v.sock");
    std::fs::write(&path, "not a socket").expect("writing the file");
    let spec = format!("cid=3,uds={}", path.display());
    let run = vmm_hello(&["--vsock", &spec]);
    assert_rejected(&run, &["vsock", path_str(&path)]);
    assert_eq!(
        std::fs::read_to_string(&path).expect("reading the file back"),
        "not a socket",
        "husk must not touch a file that is in the way"
    );
}

#[test]
fn vsock_socket_path_too_long() {
    let dir = scratch_dir("vsock-long").expect("scratch dir");
    let path = dir.join("v".repeat(100));
    let spec = format!("cid=3,uds={}", path.display());
    let run = vmm_hello(&["--vsock", &spec]);
    assert_rejected(&run, &["vsock", "too long"]);
    assert!(!path.exists(), "nothing may be left at {}", path.display());
}

#[test]
fn drive_used_twice_for_writing() {
    let dir = scratch_dir("drive-twice").expect("scratch dir");
    let path = dir.join("disk.img");
    std::fs::write(&path, vec![0u8; 4096]).expect("writing the drive");
    let spec = format!("path={}", path.display());
    let run = vmm_hello(&["--drive", &spec, "--drive", &spec]);
    assert_rejected(&run, &["drive", path_str(&path), "in use"]);
}

#[test]
fn two_vsock_devices() {
    let dir = scratch_dir("vsock-two").expect("scratch dir");
    let first = format!("cid=3,uds={}", dir.join("a.sock").display());
    let second = format!("cid=4,uds={}", dir.join("b.sock").display());
    let run = vmm_hello(&["--vsock", &first, "--vsock", &second]);
    assert_rejected(&run, &["--vsock"]);
}

#[test]
fn too_many_drives() {
    let dir = scratch_dir("drives-many").expect("scratch dir");
    let path = dir.join("disk.img");
    std::fs::write(&path, vec![0u8; 4096]).expect("writing the drive");
    let spec = format!("path={},ro=on", path.display());
    let mut args = Vec::new();
    for _ in 0..20 {
        args.extend(["--drive", spec.as_str()]);
    }
    let run = vmm_hello(&args);
    assert_rejected(&run, &["too many"]);
}
