//! Layer 1 (DESIGN.md) for virtio-net: the freestanding test guest `virtio_net`
//! (tests/guests/virtio_net.c) runs on a real vCPU in a VM built in this process with the
//! husk-vmm library, on the tap that `husk_runtime::network::attach` wired to a pod's
//! `eth0` (the tcfilter model). The guest asks for the gateway's MAC with ARP and pings
//! it, and answers the gateway's own ARP request; the gateway is a real kernel stack in a
//! second network namespace (`husk_tests::netns`), so every frame goes guest →
//! virtio-net → tap → tc redirect → veth → the peer's kernel, and back. Afterwards no tap
//! and no ingress qdisc is left in the pod's namespace.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_protocol::MacAddress;
use husk_runtime::network;
use husk_tests::guests::{guest_path, Guest};
use husk_tests::netns::{self, PodNetns, GATEWAY, POD_ADDRESS, POD_MAC};
use husk_tests::process::console_lines;
use husk_tests::scratch_dir;
use husk_vmm::{
    ConsoleConfig, KernelConfig, MemoryConfig, VcpuConfig, Vmm, VmmConfig, DEFAULT_CMDLINE,
};

/// Far more than the guest needs (a second or two here, mostly the emulated ring-0
/// code): only a guest that hangs meets it.
const VM_TIMEOUT: Duration = Duration::from_secs(180);

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test creates network namespaces and taps and runs a VM: run it as root"
    );
}

/// `02:48:...`, as the guest prints a MAC.
fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The MAC of `eth0` in the peer's (the gateway's) namespace, as `ip` reports it.
fn gateway_mac(netns: &PodNetns) -> String {
    let out = netns::ip(&["-n", &netns.peer, "-o", "link", "show", "eth0"])
        .expect("ip link show eth0 in the peer namespace");
    let mut words = out.split_whitespace();
    words
        .find(|w| *w == "link/ether")
        .and_then(|_| words.next())
        .unwrap_or_else(|| panic!("no link/ether in `{out}`"))
        .to_owned()
}

/// Runs `vmm`, stopping it if it runs longer than [`VM_TIMEOUT`].
fn run_bounded(vmm: Vmm) -> husk_vmm::VmExit {
    let stop = vmm.stop_handle();
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + VM_TIMEOUT;
            while !done.load(Ordering::SeqCst) {
                if Instant::now() > deadline {
                    stop.stop();
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })
    };
    let exit = vmm.run();
    done.store(true, Ordering::SeqCst);
    let timed_out = watchdog.join().expect("the watchdog thread");
    let exit = exit.expect("running the VM");
    assert!(
        !timed_out,
        "the guest did not finish within {VM_TIMEOUT:?}: stopped"
    );
    exit
}

#[test]
fn a_guest_resolves_and_pings_the_gateway_through_the_pod_network() {
    require_root();
    let netns = PodNetns::new("vm").expect("the test's network namespaces");
    let attached = network::attach(&netns.pod_path()).expect("attach the pod network");
    assert_eq!(
        attached.nets.len(),
        1,
        "one interface (eth0) in the pod namespace"
    );
    let pod_mac: MacAddress = POD_MAC.parse().unwrap();
    assert_eq!(
        attached.nets[0].mac, pod_mac.0,
        "the VM gets CNI's MAC for eth0"
    );
    let tap_name = attached.nets[0].tap.name().to_owned();
    let qdiscs = netns.tc_in_pod(&["qdisc", "show", "dev", "eth0"]).unwrap();
    assert!(
        qdiscs.contains("ingress"),
        "eth0 should have an ingress qdisc while the VM is attached: {qdiscs}"
    );
    let gateway_mac = gateway_mac(&netns);
    // The gateway learns the guest's MAC from the guest's ARP request (a stale entry),
    // and would confirm it with an ARP request of its own only 5 s after first using it.
    // Without that delay it asks at once, while the guest pings: the guest's ARP
    // responder is tested too (`test.arp_from_gateway=1` makes the guest wait for it).
    let sysctl = netns
        .in_peer(
            "sysctl",
            &["-w", "net.ipv4.neigh.eth0.delay_first_probe_time=0"],
        )
        .expect("sysctl in the peer namespace");
    assert!(sysctl.status.success(), "sysctl: {sysctl:?}");

    let dir = scratch_dir("network-vm").expect("scratch dir");
    let console = dir.join("console.txt");
    let pod_ip = POD_ADDRESS.split('/').next().unwrap();
    let cmdline = [
        DEFAULT_CMDLINE.to_owned(),
        format!("test.ip={pod_ip}"),
        format!("test.gateway={GATEWAY}"),
        "test.arp_from_gateway=1".to_owned(),
    ]
    .join(" ");
    let network::Attached { nets, network, .. } = attached;
    let config = VmmConfig {
        memory: MemoryConfig { size_mib: 16 },
        vcpus: VcpuConfig { count: 1 },
        kernel: KernelConfig {
            path: guest_path(Guest::VirtioNet).expect("building the test guests"),
            initrd: None,
            cmdline,
        },
        console: ConsoleConfig::File(console.clone()),
        drives: Vec::new(),
        vsock: None,
        nets,
        kvm_device: PathBuf::from("/dev/kvm"),
        start_time: Instant::now(),
        seccomp: true,
    };
    let vmm = Vmm::new(config).expect("building the VM");
    let exit = run_bounded(vmm);

    let output = std::fs::read_to_string(&console).expect("reading the console");
    // Shown with --nocapture (and by the harness when the test fails).
    eprintln!("the guest's console:\n{output}");
    let describe = || format!("the VM ended: {}\nconsole:\n{output}", exit.reason);
    let lines = console_lines(&output);
    let failures: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("FAIL") || l.contains(": error:"))
        .collect();
    assert!(
        failures.is_empty(),
        "the guest reported failures: {failures:#?}\n{}",
        describe()
    );
    let assert_line = |line: &str| {
        assert_eq!(
            lines.iter().filter(|l| **l == line).count(),
            1,
            "expected the console line `{line}` once\n{}",
            describe()
        );
    };
    assert_line(&format!("virtio-net: mac {}", mac_text(pod_mac.0)));
    assert_line(&format!("virtio-net: ip {pod_ip} gateway {GATEWAY}"));
    assert_line(&format!("virtio-net: gateway is at {gateway_mac}"));
    for seq in 1..=3 {
        assert_line(&format!(
            "virtio-net: echo reply from {GATEWAY} seq {seq} ok"
        ));
    }
    let answered = format!("virtio-net: answering an ARP request from {GATEWAY}");
    assert!(
        lines.iter().any(|l| *l == answered),
        "expected the guest to answer the gateway's ARP request (`{answered}`)\n{}",
        describe()
    );
    assert_line("virtio-net: PASS");
    assert!(exit.reason.is_clean(), "{}", describe());

    // The tap went with the VM's device, and dropping the network removes the redirects.
    let links = netns.ip_in_pod(&["-o", "link", "show"]).unwrap();
    assert!(
        !links.contains(&tap_name),
        "the tap {tap_name} should be gone with the VM: {links}"
    );
    drop(network);
    let qdiscs = netns.tc_in_pod(&["qdisc", "show"]).unwrap();
    assert!(
        !qdiscs.contains("ingress"),
        "no ingress qdisc should be left in the pod namespace: {qdiscs}"
    );
}
