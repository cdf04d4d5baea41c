//! A plain reading of ClusterNetworkPolicy's tiers, for checking the compiler against:
//! within a tier, policies whose subject selects the pod by priority (lower first; equal
//! priorities by name, netpol's documented order), and in each policy its rules of the
//! direction in order; the first rule whose peers and protocols match decides. Accept
//! and Deny end the evaluation; Pass ends the tier.
//!
//! It shares with `compile` only `cnp_check`, which says what a policy means once
//! checked against the CRD (and how bad parts fail closed); how tiers, priorities and
//! rules combine is written here again.

use netpol_agent::compile::cnp_check::{
    Action, CheckedCnp, CnpPeer, CnpPort, CnpSubject, Tier, check,
};
use netpol_agent::state::{ClusterState, ObjectRef, PodInfo, Protocol};

use crate::reference::End;

/// Which side of the flow the subject is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    /// The subject sends (its egress rules).
    Egress,
    /// The subject receives (its ingress rules).
    Ingress,
}

/// What `tier` decides for `subject`'s side of a flow with `peer`, towards `destination`
/// (`None`: no rule matched; `Some(Pass)`: a Pass rule did).
#[allow(clippy::too_many_arguments)]
pub fn tier_verdict(
    state: &ClusterState,
    tier: Tier,
    side: Side,
    subject: (&ObjectRef, &PodInfo),
    peer: &End,
    destination: &End,
    protocol: Protocol,
    port: u16,
) -> Option<Action> {
    let mut policies: Vec<CheckedCnp> = state
        .cluster_policies
        .values()
        .map(|p| check(p).0)
        .filter(|p| p.tier == tier && selects(state, &p.subject, subject))
        .collect();
    // A policy the API server would refuse goes first (`cnp_check` says so).
    policies
        .sort_by(|a, b| (!a.refused, a.priority, &a.name).cmp(&(!b.refused, b.priority, &b.name)));
    for p in &policies {
        let rules = match side {
            Side::Egress => &p.egress,
            Side::Ingress => &p.ingress,
        };
        for r in rules {
            let peer_ok = r.peers.iter().any(|x| peer_matches(state, x, peer));
            let port_ok = match &r.ports {
                None => true,
                Some(list) => list
                    .iter()
                    .any(|x| port_matches(state, x, destination, protocol, port)),
            };
            if peer_ok && port_ok {
                return Some(r.action);
            }
        }
    }
    None
}

fn selects(state: &ClusterState, s: &CnpSubject, (r, pod): (&ObjectRef, &PodInfo)) -> bool {
    if !pod.is_policy_subject() {
        return false;
    }
    let ns = state.namespace_labels(&r.namespace);
    match s {
        CnpSubject::Namespaces(sel) => sel.matches(&ns),
        CnpSubject::Pods { namespaces, pods } => {
            namespaces.matches(&ns) && pods.matches(&pod.labels)
        }
    }
}

fn peer_matches(state: &ClusterState, p: &CnpPeer, other: &End) -> bool {
    let ip = other.ip();
    match p {
        CnpPeer::Everything => true,
        CnpPeer::Networks(nets) => nets.iter().any(|n| n.contains(&ip)),
        CnpPeer::Nodes(sel) => state
            .nodes
            .values()
            .any(|n| n.ips.contains(&ip) && sel.matches(&n.labels)),
        CnpPeer::Namespaces(_) | CnpPeer::Pods { .. } => {
            let End::Pod(r, _) = other else {
                return false;
            };
            let Some(pod) = state.pods.get(r).filter(|p| p.is_policy_subject()) else {
                return false;
            };
            let ns = state.namespace_labels(&r.namespace);
            match p {
                CnpPeer::Namespaces(sel) => sel.matches(&ns),
                CnpPeer::Pods { namespaces, pods } => {
                    namespaces.matches(&ns) && pods.matches(&pod.labels)
                }
                _ => false,
            }
        }
    }
}

fn port_matches(
    state: &ClusterState,
    p: &CnpPort,
    destination: &End,
    protocol: Protocol,
    port: u16,
) -> bool {
    match p {
        CnpPort::Ports {
            protocol: want,
            range,
        } => *want == protocol && range.is_none_or(|(lo, hi)| lo <= port && port <= hi),
        // Names are unique per container only: any port of that name and protocol.
        CnpPort::Named(name) => match destination {
            End::Pod(r, _) => state.pods.get(r).is_some_and(|pod| {
                pod.ports.iter().any(|c| {
                    c.name.as_deref() == Some(name.as_str())
                        && c.protocol == protocol
                        && c.port == port
                })
            }),
            End::Outside(_) => false,
        },
    }
}
