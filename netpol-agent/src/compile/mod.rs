//! The pure step: `ClusterState` + this node's name -> `Plan`, the desired content of the
//! maps. No I/O, no kernel: everything here is unit tested.
//!
//! Bad input never opens traffic: a policy that selects a pod isolates it whatever its
//! rules look like, and a rule that cannot be compiled allows nothing (it is dropped and
//! reported in `Plan::errors`).

pub mod ports;
pub mod prefix;
pub mod selector;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::state::{ClusterState, ObjectRef, PodInfo, Protocol};
use ports::{PortSpec, Ports};
use prefix::{Grant, Prefix};
use selector::Selector;

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

/// The allow table of one direction of one or more pods: longest-prefix-match entries,
/// each with the ports it allows. Empty = isolated with nothing allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleSet {
    pub entries: BTreeMap<Prefix, PortSpec>,
}

impl RuleSet {
    pub fn allows(&self, peer: IpAddr, protocol: Protocol, port: u16) -> bool {
        prefix::lookup(&self.entries, peer).is_some_and(|s| s.allows(protocol, port))
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
    pub rule_sets: Vec<RuleSet>,
    /// Service ports: egress towards them is decided after translation. Other ports of
    /// a Service address are not translated, so they are judged like any address.
    pub service_ports: BTreeSet<ServicePort>,
    pub errors: Vec<PolicyError>,
}

impl Plan {
    pub fn rule_set(&self, r: RuleSetRef) -> &RuleSet {
        &self.rule_sets[r.0]
    }
}

/// A policy, checked once: which pods it selects and its compiled rules per direction.
struct CompiledPolicy<'a> {
    key: &'a ObjectRef,
    policy: &'a NetworkPolicy,
    selects: Selector,
    types: BTreeSet<Direction>,
    /// False when the policy's own selector is invalid: it isolates but grants nothing.
    rules_valid: bool,
}

/// Policy subjects by namespace, built once per compile: peer selectors are evaluated
/// per namespace and then on that namespace's pods, never on every pod of the cluster.
struct PodIndex<'a> {
    by_namespace: BTreeMap<&'a str, Vec<&'a PodInfo>>,
}

impl<'a> PodIndex<'a> {
    fn new(state: &'a ClusterState) -> Self {
        let mut by_namespace: BTreeMap<&str, Vec<&PodInfo>> = BTreeMap::new();
        for (r, pod) in &state.pods {
            if pod.is_policy_subject() {
                by_namespace
                    .entry(r.namespace.as_str())
                    .or_default()
                    .push(pod);
            }
        }
        PodIndex { by_namespace }
    }

    fn all(&self) -> impl Iterator<Item = &'a PodInfo> + '_ {
        self.by_namespace.values().flatten().copied()
    }
}

/// Everything about a local pod that its rule sets depend on: pods alike in these get
/// the same sets, computed once (the replicas of a deployment, say).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct SubjectKey<'a> {
    namespace: &'a str,
    labels: &'a crate::state::Labels,
    /// Named ports of ingress rules resolve on the subject.
    ports: &'a [crate::state::ContainerPort],
}

pub fn compile(state: &ClusterState, node: &str) -> Plan {
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
    // Grants of one direction of one policy; keyed by the subject's ports only where
    // they matter (ingress rules with named ports).
    type GrantKey<'a> = (usize, Direction, Option<&'a [crate::state::ContainerPort]>);
    let mut grant_cache: BTreeMap<GrantKey, Vec<Grant>> = BTreeMap::new();
    let mut subject_cache: BTreeMap<SubjectKey, (Option<RuleSetRef>, Option<RuleSetRef>)> =
        BTreeMap::new();
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
        let (ingress, egress) = match subject_cache.get(&subject) {
            Some(sets) => *sets,
            None => {
                let selecting: Vec<usize> = policies
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| {
                        p.key.namespace == pod_ref.namespace && p.selects.matches(&pod.labels)
                    })
                    .map(|(i, _)| i)
                    .collect();
                let mut direction = |dir: Direction| -> Option<RuleSetRef> {
                    let applying: Vec<usize> = selecting
                        .iter()
                        .copied()
                        .filter(|i| policies[*i].types.contains(&dir))
                        .collect();
                    if applying.is_empty() {
                        return None;
                    }
                    for &i in &applying {
                        let by_subject = (dir == Direction::Ingress
                            && policies[i].has_named_ingress_ports())
                        .then_some(pod.ports.as_slice());
                        grant_cache.entry((i, dir, by_subject)).or_insert_with(|| {
                            let rules = RulesOf {
                                state,
                                index: &index,
                                dir,
                                subject: pod,
                            };
                            policy_grants(&rules, &policies[i], &mut rule_errors)
                        });
                    }
                    let grants = applying.iter().flat_map(|&i| {
                        let by_subject = (dir == Direction::Ingress
                            && policies[i].has_named_ingress_ports())
                        .then_some(pod.ports.as_slice());
                        grant_cache.get(&(i, dir, by_subject)).into_iter().flatten()
                    });
                    Some(intern(RuleSet {
                        entries: prefix::union(grants),
                    }))
                };
                let sets = (direction(Direction::Ingress), direction(Direction::Egress));
                subject_cache.insert(subject, sets);
                sets
            }
        };
        endpoints.push(PlannedEndpoint {
            pod: pod_ref.clone(),
            ips: pod.ips.clone(),
            ingress,
            egress,
        });
    }
    errors.extend(rule_errors);

    // Rule sets the datapath cannot hold: fail closed on the entries concerned.
    for set in &mut rule_sets {
        for (prefix, spec) in set.entries.iter_mut() {
            if let Err(n) = spec.to_portset() {
                errors.push(PolicyError {
                    policy: ObjectRef::new("", "*"),
                    location: format!("peer {prefix}"),
                    message: format!(
                        "{n} distinct port ranges to one peer, more than the {} the datapath supports; this peer is denied",
                        netpol_common::MAX_PORT_RANGES
                    ),
                });
                *spec = PortSpec::none();
            }
        }
    }

    let service_ports = state
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
        .collect();
    Plan {
        endpoints,
        rule_sets,
        service_ports,
        errors,
    }
}

impl CompiledPolicy<'_> {
    /// Whether an ingress rule names a port by name (resolved on each subject pod).
    fn has_named_ingress_ports(&self) -> bool {
        self.policy
            .spec
            .iter()
            .flat_map(|s| s.ingress.iter().flatten())
            .flat_map(|r| r.ports.iter().flatten())
            .any(|p| matches!(p.port, Some(IntOrString::String(_))))
    }
}

/// Validates what decides which pods a policy isolates. A policy whose own selector or
/// types are invalid still isolates (its whole namespace, if the selector is the problem,
/// for the types it lists) and allows nothing through the invalid part.
fn check_policy<'a>(
    key: &'a ObjectRef,
    policy: &'a NetworkPolicy,
    errors: &mut Vec<PolicyError>,
) -> CompiledPolicy<'a> {
    let mut err = |location: &str, message: String| {
        errors.push(PolicyError {
            policy: key.clone(),
            location: location.to_string(),
            message,
        })
    };
    if let Some(why) = policy
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::state::UNREADABLE_ANNOTATION))
    {
        err(
            "spec",
            format!(
                "cannot be read ({why}); it isolates every pod of its namespace both ways and allows nothing"
            ),
        );
    }
    let spec = policy.spec.as_ref();
    let mut types = BTreeSet::new();
    match spec
        .and_then(|s| s.policy_types.as_ref())
        .filter(|t| !t.is_empty())
    {
        Some(listed) => {
            for t in listed {
                match t.as_str() {
                    "Ingress" => {
                        types.insert(Direction::Ingress);
                    }
                    "Egress" => {
                        types.insert(Direction::Egress);
                    }
                    // Which direction was meant is unknown: isolate both.
                    other => {
                        err(
                            "policyTypes",
                            format!(
                                "unknown policy type {other:?} (expected Ingress or Egress); the selected pods are isolated both ways"
                            ),
                        );
                        types.insert(Direction::Ingress);
                        types.insert(Direction::Egress);
                    }
                }
            }
        }
        // The API's default: Ingress always, Egress when there are egress rules.
        None => {
            types.insert(Direction::Ingress);
            if spec
                .and_then(|s| s.egress.as_ref())
                .is_some_and(|e| !e.is_empty())
            {
                types.insert(Direction::Egress);
            }
        }
    }
    let selects = match spec
        .and_then(|s| s.pod_selector.as_ref())
        .map(Selector::parse)
    {
        Some(Ok(s)) => s,
        None => Selector::everything(),
        Some(Err(e)) => {
            err(
                "podSelector",
                format!(
                    "{e}; the policy isolates every pod of its namespace for its policy types and allows nothing"
                ),
            );
            return CompiledPolicy {
                key,
                policy,
                selects: Selector::everything(),
                types,
                rules_valid: false,
            };
        }
    };
    CompiledPolicy {
        key,
        policy,
        selects,
        types,
        rules_valid: true,
    }
}

/// The peers and ports of one rule, either direction.
type RuleParts<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

/// What the rules of one direction are resolved against.
struct RulesOf<'a> {
    state: &'a ClusterState,
    index: &'a PodIndex<'a>,
    dir: Direction,
    /// The local pod the rule set is for; named ports of ingress rules resolve on it.
    subject: &'a PodInfo,
}

/// Grants of every rule of one direction of one policy.
fn policy_grants(
    rules_of: &RulesOf,
    p: &CompiledPolicy,
    errors: &mut BTreeSet<PolicyError>,
) -> Vec<Grant> {
    let dir = rules_of.dir;
    let spec = match p.policy.spec.as_ref() {
        Some(s) if p.rules_valid => s,
        _ => return Vec::new(),
    };
    let rules: Vec<RuleParts> = match dir {
        Direction::Ingress => spec
            .ingress
            .iter()
            .flatten()
            .map(|r| (r.from.as_ref(), r.ports.as_ref()))
            .collect(),
        Direction::Egress => spec
            .egress
            .iter()
            .flatten()
            .map(|r| (r.to.as_ref(), r.ports.as_ref()))
            .collect(),
    };
    let mut grants = Vec::new();
    for (i, (peers, ports)) in rules.into_iter().enumerate() {
        let location = format!("{dir}[{i}]");
        let rule = RuleInput {
            rules_of,
            namespace: &p.key.namespace,
        };
        match rule.grants(
            peers.map(Vec::as_slice),
            ports.map(Vec::as_slice),
            &location,
        ) {
            Ok(g) => grants.extend(g),
            Err((location, message)) => {
                errors.insert(PolicyError {
                    policy: p.key.clone(),
                    location,
                    message: format!("{message}; this rule allows nothing"),
                });
            }
        }
    }
    grants
}

/// A port entry of a rule, validated.
#[derive(Clone, Debug)]
enum PortItem {
    Numbered(Ports),
    Named(Protocol, String),
}

fn check_port(p: &NetworkPolicyPort) -> Result<PortItem, String> {
    let protocol = Protocol::parse(p.protocol.as_deref())?;
    match (&p.port, p.end_port) {
        (None, None) => Ok(PortItem::Numbered(Ports::all_of(protocol))),
        (None, Some(_)) => Err("endPort without port".into()),
        (Some(IntOrString::Int(n)), end) => {
            let first = port_number(*n)?;
            let last = match end {
                None => first,
                Some(e) => {
                    let e = port_number(e).map_err(|m| format!("endPort: {m}"))?;
                    if e < first {
                        return Err(format!("endPort {e} is below port {first}"));
                    }
                    e
                }
            };
            Ok(PortItem::Numbered(Ports {
                protocol,
                first,
                last,
            }))
        }
        (Some(IntOrString::String(name)), None) => {
            check_port_name(name)?;
            Ok(PortItem::Named(protocol, name.clone()))
        }
        (Some(IntOrString::String(name)), Some(_)) => Err(format!(
            "endPort cannot be used with the named port {name:?}"
        )),
    }
}

fn port_number(n: i32) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {n} is outside 1-65535"))
}

/// IANA service name rules, as the API server checks them.
fn check_port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid port name"))
    }
}

/// The peers a rule can name, validated.
enum PeerItem {
    Pods {
        namespaces: Option<Selector>,
        pods: Option<Selector>,
    },
    Block {
        cidr: IpNet,
        except: Vec<Prefix>,
    },
}

fn check_peer(peer: &NetworkPolicyPeer) -> Result<PeerItem, String> {
    match (&peer.ip_block, &peer.namespace_selector, &peer.pod_selector) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            Err("ipBlock cannot be combined with a selector in one peer".into())
        }
        (Some(block), None, None) => {
            let cidr: IpNet = block
                .cidr
                .parse()
                .map_err(|e| format!("ipBlock.cidr {:?}: {e}", block.cidr))?;
            let cidr = cidr.trunc();
            let mut except = Vec::new();
            for e in block.except.iter().flatten() {
                let net: IpNet = e
                    .parse()
                    .map_err(|err| format!("ipBlock.except {e:?}: {err}"))?;
                let net = net.trunc();
                if !cidr.contains(&net) || net.prefix_len() <= cidr.prefix_len() {
                    return Err(format!(
                        "ipBlock.except {e:?} is not strictly inside cidr {:?}",
                        block.cidr
                    ));
                }
                except.push(Prefix::from_net(net));
            }
            Ok(PeerItem::Block { cidr, except })
        }
        (None, None, None) => {
            Err("a peer must name a podSelector, namespaceSelector or ipBlock".into())
        }
        (None, ns, pods) => Ok(PeerItem::Pods {
            namespaces: ns.as_ref().map(Selector::parse).transpose()?,
            pods: pods.as_ref().map(Selector::parse).transpose()?,
        }),
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
    ) -> Result<Vec<Grant>, (String, String)> {
        let port_items = match ports {
            None | Some([]) => None,
            Some(list) => Some(
                list.iter()
                    .enumerate()
                    .map(|(i, p)| check_port(p).map_err(|m| (format!("{location}.ports[{i}]"), m)))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let dir = self.rules_of.dir;
        let peer_field = match dir {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        let peer_items = match peers {
            // No peers: every address, both families.
            None | Some([]) => vec![
                PeerItem::Block {
                    cidr: IpNet::V4(ipnet::Ipv4Net::default()),
                    except: Vec::new(),
                },
                PeerItem::Block {
                    cidr: IpNet::V6(ipnet::Ipv6Net::default()),
                    except: Vec::new(),
                },
            ],
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    check_peer(p).map_err(|m| (format!("{location}.{peer_field}[{i}]"), m))
                })
                .collect::<Result<Vec<_>, _>>()?,
        };

        let mut grants = Vec::new();
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
                    for pod in in_namespaces.flat_map(|(_, pods)| pods.iter().copied()) {
                        if pods.as_ref().is_none_or(|sel| sel.matches(&pod.labels)) {
                            let ports = self.ports_on(port_items.as_deref(), Some(pod));
                            for ip in &pod.ips {
                                grants.push(Grant::to_host(*ip, ports.clone()));
                            }
                        }
                    }
                }
                PeerItem::Block { cidr, except } => {
                    // Named ports of an egress rule mean a number per destination pod:
                    // the block itself gets the numbered ports, and each pod inside it
                    // gets its own resolution on top.
                    grants.push(Grant::from_net(
                        *cidr,
                        except.clone(),
                        self.ports_on(port_items.as_deref(), None),
                    ));
                    let has_named = port_items
                        .iter()
                        .flatten()
                        .any(|p| matches!(p, PortItem::Named(..)));
                    if dir == Direction::Egress && has_named {
                        for pod in self.rules_of.index.all() {
                            for ip in &pod.ips {
                                // ipnet's containment is per family: an IPv6 block
                                // never holds an IPv4 pod.
                                let host = Prefix::host(*ip);
                                if cidr.contains(ip) && !except.iter().any(|e| e.contains(&host)) {
                                    grants.push(Grant::to_host(
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
        PortSpec::from_ranges(items.iter().filter_map(|item| {
            match item {
                PortItem::Numbered(p) => Some(*p),
                PortItem::Named(proto, name) => resolver
                    .and_then(|pod| pod.named_port(name, *proto))
                    .map(|n| Ports::one(*proto, n)),
            }
        }))
    }
}

#[cfg(test)]
mod tests;
