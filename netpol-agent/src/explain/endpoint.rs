//! The ends of a question, as written (`NS/POD`, `svc:NS/NAME`, `node:NAME`, an IP, and
//! `80/TCP`) and as resolved against a cluster: a pod policy applies to, a node's own
//! address (host-network pods share it), an address outside, or a Service with the
//! backends kube-proxy would translate it to.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::state::{ObjectRef, PodInfo, Protocol};

use super::ExplainError;
use super::cluster::{Cluster, TargetPort};

/// One end as the user names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `NS/POD` or `pod:NS/POD`.
    Pod(ObjectRef),
    /// `svc:NS/NAME`: its ClusterIP, translated to a backend.
    Service(ObjectRef),
    /// `node:NAME`: the node's own address.
    Node(String),
    /// An IP: the pod, node or Service that has it, or an address outside the cluster.
    Address(IpAddr),
}

fn object_ref(s: &str, input: &str) -> Result<ObjectRef, ExplainError> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(ObjectRef::new(ns, name))
        }
        _ => Err(ExplainError::BadEndpoint {
            input: input.to_string(),
            why: "expected NS/NAME".into(),
        }),
    }
}

impl FromStr for Endpoint {
    type Err = ExplainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("svc:") {
            return Ok(Endpoint::Service(object_ref(rest, s)?));
        }
        if let Some(rest) = s.strip_prefix("pod:") {
            return Ok(Endpoint::Pod(object_ref(rest, s)?));
        }
        if let Some(rest) = s.strip_prefix("node:") {
            if rest.is_empty() {
                return Err(ExplainError::BadEndpoint {
                    input: s.to_string(),
                    why: "expected node:NAME".into(),
                });
            }
            return Ok(Endpoint::Node(rest.to_string()));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            // The datapath drops IPv6 packets carrying IPv4-mapped addresses.
            if let IpAddr::V6(v6) = ip
                && v6.to_ipv4_mapped().is_some()
            {
                return Err(ExplainError::BadEndpoint {
                    input: s.to_string(),
                    why: "an IPv4-mapped IPv6 address (netpol drops those); write the IPv4 address"
                        .into(),
                });
            }
            return Ok(Endpoint::Address(ip));
        }
        if s.contains('/') {
            return Ok(Endpoint::Pod(object_ref(s, s)?));
        }
        Err(ExplainError::BadEndpoint {
            input: s.to_string(),
            why: "expected NS/POD, pod:NS/POD, svc:NS/NAME, node:NAME or an IP address".into(),
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Pod(r) => write!(f, "{r}"),
            Endpoint::Service(r) => write!(f, "svc:{r}"),
            Endpoint::Node(n) => write!(f, "node:{n}"),
            Endpoint::Address(ip) => write!(f, "{ip}"),
        }
    }
}

/// `80/TCP`, `53/udp`, or `80` (TCP).
pub fn parse_port(s: &str) -> Result<(u16, Protocol), ExplainError> {
    let bad = |why: &str| ExplainError::BadPort {
        input: s.to_string(),
        why: why.to_string(),
    };
    let (number, protocol) = match s.trim().split_once('/') {
        Some((n, p)) => (n, Some(p.to_ascii_uppercase())),
        None => (s.trim(), None),
    };
    let port = number
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("the port must be a number in 1-65535"))?;
    let protocol = Protocol::parse(protocol.as_deref()).map_err(|e| bad(&e))?;
    Ok((port, protocol))
}

/// A resolved end that packets come from or go to.
#[derive(Clone, Debug)]
pub(super) enum End<'a> {
    /// A pod NetworkPolicy applies to.
    Pod {
        key: &'a ObjectRef,
        pod: &'a PodInfo,
        ip: IpAddr,
    },
    /// A node's own address, or a host-network pod (which has it).
    Host {
        node: Option<String>,
        pod: Option<&'a ObjectRef>,
        /// Unknown for a node named without a Node object.
        ip: Option<IpAddr>,
    },
    /// Outside the cluster's pods and nodes.
    Address(IpAddr),
}

impl End<'_> {
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            End::Pod { ip, .. } | End::Address(ip) => Some(*ip),
            End::Host { ip, .. } => *ip,
        }
    }
}

/// A Service port and where kube-proxy may send it.
pub(super) struct ServiceTarget<'a> {
    pub key: &'a ObjectRef,
    pub ip: IpAddr,
    /// Each backend with its target port, by pod name.
    pub backends: Vec<(End<'a>, u16)>,
}

pub(super) enum Target<'a> {
    End(End<'a>),
    Service(ServiceTarget<'a>),
}

/// The address of `ips` in the family of `hint` (the other end's), else the first.
fn pick(ips: &[IpAddr], hint: Option<IpAddr>) -> Option<IpAddr> {
    ips.iter()
        .find(|ip| hint.is_none_or(|h| h.is_ipv4() == ip.is_ipv4()))
        .or_else(|| ips.first())
        .copied()
}

/// A pod as an end: a policy subject, or a host-network pod at its node's address.
fn pod_end<'a>(
    key: &'a ObjectRef,
    pod: &'a PodInfo,
    hint: Option<IpAddr>,
) -> Result<End<'a>, ExplainError> {
    if pod.terminated {
        return Err(ExplainError::PodFinished(key.clone()));
    }
    let ip = pick(&pod.ips, hint).ok_or_else(|| ExplainError::PodWithoutIp(key.clone()))?;
    if pod.host_network {
        return Ok(End::Host {
            node: pod.node.clone(),
            pod: Some(key),
            ip: Some(ip),
        });
    }
    Ok(End::Pod { key, pod, ip })
}

/// An address as the cluster knows it: a pod's, a node's, a host-network pod's, or none.
fn address_end(cluster: &Cluster, ip: IpAddr) -> End<'_> {
    let state = &cluster.state;
    if let Some((key, pod)) = state
        .pods
        .iter()
        .find(|(_, p)| p.is_policy_subject() && p.ips.contains(&ip))
    {
        return End::Pod { key, pod, ip };
    }
    if let Some((name, _)) = cluster
        .state
        .nodes
        .iter()
        .find(|(_, n)| n.ips.contains(&ip))
    {
        return End::Host {
            node: Some(name.clone()),
            pod: None,
            ip: Some(ip),
        };
    }
    if let Some((key, pod)) = state
        .pods
        .iter()
        .find(|(_, p)| p.host_network && !p.terminated && p.ips.contains(&ip))
    {
        return End::Host {
            node: pod.node.clone(),
            pod: Some(key),
            ip: Some(ip),
        };
    }
    End::Address(ip)
}

/// Where a connection comes from: a Service cannot open one.
pub(super) fn resolve_from<'a>(
    cluster: &'a Cluster,
    from: &Endpoint,
) -> Result<End<'a>, ExplainError> {
    match from {
        Endpoint::Pod(r) => {
            let (key, pod) = cluster
                .state
                .pods
                .get_key_value(r)
                .ok_or_else(|| ExplainError::UnknownPod(r.clone()))?;
            pod_end(key, pod, None)
        }
        Endpoint::Node(name) => node_end(cluster, name, None),
        Endpoint::Address(ip) => Ok(address_end(cluster, *ip)),
        Endpoint::Service(r) => Err(ExplainError::ServiceAsSource(r.clone())),
    }
}

fn node_end<'a>(
    cluster: &'a Cluster,
    name: &str,
    hint: Option<IpAddr>,
) -> Result<End<'a>, ExplainError> {
    if !cluster.node_known(name) {
        return Err(ExplainError::UnknownNode(name.to_string()));
    }
    let ip = cluster.node_ips(name).and_then(|ips| pick(ips, hint));
    Ok(End::Host {
        node: Some(name.to_string()),
        pod: None,
        ip,
    })
}

/// Where a connection goes; `hint` is the source's address (the family to use).
pub(super) fn resolve_to<'a>(
    cluster: &'a Cluster,
    to: &Endpoint,
    hint: Option<IpAddr>,
    protocol: Protocol,
    port: u16,
) -> Result<Target<'a>, ExplainError> {
    match to {
        Endpoint::Pod(r) => {
            let (key, pod) = cluster
                .state
                .pods
                .get_key_value(r)
                .ok_or_else(|| ExplainError::UnknownPod(r.clone()))?;
            Ok(Target::End(pod_end(key, pod, hint)?))
        }
        Endpoint::Node(name) => Ok(Target::End(node_end(cluster, name, hint)?)),
        Endpoint::Service(r) => {
            service(cluster, r, None, hint, protocol, port).map(Target::Service)
        }
        Endpoint::Address(ip) => {
            let end = address_end(cluster, *ip);
            if !matches!(end, End::Address(_)) {
                return Ok(Target::End(end));
            }
            // A ClusterIP on a port the Service defines is translated by kube-proxy; any
            // other port of it is an address like any other, as the datapath judges it.
            let svc = cluster
                .state
                .services
                .iter()
                .find(|(_, s)| s.ips.contains(ip) && s.ports.contains(&(protocol, port)));
            match svc {
                Some((key, _)) => {
                    service(cluster, key, Some(*ip), hint, protocol, port).map(Target::Service)
                }
                None => Ok(Target::End(end)),
            }
        }
    }
}

/// A Service port and its backends: the pods its selector picks in its namespace that have
/// an address and the target port (a named target port resolves per pod, and a pod
/// without that name is no backend of the port, as for the EndpointSlice controller).
fn service<'a>(
    cluster: &'a Cluster,
    r: &ObjectRef,
    ip: Option<IpAddr>,
    hint: Option<IpAddr>,
    protocol: Protocol,
    port: u16,
) -> Result<ServiceTarget<'a>, ExplainError> {
    let (key, info) = cluster
        .state
        .services
        .get_key_value(r)
        .ok_or_else(|| ExplainError::UnknownService(r.clone()))?;
    let ip = match ip {
        Some(ip) => ip,
        None => pick(&info.ips, hint).ok_or_else(|| ExplainError::Headless(r.clone()))?,
    };
    let spec = cluster.services.get(r);
    let service_port = spec
        .and_then(|s| {
            s.ports
                .iter()
                .find(|p| p.protocol == protocol && p.port == port)
        })
        .ok_or_else(|| ExplainError::NoServicePort {
            service: r.clone(),
            port,
            protocol,
            ports: info
                .ports
                .iter()
                .map(|(proto, n)| format!("{n}/{proto}"))
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let mut backends = Vec::new();
    let selector = spec.and_then(|s| s.selector.as_ref());
    for (pod_key, pod) in &cluster.state.pods {
        let selected = selector.is_some_and(|sel| {
            pod_key.namespace == r.namespace
                && sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
        });
        if !selected || pod.terminated || pod.ips.is_empty() {
            continue;
        }
        let target = match &service_port.target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => pod.named_port(name, protocol),
        };
        if let Some(target) = target {
            backends.push((pod_end(pod_key, pod, Some(ip))?, target));
        }
    }
    Ok(ServiceTarget { key, ip, backends })
}
