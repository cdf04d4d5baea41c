//! What the API server would check in a NetworkPolicy, and what a rule's parts mean once
//! checked. The compiler and `explain` read policies through these, so they take the same
//! decisions on bad input: a rule the API would reject allows nothing, and a policy whose
//! own podSelector is invalid isolates its whole namespace and allows nothing.

use std::collections::BTreeSet;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ports::{PortSpec, Ports};
use super::prefix::Prefix;
use super::selector::Selector;
use super::{Direction, PolicyError};
use crate::state::{ObjectRef, PodInfo, Protocol};

/// What decides which pods a policy isolates, validated.
pub(crate) struct PolicyHead {
    pub selects: Selector,
    pub types: BTreeSet<Direction>,
    /// False when the policy's own selector is invalid: it isolates its whole namespace
    /// and grants nothing.
    pub rules_valid: bool,
    /// Annotated `netpol.io/mode: audit`: judged, never enforced.
    pub audit: bool,
}

/// Validates what decides which pods a policy isolates. A policy whose own selector or
/// types are invalid still isolates (its whole namespace, if the selector is the problem,
/// for the types it lists) and allows nothing through the invalid part.
pub(crate) fn check_head(
    key: &ObjectRef,
    policy: &NetworkPolicy,
    errors: &mut Vec<PolicyError>,
) -> PolicyHead {
    let mut err = |location: &str, message: String| {
        errors.push(PolicyError {
            policy: key.clone(),
            location: location.to_string(),
            message,
        })
    };
    let annotation = |name: &str| {
        policy
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(name))
    };
    let unreadable = annotation(crate::state::UNREADABLE_ANNOTATION);
    if let Some(why) = unreadable {
        err(
            "spec",
            format!(
                "cannot be read ({why}); it isolates every pod of its namespace both ways and allows nothing"
            ),
        );
    }
    // Anything but a well-formed `audit` enforces: a typo never leaves a policy open.
    let audit = match annotation(crate::state::MODE_ANNOTATION).map(String::as_str) {
        None | Some("enforce") => false,
        Some("audit") => unreadable.is_none(),
        Some(other) => {
            err(
                "metadata.annotations",
                format!(
                    "{}: unknown mode {other:?} (expected audit or enforce); the policy is enforced",
                    crate::state::MODE_ANNOTATION
                ),
            );
            false
        }
    };
    let spec = policy.spec.as_ref();
    let mut types = BTreeSet::new();
    match spec
        .and_then(|s| s.policy_types.as_ref())
        .filter(|t| !t.is_empty())
    {
        Some(listed) => {
            for t in listed {
                match t.as_str() {
                    "Ingress" => {
                        types.insert(Direction::Ingress);
                    }
                    "Egress" => {
                        types.insert(Direction::Egress);
                    }
                    // Which direction was meant is unknown: isolate both.
                    other => {
                        err(
                            "policyTypes",
                            format!(
                                "unknown policy type {other:?} (expected Ingress or Egress); the selected pods are isolated both ways"
                            ),
                        );
                        types.insert(Direction::Ingress);
                        types.insert(Direction::Egress);
                    }
                }
            }
        }
        // The API's default: Ingress always, Egress when there are egress rules.
        None => {
            types.insert(Direction::Ingress);
            if spec
                .and_then(|s| s.egress.as_ref())
                .is_some_and(|e| !e.is_empty())
            {
                types.insert(Direction::Egress);
            }
        }
    }
    let selects = match spec
        .and_then(|s| s.pod_selector.as_ref())
        .map(Selector::parse)
    {
        Some(Ok(s)) => s,
        None => Selector::everything(),
        Some(Err(e)) => {
            err(
                "podSelector",
                format!(
                    "{e}; the policy isolates every pod of its namespace for its policy types and allows nothing"
                ),
            );
            return PolicyHead {
                selects: Selector::everything(),
                types,
                rules_valid: false,
                audit,
            };
        }
    };
    PolicyHead {
        selects,
        types,
        rules_valid: true,
        audit,
    }
}

/// A port entry of a rule, validated.
#[derive(Clone, Debug)]
pub(crate) enum PortItem {
    Numbered(Ports),
    Named(Protocol, String),
}

pub(crate) fn check_port(p: &NetworkPolicyPort) -> Result<PortItem, String> {
    let protocol = Protocol::parse(p.protocol.as_deref())?;
    match (&p.port, p.end_port) {
        (None, None) => Ok(PortItem::Numbered(Ports::all_of(protocol))),
        (None, Some(_)) => Err("endPort without port".into()),
        (Some(IntOrString::Int(n)), end) => {
            let first = port_number(*n)?;
            let last = match end {
                None => first,
                Some(e) => {
                    let e = port_number(e).map_err(|m| format!("endPort: {m}"))?;
                    if e < first {
                        return Err(format!("endPort {e} is below port {first}"));
                    }
                    e
                }
            };
            Ok(PortItem::Numbered(Ports {
                protocol,
                first,
                last,
            }))
        }
        (Some(IntOrString::String(name)), None) => {
            check_port_name(name)?;
            Ok(PortItem::Named(protocol, name.clone()))
        }
        (Some(IntOrString::String(name)), Some(_)) => Err(format!(
            "endPort cannot be used with the named port {name:?}"
        )),
    }
}

fn port_number(n: i32) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {n} is outside 1-65535"))
}

/// IANA service name rules, as the API server checks them.
fn check_port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid port name"))
    }
}

/// The peers a rule can name, validated.
pub(crate) enum PeerItem {
    Pods {
        namespaces: Option<Selector>,
        pods: Option<Selector>,
    },
    Block {
        cidr: IpNet,
        except: Vec<Prefix>,
    },
}

pub(crate) fn check_peer(peer: &NetworkPolicyPeer) -> Result<PeerItem, String> {
    match (&peer.ip_block, &peer.namespace_selector, &peer.pod_selector) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            Err("ipBlock cannot be combined with a selector in one peer".into())
        }
        (Some(block), None, None) => {
            let cidr: IpNet = block
                .cidr
                .parse()
                .map_err(|e| format!("ipBlock.cidr {:?}: {e}", block.cidr))?;
            let cidr = cidr.trunc();
            let mut except = Vec::new();
            for e in block.except.iter().flatten() {
                let net: IpNet = e
                    .parse()
                    .map_err(|err| format!("ipBlock.except {e:?}: {err}"))?;
                let net = net.trunc();
                if !cidr.contains(&net) || net.prefix_len() <= cidr.prefix_len() {
                    return Err(format!(
                        "ipBlock.except {e:?} is not strictly inside cidr {:?}",
                        block.cidr
                    ));
                }
                except.push(Prefix::from_net(net));
            }
            Ok(PeerItem::Block { cidr, except })
        }
        (None, None, None) => {
            Err("a peer must name a podSelector, namespaceSelector or ipBlock".into())
        }
        (None, ns, pods) => Ok(PeerItem::Pods {
            namespaces: ns.as_ref().map(Selector::parse).transpose()?,
            pods: pods.as_ref().map(Selector::parse).transpose()?,
        }),
    }
}

/// A rule's peers, and its ports (None: every port).
pub(crate) type CheckedRule = (Vec<PeerItem>, Option<Vec<PortItem>>);

/// A rule's peers and ports, or (location, message) of the first thing the API would
/// reject: ports first, then peers, as the compiler checks them. No peers means every
/// address of both families; no ports means every port.
pub(crate) fn check_rule(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    dir: Direction,
    location: &str,
) -> Result<CheckedRule, (String, String)> {
    let port_items = match ports {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| check_port(p).map_err(|m| (format!("{location}.ports[{i}]"), m)))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let field = match dir {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    let peer_items = match peers {
        None | Some([]) => vec![
            PeerItem::Block {
                cidr: IpNet::V4(ipnet::Ipv4Net::default()),
                except: Vec::new(),
            },
            PeerItem::Block {
                cidr: IpNet::V6(ipnet::Ipv6Net::default()),
                except: Vec::new(),
            },
        ],
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, p)| check_peer(p).map_err(|m| (format!("{location}.{field}[{i}]"), m)))
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok((peer_items, port_items))
}

/// A rule's checked ports as numbers; named ones resolve on `resolver` (the destination
/// pod; none resolve without one).
pub(crate) fn resolve_ports(items: &[PortItem], resolver: Option<&PodInfo>) -> PortSpec {
    PortSpec::from_ranges(items.iter().filter_map(|item| {
        match item {
            PortItem::Numbered(p) => Some(*p),
            PortItem::Named(proto, name) => resolver
                .and_then(|pod| pod.named_port(name, *proto))
                .map(|n| Ports::one(*proto, n)),
        }
    }))
}
