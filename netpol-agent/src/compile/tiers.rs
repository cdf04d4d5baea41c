//! ClusterNetworkPolicy's tiers around NetworkPolicy, resolved for one local pod and one
//! direction into ordered tables: which rule decides a peer, port by port. `apply` puts
//! them into the plan as ordered rule sets, in the form the maps hold.
//!
//! Every rule that can decide gets a position, smaller first. The Admin table holds the
//! Admin tier's rules (policies by priority, then name; rules in order). The rest table
//! holds NetworkPolicy's allows (their positions in the pod's rule set) and its default
//! deny when it isolates the pod, else the Baseline tier's rules (which an isolated pod
//! never reaches); and the default allow. For a peer and a port, a table answers with the first position whose rule
//! matches, looked up by the peer's identity and by its address (the smaller of the two),
//! as the datapath looks. The Admin table decides when it answers Accept or Deny; else (a
//! Pass, or no rule) the rest table decides, and it always answers. Two tables, because a
//! Pass must not hide NetworkPolicy's allows behind it. NetworkPolicy's own-node
//! exemption sits between them; the datapath knows the node's addresses, so it is a flag
//! (`Ordered::np_isolated`), not an entry. The Admin table is shared by every set of pods
//! under the same Admin rules (`AdminTable`), so its positions come first in a pod's
//! rule names, before NetworkPolicy's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use netpol_common::{MAX_ORDERED_PORT_RANGES, tag};

use super::allowed::{Allowed, RuleKind, RuleRef, RuleTag};
use super::cached_hash::CachedHash;
use super::cnp_check::{
    Action, CheckedCnp, CnpError, CnpPeer, CnpPort, CnpRule, CnpSubject, Tier, check,
};
use super::ports::{PortSpec, Ports};
use super::prefix::{self, Grant, Prefix};
use super::{
    Direction, Identity, Plan, PlannedEndpoint, PolicyError, Position, RuleSet, RuleSetRef,
};
use crate::state::{ClusterState, ContainerPort, Labels, ObjectRef, PodInfo, Protocol};

/// A rule's place in one table, and what it does. Positions are unique in a table, so
/// the order is theirs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag {
    pub position: u32,
    pub action: Action,
}

/// Rest-table position of what NetworkPolicy allows without naming a rule: the pod's own
/// node, and ranges merged to fit.
pub const NP_UNNAMED: u32 = 0;
/// Rest-table position of the default allow: no rule of any tier or policy matched.
pub const DEFAULT: u32 = u32::MAX;

/// Rules by peer identity and by address (longest-prefix entries), each port naming the
/// first rule that matches it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagTable {
    pub peers: BTreeMap<Arc<Identity>, Allowed<Tag>>,
    pub blocks: BTreeMap<Prefix, Allowed<Tag>>,
}

impl TagTable {
    /// The first rule matching the peer on `protocol`/`port`.
    pub fn first(
        &self,
        identity: Option<&Identity>,
        peer: IpAddr,
        protocol: crate::state::Protocol,
        port: u16,
    ) -> Option<Tag> {
        let by_identity = identity
            .and_then(|i| self.peers.get(i))
            .and_then(|a| a.rule_for(protocol, port));
        let by_address =
            prefix::lookup(&self.blocks, peer).and_then(|a| a.rule_for(protocol, port));
        by_identity.into_iter().chain(by_address).min().copied()
    }
}

/// A rule of a ClusterNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CnpRuleRef {
    pub policy: String,
    pub tier: Tier,
    /// The rule's name, or `ingress[N]`/`egress[N]`.
    pub rule: String,
    /// Its index among the policy's rules of its direction.
    pub index: usize,
}

impl fmt::Display for CnpRuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ClusterNetworkPolicy {} ({:?} tier) rule {}",
            self.policy, self.tier, self.rule
        )
    }
}

/// What decides one direction of one local pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tiered {
    pub admin: TagTable,
    pub rest: TagTable,
    /// Admin-table position `k` is `admin_rules[k - 1]`.
    pub admin_rules: Vec<CnpRuleRef>,
    /// Rest-table positions of NetworkPolicy's rules: `1..=np_rules`.
    pub np_rules: u32,
    /// NetworkPolicy isolates the pod in this direction: position `np_rules + 1` is its
    /// default deny.
    pub isolated: bool,
    /// Rest-table position `np_rules + 2 + k` is `baseline_rules[k]`.
    pub baseline_rules: Vec<CnpRuleRef>,
}

/// Who decided, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Admin(Action, CnpRuleRef),
    /// NetworkPolicy allows, by the rule at this position of the pod's rule set
    /// (`NP_UNNAMED`: none named).
    NetworkPolicy(Position),
    /// NetworkPolicy isolates the pod and none of its rules allows.
    Isolated,
    /// A Baseline rule (Pass ends the tier, and the default allow follows).
    Baseline(Action, CnpRuleRef),
    Default,
}

impl Decision {
    pub fn allows(&self) -> bool {
        match self {
            Decision::Admin(a, _) => *a == Action::Accept,
            Decision::NetworkPolicy(_) | Decision::Default => true,
            Decision::Isolated => false,
            Decision::Baseline(a, _) => *a != Action::Deny,
        }
    }
}

impl Tiered {
    /// `own_node`: the peer is an address of the pod's node (NetworkPolicy's exemption
    /// applies after the Admin tier).
    pub fn decide(
        &self,
        identity: Option<&Identity>,
        peer: IpAddr,
        protocol: crate::state::Protocol,
        port: u16,
        own_node: bool,
    ) -> Decision {
        if let Some(t) = self.admin.first(identity, peer, protocol, port)
            && t.action != Action::Pass
            && let Some(r) = (t.position as usize)
                .checked_sub(1)
                .and_then(|i| self.admin_rules.get(i))
        {
            return Decision::Admin(t.action, r.clone());
        }
        if self.isolated && own_node {
            return Decision::NetworkPolicy(NP_UNNAMED);
        }
        let Some(t) = self.rest.first(identity, peer, protocol, port) else {
            return Decision::Default;
        };
        let deny = self.np_rules + 1;
        match t.position {
            DEFAULT => Decision::Default,
            p if p <= self.np_rules => Decision::NetworkPolicy(p),
            p if p == deny => Decision::Isolated,
            p => match self.baseline_rules.get((p - deny - 1) as usize) {
                Some(r) => Decision::Baseline(t.action, r.clone()),
                None => Decision::Default,
            },
        }
    }
}

/// What an ordered rule set holds besides its rest table (`RuleSet::peers`, `blocks`):
/// its Admin table, and whether NetworkPolicy's own-node exemption applies. Values are
/// tags (`netpol_common::tag`) whose positions are the pod's rule positions: its Admin
/// rules, its NetworkPolicy rules, NetworkPolicy's default deny, then its Baseline rules
/// (see `names`). The Admin rules come first so that their positions do not depend on the
/// pod's NetworkPolicy: pods under the same Admin rules share one Admin table.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ordered {
    /// None: no Admin rule applies.
    pub admin: Option<Arc<AdminTable>>,
    pub np_isolated: bool,
}

/// An Admin table in the maps' form. It is written once under an id of its own, and every
/// ordered set of pods under the same Admin rules points at it (`ADMIN_TABLES`): with ten
/// policies over a cluster, a copy per set was most of the identity map.
///
/// Its fields are not changed once it is in a `Plan`: its hash is kept at first use.
#[derive(Clone, Default)]
pub struct AdminTable {
    pub peers: BTreeMap<Arc<Identity>, Allowed<Position>>,
    pub blocks: BTreeMap<Prefix, Allowed<Position>>,
    hash: CachedHash,
}

impl AdminTable {
    pub fn new(
        peers: BTreeMap<Arc<Identity>, Allowed<Position>>,
        blocks: BTreeMap<Prefix, Allowed<Position>>,
    ) -> Self {
        AdminTable {
            peers,
            blocks,
            hash: CachedHash::default(),
        }
    }

    #[allow(clippy::type_complexity)]
    fn fields(
        &self,
    ) -> (
        &BTreeMap<Arc<Identity>, Allowed<Position>>,
        &BTreeMap<Prefix, Allowed<Position>>,
    ) {
        (&self.peers, &self.blocks)
    }

    pub fn len(&self) -> usize {
        self.peers.len() + self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first tag matching the peer (`tag::NONE`: none), as the datapath reads it.
    pub fn first(
        &self,
        identity: Option<&Identity>,
        peer: IpAddr,
        protocol: crate::state::Protocol,
        port: u16,
    ) -> u32 {
        first_tag(&self.peers, &self.blocks, identity, peer, protocol, port)
    }
}

impl fmt::Debug for AdminTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminTable")
            .field("peers", &self.peers)
            .field("blocks", &self.blocks)
            .finish()
    }
}

super::cached_hash::by_fields!(AdminTable);

/// The first tag of a table matching the peer by identity or by address (the smaller);
/// `tag::NONE` when none does. What the datapath's `first_rule` answers.
pub fn first_tag(
    peers: &BTreeMap<Arc<Identity>, Allowed<Position>>,
    blocks: &BTreeMap<Prefix, Allowed<Position>>,
    identity: Option<&Identity>,
    peer: IpAddr,
    protocol: crate::state::Protocol,
    port: u16,
) -> u32 {
    let by_identity = identity
        .and_then(|i| peers.get(i))
        .and_then(|a| a.rule_for(protocol, port));
    let by_address = prefix::lookup(blocks, peer).and_then(|a| a.rule_for(protocol, port));
    by_identity
        .into_iter()
        .chain(by_address)
        .min()
        .copied()
        .unwrap_or(tag::NONE)
}

fn action_code(a: Action) -> u32 {
    match a {
        Action::Accept => tag::ACCEPT,
        Action::Deny => tag::DENY,
        Action::Pass => tag::PASS,
    }
}

/// A table's entries by identity and by address, as a rule set holds them.
type Entries = (
    BTreeMap<Arc<Identity>, Allowed<Position>>,
    BTreeMap<Prefix, Allowed<Position>>,
);

/// A table in the maps' form, each tag renumbered by `position`; None when an entry needs
/// more port ranges than the datapath scans (ranges of different rules cannot merge
/// without changing which rule decides).
fn encode(t: &TagTable, position: impl Fn(u32) -> u32) -> Option<Entries> {
    // A range no rule names cannot happen here (every NetworkPolicy allow became a tag);
    // were it to, it denies.
    let f = |t: Option<&Tag>| match t {
        Some(t) => tag::new(position(t.position), action_code(t.action)),
        None => tag::new(0, tag::DENY),
    };
    let fits = |a: &Allowed<Position>| a.ranges().len() <= MAX_ORDERED_PORT_RANGES;
    let peers: BTreeMap<_, _> = (t.peers.iter())
        .map(|(i, a)| (i.clone(), a.renamed(f)))
        .collect();
    let blocks: BTreeMap<_, _> = (t.blocks.iter()).map(|(p, a)| (*p, a.renamed(f))).collect();
    (peers.values().all(fits) && blocks.values().all(fits)).then_some((peers, blocks))
}

impl Tiered {
    /// Whether any ClusterNetworkPolicy rule applies: else NetworkPolicy's set decides
    /// alone, as it would without the tiers.
    pub fn has_cluster_rules(&self) -> bool {
        !self.admin_rules.is_empty() || !self.baseline_rules.is_empty()
    }

    /// Whether the direction needs an ordered set: an Admin rule applies, or a Baseline
    /// rule can decide (NetworkPolicy does not isolate the pod). Else NetworkPolicy's own
    /// set decides the same, and is shared with the pods that have it.
    pub fn needs_ordered_set(&self) -> bool {
        !self.admin_rules.is_empty() || (!self.isolated && !self.baseline_rules.is_empty())
    }

    /// The ordered rule set of this direction; None when it does not fit the datapath.
    pub fn rule_set(&self) -> Option<RuleSet> {
        let admin_rules = self.admin_rules.len() as u32;
        let (peers, blocks) = encode(&self.rest, |p| match p {
            DEFAULT => tag::LAST_POSITION,
            NP_UNNAMED => NP_UNNAMED,
            p => p.saturating_add(admin_rules).min(tag::LAST_POSITION - 1),
        })?;
        let (admin_peers, admin_blocks) = encode(&self.admin, |k| k.min(tag::LAST_POSITION - 1))?;
        let admin = (!admin_peers.is_empty() || !admin_blocks.is_empty())
            .then(|| Arc::new(AdminTable::new(admin_peers, admin_blocks)));
        let mut set = RuleSet::new(peers, blocks);
        set.ordered = Some(Ordered {
            admin,
            np_isolated: self.isolated,
        });
        Some(set)
    }

    /// What the positions of `rule_set` name: its Admin rules, the pod's NetworkPolicy
    /// rules `np`, NetworkPolicy's default deny, its Baseline rules.
    pub fn names(&self, np: &[RuleTag], dir: Direction, isolated_by: &[ObjectRef]) -> Vec<RuleTag> {
        let cluster = |r: &CnpRuleRef, kind| {
            Arc::new(RuleRef {
                policy: ObjectRef::new("", &r.policy),
                direction: dir,
                index: r.index,
                kind,
            })
        };
        let mut out: Vec<RuleTag> = (self.admin_rules.iter())
            .map(|r| cluster(r, RuleKind::Admin))
            .collect();
        out.extend_from_slice(np);
        out.push(Arc::new(RuleRef {
            policy: (isolated_by.first().cloned()).unwrap_or_else(|| ObjectRef::new("", "")),
            direction: dir,
            index: 0,
            kind: RuleKind::Isolation,
        }));
        out.extend(
            self.baseline_rules
                .iter()
                .map(|r| cluster(r, RuleKind::Baseline)),
        );
        out
    }
}

/// Puts ClusterNetworkPolicy into `plan` (compiled from NetworkPolicy alone): each local
/// pod direction that a ClusterNetworkPolicy rule can decide gets an ordered rule set and
/// its rule names (`Tiered::needs_ordered_set`). A set that does not fit the datapath denies everything in that
/// direction, and is reported.
pub fn apply(state: &ClusterState, plan: &mut Plan) {
    if state.cluster_policies.is_empty() {
        return;
    }
    let tables = resolve(state, plan);
    let mut interned: BTreeMap<RuleSet, RuleSetRef> = BTreeMap::new();
    let mut admin_tables: HashSet<Arc<AdminTable>> = HashSet::new();
    for i in 0..plan.endpoints.len() {
        for dir in [Direction::Ingress, Direction::Egress] {
            let ep = &plan.endpoints[i];
            let Some(t) = tables.get(&(ep.pod.clone(), dir)) else {
                continue;
            };
            if !t.needs_ordered_set() {
                continue;
            }
            let isolated_by = match dir {
                Direction::Ingress => &ep.isolated_by.ingress,
                Direction::Egress => &ep.isolated_by.egress,
            };
            let names = Arc::new(t.names(ep.rules.of(dir), dir, isolated_by));
            let mut set = t.rule_set().unwrap_or_else(|| {
                plan.errors.push(PolicyError {
                    policy: ObjectRef::new("", "ClusterNetworkPolicy"),
                    location: format!("{} {dir}", ep.pod),
                    message: format!(
                        "the tiers of this pod need more than {MAX_ORDERED_PORT_RANGES} port ranges for one peer; it is denied everything in this direction"
                    ),
                });
                RuleSet {
                    ordered: Some(Ordered::default()),
                    ..Default::default()
                }
            });
            // One `Arc` per distinct Admin table: the sets sharing it compare it, and the
            // programmer writes it, once.
            if let Some(o) = &mut set.ordered
                && let Some(admin) = &mut o.admin
            {
                match admin_tables.get(&**admin) {
                    Some(shared) => *admin = shared.clone(),
                    None => {
                        admin_tables.insert(admin.clone());
                    }
                }
            }
            let r = match interned.get(&set) {
                Some(r) => *r,
                None => {
                    plan.rule_sets.push(Arc::new(set.clone()));
                    let r = RuleSetRef(plan.rule_sets.len() - 1);
                    interned.insert(set, r);
                    r
                }
            };
            let ep = &mut plan.endpoints[i];
            match dir {
                Direction::Ingress => {
                    ep.ingress = Some(r);
                    ep.rules.ingress = names;
                }
                Direction::Egress => {
                    ep.egress = Some(r);
                    ep.rules.egress = names;
                }
            }
        }
    }
}

/// The tiers of every local pod of `plan` (as NetworkPolicy alone compiled it) that a
/// ClusterNetworkPolicy selects, per direction. Pods alike in what the tables depend on
/// (their NetworkPolicy set and rule count, their named ports, the policies selecting
/// them: the replicas of a deployment) share one computation.
pub fn resolve(state: &ClusterState, plan: &Plan) -> BTreeMap<(ObjectRef, Direction), Tiered> {
    let mut policies: Vec<CheckedCnp> = (state.cluster_policies.values())
        .map(|p| check(p).0)
        .collect();
    policies.sort_by(|a, b| a.order().cmp(&b.order()));
    let peers = Peers::new(state, plan);
    let mut tables = TierTables::default();
    let mut out = BTreeMap::new();
    type Alike<'a> = (
        Direction,
        Option<super::RuleSetRef>,
        usize,
        &'a [ContainerPort],
        Vec<usize>,
    );
    let mut done: HashMap<Alike, Tiered> = HashMap::new();
    for ep in &plan.endpoints {
        let Some(pod) = state.pods.get(&ep.pod).filter(|p| p.is_policy_subject()) else {
            continue;
        };
        let ns_labels = state.namespace_labels(&ep.pod.namespace);
        let selecting: Vec<(usize, &CheckedCnp)> = (policies.iter().enumerate())
            .filter(|(_, p)| selects(&p.subject, &ns_labels, pod))
            .collect();
        if selecting.is_empty() {
            continue;
        }
        let indexes: Vec<usize> = selecting.iter().map(|(i, _)| *i).collect();
        for dir in [Direction::Ingress, Direction::Egress] {
            let set = match dir {
                Direction::Ingress => ep.ingress,
                Direction::Egress => ep.egress,
            };
            let key = (
                dir,
                set,
                ep.rules.of(dir).len(),
                &pod.ports[..],
                indexes.clone(),
            );
            let t = done.entry(key).or_insert_with(|| {
                tiered((state, &peers), plan, ep, pod, dir, &selecting, &mut tables)
            });
            out.insert((ep.pod.clone(), dir), t.clone());
        }
    }
    out
}

/// Every identity, with its namespace's labels.
struct Peers {
    identities: Vec<(Arc<Identity>, Labels)>,
}

impl Peers {
    /// The identities of every policy subject in the cluster, as NetworkPolicy's rule
    /// sets see them: whether a pod holds an address (or lost it to another pod holding
    /// the same one) changes no table, so a change that only moves addresses between
    /// pods of known identities leaves every table as it was (`Compiler` relies on it).
    /// The plan's own values are reused where it has them, so identities stay shared.
    fn new(state: &ClusterState, plan: &Plan) -> Self {
        let shared: HashMap<&Identity, &Arc<Identity>> =
            plan.identities.values().map(|a| (&**a, a)).collect();
        let mut seen: HashSet<(&str, &Labels, &[ContainerPort])> = HashSet::new();
        let identities = (state.pods.iter())
            .filter(|(_, p)| p.is_policy_subject())
            .filter(|(r, p)| seen.insert((r.namespace.as_str(), &p.labels, &p.ports[..])))
            .map(|(r, p)| {
                let identity =
                    Identity::new(r.namespace.clone(), p.labels.clone(), p.ports.clone());
                let arc = match shared.get(&identity) {
                    Some(a) => (*a).clone(),
                    None => Arc::new(identity),
                };
                let ns_labels = state.namespace_labels(&r.namespace);
                (arc, ns_labels)
            })
            .collect();
        Peers { identities }
    }
}

fn selects(s: &CnpSubject, ns_labels: &Labels, pod: &PodInfo) -> bool {
    match s {
        CnpSubject::Namespaces(sel) => sel.matches(ns_labels),
        CnpSubject::Pods { namespaces, pods } => {
            namespaces.matches(ns_labels) && pods.matches(&pod.labels)
        }
    }
}

/// Rules of one table under construction.
#[derive(Default)]
struct Builder {
    peers: BTreeMap<Arc<Identity>, Allowed<Tag>>,
    grants: Vec<Grant<Allowed<Tag>>>,
}

impl Builder {
    /// Adds a rule at `tag`; named ports resolve on the destination: the peer for egress,
    /// the subject (`own_ports`) for ingress.
    fn add_rule(
        &mut self,
        state: &ClusterState,
        peers: &Peers,
        rule: &CnpRule,
        tag: Tag,
        dir: Direction,
        own_ports: &[ContainerPort],
    ) {
        let own = ports_of(rule.ports.as_deref(), own_ports);
        // Without named ports, every destination gets the same ports: computed once.
        let named = (rule.ports.iter().flatten()).any(|p| matches!(p, CnpPort::Named(_)));
        let by_number = (!named).then(|| ports_of(rule.ports.as_deref(), &[]));
        // A pod the agent cannot name: each Deny or Pass rule that selects pods may be
        // about it, and denies it (a Pass would skip the Deny rules after it); no Accept
        // rule is about it. Fail closed.
        let selects_pods =
            (rule.peers.iter()).any(|p| matches!(p, CnpPeer::Namespaces(_) | CnpPeer::Pods { .. }));
        if selects_pods && tag.action != Action::Accept {
            let ports = match dir {
                Direction::Egress => ports_of_unknown(rule.ports.as_deref()),
                Direction::Ingress => own.clone(),
            };
            let deny = Tag {
                action: Action::Deny,
                ..tag
            };
            if !ports.is_none() {
                (self.peers.entry(super::UNKNOWN_POD.clone()).or_default())
                    .add(&Allowed::by(&ports, &deny));
            }
        }
        for peer in &rule.peers {
            match peer {
                CnpPeer::Namespaces(_) | CnpPeer::Pods { .. } => {
                    for (identity, ns_labels) in &peers.identities {
                        let matches = match peer {
                            CnpPeer::Namespaces(sel) => sel.matches(ns_labels),
                            CnpPeer::Pods { namespaces, pods } => {
                                namespaces.matches(ns_labels) && pods.matches(&identity.labels)
                            }
                            _ => false,
                        };
                        if !matches {
                            continue;
                        }
                        let ports = match (dir, &by_number) {
                            (Direction::Egress, Some(ports)) => ports.clone(),
                            (Direction::Egress, None) => {
                                ports_of(rule.ports.as_deref(), &identity.ports)
                            }
                            (Direction::Ingress, _) => own.clone(),
                        };
                        if !ports.is_none() {
                            (self.peers.entry(identity.clone()).or_default())
                                .add(&Allowed::by(&ports, &tag));
                        }
                    }
                }
                // Named ports never stand beside these (`cnp_check` refuses the rule).
                CnpPeer::Networks(nets) => {
                    for net in nets {
                        let g = Grant::from_net(*net, Vec::new(), PortSpec::All);
                        self.grants.push(g.with_ports(Allowed::by(&own, &tag)));
                    }
                }
                CnpPeer::Nodes(sel) => {
                    for node in state.nodes.values().filter(|n| sel.matches(&n.labels)) {
                        for ip in &node.ips {
                            let g = Grant::to_host(*ip, PortSpec::All);
                            self.grants.push(g.with_ports(Allowed::by(&own, &tag)));
                        }
                    }
                }
                CnpPeer::Everything => self.grants.push(everything(Allowed::by(&own, &tag))),
            }
        }
    }

    fn build(self) -> TagTable {
        TagTable {
            peers: self.peers,
            blocks: prefix::union(&self.grants),
        }
    }
}

/// A grant to every address, IPv4 and IPv6.
fn everything(ports: Allowed<Tag>) -> Grant<Allowed<Tag>> {
    Grant {
        prefix: Prefix::all_v6(),
        except: Vec::new(),
        ports,
    }
}

/// The ports a rule's `protocols` match on a destination with `named` container ports.
fn ports_of(list: Option<&[CnpPort]>, named: &[ContainerPort]) -> PortSpec {
    let Some(list) = list else {
        return PortSpec::All;
    };
    let mut spec = PortSpec::none();
    for p in list {
        let ranges: Vec<Ports> = match p {
            CnpPort::Ports { protocol, range } => vec![match range {
                None => Ports::all_of(*protocol),
                Some((first, last)) => Ports {
                    protocol: *protocol,
                    first: *first,
                    last: *last,
                },
            }],
            CnpPort::Named(name) => (named.iter())
                .filter(|c| c.name.as_deref() == Some(name.as_str()))
                .map(|c| Ports::one(c.protocol, c.port))
                .collect(),
        };
        spec.add(&PortSpec::from_ranges(ranges));
    }
    spec
}

/// `ports_of` for a destination whose named ports are unknown: a named port may be any
/// port of any protocol.
fn ports_of_unknown(list: Option<&[CnpPort]>) -> PortSpec {
    let Some(list) = list else {
        return PortSpec::All;
    };
    let mut spec = PortSpec::none();
    for p in list {
        spec.add(&match p {
            CnpPort::Named(_) => PortSpec::from_ranges(
                [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
                    .map(Ports::all_of)
                    .to_vec(),
            ),
            CnpPort::Ports { .. } => ports_of(Some(std::slice::from_ref(p)), &[]),
        });
    }
    spec
}

/// One tier's table for a set of policies, positions from 1 in their order, with the
/// rules they name; what it depends on is `TierKey`.
#[derive(Clone)]
struct TierTable {
    table: TagTable,
    rules: Vec<CnpRuleRef>,
}

/// (direction, the tier's policies selecting the pod (indexes), the pod's named ports
/// when they matter (ingress)).
type TierKey = (Direction, Vec<usize>, Vec<ContainerPort>);

/// Tier tables already built: pods selected by the same policies share them, whatever
/// their NetworkPolicy.
#[derive(Default)]
struct TierTables {
    built: HashMap<(Tier, TierKey), TierTable>,
}

impl TierTables {
    fn get(
        &mut self,
        ctx: (&ClusterState, &Peers),
        tier: Tier,
        dir: Direction,
        selecting: &[(usize, &CheckedCnp)],
        own_ports: &[ContainerPort],
    ) -> TierTable {
        let of_tier: Vec<(usize, &CheckedCnp)> = (selecting.iter())
            .filter(|(_, p)| p.tier == tier)
            .copied()
            .collect();
        let ports = match dir {
            Direction::Ingress => own_ports.to_vec(),
            Direction::Egress => Vec::new(),
        };
        let key = (
            tier,
            (dir, of_tier.iter().map(|(i, _)| *i).collect(), ports),
        );
        let (state, peers) = ctx;
        (self.built.entry(key))
            .or_insert_with(|| tier_table(state, peers, tier, dir, &of_tier, own_ports))
            .clone()
    }
}

/// The table of `policies` (one tier's, in order) for a pod with named ports `own_ports`.
fn tier_table(
    state: &ClusterState,
    peers: &Peers,
    tier: Tier,
    dir: Direction,
    policies: &[(usize, &CheckedCnp)],
    own_ports: &[ContainerPort],
) -> TierTable {
    let mut b = Builder::default();
    let mut rules = Vec::new();
    for (_, p) in policies {
        let of_dir = match dir {
            Direction::Ingress => &p.ingress,
            Direction::Egress => &p.egress,
        };
        for (index, r) in of_dir.iter().enumerate() {
            rules.push(CnpRuleRef {
                policy: p.name.clone(),
                tier,
                rule: r.name.clone(),
                index,
            });
            let tag = Tag {
                position: rules.len() as u32,
                action: r.action,
            };
            b.add_rule(state, peers, r, tag, dir, own_ports);
        }
    }
    TierTable {
        table: b.build(),
        rules,
    }
}

/// `t` with every position moved up by `by`.
fn shifted(t: &TagTable, by: u32) -> TagTable {
    let f = |tag: Option<&Tag>| match tag {
        Some(t) => Tag {
            position: t.position + by,
            action: t.action,
        },
        // Not made by `tier_table` (every range it writes names its rule).
        None => Tag {
            position: 0,
            action: Action::Deny,
        },
    };
    TagTable {
        peers: (t.peers.iter())
            .map(|(i, a)| (i.clone(), a.renamed(f)))
            .collect(),
        blocks: (t.blocks.iter()).map(|(p, a)| (*p, a.renamed(f))).collect(),
    }
}

fn tiered(
    ctx: (&ClusterState, &Peers),
    plan: &Plan,
    ep: &PlannedEndpoint,
    pod: &PodInfo,
    dir: Direction,
    selecting: &[(usize, &CheckedCnp)],
    tables: &mut TierTables,
) -> Tiered {
    let admin = tables.get(ctx, Tier::Admin, dir, selecting, &pod.ports);
    let baseline = tables.get(ctx, Tier::Baseline, dir, selecting, &pod.ports);

    // NetworkPolicy: its rule set as compiled, every allow an Accept at its position, its
    // default deny next; then the Baseline rules; then the default allow.
    let set = match dir {
        Direction::Ingress => ep.ingress,
        Direction::Egress => ep.egress,
    };
    let np_rules = ep.rules.of(dir).len() as u32;
    let accept = |p: Option<&Position>| Tag {
        position: p.copied().unwrap_or(NP_UNNAMED),
        action: Action::Accept,
    };
    let mut np = TagTable::default();
    let mut last = vec![everything(Allowed::by(
        &PortSpec::All,
        &Tag {
            position: DEFAULT,
            action: Action::Accept,
        },
    ))];
    if let Some(set) = set.map(|s| plan.rule_set(s)) {
        np.peers = (set.peers.iter())
            .map(|(i, a)| (i.clone(), a.renamed(accept)))
            .collect();
        np.blocks = (set.blocks.iter())
            .map(|(p, a)| (*p, a.renamed(accept)))
            .collect();
        let deny = Tag {
            position: np_rules + 1,
            action: Action::Deny,
        };
        last.push(everything(Allowed::by(&PortSpec::All, &deny)));
    }
    // A pod NetworkPolicy isolates never reaches the Baseline tier (its default deny
    // matches every peer first): its rest table leaves the Baseline entries out.
    let mut rest = match set {
        Some(_) => TagTable::default(),
        None => shifted(&baseline.table, np_rules + 1),
    };
    for (identity, a) in np.peers {
        rest.peers.entry(identity).or_default().add(&a);
    }
    let last = prefix::union(&last);
    rest.blocks = prefix::merge(&np.blocks, &prefix::merge(&rest.blocks, &last));
    Tiered {
        admin: admin.table,
        rest,
        admin_rules: admin.rules,
        np_rules,
        isolated: set.is_some(),
        baseline_rules: baseline.rules,
    }
}

/// Two policies of one tier and priority that select a common pod and have rules of
/// different actions in one direction: the one first by name decides where both match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub tier: Tier,
    pub priority: u16,
    /// Decides first (its name sorts first).
    pub first: String,
    pub second: String,
    pub direction: Direction,
    /// How many pods both select.
    pub pods: usize,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} and {} ({:?} tier, both priority {}) select {} pod(s) in common with {} rules of different actions: where both match, {} decides (equal priorities are ordered by name)",
            self.first,
            self.second,
            self.tier,
            self.priority,
            self.pods,
            self.direction,
            self.first
        )
    }
}

/// Every conflict between `policies` (as checked) of equal tier and priority (a
/// conservative reading: their rules' peers are not compared).
pub fn conflicts(state: &ClusterState, policies: &[CheckedCnp]) -> Vec<Conflict> {
    let mut policies: Vec<&CheckedCnp> = policies.iter().collect();
    policies.sort_by(|a, b| a.order().cmp(&b.order()));
    let subjects: Vec<BTreeMap<&ObjectRef, ()>> = (policies.iter())
        .map(|p| {
            (state.pods.iter())
                .filter(|(r, pod)| {
                    pod.is_policy_subject()
                        && selects(&p.subject, &state.namespace_labels(&r.namespace), pod)
                })
                .map(|(r, _)| (r, ()))
                .collect()
        })
        .collect();
    let actions = |p: &CheckedCnp, dir: Direction| -> Vec<Action> {
        let rules = match dir {
            Direction::Ingress => &p.ingress,
            Direction::Egress => &p.egress,
        };
        let mut a: Vec<Action> = rules.iter().map(|r| r.action).collect();
        a.sort();
        a.dedup();
        a
    };
    let mut out = Vec::new();
    for (i, a) in policies.iter().enumerate() {
        for (j, b) in policies.iter().enumerate().skip(i + 1) {
            if (a.tier, a.refused, a.priority) != (b.tier, b.refused, b.priority) {
                break;
            }
            let pods = subjects[i]
                .keys()
                .filter(|r| subjects[j].contains_key(*r))
                .count();
            if pods == 0 {
                continue;
            }
            for dir in [Direction::Ingress, Direction::Egress] {
                let (x, y) = (actions(a, dir), actions(b, dir));
                let differ = x.iter().any(|ax| y.iter().any(|ay| ax != ay));
                if differ {
                    out.push(Conflict {
                        tier: a.tier,
                        priority: a.priority,
                        first: a.name.clone(),
                        second: b.name.clone(),
                        direction: dir,
                        pods,
                    });
                }
            }
        }
    }
    out
}

/// Every ClusterNetworkPolicy of `state` as checked, sorted by name, with its errors and
/// the conflicts it is part of.
pub fn status(state: &ClusterState) -> Vec<crate::status::ClusterPolicyStatus> {
    let (checked, errors): (Vec<CheckedCnp>, Vec<Vec<CnpError>>) =
        state.cluster_policies.values().map(check).unzip();
    let conflicts = conflicts(state, &checked);
    (checked.into_iter().zip(errors))
        .map(|(checked, errors)| {
            let name = checked.name;
            crate::status::ClusterPolicyStatus {
                tier: format!("{:?}", checked.tier),
                priority: checked.priority,
                errors: (errors.iter())
                    .map(|e| format!("{}: {}", e.location, e.message))
                    .collect(),
                conflicts: (conflicts.iter())
                    .filter(|c| c.first == name || c.second == name)
                    .map(ToString::to_string)
                    .collect(),
                name,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(policies: &[(&str, &str, u16, &str, &str)]) -> ClusterState {
        let mut s = ClusterState::default();
        for (name, app) in [("web", "web"), ("db", "db")] {
            s.pods.insert(
                ObjectRef::new("prod", name),
                PodInfo {
                    labels: Labels::from([("app".to_string(), app.to_string())]),
                    node: Some("n1".into()),
                    host_network: false,
                    terminated: false,
                    ips: vec![format!("10.0.0.{}", s.pods.len() + 1).parse().expect("ip")],
                    ports: Vec::new(),
                },
            );
        }
        for (name, tier, priority, app, action) in policies {
            let p = serde_json::json!({
                "metadata": {"name": name},
                "spec": {"tier": tier, "priority": priority,
                         "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": app}}}},
                         "egress": [{"action": action, "to": [{"networks": ["192.0.2.0/24"]}]}]}
            });
            s.cluster_policies.insert(
                name.to_string(),
                serde_json::from_value(p).expect("a policy"),
            );
        }
        s
    }

    #[test]
    fn equal_priorities_with_different_actions_on_common_pods_conflict() {
        let s = state_with(&[
            ("b-deny", "Admin", 10, "web", "Deny"),
            ("a-accept", "Admin", 10, "web", "Accept"),
            // Same tier and priority, same action: no conflict.
            ("c-accept", "Admin", 10, "web", "Accept"),
            // Different pods, another priority, another tier: none either.
            ("d-deny-db", "Admin", 10, "db", "Deny"),
            ("e-deny", "Admin", 11, "web", "Deny"),
            ("f-deny", "Baseline", 10, "web", "Deny"),
        ]);
        let checked: Vec<CheckedCnp> = s.cluster_policies.values().map(|p| check(p).0).collect();
        let found: Vec<(String, String)> = (conflicts(&s, &checked).into_iter())
            .map(|c| (c.first, c.second))
            .collect();
        assert_eq!(
            found,
            [
                ("a-accept".to_string(), "b-deny".to_string()),
                ("b-deny".to_string(), "c-accept".to_string())
            ]
        );
        let status = status(&s);
        let a = status.iter().find(|p| p.name == "a-accept").expect("a");
        assert_eq!(a.conflicts.len(), 1, "{:?}", a.conflicts);
        assert!(
            a.conflicts[0].contains("a-accept decides"),
            "{}",
            a.conflicts[0]
        );
        assert!(
            status
                .iter()
                .find(|p| p.name == "e-deny")
                .expect("e")
                .conflicts
                .is_empty()
        );
    }
}
