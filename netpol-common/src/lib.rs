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
    /// The same `IfaceInfo`s in an array indexed by ifindex (see `IfaceSlot`).
    pub const IFACE_SLOTS: &str = "IFACE_SLOTS";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const SERVICES: &str = "SERVICES";
    /// Peer pods by identity: (rule set, identity) -> ports.
    pub const PEERS_BY_IDENTITY: &str = "PEERS_BY_IDENTITY";
    /// Pod address -> identity, for every pod of the cluster.
    pub const IDENTITIES: &str = "IDENTITIES";
    pub const PEERS_CIDR: &str = "PEERS_CIDR";
    pub const PORTSETS: &str = "PORTSETS";
    /// Connections that have seen a reply.
    pub const CONNTRACK: &str = "CONNTRACK";
    /// Connections still waiting for their first reply: a flood of new flows churns this
    /// map only, never the replied connections of other pods.
    pub const CONNTRACK_NEW: &str = "CONNTRACK_NEW";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const SERVICE_FLOWS: &str = "SERVICE_FLOWS";
    pub const SERVICE_FLOWS_NEW: &str = "SERVICE_FLOWS_NEW";
    pub const EVENTS: &str = "EVENTS";
    pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
    pub const EVENT_STATS: &str = "EVENT_STATS";
    pub const UPLINKS: &str = "UPLINKS";
    pub const NODE_ADDRS: &str = "NODE_ADDRS";
    /// Ordered rule set (its id without flags) -> the id of its Admin table, which the
    /// sets of pods under the same Admin rules share.
    pub const ADMIN_TABLES: &str = "ADMIN_TABLES";
    pub const META: &str = "META";
    pub const COUNTERS: &str = "COUNTERS";
    /// Packets allowed per rule (a per-CPU array indexed by `rule_index`).
    pub const RULE_COUNTERS: &str = "RULE_COUNTERS";

    /// Attached to the host side of a pod veth, TC ingress: traffic the pod sends.
    pub const PROG_FROM_POD: &str = "from_pod";
    /// Attached to the host side of a pod veth, TC egress: traffic the pod receives.
    pub const PROG_TO_POD: &str = "to_pod";
    /// Attached to the node's uplinks, TC egress: pod traffic leaving the node after NAT.
    pub const PROG_UPLINK: &str = "uplink_egress";
    /// Attached to the node's root cgroup (v2), cgroup_skb ingress: what the node's own
    /// sockets take in, after translation.
    pub const PROG_TO_NODE: &str = "to_node";
    /// Does nothing: the baseline of the datapath benchmarks.
    pub const PROG_EMPTY: &str = "empty";
    /// Only the established path's conntrack lookup: the benchmarks' floor for it.
    pub const PROG_CONNTRACK_FLOOR: &str = "conntrack_floor";
    /// Ends the TC chain with "pass"; only the attach-order tests load it.
    pub const PROG_PASS_STOP: &str = "pass_stop";
}

/// Version of the map layout (the types in this crate). Pins live under a directory named
/// after it, so an agent whose maps differ never adopts maps it cannot read.
pub const LAYOUT_VERSION: u32 = 9;

/// Default map sizes; the agent can override them at load time.
pub mod sizes {
    pub const IFACES: u32 = 4096;
    /// A power of two: the slot of a veth is its ifindex modulo this.
    pub const IFACE_SLOTS: u32 = 16_384;
    pub const ENDPOINTS: u32 = 8192;
    pub const SERVICES: u32 = 16384;
    pub const PEERS_BY_IDENTITY: u32 = 262_144;
    pub const IDENTITIES: u32 = 131_072;
    pub const PEERS_CIDR: u32 = 65_536;
    pub const PORTSETS: u32 = 16_384;
    pub const CONNTRACK: u32 = 262_144;
    pub const CONNTRACK_NEW: u32 = 65_536;
    pub const FRAGMENTS: u32 = 8192;
    pub const SERVICE_FLOWS: u32 = 65_536;
    pub const SERVICE_FLOWS_NEW: u32 = 16_384;
    pub const UPLINKS: u32 = 64;
    pub const NODE_ADDRS: u32 = 1024;
    /// One per ordered rule set, at most.
    pub const ADMIN_TABLES: u32 = 16_384;
    /// Endpoint ids index the counters array, so this bounds the id space too.
    pub const COUNTERS: u32 = 8192;
    /// Slots of the rule counters (`rule_index`): past this many, rules are not named.
    pub const RULES: u32 = 16_384;
}

/// An IPv6 address or an IPv4-mapped IPv4 address, in network byte order.
///
/// Aligned to 4 so the BPF programs copy, clear and compare it in words: with byte
/// alignment the compiler emits byte loops (calls to `memset`), which were a large part
/// of the per-packet cost. Every struct here holds it at a 4-aligned offset, so no layout
/// changes.
#[repr(C, align(4))]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, PartialOrd, Ord)]
pub struct Addr(pub [u8; 16]);

impl Addr {
    pub const fn from_v4(octets: [u8; 4]) -> Self {
        // One integer, not sixteen bytes: in BPF a byte array's zeros became a `memset`
        // loop.
        Addr((0xffff_0000_0000u128 | u32::from_be_bytes(octets) as u128).to_be_bytes())
    }

    /// A destination no single host owns: IPv4's limited broadcast or multicast, IPv6
    /// multicast. Every socket bound to the port may take such a packet, the node's too.
    pub const fn is_group(&self) -> bool {
        let b = &self.0;
        if self.is_v4() {
            (b[12] & 0xf0) == 0xe0 || (b[12] == 255 && b[13] == 255 && b[14] == 255 && b[15] == 255)
        } else {
            b[0] == 0xff
        }
    }

    /// IPv6 link-local unicast (fe80::/10): an address each link gives out on its own.
    pub const fn is_link_local_v6(&self) -> bool {
        self.0[0] == 0xfe && (self.0[1] & 0xc0) == 0x80
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

/// Rule-set ids are handed out below this; the bits above are flags on the id an
/// endpoint points at (and the table keys of its entries).
pub const RULESET_ID_LIMIT: u32 = 1 << 28;
/// The set's entries are ordered tags (`tag`), not NetworkPolicy's allows: a
/// ClusterNetworkPolicy applies to its pods. A table's answer is its first rule
/// matching the peer by identity or by address; without the flag any match allows.
pub const RULESET_ORDERED: u32 = 1 << 28;
/// The set has an Admin table (ClusterNetworkPolicy's Admin tier): `ADMIN_TABLES` names
/// it, and its entries are keyed by that table's id with `RULESET_ADMIN_TABLE` set;
/// without the flag there is no second lookup.
pub const RULESET_HAS_ADMIN: u32 = 1 << 29;
/// NetworkPolicy isolates the set's pods: where the Admin tier does not decide, their
/// own node may reach them (NetworkPolicy's exemption, which the datapath applies from
/// `NODE_ADDRS`, as for unordered sets).
pub const RULESET_NP_ISOLATED: u32 = 1 << 30;
/// Key bit of the Admin table's entries.
pub const RULESET_ADMIN_TABLE: u32 = 1 << 31;

/// A rule-set id no set is given: its `PEERS_CIDR` entries are the cluster's pod address
/// ranges (the nodes' `podCIDRs`). An address inside them that has no identity is a pod
/// the agent cannot name (not known yet, or `IDENTITIES` full); ordered tables look it
/// up as `IDENTITY_UNKNOWN_POD`.
pub const RULESET_POD_RANGES: u32 = RULESET_ID_LIMIT - 1;

/// The id without its flags.
#[inline(always)]
pub const fn ruleset_base(id: u32) -> u32 {
    id & (RULESET_ID_LIMIT - 1)
}

/// Ordered verdicts: a rule's position in its table and what it does. The smaller tag is
/// the rule that comes first.
pub mod tag {
    pub const ACCEPT: u32 = 0;
    pub const DENY: u32 = 1;
    /// Ends the tier (the Admin table's answer is then the rest table's).
    pub const PASS: u32 = 2;
    const ACTION_BITS: u32 = 2;
    /// The largest position: the default allow, after every rule (names no rule).
    pub const LAST_POSITION: u32 = u32::MAX >> ACTION_BITS;
    /// No rule matched (also `REST_DENIED`).
    pub const NONE: u32 = u32::MAX;

    pub const fn new(position: u32, action: u32) -> u32 {
        (position << ACTION_BITS) | action
    }
    pub const fn position(tag: u32) -> u32 {
        tag >> ACTION_BITS
    }
    pub const fn action(tag: u32) -> u32 {
        tag & ((1 << ACTION_BITS) - 1)
    }
}

/// What an ordered rule set decides for a peer, given the first rule of its Admin table
/// that matches (`tag::NONE`: none), whether the peer is the pod's own node and
/// NetworkPolicy exempts it, and the rest table's first rule (read only when the Admin
/// table does not decide). None: denied. Some(position): allowed by the rule at that
/// position (`RULE_UNNAMED`: the own-node exemption or the default allow). Kept here so
/// userspace reads tables as the datapath does.
#[inline(always)]
pub fn tiered_verdict(
    admin: u32,
    own_node_exempt: impl FnOnce() -> bool,
    rest: impl FnOnce() -> u32,
) -> Option<u32> {
    if admin != tag::NONE && tag::action(admin) != tag::PASS {
        return (tag::action(admin) == tag::ACCEPT).then_some(tag::position(admin));
    }
    if own_node_exempt() {
        return Some(RULE_UNNAMED);
    }
    let rest = rest();
    if rest == tag::NONE || tag::action(rest) == tag::DENY {
        return None;
    }
    match tag::position(rest) {
        tag::LAST_POSITION => Some(RULE_UNNAMED),
        p => Some(p),
    }
}

/// The position of the rule that denies, in an ordered set whose `tiered_verdict` denied:
/// the Admin table's Deny, else the rest table's (NetworkPolicy's default deny or a
/// Baseline Deny); `RULE_UNNAMED` when no rule did (an empty table).
#[inline(always)]
pub fn denying_position(admin: u32, rest: impl FnOnce() -> u32) -> u32 {
    if admin != tag::NONE && tag::action(admin) == tag::DENY {
        return tag::position(admin);
    }
    match rest() {
        t if t != tag::NONE && tag::action(t) == tag::DENY => tag::position(t),
        _ => RULE_UNNAMED,
    }
}

/// What a `NODE_ADDRS` entry is: flags.
pub mod node_addr {
    /// An address of this node's interfaces, with NetworkPolicy's own-node exemption.
    pub const OWN: u32 = 1;
    /// A broadcast address of one of its interfaces: what reaches it reaches the node's
    /// sockets (and, on a bridge, the link's pods); no exemption.
    pub const BROADCAST: u32 = 2;
    /// An address this node's stack takes in as its own, without the exemption: kube-proxy's
    /// IPVS Service addresses; every interface address under `--strict-node-traffic`.
    pub const LOCAL: u32 = 4;
    /// One of this node's Node addresses: rules about nodes name the node by it.
    pub const NAMED: u32 = 8;
    /// What reaches one of these reaches the node's sockets.
    pub const REACHES_NODE: u32 = OWN | BROADCAST | LOCAL;
}

/// Slots of the `META` array map.
pub mod meta {
    /// The next rule-set id to hand out: ids are never reused, also across restarts, so a
    /// conntrack entry can never validate against a rule set it was not decided under.
    pub const NEXT_RULESET_ID: u32 = 0;
    /// This node's own address per family (`node_self_words`): what a pod's packet that
    /// reaches the node's sockets at any other address is judged as going to.
    pub const NODE_SELF_V4: u32 = 1;
    pub const NODE_SELF_V6_HI: u32 = 2;
    pub const NODE_SELF_V6_LO: u32 = 3;
    pub const COUNT: u32 = 4;

    /// `NODE_SELF_V4`'s flag: an address is set (0.0.0.0 is never a node's).
    pub const NODE_SELF_SET: u64 = 1 << 32;

    /// The `NODE_SELF_*` slots' values for the node's own IPv4 and IPv6 addresses.
    pub fn node_self_words(v4: Option<[u8; 4]>, v6: Option<[u8; 16]>) -> [u64; 3] {
        let w4 = match v4 {
            Some(o) => NODE_SELF_SET | u64::from(u32::from_be_bytes(o)),
            None => 0,
        };
        let (hi, lo) = match v6 {
            Some(a) => {
                let mut hi = [0u8; 8];
                let mut lo = [0u8; 8];
                hi.copy_from_slice(&a[..8]);
                lo.copy_from_slice(&a[8..]);
                (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
            }
            None => (0, 0),
        };
        [w4, hi, lo]
    }

    /// The node's own IPv4 address back from its slot's value.
    #[inline(always)]
    pub fn node_self_v4(word: u64) -> Option<super::Addr> {
        if word & NODE_SELF_SET == 0 {
            return None;
        }
        Some(super::Addr::from_v4((word as u32).to_be_bytes()))
    }

    /// The node's own IPv6 address back from its two slots' values (`::` is none).
    #[inline(always)]
    pub fn node_self_v6(hi: u64, lo: u64) -> Option<super::Addr> {
        if hi == 0 && lo == 0 {
            return None;
        }
        let mut a = super::Addr([0; 16]);
        a.0[..8].copy_from_slice(&hi.to_be_bytes());
        a.0[8..].copy_from_slice(&lo.to_be_bytes());
        Some(a)
    }
}

/// What the agent knows about a pod veth: the addresses the pod may send from.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct IfaceInfo {
    pub addr4: Addr,
    pub addr6: Addr,
    /// `IFACE_HAS_V4` | `IFACE_HAS_V6`.
    pub flags: u32,
    pub endpoint_id: u32,
    /// Copies of the pod's `EndpointInfo` sets, so the pod's own hooks need one lookup.
    pub ingress_set: u32,
    pub egress_set: u32,
    pub audit_ingress_set: u32,
    pub audit_egress_set: u32,
    pub ingress_rules: u32,
    pub egress_rules: u32,
}

/// A slot of the `IFACE_SLOTS` array: the programs find a veth's `IfaceInfo` there by
/// indexing (`ifindex % sizes::IFACE_SLOTS`) instead of hashing, the largest cost of the
/// established path. `IFACES` (a hash) stays the full record: a veth whose slot another
/// veth holds (ifindexes grow with every veth a node ever made) is found there.
///
/// Array slots are written in place, so a program may read a slot while the agent writes
/// it. The agent never changes `ifindex` and `info` in one write, and gives a slot whose
/// holder left no new info for a while (see `program::kernel::KernelMaps::set_iface`): a
/// reader that found its veth as the owner reads that veth's info (old or new fields of
/// it while the veth's rule sets change), or finds no owner and looks in `IFACES`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct IfaceSlot {
    /// The veth holding the slot; 0 (never an ifindex) when none does.
    pub ifindex: u32,
    pub info: IfaceInfo,
}

impl IfaceSlot {
    /// The slot a veth would hold.
    pub const fn index_of(ifindex: u32) -> u32 {
        ifindex % sizes::IFACE_SLOTS
    }
}

const _: () = assert!(sizes::IFACE_SLOTS.is_power_of_two());

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
    /// What the pod's policies would allow with those in audit mode enforced too
    /// (`NO_AUDIT`: no audit-mode policy selects the pod in that direction). An opening
    /// the enforced set allows and this one does not is counted and reported as an
    /// audit event, and passes.
    pub audit_ingress_set: u32,
    pub audit_egress_set: u32,
    /// Where the rules of its rule sets are counted (`rule_index`; 0: not named). Rule
    /// sets are shared by pods alike in what they allow, whatever policies allow it; what
    /// a rule set's rule positions name is the pod's own.
    pub ingress_rules: u32,
    pub egress_rules: u32,
}

/// `audit_*_set` of a direction no audit-mode policy applies to.
pub const NO_AUDIT: u32 = 0;

impl EndpointInfo {
    /// Every rule set it points at.
    pub fn sets(&self) -> [u32; 4] {
        [
            self.ingress_set,
            self.egress_set,
            self.audit_ingress_set,
            self.audit_egress_set,
        ]
    }
}

/// Identity of a peer pod: pods alike in everything rules can select them by (namespace,
/// labels, named ports) share one, so a pod coming or going is one write to `IDENTITIES`.
/// 0 is never handed out.
pub type IdentityId = u32;

/// "No identity": never handed out.
pub const NO_IDENTITY: IdentityId = 0;

/// The identity ordered tables give a pod address the agent cannot name (see
/// `RULESET_POD_RANGES`): it matches every Deny and Pass rule that selects pods or
/// namespaces and no Accept rule, the API's fail-closed reading of a peer it cannot
/// tell. Never handed out to a pod.
pub const IDENTITY_UNKNOWN_POD: IdentityId = u32::MAX;

/// Key of `PEERS_BY_IDENTITY`: a rule set and a peer identity.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, PartialOrd, Ord)]
pub struct IdentityKey {
    pub ruleset: u32,
    pub identity: IdentityId,
}

/// Key of the address peer map (LPM trie, ipBlocks): a rule set and a peer address. The id
/// comes first (big-endian, so its 32 bits are matched exactly) and the prefix length
/// counts it.
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

/// Rule position of an allow that names no rule (a direction that is not isolated, or
/// ranges of several rules merged to fit). Positions count from 1 in the order of the
/// rule set's rules, which the agent names per pod (see `EndpointInfo::ingress_rules`).
pub const RULE_UNNAMED: u32 = 0;

/// The `RULE_COUNTERS` slot of rule `position` of a pod's rules counted from `base`;
/// 0 (never a slot) when either names nothing.
#[inline(always)]
pub fn rule_index(base: u32, position: u32) -> u32 {
    if base == 0 || position == RULE_UNNAMED {
        0
    } else {
        base.wrapping_add(position - 1)
    }
}

/// Value of the peer maps: which ports are allowed to/from that peer, and by which rule
/// (a position).
/// The port set's ranges are checked first; a port none of them names is allowed by
/// `rest_rule`, unless it is `REST_DENIED`. An except hole is `NO_PORTSET` with
/// `REST_DENIED`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, PartialOrd, Ord)]
pub struct PeerValue {
    pub portset: u32,
    pub rest_rule: u32,
}

/// `PeerValue::portset` when no range is named.
pub const NO_PORTSET: u32 = 0;
/// `PeerValue::rest_rule` when ports outside the port set are denied.
pub const REST_DENIED: u32 = u32::MAX;

/// Upper bound of distinct (protocol, range) pairs in one port set; keeps the BPF loop
/// bounded. The compiler reports a rule set that needs more instead of truncating it.
pub const MAX_PORT_RANGES: usize = 16;

/// Port sets of ordered tables (ClusterNetworkPolicy) chain: ranges of different rules
/// cannot merge without changing which rule decides, so one peer may need more than one
/// set. The datapath's ordered lookups follow at most this many.
pub const MAX_PORTSET_CHAIN: usize = 4;
/// The ranges one peer entry of an ordered table can hold.
pub const MAX_ORDERED_PORT_RANGES: usize = MAX_PORT_RANGES * MAX_PORTSET_CHAIN;
/// `PortSet::len` holds the number of ranges below this shift and the id of the set that
/// continues it above (0: none), so port-set ids stay below `1 << (32 - shift)`.
pub const PORTSET_NEXT_SHIFT: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PortRange {
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub proto: u8,
    pub _pad: u8,
    pub first: u16,
    pub last: u16,
    pub _pad2: u16,
    /// The rule these ports are allowed by (a position).
    pub rule: u32,
}

#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PortSet {
    /// The number of ranges, and the id of the set that continues this one (see
    /// `PORTSET_NEXT_SHIFT`).
    pub len: u32,
    pub ranges: [PortRange; MAX_PORT_RANGES],
}

impl PortSet {
    #[inline(always)]
    pub const fn count(&self) -> u32 {
        self.len & ((1 << PORTSET_NEXT_SHIFT) - 1)
    }

    /// The id of the set holding the next ranges, or `NO_PORTSET`.
    #[inline(always)]
    pub const fn next(&self) -> u32 {
        self.len >> PORTSET_NEXT_SHIFT
    }

    /// The decision the datapath makes: the rule of the range that holds the port, if
    /// any. Kept here so userspace tests exercise the same code.
    #[inline(always)]
    pub fn rule_for(&self, proto: u8, port: u16) -> Option<u32> {
        let mut i = 0;
        while i < MAX_PORT_RANGES {
            if i as u32 >= self.count() {
                return None;
            }
            let r = &self.ranges[i];
            if r.proto == proto && r.first <= port && port <= r.last {
                return Some(r.rule);
            }
            i += 1;
        }
        None
    }

    pub fn allows(&self, proto: u8, port: u16) -> bool {
        self.rule_for(proto, port).is_some()
    }
}

/// A connection, normalised: `(a, a_port)` sorts before `(b, b_port)`, so both directions
/// of a connection find the same entry with one lookup. ICMP echo uses the identifier as
/// both ports.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct CtKey {
    pub a: Addr,
    pub b: Addr,
    pub a_port: u16,
    pub b_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl CtKey {
    /// The key of the connection `src:sport -> dst:dport`, and whether `src` is side `a`.
    #[inline(always)]
    pub fn of(src: &Addr, dst: &Addr, sport: u16, dport: u16, proto: u8) -> (CtKey, bool) {
        let src_first = match cmp_addr(src, dst) {
            core::cmp::Ordering::Less => true,
            core::cmp::Ordering::Greater => false,
            core::cmp::Ordering::Equal => sport <= dport,
        };
        let key = if src_first {
            CtKey {
                a: *src,
                b: *dst,
                a_port: sport,
                b_port: dport,
                proto,
                _pad: [0; 3],
            }
        } else {
            CtKey {
                a: *dst,
                b: *src,
                a_port: dport,
                b_port: sport,
                proto,
                _pad: [0; 3],
            }
        };
        (key, src_first)
    }
}

/// Byte order comparison of two addresses, as two big-endian halves (a 16-step loop costs
/// the verifier more).
#[inline(always)]
pub fn cmp_addr(x: &Addr, y: &Addr) -> core::cmp::Ordering {
    let hi = |a: &Addr| {
        u64::from_be_bytes([
            a.0[0], a.0[1], a.0[2], a.0[3], a.0[4], a.0[5], a.0[6], a.0[7],
        ])
    };
    let lo = |a: &Addr| {
        u64::from_be_bytes([
            a.0[8], a.0[9], a.0[10], a.0[11], a.0[12], a.0[13], a.0[14], a.0[15],
        ])
    };
    match hi(x).cmp(&hi(y)) {
        core::cmp::Ordering::Equal => lo(x).cmp(&lo(y)),
        o => o,
    }
}

/// Rule-set id stored for a side that this node has not decided (not a local pod, or not
/// decided yet). Never a real rule-set id, so it never validates.
pub const CT_UNDECIDED: u32 = u32::MAX;

/// `CtEntry::flags`.
pub mod ct_flag {
    /// The opener is side `b` of the key (else `a`).
    pub const OPENER_B: u8 = 1;
    /// A packet of the reply direction has passed.
    pub const REPLIED: u8 = 2;
    /// The opener sent a FIN.
    pub const FIN_OPENER: u8 = 4;
    /// The acceptor sent a FIN.
    pub const FIN_ACCEPTOR: u8 = 8;
    /// A RST was seen: the connection is over.
    pub const RST: u8 = 16;
    /// The opener is a local pod whose egress was decided after translation (at the
    /// receiver's veth or an uplink), not at its own veth: later hooks must check it.
    pub const DEFERRED_EGRESS: u8 = 32;
    /// A local pod's connection towards a Service address, before translation: its
    /// replies come from the Service address. Its egress is decided on the backend.
    pub const SERVICE: u8 = 64;
}

/// One tracked connection. `opener_set` / `acceptor_set` are the rule-set ids under which
/// this node allowed the opener's egress / the acceptor's ingress (`CT_UNDECIDED` when
/// that side is not a local pod). Rule-set ids are never reused, so an entry whose id is
/// not the pod's current one is decided again at its next packet. `opener_rule` /
/// `acceptor_rule` are the positions of the rules that allowed each side in that rule
/// set (`RULE_UNNAMED`: none): the connection's packets are counted on them, as the
/// pod's rules name them now.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct CtEntry {
    /// `bpf_ktime_get_ns` of the last packet (refreshed at most once a second).
    pub last_seen_ns: u64,
    pub opener_set: u32,
    pub acceptor_set: u32,
    pub opener_rule: u32,
    pub acceptor_rule: u32,
    pub flags: u8,
    pub _pad: [u8; 7],
}

/// How long an idle connection is kept, by protocol and state (seconds). The kernel's
/// nf_conntrack and Cilium use similar values.
pub mod ct_timeout {
    pub const TCP_OPENING: u64 = 60;
    pub const TCP_ESTABLISHED: u64 = 6 * 3600;
    pub const TCP_CLOSING: u64 = 120;
    pub const TCP_CLOSED: u64 = 10;
    pub const UDP_UNREPLIED: u64 = 60;
    pub const UDP_REPLIED: u64 = 180;
    pub const SCTP_REPLIED: u64 = 3600;
    pub const OTHER: u64 = 60;
}

/// Idle lifetime of an entry, in nanoseconds.
#[inline(always)]
pub fn ct_lifetime_ns(proto: u8, flags: u8) -> u64 {
    let replied = flags & ct_flag::REPLIED != 0;
    let secs = match proto {
        PROTO_TCP => {
            if flags & ct_flag::RST != 0
                || flags & (ct_flag::FIN_OPENER | ct_flag::FIN_ACCEPTOR)
                    == ct_flag::FIN_OPENER | ct_flag::FIN_ACCEPTOR
            {
                ct_timeout::TCP_CLOSED
            } else if flags & (ct_flag::FIN_OPENER | ct_flag::FIN_ACCEPTOR) != 0 {
                ct_timeout::TCP_CLOSING
            } else if replied {
                ct_timeout::TCP_ESTABLISHED
            } else {
                ct_timeout::TCP_OPENING
            }
        }
        PROTO_UDP if replied => ct_timeout::UDP_REPLIED,
        PROTO_UDP => ct_timeout::UDP_UNREPLIED,
        PROTO_SCTP if replied => ct_timeout::SCTP_REPLIED,
        _ => ct_timeout::OTHER,
    };
    secs * 1_000_000_000
}

/// A Service port: kube-proxy translates exactly these (address, protocol, port).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// A local client's connection towards a Service port, by the client's side of it (the
/// backend-decision hooks see the translated tuple, which keeps the client's address and
/// port).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct ServiceFlowKey {
    pub client: Addr,
    pub client_port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// A Service port or a backend: an address and a port (host order).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ServiceTarget {
    pub addr: Addr,
    pub port: u16,
    pub _pad: u16,
}

/// How many Service ports, and how many backends, one client port's record holds.
pub const SERVICE_FLOW_SLOTS: usize = 4;

/// Where a local client's Service connections from one port went: the Service ports they
/// asked for, every backend the translations chose (learnt where the client's egress was
/// decided), and the client's egress rule set under which all those backends were last
/// allowed (`CT_UNDECIDED`: check them again). A translated packet keeps the client's
/// address and port but not the Service's, so when one port talks to several Services
/// the record cannot tell which backend answers for which: a reply from any of its
/// Services passes only while the client's egress allows every one of its backends.
/// A reply with no record, or a record that overflowed, is dropped.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ServiceFlow {
    pub services: [ServiceTarget; SERVICE_FLOW_SLOTS],
    pub backends: [ServiceTarget; SERVICE_FLOW_SLOTS],
    pub egress_set: u32,
    pub services_len: u8,
    pub backends_len: u8,
    /// More backends were learnt than the record holds: its replies are dropped.
    pub overflow: u8,
    /// The backend of the latest translation refused the connection (its ingress): its
    /// replies are dropped.
    pub refused: u8,
}

impl ServiceFlow {
    /// A record of one connection to `service`, no backend known yet.
    pub fn new(service: ServiceTarget) -> Self {
        let mut f = ServiceFlow {
            egress_set: CT_UNDECIDED,
            services_len: 1,
            ..Default::default()
        };
        f.services[0] = service;
        f
    }
}

/// A fragmented datagram: later fragments carry no ports, so the first one records them.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct FragKey {
    pub src: Addr,
    pub dst: Addr,
    /// IPv4 identification (16 bits) or IPv6 fragment identification.
    pub id: u32,
    pub proto: u8,
    /// Which hook saw the first fragment pass: each hook's verdict stands on its own.
    pub hook: u8,
    pub _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
    /// The transport protocol (IPv6 may put extension headers before it in the first
    /// fragment only).
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Per endpoint, per reason packet counters (a per-CPU array indexed by endpoint id).
pub mod reason {
    /// Allowed: the direction is not isolated.
    pub const ALLOW_UNISOLATED: usize = 0;
    /// Allowed by a rule, as the opening of a connection.
    pub const ALLOW_POLICY: usize = 1;
    /// Allowed as part of a tracked connection that a rule allowed.
    pub const ALLOW_TRACKED: usize = 2;
    /// Allowed: an ICMP error about a tracked connection.
    pub const ALLOW_RELATED: usize = 3;
    /// Allowed: between the pod and its own node.
    pub const ALLOW_NODE: usize = 4;
    /// Allowed: ARP or IPv6 neighbour discovery / multicast listener messages.
    pub const ALLOW_NEIGHBOUR: usize = 5;
    /// Passed towards a Service port; the egress is decided after translation.
    pub const PASS_SERVICE: usize = 6;
    /// Dropped: the sender's egress policy does not allow it.
    pub const DROP_EGRESS: usize = 7;
    /// Dropped: the receiver's ingress policy does not allow it.
    pub const DROP_INGRESS: usize = 8;
    /// Dropped: the source address is not the pod's own.
    pub const DROP_SPOOFED: usize = 9;
    /// Dropped: a header could not be parsed on an isolated endpoint.
    pub const DROP_MALFORMED: usize = 10;
    /// Dropped: an isolated pod sent or got a frame that is neither IP nor ARP (or a
    /// VLAN-tagged one).
    pub const DROP_FRAME: usize = 11;
    /// Dropped: a router advertisement or redirect sent by a pod.
    pub const DROP_ROUTER: usize = 12;
    /// Dropped: a later fragment whose first fragment was not seen.
    pub const DROP_FRAGMENT: usize = 13;
    /// Dropped: an IPv4-mapped or IPv4-compatible address in an IPv6 header.
    pub const DROP_ADDRESS: usize = 14;
    /// Dropped: a unicast packet for another address reached an isolated pod's veth (a
    /// bridge flooding frames, or a pod teaching it another pod's MAC address).
    pub const DROP_MISDELIVERED: usize = 15;
    /// Dropped: a Service connection that the datapath cannot record (its client port
    /// already talks to as many Services as a record holds), so its replies could not be
    /// checked.
    pub const DROP_UNTRACKABLE: usize = 16;
    /// Not verdicts: openings that passed and that the pod's audit-mode policies would
    /// have dropped (its egress, its ingress). Counted beside the verdict.
    pub const AUDIT_EGRESS: usize = 17;
    pub const AUDIT_INGRESS: usize = 18;
    pub const COUNT: usize = 19;

    pub const NAMES: [&str; COUNT] = [
        "allow_unisolated",
        "allow_policy",
        "allow_tracked",
        "allow_related",
        "allow_node",
        "allow_neighbour",
        "pass_service",
        "drop_egress",
        "drop_ingress",
        "drop_spoofed",
        "drop_malformed",
        "drop_frame",
        "drop_router",
        "drop_fragment",
        "drop_address",
        "drop_misdelivered",
        "drop_untrackable",
        "audit_egress",
        "audit_ingress",
    ];

    /// Reasons from this one up to `FIRST_AUDIT` drop the packet.
    pub const FIRST_DROP: usize = DROP_EGRESS;
    /// Reasons from this one on are audit findings, not verdicts.
    pub const FIRST_AUDIT: usize = AUDIT_EGRESS;

    /// Does this reason drop the packet?
    #[inline(always)]
    pub const fn drops(why: usize) -> bool {
        why >= FIRST_DROP && why < FIRST_AUDIT
    }
}

/// Verdict events (`EVENTS`, a ring buffer): which verdicts the programs report, set at
/// load time.
pub mod events {
    pub const NONE: u8 = 0;
    /// Drops only.
    pub const DROPS: u8 = 1;
    /// Drops, and openings a rule allowed (`allow_policy`); not every packet of a
    /// tracked connection.
    pub const DROPS_AND_ALLOWS: u8 = 2;
    /// Bytes of the ring buffer.
    pub const RING_BYTES: u32 = 256 * 1024;
    /// Indexes of `EVENT_STATS` (per CPU).
    pub const LOST: u32 = 0;
    pub const SUPPRESSED: u32 = 1;
    pub const STATS: u32 = 2;
    /// Where a verdict was taken (`VerdictEvent::hook`).
    pub const AT_FROM_POD: u8 = 0;
    pub const AT_TO_POD: u8 = 1;
    pub const AT_UPLINK: u8 = 2;
    pub const AT_TO_NODE: u8 = 3;
    /// `VerdictEvent::flags`: the addresses and ports are the packet's (frames that are
    /// not IP have none).
    pub const HAS_TUPLE: u8 = 1;
}

/// One verdict, as the datapath reports it. Addresses and ports are the packet's as the
/// hook saw it (before translation at a pod's veth for what it sends, after it for what
/// it receives and at uplinks).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct VerdictEvent {
    /// CLOCK_MONOTONIC (or coarser, see the programs' clock), nanoseconds.
    pub time_ns: u64,
    pub src: Addr,
    pub dst: Addr,
    /// The endpoint the verdict is counted on (0: none).
    pub endpoint_id: u32,
    pub ifindex: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub reason: u8,
    pub hook: u8,
    pub flags: u8,
    /// The `RULE_COUNTERS` slot of the rule that allowed it (`allow_policy`,
    /// `allow_tracked`); 0 else.
    pub rule: u32,
    pub _pad: u32,
}

/// A pod's budget of events (per CPU): a token bucket, so a pod that is being dropped in
/// a flood reports a few events a second, not every packet.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct EventBudget {
    pub refilled_ns: u64,
    pub tokens: u32,
    pub _pad: u32,
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
    unsafe impl aya::Pod for IfaceSlot {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for PeerKey {}
    unsafe impl aya::Pod for IdentityKey {}
    unsafe impl aya::Pod for PortRange {}
    unsafe impl aya::Pod for PeerValue {}
    unsafe impl aya::Pod for PortSet {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceFlowKey {}
    unsafe impl aya::Pod for ServiceFlow {}
    unsafe impl aya::Pod for ServiceTarget {}
    unsafe impl aya::Pod for VerdictEvent {}
    unsafe impl aya::Pod for EventBudget {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragPorts {}
    unsafe impl aya::Pod for Counters {}
}

// The layouts the agent and the programs share, pinned: a change here is a change of
// `LAYOUT_VERSION`.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<Addr>() == 16);
    assert!(size_of::<IfaceInfo>() == 64);
    assert!(size_of::<IfaceSlot>() == 68);
    assert!(size_of::<EndpointInfo>() == 28);
    assert!(size_of::<PeerKey>() == 20);
    assert!(size_of::<IdentityKey>() == 8);
    assert!(size_of::<CtKey>() == 40);
    assert!(size_of::<CtEntry>() == 32);
    assert!(size_of::<PortRange>() == 12);
    assert!(size_of::<PeerValue>() == 8);
    assert!(size_of::<ServiceKey>() == 20);
    assert!(size_of::<ServiceFlowKey>() == 20);
    assert!(size_of::<ServiceTarget>() == 20);
    assert!(size_of::<VerdictEvent>() == 64);
    assert!(size_of::<EventBudget>() == 16);
    assert!(size_of::<ServiceFlow>() == 168);
    assert!(size_of::<FragKey>() == 40);
    assert!(size_of::<FragPorts>() == 8);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_self_words_round_trip_and_none_is_none() {
        let v6 = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let [w4, hi, lo] = meta::node_self_words(Some([10, 1, 0, 1]), Some(v6));
        assert_eq!(meta::node_self_v4(w4), Some(Addr::from_v4([10, 1, 0, 1])));
        assert_eq!(meta::node_self_v6(hi, lo), Some(Addr(v6)));
        let [w4, hi, lo] = meta::node_self_words(None, None);
        assert_eq!(
            (meta::node_self_v4(w4), meta::node_self_v6(hi, lo)),
            (None, None)
        );
        // 0.0.0.0 is stored as set, not confused with none.
        let [w4, _, _] = meta::node_self_words(Some([0; 4]), None);
        assert_eq!(meta::node_self_v4(w4), Some(Addr::from_v4([0; 4])));
    }

    #[test]
    fn group_addresses_are_broadcast_and_multicast_only() {
        let v6 = |s: &str| Addr(s.parse::<core::net::Ipv6Addr>().unwrap().octets());
        for group in [
            Addr::from_v4([255, 255, 255, 255]),
            Addr::from_v4([224, 0, 0, 251]),
            Addr::from_v4([239, 255, 255, 250]),
            v6("ff02::1"),
            v6("ff05::1:3"),
        ] {
            assert!(group.is_group(), "{group:?}");
        }
        for one in [
            Addr::from_v4([10, 1, 0, 255]),
            Addr::from_v4([223, 255, 255, 255]),
            Addr::from_v4([240, 0, 0, 1]),
            Addr::from_v4([255, 255, 255, 254]),
            v6("fe80::1"),
            v6("fd00::ff"),
        ] {
            assert!(!one.is_group(), "{one:?}");
        }
        assert!(v6("fe80::1").is_link_local_v6());
        assert!(v6("febf::1").is_link_local_v6());
        assert!(!v6("fec0::1").is_link_local_v6());
        assert!(!Addr::from_v4([169, 254, 0, 1]).is_link_local_v6());
    }

    #[test]
    fn portset_matches_protocol_and_inclusive_range() {
        let mut set = PortSet::default();
        set.ranges[0] = PortRange {
            proto: PROTO_TCP,
            _pad: 0,
            first: 80,
            last: 81,
            _pad2: 0,
            rule: 7,
        };
        set.ranges[1] = PortRange {
            proto: PROTO_UDP,
            _pad: 0,
            first: 53,
            last: 53,
            _pad2: 0,
            rule: 9,
        };
        set.len = 2;
        assert!(set.allows(PROTO_TCP, 80));
        assert!(set.allows(PROTO_TCP, 81));
        assert!(!set.allows(PROTO_TCP, 82));
        assert!(!set.allows(PROTO_UDP, 80));
        assert!(set.allows(PROTO_UDP, 53));
        assert!(!set.allows(PROTO_SCTP, 53));
        assert_eq!(set.rule_for(PROTO_TCP, 81), Some(7));
        assert_eq!(set.rule_for(PROTO_UDP, 53), Some(9));
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
