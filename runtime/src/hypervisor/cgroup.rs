//! The cgroup that accounts a VM sandbox's overhead: the husk process that holds the VM
//! (the shim, or `husk run`'s sandbox process) moves into a cgroup of its own, created
//! below the one it was started in, for as long as it holds the VM. The guest's RAM, the
//! VMM's own memory and every thread's CPU time are then charged there, and still to
//! whatever contains the parent (containerd's limits keep applying).
//!
//! Both layouts are handled: the unified hierarchy (cgroup v2, one tree) and the legacy
//! one (v1, a tree per controller, of which `memory`, `pids`, `cpu` and `cpuacct` are
//! used). When the holder stops the VM it moves back to where it came from and removes
//! the cgroup; if it is killed first, [`remove_leftover`] removes the emptied cgroup from
//! another process started in the same place (the shim's `delete` run, `husk delete`).

use std::path::{Path, PathBuf};

/// The cgroup file systems' mount point.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The v1 controllers a sandbox's cgroup is made in.
const V1_CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "cpuacct"];

/// The v2 controllers enabled for the sandbox's cgroup where the parent allows it.
const V2_CONTROLLERS: &[&str] = &["+memory", "+pids", "+cpu"];

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum CgroupError {
    /// cannot read this process's cgroups: {0}
    Own(std::io::Error),
    /// cannot create the sandbox's cgroup {0}: {1}
    Create(PathBuf, std::io::Error),
    /// cannot move this process into {0}: {1}
    Enter(PathBuf, std::io::Error),
}

/// One place in one hierarchy: the parent the process came from and the sandbox's cgroup
/// below it.
#[derive(Debug, Clone)]
struct Place {
    parent: PathBuf,
    sandbox: PathBuf,
}

/// The sandbox's cgroup, entered; leaving it is [`SandboxCgroup::leave`] (or the drop).
#[derive(Debug)]
pub struct SandboxCgroup {
    places: Vec<Place>,
}

impl SandboxCgroup {
    /// Creates the cgroup `husk-<name>` below this process's own in every hierarchy the
    /// module names, and moves the whole process (every thread) into it.
    pub fn enter(name: &str) -> Result<SandboxCgroup, CgroupError> {
        let places = places(name)?;
        let mut entered = SandboxCgroup { places: Vec::new() };
        for place in places {
            match std::fs::create_dir(&place.sandbox) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(CgroupError::Create(place.sandbox, e)),
            }
            if is_v2(&place) {
                // Best effort: a non-root parent that holds processes itself (containerd's,
                // under systemd) may not delegate controllers; the cgroup still groups the
                // process and counts its CPU time (cpu.stat).
                for controller in V2_CONTROLLERS {
                    let _ = std::fs::write(place.parent.join("cgroup.subtree_control"), controller);
                }
            }
            // Recorded first: a failed move still leaves a directory to remove.
            entered.places.push(place.clone());
            move_process(&place.sandbox)
                .map_err(|e| CgroupError::Enter(place.sandbox.clone(), e))?;
        }
        Ok(entered)
    }

    /// The sandbox's cgroup directories (one per hierarchy).
    pub fn paths(&self) -> Vec<&Path> {
        self.places.iter().map(|p| p.sandbox.as_path()).collect()
    }

    /// Moves the process back to where it came from and removes the cgroup.
    pub fn leave(mut self) {
        self.leave_all();
    }

    fn leave_all(&mut self) {
        for place in self.places.drain(..) {
            if let Err(e) = move_process(&place.parent) {
                log::warn!("moving back to {}: {e}", place.parent.display());
            }
            remove(&place.sandbox);
        }
    }
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        self.leave_all();
    }
}

/// Removes the cgroup `husk-<name>` below this process's own, if a holder killed before
/// it could remove it left one; it must be empty (the holder is gone).
pub fn remove_leftover(name: &str) {
    if let Ok(places) = places(name) {
        for place in places {
            remove(&place.sandbox);
        }
    }
}

fn remove(dir: &Path) {
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("removing the cgroup {}: {e}", dir.display()),
    }
}

fn is_v2(place: &Place) -> bool {
    place.parent.join("cgroup.controllers").is_file()
}

/// Writes this process's pid to `dir/cgroup.procs`, which moves all of its threads.
fn move_process(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
}

/// Where the sandbox's cgroup goes in each hierarchy, from `/proc/self/cgroup`: in the
/// unified one if that is all there is, else in each of [`V1_CONTROLLERS`] mounted.
fn places(name: &str) -> Result<Vec<Place>, CgroupError> {
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(CgroupError::Own)?;
    let dir = format!("husk-{name}");
    let place = |mount: PathBuf, path: &str| {
        let parent = mount.join(path.trim_start_matches('/'));
        Place {
            sandbox: parent.join(&dir),
            parent,
        }
    };
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.controllers").is_file() {
        let path = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .unwrap_or("/");
        return Ok(vec![place(root.to_owned(), path)]);
    }
    let mut places = Vec::new();
    for line in own.lines() {
        // hierarchy-id:controller[,controller...]:path
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        for controller in controllers.split(',') {
            if V1_CONTROLLERS.contains(&controller) && root.join(controller).is_dir() {
                places.push(place(root.join(controller), path));
            }
        }
    }
    Ok(places)
}
