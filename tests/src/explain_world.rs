//! A conformance case as `netpol-agent explain` sees it, without a sandbox: the model's
//! namespaces, pods (on the nodes and at the addresses the sandbox gives them), Services
//! and nodes, with each step's policies and labels, as Kubernetes objects; built into an
//! explain [`Cluster`] in memory, or written to a folder for the agent's `--policy-dir`.
//! Each check becomes a [`Query`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol_agent::explain::{Cluster, Endpoint, Query, parse_port};
use netpol_agent::state::UNREADABLE_ANNOTATION;
use serde_json::{Value, json};

use crate::cases::{CheckDef, Labels, Model, StepDef};

/// The state of one case at its current step.
pub struct World {
    model: Model,
    nodes: usize,
    /// `ns/pod` -> (node index, address), as `Sandbox::place_pods` assigns them.
    places: BTreeMap<String, (usize, Ipv4Addr)>,
    /// `ns/name` -> ClusterIP, as `Sandbox::add_service_addresses` assigns them.
    services: BTreeMap<String, Ipv4Addr>,
    ns_labels: BTreeMap<String, Labels>,
    pod_labels: BTreeMap<String, Labels>,
    policies: Vec<Value>,
}

fn node_name(i: usize) -> String {
    format!("node-{}", i + 1)
}

/// A node's primary address, as the sandbox gives it.
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 255, 0, i as u8 + 1)
}

impl World {
    pub fn new(model: &Model) -> Result<Self> {
        let nodes = model.node_count();
        let mut places = BTreeMap::new();
        let mut per_node = vec![0usize; nodes];
        let mut spread = 0;
        for pod in &model.pods {
            let node = match &pod.node {
                Some(name) => crate::sandbox::node_index(name, nodes)?,
                None => {
                    spread += 1;
                    (spread - 1) % nodes
                }
            };
            let host = u8::try_from(10 + per_node[node])
                .ok()
                .filter(|h| *h < 255)
                .ok_or_else(|| anyhow!("too many pods on {}", node_name(node)))?;
            per_node[node] += 1;
            let addr = Ipv4Addr::new(10, 244, node as u8 + 1, host);
            places.insert(format!("{}/{}", pod.ns, pod.name), (node, addr));
        }
        let services = model
            .services
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let addr = Ipv4Addr::new(10, 96, (k / 250) as u8, (k % 250) as u8 + 1);
                (format!("{}/{}", s.ns, s.name), addr)
            })
            .collect();
        Ok(World {
            model: model.clone(),
            nodes,
            places,
            services,
            ns_labels: model.namespaces.clone(),
            pod_labels: model
                .pods
                .iter()
                .map(|p| (format!("{}/{}", p.ns, p.name), p.labels.clone()))
                .collect(),
            policies: Vec::new(),
        })
    }

    /// A step: labels change on top of the earlier steps', policies are the full set.
    pub fn apply(&mut self, step: &StepDef) -> Result<()> {
        for (ns, l) in &step.namespace_labels {
            self.ns_labels.insert(ns.clone(), l.clone());
        }
        for (pod, l) in &step.pod_labels {
            if !self.pod_labels.contains_key(pod) {
                bail!("pod_labels names unknown pod {pod}");
            }
            self.pod_labels.insert(pod.clone(), l.clone());
        }
        self.policies = step
            .policies
            .iter()
            .map(|p| {
                let text = self.substitute(&p.to_string())?;
                let mut v: Value =
                    serde_json::from_str(&text).context("policy after substitution")?;
                if v.pointer("/metadata/namespace").is_none() {
                    v["metadata"]["namespace"] = json!("default");
                }
                Ok(v)
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// `{{ip NS/POD}}` and `{{cidr4 NS/POD}}`, as the sandbox substitutes them.
    fn substitute(&self, text: &str) -> Result<String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find("}}")
                .ok_or_else(|| anyhow!("unclosed placeholder in {text:?}"))?;
            let inner = rest[start + 2..start + end].trim();
            let (kind, pod) = inner
                .split_once(' ')
                .ok_or_else(|| anyhow!("bad placeholder {inner:?}"))?;
            let (_, addr) = self
                .places
                .get(pod.trim())
                .ok_or_else(|| anyhow!("placeholder names unknown pod {pod:?}"))?;
            match kind {
                "ip" => out.push_str(&addr.to_string()),
                "cidr4" => out.push_str(&ipnet::Ipv4Net::new(*addr, 4)?.trunc().to_string()),
                other => bail!("unknown placeholder {other:?}"),
            }
            rest = &rest[start + end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The cluster's objects: Namespaces, Nodes, Pods, Services (without policies).
    pub fn objects(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for (ns, labels) in &self.ns_labels {
            out.push(json!({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": ns, "labels": labels}}));
        }
        for i in 0..self.nodes {
            out.push(json!({"apiVersion": "v1", "kind": "Node",
                            "metadata": {"name": node_name(i)},
                            "status": {"addresses": [{"type": "InternalIP",
                                                      "address": node_addr(i).to_string()}]}}));
        }
        for p in &self.model.pods {
            let key = format!("{}/{}", p.ns, p.name);
            let (node, addr) = self.places[&key];
            let ports: Vec<Value> = p
                .ports
                .iter()
                .map(|c| json!({"name": c.name, "containerPort": c.port, "protocol": c.protocol}))
                .collect();
            out.push(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": p.name, "namespace": p.ns, "labels": self.pod_labels[&key]},
                "spec": {"nodeName": node_name(node),
                         "containers": [{"name": "main", "image": "sandbox", "ports": ports}]},
                "status": {"phase": "Running", "podIP": addr.to_string(),
                           "podIPs": [{"ip": addr.to_string()}]}}));
        }
        for s in &self.model.services {
            let ip = self.services[&format!("{}/{}", s.ns, s.name)].to_string();
            let ports: Vec<Value> = s
                .ports
                .iter()
                .map(|p| {
                    let mut port = json!({"port": p.port, "protocol": p.protocol});
                    if let Some(t) = &p.target_port {
                        port["targetPort"] = t.clone();
                    }
                    port
                })
                .collect();
            out.push(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": s.name, "namespace": s.ns},
                "spec": {"clusterIP": ip, "clusterIPs": [ip], "selector": s.selector,
                         "ports": ports}}));
        }
        out
    }

    /// The step's NetworkPolicies, placeholders replaced.
    pub fn policies(&self) -> &[Value] {
        &self.policies
    }

    /// The step's cluster, built in memory.
    pub fn cluster(&self) -> Result<Cluster> {
        let mut c = Cluster::default();
        for obj in self.objects() {
            let kind = obj["kind"].as_str().unwrap_or_default().to_string();
            match kind.as_str() {
                "Namespace" => {
                    c.state
                        .upsert_namespace(&serde_json::from_value::<Namespace>(obj)?)?;
                }
                "Pod" => {
                    c.state.upsert_pod(&serde_json::from_value::<Pod>(obj)?)?;
                }
                "Service" => c.add_service(&serde_json::from_value::<Service>(obj)?)?,
                "Node" => c.add_node(&serde_json::from_value::<Node>(obj)?)?,
                other => bail!("unexpected kind {other}"),
            }
        }
        for p in &self.policies {
            let policy = match serde_json::from_value::<NetworkPolicy>(p.clone()) {
                Ok(policy) => policy,
                // As the sources do: a policy that cannot be read isolates its namespace.
                Err(e) => serde_json::from_value(json!({
                    "metadata": {"name": p.pointer("/metadata/name"),
                                 "namespace": p.pointer("/metadata/namespace"),
                                 "annotations": {UNREADABLE_ANNOTATION: e.to_string()}},
                    "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}))
                .context("a policy without a name")?,
            };
            c.state.upsert_policy(&policy)?;
        }
        Ok(c)
    }

    /// The same objects as a folder for `--policy-dir`: the cluster and the policies, each
    /// a `kind: List` in a JSON file.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (file, items) in [
            ("cluster.json", self.objects()),
            ("policies.json", self.policies.clone()),
        ] {
            let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
            let path = dir.join(file);
            std::fs::write(&path, serde_json::to_vec_pretty(&list)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// A check's end as `explain` takes it on its command line (`ext:NAME` is the external
    /// host's address).
    pub fn cli_end(&self, s: &str) -> Result<String> {
        match s.strip_prefix("ext:") {
            Some(name) => {
                let ext = self
                    .model
                    .external
                    .iter()
                    .find(|e| e.name == name)
                    .ok_or_else(|| anyhow!("unknown external host {name:?}"))?;
                let ip: IpAddr = ext
                    .ip
                    .parse()
                    .with_context(|| format!("external {name}: bad ip {:?}", ext.ip))?;
                Ok(ip.to_string())
            }
            None => Ok(s.to_string()),
        }
    }

    /// `--from`, `--to` and `--port` of a check.
    pub fn cli_args(&self, check: &CheckDef) -> Result<[String; 3]> {
        Ok([
            self.cli_end(&check.from)?,
            self.cli_end(&check.to)?,
            format!("{}/{}", check.port, check.protocol),
        ])
    }

    pub fn query(&self, check: &CheckDef) -> Result<Query> {
        let [from, to, port] = self.cli_args(check)?;
        let (port, protocol) = parse_port(&port)?;
        Ok(Query {
            from: from.parse::<Endpoint>()?,
            to: to.parse::<Endpoint>()?,
            protocol,
            port,
            strict_node_traffic: false,
        })
    }
}
