//! Persisted container state, so that every `husk` command (a separate process) can find
//! and control a container that another one created.
//!
//! Layout under the state root (`--root`, default `/run/husk`):
//!
//! ```text
//! <root>/<id>/state.json   the ContainerState below (written whole, then renamed)
//! <root>/<id>/sandbox/     the backend's directory: agent socket or vsock socket, logs
//! <root>/<id>/husk.log     the sandbox process's own log, when no --log is given
//! ```
//!
//! The directory's creation is what claims an id (so a duplicate id fails at once), and
//! an exclusive `flock` on the directory serialises the commands that read, act on and
//! write one container's state.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::hypervisor::{AgentAddress, Kind};

/// runc's default, under husk's name.
pub const DEFAULT_ROOT: &str = "/run/husk";

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum StateError {
    /// container {0} does not exist
    NotFound(String),
    /// container {0} already exists
    AlreadyExists(String),
    /// container id {0:?} is not valid: use letters, digits, '_', '-' and '.' (not first)
    BadId(String),
    /// state of container {id} in {path}: {source}
    Io {
        id: String,
        path: PathBuf,
        source: io::Error,
    },
    /// state of container {id} is damaged ({message}); `husk delete --force {id}` removes it
    Damaged { id: String, message: String },
}

/// The OCI runtime spec's container states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

/// A host process, told apart from a later process that reuses its pid by its start
/// time (field 22 of `/proc/PID/stat`, in clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcessRef {
    pub fn of(pid: i32) -> Option<ProcessRef> {
        process_start_time(pid).map(|start_time| ProcessRef { pid, start_time })
    }

    pub fn current() -> Option<ProcessRef> {
        ProcessRef::of(std::process::id() as i32)
    }

    /// Whether this very process still runs (a zombie counts as gone).
    pub fn is_alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start_time)
    }
}

fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // `rest` starts at field 3 (state); start time is field 22.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

/// What husk remembers about a container between commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub status: Status,
    /// The bundle directory (for an image or a bare rootfs: the state directory).
    pub bundle: PathBuf,
    /// The root file system as given (bundle rootfs, image, or directory).
    pub rootfs: PathBuf,
    /// RFC 3339, UTC.
    pub created: String,
    pub annotations: BTreeMap<String, String>,
    pub hypervisor: Kind,
    /// The husk process that holds the sandbox (the VMM, or the host agent's parent).
    pub sandbox_process: Option<ProcessRef>,
    /// The sandbox's host processes besides it (the host backend's agent).
    pub backend_pids: Vec<i32>,
    /// Where the sandbox's agent listens.
    pub agent: Option<AgentAddress>,
    /// The container process's pid as the agent sees it.
    pub agent_pid: Option<i32>,
    /// The shell-style exit code once stopped (128 + n for signal n).
    pub exit_code: Option<i32>,
}

impl ContainerState {
    /// The status to report: a container whose sandbox process is gone has stopped,
    /// whatever the file says (its husk was killed).
    pub fn effective_status(&self) -> Status {
        match self.status {
            Status::Stopped => Status::Stopped,
            _ if self.sandbox_process.is_some_and(|p| !p.is_alive()) => Status::Stopped,
            Status::Creating if self.sandbox_process.is_none() => {
                // Claimed by a command that died before it started the sandbox.
                Status::Stopped
            }
            status => status,
        }
    }
}

/// The state root.
#[derive(Debug, Clone)]
pub struct StateRoot {
    root: PathBuf,
}

/// An exclusive hold on one container's state; released on drop.
pub struct StateLock {
    _dir: File,
}

impl StateRoot {
    pub fn new(root: impl Into<PathBuf>) -> StateRoot {
        StateRoot { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn io(&self, id: &str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
        let (id, path) = (id.to_owned(), path.to_owned());
        move |source| StateError::Io { id, path, source }
    }

    /// Claims `id`: creates its directory, failing if it exists. Returns the directory
    /// locked.
    pub fn claim(&self, id: &str) -> Result<StateLock, StateError> {
        check_id(id)?;
        std::fs::create_dir_all(&self.root).map_err(self.io(id, &self.root))?;
        let dir = self.dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => self.lock(id),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(StateError::AlreadyExists(id.to_owned()))
            }
            Err(e) => Err(self.io(id, &dir)(e)),
        }
    }

    /// Waits for the exclusive hold on an existing container's state.
    pub fn lock(&self, id: &str) -> Result<StateLock, StateError> {
        check_id(id)?;
        let dir = self.dir(id);
        let file = File::open(&dir).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StateError::NotFound(id.to_owned()),
            _ => self.io(id, &dir)(e),
        })?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| self.io(id, &dir)(e.into()))?;
        Ok(StateLock { _dir: file })
    }

    pub fn load(&self, id: &str) -> Result<ContainerState, StateError> {
        check_id(id)?;
        let path = self.dir(id).join("state.json");
        let text = std::fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound if !self.dir(id).exists() => {
                StateError::NotFound(id.to_owned())
            }
            io::ErrorKind::NotFound => StateError::Damaged {
                id: id.to_owned(),
                message: "no state.json".into(),
            },
            _ => self.io(id, &path)(e),
        })?;
        serde_json::from_slice(&text).map_err(|e| StateError::Damaged {
            id: id.to_owned(),
            message: e.to_string(),
        })
    }

    /// Writes the state whole: readers see the old or the new file, never half of one.
    pub fn save(&self, state: &ContainerState) -> Result<(), StateError> {
        let dir = self.dir(&state.id);
        let path = dir.join("state.json");
        let temporary = dir.join("state.json.new");
        let json = serde_json::to_vec_pretty(state).map_err(|e| StateError::Damaged {
            id: state.id.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&temporary, json)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(self.io(&state.id, &path))
    }

    /// Removes a container's directory and everything in it. Mounts left in it (by a
    /// sandbox process that was killed) are detached first: removing files must never
    /// reach through a mount into what it shows (a shared root file system).
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        check_id(id)?;
        let dir = self.dir(id);
        detach_mounts_below(&dir);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(id, &dir)(e)),
        }
    }

    /// Removes a container's state but keeps its directory, which still holds what others
    /// use (a pod's sandbox lives in its first container's directory); `remove` takes
    /// the directory later.
    pub fn forget(&self, id: &str) -> Result<(), StateError> {
        check_id(id)?;
        let path = self.dir(id).join("state.json");
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(id, &path)(e)),
        }
    }

    /// The ids of every container, sorted.
    pub fn ids(&self) -> Result<Vec<String>, StateError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("*", &self.root)(e)),
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| check_id(id).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

/// Ids become directory names and agent-side names: plain names only.
pub fn check_id(id: &str) -> Result<(), StateError> {
    let plain = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if plain {
        Ok(())
    } else {
        Err(StateError::BadId(id.to_owned()))
    }
}

/// Detaches every mount at or below `dir`, deepest first.
fn detach_mounts_below(dir: &Path) {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    // Field 5 is the mount point, with spaces and the like escaped as octal.
    let mut points: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_point)
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in points {
        if let Err(e) = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH) {
            log::warn!("detaching {}: {e}", point.display());
        }
    }
}

/// A mount point as /proc/self/mountinfo writes it (`\040` for a space, and so on).
fn unescape_mount_point(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Now, as RFC 3339 in UTC with nanoseconds (what runc's state shows).
pub fn now_rfc3339() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(since.as_secs(), since.subsec_nanos())
}

fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(
            unescape_mount_point("/run/a\\040b\\134c"),
            PathBuf::from("/run/a b\\c")
        );
        assert_eq!(unescape_mount_point("/x\\04"), PathBuf::from("/x\\04"));
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_795_935_599, 0), "2026-11-29T06:59:59.000000000Z");
    }

    #[test]
    fn ids_are_plain_names() {
        for good in ["a", "web-1", "pod_2.c", "A9"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", ".x", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessRef::current().unwrap();
        assert!(me.is_alive());
        let other = ProcessRef {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
    }
}
