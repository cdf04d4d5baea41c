//! What the compiled plan and the maps programmed from it decide for a flow under
//! ClusterNetworkPolicy: each side on its own node, with that node's addresses as its
//! own (the datapath's `NODE_ADDRS`). The same answer as `reference::allowed` is
//! expected; the plan and the maps must agree on every side.

use std::collections::BTreeMap;
use std::net::IpAddr;

use netpol_agent::compile::{Direction, Plan, compile};
use netpol_agent::program::memory::MemoryMaps;
use netpol_agent::program::{Programmer, addr_of};
use netpol_agent::state::{ClusterState, Protocol};

use crate::reference::End;

/// One node: its plan, the maps programmed from it, its addresses.
pub struct Node {
    pub plan: Plan,
    pub maps: Programmer<MemoryMaps>,
    pub ips: Vec<IpAddr>,
}

/// Every node's plan and maps (its Node object's addresses are its own).
pub fn per_node(s: &ClusterState, nodes: &[&str]) -> BTreeMap<String, Node> {
    (nodes.iter())
        .map(|name| {
            let plan = compile(s, name);
            let ips = (s.nodes.get(*name))
                .map(|n| n.ips.clone())
                .unwrap_or_default();
            let mut maps = Programmer::new(MemoryMaps::default(), 100_000);
            if let Err(e) = maps.apply(&plan, &BTreeMap::new()) {
                panic!("programming node {name}: {e}");
            }
            (name.to_string(), Node { plan, maps, ips })
        })
        .collect()
}

/// Whether `subject`'s side (`dir`) allows a flow with `peer`; `None` when no policy can
/// apply to it (not a pod that policy selects, or a pod reaching itself). Panics when
/// the plan and the maps disagree.
pub fn side(
    s: &ClusterState,
    nodes: &BTreeMap<String, Node>,
    dir: Direction,
    subject: &End,
    peer: &End,
    protocol: Protocol,
    port: u16,
) -> Option<bool> {
    let End::Pod(r, ip) = subject else {
        return None;
    };
    let pod = s.pods.get(r).filter(|p| p.is_policy_subject())?;
    if matches!(peer, End::Pod(other, ip) if other == r && pod.ips.contains(ip)) {
        return None;
    }
    let node = nodes.get(pod.node.as_deref()?)?;
    let own_node = node.ips.contains(&peer.ip());
    let ep = node.plan.endpoints.iter().find(|e| &e.pod == r)?;
    let by_plan = (node.plan)
        .decide_from(ep, dir, peer.ip(), protocol, port, own_node)
        .is_some();
    let info = node.maps.maps().endpoints.get(&addr_of(*ip))?;
    let set = match dir {
        Direction::Ingress => info.ingress_set,
        Direction::Egress => info.egress_set,
    };
    let by_maps = (node.maps.maps())
        .rule_from(set, peer.ip(), protocol, port, own_node)
        .is_some();
    assert_eq!(
        by_plan,
        by_maps,
        "plan and maps disagree: {r} {dir} with {} {protocol:?}/{port}",
        peer.ip()
    );
    // Unordered sets: NetworkPolicy's own-node exemption comes before them (the datapath's
    // `node_exempt`); ordered ones apply it themselves, after the Admin tier.
    let unordered = set & netpol_common::RULESET_ORDERED == 0;
    Some(by_plan || (unordered && own_node))
}

/// Both sides allow.
pub fn allowed(
    s: &ClusterState,
    nodes: &BTreeMap<String, Node>,
    src: &End,
    dst: &End,
    protocol: Protocol,
    port: u16,
) -> bool {
    let egress = side(s, nodes, Direction::Egress, src, dst, protocol, port);
    let ingress = side(s, nodes, Direction::Ingress, dst, src, protocol, port);
    [egress, ingress].iter().all(|d| d.unwrap_or(true))
}
