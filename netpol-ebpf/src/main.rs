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
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use netpol_common::{
    Addr, Counters, CtKey, CtValue, EndpointInfo, IfaceInfo, PeerKey, PortSet, reason, sizes,
};
use parse::{Flow, Parsed};

const TC_ACT_UNSPEC: i32 = -1;

#[map]
static IFACES: HashMap<u32, IfaceInfo> = HashMap::with_max_entries(sizes::IFACES, 0);
#[map]
static ENDPOINTS: HashMap<Addr, EndpointInfo> = HashMap::with_max_entries(sizes::ENDPOINTS, 0);
#[map]
static SERVICES: HashMap<Addr, u32> = HashMap::with_max_entries(sizes::SERVICES, 0);
#[map]
static PEERS_EXACT: HashMap<PeerKey, u32> = HashMap::with_max_entries(sizes::PEERS_EXACT, 0);
#[map]
static PEERS_CIDR: LpmTrie<PeerKey, u32> = LpmTrie::with_max_entries(sizes::PEERS_CIDR, 0);
#[map]
static PORTSETS: HashMap<u32, PortSet> = HashMap::with_max_entries(sizes::PORTSETS, 0);
#[map]
static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(sizes::CONNTRACK, 0);
#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(sizes::COUNTERS, 0);

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

#[inline(always)]
fn verdict_of(why: usize) -> i32 {
    if why >= reason::DROP_EGRESS {
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

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    // SAFETY: plain-data value, copied out.
    let Some(iface) = (unsafe { IFACES.get(ifindex(&ctx)) }).copied() else {
        return TC_ACT_UNSPEC; // not a veth of a pod we enforce (yet)
    };
    let flow = match parse::parse(&ctx) {
        Parsed::Flow(f) => f,
        Parsed::NotIp => return TC_ACT_UNSPEC,
        Parsed::Malformed => {
            count(iface.endpoint_id, reason::DROP_MALFORMED);
            return TC_ACT_SHOT;
        }
    };
    if !verdict::sent_from_own_address(&iface, &flow) {
        if parse::is_link_local_control(&flow) {
            return TC_ACT_UNSPEC;
        }
        count(iface.endpoint_id, reason::DROP_SPOOFED);
        return TC_ACT_SHOT;
    }
    let Some(ep) = endpoint(&flow.src) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: plain-data lookup.
    if unsafe { SERVICES.get(flow.dst) }.is_some() {
        verdict::track_service_open(&ep, &flow);
        count(ep.id, reason::PASS_SERVICE);
        return TC_ACT_UNSPEC;
    }
    let why = verdict::sender_side(&ep, &flow);
    count(ep.id, why);
    verdict_of(why)
}

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    // SAFETY: plain-data value, copied out.
    let Some(iface) = (unsafe { IFACES.get(ifindex(&ctx)) }).copied() else {
        return TC_ACT_UNSPEC;
    };
    let flow = match parse::parse(&ctx) {
        Parsed::Flow(f) => f,
        Parsed::NotIp => return TC_ACT_UNSPEC,
        Parsed::Malformed => {
            count(iface.endpoint_id, reason::DROP_MALFORMED);
            return TC_ACT_SHOT;
        }
    };
    let Some(ep) = endpoint(&flow.dst) else {
        return TC_ACT_UNSPEC; // multicast, neighbour discovery, or not programmed yet
    };
    // A local sender whose egress was deferred (Service traffic) is decided here, on the
    // translated destination. For traffic already decided at its veth this is a
    // conntrack hit.
    if let Some(sender) = endpoint(&flow.src) {
        let why = verdict::sender_side(&sender, &flow);
        if why >= reason::DROP_EGRESS {
            count(sender.id, why);
            return TC_ACT_SHOT;
        }
    }
    let why = verdict::receiver_side(&ep, &flow);
    count(ep.id, why);
    verdict_of(why)
}

#[classifier]
pub fn uplink_egress(ctx: TcContext) -> i32 {
    let flow: Flow = match parse::parse(&ctx) {
        Parsed::Flow(f) => f,
        _ => return TC_ACT_UNSPEC,
    };
    let Some(sender) = endpoint(&flow.src) else {
        return TC_ACT_UNSPEC; // not a local pod, or already masqueraded
    };
    let why = verdict::sender_side(&sender, &flow);
    if why >= reason::DROP_EGRESS || why == reason::ALLOW_POLICY {
        count(sender.id, why);
    }
    verdict_of(why)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
