//! Synthetic clusters for the control-plane benchmarks (`cargo xtask bench`): `pods` pods
//! over 100 nodes, in namespaces of 100 pods, as deployments of 10 replicas that share
//! their labels and ports, and one NetworkPolicy per deployment (1 per 10 pods).
//!
//! * `narrow`: each deployment admits one other deployment of its namespace on TCP 8080
//!   and may reach one other deployment on TCP 80 and kube-dns on UDP 53.
//! * `broad`: each deployment admits every pod of the cluster (`namespaceSelector: {}`)
//!   on TCP 8080 and may reach every pod of its own namespace.
//!
//! The benchmark's node is `node-0`; addresses are 10.0.0.0/8 (pod i is 10.i>>16.i>>8.i).
//!
//! `admin_egress` is a ClusterNetworkPolicy to add to either: the control-plane bench's
//! `narrow-admin` case, and `cnp_scale_probe`'s `one-admin`.

use std::net::{IpAddr, Ipv4Addr};

use netpol_agent::sources::cnp::ClusterNetworkPolicy;
use netpol_agent::state::{ClusterState, ContainerPort, Labels, ObjectRef, PodInfo, Protocol};
use serde_json::{Value, json};

pub const NODES: usize = 100;
pub const POD_PER_NAMESPACE: usize = 100;
pub const REPLICAS: usize = 10;
pub const LOCAL_NODE: &str = "node-0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Generator {
    Narrow,
    Broad,
}

impl Generator {
    pub fn name(self) -> &'static str {
        match self {
            Generator::Narrow => "narrow",
            Generator::Broad => "broad",
        }
    }
}

pub fn namespace_of(pod: usize) -> String {
    format!("ns-{}", pod / POD_PER_NAMESPACE)
}

/// The deployment (`app` label) a pod index belongs to, unique across the cluster.
pub fn app_of(pod: usize) -> String {
    format!("app-{}", pod / REPLICAS)
}

pub fn pod_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8))
}

pub fn pod(i: usize, app: &str) -> PodInfo {
    PodInfo {
        labels: Labels::from([
            ("app".to_string(), app.to_string()),
            ("tier".to_string(), format!("tier-{}", i % 3)),
        ]),
        node: Some(format!("node-{}", i % NODES)),
        host_network: false,
        terminated: false,
        ips: vec![pod_ip(i)],
        ports: vec![ContainerPort {
            name: Some("http".into()),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
    }
}

pub fn pod_ref(i: usize) -> ObjectRef {
    ObjectRef::new(namespace_of(i), format!("pod-{i}"))
}

/// The policy of deployment `d` (its pods are `d*10 .. d*10+9`).
pub fn policy(generator: Generator, d: usize, port: u16) -> serde_json::Value {
    let first = d * REPLICAS;
    let ns = namespace_of(first);
    let app = app_of(first);
    let deployments_per_ns = POD_PER_NAMESPACE / REPLICAS;
    let ns_first = (first / POD_PER_NAMESPACE) * POD_PER_NAMESPACE;
    // Another deployment of the same namespace.
    let other = app_of(ns_first + ((d + 1) % deployments_per_ns) * REPLICAS);
    let spec = match generator {
        Generator::Narrow => json!({
            "podSelector": {"matchLabels": {"app": app}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": other}}}],
                         "ports": [{"protocol": "TCP", "port": port}]}],
            "egress": [
                {"to": [{"podSelector": {"matchLabels": {"app": other}}}],
                 "ports": [{"protocol": "TCP", "port": 80}]},
                {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                         "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                 "ports": [{"protocol": "UDP", "port": 53}]}
            ]
        }),
        Generator::Broad => json!({
            "podSelector": {"matchLabels": {"app": app}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"namespaceSelector": {}}],
                         "ports": [{"protocol": "TCP", "port": port}]}],
            "egress": [{"to": [{"podSelector": {}}]}]
        }),
    };
    json!({"metadata": {"name": format!("pol-{app}"), "namespace": ns}, "spec": spec})
}

pub fn policy_ref(d: usize) -> ObjectRef {
    ObjectRef::new(
        namespace_of(d * REPLICAS),
        format!("pol-{}", app_of(d * REPLICAS)),
    )
}

/// A ClusterNetworkPolicy named `name` with `spec`.
pub fn cluster_policy(name: &str, spec: Value) -> Result<ClusterNetworkPolicy, serde_json::Error> {
    serde_json::from_value(json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))
}

/// An Admin policy over every namespace, two egress rules: a Deny to networks, then an
/// Accept to pods by label (`tier: tier-1`, a third of all pods). Every local pod gets
/// ordered egress sets.
pub fn admin_egress() -> Result<(String, ClusterNetworkPolicy), serde_json::Error> {
    let name = "admin-egress";
    let policy = cluster_policy(
        name,
        json!({"tier": "Admin", "priority": 10,
        "subject": {"namespaces": {}},
        "egress": [
          {"action": "Deny", "to": [{"networks": ["192.0.2.0/24", "198.51.100.0/24"]}]},
          {"action": "Accept", "to": [{"pods": {"namespaceSelector": {},
              "podSelector": {"matchLabels": {"tier": "tier-1"}}}}]}
        ]}),
    )?;
    Ok((name.to_string(), policy))
}

/// The whole cluster.
pub fn cluster(generator: Generator, pods: usize) -> Result<ClusterState, serde_json::Error> {
    let mut s = ClusterState::default();
    for n in 0..pods.div_ceil(POD_PER_NAMESPACE) {
        let name = format!("ns-{n}");
        s.namespaces.insert(
            name.clone(),
            Labels::from([("kubernetes.io/metadata.name".to_string(), name)]),
        );
    }
    for i in 0..pods {
        s.pods.insert(pod_ref(i), pod(i, &app_of(i)));
    }
    // kube-dns, which the narrow policies allow.
    s.namespaces.insert(
        "kube-system".into(),
        Labels::from([(
            "kubernetes.io/metadata.name".to_string(),
            "kube-system".into(),
        )]),
    );
    for i in 0..2 {
        let mut dns = pod(i + 1, "kube-dns");
        dns.labels = Labels::from([("k8s-app".to_string(), "kube-dns".to_string())]);
        dns.ips = vec![IpAddr::V4(Ipv4Addr::new(10, 255, 0, 10 + i as u8))];
        s.pods
            .insert(ObjectRef::new("kube-system", format!("coredns-{i}")), dns);
    }
    for d in 0..pods / REPLICAS {
        let p = serde_json::from_value(policy(generator, d, 8080))?;
        s.policies.insert(policy_ref(d), p);
    }
    Ok(s)
}

/// The same cluster (without kube-dns) as API objects for the sandbox's API server, in
/// creation order. Its addresses are moved to 10.64.0.0/10 and its nodes named
/// `bulk-node-K`, so that nothing collides with the sandbox's own addresses and no pod is
/// local to a sandbox node: agents index these pods as peers only.
pub fn api_objects(generator: Generator, pods: usize) -> Vec<(crate::apiserver::Kind, Value)> {
    use crate::apiserver::Kind;
    let mut out = Vec::new();
    for n in 0..pods.div_ceil(POD_PER_NAMESPACE) {
        let name = format!("ns-{n}");
        out.push((
            Kind::Namespace,
            json!({"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}}),
        ));
    }
    for i in 0..pods {
        let p = pod(i, &app_of(i));
        let ip = Ipv4Addr::new(10, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8).to_string();
        let r = pod_ref(i);
        out.push((
            Kind::Pod,
            json!({"metadata": {"name": r.name, "namespace": r.namespace, "labels": p.labels},
                   "spec": {"nodeName": format!("bulk-node-{}", i % NODES),
                            "containers": [{"name": "main", "image": "bulk",
                                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
                   "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}),
        ));
    }
    for d in 0..pods / REPLICAS {
        out.push((Kind::NetworkPolicy, policy(generator, d, 8080)));
    }
    out
}
