//! netpol's TC classifiers.
//!
//! * `from_pod`: host side of a pod veth, TC ingress: what the pod sends (its egress).
//! * `to_pod`: host side of a pod veth, TC egress: what the pod receives (its ingress),
//!   already translated by kube-proxy, so a local client's egress towards a Service is
//!   decided here on the backend actually chosen.
//! * `uplink_egress`: the node's uplinks, TC egress: where a local client's egress towards
//!   a Service with a remote backend is decided, after translation.
//! * `to_node`: cgroup_skb ingress on the node's root cgroup (v2): what the node's own
//!   sockets take in, after translation. Where a local client's egress towards a Service
//!   whose backend is this node (its host network) is decided: no TC hook sees that packet.
//!
//! * `empty`: does nothing; the baseline of `cargo xtask bench`.
//! * `conntrack_floor`: only the established path's conntrack lookup, for the bench.
//!
//! Modules follow a packet: `parse` (headers), `fragments`, `neighbour` (what a pod may
//! say on its link), `verdict` (rules and connection tracking), `maps` (the shared maps).
//! Everything that can be decided in userspace is: these programs only parse, look up and
//! count. "Pass" is `TC_ACT_UNSPEC`, so programs of other tools after ours still run.
#![no_std]
#![no_main]

mod clock;
mod events;
mod fast;
mod fragments;
mod log;
mod maps;
mod neighbour;
mod parse;
mod service;
mod verdict;

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    macros::{cgroup_skb, classifier},
    programs::{SkBuffContext, TcContext},
};
use fast::Side;
use fragments::{AT_FROM_POD, AT_TO_POD, AT_UPLINK, fragment_ports, record_first_fragment};
use maps::{count, endpoint, iface_of, iface_sets, is_node, is_service, scratch, sets_of};
use neighbour::{link_message, not_for, own_address, own_neighbour_message, own_target};
use netpol_common::{
    Addr, CT_UNDECIDED, IFACE_HAS_V4, IfaceInfo, NO_IDENTITY, RULE_UNNAMED, RULESET_ORDERED,
    ct_flag, events as ev, node_addr, reason,
};
use parse::{Icmp, Packet, Parsed};
use verdict::{Decided, Judged, Sets, UNDECIDED};

const TC_ACT_UNSPEC: i32 = -1;

/// Counts `why` for endpoint `id` and turns it into a TC verdict.
#[inline(always)]
fn verdict(id: u32, why: usize) -> i32 {
    count(id, why);
    if reason::drops(why) {
        TC_ACT_SHOT
    } else {
        TC_ACT_UNSPEC
    }
}

/// Where a hook decides: for verdict events.
#[derive(Clone, Copy)]
struct At {
    hook: u8,
    ifindex: u32,
}

/// `verdict`, and the verdict event when events want it. `p`: the packet, once parsed
/// as IP.
#[inline(always)]
fn decided(at: At, id: u32, why: usize, p: Option<&Packet>) -> i32 {
    if let Some(p) = p {
        if events::names_rule(why) {
            maps::count_rule(p.rule);
        }
        // A finding is about an opening that passed.
        if !reason::drops(why) {
            audited(at, p);
        }
    }
    if events::wanted(why) {
        events::report(id, why, at.hook, at.ifindex, p);
    }
    verdict(id, why)
}

/// Counts and reports the audit findings of an opening that passed: a drop that the
/// sender's or the receiver's audit-mode policies would have made.
#[inline(always)]
fn audited(at: At, p: &Packet) {
    for (who, why) in [
        (p.audit_egress, reason::AUDIT_EGRESS),
        (p.audit_ingress, reason::AUDIT_INGRESS),
    ] {
        if who != 0 {
            count(who, why);
            if events::wanted(why) {
                events::report(who, why, at.hook, at.ifindex, Some(p));
            }
        }
    }
}

/// What a frame that is not an IP packet gets at a pod's veth.
#[inline(always)]
fn not_ip(at: At, iface: &IfaceInfo, sets: Sets, p: &Packet, parsed: Parsed, sent: bool) -> i32 {
    let id = iface.endpoint_id;
    match parsed {
        Parsed::Arp => {
            let spa = p.src;
            let own = iface.flags & IFACE_HAS_V4 != 0 && spa == iface.addr4;
            if !sent || own || spa == Addr::from_v4([0; 4]) {
                verdict(id, reason::ALLOW_NEIGHBOUR)
            } else {
                decided(at, id, reason::DROP_SPOOFED, None)
            }
        }
        Parsed::Malformed => {
            log::malformed(at.ifindex, sent);
            if sets.isolated() {
                decided(at, id, reason::DROP_MALFORMED, None)
            } else {
                TC_ACT_UNSPEC
            }
        }
        Parsed::OtherFrame if sets.isolated() => decided(at, id, reason::DROP_FRAME, None),
        _ => TC_ACT_UNSPEC,
    }
}

/// The pod's egress side: what it sends, before any translation.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    let Some(iface) = iface_of(&ctx) else {
        return TC_ACT_UNSPEC; // not a veth of a pod we enforce (yet)
    };
    if fast::established(&ctx, iface, Side::Sends) {
        return TC_ACT_UNSPEC;
    }
    let Some(p) = scratch() else {
        return TC_ACT_UNSPEC;
    };
    let parsed = parse::parse(&ctx, p);
    let v = from_pod_full(&ctx, iface, p, parsed);
    log::flush();
    v
}

/// Everything but the established path and parsing. A function of its own (a BPF
/// subprogram), like those two, so no two of their stacks are live together: Linux before
/// 6.9 caps a call chain's frames at 512 bytes together (`tests/tests/bpf_stack_depth.rs`).
#[inline(never)]
fn from_pod_full(ctx: &TcContext, iface: &IfaceInfo, p: &mut Packet, parsed: Parsed) -> i32 {
    let sets = iface_sets(iface);
    let at = At {
        hook: ev::AT_FROM_POD,
        ifindex: maps::ifindex(ctx),
    };
    match parsed {
        Parsed::Ip => {}
        other => return not_ip(at, iface, sets, p, other, true),
    }
    let id = iface.endpoint_id;
    let why = if p.v4_in_v6 {
        reason::DROP_ADDRESS
    } else if p.icmp == Icmp::Router {
        reason::DROP_ROUTER
    } else if own_neighbour_message(iface, p) {
        reason::ALLOW_NEIGHBOUR
    } else if (p.icmp == Icmp::Neighbour && !own_target(iface, p)) || !own_address(iface, &p.src) {
        // Claiming another's address is spoofing, whatever the pod's policy.
        reason::DROP_SPOOFED
    } else {
        let (who, why) = sent_by_pod(p, id, sets);
        record_first_fragment(p, why, AT_FROM_POD);
        return decided(at, who, why, Some(p));
    };
    decided(at, id, why, Some(p))
}

/// Traffic between a pod and its own node passes whatever NetworkPolicy says. Under a
/// ClusterNetworkPolicy (an ordered set) the Admin tier decides first, so the node is
/// judged by the set (`verdict::allowed` applies the exemption after the Admin tier).
#[inline(always)]
fn node_exempt(set: u32, peer: &netpol_common::Addr) -> bool {
    set & RULESET_ORDERED == 0 && is_node(peer)
}

/// Returns the endpoint to count on (the sender, or a local opener whose egress was
/// decided after translation) and the reason.
#[inline(always)]
fn sent_by_pod(p: &mut Packet, id: u32, sets: Sets) -> (u32, usize) {
    if !fragment_ports(p, AT_FROM_POD) {
        return if node_exempt(sets.egress, &p.dst) {
            (id, reason::ALLOW_NODE)
        } else if sets.isolated() {
            (id, reason::DROP_FRAGMENT)
        } else {
            (id, reason::ALLOW_UNISOLATED)
        };
    }
    if p.icmp == Icmp::Error {
        if node_exempt(sets.egress, &p.dst) {
            return (id, reason::ALLOW_NODE);
        }
        // The pod answers a packet that was sent to it, about that packet only.
        let own_quote = p.t_src == p.src && p.t_dst == p.dst;
        return if own_quote && verdict::related(p, Judged { sets, sends: true }) {
            (id, reason::ALLOW_RELATED)
        } else if sets.egress == netpol_common::RULESET_ALLOW_ALL {
            (id, reason::ALLOW_UNISOLATED)
        } else {
            (id, reason::DROP_EGRESS)
        };
    }
    // ICMP other than echo and errors has no connection: judged every time.
    if p.icmp == Icmp::Other {
        return if node_exempt(sets.egress, &p.dst) {
            (id, reason::ALLOW_NODE)
        } else {
            let node = verdict::node_alias(sets.egress, &p.dst);
            (id, verdict::egress_opening_as(sets, p, node.as_ref()))
        };
    }
    let me = Judged { sets, sends: true };
    if let Some(hit) = verdict::lookup(p)
        && verdict::usable(&hit, p)
    {
        // A pod's pass towards a Service port ends with the Service: then the packet is
        // judged like any other.
        let flags = verdict::flags(&hit);
        let service_gone = hit.from_opener && flags & ct_flag::SERVICE != 0 && !is_service(p);
        if !service_gone {
            return (id, verdict::judge_tracked(&hit, p, me));
        }
        verdict::forget(&hit);
    }
    // Node traffic is looked for after conntrack, so the established path stays one
    // lookup. It is tracked for isolated pods: under an ordered set (now, or after a
    // policy change) a reply without an entry would be judged as an opening, and an
    // Admin Deny of the node would drop it. (A pod that becomes isolated from nothing
    // has its connections seeded from the kernel's table.)
    if node_exempt(sets.egress, &p.dst) {
        if sets.isolated() {
            verdict::track(p, Decided::by(sets.egress, RULE_UNNAMED), UNDECIDED, 0);
        }
        return (id, reason::ALLOW_NODE);
    }
    if is_service(p) {
        // Decided after translation. Its replies come from the Service address: an
        // isolated pod tracks the connection so they are known as replies.
        if sets.isolated() {
            verdict::track(p, UNDECIDED, UNDECIDED, ct_flag::SERVICE);
            if !service::remember(p) {
                if let Some(hit) = verdict::lookup(p) {
                    verdict::forget(&hit);
                }
                return (id, reason::DROP_UNTRACKABLE);
            }
        }
        return (id, reason::PASS_SERVICE);
    }
    let node = verdict::node_alias(sets.egress, &p.dst);
    let why = verdict::egress_opening_as(sets, p, node.as_ref());
    if why < reason::FIRST_DROP && sets.tracked() {
        let egress = Decided::by(sets.egress, p.position);
        verdict::track(p, egress, UNDECIDED, 0);
    }
    (id, why)
}

/// The pod's ingress side: what it receives, after translation.
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    let Some(iface) = iface_of(&ctx) else {
        return TC_ACT_UNSPEC;
    };
    if fast::established(&ctx, iface, Side::Receives) {
        return TC_ACT_UNSPEC;
    }
    let Some(p) = scratch() else {
        return TC_ACT_UNSPEC;
    };
    let parsed = parse::parse(&ctx, p);
    let v = to_pod_full(&ctx, iface, p, parsed);
    log::flush();
    v
}

/// Everything but the established path and parsing (see `from_pod_full`).
#[inline(never)]
fn to_pod_full(ctx: &TcContext, iface: &IfaceInfo, p: &mut Packet, parsed: Parsed) -> i32 {
    let sets = iface_sets(iface);
    let at = At {
        hook: ev::AT_TO_POD,
        ifindex: maps::ifindex(ctx),
    };
    match parsed {
        Parsed::Ip => {}
        other => return not_ip(at, iface, sets, p, other, false),
    }
    let id = iface.endpoint_id;
    if p.v4_in_v6 {
        return decided(at, id, reason::DROP_ADDRESS, Some(p));
    }
    if link_message(p) {
        return verdict(id, reason::ALLOW_NEIGHBOUR);
    }
    // Someone else's packet (flooded by a bridge): never judged with this pod's rules.
    if not_for(iface, p) {
        return if sets.isolated() {
            decided(at, id, reason::DROP_MISDELIVERED, Some(p))
        } else {
            TC_ACT_UNSPEC
        };
    }
    // SAFETY: the context pointer is valid for the whole program run.
    let came_in = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let (who, why) = received_by_pod(p, id, sets, came_in);
    record_first_fragment(p, why, AT_TO_POD);
    decided(at, who, why, Some(p))
}

/// Returns the endpoint to count on (the receiver, or a local sender whose egress was
/// decided here) and the reason.
#[inline(always)]
fn received_by_pod(p: &mut Packet, id: u32, sets: Sets, came_in: u32) -> (u32, usize) {
    if !fragment_ports(p, AT_TO_POD) {
        return if node_exempt(sets.ingress, &p.src) {
            (id, reason::ALLOW_NODE)
        } else if sets.isolated() {
            (id, reason::DROP_FRAGMENT)
        } else {
            (id, reason::ALLOW_UNISOLATED)
        };
    }
    if p.icmp == Icmp::Error {
        if node_exempt(sets.ingress, &p.src) {
            return (id, reason::ALLOW_NODE);
        }
        let own_quote = p.t_dst == p.dst;
        return if own_quote && verdict::related(p, Judged { sets, sends: false }) {
            (id, reason::ALLOW_RELATED)
        } else if sets.ingress == netpol_common::RULESET_ALLOW_ALL {
            (id, reason::ALLOW_UNISOLATED)
        } else {
            (id, reason::DROP_INGRESS)
        };
    }
    if p.icmp == Icmp::Other {
        return if node_exempt(sets.ingress, &p.src) {
            (id, reason::ALLOW_NODE)
        } else {
            (id, verdict::ingress_opening(sets, p))
        };
    }
    let me = Judged { sets, sends: false };
    let found = verdict::lookup(p);
    // A tuple a hook tracked is no fresh translation (see `service::learn_backend`).
    let translated = found.is_none();
    if let Some(hit) = found
        && verdict::usable(&hit, p)
    {
        // (The pod itself sending to itself was judged as the sender at its own veth.)
        if let Some(sender) = endpoint(&p.t_src)
            && sender.id != id
        {
            if !came_from(&sender, came_in) {
                return (sender.id, reason::DROP_SPOOFED);
            }
            if let Some(r) = local_sender_on_entry(&hit, p, &sender) {
                return (sender.id, r);
            }
        }
        return (id, verdict::judge_tracked(&hit, p, me));
    }
    if node_exempt(sets.ingress, &p.src) {
        // A kubelet probe: its replies leave through the egress side (see `sent_by_pod`).
        if sets.isolated() {
            verdict::track(p, UNDECIDED, Decided::by(sets.ingress, RULE_UNNAMED), 0);
        }
        return (id, reason::ALLOW_NODE);
    }
    // A new connection. A local sender that reached this pod through a Service has its
    // egress decided here, on the backend kube-proxy chose.
    let sender = endpoint(&p.src);
    let mut opener = UNDECIDED;
    let mut opener_counted = 0;
    let mut flags = 0;
    let mut track = sets.tracked();
    if let Some(s) = sender {
        if !came_from(&s, came_in) {
            return (s.id, reason::DROP_SPOOFED);
        }
        let ss = sets_of(&s);
        let r = verdict::egress_opening(ss, p);
        if r >= reason::FIRST_DROP {
            // Its replies, from the Service address, must meet the same refusal.
            service::learn_backend(p, CT_UNDECIDED, translated);
            return (s.id, r);
        }
        opener = Decided::by(ss.egress, p.position);
        opener_counted = p.rule;
        flags = ct_flag::DEFERRED_EGRESS;
        track |= ss.tracked();
    }
    let why = verdict::ingress_opening(sets, p);
    if why < reason::FIRST_DROP && track {
        let acceptor = Decided::by(sets.ingress, p.position);
        verdict::track(p, opener, acceptor, flags);
    }
    if why < reason::FIRST_DROP && sender.is_some() {
        // The sender's egress was decided here too: its rule counts the opening.
        maps::count_rule(opener_counted);
    }
    if sender.is_some() {
        if why < reason::FIRST_DROP {
            service::learn_backend(p, opener.set, translated);
        } else {
            // Refused here: whatever this backend sends back through the Service is
            // not a reply of an allowed connection.
            service::refuse(p, translated);
        }
    }
    (id, why)
}

/// The node's uplinks, egress: a local pod's traffic after translation. Only connections
/// whose egress was not decided at the pod's veth (Service traffic) are decided here.
#[classifier]
pub fn uplink_egress(ctx: TcContext) -> i32 {
    // A packet of a tracked connection after translation: a local pod's egress was
    // decided where the entry was made (its veth, or here for a deferred opener, whose
    // packets the full path checks again).
    if fast::tracked_at_uplink(&ctx) {
        return TC_ACT_UNSPEC;
    }
    let Some(p) = scratch() else {
        return TC_ACT_UNSPEC;
    };
    let Parsed::Ip = parse::parse(&ctx, p) else {
        return TC_ACT_UNSPEC;
    };
    let v = uplink_full(&ctx, p);
    log::flush();
    v
}

/// Everything but tracked connections and parsing (see `from_pod_full`).
#[inline(never)]
fn uplink_full(ctx: &TcContext, p: &mut Packet) -> i32 {
    if p.icmp == Icmp::Error || p.v4_in_v6 {
        return TC_ACT_UNSPEC; // decided at the pod's veth
    }
    // SAFETY: the context pointer is valid for the whole program run.
    let came_in = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let at = At {
        hook: ev::AT_UPLINK,
        ifindex: maps::ifindex(ctx),
    };
    match leaving_node(p, came_in) {
        None => {
            // Passed: its later fragments follow it here too.
            record_first_fragment(p, reason::ALLOW_TRACKED, AT_UPLINK);
            audited(at, p);
            TC_ACT_UNSPEC
        }
        Some((id, why)) => {
            record_first_fragment(p, why, AT_UPLINK);
            decided(at, id, why, Some(p))
        }
    }
}

/// The uplink's decision: `None` passes uncounted (not a local pod's, or decided at the
/// pod's veth); otherwise the endpoint to count on and the reason.
#[inline(always)]
fn leaving_node(p: &mut Packet, came_in: u32) -> Option<(u32, usize)> {
    let fragment_known = fragment_ports(p, AT_UPLINK);
    let found = if fragment_known {
        verdict::lookup(p)
    } else {
        None
    };
    let translated = found.is_none();
    if let Some(hit) = found
        && verdict::usable(&hit, p)
    {
        let sender = endpoint(&p.src)?;
        if !came_from(&sender, came_in) {
            return Some((sender.id, reason::DROP_SPOOFED));
        }
        return local_sender_on_entry(&hit, p, &sender).map(|r| (sender.id, r));
    }
    // Not a local pod, or already masqueraded: nothing of ours to decide.
    let sender = endpoint(&p.src)?;
    if !came_from(&sender, came_in) {
        return Some((sender.id, reason::DROP_SPOOFED));
    }
    let sets = sets_of(&sender);
    if !fragment_known {
        return sets
            .isolated()
            .then_some((sender.id, reason::DROP_FRAGMENT));
    }
    let why = deferred_egress(p, sets, translated, None);
    if why == reason::ALLOW_UNISOLATED {
        return None;
    }
    Some((sender.id, why))
}

/// cgroup_skb verdicts.
const SK_DROP: i32 = 0;
const SK_PASS: i32 = 1;

/// What this node's own sockets take in. The packet is past translation and reassembly.
/// ICMP is left to the pod's veth, which decided it on its address (the stack answers
/// echoes itself; only raw and ping sockets take ICMP in), so only ports are decided.
#[cgroup_skb(ingress)]
pub fn to_node(ctx: SkBuffContext) -> i32 {
    let Some(p) = scratch() else {
        return SK_PASS;
    };
    let Parsed::Ip = parse::parse_l3(&ctx, p) else {
        return SK_PASS;
    };
    let v = to_node_full(&ctx, p);
    log::flush();
    v
}

/// Everything but parsing (see `from_pod_full`).
#[inline(never)]
fn to_node_full(ctx: &SkBuffContext, p: &mut Packet) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let came_in = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let Some((id, why)) = delivered_to_node(p, came_in) else {
        return SK_PASS;
    };
    let at = At {
        hook: ev::AT_TO_NODE,
        // SAFETY: the context pointer is valid for the whole program run.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
    };
    if decided(at, id, why, Some(p)) == TC_ACT_SHOT {
        SK_DROP
    } else {
        SK_PASS
    }
}

/// The decision on a packet a node socket takes in: `None` passes uncounted (not a local
/// pod's packet to this node, or one NetworkPolicy's own-node exemption lets in, or one of
/// a connection decided already); otherwise the sending pod and the reason.
///
/// A pod's own packet to the node was decided at its veth, and its entry is found here. A
/// packet without one was translated on its way (a Service whose backend is this node):
/// its egress is decided now, on the backend, as `to_pod` and the uplinks do for other
/// backends, and the Service record learns the backend, so its replies meet the same
/// verdict.
///
/// A packet that reaches the node at an address rules about nodes do not name (see
/// `towards_node`) is also judged, packet by packet, as going to the node: a rule naming
/// its address or the node matches, and the first decides.
#[inline(always)]
fn delivered_to_node(p: &mut Packet, came_in: u32) -> Option<(u32, usize)> {
    if p.icmp != Icmp::None {
        return None;
    }
    let sender = endpoint(&p.src)?;
    let sets = sets_of(&sender);
    // NetworkPolicy's own-node exemption; the rest is a pod's socket (unordered sets
    // reach no further than their veth's verdict).
    if sets.egress & RULESET_ORDERED == 0 {
        return None;
    }
    let towards = towards_node(p)?;
    // A forged source would open an entry in the pod's name.
    if !came_from(&sender, came_in) {
        return Some((sender.id, reason::DROP_SPOOFED));
    }
    let found = verdict::lookup(p);
    let translated = found.is_none();
    if let Some(hit) = found
        && verdict::usable(&hit, p)
    {
        // (The node's own connections to the pod are its ingress, decided at `to_pod`.)
        if hit.from_opener
            && let Some(why) = refused_as_node(p, sets, towards, false)
        {
            return Some((sender.id, why));
        }
        return local_sender_on_entry(&hit, p, &sender).map(|r| (sender.id, r));
    }
    let node = match towards {
        Towards::Node(node) => Some(node),
        Towards::Itself => None,
    };
    Some((
        sender.id,
        deferred_egress(p, sets, translated, node.as_ref()),
    ))
}

/// A pod's packet on a tracked connection that reaches the node at an address rules about
/// nodes do not name, judged as going to the node again (its veth may have judged it by
/// its address alone: a group, an IPVS Service address): the drop reason when that
/// denies it (the Service record of its port, if any, learns the refusal, as in
/// `deferred_egress`).
#[inline(always)]
fn refused_as_node(
    p: &mut Packet,
    sets: Sets,
    towards: Towards,
    translated: bool,
) -> Option<usize> {
    let Towards::Node(node) = towards else {
        return None;
    };
    let why = verdict::egress_opening_as(sets, p, Some(&node));
    if why < reason::FIRST_DROP {
        return None;
    }
    service::learn_backend(p, CT_UNDECIDED, translated);
    Some(why)
}

/// Where a packet a socket of this node takes in goes, as policy sees it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Towards {
    /// To its destination: one of the node's own addresses that rules about nodes name it
    /// by (or, with no Node known, any of its addresses).
    Itself,
    /// To the node, at an address rules about nodes do not name: another interface's (a
    /// gateway), an interface's broadcast address, a broadcast or multicast group, or one
    /// that is no pod's (a Service address of kube-proxy's IPVS dummy on a port no
    /// Service has). The node's own address, which such rules name it by.
    Node(Addr),
}

/// `None`: the socket is a pod's (a unicast packet to a pod's address, one in the pod
/// ranges, or an IPv6 link-local one, which only a link's own hosts answer).
#[inline(always)]
fn towards_node(p: &Packet) -> Option<Towards> {
    let kind = maps::node_addr_kind(&p.dst);
    if kind & node_addr::NAMED != 0 {
        return Some(Towards::Itself);
    }
    let own = maps::node_self(&p.dst);
    if kind & node_addr::REACHES_NODE != 0 {
        return Some(own.map_or(Towards::Itself, Towards::Node));
    }
    let pods = !p.dst.is_group()
        && (p.dst.is_link_local_v6()
            || endpoint(&p.dst).is_some()
            || verdict::ordered_identity(&p.dst) != NO_IDENTITY);
    if pods {
        return None;
    }
    own.map(Towards::Node)
}

/// A local pod's egress decided after translation, on where its packet goes (at an uplink
/// or the node's socket): a deferred opener's entry when allowed and tracked, and the
/// Service record of its port learns the backend. `translated`: no hook tracked the
/// tuple (see `service::learn_backend`). `node`: the packet reaches the node at an address
/// rules about nodes do not name (see `verdict::decide`).
#[inline(always)]
fn deferred_egress(p: &mut Packet, sets: Sets, translated: bool, node: Option<&Addr>) -> usize {
    let why = verdict::egress_opening_as(sets, p, node);
    if why >= reason::FIRST_DROP {
        // Its replies, from the Service address, must meet the same refusal.
        service::learn_backend(p, CT_UNDECIDED, translated);
    } else if sets.tracked() {
        let egress = Decided::by(sets.egress, p.position);
        verdict::track(p, egress, UNDECIDED, ct_flag::DEFERRED_EGRESS);
        service::learn_backend(p, sets.egress, translated);
    }
    why
}

/// A local pod's packet on a tracked entry, seen after translation (at the veth of the
/// pod it goes to, or at an uplink): the sender's side is judged under its current rules
/// on this tuple, since a Service translation may land on an older connection's tuple,
/// either way round (its egress as the opener, its ingress as the acceptor). A Service
/// record of the sender's port adds where the packet went (the packet may be direct:
/// backends add up, none is pushed out). `None`: it goes on.
#[inline(always)]
fn local_sender_on_entry(
    hit: &verdict::Hit,
    p: &mut Packet,
    sender: &netpol_common::EndpointInfo,
) -> Option<usize> {
    let judged = verdict::judge_local_sender(hit, p, sets_of(sender));
    // The sender's egress vouches for the peer only when it opened and still may.
    let set = if judged.is_none() && hit.from_opener {
        sender.egress_set
    } else {
        CT_UNDECIDED
    };
    // An opener whose egress is decided after translation passed its own veth
    // uncounted (towards the Service): its rule counts the packet here.
    if judged.is_none() && hit.from_opener && verdict::flags(hit) & ct_flag::DEFERRED_EGRESS != 0 {
        maps::count_rule(p.rule);
    }
    service::learn_backend(p, set, false);
    judged
}

/// A packet with a local pod's source address did not enter the node through another
/// pod's veth or an uplink: those carry it only when it was forged. (A bridge CNI's
/// bridge, or the node itself, may carry a pod's traffic.)
#[inline(always)]
fn came_from(sender: &netpol_common::EndpointInfo, came_in: u32) -> bool {
    // SAFETY (both lookups): plain-data values.
    match maps::iface(came_in) {
        Some(i) => i.endpoint_id == sender.id,
        None => unsafe { maps::UPLINKS.get(came_in) }.is_none(),
    }
}

/// Does nothing: the baseline the datapath benchmarks compare against.
#[classifier]
pub fn empty(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// The established path's one step that no design with a conntrack map avoids, alone:
/// the tuple read in place and one `CONNTRACK` lookup. The benchmarks print it next to
/// `empty` and the established path; never attached.
#[classifier]
pub fn conntrack_floor(ctx: TcContext) -> i32 {
    if fast::conntrack_only(&ctx) {
        TC_ACT_UNSPEC
    } else {
        TC_ACT_SHOT
    }
}

/// Ends the TC chain with "pass". Never loaded by the agent: the attach-order tests
/// stand it in for another tool's classifier, which would let everything through if it
/// ran before netpol's.
#[classifier]
pub fn pass_stop(_ctx: TcContext) -> i32 {
    0 // TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
