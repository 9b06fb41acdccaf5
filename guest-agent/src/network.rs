//! The sandbox's network, in the VM: the interfaces the VMM gave it, named, sized and
//! addressed as the pod's interfaces are on the host, then the pod's routes.
//!
//! The host runtime reads each pod interface's configuration (CNI made it) and hands it
//! over in `SandboxConfig`; the VMM gave the VM one virtio-net device per interface, with
//! the interface's MAC. That MAC is how the agent tells the devices apart: the guest
//! kernel names them `eth0`, `eth1`... in probe order, which need not be the pod's order.

use std::time::{Duration, Instant};

use husk_netlink::{Link, Netlink, NetlinkError};
use husk_protocol::{Interface, MacAddress, Route};

/// How long to wait for a virtio-net device to show up as a link: the driver probes the
/// devices during boot, usually well before the agent asks, but nothing orders the two.
pub const LINK_PATIENCE: Duration = Duration::from_secs(5);
const LINK_POLL: Duration = Duration::from_millis(20);

/// What went wrong configuring the network.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum NetworkError {
    /// {0}
    Netlink(#[from] NetlinkError),
    /// no interface named 'lo'
    NoLoopback,
    /// no interface has the MAC {mac} (for '{name}'), after waiting {waited_ms} ms; the interfaces: {seen}
    NoSuchMac {
        mac: MacAddress,
        name: String,
        waited_ms: u128,
        seen: String,
    },
    /// two interfaces of the configuration have the MAC {0}
    DuplicateMac(MacAddress),
    /// interface '{name}' ({mac}): {source}
    Interface {
        name: String,
        mac: MacAddress,
        #[source]
        source: NetlinkError,
    },
    /// route {route}: no interface named '{interface}'
    NoRouteInterface { route: String, interface: String },
    /// route {route}: {source}
    Route {
        route: String,
        #[source]
        source: NetlinkError,
    },
}

/// Configures the network of the calling thread's network namespace: `lo` up; each of
/// `interfaces` (found by its MAC, waiting up to `patience` for it) down, renamed, its
/// MTU set, addressed and up; then `routes`, in order (a gateway must be reachable by
/// the addresses and routes before it).
///
/// An address or route the kernel has already (`EEXIST`: a prefix route the kernel made
/// for an address, say) is not an error.
pub fn configure(
    interfaces: &[Interface],
    routes: &[Route],
    patience: Duration,
) -> Result<(), NetworkError> {
    let mut netlink = Netlink::open()?;
    let lo = netlink
        .link_by_name("lo")?
        .ok_or(NetworkError::NoLoopback)?;
    netlink.set_link_up(lo.index)?;

    for (i, interface) in interfaces.iter().enumerate() {
        if interfaces[..i]
            .iter()
            .any(|other| other.mac == interface.mac)
        {
            return Err(NetworkError::DuplicateMac(interface.mac));
        }
    }
    let mut links = Vec::with_capacity(interfaces.len());
    for interface in interfaces {
        links.push(wait_for_mac(&mut netlink, interface, patience)?);
    }

    // Renaming goes by way of a temporary name, so that two devices the kernel named in
    // the other order (eth0 for the pod's eth1 and the other way about) can swap.
    for (interface, link) in interfaces.iter().zip(&links) {
        let in_interface = |source| NetworkError::Interface {
            name: interface.name.clone(),
            mac: interface.mac,
            source,
        };
        netlink.set_link_down(link.index).map_err(in_interface)?;
        if link.name != interface.name {
            netlink
                .set_name(link.index, &format!("husk-tmp{}", link.index))
                .map_err(in_interface)?;
        }
    }
    for (interface, link) in interfaces.iter().zip(&links) {
        configure_interface(&mut netlink, interface, link).map_err(|source| {
            NetworkError::Interface {
                name: interface.name.clone(),
                mac: interface.mac,
                source,
            }
        })?;
    }

    if routes.is_empty() {
        return Ok(());
    }
    let all = netlink.links()?;
    for route in routes {
        let text = describe(route);
        let Some(link) = all.iter().find(|link| link.name == route.interface) else {
            return Err(NetworkError::NoRouteInterface {
                route: text,
                interface: route.interface.clone(),
            });
        };
        match netlink.add_route(link.index, route.destination, route.gateway) {
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            result => result.map_err(|source| NetworkError::Route {
                route: text,
                source,
            })?,
        }
    }
    Ok(())
}

/// Names, sizes, addresses and brings up one interface's link (down, and renamed to a
/// temporary name if its name was wrong).
fn configure_interface(
    netlink: &mut Netlink,
    interface: &Interface,
    link: &Link,
) -> Result<(), NetlinkError> {
    if link.name != interface.name {
        netlink.set_name(link.index, &interface.name)?;
    }
    if let Some(mtu) = interface.mtu {
        netlink.set_mtu(link.index, mtu)?;
    }
    for &address in &interface.addresses {
        match netlink.add_address(link.index, address) {
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            result => result?,
        }
    }
    netlink.set_link_up(link.index)
}

/// The link with `interface`'s MAC, waiting up to `patience` for the driver to make it.
fn wait_for_mac(
    netlink: &mut Netlink,
    interface: &Interface,
    patience: Duration,
) -> Result<Link, NetworkError> {
    let start = Instant::now();
    loop {
        let links = netlink.links()?;
        // A device's MAC is its own; `kind` is none for a physical (virtio) device, and
        // preferring one keeps a virtual link that copied the MAC (a macvlan, a bridge
        // taking its port's) from being taken for it.
        let mut matching = links
            .iter()
            .filter(|link| link.mac == Some(interface.mac))
            .collect::<Vec<_>>();
        matching.sort_by_key(|link| link.kind.is_some());
        if let Some(link) = matching.first() {
            return Ok((*link).clone());
        }
        if start.elapsed() >= patience {
            let seen = links
                .iter()
                .map(|link| match link.mac {
                    Some(mac) => format!("{} ({mac})", link.name),
                    None => link.name.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(NetworkError::NoSuchMac {
                mac: interface.mac,
                name: interface.name.clone(),
                waited_ms: start.elapsed().as_millis(),
                seen,
            });
        }
        std::thread::sleep(LINK_POLL);
    }
}

/// `10.0.0.0/8 via 10.88.0.1 dev eth0`, as `ip route` puts it.
fn describe(route: &Route) -> String {
    let destination = match &route.destination {
        Some(prefix) => prefix.to_string(),
        None => "default".to_owned(),
    };
    match &route.gateway {
        Some(gateway) => format!("{destination} via {gateway} dev {}", route.interface),
        None => format!("{destination} dev {}", route.interface),
    }
}
