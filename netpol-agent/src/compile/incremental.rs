//! `Compiler`: [`compile`] with memory. Rule sets depend on the policies (NetworkPolicies
//! and ClusterNetworkPolicies), the namespaces, the nodes (what `nodes` peers select),
//! this node's pods and the *set* of identities in the cluster, not on which addresses
//! have them. So when a change touches only other nodes' pods and every identity it
//! touches exists before and after (a replica added or removed, a pod taking another
//! deployment's labels), the rule sets and endpoints of the last plan still hold and only
//! the addresses that changed hands are updated: O(changed pods), not O(cluster).
//! Anything else compiles in full. Either way the plan equals what [`compile`] returns
//! (`tests/tests/compile_incremental.rs` checks that on random change sequences).
//!
//! [`compile`]: super::compile

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Identity, Plan, compile, node_self, pod_ranges, service_ports};
use crate::sources::cnp::ClusterNetworkPolicy;
use crate::state::{ClusterState, Labels, NodeInfo, ObjectRef, PodInfo};

/// A change of more pods than this share of the cluster compiles in full (cheaper).
const MAX_CHANGED_SHARE: usize = 8;

#[derive(Default)]
pub struct Compiler {
    memo: Option<Memo>,
    /// The node of the last full compile, until `remember` makes a memo of it.
    pending: Option<String>,
    /// How the last `compile` went: true when it reused the rule sets.
    pub last_was_incremental: bool,
}

/// What the last plan was compiled from, and the address book it keeps up to date.
struct Memo {
    node: String,
    namespaces: BTreeMap<String, Labels>,
    policies: BTreeMap<ObjectRef, NetworkPolicy>,
    cluster_policies: BTreeMap<String, ClusterNetworkPolicy>,
    nodes: BTreeMap<String, NodeInfo>,
    pods: BTreeMap<ObjectRef, PodInfo>,
    /// Identities of the cluster's subject pods, with how many pods have each.
    identities: HashMap<Arc<Identity>, usize>,
    /// How many subject pods hold each address. A change that touches an address held
    /// twice compiles in full: which pod wins depends on the order of all of them.
    holders: HashMap<IpAddr, u32>,
    /// Some egress rule names a port: its address blocks resolve it per pod address, so
    /// any address change can change rule sets.
    address_dependent: bool,
    plan: Plan,
}

impl Compiler {
    pub fn compile(&mut self, state: &ClusterState, node: &str) -> Plan {
        if let Some(memo) = self.memo.as_mut()
            && memo.update(state, node)
        {
            self.last_was_incremental = true;
            return memo.plan.clone();
        }
        self.last_was_incremental = false;
        self.memo = None;
        self.pending = Some(node.to_string());
        compile(state, node)
    }

    /// Keeps what the next change needs to be incremental, after a full compile of
    /// `state` into `plan` (the pair `compile` just took and returned; everything is
    /// recomputed from the two, so a memo never mixes states). It copies the state, so
    /// the agent calls it after the maps are written: bookkeeping, not part of a
    /// change's way to the datapath. Without it the next compile is a full one.
    pub fn remember(&mut self, state: &ClusterState, plan: &Plan) {
        let Some(node) = self.pending.take() else {
            return;
        };
        // The plan's own identity values, so that identities stay shared.
        let named = plan.rule_sets.iter().flat_map(|s| s.peers.keys());
        let arcs: HashMap<&Identity, &Arc<Identity>> = plan
            .identities
            .values()
            .chain(named)
            .map(|a| (&**a, a))
            .collect();
        let mut counts: HashMap<Identity, usize> = HashMap::new();
        let mut holders: HashMap<IpAddr, u32> = HashMap::new();
        for (r, p) in state.pods.iter().filter(|(_, p)| p.is_policy_subject()) {
            *counts.entry(identity_of(r, p)).or_default() += 1;
            for ip in &p.ips {
                *holders.entry(*ip).or_default() += 1;
            }
        }
        let identities = counts
            .into_iter()
            .map(|(id, n)| match arcs.get(&id) {
                Some(a) => ((*a).clone(), n),
                None => (Arc::new(id), n),
            })
            .collect();
        self.memo = Some(Memo {
            node,
            namespaces: state.namespaces.clone(),
            policies: state.policies.clone(),
            cluster_policies: state.cluster_policies.clone(),
            nodes: state.nodes.clone(),
            pods: state.pods.clone(),
            identities,
            holders,
            address_dependent: state.policies.values().any(names_a_port_on_egress),
            plan: plan.clone(),
        });
    }
}

fn identity_of(r: &ObjectRef, p: &PodInfo) -> Identity {
    Identity::new(r.namespace.clone(), p.labels.clone(), p.ports.clone())
}

fn names_a_port_on_egress(p: &NetworkPolicy) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.egress.as_ref())
        .into_iter()
        .flatten()
        .flat_map(|r| r.ports.iter().flatten())
        .any(|port| matches!(port.port, Some(IntOrString::String(_))))
}

fn subject(p: &Option<PodInfo>) -> Option<&PodInfo> {
    p.as_ref().filter(|p| p.is_policy_subject())
}

impl Memo {
    /// Brings the plan up to date with `state` if only addresses changed hands; false
    /// (and the memo is stale) when a full compile is needed.
    fn update(&mut self, state: &ClusterState, node: &str) -> bool {
        if node != self.node
            || self.address_dependent
            || state.namespaces != self.namespaces
            || state.policies != self.policies
            || state.cluster_policies != self.cluster_policies
            || (!state.cluster_policies.is_empty() && state.nodes != self.nodes)
        {
            return false;
        }
        let Some(changes) = self.changed_pods(state) else {
            return false;
        };
        // Identities must be the same set before and after, and no address may be
        // shared.
        let mut counts: HashMap<Identity, isize> = HashMap::new();
        let mut held: HashMap<IpAddr, i64> = HashMap::new();
        for (r, old, new) in &changes {
            for (p, d) in [(subject(old), -1), (subject(new), 1)] {
                if let Some(p) = p {
                    *counts.entry(identity_of(r, p)).or_default() += d as isize;
                    for ip in &p.ips {
                        *held.entry(*ip).or_default() += d;
                    }
                }
            }
        }
        for (id, d) in &counts {
            let have = self.identities.get(id).map_or(0, |n| *n as isize);
            if have == 0 || have + d <= 0 {
                return false;
            }
        }
        for (ip, d) in &held {
            let before = i64::from(self.holders.get(ip).copied().unwrap_or(0));
            if before > 1 || before + d > 1 {
                return false;
            }
        }

        for (id, d) in counts {
            if let Some(n) = self.identities.get_mut(&id) {
                *n = (*n as isize + d) as usize;
            }
        }
        // Each address touched now has one holder among the changed pods, or none.
        for (ip, d) in &held {
            let after = i64::from(self.holders.get(ip).copied().unwrap_or(0)) + d;
            if after <= 0 {
                self.holders.remove(ip);
                self.plan.identities.remove(ip);
            } else {
                self.holders.insert(*ip, 1);
            }
        }
        for (r, _, new) in &changes {
            if let Some(p) = subject(new)
                && let Some((arc, _)) = self.identities.get_key_value(&identity_of(r, p))
            {
                for ip in &p.ips {
                    self.plan.identities.insert(*ip, arc.clone());
                }
            }
        }
        for (r, _, new) in changes {
            match new {
                Some(p) => self.pods.insert(r, p),
                None => self.pods.remove(&r),
            };
        }
        self.plan.service_ports = service_ports(state);
        self.plan.pod_ranges = pod_ranges(state);
        self.plan.node_self = node_self(state, node);
        true
    }

    /// Pods that differ from the memo's: (pod, before, after). None when one of them is
    /// (or was) on this node, or too many changed.
    #[allow(clippy::type_complexity)]
    fn changed_pods(
        &self,
        state: &ClusterState,
    ) -> Option<Vec<(ObjectRef, Option<PodInfo>, Option<PodInfo>)>> {
        let limit = state.pods.len() / MAX_CHANGED_SHARE + 1;
        let local = |p: &PodInfo| p.node.as_deref() == Some(self.node.as_str());
        let mut changes = Vec::new();
        let mut old = self.pods.iter().peekable();
        let mut new = state.pods.iter().peekable();
        loop {
            let change = match (old.peek().copied(), new.peek().copied()) {
                (None, None) => break,
                (Some((ro, po)), Some((rn, pn))) if ro == rn => {
                    old.next();
                    new.next();
                    (po != pn).then_some((ro, Some(po), Some(pn)))
                }
                (Some((ro, po)), Some((rn, _))) if ro < rn => {
                    old.next();
                    Some((ro, Some(po), None))
                }
                (Some((ro, po)), None) => {
                    old.next();
                    Some((ro, Some(po), None))
                }
                (_, Some((rn, pn))) => {
                    new.next();
                    Some((rn, None, Some(pn)))
                }
            };
            if let Some((r, before, after)) = change {
                if before.is_some_and(local) || after.is_some_and(local) {
                    return None;
                }
                changes.push((r.clone(), before.cloned(), after.cloned()));
                if changes.len() > limit {
                    return None;
                }
            }
        }
        Some(changes)
    }
}
