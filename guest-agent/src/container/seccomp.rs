//! A container's OCI seccomp profile (`linux.seccomp`) as a classic BPF program for
//! x86_64, for `seccompiler::apply_filter` (or a direct `seccomp(2)`).
//!
//! # Semantics
//!
//! - A system call gets the action of the **first entry of `syscalls`, in the profile's
//!   order, that matches it** (its name, and its argument conditions); a call no entry
//!   matches gets `defaultAction`. This is how runc and crun behave (runtime-spec PR
//!   #1159 proposed the sentence "when the syscall matches multiple entries, only the
//!   first entry is effective" to describe them), so profiles written for them (Docker's,
//!   Podman's) mean the same here.
//! - An entry's `args` are ANDed, except when two of them compare the same argument:
//!   then each condition is a rule of its own and they are ORed. That is runc's (and
//!   crun's, youki's) long-standing rule (opencontainers/runc#2735), which profiles
//!   listing several values for one argument rely on.
//! - Operators compare the full 64-bit argument. `SCMP_CMP_MASKED_EQ`: `value` is the
//!   mask and `valueTwo` the value, `(arg & value) == valueTwo` (a `valueTwo` with bits
//!   outside the mask can never match, so that condition is false).
//! - Actions: `SCMP_ACT_ALLOW`, `SCMP_ACT_ERRNO` (`errnoRet`, else `EPERM`),
//!   `SCMP_ACT_KILL` and `SCMP_ACT_KILL_THREAD` (kill the thread), `SCMP_ACT_KILL_PROCESS`,
//!   `SCMP_ACT_TRAP` (SIGSYS), `SCMP_ACT_LOG` (allow and log), `SCMP_ACT_TRACE`
//!   (`errnoRet`, else `EPERM`, is the value the tracer sees; without a tracer the call
//!   fails with `ENOSYS`). `SCMP_ACT_NOTIFY` needs a listener husk does not run: an error.
//!   `defaultErrnoRet` is the errno of an ERRNO (or TRACE) `defaultAction`.
//! - System call names x86_64 does not have (profiles list names for every
//!   architecture and kernel: `socketcall`, `arm_fadvise64_64`, ...) are skipped with a
//!   debug log line, as runc and crun skip them.
//! - `architectures` is ignored: the rules are for x86_64 system calls, which is what the
//!   container runs. The other ABIs a 64-bit process can reach, i386 (`int 0x80`) and x32
//!   (numbers with bit 30 set), have other numbers, which the rules do not describe:
//!   their calls get `defaultAction` when it denies (an allow list stays an allow list)
//!   or the profile has no rules, and otherwise (an ALLOW, LOG or TRACE default with
//!   rules, a deny list) fail with `ENOSYS`, so that they cannot step around the rules.
//! - `flags` and `listenerPath`/`listenerMetadata` are not part of a BPF program; they
//!   are ignored (flags with a debug log line).
//!
//! # The program
//!
//! Check the architecture (else the foreign-ABI action); load the system call number;
//! x32 numbers get the foreign-ABI action; then, for each system call the profile
//! names (in number order), "number matches → its rules, in profile order, each
//! `conditions → return action`, then return the default"; return the default. The
//! conditions are seccompiler's (`SeccompRule` as BPF: 64-bit comparisons on the two
//! halves of `seccomp_data.args[i]`); the dispatch and returns are built here, because
//! seccompiler's `SeccompFilter` has one match action per filter and OCI profiles mix
//! them. A system call whose rules all end in the default action is left out. The
//! program is at most 4096 instructions (the kernel's limit), else an error.
//!
//! [`prepare_json`] checks the names in the profile's JSON before it is parsed, so that
//! an unknown action or operator is an error naming its field (`oci-spec`'s parser only
//! says "unknown variant"), and drops the architectures and flags `oci-spec` does not
//! know (both are ignored here anyway).

use std::collections::BTreeMap;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompOperator, LinuxSyscall,
};
use seccompiler::{
    sock_filter, BpfProgram, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule,
};

/// A seccomp profile the agent cannot compile. Each message names the field at fault.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum SeccompError {
    /// linux.seccomp.{0}: SCMP_ACT_NOTIFY is not supported (it needs a seccomp notification listener, which husk does not run)
    Notify(String),
    /// linux.seccomp.{field} {value}: not an errno (0 to 4095)
    Errno { field: String, value: u32 },
    /// linux.seccomp.syscalls[{entry}].args[{arg}].index {index}: out of range (system call arguments are 0 to 5)
    ArgIndex {
        entry: usize,
        arg: usize,
        index: usize,
    },
    /// linux.seccomp.syscalls[{entry}].args[{arg}]: {source}
    Condition {
        entry: usize,
        arg: usize,
        source: seccompiler::BackendError,
    },
    /// the seccomp profile makes a BPF program of {0} instructions, more than the kernel's limit of 4096
    TooLarge(usize),
    /// linux.seccomp.{field} {value:?}: unknown {what} (one of {known})
    Unknown {
        field: String,
        value: String,
        what: &'static str,
        known: String,
    },
    /// seccomp profiles are compiled for x86_64 only; this agent is built for {0}
    Arch(&'static str),
}

/// Classic BPF opcodes (`linux/bpf_common.h`).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JMP_JA: u16 = 0x05; // BPF_JMP | BPF_JA
const BPF_JMP_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JMP_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `__X32_SYSCALL_BIT`: x32 system calls are numbered from here.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// The kernel's limit on a filter's length (`BPF_MAXINSNS`).
const MAX_INSTRUCTIONS: usize = 4096;
/// The largest errno (`MAX_ERRNO`); the kernel clamps larger ones to it.
const MAX_ERRNO: u32 = 4095;

/// What a filter tells the kernel to do with a system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Errno(u16),
    KillThread,
    KillProcess,
    Trap,
    Trace(u16),
    Log,
}

/// Where an action comes from, for error messages.
#[derive(Clone, Copy)]
enum Source {
    Default,
    Entry(usize),
}

impl Source {
    fn field(self, name: &str) -> String {
        match self {
            Source::Default => {
                let mut chars = name.chars();
                let first = chars.next().map(|c| c.to_ascii_uppercase());
                format!("default{}{}", first.unwrap_or_default(), chars.as_str())
            }
            Source::Entry(i) => format!("syscalls[{i}].{name}"),
        }
    }
}

impl Action {
    fn from_oci(
        action: LinuxSeccompAction,
        errno_ret: Option<u32>,
        source: Source,
    ) -> Result<Action, SeccompError> {
        let errno = || match errno_ret {
            None => Ok(libc::EPERM as u16),
            Some(value) if value <= MAX_ERRNO => Ok(value as u16),
            Some(value) => Err(SeccompError::Errno {
                field: source.field("errnoRet"),
                value,
            }),
        };
        Ok(match action {
            LinuxSeccompAction::ScmpActAllow => Action::Allow,
            LinuxSeccompAction::ScmpActErrno => Action::Errno(errno()?),
            LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
                Action::KillThread
            }
            LinuxSeccompAction::ScmpActKillProcess => Action::KillProcess,
            LinuxSeccompAction::ScmpActTrap => Action::Trap,
            LinuxSeccompAction::ScmpActTrace => Action::Trace(errno()?),
            LinuxSeccompAction::ScmpActLog => Action::Log,
            LinuxSeccompAction::ScmpActNotify => {
                return Err(SeccompError::Notify(source.field("action")))
            }
        })
    }

    /// The filter's return value (`linux/seccomp.h`).
    fn ret(self) -> u32 {
        match self {
            Action::Allow => libc::SECCOMP_RET_ALLOW,
            Action::Errno(errno) => libc::SECCOMP_RET_ERRNO | u32::from(errno),
            Action::KillThread => libc::SECCOMP_RET_KILL_THREAD,
            Action::KillProcess => libc::SECCOMP_RET_KILL_PROCESS,
            Action::Trap => libc::SECCOMP_RET_TRAP,
            Action::Trace(data) => libc::SECCOMP_RET_TRACE | u32::from(data),
            Action::Log => libc::SECCOMP_RET_LOG,
        }
    }

    /// Lets the call through (the default of a deny list).
    fn permits(self) -> bool {
        matches!(self, Action::Allow | Action::Log | Action::Trace(_))
    }
}

/// One way a system call matches an entry: `None` matches always.
struct Rule {
    action: Action,
    conditions: Option<SeccompRule>,
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn ret(action: Action) -> sock_filter {
    stmt(BPF_RET_K, action.ret())
}

/// The x86_64 number of a system call, if x86_64 has it.
fn syscall_number(name: &str) -> Option<u32> {
    if let Some(nr) = LOW.iter().position(|n| *n == name) {
        return u32::try_from(nr).ok();
    }
    let nr = HIGH.iter().position(|n| *n == name)?;
    u32::try_from(nr).ok().map(|nr| HIGH_FIRST + nr)
}

/// One argument condition; `None` when it can never hold.
fn condition(
    entry: usize,
    arg: usize,
    cmp: &LinuxSeccompArg,
) -> Result<Option<SeccompCondition>, SeccompError> {
    let index =
        u8::try_from(cmp.index())
            .ok()
            .filter(|i| *i <= 5)
            .ok_or(SeccompError::ArgIndex {
                entry,
                arg,
                index: cmp.index(),
            })?;
    let (op, value) = match cmp.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, cmp.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, cmp.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, cmp.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, cmp.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, cmp.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, cmp.value()),
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            let (mask, want) = (cmp.value(), cmp.value_two().unwrap_or(0));
            if want & !mask != 0 {
                // (arg & mask) never has bits outside the mask.
                return Ok(None);
            }
            (SeccompCmpOp::MaskedEq(mask), want)
        }
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map(Some)
        .map_err(|source| SeccompError::Condition { entry, arg, source })
}

/// The ways a system call matches an entry's `args` (an empty list: never).
fn alternatives(
    entry: usize,
    syscall: &LinuxSyscall,
) -> Result<Vec<Option<SeccompRule>>, SeccompError> {
    let args = syscall.args().as_deref().unwrap_or_default();
    if args.is_empty() {
        return Ok(vec![None]);
    }
    let conditions = args
        .iter()
        .enumerate()
        .map(|(arg, cmp)| condition(entry, arg, cmp))
        .collect::<Result<Vec<_>, _>>()?;
    let rule = |conditions: Vec<SeccompCondition>| {
        SeccompRule::new(conditions).map_err(|source| SeccompError::Condition {
            entry,
            arg: 0,
            source,
        })
    };
    let mut seen = [false; 6];
    let repeated = args.iter().any(|cmp| {
        seen.get_mut(cmp.index())
            .is_some_and(|s| std::mem::replace(s, true))
    });
    if repeated {
        // runc's rule: each condition on its own, ORed.
        conditions
            .into_iter()
            .flatten()
            .map(|c| rule(vec![c]).map(Some))
            .collect()
    } else {
        match conditions.into_iter().collect::<Option<Vec<_>>>() {
            Some(all) => Ok(vec![Some(rule(all)?)]),
            None => Ok(Vec::new()),
        }
    }
}

/// Compiles `profile` into a BPF program for x86_64 (see the module docs for the
/// semantics). The program is never empty.
pub fn compile(profile: &LinuxSeccomp) -> Result<BpfProgram, SeccompError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(SeccompError::Arch(std::env::consts::ARCH));
    }
    let default = Action::from_oci(
        profile.default_action(),
        profile.default_errno_ret(),
        Source::Default,
    )?;
    let mut rules: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
    let mut unknown: Vec<&str> = Vec::new();
    for (entry, syscall) in profile.syscalls().iter().flatten().enumerate() {
        let action = Action::from_oci(syscall.action(), syscall.errno_ret(), Source::Entry(entry))?;
        let alternatives = alternatives(entry, syscall)?;
        for name in syscall.names() {
            let Some(nr) = syscall_number(name) else {
                unknown.push(name);
                continue;
            };
            let list = rules.entry(nr).or_default();
            for conditions in &alternatives {
                list.push(Rule {
                    action,
                    conditions: conditions.clone(),
                });
            }
        }
    }
    if !unknown.is_empty() {
        unknown.sort_unstable();
        unknown.dedup();
        log::debug!(
            "seccomp: skipping system calls x86_64 does not have: {}",
            unknown.join(", ")
        );
    }
    if let Some(flags) = profile.flags().as_ref().filter(|f| !f.is_empty()) {
        log::debug!("seccomp: flags {flags:?} are not applied");
    }
    program(default, &rules)
}

/// The instructions of one system call: its rules in order, then the default. `None`
/// when every path ends in the default action.
fn syscall_block(rules: &[Rule], default: Action) -> Option<Vec<sock_filter>> {
    // Rules after one without conditions never run; trailing rules with the default
    // action change nothing.
    let end = rules
        .iter()
        .position(|r| r.conditions.is_none())
        .map_or(rules.len(), |i| i + 1);
    let rules = &rules[..end];
    let end = rules
        .iter()
        .rposition(|r| r.action != default)
        .map_or(0, |i| i + 1);
    let rules = &rules[..end];
    if rules.is_empty() {
        return None;
    }
    let mut block = Vec::new();
    for rule in rules {
        match &rule.conditions {
            // seccompiler's rule program falls through to the instruction after it when
            // its conditions hold, and otherwise jumps over that one instruction.
            Some(conditions) => {
                block.extend(BpfProgram::from(conditions.clone()));
                block.push(ret(rule.action));
            }
            None => {
                block.push(ret(rule.action));
                return Some(block);
            }
        }
    }
    block.push(ret(default));
    Some(block)
}

fn program(default: Action, rules: &BTreeMap<u32, Vec<Rule>>) -> Result<BpfProgram, SeccompError> {
    let mut dispatch = Vec::new();
    for (&nr, rules) in rules {
        let Some(block) = syscall_block(rules, default) else {
            continue;
        };
        if let [only] = block.as_slice() {
            dispatch.push(jump(BPF_JMP_JEQ_K, nr, 0, 1));
            dispatch.push(only.clone());
        } else {
            // Over the block when the number differs: its length may not fit in `jf`.
            let len =
                u32::try_from(block.len()).map_err(|_| SeccompError::TooLarge(block.len()))?;
            dispatch.push(jump(BPF_JMP_JEQ_K, nr, 1, 0));
            dispatch.push(stmt(BPF_JMP_JA, len));
            dispatch.extend(block);
        }
    }
    let foreign = if dispatch.is_empty() || !default.permits() {
        default
    } else {
        Action::Errno(libc::ENOSYS as u16)
    };
    let mut program = vec![
        stmt(BPF_LD_W_ABS, DATA_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        ret(foreign),
        stmt(BPF_LD_W_ABS, DATA_NR),
        jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        ret(foreign),
    ];
    program.extend(dispatch);
    program.push(ret(default));
    if program.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLarge(program.len()));
    }
    Ok(program)
}

const ACTIONS: [&str; 9] = [
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_NOTIFY",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_LOG",
    "SCMP_ACT_ALLOW",
];

const OPERATORS: [&str; 7] = [
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
];

/// Checks the action and operator names of a profile's JSON (the value of
/// `linux.seccomp`) before `oci-spec` parses it, so that an unknown one is an error
/// naming its field, and removes the `architectures` and `flags` entries `oci-spec`
/// does not know (it would refuse the whole spec; [`compile`] ignores both). Values of
/// the wrong JSON type are left for the parser to report.
pub fn prepare_json(seccomp: &mut serde_json::Value) -> Result<(), SeccompError> {
    let check = |value: Option<&serde_json::Value>,
                 field: &dyn Fn() -> String,
                 what: &'static str,
                 known: &[&str]| {
        match value.and_then(|v| v.as_str()) {
            Some(name) if !known.contains(&name) => Err(SeccompError::Unknown {
                field: field(),
                value: name.to_owned(),
                what,
                known: known.join(", "),
            }),
            _ => Ok(()),
        }
    };
    check(
        seccomp.get("defaultAction"),
        &|| "defaultAction".to_owned(),
        "action",
        &ACTIONS,
    )?;
    if let Some(syscalls) = seccomp.get("syscalls").and_then(|s| s.as_array()) {
        for (i, syscall) in syscalls.iter().enumerate() {
            check(
                syscall.get("action"),
                &|| format!("syscalls[{i}].action"),
                "action",
                &ACTIONS,
            )?;
            let args = syscall.get("args").and_then(|a| a.as_array());
            for (j, arg) in args.into_iter().flatten().enumerate() {
                check(
                    arg.get("op"),
                    &|| format!("syscalls[{i}].args[{j}].op"),
                    "operator",
                    &OPERATORS,
                )?;
            }
        }
    }
    for (field, parses) in [
        (
            "architectures",
            parses_as::<oci_spec::runtime::Arch> as fn(&serde_json::Value) -> bool,
        ),
        (
            "flags",
            parses_as::<oci_spec::runtime::LinuxSeccompFilterFlag>,
        ),
    ] {
        if let Some(list) = seccomp.get_mut(field).and_then(|l| l.as_array_mut()) {
            list.retain(|value| {
                let known = !value.is_string() || parses(value);
                if !known {
                    log::debug!("seccomp: ignoring {field} entry {value}");
                }
                known
            });
        }
    }
    Ok(())
}

fn parses_as<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> bool {
    T::deserialize(value).is_ok()
}

/// x86_64 system call names by number, 0 to 335 (`arch/x86/entry/syscalls/syscall_64.tbl`).
const LOW: [&str; 336] = [
    "read",
    "write",
    "open",
    "close",
    "stat",
    "fstat",
    "lstat",
    "poll",
    "lseek",
    "mmap",
    "mprotect",
    "munmap",
    "brk",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "ioctl",
    "pread64",
    "pwrite64",
    "readv",
    "writev",
    "access",
    "pipe",
    "select",
    "sched_yield",
    "mremap",
    "msync",
    "mincore",
    "madvise",
    "shmget",
    "shmat",
    "shmctl",
    "dup",
    "dup2",
    "pause",
    "nanosleep",
    "getitimer",
    "alarm",
    "setitimer",
    "getpid",
    "sendfile",
    "socket",
    "connect",
    "accept",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "shutdown",
    "bind",
    "listen",
    "getsockname",
    "getpeername",
    "socketpair",
    "setsockopt",
    "getsockopt",
    "clone",
    "fork",
    "vfork",
    "execve",
    "exit",
    "wait4",
    "kill",
    "uname",
    "semget",
    "semop",
    "semctl",
    "shmdt",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    "fcntl",
    "flock",
    "fsync",
    "fdatasync",
    "truncate",
    "ftruncate",
    "getdents",
    "getcwd",
    "chdir",
    "fchdir",
    "rename",
    "mkdir",
    "rmdir",
    "creat",
    "link",
    "unlink",
    "symlink",
    "readlink",
    "chmod",
    "fchmod",
    "chown",
    "fchown",
    "lchown",
    "umask",
    "gettimeofday",
    "getrlimit",
    "getrusage",
    "sysinfo",
    "times",
    "ptrace",
    "getuid",
    "syslog",
    "getgid",
    "setuid",
    "setgid",
    "geteuid",
    "getegid",
    "setpgid",
    "getppid",
    "getpgrp",
    "setsid",
    "setreuid",
    "setregid",
    "getgroups",
    "setgroups",
    "setresuid",
    "getresuid",
    "setresgid",
    "getresgid",
    "getpgid",
    "setfsuid",
    "setfsgid",
    "getsid",
    "capget",
    "capset",
    "rt_sigpending",
    "rt_sigtimedwait",
    "rt_sigqueueinfo",
    "rt_sigsuspend",
    "sigaltstack",
    "utime",
    "mknod",
    "uselib",
    "personality",
    "ustat",
    "statfs",
    "fstatfs",
    "sysfs",
    "getpriority",
    "setpriority",
    "sched_setparam",
    "sched_getparam",
    "sched_setscheduler",
    "sched_getscheduler",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_rr_get_interval",
    "mlock",
    "munlock",
    "mlockall",
    "munlockall",
    "vhangup",
    "modify_ldt",
    "pivot_root",
    "_sysctl",
    "prctl",
    "arch_prctl",
    "adjtimex",
    "setrlimit",
    "chroot",
    "sync",
    "acct",
    "settimeofday",
    "mount",
    "umount2",
    "swapon",
    "swapoff",
    "reboot",
    "sethostname",
    "setdomainname",
    "iopl",
    "ioperm",
    "create_module",
    "init_module",
    "delete_module",
    "get_kernel_syms",
    "query_module",
    "quotactl",
    "nfsservctl",
    "getpmsg",
    "putpmsg",
    "afs_syscall",
    "tuxcall",
    "security",
    "gettid",
    "readahead",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "getxattr",
    "lgetxattr",
    "fgetxattr",
    "listxattr",
    "llistxattr",
    "flistxattr",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "tkill",
    "time",
    "futex",
    "sched_setaffinity",
    "sched_getaffinity",
    "set_thread_area",
    "io_setup",
    "io_destroy",
    "io_getevents",
    "io_submit",
    "io_cancel",
    "get_thread_area",
    "lookup_dcookie",
    "epoll_create",
    "epoll_ctl_old",
    "epoll_wait_old",
    "remap_file_pages",
    "getdents64",
    "set_tid_address",
    "restart_syscall",
    "semtimedop",
    "fadvise64",
    "timer_create",
    "timer_settime",
    "timer_gettime",
    "timer_getoverrun",
    "timer_delete",
    "clock_settime",
    "clock_gettime",
    "clock_getres",
    "clock_nanosleep",
    "exit_group",
    "epoll_wait",
    "epoll_ctl",
    "tgkill",
    "utimes",
    "vserver",
    "mbind",
    "set_mempolicy",
    "get_mempolicy",
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedreceive",
    "mq_notify",
    "mq_getsetattr",
    "kexec_load",
    "waitid",
    "add_key",
    "request_key",
    "keyctl",
    "ioprio_set",
    "ioprio_get",
    "inotify_init",
    "inotify_add_watch",
    "inotify_rm_watch",
    "migrate_pages",
    "openat",
    "mkdirat",
    "mknodat",
    "fchownat",
    "futimesat",
    "newfstatat",
    "unlinkat",
    "renameat",
    "linkat",
    "symlinkat",
    "readlinkat",
    "fchmodat",
    "faccessat",
    "pselect6",
    "ppoll",
    "unshare",
    "set_robust_list",
    "get_robust_list",
    "splice",
    "tee",
    "sync_file_range",
    "vmsplice",
    "move_pages",
    "utimensat",
    "epoll_pwait",
    "signalfd",
    "timerfd_create",
    "eventfd",
    "fallocate",
    "timerfd_settime",
    "timerfd_gettime",
    "accept4",
    "signalfd4",
    "eventfd2",
    "epoll_create1",
    "dup3",
    "pipe2",
    "inotify_init1",
    "preadv",
    "pwritev",
    "rt_tgsigqueueinfo",
    "perf_event_open",
    "recvmmsg",
    "fanotify_init",
    "fanotify_mark",
    "prlimit64",
    "name_to_handle_at",
    "open_by_handle_at",
    "clock_adjtime",
    "syncfs",
    "sendmmsg",
    "setns",
    "getcpu",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "finit_module",
    "sched_setattr",
    "sched_getattr",
    "renameat2",
    "seccomp",
    "getrandom",
    "memfd_create",
    "kexec_file_load",
    "bpf",
    "execveat",
    "userfaultfd",
    "membarrier",
    "mlock2",
    "copy_file_range",
    "preadv2",
    "pwritev2",
    "pkey_mprotect",
    "pkey_alloc",
    "pkey_free",
    "statx",
    "io_pgetevents",
    "rseq",
    "uretprobe",
];

/// The first number of [`HIGH`] (424: 336 to 423 are unused on x86_64; 512 and up are x32-only).
const HIGH_FIRST: u32 = 424;

/// x86_64 system call names by number, from 424 to 469 (Linux 6.17).
const HIGH: [&str; 46] = [
    "pidfd_send_signal",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "pidfd_open",
    "clone3",
    "close_range",
    "openat2",
    "pidfd_getfd",
    "faccessat2",
    "process_madvise",
    "epoll_pwait2",
    "mount_setattr",
    "quotactl_fd",
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
    "memfd_secret",
    "process_mrelease",
    "futex_waitv",
    "set_mempolicy_home_node",
    "cachestat",
    "fchmodat2",
    "map_shadow_stack",
    "futex_wake",
    "futex_wait",
    "futex_requeue",
    "statmount",
    "listmount",
    "lsm_get_self_attr",
    "lsm_set_self_attr",
    "lsm_list_modules",
    "mseal",
    "setxattrat",
    "getxattrat",
    "listxattrat",
    "removexattrat",
    "open_tree_attr",
    "file_getattr",
    "file_setattr",
];

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use serde_json::json;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn profile(value: serde_json::Value) -> Result<LinuxSeccomp, serde_json::Error> {
        serde_json::from_value(value)
    }

    fn compiled(value: serde_json::Value) -> Result<BpfProgram, Box<dyn std::error::Error>> {
        Ok(compile(&profile(value)?)?)
    }

    fn error_of(value: serde_json::Value) -> Result<String, Box<dyn std::error::Error>> {
        match compile(&profile(value)?) {
            Ok(_) => Err("compiled, but an error was expected".into()),
            Err(e) => Ok(e.to_string()),
        }
    }

    #[test]
    fn the_table_has_the_kernels_numbers() {
        for (name, nr) in [
            ("read", libc::SYS_read),
            ("mkdir", libc::SYS_mkdir),
            ("getppid", libc::SYS_getppid),
            ("personality", libc::SYS_personality),
            ("exit_group", libc::SYS_exit_group),
            ("openat", libc::SYS_openat),
            ("statx", libc::SYS_statx),
            ("pidfd_send_signal", libc::SYS_pidfd_send_signal),
            ("clone3", libc::SYS_clone3),
            ("futex_waitv", libc::SYS_futex_waitv),
        ] {
            assert_eq!(syscall_number(name).map(i64::from), Some(nr), "{name}");
        }
        assert_eq!(syscall_number("uretprobe"), Some(335));
        assert_eq!(syscall_number("cachestat"), Some(451));
        assert_eq!(syscall_number("mseal"), Some(462));
        assert_eq!(syscall_number("file_setattr"), Some(469));
        for name in ["socketcall", "arm_fadvise64_64", "_llseek", "", "READ"] {
            assert_eq!(syscall_number(name), None, "{name}");
        }
        let mut names: Vec<&str> = LOW.iter().chain(HIGH.iter()).copied().collect();
        names.sort_unstable();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count, "a name is listed twice");
    }

    /// `struct seccomp_data` for the interpreter.
    struct Data {
        nr: u32,
        arch: u32,
        args: [u64; 6],
    }

    impl Data {
        fn word(&self, offset: u32) -> u32 {
            match offset {
                0 => self.nr,
                4 => self.arch,
                8 | 12 => 0, // instruction_pointer
                16..=63 if offset & 3 == 0 => {
                    let arg = self.args[((offset - 16) / 8) as usize];
                    if offset % 8 == 4 {
                        (arg >> 32) as u32
                    } else {
                        arg as u32
                    }
                }
                _ => panic!("load from offset {offset}"),
            }
        }
    }

    /// A classic BPF interpreter for the instructions the compiler emits, with the
    /// kernel checker's rules that matter here (forward jumps, in bounds, ends in a
    /// return: an index out of bounds panics the test).
    fn run(program: &[sock_filter], data: &Data) -> u32 {
        let mut a: u32 = 0;
        let mut pc = 0;
        loop {
            let insn = &program[pc];
            pc += 1;
            match insn.code {
                0x20 => a = data.word(insn.k),
                0x54 => a &= insn.k,
                0x05 => pc += insn.k as usize,
                0x15 => pc += usize::from(if a == insn.k { insn.jt } else { insn.jf }),
                0x25 => pc += usize::from(if a > insn.k { insn.jt } else { insn.jf }),
                0x35 => pc += usize::from(if a >= insn.k { insn.jt } else { insn.jf }),
                0x06 => return insn.k,
                code => panic!("unexpected instruction {code:#x} at {}", pc - 1),
            }
        }
    }

    /// The return value the OCI semantics ask for, straight from the profile (an
    /// independent reading of the module docs).
    fn expected(profile: &LinuxSeccomp, nr: u32, args: &[u64; 6]) -> u32 {
        let value = |action: LinuxSeccompAction, errno: Option<u32>| match action {
            LinuxSeccompAction::ScmpActAllow => 0x7fff_0000,
            LinuxSeccompAction::ScmpActErrno => 0x0005_0000 | errno.unwrap_or(1),
            LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => 0,
            LinuxSeccompAction::ScmpActKillProcess => 0x8000_0000,
            LinuxSeccompAction::ScmpActTrap => 0x0003_0000,
            LinuxSeccompAction::ScmpActTrace => 0x7ff0_0000 | errno.unwrap_or(1),
            LinuxSeccompAction::ScmpActLog => 0x7ffc_0000,
            LinuxSeccompAction::ScmpActNotify => panic!("notify in a test profile"),
        };
        for entry in profile.syscalls().iter().flatten() {
            if !entry.names().iter().any(|n| syscall_number(n) == Some(nr)) {
                continue;
            }
            let conditions = entry.args().as_deref().unwrap_or_default();
            let holds = |c: &LinuxSeccompArg| {
                let (arg, v) = (args[c.index()], c.value());
                match c.op() {
                    LinuxSeccompOperator::ScmpCmpNe => arg != v,
                    LinuxSeccompOperator::ScmpCmpLt => arg < v,
                    LinuxSeccompOperator::ScmpCmpLe => arg <= v,
                    LinuxSeccompOperator::ScmpCmpEq => arg == v,
                    LinuxSeccompOperator::ScmpCmpGe => arg >= v,
                    LinuxSeccompOperator::ScmpCmpGt => arg > v,
                    LinuxSeccompOperator::ScmpCmpMaskedEq => arg & v == c.value_two().unwrap_or(0),
                }
            };
            let repeated = conditions
                .iter()
                .enumerate()
                .any(|(i, c)| conditions[..i].iter().any(|d| d.index() == c.index()));
            let matches = if repeated {
                conditions.iter().any(holds)
            } else {
                conditions.iter().all(holds)
            };
            if matches {
                return value(entry.action(), entry.errno_ret());
            }
        }
        value(profile.default_action(), profile.default_errno_ret())
    }

    /// xorshift64*: reproducible test data without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())]
        }
    }

    const VALUES: [u64; 14] = [
        0,
        1,
        2,
        7,
        0xf0,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        0x1_0000_0000,
        0x1_0000_0001,
        0x1_ffff_ffff,
        0xffff_ffff_0000_0000,
        u64::MAX - 1,
        u64::MAX,
    ];

    /// Random profiles against the reference model, through the interpreter: every
    /// operator on 64-bit edge values, repeated argument indexes, overlapping entries
    /// with different actions, the default, unknown names.
    #[test]
    fn programs_agree_with_the_reference_model() -> TestResult {
        let names = ["read", "write", "getppid", "mkdir", "no_such_call"];
        let numbers: Vec<u32> = names
            .iter()
            .filter_map(|n| syscall_number(n))
            .chain([39])
            .collect();
        let actions = [
            ("SCMP_ACT_ALLOW", false),
            ("SCMP_ACT_ERRNO", true),
            ("SCMP_ACT_KILL", false),
            ("SCMP_ACT_KILL_PROCESS", false),
            ("SCMP_ACT_TRAP", false),
            ("SCMP_ACT_TRACE", true),
            ("SCMP_ACT_LOG", false),
        ];
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut checked = 0;
        for _ in 0..2000 {
            let mut entries = Vec::new();
            for _ in 0..rng.below(7) {
                let (action, errno) = rng.pick(&actions);
                let mut args = Vec::new();
                for _ in 0..rng.below(4) {
                    let op = rng.pick(&OPERATORS);
                    let value = rng.pick(&VALUES);
                    let value_two = if rng.below(2) == 0 {
                        value & rng.pick(&VALUES)
                    } else {
                        rng.pick(&VALUES)
                    };
                    args.push(json!({
                        "index": rng.below(3), "value": value, "valueTwo": value_two, "op": op
                    }));
                }
                let mut entry = json!({
                    "names": (0..=rng.below(2)).map(|_| rng.pick(&names)).collect::<Vec<_>>(),
                    "action": action,
                    "args": args,
                });
                if errno && rng.below(2) == 0 {
                    entry["errnoRet"] = json!(rng.below(200));
                }
                entries.push(entry);
            }
            let (default, errno) = rng.pick(&actions);
            let mut value = json!({"defaultAction": default, "syscalls": entries});
            if errno && rng.below(2) == 0 {
                value["defaultErrnoRet"] = json!(rng.below(200));
            }
            let profile = profile(value)?;
            let program = compile(&profile)?;
            for _ in 0..50 {
                let nr = rng.pick(&numbers);
                let mut args = [0u64; 6];
                for arg in &mut args {
                    *arg = match rng.below(3) {
                        0 => rng.pick(&VALUES),
                        1 => rng.pick(&VALUES).wrapping_add(1),
                        _ => rng.next(),
                    };
                }
                let data = Data {
                    nr,
                    arch: AUDIT_ARCH_X86_64,
                    args,
                };
                let got = run(&program, &data);
                let want = expected(&profile, nr, &args);
                assert_eq!(
                    got, want,
                    "nr {nr} args {args:x?}: got {got:#x}, want {want:#x}\nprofile {profile:?}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 100_000);
        Ok(())
    }

    #[test]
    fn other_abis_cannot_step_around_the_rules() -> TestResult {
        let deny_list = compiled(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]
        }))?;
        let allow_list = compiled(json!({
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 13,
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]
        }))?;
        let allow_all = compiled(json!({"defaultAction": "SCMP_ACT_ALLOW"}))?;
        let enosys = libc::SECCOMP_RET_ERRNO | 38;
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        for (arch, nr) in [
            (AUDIT_ARCH_I386, 20),
            (AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 39),
        ] {
            let data = Data {
                nr,
                arch,
                args: [0; 6],
            };
            assert_eq!(run(&deny_list, &data), enosys);
            assert_eq!(run(&allow_list, &data), libc::SECCOMP_RET_ERRNO | 13);
            assert_eq!(run(&allow_all, &data), libc::SECCOMP_RET_ALLOW);
        }
        Ok(())
    }

    #[test]
    fn shadowed_and_default_rules_are_left_out() -> TestResult {
        let header = 6;
        // getpid's rule repeats the default; read's second entry is shadowed.
        let program = compiled(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["getpid"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["read"], "action": "SCMP_ACT_KILL",
                 "args": [{"index": 0, "value": 3, "op": "SCMP_CMP_EQ"}]}
            ]
        }))?;
        assert_eq!(program.len(), header + 2 + 1);
        Ok(())
    }

    #[test]
    fn errors_name_the_field() -> TestResult {
        let cases = [
            (
                json!({"defaultAction": "SCMP_ACT_NOTIFY"}),
                "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY is not supported",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_LOG"},
                    {"names": ["no_such_call"], "action": "SCMP_ACT_NOTIFY"}]}),
                "linux.seccomp.syscalls[1].action: SCMP_ACT_NOTIFY is not supported",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [
                        {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                        {"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}),
                "linux.seccomp.syscalls[0].args[1].index 6: out of range",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5000}]}),
                "linux.seccomp.syscalls[0].errnoRet 5000: not an errno (0 to 4095)",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000}),
                "linux.seccomp.defaultErrnoRet 70000: not an errno",
            ),
        ];
        for (value, want) in cases {
            let got = error_of(value)?;
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
        // 600 conditional rules do not fit in 4096 instructions.
        let entries: Vec<_> = (0..600)
            .map(|i| {
                json!({"names": ["getppid"], "action": "SCMP_ACT_ERRNO",
                       "args": [{"index": 0, "value": i, "op": "SCMP_CMP_EQ"}]})
            })
            .collect();
        let got = error_of(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": entries}))?;
        assert!(
            got.contains("more than the kernel's limit of 4096"),
            "{got}"
        );
        Ok(())
    }

    #[test]
    fn unknown_names_in_json_are_errors_naming_the_field() -> TestResult {
        let cases = [
            (
                json!({"defaultAction": "SCMP_ACT_FOO"}),
                "linux.seccomp.defaultAction \"SCMP_ACT_FOO\": unknown action (one of SCMP_ACT_KILL, ",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["read"], "action": "SCMP_ACT_DENY"}]}),
                "linux.seccomp.syscalls[1].action \"SCMP_ACT_DENY\": unknown action",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ERRNO",
                     "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_BETWEEN"}]}]}),
                "linux.seccomp.syscalls[0].args[0].op \"SCMP_CMP_BETWEEN\": unknown operator (one of SCMP_CMP_NE, ",
            ),
        ];
        for (mut value, want) in cases {
            let got = prepare_json(&mut value).map_err(|e| e.to_string());
            assert!(
                got.as_ref().is_err_and(|e| e.starts_with(want)),
                "got {got:?}, want {want:?}"
            );
        }
        // Every name the check knows, oci-spec knows too.
        for name in ACTIONS {
            serde_json::from_value::<LinuxSeccompAction>(json!(name))?;
        }
        for name in OPERATORS {
            serde_json::from_value::<LinuxSeccompOperator>(json!(name))?;
        }
        // Architectures and flags oci-spec does not know are dropped; the rest parses.
        let mut value = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_LOONGARCH64", "SCMP_ARCH_X86"],
            "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", "SECCOMP_FILTER_FLAG_LOG"],
        });
        assert!(profile(value.clone()).is_err());
        prepare_json(&mut value)?;
        assert_eq!(
            value["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"])
        );
        assert_eq!(value["flags"], json!(["SECCOMP_FILTER_FLAG_LOG"]));
        compile(&profile(value)?)?;
        Ok(())
    }

    // Applied in forked children: a filter cannot be removed.

    #[derive(Debug, PartialEq)]
    enum End {
        Code(i32),
        Signal(i32),
    }

    /// Forks; the child installs `program`, runs `body` and exits with its code (99: the
    /// filter did not install).
    fn in_child(
        program: &BpfProgram,
        body: fn() -> i32,
    ) -> Result<End, Box<dyn std::error::Error>> {
        // SAFETY: the test harness has other threads; the child only makes system calls
        // (the program was built before the fork, nothing allocates) and `_exit`s, so it
        // cannot wait on a lock another thread held.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if pid == 0 {
            // No core files from SIGSYS.
            let no_core = rustix::process::Rlimit {
                current: Some(0),
                maximum: Some(0),
            };
            let _ = rustix::process::setrlimit(rustix::process::Resource::Core, no_core);
            let code = match seccompiler::apply_filter(program) {
                Ok(()) => body(),
                Err(_) => 99,
            };
            // SAFETY: ends the child at once, without the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        let pid = rustix::process::Pid::from_raw(pid).ok_or("fork gave pid 0")?;
        let (_, status) =
            rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())?
                .ok_or("no status")?;
        match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => Ok(End::Code(code)),
            (_, Some(signal)) => Ok(End::Signal(signal)),
            _ => Err(format!("child status {status:?}").into()),
        }
    }

    /// A raw system call (no libc wrapper that might pick another one): the result or
    /// the errno.
    fn sys(nr: libc::c_long, args: [u64; 3]) -> Result<i64, i32> {
        // SAFETY: the calls used here take numbers, or pointers to NUL-terminated
        // strings that live for the whole program.
        let rc = unsafe { libc::syscall(nr, args[0], args[1], args[2]) };
        if rc == -1 {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            Ok(rc)
        }
    }

    const MISSING_DIR: &std::ffi::CStr = c"/nonexistent-husk-seccomp-test/dir";

    fn mkdir() -> Result<i64, i32> {
        sys(libc::SYS_mkdir, [MISSING_DIR.as_ptr() as u64, 0o755, 0])
    }

    fn mkdirat() -> Result<i64, i32> {
        sys(
            libc::SYS_mkdirat,
            [libc::AT_FDCWD as u64, MISSING_DIR.as_ptr() as u64, 0o755],
        )
    }

    fn getppid(arg0: u64, arg1: u64) -> Result<i64, i32> {
        sys(libc::SYS_getppid, [arg0, arg1, 0])
    }

    fn root() -> bool {
        // Not a skip: a test that cannot run here fails and says why.
        assert!(
            rustix::process::geteuid().is_root(),
            "cannot run: applying filters in forked children needs root here"
        );
        true
    }

    #[test]
    fn a_rule_action_beats_an_allow_default() -> TestResult {
        if !root() {
            return Ok(());
        }
        let program = compiled(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["no_such_call", "mkdir", "socketcall"], "action": "SCMP_ACT_ERRNO"}]
        }))?;
        let end = in_child(&program, || {
            if mkdir() != Err(libc::EPERM) {
                return 1;
            }
            // Not in the profile: the kernel's own answer.
            if mkdirat() != Err(libc::ENOENT) {
                return 2;
            }
            0
        })?;
        assert_eq!(end, End::Code(0));
        Ok(())
    }

    #[test]
    fn an_errno_default_with_an_allow_list() -> TestResult {
        if !root() {
            return Ok(());
        }
        let program = compiled(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "syscalls": [{"names": ["exit_group", "exit", "getpid"], "action": "SCMP_ACT_ALLOW"}]
        }))?;
        let end = in_child(&program, || {
            if !sys(libc::SYS_getpid, [0; 3]).is_ok_and(|pid| pid > 0) {
                return 1;
            }
            if getppid(0, 0) != Err(libc::ENOSYS) || mkdir() != Err(libc::ENOSYS) {
                return 2;
            }
            0
        })?;
        assert_eq!(end, End::Code(0));
        Ok(())
    }

    #[test]
    fn argument_conditions() -> TestResult {
        if !root() {
            return Ok(());
        }
        // Docker's way with personality: allowed for a few values, else the default.
        let program = compiled(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["exit_group"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0xffff_ffffu64, "op": "SCMP_CMP_EQ"}]},
                // Both conditions (different arguments): ANDed.
                {"names": ["getppid"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 10, "op": "SCMP_CMP_GT"},
                          {"index": 1, "value": 0xf0, "valueTwo": 0x30, "op": "SCMP_CMP_MASKED_EQ"}]},
                // The same argument twice: ORed (runc's rule).
                {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                          {"index": 0, "value": 0x1_0000_0000u64, "op": "SCMP_CMP_GE"}]}
            ]
        }))?;
        let end = in_child(&program, || {
            // The query (0xffffffff) is allowed; anything else is refused.
            if sys(libc::SYS_personality, [0xffff_ffff, 0, 0]).is_err() {
                return 1;
            }
            if sys(libc::SYS_personality, [0x0040_0000, 0, 0]) != Err(libc::EPERM) {
                return 2;
            }
            let ok = |r: Result<i64, i32>| r.is_ok_and(|ppid| ppid > 0);
            if !ok(getppid(11, 0x3f)) || !ok(getppid(11, 0x130)) {
                return 3;
            }
            // 10 is not > 10; 0x20 & 0xf0 is not 0x30.
            if getppid(10, 0x30) != Err(libc::EPERM) || getppid(11, 0x20) != Err(libc::EPERM) {
                return 4;
            }
            // The 64-bit value: 0x1_0000_000b > 10 (allowed by the first entry).
            if !ok(getppid(0x1_0000_000b, 0x30)) {
                return 5;
            }
            // Either of the ORed conditions.
            if getppid(1, 0) != Err(libc::EINVAL) || getppid(0x1_0000_0000, 0) != Err(libc::EINVAL)
            {
                return 6;
            }
            if getppid(2, 0) != Err(libc::EPERM) {
                return 7;
            }
            0
        })?;
        assert_eq!(end, End::Code(0));
        Ok(())
    }

    #[test]
    fn the_first_matching_entry_wins() -> TestResult {
        if !root() {
            return Ok(());
        }
        let program = compiled(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
                {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                 "args": [{"index": 0, "value": 5, "op": "SCMP_CMP_LE"}]},
                {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"},
                {"names": ["getppid"], "action": "SCMP_ACT_ALLOW"}
            ]
        }))?;
        let end = in_child(&program, || {
            if getppid(1, 0) != Err(libc::EPERM) {
                return 1;
            }
            if getppid(0, 0) != Err(libc::EACCES) || getppid(5, 0) != Err(libc::EACCES) {
                return 2;
            }
            // Killed here.
            let _ = getppid(6, 0);
            3
        })?;
        assert_eq!(end, End::Signal(libc::SIGSYS));
        Ok(())
    }

    #[test]
    fn kill_trap_log_and_trace() -> TestResult {
        if !root() {
            return Ok(());
        }
        let with = |action: &str| {
            compiled(json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["getppid"], "action": action}]
            }))
        };
        let calls_getppid = || match getppid(0, 0) {
            Ok(_) => 0,
            Err(errno) => errno,
        };
        for action in [
            "SCMP_ACT_KILL",
            "SCMP_ACT_KILL_THREAD",
            "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_TRAP",
        ] {
            let end = in_child(&with(action)?, calls_getppid)?;
            assert_eq!(end, End::Signal(libc::SIGSYS), "{action}");
        }
        assert_eq!(
            in_child(&with("SCMP_ACT_LOG")?, calls_getppid)?,
            End::Code(0)
        );
        // Without a tracer, TRACE fails the call with ENOSYS.
        assert_eq!(
            in_child(&with("SCMP_ACT_TRACE")?, calls_getppid)?,
            End::Code(libc::ENOSYS)
        );
        Ok(())
    }

    /// i386's getpid through `int 0x80`: its result, or -errno.
    fn int80_getpid() -> i32 {
        let rax: i64;
        // SAFETY: `int 0x80` enters the i386 system call path; getpid (20) takes no
        // arguments and touches no memory. r8-r11 are declared clobbered.
        unsafe {
            std::arch::asm!(
                "int 0x80",
                inlateout("rax") 20i64 => rax,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                options(nostack)
            );
        }
        rax as i32
    }

    #[test]
    fn x32_and_i386_calls_meet_the_foreign_abi_action() -> TestResult {
        if !root() {
            return Ok(());
        }
        let deny_list = compiled(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO"}]
        }))?;
        let allow_list = compiled(json!({
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 13,
            "syscalls": [{"names": ["exit_group", "getpid"], "action": "SCMP_ACT_ALLOW"}]
        }))?;
        let x32_getpid = || match sys(libc::SYS_getpid | 0x4000_0000, [0; 3]) {
            Ok(_) => 0,
            Err(errno) => errno,
        };
        assert_eq!(in_child(&deny_list, x32_getpid)?, End::Code(libc::ENOSYS));
        assert_eq!(in_child(&allow_list, x32_getpid)?, End::Code(libc::EACCES));
        let i386_getpid = || -int80_getpid();
        match in_child(&deny_list, i386_getpid)? {
            End::Signal(libc::SIGSEGV) => {
                eprintln!("i386 part skipped: this kernel has no i386 emulation");
                return Ok(());
            }
            end => assert_eq!(end, End::Code(libc::ENOSYS)),
        }
        assert_eq!(in_child(&allow_list, i386_getpid)?, End::Code(libc::EACCES));
        Ok(())
    }

    #[test]
    fn an_empty_profile_and_a_long_allow_list() -> TestResult {
        if !root() {
            return Ok(());
        }
        let empty = compiled(json!({"defaultAction": "SCMP_ACT_ALLOW"}))?;
        let unchanged = || {
            if mkdir() != Err(libc::ENOENT) || getppid(0, 0).is_err() {
                return 1;
            }
            0
        };
        assert_eq!(in_child(&empty, unchanged)?, End::Code(0));
        // Every x86_64 name (and some of other architectures) allowed, the rest refused.
        let mut names: Vec<&str> = LOW.iter().chain(HIGH.iter()).copied().collect();
        names.extend(["socketcall", "arm_fadvise64_64", "_llseek"]);
        let program = compiled(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}]
        }))?;
        assert!(program.len() < MAX_INSTRUCTIONS, "{}", program.len());
        assert_eq!(in_child(&program, unchanged)?, End::Code(0));
        let refused = || match sys(libc::SYS_close, [u64::MAX, 0, 0]) {
            // close(-1) is listed: the kernel's EBADF. 400 is no system call: the
            // default's EPERM, not the kernel's ENOSYS.
            Err(libc::EBADF) => match sys(400, [0; 3]) {
                Err(errno) => errno,
                Ok(_) => 100,
            },
            _ => 101,
        };
        assert_eq!(in_child(&program, refused)?, End::Code(libc::EPERM));
        Ok(())
    }
}
