//! Map keys and values shared by the netpol BPF programs and the agent.
//!
//! Every type is `#[repr(C)]` with explicit padding so both sides agree byte for byte.
//! Addresses are always 16 bytes: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), so one
//! set of maps serves both families and an IPv4 prefix `/n` is the mapped prefix `/96+n`.
#![no_std]

/// Names of the maps and programs in the BPF object, so the agent and the object cannot
/// drift apart.
pub mod names {
    pub const IFACES: &str = "IFACES";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const SERVICES: &str = "SERVICES";
    pub const PEERS_EXACT: &str = "PEERS_EXACT";
    pub const PEERS_CIDR: &str = "PEERS_CIDR";
    pub const PORTSETS: &str = "PORTSETS";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const COUNTERS: &str = "COUNTERS";

    /// Attached to the host side of a pod veth, TC ingress: traffic the pod sends.
    pub const PROG_FROM_POD: &str = "from_pod";
    /// Attached to the host side of a pod veth, TC egress: traffic the pod receives.
    pub const PROG_TO_POD: &str = "to_pod";
    /// Attached to the node's uplinks, TC egress: pod traffic leaving the node after NAT.
    pub const PROG_UPLINK: &str = "uplink_egress";
}

/// Version of the map layout (the types in this crate). Pins live under a directory named
/// after it, so an agent whose maps differ never adopts maps it cannot read.
pub const LAYOUT_VERSION: u32 = 1;

/// Default map sizes; the agent can override them at load time.
pub mod sizes {
    pub const IFACES: u32 = 4096;
    pub const ENDPOINTS: u32 = 8192;
    pub const SERVICES: u32 = 16384;
    pub const PEERS_EXACT: u32 = 262_144;
    pub const PEERS_CIDR: u32 = 65_536;
    pub const PORTSETS: u32 = 16_384;
    pub const CONNTRACK: u32 = 262_144;
    /// Endpoint ids index the counters array, so this bounds the id space too.
    pub const COUNTERS: u32 = 8192;
}

/// An IPv6 address or an IPv4-mapped IPv4 address, in network byte order.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, PartialOrd, Ord)]
pub struct Addr(pub [u8; 16]);

impl Addr {
    pub const fn from_v4(octets: [u8; 4]) -> Self {
        let [a, b, c, d] = octets;
        Addr([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d])
    }

    pub const fn is_v4(&self) -> bool {
        let b = &self.0;
        b[0] == 0
            && b[1] == 0
            && b[2] == 0
            && b[3] == 0
            && b[4] == 0
            && b[5] == 0
            && b[6] == 0
            && b[7] == 0
            && b[8] == 0
            && b[9] == 0
            && b[10] == 0xff
            && b[11] == 0xff
    }
}

/// Bits of the LPM key before the address: the rule-set id.
pub const RULESET_ID_BITS: u32 = 32;
/// Prefix length of IPv4 `/0` inside the mapped address space.
pub const V4_MAPPED_PREFIX: u32 = 96;

/// Rule-set id meaning "this direction is not isolated": everything is allowed.
pub const RULESET_ALLOW_ALL: u32 = 0;

/// What the agent knows about a pod veth: the addresses the pod may send from.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct IfaceInfo {
    pub addr4: Addr,
    pub addr6: Addr,
    /// `IFACE_HAS_V4` | `IFACE_HAS_V6`.
    pub flags: u32,
    pub endpoint_id: u32,
}

pub const IFACE_HAS_V4: u32 = 1;
pub const IFACE_HAS_V6: u32 = 2;

/// A local pod address and the rule sets that apply to it.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct EndpointInfo {
    /// Index into `COUNTERS`; stable for the pod's lifetime.
    pub id: u32,
    /// `RULESET_ALLOW_ALL` when the pod is not isolated for ingress.
    pub ingress_set: u32,
    /// `RULESET_ALLOW_ALL` when the pod is not isolated for egress.
    pub egress_set: u32,
    pub _pad: u32,
}

/// Key of both peer maps: a rule set and a peer address. In the LPM trie the id comes first
/// (big-endian, so its 32 bits are matched exactly) and the prefix length counts it.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct PeerKey {
    pub ruleset_be: [u8; 4],
    pub addr: Addr,
}

impl PeerKey {
    pub const fn new(ruleset: u32, addr: Addr) -> Self {
        PeerKey {
            ruleset_be: ruleset.to_be_bytes(),
            addr,
        }
    }
}

/// Value of the peer maps: which ports are allowed to/from that peer.
/// `PORTSET_ALL` = every port and protocol, `PORTSET_NONE` = nothing (an `except` hole).
pub const PORTSET_ALL: u32 = 0;
pub const PORTSET_NONE: u32 = u32::MAX;

/// Upper bound of distinct (protocol, range) pairs in one port set; keeps the BPF loop
/// bounded. The compiler reports a rule set that needs more instead of truncating it.
pub const MAX_PORT_RANGES: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PortRange {
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub proto: u8,
    pub _pad: u8,
    pub first: u16,
    pub last: u16,
}

#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PortSet {
    pub len: u32,
    pub ranges: [PortRange; MAX_PORT_RANGES],
}

impl PortSet {
    /// The decision the datapath makes; kept here so userspace tests exercise the same code.
    #[inline(always)]
    pub fn allows(&self, proto: u8, port: u16) -> bool {
        let mut i = 0;
        while i < MAX_PORT_RANGES {
            if i as u32 >= self.len {
                return false;
            }
            let r = &self.ranges[i];
            if r.proto == proto && r.first <= port && port <= r.last {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Which side of a connection a local endpoint is on: it opened it (egress) or accepted
/// it (ingress).
pub const CT_DIR_EGRESS: u8 = 1;
pub const CT_DIR_INGRESS: u8 = 2;

/// A connection as one local endpoint sees it. Both the opener and the acceptor of a
/// connection get their own entry, so each side's policy is tracked independently.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct CtKey {
    pub endpoint: Addr,
    pub peer: Addr,
    pub endpoint_port: u16,
    pub peer_port: u16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
}

/// The rule set the connection was allowed under. When the endpoint's rule set changes,
/// the entry is stale and the connection is decided again.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct CtValue {
    pub ruleset: u32,
    pub _pad: u32,
}

/// Per endpoint, per reason packet counters (a per-CPU array indexed by endpoint id).
pub mod reason {
    /// Allowed: the direction is not isolated.
    pub const ALLOW_UNISOLATED: usize = 0;
    /// Allowed by a rule.
    pub const ALLOW_POLICY: usize = 1;
    /// Allowed as part of a tracked connection.
    pub const ALLOW_TRACKED: usize = 2;
    /// Allowed as the reply of a connection that predates tracking.
    pub const ALLOW_LATE_REPLY: usize = 3;
    /// Passed towards a Service address; decided after translation.
    pub const PASS_SERVICE: usize = 4;
    /// Dropped: the sender's egress policy does not allow it.
    pub const DROP_EGRESS: usize = 5;
    /// Dropped: the receiver's ingress policy does not allow it.
    pub const DROP_INGRESS: usize = 6;
    /// Dropped: the source address is not the pod's own.
    pub const DROP_SPOOFED: usize = 7;
    /// Dropped: a header could not be parsed on an isolated endpoint.
    pub const DROP_MALFORMED: usize = 8;
    pub const COUNT: usize = 9;

    pub const NAMES: [&str; COUNT] = [
        "allow_unisolated",
        "allow_policy",
        "allow_tracked",
        "allow_late_reply",
        "pass_service",
        "drop_egress",
        "drop_ingress",
        "drop_spoofed",
        "drop_malformed",
    ];
}

#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Counters {
    pub packets: [u64; reason::COUNT],
}

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, and have no implicit padding (every gap is
    // an explicit `_pad` field), so any byte pattern the kernel hands back is valid.
    unsafe impl aya::Pod for Addr {}
    unsafe impl aya::Pod for IfaceInfo {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for PeerKey {}
    unsafe impl aya::Pod for PortRange {}
    unsafe impl aya::Pod for PortSet {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for Counters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portset_matches_protocol_and_inclusive_range() {
        let mut set = PortSet::default();
        set.ranges[0] = PortRange {
            proto: PROTO_TCP,
            _pad: 0,
            first: 80,
            last: 81,
        };
        set.ranges[1] = PortRange {
            proto: PROTO_UDP,
            _pad: 0,
            first: 53,
            last: 53,
        };
        set.len = 2;
        assert!(set.allows(PROTO_TCP, 80));
        assert!(set.allows(PROTO_TCP, 81));
        assert!(!set.allows(PROTO_TCP, 82));
        assert!(!set.allows(PROTO_UDP, 80));
        assert!(set.allows(PROTO_UDP, 53));
        assert!(!set.allows(PROTO_SCTP, 53));
        // Entries past `len` are ignored even if filled in.
        set.len = 1;
        assert!(!set.allows(PROTO_UDP, 53));
    }

    #[test]
    fn v4_mapping() {
        let a = Addr::from_v4([10, 0, 0, 1]);
        assert!(a.is_v4());
        assert_eq!(&a.0[12..], &[10, 0, 0, 1]);
        assert!(!Addr([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]).is_v4());
    }
}
