//! The agent's network configuration (`network::configure`, what `SandboxConfig`'s
//! `interfaces` and `routes` become in the VM) against the real kernel.
//!
//! The agent suite's layer-3 agent (a host process) cannot show it: with the host backend
//! the agent leaves the network alone (`configure` returns before it, as for the clock
//! and the hostname), so it runs only in the VM. Here the same function runs as a library
//! on a thread in a fresh network namespace of its own (`unshare(CLONE_NEWNET)`), with a
//! veth end whose MAC the test sets standing in for each virtio-net device. Root is
//! needed: a test that cannot run fails, saying why.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use husk_agent::network::{configure, NetworkError};
use husk_netlink::{LinkLocal, Netlink};
use husk_protocol::{Interface, IpPrefix, MacAddress, Route};
use husk_tests::netns::in_fresh_namespace;

const PATIENCE: Duration = Duration::from_secs(2);

fn in_fresh_netns(test: impl FnOnce(&mut Netlink) + Send + 'static) {
    assert!(
        rustix::process::geteuid().is_root(),
        "the network tests create network namespaces and links and must run as root"
    );
    in_fresh_namespace(|| {
        let mut netlink = Netlink::open().expect("a netlink socket");
        test(&mut netlink);
    });
}

fn prefix(text: &str) -> IpPrefix {
    text.parse().expect("address/len")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

fn mac(last: u8) -> MacAddress {
    MacAddress([0x02, 0x48, 0x55, 0x53, 0x4b, last])
}

/// A stand-in for a virtio-net device: a veth end named `name` with MAC `mac`, its peer
/// up so that it has a carrier once up.
fn device(netlink: &mut Netlink, name: &str, mac: MacAddress) -> u32 {
    let peer = format!("{name}-p");
    netlink.create_veth(name, &peer).expect("a veth pair");
    let index = netlink
        .link_by_name(name)
        .expect("links")
        .expect("the new veth")
        .index;
    let peer = netlink
        .link_by_name(&peer)
        .expect("links")
        .expect("the new veth's peer")
        .index;
    netlink.set_mac(index, mac).expect("set the MAC");
    netlink.set_link_up(peer).expect("peer up");
    index
}

fn route(destination: Option<&str>, gateway: Option<&str>, interface: &str) -> Route {
    Route {
        destination: destination.map(prefix),
        gateway: gateway.map(ip),
        interface: interface.to_owned(),
    }
}

#[test]
fn interfaces_and_routes_are_configured() {
    in_fresh_netns(|netlink| {
        let index = device(netlink, "ens3", mac(1));
        let interfaces = [Interface {
            name: "eth0".to_owned(),
            mac: mac(1),
            mtu: Some(1450),
            addresses: vec![prefix("10.88.0.5/16"), prefix("fd00:88::5/64")],
        }];
        let routes = [
            route(Some("10.99.0.0/16"), None, "eth0"),
            route(None, Some("10.88.0.1"), "eth0"),
            route(Some("10.100.0.0/16"), Some("10.99.0.1"), "eth0"),
            route(None, Some("fd00:88::1"), "eth0"),
            // What the kernel made for the address already: not an error.
            route(Some("10.88.0.0/16"), None, "eth0"),
        ];
        configure(&interfaces, &routes, PATIENCE).unwrap_or_else(|e| panic!("{e}"));

        let lo = netlink.link_by_name("lo").expect("links").expect("lo");
        assert!(lo.up, "lo is up");
        assert!(netlink.link_by_name("ens3").expect("links").is_none());
        let eth0 = netlink.link_by_name("eth0").expect("links").expect("eth0");
        assert_eq!(eth0.index, index);
        assert!(eth0.up);
        assert_eq!(eth0.mtu, 1450);
        assert_eq!(eth0.mac, Some(mac(1)));
        assert_eq!(
            netlink
                .addresses(index, LinkLocal::Skip)
                .expect("addresses"),
            interfaces[0].addresses
        );
        let configured = netlink.routes(index).expect("routes");
        // The last route is the kernel's own (proto kernel), not reported.
        assert_eq!(configured.len(), 4, "{configured:#?}");
        for route in &routes[..4] {
            assert!(
                configured.contains(route),
                "{route:?} missing from {configured:#?}"
            );
        }
    });
}

/// The guest kernel names devices in probe order; the pod's order may be the other.
#[test]
fn devices_named_the_other_way_round_swap_names() {
    in_fresh_netns(|netlink| {
        let first = device(netlink, "eth0", mac(1));
        let second = device(netlink, "eth1", mac(2));
        let interfaces = [
            Interface {
                name: "eth0".to_owned(),
                mac: mac(2),
                mtu: None,
                addresses: vec![prefix("10.1.0.2/24")],
            },
            Interface {
                name: "eth1".to_owned(),
                mac: mac(1),
                mtu: None,
                addresses: vec![prefix("10.2.0.2/24")],
            },
        ];
        let routes = [route(None, Some("10.2.0.1"), "eth1")];
        configure(&interfaces, &routes, PATIENCE).unwrap_or_else(|e| panic!("{e}"));
        let eth0 = netlink.link_by_name("eth0").expect("links").expect("eth0");
        let eth1 = netlink.link_by_name("eth1").expect("links").expect("eth1");
        assert_eq!((eth0.index, eth1.index), (second, first));
        assert!(eth0.up && eth1.up);
        assert_eq!(eth0.mtu, 1500, "no MTU given: the device's stays");
        assert_eq!(
            netlink
                .addresses(first, LinkLocal::Skip)
                .expect("addresses"),
            vec![prefix("10.2.0.2/24")]
        );
        assert_eq!(
            netlink.routes(first).expect("routes"),
            vec![routes[0].clone()]
        );
    });
}

/// The driver may make the link after the agent asks: it waits.
#[test]
fn a_late_device_is_waited_for() {
    in_fresh_netns(|netlink| {
        let late = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            // A thread starts in its creator's network namespace: this one's.
            let mut netlink = Netlink::open().expect("a netlink socket");
            device(&mut netlink, "late0", mac(7));
        });
        let interfaces = [Interface {
            name: "eth0".to_owned(),
            mac: mac(7),
            mtu: None,
            addresses: vec![prefix("192.168.50.2/24")],
        }];
        configure(&interfaces, &[], PATIENCE).unwrap_or_else(|e| panic!("{e}"));
        late.join().expect("the late device");
        let eth0 = netlink.link_by_name("eth0").expect("links").expect("eth0");
        assert!(eth0.up);
    });
}

#[test]
fn failures_name_what_failed() {
    in_fresh_netns(|netlink| {
        device(netlink, "ens3", mac(1));

        // No device with the MAC: named, with the links there are, after the wait.
        let interfaces = [Interface {
            name: "eth0".to_owned(),
            mac: mac(9),
            mtu: None,
            addresses: Vec::new(),
        }];
        let started = Instant::now();
        let error = configure(&interfaces, &[], Duration::from_millis(300))
            .expect_err("no device has the MAC");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(matches!(error, NetworkError::NoSuchMac { .. }), "{error}");
        let text = error.to_string();
        for part in [
            "no interface has the MAC 02:48:55:53:4b:09 (for 'eth0')",
            "ens3 (02:48:55:53:4b:01)",
            "lo",
        ] {
            assert!(text.contains(part), "{part:?} not in {text:?}");
        }

        // A route out of an interface there is not.
        let interfaces = [Interface {
            name: "eth0".to_owned(),
            mac: mac(1),
            mtu: None,
            addresses: vec![prefix("10.88.0.5/16")],
        }];
        let error = configure(
            &interfaces,
            &[route(None, Some("10.88.0.1"), "eth7")],
            PATIENCE,
        )
        .expect_err("no eth7");
        assert_eq!(
            error.to_string(),
            "route default via 10.88.0.1 dev eth7: no interface named 'eth7'"
        );

        // A gateway nothing reaches: the kernel's errno, with the route.
        let error = configure(
            &interfaces,
            &[route(None, Some("172.16.0.1"), "eth0")],
            PATIENCE,
        )
        .expect_err("an unreachable gateway");
        let text = error.to_string();
        assert!(
            text.starts_with("route default via 172.16.0.1 dev eth0: "),
            "{text}"
        );
        assert!(
            text.contains(&std::io::Error::from_raw_os_error(libc::ENETUNREACH).to_string()),
            "{text}"
        );

        // An MTU the device refuses: the interface and the operation named.
        let interfaces = [Interface {
            name: "eth0".to_owned(),
            mac: mac(1),
            mtu: Some(10),
            addresses: Vec::new(),
        }];
        let error = configure(&interfaces, &[], PATIENCE).expect_err("MTU 10");
        let text = error.to_string();
        assert!(
            text.starts_with("interface 'eth0' (02:48:55:53:4b:01): set the MTU of link"),
            "{text}"
        );

        // One MAC for two interfaces.
        let twice = [interfaces[0].clone(), interfaces[0].clone()];
        let error = configure(&twice, &[], PATIENCE).expect_err("a duplicate MAC");
        assert!(matches!(error, NetworkError::DuplicateMac(_)), "{error}");
    });
}
