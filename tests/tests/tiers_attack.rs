//! Attacks on the ClusterNetworkPolicy tier tables (`compile::tiers`), the shared checks
//! (`compile::cnp_check`) and the reference reading (`reference_cnp`), against what
//! policy.networking.k8s.io/v1alpha2 (network-policy-api v0.2.0) demands. Pure userspace.
//!
//! Tests marked `FOUND` assert what the API (or the project's own stated contract,
//! where said so) demands where a review found the readings wrong (fixed since); the
//! others are checks of corners that came out right.

use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol_agent::state::{ClusterState, ContainerPort, NodeInfo, ObjectRef, PodInfo, Protocol};
use netpol_tests::cnp_fixtures::add_cnp_as_written;
use netpol_tests::decide_tiers::{allowed, per_node};
use netpol_tests::generate::Rng;
use netpol_tests::reference::{self, End};
use serde_json::{Value, json};

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// Namespaces `a` and `b` (label `team` = name), nodes `n1` 172.18.0.2 (label
/// `role: one`) and `n2` 172.18.0.3 (`role: two`), pods `a/client` (n1, 10.244.1.10),
/// `b/server` (n2, 10.244.2.20, web TCP 80), `b/other` (n1, 10.244.1.30).
fn world() -> ClusterState {
    let mut s = ClusterState::default();
    for ns in ["a", "b"] {
        s.namespaces.insert(
            ns.into(),
            [
                ("kubernetes.io/metadata.name".to_string(), ns.to_string()),
                ("team".to_string(), ns.to_string()),
            ]
            .into(),
        );
    }
    for (name, role, addr) in [("n1", "one", "172.18.0.2"), ("n2", "two", "172.18.0.3")] {
        s.nodes.insert(
            name.into(),
            NodeInfo {
                labels: [("role".to_string(), role.to_string())].into(),
                ips: vec![ip(addr)],
                pod_cidrs: Vec::new(),
            },
        );
    }
    add_pod(
        &mut s,
        "a",
        "client",
        "client",
        "n1",
        &["10.244.1.10"],
        vec![],
    );
    add_pod(
        &mut s,
        "b",
        "server",
        "server",
        "n2",
        &["10.244.2.20"],
        vec![port("web", TCP, 80)],
    );
    add_pod(
        &mut s,
        "b",
        "other",
        "other",
        "n1",
        &["10.244.1.30"],
        vec![],
    );
    s
}

fn port(name: &str, protocol: Protocol, number: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        port: number,
        protocol,
    }
}

fn add_pod(
    s: &mut ClusterState,
    ns: &str,
    name: &str,
    app: &str,
    node: &str,
    ips: &[&str],
    ports: Vec<ContainerPort>,
) {
    s.pods.insert(
        ObjectRef::new(ns, name),
        PodInfo {
            labels: [("app".to_string(), app.to_string())].into(),
            node: Some(node.into()),
            host_network: false,
            terminated: false,
            ips: ips.iter().map(|i| ip(i)).collect(),
            ports,
        },
    );
}

fn add_cnp(s: &mut ClusterState, name: &str, tier: &str, priority: i64, mut spec: Value) {
    spec["tier"] = json!(tier);
    spec["priority"] = json!(priority);
    if spec.get("subject").is_none() {
        spec["subject"] = json!({"namespaces": {}});
    }
    add_cnp_as_written(s, name, spec);
}

fn add_np(s: &mut ClusterState, ns: &str, name: &str, spec: Value) {
    let p: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    }))
    .expect("a NetworkPolicy");
    s.upsert_policy(&p).expect("policy");
}

fn pod(s: &ClusterState, name: &str) -> End {
    pod_at(s, name, 0)
}

fn pod_at(s: &ClusterState, name: &str, i: usize) -> End {
    let (ns, n) = name.split_once('/').expect("NS/NAME");
    let r = ObjectRef::new(ns, n);
    let addr = s.pods[&r].ips[i];
    End::Pod(r, addr)
}

fn outside(a: &str) -> End {
    End::Outside(ip(a))
}

/// What the tier tables decide (each side on its own node).
fn tables(s: &ClusterState, src: &End, dst: &End, protocol: Protocol, port: u16) -> bool {
    let names: Vec<&str> = s.nodes.keys().map(String::as_str).collect();
    let nodes = per_node(s, &names);
    allowed(s, &nodes, src, dst, protocol, port)
}

fn refr(s: &ClusterState, src: &End, dst: &End, protocol: Protocol, port: u16) -> bool {
    reference::allowed(s, src, dst, protocol, port)
}

fn default_deny_ingress(s: &mut ClusterState, ns: &str) {
    add_np(
        s,
        ns,
        "default-deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
}

// ---------------------------------------------------------------------------------------
// Findings
// ---------------------------------------------------------------------------------------

/// FOUND (shared misreading in `cnp_check::rule`, tables and reference agree).
///
/// API (ClusterNetworkPolicyIngressPeer / EgressPeer doc): a peer with no field this
/// version knows must fail closed, and 'For "Accept" rules, "fail closed" means: "treat
/// the rule as matching no traffic"'. The whole rule, not just the peer: cnp_check keeps
/// the rule's other peers, so the Accept still accepts a/client and hides the Deny below.
#[test]
fn accept_rule_with_an_unknown_peer_matches_no_traffic() {
    let mut s = world();
    add_cnp(
        &mut s,
        "accept-with-future-peer",
        "Admin",
        1,
        json!({"ingress": [{"action": "Accept",
            "from": [{"namespaces": {"matchLabels": {"team": "a"}}}, {"futurePeer": {}}]}]}),
    );
    add_cnp(
        &mut s,
        "deny-all",
        "Admin",
        2,
        json!({"ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    let (c, srv) = (pod(&s, "a/client"), pod(&s, "b/server"));
    assert!(
        !tables(&s, &c, &srv, TCP, 80),
        "tables: the Accept with an unknown peer must match nothing"
    );
    assert!(
        !refr(&s, &c, &srv, TCP, 80),
        "reference: the Accept with an unknown peer must match nothing"
    );
}

/// FOUND (same shared misreading, egress): `domainNames` is a peer of the API
/// (experimental channel) that netpol does not implement, so it reads as a peer with no
/// known field: the Accept rule must match no traffic, and the Admin Deny below decides.
#[test]
fn egress_accept_with_domain_names_matches_no_traffic() {
    let mut s = world();
    add_cnp(
        &mut s,
        "dns-allowlist",
        "Admin",
        1,
        json!({"egress": [{"action": "Accept",
            "to": [{"namespaces": {}}, {"domainNames": ["example.org"]}]}]}),
    );
    add_cnp(
        &mut s,
        "deny-egress",
        "Admin",
        2,
        json!({"egress": [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}),
    );
    let (c, srv) = (pod(&s, "a/client"), pod(&s, "b/server"));
    assert!(!tables(&s, &c, &srv, TCP, 80), "tables allow");
    assert!(!refr(&s, &c, &srv, TCP, 80), "reference allows");
}

/// FOUND (shared, `cnp_check::subject`): a subject the checks cannot read selects
/// every pod and keeps its Pass and Accept rules. A Pass is not a deny: here it skips
/// the Admin Deny that follows for every pod of the cluster. Whatever an unreadable
/// subject means (the API server refuses `subject: {}` or one with a field it does not
/// know: MinProperties=1 / MaxProperties=1; a newer field means pods this reader cannot
/// tell), bad input must not open traffic (cnp_check's own contract, and the API's
/// fail-closed rule for the same situation in peers, where Pass becomes "Deny all").
/// With the policy absent or failing closed, a/client -> b/server is denied.
#[test]
fn unreadable_subject_pass_does_not_skip_the_admin_deny() {
    let mut s = world();
    add_cnp(
        &mut s,
        "a-future-subject",
        "Admin",
        1,
        json!({"subject": {"futureSubject": {"x": 1}},
               "ingress": [{"action": "Pass", "from": [{"namespaces": {}}]}]}),
    );
    add_cnp(
        &mut s,
        "b-deny",
        "Admin",
        2,
        json!({"ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    let (c, srv) = (pod(&s, "a/client"), pod(&s, "b/server"));
    assert!(!tables(&s, &c, &srv, TCP, 80), "tables allow");
    assert!(!refr(&s, &c, &srv, TCP, 80), "reference allows");
}

/// FOUND (shared, `cnp_check::subject`): the same with Accept. The admin meant some
/// pods (subject unreadable: `pods` without the required `podSelector`), the checks make
/// it every pod, and its Accept overrides b's NetworkPolicy default deny.
#[test]
fn unreadable_subject_accept_does_not_override_networkpolicy() {
    let mut s = world();
    default_deny_ingress(&mut s, "b");
    add_cnp(
        &mut s,
        "monitoring",
        "Admin",
        1,
        json!({"subject": {"pods": {"namespaceSelector": {"matchLabels": {"team": "a"}}}},
               "ingress": [{"action": "Accept", "from": [{"namespaces": {}}]}]}),
    );
    let (c, srv) = (pod(&s, "a/client"), pod(&s, "b/server"));
    assert!(!tables(&s, &c, &srv, TCP, 80), "tables allow");
    assert!(!refr(&s, &c, &srv, TCP, 80), "reference allows");
}

/// FOUND (shared, `cnp_check::check`/`rule`): the API server refuses a policy with
/// more than 25 rules in a direction (spec.ingress MaxItems=25), so it never takes
/// effect; cnp_check reports the error and keeps every rule, so the 26th rule's Accept
/// overrides b's NetworkPolicy default deny.
#[test]
fn a_policy_with_26_rules_accepts_nothing() {
    let mut s = world();
    default_deny_ingress(&mut s, "b");
    let mut ingress: Vec<Value> = (0..25)
        .map(|i| json!({"action": "Deny", "from": [{"namespaces": {"matchLabels": {"team": format!("none-{i}")}}}]}))
        .collect();
    ingress.push(json!({"action": "Accept", "from": [{"namespaces": {}}]}));
    add_cnp(&mut s, "too-long", "Admin", 1, json!({"ingress": ingress}));
    let (c, srv) = (pod(&s, "a/client"), pod(&s, "b/server"));
    assert!(!tables(&s, &c, &srv, TCP, 80), "tables allow");
    assert!(!refr(&s, &c, &srv, TCP, 80), "reference allows");
}

/// FOUND (shared, `cnp_check::rule`): a rule name longer than 100 characters
/// (MaxLength=100) makes the API server refuse the policy; cnp_check reports it and
/// keeps the Accept in force.
#[test]
fn an_accept_rule_with_a_101_character_name_accepts_nothing() {
    let mut s = world();
    default_deny_ingress(&mut s, "b");
    add_cnp(
        &mut s,
        "long-name",
        "Admin",
        1,
        json!({"ingress": [{"name": "x".repeat(101), "action": "Accept", "from": [{"namespaces": {}}]}]}),
    );
    let (c, srv) = (pod(&s, "a/client"), pod(&s, "b/server"));
    assert!(!tables(&s, &c, &srv, TCP, 80), "tables allow");
    assert!(!refr(&s, &c, &srv, TCP, 80), "reference allows");
}

/// FOUND (shared, `cnp_check::rule`): 26 peers (from MaxItems=25) make the API
/// server refuse the policy; cnp_check marks the rule failed but an Accept keeps all
/// 26 (valid) peers.
#[test]
fn an_accept_rule_with_26_peers_accepts_nothing() {
    let mut s = world();
    default_deny_ingress(&mut s, "b");
    let from: Vec<Value> = (0..26)
        .map(|i| {
            if i == 25 {
                json!({"namespaces": {}})
            } else {
                json!({"namespaces": {"matchLabels": {"team": format!("none-{i}")}}})
            }
        })
        .collect();
    add_cnp(
        &mut s,
        "many-peers",
        "Admin",
        1,
        json!({"ingress": [{"action": "Accept", "from": from}]}),
    );
    let (c, srv) = (pod(&s, "a/client"), pod(&s, "b/server"));
    assert!(!tables(&s, &c, &srv, TCP, 80), "tables allow");
    assert!(!refr(&s, &c, &srv, TCP, 80), "reference allows");
}

/// FOUND (shared, `cnp_check::egress_peer`; versus the project's contract in
/// cnp_check's header: "a peer ... the API would refuse: ... a Deny or Pass rule
/// becomes deny everything"). `networks` items are validated with CEL `isCIDR`, which
/// refuses IPv4-mapped IPv6 (k8s.io/apiserver cel library `parseCIDR`: "IPv4-mapped IPv6
/// address ... is not allowed"). cnp_check accepts `::ffff:10.244.0.0/112`, and it then
/// covers nothing (prefix.rs), so the Deny denies nothing instead of everything.
#[test]
fn an_ipv4_mapped_cidr_in_a_deny_rule_fails_closed() {
    let mut s = world();
    add_cnp(
        &mut s,
        "mapped",
        "Admin",
        1,
        json!({"egress": [{"action": "Deny", "to": [{"networks": ["::ffff:10.244.0.0/112"]}]}]}),
    );
    let (c, srv) = (pod(&s, "a/client"), pod(&s, "b/server"));
    assert!(!tables(&s, &c, &srv, TCP, 80), "tables allow");
    assert!(!refr(&s, &c, &srv, TCP, 80), "reference allows");
}

/// FOUND (the reference, not the tables). Two containers of b/multi declare the
/// port name `web` (TCP 80 and TCP 8080; Kubernetes checks port names unique per
/// container only). `destinationNamedPort: web` selects the destination ports named
/// `web`: both. The tables deny 8080 (right); `reference_cnp::port_matches` uses
/// `PodInfo::named_port`, the first port of that name and protocol only, so it allows
/// 8080 (its NetworkPolicy reading in `reference.rs` matches any port of the name).
#[test]
fn a_named_port_declared_twice_matches_both_ports() {
    let mut s = world();
    add_pod(
        &mut s,
        "b",
        "multi",
        "multi",
        "n2",
        &["10.244.2.40"],
        vec![port("web", TCP, 80), port("web", TCP, 8080)],
    );
    add_cnp(
        &mut s,
        "deny-web",
        "Admin",
        1,
        json!({"ingress": [{"action": "Deny", "from": [{"namespaces": {}}],
                             "protocols": [{"destinationNamedPort": "web"}]}]}),
    );
    let (c, m) = (pod(&s, "a/client"), pod(&s, "b/multi"));
    assert!(!tables(&s, &c, &m, TCP, 8080), "tables allow 8080");
    assert!(!tables(&s, &c, &m, TCP, 80), "tables allow 80");
    assert!(tables(&s, &c, &m, TCP, 81), "tables deny 81");
    assert!(!refr(&s, &c, &m, TCP, 80), "reference allows 80");
    assert!(
        !refr(&s, &c, &m, TCP, 8080),
        "reference allows 8080: it resolves only the first port named web"
    );
}

/// FOUND (versus the project's contract only, not the API: cnp_check's header says
/// a policy whose tier or priority cannot be read keeps its denies "first of all: Admin
/// tier, priority 0"). It is sorted among priority-0 Admin policies by name, so a valid
/// priority-0 Accept named before it wins.
#[test]
fn a_policy_without_a_place_denies_first_of_all() {
    let mut s = world();
    add_cnp(
        &mut s,
        "a-accept",
        "Admin",
        0,
        json!({"ingress": [{"action": "Accept", "from": [{"namespaces": {}}]}]}),
    );
    add_cnp(
        &mut s,
        "b-broken",
        "Middle",
        0,
        json!({"ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    let (c, srv) = (pod(&s, "a/client"), pod(&s, "b/server"));
    assert!(!tables(&s, &c, &srv, TCP, 80), "tables allow");
}

/// FOUND (shared, `cnp_check::egress_peer`). `networks` items must pass CEL
/// `isCIDR`, which parses with Go's `netip.ParsePrefix`: it refuses a leading zero in an
/// IPv4 octet or in the prefix length ("010.244.0.0/16", "10.244.0.0/016"). The API
/// server refuses the policy, so it accepts nothing and the Admin Deny below decides
/// (and by cnp_check's own contract a refused peer in an Accept matches nothing). The
/// `ipnet` parser reads both as 10.244.0.0/16, so the Accept opens it. (Other readers
/// of a leading zero take it as octal: 010 = 8.)
#[test]
fn an_accept_to_a_cidr_with_leading_zeros_accepts_nothing() {
    for cidr in ["010.244.0.0/16", "10.244.0.0/016"] {
        let mut s = world();
        add_cnp(
            &mut s,
            "a-accept",
            "Admin",
            1,
            json!({"egress": [{"action": "Accept", "to": [{"networks": [cidr]}]}]}),
        );
        add_cnp(
            &mut s,
            "b-deny",
            "Admin",
            2,
            json!({"egress": [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}),
        );
        let (c, srv) = (pod(&s, "a/client"), pod(&s, "b/server"));
        assert!(!tables(&s, &c, &srv, TCP, 80), "{cidr}: tables allow");
        assert!(!refr(&s, &c, &srv, TCP, 80), "{cidr}: reference allows");
    }
}

/// FOUND (the reference only; a project feature, not the API). A NetworkPolicy in
/// audit mode (`netpol.io/mode: audit`) "isolates nothing and allows nothing"
/// (compile/mod.rs), so for b/server the Baseline tier decides: Deny. The tables say
/// so; `reference::applying` ignores the annotation, lets the audit policy isolate and
/// allow, and skips the Baseline tier.
#[test]
fn an_audit_mode_networkpolicy_does_not_hide_the_baseline() {
    let mut s = world();
    let p: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "staged", "namespace": "b",
                     "annotations": {"netpol.io/mode": "audit"}},
        "spec": {"podSelector": {}, "ingress": [{}]},
    }))
    .expect("a NetworkPolicy");
    s.upsert_policy(&p).expect("policy");
    add_cnp(
        &mut s,
        "baseline-deny",
        "Baseline",
        1,
        json!({"ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"team": "a"}}}]}]}),
    );
    let (c, srv) = (pod(&s, "a/client"), pod(&s, "b/server"));
    assert!(!tables(&s, &c, &srv, TCP, 80), "tables allow");
    assert!(!refr(&s, &c, &srv, TCP, 80), "reference allows");
}

// ---------------------------------------------------------------------------------------
// Checks that came out right (pass now)
// ---------------------------------------------------------------------------------------

/// Admin: the first matching rule decides, whether it matches by identity or by address
/// (API: "a rule that appears at the top ... would take the highest precedence"; networks
/// match pod addresses too).
#[test]
fn networks_and_identity_rules_keep_their_order() {
    let mut s = world();
    add_cnp(
        &mut s,
        "p",
        "Admin",
        1,
        json!({"egress": [
            {"action": "Deny", "to": [{"pods": {"podSelector": {"matchLabels": {"app": "server"}}}}],
             "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]},
            {"action": "Accept", "to": [{"networks": ["10.244.0.0/16"]}]},
            {"action": "Deny", "to": [{"namespaces": {}}]}
        ]}),
    );
    default_deny_ingress(&mut s, "b");
    add_np(
        &mut s,
        "b",
        "allow-all",
        json!({"podSelector": {}, "ingress": [{}]}),
    );
    let (c, srv, o) = (pod(&s, "a/client"), pod(&s, "b/server"), pod(&s, "b/other"));
    for (dst, port, want) in [(&srv, 80, false), (&srv, 81, true), (&o, 80, true)] {
        assert_eq!(tables(&s, &c, dst, TCP, port), want, "{dst:?} {port}");
        assert_eq!(refr(&s, &c, dst, TCP, port), want, "{dst:?} {port}");
    }
}

/// `::/0` matches only IPv6, `0.0.0.0/0` only IPv4 (API: Networks doc).
#[test]
fn ipv6_everything_and_ipv4_everything_stay_in_their_family() {
    let mut s = world();
    add_pod(
        &mut s,
        "b",
        "dual",
        "dual",
        "n2",
        &["10.244.2.50", "fd00::50"],
        vec![],
    );
    add_pod(
        &mut s,
        "a",
        "dual-client",
        "dual-client",
        "n1",
        &["10.244.1.51", "fd00::51"],
        vec![],
    );
    add_cnp(
        &mut s,
        "v6-deny",
        "Admin",
        1,
        json!({"egress": [{"action": "Deny", "to": [{"networks": ["::/0"]}]}]}),
    );
    let c4 = pod_at(&s, "a/dual-client", 0);
    let c6 = pod_at(&s, "a/dual-client", 1);
    let (d4, d6) = (pod_at(&s, "b/dual", 0), pod_at(&s, "b/dual", 1));
    assert!(tables(&s, &c4, &d4, TCP, 80));
    assert!(!tables(&s, &c6, &d6, TCP, 80));
    assert!(tables(&s, &c4, &outside("192.0.2.1"), TCP, 80));
    assert!(!tables(&s, &c6, &outside("2001:db8::1"), TCP, 80));
    s.cluster_policies.clear();
    add_cnp(
        &mut s,
        "v4-deny",
        "Admin",
        1,
        json!({"egress": [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}),
    );
    assert!(!tables(&s, &c4, &d4, TCP, 80));
    assert!(tables(&s, &c6, &d6, TCP, 80));
}

/// NetworkPolicy is final for a pod it isolates: a Baseline Accept does not open an
/// ipBlock except hole; a pod in the hole is still allowed by a podSelector rule.
#[test]
fn except_holes_stay_closed_under_baseline() {
    let mut s = world();
    add_np(
        &mut s,
        "a",
        "egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}}]},
            {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "server"}}}],
             "ports": [{"port": 80}]}
        ]}),
    );
    add_cnp(
        &mut s,
        "baseline-open",
        "Baseline",
        1,
        json!({"egress": [{"action": "Accept", "to": [{"networks": ["10.244.2.0/24"]}]}]}),
    );
    let c = pod(&s, "a/client");
    let srv = pod(&s, "b/server"); // 10.244.2.20, in the hole
    let hole = outside("10.244.2.99");
    let o = pod(&s, "b/other"); // 10.244.1.30, inside the block
    assert!(tables(&s, &c, &srv, TCP, 80), "podSelector rule");
    assert!(!tables(&s, &c, &srv, TCP, 81), "hole, NetworkPolicy final");
    assert!(!tables(&s, &c, &hole, TCP, 80), "hole, NetworkPolicy final");
    assert!(tables(&s, &c, &o, TCP, 81));
    for (dst, port) in [(&srv, 80), (&srv, 81), (&hole, 80), (&o, 81)] {
        assert_eq!(
            tables(&s, &c, dst, TCP, port),
            refr(&s, &c, dst, TCP, port),
            "{dst:?} {port}"
        );
    }
}

/// Admin Pass hands over to NetworkPolicy (allow and default deny), and with none
/// isolating, to Baseline; Baseline Pass ends the tier in the default allow.
#[test]
fn pass_in_both_tiers() {
    let mut s = world();
    add_cnp(
        &mut s,
        "admin",
        "Admin",
        1,
        json!({"ingress": [
            {"action": "Pass", "from": [{"namespaces": {"matchLabels": {"team": "a"}}}]},
            {"action": "Deny", "from": [{"namespaces": {}}]}
        ]}),
    );
    add_cnp(
        &mut s,
        "baseline",
        "Baseline",
        1,
        json!({"ingress": [
            {"action": "Pass", "from": [{"namespaces": {}}],
             "protocols": [{"tcp": {"destinationPort": {"range": {"start": 80, "end": 81}}}}]},
            {"action": "Deny", "from": [{"namespaces": {}}]}
        ]}),
    );
    let (c, srv, o) = (pod(&s, "a/client"), pod(&s, "b/server"), pod(&s, "b/other"));
    // No NetworkPolicy: Baseline decides. Ranges are inclusive.
    assert!(tables(&s, &c, &srv, TCP, 80));
    assert!(tables(&s, &c, &srv, TCP, 81));
    assert!(!tables(&s, &c, &srv, TCP, 82));
    assert!(!tables(&s, &c, &srv, TCP, 79));
    // b/other -> b/server is denied by the Admin tier whatever follows.
    assert!(!tables(&s, &o, &srv, TCP, 80));
    // NetworkPolicy isolating b/server: final, Baseline not reached.
    add_np(
        &mut s,
        "b",
        "np",
        json!({"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [{"ports": [{"port": 82}]}]}),
    );
    assert!(!tables(&s, &c, &srv, TCP, 80));
    assert!(tables(&s, &c, &srv, TCP, 82));
    for (src, port) in [(&c, 80), (&c, 81), (&c, 82), (&o, 80)] {
        assert_eq!(
            tables(&s, src, &srv, TCP, port),
            refr(&s, src, &srv, TCP, port)
        );
    }
}

/// Node addresses: a Baseline Deny to the pod's own node applies when no
/// NetworkPolicy isolates it; NetworkPolicy's own-node exemption is final when one
/// does; an Admin Deny to the own node applies regardless (FORMAT.md).
#[test]
fn node_peers_and_the_own_node() {
    let mut s = world();
    add_cnp(
        &mut s,
        "baseline-nodes",
        "Baseline",
        1,
        json!({"egress": [{"action": "Deny", "to": [{"nodes": {}}]}]}),
    );
    let c = pod(&s, "a/client"); // on n1
    let own = outside("172.18.0.2");
    let other = outside("172.18.0.3");
    assert!(!tables(&s, &c, &own, TCP, 10250));
    assert!(!tables(&s, &c, &other, TCP, 10250));
    add_np(
        &mut s,
        "a",
        "iso",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    );
    assert!(tables(&s, &c, &own, TCP, 10250), "own-node exemption");
    assert!(!tables(&s, &c, &other, TCP, 10250));
    add_cnp(
        &mut s,
        "admin-n1",
        "Admin",
        1,
        json!({"egress": [{"action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "one"}}}]}]}),
    );
    assert!(!tables(&s, &c, &own, TCP, 10250), "Admin decides first");
    for dst in [&own, &other] {
        assert_eq!(
            tables(&s, &c, dst, TCP, 10250),
            refr(&s, &c, dst, TCP, 10250)
        );
    }
}

/// Host-network pods: no subject and no namespaces/pods peer selects them; nodes and
/// networks peers match them by their node's address (API: subject and peer docs).
#[test]
fn host_network_pods() {
    let mut s = world();
    s.pods.insert(
        ObjectRef::new("a", "agent"),
        PodInfo {
            labels: [("app".to_string(), "agent".to_string())].into(),
            node: Some("n2".into()),
            host_network: true,
            terminated: false,
            ips: vec![ip("172.18.0.3")],
            ports: vec![],
        },
    );
    add_cnp(
        &mut s,
        "deny-from-a",
        "Admin",
        1,
        json!({"ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"team": "a"}}}]}],
               "egress": [{"action": "Deny", "to": [{"namespaces": {"matchLabels": {"team": "a"}}}]}]}),
    );
    let (agent, srv, c) = (pod(&s, "a/agent"), pod(&s, "b/server"), pod(&s, "a/client"));
    assert!(!tables(&s, &c, &srv, TCP, 80));
    assert!(
        tables(&s, &agent, &srv, TCP, 80),
        "namespaces peer: not host pods"
    );
    assert!(tables(&s, &srv, &agent, TCP, 80), "no subject: host pods");
    add_cnp(
        &mut s,
        "deny-to-n2",
        "Admin",
        0,
        json!({"egress": [{"action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "two"}}}]}]}),
    );
    assert!(!tables(&s, &srv, &agent, TCP, 80), "nodes peer: host pods");
    for (src, dst) in [(&agent, &srv), (&srv, &agent), (&c, &srv)] {
        assert_eq!(tables(&s, src, dst, TCP, 80), refr(&s, src, dst, TCP, 80));
    }
}

/// Named ports: egress resolves on the destination, ingress on the subject, each on
/// the protocol the container port declares; mixed with numbered entries.
#[test]
fn named_ports_resolve_on_the_destination() {
    let mut s = world();
    add_pod(
        &mut s,
        "b",
        "dns",
        "dns",
        "n2",
        &["10.244.2.53"],
        vec![port("dns", UDP, 53), port("dns-tcp", TCP, 53)],
    );
    add_cnp(
        &mut s,
        "egress",
        "Admin",
        1,
        json!({"subject": {"namespaces": {"matchLabels": {"team": "a"}}},
               "egress": [{"action": "Accept", "to": [{"namespaces": {}}],
                           "protocols": [{"destinationNamedPort": "dns"}, {"tcp": {"destinationPort": {"number": 9000}}}]},
                          {"action": "Deny", "to": [{"namespaces": {}}]}]}),
    );
    let (c, d, srv) = (pod(&s, "a/client"), pod(&s, "b/dns"), pod(&s, "b/server"));
    assert!(tables(&s, &c, &d, UDP, 53));
    assert!(!tables(&s, &c, &d, TCP, 53));
    assert!(tables(&s, &c, &d, TCP, 9000));
    assert!(!tables(&s, &c, &srv, UDP, 53), "b/server has no dns port");
    // Ingress on b/server: "web" is its TCP 80.
    add_cnp(
        &mut s,
        "ingress",
        "Admin",
        2,
        json!({"subject": {"namespaces": {"matchLabels": {"team": "b"}}},
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}],
                            "protocols": [{"destinationNamedPort": "web"}]}]}),
    );
    let o = pod(&s, "b/other");
    assert!(!tables(&s, &o, &srv, TCP, 80));
    assert!(tables(&s, &o, &srv, UDP, 80));
    assert!(tables(&s, &o, &srv, TCP, 81));
    for (src, dst, p, n) in [
        (&c, &d, UDP, 53),
        (&c, &d, TCP, 53),
        (&c, &d, TCP, 9000),
        (&c, &srv, UDP, 53),
        (&o, &srv, TCP, 80),
        (&o, &srv, UDP, 80),
    ] {
        assert_eq!(tables(&s, src, dst, p, n), refr(&s, src, dst, p, n));
    }
}

/// Fail-closed Deny/Pass: a Pass with an unknown peer denies everything, every port.
#[test]
fn failed_pass_denies_everything() {
    let mut s = world();
    add_cnp(
        &mut s,
        "p",
        "Baseline",
        1,
        json!({"egress": [{"action": "Pass", "to": [{"futurePeer": {}}],
                           "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}]}),
    );
    let c = pod(&s, "a/client");
    for dst in [
        pod(&s, "b/server"),
        outside("192.0.2.1"),
        outside("172.18.0.2"),
    ] {
        assert!(!tables(&s, &c, &dst, UDP, 9), "{dst:?}");
        assert_eq!(tables(&s, &c, &dst, UDP, 9), refr(&s, &c, &dst, UDP, 9));
    }
}

/// A pod with two addresses: a /32 network names one address only; the identity rule
/// both.
#[test]
fn two_addresses_one_cidr() {
    let mut s = world();
    add_pod(
        &mut s,
        "b",
        "two",
        "two",
        "n2",
        &["10.244.2.60", "10.244.2.61"],
        vec![],
    );
    add_cnp(
        &mut s,
        "p",
        "Admin",
        1,
        json!({"egress": [{"action": "Deny", "to": [{"networks": ["10.244.2.60/32"]}]},
                          {"action": "Accept", "to": [{"pods": {"podSelector": {"matchLabels": {"app": "two"}}}}]},
                          {"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}),
    );
    let c = pod(&s, "a/client");
    let (t0, t1) = (pod_at(&s, "b/two", 0), pod_at(&s, "b/two", 1));
    assert!(!tables(&s, &c, &t0, TCP, 80));
    assert!(tables(&s, &c, &t1, TCP, 80));
    assert_eq!(tables(&s, &c, &t0, TCP, 80), refr(&s, &c, &t0, TCP, 80));
    assert_eq!(tables(&s, &c, &t1, TCP, 80), refr(&s, &c, &t1, TCP, 80));
}

// ---------------------------------------------------------------------------------------
// Differential hunt (passes now): corners the generator of `tiers_vs_reference` leaves
// out: several CIDRs per peer (node and pod addresses, IPv6, host routes), nodes peers
// by label, host-network and terminated pods, more rules per policy, NetworkPolicy
// ipBlocks with excepts around pods, sources at node addresses. Port names are unique
// per pod (the one reference divergence, `a_named_port_declared_twice...`, aside).
// ---------------------------------------------------------------------------------------

const CIDRS: [&str; 14] = [
    "10.244.0.0/16",
    "10.244.1.0/24",
    "10.244.2.20/32",
    "10.244.1.10/32",
    "172.18.0.0/16",
    "172.18.0.2/32",
    "0.0.0.0/0",
    "::/0",
    "fd00::/8",
    "fd00::50/128",
    "fc00::/7",
    "192.0.2.0/24",
    "10.0.0.0/8",
    "10.244.2.0/25",
];

fn rand_sel(r: &mut Rng, key: &str, values: &[&str]) -> Value {
    match r.below(4) {
        0 => json!({}),
        1 => json!({"matchLabels": {key: *r.pick(values)}}),
        2 => {
            json!({"matchExpressions": [{"key": key, "operator": "NotIn", "values": [*r.pick(values)]}]})
        }
        _ => json!({"matchExpressions": [{"key": key, "operator": "Exists"}]}),
    }
}

fn rand_ports(r: &mut Rng) -> Option<Value> {
    if r.chance(50) {
        return None;
    }
    let mut v = Vec::new();
    for _ in 0..1 + r.below(2) {
        let proto = *r.pick(&["tcp", "udp"]);
        v.push(match r.below(3) {
            0 => json!({proto: {"destinationPort": {"number": *r.pick(&[53, 80, 8080])}}}),
            1 => json!({proto: {"destinationPort": {"range": {"start": 79, "end": *r.pick(&[80, 81, 9000])}}}}),
            _ => json!({"destinationNamedPort": *r.pick(&["web", "dns", "alt"])}),
        });
    }
    Some(json!(v))
}

fn rand_world(r: &mut Rng) -> ClusterState {
    let mut s = world();
    for n in ["n1", "n2"] {
        if r.chance(40) {
            let v6 = if n == "n1" { "fc00::2" } else { "fc00::3" };
            s.nodes.get_mut(n).expect("node").ips.push(ip(v6));
        }
    }
    let extra = [
        ("a", "dual", "n2", vec!["10.244.2.50", "fd00::50"]),
        ("b", "dual2", "n1", vec!["10.244.1.51", "fd00::51"]),
        ("a", "worker", "n2", vec!["10.244.2.70"]),
        ("b", "db", "n1", vec!["10.244.1.80"]),
    ];
    for (ns, name, node, ips) in extra {
        if r.chance(70) {
            let mut ports = Vec::new();
            for (pname, proto) in [("web", TCP), ("dns", UDP), ("alt", TCP)] {
                if r.chance(50) {
                    ports.push(port(pname, proto, *r.pick(&[53, 80, 81, 8080])));
                }
            }
            let apps = ["client", "server", name];
            let app = *r.pick::<&str>(&apps);
            add_pod(&mut s, ns, name, app, node, &ips, ports);
            if r.chance(10) {
                s.pods
                    .get_mut(&ObjectRef::new(ns, name))
                    .expect("pod")
                    .terminated = true;
            }
        }
    }
    if r.chance(50) {
        let node = *r.pick(&["n1", "n2"]);
        let addr = s.nodes[node].ips[0];
        s.pods.insert(
            ObjectRef::new("a", "hostpod"),
            PodInfo {
                labels: [("app".to_string(), "server".to_string())].into(),
                node: Some(node.into()),
                host_network: true,
                terminated: false,
                ips: vec![addr],
                ports: vec![port("web", TCP, 80)],
            },
        );
    }
    for i in 0..r.below(5) {
        let mut spec = json!({});
        let subject = if r.chance(50) {
            json!({"namespaces": rand_sel(r, "team", &["a", "b"])})
        } else {
            json!({"pods": {"namespaceSelector": rand_sel(r, "team", &["a", "b"]),
                             "podSelector": rand_sel(r, "app", &["client", "server", "db"])}})
        };
        spec["subject"] = subject;
        for (dir, field) in [("ingress", "from"), ("egress", "to")] {
            let mut rules = Vec::new();
            for _ in 0..r.below(5) {
                let mut peers = Vec::new();
                for _ in 0..1 + r.below(2) {
                    let kinds = if dir == "egress" { 4 } else { 2 };
                    peers.push(match r.below(kinds) {
                        0 => json!({"namespaces": rand_sel(r, "team", &["a", "b"])}),
                        1 => json!({"pods": {"namespaceSelector": rand_sel(r, "team", &["a", "b"]),
                                             "podSelector": rand_sel(r, "app", &["client", "server", "db"])}}),
                        2 => {
                            let mut nets: Vec<&str> =
                                (0..1 + r.below(3)).map(|_| *r.pick(&CIDRS)).collect();
                            nets.sort();
                            nets.dedup();
                            json!({"networks": nets})
                        }
                        _ => json!({"nodes": rand_sel(r, "role", &["one", "two"])}),
                    });
                }
                let mut rule =
                    json!({"action": *r.pick(&["Accept", "Deny", "Pass"]), field: peers});
                if let Some(p) = rand_ports(r) {
                    rule["protocols"] = p;
                }
                rules.push(rule);
            }
            if !rules.is_empty() {
                spec[dir] = json!(rules);
            }
        }
        let tier = *r.pick(&["Admin", "Baseline"]);
        add_cnp(
            &mut s,
            &format!("cnp-{i}"),
            tier,
            *r.pick(&[1, 2, 2, 3]),
            spec,
        );
    }
    for i in 0..r.below(3) {
        let ns = *r.pick(&["a", "b"]);
        let mut spec = json!({"podSelector": rand_sel(r, "app", &["client", "server", "db"])});
        spec["policyTypes"] =
            json!(*r.pick(&[vec!["Ingress"], vec!["Egress"], vec!["Ingress", "Egress"]]));
        for (dir, field) in [("ingress", "from"), ("egress", "to")] {
            let mut rules = Vec::new();
            for _ in 0..r.below(3) {
                let peer = match r.below(3) {
                    0 => json!({"namespaceSelector": rand_sel(r, "team", &["a", "b"])}),
                    1 => json!({"podSelector": rand_sel(r, "app", &["client", "server", "db"])}),
                    _ => json!({"ipBlock": {"cidr": "10.244.0.0/16",
                                             "except": [*r.pick(&["10.244.2.0/24", "10.244.1.10/32", "10.244.2.20/32"])]}}),
                };
                let mut rule = json!({field: [peer]});
                if r.chance(50) {
                    rule["ports"] = json!([{"port": *r.pick(&[json!(80), json!("web"), json!(53)]),
                                            "protocol": *r.pick(&["TCP", "UDP"])}]);
                }
                rules.push(rule);
            }
            spec[dir] = json!(rules);
        }
        add_np(&mut s, ns, &format!("np-{i}"), spec);
    }
    s
}

#[test]
fn differential_hunt_tables_against_reference() {
    let seeds: u64 = std::env::var("TIERS_ATTACK_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut compared = 0;
    for seed in 0..seeds {
        let mut r = Rng::new(seed.wrapping_mul(7919).wrapping_add(17));
        let s = rand_world(&mut r);
        let names: Vec<&str> = s.nodes.keys().map(String::as_str).collect();
        let nodes = per_node(&s, &names);
        let mut ends: Vec<End> = Vec::new();
        for (k, p) in &s.pods {
            for a in &p.ips {
                // A terminated pod's address is just an address (its IP may be reused).
                ends.push(if p.terminated {
                    End::Outside(*a)
                } else {
                    End::Pod(k.clone(), *a)
                });
            }
        }
        for a in [
            "172.18.0.2",
            "172.18.0.3",
            "fc00::2",
            "192.0.2.9",
            "10.244.2.99",
            "2001:db8::1",
            "fd00::99",
        ] {
            ends.push(outside(a));
        }
        for src in &ends {
            for dst in &ends {
                if src.ip().is_ipv4() != dst.ip().is_ipv4() || src == dst {
                    continue;
                }
                if !matches!(src, End::Pod(..)) && !matches!(dst, End::Pod(..)) {
                    continue;
                }
                for (proto, p) in [(TCP, 80), (TCP, 81), (UDP, 53), (TCP, 8080), (TCP, 9000)] {
                    let want = refr(&s, src, dst, proto, p);
                    let got = allowed(&s, &nodes, src, dst, proto, p);
                    compared += 1;
                    assert_eq!(
                        got,
                        want,
                        "seed {seed}: {src:?} -> {dst:?} {proto}/{p}: tables {got}, reference {want}\npods {:#?}\nnodes {:#?}\ncnp {}\nnp {}",
                        s.pods,
                        s.nodes,
                        serde_json::to_string_pretty(&s.cluster_policies).unwrap_or_default(),
                        serde_json::to_string_pretty(&s.policies.values().collect::<Vec<_>>())
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    assert!(compared > 0);
}
