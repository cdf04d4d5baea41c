//! One direction of one pod: which policies isolate it, and which rule, if any, allows a
//! peer. It takes the compiler's decisions rule by rule (`compile/mod.rs`: policy types,
//! selectors, port and peer validation, named ports, CIDR blocks with excepts, the
//! datapath's port-range limit), so the verdict is the one the maps hold, with the rule
//! named. Policies and rules are validated by the compiler's own checks
//! (`compile::validate`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};

use crate::compile::allowed::{Allowed, RuleRef, RuleTag};
use crate::compile::ports::PortSpec;
use crate::compile::prefix::{Grant, Prefix};
use crate::compile::selector::Selector;
use crate::compile::validate::{PeerItem, PortItem, check_head, check_rule, resolve_ports};
use crate::compile::{Direction, PolicyError};
use crate::state::{ClusterState, ObjectRef, PodInfo, Protocol};

/// The pod whose policies are read.
#[derive(Clone, Copy)]
pub(super) struct Subject<'a> {
    pub key: &'a ObjectRef,
    pub pod: &'a PodInfo,
}

/// The other end, as this direction's rules see it.
#[derive(Clone, Copy)]
pub(super) struct Peer<'a> {
    pub ip: IpAddr,
    /// Set when the peer is a pod policy can select (not host-network, not finished).
    pub pod: Option<Subject<'a>>,
}

/// Isolation of one direction, without a peer.
pub(super) struct Isolation<'a> {
    /// The policies that select the subject and apply to the direction, by ns/name.
    pub policies: Vec<Checked<'a>>,
    /// What is wrong with those policies and their rules of this direction.
    pub errors: Vec<String>,
}

/// What one direction decides for one peer.
pub(super) struct Judgement {
    pub allowed: bool,
    /// `ns/name egress[i]`: the rule the datapath names (see `compile::allowed`).
    pub rule: Option<String>,
    /// Why a path the rules grant is still closed (the datapath's port-range limit).
    pub errors: Vec<String>,
}

/// A policy as the compiler reads it.
pub(super) struct Checked<'a> {
    pub key: &'a ObjectRef,
    policy: &'a NetworkPolicy,
    selects: Selector,
    types: BTreeSet<Direction>,
    /// False when its own podSelector is invalid: it isolates and grants nothing.
    rules_valid: bool,
    /// In audit mode: it neither isolates nor allows (explain judges what is enforced).
    audit: bool,
    errors: Vec<PolicyError>,
}

/// A policy as the compiler reads it (`compile::validate::check_head`).
fn check_policy<'a>(key: &'a ObjectRef, policy: &'a NetworkPolicy) -> Checked<'a> {
    let mut errors = Vec::new();
    let head = check_head(key, policy, &mut errors);
    Checked {
        key,
        policy,
        selects: head.selects,
        types: head.types,
        rules_valid: head.rules_valid,
        audit: head.audit,
        errors,
    }
}

/// The peers and ports of one rule of `dir`.
type RuleParts<'a> = (
    Option<&'a [NetworkPolicyPeer]>,
    Option<&'a [NetworkPolicyPort]>,
);

impl<'a> Checked<'a> {
    fn rules(&self, dir: Direction) -> Vec<RuleParts<'a>> {
        if !self.rules_valid {
            return Vec::new();
        }
        let Some(spec) = self.policy.spec.as_ref() else {
            return Vec::new();
        };
        match dir {
            Direction::Ingress => spec
                .ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_deref(), r.ports.as_deref()))
                .collect(),
            Direction::Egress => spec
                .egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_deref(), r.ports.as_deref()))
                .collect(),
        }
    }
}

/// The policies isolating `subject` for `dir`, and what is wrong with them.
pub(super) fn isolation<'a>(
    state: &'a ClusterState,
    dir: Direction,
    subject: Subject<'_>,
) -> Isolation<'a> {
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    for (key, policy) in &state.policies {
        if key.namespace != subject.key.namespace {
            continue;
        }
        let checked = check_policy(key, policy);
        if checked.audit
            || !checked.selects.matches(&subject.pod.labels)
            || !checked.types.contains(&dir)
        {
            continue;
        }
        errors.extend(checked.errors.iter().map(ToString::to_string));
        for (i, (peers, ports)) in checked.rules(dir).iter().enumerate() {
            let location = format!("{dir}[{i}]");
            if let Err((location, message)) = check_rule(*peers, *ports, dir, &location) {
                errors.push(
                    PolicyError {
                        policy: key.clone(),
                        location,
                        message: format!("{message}; this rule allows nothing"),
                    }
                    .to_string(),
                );
            }
        }
        policies.push(checked);
    }
    Isolation { policies, errors }
}

/// Which rule of the isolating policies lets `peer` reach `port`/`protocol`, if any.
/// Named ports resolve on the destination: the subject for ingress, the peer pod for
/// egress (a peer that is not a pod resolves none).
pub(super) fn judge(
    state: &ClusterState,
    dir: Direction,
    subject: Subject<'_>,
    isolation: &Isolation<'_>,
    peer: Peer<'_>,
    protocol: Protocol,
    port: u16,
) -> Judgement {
    // Every rule's grant to this peer: through its identity (pod selectors) and through
    // the address blocks that cover it. The datapath holds the union of each.
    let mut grants: Vec<(RuleTag, RuleGrant)> = Vec::new();
    for p in &isolation.policies {
        for (i, (peers, ports)) in p.rules(dir).iter().enumerate() {
            let location = format!("{dir}[{i}]");
            let Ok((peer_items, port_items)) = check_rule(*peers, *ports, dir, &location) else {
                continue;
            };
            let input = RuleInput {
                state,
                dir,
                subject,
                policy_namespace: &p.key.namespace,
            };
            let grant = input.grant(&peer_items, port_items.as_deref(), peer);
            let tag = Arc::new(RuleRef::np(p.key.clone(), dir, i));
            grants.push((tag, grant));
        }
    }
    // What the datapath's two entries for this peer hold, each port named by its rule.
    let mut errors = Vec::new();
    let mut by_identity = Allowed::none();
    let mut by_blocks = Allowed::none();
    for (tag, g) in &grants {
        if let Some(spec) = &g.identity {
            by_identity.add(&Allowed::by(spec, tag));
        }
        by_blocks.add(&Allowed::by(&g.blocks, tag));
    }
    // The compiler fits each entry into the ranges the datapath scans, naming less if it
    // must, and denies the peer when even that does not fit ("this peer is denied").
    let fits = |entry: &mut Allowed, what: &str, errors: &mut Vec<String>| {
        let n = entry.ranges().len();
        if entry.fit(netpol_common::MAX_PORT_RANGES) {
            return true;
        }
        errors.push(format!(
            "{n} distinct port ranges to {} through {what}, more than the {} the datapath supports; the compiler denies it that way",
            peer.ip,
            netpol_common::MAX_PORT_RANGES
        ));
        false
    };
    let identity_ok = fits(&mut by_identity, "pod selectors", &mut errors);
    let blocks_ok = fits(&mut by_blocks, "address blocks", &mut errors);
    // The datapath looks at the identity's entry first.
    let decided = identity_ok
        .then(|| by_identity.decide(protocol, port))
        .flatten()
        .or_else(|| {
            blocks_ok
                .then(|| by_blocks.decide(protocol, port))
                .flatten()
        });
    Judgement {
        allowed: decided.is_some(),
        rule: decided.flatten().map(|r| r.to_string()),
        errors,
    }
}

/// What one rule grants one peer.
struct RuleGrant {
    /// Through the peer pod's identity, when a pod peer of the rule selects it.
    identity: Option<PortSpec>,
    /// Through the address blocks that cover the peer's address (none: empty).
    blocks: PortSpec,
}

struct RuleInput<'a> {
    state: &'a ClusterState,
    dir: Direction,
    subject: Subject<'a>,
    policy_namespace: &'a str,
}

impl RuleInput<'_> {
    fn grant(&self, peers: &[PeerItem], ports: Option<&[PortItem]>, peer: Peer<'_>) -> RuleGrant {
        let mut identity: Option<PortSpec> = None;
        let mut blocks = PortSpec::none();
        let has_named = ports
            .iter()
            .flat_map(|p| p.iter())
            .any(|p| matches!(p, PortItem::Named(..)));
        for item in peers {
            match item {
                PeerItem::Pods { namespaces, pods } => {
                    let Some(pod) = peer.pod else { continue };
                    let in_namespace = match namespaces {
                        None => pod.key.namespace == self.policy_namespace,
                        Some(sel) => sel.matches(&self.state.namespace_labels(&pod.key.namespace)),
                    };
                    if in_namespace && pods.as_ref().is_none_or(|s| s.matches(&pod.pod.labels)) {
                        identity
                            .get_or_insert_with(PortSpec::none)
                            .add(&self.ports_on(ports, Some(pod.pod)));
                    }
                }
                PeerItem::Block { cidr, except } => {
                    // Grant::from_net carries the compiler's family rules (an IPv6 block
                    // never covers IPv4 addresses).
                    let g = Grant::from_net(*cidr, except.clone(), PortSpec::none());
                    let covered = g.prefix.contains_ip(peer.ip)
                        && !g.except.iter().any(|e| e.contains_ip(peer.ip));
                    if covered {
                        blocks.add(&self.ports_on(ports, None));
                    }
                    // An egress rule's named ports mean a number per destination pod: each
                    // pod inside the block gets its own resolution on top.
                    let host = Prefix::host(peer.ip);
                    if self.dir == Direction::Egress
                        && has_named
                        && cidr.contains(&peer.ip)
                        && !except.iter().any(|e| e.contains(&host))
                        && let Some(pod) = peer.pod
                    {
                        blocks.add(&self.ports_on(ports, Some(pod.pod)));
                    }
                }
            }
        }
        RuleGrant { identity, blocks }
    }

    /// The rule's ports towards one peer; `peer_pod` resolves egress named ports,
    /// the subject resolves ingress ones.
    fn ports_on(&self, items: Option<&[PortItem]>, peer_pod: Option<&PodInfo>) -> PortSpec {
        let Some(items) = items else {
            return PortSpec::All;
        };
        let resolver = match self.dir {
            Direction::Ingress => Some(self.subject.pod),
            Direction::Egress => peer_pod,
        };
        resolve_ports(items, resolver)
    }
}
