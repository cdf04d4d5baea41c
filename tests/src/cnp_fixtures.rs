//! ClusterNetworkPolicy objects for tests: built from JSON as the API would serve them.

use netpol_agent::compile::cnp_check::check;
use netpol_agent::sources::cnp::{API_VERSION, ClusterNetworkPolicy, KIND};
use netpol_agent::state::{ClusterState, Labels};
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
