//! Each filter against a system call it must not allow, in a child process (a violation
//! ends the process): this test binary runs itself again with `HUSK_SECCOMP_CHILD` set,
//! and the child installs a filter on a thread and then tries the call.

use std::process::Command;

use husk_seccomp::{install, ThreadKind};

const CHILD: &str = "HUSK_SECCOMP_CHILD";

/// In the child: a thread of `kind` that writes (allowed), opens a file (fails), makes
/// glibc shrink its heap (allowed), then `execve`s /bin/true. Were that call allowed, the
/// process would become `true` and exit 0.
fn child(kind: ThreadKind) {
    let worker = std::thread::spawn(move || {
        install(kind).expect("installing the filter");
        eprintln!("filter installed");
        match std::fs::File::open("/etc/hostname") {
            Ok(_) => eprintln!("open succeeded"),
            Err(e) => eprintln!("open failed: {e}"),
        }
        churn_the_heap();
        eprintln!("heap churned");
        let program = c"/bin/true";
        let argv = [program.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        // SAFETY: a valid NUL-terminated path and NULL-terminated argument and
        // environment arrays; if the call were allowed it would replace the process.
        unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        eprintln!("execve returned");
    });
    let _ = worker.join();
}

/// Grows this thread's malloc arena well past the trim threshold and frees it all: glibc
/// then shrinks the thread's heap, and the first time it does so it opens
/// `/proc/sys/vm/overcommit_memory`, which the filters must let fail, not trap.
fn churn_the_heap() {
    // 64 KiB stays below malloc's mmap threshold, so the blocks come from the arena.
    let blocks: Vec<Vec<u8>> = (0..512).map(|i| vec![i as u8; 64 << 10]).collect();
    let sum: u64 = blocks.iter().map(|b| u64::from(b[0])).sum();
    drop(blocks);
    eprintln!("churned {sum}");
}

fn run_child(test: &str, kind: &str) -> std::process::Output {
    Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, kind)
        .output()
        .expect("running the child")
}

fn check(test: &str, kind: ThreadKind, name: &str) {
    match std::env::var(CHILD).as_deref() {
        Ok(k) if k == name => return child(kind),
        Ok(_) => return,
        Err(_) => {}
    }
    let out = run_child(test, name);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("filter installed"), "{stderr}");
    assert_eq!(out.status.code(), Some(159), "{stderr}");
    let line = format!(
        "husk: seccomp: the {name} thread made a system call its filter forbids: execve (59)"
    );
    assert!(stderr.contains(&line), "{stderr}");
    assert!(!stderr.contains("execve returned"), "{stderr}");
    assert!(
        stderr.contains("open failed: Permission denied"),
        "opening a file must fail, not trap: {stderr}"
    );
    assert!(stderr.contains("heap churned"), "{stderr}");
}

#[test]
fn the_vcpu_filter_stops_execve() {
    check("the_vcpu_filter_stops_execve", ThreadKind::Vcpu, "vcpu");
}

#[test]
fn the_event_loop_filter_stops_execve() {
    check(
        "the_event_loop_filter_stops_execve",
        ThreadKind::EventLoop,
        "event-loop",
    );
}

/// In the child: a thread started before the process filter, then the filter (every
/// thread, TSYNC), a file opened (allowed for the runtime), then that earlier thread
/// asks to be traced, which the filter traps.
fn process_child() {
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let early = std::thread::spawn(move || {
        let _ = go_rx.recv();
        // SAFETY: PTRACE_TRACEME takes no pointers; were it allowed, the parent would
        // merely become this process's tracer.
        let rc = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
        eprintln!("ptrace returned {rc}");
    });
    husk_seccomp::confine_process().expect("installing the process filter");
    eprintln!("process filter installed");
    match std::fs::File::open("/etc/hostname") {
        Ok(_) => eprintln!("open succeeded"),
        Err(e) => eprintln!("open failed: {e}"),
    }
    let _ = go_tx.send(());
    let _ = early.join();
}

#[test]
fn the_process_filter_stops_ptrace_on_every_thread() {
    const TEST: &str = "the_process_filter_stops_ptrace_on_every_thread";
    match std::env::var(CHILD).as_deref() {
        Ok("process") => return process_child(),
        Ok(_) => return,
        Err(_) => {}
    }
    let out = run_child(TEST, "process");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("process filter installed"), "{stderr}");
    assert!(stderr.contains("open succeeded"), "{stderr}");
    assert_eq!(out.status.code(), Some(159), "{stderr}");
    assert!(
        stderr.contains(
            "husk: seccomp: the runtime thread made a system call its filter forbids: ptrace (101)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("ptrace returned"), "{stderr}");
}
