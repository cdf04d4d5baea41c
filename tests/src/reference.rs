//! A plain reading of the NetworkPolicy spec (and, between ClusterNetworkPolicy's Admin
//! and Baseline tiers, `reference_cnp`), for checking the compiler against. It is
//! written to be obviously right, not fast, and shares nothing with `compile` but the
//! `ClusterState` it reads.
//!
//! One project decision is encoded here as well: a rule the API server would reject
//! (bad CIDR, `endPort` below `port`, ...) allows nothing, and a policy whose own
//! `podSelector` is invalid selects every pod of its namespace and allows nothing.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netpol_agent::compile::cnp_check::{Action, Tier};
use netpol_agent::state::{ClusterState, Labels, ObjectRef, PodInfo, Protocol};

use crate::reference_cnp::{Side, tier_verdict};

/// One end of a flow: a pod (by name, with the address used) or an address outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    Pod(ObjectRef, IpAddr),
    Outside(IpAddr),
}

impl End {
    pub fn ip(&self) -> IpAddr {
        match self {
            End::Pod(_, ip) | End::Outside(ip) => *ip,
        }
    }
}

/// Would a new connection from `src` to `dst` on `protocol`/`port` be allowed?
pub fn allowed(state: &ClusterState, src: &End, dst: &End, protocol: Protocol, port: u16) -> bool {
    egress_allowed(state, src, dst, protocol, port)
        && ingress_allowed(state, src, dst, protocol, port)
}

fn pod<'a>(state: &'a ClusterState, end: &End) -> Option<(&'a ObjectRef, &'a PodInfo)> {
    match end {
        End::Pod(r, _) => state.pods.get_key_value(r).filter(|(_, p)| !p.host_network),
        End::Outside(_) => None,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    Ingress,
    Egress,
}

/// Policies of the pod's namespace that select it and apply to `dir`.
fn applying<'a>(
    state: &'a ClusterState,
    who: (&ObjectRef, &PodInfo),
    dir: Dir,
) -> Vec<(&'a ObjectRef, &'a NetworkPolicy, bool)> {
    let (r, p) = who;
    let mut out = Vec::new();
    for (key, pol) in &state.policies {
        if key.namespace != r.namespace {
            continue;
        }
        // A policy in audit mode isolates nothing and allows nothing.
        let audit = (pol.metadata.annotations.as_ref())
            .and_then(|a| a.get(netpol_agent::state::MODE_ANNOTATION))
            .is_some_and(|m| m == "audit");
        if audit {
            continue;
        }
        let spec = pol.spec.clone().unwrap_or_default();
        let (selects, valid) = match &spec.pod_selector {
            None => (true, true),
            Some(sel) => match selector_matches(sel, &p.labels) {
                Some(m) => (m, true),
                None => (true, false), // invalid selector: selects everything, allows nothing
            },
        };
        if !selects {
            continue;
        }
        let types: Vec<String> = spec.policy_types.clone().unwrap_or_default();
        let applies = if types.is_empty() {
            dir == Dir::Ingress || spec.egress.as_ref().is_some_and(|e| !e.is_empty())
        } else {
            types.iter().any(|t| match t.as_str() {
                "Ingress" => dir == Dir::Ingress,
                "Egress" => dir == Dir::Egress,
                _ => true, // unknown type: isolated both ways
            })
        };
        if applies {
            out.push((key, pol, valid));
        }
    }
    out
}

fn egress_allowed(
    state: &ClusterState,
    src: &End,
    dst: &End,
    protocol: Protocol,
    port: u16,
) -> bool {
    side_allowed(state, Dir::Egress, src, dst, dst, protocol, port)
}

fn ingress_allowed(
    state: &ClusterState,
    src: &End,
    dst: &End,
    protocol: Protocol,
    port: u16,
) -> bool {
    side_allowed(state, Dir::Ingress, dst, src, dst, protocol, port)
}

/// The peers and ports of one rule.
type Rule<'a> = (
    Option<&'a [NetworkPolicyPeer]>,
    Option<&'a [NetworkPolicyPort]>,
);

/// One side's policy: `subject`'s `dir` rules towards `peer`, for a flow to `destination`.
fn side_allowed(
    state: &ClusterState,
    dir: Dir,
    subject: &End,
    peer: &End,
    destination: &End,
    protocol: Protocol,
    port: u16,
) -> bool {
    let Some(who) = pod(state, subject) else {
        return true;
    };
    if !who.1.is_policy_subject() {
        return true;
    }
    // A pod reaching itself by its own address is not subject to ClusterNetworkPolicy.
    let itself = matches!(peer, End::Pod(r, ip) if r == who.0 && who.1.ips.contains(ip));
    let side = match dir {
        Dir::Egress => Side::Egress,
        Dir::Ingress => Side::Ingress,
    };
    let tier = |tier| {
        if itself {
            return None;
        }
        tier_verdict(state, tier, side, who, peer, destination, protocol, port)
    };
    match tier(Tier::Admin) {
        Some(Action::Accept) => return true,
        Some(Action::Deny) => return false,
        Some(Action::Pass) | None => {}
    }
    let policies = applying(state, who, dir);
    if policies.is_empty() {
        return tier(Tier::Baseline) != Some(Action::Deny);
    }
    // NetworkPolicy lets the pod's own node through (an Admin rule above decides first).
    let own_node = (who.1.node.as_ref())
        .and_then(|n| state.nodes.get(n))
        .is_some_and(|n| n.ips.contains(&peer.ip()));
    if own_node {
        return true;
    }
    policies.iter().any(|(key, pol, valid)| {
        let Some(spec) = pol.spec.as_ref().filter(|_| *valid) else {
            return false;
        };
        let rules: Vec<Rule> = match dir {
            Dir::Egress => spec
                .egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_deref(), r.ports.as_deref()))
                .collect(),
            Dir::Ingress => spec
                .ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_deref(), r.ports.as_deref()))
                .collect(),
        };
        rules.into_iter().any(|(peers, ports)| {
            rule_ok(
                state,
                &key.namespace,
                peers,
                ports,
                peer,
                destination,
                protocol,
                port,
            )
        })
    })
}

/// `peer` is the other end of the rule; named ports resolve on the flow's destination.
#[allow(clippy::too_many_arguments)]
fn rule_ok(
    state: &ClusterState,
    policy_ns: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    peer: &End,
    destination: &End,
    protocol: Protocol,
    port: u16,
) -> bool {
    // A rule with any invalid part allows nothing.
    if !peers.unwrap_or_default().iter().all(peer_valid)
        || !ports.unwrap_or_default().iter().all(port_valid)
    {
        return false;
    }
    let peer_ok = match peers {
        None | Some([]) => true,
        Some(list) => list.iter().any(|p| peer_matches(state, policy_ns, p, peer)),
    };
    let port_ok = match ports {
        None | Some([]) => true,
        Some(list) => list
            .iter()
            .any(|p| port_matches(state, p, destination, protocol, port)),
    };
    peer_ok && port_ok
}

fn peer_valid(p: &NetworkPolicyPeer) -> bool {
    match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
        (None, None, None) => false,
        (Some(b), None, None) => {
            let Ok(cidr) = b.cidr.parse::<IpNet>() else {
                return false;
            };
            b.except.iter().flatten().all(|e| match e.parse::<IpNet>() {
                Ok(e) => cidr.contains(&e) && e.prefix_len() > cidr.prefix_len(),
                Err(_) => false,
            })
        }
        (Some(_), _, _) => false,
        (None, ns, pods) => {
            ns.as_ref()
                .is_none_or(|s| selector_matches(s, &Labels::new()).is_some())
                && pods
                    .as_ref()
                    .is_none_or(|s| selector_matches(s, &Labels::new()).is_some())
        }
    }
}

fn port_valid(p: &NetworkPolicyPort) -> bool {
    if !matches!(
        p.protocol.as_deref(),
        None | Some("TCP") | Some("UDP") | Some("SCTP")
    ) {
        return false;
    }
    match (&p.port, p.end_port) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(IntOrString::Int(n)), e) => {
            (1..=65535).contains(n) && e.is_none_or(|e| (1..=65535).contains(&e) && e >= *n)
        }
        (Some(IntOrString::String(name)), None) => {
            !name.is_empty()
                && name.len() <= 15
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && name.chars().any(|c| c.is_ascii_lowercase())
                && !name.starts_with('-')
                && !name.ends_with('-')
                && !name.contains("--")
        }
        (Some(IntOrString::String(_)), Some(_)) => false,
    }
}

fn peer_matches(state: &ClusterState, policy_ns: &str, p: &NetworkPolicyPeer, other: &End) -> bool {
    if let Some(block) = &p.ip_block {
        let ip = other.ip();
        let Ok(cidr) = block.cidr.parse::<IpNet>() else {
            return false;
        };
        let in_cidr = cidr.contains(&ip);
        let excepted = block
            .except
            .iter()
            .flatten()
            .any(|e| e.parse::<IpNet>().is_ok_and(|e| e.contains(&ip)));
        return in_cidr && !excepted;
    }
    let Some((r, pod)) = pod(state, other) else {
        return false;
    };
    if !pod.is_policy_subject() {
        return false;
    }
    let ns_ok = match &p.namespace_selector {
        None => r.namespace == policy_ns,
        Some(sel) => selector_matches(sel, &state.namespace_labels(&r.namespace)) == Some(true),
    };
    let pod_ok = match &p.pod_selector {
        None => true,
        Some(sel) => selector_matches(sel, &pod.labels) == Some(true),
    };
    ns_ok && pod_ok
}

fn port_matches(
    state: &ClusterState,
    p: &NetworkPolicyPort,
    destination: &End,
    protocol: Protocol,
    port: u16,
) -> bool {
    let want = match p.protocol.as_deref() {
        None | Some("TCP") => Protocol::Tcp,
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        Some(_) => return false,
    };
    if want != protocol {
        return false;
    }
    match &p.port {
        None => true,
        Some(IntOrString::Int(n)) => match p.end_port {
            None => i32::from(port) == *n,
            Some(e) => *n <= i32::from(port) && i32::from(port) <= e,
        },
        Some(IntOrString::String(name)) => pod(state, destination).is_some_and(|(_, pod)| {
            pod.ports.iter().any(|c| {
                c.name.as_deref() == Some(name.as_str()) && c.protocol == protocol && c.port == port
            })
        }),
    }
}

/// `None` when the selector is invalid.
fn selector_matches(sel: &LabelSelector, labels: &Labels) -> Option<bool> {
    let mut ok = true;
    for (k, v) in sel.match_labels.iter().flatten() {
        ok &= labels.get(k) == Some(v);
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        let have = labels.get(&e.key);
        ok &= match e.operator.as_str() {
            "In" if !values.is_empty() => have.is_some_and(|v| values.contains(v)),
            "NotIn" if !values.is_empty() => have.is_none_or(|v| !values.contains(v)),
            "Exists" if values.is_empty() => have.is_some(),
            "DoesNotExist" if values.is_empty() => have.is_none(),
            _ => return None,
        };
    }
    Some(ok)
}
