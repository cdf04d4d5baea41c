//! What explain reads: the `ClusterState` the agent compiles from, plus what that state
//! trims away and explain needs: each Service's selector and target ports (to find the
//! backends kube-proxy would pick) and the nodes' addresses (own-node traffic, `node:`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

use crate::sources::file;
use crate::state::{ClusterState, Labels, ObjectRef, Protocol, StateError};

use super::ExplainError;

/// A Service as kube-proxy translates it: its selector picks the backends, each port
/// goes to a target port of each backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceSpec {
    /// `None`: no selector (endpoints kept by hand), so no backends explain can know.
    pub selector: Option<Labels>,
    pub ports: Vec<ServicePortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortSpec {
    pub protocol: Protocol,
    pub port: u16,
    pub target: TargetPort,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved on each backend pod.
    Name(String),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cluster {
    pub state: ClusterState,
    /// Selector and ports of each Service of `state.services` (ClusterIPs stay there).
    pub services: BTreeMap<ObjectRef, ServiceSpec>,
}

impl Cluster {
    pub fn from_state(state: ClusterState) -> Self {
        Cluster {
            state,
            ..Default::default()
        }
    }

    /// A folder as the agent's `--policy-dir` reads it (Nodes included), plus its
    /// Services' selectors.
    pub fn load(dir: &Path) -> Result<Self, ExplainError> {
        let loaded = file::load(dir)?;
        let mut cluster = Cluster::from_state(loaded.state);
        for path in file::yaml_files(dir)? {
            let bytes = std::fs::read(&path).map_err(|source| ExplainError::Read {
                path: path.clone(),
                source,
            })?;
            let text = String::from_utf8_lossy(&bytes);
            for (doc, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let value =
                    serde_yaml::Value::deserialize(de).map_err(|e| ExplainError::Parse {
                        path: path.clone(),
                        doc,
                        message: e.to_string(),
                    })?;
                cluster.add_value(value, &path, doc)?;
            }
        }
        Ok(cluster)
    }

    /// Services of one document (the file source took the rest).
    fn add_value(
        &mut self,
        value: serde_yaml::Value,
        path: &PathBuf,
        doc: usize,
    ) -> Result<(), ExplainError> {
        let parse = |message: String| ExplainError::Parse {
            path: path.clone(),
            doc,
            message,
        };
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("List") => {
                let items = value
                    .get("items")
                    .and_then(|i| i.as_sequence())
                    .cloned()
                    .unwrap_or_default();
                for item in items {
                    self.add_value(item, path, doc)?;
                }
            }
            Some("Service") => {
                let svc: Service =
                    serde_yaml::from_value(value).map_err(|e| parse(format!("Service: {e}")))?;
                let key = service_key(&svc).map_err(|e| parse(e.to_string()))?;
                self.services.insert(key, service_spec(&svc));
            }
            _ => {}
        }
        Ok(())
    }

    /// A Service into the state (its ClusterIPs) and here (its selector and ports).
    pub fn add_service(&mut self, svc: &Service) -> Result<(), StateError> {
        self.state.upsert_service(svc)?;
        self.services.insert(service_key(svc)?, service_spec(svc));
        Ok(())
    }

    /// A Node's addresses (those of `status.addresses` that are IPs).
    pub fn add_node(&mut self, node: &Node) -> Result<(), StateError> {
        self.state.upsert_node(node).map(|_| ())
    }

    /// The addresses of node `name`'s Node object.
    pub fn node_ips(&self, name: &str) -> Option<&[IpAddr]> {
        self.state.nodes.get(name).map(|n| n.ips.as_slice())
    }

    /// A node is known by its Node object or by a pod scheduled on it.
    pub fn node_known(&self, name: &str) -> bool {
        self.state.nodes.contains_key(name)
            || self
                .state
                .pods
                .values()
                .any(|p| p.node.as_deref() == Some(name))
    }
}

fn service_key(svc: &Service) -> Result<ObjectRef, StateError> {
    let name = svc
        .metadata
        .name
        .clone()
        .ok_or(StateError::MissingName { kind: "Service" })?;
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .ok_or_else(|| StateError::MissingNamespace {
            kind: "Service",
            name: name.clone(),
        })?;
    Ok(ObjectRef { namespace, name })
}

/// Ports kube-proxy would not translate (unknown protocol, out of range) are left out,
/// as `ClusterState::upsert_service` leaves them out.
fn service_spec(svc: &Service) -> ServiceSpec {
    let spec = svc.spec.as_ref();
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let protocol = Protocol::parse(p.protocol.as_deref()).ok()?;
            let port = u16::try_from(p.port).ok().filter(|n| *n != 0)?;
            let target = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => {
                    TargetPort::Number(u16::try_from(*n).ok().filter(|n| *n != 0).unwrap_or(port))
                }
                Some(IntOrString::String(name)) => TargetPort::Name(name.clone()),
            };
            Some(ServicePortSpec {
                protocol,
                port,
                target,
            })
        })
        .collect();
    ServiceSpec {
        selector: spec.and_then(|s| s.selector.clone()),
        ports,
    }
}
