//! What the compiler's tier tables (`compile::tiers`) decide for a flow: each side on the
//! tables of its own node, as the datapath will. The same answer as `reference::allowed`
//! is expected.

use std::collections::BTreeMap;

use netpol_agent::compile::tiers::{Decision, Tiered, resolve};
use netpol_agent::compile::{Direction, Plan, compile};
use netpol_agent::state::{ClusterState, ObjectRef, Protocol};

use crate::reference::End;

pub type Tables = BTreeMap<(ObjectRef, Direction), Tiered>;

/// Every node's plan and tier tables (its Node object's addresses are its own).
pub fn per_node(s: &ClusterState, nodes: &[&str]) -> BTreeMap<String, (Plan, Tables)> {
    (nodes.iter())
        .map(|name| {
            let plan = compile(s, name);
            let ips = s
                .nodes
                .get(*name)
                .map(|n| n.ips.clone())
                .unwrap_or_default();
            let tables = resolve(s, &plan, &ips);
            (name.to_string(), (plan, tables))
        })
        .collect()
}

/// What `subject`'s side (`dir`) decides for a flow with `peer`; `None` when no policy
/// can apply to it (not a pod that policy selects, or a pod reaching itself).
pub fn side(
    s: &ClusterState,
    nodes: &BTreeMap<String, (Plan, Tables)>,
    dir: Direction,
    subject: &End,
    peer: &End,
    protocol: Protocol,
    port: u16,
) -> Option<Decision> {
    let End::Pod(r, _) = subject else {
        return None;
    };
    let pod = s.pods.get(r).filter(|p| p.is_policy_subject())?;
    if matches!(peer, End::Pod(other, ip) if other == r && pod.ips.contains(ip)) {
        return None;
    }
    let (plan, tables) = nodes.get(pod.node.as_deref()?)?;
    let identity = plan.identities.get(&peer.ip()).map(|i| &**i);
    Some(
        tables
            .get(&(r.clone(), dir))?
            .decide(identity, peer.ip(), protocol, port),
    )
}

/// Both sides allow.
pub fn allowed(
    s: &ClusterState,
    nodes: &BTreeMap<String, (Plan, Tables)>,
    src: &End,
    dst: &End,
    protocol: Protocol,
    port: u16,
) -> bool {
    let egress = side(s, nodes, Direction::Egress, src, dst, protocol, port);
    let ingress = side(s, nodes, Direction::Ingress, dst, src, protocol, port);
    [egress, ingress]
        .iter()
        .all(|d| d.as_ref().is_none_or(Decision::allows))
}
