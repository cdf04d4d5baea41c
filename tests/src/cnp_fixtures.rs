//! ClusterNetworkPolicy objects for tests: built from JSON as the API would serve them.

use netpol_agent::compile::cnp_check::check;
use netpol_agent::sources::cnp::{API_VERSION, ClusterNetworkPolicy, KIND};
use netpol_agent::state::{ClusterState, Labels, NodeInfo};

use crate::lab::{IpAddr, NODE4, ObjectRef, PodInfo, REMOTE_NODE4, base, ip6, pod, v4a};
use serde_json::{Value, json};

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    (pairs.iter())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Adds (or replaces) policy `name` with `spec` as written (nothing filled in).
pub fn add_cnp_as_written(s: &mut ClusterState, name: &str, spec: Value) {
    let p: ClusterNetworkPolicy = serde_json::from_value(json!({
        "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("ClusterNetworkPolicy {name}: {e}"));
    s.cluster_policies.insert(name.into(), p);
}

/// `add_cnp_as_written` with `tier` and `priority` set; the policy may be one the API
/// server would refuse.
pub fn add_cnp_unchecked(
    s: &mut ClusterState,
    name: &str,
    tier: &str,
    priority: i64,
    mut spec: Value,
) {
    spec["tier"] = json!(tier);
    spec["priority"] = json!(priority);
    add_cnp_as_written(s, name, spec);
}

/// `add_cnp_unchecked` for a policy the API server accepts as it is (asserted).
pub fn add_cnp(s: &mut ClusterState, name: &str, tier: &str, priority: i64, spec: Value) {
    add_cnp_unchecked(s, name, tier, priority, spec);
    let (_, errors) = check(&s.cluster_policies[name]);
    assert!(errors.is_empty(), "{name} is valid: {errors:?}");
}

/// A subject (or peer) of the pods labelled `app` in every namespace.
pub fn pods_with_app(app: &str) -> Value {
    json!({"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": app}}}})
}

/// Another pod of the cluster (`cnp_state`), on node n2.
pub const X4: [u8; 4] = [10, 2, 0, 5];
/// A pod labelled `app: bad` (`cnp_state`), on node n2.
pub const BAD4: [u8; 4] = [10, 2, 0, 9];

fn net(s: &str) -> ipnet::IpNet {
    s.parse().expect("constant")
}

/// The lab's `base()` with namespace `default` labelled, node n1 (this node: 10.1.0.1 and
/// fd00:1::1; pods in 10.1.0.0/24 and fd00:1::/64) and n2 (172.18.0.2; pods in
/// 10.2.0.0/24), and the remote pods `x` (app: x) and `bad` (app: bad) on n2.
pub fn cnp_state() -> ClusterState {
    let mut st = base();
    st.namespaces.insert(
        "default".into(),
        labels(&[("kubernetes.io/metadata.name", "default")]),
    );
    st.nodes.insert(
        "n1".into(),
        NodeInfo {
            labels: labels(&[("role", "worker")]),
            ips: vec![v4a(NODE4), IpAddr::V6(ip6("fd00:1::1"))],
            pod_cidrs: vec![net("10.1.0.0/24"), net("fd00:1::/64")],
        },
    );
    st.nodes.insert(
        "n2".into(),
        NodeInfo {
            labels: labels(&[("role", "control-plane")]),
            ips: vec![v4a(REMOTE_NODE4)],
            pod_cidrs: vec![net("10.2.0.0/24")],
        },
    );
    for (name, addr, app) in [("x", X4, "x"), ("bad", BAD4, "bad")] {
        st.pods
            .insert(ObjectRef::new("default", name), remote(addr, app));
    }
    st
}

/// A pod of node n2 labelled `app`.
pub fn remote(addr: [u8; 4], app: &str) -> PodInfo {
    let mut p = pod(&[v4a(addr)], app);
    p.node = Some("n2".into());
    p
}

/// `cnp_state` with Admin policy `node-port` over pods `app: client`: rule `api` accepts
/// every node's TCP 6443, rule `no-nodes` denies the nodes otherwise.
pub fn client_node_port_only() -> ClusterState {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "node-port",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [
                   {"name": "api", "action": "Accept", "to": [{"nodes": {}}],
                    "protocols": [{"tcp": {"destinationPort": {"number": 6443}}}]},
                   {"name": "no-nodes", "action": "Deny", "to": [{"nodes": {}}]}]}),
    );
    st
}
