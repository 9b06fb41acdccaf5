//! cgroup v2 for containers: a directory per container under the agent's root
//! (`/sys/fs/cgroup/husk/<id>` in the guest), its limits from the spec's
//! `linux.resources`, its statistics, OOM kills, and its end.
//!
//! The agent itself stays in the root cgroup (the only cgroup v2 allows to hold
//! processes while its children have controllers enabled). Controllers are enabled
//! down the path with `cgroup.subtree_control`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_protocol::ContainerStats;
use oci_spec::runtime::LinuxResources;

/// Where cgroup v2 lives.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// `CGROUP2_SUPER_MAGIC`.
const CGROUP2_MAGIC: i64 = 0x6367_7270;
/// The controllers containers get, where the kernel has them.
const CONTROLLERS: [&str; 5] = ["cpu", "cpuset", "io", "memory", "pids"];

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum CgroupError {
    /// {0} is not a cgroup v2 file system (this host uses cgroup v1 or a hybrid layout; containers get no cgroup v2 subtree here)
    NotV2(String),
    /// cgroup file {path}: {source}
    File { path: String, source: io::Error },
    /// the cgroup {0} still has processes after they were killed
    Busy(String),
}

fn file_error(path: &Path, source: io::Error) -> CgroupError {
    CgroupError::File {
        path: path.display().to_string(),
        source,
    }
}

/// `/sys/fs/cgroup` if it is a cgroup v2 mount with controllers to give, or why not.
pub fn v2_root() -> Result<PathBuf, CgroupError> {
    let root = Path::new(CGROUP_MOUNT);
    let is_v2 = rustix::fs::statfs(root)
        .map(|st| st.f_type == CGROUP2_MAGIC)
        .unwrap_or(false);
    if !is_v2 {
        return Err(CgroupError::NotV2(CGROUP_MOUNT.into()));
    }
    Ok(root.to_path_buf())
}

pub struct Cgroup {
    path: PathBuf,
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|e| file_error(path, e))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|e| file_error(path, e))
}

impl Cgroup {
    /// Creates `<root>/<id>` (and `root`), with the controllers enabled on the way and
    /// `resources` applied. `root` lies under the cgroup v2 mount.
    pub fn create(
        root: &Path,
        id: &str,
        resources: Option<&LinuxResources>,
    ) -> Result<Cgroup, CgroupError> {
        let mount = Path::new(CGROUP_MOUNT);
        std::fs::create_dir_all(root).map_err(|e| file_error(root, e))?;
        // Enable controllers from the mount down to `root`, each level offering what
        // its parent enabled.
        let mut level = mount.to_path_buf();
        let below = root.strip_prefix(mount).unwrap_or(Path::new(""));
        let mut levels = vec![level.clone()];
        for part in below.components() {
            level.push(part);
            levels.push(level.clone());
        }
        for dir in &levels {
            let available = read(&dir.join("cgroup.controllers"))?;
            let enable: Vec<String> = available
                .split_whitespace()
                .filter(|c| CONTROLLERS.contains(c))
                .map(|c| format!("+{c}"))
                .collect();
            if !enable.is_empty() {
                write(&dir.join("cgroup.subtree_control"), &enable.join(" "))?;
            }
        }
        let path = root.join(id);
        std::fs::create_dir(&path).map_err(|e| file_error(&path, e))?;
        let cgroup = Cgroup { path };
        if let Some(resources) = resources {
            if let Err(e) = cgroup.apply(resources) {
                let _ = std::fs::remove_dir(&cgroup.path);
                return Err(e);
            }
        }
        Ok(cgroup)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the limits of `resources`.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        for (file, value) in limit_files(resources) {
            write(&self.path.join(file), &value)?;
        }
        Ok(())
    }

    /// The pids in the cgroup and below.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut pids = Vec::new();
        collect_pids(&self.path, &mut pids)?;
        pids.sort_unstable();
        Ok(pids)
    }

    pub fn stats(&self) -> Result<ContainerStats, CgroupError> {
        let get = |file: &str| std::fs::read_to_string(self.path.join(file)).ok();
        let mut stats = ContainerStats {
            memory_current: get("memory.current").and_then(|v| v.trim().parse().ok()),
            memory_max: get("memory.max").and_then(|v| v.trim().parse().ok()),
            pids_current: get("pids.current").and_then(|v| v.trim().parse().ok()),
            pids_max: get("pids.max").and_then(|v| v.trim().parse().ok()),
            memory_oom_kills: get("memory.events").and_then(|t| key_value(&t, "oom_kill")),
            ..ContainerStats::default()
        };
        if let Some(text) = get("memory.stat") {
            stats.memory_stat = text
                .lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    Some((k.to_owned(), v.trim().parse().ok()?))
                })
                .collect();
        }
        if let Some(text) = get("cpu.stat") {
            stats.cpu_usage_usec = key_value(&text, "usage_usec");
            stats.cpu_user_usec = key_value(&text, "user_usec");
            stats.cpu_system_usec = key_value(&text, "system_usec");
            stats.cpu_throttled_usec = key_value(&text, "throttled_usec");
        }
        if let Some(text) = get("io.stat") {
            let (mut read, mut written) = (0u64, 0u64);
            for field in text.split_whitespace() {
                if let Some(v) = field.strip_prefix("rbytes=") {
                    read += v.parse::<u64>().unwrap_or(0);
                } else if let Some(v) = field.strip_prefix("wbytes=") {
                    written += v.parse::<u64>().unwrap_or(0);
                }
            }
            stats.io_read_bytes = Some(read);
            stats.io_write_bytes = Some(written);
        }
        Ok(stats)
    }

    /// How many processes the OOM killer has killed in the cgroup.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let events = read(&self.path.join("memory.events"))?;
        Ok(key_value(&events, "oom_kill").unwrap_or(0))
    }

    /// SIGKILL to every process in the cgroup (`cgroup.kill`, or one by one on kernels
    /// before 5.14).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let kill_file = self.path.join("cgroup.kill");
        if kill_file.exists() {
            return write(&kill_file, "1");
        }
        for pid in self.pids()? {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        Ok(())
    }

    /// Removes the cgroup once its processes are gone (waiting briefly for the kernel to
    /// finish with killed ones).
    pub fn remove(self) -> Result<(), CgroupError> {
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        Err(CgroupError::Busy(self.path.display().to_string()))
    }
}

fn collect_pids(dir: &Path, pids: &mut Vec<i32>) -> Result<(), CgroupError> {
    let procs = read(&dir.join("cgroup.procs"))?;
    pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    let entries = std::fs::read_dir(dir).map_err(|e| file_error(dir, e))?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_pids(&entry.path(), pids)?;
        }
    }
    Ok(())
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines).
fn key_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The files and values that express `resources` in cgroup v2.
fn limit_files(resources: &LinuxResources) -> Vec<(&'static str, String)> {
    let mut files = Vec::new();
    let max_or = |v: i64| {
        if v < 0 {
            "max".to_owned()
        } else {
            v.to_string()
        }
    };
    if let Some(memory) = resources.memory() {
        if let Some(limit) = memory.limit() {
            files.push(("memory.max", max_or(limit)));
            // OCI's swap is memory + swap; cgroup v2's swap.max is swap alone.
            if let Some(swap) = memory.swap() {
                let swap_only = if swap < 0 || limit < 0 {
                    -1
                } else {
                    (swap - limit).max(0)
                };
                files.push(("memory.swap.max", max_or(swap_only)));
            }
        }
        if let Some(low) = memory.reservation() {
            files.push(("memory.low", max_or(low)));
        }
    }
    if let Some(cpu) = resources.cpu() {
        let period = cpu.period().unwrap_or(100_000);
        match cpu.quota() {
            Some(quota) if quota > 0 => files.push(("cpu.max", format!("{quota} {period}"))),
            Some(_) => files.push(("cpu.max", format!("max {period}"))),
            None => {}
        }
        if let Some(shares) = cpu.shares() {
            files.push(("cpu.weight", shares_to_weight(shares).to_string()));
        }
        if let Some(cpus) = cpu.cpus() {
            files.push(("cpuset.cpus", cpus.clone()));
        }
        if let Some(mems) = cpu.mems() {
            files.push(("cpuset.mems", mems.clone()));
        }
    }
    if let Some(pids) = resources.pids() {
        files.push((
            "pids.max",
            if pids.limit() > 0 {
                pids.limit().to_string()
            } else {
                "max".into()
            },
        ));
    }
    files
}

/// cgroup v1 CPU shares (2..262144) as a cgroup v2 weight (1..10000), the conversion
/// runc and crun use.
fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    #[test]
    fn shares_become_weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1 << 30), 10_000);
    }

    #[test]
    fn limits_as_files() {
        let resources = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .swap(96 << 20)
                    .build()
                    .expect("memory"),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(50_000)
                    .period(100_000u64)
                    .shares(1024u64)
                    .build()
                    .expect("cpu"),
            )
            .pids(LinuxPidsBuilder::default().limit(32).build().expect("pids"))
            .build()
            .expect("resources");
        let files = limit_files(&resources);
        let get = |name: &str| {
            files
                .iter()
                .find(|(f, _)| *f == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("memory.max"), Some("67108864"));
        assert_eq!(get("memory.swap.max"), Some("33554432"));
        assert_eq!(get("cpu.max"), Some("50000 100000"));
        assert_eq!(get("cpu.weight"), Some("39"));
        assert_eq!(get("pids.max"), Some("32"));
    }

    #[test]
    fn flat_keyed_files() {
        let events = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n";
        assert_eq!(key_value(events, "oom_kill"), Some(1));
        assert_eq!(key_value(events, "oom"), Some(2));
        assert_eq!(key_value(events, "nope"), None);
    }

    #[test]
    fn this_hosts_cgroups_are_judged() {
        // Whatever the host has, the answer is an answer: a v2 root or a reason.
        match v2_root() {
            Ok(root) => assert!(root.join("cgroup.controllers").exists()),
            Err(e) => assert!(e.to_string().contains("cgroup v1")),
        }
    }
}
