//! What the API server would check in a ClusterNetworkPolicy, and what its parts mean once
//! checked (`CheckedCnp`). Every error is reported, and bad input never opens traffic:
//!
//! * A rule with a peer that has no field this version knows, or with any part the API
//!   would refuse (a peer, a protocol entry, too many of them, too long a name): an
//!   Accept rule matches nothing; a Deny or Pass rule becomes "deny everything" (the
//!   API's "fail closed": <https://network-policy-api.sigs.k8s.io>,
//!   `ClusterNetworkPolicyIngressPeer`).
//! * An unknown action is taken as Deny.
//! * A policy the API server would refuse as a whole (its tier, priority or subject
//!   cannot be read, or it has more than 25 rules in a direction) is `refused`: it keeps
//!   only its Deny rules (and its Pass rules, as Deny), and goes before every other
//!   policy (Admin tier, before priority 0). A subject that cannot be read selects every
//!   pod.
//! * CIDRs are read as the API's `isCIDR` reads them: no leading zeros, no IPv4-mapped
//!   IPv6 addresses.

use ipnet::IpNet;

use super::selector::Selector;
use crate::sources::cnp::{
    ClusterNetworkPolicy, EgressPeer, EgressRule, IngressPeer, IngressRule, NamespacedPod, Port,
    ProtocolEntry, ProtocolPort,
};
use crate::state::Protocol;

/// Evaluated in this order, with NetworkPolicy between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Admin,
    Baseline,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Accept,
    Deny,
    /// Skips the rest of the tier.
    Pass,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CnpSubject {
    Namespaces(Selector),
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CnpPeer {
    Namespaces(Selector),
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
    /// Addresses: pods', nodes' and anything else's.
    Networks(Vec<IpNet>),
    /// Nodes by label, matched on their addresses.
    Nodes(Selector),
    /// Fail-closed: every address.
    Everything,
}

/// What a rule's `protocols` entry matches. Ranges are inclusive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CnpPort {
    Ports {
        protocol: Protocol,
        /// None: every port of the protocol.
        range: Option<(u16, u16)>,
    },
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CnpRule {
    /// The rule's `name`, or `ingress[N]`/`egress[N]`.
    pub name: String,
    pub action: Action,
    /// Matches when any peer does; none: matches nothing.
    pub peers: Vec<CnpPeer>,
    /// None: every protocol and port.
    pub ports: Option<Vec<CnpPort>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedCnp {
    pub name: String,
    /// The API server would refuse the policy as a whole (see the module's notes).
    pub refused: bool,
    pub tier: Tier,
    pub priority: u16,
    pub subject: CnpSubject,
    pub ingress: Vec<CnpRule>,
    pub egress: Vec<CnpRule>,
}

impl CheckedCnp {
    /// Where the policy goes among others: by tier, refused ones first, then by
    /// priority, equal priorities by name (netpol's documented order).
    pub fn order(&self) -> (Tier, bool, u16, &str) {
        (self.tier, !self.refused, self.priority, &self.name)
    }
}

/// One thing the API server would have refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CnpError {
    pub policy: String,
    /// `spec.tier`, `egress[2].to[1]`, ...
    pub location: String,
    pub message: String,
}

impl std::fmt::Display for CnpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.policy, self.location, self.message)
    }
}

const MAX_RULES: usize = 25;
const MAX_ITEMS: usize = 25;

struct Errors<'a> {
    policy: &'a str,
    list: Vec<CnpError>,
}

impl Errors<'_> {
    fn push(&mut self, location: &str, message: impl Into<String>) {
        self.list.push(CnpError {
            policy: self.policy.to_string(),
            location: location.to_string(),
            message: message.into(),
        });
    }
}

/// Checks a policy: what it means, and every error found (empty when the API server
/// would have accepted it).
pub fn check(cnp: &ClusterNetworkPolicy) -> (CheckedCnp, Vec<CnpError>) {
    let name = cnp.metadata.name.clone().unwrap_or_default();
    let mut errors = Errors {
        policy: &name,
        list: Vec::new(),
    };
    let spec = &cnp.spec;
    let tier = match spec.tier.as_deref() {
        Some("Admin") => Some(Tier::Admin),
        Some("Baseline") => Some(Tier::Baseline),
        other => {
            errors.push(
                "spec.tier",
                format!("{other:?}: expected Admin or Baseline"),
            );
            None
        }
    };
    let priority = match spec.priority {
        Some(p @ 0..=1000) => u16::try_from(p).ok(),
        other => {
            errors.push("spec.priority", format!("{other:?}: expected 0 to 1000"));
            None
        }
    };
    let (subject, subject_ok) = subject(spec.subject.as_ref(), &mut errors);
    let mut rules_ok = true;
    for (dir, n) in [
        ("ingress", spec.ingress.len()),
        ("egress", spec.egress.len()),
    ] {
        if n > MAX_RULES {
            errors.push(
                &format!("spec.{dir}"),
                format!("{n} rules: at most {MAX_RULES}"),
            );
            rules_ok = false;
        }
    }
    let ingress = rules("ingress", &spec.ingress, &mut errors);
    let egress = rules("egress", &spec.egress, &mut errors);
    let refused = tier.is_none() || priority.is_none() || !subject_ok || !rules_ok;
    let mut checked = CheckedCnp {
        name: name.clone(),
        refused,
        tier: tier.unwrap_or(Tier::Admin),
        priority: priority.unwrap_or(0),
        subject,
        ingress,
        egress,
    };
    if refused {
        // Placed first: only what denies stays.
        for r in checked.ingress.iter_mut().chain(checked.egress.iter_mut()) {
            r.action = match r.action {
                Action::Accept => {
                    r.peers.clear();
                    Action::Accept
                }
                Action::Deny | Action::Pass => Action::Deny,
            };
        }
    }
    (checked, errors.list)
}

/// The parts of an ingress or an egress rule that read alike: `name`, `action` and
/// `protocols`, and its peers as checked (`None`: a peer that fails closed).
trait RuleSource {
    fn head(
        &self,
    ) -> (
        &Option<String>,
        &Option<String>,
        &Option<Vec<ProtocolEntry>>,
    );
    fn peers(&self, at: &str, errors: &mut Errors) -> Vec<Option<CnpPeer>>;
}

impl RuleSource for IngressRule {
    fn head(
        &self,
    ) -> (
        &Option<String>,
        &Option<String>,
        &Option<Vec<ProtocolEntry>>,
    ) {
        (&self.name, &self.action, &self.protocols)
    }
    fn peers(&self, at: &str, errors: &mut Errors) -> Vec<Option<CnpPeer>> {
        checked_peers(&self.from, &format!("{at}.from"), ingress_peer, errors)
    }
}

impl RuleSource for EgressRule {
    fn head(
        &self,
    ) -> (
        &Option<String>,
        &Option<String>,
        &Option<Vec<ProtocolEntry>>,
    ) {
        (&self.name, &self.action, &self.protocols)
    }
    fn peers(&self, at: &str, errors: &mut Errors) -> Vec<Option<CnpPeer>> {
        checked_peers(&self.to, &format!("{at}.to"), egress_peer, errors)
    }
}

/// Each peer of a list at `at`, checked by `check`.
fn checked_peers<P>(
    peers: &[P],
    at: &str,
    check: fn(&P, &str, &mut Errors) -> Option<CnpPeer>,
    errors: &mut Errors,
) -> Vec<Option<CnpPeer>> {
    (peers.iter().enumerate())
        .map(|(j, p)| check(p, &format!("{at}[{j}]"), errors))
        .collect()
}

/// The rules of one direction (`dir`: `ingress` or `egress`), checked in order.
fn rules<R: RuleSource>(dir: &str, list: &[R], errors: &mut Errors) -> Vec<CnpRule> {
    (list.iter().enumerate())
        .map(|(i, r)| {
            let at = format!("{dir}[{i}]");
            let peers = r.peers(&at, errors);
            let (name, action, protocols) = r.head();
            rule(
                &at,
                name.as_deref(),
                action.as_deref(),
                peers,
                protocols.as_deref(),
                errors,
            )
        })
        .collect()
}

fn selector(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    at: &str,
    errors: &mut Errors,
) -> Option<Selector> {
    match Selector::parse(sel) {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(at, e);
            None
        }
    }
}

fn namespaced_pod(
    p: &NamespacedPod,
    at: &str,
    errors: &mut Errors,
) -> Option<(Selector, Selector)> {
    let namespaces = match &p.namespace_selector {
        Some(s) => selector(s, &format!("{at}.namespaceSelector"), errors)?,
        None => Selector::everything(),
    };
    let Some(pods) = &p.pod_selector else {
        errors.push(at, "podSelector is required");
        return None;
    };
    let pods = selector(pods, &format!("{at}.podSelector"), errors)?;
    Some((namespaces, pods))
}

/// Exactly one field set, or an error (`known` of them set, `unknown` fields besides).
fn one_field(
    known: usize,
    unknown: &crate::sources::cnp::Unknown,
    at: &str,
    errors: &mut Errors,
) -> bool {
    match (known, unknown.len()) {
        (1, 0) => true,
        (0, 0) => {
            errors.push(at, "exactly one field must be set, none is");
            false
        }
        (0, _) => {
            let names: Vec<&str> = unknown.keys().map(String::as_str).collect();
            errors.push(
                at,
                format!("no field this version knows (has {names:?}): fails closed"),
            );
            false
        }
        _ => {
            errors.push(at, "exactly one field must be set, more are");
            false
        }
    }
}

/// The subject, and whether it could be read (if not: every pod).
fn subject(s: Option<&crate::sources::cnp::Subject>, errors: &mut Errors) -> (CnpSubject, bool) {
    let all = CnpSubject::Namespaces(Selector::everything());
    let Some(s) = s else {
        errors.push("spec.subject", "required: selects every pod");
        return (all, false);
    };
    let known = usize::from(s.namespaces.is_some()) + usize::from(s.pods.is_some());
    if !one_field(known, &s.unknown, "spec.subject", errors) {
        return (all, false);
    }
    let parsed = match (&s.namespaces, &s.pods) {
        (Some(n), _) => selector(n, "spec.subject.namespaces", errors).map(CnpSubject::Namespaces),
        (_, Some(p)) => namespaced_pod(p, "spec.subject.pods", errors)
            .map(|(namespaces, pods)| CnpSubject::Pods { namespaces, pods }),
        _ => None,
    };
    match parsed {
        Some(p) => (p, true),
        None => (all, false),
    }
}

/// None: the peer is invalid (the rule fails closed).
fn ingress_peer(p: &IngressPeer, at: &str, errors: &mut Errors) -> Option<CnpPeer> {
    let known = usize::from(p.namespaces.is_some()) + usize::from(p.pods.is_some());
    if !one_field(known, &p.unknown, at, errors) {
        return None;
    }
    match (&p.namespaces, &p.pods) {
        (Some(n), _) => selector(n, &format!("{at}.namespaces"), errors).map(CnpPeer::Namespaces),
        (_, Some(pods)) => namespaced_pod(pods, &format!("{at}.pods"), errors)
            .map(|(namespaces, pods)| CnpPeer::Pods { namespaces, pods }),
        _ => None,
    }
}

fn egress_peer(p: &EgressPeer, at: &str, errors: &mut Errors) -> Option<CnpPeer> {
    let known = usize::from(p.namespaces.is_some())
        + usize::from(p.pods.is_some())
        + usize::from(p.networks.is_some())
        + usize::from(p.nodes.is_some());
    if !one_field(known, &p.unknown, at, errors) {
        return None;
    }
    if let Some(n) = &p.namespaces {
        return selector(n, &format!("{at}.namespaces"), errors).map(CnpPeer::Namespaces);
    }
    if let Some(pods) = &p.pods {
        return namespaced_pod(pods, &format!("{at}.pods"), errors)
            .map(|(namespaces, pods)| CnpPeer::Pods { namespaces, pods });
    }
    if let Some(nodes) = &p.nodes {
        return selector(nodes, &format!("{at}.nodes"), errors).map(CnpPeer::Nodes);
    }
    let networks = p.networks.as_deref().unwrap_or_default();
    let at = format!("{at}.networks");
    if networks.is_empty() || networks.len() > MAX_ITEMS {
        errors.push(
            &at,
            format!("{} networks: 1 to {MAX_ITEMS}", networks.len()),
        );
        return None;
    }
    let mut nets = Vec::with_capacity(networks.len());
    for (i, n) in networks.iter().enumerate() {
        match strict_cidr(n) {
            // A set of strings, as the API compares them.
            Ok(net) if !networks[..i].contains(n) => nets.push(net.trunc()),
            Ok(_) => {
                errors.push(&format!("{at}[{i}]"), format!("{n:?} is listed twice"));
                return None;
            }
            Err(e) => {
                errors.push(&format!("{at}[{i}]"), format!("invalid CIDR {n:?}: {e}"));
                return None;
            }
        }
    }
    Some(CnpPeer::Networks(nets))
}

/// A CIDR as the API's `isCIDR` takes it: what `IpNet` parses, without leading zeros in
/// an IPv4 octet or the prefix length, and not an IPv4-mapped IPv6 address.
fn strict_cidr(s: &str) -> Result<IpNet, String> {
    let net: IpNet = s.parse().map_err(|e| format!("{e}"))?;
    let (addr, len) = s.split_once('/').ok_or("no prefix length")?;
    let leading_zero = |part: &str| part.len() > 1 && part.starts_with('0');
    if leading_zero(len) || (net.addr().is_ipv4() && addr.split('.').any(leading_zero)) {
        return Err("leading zeros".into());
    }
    if let IpNet::V6(v6) = net
        && v6.addr().to_ipv4_mapped().is_some()
    {
        return Err("an IPv4-mapped IPv6 address".into());
    }
    Ok(net)
}

/// None: invalid (the rule fails closed).
fn port_entry(e: &ProtocolEntry, at: &str, errors: &mut Errors) -> Option<CnpPort> {
    let known = [&e.tcp, &e.udp, &e.sctp]
        .iter()
        .filter(|p| p.is_some())
        .count()
        + usize::from(e.destination_named_port.is_some());
    if !one_field(known, &e.unknown, at, errors) {
        return None;
    }
    if let Some(name) = &e.destination_named_port {
        return Some(CnpPort::Named(name.clone()));
    }
    let (protocol, port, key): (Protocol, &ProtocolPort, &str) = match (&e.tcp, &e.udp, &e.sctp) {
        (Some(p), _, _) => (Protocol::Tcp, p, "tcp"),
        (_, Some(p), _) => (Protocol::Udp, p, "udp"),
        (_, _, Some(p)) => (Protocol::Sctp, p, "sctp"),
        _ => return None,
    };
    let at = format!("{at}.{key}");
    if !port.unknown.is_empty() {
        errors.push(
            &at,
            format!(
                "unknown fields {:?}: fails closed",
                port.unknown.keys().collect::<Vec<_>>()
            ),
        );
        return None;
    }
    let Some(p) = &port.destination_port else {
        errors.push(
            &at,
            "destinationPort is required (the object needs a field)",
        );
        return None;
    };
    let range = port_range(p, &format!("{at}.destinationPort"), errors)?;
    Some(CnpPort::Ports {
        protocol,
        range: Some(range),
    })
}

fn port_range(p: &Port, at: &str, errors: &mut Errors) -> Option<(u16, u16)> {
    let known = usize::from(p.number.is_some()) + usize::from(p.range.is_some());
    if !one_field(known, &p.unknown, at, errors) {
        return None;
    }
    let port = |n: Option<i64>, what: &str, errors: &mut Errors| match n {
        Some(n @ 1..=65535) => u16::try_from(n).ok(),
        other => {
            errors.push(at, format!("{what} {other:?}: expected 1 to 65535"));
            None
        }
    };
    if let Some(n) = p.number {
        let n = port(Some(n), "number", errors)?;
        return Some((n, n));
    }
    let r = p.range.as_ref()?;
    let start = port(r.start, "range.start", errors)?;
    let end = port(r.end, "range.end", errors)?;
    if start >= end {
        errors.push(
            &format!("{at}.range"),
            "Start port must be less than End port",
        );
        return None;
    }
    Some((start, end))
}

/// A rule from its checked parts: a peer or protocol entry that failed makes an Accept
/// rule lose it, and a Deny or Pass rule deny everything.
fn rule(
    at: &str,
    name: Option<&str>,
    action: Option<&str>,
    peers: Vec<Option<CnpPeer>>,
    protocols: Option<&[ProtocolEntry]>,
    errors: &mut Errors,
) -> CnpRule {
    let action = match action {
        Some("Accept") => Action::Accept,
        Some("Deny") => Action::Deny,
        Some("Pass") => Action::Pass,
        other => {
            errors.push(
                &format!("{at}.action"),
                format!("{other:?}: expected Accept, Deny or Pass; taken as Deny"),
            );
            Action::Deny
        }
    };
    let mut failed = false;
    let name = match name {
        Some(n) if n.len() > 100 => {
            errors.push(&format!("{at}.name"), "longer than 100 characters");
            failed = true;
            n.to_string()
        }
        Some(n) => n.to_string(),
        None => at.to_string(),
    };
    if peers.is_empty() || peers.len() > MAX_ITEMS {
        errors.push(at, format!("{} peers: 1 to {MAX_ITEMS}", peers.len()));
        failed = true;
    }
    let mut ok_peers = Vec::with_capacity(peers.len());
    for p in peers {
        match p {
            Some(p) => ok_peers.push(p),
            None => failed = true,
        }
    }
    let ports = match protocols {
        None => None,
        Some(entries) => {
            if entries.is_empty() || entries.len() > MAX_ITEMS {
                errors.push(
                    &format!("{at}.protocols"),
                    format!("{} entries: 1 to {MAX_ITEMS}", entries.len()),
                );
                failed = true;
            }
            let mut ok = Vec::with_capacity(entries.len());
            for (i, e) in entries.iter().enumerate() {
                match port_entry(e, &format!("{at}.protocols[{i}]"), errors) {
                    Some(p) => ok.push(p),
                    None => failed = true,
                }
            }
            Some(ok)
        }
    };
    let named = ports
        .iter()
        .flatten()
        .any(|p| matches!(p, CnpPort::Named(_)));
    let addressed = ok_peers
        .iter()
        .any(|p| matches!(p, CnpPeer::Networks(_) | CnpPeer::Nodes(_)));
    // The API refuses the whole rule.
    let mut refused = false;
    if named && addressed {
        errors.push(at, "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames");
        refused = true;
    }
    match (failed || refused, action) {
        (false, _) => CnpRule {
            name,
            action,
            peers: ok_peers,
            ports,
        },
        // The whole rule matches nothing.
        (true, Action::Accept) => CnpRule {
            name,
            action,
            peers: Vec::new(),
            ports,
        },
        (true, _) => CnpRule {
            name,
            action: Action::Deny,
            peers: vec![CnpPeer::Everything],
            ports: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(spec: &str) -> (CheckedCnp, Vec<CnpError>) {
        let yaml = format!("metadata: {{name: p}}\nspec: {spec}");
        let cnp: ClusterNetworkPolicy = serde_yaml::from_str(&yaml).expect("yaml");
        check(&cnp)
    }

    const HEAD: &str = "tier: Admin, priority: 10, subject: {namespaces: {}}";

    /// Every policy of the public conformance cases reads and passes the CRD's checks
    /// (so no field of theirs is left unknown: an unknown field is an error).
    #[test]
    fn the_public_cases_policies_are_valid() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/conformance/cnp/cnp-public.json"
        );
        let text = std::fs::read_to_string(path).expect("the public cases");
        // `{{ip NS/POD}}` stands for a pod's address, substituted at run time.
        let text = substitute_ips(&text);
        let cases: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
        let mut n = 0;
        for step in cases
            .iter()
            .flat_map(|c| c["steps"].as_array().into_iter().flatten())
        {
            for raw in step["cluster_network_policies"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let cnp: ClusterNetworkPolicy = serde_json::from_value(raw.clone()).expect("reads");
                let (c, errors) = check(&cnp);
                assert!(errors.is_empty(), "{}: {errors:?}", c.name);
                n += 1;
            }
        }
        assert!(n > 0);
    }

    fn substitute_ips(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find("{{ip ") {
            out.push_str(&rest[..i]);
            let Some(end) = rest[i..].find("}}") else {
                break;
            };
            let n = out.matches("10.244.").count();
            out.push_str(&format!("10.244.{}.{}", n / 250, n % 250 + 1));
            rest = &rest[i + end + 2..];
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn a_valid_policy_means_what_it_says() {
        let (c, errors) = checked(&format!(
            "{{{HEAD}, egress: [{{name: dns, action: Accept, to: [{{networks: [10.96.0.10/32]}}],
               protocols: [{{udp: {{destinationPort: {{number: 53}}}}}}, {{tcp: {{destinationPort: {{range: {{start: 8000, end: 8080}}}}}}}}]}}]}}"
        ));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!((c.tier, c.priority), (Tier::Admin, 10));
        let r = &c.egress[0];
        assert_eq!((r.name.as_str(), r.action), ("dns", Action::Accept));
        assert_eq!(
            r.peers,
            vec![CnpPeer::Networks(vec![
                "10.96.0.10/32".parse().expect("net")
            ])]
        );
        assert_eq!(
            r.ports,
            Some(vec![
                CnpPort::Ports {
                    protocol: Protocol::Udp,
                    range: Some((53, 53))
                },
                CnpPort::Ports {
                    protocol: Protocol::Tcp,
                    range: Some((8000, 8080))
                },
            ])
        );
    }

    /// The API's fail-closed rule for a peer this version cannot read: an Accept rule
    /// matches no traffic (its other peers neither).
    #[test]
    fn an_unknown_peer_matches_nothing_in_accept_and_everything_in_deny_or_pass() {
        for (action, want_action, want_peers) in [
            ("Accept", Action::Accept, vec![]),
            ("Deny", Action::Deny, vec![CnpPeer::Everything]),
            ("Pass", Action::Deny, vec![CnpPeer::Everything]),
        ] {
            let (c, errors) = checked(&format!(
                "{{{HEAD}, ingress: [{{action: {action}, from: [{{namespaces: {{}}}}, {{futurePeer: {{}}}}],
                   protocols: [{{tcp: {{destinationPort: {{number: 80}}}}}}]}}]}}"
            ));
            assert_eq!(errors.len(), 1, "{action}: {errors:?}");
            assert_eq!(errors[0].location, "ingress[0].from[1]");
            let r = &c.ingress[0];
            assert_eq!((r.action, &r.peers), (want_action, &want_peers), "{action}");
            if want_action == Action::Deny {
                assert_eq!(r.ports, None, "{action}: every port");
            }
        }
    }

    #[test]
    fn invalid_ports_and_peers_fail_closed() {
        for (body, location) in [
            (
                "protocols: [{tcp: {destinationPort: {range: {start: 90, end: 80}}}}]",
                "ingress[0].protocols[0].tcp.destinationPort.range",
            ),
            (
                "protocols: [{tcp: {destinationPort: {number: 0}}}]",
                "ingress[0].protocols[0].tcp.destinationPort",
            ),
            ("protocols: [{tcp: {}}]", "ingress[0].protocols[0].tcp"),
            (
                "protocols: [{tcp: {destinationPort: {number: 80}}, udp: {destinationPort: {number: 80}}}]",
                "ingress[0].protocols[0]",
            ),
        ] {
            let (c, errors) = checked(&format!(
                "{{{HEAD}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], {body}}}]}}"
            ));
            assert_eq!(errors.len(), 1, "{body}: {errors:?}");
            assert_eq!(errors[0].location, location, "{body}");
            assert_eq!(c.ingress[0].peers, vec![CnpPeer::Everything], "{body}");
        }
        let (c, errors) = checked(&format!(
            "{{{HEAD}, egress: [{{action: Accept, to: [{{networks: [10.0.0.0/33]}}, {{namespaces: {{}}, pods: {{podSelector: {{}}}}}}, {{nodes: {{}}}}]}}]}}"
        ));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(c.egress[0].peers.is_empty(), "{:?}", c.egress[0].peers);
    }

    /// CIDRs the API's `isCIDR` refuses: the rule fails closed.
    #[test]
    fn cidrs_are_read_as_the_api_reads_them() {
        for bad in ["010.244.0.0/16", "10.244.0.0/016", "::ffff:10.244.0.0/112"] {
            let (c, errors) = checked(&format!(
                "{{{HEAD}, egress: [{{action: Deny, to: [{{networks: [\"{bad}\"]}}]}}]}}"
            ));
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert_eq!(c.egress[0].peers, vec![CnpPeer::Everything], "{bad}");
        }
        for good in [
            "10.244.0.0/16",
            "0.0.0.0/0",
            "10.244.0.7/16",
            "fd00::/8",
            "::/0",
        ] {
            let (_, errors) = checked(&format!(
                "{{{HEAD}, egress: [{{action: Deny, to: [{{networks: [\"{good}\"]}}]}}]}}"
            ));
            assert!(errors.is_empty(), "{good}: {errors:?}");
        }
    }

    /// What the API server refuses as a whole keeps only what denies, first of all; a
    /// rule it refuses fails closed.
    #[test]
    fn refused_policies_and_rules_fail_closed() {
        let accept_all = "{action: Accept, from: [{namespaces: {}}]}";
        let many: Vec<&str> = std::iter::repeat_n(accept_all, 26).collect();
        for spec in [
            format!("{{{HEAD}, ingress: [{}]}}", many.join(", ")),
            format!(
                "{{tier: Admin, priority: 10, subject: {{futureSubject: {{}}}}, ingress: [{accept_all}]}}"
            ),
            format!(
                "{{tier: Admin, priority: 10, subject: {{pods: {{namespaceSelector: {{}}}}}}, ingress: [{accept_all}]}}"
            ),
            format!(
                "{{tier: Middle, priority: 10, subject: {{namespaces: {{}}}}, ingress: [{accept_all}]}}"
            ),
        ] {
            let (c, errors) = checked(&spec);
            assert!(!errors.is_empty(), "{spec}");
            assert!(c.refused, "{spec}");
            assert!(c.ingress.iter().all(|r| r.peers.is_empty()), "{spec}");
            assert!(
                c.order() < (Tier::Admin, true, 0, ""),
                "{spec}: first of all"
            );
        }
        let long = "x".repeat(101);
        let (c, errors) = checked(&format!(
            "{{{HEAD}, ingress: [{{name: {long}, action: Accept, from: [{{namespaces: {{}}}}]}}]}}"
        ));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(!c.refused && c.ingress[0].peers.is_empty());
    }

    #[test]
    fn a_named_port_beside_networks_refuses_the_rule() {
        let rule = |action: &str| {
            format!(
                "{{{HEAD}, egress: [{{action: {action}, to: [{{networks: [10.0.0.0/8]}}, {{namespaces: {{}}}}],
                   protocols: [{{destinationNamedPort: web}}]}}]}}"
            )
        };
        let (c, errors) = checked(&rule("Accept"));
        assert_eq!(errors.len(), 1);
        assert!(
            c.egress[0].peers.is_empty(),
            "an Accept rule refused matches nothing"
        );
        let (c, _) = checked(&rule("Pass"));
        assert_eq!(
            (c.egress[0].action, &c.egress[0].peers),
            (Action::Deny, &vec![CnpPeer::Everything])
        );
    }

    #[test]
    fn a_policy_without_a_place_keeps_only_what_denies_first() {
        let (c, errors) = checked(
            "{tier: Middle, priority: 5000, subject: {namespaces: {}},
              ingress: [{action: Accept, from: [{namespaces: {}}]}, {action: Pass, from: [{namespaces: {}}]}]}",
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!((c.tier, c.priority), (Tier::Admin, 0));
        assert!(c.ingress[0].peers.is_empty());
        assert_eq!(c.ingress[1].action, Action::Deny);
    }

    #[test]
    fn an_unreadable_subject_selects_every_pod() {
        for subject in [
            "{}",
            "{namespaces: {}, pods: {podSelector: {}}}",
            "{pods: {namespaceSelector: {}}}",
            "{futureSubject: {}}",
        ] {
            let (c, errors) = checked(&format!(
                "{{tier: Baseline, priority: 1, subject: {subject}}}"
            ));
            assert_eq!(errors.len(), 1, "{subject}: {errors:?}");
            assert_eq!(
                c.subject,
                CnpSubject::Namespaces(Selector::everything()),
                "{subject}"
            );
        }
    }

    #[test]
    fn unknown_actions_deny() {
        let (c, errors) = checked(&format!(
            "{{{HEAD}, ingress: [{{action: Allow, from: [{{namespaces: {{}}}}]}}]}}"
        ));
        assert_eq!(errors.len(), 1);
        assert_eq!(c.ingress[0].action, Action::Deny);
    }
}
