//! Layer 1 (DESIGN.md): husk's virtio-mmio devices driven by the freestanding test guests
//! `virtio_blk` and `virtio_vsock` (tests/guests/) through real vCPUs, via `husk vmm`
//! with `--drive` and `--vsock`. The host side checks the backing files byte for byte
//! and plays the vsock peer over husk's Unix sockets while the guest runs. A spare drive
//! slot, filled and emptied through the VMM's drive handle while the `virtio_blk_spare`
//! guest runs, is driven by husk-vmm's example `spare_drives` (the `husk vmm` command line
//! has no way to attach a drive to a running VM).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_tests::guests::{guest_path, Guest};
use husk_tests::husk::husk_vmm;
use husk_tests::process::{console_lines, run_with_timeout, Run, DEFAULT_TIMEOUT};
use husk_tests::{build_dirs, path_str, scratch_dir};

const SECTOR: usize = 512;
/// The guest writes its pattern to this many sectors at sector 0 and at the end.
const PATTERN_SECTORS: u64 = 8;

fn guest(g: Guest) -> PathBuf {
    guest_path(g).expect("building the test guests")
}

/// Asserts the guest reported no failure and ended with `pass`.
fn assert_guest_passed(run: &Run, who: &str, pass: &str) {
    let lines = console_lines(&run.stdout);
    let failures: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("FAIL") || l.contains(": error:"))
        .collect();
    assert!(
        failures.is_empty(),
        "the {who} guest reported failures: {failures:#?}\n{}",
        run.describe()
    );
    assert_eq!(
        lines.iter().filter(|l| **l == pass).count(),
        1,
        "the {who} guest should print `{pass}`\n{}",
        run.describe()
    );
}

/// Asserts the console holds the line `line` exactly once.
fn assert_line(run: &Run, line: &str) {
    let count = console_lines(&run.stdout)
        .iter()
        .filter(|l| **l == line)
        .count();
    assert_eq!(
        count,
        1,
        "expected the console line `{line}` once\n{}",
        run.describe()
    );
}

/// The one console line starting with `prefix`.
fn line_with_prefix<'a>(run: &'a Run, prefix: &str) -> &'a str {
    let lines: Vec<&str> = console_lines(&run.stdout)
        .into_iter()
        .filter(|l| l.starts_with(prefix))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line starting with `{prefix}`\n{}",
        run.describe()
    );
    lines[0]
}

/// The value of ` key=value` in a report line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no `{key}=` in `{line}`"))
}

// ---------------------------------------------------------------------------------------
// virtio-blk

/// The guest's pattern: byte `i` of sector `s` (tests/guests/virtio_blk.c).
fn pattern(sector: u64, i: usize) -> u8 {
    let i = i as u32;
    (sector as u32)
        .wrapping_mul(151)
        .wrapping_add(i * 7)
        .wrapping_add((i >> 8) * 13)
        .wrapping_add(0x3c) as u8
}

/// A backing file's initial content: distinct from the pattern and from other files.
fn initial_content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed ^ ((i >> 12) as u8))
        .collect()
}

struct Drive {
    path: PathBuf,
    initial: Vec<u8>,
}

fn make_drive(dir: &Path, name: &str, len: usize, seed: u8) -> Drive {
    let path = dir.join(name);
    let initial = initial_content(len, seed);
    std::fs::write(&path, &initial).expect("writing a backing file");
    Drive { path, initial }
}

/// Checks a read-write drive after the guest ran: the pattern in the first and the last
/// 8 sectors of its capacity (file size / 512), every other byte unchanged, including a
/// tail that is not a whole sector.
fn check_rw_file(drive: &Drive, run: &Run) {
    let now = std::fs::read(&drive.path).expect("reading a backing file");
    assert_eq!(
        now.len(),
        drive.initial.len(),
        "the size of {} changed\n{}",
        drive.path.display(),
        run.describe()
    );
    let capacity = (drive.initial.len() / SECTOR) as u64;
    let written = |sector: u64| sector < PATTERN_SECTORS || sector >= capacity - PATTERN_SECTORS;
    for (offset, (&got, &before)) in now.iter().zip(&drive.initial).enumerate() {
        let sector = (offset / SECTOR) as u64;
        let expected = if sector < capacity && written(sector) {
            pattern(sector, offset % SECTOR)
        } else {
            before
        };
        assert_eq!(
            got,
            expected,
            "{}: byte {offset} (sector {sector}, capacity {capacity}) is {got:#04x}, \
             expected {expected:#04x} ({})\n{}",
            drive.path.display(),
            if written(sector) && sector < capacity {
                "the guest's pattern"
            } else {
                "unchanged"
            },
            run.describe()
        );
    }
}

fn check_unchanged(drive: &Drive, run: &Run) {
    let now = std::fs::read(&drive.path).expect("reading a backing file");
    assert!(
        now == drive.initial,
        "the read-only drive {} changed ({} bytes, {} before; first difference at {:?})\n{}",
        drive.path.display(),
        now.len(),
        drive.initial.len(),
        now.iter().zip(&drive.initial).position(|(a, b)| a != b),
        run.describe()
    );
}

/// The guest's `virtio-blk: drive <i> at ...` line, checked for the capacity, the
/// read-only flag (from the VIRTIO_BLK_F_RO feature) and the serial.
fn check_drive_line(run: &Run, index: usize, capacity: u64, ro: bool, serial: Option<&str>) {
    let line = line_with_prefix(run, &format!("virtio-blk: drive {index} at "));
    assert_eq!(
        field(line, "capacity"),
        capacity.to_string(),
        "capacity = file size / 512: {line}\n{}",
        run.describe()
    );
    assert_eq!(
        field(line, "ro"),
        if ro { "feature" } else { "no" },
        "a read-only drive offers VIRTIO_BLK_F_RO, a read-write one does not: {line}\n{}",
        run.describe()
    );
    if let Some(serial) = serial {
        assert_eq!(
            field(line, "serial"),
            serial,
            "GET_ID should return the drive's id: {line}\n{}",
            run.describe()
        );
    }
}

fn check_rw_lines(run: &Run, index: usize, capacity: u64) {
    assert_line(
        run,
        &format!(
            "virtio-blk: drive {index} write+flush+read ok: sectors 0..8 and {}..{capacity}",
            capacity - PATTERN_SECTORS
        ),
    );
    check_common_lines(run, index);
}

fn check_common_lines(run: &Run, index: usize) {
    assert_line(
        run,
        &format!("virtio-blk: drive {index} read past the end: status 1 (IOERR)"),
    );
    assert_line(
        run,
        &format!("virtio-blk: drive {index} unknown request type: status 2 (UNSUPP)"),
    );
}

/// A read-write drive with an id and a tail that is not a whole sector, and a read-only
/// drive: the guest writes, flushes and reads back the pattern on the first; its write
/// to the second fails with IOERR and the file stays as it was.
#[test]
fn blk_pattern_flush_readback_and_read_only_drive() {
    let dir = scratch_dir("virtio-blk").expect("scratch dir");
    // 512 whole sectors and 300 bytes the guest cannot see.
    let rw = make_drive(&dir, "rw.img", 512 * SECTOR + 300, 0x00);
    let ro = make_drive(&dir, "ro.img", 128 * SECTOR, 0x5a);
    let kernel = guest(Guest::VirtioBlk);
    let run = husk_vmm([
        "--kernel",
        path_str(&kernel),
        "--cmdline",
        "test.blk_drives=2",
        "--drive",
        &format!("path={},id=husk-serial-01", path_str(&rw.path)),
        "--drive",
        &format!("path={},ro=on", path_str(&ro.path)),
    ])
    .expect("running husk vmm");
    run.assert_clean_exit();
    assert_guest_passed(&run, "virtio-blk", "virtio-blk: PASS drives=2");

    check_drive_line(&run, 0, 512, false, Some("husk-serial-01"));
    check_rw_lines(&run, 0, 512);
    check_rw_file(&rw, &run);

    check_drive_line(&run, 1, 128, true, None);
    assert_line(
        &run,
        "virtio-blk: drive 1 read-only write rejected: status 1 (IOERR)",
    );
    assert_line(&run, "virtio-blk: drive 1 read-only data unchanged");
    check_common_lines(&run, 1);
    check_unchanged(&ro, &run);
}

/// Several drives, each found at its own window in `--drive` order, with the longest
/// serial GET_ID can return (20 bytes, no NUL) and none at all.
#[test]
fn blk_several_drives_in_order_with_serials() {
    let dir = scratch_dir("virtio-blk-several").expect("scratch dir");
    let sizes = [64usize, 96, 40];
    let serials = [Some("0123456789abcdefghij"), None, Some("d")];
    let drives: Vec<Drive> = sizes
        .iter()
        .enumerate()
        .map(|(i, sectors)| {
            make_drive(
                &dir,
                &format!("d{i}.img"),
                sectors * SECTOR,
                0x11 * (i as u8 + 1),
            )
        })
        .collect();
    let kernel = guest(Guest::VirtioBlk);
    let mut args = vec![
        "--kernel".to_string(),
        path_str(&kernel).to_string(),
        "--cmdline".to_string(),
        "test.blk_drives=3".to_string(),
    ];
    for (drive, serial) in drives.iter().zip(serials) {
        args.push("--drive".to_string());
        args.push(match serial {
            Some(id) => format!("path={},id={id}", path_str(&drive.path)),
            None => format!("path={}", path_str(&drive.path)),
        });
    }
    let run = husk_vmm(&args).expect("running husk vmm");
    run.assert_clean_exit();
    assert_guest_passed(&run, "virtio-blk", "virtio-blk: PASS drives=3");
    let mut bases = Vec::new();
    for (i, (drive, serial)) in drives.iter().zip(serials).enumerate() {
        let capacity = sizes[i] as u64;
        check_drive_line(&run, i, capacity, false, serial);
        check_rw_lines(&run, i, capacity);
        check_rw_file(drive, &run);
        let line = line_with_prefix(&run, &format!("virtio-blk: drive {i} at "));
        bases.push(line.split(' ').nth(4).unwrap_or_default().to_string());
    }
    // Each drive has its own MMIO window, in --drive order.
    let mut sorted = bases.clone();
    sorted.sort_by_key(|b| u64::from_str_radix(b.trim_start_matches("0x"), 16).unwrap_or(0));
    sorted.dedup();
    assert_eq!(
        sorted,
        bases,
        "drives should sit at distinct, increasing addresses\n{}",
        run.describe()
    );
}

/// husk-vmm's example `spare_drives`, of the same profile as this test.
fn spare_drives_binary() -> PathBuf {
    let bin = build_dirs()
        .expect("finding the target directory")
        .profile
        .join("examples")
        .join("spare_drives");
    assert!(
        bin.is_file(),
        "{} does not exist: run the tests with `cargo test --workspace` (which builds the \
         examples) or build it with `cargo build -p husk-vmm --example spare_drives`",
        bin.display()
    );
    bin
}

/// A spare slot (no media at boot) takes a read-only drive while the guest runs and gives
/// it back: the guest sees capacity 0 and I/O errors, then, after the host attached the
/// drive through the VMM's drive handle, the configuration-change interrupt, a new
/// ConfigGeneration, the drive's capacity, serial and data, and a refused write; after
/// the detach, an empty slot again.
#[test]
fn blk_spare_slot_takes_a_drive_while_the_guest_runs() {
    let dir = scratch_dir("virtio-blk-spare").expect("scratch dir");
    let drive = make_drive(&dir, "spare.img", 96 * SECTOR, 0x33);
    let console = dir.join("console.log");
    let kernel = guest(Guest::VirtioBlkSpare);
    let mut cmd = Command::new(spare_drives_binary());
    cmd.args(["--kernel", path_str(&kernel)])
        .args(["--cmdline", "test.spare_sectors=96"])
        .args(["--mem-mib", "64", "--spares", "1"])
        .args(["--console", path_str(&console)])
        .arg("--drive")
        .arg(format!("l1-spare={},ro", path_str(&drive.path)));
    let mut run = run_with_timeout(&mut cmd, DEFAULT_TIMEOUT).expect("running spare_drives");
    // The guest's console is in its file; the checks below read it as a run's stdout.
    run.stdout = std::fs::read_to_string(&console).unwrap_or_default();
    assert_eq!(
        run.code(),
        Some(0),
        "spare_drives failed\n{}",
        run.describe()
    );
    assert_guest_passed(&run, "virtio-blk-spare", "virtio-blk-spare: PASS");
    for action in ["attached", "detached"] {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.starts_with(&format!("spare_drives: {action} l1-spare "))),
            "the host never {action} the drive\n{}",
            run.describe()
        );
    }
    assert_line(&run, "virtio-blk-spare: empty: capacity=0 generation=0");
    let sum = drive.initial[..SECTOR].iter().fold(0u64, |sum, &b| {
        sum.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    assert_line(
        &run,
        &format!(
            "virtio-blk-spare: attached: capacity=96 serial=l1-spare generation_changed=yes \
             sector0_sum={sum:#x}"
        ),
    );
    let detached = line_with_prefix(&run, "virtio-blk-spare: detached: ");
    assert!(detached.starts_with("virtio-blk-spare: detached: capacity=0 "));
    check_unchanged(&drive, &run);
}

// ---------------------------------------------------------------------------------------
// virtio-vsock

const GUEST_CID: u64 = 42;
/// The guest listens here (the host connects with `CONNECT <port>`).
const LISTEN_PORT: u32 = 1234;
/// The guest connects to the host here (`<uds>_5000`).
const CONNECT_PORT: u32 = 5000;
/// Nothing listens here on the host: the guest's connection gets RST.
const REFUSED_PORT: u32 = 5001;
/// Nothing listens here in the guest: the host's CONNECT is refused.
const GUEST_CLOSED_PORT: u32 = 4444;
/// How long the host side waits for one step of the guest (boot included).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

const GUEST_PING: &str = "guest-to-host ping\n";
const HOST_PONG: &str = "host-to-guest pong\n";

/// A line of `n` lower-case letters ending in '\n', longer than the guest's receive
/// buffer (2 KiB), so the device must wait for the guest's CREDIT_UPDATE.
fn long_message(n: usize) -> Vec<u8> {
    let mut msg = b"hello, guest: ".to_vec();
    msg.extend((0..n).map(|i| b'a' + (i % 26) as u8));
    msg.push(b'\n');
    msg
}

/// Reads up to and including the first '\n'; None on EOF before it.
fn read_line(stream: &mut UnixStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) => {
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    return Ok(Some(line));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Set once `husk vmm` has exited: the host side stops waiting for it.
type Done = Arc<AtomicBool>;

/// Connects to husk's vsock socket once it exists and sends `CONNECT <port>`; returns the
/// stream and the answer line (None: closed without an answer).
fn host_connect(
    uds: &Path,
    port: u32,
    done: &Done,
) -> Result<(UnixStream, Option<String>), String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut stream = loop {
        match UnixStream::connect(uds) {
            Ok(s) => break s,
            Err(e)
                if Instant::now() < deadline
                    && !done.load(Ordering::SeqCst)
                    && matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("connecting to {}: {e}", uds.display())),
        }
    };
    stream
        .set_read_timeout(Some(STEP_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(STEP_TIMEOUT)))
        .map_err(|e| format!("setting socket timeouts: {e}"))?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("sending CONNECT {port}: {e}"))?;
    let answer = match read_line(&mut stream) {
        Ok(line) => line.map(|l| String::from_utf8_lossy(&l).into_owned()),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
        Err(e) => return Err(format!("reading the answer to CONNECT {port}: {e}")),
    };
    Ok((stream, answer))
}

/// What the host side of the guest-initiated connection saw.
#[derive(Debug)]
struct GuestToHost {
    received: String,
    eof_after_reply: bool,
}

/// Accepts the guest's connection on `<uds>_<port>`, expects GUEST_PING, replies
/// HOST_PONG, then waits for the guest's shutdown (EOF).
fn serve_guest_connection(listener: UnixListener, done: Done) -> Result<GuestToHost, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock && done.load(Ordering::SeqCst) => {
                return Err(format!("husk exited before the guest connected ({e})"));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("no connection from the guest: {e}")),
        }
    };
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(STEP_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(STEP_TIMEOUT)))
        .map_err(|e| format!("socket setup: {e}"))?;
    let line = read_line(&mut stream)
        .map_err(|e| format!("reading the guest's line: {e}"))?
        .ok_or("the guest closed before sending a line")?;
    stream
        .write_all(HOST_PONG.as_bytes())
        .map_err(|e| format!("replying to the guest: {e}"))?;
    let mut rest = Vec::new();
    let eof_after_reply = match stream.read_to_end(&mut rest) {
        Ok(_) => rest.is_empty(),
        Err(e) => return Err(format!("waiting for the guest's shutdown: {e}")),
    };
    Ok(GuestToHost {
        received: String::from_utf8_lossy(&line).into_owned(),
        eof_after_reply,
    })
}

/// What the host side of the host-initiated connections saw.
#[derive(Debug)]
struct HostToGuest {
    ok_port: u32,
    echo: Vec<u8>,
    refused_answer: Option<String>,
}

/// CONNECT to the guest's listening port (retrying while the guest is not up yet), send
/// the long line, read the upper-cased echo; then CONNECT to a port nobody listens on,
/// which must be closed without OK; then close the first connection.
fn talk_to_guest(uds: &Path, message: &[u8], done: &Done) -> Result<HostToGuest, String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let (mut stream, ok_port) = loop {
        let (stream, answer) = host_connect(uds, LISTEN_PORT, done)?;
        match answer {
            Some(line) => {
                let port = line
                    .strip_prefix("OK ")
                    .and_then(|p| p.strip_suffix('\n'))
                    .and_then(|p| p.parse::<u32>().ok())
                    .ok_or_else(|| format!("bad answer to CONNECT: {line:?}"))?;
                break (stream, port);
            }
            None if Instant::now() < deadline && !done.load(Ordering::SeqCst) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            None => {
                return Err(format!(
                    "CONNECT {LISTEN_PORT} was refused until the deadline"
                ))
            }
        }
    };
    stream
        .write_all(message)
        .map_err(|e| format!("sending the message to the guest: {e}"))?;
    let echo = read_line(&mut stream)
        .map_err(|e| format!("reading the guest's echo: {e}"))?
        .ok_or("the guest closed before echoing a line")?;
    let (_refused, refused_answer) = host_connect(uds, GUEST_CLOSED_PORT, done)?;
    drop(stream);
    Ok(HostToGuest {
        ok_port,
        echo,
        refused_answer,
    })
}

fn join<T>(handle: JoinHandle<T>, what: &str) -> T {
    handle
        .join()
        .unwrap_or_else(|_| panic!("the {what} thread panicked"))
}

/// Both directions over the hybrid vsock at once: the guest connects to a host port
/// with nothing behind it (RST), to `<uds>_5000` (ping, pong, shutdown), and accepts the
/// host's `CONNECT 1234` (a 6 KiB line echoed upper-cased, through a 2 KiB credit
/// window); the host's CONNECT to a port the guest does not listen on is refused.
#[test]
fn vsock_both_directions_and_refused_connections() {
    let dir = scratch_dir("virtio-vsock").expect("scratch dir");
    let uds = dir.join("v.sock");
    let guest_listener = UnixListener::bind(format!("{}_{CONNECT_PORT}", uds.display()))
        .expect("binding the host port the guest connects to");
    let kernel = guest(Guest::VirtioVsock);
    let args = vec![
        "--kernel".to_string(),
        path_str(&kernel).to_string(),
        "--cmdline".to_string(),
        format!(
            "test.cid={GUEST_CID} test.listen_port={LISTEN_PORT} \
             test.connect_port={CONNECT_PORT} test.refused_port={REFUSED_PORT}"
        ),
        "--vsock".to_string(),
        format!("cid={GUEST_CID},uds={}", path_str(&uds)),
    ];
    let done = Done::default();
    let (done_tx, done_rx) = mpsc::channel();
    let husk = {
        let done = done.clone();
        std::thread::spawn(move || {
            let run = husk_vmm(&args);
            done.store(true, Ordering::SeqCst);
            let _ = done_tx.send(());
            run
        })
    };
    let server = {
        let done = done.clone();
        std::thread::spawn(move || serve_guest_connection(guest_listener, done))
    };
    let message = long_message(6000);
    let host = talk_to_guest(&uds, &message, &done);

    // husk's own timeout bounds this wait.
    let _ = done_rx.recv_timeout(DEFAULT_TIMEOUT + Duration::from_secs(10));
    let run = join(husk, "husk").expect("running husk vmm");
    let server = join(server, "host listener");
    let host = host.unwrap_or_else(|e| panic!("host -> guest: {e}\n{}", run.describe()));
    let server = server.unwrap_or_else(|e| panic!("guest -> host: {e}\n{}", run.describe()));

    run.assert_clean_exit();
    assert_guest_passed(&run, "virtio-vsock", "virtio-vsock: PASS");
    let device = line_with_prefix(&run, "virtio-vsock: device at ");
    assert_eq!(
        field(device, "guest_cid"),
        GUEST_CID.to_string(),
        "{device}"
    );

    // (c) guest -> host port with no listener: RST.
    assert_line(
        &run,
        &format!("virtio-vsock: connect to host port {REFUSED_PORT}: refused (RST) ok"),
    );
    // (b) guest -> host: ping, pong, then the guest's SHUTDOWN answered with RST and seen
    // by the host as EOF.
    assert_eq!(server.received, GUEST_PING, "{}", run.describe());
    assert!(
        server.eof_after_reply,
        "the host should see EOF after the guest's shutdown\n{}",
        run.describe()
    );
    line_with_prefix(
        &run,
        &format!("virtio-vsock: connected to host port {CONNECT_PORT} from guest port "),
    );
    assert_line(
        &run,
        &format!(
            "virtio-vsock: host replied \"{}\"",
            HOST_PONG.trim_end_matches('\n')
        ),
    );
    assert_line(&run, "virtio-vsock: connect: shutdown answered with RST ok");
    // (a) host -> guest: OK <host port>, the echo, the close.
    assert_line(
        &run,
        &format!(
            "virtio-vsock: accepted a connection on port {LISTEN_PORT} from host port {}",
            host.ok_port
        ),
    );
    assert_eq!(
        host.echo,
        message.to_ascii_uppercase(),
        "the guest should echo the line upper-cased\n{}",
        run.describe()
    );
    let echoed = line_with_prefix(&run, "virtio-vsock: listen: echoed ");
    assert!(
        echoed.starts_with(&format!(
            "virtio-vsock: listen: echoed {} bytes upper-cased on port {LISTEN_PORT}",
            message.len()
        )),
        "{echoed}\n{}",
        run.describe()
    );
    line_with_prefix(&run, "virtio-vsock: listen: host closed");
    // Host -> guest port without a listener: closed without OK.
    assert_eq!(
        host.refused_answer,
        None,
        "CONNECT {GUEST_CLOSED_PORT} should be closed without an answer\n{}",
        run.describe()
    );
}
