//! The process's user: supplementary groups, gid, uid; also its umask.
//!
//! OCI names the user by number (`process.user.uid`, `gid`, `additionalGids`); there is
//! no lookup in the container's `/etc/passwd` (`user.username` is a Windows-only field
//! and `validate` refuses it). These are raw per-thread syscalls (rustix's `set_thread_*`),
//! which is right here: the process that calls them is single-threaded.
//!
//! Order: groups, then gid, then uid (after the uid leaves 0 the process could no longer
//! change its groups). `PR_SET_KEEPCAPS` is set first so a switch away from uid 0 keeps
//! the permitted capabilities, which `caps::set_sets` then trims to what the spec asks.

use oci_spec::runtime::User;
use rustix::process::{Gid, Uid};
use rustix::thread;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum UserError {
    /// process.user.additionalGids {gids:?}: setgroups: {source}
    Groups {
        gids: Vec<u32>,
        source: rustix::io::Errno,
    },
    /// process.user.gid {gid}: setresgid: {source}
    Gid { gid: u32, source: rustix::io::Errno },
    /// process.user.uid {uid}: setresuid: {source}
    Uid { uid: u32, source: rustix::io::Errno },
    /// process.user.uid {uid}: keeping capabilities across the uid switch (PR_SET_KEEPCAPS): {source}
    KeepCaps { uid: u32, source: rustix::io::Errno },
    /// process.user: the id {0} is not a valid user or group id
    InvalidId(u32),
}

/// Switches groups, gid and uid to the spec's, keeping the permitted capabilities.
pub fn switch(user: &User) -> Result<(), UserError> {
    let uid = user.uid();
    let gid = user.gid();
    // -1 means "unchanged" to the kernel: not an id anyone can be.
    for id in [uid, gid]
        .into_iter()
        .chain(user.additional_gids().iter().flatten().copied())
    {
        if id == u32::MAX {
            return Err(UserError::InvalidId(id));
        }
    }
    let gids = user.additional_gids().clone().unwrap_or_default();
    let groups: Vec<Gid> = gids.iter().map(|g| Gid::from_raw(*g)).collect();
    thread::set_thread_groups(&groups).map_err(|source| UserError::Groups { gids, source })?;
    let g = Gid::from_raw(gid);
    thread::set_thread_res_gid(g, g, g).map_err(|source| UserError::Gid { gid, source })?;
    thread::set_keep_capabilities(true).map_err(|source| UserError::KeepCaps { uid, source })?;
    let u = Uid::from_raw(uid);
    thread::set_thread_res_uid(u, u, u).map_err(|source| UserError::Uid { uid, source })?;
    Ok(())
}

/// The umask the process should run with: the spec's, or the usual 022.
pub fn umask(user: &User) -> rustix::fs::Mode {
    rustix::fs::Mode::from_bits_truncate(user.umask().unwrap_or(0o022) & 0o777)
}

/// The user's home directory from the container's `/etc/passwd` (read directly: no NSS in
/// the agent), or `/`. For `HOME` when the spec's environment has none, as runc sets it.
pub fn home(uid: u32) -> String {
    let Ok(passwd) = std::fs::read_to_string("/etc/passwd") else {
        return "/".to_owned();
    };
    home_in(&passwd, uid).unwrap_or_else(|| "/".to_owned())
}

fn home_in(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [_, _, id, _, _, home, ..] if id.parse() == Ok(uid) && !home.is_empty() => {
                Some((*home).to_owned())
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n# junk\nuser:x:1000:1000::/home/user:/bin/sh\nodd:x:7\n";
        assert_eq!(home_in(passwd, 0).as_deref(), Some("/root"));
        assert_eq!(home_in(passwd, 1000).as_deref(), Some("/home/user"));
        assert_eq!(home_in(passwd, 7), None);
        assert_eq!(home_in(passwd, 42), None);
    }
}
