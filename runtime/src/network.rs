//! A VM sandbox's share of the pod's network: the "tcfilter" model.
//!
//! CNI prepares a network namespace for the pod and puts an interface with its addresses
//! and routes there (a veth whose peer is on a bridge, usually `eth0`). The VM cannot
//! use a veth, so for each such interface husk, inside that namespace:
//!
//! 1. opens a tap (`husk-tapN`), with the interface's MTU, and brings it up;
//! 2. gives both an ingress qdisc and a match-all u32 filter whose mirred action
//!    redirects every frame that arrives on one out of the other;
//! 3. hands the VM a virtio-net device on the tap with the interface's MAC, and the agent
//!    the interface's name, MTU, addresses and routes, which it sets up in the guest.
//!
//! Frames then pass between the guest and CNI's network untouched by the namespace's own
//! stack, whatever the plugin did (bridge, ptp, macvlan...), and the guest answers ARP
//! for the addresses the plugin chose with the MAC the plugin saw. The tap lives as long
//! as its file descriptor, so it goes when the VM's device does, even if husk is killed;
//! dropping the [`PodNetwork`] removes the qdiscs from the interfaces it found.

use std::fs::File;
use std::path::{Path, PathBuf};

use husk_netlink::{LinkLocal, Netlink, NetlinkError};
use husk_protocol::{Interface, MacAddress, Route};
use husk_vmm::{NetConfig, Tap, TapError};

/// The MTU a virtio-net interface has unless told otherwise.
const DEFAULT_MTU: u32 = 1500;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum NetworkError {
    /// cannot open the network namespace {0}: {1}
    OpenNamespace(PathBuf, std::io::Error),
    /// cannot enter the network namespace {0}: {1}
    EnterNamespace(PathBuf, std::io::Error),
    /// cannot start a thread in the network namespace: {0}
    Thread(std::io::Error),
    /// network namespace {0}: {1}
    Netlink(PathBuf, NetlinkError),
    /// network namespace {0}: cannot open tap {1}: {2}
    Tap(PathBuf, String, TapError),
    /// network namespace {0}: tap {1} is open but has no link
    TapWithoutLink(PathBuf, String),
    /// network namespace {0}: interface {1} has no MAC address
    NoMac(PathBuf, String),
}

/// What [`attach`] made for a sandbox.
pub struct Attached {
    /// One virtio-net device per interface, for the VM.
    pub nets: Vec<NetConfig>,
    /// The same interfaces and their routes, for the agent.
    pub interfaces: Vec<Interface>,
    pub routes: Vec<Route>,
    /// What to undo when the sandbox stops.
    pub network: PodNetwork,
}

/// The interfaces of a pod's network namespace that carry a sandbox's traffic.
#[derive(Debug)]
pub struct PodNetwork {
    netns: PathBuf,
    /// The link indexes of the CNI interfaces that got an ingress qdisc.
    redirected: Vec<u32>,
}

/// Wires every interface of the network namespace at `netns` (a path such as
/// `/var/run/netns/cni-…`) to a tap of its own, as the module describes. Nothing is left
/// behind when it fails.
pub fn attach(netns: &Path) -> Result<Attached, NetworkError> {
    in_namespace(netns, |netlink| {
        let failed = |e| NetworkError::Netlink(netns.to_owned(), e);
        let mut attached = Attached {
            nets: Vec::new(),
            interfaces: Vec::new(),
            routes: Vec::new(),
            network: PodNetwork {
                netns: netns.to_owned(),
                redirected: Vec::new(),
            },
        };
        let links = netlink.links().map_err(failed)?;
        let wired = links.iter().filter(|link| {
            // Not the loopback (which the guest has of its own) and not a tap of ours.
            link.name != "lo" && link.kind.as_deref() != Some("tun")
        });
        for (number, link) in wired.enumerate() {
            let mac = link
                .mac
                .ok_or_else(|| NetworkError::NoMac(netns.to_owned(), link.name.clone()))?;
            let addresses = netlink
                .addresses(link.index, LinkLocal::Skip)
                .map_err(failed)?;
            let mut routes = netlink.routes(link.index).map_err(failed)?;
            let tap_name = format!("husk-tap{number}");
            let tap = Tap::open(&tap_name)
                .map_err(|e| NetworkError::Tap(netns.to_owned(), tap_name.clone(), e))?;
            let Some(tap_link) = netlink.link_by_name(tap.name()).map_err(failed)? else {
                return Err(NetworkError::TapWithoutLink(netns.to_owned(), tap_name));
            };
            // Recorded first: a half-made redirect is undone too.
            attached.network.redirected.push(link.index);
            wire(netlink, link.index, tap_link.index, link.mtu).map_err(failed)?;
            log::debug!(
                "network: {} ({mac}, mtu {}) redirected to and from {}",
                link.name,
                link.mtu,
                tap.name()
            );
            attached.nets.push(NetConfig { tap, mac: mac.0 });
            attached.interfaces.push(Interface {
                name: link.name.clone(),
                mac,
                mtu: (link.mtu != DEFAULT_MTU).then_some(link.mtu),
                addresses,
            });
            for route in &mut routes {
                route.interface = link.name.clone();
            }
            attached.routes.append(&mut routes);
        }
        // Routes via a gateway need the gateway's prefix first: routes on the link, then
        // the rest, each group in the kernel's order.
        attached.routes.sort_by_key(|route| route.gateway.is_some());
        Ok(attached)
    })?
}

/// The tap up with the interface's MTU, and frames redirected both ways.
fn wire(netlink: &mut Netlink, link: u32, tap_link: u32, mtu: u32) -> Result<(), NetlinkError> {
    netlink.set_mtu(tap_link, mtu)?;
    netlink.set_link_up(tap_link)?;
    for (from, to) in [(link, tap_link), (tap_link, link)] {
        netlink.add_ingress_qdisc(from)?;
        netlink.redirect_ingress(from, to)?;
    }
    Ok(())
}

impl PodNetwork {
    fn undo(&self, netlink: &mut Netlink) {
        for index in &self.redirected {
            match netlink.delete_ingress_qdisc(*index) {
                // Gone with its link, or never made.
                Err(e) if matches!(e.errno(), Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)) => {
                }
                Err(e) => log::warn!("network namespace {}: {e}", self.netns.display()),
                Ok(()) => {}
            }
        }
    }
}

impl Drop for PodNetwork {
    /// Removes the redirects from the pod's interfaces (the taps go with the VM). A
    /// namespace that is gone already (CNI deleted it) leaves nothing to do.
    fn drop(&mut self) {
        match in_namespace(&self.netns, |netlink| self.undo(netlink)) {
            Err(NetworkError::OpenNamespace(_, e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("{e}"),
            Ok(()) => {}
        }
    }
}

/// Runs `work` on a thread of its own inside the network namespace at `netns`, with a
/// netlink socket there. A thread of its own: the namespace is a per-thread setting, and
/// that thread ends with the work, so no thread of the caller's ever changes namespace.
fn in_namespace<T: Send>(
    netns: &Path,
    work: impl FnOnce(&mut Netlink) -> T + Send,
) -> Result<T, NetworkError> {
    let namespace =
        File::open(netns).map_err(|e| NetworkError::OpenNamespace(netns.to_owned(), e))?;
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("husk-netns".into())
            .spawn_scoped(scope, move || {
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&namespace),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| NetworkError::EnterNamespace(netns.to_owned(), e.into()))?;
                let mut netlink =
                    Netlink::open().map_err(|e| NetworkError::Netlink(netns.to_owned(), e))?;
                Ok(work(&mut netlink))
            })
            .map_err(NetworkError::Thread)?;
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The MAC a VM gets for an interface when nothing else chose one.
pub fn random_mac() -> MacAddress {
    let mut mac = [0u8; 6];
    // Without kernel randomness, a fixed locally administered MAC still works for one VM.
    let _ = rustix::rand::getrandom(&mut mac, rustix::rand::GetRandomFlags::empty());
    mac[0] = (mac[0] & 0xfe) | 0x02;
    MacAddress(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_macs_are_unicast_and_locally_administered() {
        for _ in 0..16 {
            let mac = random_mac();
            assert_eq!(mac.0[0] & 0x03, 0x02, "{mac}");
        }
    }
}
