//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`, network-policy-api v0.2.0)
//! as the API serves it: cluster-scoped, an Admin or Baseline tier, a priority, and
//! ordered Accept/Deny/Pass rules.
//!
//! Read leniently: every field is optional here and fields this version does not know
//! are kept (`unknown`), because the API says a peer with no known field must fail closed
//! rather than be rejected. What the CRD would refuse is found by `compile::cnp_check`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "policy.networking.k8s.io";
pub const VERSION: &str = "v1alpha2";
/// `apiVersion` of the objects.
pub const API_VERSION: &str = "policy.networking.k8s.io/v1alpha2";
pub const KIND: &str = "ClusterNetworkPolicy";
pub const PLURAL: &str = "clusternetworkpolicies";

/// Fields of an object that this version does not know.
pub type Unknown = BTreeMap<String, serde_json::Value>;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterNetworkPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Spec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// `Admin` or `Baseline`.
    pub tier: Option<String>,
    /// 0 to 1000; lower first.
    pub priority: Option<i64>,
    pub subject: Option<Subject>,
    #[serde(default)]
    pub ingress: Vec<IngressRule>,
    #[serde(default)]
    pub egress: Vec<EgressRule>,
}

/// Exactly one field set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Subject {
    pub namespaces: Option<LabelSelector>,
    pub pods: Option<NamespacedPod>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    pub namespace_selector: Option<LabelSelector>,
    pub pod_selector: Option<LabelSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IngressRule {
    pub name: Option<String>,
    /// `Accept`, `Deny` or `Pass`.
    pub action: Option<String>,
    #[serde(default)]
    pub from: Vec<IngressPeer>,
    pub protocols: Option<Vec<ProtocolEntry>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EgressRule {
    pub name: Option<String>,
    pub action: Option<String>,
    #[serde(default)]
    pub to: Vec<EgressPeer>,
    pub protocols: Option<Vec<ProtocolEntry>>,
}

/// Exactly one field set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IngressPeer {
    pub namespaces: Option<LabelSelector>,
    pub pods: Option<NamespacedPod>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// Exactly one field set. `nodes` is of the experimental channel. `domainNames`
/// (experimental too) is kept among the unknown fields: netpol does not resolve names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EgressPeer {
    pub namespaces: Option<LabelSelector>,
    pub pods: Option<NamespacedPod>,
    pub networks: Option<Vec<String>>,
    pub nodes: Option<LabelSelector>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// Exactly one field set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolEntry {
    pub tcp: Option<ProtocolPort>,
    pub udp: Option<ProtocolPort>,
    pub sctp: Option<ProtocolPort>,
    pub destination_named_port: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolPort {
    pub destination_port: Option<Port>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// Exactly one of `number` and `range`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Port {
    pub number: Option<i64>,
    pub range: Option<PortRange>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// Inclusive; `start < end`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PortRange {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

impl kube::Resource for ClusterNetworkPolicy {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_field_and_keeps_unknown_ones() {
        let yaml = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: mixed}
spec:
  tier: Admin
  priority: 20
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: a}}}}
  ingress:
  - {name: in, action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}
  egress:
  - name: out
    action: Pass
    to: [{networks: ["10.0.0.0/8"]}, {nodes: {}}, {domainNames: ["example.org"]}, {futurePeer: {}}]
    protocols: [{udp: {destinationPort: {range: {start: 53, end: 54}}}}, {destinationNamedPort: dns}]
"#;
        let p: ClusterNetworkPolicy = serde_yaml::from_str(yaml).expect("parses");
        assert_eq!(p.spec.tier.as_deref(), Some("Admin"));
        assert_eq!(p.spec.priority, Some(20));
        let pods = p.spec.subject.and_then(|s| s.pods).expect("pods subject");
        assert!(pods.namespace_selector.is_some() && pods.pod_selector.is_some());
        let port = p.spec.ingress[0].protocols.as_ref().expect("protocols")[0]
            .tcp
            .as_ref()
            .and_then(|t| t.destination_port.as_ref())
            .and_then(|d| d.number);
        assert_eq!(port, Some(80));
        let to = &p.spec.egress[0].to;
        assert_eq!(
            to[0].networks.as_deref(),
            Some(&["10.0.0.0/8".to_string()][..])
        );
        assert!(to[1].nodes.is_some());
        assert!(to[2].unknown.contains_key("domainNames"));
        assert!(to[3].unknown.contains_key("futurePeer"));
        let protocols = p.spec.egress[0].protocols.as_ref().expect("protocols");
        let range = protocols[0]
            .udp
            .as_ref()
            .and_then(|u| u.destination_port.as_ref())
            .and_then(|d| d.range.as_ref())
            .expect("range");
        assert_eq!((range.start, range.end), (Some(53), Some(54)));
        assert_eq!(protocols[1].destination_named_port.as_deref(), Some("dns"));
    }

    /// `deploy/crd` serves the kind the watchers ask for, and its schema keeps every field
    /// these types read (a field the schema does not list would be pruned by the API
    /// server before netpol sees it).
    #[test]
    fn the_deployed_crd_serves_what_the_agent_reads() {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
            CustomResourceDefinition, JSONSchemaProps,
        };
        let text = include_str!("../../../deploy/crd/clusternetworkpolicies.yaml");
        let crd: CustomResourceDefinition = serde_yaml::from_str(text).expect("a CRD");
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.names.kind, KIND);
        assert_eq!(crd.spec.names.plural, PLURAL);
        assert_eq!(crd.spec.scope, "Cluster");
        let v = &crd.spec.versions[0];
        assert_eq!(
            (v.name.as_str(), v.served, v.storage),
            (VERSION, true, true)
        );
        let root = v
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref());
        let field = |s: &JSONSchemaProps, path: &[&str]| -> JSONSchemaProps {
            let mut at = s.clone();
            for name in path {
                let next = match name.strip_suffix("[]") {
                    Some(name) => at.properties.as_ref().and_then(|p| p.get(name)).and_then(
                        |a| match &a.items {
                            Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(s)) => Some((**s).clone()),
                            _ => None,
                        },
                    ),
                    None => at.properties.as_ref().and_then(|p| p.get(*name)).cloned(),
                };
                at = next.unwrap_or_else(|| panic!("{path:?}: no {name}"));
            }
            at
        };
        let root = root.expect("a schema");
        for path in [
            &["spec", "tier"][..],
            &["spec", "priority"],
            &[
                "spec",
                "subject",
                "namespaces",
                "matchExpressions[]",
                "values",
            ],
            &["spec", "subject", "pods", "podSelector", "matchLabels"],
            &["spec", "ingress[]", "from[]", "pods", "namespaceSelector"],
            &[
                "spec",
                "ingress[]",
                "protocols[]",
                "tcp",
                "destinationPort",
                "range",
                "end",
            ],
            &["spec", "ingress[]", "protocols[]", "destinationNamedPort"],
            &["spec", "egress[]", "name"],
            &["spec", "egress[]", "action"],
            &["spec", "egress[]", "to[]", "networks"],
            &["spec", "egress[]", "to[]", "nodes", "matchLabels"],
            &[
                "spec",
                "egress[]",
                "protocols[]",
                "sctp",
                "destinationPort",
                "number",
            ],
        ] {
            field(root, path);
        }
        let rules = field(root, &["spec", "egress"]);
        assert_eq!(rules.max_items, Some(25));
    }
}
