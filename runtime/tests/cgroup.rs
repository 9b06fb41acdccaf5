//! The cgroup that accounts a VM sandbox's overhead (`hypervisor::cgroup`), as root, on
//! this very process: it moves in, its memory is counted there, it moves back out and the
//! cgroup is gone. (Works on either cgroup layout; this development host's is v1/hybrid,
//! the lab's v2.)

use std::path::{Path, PathBuf};

use husk_runtime::hypervisor::cgroup::{remove_leftover, SandboxCgroup};

/// Both tests move this one process: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests move this process between cgroups and must run as root"
    );
}

fn own_cgroups() -> String {
    std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup")
}

/// The memory the cgroup at `dir` is charged, if it is a memory cgroup.
fn memory_charged(dir: &Path) -> Option<u64> {
    ["memory.current", "memory.usage_in_bytes"]
        .iter()
        .find_map(|file| std::fs::read_to_string(dir.join(file)).ok())
        .and_then(|text| text.trim().parse().ok())
}

#[test]
fn a_sandbox_cgroup_holds_the_process_and_counts_its_memory_until_left() {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let name = format!("test-{}", std::process::id());
    let cgroup = SandboxCgroup::enter(&name).expect("entering the sandbox's cgroup");
    let paths: Vec<PathBuf> = cgroup.paths().into_iter().map(Path::to_owned).collect();
    assert!(!paths.is_empty(), "no hierarchy found in {}", own_cgroups());
    let pid = std::process::id().to_string();
    for path in &paths {
        let procs = std::fs::read_to_string(path.join("cgroup.procs")).expect("cgroup.procs");
        assert!(
            procs.lines().any(|p| p == pid),
            "{}: {procs}",
            path.display()
        );
    }
    assert!(
        own_cgroups().contains(&format!("husk-{name}")),
        "{}",
        own_cgroups()
    );

    // 64 MiB touched now is charged to the sandbox's cgroup.
    let memory: Vec<PathBuf> = paths
        .iter()
        .filter(|p| memory_charged(p).is_some())
        .cloned()
        .collect();
    let ballast = vec![7u8; 64 << 20];
    std::hint::black_box(&ballast);
    match memory.first() {
        Some(dir) => {
            let charged = memory_charged(dir).unwrap_or(0);
            assert!(
                charged >= 64 << 20,
                "{}: {charged} bytes charged",
                dir.display()
            );
        }
        None => eprintln!(
            "no memory controller for the sandbox's cgroup here (a v2 parent that holds \
             processes cannot delegate one): membership checked, memory not"
        ),
    }
    drop(ballast);

    cgroup.leave();
    assert!(!own_cgroups().contains("husk-"), "{}", own_cgroups());
    for path in &paths {
        assert!(!path.exists(), "{} is left", path.display());
    }
}

#[test]
fn a_cgroup_left_by_a_killed_holder_is_removed() {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let name = format!("left-{}", std::process::id());
    let cgroup = SandboxCgroup::enter(&name).expect("entering the sandbox's cgroup");
    let paths: Vec<PathBuf> = cgroup.paths().into_iter().map(Path::to_owned).collect();
    // As a killed holder would: out of the cgroup (it died), the directories left.
    for path in &paths {
        let parent = path.parent().expect("a parent cgroup");
        std::fs::write(parent.join("cgroup.procs"), std::process::id().to_string())
            .expect("moving back");
    }
    std::mem::forget(cgroup);
    assert!(paths.iter().all(|p| p.is_dir()));
    remove_leftover(&name);
    for path in &paths {
        assert!(!path.exists(), "{} is left", path.display());
    }
}
