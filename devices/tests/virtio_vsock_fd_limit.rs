//! The vsock device when accept() fails for want of file descriptors: it must neither
//! spin on the still-readable listener nor forget the waiting client. Its own test
//! binary, because it lowers the process's fd limit.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use husk_devices::virtio::testing::{guest_memory, TestDriver};
use husk_devices::virtio::vsock::Vsock;

fn nofile() -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into `limit`.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    limit
}

fn set_nofile(limit: &libc::rlimit) {
    // SAFETY: setrlimit reads only `limit`.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) }, 0);
}

#[test]
fn accept_out_of_fds_pauses_the_listener_and_recovers() {
    let dir = std::env::temp_dir().join(format!("husk-vsock-fdlimit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let uds = dir.join("v.sock");
    let device = Arc::new(Mutex::new(
        Vsock::new(3, uds.clone()).expect("creating the vsock device"),
    ));
    let mut drv = TestDriver::new(device, guest_memory(1 << 20));

    // The client waits in the listener's backlog while the device cannot accept it.
    let mut client = UnixStream::connect(&uds).expect("connecting to the device");
    client
        .write_all(b"CONNECT 5000\n")
        .expect("sending CONNECT");
    let saved = nofile();
    // No new fd fits under 3 (stdio holds 0-2).
    set_nofile(&libc::rlimit {
        rlim_cur: 3,
        rlim_max: saved.rlim_max,
    });
    let first = drv.run_events_for(100);
    // Without the pause every call would see the listener readable again at once.
    let start = Instant::now();
    let mut wakeups = 0;
    while start.elapsed() < Duration::from_millis(60) {
        wakeups += drv.run_events_for(10);
    }
    set_nofile(&saved);
    assert!(first >= 1, "the device never saw the client");
    assert!(
        wakeups <= 2,
        "the event loop woke {wakeups} times in 60 ms while accept() kept failing: it spins"
    );

    // Once fds are back, the client is accepted; the guest has not started the device,
    // so the connection is refused and closed.
    client
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("a read timeout");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 64];
    loop {
        drv.run_events_for(50);
        match client.read(&mut buf) {
            Ok(_) => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        assert!(
            Instant::now() < deadline,
            "the waiting client was never accepted after the fd limit was restored"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
