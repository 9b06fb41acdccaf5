//! husk-netlink against the real kernel. Each test runs on a thread that first moves into
//! a fresh network namespace of its own (`unshare(CLONE_NEWNET)`), so nothing it creates
//! is seen by, or leaks to, the host; the namespace goes when the thread ends. Root is
//! needed: a test that cannot run fails, saying why.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use husk_netlink::{Link, LinkLocal, Netlink, NetlinkError};
use husk_protocol::{IpPrefix, MacAddress, Route};
use husk_tests::netns::in_fresh_namespace;

/// Runs `test` on a thread in a fresh network namespace, with a socket opened there.
fn in_fresh_netns(test: impl FnOnce(&mut Netlink) + Send + 'static) {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the netlink tests create network namespaces and links and must run as root"
    );
    in_fresh_namespace(|| {
        let mut netlink = Netlink::open().expect("a netlink socket");
        let lo = netlink
            .link_by_name("lo")
            .expect("links")
            .expect("a fresh namespace has lo");
        assert!(!lo.up, "lo starts down in a fresh namespace");
        netlink.set_link_up(lo.index).expect("lo up");
        test(&mut netlink);
    });
}

fn prefix(text: &str) -> IpPrefix {
    text.parse().expect("address/len")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

fn link(netlink: &mut Netlink, name: &str) -> Link {
    netlink
        .link_by_name(name)
        .expect("links")
        .unwrap_or_else(|| panic!("no link {name}"))
}

fn veth(netlink: &mut Netlink, name: &str, peer: &str) -> (Link, Link) {
    netlink.create_veth(name, peer).expect("a veth pair");
    (link(netlink, name), link(netlink, peer))
}

#[test]
fn links_are_listed_and_configured() {
    in_fresh_netns(|netlink| {
        let lo = link(netlink, "lo");
        assert!(lo.up);
        assert_eq!(lo.kind, None);

        let (a, b) = veth(netlink, "husk-a", "husk-b");
        assert_eq!(a.kind.as_deref(), Some("veth"));
        assert_eq!(b.kind.as_deref(), Some("veth"));
        assert!(!a.up && !b.up, "a new veth is down");
        assert!(a.mac.is_some());
        assert_eq!(a.mtu, 1500);
        let names: HashSet<String> = netlink
            .links()
            .expect("links")
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(
            names,
            HashSet::from(["lo".to_owned(), "husk-a".to_owned(), "husk-b".to_owned()])
        );

        let mac = MacAddress([0x02, 0x42, 0xac, 0x11, 0x00, 0x07]);
        netlink.set_mac(a.index, mac).expect("set the MAC");
        netlink.set_mtu(a.index, 1400).expect("set the MTU");
        netlink.set_name(a.index, "eth0").expect("rename");
        netlink.set_link_up(a.index).expect("up");
        assert!(netlink.link_by_name("husk-a").expect("links").is_none());
        let eth0 = link(netlink, "eth0");
        assert_eq!(
            eth0,
            Link {
                index: a.index,
                name: "eth0".to_owned(),
                mac: Some(mac),
                mtu: 1400,
                up: true,
                kind: Some("veth".to_owned()),
            }
        );
        assert_eq!(netlink.link_by_index(a.index).expect("links"), Some(eth0));

        // Older kernels refuse to rename a link that is up (EBUSY); later ones
        // allow it. Down, every kernel does.
        if let Err(error) = netlink.set_name(a.index, "eth9") {
            assert_eq!(error.errno(), Some(libc::EBUSY), "{error}");
            assert!(error.to_string().starts_with("rename link"), "{error}");
        } else {
            netlink.set_name(a.index, "eth0").expect("rename back");
        }
        netlink.set_link_down(a.index).expect("down");
        assert!(!link(netlink, "eth0").up);
        netlink.set_name(a.index, "eth1").expect("rename when down");
        assert!(link(netlink, "eth1").mac == Some(mac));

        netlink.delete_link(b.index).expect("delete the veth");
        assert!(netlink.link_by_name("eth1").expect("links").is_none());
    });
}

#[test]
fn addresses_are_added_and_read_back() {
    in_fresh_netns(|netlink| {
        let (a, b) = veth(netlink, "husk-a", "husk-b");
        for address in ["10.88.0.5/16", "192.168.7.1/32", "fd00:88::5/64"] {
            netlink
                .add_address(a.index, prefix(address))
                .expect("add an address");
        }
        // Both ends up: the link gets a carrier, and IPv6 its link-local address.
        netlink.set_link_up(a.index).expect("up");
        netlink.set_link_up(b.index).expect("up");
        let deadline = Instant::now() + Duration::from_secs(5);
        let all = loop {
            let all = netlink
                .addresses(a.index, LinkLocal::Include)
                .expect("addresses");
            if all
                .iter()
                .any(|p| p.address.to_string().starts_with("fe80:"))
            {
                break all;
            }
            assert!(
                Instant::now() < deadline,
                "no IPv6 link-local address came: {all:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(all.len(), 4, "{all:?}");
        let chosen: HashSet<String> = netlink
            .addresses(a.index, LinkLocal::Skip)
            .expect("addresses")
            .into_iter()
            .map(|p| format!("{}/{}", p.address, p.prefix_len))
            .collect();
        assert_eq!(
            chosen,
            HashSet::from([
                "10.88.0.5/16".to_owned(),
                "192.168.7.1/32".to_owned(),
                "fd00:88::5/64".to_owned()
            ])
        );
        // The other end has none but its link-local one.
        assert_eq!(
            netlink
                .addresses(b.index, LinkLocal::Skip)
                .expect("addresses"),
            Vec::new()
        );
    });
}

#[test]
fn routes_are_added_and_read_back() {
    in_fresh_netns(|netlink| {
        let (a, b) = veth(netlink, "husk-a", "husk-b");
        netlink.set_link_up(a.index).expect("up");
        netlink.set_link_up(b.index).expect("up");
        netlink
            .add_address(a.index, prefix("10.0.0.2/24"))
            .expect("v4 address");
        netlink
            .add_address(a.index, prefix("fd00:1::2/64"))
            .expect("v6 address");

        let wanted = [
            // On the link.
            (Some(prefix("10.1.0.0/16")), None),
            (Some(prefix("169.254.1.1/32")), None),
            // Via a gateway.
            (Some(prefix("10.2.0.0/16")), Some(ip("10.0.0.1"))),
            // Default.
            (None, Some(ip("10.0.0.1"))),
            // IPv6: via a gateway, on the link, default.
            (Some(prefix("fd00:2::/64")), Some(ip("fd00:1::1"))),
            (Some(prefix("fd00:3::/64")), None),
            (None, Some(ip("fd00:1::1"))),
        ];
        for (destination, gateway) in wanted {
            netlink
                .add_route(a.index, destination, gateway)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let routes = netlink.routes(a.index).expect("routes");
        let expected: Vec<Route> = wanted
            .iter()
            .map(|(destination, gateway)| Route {
                destination: *destination,
                gateway: *gateway,
                interface: "husk-a".to_owned(),
            })
            .collect();
        // The kernel's prefix routes (10.0.0.0/24, fd00:1::/64, fe80::/64) are not
        // reported; the order is the kernel's (by family, then by its tables' order).
        assert_eq!(routes.len(), expected.len(), "{routes:#?}");
        for route in &expected {
            assert!(routes.contains(route), "{route:?} missing from {routes:#?}");
        }
        assert_eq!(netlink.routes(b.index).expect("routes"), Vec::new());

        // The same route again is refused, naming it.
        let error = netlink
            .add_route(a.index, None, Some(ip("10.0.0.1")))
            .expect_err("a duplicate route");
        assert_eq!(error.errno(), Some(libc::EEXIST), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("add the route to default via 10.0.0.1 out of link"),
            "{error}"
        );
        // A gateway that no route reaches.
        let error = netlink
            .add_route(a.index, Some(prefix("10.9.0.0/16")), Some(ip("172.16.0.1")))
            .expect_err("an unreachable gateway");
        assert_eq!(error.errno(), Some(libc::ENETUNREACH), "{error}");
        // Malformed requests never reach the kernel.
        for (destination, gateway) in [
            (None, None),
            (Some(prefix("10.3.0.0/16")), Some(ip("fd00:1::1"))),
            (Some(prefix("10.3.0.0/33")), None),
        ] {
            let error = netlink
                .add_route(a.index, destination, gateway)
                .expect_err("an invalid route");
            assert!(matches!(error, NetlinkError::Invalid { .. }), "{error}");
        }
    });
}

#[test]
fn refusals_name_the_operation_and_the_errno() {
    in_fresh_netns(|netlink| {
        let error = netlink
            .add_address(9999, prefix("10.0.0.1/24"))
            .expect_err("no link 9999");
        assert_eq!(error.errno(), Some(libc::ENODEV), "{error}");
        let text = error.to_string();
        assert!(
            text.starts_with("add address 10.0.0.1/24 to link 9999: "),
            "{text}"
        );
        assert!(text.contains("os error 19"), "{text}");

        let lo = link(netlink, "lo");
        let error = netlink
            .add_address(lo.index, prefix("127.0.0.1/8"))
            .expect_err("lo has 127.0.0.1/8");
        assert_eq!(error.errno(), Some(libc::EEXIST), "{error}");

        let error = netlink
            .add_address(lo.index, prefix("10.0.0.1/40"))
            .expect_err("an impossible prefix");
        assert!(matches!(error, NetlinkError::Invalid { .. }), "{error}");

        for result in [
            netlink.set_link_up(9999),
            netlink.set_mtu(9999, 1400),
            netlink.set_name(9999, "x"),
            netlink.delete_link(9999),
            netlink.add_ingress_qdisc(9999),
        ] {
            let error = result.expect_err("no link 9999");
            assert_eq!(error.errno(), Some(libc::ENODEV), "{error}");
            assert!(error.to_string().contains("link 9999"), "{error}");
        }
        let error = netlink.routes(9999).expect_err("no link 9999");
        assert_eq!(error.errno(), Some(libc::ENODEV), "{error}");

        // The kernel's own words (the extended ACK), when it gives them.
        let (a, _) = veth(netlink, "husk-a", "husk-b");
        let error = netlink.set_mtu(a.index, 10).expect_err("an MTU too small");
        assert_eq!(error.errno(), Some(libc::EINVAL), "{error}");
        eprintln!("the kernel's refusal of MTU 10: {error}");

        assert!(netlink.link_by_name("nope").expect("links").is_none());
        netlink
            .create_veth("husk-c", "husk-d")
            .expect("a veth pair");
        let error = netlink
            .create_veth("husk-c", "husk-e")
            .expect_err("husk-c exists");
        assert_eq!(error.errno(), Some(libc::EEXIST), "{error}");
    });
}

/// A dump larger than one datagram (the kernel fills at most 32 KiB per datagram): many
/// veths' worth of links and addresses, all read.
#[test]
fn dumps_span_many_datagrams() {
    in_fresh_netns(|netlink| {
        const PAIRS: u32 = 100;
        for i in 0..PAIRS {
            netlink
                .create_veth(&format!("va{i}"), &format!("vb{i}"))
                .expect("a veth pair");
        }
        let links = netlink.links().expect("links");
        assert_eq!(links.len() as u32, 2 * PAIRS + 1);
        let a0 = link(netlink, "va0");
        for i in 0..200u32 {
            let address = format!("10.{}.{}.1/32", i / 250, i % 250);
            netlink
                .add_address(a0.index, prefix(&address))
                .expect("address");
        }
        assert_eq!(
            netlink
                .addresses(a0.index, LinkLocal::Include)
                .expect("addresses")
                .len(),
            200
        );
    });
}

// ---- tc -------------------------------------------------------------------------------

/// An experimental EtherType (IEEE 802 "local experimental"): no stack in the namespace
/// answers or makes frames of it, so what a packet socket for it sees is the test's own.
const ETH_P_TEST: u16 = 0x88b5;

/// A raw packet socket on one link, for frames of `ETH_P_TEST`.
struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    index: u32,
}

impl PacketSocket {
    fn bind(index: u32) -> PacketSocket {
        use std::os::fd::FromRawFd;
        let protocol = ETH_P_TEST.to_be();
        // SAFETY: socket takes no pointers; the fd is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd was just opened and is ours alone.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        use std::os::fd::AsRawFd;
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = index as i32;
        // SAFETY: the pointer and length describe `address`, alive for the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 500_000,
        };
        // SAFETY: the pointer and length describe `timeout`, alive for the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
        PacketSocket { fd, index }
    }

    fn send(&self, to: MacAddress, from: MacAddress, payload: &[u8]) {
        use std::os::fd::AsRawFd;
        let mut frame = Vec::new();
        frame.extend_from_slice(&to.0);
        frame.extend_from_slice(&from.0);
        frame.extend_from_slice(&ETH_P_TEST.to_be_bytes());
        frame.extend_from_slice(payload);
        frame.resize(frame.len().max(60), 0);
        // SAFETY: the pointer and length describe `frame`, alive for the call.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            sent,
            frame.len() as isize,
            "send on link {}: {}",
            self.index,
            std::io::Error::last_os_error()
        );
    }

    /// Whether a frame carrying `payload` arrives within the receive timeout.
    fn receives(&self, payload: &[u8]) -> bool {
        use std::os::fd::AsRawFd;
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buffer = [0u8; 2048];
        while Instant::now() < deadline {
            // SAFETY: the pointer and length describe `buffer`, alive for the call.
            let received = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if received < 0 {
                let error = std::io::Error::last_os_error();
                match error.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => continue,
                    _ => panic!("recv on link {}: {error}", self.index),
                }
            }
            let frame = &buffer[..received as usize];
            if frame.len() >= 14 + payload.len() && &frame[14..14 + payload.len()] == payload {
                return true;
            }
        }
        false
    }
}

/// The tcfilter model, as the runtime wires a pod: two veth pairs `A`-`a` and `B`-`b`,
/// an ingress qdisc on `a` and `b`, and redirects a→b and b→a. A frame sent on `A`
/// leaves by `a`'s ingress for `b`'s egress and arrives on `B`, and back; deleting `a`'s
/// qdisc cuts one direction and not the other.
#[test]
fn ingress_redirects_carry_frames_both_ways() {
    in_fresh_netns(|netlink| {
        let (big_a, a) = veth(netlink, "husk-A", "husk-a");
        let (big_b, b) = veth(netlink, "husk-B", "husk-b");
        for index in [big_a.index, a.index, big_b.index, b.index] {
            netlink.set_link_up(index).expect("up");
        }
        let mac_a = big_a.mac.expect("a MAC");
        let mac_b = big_b.mac.expect("a MAC");
        let on_a = PacketSocket::bind(big_a.index);
        let on_b = PacketSocket::bind(big_b.index);

        // Not wired: nothing crosses.
        on_a.send(mac_b, mac_a, b"unwired");
        assert!(!on_b.receives(b"unwired"));

        netlink
            .add_ingress_qdisc(a.index)
            .expect("ingress qdisc on a");
        netlink
            .add_ingress_qdisc(b.index)
            .expect("ingress qdisc on b");
        let error = netlink
            .add_ingress_qdisc(a.index)
            .expect_err("a second ingress qdisc");
        assert_eq!(error.errno(), Some(libc::EEXIST), "{error}");
        netlink.redirect_ingress(a.index, b.index).expect("a to b");
        netlink.redirect_ingress(b.index, a.index).expect("b to a");

        on_a.send(mac_b, mac_a, b"from A to B");
        assert!(on_b.receives(b"from A to B"), "A's frame did not reach B");
        on_b.send(mac_a, mac_b, b"from B to A");
        assert!(on_a.receives(b"from B to A"), "B's frame did not reach A");
        // Broadcast too (ARP is): the redirect matches every frame.
        let broadcast = MacAddress([0xff; 6]);
        on_a.send(broadcast, mac_a, b"broadcast");
        assert!(on_b.receives(b"broadcast"));

        // The qdisc takes its filter with it.
        netlink.delete_ingress_qdisc(a.index).expect("delete");
        on_a.send(mac_b, mac_a, b"after the delete");
        assert!(
            !on_b.receives(b"after the delete"),
            "a's redirect outlived its qdisc"
        );
        on_b.send(mac_a, mac_b, b"still wired");
        assert!(on_a.receives(b"still wired"));

        let error = netlink
            .delete_ingress_qdisc(a.index)
            .expect_err("no qdisc left");
        assert!(
            matches!(error.errno(), Some(libc::EINVAL) | Some(libc::ENOENT)),
            "{error}"
        );
    });
}
