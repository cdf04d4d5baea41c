//! Kubernetes Events on NetworkPolicies that have a rule netpol cannot compile (a rule
//! that allows nothing), and on ClusterNetworkPolicies with errors (what the API server
//! would refuse, failing closed) or conflicts, so `kubectl describe` says why. Each agent reports
//! what it found on its node, once each time a policy's problems change; publishing runs
//! apart from the main loop and a failure is only logged (RBAC: create and patch on
//! `events.k8s.io` events).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;

use crate::compile::PolicyError;
use crate::sources::cnp::{API_VERSION, KIND};
use crate::state::{ClusterState, ObjectRef};
use crate::status::ClusterPolicyStatus;

/// The API's limit on an event's note.
const NOTE_LIMIT: usize = 1024;
/// Reports waiting to be published; more are dropped (and logged).
const QUEUE: usize = 256;

/// One Warning to publish on a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyReport {
    /// A ClusterNetworkPolicy's has no namespace.
    pub policy: ObjectRef,
    pub uid: Option<String>,
    pub note: String,
}

/// Which policies' problems changed since the last plan (pure; the agent keeps one).
#[derive(Debug, Default)]
pub struct PolicyProblems {
    node: String,
    reported: BTreeMap<ObjectRef, BTreeSet<String>>,
}

impl PolicyProblems {
    pub fn new(node: &str) -> Self {
        PolicyProblems {
            node: node.to_string(),
            reported: BTreeMap::new(),
        }
    }

    /// The reports a plan's errors call for: policies whose set of problems is new or
    /// changed (a fixed policy is forgotten, and reported again if it breaks again).
    pub fn changes(
        &mut self,
        errors: &[PolicyError],
        cluster_policies: &[ClusterPolicyStatus],
        state: &ClusterState,
    ) -> Vec<PolicyReport> {
        let mut now: BTreeMap<ObjectRef, BTreeSet<String>> = BTreeMap::new();
        for p in cluster_policies {
            let problems = p.errors.iter().chain(&p.conflicts).cloned();
            let problems: BTreeSet<String> = problems.collect();
            if !problems.is_empty() {
                now.insert(ObjectRef::new("", &p.name), problems);
            }
        }
        for e in errors {
            // Errors not about one policy (the datapath's port-range limit) have none.
            if e.policy.namespace.is_empty() {
                continue;
            }
            now.entry(e.policy.clone())
                .or_default()
                .insert(format!("{}: {}", e.location, e.message));
        }
        let mut out = Vec::new();
        for (policy, problems) in &now {
            if self.reported.get(policy) == Some(problems) {
                continue;
            }
            let list: Vec<&str> = problems.iter().map(String::as_str).collect();
            let mut note = format!("netpol on node {}: {}", self.node, list.join("; "));
            if note.len() > NOTE_LIMIT {
                let mut end = NOTE_LIMIT - 3;
                while !note.is_char_boundary(end) {
                    end -= 1;
                }
                note.truncate(end);
                note.push_str("...");
            }
            out.push(PolicyReport {
                policy: policy.clone(),
                uid: state
                    .policies
                    .get(policy)
                    .and_then(|p| p.metadata.uid.clone()),
                note,
            });
        }
        self.reported = now;
        out
    }
}

/// Starts the publisher; send it reports (never blocks: a full queue drops them).
pub fn start(client: kube::Client, node: &str) -> mpsc::Sender<PolicyReport> {
    let (tx, mut rx) = mpsc::channel::<PolicyReport>(QUEUE);
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "netpol-agent".into(),
            instance: Some(node.to_string()),
        },
    );
    tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            let cluster = r.policy.namespace.is_empty();
            let regarding = ObjectReference {
                api_version: Some(
                    if cluster {
                        API_VERSION
                    } else {
                        "networking.k8s.io/v1"
                    }
                    .into(),
                ),
                kind: Some(if cluster { KIND } else { "NetworkPolicy" }.into()),
                name: Some(r.policy.name.clone()),
                // The recorder puts an Event on a cluster-scoped object in `default`.
                namespace: (!cluster).then(|| r.policy.namespace.clone()),
                uid: r.uid.clone(),
                ..Default::default()
            };
            let event = Event {
                type_: EventType::Warning,
                reason: if cluster {
                    "PolicyProblems"
                } else {
                    "RuleNotCompiled"
                }
                .into(),
                note: Some(r.note.clone()),
                action: "Compile".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &regarding).await {
                tracing::warn!(policy = %r.policy, error = %e, "could not publish a Kubernetes Event (RBAC: create/patch events.k8s.io events)");
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(ns: &str, name: &str, location: &str) -> PolicyError {
        PolicyError {
            policy: ObjectRef::new(ns, name),
            location: location.into(),
            message: "bad CIDR; this rule allows nothing".into(),
        }
    }

    #[test]
    fn each_policy_is_reported_once_per_change_of_its_problems() {
        let state = ClusterState::default();
        let mut p = PolicyProblems::new("node-1");
        let first = vec![error("a", "p", "ingress[0]"), error("a", "p", "ingress[1]")];
        let out = p.changes(&first, &[], &state);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].policy, ObjectRef::new("a", "p"));
        assert!(
            out[0]
                .note
                .starts_with("netpol on node node-1: ingress[0]: bad CIDR")
        );
        assert!(out[0].note.contains("; ingress[1]: "));
        assert_eq!(p.changes(&first, &[], &state), vec![], "nothing changed");
        let out = p.changes(&first[..1], &[], &state);
        assert_eq!(out.len(), 1, "one problem fixed: the rest reported again");
        assert_eq!(
            p.changes(&[], &[], &state),
            vec![],
            "fixed: nothing to report"
        );
        assert_eq!(p.changes(&first[..1], &[], &state).len(), 1, "broken again");
        let not_a_policy = PolicyError {
            policy: ObjectRef::new("", "*"),
            location: "peer 10.0.0.0/8".into(),
            message: "too many port ranges".into(),
        };
        assert_eq!(p.changes(&[not_a_policy], &[], &state), vec![]);
    }

    #[test]
    fn long_notes_are_cut_to_the_apis_limit() {
        let mut p = PolicyProblems::new("n");
        let many: Vec<PolicyError> = (0..100)
            .map(|i| error("a", "p", &format!("egress[{i}].to[0]")))
            .collect();
        let out = p.changes(&many, &[], &ClusterState::default());
        assert!(out[0].note.len() <= NOTE_LIMIT);
        assert!(out[0].note.ends_with("..."));
    }

    #[test]
    fn cluster_network_policies_are_reported_by_name_without_a_namespace() {
        let mut p = PolicyProblems::new("n1");
        let state = ClusterState::default();
        let status = |errors: Vec<String>| ClusterPolicyStatus {
            name: "no-metadata".into(),
            tier: "Admin".into(),
            priority: 10,
            errors,
            conflicts: Vec::new(),
        };
        assert_eq!(p.changes(&[], &[status(Vec::new())], &state), vec![]);
        let broken = [status(vec!["egress[0]: action: unknown".into()])];
        let out = p.changes(&[], &broken, &state);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].policy, ObjectRef::new("", "no-metadata"));
        assert!(out[0].note.contains("egress[0]: action"), "{}", out[0].note);
        assert_eq!(p.changes(&[], &broken, &state), vec![], "nothing changed");
    }
}
