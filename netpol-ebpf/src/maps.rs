//! The maps the programs share with the agent, and the lookups the hooks make in them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use netpol_common::{
    Addr, Counters, CtEntry, CtKey, EndpointInfo, FragKey, FragPorts, IdentityId, IdentityKey,
    IfaceInfo, IfaceSlot, PeerKey, PeerValue, PortSet, ServiceFlow, ServiceFlowKey, ServiceKey,
    meta, node_addr, reason, sizes,
};

use crate::parse::Packet;
use crate::verdict::Sets;

#[map]
pub static IFACES: HashMap<u32, IfaceInfo> = HashMap::with_max_entries(sizes::IFACES, 0);
/// `IFACES` by ifindex, without hashing (see `IfaceSlot`).
#[map]
pub static IFACE_SLOTS: Array<IfaceSlot> = Array::with_max_entries(sizes::IFACE_SLOTS, 0);
#[map]
pub static ENDPOINTS: HashMap<Addr, EndpointInfo> = HashMap::with_max_entries(sizes::ENDPOINTS, 0);
#[map]
pub static SERVICES: HashMap<ServiceKey, u32> = HashMap::with_max_entries(sizes::SERVICES, 0);
#[map]
pub static NODE_ADDRS: HashMap<Addr, u32> = HashMap::with_max_entries(sizes::NODE_ADDRS, 0);
/// Every pod of the cluster: its identity (what pod selectors select it by).
#[map]
pub static IDENTITIES: HashMap<Addr, IdentityId> = HashMap::with_max_entries(sizes::IDENTITIES, 0);
/// (rule set, peer identity) -> ports and rules: what pod-selector rules allow.
#[map]
pub static PEERS_BY_IDENTITY: HashMap<IdentityKey, PeerValue> =
    HashMap::with_max_entries(sizes::PEERS_BY_IDENTITY, 0);
/// (rule set, address prefix) -> ports and rules: what ipBlock rules allow.
#[map]
pub static PEERS_CIDR: LpmTrie<PeerKey, PeerValue> =
    LpmTrie::with_max_entries(sizes::PEERS_CIDR, 0);
/// Ordered rule set (id without flags) -> its Admin table's id.
#[map]
pub static ADMIN_TABLES: HashMap<u32, u32> = HashMap::with_max_entries(sizes::ADMIN_TABLES, 0);
#[map]
pub static PORTSETS: HashMap<u32, PortSet> = HashMap::with_max_entries(sizes::PORTSETS, 0);
#[map]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry> =
    LruHashMap::with_max_entries(sizes::CONNTRACK, 0);
/// The node's uplinks (ifindex -> 1): a local pod's address arriving through one of
/// them was forged outside the node.
#[map]
pub static UPLINKS: HashMap<u32, u32> = HashMap::with_max_entries(sizes::UPLINKS, 0);
/// Local clients' Service connections that got a reply: the backends each client port's
/// connections went to (see `ServiceFlow`). Not an LRU: a busy node's churn must not
/// evict an idle connection's record (its replies would be dropped); the agent deletes
/// the records of finished connections, and when full a record stays with the unanswered.
#[map]
pub static SERVICE_FLOWS: HashMap<ServiceFlowKey, ServiceFlow> =
    HashMap::with_max_entries(sizes::SERVICE_FLOWS, 0);
/// The same for connections waiting for their first reply, apart like `CONNTRACK_NEW`.
#[map]
pub static SERVICE_FLOWS_NEW: LruHashMap<ServiceFlowKey, ServiceFlow> =
    LruHashMap::with_max_entries(sizes::SERVICE_FLOWS_NEW, 0);
/// Unreplied connections, apart: whoever floods new flows evicts only unreplied ones
/// (the kernel's nf_conntrack drops unassured entries first for the same reason).
#[map]
pub static CONNTRACK_NEW: LruHashMap<CtKey, CtEntry> =
    LruHashMap::with_max_entries(sizes::CONNTRACK_NEW, 0);
#[map]
pub static FRAGMENTS: LruHashMap<FragKey, FragPorts> =
    LruHashMap::with_max_entries(sizes::FRAGMENTS, 0);
/// Where a new Service record is built before it is inserted (too big for the stack).
#[map]
pub static FLOW_SCRATCH: PerCpuArray<ServiceFlow> = PerCpuArray::with_max_entries(1, 0);
/// Where the packet being judged is parsed to (too big for the BPF stack).
#[map]
pub static SCRATCH: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(sizes::COUNTERS, 0);
/// Packets allowed per rule id (the agent names the ids).
#[map]
pub static RULE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(sizes::RULES, 0);
/// Written by the agent only (the next rule-set id); part of the pinned state.
#[map]
pub static META: Array<u64> = Array::with_max_entries(meta::COUNT, 0);

#[inline(always)]
pub fn count(endpoint_id: u32, why: usize) {
    if why >= reason::COUNT {
        return;
    }
    if let Some(c) = COUNTERS.get_ptr_mut(endpoint_id) {
        // SAFETY: per-CPU slot, so no other writer; the pointer comes from the map.
        unsafe { (*c).packets[why] += 1 };
    }
}

/// Counts a packet allowed by the rule counted in slot `rule` (nothing for 0).
#[inline(always)]
pub fn count_rule(rule: u32) {
    if rule == 0 {
        return;
    }
    if let Some(c) = RULE_COUNTERS.get_ptr_mut(rule) {
        // SAFETY: per-CPU slot, so no other writer; the pointer comes from the map.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
pub fn endpoint(addr: &Addr) -> Option<EndpointInfo> {
    // SAFETY: values are plain data; a concurrent update can at worst give a stale copy.
    unsafe { ENDPOINTS.get(addr) }.copied()
}

#[inline(always)]
pub fn sets_of(ep: &EndpointInfo) -> Sets {
    Sets {
        ingress: ep.ingress_set,
        egress: ep.egress_set,
        audit_ingress: ep.audit_ingress_set,
        audit_egress: ep.audit_egress_set,
        ingress_rules: ep.ingress_rules,
        egress_rules: ep.egress_rules,
        endpoint: ep.id,
    }
}

#[inline(always)]
pub fn iface_sets(iface: &IfaceInfo) -> Sets {
    Sets {
        ingress: iface.ingress_set,
        egress: iface.egress_set,
        audit_ingress: iface.audit_ingress_set,
        audit_egress: iface.audit_egress_set,
        ingress_rules: iface.ingress_rules,
        egress_rules: iface.egress_rules,
        endpoint: iface.endpoint_id,
    }
}

#[inline(always)]
pub fn is_node(addr: &Addr) -> bool {
    node_addr_kind(addr) & node_addr::OWN != 0
}

/// What `addr` is to this node (`node_addr` flags), 0 when nothing.
#[inline(always)]
pub fn node_addr_kind(addr: &Addr) -> u32 {
    // SAFETY: plain-data lookup.
    unsafe { NODE_ADDRS.get(addr) }.copied().unwrap_or(0)
}

/// This node's own address in the family of `like`, else in the other (a Node may list
/// one family only; rules about nodes then name it by that one). See
/// `meta::NODE_SELF_V4`.
#[inline(always)]
pub fn node_self(like: &Addr) -> Option<Addr> {
    let word = |slot: u32| META.get(slot).copied().unwrap_or(0);
    let v4 = || meta::node_self_v4(word(meta::NODE_SELF_V4));
    let v6 = || meta::node_self_v6(word(meta::NODE_SELF_V6_HI), word(meta::NODE_SELF_V6_LO));
    if like.is_v4() {
        v4().or_else(v6)
    } else {
        v6().or_else(v4)
    }
}

#[inline(always)]
pub fn is_service(p: &Packet) -> bool {
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
pub fn scratch() -> Option<&'static mut Packet> {
    // SAFETY: a per-CPU slot; programs do not nest on one CPU, so nothing else uses it
    // while this run does.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub fn iface_of(ctx: &TcContext) -> Option<&'static IfaceInfo> {
    iface(ifindex(ctx))
}

/// The pod veth `ifindex`: its slot when it holds one (an indexed load), else `IFACES`.
/// Ifindex 0 (a packet the node itself sent has no ingress interface) is nobody's, and
/// the owner of a free slot.
#[inline(always)]
pub fn iface(ifindex: u32) -> Option<&'static IfaceInfo> {
    if ifindex == 0 {
        return None;
    }
    if let Some(slot) = IFACE_SLOTS.get(IfaceSlot::index_of(ifindex))
        && slot.ifindex == ifindex
    {
        return Some(&slot.info);
    }
    // SAFETY: plain-data value in the map, valid for this program run.
    unsafe { IFACES.get(ifindex) }
}
