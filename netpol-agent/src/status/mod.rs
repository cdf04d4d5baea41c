//! What the agent enforces and what it has seen: one snapshot, rendered as JSON (status
//! file, `/status`), metrics (`metrics`: `/metrics`, with prometheus-client) and a table
//! (logs, demo); served with liveness and readiness by `http`.

mod client;
mod http;
pub mod kube_events;
mod metrics;

pub use client::{Format, fetch, get, render};

pub use http::{Health, LOOP_STUCK_AFTER_MS, monotonic_ms, router, serve};
pub use metrics::Metrics;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use netpol_common::reason;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub pod: String,
    pub id: u32,
    pub ips: Vec<String>,
    pub interface: Option<String>,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    /// Packets per reason (`netpol_common::reason::NAMES`), summed over CPUs.
    pub packets: BTreeMap<String, u64>,
}

/// One policy rule the maps name, and the packets it allowed on this node.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleStatus {
    /// Empty for a ClusterNetworkPolicy.
    pub namespace: String,
    pub policy: String,
    /// `NetworkPolicy`, or the tier of a ClusterNetworkPolicy rule: `Admin`, `Baseline`.
    #[serde(default)]
    pub kind: String,
    /// `ingress` or `egress`.
    pub direction: String,
    pub index: usize,
    /// Packets of connections it allowed (their openings and what followed), counted at
    /// the pod's veth or uplink that decided them, summed over CPUs. Starts again from 0
    /// when the rule stops being named by the maps and comes back.
    pub packets: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub attach_mode: String,
    /// Digest of the source input that is enforced now (empty before the first sync).
    pub applied_digest: String,
    /// With the API server as source: the newest resourceVersion of each kind that the
    /// enforced state includes.
    pub applied_versions: BTreeMap<String, u64>,
    /// Objects the source could not take in (they are not part of the state).
    pub rejected_objects: Vec<String>,
    /// Watch failures since start (each was retried).
    pub watch_errors: u64,
    /// Kinds the API server does not serve (the ClusterNetworkPolicy CRD is not
    /// installed); their watchers keep looking.
    #[serde(default)]
    pub unserved_kinds: Vec<String>,
    /// Incremented on every successful programming.
    pub generation: u64,
    pub ready: bool,
    /// Why the last load of the source failed (the previous state stays enforced).
    pub source_error: Option<String>,
    /// Why the last programming failed (the previous state stays enforced).
    pub program_error: Option<String>,
    pub policy_errors: Vec<String>,
    /// Pods whose new rules did not fit in the maps: they keep their last complete state
    /// (a new pod allows nothing in its isolated directions) until room returns.
    pub overflowed_pods: Vec<String>,
    pub overflow_error: Option<String>,
    /// Programmings that hit a full map since start.
    pub overflow_events: u64,
    pub rule_sets: usize,
    pub uplinks: Vec<String>,
    /// `to_node` on the node's cgroup: `attached to <cgroup>`, `off`, or `not attached:
    /// <why>` (then a Service whose backend is this node's host network escapes
    /// ClusterNetworkPolicy rules about the node).
    #[serde(default)]
    pub node_hook: String,
    /// Veths that claim a local pod's address but cannot be matched to it (interface ->
    /// the pods they claim): netpol drops everything they carry.
    pub quarantined_interfaces: BTreeMap<String, Vec<String>>,
    /// Why netpol-cni could not be installed or chained (--cni-conf-dir): new pods are
    /// then enforced only once the API and the kernel show them.
    pub cni_install_error: Option<String>,
    pub endpoints: Vec<EndpointStatus>,
    /// The rules the maps name.
    #[serde(default)]
    pub rules: Vec<RuleStatus>,
    /// Entries in each map: what the agent wrote, and for the conntrack maps what the
    /// last sweep left (every 30 s).
    #[serde(default)]
    pub map_entries: BTreeMap<String, u64>,
    #[serde(default)]
    pub map_capacity: BTreeMap<String, u64>,
    /// ClusterNetworkPolicies read from the source, sorted by name.
    #[serde(default)]
    pub cluster_policies: Vec<ClusterPolicyStatus>,
}

/// A ClusterNetworkPolicy as the agent read it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterPolicyStatus {
    pub name: String,
    /// `Admin` or `Baseline`, as checked (see `compile::cnp_check` for unreadable ones).
    pub tier: String,
    pub priority: u16,
    /// What the API server would have refused in it.
    pub errors: Vec<String>,
    /// Policies of its tier and priority that it conflicts with (see
    /// `compile::tiers::conflicts`), and which one decides.
    #[serde(default)]
    pub conflicts: Vec<String>,
}

pub type Shared = Arc<Mutex<Status>>;

impl Status {
    /// Drop counters as a table; pods with no packets are left out.
    pub fn counters_table(&self) -> String {
        let shown: Vec<&str> = reason::NAMES.to_vec();
        let mut out = format!("{:<40}", "pod");
        for n in &shown {
            let _ = write!(out, " {:>16}", n);
        }
        out.push('\n');
        for ep in &self.endpoints {
            if ep.packets.values().all(|n| *n == 0) {
                continue;
            }
            let _ = write!(out, "{:<40}", ep.pod);
            for n in &shown {
                let _ = write!(out, " {:>16}", ep.packets.get(*n).copied().unwrap_or(0));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
pub(crate) fn endpoint_for_tests(
    pod: &str,
    interface: Option<&str>,
    isolated: bool,
) -> EndpointStatus {
    EndpointStatus {
        pod: pod.into(),
        interface: interface.map(str::to_string),
        ingress_isolated: isolated,
        ..Default::default()
    }
}
