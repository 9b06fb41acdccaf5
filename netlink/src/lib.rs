//! A small synchronous rtnetlink client: what husk needs of links, addresses, routes and
//! tc, and nothing more.
//!
//! Two users: the guest agent (PID 1 in the VM) configures the sandbox's interfaces with
//! it, and the host runtime reads the configuration CNI gave a pod's veth and wires the
//! veth to the VM's tap with tc (the "tcfilter" model: an ingress qdisc on each side and
//! a u32 match-all filter whose mirred action redirects every frame to the other side).
//!
//! It is synchronous on purpose: the agent has no async runtime, and every operation is
//! one request and its answer. The messages come from `netlink-packet-route`; the socket
//! is `netlink-sys`'s plain blocking one. A [`Netlink`] works in the network namespace of
//! the thread that opened it, for as long as it lives.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroI32;

use husk_protocol::{IpPrefix, MacAddress, Route};
use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcHeader, TcMessage, TcMirror, TcMirrorActionType, TcOption,
    TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The receive buffer. The kernel sizes a dump's datagrams to what the reader's buffer
/// takes, up to 32 KiB (`netlink_dump`); twice that leaves room, and a datagram that still
/// does not fit is an error, never a silently truncated answer.
const RECEIVE_BUFFER: usize = 64 * 1024;

/// How often a dump the kernel marks inconsistent (`NLM_F_DUMP_INTR`: the table changed
/// while it was being read) is retried before giving up.
const DUMP_ATTEMPTS: usize = 3;

/// `RT_TABLE_MAIN`: the table `ip route` shows, the one routes are read from and added to.
const RT_TABLE_MAIN: u8 = 254;

/// `ETH_P_ALL` (linux/if_ether.h): a tc filter's protocol matching every frame.
const ETH_P_ALL: u16 = 0x0003;

/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

/// The priority of the redirect filter: there is one filter per ingress qdisc, any
/// fixed priority will do, and a fixed one keeps the filter easy to find with `tc`.
const REDIRECT_PRIORITY: u16 = 1;

/// `NLMSGERR_ATTR_MSG` (linux/netlink.h): the extended ACK's human-readable message.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// The length of a netlink message header, which a capped error message echoes.
const NLMSG_HEADER_LEN: usize = 16;

/// What went wrong talking to the kernel. The operation is named in words
/// (`add address 10.0.0.2/24 to link 7`); a refusal carries the kernel's errno and, when
/// the kernel gave one, its extended-ACK message.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum NetlinkError {
    /// cannot open a NETLINK_ROUTE socket: {0}
    Open(#[source] io::Error),
    /// {operation}: cannot send the request: {source}
    Send {
        operation: String,
        #[source]
        source: io::Error,
    },
    /// {operation}: cannot read the kernel's answer: {source}
    Receive {
        operation: String,
        #[source]
        source: io::Error,
    },
    /// {operation}: {source}{kernel_message}
    Kernel {
        operation: String,
        #[source]
        source: io::Error,
        /// `" (the kernel says: ...)"`, or empty when the kernel said nothing more.
        kernel_message: String,
    },
    /// {operation}: cannot decode the kernel's answer: {reason}
    Decode { operation: String, reason: String },
    /// {operation}: the table kept changing while it was being read, attempt after attempt
    Inconsistent { operation: String },
    /// {operation}: {reason}
    Invalid {
        operation: String,
        reason: &'static str,
    },
}

impl NetlinkError {
    /// The errno the kernel answered with, if this is a kernel refusal (`EEXIST` when an
    /// address or route is there already, `ENODEV` for a missing link, ...).
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The hardware address; none for links without one (`lo` has all zeroes, a tun
    /// device none).
    pub mac: Option<MacAddress>,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`), whether or not it has a carrier.
    pub up: bool,
    /// The driver kind from `IFLA_LINKINFO` (`veth`, `tun`, `bridge`, ...); none for
    /// physical devices, virtio-net included, and `lo`.
    pub kind: Option<String>,
}

/// Whether [`Netlink::addresses`] reports IPv6 link-local addresses (`fe80::/10`).
///
/// The kernel gives every IPv6 interface one, derived from its MAC, so copying them to
/// another interface is wrong: a caller copying configuration skips them, a caller
/// inspecting an interface may want them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkLocal {
    Skip,
    Include,
}

/// A NETLINK_ROUTE socket in the network namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Open)?;
        socket.bind_auto().map_err(NetlinkError::Open)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Open)?;
        // Extended ACKs turn a bare EINVAL into one naming the bad attribute; capped
        // ACKs keep the error message from echoing the whole request. Kernels before 4.12
        // have neither, and then the errno alone has to do.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Netlink {
            socket,
            sequence: 0,
            buffer: Vec::with_capacity(RECEIVE_BUFFER),
        })
    }

    // ---- links ------------------------------------------------------------------------

    /// Every link in the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let answers = self.dump(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            "list the links",
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|message| match message {
                RouteNetlinkMessage::NewLink(link) => Some(link_from(link)),
                _ => None,
            })
            .collect())
    }

    /// The link named `name`, if there is one.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        Ok(self.links()?.into_iter().find(|link| link.name == name))
    }

    /// The link with index `index`, if there is one.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NetlinkError> {
        Ok(self.links()?.into_iter().find(|link| link.index == index))
    }

    pub fn set_link_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.set_up_flag(index, true)
    }

    pub fn set_link_down(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.set_up_flag(index, false)
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let operation = format!("set the MTU of link {index} to {mtu}");
        self.set_link(index, LinkAttribute::Mtu(mtu), operation)
    }

    /// Renames a link. Set it down first: older kernels refuse (`EBUSY`) to rename a
    /// link that is up.
    pub fn set_name(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let operation = format!("rename link {index} to '{name}'");
        self.set_link(index, LinkAttribute::IfName(name.to_owned()), operation)
    }

    pub fn set_mac(&mut self, index: u32, mac: MacAddress) -> Result<(), NetlinkError> {
        let operation = format!("set the MAC of link {index} to {mac}");
        self.set_link(index, LinkAttribute::Address(mac.0.to_vec()), operation)
    }

    /// Moves a link into the network namespace `netns_fd` refers to (an open
    /// `/proc/<pid>/ns/net` or a bind mount of one). Its index may change there.
    pub fn set_netns(
        &mut self,
        index: u32,
        netns_fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), NetlinkError> {
        use std::os::fd::AsRawFd;
        let operation = format!("move link {index} to another network namespace");
        self.set_link(
            index,
            LinkAttribute::NetNsFd(netns_fd.as_raw_fd()),
            operation,
        )
    }

    /// Creates a veth pair, both ends down, in this namespace.
    pub fn create_veth(&mut self, name: &str, peer: &str) -> Result<(), NetlinkError> {
        let mut peer_message = LinkMessage::default();
        peer_message
            .attributes
            .push(LinkAttribute::IfName(peer.to_owned()));
        let mut message = LinkMessage::default();
        message.attributes = vec![
            LinkAttribute::IfName(name.to_owned()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
            ]),
        ];
        self.request(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("create the veth pair '{name}'/'{peer}'"),
        )
    }

    /// Deletes a link (for a veth, both ends go).
    pub fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.request(
            RouteNetlinkMessage::DelLink(message),
            0,
            format!("delete link {index}"),
        )
    }

    fn set_up_flag(&mut self, index: u32, up: bool) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.change_mask = LinkFlags::Up;
        if up {
            message.header.flags = LinkFlags::Up;
        }
        let operation = format!("set link {index} {}", if up { "up" } else { "down" });
        self.request(RouteNetlinkMessage::SetLink(message), 0, operation)
    }

    fn set_link(
        &mut self,
        index: u32,
        attribute: LinkAttribute,
        operation: String,
    ) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes.push(attribute);
        self.request(RouteNetlinkMessage::SetLink(message), 0, operation)
    }

    // ---- addresses --------------------------------------------------------------------

    /// The IPv4 and IPv6 addresses of link `index`, in the kernel's order; IPv6
    /// link-local ones only if `link_local` says so (see [`LinkLocal`]).
    pub fn addresses(
        &mut self,
        index: u32,
        link_local: LinkLocal,
    ) -> Result<Vec<IpPrefix>, NetlinkError> {
        let answers = self.dump(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            &format!("list the addresses of link {index}"),
        )?;
        let mut addresses = Vec::new();
        for answer in answers {
            let RouteNetlinkMessage::NewAddress(message) = answer else {
                continue;
            };
            if message.header.index != index {
                continue;
            }
            // For IPv4, IFA_LOCAL is the interface's own address and IFA_ADDRESS the
            // peer's on a point-to-point link; IPv6 has only IFA_ADDRESS.
            let mut local = None;
            let mut address = None;
            for attribute in &message.attributes {
                match attribute {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            let Some(ip) = local.or(address) else {
                continue;
            };
            if link_local == LinkLocal::Skip && is_v6_link_local(&ip) {
                continue;
            }
            addresses.push(IpPrefix {
                address: ip,
                prefix_len: message.header.prefix_len,
            });
        }
        Ok(addresses)
    }

    /// Adds an address to link `index`. `EEXIST` if the link has it already. An IPv4
    /// address shorter than /31 gets its subnet's broadcast address too, as `ip addr add
    /// ... brd +` and the CNI plugins do.
    pub fn add_address(&mut self, index: u32, prefix: IpPrefix) -> Result<(), NetlinkError> {
        let operation = format!("add address {prefix} to link {index}");
        let max = if prefix.address.is_ipv4() { 32 } else { 128 };
        if prefix.prefix_len > max {
            return Err(NetlinkError::Invalid {
                operation,
                reason: "the prefix length is longer than the address",
            });
        }
        let mut message = AddressMessage::default();
        message.header.family = family(&prefix.address);
        message.header.prefix_len = prefix.prefix_len;
        message.header.index = index;
        message
            .attributes
            .push(AddressAttribute::Local(prefix.address));
        message
            .attributes
            .push(AddressAttribute::Address(prefix.address));
        if let IpAddr::V4(v4) = prefix.address {
            if prefix.prefix_len < 31 {
                let host_bits = u32::MAX >> prefix.prefix_len;
                let broadcast = Ipv4Addr::from(u32::from(v4) | host_bits);
                message
                    .attributes
                    .push(AddressAttribute::Broadcast(broadcast));
            }
        }
        self.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
            operation,
        )
    }

    // ---- routes -----------------------------------------------------------------------

    /// The IPv4 and IPv6 routes of the main table out of link `index`, as
    /// [`Route`]s naming the link.
    ///
    /// Left out: the routes the kernel makes itself (`proto kernel`: a prefix route per
    /// address, IPv6's `fe80::/64`), which come back when the address is added elsewhere;
    /// routes learned from router advertisements (`proto ra`), which the network teaches
    /// again; routes to IPv6 link-local destinations; and anything not unicast
    /// (blackhole, local, multicast...). A multipath route's next hops are not read: it
    /// is reported without a gateway.
    pub fn routes(&mut self, index: u32) -> Result<Vec<Route>, NetlinkError> {
        let operation = format!("list the routes of link {index}");
        let Some(link) = self.link_by_index(index)? else {
            return Err(NetlinkError::Kernel {
                operation,
                source: io::Error::from_raw_os_error(libc::ENODEV),
                kernel_message: String::new(),
            });
        };
        let answers = self.dump(
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
            &operation,
        )?;
        let mut routes = Vec::new();
        for answer in answers {
            let RouteNetlinkMessage::NewRoute(message) = answer else {
                continue;
            };
            let header = &message.header;
            if header.kind != RouteType::Unicast
                || matches!(header.protocol, RouteProtocol::Kernel | RouteProtocol::Ra)
            {
                continue;
            }
            let mut table = u32::from(header.table);
            let mut out = None;
            let mut destination = None;
            let mut gateway = None;
            for attribute in &message.attributes {
                match attribute {
                    // RTA_TABLE carries tables past 255; when present it is the truth.
                    RouteAttribute::Table(id) => table = *id,
                    RouteAttribute::Oif(oif) => out = Some(*oif),
                    RouteAttribute::Destination(address) => destination = ip_of(address),
                    RouteAttribute::Gateway(address) => gateway = ip_of(address),
                    _ => {}
                }
            }
            if table != u32::from(RT_TABLE_MAIN) || out != Some(index) {
                continue;
            }
            let destination = match destination {
                Some(address) => {
                    if is_v6_link_local(&address) {
                        continue;
                    }
                    Some(IpPrefix {
                        address,
                        prefix_len: header.destination_prefix_length,
                    })
                }
                // No RTA_DST: the default route of its family (length 0).
                None if header.destination_prefix_length == 0 => None,
                None => continue,
            };
            routes.push(Route {
                destination,
                gateway,
                interface: link.name.clone(),
            });
        }
        Ok(routes)
    }

    /// Adds a route to the main table out of link `index`: to `destination` (none: the
    /// default route), via `gateway` (none: on the link, scope link). At least one of
    /// them must be given (it says which family the route is), and both must be of one
    /// family. `EEXIST` if the route is there already; `ENETUNREACH` if the gateway is
    /// not reachable by the routes so far.
    pub fn add_route(
        &mut self,
        index: u32,
        destination: Option<IpPrefix>,
        gateway: Option<IpAddr>,
    ) -> Result<(), NetlinkError> {
        let operation = format!(
            "add the route to {} via {} out of link {index}",
            match &destination {
                Some(prefix) => prefix.to_string(),
                None => "default".to_owned(),
            },
            match &gateway {
                Some(gateway) => gateway.to_string(),
                None => "the link".to_owned(),
            },
        );
        let invalid = |reason| NetlinkError::Invalid {
            operation: operation.clone(),
            reason,
        };
        let family_address = match (&destination, &gateway) {
            (Some(prefix), Some(gateway)) if prefix.address.is_ipv4() != gateway.is_ipv4() => {
                return Err(invalid(
                    "the destination and the gateway are of different families",
                ))
            }
            (Some(prefix), _) => prefix.address,
            (None, Some(gateway)) => *gateway,
            (None, None) => {
                return Err(invalid(
                    "a default route needs a gateway (it says whether it is IPv4 or IPv6)",
                ))
            }
        };
        let max = if family_address.is_ipv4() { 32 } else { 128 };
        if destination.is_some_and(|prefix| prefix.prefix_len > max) {
            return Err(invalid("the prefix length is longer than the address"));
        }
        let mut message = RouteMessage::default();
        message.header.address_family = family(&family_address);
        message.header.table = RT_TABLE_MAIN;
        // What `ip route add` says: set by an administrator, not learned.
        message.header.protocol = RouteProtocol::Boot;
        message.header.kind = RouteType::Unicast;
        message.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if let Some(prefix) = destination {
            message.header.destination_prefix_length = prefix.prefix_len;
            message
                .attributes
                .push(RouteAttribute::Destination(prefix.address.into()));
        }
        if let Some(gateway) = gateway {
            message
                .attributes
                .push(RouteAttribute::Gateway(gateway.into()));
        }
        message.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
            operation,
        )
    }

    // ---- tc ---------------------------------------------------------------------------

    /// Adds the ingress qdisc (`tc qdisc add dev X ingress`: handle `ffff:`, parent
    /// `TC_H_INGRESS`) to link `index`. `EEXIST` if it has one.
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<(), NetlinkError> {
        let message = TcMessage::from_parts(
            ingress_header(index),
            vec![TcAttribute::Kind("ingress".to_owned())],
        );
        self.request(
            RouteNetlinkMessage::NewQueueDiscipline(message),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add an ingress qdisc to link {index}"),
        )
    }

    /// Deletes link `index`'s ingress qdisc and with it its filters. `EINVAL` or
    /// `ENOENT` (by kernel version) if it has none.
    pub fn delete_ingress_qdisc(&mut self, index: u32) -> Result<(), NetlinkError> {
        let message = TcMessage::from_parts(ingress_header(index), Vec::new());
        self.request(
            RouteNetlinkMessage::DelQueueDiscipline(message),
            0,
            format!("delete the ingress qdisc of link {index}"),
        )
    }

    /// Redirects every frame arriving on link `from_index` to the egress of link
    /// `to_index`, as
    /// `tc filter add dev FROM parent ffff: protocol all prio 1 u32 match u8 0 0
    /// action mirred egress redirect dev TO` does: a u32 filter on `from_index`'s ingress
    /// qdisc (add it first), matching all (one key, mask 0 value 0), whose mirred action
    /// redirects (`TCA_EGRESS_REDIR`) and steals the frame (`TC_ACT_STOLEN`), so the
    /// stack of `from_index` never sees it.
    pub fn redirect_ingress(&mut self, from_index: u32, to_index: u32) -> Result<(), NetlinkError> {
        let operation = format!("redirect the ingress of link {from_index} to link {to_index}");
        let Ok(index) = i32::try_from(from_index) else {
            return Err(NetlinkError::Invalid {
                operation,
                reason: "the link index is out of range",
            });
        };
        let mut key = TcU32Key::default();
        key.mask = 0;
        key.val = 0;
        key.off = 0;
        let mut selector = TcU32Selector::default();
        // TC_U32_TERMINAL: a match ends classification, with the action; tc sets it
        // whenever a filter has an action or a class.
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        selector.keys = vec![key];

        let mut mirror = TcMirror::default();
        mirror.generic.action = TcActionType::Stolen;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = to_index;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind("mirred".to_owned()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];

        let header = TcHeader {
            family: AddressFamily::Unspec,
            index,
            handle: TcHandle::UNSPEC,
            parent: INGRESS_HANDLE,
            // tcm_info: the priority in the high half, the protocol (in network order)
            // in the low half.
            info: (u32::from(REDIRECT_PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be()),
        };
        let message = TcMessage::from_parts(
            header,
            vec![
                TcAttribute::Kind("u32".to_owned()),
                TcAttribute::Options(vec![
                    TcOption::U32(TcFilterU32Option::Selector(selector)),
                    TcOption::U32(TcFilterU32Option::Action(vec![action])),
                ]),
            ],
        );
        self.request(
            RouteNetlinkMessage::NewTrafficFilter(message),
            NLM_F_CREATE | NLM_F_EXCL,
            operation,
        )
    }

    // ---- the protocol ------------------------------------------------------------------

    /// Sends `message` with `NLM_F_REQUEST | NLM_F_ACK | flags` and reads until its ACK.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        operation: String,
    ) -> Result<(), NetlinkError> {
        let sequence = self.send(message, NLM_F_REQUEST | NLM_F_ACK | flags, &operation)?;
        loop {
            let mut done = false;
            self.receive(sequence, &operation, |_, payload| match payload {
                Answer::Ack => {
                    done = true;
                    Ok(())
                }
                // An ACKed request answers with nothing else; anything else is ignored.
                Answer::Message(_) | Answer::Done => Ok(()),
            })?;
            if done {
                return Ok(());
            }
        }
    }

    /// Sends `message` with `NLM_F_REQUEST | NLM_F_DUMP` and collects the answers up to
    /// `NLMSG_DONE`, over as many datagrams as the kernel needs. A dump the kernel marks
    /// interrupted is retried.
    fn dump(
        &mut self,
        message: RouteNetlinkMessage,
        operation: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        for _ in 0..DUMP_ATTEMPTS {
            let sequence = self.send(message.clone(), NLM_F_REQUEST | NLM_F_DUMP, operation)?;
            let mut answers = Vec::new();
            let mut done = false;
            let mut interrupted = false;
            while !done {
                self.receive(sequence, operation, |header_flags, answer| {
                    if header_flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    match answer {
                        Answer::Message(message) => answers.push(message),
                        Answer::Done => done = true,
                        // A dump is not ACKed; were it, the ACK would end it too.
                        Answer::Ack => done = true,
                    }
                    Ok(())
                })?;
            }
            if !interrupted {
                return Ok(answers);
            }
        }
        Err(NetlinkError::Inconsistent {
            operation: operation.to_owned(),
        })
    }

    fn send(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        operation: &str,
    ) -> Result<u32, NetlinkError> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        let sent = self
            .socket
            .send(&bytes, 0)
            .map_err(|source| NetlinkError::Send {
                operation: operation.to_owned(),
                source,
            })?;
        if sent != bytes.len() {
            return Err(NetlinkError::Send {
                operation: operation.to_owned(),
                source: io::Error::new(io::ErrorKind::WriteZero, "short send"),
            });
        }
        Ok(self.sequence)
    }

    /// Reads one datagram and hands each message in it that answers `sequence` to
    /// `handle` (with the message's netlink flags). An error answer ends it with
    /// [`NetlinkError::Kernel`].
    fn receive(
        &mut self,
        sequence: u32,
        operation: &str,
        mut handle: impl FnMut(u16, Answer) -> Result<(), NetlinkError>,
    ) -> Result<(), NetlinkError> {
        let receive_error = |source| NetlinkError::Receive {
            operation: operation.to_owned(),
            source,
        };
        let decode_error = |reason: String| NetlinkError::Decode {
            operation: operation.to_owned(),
            reason,
        };
        self.buffer.clear();
        let length = loop {
            match self.socket.recv(&mut self.buffer, libc::MSG_TRUNC) {
                Ok(length) => break length,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(receive_error(e)),
            }
        };
        if length > self.buffer.len() {
            return Err(decode_error(format!(
                "a {length}-byte datagram does not fit the {RECEIVE_BUFFER}-byte buffer"
            )));
        }
        let mut offset = 0;
        while offset < length {
            let rest = &self.buffer[offset..length];
            let packet =
                NetlinkBuffer::new_checked(rest).map_err(|e| decode_error(e.to_string()))?;
            let message_length = packet.length() as usize;
            let message_flags = packet.flags();
            let message_sequence = packet.sequence_number();
            // Messages are 4-byte aligned in the datagram.
            offset += message_length.max(NLMSG_HEADER_LEN).next_multiple_of(4);
            // Answers to an earlier request given up on (an error midway through a
            // dump) may still be queued: skip them.
            if message_sequence != sequence {
                continue;
            }
            let Some(bytes) = rest.get(..message_length) else {
                return Err(decode_error("a message runs past its datagram".to_owned()));
            };
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                .map_err(|e| decode_error(e.to_string()))?;
            match message.payload {
                NetlinkPayload::InnerMessage(inner) => {
                    handle(message_flags, Answer::Message(inner))?
                }
                // A dump that failed midway ends with the errno in its DONE message.
                NetlinkPayload::Done(done) => match NonZeroI32::new(done.code) {
                    None => handle(message_flags, Answer::Done)?,
                    Some(code) => {
                        return Err(NetlinkError::Kernel {
                            operation: operation.to_owned(),
                            source: errno(code),
                            kernel_message: String::new(),
                        })
                    }
                },
                NetlinkPayload::Error(error) => match error.code {
                    None => handle(message_flags, Answer::Ack)?,
                    Some(code) => {
                        return Err(NetlinkError::Kernel {
                            operation: operation.to_owned(),
                            source: errno(code),
                            kernel_message: extended_ack_message(message_flags, &error.header),
                        })
                    }
                },
                // NLMSG_NOOP, NLMSG_OVERRUN: nothing to hand on.
                _ => {}
            }
        }
        Ok(())
    }
}

/// One message of an answer.
enum Answer {
    Message(RouteNetlinkMessage),
    /// `NLMSG_DONE`: the end of a dump.
    Done,
    /// `NLMSG_ERROR` with error 0.
    Ack,
}

/// The errno of a netlink error code (the kernel sends it negated).
fn errno(code: NonZeroI32) -> io::Error {
    io::Error::from_raw_os_error(code.get().saturating_abs())
}

/// The extended ACK's message (`NLMSGERR_ATTR_MSG`) from an error's payload, formatted as
/// the tail of the error's text; empty when there is none. With `NETLINK_CAP_ACK` the
/// payload after the errno is the request's header alone, then the attributes.
fn extended_ack_message(flags: u16, payload: &[u8]) -> String {
    if flags & NLM_F_ACK_TLVS == 0 {
        return String::new();
    }
    // Without a capped ACK the whole request is echoed: its header says how long it is.
    let echoed = match NetlinkBuffer::new_checked(payload) {
        Ok(header) if flags & netlink_packet_core::NLM_F_CAPPED == 0 => {
            (header.length() as usize).next_multiple_of(4)
        }
        _ => NLMSG_HEADER_LEN,
    };
    let Some(attributes) = payload.get(echoed..) else {
        return String::new();
    };
    for attribute in NlasIterator::new(attributes).flatten() {
        if attribute.kind() == NLMSGERR_ATTR_MSG {
            let text = attribute.value();
            let text = text.split(|&b| b == 0).next().unwrap_or_default();
            let text = String::from_utf8_lossy(text);
            if !text.is_empty() {
                return format!(" (the kernel says: {text})");
            }
        }
    }
    String::new()
}

fn link_from(message: LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        kind: None,
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Address(bytes) => {
                link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddress)
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn ingress_header(index: u32) -> TcHeader {
    TcHeader {
        family: AddressFamily::Unspec,
        // The kernel's ifindex is an int; ones past i32::MAX do not exist, and the
        // kernel answers ENODEV for the wrapped value.
        index: index as i32,
        handle: INGRESS_HANDLE,
        parent: TcHandle::INGRESS,
        info: 0,
    }
}

fn family(address: &IpAddr) -> AddressFamily {
    match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// `fe80::/10`.
fn is_v6_link_local(address: &IpAddr) -> bool {
    match address {
        IpAddr::V6(v6) => is_v6_link_local_v6(v6),
        IpAddr::V4(_) => false,
    }
}

fn is_v6_link_local_v6(address: &Ipv6Addr) -> bool {
    address.segments()[0] & 0xffc0 == 0xfe80
}
