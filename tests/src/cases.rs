//! The conformance case format (`shared/conformance/FORMAT.md`), and each case turned into
//! concrete steps: a model, the policies and labels in force, and the checks to run.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortDef {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
}

fn tcp() -> String {
    "TCP".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodDef {
    pub ns: String,
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub ports: Vec<PortDef>,
    /// `node-K`; pods without one are spread over the nodes by the sandbox.
    #[serde(default)]
    pub node: Option<String>,
    /// Shares its node's network namespace and address (needs `node`).
    #[serde(rename = "hostNetwork", default)]
    pub host_network: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    /// A number or a container port name.
    #[serde(rename = "targetPort", default)]
    pub target_port: Option<Value>,
    #[serde(default = "tcp")]
    pub protocol: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    pub ns: String,
    pub name: String,
    pub selector: Labels,
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalDef {
    pub name: String,
    pub ip: String,
    #[serde(default)]
    pub ports: Vec<PortDef>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: Vec<PodDef>,
    #[serde(default)]
    pub services: Vec<ServiceDef>,
    #[serde(default)]
    pub external: Vec<ExternalDef>,
    /// How many nodes (`node-1` ... `node-N`); 2 when absent.
    #[serde(default)]
    pub nodes: Option<usize>,
    /// MTU of a router hop between the nodes and the external hosts.
    #[serde(default)]
    pub external_path_mtu: Option<u32>,
    /// Labels of the Node objects (`node-K`), which ClusterNetworkPolicy `nodes` peers
    /// select.
    #[serde(default)]
    pub node_labels: BTreeMap<String, Labels>,
}

pub const DEFAULT_NODES: usize = 2;

impl Model {
    /// FORMAT.md's default model: namespaces x, y, z with pods a, b, c, each serving 80 and
    /// 81 on TCP, UDP and SCTP, and one Service per pod.
    pub fn xyz() -> Self {
        let mut namespaces = BTreeMap::new();
        let mut pods = Vec::new();
        let mut services = Vec::new();
        for ns in ["x", "y", "z"] {
            namespaces.insert(
                ns.to_string(),
                Labels::from([
                    ("kubernetes.io/metadata.name".to_string(), ns.to_string()),
                    ("ns".to_string(), ns.to_string()),
                ]),
            );
            for pod in ["a", "b", "c"] {
                let mut ports = Vec::new();
                let mut svc_ports = Vec::new();
                for port in [80u16, 81] {
                    for proto in ["TCP", "UDP", "SCTP"] {
                        ports.push(PortDef {
                            name: Some(format!("serve-{port}-{}", proto.to_lowercase())),
                            port,
                            protocol: proto.into(),
                        });
                        svc_ports.push(ServicePort {
                            name: None,
                            port,
                            target_port: Some(Value::from(port)),
                            protocol: proto.into(),
                        });
                    }
                }
                pods.push(PodDef {
                    ns: ns.into(),
                    name: pod.into(),
                    labels: Labels::from([("pod".to_string(), pod.to_string())]),
                    ports,
                    node: None,
                    host_network: false,
                });
                services.push(ServiceDef {
                    ns: ns.into(),
                    name: format!("s-{ns}-{pod}"),
                    selector: Labels::from([("pod".to_string(), pod.to_string())]),
                    ports: svc_ports,
                });
            }
        }
        Model {
            namespaces,
            pods,
            services,
            external: Vec::new(),
            nodes: None,
            external_path_mtu: None,
            node_labels: BTreeMap::new(),
        }
    }

    pub fn node_count(&self) -> usize {
        self.nodes.unwrap_or(DEFAULT_NODES)
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Probes {
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
}

/// What a check does (FORMAT.md, "kind").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    #[default]
    Connect,
    Stray,
    Open,
    Use,
    Close,
}

/// One check. `use` and `close` name a held connection and carry no endpoints of their
/// own; `close` carries no `expect`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckDef {
    #[serde(default)]
    pub kind: CheckKind,
    /// The held connection (`open`, `use`, `close`).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default)]
    pub expect: bool,
    #[serde(default)]
    pub attempts: Option<u32>,
    #[serde(default)]
    pub answered_by: Option<Vec<String>>,
    /// `connect`: bytes each way after the request.
    #[serde(default)]
    pub bytes: Option<usize>,
    /// `stray`: the segment's TCP flags.
    #[serde(default)]
    pub flags: Option<String>,
    /// `stray`: its source port.
    #[serde(default)]
    pub sport: Option<u16>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct StepDef {
    #[serde(default)]
    pub policies: Vec<Value>,
    /// Every ClusterNetworkPolicy in force for the step.
    #[serde(default)]
    pub cluster_network_policies: Vec<Value>,
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, Labels>,
    #[serde(default)]
    pub pod_labels: BTreeMap<String, Labels>,
    #[serde(default)]
    pub probes: Option<Probes>,
    #[serde(default)]
    pub expected: Option<BTreeMap<String, BTreeMap<String, bool>>>,
    #[serde(default)]
    pub checks: Vec<CheckDef>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Case {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub model: Option<Model>,
    #[serde(default)]
    pub ignore_loopback: bool,
    #[serde(default)]
    pub steps: Option<Vec<StepDef>>,
    #[serde(flatten)]
    pub top: StepDef,
}

impl Case {
    pub fn model(&self) -> Model {
        self.model.clone().unwrap_or_else(Model::xyz)
    }

    /// `steps` when present (authoritative), else the single top-level step.
    pub fn steps(&self) -> Vec<StepDef> {
        match &self.steps {
            Some(s) => s.clone(),
            None => vec![self.top.clone()],
        }
    }

    /// The checks of a step: its own, plus one per asserted cell of `expected`.
    pub fn checks_of(&self, step: &StepDef) -> Result<Vec<CheckDef>> {
        let mut checks = step.checks.clone();
        if let Some(expected) = &step.expected {
            let Some(probes) = &step.probes else {
                bail!("case {}: a step with `expected` needs `probes`", self.id);
            };
            let model = self.model();
            for (from, row) in expected {
                for (to, allowed) in row {
                    if self.ignore_loopback && from == to {
                        continue;
                    }
                    let (ns, pod) = to
                        .split_once('/')
                        .with_context(|| format!("case {}: bad pod {to:?}", self.id))?;
                    // Probes go to the destination's Service when the model has one.
                    let svc = model.services.iter().find(|s| {
                        s.ns == ns
                            && model.pods.iter().any(|p| {
                                p.ns == ns && p.name == pod && selects(&s.selector, &p.labels)
                            })
                            && s.name == format!("s-{ns}-{pod}")
                    });
                    let to = match svc {
                        Some(s) => format!("svc:{}/{}", s.ns, s.name),
                        None => format!("pod:{to}"),
                    };
                    checks.push(CheckDef {
                        from: from.clone(),
                        to,
                        port: probes.port,
                        protocol: probes.protocol.clone(),
                        expect: *allowed,
                        ..CheckDef::default()
                    });
                }
            }
        }
        Ok(checks)
    }
}

pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A case as read from a file: runnable, or refused with the reason.
pub enum Loaded {
    Case(Box<Case>),
    Refused {
        id: String,
        steps: usize,
        reason: String,
    },
}

/// Every case of a file; a case that uses something this runner does not implement (or
/// cannot be read) is refused, not run without it.
pub fn load_checked(path: &Path) -> Result<Vec<Loaded>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let raw: Vec<Value> =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(raw.into_iter().map(load_one).collect())
}

fn load_one(raw: Value) -> Loaded {
    let id = raw
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("(no id)")
        .to_string();
    let steps = raw
        .get("steps")
        .and_then(Value::as_array)
        .map_or(1, |s| s.len().max(1));
    let refused = |reason: String| Loaded::Refused {
        id: id.clone(),
        steps,
        reason,
    };
    if let Err(reason) = crate::validate::check_case(&raw) {
        return refused(reason);
    }
    match serde_json::from_value::<Case>(raw) {
        Ok(case) => Loaded::Case(Box::new(case)),
        Err(e) => refused(format!("cannot read the case: {e}")),
    }
}

/// Every case of a file; fails on the first refused one.
pub fn load_cases(path: &Path) -> Result<Vec<Case>> {
    load_checked(path)?
        .into_iter()
        .map(|l| match l {
            Loaded::Case(c) => Ok(*c),
            Loaded::Refused { id, reason, .. } => bail!("case {id} refused: {reason}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_override_the_top_level() {
        let c: Case = serde_json::from_str(
            r#"{"id": "t", "policies": [{"a": 1}], "steps": [{"policies": []}, {"policies": [{"b": 2}]}]}"#,
        )
        .unwrap();
        let steps = c.steps();
        assert_eq!(steps.len(), 2);
        assert!(steps[0].policies.is_empty());
    }

    #[test]
    fn expected_matrix_becomes_service_checks_without_loopback() {
        let c: Case = serde_json::from_str(
            r#"{"id": "t", "ignore_loopback": true, "probes": {"port": 80, "protocol": "TCP"},
                "expected": {"x/a": {"x/a": true, "y/b": false}}}"#,
        )
        .unwrap();
        let checks = c.checks_of(&c.steps()[0]).unwrap();
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].to, "svc:y/s-y-b");
        assert!(!checks[0].expect);
    }
}
