//! The pod network's tcfilter wiring (`husk_runtime::network`), as root, against a
//! network namespace set up the way CNI leaves one (`husk_tests::netns`). The test plays
//! the guest on the tap's file descriptor: the VM's part is tested elsewhere.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use husk_protocol::{Interface, MacAddress, Route};
use husk_runtime::network::{self, NetworkError};
use husk_tests::netns::{PodNetns, GATEWAY, POD_ADDRESS, POD_MAC, POD_MTU};
use husk_vmm::Tap;

/// The virtio-net header a tap with IFF_VNET_HDR puts before every frame.
const VNET_HDR_LEN: usize = 12;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests create network namespaces and taps, and must run as root"
    );
}

fn pod_ip() -> Ipv4Addr {
    POD_ADDRESS.split('/').next().unwrap().parse().unwrap()
}

/// The next frame from the tap whose ethertype is `ethertype`, without its virtio-net
/// header; frames of other types (IPv6 neighbour discovery, say) are skipped.
fn next_frame(tap: &Tap, ethertype: u16, patience: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + patience;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        match tap.read(&mut buf) {
            Ok(n) if n >= VNET_HDR_LEN + 14 => {
                let frame = &buf[VNET_HDR_LEN..n];
                if u16::from_be_bytes([frame[12], frame[13]]) == ethertype {
                    return Some(frame.to_vec());
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("reading the tap: {e}"),
        }
    }
    None
}

/// The guest's answer to an ARP request for its address, with the virtio-net header.
fn arp_reply(request: &[u8], mac: [u8; 6]) -> Vec<u8> {
    let asker_mac = &request[22..28];
    let asker_ip = &request[28..32];
    let mut frame = vec![0u8; VNET_HDR_LEN];
    frame.extend_from_slice(asker_mac);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    // Ethernet, IPv4, 6- and 4-byte addresses, opcode 2 (reply).
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&pod_ip().octets());
    frame.extend_from_slice(asker_mac);
    frame.extend_from_slice(asker_ip);
    frame
}

#[test]
fn a_cni_interface_is_wired_to_a_tap_both_ways_and_unwired_after() {
    require_root();
    let netns = PodNetns::new("wire").expect("the test's network namespaces");
    let attached = network::attach(&netns.pod_path()).expect("attach");

    // What the guest is told: CNI's interface as it was, minus the kernel's own routes.
    let mac: MacAddress = POD_MAC.parse().unwrap();
    assert_eq!(
        attached.interfaces,
        vec![Interface {
            name: "eth0".into(),
            mac,
            mtu: Some(POD_MTU),
            addresses: vec![POD_ADDRESS.parse().unwrap()],
        }]
    );
    assert_eq!(
        attached.routes,
        vec![Route {
            destination: None,
            gateway: Some(GATEWAY.parse().unwrap()),
            interface: "eth0".into(),
        }]
    );
    assert_eq!(attached.nets.len(), 1);
    assert_eq!(attached.nets[0].mac, mac.0);
    let tap = &attached.nets[0].tap;
    let qdiscs = netns.tc_in_pod(&["qdisc", "show"]).unwrap();
    for dev in ["eth0", tap.name()] {
        assert!(
            qdiscs.contains(&format!("qdisc ingress ffff: dev {dev}")),
            "{dev} has no ingress qdisc: {qdiscs}"
        );
    }
    let link = netns.ip_in_pod(&["link", "show", tap.name()]).unwrap();
    assert!(link.contains(&format!("mtu {POD_MTU}")), "{link}");

    // The peer sends UDP datagrams to the pod: its ARP request comes out of the tap, the
    // answer written into the tap reaches the peer, and then the datagrams come out too.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (request, datagram) = std::thread::scope(|scope| {
        scope.spawn(|| {
            netns
                .on_peer(|| {
                    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        // Fails until the pod's MAC is known; that is what it waits for.
                        let _ = socket.send_to(b"husk", (pod_ip(), 7));
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
                .expect("the peer's namespace")
        });
        let request = next_frame(tap, ETHERTYPE_ARP, Duration::from_secs(10));
        if let Some(request) = &request {
            tap.write(&arp_reply(request, mac.0))
                .expect("the ARP reply");
        }
        let datagram = next_frame(tap, ETHERTYPE_IPV4, Duration::from_secs(10));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (request, datagram)
    });
    let request = request.expect("the peer's ARP request on the tap");
    assert_eq!(&request[38..42], &pod_ip().octets(), "asks for the pod");
    let datagram = datagram.expect("the datagram, once the peer knew the pod's MAC");
    assert_eq!(&datagram[0..6], &mac.0, "to the pod's MAC");
    assert_eq!(datagram[23], 17, "UDP");
    assert_eq!(&datagram[30..34], &pod_ip().octets());
    assert_eq!(&datagram[datagram.len() - 4..], b"husk");

    let tap_name = tap.name().to_owned();
    drop(attached);
    let qdiscs = netns.tc_in_pod(&["qdisc", "show"]).unwrap();
    assert!(!qdiscs.contains("ingress"), "left behind: {qdiscs}");
    assert!(
        netns.ip_in_pod(&["link", "show", &tap_name]).is_err(),
        "the tap outlived its file descriptor"
    );
}

#[test]
fn a_missing_namespace_is_named() {
    require_root();
    let error = match network::attach("/run/netns/husk-no-such-namespace".as_ref()) {
        Err(e) => e,
        Ok(_) => panic!("attached to a namespace that does not exist"),
    };
    assert!(matches!(error, NetworkError::OpenNamespace(..)), "{error}");
    assert!(
        error
            .to_string()
            .contains("/run/netns/husk-no-such-namespace"),
        "{error}"
    );
}
