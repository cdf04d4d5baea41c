//! `ClusterState`: the snapshot of the cluster that policy needs, trimmed from the API
//! objects. Every source (file folder now, API watchers later) produces this.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use tracing::warn;

use crate::sources::cnp::ClusterNetworkPolicy;

pub type Labels = BTreeMap<String, String>;

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The API's spelling; absent means TCP.
    pub fn parse(s: Option<&str>) -> Result<Self, String> {
        match s {
            None | Some("TCP") => Ok(Protocol::Tcp),
            Some("UDP") => Ok(Protocol::Udp),
            Some("SCTP") => Ok(Protocol::Sctp),
            Some(other) => Err(format!(
                "unknown protocol {other:?} (expected TCP, UDP or SCTP)"
            )),
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => netpol_common::PROTO_TCP,
            Protocol::Udp => netpol_common::PROTO_UDP,
            Protocol::Sctp => netpol_common::PROTO_SCTP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod, reduced to what policy needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub labels: Labels,
    pub node: Option<String>,
    pub host_network: bool,
    /// Succeeded or Failed: its IPs may already belong to another pod.
    pub terminated: bool,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<ContainerPort>,
}

impl PodInfo {
    /// Pods that policy can select as peers or apply to.
    pub fn is_policy_subject(&self) -> bool {
        !self.host_network && !self.terminated && !self.ips.is_empty()
    }

    /// The number a named port means on this pod, for one protocol.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterState {
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: BTreeMap<ObjectRef, PodInfo>,
    /// ClusterIPs and ports of each Service (headless Services have no address).
    pub services: BTreeMap<ObjectRef, ServiceInfo>,
    pub policies: BTreeMap<ObjectRef, NetworkPolicy>,
    /// ClusterNetworkPolicies by name (cluster-scoped).
    pub cluster_policies: BTreeMap<String, ClusterNetworkPolicy>,
    /// Nodes by name: what `nodes` peers of ClusterNetworkPolicies select.
    pub nodes: BTreeMap<String, NodeInfo>,
}

/// A node, reduced to what ClusterNetworkPolicy needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    /// `spec.podCIDRs`: where the node's pods get their addresses. A pod address the
    /// agent cannot name is told from an outside one by these.
    pub pod_cidrs: Vec<ipnet::IpNet>,
}

/// What kube-proxy translates for a Service: each ClusterIP on each port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    pub ips: Vec<IpAddr>,
    pub ports: Vec<(Protocol, u16)>,
}

/// Why an object could not be taken into the state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{kind} without metadata.name")]
    MissingName { kind: &'static str },
    #[error("{kind} {name} without metadata.namespace")]
    MissingNamespace { kind: &'static str, name: String },
    #[error("pod {pod}: bad IP {ip:?}")]
    BadPodIp { pod: ObjectRef, ip: String },
    #[error("pod {pod}: container port {port} is out of range")]
    BadContainerPort { pod: ObjectRef, port: i32 },
    #[error("pod {pod}: {message}")]
    BadPodProtocol { pod: ObjectRef, message: String },
}

fn name_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    kind: &'static str,
) -> Result<String, StateError> {
    meta.name.clone().ok_or(StateError::MissingName { kind })
}

fn namespaced(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    kind: &'static str,
) -> Result<ObjectRef, StateError> {
    let name = name_of(meta, kind)?;
    let namespace = meta
        .namespace
        .clone()
        .ok_or_else(|| StateError::MissingNamespace {
            kind,
            name: name.clone(),
        })?;
    Ok(ObjectRef { namespace, name })
}

impl ClusterState {
    /// Labels of a namespace. A namespace the state has not seen still carries the label
    /// the API server always sets.
    pub fn namespace_labels(&self, namespace: &str) -> Labels {
        self.namespaces.get(namespace).cloned().unwrap_or_else(|| {
            Labels::from([(
                "kubernetes.io/metadata.name".to_string(),
                namespace.to_string(),
            )])
        })
    }

    /// Each `upsert_*` returns whether the state changed: an update of what policy does
    /// not read (status, managedFields, other annotations) changes nothing.
    pub fn upsert_namespace(&mut self, ns: &Namespace) -> Result<bool, StateError> {
        let name = name_of(&ns.metadata, "Namespace")?;
        let mut labels: Labels = ns.metadata.labels.clone().unwrap_or_default();
        labels
            .entry("kubernetes.io/metadata.name".to_string())
            .or_insert_with(|| name.clone());
        Ok(replace(&mut self.namespaces, name, labels))
    }

    pub fn upsert_pod(&mut self, pod: &Pod) -> Result<bool, StateError> {
        let key = namespaced(&pod.metadata, "Pod")?;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ip_strings: Vec<String> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().map(|i| i.ip.clone()).collect())
            .unwrap_or_default();
        if let Some(ip) = status.and_then(|s| s.pod_ip.clone())
            && !ip_strings.contains(&ip)
        {
            ip_strings.insert(0, ip);
        }
        let mut ips = Vec::new();
        for s in ip_strings {
            let ip: IpAddr = s.parse().map_err(|_| StateError::BadPodIp {
                pod: key.clone(),
                ip: s.clone(),
            })?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        let mut ports = Vec::new();
        for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
            for p in c.ports.as_deref().unwrap_or_default() {
                let port = u16::try_from(p.container_port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or(StateError::BadContainerPort {
                        pod: key.clone(),
                        port: p.container_port,
                    })?;
                let protocol = Protocol::parse(p.protocol.as_deref()).map_err(|message| {
                    StateError::BadPodProtocol {
                        pod: key.clone(),
                        message,
                    }
                })?;
                ports.push(ContainerPort {
                    name: p.name.clone(),
                    port,
                    protocol,
                });
            }
        }
        let phase = status.and_then(|s| s.phase.as_deref());
        let info = PodInfo {
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            node: spec.and_then(|s| s.node_name.clone()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            terminated: matches!(phase, Some("Succeeded") | Some("Failed")),
            ips,
            ports,
        };
        Ok(replace(&mut self.pods, key, info))
    }

    pub fn upsert_service(&mut self, svc: &Service) -> Result<bool, StateError> {
        let key = namespaced(&svc.metadata, "Service")?;
        let spec = svc.spec.as_ref();
        let mut ips: Vec<String> = spec.and_then(|s| s.cluster_ips.clone()).unwrap_or_default();
        if let Some(ip) = spec.and_then(|s| s.cluster_ip.clone())
            && !ips.contains(&ip)
        {
            ips.insert(0, ip);
        }
        // "None" (headless) and anything else unparsable is not a Service address.
        let ips = ips.iter().filter_map(|s| s.parse().ok()).collect();
        // A port whose protocol we do not know is not translated for us to pass.
        let ports = spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let proto = Protocol::parse(p.protocol.as_deref()).ok()?;
                Some((proto, u16::try_from(p.port).ok()?))
            })
            .collect();
        Ok(replace(&mut self.services, key, ServiceInfo { ips, ports }))
    }

    /// Keeps the spec, the name and netpol's own annotations: nothing else of the object
    /// is read, and the rest (managedFields above all) is most of its size.
    pub fn upsert_policy(&mut self, policy: &NetworkPolicy) -> Result<bool, StateError> {
        let key = namespaced(&policy.metadata, "NetworkPolicy")?;
        let kept: BTreeMap<String, String> = policy
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| *k == UNREADABLE_ANNOTATION || *k == MODE_ANNOTATION)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let annotations = (!kept.is_empty()).then_some(kept);
        let trimmed = NetworkPolicy {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(key.name.clone()),
                namespace: Some(key.namespace.clone()),
                annotations,
                ..Default::default()
            },
            spec: policy.spec.clone(),
        };
        Ok(replace(&mut self.policies, key, trimmed))
    }

    /// Keeps the name and the spec.
    pub fn upsert_cluster_policy(
        &mut self,
        policy: &ClusterNetworkPolicy,
    ) -> Result<bool, StateError> {
        let name = name_of(&policy.metadata, "ClusterNetworkPolicy")?;
        let trimmed = ClusterNetworkPolicy {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            spec: policy.spec.clone(),
        };
        Ok(replace(&mut self.cluster_policies, name, trimmed))
    }

    /// Labels and the addresses of `status.addresses` that are IPs (host names are not).
    pub fn upsert_node(&mut self, node: &Node) -> Result<bool, StateError> {
        let name = name_of(&node.metadata, "Node")?;
        let mut ips: Vec<IpAddr> = Vec::new();
        for a in node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
        {
            if let Ok(ip) = a.address.parse::<IpAddr>()
                && !ips.contains(&ip)
            {
                ips.push(ip);
            }
        }
        let spec = node.spec.as_ref();
        let mut pod_cidrs = Vec::new();
        let listed = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
        for c in listed.iter().chain(spec.and_then(|s| s.pod_cidr.as_ref())) {
            match c.parse::<ipnet::IpNet>() {
                Ok(net) if !pod_cidrs.contains(&net.trunc()) => pod_cidrs.push(net.trunc()),
                Ok(_) => {}
                Err(e) => warn!(node = %name, cidr = %c, error = %e, "ignoring a bad podCIDR"),
            }
        }
        let info = NodeInfo {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            ips,
            pod_cidrs,
        };
        Ok(replace(&mut self.nodes, name, info))
    }
}

/// Inserts `value` unless `map` already holds it; whether it did.
fn replace<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: V) -> bool {
    if map.get(&key) == Some(&value) {
        return false;
    }
    map.insert(key, value);
    true
}

/// Annotation carrying why a policy could not be read; `compile` reports it.
pub const UNREADABLE_ANNOTATION: &str = "netpol.dev/unreadable";

/// `audit` stages a policy: it is compiled and judged but drops nothing (see
/// `compile::Mode`). `enforce`, or no annotation, enforces it.
pub const MODE_ANNOTATION: &str = "netpol.io/mode";

/// The stand-in for a NetworkPolicy whose body does not parse: same name, isolates every
/// pod of its namespace both ways, allows nothing. `None` without a name and namespace.
pub fn unreadable_policy(raw: &serde_yaml::Value, error: &str) -> Option<NetworkPolicy> {
    let meta = raw.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let namespace = meta.get("namespace")?.as_str()?;
    let value = serde_json::json!({
        "metadata": {"name": name, "namespace": namespace,
                     "annotations": {UNREADABLE_ANNOTATION: error}},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    });
    serde_json::from_value(value).ok()
}

/// `namespace/name` of any namespaced object, or `/name` for cluster-scoped ones.
pub fn object_ref(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ObjectRef> {
    Some(ObjectRef::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(labels: serde_json::Value, phase_note: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "labels": labels,
                         "resourceVersion": phase_note},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"podIP": "10.0.0.5", "phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True", "message": phase_note}]}
        }))
        .expect("a pod")
    }

    #[test]
    fn updates_of_what_policy_does_not_read_change_nothing() {
        let mut s = ClusterState::default();
        assert!(
            s.upsert_pod(&pod(serde_json::json!({"app": "web"}), "1"))
                .unwrap()
        );
        // A status condition and the resourceVersion moved: not news for policy.
        assert!(
            !s.upsert_pod(&pod(serde_json::json!({"app": "web"}), "2"))
                .unwrap()
        );
        assert!(
            s.upsert_pod(&pod(serde_json::json!({"app": "api"}), "3"))
                .unwrap()
        );

        let policy = |manager: &str, port: i32| -> NetworkPolicy {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "default",
                             "managedFields": [{"manager": manager}],
                             "annotations": {"note": manager}},
                "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": port}]}]}
            }))
            .expect("a policy")
        };
        assert!(s.upsert_policy(&policy("kubectl", 80)).unwrap());
        assert!(!s.upsert_policy(&policy("helm", 80)).unwrap());
        assert!(s.upsert_policy(&policy("helm", 81)).unwrap());
        // What is kept of a policy: its name and spec.
        let kept = &s.policies[&ObjectRef::new("default", "p")];
        assert!(kept.metadata.managed_fields.is_none());
        assert!(kept.metadata.annotations.is_none());
    }
}
