//! cgroup v2 for containers: a directory per container under the agent's root for them
//! (`/sys/fs/cgroup/husk/<id>` in the guest), the spec's `linux.resources` as cgroup
//! files, the container's processes, statistics and OOM kills, and its end.
//!
//! Controllers ("+cpuset +cpu +io +memory +pids", and hugetlb when the spec limits huge
//! pages; only those the parent offers in `cgroup.controllers`) are enabled in
//! `cgroup.subtree_control` of every directory from the top of the cgroup file system
//! down to the containers' root. cgroup v2 lets no process live in a cgroup whose
//! controllers are delegated to its children, except in the root cgroup: the agent stays
//! in the root (in the guest it is PID 1 there), containers live two levels down.
//!
//! What the OCI resources become (as runc and crun write them on cgroup v2):
//!
//! | spec | file |
//! |---|---|
//! | `memory.limit` | `memory.max` (-1: `max`) |
//! | `memory.reservation` | `memory.low` |
//! | `memory.swap` (memory + swap) | `memory.swap.max` = swap - limit (-1: `max`) |
//! | `cpu.shares` | `cpu.weight` = 1 + (shares - 2) * 9999 / 262142 |
//! | `cpu.quota`, `cpu.period` | `cpu.max` = "quota period" (no quota, or -1: `max`) |
//! | `cpu.burst`, `cpu.idle` | `cpu.max.burst`, `cpu.idle` |
//! | `cpu.cpus`, `cpu.mems` | `cpuset.cpus`, `cpuset.mems` |
//! | `pids.limit` | `pids.max` (0 or less: `max`) |
//! | `blockIO.weight`, `weightDevice` | `io.bfq.weight` (as is), else `io.weight` (10-1000 → 1-10000) |
//! | `blockIO.throttle*Device` | `io.max` (`rbps`, `wbps`, `riops`, `wiops`) |
//! | `hugepageLimits` | `hugetlb.<size>.max` |
//! | `unified` | the file it names, as given (last, so it can override the above) |
//!
//! A value of 0 means "not set" (as in runc). cgroup v1-only settings (`memory.kernel`,
//! `kernelTCP`, `swappiness`, `disableOOMKiller`, `cpu.realtime*`, `blockIO.leafWeight`,
//! `network`) and the device allow list (an eBPF program on v2; the sandbox VM only has
//! its own devices) are not applied, with a debug log line.
//!
//! The functions that read or write cgroup files take the directory, so that the tests
//! can point them at a fake cgroup in a temporary directory.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_protocol::ContainerStats;
use oci_spec::runtime::LinuxResources;

/// Where cgroup v2 is mounted.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// `CGROUP2_SUPER_MAGIC`.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
/// `CGROUP_SUPER_MAGIC` (a v1 hierarchy).
const CGROUP_SUPER_MAGIC: u64 = 0x0027_e0eb;
/// The controllers containers get (where the parent offers them).
const CONTROLLERS: [&str; 5] = ["cpuset", "cpu", "io", "memory", "pids"];
/// How long [`Cgroup::remove`] retries while the kernel still counts exiting processes.
const REMOVE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum CgroupError {
    /// cgroup v2 is not usable: {0}
    NotV2(String),
    /// container id {0:?}: not usable as a cgroup name
    BadId(String),
    /// creating the cgroup {path}: {source}
    Create { path: PathBuf, source: io::Error },
    /// the cgroup {0} already exists and has processes
    Exists(PathBuf),
    /// linux.resources.{field} {value}: {why}
    Resource {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    /// linux.resources.{field} {key:?}: not a cgroup file name
    FileName { field: &'static str, key: String },
    /// setting {file} to {value:?}: the cgroup {dir} has no such file (is the {controller} controller available?)
    Missing {
        dir: PathBuf,
        file: String,
        value: String,
        controller: String,
    },
    /// writing {value:?} to {path}: {source}
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    /// reading {path}: {source}
    Read { path: PathBuf, source: io::Error },
    /// killing process {pid} of the cgroup {path}: {source}
    Kill {
        pid: i32,
        path: PathBuf,
        source: io::Error,
    },
    /// removing the cgroup {path}: {source}
    Remove { path: PathBuf, source: io::Error },
}

/// A container's cgroup (a directory of a cgroup v2 file system).
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates the container's cgroup `root/id` (the agent passes `<v2_root>/husk` as
    /// `root`), with the controllers it needs enabled in the parents'
    /// `cgroup.subtree_control` (from the top of the cgroup file system down), and
    /// applies `resources`. An empty cgroup left by an earlier container of the same id
    /// is replaced; one with processes is an error.
    pub fn create(
        root: &Path,
        id: &str,
        resources: Option<&LinuxResources>,
    ) -> Result<Cgroup, CgroupError> {
        if id.is_empty() || id == "." || id == ".." || id.len() > 255 || id.contains(['/', '\0']) {
            return Err(CgroupError::BadId(id.to_owned()));
        }
        let mut wanted = CONTROLLERS.to_vec();
        let hugepages = resources.and_then(|r| r.hugepage_limits().as_ref());
        if hugepages.is_some_and(|h| !h.is_empty()) {
            wanted.push("hugetlb");
        }
        for dir in chain(root)? {
            create_dir(&dir)?;
            enable_controllers(&dir, &wanted);
        }
        let path = root.join(id);
        if path.is_dir() {
            let old = Cgroup { path: path.clone() };
            if !old.pids()?.is_empty() {
                return Err(CgroupError::Exists(path));
            }
            log::info!("replacing the empty cgroup {}", path.display());
            old.remove()?;
        }
        fs::create_dir(&path).map_err(|source| CgroupError::Create {
            path: path.clone(),
            source,
        })?;
        let cgroup = Cgroup { path };
        if let Some(resources) = resources {
            if let Err(e) = cgroup.apply(resources) {
                let _ = fs::remove_dir(&cgroup.path);
                return Err(e);
            }
        }
        Ok(cgroup)
    }

    /// Writes `resources` into the cgroup's files (see the module docs for the mapping).
    /// A setting whose file the cgroup lacks (its controller is not available) is an
    /// error naming it, except for "no limit" values, which are skipped.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        apply_settings(&self.path, &settings(resources)?)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The processes in the cgroup and the cgroups below it (`cgroup.procs`), sorted.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut pids = Vec::new();
        collect_pids(&self.path, &mut pids, true)?;
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Memory, CPU, pids and IO figures. A figure whose file is missing (its controller
    /// is not enabled) is `None`; a limit of "max" is `u64::MAX`. An error only if the
    /// cgroup itself is gone.
    pub fn stats(&self) -> Result<ContainerStats, CgroupError> {
        if let Err(source) = fs::metadata(&self.path) {
            return Err(CgroupError::Read {
                path: self.path.clone(),
                source,
            });
        }
        Ok(read_stats(&self.path))
    }

    /// How many times the kernel's OOM killer has killed a process of the cgroup
    /// (`memory.events` `oom_kill`, which counts the cgroups below too).
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let path = self.path.join("memory.events");
        let text =
            fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })?;
        let kills = flat_keyed(&text)
            .find(|(key, _)| *key == "oom_kill")
            .map_or(0, |(_, value)| value);
        Ok(kills)
    }

    /// SIGKILL to every process of the cgroup and those below: `cgroup.kill` where the
    /// kernel has it (5.14+, atomic), else each pid, with the cgroup frozen meanwhile (if
    /// it can be) so that nothing forks past the kill. Does not wait for the processes
    /// to die.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() {
            return write_file(&self.path, "cgroup.kill", "1");
        }
        self.kill_frozen()
    }

    /// Without `cgroup.kill`: SIGKILL to each pid, with the cgroup frozen meanwhile (if it
    /// can be: `cgroup.freeze`, 5.2+); a killed process still dies while frozen.
    fn kill_frozen(&self) -> Result<(), CgroupError> {
        let freeze = self.path.join("cgroup.freeze");
        let frozen = freeze.exists() && write_file(&self.path, "cgroup.freeze", "1").is_ok();
        let result = self.kill_each();
        if frozen {
            let _ = write_file(&self.path, "cgroup.freeze", "0");
        }
        result
    }

    fn kill_each(&self) -> Result<(), CgroupError> {
        let mut signalled = HashSet::new();
        for _ in 0..10 {
            let pids = self.pids()?;
            let new: Vec<i32> = pids
                .into_iter()
                .filter(|p| !signalled.contains(p))
                .collect();
            if new.is_empty() {
                return Ok(());
            }
            for pid in new {
                signalled.insert(pid);
                let Some(target) = rustix::process::Pid::from_raw(pid) else {
                    continue;
                };
                match rustix::process::kill_process(target, rustix::process::Signal::KILL) {
                    Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                    Err(e) => {
                        return Err(CgroupError::Kill {
                            pid,
                            path: self.path.clone(),
                            source: e.into(),
                        })
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Removes the cgroup (and any cgroups the container made below it), once its
    /// processes are gone: the kernel refuses (EBUSY) while it still counts one, so this
    /// retries for up to 2 s. A cgroup already gone is fine.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + REMOVE_WAIT;
        loop {
            match remove_tree(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(CgroupError::Remove {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
    }
}

/// `/sys/fs/cgroup` if it is a cgroup v2 file system that offers controllers, or why not.
pub fn v2_root() -> Result<PathBuf, CgroupError> {
    v2_root_at(Path::new(CGROUP_MOUNT))
}

fn fs_type(path: &Path) -> Option<u64> {
    rustix::fs::statfs(path).ok().map(|s| s.f_type as u64)
}

fn v2_root_at(mount: &Path) -> Result<PathBuf, CgroupError> {
    let shown = mount.display();
    match fs_type(mount) {
        None => Err(CgroupError::NotV2(format!(
            "nothing is mounted at {shown} (no cgroup file system)"
        ))),
        Some(CGROUP2_SUPER_MAGIC) => {
            if words(&mount.join("cgroup.controllers")).is_empty() {
                return Err(CgroupError::NotV2(format!(
                    "the cgroup v2 file system at {shown} offers no controllers"
                )));
            }
            Ok(mount.to_path_buf())
        }
        Some(CGROUP_SUPER_MAGIC) => Err(CgroupError::NotV2(format!(
            "the host uses cgroup v1: {shown} is a cgroup v1 hierarchy"
        ))),
        Some(_) => {
            let unified = mount.join("unified");
            if fs_type(&unified) != Some(CGROUP2_SUPER_MAGIC) {
                return Err(CgroupError::NotV2(format!(
                    "the host uses cgroup v1: {shown} is not a cgroup v2 file system \
                     (it holds cgroup v1 hierarchies, or nothing)"
                )));
            }
            let offered = words(&unified.join("cgroup.controllers"));
            let offered = if offered.is_empty() {
                "none".to_owned()
            } else {
                offered.join(" ")
            };
            Err(CgroupError::NotV2(format!(
                "the host uses cgroup v1 in a hybrid layout: {shown} holds cgroup v1 \
                 hierarchies, and the cgroup v2 mount at {} has no memory, cpu or pids \
                 controller (they are bound to v1; it offers: {offered})",
                unified.display()
            )))
        }
    }
}

/// The directories from the top of the cgroup file system (the last ancestor with a
/// `cgroup.controllers`) down to `root`, some perhaps still to be made; an error if
/// `root` is not inside a cgroup file system.
fn chain(root: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let mut chain = vec![root.to_path_buf()];
    let mut dir = root;
    while let Some(parent) = dir.parent() {
        if parent.exists() && !parent.join("cgroup.controllers").exists() {
            break;
        }
        chain.push(parent.to_path_buf());
        dir = parent;
    }
    chain.reverse();
    if !dir.join("cgroup.controllers").exists() {
        return Err(CgroupError::NotV2(format!(
            "{} is not inside a cgroup v2 file system",
            root.display()
        )));
    }
    Ok(chain)
}

fn create_dir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(CgroupError::Create {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// The words of a file (a controller list); none if it cannot be read.
fn words(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|text| text.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Enables in `dir`'s `cgroup.subtree_control` the `wanted` controllers that `dir`
/// offers and that are not enabled yet. Failures are logged, not returned: a limit
/// that needs a missing controller fails later, naming its file.
fn enable_controllers(dir: &Path, wanted: &[&str]) {
    let offered = words(&dir.join("cgroup.controllers"));
    let enabled = words(&dir.join("cgroup.subtree_control"));
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|c| offered.iter().any(|o| o == c) && !enabled.iter().any(|e| e == c))
        .collect();
    if missing.is_empty() {
        return;
    }
    let all: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
    if write_file(dir, "cgroup.subtree_control", &all.join(" ")).is_ok() {
        return;
    }
    // One at a time, so that one the kernel refuses does not keep the others out.
    for controller in missing {
        if let Err(e) = write_file(dir, "cgroup.subtree_control", &format!("+{controller}")) {
            let hint = match &e {
                CgroupError::Write { source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
                    " (cgroup v2 allows no processes in a non-root cgroup whose controllers \
                     are enabled for its children: is the agent in it?)"
                }
                _ => "",
            };
            log::warn!("cannot enable the {controller} controller: {e}{hint}");
        }
    }
}

/// Writes `value` to the existing file `dir/file` in one `write`, as cgroup files want.
fn write_file(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    let result = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CgroupError::Missing {
            dir: dir.to_path_buf(),
            file: file.to_owned(),
            value: value.to_owned(),
            controller: file.split('.').next().unwrap_or(file).to_owned(),
        }),
        Err(source) => Err(CgroupError::Write {
            path,
            value: value.to_owned(),
            source,
        }),
    }
}

/// One cgroup setting: the first of `choices` (file, value) whose file exists is
/// written; if none does, an error, unless `optional` (a "no limit" value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Setting {
    choices: Vec<(String, String)>,
    optional: bool,
}

impl Setting {
    fn new(file: impl Into<String>, value: impl Into<String>) -> Setting {
        Setting {
            choices: vec![(file.into(), value.into())],
            optional: false,
        }
    }

    fn optional(mut self, optional: bool) -> Setting {
        self.optional = optional;
        self
    }
}

fn apply_settings(dir: &Path, settings: &[Setting]) -> Result<(), CgroupError> {
    for setting in settings {
        let chosen = setting
            .choices
            .iter()
            .find(|(file, _)| dir.join(file).exists());
        match (chosen, setting.choices.last()) {
            (Some((file, value)), _) => write_file(dir, file, value)?,
            (None, _) if setting.optional => {}
            // Fails, naming the file.
            (None, Some((file, value))) => write_file(dir, file, value)?,
            (None, None) => {}
        }
    }
    Ok(())
}

/// cgroup v1 `cpu.shares` (2 to 262144, default 1024) as cgroup v2 `cpu.weight` (1 to
/// 10000), linearly, as runc and crun (before 1.23) convert it: 2 → 1, 1024 → 39,
/// 262144 → 10000.
fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// cgroup v1 `blkio.weight` (10 to 1000) as cgroup v2 `io.weight` (1 to 10000).
fn blkio_to_io_weight(weight: u16) -> u64 {
    let weight = u64::from(weight.clamp(10, 1000));
    1 + ((weight - 10) * 9999) / 990
}

/// A byte limit: -1 is "max", 0 "not set" (`None`).
fn byte_limit(field: &'static str, value: i64) -> Result<Option<String>, CgroupError> {
    match value {
        0 => Ok(None),
        -1 => Ok(Some("max".to_owned())),
        v if v > 0 => Ok(Some(v.to_string())),
        v => Err(CgroupError::Resource {
            field,
            value: v.to_string(),
            why: "not a byte count (a positive number, or -1 for no limit)",
        }),
    }
}

/// `memory.swap.max` from the OCI `swap` (a limit on memory plus swap) and `limit`.
fn swap_max(limit: Option<i64>, swap: i64) -> Result<Option<String>, CgroupError> {
    let error = |why| CgroupError::Resource {
        field: "memory.swap",
        value: swap.to_string(),
        why,
    };
    match swap {
        0 => Ok(None),
        -1 => Ok(Some("max".to_owned())),
        s if s < 0 => Err(error("not a byte count (a positive number, or -1 for no limit)")),
        s => match limit {
            Some(limit) if limit > 0 => {
                if s < limit {
                    Err(error("less than memory.limit (OCI swap counts memory plus swap)"))
                } else {
                    Ok(Some((s - limit).to_string()))
                }
            }
            _ => Err(error(
                "set without a memory.limit (OCI swap counts memory plus swap, so it needs the memory limit)",
            )),
        },
    }
}

/// A cgroup file name from the spec (`unified` keys, hugepage sizes): one plain name.
fn file_name(field: &'static str, key: &str) -> Result<(), CgroupError> {
    if key.is_empty() || key == "." || key == ".." || key.contains(['/', '\0']) {
        return Err(CgroupError::FileName {
            field,
            key: key.to_owned(),
        });
    }
    Ok(())
}

/// The settings `resources` asks for, in the order they are written.
pub(super) fn settings(resources: &LinuxResources) -> Result<Vec<Setting>, CgroupError> {
    let mut out = Vec::new();
    let mut ignored: Vec<&str> = Vec::new();
    if let Some(memory) = resources.memory() {
        if let Some(value) = byte_limit("memory.limit", memory.limit().unwrap_or(0))? {
            out.push(Setting::new("memory.max", value));
        }
        if let Some(value) = byte_limit("memory.reservation", memory.reservation().unwrap_or(0))? {
            out.push(Setting::new("memory.low", value));
        }
        if let Some(value) = swap_max(memory.limit(), memory.swap().unwrap_or(0))? {
            // Without swap accounting, or swap, the file is missing: no swap limit ("max")
            // and no swap ("0", as for a guest kernel without swap) hold anyway, as runc
            // also reasons; a real limit in between cannot be kept, and is an error.
            let optional = value == "max" || value == "0";
            out.push(Setting::new("memory.swap.max", value).optional(optional));
        }
        for (name, set) in [
            ("memory.kernel", memory.kernel().is_some()),
            ("memory.kernelTCP", memory.kernel_tcp().is_some()),
            ("memory.swappiness", memory.swappiness().is_some()),
            (
                "memory.disableOOMKiller",
                memory.disable_oom_killer().is_some(),
            ),
        ] {
            if set {
                ignored.push(name);
            }
        }
    }
    if let Some(cpu) = resources.cpu() {
        if let Some(shares) = cpu.shares().filter(|s| *s != 0) {
            out.push(Setting::new(
                "cpu.weight",
                shares_to_weight(shares).to_string(),
            ));
        }
        let quota = cpu.quota().filter(|q| *q != 0);
        let period = cpu.period().filter(|p| *p != 0);
        if quota.is_some() || period.is_some() {
            let mut value = match quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_owned(),
            };
            if let Some(period) = period {
                value = format!("{value} {period}");
            }
            out.push(Setting::new("cpu.max", value));
        }
        if let Some(burst) = cpu.burst() {
            out.push(Setting::new("cpu.max.burst", burst.to_string()).optional(burst == 0));
        }
        if let Some(idle) = cpu.idle() {
            out.push(Setting::new("cpu.idle", idle.to_string()).optional(idle == 0));
        }
        if let Some(cpus) = cpu.cpus().as_ref().filter(|c| !c.is_empty()) {
            out.push(Setting::new("cpuset.cpus", cpus.clone()));
        }
        if let Some(mems) = cpu.mems().as_ref().filter(|m| !m.is_empty()) {
            out.push(Setting::new("cpuset.mems", mems.clone()));
        }
        if cpu.realtime_runtime().is_some() || cpu.realtime_period().is_some() {
            ignored.push("cpu.realtimeRuntime/realtimePeriod");
        }
    }
    if let Some(pids) = resources.pids() {
        let value = match pids.limit() {
            limit if limit > 0 => limit.to_string(),
            _ => "max".to_owned(),
        };
        out.push(Setting::new("pids.max", value));
    }
    if let Some(io) = resources.block_io() {
        let weight = |device: &str, weight: u16| Setting {
            choices: vec![
                ("io.bfq.weight".to_owned(), format!("{device}{weight}")),
                (
                    "io.weight".to_owned(),
                    format!(
                        "{}{}",
                        if device.is_empty() {
                            "default "
                        } else {
                            device
                        },
                        blkio_to_io_weight(weight)
                    ),
                ),
            ],
            optional: false,
        };
        if let Some(w) = io.weight().filter(|w| *w != 0) {
            out.push(weight("", w));
        }
        for device in io.weight_device().iter().flatten() {
            if let Some(w) = device.weight().filter(|w| *w != 0) {
                out.push(weight(
                    &format!("{}:{} ", device.major(), device.minor()),
                    w,
                ));
            }
        }
        for (key, devices) in [
            ("rbps", io.throttle_read_bps_device()),
            ("wbps", io.throttle_write_bps_device()),
            ("riops", io.throttle_read_iops_device()),
            ("wiops", io.throttle_write_iops_device()),
        ] {
            for device in devices.iter().flatten() {
                let rate = match device.rate() {
                    0 => "max".to_owned(),
                    rate => rate.to_string(),
                };
                let value = format!("{}:{} {key}={rate}", device.major(), device.minor());
                out.push(Setting::new("io.max", value));
            }
        }
        if io.leaf_weight().is_some() {
            ignored.push("blockIO.leafWeight");
        }
    }
    for limit in resources.hugepage_limits().iter().flatten() {
        file_name("hugepageLimits.pageSize", limit.page_size())?;
        let value = match limit.limit() {
            l if l < 0 => "max".to_owned(),
            l => l.to_string(),
        };
        out.push(Setting::new(
            format!("hugetlb.{}.max", limit.page_size()),
            value,
        ));
    }
    if let Some(unified) = resources.unified() {
        let mut keys: Vec<&String> = unified.keys().collect();
        keys.sort();
        for key in keys {
            file_name("unified", key)?;
            out.push(Setting::new(key.clone(), unified[key].clone()));
        }
    }
    if resources.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        ignored.push("devices");
    }
    if resources.network().is_some() {
        ignored.push("network");
    }
    if resources.rdma().is_some() {
        ignored.push("rdma");
    }
    if !ignored.is_empty() {
        log::debug!(
            "cgroup: not applied (cgroup v1 only, or not supported): linux.resources.{}",
            ignored.join(", linux.resources.")
        );
    }
    Ok(out)
}

/// Adds the pids of `dir/cgroup.procs` and of the cgroups below. `top`: errors count
/// (below, a cgroup removed meanwhile is skipped).
fn collect_pids(dir: &Path, pids: &mut Vec<i32>, top: bool) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.procs");
    match fs::read_to_string(&path) {
        Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
        Err(e) if !top && e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(CgroupError::Read { path, source }),
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if !top && e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_pids(&entry.path(), pids, false)?;
        }
    }
    Ok(())
}

/// Removes `path` and the directories below it, deepest first (cgroup directories go
/// with `rmdir`, their files included).
fn remove_tree(path: &Path) -> io::Result<()> {
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    fs::remove_dir(path)
}

/// The "key value" lines of a flat keyed file (`memory.stat`, `memory.events`,
/// `cpu.stat`); lines that are not are skipped.
fn flat_keyed(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let key = fields.next()?;
        let value = fields.next()?.parse().ok()?;
        fields.next().is_none().then_some((key, value))
    })
}

/// A single value, "max" as `u64::MAX`.
fn single_value(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => Some(u64::MAX),
        value => value.parse().ok(),
    }
}

/// `io.stat`: the bytes read and written, summed over the devices.
fn io_bytes(text: &str) -> (u64, u64) {
    let (mut read, mut written) = (0u64, 0u64);
    for line in text.lines() {
        // "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0"
        for field in line.split_whitespace().skip(1) {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            match key {
                "rbytes" => read = read.saturating_add(value),
                "wbytes" => written = written.saturating_add(value),
                _ => {}
            }
        }
    }
    (read, written)
}

fn read_stats(dir: &Path) -> ContainerStats {
    let read = |file: &str| fs::read_to_string(dir.join(file)).ok();
    let keyed = |file: &str| -> Vec<(String, u64)> {
        read(file)
            .map(|text| flat_keyed(&text).map(|(k, v)| (k.to_owned(), v)).collect())
            .unwrap_or_default()
    };
    let find =
        |pairs: &[(String, u64)], key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
    let cpu = keyed("cpu.stat");
    let events = keyed("memory.events");
    let io = read("io.stat").map(|text| io_bytes(&text));
    ContainerStats {
        memory_current: read("memory.current").as_deref().and_then(single_value),
        memory_max: read("memory.max").as_deref().and_then(single_value),
        memory_stat: keyed("memory.stat"),
        memory_oom_kills: find(&events, "oom_kill"),
        cpu_usage_usec: find(&cpu, "usage_usec"),
        cpu_user_usec: find(&cpu, "user_usec"),
        cpu_system_usec: find(&cpu, "system_usec"),
        cpu_throttled_usec: find(&cpu, "throttled_usec"),
        pids_current: read("pids.current").as_deref().and_then(single_value),
        pids_max: read("pids.max").as_deref().and_then(single_value),
        io_read_bytes: io.map(|(r, _)| r),
        io_write_bytes: io.map(|(_, w)| w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> io::Result<TempDir> {
            let path =
                std::env::temp_dir().join(format!("husk-cgroups-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path)?;
            Ok(TempDir(path))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn resources(value: serde_json::Value) -> Result<LinuxResources, serde_json::Error> {
        serde_json::from_value(value)
    }

    /// The (file, value) pairs `resources` asks for (first choices).
    fn plan(value: serde_json::Value) -> Result<Vec<(String, String)>, Box<dyn std::error::Error>> {
        Ok(settings(&resources(value)?)?
            .into_iter()
            .filter_map(|s| s.choices.first().cloned())
            .collect())
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect()
    }

    fn touch(dir: &Path, files: &[&str]) -> io::Result<()> {
        for file in files {
            fs::write(dir.join(file), "")?;
        }
        Ok(())
    }

    fn read(dir: &Path, file: &str) -> io::Result<String> {
        fs::read_to_string(dir.join(file))
    }

    #[test]
    fn shares_become_weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1), 1);
        assert_eq!(shares_to_weight(u64::MAX), 10_000);
        assert!((2..262_144).all(|s| shares_to_weight(s) <= shares_to_weight(s + 1)));
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(500), 4950);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
        assert_eq!(blkio_to_io_weight(0), 1);
    }

    #[test]
    fn resources_become_cgroup_files() -> TestResult {
        let got = plan(json!({
            "memory": {"limit": 104857600, "reservation": 52428800, "swap": 209715200,
                       "swappiness": 60, "kernel": 1},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0",
                    "realtimeRuntime": 5},
            "pids": {"limit": 64},
            "blockIO": {"weight": 500,
                        "weightDevice": [{"major": 8, "minor": 0, "weight": 1000}],
                        "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                        "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 0}]},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
            "unified": {"memory.high": "90000000", "cpu.idle": "0"},
            "devices": [{"allow": false, "access": "rwm"}]
        }))?;
        assert_eq!(
            got,
            pairs(&[
                ("memory.max", "104857600"),
                ("memory.low", "52428800"),
                ("memory.swap.max", "104857600"),
                ("cpu.weight", "39"),
                ("cpu.max", "50000 100000"),
                ("cpuset.cpus", "0-1"),
                ("cpuset.mems", "0"),
                ("pids.max", "64"),
                ("io.bfq.weight", "500"),
                ("io.bfq.weight", "8:0 1000"),
                ("io.max", "8:0 rbps=1048576"),
                ("io.max", "8:16 wiops=max"),
                ("hugetlb.2MB.max", "4194304"),
                ("cpu.idle", "0"),
                ("memory.high", "90000000"),
            ])
        );
        // io.weight is the second choice, converted.
        let io = settings(&resources(json!({"blockIO": {"weight": 500}}))?)?;
        assert_eq!(
            io[0].choices[1],
            ("io.weight".to_owned(), "default 4950".to_owned())
        );
        Ok(())
    }

    #[test]
    fn limits_and_their_edge_values() -> TestResult {
        let cases: Vec<(serde_json::Value, Vec<(String, String)>)> = vec![
            (
                json!({"memory": {"limit": -1}}),
                pairs(&[("memory.max", "max")]),
            ),
            (json!({"memory": {"limit": 0}}), vec![]),
            (
                json!({"memory": {"limit": 100, "swap": -1}}),
                pairs(&[("memory.max", "100"), ("memory.swap.max", "max")]),
            ),
            (
                json!({"memory": {"limit": 100, "swap": 100}}),
                pairs(&[("memory.max", "100"), ("memory.swap.max", "0")]),
            ),
            (
                json!({"cpu": {"quota": 20000}}),
                pairs(&[("cpu.max", "20000")]),
            ),
            (
                json!({"cpu": {"quota": -1, "period": 100000}}),
                pairs(&[("cpu.max", "max 100000")]),
            ),
            (
                json!({"cpu": {"period": 250000}}),
                pairs(&[("cpu.max", "max 250000")]),
            ),
            (json!({"cpu": {"shares": 0, "quota": 0}}), vec![]),
            (
                json!({"cpu": {"burst": 1000, "idle": 1}}),
                pairs(&[("cpu.max.burst", "1000"), ("cpu.idle", "1")]),
            ),
            (json!({"pids": {"limit": 0}}), pairs(&[("pids.max", "max")])),
            (
                json!({"pids": {"limit": -1}}),
                pairs(&[("pids.max", "max")]),
            ),
            (json!({}), vec![]),
        ];
        for (value, want) in cases {
            assert_eq!(plan(value.clone())?, want, "{value}");
        }
        let errors = [
            (
                json!({"memory": {"limit": -5}}),
                "linux.resources.memory.limit -5: not a byte count",
            ),
            (
                json!({"memory": {"swap": 100}}),
                "linux.resources.memory.swap 100: set without a memory.limit",
            ),
            (
                json!({"memory": {"limit": -1, "swap": 100}}),
                "linux.resources.memory.swap 100: set without a memory.limit",
            ),
            (
                json!({"memory": {"limit": 200, "swap": 100}}),
                "linux.resources.memory.swap 100: less than memory.limit",
            ),
            (
                json!({"unified": {"../memory.max": "1"}}),
                "linux.resources.unified \"../memory.max\": not a cgroup file name",
            ),
            (
                json!({"hugepageLimits": [{"pageSize": "2MB/x", "limit": 1}]}),
                "linux.resources.hugepageLimits.pageSize \"2MB/x\": not a cgroup file name",
            ),
        ];
        for (value, want) in errors {
            let got = settings(&resources(value)?)
                .map(|_| ())
                .map_err(|e| e.to_string());
            assert!(
                got.as_ref().is_err_and(|e| e.starts_with(want)),
                "got {got:?}, want {want:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn apply_writes_the_files_the_cgroup_has() -> TestResult {
        let dir = TempDir::new("apply")?;
        let cg = Cgroup {
            path: dir.0.clone(),
        };
        touch(
            &dir.0,
            &[
                "memory.max",
                "memory.low",
                "cpu.weight",
                "cpu.max",
                "pids.max",
                "io.weight",
            ],
        )?;
        cg.apply(&resources(json!({
            // No memory.swap.max here (no swap accounting): "max" is skipped.
            "memory": {"limit": 1048576, "reservation": 4096, "swap": -1},
            "cpu": {"shares": 512, "quota": 10000, "period": 50000},
            "pids": {"limit": 10},
            "blockIO": {"weight": 10}
        }))?)?;
        for (file, want) in [
            ("memory.max", "1048576"),
            ("memory.low", "4096"),
            ("cpu.weight", "20"),
            ("cpu.max", "10000 50000"),
            ("pids.max", "10"),
            ("io.weight", "default 1"),
        ] {
            assert_eq!(read(&dir.0, file)?, want, "{file}");
        }
        assert!(!dir.0.join("memory.swap.max").exists());
        // A limit whose file is missing is an error that names it.
        let got = cg
            .apply(&resources(json!({"memory": {"limit": 100, "swap": 300}}))?)
            .map_err(|e| e.to_string());
        let want = format!(
            "setting memory.swap.max to \"200\": the cgroup {} has no such file (is the memory controller available?)",
            dir.0.display()
        );
        assert_eq!(got, Err(want));
        Ok(())
    }

    #[test]
    fn create_enables_controllers_from_the_top_down() -> TestResult {
        let top = TempDir::new("create")?;
        fs::write(
            top.0.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )?;
        touch(&top.0, &["cgroup.subtree_control"])?;
        let root = top.0.join("husk");
        let cg = Cgroup::create(&root, "one", None)?;
        assert_eq!(cg.path(), root.join("one"));
        assert!(cg.path().is_dir());
        assert_eq!(
            read(&top.0, "cgroup.subtree_control")?,
            "+cpuset +cpu +io +memory +pids"
        );
        // The next level: a cgroup that offers fewer and has some enabled already.
        fs::write(root.join("cgroup.controllers"), "cpu io memory pids\n")?;
        fs::write(root.join("cgroup.subtree_control"), "cpu memory\n")?;
        fs::write(
            top.0.join("cgroup.subtree_control"),
            "cpuset cpu io memory pids\n",
        )?;
        let limits = resources(json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]}))?;
        let err = Cgroup::create(&root, "two", Some(&limits)).map_err(|e| e.to_string());
        // hugetlb is enabled at the top (offered there), not below; the limit then
        // fails for want of its file, and the new cgroup is gone again.
        assert_eq!(read(&top.0, "cgroup.subtree_control")?, "+hugetlb");
        assert_eq!(read(&root, "cgroup.subtree_control")?, "+io +pids");
        assert!(err.is_err_and(|e| e.contains("hugetlb.2MB.max")));
        assert!(!root.join("two").exists());
        // Bad ids.
        for id in ["", ".", "..", "a/b", "nul\0"] {
            assert!(matches!(
                Cgroup::create(&root, id, None),
                Err(CgroupError::BadId(_))
            ));
        }
        // An existing cgroup with processes is refused.
        fs::create_dir(root.join("busy"))?;
        fs::write(root.join("busy").join("cgroup.procs"), "4242\n")?;
        assert!(matches!(
            Cgroup::create(&root, "busy", None),
            Err(CgroupError::Exists(_))
        ));
        Ok(())
    }

    #[test]
    fn stats_and_pids_from_the_files() -> TestResult {
        let dir = TempDir::new("stats")?;
        let files = [
            ("memory.current", "1234567\n"),
            ("memory.max", "max\n"),
            (
                "memory.stat",
                "anon 1000\nfile 2000\nkernel 300\nnot a pair\n",
            ),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n",
            ),
            (
                "cpu.stat",
                "usage_usec 5000\nuser_usec 3000\nsystem_usec 2000\nnr_periods 10\n\
                 nr_throttled 4\nthrottled_usec 777\nnr_bursts 0\nburst_usec 0\n",
            ),
            ("pids.current", "3\n"),
            ("pids.max", "64\n"),
            (
                "io.stat",
                "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n\
                 253:1 rbytes=100 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
            ),
            ("cgroup.procs", "12\n7\n"),
        ];
        for (file, text) in files {
            fs::write(dir.0.join(file), text)?;
        }
        fs::create_dir(dir.0.join("sub"))?;
        fs::write(dir.0.join("sub").join("cgroup.procs"), "99\n7\n")?;
        let cg = Cgroup {
            path: dir.0.clone(),
        };
        let stats = cg.stats()?;
        assert_eq!(
            stats,
            ContainerStats {
                memory_current: Some(1_234_567),
                memory_max: Some(u64::MAX),
                memory_stat: vec![
                    ("anon".to_owned(), 1000),
                    ("file".to_owned(), 2000),
                    ("kernel".to_owned(), 300),
                ],
                memory_oom_kills: Some(2),
                cpu_usage_usec: Some(5000),
                cpu_user_usec: Some(3000),
                cpu_system_usec: Some(2000),
                cpu_throttled_usec: Some(777),
                pids_current: Some(3),
                pids_max: Some(64),
                io_read_bytes: Some(4196),
                io_write_bytes: Some(8192),
            }
        );
        assert_eq!(cg.oom_kills()?, 2);
        assert_eq!(cg.pids()?, vec![7, 12, 99]);
        // A cgroup without controllers: only what is there.
        let bare = TempDir::new("bare")?;
        fs::write(
            bare.0.join("cpu.stat"),
            "usage_usec 1\nuser_usec 1\nsystem_usec 0\n",
        )?;
        let cg = Cgroup {
            path: bare.0.clone(),
        };
        assert_eq!(
            cg.stats()?,
            ContainerStats {
                cpu_usage_usec: Some(1),
                cpu_user_usec: Some(1),
                cpu_system_usec: Some(0),
                ..ContainerStats::default()
            }
        );
        assert!(cg.oom_kills().is_err());
        let gone = Cgroup {
            path: bare.0.join("gone"),
        };
        assert!(gone.stats().is_err());
        assert!(gone.pids().is_err());
        gone.remove()?;
        Ok(())
    }

    #[test]
    fn this_hosts_cgroups_are_judged() {
        match v2_root() {
            Ok(root) => assert!(!words(&root.join("cgroup.controllers")).is_empty()),
            Err(e) => {
                let message = e.to_string();
                eprintln!("{message}");
                assert!(
                    message.starts_with("cgroup v2 is not usable: "),
                    "{message}"
                );
                let hybrid =
                    fs_type(Path::new("/sys/fs/cgroup/unified")) == Some(CGROUP2_SUPER_MAGIC);
                if hybrid {
                    assert!(
                        message.contains("cgroup v1 in a hybrid layout"),
                        "{message}"
                    );
                    assert!(
                        message.contains("has no memory, cpu or pids controller"),
                        "{message}"
                    );
                }
            }
        }
        let got = v2_root_at(&std::env::temp_dir()).map_err(|e| e.to_string());
        assert!(
            got.as_ref()
                .is_err_and(|e| e.contains("is not a cgroup v2 file system")),
            "{got:?}"
        );
        let got = v2_root_at(Path::new("/nonexistent-cgroup")).map_err(|e| e.to_string());
        assert!(got.is_err_and(|e| e.contains("nothing is mounted")));
    }

    /// On a real cgroup v2 file system (the host's own if it is v2, else the hybrid
    /// layout's `/sys/fs/cgroup/unified`, which has no controllers but does have
    /// cgroups): create, join, list, kill, remove.
    #[test]
    fn a_real_cgroup_lives_and_dies() -> TestResult {
        let mount = match v2_root() {
            Ok(root) => root,
            Err(_) => PathBuf::from("/sys/fs/cgroup/unified"),
        };
        // Not a skip: a test that cannot run here fails and says why.
        assert!(
            fs_type(&mount) == Some(CGROUP2_SUPER_MAGIC) && rustix::process::geteuid().is_root(),
            "cannot run: needs root and a cgroup v2 file system at {}",
            mount.display()
        );
        let base = mount.join(format!("husk-test-{}", std::process::id()));
        let root = base.join("husk");
        let result = (|| -> TestResult {
            let cg = Cgroup::create(&root, "c1", None)?;
            // A cgroup the container made below its own counts too.
            let inner = cg.path().join("inner");
            fs::create_dir(&inner)?;
            // Both ways of killing: cgroup.kill (if this kernel has it), and freezing and
            // killing each pid.
            for way in ["kill_all", "kill_frozen"] {
                let mut children = Vec::new();
                for dir in [cg.path(), inner.as_path()] {
                    let child = std::process::Command::new("sleep").arg("30").spawn()?;
                    write_file(dir, "cgroup.procs", &child.id().to_string())?;
                    children.push(child);
                }
                let mut want: Vec<i32> = children
                    .iter()
                    .map(|c| i32::try_from(c.id()))
                    .collect::<Result<_, _>>()?;
                want.sort_unstable();
                assert_eq!(cg.pids()?, want);
                let stats = cg.stats()?;
                assert!(stats.cpu_usage_usec.is_some(), "{stats:?}");
                match way {
                    "kill_all" => cg.kill_all()?,
                    _ => cg.kill_frozen()?,
                }
                for mut child in children {
                    let status = child.wait()?;
                    assert_eq!(
                        std::os::unix::process::ExitStatusExt::signal(&status),
                        Some(libc::SIGKILL),
                        "{way}"
                    );
                }
                assert_eq!(read(cg.path(), "cgroup.freeze")?.trim(), "0", "{way}");
            }
            cg.remove()?;
            assert!(!root.join("c1").exists());
            Ok(())
        })();
        let _ = remove_tree(&base);
        result
    }
}
