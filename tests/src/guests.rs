//! The freestanding test guests of `tests/guests/`, built with gcc by the tests.
//!
//! PVH guests are compiled with `-m32`, linked at 1 MiB with a PVH note (ELF note "Xen",
//! type 18, 32-bit entry) and converted to an ELF64 container with objcopy (husk, like
//! linux-loader, takes only 64-bit x86_64 ELF files; the entry stays 32-bit code).
//! The 64-bit guest has no PVH note and is entered through the Linux 64-bit boot
//! protocol. Builds are cached under `<target>/husk-test-guests/<hash>/`, keyed by the
//! sources, the flags and the toolchain, so repeated test runs do not rebuild.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::elf;
use crate::process::run_with_timeout;
use crate::{build_dirs, Error};

/// The guest sources, embedded so that the cache key is exactly what gets compiled (and
/// cargo rebuilds the tests when a guest source changes).
const SOURCES: &[(&str, &str)] = &[
    ("include/guest.h", include_str!("../guests/include/guest.h")),
    (
        "common/start32.S",
        include_str!("../guests/common/start32.S"),
    ),
    (
        "common/start64.S",
        include_str!("../guests/common/start64.S"),
    ),
    ("common/lib.c", include_str!("../guests/common/lib.c")),
    ("common/mp.c", include_str!("../guests/common/mp.c")),
    ("common/report.c", include_str!("../guests/common/report.c")),
    ("guest32.ld", include_str!("../guests/guest32.ld")),
    ("guest64.ld", include_str!("../guests/guest64.ld")),
    ("hello.c", include_str!("../guests/hello.c")),
    ("bootinfo.c", include_str!("../guests/bootinfo.c")),
    ("bootinfo64.c", include_str!("../guests/bootinfo64.c")),
    ("smp.c", include_str!("../guests/smp.c")),
    (
        "smp_trampoline.S",
        include_str!("../guests/smp_trampoline.S"),
    ),
    ("triple_fault.c", include_str!("../guests/triple_fault.c")),
    ("ready.c", include_str!("../guests/ready.c")),
    ("spin.c", include_str!("../guests/spin.c")),
    ("common/virtio.h", include_str!("../guests/common/virtio.h")),
    ("common/virtio.c", include_str!("../guests/common/virtio.c")),
    ("virtio_blk.c", include_str!("../guests/virtio_blk.c")),
    ("virtio_vsock.c", include_str!("../guests/virtio_vsock.c")),
    (
        "virtio_blk_spare.c",
        include_str!("../guests/virtio_blk_spare.c"),
    ),
    ("virtio_net.c", include_str!("../guests/virtio_net.c")),
    (
        "virtio_blk_writer.c",
        include_str!("../guests/virtio_blk_writer.c"),
    ),
];

/// Flags for every guest: freestanding, no SSE (general registers only), no PIC, no
/// stack protector or CET, no unwind tables; warnings are errors.
const CFLAGS: &[&str] = &[
    "-ffreestanding",
    "-nostdlib",
    "-mgeneral-regs-only",
    "-fno-pic",
    "-static",
    "-no-pie",
    "-O2",
    "-fno-builtin",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fcf-protection=none",
    // The guests read boot data at low physical addresses on purpose.
    "--param=min-pagesize=0",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Iinclude",
    "-Wl,--build-id=none",
];

/// Bump to force a rebuild when the build procedure itself changes.
const KIT_VERSION: &str = "husk-test-guests 1";

/// How a guest is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// PVH: 32-bit protected mode, EBX = hvm_start_info.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, RSI = boot_params.
    Linux64,
}

/// The test guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guest {
    /// Prints `husk-test-guest: hello` on COM1 and resets (then QEMU's debug exit).
    Hello,
    /// PVH: `bootinfo: ram_bytes=.. cpus=.. apic_ids=.. initrd_bytes=.. initrd_sum=.. cmdline=..`.
    Bootinfo,
    /// The same report (`bootinfo64: ...`) through the 64-bit boot protocol.
    Bootinfo64,
    /// Starts every AP with INIT-SIPI-SIPI: `smp: cpus_online=<n> ap_apic_ids=<ids>`.
    Smp,
    /// Executes ud2 with an empty IDT: a triple fault.
    TripleFault,
    /// Writes husk's boot-timer port (0x440) twice, prints `ready: signalled`, resets.
    Ready,
    /// Prints `spin: running`, then runs until the host stops the VM.
    Spin,
    /// Drives every virtio-blk device of the command line: pattern write, flush and
    /// read-back (read-write drives), a rejected write (read-only drives), reads past the
    /// end; `virtio-blk: drive <i> ...` lines, then `virtio-blk: PASS drives=<n>`.
    VirtioBlk,
    /// Drives the virtio-vsock device: a refused connection, a connection to a host port,
    /// an upper-casing echo on a listening port (`test.*_port=` on the command line);
    /// `virtio-vsock: ...` lines, then `virtio-vsock: PASS`.
    VirtioVsock,
    /// Drives an empty spare virtio-blk slot and asks the host (console lines
    /// `LABGUEST-ATTACH l1-spare`, `LABGUEST-DETACH l1-spare`) to attach a read-only drive
    /// to it and detach it again, checking capacity, ConfigGeneration, the
    /// configuration-change interrupt, GET_ID, a read and a refused write;
    /// `virtio-blk-spare: ...` lines, then `virtio-blk-spare: PASS`.
    VirtioBlkSpare,
    /// Drives the first virtio-net device as a tiny IPv4 host (`test.ip=`,
    /// `test.gateway=` on the command line): an ARP request for the gateway, echo requests
    /// to it with their replies checked, ARP requests for its own address answered;
    /// `virtio-net: ...` lines, then `virtio-net: PASS`.
    VirtioNet,
    /// Writes 4 KiB blocks whose content encodes their number (`test.seed=` varies it)
    /// to the first virtio-blk drive in batches, each followed by a FLUSH, and prints
    /// `flushed <n>` once the FLUSH completed; `writer: disk full blocks=<n>` at the end.
    VirtioBlkWriter,
}

impl Guest {
    pub const ALL: [Guest; 12] = [
        Guest::Hello,
        Guest::Bootinfo,
        Guest::Bootinfo64,
        Guest::Smp,
        Guest::TripleFault,
        Guest::Ready,
        Guest::Spin,
        Guest::VirtioBlk,
        Guest::VirtioVsock,
        Guest::VirtioBlkSpare,
        Guest::VirtioNet,
        Guest::VirtioBlkWriter,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Guest::Hello => "hello",
            Guest::Bootinfo => "bootinfo",
            Guest::Bootinfo64 => "bootinfo64",
            Guest::Smp => "smp",
            Guest::TripleFault => "triple_fault",
            Guest::Ready => "ready",
            Guest::Spin => "spin",
            Guest::VirtioBlk => "virtio_blk",
            Guest::VirtioVsock => "virtio_vsock",
            Guest::VirtioBlkSpare => "virtio_blk_spare",
            Guest::VirtioNet => "virtio_net",
            Guest::VirtioBlkWriter => "virtio_blk_writer",
        }
    }

    pub fn entry(self) -> Entry {
        match self {
            Guest::Bootinfo64 => Entry::Linux64,
            _ => Entry::Pvh,
        }
    }

    /// The sources linked into this guest, besides the start code.
    fn sources(self) -> &'static [&'static str] {
        match self {
            Guest::Hello => &["common/lib.c", "hello.c"],
            Guest::Bootinfo => &[
                "common/lib.c",
                "common/mp.c",
                "common/report.c",
                "bootinfo.c",
            ],
            Guest::Bootinfo64 => &[
                "common/lib.c",
                "common/mp.c",
                "common/report.c",
                "bootinfo64.c",
            ],
            Guest::Smp => &["common/lib.c", "common/mp.c", "smp_trampoline.S", "smp.c"],
            Guest::TripleFault => &["common/lib.c", "triple_fault.c"],
            Guest::Ready => &["common/lib.c", "ready.c"],
            Guest::Spin => &["common/lib.c", "spin.c"],
            Guest::VirtioBlk => &["common/lib.c", "common/virtio.c", "virtio_blk.c"],
            Guest::VirtioVsock => &["common/lib.c", "common/virtio.c", "virtio_vsock.c"],
            Guest::VirtioBlkSpare => &["common/lib.c", "common/virtio.c", "virtio_blk_spare.c"],
            Guest::VirtioNet => &["common/lib.c", "common/virtio.c", "virtio_net.c"],
            Guest::VirtioBlkWriter => &["common/lib.c", "common/virtio.c", "virtio_blk_writer.c"],
        }
    }

    fn file_name(self) -> String {
        format!("{}.elf", self.name())
    }
}

/// The marker written into a cache directory once every guest in it is built.
const COMPLETE: &str = "complete";

/// FNV-1a, 64 bits: a stable content hash for the cache key (not for security).
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate fields so that ("ab", "c") and ("a", "bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

fn tool_version(tool: &str) -> Result<String, Error> {
    let run = run_with_timeout(Command::new(tool).arg("--version"), Duration::from_secs(60))
        .map_err(|e| {
            Error(format!(
                "the test guests need `{tool}` (Debian: apt-get install gcc binutils): {e}"
            ))
        })?;
    if !run.status.success() {
        return Err(Error(format!(
            "`{tool} --version` failed:\n{}",
            run.describe()
        )));
    }
    Ok(run.stdout.lines().next().unwrap_or_default().to_string())
}

fn cache_key() -> Result<String, Error> {
    let mut hash = Fnv64::new();
    hash.write(KIT_VERSION.as_bytes());
    for (path, text) in SOURCES {
        hash.write(path.as_bytes());
        hash.write(text.as_bytes());
    }
    for flag in CFLAGS {
        hash.write(flag.as_bytes());
    }
    for tool in ["gcc", "objcopy"] {
        hash.write(tool_version(tool)?.as_bytes());
    }
    Ok(format!("{:016x}", hash.0))
}

fn run_tool(dir: &Path, program: &str, args: &[String]) -> Result<(), Error> {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).args(args);
    let run = run_with_timeout(&mut cmd, Duration::from_secs(300))?;
    if !run.status.success() {
        return Err(Error(format!(
            "building a test guest failed (in {}):\n{}",
            dir.display(),
            run.describe()
        )));
    }
    Ok(())
}

fn compile(dir: &Path, guest: Guest) -> Result<(), Error> {
    let out = guest.file_name();
    let mut args: Vec<String> = CFLAGS.iter().map(|s| s.to_string()).collect();
    match guest.entry() {
        Entry::Pvh => {
            let elf32 = format!("{}.elf32", guest.name());
            args.extend(
                ["-m32", "-T", "guest32.ld", "-o", &elf32, "common/start32.S"].map(String::from),
            );
            args.extend(guest.sources().iter().map(|s| s.to_string()));
            run_tool(dir, "gcc", &args)?;
            // husk takes only ELF64 x86_64 containers: convert, keeping the segments.
            run_tool(
                dir,
                "objcopy",
                &["-O".into(), "elf64-x86-64".into(), elf32, out.clone()],
            )?;
        }
        Entry::Linux64 => {
            args.extend(
                [
                    "-m64",
                    "-mno-red-zone",
                    "-T",
                    "guest64.ld",
                    "-o",
                    &out,
                    "common/start64.S",
                ]
                .map(String::from),
            );
            args.extend(guest.sources().iter().map(|s| s.to_string()));
            run_tool(dir, "gcc", &args)?;
        }
    }
    let path = dir.join(&out);
    let bytes = std::fs::read(&path).map_err(|e| {
        Error(format!(
            "cannot read the built guest {}: {e}",
            path.display()
        ))
    })?;
    check_guest_elf(&bytes, guest.entry())
        .map_err(|e| Error(format!("the built guest {} is wrong: {e}", path.display())))
}

/// Checks a built guest: ELF64 x86_64, loaded at 1 MiB, with a PVH note exactly when
/// it should have one.
pub fn check_guest_elf(bytes: &[u8], entry: Entry) -> Result<(), String> {
    // program_headers rejects anything but a little-endian x86_64 ELF64.
    let headers = elf::program_headers(bytes)?;
    if !headers
        .iter()
        .any(|ph| ph.p_type == elf::PT_LOAD && ph.paddr == 0x10_0000)
    {
        return Err("no loadable segment at 1 MiB".into());
    }
    match (entry, elf::pvh_entry(&elf::notes(bytes, &headers)?)) {
        (Entry::Pvh, None) => Err("no PVH note".into()),
        (Entry::Linux64, Some(_)) => Err("a PVH note where none belongs".into()),
        _ => Ok(()),
    }
}

fn build_all(root: &Path, key: &str) -> Result<PathBuf, Error> {
    let done = root.join(key);
    if done.join(COMPLETE).is_file() {
        return Ok(done);
    }
    let tmp = root.join(format!(
        "tmp-{key}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let io = |what: &str, path: &Path, e: std::io::Error| {
        Error(format!("cannot {what} {}: {e}", path.display()))
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io("remove", &tmp, e))?;
    }
    for (rel, text) in SOURCES {
        let path = tmp.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
        }
        std::fs::write(&path, text).map_err(|e| io("write", &path, e))?;
    }
    for guest in Guest::ALL {
        compile(&tmp, guest)?;
    }
    let mut manifest = String::new();
    for guest in Guest::ALL {
        let _ = writeln!(manifest, "{}", guest.file_name());
    }
    let marker = tmp.join(COMPLETE);
    std::fs::write(&marker, manifest).map_err(|e| io("write", &marker, e))?;
    match std::fs::rename(&tmp, &done) {
        Ok(()) => Ok(done),
        // Another test process finished the same build first: use its result.
        Err(_) if done.join(COMPLETE).is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(done)
        }
        Err(e) => Err(io("move the built guests to", &done, e)),
    }
}

fn build_guest_dir() -> Result<PathBuf, Error> {
    let root = build_dirs()?.target.join("husk-test-guests");
    std::fs::create_dir_all(&root)
        .map_err(|e| Error(format!("cannot create {}: {e}", root.display())))?;
    build_all(&root, &cache_key()?)
}

/// The directory holding every built guest (built once per process, cached across runs).
pub fn guest_dir() -> Result<PathBuf, Error> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| build_guest_dir().map_err(|e| e.0))
        .clone()
        .map_err(Error)
}

/// The path of a built guest.
pub fn guest_path(guest: Guest) -> Result<PathBuf, Error> {
    Ok(guest_dir()?.join(guest.file_name()))
}
