//! Decisions: rule lookups and connection tracking.
//!
//! Every pass names its justification: a rule that allows the packet as the opening of a
//! connection, or a tracked connection that a rule allowed (one entry per connection,
//! normalised; see `netpol_common::CtEntry`). Nothing is inferred from what a packet
//! looks like: a TCP segment without an entry is judged as an opening, whatever its
//! flags, and never as a reply.

use aya_ebpf::maps::lpm_trie::Key;
use netpol_common::{
    Addr, CT_UNDECIDED, CtEntry, CtKey, IDENTITY_UNKNOWN_POD, IdentityKey, MAX_PORTSET_CHAIN,
    NO_AUDIT, NO_IDENTITY, NO_PORTSET, PROTO_TCP, PeerKey, PeerValue, REST_DENIED, RULE_UNNAMED,
    RULESET_ADMIN_TABLE, RULESET_ALLOW_ALL, RULESET_HAS_ADMIN, RULESET_ID_BITS,
    RULESET_NP_ISOLATED, RULESET_ORDERED, RULESET_POD_RANGES, ct_flag, ct_lifetime_ns,
    denying_position, node_addr, reason, rule_index, ruleset_base, tag, tiered_verdict,
};

use crate::clock::now;
use crate::maps::{
    ADMIN_TABLES, CONNTRACK, CONNTRACK_NEW, IDENTITIES, PEERS_BY_IDENTITY, PEERS_CIDR, PORTSETS,
    is_node, node_addr_kind,
};
use crate::parse::{Icmp, Packet, TCP_FIN, TCP_RST};

/// A local pod's rule sets, and its endpoint id.
#[derive(Clone, Copy)]
pub struct Sets {
    pub ingress: u32,
    pub egress: u32,
    /// `NO_AUDIT`, or what its policies in audit mode would allow (see `EndpointInfo`).
    pub audit_ingress: u32,
    pub audit_egress: u32,
    /// Where the rules of its sets are counted (`rule_index`).
    pub ingress_rules: u32,
    pub egress_rules: u32,
    pub endpoint: u32,
}

impl Sets {
    #[inline(always)]
    pub fn isolated(&self) -> bool {
        self.ingress != RULESET_ALLOW_ALL || self.egress != RULESET_ALLOW_ALL
    }

    /// Its connections are tracked: it is isolated, or audited (an audit finding is
    /// about a connection's opening, not each packet of it).
    #[inline(always)]
    pub fn tracked(&self) -> bool {
        self.isolated() || self.audit_ingress != NO_AUDIT || self.audit_egress != NO_AUDIT
    }
}

/// Does rule set `set` allow `peer` on `proto`/`port`, and by which rule (see
/// `netpol_common::tiered_verdict` for what the answer names)?
///
/// NetworkPolicy alone (no flag on the id) allows by union: the peer's identity
/// (pod-selector rules) or its address (ipBlock rules), whichever allows; when both do,
/// the pod-selector rule is the one named. With ClusterNetworkPolicy, the Admin table
/// decides first, and an ordered rest table takes the first matching rule of either
/// lookup.
#[inline(always)]
pub fn allowed(set: u32, peer: &Addr, proto: u8, port: u16) -> Option<u32> {
    decide(set, peer, None, proto, port).ok()
}

/// `allowed`, for a peer that is the node at another address (`node`: see `decide`).
#[inline(always)]
pub fn allowed_as(set: u32, peer: &Addr, node: Option<&Addr>, proto: u8, port: u16) -> Option<u32> {
    decide(set, peer, node, proto, port).ok()
}

/// `allowed`, and when denied, for the drop event, the position of the rule of an
/// ordered set that denies (`RULE_UNNAMED` for unordered sets: NetworkPolicy denies by
/// having no rule). Each table is read once: the denial is named from the same answers.
///
/// `node`: the packet reaches this node at `peer`, an address that rules about nodes do
/// not name (see `main::towards_node`); `node` is the node's own address. In an ordered
/// set a rule naming either matches, and the first decides. NetworkPolicy's own-node
/// exemption stays with `peer`: a broadcast or a Service address also reaches pods, or
/// is what NetworkPolicy names. (Unordered sets exempt the node before they get here, or
/// judge the address.)
#[inline(always)]
fn decide(set: u32, peer: &Addr, node: Option<&Addr>, proto: u8, port: u16) -> Result<u32, u32> {
    if set == RULESET_ALLOW_ALL {
        return Ok(RULE_UNNAMED);
    }
    if set & RULESET_ORDERED == 0 {
        return union_allowed(set, peer, proto, port).ok_or(RULE_UNNAMED);
    }
    let identity = ordered_identity(peer);
    let admin = admin_rule(set, identity, peer, node, proto, port);
    // Read by `tiered_verdict` whenever the Admin table does not deny, which is every
    // denial `denying_position` needs it for.
    let mut rest = tag::NONE;
    let verdict = tiered_verdict(
        admin,
        || set & RULESET_NP_ISOLATED != 0 && is_node(peer),
        || {
            rest = first_rule(set, identity, peer, node, proto, port);
            rest
        },
    );
    verdict.ok_or_else(|| denying_position(admin, || rest))
}

/// For an egress under ordered set `set` towards `dst`: the node's own address when `dst`
/// is another of the node's addresses (see `main::towards_node`), so that a rule about
/// nodes matches it too (ICMP, which no socket takes in, is decided only at the veth).
#[inline(always)]
pub fn node_alias(set: u32, dst: &Addr) -> Option<Addr> {
    if set & RULESET_ORDERED == 0 {
        return None;
    }
    let kind = node_addr_kind(dst);
    if kind & node_addr::NAMED != 0 || kind & node_addr::REACHES_NODE == 0 {
        return None;
    }
    crate::maps::node_self(dst)
}

/// The first rule of the Admin table of ordered set `set` matching the peer (`tag::NONE`:
/// none, or the set has no Admin table). A set whose table is not named (never: the agent
/// names it before any endpoint points at the set) answers with a Deny: fail closed.
#[inline(always)]
fn admin_rule(
    set: u32,
    identity: u32,
    peer: &Addr,
    node: Option<&Addr>,
    proto: u8,
    port: u16,
) -> u32 {
    if set & RULESET_HAS_ADMIN == 0 {
        return tag::NONE;
    }
    // SAFETY: plain-data value, copied out.
    match unsafe { ADMIN_TABLES.get(ruleset_base(set)) } {
        Some(table) => first_rule(
            *table | RULESET_ADMIN_TABLE,
            identity,
            peer,
            node,
            proto,
            port,
        ),
        None => tag::new(RULE_UNNAMED, tag::DENY),
    }
}

/// NetworkPolicy's union: the identity's allow, else the address's.
#[inline(always)]
fn union_allowed(set: u32, peer: &Addr, proto: u8, port: u16) -> Option<u32> {
    // SAFETY (all lookups): plain-data values, copied out.
    if let Some(identity) = unsafe { IDENTITIES.get(peer) } {
        let key = IdentityKey {
            ruleset: set,
            identity: *identity,
        };
        if let Some(value) = unsafe { PEERS_BY_IDENTITY.get(key) }
            && let Some(rule) = peer_allows(*value, proto, port)
        {
            return Some(rule);
        }
    }
    let key = PeerKey::new(set, *peer);
    match PEERS_CIDR.get(Key::new(RULESET_ID_BITS + 128, key)) {
        Some(value) => peer_allows(*value, proto, port),
        None => None,
    }
}

/// An address as two scalars (global BPF functions take nothing else), and back.
#[inline(always)]
fn halves(peer: &Addr) -> (u64, u64) {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&peer.0[..8]);
    lo.copy_from_slice(&peer.0[8..]);
    (u64::from_ne_bytes(hi), u64::from_ne_bytes(lo))
}

/// A `PEERS_CIDR` key (the layout of `Key<PeerKey>`) built in place from an address in
/// halves, so the address sits on the stack once. The global functions end the deepest
/// call chains, whose frames Linux before 6.9 caps at 512 bytes together (each rounded up
/// to 32): they keep theirs within 32 (`tests/tests/bpf_stack_depth.rs` checks).
#[repr(C)]
struct CidrKey {
    prefix_len: u32,
    ruleset_be: [u8; 4],
    addr: Addr,
}

impl CidrKey {
    #[inline(always)]
    fn new(set: u32, hi: u64, lo: u64) -> Self {
        let mut addr = Addr([0; 16]);
        addr.0[..8].copy_from_slice(&hi.to_ne_bytes());
        addr.0[8..].copy_from_slice(&lo.to_ne_bytes());
        CidrKey {
            prefix_len: RULESET_ID_BITS + 128,
            ruleset_be: set.to_be_bytes(),
            addr,
        }
    }

    #[inline(always)]
    fn lpm(&self) -> &Key<PeerKey> {
        // SAFETY: `Key<PeerKey>` is packed (alignment 1) and lays out the same fields in
        // the same order: a u32, then the rule set's 4 bytes, then the 16-byte address.
        unsafe { &*(self as *const CidrKey).cast::<Key<PeerKey>>() }
    }
}

const _: () = {
    use core::mem::{offset_of, size_of};
    let data = offset_of!(Key<PeerKey>, data);
    assert!(size_of::<CidrKey>() == size_of::<Key<PeerKey>>());
    assert!(offset_of!(CidrKey, prefix_len) == offset_of!(Key<PeerKey>, prefix_len));
    assert!(offset_of!(CidrKey, ruleset_be) == data + offset_of!(PeerKey, ruleset_be));
    assert!(offset_of!(CidrKey, addr) == data + offset_of!(PeerKey, addr));
};

/// The identity ordered tables look the peer up by (`NO_IDENTITY`: none), found once
/// for both tables.
#[inline(always)]
pub fn ordered_identity(peer: &Addr) -> u32 {
    let (hi, lo) = halves(peer);
    netpol_ordered_identity(hi, lo)
}

/// `ordered_identity`, as a global BPF function (checked once by the verifier): the
/// address's identity; else, for an address in the pod ranges that is neither a hole
/// (a node address) nor this node's, `IDENTITY_UNKNOWN_POD`: a pod the agent cannot name,
/// which Deny and Pass rules selecting pods deny and Accept rules do not match.
#[unsafe(no_mangle)]
#[inline(never)]
// By reference: a copy of the address would take 16 more bytes of this frame.
#[allow(clippy::needless_borrows_for_generic_args)]
pub extern "C" fn netpol_ordered_identity(hi: u64, lo: u64) -> u32 {
    let range = CidrKey::new(RULESET_POD_RANGES, hi, lo);
    // SAFETY (all lookups): plain-data values, copied out.
    if let Some(identity) = unsafe { IDENTITIES.get(&range.addr) } {
        return *identity;
    }
    match PEERS_CIDR.get(range.lpm()) {
        Some(r) if r.rest_rule != REST_DENIED && node_addr_kind(&range.addr) == 0 => {
            IDENTITY_UNKNOWN_POD
        }
        _ => NO_IDENTITY,
    }
}

/// The first rule (smallest tag) of table `key_set` matching the peer by `identity` (its
/// `ordered_identity`) or by address, or as the node at `node`; `tag::NONE` when none
/// does.
#[inline(always)]
fn first_rule(
    key_set: u32,
    identity: u32,
    peer: &Addr,
    node: Option<&Addr>,
    proto: u8,
    port: u16,
) -> u32 {
    let proto_port = u32::from(proto) << 16 | u32::from(port);
    let by_identity = if identity != NO_IDENTITY {
        netpol_first_by_identity(key_set, identity, proto_port)
    } else {
        tag::NONE
    };
    let (hi, lo) = halves(peer);
    let first = by_identity.min(netpol_first_by_address(key_set, hi, lo, proto_port));
    match node {
        Some(n) => {
            let (hi, lo) = halves(n);
            first.min(netpol_first_by_address(key_set, hi, lo, proto_port))
        }
        None => first,
    }
}

// The two lookups of `first_rule`, as global BPF functions: the verifier checks each
// once, on its own, instead of once per call site and path (two lookups with a
// port-range scan each, at every decision of every program, would not fit its budget).
// Global functions take scalars only, so the address comes in two halves and protocol
// and port in one word. Two functions, not one, so each frame stays within 32 bytes.

/// The first rule of table `key_set` matching identity `identity`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netpol_first_by_identity(key_set: u32, identity: u32, proto_port: u32) -> u32 {
    let key = IdentityKey {
        ruleset: key_set,
        identity,
    };
    // SAFETY: plain-data value, copied out.
    match unsafe { PEERS_BY_IDENTITY.get(key) } {
        Some(value) => first_tag(*value, proto_port),
        None => tag::NONE,
    }
}

/// The first rule of table `key_set` matching the address `hi`:`lo`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netpol_first_by_address(key_set: u32, hi: u64, lo: u64, proto_port: u32) -> u32 {
    match PEERS_CIDR.get(CidrKey::new(key_set, hi, lo).lpm()) {
        Some(value) => first_tag(*value, proto_port),
        None => tag::NONE,
    }
}

/// `peer_allows` for an ordered table, whose port sets may chain; `tag::NONE` when no
/// rule matches.
#[inline(always)]
fn first_tag(value: PeerValue, proto_port: u32) -> u32 {
    let proto = (proto_port >> 16) as u8;
    let port = proto_port as u16;
    let mut id = value.portset;
    let mut i = 0;
    while i < MAX_PORTSET_CHAIN && id != NO_PORTSET {
        // SAFETY: plain-data value.
        let Some(ports) = (unsafe { PORTSETS.get(id) }) else {
            break;
        };
        if let Some(rule) = ports.rule_for(proto, port) {
            return rule;
        }
        id = ports.next();
        i += 1;
    }
    match value.rest_rule {
        REST_DENIED => tag::NONE,
        rule => rule,
    }
}

/// The rule of a peer entry that allows `proto`/`port`: a range of its port set, else
/// the rule that allows every other port.
#[inline(always)]
fn peer_allows(value: PeerValue, proto: u8, port: u16) -> Option<u32> {
    if value.portset != NO_PORTSET
        // SAFETY: plain-data value.
        && let Some(ports) = unsafe { PORTSETS.get(value.portset) }
        && let Some(rule) = ports.rule_for(proto, port)
    {
        return Some(rule);
    }
    match value.rest_rule {
        REST_DENIED => None,
        rule => Some(rule),
    }
}

/// The allow reason for a rule-set decision.
#[inline(always)]
fn allow_reason(set: u32) -> usize {
    if set == RULESET_ALLOW_ALL {
        reason::ALLOW_UNISOLATED
    } else {
        reason::ALLOW_POLICY
    }
}

/// Packets that may open a connection; they never ride an entry of the other direction.
#[inline(always)]
fn opens(p: &Packet) -> bool {
    p.tcp_open() || p.icmp == Icmp::EchoRequest
}

/// A tracked connection found for a packet.
pub struct Hit {
    pub key: CtKey,
    pub entry: *mut CtEntry,
    /// The packet travels from the connection's opener to its acceptor.
    pub from_opener: bool,
    /// `clock::now()` at the lookup (one clock read per packet).
    pub now: u64,
    /// The entry sits in `CONNTRACK_NEW` (no reply yet).
    pub unreplied: bool,
}

/// The live entry of `p`'s connection, if any: replied connections first (the common
/// case), then unreplied ones. Expired entries are deleted here (the agent also sweeps
/// them).
#[inline(always)]
pub fn lookup(p: &Packet) -> Option<Hit> {
    let (key, src_is_a) = CtKey::of(&p.t_src, &p.t_dst, p.sport, p.dport, p.proto);
    let (entry, unreplied) = match CONNTRACK.get_ptr_mut(key) {
        Some(e) => (e, false),
        None => (CONNTRACK_NEW.get_ptr_mut(key)?, true),
    };
    // SAFETY: the pointer comes from the map and is valid for this program run.
    let e = unsafe { &*entry };
    let t = now();
    if t.saturating_sub(e.last_seen_ns) > ct_lifetime_ns(p.proto, e.flags) {
        let _ = if unreplied {
            CONNTRACK_NEW.remove(key)
        } else {
            CONNTRACK.remove(key)
        };
        return None;
    }
    let opener_is_a = e.flags & ct_flag::OPENER_B == 0;
    Some(Hit {
        key,
        entry,
        from_opener: src_is_a == opener_is_a,
        now: t,
        unreplied,
    })
}

/// How one side of a connection was decided: under which rule set, by which rule (its
/// position in the set).
#[derive(Clone, Copy)]
pub struct Decided {
    pub set: u32,
    pub rule: u32,
}

impl Decided {
    #[inline(always)]
    pub fn by(set: u32, rule: u32) -> Self {
        Decided { set, rule }
    }
}

/// A side this node does not decide (not a local pod).
pub const UNDECIDED: Decided = Decided {
    set: CT_UNDECIDED,
    rule: RULE_UNNAMED,
};

/// Starts tracking `p` as the opening of a connection.
#[inline(always)]
pub fn track(p: &Packet, opener: Decided, acceptor: Decided, flags: u8) {
    let (key, src_is_a) = CtKey::of(&p.t_src, &p.t_dst, p.sport, p.dport, p.proto);
    let mut flags = flags;
    if !src_is_a {
        flags |= ct_flag::OPENER_B;
    }
    // An opening that already ends (a stray RST or FIN judged as an opening) leaves a
    // closing entry, not a live connection.
    if p.proto == PROTO_TCP {
        if p.tcp_flags & TCP_RST != 0 {
            flags |= ct_flag::RST;
        }
        if p.tcp_flags & TCP_FIN != 0 {
            flags |= ct_flag::FIN_OPENER;
        }
    }
    let entry = CtEntry {
        last_seen_ns: now(),
        opener_set: opener.set,
        acceptor_set: acceptor.set,
        opener_rule: opener.rule,
        acceptor_rule: acceptor.rule,
        flags,
        _pad: [0; 7],
    };
    // Every connection starts unreplied; its first reply moves it (`update_state`). A new
    // opening replaces whatever the tuple held before, in either map.
    let _ = CONNTRACK.remove(key);
    if CONNTRACK_NEW.insert(key, entry, 0).is_err() {
        crate::log::insert_failed(crate::log::CONNTRACK_NEW);
    }
}

/// Which local pod a hook judges for, and from which side of the packet.
#[derive(Clone, Copy)]
pub struct Judged {
    pub sets: Sets,
    /// The pod sends the packet (else it receives it).
    pub sends: bool,
}

/// A packet of a tracked connection, judged for the local pod `me`: passes while the rule
/// set that allowed `me`'s side is still the pod's current one; when the pod's rules
/// changed, that side is decided again (on the connection's opening tuple) and the entry
/// goes on or is deleted. Returns the reason (allow or drop).
#[inline(always)]
pub fn judge_tracked(hit: &Hit, p: &mut Packet, me: Judged) -> usize {
    // SAFETY: valid map value pointer for this run; racing writers only store whole
    // fields, and every field is re-validated here.
    let e = unsafe { &mut *hit.entry };
    if e.flags & ct_flag::SERVICE != 0 {
        // A reply from the Service: the client's egress must still allow its backend.
        if !hit.from_opener && !me.sends && !service_allowed(hit, p, me.sets) {
            forget(hit);
            return reason::DROP_EGRESS;
        }
        update_state(hit, e, p);
        return if hit.from_opener {
            reason::PASS_SERVICE
        } else {
            reason::ALLOW_TRACKED
        };
    }
    let i_am_opener = me.sends == hit.from_opener;
    let mut why = reason::ALLOW_TRACKED;
    if let Some(r) = revalidate(hit, e, p, i_am_opener, me.sets) {
        if r >= reason::FIRST_DROP {
            forget(hit);
            return r;
        }
        why = r;
    }
    update_state(hit, e, p);
    why
}

/// `None` when `me`'s side is still valid; otherwise the new decision for it. `p.rule`
/// becomes the rule that allows `me`'s side.
#[inline(always)]
fn revalidate(
    hit: &Hit,
    e: &mut CtEntry,
    p: &mut Packet,
    i_am_opener: bool,
    sets: Sets,
) -> Option<usize> {
    let (stored, current) = if i_am_opener {
        (e.opener_set, sets.egress)
    } else {
        (e.acceptor_set, sets.ingress)
    };
    let (base, position) = if i_am_opener {
        (sets.egress_rules, e.opener_rule)
    } else {
        (sets.ingress_rules, e.acceptor_rule)
    };
    if stored == current {
        p.position = position;
        p.rule = rule_index(base, position);
        return None;
    }
    // The opening tuple: the acceptor's address and port, seen from the opener.
    let (opener, acceptor, acceptor_port) = opening(hit, p);
    let peer = if i_am_opener { &acceptor } else { &opener };
    // Unordered sets leave the pod's own node to the hooks' exemption, which a tracked
    // connection (seeded, or opened under an ordered set) never reaches: applied here.
    let node = if i_am_opener {
        node_alias(current, peer)
    } else {
        None
    };
    let by_rule = decide(current, peer, node.as_ref(), p.proto, acceptor_port).ok();
    let node_exempt = by_rule.is_none() && current & RULESET_ORDERED == 0 && is_node(peer);
    let decided = if node_exempt {
        Some(RULE_UNNAMED)
    } else {
        by_rule
    };
    let Some(rule) = decided else {
        p.rule = 0;
        return Some(if i_am_opener {
            reason::DROP_EGRESS
        } else {
            reason::DROP_INGRESS
        });
    };
    // A side decided here for the first time (its pod did not open the entry): this is
    // that side's opening, and its audit-mode policies judge it too.
    // (The node's exemption is no opening that audit-mode policies judge.)
    if stored == CT_UNDECIDED && !node_exempt {
        if i_am_opener {
            audit_egress(sets, &acceptor, p, acceptor_port);
        } else {
            audit_ingress(sets, &opener, p, acceptor_port);
        }
    }
    if i_am_opener {
        e.opener_set = current;
        e.opener_rule = rule;
    } else {
        e.acceptor_set = current;
        e.acceptor_rule = rule;
    }
    p.position = rule;
    p.rule = rule_index(base, rule);
    Some(allow_reason(current))
}

/// (opener address, acceptor address, acceptor port) of the connection.
#[inline(always)]
fn opening(hit: &Hit, p: &Packet) -> (Addr, Addr, u16) {
    if hit.from_opener {
        (p.t_src, p.t_dst, p.dport)
    } else {
        (p.t_dst, p.t_src, p.sport)
    }
}

/// Replies, FIN and RST, and the idle clock (refreshed at most once a second, so busy
/// connections do not write the entry on every packet). The first reply moves the entry
/// to the replied map.
#[inline(always)]
fn update_state(hit: &Hit, e: &mut CtEntry, p: &Packet) {
    let mut flags = e.flags;
    if !hit.from_opener {
        flags |= ct_flag::REPLIED;
    }
    if p.proto == PROTO_TCP {
        if p.tcp_flags & TCP_RST != 0 {
            flags |= ct_flag::RST;
        }
        if p.tcp_flags & TCP_FIN != 0 {
            flags |= if hit.from_opener {
                ct_flag::FIN_OPENER
            } else {
                ct_flag::FIN_ACCEPTOR
            };
        }
    }
    if flags != e.flags {
        e.flags = flags;
    }
    if hit.now.saturating_sub(e.last_seen_ns) > 1_000_000_000 {
        e.last_seen_ns = hit.now;
    }
    if hit.unreplied && flags & ct_flag::REPLIED != 0 {
        let moved = *e;
        if CONNTRACK.insert(hit.key, moved, 0).is_ok() {
            let _ = CONNTRACK_NEW.remove(hit.key);
        } else {
            crate::log::insert_failed(crate::log::CONNTRACK);
        }
        if flags & ct_flag::SERVICE != 0 {
            // A reply: it goes to the client, the connection's opener.
            crate::service::replied(&p.t_dst, p.dport, p.proto);
        }
    }
}

/// Whether an existing entry may carry `p`. An opening packet never rides the other
/// direction's entry (it is judged as new), and a new opening on a finished connection's
/// tuple (port reuse) starts over.
#[inline(always)]
pub fn usable(hit: &Hit, p: &Packet) -> bool {
    if !opens(p) {
        return true;
    }
    if !hit.from_opener {
        return false;
    }
    // SAFETY: valid map value pointer for this run.
    let flags = unsafe { (*hit.entry).flags };
    let finished = flags & (ct_flag::RST | ct_flag::FIN_OPENER | ct_flag::FIN_ACCEPTOR) != 0;
    if finished && p.proto == PROTO_TCP {
        forget(hit);
        return false;
    }
    true
}

/// An ICMP error passes when it quotes a live connection that `me`'s rules still allow:
/// it belongs to it. It changes nothing in the entry.
#[inline(always)]
pub fn related(p: &mut Packet, me: Judged) -> bool {
    let Some(hit) = lookup(p) else {
        return false;
    };
    // SAFETY: valid map value pointer for this run.
    let e = unsafe { &mut *hit.entry };
    if e.flags & ct_flag::SERVICE != 0 {
        return service_allowed(&hit, p, me.sets);
    }
    let i_am_opener = me.sends == hit.from_opener;
    match revalidate(&hit, e, p, i_am_opener, me.sets) {
        Some(r) if r >= reason::FIRST_DROP => {
            forget(&hit);
            false
        }
        _ => true,
    }
}

/// For a Service entry (the client opened it): does the client's egress still allow the
/// backend its connection went to?
#[inline(always)]
fn service_allowed(hit: &Hit, p: &Packet, client_sets: Sets) -> bool {
    let (client, client_port, service, service_port) = if hit.from_opener {
        (&p.t_src, p.sport, &p.t_dst, p.dport)
    } else {
        (&p.t_dst, p.dport, &p.t_src, p.sport)
    };
    crate::service::still_allowed(
        client,
        client_port,
        service,
        service_port,
        p.proto,
        client_sets,
    )
}

/// Deletes the connection's entry.
#[inline(always)]
pub fn forget(hit: &Hit) {
    let _ = if hit.unreplied {
        CONNTRACK_NEW.remove(hit.key)
    } else {
        CONNTRACK.remove(hit.key)
    };
}

/// The opening of a new connection, judged for a local sender's egress; `p.rule` names
/// the rule that allows it, and `p.audit_egress` the sender when its audit-mode policies
/// would not.
#[inline(always)]
pub fn egress_opening(sets: Sets, p: &mut Packet) -> usize {
    egress_opening_as(sets, p, None)
}

/// `egress_opening`; `node`: the packet reaches this node at an address rules about nodes
/// do not name, and `node` is the node's own address (see `decide`).
#[inline(always)]
pub fn egress_opening_as(sets: Sets, p: &mut Packet, node: Option<&Addr>) -> usize {
    let peer = p.t_dst;
    match decide(sets.egress, &peer, node, p.proto, p.dport) {
        Ok(rule) => {
            p.position = rule;
            p.rule = rule_index(sets.egress_rules, rule);
            let port = p.dport;
            audit_egress(sets, &peer, p, port);
            allow_reason(sets.egress)
        }
        Err(position) => {
            p.rule = rule_index(sets.egress_rules, position);
            reason::DROP_EGRESS
        }
    }
}

/// Notes in `p` when the sender's audit-mode policies would not let it reach `peer`.
#[inline(always)]
fn audit_egress(sets: Sets, peer: &Addr, p: &mut Packet, port: u16) {
    if sets.audit_egress != NO_AUDIT && allowed(sets.audit_egress, peer, p.proto, port).is_none() {
        p.audit_egress = sets.endpoint;
    }
}

/// Notes in `p` when the receiver's audit-mode policies would not let `peer` in.
#[inline(always)]
fn audit_ingress(sets: Sets, peer: &Addr, p: &mut Packet, port: u16) {
    if sets.audit_ingress != NO_AUDIT && allowed(sets.audit_ingress, peer, p.proto, port).is_none()
    {
        p.audit_ingress = sets.endpoint;
    }
}

/// The opening of a new connection, judged for a local receiver's ingress; `p.rule`
/// names the rule that allows it, and `p.audit_ingress` the receiver when its
/// audit-mode policies would not.
#[inline(always)]
pub fn ingress_opening(sets: Sets, p: &mut Packet) -> usize {
    match decide(sets.ingress, &p.t_src, None, p.proto, p.dport) {
        Ok(rule) => {
            p.position = rule;
            p.rule = rule_index(sets.ingress_rules, rule);
            let (peer, port) = (p.t_src, p.dport);
            audit_ingress(sets, &peer, p, port);
            allow_reason(sets.ingress)
        }
        Err(position) => {
            p.rule = rule_index(sets.ingress_rules, position);
            reason::DROP_INGRESS
        }
    }
}

/// A local pod's packet on an entry, at a hook after translation: its side (opener:
/// egress, acceptor: ingress) under its current rules `sender`. `None`: still valid.
#[inline(always)]
pub fn judge_local_sender(hit: &Hit, p: &mut Packet, sender: Sets) -> Option<usize> {
    // SAFETY: valid map value pointer for this run.
    let e = unsafe { &mut *hit.entry };
    match revalidate(hit, e, p, hit.from_opener, sender) {
        Some(r) if r >= reason::FIRST_DROP => {
            forget(hit);
            Some(r)
        }
        _ => None,
    }
}

/// The entry's flags.
#[inline(always)]
pub fn flags(hit: &Hit) -> u8 {
    // SAFETY: valid map value pointer for this run.
    unsafe { (*hit.entry).flags }
}
