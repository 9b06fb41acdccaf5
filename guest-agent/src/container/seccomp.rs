//! A container's OCI seccomp profile as a classic BPF program (x86_64).
//!
//! Semantics, as runc and crun give them: the first rule (in the profile's order) whose
//! syscall and argument conditions match decides the action; a syscall no rule matches
//! gets `defaultAction`. Syscall names this architecture does not have are skipped with
//! a log line (profiles list names for many kernels and architectures); architectures
//! other than x86_64 in `architectures` are ignored, and a process of another
//! architecture (a 32-bit syscall) is killed.
//!
//! The program, instruction by instruction: check the architecture; load the syscall
//! number and kill x32 calls; for each (rule, syscall) a block "number matches → every condition holds →
//! return the rule's action", whose failed tests jump past the block; return the
//! default. Conditions compare 64-bit arguments as two 32-bit halves (little endian:
//! the low half first in `seccomp_data.args[i]`).

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompOperator};
use seccompiler::{sock_filter, BpfProgram};

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum SeccompError {
    /// seccomp action {0:?} is not supported (SCMP_ACT_NOTIFY needs a listener, which husk does not provide)
    UnsupportedAction(LinuxSeccompAction),
    /// seccomp rule for {syscall}: argument index {index} is out of range (0-5)
    ArgIndex { syscall: String, index: usize },
    /// the seccomp profile is too large for one BPF program ({0} instructions, at most 4096)
    TooLarge(usize),
}

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGT_K: u16 = 0x25;
const BPF_JGE_K: u16 = 0x35;
const BPF_ALU_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const BPF_RET_K: u16 = 0x06;

/// `AUDIT_ARCH_X86_64`.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const ARGS_OFFSET: u32 = 16;
/// `__X32_SYSCALL_BIT`.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Return values (linux/seccomp.h).
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

/// The kernel's limit on a filter's length.
const MAX_INSNS: usize = 4096;

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

/// The seccomp return value of an action.
fn action_value(action: LinuxSeccompAction, errno: Option<u32>) -> Result<u32, SeccompError> {
    let data = |default: u32| errno.unwrap_or(default) & 0xffff;
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
        LinuxSeccompAction::ScmpActErrno => RET_ERRNO | data(libc::EPERM as u32),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActTrace => RET_TRACE | data(0),
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        other @ LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::UnsupportedAction(other))
        }
    })
}

/// Instructions that fall through when `arg` satisfies the condition, and otherwise
/// jump to the instruction `fail` places after their own end (A is clobbered).
fn condition(arg: &LinuxSeccompArg, fail: usize) -> Vec<sock_filter> {
    let offset = ARGS_OFFSET + 8 * arg.index() as u32;
    let (lo_at, hi_at) = (offset, offset + 4);
    let value = arg.value();
    let (lo, hi) = (value as u32, (value >> 32) as u32);
    // `fail` counts from the end of the returned block; each jump's offset is the
    // number of instructions after it to skip, so it is `fail` plus the instructions
    // that follow it in the block.
    let to_fail = |after: usize| u8::try_from(fail + after).unwrap_or(u8::MAX);
    match arg.op() {
        LinuxSeccompOperator::ScmpCmpEq => vec![
            stmt(BPF_LD_W_ABS, hi_at),
            jump(BPF_JEQ_K, hi, 0, to_fail(2)),
            stmt(BPF_LD_W_ABS, lo_at),
            jump(BPF_JEQ_K, lo, 0, to_fail(0)),
        ],
        LinuxSeccompOperator::ScmpCmpNe => vec![
            stmt(BPF_LD_W_ABS, hi_at),
            // Different high halves: the condition holds, skip the low check.
            jump(BPF_JEQ_K, hi, 0, 2),
            stmt(BPF_LD_W_ABS, lo_at),
            jump(BPF_JEQ_K, lo, to_fail(0), 0),
        ],
        LinuxSeccompOperator::ScmpCmpGt | LinuxSeccompOperator::ScmpCmpGe => {
            let low_jump = if arg.op() == LinuxSeccompOperator::ScmpCmpGt {
                BPF_JGT_K
            } else {
                BPF_JGE_K
            };
            vec![
                stmt(BPF_LD_W_ABS, hi_at),
                // hi > v.hi: holds; hi == v.hi: decide on the low half; else fails.
                jump(BPF_JGT_K, hi, 3, 0),
                jump(BPF_JEQ_K, hi, 0, to_fail(2)),
                stmt(BPF_LD_W_ABS, lo_at),
                jump(low_jump, lo, 0, to_fail(0)),
            ]
        }
        LinuxSeccompOperator::ScmpCmpLt | LinuxSeccompOperator::ScmpCmpLe => {
            // a < v is !(a >= v); a <= v is !(a > v).
            let low_jump = if arg.op() == LinuxSeccompOperator::ScmpCmpLt {
                BPF_JGE_K
            } else {
                BPF_JGT_K
            };
            vec![
                stmt(BPF_LD_W_ABS, hi_at),
                // hi > v.hi: fails; hi == v.hi: decide on the low half; else holds.
                jump(BPF_JGT_K, hi, to_fail(3), 0),
                jump(BPF_JEQ_K, hi, 0, 2),
                stmt(BPF_LD_W_ABS, lo_at),
                jump(low_jump, lo, to_fail(0), 0),
            ]
        }
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            // OCI: `value` is the mask, `valueTwo` the value to compare with.
            let want = arg.value_two().unwrap_or(0);
            let (want_lo, want_hi) = (want as u32, (want >> 32) as u32);
            vec![
                stmt(BPF_LD_W_ABS, hi_at),
                stmt(BPF_ALU_AND_K, hi),
                jump(BPF_JEQ_K, want_hi, 0, to_fail(3)),
                stmt(BPF_LD_W_ABS, lo_at),
                stmt(BPF_ALU_AND_K, lo),
                jump(BPF_JEQ_K, want_lo, 0, to_fail(0)),
            ]
        }
    }
}

/// Compiles `profile` into a BPF program for `seccompiler::apply_filter` (or the
/// `seccomp(2)` call that installs it without no_new_privs).
pub fn compile(profile: &LinuxSeccomp) -> Result<BpfProgram, SeccompError> {
    let default = action_value(profile.default_action(), profile.default_errno_ret())?;
    let mut program = vec![
        stmt(BPF_LD_W_ABS, ARCH_OFFSET),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, NR_OFFSET),
        // x32 syscalls (bit 30 set) would reach other numbers than the rules name.
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
    ];
    for rule in profile.syscalls().iter().flatten() {
        let action = action_value(rule.action(), rule.errno_ret())?;
        let args = rule.args().as_deref().unwrap_or_default();
        for name in rule.names() {
            let Ok(sysno) = name.parse::<syscalls::Sysno>() else {
                log::info!("seccomp: skipping syscall '{name}', unknown on x86_64");
                continue;
            };
            if let Some(arg) = args.iter().find(|a| a.index() > 5) {
                return Err(SeccompError::ArgIndex {
                    syscall: name.clone(),
                    index: arg.index(),
                });
            }
            program.extend(rule_block(sysno.id() as u32, args, action));
        }
    }
    program.push(stmt(BPF_RET_K, default));
    if program.len() > MAX_INSNS {
        return Err(SeccompError::TooLarge(program.len()));
    }
    Ok(program)
}

/// `nr == number && every condition → return action`; on any failure A holds the
/// syscall number again at the block's end.
fn rule_block(number: u32, args: &[LinuxSeccompArg], action: u32) -> Vec<sock_filter> {
    // Built back to front, so each condition knows how far its end is from the reload.
    let mut tail = vec![stmt(BPF_RET_K, action)];
    let reload_needed = !args.is_empty();
    for arg in args.iter().rev() {
        // From the end of this condition, skip the rest of the block (`tail`) to land
        // on the reload.
        let mut block = condition(arg, tail.len());
        block.extend(tail);
        tail = block;
    }
    let mut block = Vec::with_capacity(tail.len() + 2);
    let skip = tail.len() + usize::from(reload_needed);
    block.push(jump(
        BPF_JEQ_K,
        number,
        0,
        // A mismatch jumps over the conditions, the return and the reload (A still
        // holds the number).
        u8::try_from(skip).unwrap_or(u8::MAX),
    ));
    block.extend(tail);
    if reload_needed {
        block.push(stmt(BPF_LD_W_ABS, NR_OFFSET));
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSyscallBuilder};

    /// Runs `f` in a forked child with `program` installed; returns the child's exit code.
    fn in_child_with(program: &BpfProgram, f: fn() -> i32) -> i32 {
        // SAFETY: the child only installs the filter, makes raw syscalls and _exits; it
        // touches no lock another thread of the test harness could hold.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = match seccompiler::apply_filter(program) {
                Ok(()) => f(),
                Err(_) => 100,
            };
            // SAFETY: _exit ends the child at once, running nothing of the parent's.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is writable.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status),
            "the child died: status {status:#x}"
        );
        libc::WEXITSTATUS(status)
    }

    fn errno_of(rc: libc::c_long) -> i32 {
        if rc == -1 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    fn profile(
        default: LinuxSeccompAction,
        rules: Vec<oci_spec::runtime::LinuxSyscall>,
    ) -> LinuxSeccomp {
        LinuxSeccompBuilder::default()
            .default_action(default)
            .syscalls(rules)
            .build()
            .expect("profile")
    }

    fn rule(
        names: &[&str],
        action: LinuxSeccompAction,
        errno: Option<u32>,
        args: Vec<LinuxSeccompArg>,
    ) -> oci_spec::runtime::LinuxSyscall {
        let mut b = LinuxSyscallBuilder::default()
            .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .action(action)
            .args(args);
        if let Some(e) = errno {
            b = b.errno_ret(e);
        }
        b.build().expect("rule")
    }

    fn arg(
        index: usize,
        op: LinuxSeccompOperator,
        value: u64,
        value_two: Option<u64>,
    ) -> LinuxSeccompArg {
        let mut b = LinuxSeccompArgBuilder::default()
            .index(index)
            .op(op)
            .value(value);
        if let Some(v) = value_two {
            b = b.value_two(v);
        }
        b.build().expect("arg")
    }

    #[test]
    fn a_rule_action_beats_the_default_and_names_unknown_here_are_skipped() {
        let p = profile(
            LinuxSeccompAction::ScmpActAllow,
            vec![rule(
                &["no_such_syscall", "getppid"],
                LinuxSeccompAction::ScmpActErrno,
                Some(38),
                vec![],
            )],
        );
        let program = compile(&p).expect("compile");
        let code = in_child_with(&program, || {
            // SAFETY: a raw getppid/getpid: no arguments, no memory.
            let ppid = errno_of(unsafe { libc::syscall(libc::SYS_getppid) });
            let pid = errno_of(unsafe { libc::syscall(libc::SYS_getpid) });
            if ppid == 38 && pid == 0 {
                0
            } else {
                1
            }
        });
        assert_eq!(code, 0, "getppid must fail with errno 38, getpid must work");
    }

    #[test]
    fn a_default_errno_with_an_allow_list() {
        let allow: Vec<&str> = vec![
            "exit_group",
            "exit",
            "getpid",
            "rt_sigreturn",
            "brk",
            "mmap",
            "munmap",
        ];
        let p = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .default_errno_ret(13u32)
            .syscalls(vec![rule(
                &allow,
                LinuxSeccompAction::ScmpActAllow,
                None,
                vec![],
            )])
            .build()
            .expect("profile");
        let program = compile(&p).expect("compile");
        let code = in_child_with(&program, || {
            // SAFETY: raw syscalls without pointers.
            let pid = errno_of(unsafe { libc::syscall(libc::SYS_getpid) });
            let ppid = errno_of(unsafe { libc::syscall(libc::SYS_getppid) });
            if pid == 0 && ppid == 13 {
                0
            } else {
                1
            }
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn argument_conditions() {
        // personality(0xffffffff) queries; allowed only with arg0 == that, or arg0 == 0
        // via a masked compare; every other value gets EPERM.
        let p = profile(
            LinuxSeccompAction::ScmpActAllow,
            vec![
                rule(
                    &["personality"],
                    LinuxSeccompAction::ScmpActAllow,
                    None,
                    vec![arg(0, LinuxSeccompOperator::ScmpCmpEq, 0xffff_ffff, None)],
                ),
                rule(
                    &["personality"],
                    LinuxSeccompAction::ScmpActAllow,
                    None,
                    vec![arg(0, LinuxSeccompOperator::ScmpCmpMaskedEq, 0xff, Some(0))],
                ),
                rule(
                    &["personality"],
                    LinuxSeccompAction::ScmpActErrno,
                    Some(1),
                    vec![],
                ),
                // getpriority(which, who): refused when `which` > 5 or `who` >= 1000.
                rule(
                    &["getpriority"],
                    LinuxSeccompAction::ScmpActErrno,
                    Some(22),
                    vec![arg(0, LinuxSeccompOperator::ScmpCmpGt, 5, None)],
                ),
                rule(
                    &["getpriority"],
                    LinuxSeccompAction::ScmpActErrno,
                    Some(33),
                    vec![arg(1, LinuxSeccompOperator::ScmpCmpGe, 1000, None)],
                ),
                rule(
                    &["getpriority"],
                    LinuxSeccompAction::ScmpActErrno,
                    Some(34),
                    vec![
                        arg(1, LinuxSeccompOperator::ScmpCmpNe, 0, None),
                        arg(1, LinuxSeccompOperator::ScmpCmpLt, 1000, None),
                    ],
                ),
            ],
        );
        let program = compile(&p).expect("compile");
        let code = in_child_with(&program, || {
            // SAFETY: personality/getpriority with plain integers; no memory involved.
            let query = errno_of(unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu64) });
            let zero = errno_of(unsafe { libc::syscall(libc::SYS_personality, 0x100u64) });
            let other = errno_of(unsafe { libc::syscall(libc::SYS_personality, 0x1u64) });
            let big_which = errno_of(unsafe { libc::syscall(libc::SYS_getpriority, 6u64, 0u64) });
            let big_who = errno_of(unsafe { libc::syscall(libc::SYS_getpriority, 0u64, 5000u64) });
            let small_who = errno_of(unsafe { libc::syscall(libc::SYS_getpriority, 0u64, 7u64) });
            let fine = errno_of(unsafe { libc::syscall(libc::SYS_getpriority, 0u64, 0u64) });
            let high_half =
                errno_of(unsafe { libc::syscall(libc::SYS_getpriority, 0u64, 1u64 << 33) });
            let mut bad = 0;
            if query != 0 {
                bad |= 1
            }
            if zero != 0 {
                bad |= 2
            }
            if other != 1 {
                bad |= 4
            }
            if big_which != 22 {
                bad |= 8
            }
            if big_who != 33 {
                bad |= 16
            }
            if small_who != 34 {
                bad |= 32
            }
            if fine != 0 {
                bad |= 64
            }
            if high_half != 33 {
                bad |= 128
            }
            bad
        });
        assert_eq!(code, 0, "bit mask of the failed checks: {code:#b}");
    }

    #[test]
    fn notify_and_bad_indexes_are_errors() {
        let p = profile(LinuxSeccompAction::ScmpActNotify, vec![]);
        assert!(matches!(
            compile(&p),
            Err(SeccompError::UnsupportedAction(_))
        ));
        let p = profile(
            LinuxSeccompAction::ScmpActAllow,
            vec![rule(
                &["read"],
                LinuxSeccompAction::ScmpActErrno,
                None,
                vec![arg(6, LinuxSeccompOperator::ScmpCmpEq, 0, None)],
            )],
        );
        assert!(matches!(
            compile(&p),
            Err(SeccompError::ArgIndex { index: 6, .. })
        ));
        // An empty profile is the default action for everything.
        let empty = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .build()
            .expect("profile");
        assert_eq!(compile(&empty).expect("compile").len(), 7);
    }
}
