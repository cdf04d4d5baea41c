//! Random clusters and policies for property tests: a few namespaces and pods with labels
//! from a small vocabulary (so selectors often match), named ports that mean different
//! numbers on different pods, dual-stack pods, and policies using every peer and port kind,
//! some of them invalid on purpose.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netpol_agent::state::{
    ClusterState, ContainerPort, Labels, NodeInfo, ObjectRef, PodInfo, Protocol,
};
use serde_json::{Value, json};

/// splitmix64: tiny, seedable, good enough for test inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

pub const NODES: [&str; 2] = ["node-a", "node-b"];
const KEYS: [&str; 3] = ["app", "tier", "env"];
const VALUES: [&str; 3] = ["one", "two", "three"];
const PORT_NAMES: [&str; 3] = ["http", "dns", "metrics"];
const NUMBERS: [u16; 7] = [53, 80, 81, 82, 84, 8080, 9000];
pub const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

/// Addresses outside the pods, for ipBlocks and flows.
pub const OUTSIDE: [&str; 4] = ["192.0.2.5", "198.51.100.1", "203.0.113.77", "2001:db8::1"];

fn labels(rng: &mut Rng) -> Labels {
    let mut l = Labels::new();
    for k in KEYS {
        if rng.chance(60) {
            l.insert(k.to_string(), rng.pick(&VALUES).to_string());
        }
    }
    l
}

pub fn cluster(rng: &mut Rng) -> ClusterState {
    let mut s = ClusterState::default();
    let namespaces = ["ns-a", "ns-b", "ns-c"];
    for ns in namespaces {
        let mut l = labels(rng);
        l.insert("kubernetes.io/metadata.name".into(), ns.into());
        s.namespaces.insert(ns.into(), l);
    }
    let pods = 3 + rng.below(6);
    let mut previous: Option<(&str, Labels)> = None;
    for i in 0..pods {
        let mut ips = vec![IpAddr::V4(Ipv4Addr::new(
            10,
            0,
            (i % 3) as u8,
            10 + i as u8,
        ))];
        if rng.chance(30) {
            ips.push(IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0,
                0,
                0,
                0,
                0,
                (i % 3) as u16,
                10 + i as u16,
            )));
        }
        let mut ports = Vec::new();
        for name in PORT_NAMES {
            if rng.chance(50) {
                ports.push(ContainerPort {
                    name: Some(name.into()),
                    port: *rng.pick(&NUMBERS),
                    protocol: *rng.pick(&PROTOCOLS),
                });
            }
        }
        // Often a replica of the previous pod: same namespace and labels (so the same
        // identity, for selectors), its own named ports.
        let (ns, pod_labels) = match &previous {
            Some((ns, l)) if rng.chance(50) => (*ns, l.clone()),
            _ => (*rng.pick(&namespaces), labels(rng)),
        };
        previous = Some((ns, pod_labels.clone()));
        s.pods.insert(
            ObjectRef::new(ns, format!("pod-{i}")),
            PodInfo {
                labels: pod_labels,
                node: Some(rng.pick(&NODES).to_string()),
                host_network: rng.chance(5),
                terminated: false,
                ips,
                ports,
            },
        );
    }
    let policies = 1 + rng.below(4);
    for i in 0..policies {
        let ns = *rng.pick(&namespaces);
        let p = policy(rng, &s, &format!("pol-{i}"), ns);
        let parsed = serde_json::from_value(p).expect("generated policies have the API's shape");
        s.policies
            .insert(ObjectRef::new(ns, format!("pol-{i}")), parsed);
    }
    // The same policy rolled out to several namespaces (a common practice): identical
    // rules whose selectors mean different pods in each.
    if rng.chance(40) {
        let copies: Vec<_> = s.policies.values().cloned().collect();
        let mut p = rng.pick(&copies).clone();
        let ns = *rng.pick(&namespaces);
        p.metadata.namespace = Some(ns.to_string());
        p.metadata.name = Some("copy".to_string());
        s.policies.insert(ObjectRef::new(ns, "copy"), p);
    }
    s
}

fn selector(rng: &mut Rng) -> Value {
    match rng.below(4) {
        0 => json!({}),
        1 => json!({"matchLabels": {*rng.pick(&KEYS): *rng.pick(&VALUES)}}),
        2 => {
            let op = *rng.pick(&["In", "NotIn", "Exists", "DoesNotExist"]);
            let values: Vec<&str> = match op {
                "In" | "NotIn" => vec![*rng.pick(&VALUES), *rng.pick(&VALUES)],
                _ => vec![],
            };
            let mut e = json!({"key": *rng.pick(&KEYS), "operator": op});
            if !values.is_empty() {
                e["values"] = json!(values);
            }
            json!({"matchExpressions": [e]})
        }
        _ => {
            // Invalid now and then: an operator the API does not know.
            if rng.chance(10) {
                json!({"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["one"]}]})
            } else {
                json!({"matchLabels": {*rng.pick(&KEYS): *rng.pick(&VALUES), *rng.pick(&KEYS): *rng.pick(&VALUES)}})
            }
        }
    }
}

fn some_cidr(rng: &mut Rng, s: &ClusterState) -> (String, Vec<String>) {
    let pod_ips: Vec<IpAddr> = s.pods.values().flat_map(|p| p.ips.clone()).collect();
    match rng.below(7) {
        0 => ("0.0.0.0/0".into(), vec![]),
        1 => (
            "10.0.0.0/8".into(),
            vec![format!(
                "{}/32",
                pod_ips
                    .iter()
                    .find(|i| i.is_ipv4())
                    .copied()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10)))
            )],
        ),
        2 => ("10.0.1.0/24".into(), vec![]),
        3 => {
            let ip = rng.pick(&pod_ips);
            let len = if ip.is_ipv4() { 32 } else { 128 };
            (format!("{ip}/{len}"), vec![])
        }
        4 => ("192.0.2.0/24".into(), vec!["192.0.2.0/28".into()]),
        5 => ("::/0".into(), vec!["fd00::/16".into()]),
        // Invalid on purpose (the last one is valid IPv6, for variety).
        _ => match rng.below(3) {
            0 => ("10.0.0.0/33".into(), vec![]),
            1 => ("10.0.0.0/16".into(), vec!["11.0.0.0/24".into()]),
            _ => ("fd00::/8".into(), vec![]),
        },
    }
}

fn peer(rng: &mut Rng, s: &ClusterState) -> Value {
    match rng.below(5) {
        0 => json!({"podSelector": selector(rng)}),
        1 => json!({"namespaceSelector": selector(rng)}),
        2 => json!({"podSelector": selector(rng), "namespaceSelector": selector(rng)}),
        _ => {
            let (cidr, except) = some_cidr(rng, s);
            if except.is_empty() {
                json!({"ipBlock": {"cidr": cidr}})
            } else {
                json!({"ipBlock": {"cidr": cidr, "except": except}})
            }
        }
    }
}

fn port(rng: &mut Rng) -> Value {
    let proto = match rng.below(4) {
        0 => None,
        1 => Some("TCP"),
        2 => Some("UDP"),
        _ => Some("SCTP"),
    };
    let mut p = match rng.below(6) {
        0 => json!({}),
        1 | 2 => json!({"port": *rng.pick(&NUMBERS)}),
        3 => json!({"port": 80, "endPort": *rng.pick(&[81u16, 9000, 79])}),
        _ => json!({"port": *rng.pick(&PORT_NAMES)}),
    };
    if let Some(proto) = proto {
        p["protocol"] = json!(proto);
    }
    p
}

fn rules(rng: &mut Rng, s: &ClusterState, peer_field: &str) -> Value {
    let n = rng.below(4);
    let mut out = Vec::new();
    for _ in 0..n {
        let mut rule = json!({});
        if rng.chance(70) {
            let peers: Vec<Value> = (0..1 + rng.below(2)).map(|_| peer(rng, s)).collect();
            rule[peer_field] = json!(peers);
        }
        if rng.chance(60) {
            let ports: Vec<Value> = (0..1 + rng.below(3)).map(|_| port(rng)).collect();
            rule["ports"] = json!(ports);
        }
        out.push(rule);
    }
    json!(out)
}

fn policy(rng: &mut Rng, s: &ClusterState, name: &str, ns: &str) -> Value {
    let mut spec = json!({"podSelector": selector(rng)});
    match rng.below(4) {
        0 => {}
        1 => spec["policyTypes"] = json!(["Ingress"]),
        2 => spec["policyTypes"] = json!(["Egress"]),
        _ => spec["policyTypes"] = json!(["Ingress", "Egress"]),
    }
    if rng.chance(70) {
        spec["ingress"] = rules(rng, s, "from");
    }
    if rng.chance(70) {
        spec["egress"] = rules(rng, s, "to");
    }
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// Every address of the cluster plus the outside ones, by family.
pub fn addresses(s: &ClusterState) -> BTreeMap<bool, Vec<IpAddr>> {
    let mut out: BTreeMap<bool, Vec<IpAddr>> = BTreeMap::new();
    for ip in s.pods.values().flat_map(|p| p.ips.iter().copied()) {
        out.entry(ip.is_ipv4()).or_default().push(ip);
    }
    for ip in OUTSIDE {
        let ip: IpAddr = ip.parse().expect("constant");
        out.entry(ip.is_ipv4()).or_default().push(ip);
    }
    out
}

/// Node objects for `NODES` (labels, an IPv4 and sometimes an IPv6 address) and up to
/// four ClusterNetworkPolicies of both tiers: equal priorities, every action, every peer
/// and protocol kind, some parts invalid on purpose (they fail closed).
pub fn add_cluster_policies(rng: &mut Rng, s: &mut ClusterState) {
    for (i, node) in NODES.iter().enumerate() {
        let mut ips = vec![IpAddr::V4(Ipv4Addr::new(172, 18, 0, 2 + i as u8))];
        if rng.chance(50) {
            ips.push(IpAddr::V6(Ipv6Addr::new(
                0xfc00,
                0,
                0,
                0,
                0,
                0,
                0,
                2 + i as u16,
            )));
        }
        s.nodes.insert(
            node.to_string(),
            // No pod ranges: every pod is known, and outside addresses are not pods.
            NodeInfo {
                labels: labels(rng),
                ips,
                pod_cidrs: Vec::new(),
            },
        );
    }
    for i in 0..rng.below(5) {
        let name = format!("cnp-{i}");
        let p = cluster_policy(rng, s, &name);
        let parsed = serde_json::from_value(p).expect("generated policies read");
        s.cluster_policies.insert(name, parsed);
    }
}

fn cluster_policy(rng: &mut Rng, s: &ClusterState, name: &str) -> Value {
    let subject = if rng.chance(50) {
        json!({"namespaces": selector(rng)})
    } else {
        json!({"pods": {"namespaceSelector": selector(rng), "podSelector": selector(rng)}})
    };
    let mut spec = json!({
        "tier": *rng.pick(&["Admin", "Admin", "Baseline"]),
        "priority": *rng.pick(&[0, 5, 5, 10, 1000]),
        "subject": subject,
    });
    for (dir, field) in [("ingress", "from"), ("egress", "to")] {
        let rules: Vec<Value> = (0..rng.below(4))
            .map(|_| cluster_rule(rng, s, dir, field))
            .collect();
        if !rules.is_empty() {
            spec[dir] = json!(rules);
        }
    }
    json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
           "metadata": {"name": name}, "spec": spec})
}

fn cluster_rule(rng: &mut Rng, s: &ClusterState, dir: &str, field: &str) -> Value {
    let action = if rng.chance(3) {
        "Drop"
    } else {
        *rng.pick(&["Accept", "Deny", "Pass"])
    };
    let peers: Vec<Value> = (0..1 + rng.below(2))
        .map(|_| cluster_peer(rng, s, dir))
        .collect();
    let mut rule = json!({"action": action, field: peers});
    if rng.chance(50) {
        let protocols: Vec<Value> = (0..1 + rng.below(2)).map(|_| cluster_port(rng)).collect();
        rule["protocols"] = json!(protocols);
    }
    rule
}

fn cluster_peer(rng: &mut Rng, s: &ClusterState, dir: &str) -> Value {
    let kinds = if dir == "egress" { 6 } else { 2 };
    match rng.below(kinds) {
        0 => json!({"namespaces": selector(rng)}),
        1 => json!({"pods": {"namespaceSelector": selector(rng), "podSelector": selector(rng)}}),
        2 | 3 => {
            let (cidr, _) = some_cidr(rng, s);
            json!({"networks": [cidr]})
        }
        4 => json!({"nodes": selector(rng)}),
        // A peer this version does not know: fails closed.
        _ => json!({"futurePeer": {}}),
    }
}

fn cluster_port(rng: &mut Rng) -> Value {
    let proto = *rng.pick(&["tcp", "udp", "sctp"]);
    match rng.below(4) {
        0 => json!({proto: {"destinationPort": {"number": *rng.pick(&NUMBERS)}}}),
        1 => {
            json!({proto: {"destinationPort": {"range": {"start": 80, "end": *rng.pick(&[82u16, 9000])}}}})
        }
        2 => json!({"destinationNamedPort": *rng.pick(&PORT_NAMES)}),
        _ => json!({proto: {}}),
    }
}
