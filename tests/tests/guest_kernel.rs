//! The built guest (`resources/build-guest.sh`, published under
//! `$HUSK_CACHE_DIR/guest`, default `/var/cache/husk/guest`) is what husk needs:
//! - `vmlinux` is an x86_64 ELF64 with the PVH entry note (name "Xen", type 18,
//!   XEN_ELFNOTE_PHYS32_ENTRY) pointing into one of its loaded segments;
//! - its saved `.config` (`kernel.config`) has every option of
//!   `resources/kernel/husk-guest.config` as asked, and none of the `=n` ones set;
//! - `initramfs.cpio` is an uncompressed newc archive whose `/init` is the static
//!   `husk-agent` (an x86_64 ELF without PT_INTERP), with the mount points it uses.
//!
//! When the guest has not been built, each test fails saying to run
//! `resources/build-guest.sh`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use husk_tests::elf::{
    notes, program_headers, Bytes, PT_INTERP, PT_LOAD, XEN_ELFNOTE_PHYS32_ENTRY,
};

fn guest_dir() -> PathBuf {
    let cache = std::env::var_os("HUSK_CACHE_DIR").unwrap_or_else(|| "/var/cache/husk".into());
    PathBuf::from(cache).join("guest")
}

/// Reads a published guest file, failing the test with the way to build it.
fn read_guest_file(name: &str) -> Vec<u8> {
    let path = guest_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "the guest is not built: cannot read {}: {e}; run resources/build-guest.sh \
             (as root; it builds into $HUSK_CACHE_DIR/guest, default /var/cache/husk/guest)",
            path.display()
        )
    })
}

fn fragment_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/kernel/husk-guest.config")
}

#[test]
fn kernel_has_pvh_entry_note() {
    let kernel = read_guest_file("vmlinux");
    let headers = program_headers(&kernel).unwrap_or_else(|e| panic!("guest vmlinux: {e}"));
    let notes = notes(&kernel, &headers).unwrap_or_else(|e| panic!("guest vmlinux notes: {e}"));
    let pvh = notes
        .iter()
        .find(|n| n.name == b"Xen" && n.n_type == XEN_ELFNOTE_PHYS32_ENTRY)
        .unwrap_or_else(|| {
            let seen: Vec<String> = notes
                .iter()
                .map(|n| format!("{}/{}", String::from_utf8_lossy(&n.name), n.n_type))
                .collect();
            panic!(
                "guest vmlinux has no PVH note (name \"Xen\", type 18) in its PT_NOTE \
                 segments; notes seen: {seen:?} (is CONFIG_PVH=y in the fragment?)"
            )
        });
    let entry = match pvh.desc.len() {
        4 => u64::from(u32::from_le_bytes([
            pvh.desc[0],
            pvh.desc[1],
            pvh.desc[2],
            pvh.desc[3],
        ])),
        8 => u64::from_le_bytes(std::array::from_fn(|i| pvh.desc[i])),
        n => panic!("the PVH note's descriptor is {n} bytes, expected 4 or 8"),
    };
    assert!(
        entry != 0 && entry < 1 << 32,
        "the PVH entry {entry:#x} is not a 32-bit physical address"
    );
    let loaded = headers
        .iter()
        .filter(|ph| ph.p_type == PT_LOAD)
        .any(|ph| entry >= ph.paddr && entry < ph.paddr.saturating_add(ph.memsz));
    assert!(
        loaded,
        "the PVH entry {entry:#x} is outside every PT_LOAD segment's physical range"
    );
}

/// The `CONFIG_X=value` lines of a kernel config or fragment (comments dropped; a
/// `# CONFIG_X is not set` is not an entry).
fn config_entries(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CONFIG_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn kernel_config_has_every_fragment_option() {
    let fragment_path = fragment_path();
    let fragment = std::fs::read_to_string(&fragment_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", fragment_path.display()));
    let config = String::from_utf8(read_guest_file("kernel.config"))
        .unwrap_or_else(|e| panic!("guest kernel.config is not UTF-8: {e}"));
    let wanted = config_entries(&fragment);
    let have = config_entries(&config);
    assert!(
        wanted.len() > 20,
        "{} has only {} options; is it the husk fragment?",
        fragment_path.display(),
        wanted.len()
    );
    let mut wrong = Vec::new();
    for (option, value) in &wanted {
        let got = have.get(option);
        let ok = if value == "n" {
            got.is_none()
        } else {
            got == Some(value)
        };
        if !ok {
            wrong.push(format!(
                "{option}={value} (the config has {})",
                got.map_or_else(|| "it unset".to_owned(), |g| format!("{option}={g}"))
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "the guest kernel config ({}) does not match the fragment: {}; \
         rebuild with resources/build-guest.sh",
        guest_dir().join("kernel.config").display(),
        wrong.join(", ")
    );
}

// --- newc cpio ------------------------------------------------------------------------------

struct CpioEntry {
    name: String,
    mode: u32,
    data: Vec<u8>,
}

/// The entries of an uncompressed newc ("070701") cpio archive, up to its trailer.
fn cpio_entries(archive: &[u8]) -> Result<Vec<CpioEntry>, String> {
    let b = Bytes(archive);
    let hex = |at: u64| -> Result<u64, String> {
        let field = b.slice(at, 8)?;
        let text = std::str::from_utf8(field).map_err(|_| format!("bad header at {at:#x}"))?;
        u64::from_str_radix(text, 16).map_err(|_| format!("bad hex field {text:?} at {at:#x}"))
    };
    let pad4 = |n: u64| n.div_ceil(4) * 4;
    let mut entries = Vec::new();
    let mut at = 0u64;
    loop {
        let magic = b.slice(at, 6)?;
        if magic != b"070701" {
            return Err(format!(
                "no newc header (070701) at {at:#x} (found {:?}); compressed or not newc?",
                String::from_utf8_lossy(magic)
            ));
        }
        let field = |i: u64| hex(at + 6 + 8 * i);
        let mode = u32::try_from(field(1)?).map_err(|_| "mode out of range")?;
        let filesize = field(6)?;
        let namesize = field(11)?;
        let name_at = at + 110;
        let name = b.slice(name_at, namesize)?;
        let name = String::from_utf8_lossy(name.strip_suffix(b"\0").unwrap_or(name)).into_owned();
        let data_at = pad4(name_at + namesize);
        if name == "TRAILER!!!" {
            return Ok(entries);
        }
        let data = b.slice(data_at, filesize)?.to_vec();
        entries.push(CpioEntry {
            name: name.trim_start_matches("./").to_owned(),
            mode,
            data,
        });
        at = pad4(data_at + filesize);
    }
}

#[test]
fn initramfs_init_is_the_static_agent() {
    let archive = read_guest_file("initramfs.cpio");
    let entries = cpio_entries(&archive).unwrap_or_else(|e| panic!("guest initramfs.cpio: {e}"));
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    const S_IFMT: u32 = 0o170000;
    const S_IFREG: u32 = 0o100000;
    const S_IFDIR: u32 = 0o040000;

    for dir in ["dev", "proc", "sys"] {
        assert!(
            entries
                .iter()
                .any(|e| e.name == dir && e.mode & S_IFMT == S_IFDIR),
            "the initramfs lacks the directory /{dir} (entries: {names:?})"
        );
    }
    let init = entries
        .iter()
        .find(|e| e.name == "init")
        .unwrap_or_else(|| panic!("the initramfs has no /init (entries: {names:?})"));
    assert_eq!(
        init.mode & S_IFMT,
        S_IFREG,
        "/init is not a regular file (mode {:o})",
        init.mode
    );
    assert!(
        init.mode & 0o111 != 0,
        "/init is not executable (mode {:o})",
        init.mode
    );
    let headers = program_headers(&init.data).unwrap_or_else(|e| panic!("/init: {e}"));
    assert!(
        headers.iter().any(|ph| ph.p_type == PT_LOAD),
        "/init has no PT_LOAD segment"
    );
    assert!(
        !headers.iter().any(|ph| ph.p_type == PT_INTERP),
        "/init has a PT_INTERP: it is dynamically linked and cannot run as the guest's PID 1"
    );
    let agent = read_guest_file("husk-agent");
    assert!(
        init.data == agent,
        "/init ({} bytes) differs from the published husk-agent ({} bytes)",
        init.data.len(),
        agent.len()
    );
}
