//! Per-thread seccomp filters for the husk process.
//!
//! A thread that handles guest-driven work installs the filter of its kind before it
//! handles any: a vCPU thread before its first `KVM_RUN`, the VMM's event loop before its
//! first wait. Each filter allows only the system calls that kind of thread makes (found
//! with strace over the test guests and the nested lab's Linux guests, and kept short),
//! and for `ioctl` only the requests it makes. Anything else traps: a SIGSYS handler
//! writes one line naming the thread and the system call on stderr and ends the process
//! with status 159 (128 + SIGSYS). A guest that takes over a VMM thread therefore cannot
//! open files, start programs or make sockets through it.
//!
//! Opening files is the one exception to trapping: `openat` (and `open`) fail with
//! `EACCES` instead, through a second filter stacked on the first. glibc opens files by
//! itself where the program never asked: malloc reads `/proc/sys/vm/overcommit_memory`
//! the first time it shrinks a thread's heap (found by the nested lab, when the event
//! loop freed the buffers of a 10 MiB stdin transfer), and it takes a failure as an
//! answer. A trap there would end a healthy VMM; a failure keeps every file closed to a
//! thread the guest took over just the same.
//!
//! Filters are per thread (no TSYNC): the runtime's own threads, which start processes
//! and mount file systems, are not restricted by these.

pub mod jail;
mod syscall_names;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Once;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;

/// The kinds of thread that get a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread: runs the guest and handles its port and MMIO exits.
    Vcpu,
    /// The VMM's event loop: virtio queues, the disk files and the vsock host sockets.
    EventLoop,
}

impl ThreadKind {
    fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::EventLoop => "event-loop",
        }
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum SeccompError {
    /// building the {0} thread's seccomp filter: {1}
    Build(ThreadKind, seccompiler::BackendError),
    /// installing the {0} thread's seccomp filter: {1}
    Install(ThreadKind, seccompiler::Error),
    /// confining the {0} thread: {1}
    Jail(ThreadKind, jail::JailError),
    /// building the process's seccomp filter: {0}
    BuildProcess(seccompiler::BackendError),
    /// installing the process's seccomp filter on every thread: {0}
    InstallProcess(String),
    /// installing the handler of seccomp violations: {0}
    Handler(std::io::Error),
}

/// What every thread needs: memory, locks, signals, its own end, and the handler's
/// message.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// A vCPU thread: `KVM_RUN`, and what its exits do (console output, eventfd writes for
/// interrupts and stops).
const VCPU: &[i64] = &[libc::SYS_writev, libc::SYS_read];

/// The event loop: epoll, eventfds and timerfds, the drives' files, the vsock device's
/// Unix sockets on the host.
const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_timerfd_settime,
    libc::SYS_eventfd2,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_getsockopt,
    libc::SYS_fcntl,
    libc::SYS_unlink,
];

/// The filters of a kind of thread, in the order they are installed: [`no_files`], then
/// the kind's own, which traps on everything it does not allow (installing a filter is
/// one of those, so it must come last; the order does not change what they answer).
pub fn filters(kind: ThreadKind) -> Result<[BpfProgram; 2], SeccompError> {
    Ok([no_files(kind)?, filter(kind)?])
}

/// Fails `openat` and `open` with `EACCES`, allowing everything else: the kernel applies
/// the most restrictive answer of all a thread's filters, and [`filter`] allows these
/// two, so they fail rather than trap.
fn no_files(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build = |e| SeccompError::Build(kind, e);
    let rules = [libc::SYS_openat, libc::SYS_open]
        .into_iter()
        .map(|syscall| (syscall, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )
    .map_err(build)?;
    filter.try_into().map_err(build)
}

/// The filter of a kind of thread.
fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build = |e| SeccompError::Build(kind, e);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // Debug builds of std check that an fd is open before closing it (F_GETFD).
    let fd_check = SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::F_GETFD as u64,
    )
    .and_then(|condition| SeccompRule::new(vec![condition]))
    .map_err(build)?;
    rules.insert(libc::SYS_fcntl, vec![fd_check]);
    let own = match kind {
        ThreadKind::Vcpu => VCPU,
        ThreadKind::EventLoop => EVENT_LOOP,
    };
    // Allowed here only so that `no_files` decides: they fail with EACCES.
    let opens = [libc::SYS_openat, libc::SYS_open];
    for syscall in COMMON.iter().chain(own).chain(&opens) {
        // An empty rule list allows the call whatever its arguments (the event loop's
        // `fcntl` included).
        rules.insert(*syscall, Vec::new());
    }
    let ioctls: &[u64] = match kind {
        // TUNSETOFFLOAD: virtio-net sets the tap's offloads to what the driver accepted
        // when the driver starts or resets the device, which it does from a vCPU thread.
        ThreadKind::Vcpu => &[KVM_RUN, libc::TUNSETOFFLOAD],
        ThreadKind::EventLoop => &[libc::FIONBIO],
    };
    let ioctl_rules = ioctls
        .iter()
        .map(|request| {
            let condition =
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *request)?;
            SeccompRule::new(vec![condition])
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(build)?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    filter.try_into().map_err(build)
}

thread_local! {
    /// The kind of this thread's filter, for the violation's message.
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// What no thread of a process holding a VM ever does, and a process taken over would
/// want: debug or read other processes, load kernel code (modules, kexec, BPF),
/// reach kernel key rings, open files by handle (the classic container escape), set the
/// clock, reboot, touch swap or quotas, or fault memory in from user space.
const PROCESS_DENIED: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_syslog,
    libc::SYS_quotactl,
    libc::SYS_lookup_dcookie,
    libc::SYS_uselib,
    libc::SYS_vhangup,
];

/// The process-wide deny-list: [`PROCESS_DENIED`] traps, everything else is allowed.
pub fn process_filter() -> Result<BpfProgram, SeccompError> {
    let rules = PROCESS_DENIED.iter().map(|s| (*s, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Trap,
        TargetArch::x86_64,
    )
    .map_err(SeccompError::BuildProcess)?;
    filter.try_into().map_err(SeccompError::BuildProcess)
}

/// Installs [`process_filter`] on every thread of the process (and so on every thread
/// and child it starts later), once, after setting the process's core-dump limit to 0. For a process that holds a VM: the runtime's and
/// the shim's threads mount, open and start programs by design, so theirs is a
/// deny-list of what they never do, under the VMM threads' own filters. Not for the host
/// backend: its agent and containers are this process's children and would inherit it.
pub fn confine_process() -> Result<(), SeccompError> {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        // No core dumps: the process holds a pod's data (guest memory is also marked
        // MADV_DONTDUMP, but the VMM's and the runtime's buffers are not).
        let none = rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        };
        rustix::process::setrlimit(rustix::process::Resource::Core, none)
            .map_err(|e| format!("setting RLIMIT_CORE to 0: {e}"))?;
        install_handler().map_err(|e| e.to_string())?;
        let program = process_filter().map_err(|e| e.to_string())?;
        seccompiler::apply_filter_all_threads(&program).map_err(|e| e.to_string())
    });
    // The first attempt's outcome, for every caller: a filter cannot be installed twice.
    installed.clone().map_err(SeccompError::InstallProcess)
}

/// Confines the calling thread for the rest of its life: its jail ([`jail`]: no
/// capabilities; for a vCPU thread an empty root too), then its filters.
pub fn confine(kind: ThreadKind) -> Result<(), SeccompError> {
    let root = match kind {
        ThreadKind::Vcpu => jail::Root::Empty,
        ThreadKind::EventLoop => jail::Root::Host,
    };
    jail::confine_thread(root).map_err(|e| SeccompError::Jail(kind, e))?;
    install(kind)
}

/// Installs the filter of `kind` on the calling thread, for the rest of its life.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    install_handler()?;
    let programs = filters(kind)?;
    KIND.with(|k| k.set(Some(kind)));
    for program in &programs {
        seccompiler::apply_filter(program).map_err(|e| SeccompError::Install(kind, e))?;
    }
    Ok(())
}

fn install_handler() -> Result<(), SeccompError> {
    static INSTALLED: Once = Once::new();
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        // SAFETY: `on_violation` is an `extern "C"` function of the signature SA_SIGINFO
        // handlers have; the sigaction struct is zeroed and then filled in, and the old
        // action is not needed.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                on_violation;
            action.sa_sigaction = handler as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            result = Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    });
    result
}

/// The SIGSYS handler: one line on stderr, then the end of the process. It runs under the
/// trapping thread's filter, so it makes only calls every filter allows (`write`,
/// `exit_group`), and allocates nothing.
extern "C" fn on_violation(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: for SIGSYS the kernel passes a siginfo whose union holds `_sigsys`: the
    // call address (8 bytes) at offset 16, then the system call's number (an int).
    let number = unsafe { *(info as *const u8).add(24).cast::<libc::c_int>() };
    // A thread without a kind of its own is one of the runtime's, under the process's
    // deny-list (`confine_process`).
    let kind = KIND.with(|k| k.get()).map_or("runtime", ThreadKind::name);
    let mut line = Line::default();
    line.push(b"husk: seccomp: the ");
    line.push(kind.as_bytes());
    line.push(b" thread made a system call its filter forbids: ");
    line.push(syscall_name(i64::from(number)).as_bytes());
    line.push(b" (");
    line.push_number(number);
    line.push(b")");
    if i64::from(number) == libc::SYS_openat {
        // SAFETY: for a signal handler installed with SA_SIGINFO the third argument is
        // the interrupted thread's ucontext; openat's path is its second argument (rsi),
        // a pointer the trapping code passed, read up to its NUL or the line's end.
        unsafe {
            let context = &*context.cast::<libc::ucontext_t>();
            let path = context.uc_mcontext.gregs[libc::REG_RSI as usize] as *const u8;
            if !path.is_null() {
                line.push(b" of ");
                let mut at = 0;
                while at < 128 && *path.add(at) != 0 {
                    line.push(std::slice::from_raw_parts(path.add(at), 1));
                    at += 1;
                }
            }
        }
    }
    line.push(b"\n");
    // SAFETY: write(2) and _exit(2) of plain values; both are async-signal-safe.
    unsafe {
        libc::write(2, line.bytes.as_ptr().cast(), line.len);
        libc::_exit(128 + libc::SIGSYS);
    }
}

/// The name of an x86_64 system call, or "unknown".
pub fn syscall_name(number: i64) -> &'static str {
    syscall_names::NAMES
        .binary_search_by_key(&number, |(n, _)| *n)
        .map_or("unknown", |i| syscall_names::NAMES[i].1)
}

/// A message built on the stack.
struct Line {
    bytes: [u8; 256],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            bytes: [0; 256],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, text: &[u8]) {
        let room = self.bytes.len() - self.len;
        let n = text.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
    }

    fn push_number(&mut self, number: libc::c_int) {
        let mut digits = [0u8; 12];
        let mut at = digits.len();
        let mut left = i64::from(number).unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (left % 10) as u8;
            left /= 10;
            if left == 0 {
                break;
            }
        }
        if number < 0 {
            self.push(b"-");
        }
        self.push(&digits[at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_filters_build() {
        for kind in [ThreadKind::Vcpu, ThreadKind::EventLoop] {
            for program in filters(kind).unwrap() {
                assert!(!program.is_empty(), "{kind}");
            }
        }
    }

    #[test]
    fn syscall_names_come_from_the_table() {
        assert_eq!(syscall_name(libc::SYS_execve), "execve");
        assert_eq!(syscall_name(libc::SYS_openat), "openat");
        assert_eq!(syscall_name(100_000), "unknown");
        let sorted = syscall_names::NAMES.windows(2).all(|w| w[0].0 < w[1].0);
        assert!(sorted, "the table must be sorted for the binary search");
    }

    #[test]
    fn lines_hold_numbers() {
        let mut line = Line::default();
        line.push(b"n=");
        line.push_number(59);
        line.push(b" ");
        line.push_number(-3);
        line.push(b" ");
        line.push_number(0);
        assert_eq!(&line.bytes[..line.len], b"n=59 -3 0");
    }
}
