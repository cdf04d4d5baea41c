//! Pods that the CNI plugin announced before the API view has them (see `crate::cni`):
//! what labels they will have is unknown, so no rule can be granted yet. They are held
//! isolated with nothing allowed in every direction that some policy of their namespace
//! isolates (the spec's own-node and neighbour exemptions still apply in the datapath),
//! until the API view has them and their real rules replace the hold.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use super::{Direction, Plan, PlannedEndpoint, RuleSet, RuleSetRef, check_policy};
use crate::state::{ClusterState, ObjectRef};

/// The directions some policy of `namespace` isolates.
pub fn namespace_isolates(state: &ClusterState, namespace: &str) -> BTreeSet<Direction> {
    let mut ignored = Vec::new();
    state
        .policies
        .iter()
        .filter(|(key, _)| key.namespace == namespace)
        .flat_map(|(key, policy)| check_policy(key, policy, &mut ignored).types)
        .collect()
}

/// Adds `pods` (each with its addresses) to `plan`, held as described above. A pod the
/// plan already has, or one with an address a planned pod (or one held before it in
/// `pods`) holds, is left out: the plan's view wins, then the order of `pods`.
pub fn hold(plan: &mut Plan, state: &ClusterState, pods: &[(ObjectRef, Vec<IpAddr>)]) {
    let mut taken: BTreeSet<IpAddr> = plan
        .endpoints
        .iter()
        .flat_map(|e| e.ips.iter().copied())
        .collect();
    for (pod, ips) in pods {
        if ips.is_empty() || ips.iter().any(|ip| taken.contains(ip)) {
            continue;
        }
        let Err(at) = plan.endpoints.binary_search_by(|e| e.pod.cmp(pod)) else {
            continue;
        };
        taken.extend(ips.iter().copied());
        let isolates = namespace_isolates(state, &pod.namespace);
        let mut deny = || {
            let empty = RuleSet::default();
            match plan.rule_sets.iter().position(|s| **s == empty) {
                Some(i) => RuleSetRef(i),
                None => {
                    plan.rule_sets.push(Arc::new(empty));
                    RuleSetRef(plan.rule_sets.len() - 1)
                }
            }
        };
        let ingress = isolates.contains(&Direction::Ingress).then(&mut deny);
        let egress = isolates.contains(&Direction::Egress).then(&mut deny);
        plan.endpoints.insert(
            at,
            PlannedEndpoint {
                pod: pod.clone(),
                ips: ips.clone(),
                ingress,
                egress,
                rules: Default::default(),
                audit: Default::default(),
                // Held until the API shows the pod: no policy of its own yet.
                isolated_by: Default::default(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile;

    fn policy(ns: &str, name: &str, spec: &str) -> k8s_openapi::api::networking::v1::NetworkPolicy {
        serde_json::from_str(&format!(
            r#"{{"metadata": {{"name": "{name}", "namespace": "{ns}"}}, "spec": {spec}}}"#
        ))
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn held_pods_allow_nothing_where_their_namespace_isolates() {
        let mut s = ClusterState::default();
        // Selects nobody yet: it still says the namespace isolates egress for some pods.
        s.policies.insert(
            ObjectRef::new("a", "egress"),
            policy(
                "a",
                "egress",
                r#"{"podSelector": {"matchLabels": {"x": "y"}}, "policyTypes": ["Egress"]}"#,
            ),
        );
        s.policies.insert(
            ObjectRef::new("b", "both"),
            policy(
                "b",
                "both",
                r#"{"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [{}]}"#,
            ),
        );
        let mut plan = compile(&s, "n1");
        hold(
            &mut plan,
            &s,
            &[
                (ObjectRef::new("a", "new"), vec![ip("10.244.1.5")]),
                (ObjectRef::new("b", "new"), vec![ip("10.244.1.6")]),
                (ObjectRef::new("c", "new"), vec![ip("10.244.1.7")]),
            ],
        );
        let by = |ns: &str| {
            plan.endpoints
                .iter()
                .find(|e| e.pod == ObjectRef::new(ns, "new"))
                .unwrap()
        };
        assert_eq!(by("a").ingress, None);
        let egress = by("a").egress.unwrap();
        assert_eq!(*plan.rule_set(egress), RuleSet::default());
        assert!(!plan.allows(egress, ip("10.244.1.6"), crate::state::Protocol::Tcp, 80));
        // Held even where a rule of the namespace would allow everything: its labels are
        // not known.
        assert_eq!(by("b").ingress, by("b").egress);
        assert!(by("b").ingress.is_some());
        assert_eq!((by("c").ingress, by("c").egress), (None, None));
        assert!(plan.endpoints.is_sorted_by(|x, y| x.pod < y.pod));
    }

    #[test]
    fn the_plans_own_view_wins() {
        let mut s = ClusterState::default();
        s.policies.insert(
            ObjectRef::new("a", "p"),
            policy("a", "p", r#"{"podSelector": {}}"#),
        );
        let mut plan = compile(&s, "n1");
        plan.endpoints.push(PlannedEndpoint {
            pod: ObjectRef::new("a", "known"),
            ips: vec![ip("10.244.1.5")],
            ingress: None,
            egress: None,
            rules: Default::default(),
            audit: Default::default(),
            isolated_by: Default::default(),
        });
        let before = plan.endpoints.len();
        hold(
            &mut plan,
            &s,
            &[
                (ObjectRef::new("a", "known"), vec![ip("10.244.1.9")]),
                (ObjectRef::new("a", "other"), vec![ip("10.244.1.5")]),
            ],
        );
        assert_eq!(plan.endpoints.len(), before);
    }
}
