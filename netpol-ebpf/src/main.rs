//! netpol's TC classifiers.
//!
//! * `from_pod`: host side of a pod veth, TC ingress: what the pod sends (its egress).
//! * `to_pod`: host side of a pod veth, TC egress: what the pod receives (its ingress),
//!   already translated by kube-proxy, so a local client's egress towards a Service is
//!   decided here on the backend actually chosen.
//! * `uplink_egress`: the node's uplinks, TC egress: where a local client's egress towards
//!   a Service with a remote backend is decided, after translation.
//!
//! Everything that can be decided in userspace is: these programs only parse, look up and
//! count. "Pass" is `TC_ACT_UNSPEC`, so programs of other tools after ours still run.
#![no_std]
#![no_main]

mod parse;
mod verdict;

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use netpol_common::{
    Addr, Counters, CtEntry, CtKey, EndpointInfo, FragKey, FragPorts, IFACE_HAS_V4, IFACE_HAS_V6,
    IfaceInfo, PeerKey, PortSet, ServiceKey, ct_flag, meta, reason, sizes,
};
use parse::{Frag, Icmp, Packet, Parsed};
use verdict::{Judged, Sets, UNDECIDED};

const TC_ACT_UNSPEC: i32 = -1;

#[map]
static IFACES: HashMap<u32, IfaceInfo> = HashMap::with_max_entries(sizes::IFACES, 0);
#[map]
static ENDPOINTS: HashMap<Addr, EndpointInfo> = HashMap::with_max_entries(sizes::ENDPOINTS, 0);
#[map]
static SERVICES: HashMap<ServiceKey, u32> = HashMap::with_max_entries(sizes::SERVICES, 0);
#[map]
static NODE_ADDRS: HashMap<Addr, u32> = HashMap::with_max_entries(sizes::NODE_ADDRS, 0);
#[map]
static PEERS_EXACT: HashMap<PeerKey, u32> = HashMap::with_max_entries(sizes::PEERS_EXACT, 0);
#[map]
static PEERS_CIDR: LpmTrie<PeerKey, u32> = LpmTrie::with_max_entries(sizes::PEERS_CIDR, 0);
#[map]
static PORTSETS: HashMap<u32, PortSet> = HashMap::with_max_entries(sizes::PORTSETS, 0);
#[map]
static CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(sizes::CONNTRACK, 0);
#[map]
static FRAGMENTS: LruHashMap<FragKey, FragPorts> =
    LruHashMap::with_max_entries(sizes::FRAGMENTS, 0);
/// Where the packet being judged is parsed to (too big for the BPF stack).
#[map]
static SCRATCH: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);
#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(sizes::COUNTERS, 0);
/// Written by the agent only (the next rule-set id); part of the pinned state.
#[map]
static META: Array<u64> = Array::with_max_entries(meta::COUNT, 0);

#[inline(always)]
fn count(endpoint_id: u32, why: usize) {
    if why >= reason::COUNT {
        return;
    }
    if let Some(c) = COUNTERS.get_ptr_mut(endpoint_id) {
        // SAFETY: per-CPU slot, so no other writer; the pointer comes from the map.
        unsafe { (*c).packets[why] += 1 };
    }
}

/// Counts `why` for endpoint `id` and turns it into a TC verdict.
#[inline(always)]
fn verdict(id: u32, why: usize) -> i32 {
    count(id, why);
    if why >= reason::FIRST_DROP {
        TC_ACT_SHOT
    } else {
        TC_ACT_UNSPEC
    }
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn endpoint(addr: &Addr) -> Option<EndpointInfo> {
    // SAFETY: values are plain data; a concurrent update can at worst give a stale copy.
    unsafe { ENDPOINTS.get(addr) }.copied()
}

#[inline(always)]
fn sets_of(ep: &EndpointInfo) -> Sets {
    Sets {
        ingress: ep.ingress_set,
        egress: ep.egress_set,
    }
}

#[inline(always)]
fn is_node(addr: &Addr) -> bool {
    // SAFETY: plain-data lookup.
    unsafe { NODE_ADDRS.get(addr) }.is_some()
}

#[inline(always)]
fn is_service(p: &Packet) -> bool {
    let key = ServiceKey {
        addr: p.dst,
        port: p.dport,
        proto: p.proto,
        _pad: 0,
    };
    // SAFETY: plain-data lookup.
    unsafe { SERVICES.get(key) }.is_some()
}

#[inline(always)]
fn frag_key(p: &Packet, id: u32, hook: u8) -> FragKey {
    FragKey {
        src: p.src,
        dst: p.dst,
        id,
        proto: p.frag_next,
        hook,
        _pad: [0; 2],
    }
}

/// `FragKey::hook` values.
const AT_FROM_POD: u8 = 0;
const AT_TO_POD: u8 = 1;
const AT_UPLINK: u8 = 2;

/// A later fragment takes the ports its first fragment recorded. False: none recorded.
#[inline(always)]
fn fragment_ports(p: &mut Packet, hook: u8) -> bool {
    let Frag::Later(id) = p.frag else {
        return true;
    };
    // SAFETY: plain-data value, copied out.
    match unsafe { FRAGMENTS.get(frag_key(p, id, hook)) } {
        Some(ports) => {
            p.sport = ports.sport;
            p.dport = ports.dport;
            p.proto = ports.proto;
            true
        }
        None => false,
    }
}

/// A first fragment that passed records its ports for the rest of the datagram.
#[inline(always)]
fn record_first_fragment(p: &Packet, why: usize, hook: u8) {
    if let Frag::First(id) = p.frag
        && why < reason::FIRST_DROP
    {
        let ports = FragPorts {
            sport: p.sport,
            dport: p.dport,
            proto: p.proto,
            _pad: [0; 3],
        };
        let _ = FRAGMENTS.insert(frag_key(p, id, hook), ports, 0);
    }
}

#[inline(always)]
fn own_address(iface: &IfaceInfo, a: &Addr) -> bool {
    (iface.flags & IFACE_HAS_V4 != 0 && *a == iface.addr4)
        || (iface.flags & IFACE_HAS_V6 != 0 && *a == iface.addr6)
}

/// Neighbour discovery and multicast listener messages a pod sends about itself: hop
/// limits as RFC 4861 / 2710 require (so nothing routed qualifies), from its own address,
/// a link-local one or `::`, and advertising only its own addresses.
#[inline(always)]
fn own_neighbour_message(iface: &IfaceInfo, p: &Packet) -> bool {
    let own_or_ll = |a: &Addr| own_address(iface, a) || parse::is_link_local_or_unspecified(a);
    match p.icmp {
        Icmp::Neighbour => {
            p.hop_limit == 255 && own_or_ll(&p.src) && own_target(iface, p) && on_link(&p.dst)
        }
        Icmp::Listener => p.hop_limit == 1 && parse::is_link_local_or_unspecified(&p.src),
        _ => false,
    }
}

/// A neighbour advertisement names one of the sender's own addresses (or a link-local
/// one); other messages carry no claim.
#[inline(always)]
fn own_target(iface: &IfaceInfo, p: &Packet) -> bool {
    let t = &p.nd_target;
    u128::from_be_bytes(t.0) == 0 || own_address(iface, t) || parse::is_link_local_or_unspecified(t)
}

/// Where neighbour discovery may go: link-scope multicast, link-local addresses, or the
/// node (the pod's only neighbour on a routed veth). Anything else is judged by policy.
#[inline(always)]
fn on_link(dst: &Addr) -> bool {
    (dst.0[0] == 0xff && dst.0[1] & 0x0f == 0x02)
        || parse::is_link_local_or_unspecified(dst)
        || is_node(dst)
}

/// Neighbour discovery towards a pod, as only its link can send it.
#[inline(always)]
fn link_message(p: &Packet) -> bool {
    match p.icmp {
        Icmp::Neighbour | Icmp::Router => p.hop_limit == 255,
        Icmp::Listener => p.hop_limit == 1,
        _ => false,
    }
}

/// What a frame that is not an IP packet gets at a pod's veth.
#[inline(always)]
fn not_ip(iface: &IfaceInfo, sets: Sets, parsed: &Parsed, sent: bool) -> i32 {
    match parsed {
        Parsed::Arp(spa) => {
            let own = iface.flags & IFACE_HAS_V4 != 0 && Addr::from_v4(*spa) == iface.addr4;
            if !sent || own || *spa == [0; 4] {
                verdict(iface.endpoint_id, reason::ALLOW_NEIGHBOUR)
            } else {
                verdict(iface.endpoint_id, reason::DROP_SPOOFED)
            }
        }
        _ if !sets.isolated() => TC_ACT_UNSPEC,
        Parsed::OtherFrame => verdict(iface.endpoint_id, reason::DROP_FRAME),
        _ => verdict(iface.endpoint_id, reason::DROP_MALFORMED),
    }
}

#[inline(always)]
fn scratch() -> Option<&'static mut Packet> {
    // SAFETY: a per-CPU slot; programs do not nest on one CPU, so nothing else uses it
    // while this run does.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn iface_of(ctx: &TcContext) -> Option<IfaceInfo> {
    // SAFETY: plain-data value, copied out.
    unsafe { IFACES.get(ifindex(ctx)) }.copied()
}

/// The pod's egress side: what it sends, before any translation.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    let Some(iface) = iface_of(&ctx) else {
        return TC_ACT_UNSPEC; // not a veth of a pod we enforce (yet)
    };
    let sets = Sets {
        ingress: iface.ingress_set,
        egress: iface.egress_set,
    };
    let Some(p) = scratch() else {
        return TC_ACT_UNSPEC;
    };
    match parse::parse(&ctx, p) {
        Parsed::Ip => {}
        other => return not_ip(&iface, sets, &other, true),
    }
    let id = iface.endpoint_id;
    if p.v4_in_v6 {
        return verdict(id, reason::DROP_ADDRESS);
    }
    if p.icmp == Icmp::Router {
        return verdict(id, reason::DROP_ROUTER);
    }
    if own_neighbour_message(&iface, p) {
        return verdict(id, reason::ALLOW_NEIGHBOUR);
    }
    // Claiming another's address is spoofing, whatever the pod's policy.
    if p.icmp == Icmp::Neighbour && !own_target(&iface, p) {
        return verdict(id, reason::DROP_SPOOFED);
    }
    if !own_address(&iface, &p.src) {
        return verdict(id, reason::DROP_SPOOFED);
    }
    let why = sent_by_pod(p, sets);
    record_first_fragment(p, why, AT_FROM_POD);
    verdict(id, why)
}

#[inline(always)]
fn sent_by_pod(p: &mut Packet, sets: Sets) -> usize {
    if !fragment_ports(p, AT_FROM_POD) {
        return if is_node(&p.dst) {
            reason::ALLOW_NODE
        } else if sets.isolated() {
            reason::DROP_FRAGMENT
        } else {
            reason::ALLOW_UNISOLATED
        };
    }
    if p.icmp == Icmp::Error {
        if is_node(&p.dst) {
            return reason::ALLOW_NODE;
        }
        // The pod answers a packet that was sent to it, about that packet only.
        let own_quote = p.t_src == p.src && p.t_dst == p.dst;
        return if own_quote && verdict::related(p, Judged { sets, sends: true }) {
            reason::ALLOW_RELATED
        } else if sets.egress == netpol_common::RULESET_ALLOW_ALL {
            reason::ALLOW_UNISOLATED
        } else {
            reason::DROP_EGRESS
        };
    }
    let me = Judged { sets, sends: true };
    if let Some(hit) = verdict::lookup(p)
        && verdict::usable(&hit, p)
    {
        // A pod's pass towards a Service port ends with the Service: then the packet is
        // judged like any other.
        let service_gone =
            hit.from_opener && verdict::flags(&hit) & ct_flag::SERVICE != 0 && !is_service(p);
        if !service_gone {
            return verdict::judge_tracked(&hit, p, me);
        }
        verdict::forget(&hit);
    }
    // Node traffic is never tracked, so it is looked for after conntrack: the established
    // path stays one lookup.
    if is_node(&p.dst) {
        return reason::ALLOW_NODE;
    }
    if is_service(p) {
        // Decided after translation; only the replies (from the Service address) need
        // the entry, and only when the pod's ingress is isolated.
        if sets.ingress != netpol_common::RULESET_ALLOW_ALL {
            verdict::track(p, UNDECIDED, UNDECIDED, ct_flag::SERVICE);
        }
        return reason::PASS_SERVICE;
    }
    let why = verdict::egress_opening(sets, p);
    if why < reason::FIRST_DROP && sets.isolated() {
        verdict::track(p, sets.egress, UNDECIDED, 0);
    }
    why
}

/// The pod's ingress side: what it receives, after translation.
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    let Some(iface) = iface_of(&ctx) else {
        return TC_ACT_UNSPEC;
    };
    let sets = Sets {
        ingress: iface.ingress_set,
        egress: iface.egress_set,
    };
    let Some(p) = scratch() else {
        return TC_ACT_UNSPEC;
    };
    match parse::parse(&ctx, p) {
        Parsed::Ip => {}
        other => return not_ip(&iface, sets, &other, false),
    }
    let id = iface.endpoint_id;
    if p.v4_in_v6 {
        return verdict(id, reason::DROP_ADDRESS);
    }
    if link_message(p) {
        return verdict(id, reason::ALLOW_NEIGHBOUR);
    }
    let (who, why) = received_by_pod(p, id, sets);
    record_first_fragment(p, why, AT_TO_POD);
    verdict(who, why)
}

/// Returns the endpoint to count on (the receiver, or a local sender whose egress was
/// decided here) and the reason.
#[inline(always)]
fn received_by_pod(p: &mut Packet, id: u32, sets: Sets) -> (u32, usize) {
    if !fragment_ports(p, AT_TO_POD) {
        return if is_node(&p.src) {
            (id, reason::ALLOW_NODE)
        } else if sets.isolated() {
            (id, reason::DROP_FRAGMENT)
        } else {
            (id, reason::ALLOW_UNISOLATED)
        };
    }
    if p.icmp == Icmp::Error {
        if is_node(&p.src) {
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
    let me = Judged { sets, sends: false };
    if let Some(hit) = verdict::lookup(p)
        && verdict::usable(&hit, p)
    {
        if hit.from_opener
            && verdict::flags(&hit) & ct_flag::DEFERRED_EGRESS != 0
            && let Some(sender) = endpoint(&p.t_src)
            && let Some(r) = verdict::judge_deferred_opener(&hit, p, sets_of(&sender))
        {
            return (sender.id, r);
        }
        return (id, verdict::judge_tracked(&hit, p, me));
    }
    // The own node, or the pod itself through its own Service without masquerade.
    if is_node(&p.src) || p.src == p.dst {
        return (id, reason::ALLOW_NODE);
    }
    // A new connection. A local sender that reached this pod through a Service has its
    // egress decided here, on the backend kube-proxy chose.
    let sender = endpoint(&p.src);
    let mut opener_set = UNDECIDED;
    let mut flags = 0;
    let mut track = sets.isolated();
    if let Some(s) = sender {
        let ss = sets_of(&s);
        let r = verdict::egress_opening(ss, p);
        if r >= reason::FIRST_DROP {
            return (s.id, r);
        }
        opener_set = ss.egress;
        flags = ct_flag::DEFERRED_EGRESS;
        track |= ss.isolated();
    }
    let why = verdict::ingress_opening(sets, p);
    if why < reason::FIRST_DROP && track {
        verdict::track(p, opener_set, sets.ingress, flags);
    }
    (id, why)
}

/// The node's uplinks, egress: a local pod's traffic after translation. Only connections
/// whose egress was not decided at the pod's veth (Service traffic) are decided here.
#[classifier]
pub fn uplink_egress(ctx: TcContext) -> i32 {
    let Some(p) = scratch() else {
        return TC_ACT_UNSPEC;
    };
    let Parsed::Ip = parse::parse(&ctx, p) else {
        return TC_ACT_UNSPEC;
    };
    if p.icmp == Icmp::Error || p.v4_in_v6 {
        return TC_ACT_UNSPEC; // decided at the pod's veth
    }
    match leaving_node(p) {
        None => {
            // Passed: its later fragments follow it here too.
            record_first_fragment(p, reason::ALLOW_TRACKED, AT_UPLINK);
            TC_ACT_UNSPEC
        }
        Some((id, why)) => {
            record_first_fragment(p, why, AT_UPLINK);
            verdict(id, why)
        }
    }
}

/// The uplink's decision: `None` passes uncounted (not a local pod's, or decided at the
/// pod's veth); otherwise the endpoint to count on and the reason.
#[inline(always)]
fn leaving_node(p: &mut Packet) -> Option<(u32, usize)> {
    let fragment_known = fragment_ports(p, AT_UPLINK);
    if fragment_known
        && let Some(hit) = verdict::lookup(p)
        && verdict::usable(&hit, p)
    {
        // Replies of a local acceptor, and openers decided at their own veth, were
        // decided there.
        if !hit.from_opener || verdict::flags(&hit) & ct_flag::DEFERRED_EGRESS == 0 {
            return None;
        }
        let sender = endpoint(&p.src)?;
        return verdict::judge_deferred_opener(&hit, p, sets_of(&sender)).map(|r| (sender.id, r));
    }
    // Not a local pod, or already masqueraded: nothing of ours to decide.
    let sender = endpoint(&p.src)?;
    let sets = sets_of(&sender);
    if !fragment_known {
        return sets
            .isolated()
            .then_some((sender.id, reason::DROP_FRAGMENT));
    }
    let why = verdict::egress_opening(sets, p);
    if why < reason::FIRST_DROP && sets.isolated() {
        verdict::track(p, sets.egress, UNDECIDED, ct_flag::DEFERRED_EGRESS);
    }
    if why == reason::ALLOW_UNISOLATED {
        return None;
    }
    Some((sender.id, why))
}

/// Does nothing: the baseline the datapath benchmarks compare against.
#[classifier]
pub fn empty(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
