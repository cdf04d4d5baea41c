//! The pure step: `ClusterState` + this node's name -> `Plan`, the desired content of the
//! maps. No I/O, no kernel: everything here is unit tested.
//!
//! Bad input never opens traffic: a policy that selects a pod isolates it whatever its
//! rules look like, and a rule that cannot be compiled allows nothing (it is dropped and
//! reported in `Plan::errors`).

pub mod allowed;
pub mod cached_hash;
pub mod cnp_check;
pub mod held;
pub mod incremental;
pub mod ports;
pub mod prefix;
pub mod selector;
pub mod tiers;
pub(crate) mod validate;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::state::{ClusterState, ContainerPort, Labels, ObjectRef, PodInfo, Protocol};
use allowed::{Allowed, RuleRef, RuleTag};
use cached_hash::CachedHash;
pub use incremental::Compiler;
use ports::PortSpec;
use prefix::{Grant, Prefix};
use selector::Selector;
use validate::{PeerItem, PortItem, check_rule, resolve_ports};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// What pod selectors can tell pods apart by. Pods alike in it (the replicas of a
/// deployment) share one identity, so rules name identities, not addresses: a pod
/// coming, going or taking another's labels changes which identity its address has, and
/// no rule set. Namespace labels are not part of it: every identity of a namespace shares
/// them, and a change to them changes which identities the rule sets name.
#[derive(Clone)]
pub struct Identity {
    pub namespace: String,
    pub labels: Labels,
    /// Named ports of egress rules resolve on the destination pod.
    pub ports: Vec<ContainerPort>,
    unknown: bool,
    hash: CachedHash,
}

impl Identity {
    pub fn new(namespace: String, labels: Labels, ports: Vec<ContainerPort>) -> Self {
        Identity {
            namespace,
            labels,
            ports,
            unknown: false,
            hash: CachedHash::default(),
        }
    }

    /// A pod address without a known pod (`UNKNOWN_POD`): no selector selects it; Deny
    /// and Pass rules of ClusterNetworkPolicy that select pods match it.
    fn unknown_pod() -> Self {
        Identity {
            unknown: true,
            ..Identity::new(String::new(), Labels::new(), Vec::new())
        }
    }

    pub fn is_unknown_pod(&self) -> bool {
        self.unknown
    }

    fn fields(&self) -> (&String, &Labels, &Vec<ContainerPort>, bool) {
        (&self.namespace, &self.labels, &self.ports, self.unknown)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("namespace", &self.namespace)
            .field("labels", &self.labels)
            .field("ports", &self.ports)
            .field("unknown", &self.unknown)
            .finish()
    }
}

cached_hash::by_fields!(Identity);

/// The allow table of one direction of one or more pods. A peer is allowed what its
/// identity's entry allows plus what the longest block containing its address allows,
/// each port named by the rule that allows it (see `allowed`). Both empty = isolated
/// with nothing allowed.
///
/// Its fields are not changed once it is in a `Plan`: its hash is kept at first use.
#[derive(Clone, Default)]
pub struct RuleSet {
    /// Pod-selector rules, by peer identity.
    pub peers: BTreeMap<Arc<Identity>, Allowed<Position>>,
    /// ipBlock rules: longest-prefix-match entries (see `prefix::union`).
    pub blocks: BTreeMap<Prefix, Allowed<Position>>,
    /// A ClusterNetworkPolicy applies to the set's pods: `peers` and `blocks` are then its
    /// rest table, as ordered tags (`netpol_common::tag`), and this holds the rest.
    pub ordered: Option<tiers::Ordered>,
    hash: CachedHash,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("peers", &self.peers)
            .field("blocks", &self.blocks)
            .field("ordered", &self.ordered)
            .finish()
    }
}

cached_hash::by_fields!(RuleSet);

impl RuleSet {
    pub fn new(
        peers: BTreeMap<Arc<Identity>, Allowed<Position>>,
        blocks: BTreeMap<Prefix, Allowed<Position>>,
    ) -> Self {
        RuleSet {
            peers,
            blocks,
            ordered: None,
            hash: CachedHash::default(),
        }
    }

    #[allow(clippy::type_complexity)]
    fn fields(
        &self,
    ) -> (
        &BTreeMap<Arc<Identity>, Allowed<Position>>,
        &BTreeMap<Prefix, Allowed<Position>>,
        &Option<tiers::Ordered>,
    ) {
        (&self.peers, &self.blocks, &self.ordered)
    }

    /// None when the peer is not allowed; else the position of the rule the datapath
    /// names for it, if any: its identity's entry decides first, then the longest block.
    /// `identity`: the peer's, if it is a pod. The peer is not the pod's own node (whose
    /// exemption callers apply; see `decide_from`).
    pub fn decide(
        &self,
        identity: Option<&Identity>,
        peer: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Option<Option<Position>> {
        self.decide_from(identity, peer, protocol, port, false)
    }

    /// `decide`, for a peer that may be the pod's own node (`own_node`). An unordered set
    /// does not look: NetworkPolicy's exemption comes before it. An ordered set applies
    /// it after the Admin tier, as the datapath does.
    pub fn decide_from(
        &self,
        identity: Option<&Identity>,
        peer: IpAddr,
        protocol: Protocol,
        port: u16,
        own_node: bool,
    ) -> Option<Option<Position>> {
        if let Some(ordered) = &self.ordered {
            let rest =
                || tiers::first_tag(&self.peers, &self.blocks, identity, peer, protocol, port);
            let admin = (ordered.admin.as_ref()).map_or(netpol_common::tag::NONE, |a| {
                a.first(identity, peer, protocol, port)
            });
            let position =
                netpol_common::tiered_verdict(admin, || ordered.np_isolated && own_node, rest)?;
            return Some((position != netpol_common::RULE_UNNAMED).then_some(position));
        }
        identity
            .and_then(|i| self.peers.get(i))
            .and_then(|s| s.decide(protocol, port))
            .or_else(|| prefix::lookup(&self.blocks, peer).and_then(|s| s.decide(protocol, port)))
            .map(|p| p.copied())
    }

    /// `identity`: the peer's, if it is a pod.
    pub fn allows(
        &self,
        identity: Option<&Identity>,
        peer: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> bool {
        self.decide(identity, peer, protocol, port).is_some()
    }

    pub fn len(&self) -> usize {
        let admin = (self.ordered.iter().flat_map(|o| &o.admin)).map(|a| a.len());
        self.peers.len() + self.blocks.len() + admin.sum::<usize>()
    }

    /// Every identity the set names (in both tables of an ordered set).
    pub fn named_identities(&self) -> impl Iterator<Item = &Arc<Identity>> {
        let admin = (self.ordered.iter().flat_map(|o| &o.admin)).flat_map(|a| a.peers.keys());
        self.peers.keys().chain(admin)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A rule's place among the rules a rule set unites, from 1, in policy order (namespace,
/// name, direction, rule index): what the set's entries name. Each pod names positions by
/// its own rules (`RuleNames`).
pub type Position = u32;

/// What the positions of a pod's rule sets name, per direction: position `k` is entry
/// `k - 1`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleNames {
    pub ingress: Arc<Vec<RuleTag>>,
    pub egress: Arc<Vec<RuleTag>>,
}

impl RuleNames {
    pub fn of(&self, dir: Direction) -> &Arc<Vec<RuleTag>> {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// The rule at `position` of direction `dir`.
    pub fn name(&self, dir: Direction, position: Position) -> Option<&RuleTag> {
        let i = usize::try_from(position).ok()?.checked_sub(1)?;
        self.of(dir).get(i)
    }
}

/// Index into `Plan::rule_sets`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleSetRef(pub usize);

/// A pod of this node and what applies to it. `None` = that direction is not isolated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEndpoint {
    pub pod: ObjectRef,
    pub ips: Vec<IpAddr>,
    pub ingress: Option<RuleSetRef>,
    pub egress: Option<RuleSetRef>,
    /// What the rule positions of its rule sets name.
    pub rules: RuleNames,
    /// What its policies would allow with those in audit mode enforced too; `None` when
    /// no audit-mode policy applies to it in that direction.
    pub audit: Audit,
    /// The policies that isolate it, per direction (what a drop is attributed to).
    pub isolated_by: IsolatedBy,
}

/// The rule sets a pod's audit-mode policies are judged with, per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    pub ingress: Option<RuleSetRef>,
    pub egress: Option<RuleSetRef>,
}

/// The policies that select a pod for each direction, sorted: those that isolate it, and
/// those in audit mode (what an audit finding is attributed to).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IsolatedBy {
    pub ingress: Vec<ObjectRef>,
    pub egress: Vec<ObjectRef>,
    pub audit_ingress: Vec<ObjectRef>,
    pub audit_egress: Vec<ObjectRef>,
}

/// One port of one Service address, as kube-proxy translates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    pub ip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

/// A policy problem; the rule it names allows nothing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyError {
    pub policy: ObjectRef,
    /// `ingress[0]`, `egress[2].to[1]`, `podSelector`, ...
    pub location: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "policy {} {}: {}",
            self.policy, self.location, self.message
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Local pods, sorted by pod.
    pub endpoints: Vec<PlannedEndpoint>,
    /// Distinct rule sets; pods with the same rules share one.
    /// Shared: a plan is cloned on every change, and the programmer recognises a set it
    /// has loaded by its pointer.
    pub rule_sets: Vec<Arc<RuleSet>>,
    /// Service ports: egress towards them is decided after translation. Other ports of
    /// a Service address are not translated, so they are judged like any address.
    pub service_ports: BTreeSet<ServicePort>,
    /// The identity of every pod address of the cluster that policy can select.
    pub identities: BTreeMap<IpAddr, Arc<Identity>>,
    /// The cluster's pod address ranges (true) with holes (false) for node addresses: an
    /// address in them without an identity is a pod the agent cannot name (see
    /// `netpol_common::RULESET_POD_RANGES`).
    pub pod_ranges: BTreeMap<Prefix, bool>,
    /// This node's own address per family: a pod's packet that reaches the node's sockets
    /// at any other address is judged as going to it (see `node_self`).
    pub node_self: NodeSelf,
    pub errors: Vec<PolicyError>,
}

/// The addresses rules about nodes name this node by (its Node's), and its own address in
/// each family: the first of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSelf {
    pub v4: Option<std::net::Ipv4Addr>,
    pub v6: Option<std::net::Ipv6Addr>,
    pub addresses: Vec<IpAddr>,
}

/// `node`'s own addresses (none for a Node the agent has not seen).
pub fn node_self(state: &ClusterState, node: &str) -> NodeSelf {
    let ips = state
        .nodes
        .get(node)
        .map(|n| n.ips.as_slice())
        .unwrap_or(&[]);
    NodeSelf {
        v4: ips.iter().find_map(|ip| match ip {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        }),
        v6: ips.iter().find_map(|ip| match ip {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        }),
        addresses: ips.to_vec(),
    }
}

impl Plan {
    pub fn rule_set(&self, r: RuleSetRef) -> &RuleSet {
        &self.rule_sets[r.0]
    }

    /// What the datapath decides for `peer` under rule set `r`.
    pub fn allows(&self, r: RuleSetRef, peer: IpAddr, protocol: Protocol, port: u16) -> bool {
        self.rule_set(r)
            .allows(self.identity_of(peer, false), peer, protocol, port)
    }

    /// The identity the datapath looks `peer` up by: its own, else, inside the pod ranges
    /// and not an address of this node, the unknown pod's.
    pub fn identity_of(&self, peer: IpAddr, own_node: bool) -> Option<&Identity> {
        peer_identity(&self.identities, &self.pod_ranges, peer, own_node)
    }

    /// What the datapath decides for `peer` in direction `dir` of local pod `ep`: None
    /// when it does not allow it; else the rule it names, if any (none for a direction
    /// that is not isolated, or ports merged to fit, see `allowed::Allowed::fit`).
    pub fn decide<'a>(
        &'a self,
        ep: &'a PlannedEndpoint,
        dir: Direction,
        peer: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Option<Option<&'a RuleTag>> {
        self.decide_from(ep, dir, peer, protocol, port, false)
    }

    /// `decide`, for a peer that may be the pod's own node (see `RuleSet::decide_from`).
    pub fn decide_from<'a>(
        &'a self,
        ep: &'a PlannedEndpoint,
        dir: Direction,
        peer: IpAddr,
        protocol: Protocol,
        port: u16,
        own_node: bool,
    ) -> Option<Option<&'a RuleTag>> {
        let set = match dir {
            Direction::Ingress => ep.ingress,
            Direction::Egress => ep.egress,
        };
        let Some(set) = set else {
            return Some(None);
        };
        let identity = self.identity_of(peer, own_node);
        let position =
            (self.rule_set(set)).decide_from(identity, peer, protocol, port, own_node)?;
        Some(position.and_then(|p| ep.rules.name(dir, p)))
    }

    /// The rule the datapath names when it allows `peer` in direction `dir` of `ep`.
    pub fn rule_for<'a>(
        &'a self,
        ep: &'a PlannedEndpoint,
        dir: Direction,
        peer: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Option<&'a RuleTag> {
        self.decide(ep, dir, peer, protocol, port).flatten()
    }
}

/// A policy, checked once: which pods it selects and its compiled rules per direction.
struct CompiledPolicy<'a> {
    key: &'a ObjectRef,
    selects: Selector,
    types: BTreeSet<Direction>,
    /// In audit mode: it isolates nothing and allows nothing; it is judged on its own
    /// rule sets (`Audit`).
    audit: bool,
    /// False when the policy's own selector is invalid: it isolates but grants nothing.
    rules_valid: bool,
    ingress: Vec<Rule<'a>>,
    egress: Vec<Rule<'a>>,
}

/// Policy subjects, built once per compile: their identities by namespace (peer
/// selectors are evaluated per namespace, then per identity, never per pod), and every
/// subject pod (for ipBlocks that name ports, which resolve per address).
struct PodIndex<'a> {
    /// Each identity once, with one of its pods (they all resolve named ports alike).
    by_namespace: BTreeMap<&'a str, Vec<(Arc<Identity>, &'a PodInfo)>>,
    pods: Vec<&'a PodInfo>,
    addresses: BTreeMap<IpAddr, Arc<Identity>>,
}

impl<'a> PodIndex<'a> {
    fn new(state: &'a ClusterState) -> Self {
        let mut identities: HashMap<SubjectKey<'a>, Arc<Identity>> = HashMap::new();
        let mut by_namespace: BTreeMap<&str, Vec<(Arc<Identity>, &PodInfo)>> = BTreeMap::new();
        let mut pods = Vec::new();
        let mut addresses = BTreeMap::new();
        for (r, pod) in &state.pods {
            if !pod.is_policy_subject() {
                continue;
            }
            pods.push(pod);
            let key = SubjectKey {
                namespace: &r.namespace,
                labels: &pod.labels,
                ports: &pod.ports,
            };
            let identity = match identities.get(&key) {
                Some(i) => i.clone(),
                None => {
                    let i = Arc::new(Identity::new(
                        r.namespace.clone(),
                        pod.labels.clone(),
                        pod.ports.clone(),
                    ));
                    identities.insert(key, i.clone());
                    by_namespace
                        .entry(r.namespace.as_str())
                        .or_default()
                        .push((i.clone(), pod));
                    i
                }
            };
            for ip in &pod.ips {
                addresses.insert(*ip, identity.clone());
            }
        }
        PodIndex {
            by_namespace,
            pods,
            addresses,
        }
    }
}

/// What applies to the local pods alike in a `SubjectKey`.
struct SubjectSets {
    ingress: Option<RuleSetRef>,
    egress: Option<RuleSetRef>,
    rules: RuleNames,
    audit: Audit,
    isolated_by: IsolatedBy,
}

/// Everything about a local pod that its rule sets depend on: pods alike in these get
/// the same sets, computed once (the replicas of a deployment, say).
#[derive(PartialEq, Eq, Hash)]
struct SubjectKey<'a> {
    namespace: &'a str,
    labels: &'a crate::state::Labels,
    /// Named ports of ingress rules resolve on the subject.
    ports: &'a [crate::state::ContainerPort],
}

/// The plan of `node`: NetworkPolicy's rule sets, then ClusterNetworkPolicy's tiers
/// around them (`tiers::apply`).
pub fn compile(state: &ClusterState, node: &str) -> Plan {
    let mut plan = compile_network_policies(state, node);
    tiers::apply(state, &mut plan);
    plan
}

/// The plan of `node` as NetworkPolicy alone makes it.
pub fn compile_network_policies(state: &ClusterState, node: &str) -> Plan {
    let mut errors = Vec::new();
    let policies: Vec<CompiledPolicy> = state
        .policies
        .iter()
        .map(|(key, policy)| check_policy(key, policy, &mut errors))
        .collect();
    let index = PodIndex::new(state);

    let mut rule_sets: Vec<RuleSet> = Vec::new();
    let mut interned: BTreeMap<RuleSet, RuleSetRef> = BTreeMap::new();
    let mut intern = |set: RuleSet| -> RuleSetRef {
        *interned.entry(set.clone()).or_insert_with(|| {
            rule_sets.push(set);
            RuleSetRef(rule_sets.len() - 1)
        })
    };

    // Errors of a rule are the same for every pod it applies to: report each once.
    let mut rule_errors: BTreeSet<PolicyError> = BTreeSet::new();
    let mut rules = RuleCache::default();
    // Rule sets by the rules they unite (indexes into `rules`, in policy order: a rule's
    // place is its position).
    let mut unions: BTreeMap<Vec<usize>, RuleSetRef> = BTreeMap::new();
    let mut names: BTreeSet<Arc<Vec<RuleTag>>> = BTreeSet::new();
    let mut subject_cache: HashMap<SubjectKey, Arc<SubjectSets>> = HashMap::new();
    let mut endpoints = Vec::new();
    for (pod_ref, pod) in &state.pods {
        if pod.node.as_deref() != Some(node) || !pod.is_policy_subject() {
            continue;
        }
        let subject = SubjectKey {
            namespace: &pod_ref.namespace,
            labels: &pod.labels,
            ports: &pod.ports,
        };
        let sets = match subject_cache.get(&subject) {
            Some(sets) => sets.clone(),
            None => {
                let selecting: Vec<&CompiledPolicy> = policies
                    .iter()
                    .filter(|p| {
                        p.key.namespace == pod_ref.namespace && p.selects.matches(&pod.labels)
                    })
                    .collect();
                // The rule set of the policies of `dir` (with those in audit mode, or
                // without), and what its positions name; None when none applies.
                let mut direction = |dir: Direction,
                                     with_audit: bool|
                 -> Option<(RuleSetRef, Arc<Vec<RuleTag>>)> {
                    let applying: Vec<&&CompiledPolicy> = selecting
                        .iter()
                        .filter(|p| p.types.contains(&dir) && (with_audit || !p.audit))
                        .collect();
                    if applying.is_empty() {
                        return None;
                    }
                    let rules_of = RulesOf {
                        state,
                        index: &index,
                        dir,
                        subject: pod,
                    };
                    let mut united = Vec::new();
                    let mut named = Vec::new();
                    for p in applying {
                        for (i, rule) in p.rules(dir).iter().enumerate() {
                            let slot = rules.resolve(&rules_of, p, i, rule);
                            if let Err((location, message)) = &rules.results[slot] {
                                rule_errors.insert(PolicyError {
                                    policy: p.key.clone(),
                                    location: location.clone(),
                                    message: format!("{message}; this rule allows nothing"),
                                });
                            }
                            united.push(slot);
                            named.push(rule.tag.clone());
                        }
                    }
                    let named = match names.get(&named) {
                        Some(n) => n.clone(),
                        None => {
                            let n = Arc::new(named);
                            names.insert(n.clone());
                            n
                        }
                    };
                    if let Some(r) = unions.get(&united) {
                        return Some((*r, named));
                    }
                    let granted: Vec<(&RuleGrants, Position)> = united
                        .iter()
                        .zip(1..)
                        .filter_map(|(slot, at)| Some((rules.results[*slot].as_ref().ok()?, at)))
                        .collect();
                    let mut peers: BTreeMap<Arc<Identity>, Allowed<Position>> = BTreeMap::new();
                    for (g, at) in &granted {
                        for (identity, ports) in &g.peers {
                            peers
                                .entry(identity.clone())
                                .or_insert_with(Allowed::none)
                                .add(&Allowed::by(ports, at));
                        }
                    }
                    let blocks: Vec<Grant<Allowed<Position>>> = granted
                        .iter()
                        .flat_map(|(g, at)| {
                            g.blocks
                                .iter()
                                .map(|b| b.with_ports(Allowed::by(&b.ports, at)))
                        })
                        .collect();
                    let r = intern(RuleSet::new(peers, prefix::union(&blocks)));
                    unions.insert(united, r);
                    Some((r, named))
                };
                let by = |dir: Direction, audit: bool| -> Vec<ObjectRef> {
                    selecting
                        .iter()
                        .filter(|p| p.types.contains(&dir) && p.audit == audit)
                        .map(|p| p.key.clone())
                        .collect()
                };
                let isolated_by = IsolatedBy {
                    ingress: by(Direction::Ingress, false),
                    egress: by(Direction::Egress, false),
                    audit_ingress: by(Direction::Ingress, true),
                    audit_egress: by(Direction::Egress, true),
                };
                let audited = |policies: &[ObjectRef]| !policies.is_empty();
                let set_only = |d: Option<(RuleSetRef, Arc<Vec<RuleTag>>)>| d.map(|(r, _)| r);
                let audit = Audit {
                    ingress: if audited(&isolated_by.audit_ingress) {
                        set_only(direction(Direction::Ingress, true))
                    } else {
                        None
                    },
                    egress: if audited(&isolated_by.audit_egress) {
                        set_only(direction(Direction::Egress, true))
                    } else {
                        None
                    },
                };
                let ingress = direction(Direction::Ingress, false);
                let egress = direction(Direction::Egress, false);
                let sets = Arc::new(SubjectSets {
                    ingress: ingress.as_ref().map(|(r, _)| *r),
                    egress: egress.as_ref().map(|(r, _)| *r),
                    rules: RuleNames {
                        ingress: ingress.map(|(_, n)| n).unwrap_or_default(),
                        egress: egress.map(|(_, n)| n).unwrap_or_default(),
                    },
                    audit,
                    isolated_by,
                });
                subject_cache.insert(subject, sets.clone());
                sets
            }
        };
        endpoints.push(PlannedEndpoint {
            pod: pod_ref.clone(),
            ips: pod.ips.clone(),
            ingress: sets.ingress,
            egress: sets.egress,
            rules: sets.rules.clone(),
            audit: sets.audit,
            isolated_by: sets.isolated_by.clone(),
        });
    }
    errors.extend(rule_errors);

    // Rule sets the datapath cannot hold: fail closed on the entries concerned.
    for set in &mut rule_sets {
        let peers = set
            .peers
            .iter_mut()
            .map(|(i, spec)| (format!("pods {}/{:?}", i.namespace, i.labels), spec));
        let blocks = set
            .blocks
            .iter_mut()
            .map(|(prefix, spec)| (format!("peer {prefix}"), spec));
        for (peer, spec) in peers.chain(blocks) {
            let n = spec.ranges().len();
            if !spec.fit(netpol_common::MAX_PORT_RANGES) {
                errors.push(PolicyError {
                    policy: ObjectRef::new("", "*"),
                    location: peer,
                    message: format!(
                        "{n} distinct port ranges to one peer, more than the {} the datapath supports; this peer is denied",
                        netpol_common::MAX_PORT_RANGES
                    ),
                });
                spec.clear();
            }
        }
    }

    Plan {
        endpoints,
        rule_sets: rule_sets.into_iter().map(Arc::new).collect(),
        service_ports: service_ports(state),
        identities: index.addresses,
        pod_ranges: pod_ranges(state),
        node_self: node_self(state, node),
        errors,
    }
}

/// The nodes' `podCIDRs`, with every node address cut out (a node's gateway address may
/// lie in its pod range; it is not a pod), and each range's network address (no pod gets
/// it; flannel gives it to the node's VXLAN device).
pub fn pod_ranges(state: &ClusterState) -> BTreeMap<Prefix, bool> {
    let networks =
        (state.nodes.values()).flat_map(|n| n.pod_cidrs.iter().map(|c| Prefix::host(c.network())));
    let nodes: Vec<Prefix> = (state.nodes.values())
        .flat_map(|n| n.ips.iter().map(|ip| Prefix::host(*ip)))
        .chain(networks)
        .collect();
    let grants: Vec<Grant> = (state.nodes.values())
        .flat_map(|n| n.pod_cidrs.iter())
        .map(|net| Grant::from_net(*net, nodes.clone(), PortSpec::All))
        .collect();
    (prefix::union(&grants).into_iter())
        .map(|(p, ports)| (p, !ports.is_none()))
        .collect()
}

/// The unknown pod of `netpol_common::IDENTITY_UNKNOWN_POD`.
pub static UNKNOWN_POD: std::sync::LazyLock<Arc<Identity>> =
    std::sync::LazyLock::new(|| Arc::new(Identity::unknown_pod()));

/// `Plan::identity_of`, from its parts.
pub fn peer_identity<'a>(
    identities: &'a BTreeMap<IpAddr, Arc<Identity>>,
    pod_ranges: &BTreeMap<Prefix, bool>,
    peer: IpAddr,
    own_node: bool,
) -> Option<&'a Identity> {
    match identities.get(&peer) {
        Some(i) => Some(i),
        None if !own_node && prefix::lookup(pod_ranges, peer) == Some(&true) => {
            Some(&**UNKNOWN_POD)
        }
        None => None,
    }
}

fn service_ports(state: &ClusterState) -> BTreeSet<ServicePort> {
    state
        .services
        .values()
        .flat_map(|s| {
            s.ips.iter().flat_map(|ip| {
                s.ports.iter().map(|(protocol, port)| ServicePort {
                    ip: *ip,
                    protocol: *protocol,
                    port: *port,
                })
            })
        })
        .collect()
}

/// Validates what decides which pods a policy isolates. A policy whose own selector or
/// types are invalid still isolates (its whole namespace, if the selector is the problem,
/// for the types it lists) and allows nothing through the invalid part.
fn check_policy<'a>(
    key: &'a ObjectRef,
    policy: &'a NetworkPolicy,
    errors: &mut Vec<PolicyError>,
) -> CompiledPolicy<'a> {
    let head = validate::check_head(key, policy, errors);
    if !head.rules_valid {
        return CompiledPolicy {
            key,
            selects: head.selects,
            types: head.types,
            audit: head.audit,
            rules_valid: false,
            ingress: Vec::new(),
            egress: Vec::new(),
        };
    }
    let (ingress, egress) = rules_of_policy(key, policy);
    CompiledPolicy {
        key,
        selects: head.selects,
        types: head.types,
        audit: head.audit,
        rules_valid: true,
        ingress,
        egress,
    }
}

/// One rule of a policy, either direction, with what its grants depend on.
struct Rule<'a> {
    peers: Option<&'a Vec<NetworkPolicyPeer>>,
    ports: Option<&'a Vec<NetworkPolicyPort>>,
    /// The rule's text: rules alike resolve alike.
    content: String,
    /// A peer is relative to the policy's namespace (a podSelector without a
    /// namespaceSelector).
    namespaced: bool,
    /// A port is named: on ingress it resolves on each subject pod.
    named_ports: bool,
    /// What the datapath names it by.
    tag: RuleTag,
}

impl<'a> Rule<'a> {
    fn new(
        peers: Option<&'a Vec<NetworkPolicyPeer>>,
        ports: Option<&'a Vec<NetworkPolicyPort>>,
        tag: RuleRef,
    ) -> Self {
        // A rule that cannot be written out is its own (unique) content.
        let content = serde_json::to_string(&(peers, ports)).unwrap_or_else(|_| tag.to_string());
        let namespaced = peers
            .iter()
            .flat_map(|p| p.iter())
            .any(|p| p.ip_block.is_none() && p.namespace_selector.is_none());
        let named_ports = ports
            .iter()
            .flat_map(|p| p.iter())
            .any(|p| matches!(p.port, Some(IntOrString::String(_))));
        Rule {
            peers,
            ports,
            content,
            namespaced,
            named_ports,
            tag: Arc::new(tag),
        }
    }
}

impl<'a> CompiledPolicy<'a> {
    fn rules(&self, dir: Direction) -> &[Rule<'a>] {
        if !self.rules_valid {
            return &[];
        }
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

fn rules_of_policy<'a>(
    key: &ObjectRef,
    policy: &'a NetworkPolicy,
) -> (Vec<Rule<'a>>, Vec<Rule<'a>>) {
    let spec = policy.spec.as_ref();
    let ingress = spec
        .and_then(|s| s.ingress.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            Rule::new(
                r.from.as_ref(),
                r.ports.as_ref(),
                RuleRef::np(key.clone(), Direction::Ingress, i),
            )
        })
        .collect();
    let egress = spec
        .and_then(|s| s.egress.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            Rule::new(
                r.to.as_ref(),
                r.ports.as_ref(),
                RuleRef::np(key.clone(), Direction::Egress, i),
            )
        })
        .collect();
    (ingress, egress)
}

/// What the rules of one direction are resolved against.
struct RulesOf<'a> {
    state: &'a ClusterState,
    index: &'a PodIndex<'a>,
    dir: Direction,
    /// The local pod the rule set is for; named ports of ingress rules resolve on it.
    subject: &'a PodInfo,
}

/// Everything a rule's grants depend on: its text, its place (errors name it), the
/// policy's namespace where a peer is relative to it, and the subject's ports where an
/// ingress port is named. The same rule in the policies of many namespaces (a "from
/// every namespace" rule, say) is resolved once.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct RuleKey<'a> {
    dir: Direction,
    index: usize,
    content: &'a str,
    namespace: Option<&'a str>,
    subject_ports: Option<&'a [crate::state::ContainerPort]>,
}

/// What one rule allows: peer identities, and address blocks (with their excepts).
#[derive(Default)]
struct RuleGrants {
    peers: Vec<(Arc<Identity>, PortSpec)>,
    blocks: Vec<Grant>,
}

/// A rule's grants, or (location, message) of why it allows nothing.
type RuleResult = Result<RuleGrants, (String, String)>;

#[derive(Default)]
struct RuleCache<'a> {
    slots: BTreeMap<RuleKey<'a>, usize>,
    results: Vec<RuleResult>,
}

impl<'a> RuleCache<'a> {
    /// The slot of rule `index` of `p`, resolved on first use.
    fn resolve(
        &mut self,
        rules_of: &RulesOf<'a>,
        p: &'a CompiledPolicy<'a>,
        index: usize,
        rule: &'a Rule<'a>,
    ) -> usize {
        let dir = rules_of.dir;
        let key = RuleKey {
            dir,
            index,
            content: &rule.content,
            namespace: rule.namespaced.then_some(p.key.namespace.as_str()),
            subject_ports: (dir == Direction::Ingress && rule.named_ports)
                .then_some(rules_of.subject.ports.as_slice()),
        };
        if let Some(slot) = self.slots.get(&key) {
            return *slot;
        }
        let input = RuleInput {
            rules_of,
            namespace: &p.key.namespace,
        };
        let result = input.grants(
            rule.peers.map(Vec::as_slice),
            rule.ports.map(Vec::as_slice),
            &format!("{dir}[{index}]"),
        );
        self.results.push(result);
        self.slots.insert(key, self.results.len() - 1);
        self.results.len() - 1
    }
}

struct RuleInput<'a> {
    rules_of: &'a RulesOf<'a>,
    /// The policy's namespace.
    namespace: &'a str,
}

impl RuleInput<'_> {
    /// Everything about the rule is checked before anything is granted, so a rule with one
    /// bad part contributes nothing.
    fn grants(
        &self,
        peers: Option<&[NetworkPolicyPeer]>,
        ports: Option<&[NetworkPolicyPort]>,
        location: &str,
    ) -> RuleResult {
        let dir = self.rules_of.dir;
        let (peer_items, port_items) = check_rule(peers, ports, dir, location)?;

        let mut grants = RuleGrants::default();
        for peer in &peer_items {
            match peer {
                PeerItem::Pods { namespaces, pods } => {
                    let index = self.rules_of.index;
                    let state = self.rules_of.state;
                    let in_namespaces =
                        index
                            .by_namespace
                            .iter()
                            .filter(|(ns, _)| match namespaces {
                                None => **ns == self.namespace,
                                Some(sel) => sel.matches(&state.namespace_labels(ns)),
                            });
                    for (identity, pod) in in_namespaces.flat_map(|(_, ids)| ids.iter()) {
                        if pods
                            .as_ref()
                            .is_none_or(|sel| sel.matches(&identity.labels))
                        {
                            let ports = self.ports_on(port_items.as_deref(), Some(pod));
                            grants.peers.push((identity.clone(), ports));
                        }
                    }
                }
                PeerItem::Block { cidr, except } => {
                    // Named ports of an egress rule mean a number per destination pod:
                    // the block itself gets the numbered ports, and each pod inside it
                    // gets its own resolution on top.
                    grants.blocks.push(Grant::from_net(
                        *cidr,
                        except.clone(),
                        self.ports_on(port_items.as_deref(), None),
                    ));
                    let has_named = port_items
                        .iter()
                        .flatten()
                        .any(|p| matches!(p, PortItem::Named(..)));
                    if dir == Direction::Egress && has_named {
                        for pod in &self.rules_of.index.pods {
                            for ip in &pod.ips {
                                // ipnet's containment is per family: an IPv6 block
                                // never holds an IPv4 pod.
                                let host = Prefix::host(*ip);
                                if cidr.contains(ip) && !except.iter().any(|e| e.contains(&host)) {
                                    grants.blocks.push(Grant::to_host(
                                        *ip,
                                        self.ports_on(port_items.as_deref(), Some(pod)),
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(grants)
    }

    /// The port spec of a rule towards one peer. `peer_pod` is the destination pod for
    /// egress (None for addresses that are not pods); ingress resolves on the subject.
    fn ports_on(&self, items: Option<&[PortItem]>, peer_pod: Option<&PodInfo>) -> PortSpec {
        let Some(items) = items else {
            return PortSpec::All;
        };
        let resolver = match self.rules_of.dir {
            Direction::Ingress => Some(self.rules_of.subject),
            Direction::Egress => peer_pod,
        };
        resolve_ports(items, resolver)
    }
}

#[cfg(test)]
mod tests;
