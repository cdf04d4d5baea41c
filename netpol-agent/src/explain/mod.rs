//! `netpol-agent explain`: would a new connection from A to B on a port be allowed, and
//! why. Pure, offline: it reads a [`Cluster`] (the `ClusterState` the agent compiles, plus
//! Service selectors and node addresses) and decides as the datapath does, naming the
//! policies and the rule.
//!
//! * Each direction is judged on its own pod: egress on the source, ingress on the
//!   destination (`direction.rs` follows the compiler's decisions rule by rule). A side that
//!   is not a pod (an address outside, a node, a host-network pod) is not isolated.
//! * When several rules allow, the one reported is the first in (policy `ns/name`, rule
//!   index) order.
//! * A pod always reaches itself (also through its own Service), and traffic between a
//!   pod and its own node always passes (unless `strict_node_traffic`, as the agent's
//!   `--strict-node-traffic`).
//! * A Service is judged on each backend kube-proxy could pick (its port translated to
//!   the backend's target port), all reported in `backends`; the connection is `allowed`
//!   only when every backend allows it (a Service with no backend allows nothing), and
//!   the top-level `egress`/`ingress` are those of the first backend that denies it, or
//!   of the first backend when all allow.

pub mod cli;
pub mod cluster;
mod direction;
pub mod endpoint;
pub mod live;
pub mod text;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Serialize;

use crate::compile::cnp_check::Action;
use crate::compile::tiers::Decision;
use crate::compile::{self, Direction};
use crate::state::{ObjectRef, PodInfo, Protocol};

pub use cluster::Cluster;
use direction::{Peer, Subject};
use endpoint::{End, Target};
pub use endpoint::{Endpoint, parse_port};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Source(#[from] crate::sources::file::FileSourceError),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: document {doc}: {message}")]
    Parse {
        path: PathBuf,
        doc: usize,
        message: String,
    },
    #[error("bad endpoint {input:?}: {why}")]
    BadEndpoint { input: String, why: String },
    #[error("bad port {input:?}: {why} (expected PORT/PROTOCOL, e.g. 80/TCP)")]
    BadPort { input: String, why: String },
    #[error("no pod {0} in the input")]
    UnknownPod(ObjectRef),
    #[error("pod {0} has no IP (status.podIP): it has no network yet")]
    PodWithoutIp(ObjectRef),
    #[error("pod {0} has finished (phase Succeeded or Failed): its IPs may belong to another pod")]
    PodFinished(ObjectRef),
    #[error("no Service {0} in the input")]
    UnknownService(ObjectRef),
    #[error("Service {0} is headless (no ClusterIP): name its pods instead")]
    Headless(ObjectRef),
    #[error("Service {service} has no port {port}/{protocol} (its ports: {ports})")]
    NoServicePort {
        service: ObjectRef,
        port: u16,
        protocol: Protocol,
        ports: String,
    },
    #[error("a Service does not open connections: --from {0} must be a pod, a node or an address")]
    ServiceAsSource(ObjectRef),
    #[error("no node {0} in the input (neither a Node object nor a pod's spec.nodeName)")]
    UnknownNode(String),
    #[error(
        "the address of node {0} is unknown (add its Node object with status.addresses): policy decides on it here"
    )]
    NodeWithoutAddress(String),
}

/// The question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub from: Endpoint,
    pub to: Endpoint,
    pub protocol: Protocol,
    pub port: u16,
    /// Judge traffic between a pod and its own node by policy (the agent's
    /// `--strict-node-traffic`).
    pub strict_node_traffic: bool,
}

/// The answer. Serialized as `-o json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub from: EndView,
    pub to: EndView,
    /// The port asked for (a Service's port; each backend has its target port).
    pub port: u16,
    #[serde(serialize_with = "display")]
    pub protocol: Protocol,
    /// Egress at the source and ingress at the destination both allow it (for a Service:
    /// on every backend).
    pub allowed: bool,
    pub reason: String,
    pub egress: Side,
    pub ingress: Side,
    /// Present when the destination is a Service: one entry per backend, by pod name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<Backend>>,
}

/// One end as resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndView {
    /// `pod`, `host-network-pod`, `node`, `address` or `service`.
    pub kind: &'static str,
    /// `ns/name` of a pod or Service, or a node's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One direction: egress of the source, or ingress of the destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Side {
    /// The pod whose policies these are; `None` when that end is not a pod.
    pub pod: Option<String>,
    /// Some policy of the pod's namespace selects it and applies to this direction.
    pub isolated: bool,
    pub allowed: bool,
    /// The isolating policies, `ns/name`, sorted.
    pub policies: Vec<String>,
    /// The allowing rule, `ns/name egress[i]` or `ns/name ingress[i]`: the one the
    /// datapath names when several allow (`compile::allowed`). `None` when nothing allows it, when the
    /// side is not isolated, or when it passes for another reason (own node, itself).
    pub rule: Option<String>,
    pub reason: String,
    /// What is wrong with the isolating policies (a rule named here allows nothing).
    pub errors: Vec<String>,
}

/// One backend of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub pod: String,
    pub ip: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The target port on this pod.
    pub port: u16,
    pub allowed: bool,
    pub reason: String,
    pub egress: Side,
    pub ingress: Side,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Explains `query` on `cluster`.
pub fn explain(cluster: &Cluster, query: &Query) -> Result<Explanation, ExplainError> {
    let (protocol, port) = (query.protocol, query.port);
    let from = endpoint::resolve_from(cluster, &query.from)?;
    let to = endpoint::resolve_to(cluster, &query.to, from.ip(), protocol, port)?;
    let judge = Judge {
        cluster,
        protocol,
        strict_node_traffic: query.strict_node_traffic,
    };
    let end_view = view(&from);
    match to {
        Target::End(to) => {
            let c = judge.connection(&from, &to, port)?;
            Ok(Explanation {
                from: end_view,
                to: view(&to),
                port,
                protocol,
                allowed: c.allowed,
                reason: c.reason,
                egress: c.egress,
                ingress: c.ingress,
                backends: None,
            })
        }
        Target::Service(svc) => explain_service(&judge, &from, end_view, &svc, port),
    }
}

/// A Service: every backend judged, the connection allowed when all of them allow it.
fn explain_service(
    judge: &Judge<'_>,
    from: &End<'_>,
    end_view: EndView,
    svc: &endpoint::ServiceTarget<'_>,
    port: u16,
) -> Result<Explanation, ExplainError> {
    let protocol = judge.protocol;
    let mut backends = Vec::new();
    for (backend, target_port) in &svc.backends {
        let c = judge.connection(from, backend, *target_port)?;
        let v = view(backend);
        backends.push(Backend {
            pod: v.name.unwrap_or_default(),
            ip: v.ip.unwrap_or(svc.ip),
            node: v.node,
            port: *target_port,
            allowed: c.allowed,
            reason: c.reason,
            egress: c.egress,
            ingress: c.ingress,
        });
    }
    let allowed = !backends.is_empty() && backends.iter().all(|b| b.allowed);
    let denied: Vec<&str> = backends
        .iter()
        .filter(|b| !b.allowed)
        .map(|b| b.pod.as_str())
        .collect();
    let reason = match (backends.len(), denied.len()) {
        (0, _) => format!(
            "Service {} has no backend for {port}/{protocol}: nothing answers",
            svc.key
        ),
        (n, 0) => format!("every backend ({n}) allows it"),
        (n, d) if d == n => format!("no backend allows it ({})", denied.join(", ")),
        (n, d) => format!(
            "{} of {n} backends allow it; denied: {} (kube-proxy picks one per connection)",
            n - d,
            denied.join(", ")
        ),
    };
    // The backend that explains the answer: the first that denies, or the first.
    let shown = backends.iter().find(|b| !b.allowed).or(backends.first());
    let (egress, ingress) = match shown {
        Some(b) => (b.egress.clone(), b.ingress.clone()),
        None => (
            judge.egress_alone(from),
            Side {
                allowed: false,
                reason: "the Service has no backend for this port".into(),
                ..not_a_pod("no pod")
            },
        ),
    };
    Ok(Explanation {
        from: end_view,
        to: EndView {
            kind: "service",
            name: Some(svc.key.to_string()),
            ip: Some(svc.ip),
            node: None,
        },
        port,
        protocol,
        allowed,
        reason,
        egress,
        ingress,
        backends: Some(backends),
    })
}

fn view(end: &End<'_>) -> EndView {
    match end {
        End::Pod { key, pod, ip } => EndView {
            kind: "pod",
            name: Some(key.to_string()),
            ip: Some(*ip),
            node: pod.node.clone(),
        },
        End::Host {
            node,
            pod: Some(key),
            ip,
        } => EndView {
            kind: "host-network-pod",
            name: Some(key.to_string()),
            ip: *ip,
            node: node.clone(),
        },
        End::Host {
            node,
            pod: None,
            ip,
        } => EndView {
            kind: "node",
            name: node.clone(),
            ip: *ip,
            node: node.clone(),
        },
        End::Address(ip) => EndView {
            kind: "address",
            name: None,
            ip: Some(*ip),
            node: None,
        },
    }
}

fn not_a_pod(why: &str) -> Side {
    Side {
        pod: None,
        isolated: false,
        allowed: true,
        policies: Vec::new(),
        rule: None,
        reason: format!("{why}: no NetworkPolicy applies"),
        errors: Vec::new(),
    }
}

/// Both directions of one connection.
struct Connection {
    allowed: bool,
    reason: String,
    egress: Side,
    ingress: Side,
}

struct Judge<'a> {
    cluster: &'a Cluster,
    protocol: Protocol,
    strict_node_traffic: bool,
}

impl Judge<'_> {
    fn connection(
        &self,
        from: &End<'_>,
        to: &End<'_>,
        port: u16,
    ) -> Result<Connection, ExplainError> {
        let egress = self.side(Direction::Egress, from, to, port)?;
        let ingress = self.side(Direction::Ingress, to, from, port)?;
        let allowed = egress.allowed && ingress.allowed;
        let name = |s: &Side| s.pod.clone().unwrap_or_default();
        let reason = match (egress.allowed, ingress.allowed) {
            (true, true) => "egress and ingress allow it".to_string(),
            (false, true) => format!("the egress of {} denies it", name(&egress)),
            (true, false) => format!("the ingress of {} denies it", name(&ingress)),
            (false, false) => format!(
                "the egress of {} and the ingress of {} deny it",
                name(&egress),
                name(&ingress)
            ),
        };
        Ok(Connection {
            allowed,
            reason,
            egress,
            ingress,
        })
    }

    /// The direction `dir` of `me` towards `other` (egress: `me` sends; ingress: `me`
    /// receives).
    fn side(
        &self,
        dir: Direction,
        me: &End<'_>,
        other: &End<'_>,
        port: u16,
    ) -> Result<Side, ExplainError> {
        let (key, pod) = match me {
            End::Pod { key, pod, .. } => (*key, *pod),
            End::Host { pod: Some(_), .. } => return Ok(not_a_pod("a host-network pod")),
            End::Host { pod: None, .. } => return Ok(not_a_pod("a node's own address")),
            End::Address(_) => return Ok(not_a_pod("an address outside the cluster's pods")),
        };
        let subject = Subject { key, pod };
        let state = &self.cluster.state;
        let isolation = direction::isolation(state, dir, subject);
        let mut side = Side {
            pod: Some(key.to_string()),
            isolated: !isolation.policies.is_empty(),
            allowed: true,
            policies: isolation
                .policies
                .iter()
                .map(|p| p.key.to_string())
                .collect(),
            rule: None,
            reason: String::new(),
            errors: isolation.errors.clone(),
        };
        let own_node = match other {
            End::Host { node: Some(n), .. } => pod.node.as_deref() == Some(n.as_str()),
            _ => false,
        };
        if matches!(other, End::Pod { key: k, .. } if *k == key) {
            side.reason = "a pod always reaches itself".into();
            return Ok(side);
        }
        if let Some(tiered) = self.cluster_tiers(key, pod, dir)
            && let Some(ip) = other.ip()
        {
            let identity =
                compile::peer_identity(&tiered.identities, &tiered.pod_ranges, ip, own_node);
            let own = own_node && !self.strict_node_traffic;
            let decision = (tiered.tables).decide(identity, ip, self.protocol, port, own);
            if let Some((allowed, rule, reason)) = cluster_decision(&decision, own) {
                side.allowed = allowed;
                side.rule = rule;
                side.reason = reason;
                return Ok(side);
            }
            // NetworkPolicy decides: explained below, as without the tiers.
        }
        if own_node && !self.strict_node_traffic {
            side.reason = "traffic between a pod and its own node always passes".into();
            return Ok(side);
        }
        if !side.isolated {
            side.reason = format!(
                "not isolated: no policy of namespace {} selects it for {dir}",
                key.namespace
            );
            return Ok(side);
        }
        let peer = match other {
            End::Pod {
                key: k, pod: p, ip, ..
            } => Peer {
                ip: *ip,
                pod: Some(Subject { key: k, pod: p }),
            },
            End::Host { ip: Some(ip), .. } | End::Address(ip) => Peer { ip: *ip, pod: None },
            End::Host { node, ip: None, .. } => {
                return Err(ExplainError::NodeWithoutAddress(
                    node.clone().unwrap_or_default(),
                ));
            }
        };
        let j = direction::judge(state, dir, subject, &isolation, peer, self.protocol, port);
        side.allowed = j.allowed;
        side.errors.extend(j.errors);
        side.reason = match &j.rule {
            Some(rule) => format!("allowed by {rule}"),
            None => format!(
                "isolated, and no rule of {} allows {} on {port}/{}",
                side.policies.join(", "),
                peer.ip,
                self.protocol
            ),
        };
        side.rule = j.rule;
        Ok(side)
    }

    /// The ClusterNetworkPolicy tables of `key`'s direction `dir`, when a rule of one
    /// applies to it, with the identities they name (computed from the cluster as the
    /// agent of the pod's node compiles it).
    fn cluster_tiers(&self, key: &ObjectRef, pod: &PodInfo, dir: Direction) -> Option<TieredSide> {
        let state = &self.cluster.state;
        if state.cluster_policies.is_empty() {
            return None;
        }
        let plan = compile::compile_network_policies(state, pod.node.as_deref()?);
        let mut tables = compile::tiers::resolve(state, &plan);
        let tables = tables.remove(&(key.clone(), dir))?;
        tables.has_cluster_rules().then_some(TieredSide {
            tables,
            identities: plan.identities,
            pod_ranges: plan.pod_ranges,
        })
    }

    /// The source's egress when there is no backend to judge it against.
    fn egress_alone(&self, from: &End<'_>) -> Side {
        let End::Pod { key, pod, .. } = from else {
            return not_a_pod("not a pod");
        };
        let isolation =
            direction::isolation(&self.cluster.state, Direction::Egress, Subject { key, pod });
        let policies: Vec<String> = isolation
            .policies
            .iter()
            .map(|p| p.key.to_string())
            .collect();
        Side {
            pod: Some(key.to_string()),
            isolated: !policies.is_empty(),
            allowed: false,
            policies,
            rule: None,
            reason: "no backend to connect to".into(),
            errors: isolation.errors,
        }
    }
}

/// A direction's ClusterNetworkPolicy tables.
struct TieredSide {
    tables: compile::tiers::Tiered,
    identities: std::collections::BTreeMap<IpAddr, std::sync::Arc<compile::Identity>>,
    pod_ranges: std::collections::BTreeMap<compile::prefix::Prefix, bool>,
}

/// (allowed, deciding rule, reason) when a ClusterNetworkPolicy tier, NetworkPolicy's
/// own-node exemption or the default decides; None when NetworkPolicy's rules do.
fn cluster_decision(d: &Decision, own_node: bool) -> Option<(bool, Option<String>, String)> {
    let verb = |a: &Action| match a {
        Action::Accept => "accepted",
        Action::Deny => "denied",
        Action::Pass => "passed (to the default allow)",
    };
    Some(match d {
        Decision::Admin(a, r) | Decision::Baseline(a, r) => (
            d.allows(),
            Some(r.to_string()),
            format!("{} by {r}", verb(a)),
        ),
        Decision::NetworkPolicy(_) if own_node => (
            true,
            None,
            "traffic between a pod and its own node passes (NetworkPolicy's exemption; no Admin-tier rule matched)".into(),
        ),
        Decision::NetworkPolicy(_) | Decision::Isolated => return None,
        Decision::Default => (
            true,
            None,
            "no ClusterNetworkPolicy rule matched and no NetworkPolicy isolates it: allowed".into(),
        ),
    })
}
