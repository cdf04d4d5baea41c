//! The public ClusterNetworkPolicy cases (`cnp/cnp-public.json`) as cluster states and
//! the checks of each step. Pods get made-up addresses (nodes `172.18.0.N+1`, pods in
//! `10.244.0.0/16`, host-network pods their node's), so the cases can be read without a
//! sandbox: by the reference reading and by the compiler's tables.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol_agent::sources::cnp::ClusterNetworkPolicy;
use netpol_agent::state::{ClusterState, ContainerPort, NodeInfo, ObjectRef, PodInfo, Protocol};
use serde_json::Value;

use crate::reference::End;

pub const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/conformance/cnp/cnp-public.json"
);

/// One connectivity check of a step.
#[derive(Clone, Debug)]
pub struct Check {
    /// `case step N`.
    pub at: String,
    pub from: End,
    pub to: End,
    pub protocol: Protocol,
    pub port: u16,
    pub expect: bool,
}

/// Every step of every public case: the cluster after it, and its checks.
pub fn load() -> Vec<(ClusterState, Vec<Check>)> {
    let text = std::fs::read_to_string(PATH).expect("the public ClusterNetworkPolicy cases");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("json");
    let mut out = Vec::new();
    for case in &cases {
        let mut s = cluster(&case["model"]);
        for step in case["steps"].as_array().expect("steps") {
            apply_step(&mut s, step);
            let checks = (step["checks"].as_array().expect("checks").iter())
                .map(|c| Check {
                    at: format!("{} step {}", case["id"], step["step"]),
                    from: end(&s, c["from"].as_str().expect("from")),
                    to: end(&s, c["to"].as_str().expect("to")),
                    protocol: Protocol::parse(c["protocol"].as_str()).expect("protocol"),
                    port: c["port"].as_u64().expect("port") as u16,
                    expect: c["expect"].as_bool().expect("expect"),
                })
                .collect();
            out.push((s.clone(), checks));
        }
    }
    out
}

/// Decides every check of every step with `decide` (given a step's cluster and its
/// checks, an answer per check) and fails listing each answer the case disagrees with.
pub fn assert_every_check(who: &str, decide: impl Fn(&ClusterState, &[Check]) -> Vec<bool>) {
    let (mut checked, mut wrong) = (0, Vec::new());
    for (s, checks) in load() {
        for (c, got) in checks.iter().zip(decide(&s, &checks)) {
            checked += 1;
            if got != c.expect {
                wrong.push(format!(
                    "{}: {:?} -> {:?} {:?}/{}: {who} {got}, case {}",
                    c.at, c.from, c.to, c.protocol, c.port, c.expect
                ));
            }
        }
    }
    assert!(checked > 0);
    assert!(
        wrong.is_empty(),
        "{} of {checked} checks disagree:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// A step's labels and policies (each step states all the policies in force).
fn apply_step(s: &mut ClusterState, step: &Value) {
    for (ns, l) in step["namespace_labels"].as_object().into_iter().flatten() {
        s.namespaces.insert(ns.clone(), labels(l));
    }
    for (pod, l) in step["pod_labels"].as_object().into_iter().flatten() {
        let (ns, name) = pod.split_once('/').expect("NS/NAME");
        let p = (s.pods.get_mut(&ObjectRef::new(ns, name))).expect("a pod of the model");
        p.labels = labels(l);
    }
    s.cluster_policies.clear();
    for p in step["cluster_network_policies"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let p: ClusterNetworkPolicy =
            serde_json::from_str(&substitute(s, &p.to_string())).expect("a ClusterNetworkPolicy");
        s.cluster_policies
            .insert(p.metadata.name.clone().unwrap_or_default(), p);
    }
    s.policies.clear();
    for p in step["policies"].as_array().into_iter().flatten() {
        let p: NetworkPolicy =
            serde_json::from_str(&substitute(s, &p.to_string())).expect("a NetworkPolicy");
        s.upsert_policy(&p).expect("policy");
    }
}

pub fn node_ip(node: &str) -> IpAddr {
    let n: u8 = node.trim_start_matches("node-").parse().expect("node-N");
    IpAddr::V4(Ipv4Addr::new(172, 18, 0, 1 + n))
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

/// The model's cluster, without policies.
pub fn cluster(model: &Value) -> ClusterState {
    let mut s = ClusterState::default();
    for (ns, l) in model["namespaces"].as_object().expect("namespaces") {
        s.namespaces.insert(ns.clone(), labels(l));
    }
    let nodes = model["nodes"].as_u64().unwrap_or(2);
    for i in 1..=nodes {
        let name = format!("node-{i}");
        s.nodes.insert(
            name.clone(),
            NodeInfo {
                labels: labels(&model["node_labels"][&name]),
                ips: vec![node_ip(&name)],
                pod_cidrs: Vec::new(),
            },
        );
    }
    for (k, p) in model["pods"].as_array().expect("pods").iter().enumerate() {
        let node = p["node"]
            .as_str()
            .expect("cases place their pods")
            .to_string();
        let host_network = p["hostNetwork"].as_bool().unwrap_or(false);
        let ip = if host_network {
            node_ip(&node)
        } else {
            IpAddr::V4(Ipv4Addr::new(
                10,
                244,
                node_ip(&node).to_string().len() as u8,
                2 + k as u8,
            ))
        };
        let ports = p["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| ContainerPort {
                name: c["name"].as_str().map(str::to_string),
                port: c["port"].as_u64().expect("port") as u16,
                protocol: Protocol::parse(c["protocol"].as_str()).expect("protocol"),
            })
            .collect();
        s.pods.insert(
            ObjectRef::new(
                p["ns"].as_str().expect("ns"),
                p["name"].as_str().expect("name"),
            ),
            PodInfo {
                labels: labels(&p["labels"]),
                node: Some(node),
                host_network,
                terminated: false,
                ips: vec![ip],
                ports,
            },
        );
    }
    s
}

/// `{{ip NS/POD}}` is that pod's address.
pub fn substitute(s: &ClusterState, text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("{{ip ") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find("}}").expect("closed placeholder") + i;
        let (ns, name) = rest[i + 5..end].split_once('/').expect("NS/POD");
        out.push_str(&s.pods[&ObjectRef::new(ns, name)].ips[0].to_string());
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

pub fn end(s: &ClusterState, text: &str) -> End {
    let name = text.strip_prefix("pod:").unwrap_or(text);
    let (ns, pod) = name.split_once('/').expect("NS/NAME");
    let r = ObjectRef::new(ns, pod);
    let ip = s.pods[&r].ips[0];
    End::Pod(r, ip)
}
