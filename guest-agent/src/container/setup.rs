//! The container side of a spawn: what the forked child does, in its new namespaces,
//! before it `execve`s the container's program.
//!
//! `container-init` child (PID 1 of the new PID namespace):
//! 1. `setsid()` (and `TIOCSCTTY` on fd 0 with a terminal), umask 0 for the setup,
//!    `oom_score_adj`;
//! 2. the mount tree (`mounts.rs`, `devices.rs`): `/` private (or slave), the rootfs bound
//!    onto itself, `/dev` (unless the spec binds one), the spec's mounts in order, the
//!    default nodes and the spec's devices, `pivot_root`, the rootfs propagation,
//!    `linux.sysctl`, read-only paths, masked paths, a read-only root;
//! 3. hostname and domain name;
//! 4. the process settings shared with `container-exec` ([`prepare_process`]): rlimits,
//!    cwd (created first if missing, for init), the bounding set, groups/gid/uid, the
//!    capability sets and the ambient set, umask, `no_new_privs`, the environment, the
//!    executable found through `PATH`;
//! 5. signal dispositions reset and every signal unblocked, `{"ready": true}` on the sync
//!    socket, then (init only) a wait for `start`;
//! 6. the seccomp filter, then `execve`.
//!
//! Seccomp comes last, as late as the kernel allows: with `noNewPrivileges` (or when the
//! process keeps `CAP_SYS_ADMIN`) right before `execve`; otherwise, since installing a
//! filter without `no_new_privs` needs `CAP_SYS_ADMIN`, just before the capabilities are
//! dropped (what runc does), and without setting `no_new_privs` behind the spec's back
//! (seccompiler's `apply_filter` always sets it, so that case installs the filter itself).
//!
//! Failures come back as a [`SetupError`] whose message names the spec field or path;
//! the caller sends it on the sync socket and exits 127.
//!
//! Not applied (accepted and ignored): `hooks` (host programs, meaningless in the guest),
//! `process.apparmorProfile`, `selinuxLabel`, `ioPriority`, `scheduler`,
//! `execCPUAffinity`, `consoleSize` (the agent sizes the pty), `linux.personality`,
//! `intelRdt`, `memoryPolicy`, `timeOffsets`, `mountLabel`, and `linux.resources` here
//! (the cgroup, `cgroups.rs`, carries them). Refused by `validate`: a user namespace.

use std::convert::Infallible;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxSeccomp, PosixRlimitType, Process, Spec};
use rustix::fs::{Access, FileType, Mode};
use rustix::io::Errno;
use rustix::process::{Resource, Rlimit};
use rustix::thread::CapabilitySet;

use super::caps::{self, CapsError};
use super::devices::{self, DevPlan, DeviceError};
use super::mounts::{self, MountError};
use super::spawn::SyncSocket;
use super::user::{self, UserError};
use super::{seccomp, SpecError};

/// `PATH` when the process's environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum SetupError {
    /// {0}
    Spec(#[from] SpecError),
    /// {0}
    Mount(#[from] MountError),
    /// {0}
    Device(#[from] DeviceError),
    /// {0}
    Caps(#[from] CapsError),
    /// {0}
    User(#[from] UserError),
    /// setsid: {0}
    Setsid(Errno),
    /// process.terminal: making fd 0 the controlling terminal (TIOCSCTTY): {0}
    Ctty(Errno),
    /// process.oomScoreAdj {value}: {source}
    OomScore { value: i32, source: std::io::Error },
    /// process.rlimits {kind}: {source}
    Rlimit { kind: String, source: Errno },
    /// linux.sysctl {key}: {why}
    Sysctl { key: String, why: String },
    /// hostname {name:?}: {source}
    Hostname { name: String, source: Errno },
    /// domainname {name:?}: {source}
    Domainname { name: String, source: Errno },
    /// process.cwd {path}: {source}
    Cwd { path: String, source: Errno },
    /// process.noNewPrivileges: {0}
    NoNewPrivs(Errno),
    /// executable file not found: {name} (process.args[0], looked up in PATH={path})
    NotFoundInPath { name: String, path: String },
    /// executable file not found: {0} (process.args[0])
    NotFound(String),
    /// executable file not executable: {0} (process.args[0]: not a regular file with execute permission for the process's user)
    NotExecutable(String),
    /// linux.seccomp: {0}
    Seccomp(String),
    /// linux.seccomp: installing the filter: {0}
    InstallSeccomp(std::io::Error),
    /// waiting for the start signal: {0}
    Start(std::io::Error),
    /// sending the ready report: {0}
    Ready(std::io::Error),
    /// execve {path}: {source}
    Exec {
        path: String,
        source: std::io::Error,
    },
}

/// The `container-init` child. Only returns on failure.
pub fn container_init(spec: &Spec, rootfs: &Path, terminal: bool, sync: &SyncSocket) -> SetupError {
    match init(spec, rootfs, terminal, sync) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// The `container-exec` child, already in the container's namespaces and cgroup. Only
/// returns on failure.
pub fn container_exec(
    process: &Process,
    spec: &Spec,
    terminal: bool,
    sync: &SyncSocket,
) -> SetupError {
    let run = || -> Result<Infallible, SetupError> {
        session(terminal)?;
        rustix::process::umask(Mode::empty());
        oom_score_adj(process)?;
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
        let prepared = prepare_process(process, seccomp, caps::supported())?;
        finish(prepared, sync, false)
    };
    match run() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn init(
    spec: &Spec,
    rootfs: &Path,
    terminal: bool,
    sync: &SyncSocket,
) -> Result<Infallible, SetupError> {
    let process = spec.process().as_ref().ok_or(SpecError::NoProcess)?;
    session(terminal)?;
    // Modes in the setup are exact; the process's own umask comes later.
    rustix::process::umask(Mode::empty());
    oom_score_adj(process)?;
    let supported = caps::supported();

    let linux = spec.linux().as_ref();
    let propagation = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        None | Some("") => None,
        Some(value) => Some(
            mounts::parse_propagation(value)
                .ok_or_else(|| SpecError::Propagation(value.to_owned()))?,
        ),
    };
    let root = mounts::prepare_rootfs(rootfs, propagation)?;
    let spec_mounts = spec.mounts().as_deref().unwrap_or_default();
    let dev_plan = DevPlan::new(spec_mounts);
    devices::mount_dev(root.as_fd(), &dev_plan)?;
    mounts::mount_all(root.as_fd(), spec_mounts)?;
    let spec_devices = linux
        .and_then(|l| l.devices().as_deref())
        .unwrap_or_default();
    devices::populate(root.as_fd(), &dev_plan, spec_devices)?;
    // A missing cwd is created (as runc does); if that fails, the chdir later says why.
    if !process.cwd().as_os_str().is_empty() {
        let _ = mounts::create_in_root(root.as_fd(), process.cwd(), mounts::Kind::Dir);
    }
    mounts::pivot_root(root)?;
    if let Some(propagation) = propagation {
        mounts::set_root_propagation(propagation)?;
    }

    if let Some(linux) = linux {
        for (key, value) in linux.sysctl().iter().flatten() {
            sysctl(key, value)?;
        }
        mounts::readonly_paths(linux.readonly_paths().as_deref().unwrap_or_default())?;
        mounts::mask_paths(linux.masked_paths().as_deref().unwrap_or_default())?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        mounts::readonly_root()?;
    }
    if let Some(name) = spec.hostname().as_ref().filter(|n| !n.is_empty()) {
        rustix::system::sethostname(name.as_bytes()).map_err(|source| SetupError::Hostname {
            name: name.clone(),
            source,
        })?;
    }
    if let Some(name) = spec.domainname().as_ref().filter(|n| !n.is_empty()) {
        rustix::system::setdomainname(name.as_bytes()).map_err(|source| {
            SetupError::Domainname {
                name: name.clone(),
                source,
            }
        })?;
    }

    let seccomp = linux.and_then(|l| l.seccomp().as_ref());
    let prepared = prepare_process(process, seccomp, supported)?;
    finish(prepared, sync, true)
}

/// A new session; with a terminal, fd 0 (the pty's slave) becomes its controlling tty.
fn session(terminal: bool) -> Result<(), SetupError> {
    rustix::process::setsid().map_err(SetupError::Setsid)?;
    if terminal {
        rustix::process::ioctl_tiocsctty(std::io::stdin().as_fd()).map_err(SetupError::Ctty)?;
    }
    Ok(())
}

fn oom_score_adj(process: &Process) -> Result<(), SetupError> {
    if let Some(value) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", value.to_string())
            .map_err(|source| SetupError::OomScore { value, source })?;
    }
    Ok(())
}

/// Writes one `linux.sysctl` entry (`net.ipv4.ip_forward` → `/proc/sys/net/ipv4/ip_forward`;
/// a key with slashes is taken as a path already).
fn sysctl(key: &str, value: &str) -> Result<(), SetupError> {
    let relative = if key.contains('/') {
        key.to_owned()
    } else {
        key.replace('.', "/")
    };
    if relative.split('/').any(|c| c == ".." || c.is_empty()) {
        return Err(SetupError::Sysctl {
            key: key.to_owned(),
            why: "not a sysctl name".to_owned(),
        });
    }
    let path = Path::new("/proc/sys").join(relative);
    std::fs::write(&path, value).map_err(|e| SetupError::Sysctl {
        key: key.to_owned(),
        why: format!("writing {}: {e}", path.display()),
    })
}

/// Everything the last steps need, computed while errors can still be reported cleanly.
pub struct Prepared {
    exe: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// A filter still to install right before `execve`.
    filter: Option<seccompiler::BpfProgram>,
    no_new_privs: bool,
}

/// The process settings, in the order the kernel allows (see the module docs).
pub fn prepare_process(
    process: &Process,
    seccomp_profile: Option<&LinuxSeccomp>,
    supported: CapabilitySet,
) -> Result<Prepared, SetupError> {
    super::validate_process(process)?;
    for rlimit in process.rlimits().iter().flatten() {
        set_rlimit(rlimit.typ(), rlimit.soft(), rlimit.hard())?;
    }
    let no_new_privs = process.no_new_privileges().unwrap_or(false);
    let wanted = caps::Wanted::new(process.capabilities().as_ref(), supported);
    let mut filter = match seccomp_profile {
        Some(profile) => {
            let program =
                seccomp::compile(profile).map_err(|e| SetupError::Seccomp(e.to_string()))?;
            (!program.is_empty()).then_some(program)
        }
        None => None,
    };
    if !no_new_privs && !wanted.effective.contains(CapabilitySet::SYS_ADMIN) {
        // Without no_new_privs only CAP_SYS_ADMIN may install a filter: now or never.
        if let Some(program) = filter.take() {
            install_filter(&program, false)?;
        }
    }

    let cwd = process.cwd();
    let cwd = if cwd.as_os_str().is_empty() {
        Path::new("/")
    } else {
        cwd.as_path()
    };
    // As root first, so a cwd the user could not enter still works (as with runc); if
    // that fails, again as the user, whose error counts.
    let entered = rustix::process::chdir(cwd).is_ok();

    caps::drop_bounding(wanted.bounding, supported)?;
    let process_user = process.user();
    user::switch(process_user)?;
    caps::set_sets(&wanted)?;
    caps::raise_ambient(&wanted)?;
    rustix::process::umask(user::umask(process_user));

    if !entered {
        rustix::process::chdir(cwd).map_err(|source| SetupError::Cwd {
            path: cwd.display().to_string(),
            source,
        })?;
    }
    if no_new_privs {
        rustix::thread::set_no_new_privs(true).map_err(SetupError::NoNewPrivs)?;
    }

    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user::home(process_user.uid())));
    }
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let args = process.args().as_deref().unwrap_or_default();
    let arg0 = args.first().ok_or(SpecError::NoArgs)?;
    let exe = find_executable(arg0, path_var)?;

    // validate_process checked args and env for NUL bytes.
    let cstring = |s: &[u8]| CString::new(s).map_err(|_| SpecError::NoArgs);
    let argv = args
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|e| cstring(e.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let exe = cstring(exe.as_os_str().as_bytes())?;
    Ok(Prepared {
        exe,
        argv,
        envp,
        filter,
        no_new_privs,
    })
}

fn set_rlimit(kind: PosixRlimitType, soft: u64, hard: u64) -> Result<(), SetupError> {
    let resource = match kind {
        PosixRlimitType::RlimitCpu => Resource::Cpu,
        PosixRlimitType::RlimitFsize => Resource::Fsize,
        PosixRlimitType::RlimitData => Resource::Data,
        PosixRlimitType::RlimitStack => Resource::Stack,
        PosixRlimitType::RlimitCore => Resource::Core,
        PosixRlimitType::RlimitRss => Resource::Rss,
        PosixRlimitType::RlimitNproc => Resource::Nproc,
        PosixRlimitType::RlimitNofile => Resource::Nofile,
        PosixRlimitType::RlimitMemlock => Resource::Memlock,
        PosixRlimitType::RlimitAs => Resource::As,
        PosixRlimitType::RlimitLocks => Resource::Locks,
        PosixRlimitType::RlimitSigpending => Resource::Sigpending,
        PosixRlimitType::RlimitMsgqueue => Resource::Msgqueue,
        PosixRlimitType::RlimitNice => Resource::Nice,
        PosixRlimitType::RlimitRtprio => Resource::Rtprio,
        PosixRlimitType::RlimitRttime => Resource::Rttime,
    };
    let limit = |v: u64| (v != u64::MAX).then_some(v);
    rustix::process::setrlimit(
        resource,
        Rlimit {
            current: limit(soft),
            maximum: limit(hard),
        },
    )
    .map_err(|source| SetupError::Rlimit {
        kind: kind.to_string(),
        source,
    })
}

/// Finds the program the way `execvp` would, in the process's `PATH` (not the agent's):
/// a name with a slash is taken as a path; otherwise the first regular file with execute
/// permission (for the process's user: this runs after the uid switch) in a `PATH`
/// directory wins.
pub fn find_executable(name: &str, path_var: &str) -> Result<PathBuf, SetupError> {
    if name.contains('/') {
        let path = Path::new(name);
        return match executable(path) {
            Ok(()) => Ok(path.to_path_buf()),
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => Err(SetupError::NotFound(name.to_owned())),
            Err(_) => Err(SetupError::NotExecutable(name.to_owned())),
        };
    }
    let mut found_unusable = false;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        match executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => {}
            Err(_) => found_unusable = true,
        }
    }
    if found_unusable {
        return Err(SetupError::NotExecutable(name.to_owned()));
    }
    Err(SetupError::NotFoundInPath {
        name: name.to_owned(),
        path: path_var.to_owned(),
    })
}

/// Ok if `path` is a regular file the process may execute.
fn executable(path: &Path) -> Result<(), Errno> {
    let stat = rustix::fs::stat(path)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(Errno::ACCESS);
    }
    rustix::fs::access(path, Access::EXEC_OK)
}

/// Installs a seccomp filter on this (single-threaded) process. With `no_new_privs`
/// already set, through seccompiler; without, directly, so that the flag stays unset as
/// the spec asked (which needs `CAP_SYS_ADMIN`).
fn install_filter(program: &seccompiler::BpfProgram, no_new_privs: bool) -> Result<(), SetupError> {
    if no_new_privs {
        return seccompiler::apply_filter(program)
            .map_err(|e| SetupError::InstallSeccomp(std::io::Error::other(e.to_string())));
    }
    let len = u16::try_from(program.len()).map_err(|_| {
        SetupError::Seccomp(format!("{} BPF instructions is too many", program.len()))
    })?;
    let prog = libc::sock_fprog {
        len,
        // seccompiler's sock_filter is #[repr(C)] with the kernel's (and libc's) fields.
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `len` valid instructions that outlive the call; the kernel
    // copies them and keeps no pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0 as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(SetupError::InstallSeccomp(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Default dispositions for every signal and an empty mask: the agent blocks SIGCHLD and
/// Rust's runtime ignores SIGPIPE, and both would otherwise reach the container's program.
fn reset_signals() {
    // SAFETY: SIG_DFL is a valid disposition; signals the C library reserves refuse with
    // EINVAL, which is ignored. The process is single-threaded, nothing races.
    unsafe {
        for signal in 1..=libc::SIGRTMAX() {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        let mut empty = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// Reports ready, waits for `start` (init only), installs a late filter and execs.
fn finish(
    prepared: Prepared,
    sync: &SyncSocket,
    wait_start: bool,
) -> Result<Infallible, SetupError> {
    reset_signals();
    sync.ready().map_err(SetupError::Ready)?;
    if wait_start && !sync.wait_start().map_err(SetupError::Start)? {
        // The agent dropped the container before starting it.
        let _ = std::io::stderr().flush();
        std::process::exit(1);
    }
    if let Some(program) = &prepared.filter {
        install_filter(program, prepared.no_new_privs)?;
    }
    let mut argv: Vec<*const libc::c_char> = prepared.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = prepared.envp.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: every pointer is a NUL-terminated string owned by `prepared`, which outlives
    // the call; both arrays end with a null pointer. execve only returns on failure.
    unsafe { libc::execve(prepared.exe.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(SetupError::Exec {
        path: prepared.exe.to_string_lossy().into_owned(),
        source: std::io::Error::last_os_error(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filter goes in either way, and `no_new_privs` stays as the spec asked (in a
    /// forked child: a filter cannot be removed).
    #[test]
    fn filters_install_with_or_without_no_new_privs() -> Result<(), Box<dyn std::error::Error>> {
        assert!(
            rustix::process::geteuid().is_root(),
            "filters_install_with_or_without_no_new_privs: cannot run: needs root"
        );
        use seccompiler::{SeccompAction, SeccompFilter, TargetArch};
        let filter = SeccompFilter::new(
            [(libc::SYS_getppid, vec![])].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            TargetArch::x86_64,
        )?;
        let program: seccompiler::BpfProgram = filter.try_into()?;
        for no_new_privs in [false, true] {
            // SAFETY: the test process has other threads; the child only makes raw system
            // calls (nothing that could wait on a lock another thread held) and _exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let code = if install_filter(&program, no_new_privs).is_err() {
                    10
                } else {
                    // SAFETY: getppid takes no arguments.
                    let rc = unsafe { libc::syscall(libc::SYS_getppid) };
                    let blocked = rc == -1
                        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
                    let nnp = rustix::thread::no_new_privs().unwrap_or(false);
                    i32::from(blocked) | (i32::from(nnp) << 1)
                };
                // SAFETY: ends the forked child at once, without running the test's atexit.
                unsafe { libc::_exit(code) };
            }
            assert!(pid > 0, "fork failed");
            let waited = rustix::process::waitpid(
                rustix::process::Pid::from_raw(pid),
                rustix::process::WaitOptions::empty(),
            )?;
            let code = waited.and_then(|(_, status)| status.exit_status());
            assert_eq!(
                code,
                Some(1 | (i32::from(no_new_privs) << 1)),
                "no_new_privs {no_new_privs}"
            );
        }
        Ok(())
    }

    #[test]
    fn executable_lookup_uses_the_given_path() {
        let found = find_executable("sh", "/nonexistent:/bin");
        assert!(
            matches!(&found, Ok(p) if p == Path::new("/bin/sh")),
            "{found:?}"
        );
        let missing = find_executable("no-such-program-husk", "/bin:/usr/bin");
        assert_eq!(
            missing.map_err(|e| e.to_string()).err().as_deref(),
            Some(
                "executable file not found: no-such-program-husk (process.args[0], looked up in \
                 PATH=/bin:/usr/bin)"
            )
        );
        let dir = find_executable("/etc", DEFAULT_PATH);
        assert!(matches!(dir, Err(SetupError::NotExecutable(_))), "{dir:?}");
        let not_exec = find_executable("/etc/passwd", DEFAULT_PATH);
        assert!(
            matches!(not_exec, Err(SetupError::NotExecutable(_))),
            "{not_exec:?}"
        );
        let gone = find_executable("./nope/nope", DEFAULT_PATH);
        assert!(
            gone.as_ref().is_err_and(|e| e
                .to_string()
                .starts_with("executable file not found: ./nope/nope")),
            "{gone:?}"
        );
    }
}
