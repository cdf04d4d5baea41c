//! Attacks on the compiler's caches (`compile/mod.rs`: `SubjectKey`, `RuleKey`, the rule-set
//! cache by slot set, and `prefix::union` with hosts apart from blocks).
//!
//! Each test builds a small cluster, compiles it for every node, programs the in-memory
//! maps and decides flows the way `compile_vs_reference` does (egress at the source's
//! node, ingress at the destination's node). Where the spec's answer is asserted, the
//! reference model (`netpol_tests::reference`) is asserted to give the same answer, so a
//! test checks our reading of the spec as well as the compiler.
//!
//! Errors are checked against each policy compiled alone: no cache can share anything
//! between policies then, so what the full compile reports must be exactly that union.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol_agent::compile::{Plan, PolicyError, compile};
use netpol_agent::program::Programmer;
use netpol_agent::program::memory::MemoryMaps;
use netpol_agent::state::{ClusterState, ContainerPort, Labels, ObjectRef, PodInfo, Protocol};
use netpol_tests::decide::maps_decide;
use netpol_tests::generate::Rng;
use netpol_tests::reference::{self, End};
use serde_json::{Value, json};

use Protocol::{Tcp, Udp};

// ---------------------------------------------------------------------------------------
// A small cluster builder and the datapath's decision.

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn named(name: &str, port: u16, protocol: Protocol) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        port,
        protocol,
    }
}

#[derive(Default)]
struct Cluster(ClusterState);

impl Cluster {
    fn new() -> Self {
        let mut c = Cluster::default();
        for ns in ["ns-a", "ns-b"] {
            c.namespace(ns, &[("team", ns)]);
        }
        c
    }

    fn namespace(&mut self, ns: &str, l: &[(&str, &str)]) -> &mut Self {
        let mut l = labels(l);
        l.insert("kubernetes.io/metadata.name".into(), ns.into());
        self.0.namespaces.insert(ns.into(), l);
        self
    }

    /// A running pod on `node`; the returned `PodInfo` can be tweaked further.
    fn pod(
        &mut self,
        ns: &str,
        name: &str,
        l: &[(&str, &str)],
        ips: &[&str],
        node: &str,
    ) -> &mut PodInfo {
        let r = ObjectRef::new(ns, name);
        self.0.pods.insert(
            r.clone(),
            PodInfo {
                labels: labels(l),
                node: Some(node.into()),
                host_network: false,
                terminated: false,
                ips: ips.iter().map(|s| ip(s)).collect(),
                ports: Vec::new(),
            },
        );
        self.0.pods.get_mut(&r).unwrap()
    }

    fn policy(&mut self, ns: &str, name: &str, spec: Value) -> &mut Self {
        let p: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns}, "spec": spec
        }))
        .expect("test policy has the API's shape");
        self.0.policies.insert(ObjectRef::new(ns, name), p);
        self
    }

    fn nodes(&self) -> BTreeSet<String> {
        self.0
            .pods
            .values()
            .filter_map(|p| p.node.clone())
            .collect()
    }

    fn plans(&self) -> BTreeMap<String, Plan> {
        self.nodes()
            .into_iter()
            .map(|n| {
                let p = compile(&self.0, &n);
                (n, p)
            })
            .collect()
    }

    /// `ns/name` (its first address) or a bare address outside the pods.
    fn end(&self, who: &str) -> End {
        match who.split_once('/') {
            Some((ns, name)) => {
                let r = ObjectRef::new(ns, name);
                let a = self.0.pods[&r].ips[0];
                End::Pod(r, a)
            }
            None => End::Outside(ip(who)),
        }
    }

    /// `ns/name` at a given address of it.
    fn end_at(&self, who: &str, at: &str) -> End {
        let (ns, name) = who.split_once('/').unwrap();
        End::Pod(ObjectRef::new(ns, name), ip(at))
    }
}

fn program(plans: &BTreeMap<String, Plan>) -> BTreeMap<String, Programmer<MemoryMaps>> {
    plans
        .iter()
        .map(|(n, plan)| {
            let mut p = Programmer::new(MemoryMaps::default(), 100_000);
            p.apply(plan, &BTreeMap::new())
                .unwrap_or_else(|e| panic!("programming {n}: {e}"));
            (n.clone(), p)
        })
        .collect()
}

/// Compiled once, then flows are asserted against an expected answer (and the reference).
struct Compiled<'a> {
    c: &'a Cluster,
    plans: BTreeMap<String, Plan>,
    maps: BTreeMap<String, Programmer<MemoryMaps>>,
}

impl<'a> Compiled<'a> {
    fn of(c: &'a Cluster) -> Self {
        let plans = c.plans();
        let maps = program(&plans);
        Compiled { c, plans, maps }
    }

    fn decide(&self, src: &End, dst: &End, proto: Protocol, port: u16) -> bool {
        maps_decide(&self.c.0, &self.maps, src, dst, proto, port)
    }

    /// The spec (reference model) must say `expected`, and so must the compiled maps.
    #[track_caller]
    fn expect(&self, src: &End, dst: &End, proto: Protocol, port: u16, expected: bool) {
        let spec = reference::allowed(&self.c.0, src, dst, proto, port);
        assert_eq!(
            spec, expected,
            "reference model: {src:?} -> {dst:?} {proto}/{port}"
        );
        let got = self.decide(src, dst, proto, port);
        assert_eq!(
            got, expected,
            "compiled maps: {src:?} -> {dst:?} {proto}/{port} (spec says {expected})"
        );
    }

    /// Errors of all nodes, as text, sorted.
    fn errors(&self) -> BTreeSet<String> {
        self.plans
            .values()
            .flat_map(|p| p.errors.iter().map(PolicyError::to_string))
            .collect()
    }

    fn errors_of(&self, policy: &ObjectRef) -> Vec<PolicyError> {
        let mut out: Vec<PolicyError> = self
            .plans
            .values()
            .flat_map(|p| p.errors.iter().filter(|e| &e.policy == policy).cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Errors of each policy compiled alone (every node): the cache-free expectation.
fn errors_alone(state: &ClusterState, nodes: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (k, p) in &state.policies {
        let mut one = state.clone();
        one.policies = BTreeMap::from([(k.clone(), p.clone())]);
        for n in nodes {
            out.extend(compile(&one, n).errors.iter().map(PolicyError::to_string));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Found by this attack and fixed (`Grant::from_net`).

/// Spec: an ipBlock's `cidr` is one address family; an IPv6 CIDR matches IPv6 peers
/// only (the compiler's own `Grant::from_net` says "An IPv6 CIDR never covers IPv4
/// addresses", and the reference model agrees). The compiler maps IPv4 into
/// `::ffff:0:0/96` and only excepts that space from IPv6 blocks that *contain* all of it,
/// so an IPv6 block written in the IPv4-mapped form landed inside the IPv4 space and
/// allowed IPv4 peers: here `::ffff:10.1.0.0/112` let in 10.1.0.7.
#[test]
fn ipv4_mapped_ipv6_block_does_not_cover_ipv4_peers() {
    let mut c = Cluster::new();
    c.pod("ns-a", "server", &[("app", "server")], &["10.0.0.5"], "n1");
    c.pod("ns-b", "client", &[("app", "client")], &["10.1.0.7"], "n2");
    c.policy(
        "ns-a",
        "v6-only-in",
        json!({"podSelector": {"matchLabels": {"app": "server"}},
               "ingress": [{"from": [{"ipBlock": {"cidr": "::ffff:10.1.0.0/112"}}]}]}),
    );
    let k = Compiled::of(&c);
    k.expect(&c.end("ns-b/client"), &c.end("ns-a/server"), Tcp, 80, false);
}

/// The same with a single IPv4-mapped IPv6 address (`::ffff:10.1.0.7/128`): a /128 block
/// without excepts was taken by `prefix::union` for a host grant at the IPv4 address
/// 10.1.0.7, so egress to that IPv4 pod (any port) was allowed.
#[test]
fn ipv4_mapped_ipv6_host_block_does_not_cover_the_ipv4_address() {
    let mut c = Cluster::new();
    c.pod("ns-a", "out", &[("app", "out")], &["10.0.0.6"], "n1");
    c.pod("ns-b", "client", &[("app", "client")], &["10.1.0.7"], "n2");
    c.policy(
        "ns-a",
        "v6-only-out",
        json!({"podSelector": {"matchLabels": {"app": "out"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": "::ffff:10.1.0.7/128"}}]}]}),
    );
    let k = Compiled::of(&c);
    k.expect(&c.end("ns-a/out"), &c.end("ns-b/client"), Tcp, 80, false);
}

// ---------------------------------------------------------------------------------------
// Cache-sensitive cases that hold.

/// Spec: a peer with a podSelector and no namespaceSelector selects pods in the *policy's*
/// namespace. The same rule text in two namespaces must resolve twice (RuleKey carries
/// the namespace when a peer is namespaced), and the subject cache must not mix two pods
/// alike in labels but in different namespaces.
#[test]
fn same_pod_selector_rule_in_two_namespaces_is_relative_to_each_policy() {
    let mut c = Cluster::new();
    for (ns, n) in [("ns-a", 1), ("ns-b", 2)] {
        c.pod(ns, "db", &[("app", "db")], &[&format!("10.0.{n}.1")], "n1");
        c.pod(
            ns,
            "api",
            &[("app", "api")],
            &[&format!("10.0.{n}.2")],
            "n2",
        );
        c.policy(
            ns,
            "db-in",
            json!({"podSelector": {"matchLabels": {"app": "db"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}]}),
        );
    }
    let k = Compiled::of(&c);
    k.expect(&c.end("ns-a/api"), &c.end("ns-a/db"), Tcp, 5432, true);
    k.expect(&c.end("ns-b/api"), &c.end("ns-b/db"), Tcp, 5432, true);
    k.expect(&c.end("ns-b/api"), &c.end("ns-a/db"), Tcp, 5432, false);
    k.expect(&c.end("ns-a/api"), &c.end("ns-b/db"), Tcp, 5432, false);
}

/// Spec: a namespaceSelector peer names namespaces by their labels, whatever the policy's
/// namespace; the rule is shared between namespaces (no namespace in its key) and must
/// still be right in each.
#[test]
fn same_namespace_selector_rule_in_two_namespaces_is_shared_and_right() {
    let mut c = Cluster::new();
    c.namespace("mon", &[("role", "monitoring")]);
    c.pod("mon", "prom", &[("app", "prom")], &["10.9.0.1"], "n2");
    for (ns, n) in [("ns-a", 1), ("ns-b", 2)] {
        c.pod(
            ns,
            "web",
            &[("app", "web")],
            &[&format!("10.0.{n}.1")],
            "n1",
        );
        c.policy(
            ns,
            "from-mon",
            json!({"podSelector": {},
                   "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"role": "monitoring"}}}]}]}),
        );
    }
    let k = Compiled::of(&c);
    k.expect(&c.end("mon/prom"), &c.end("ns-a/web"), Tcp, 9090, true);
    k.expect(&c.end("mon/prom"), &c.end("ns-b/web"), Tcp, 9090, true);
    k.expect(&c.end("ns-a/web"), &c.end("ns-b/web"), Tcp, 9090, false);
    k.expect(&c.end("ns-b/web"), &c.end("ns-a/web"), Tcp, 9090, false);
}

/// Spec: an ingress named port means the number on the destination, i.e. on each selected
/// pod. Replicas with the same labels but a different number for "http" must not share
/// one resolution (SubjectKey and RuleKey both carry the subject's ports), also when the
/// same rule appears in another namespace's policy.
#[test]
fn ingress_named_port_resolves_on_each_subject_pod() {
    let mut c = Cluster::new();
    c.pod("ns-a", "web-1", &[("app", "web")], &["10.0.1.1"], "n1")
        .ports = vec![named("http", 8080, Tcp)];
    c.pod("ns-a", "web-2", &[("app", "web")], &["10.0.1.2"], "n1")
        .ports = vec![named("http", 9090, Tcp)];
    c.pod("ns-b", "web-3", &[("app", "web")], &["10.0.2.1"], "n1")
        .ports = vec![named("http", 7070, Tcp)];
    c.pod("ns-b", "client", &[("app", "client")], &["10.0.2.9"], "n2");
    for ns in ["ns-a", "ns-b"] {
        c.policy(
            ns,
            "http-in",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"ports": [{"port": "http"}]}]}),
        );
    }
    let k = Compiled::of(&c);
    let client = c.end("ns-b/client");
    k.expect(&client, &c.end("ns-a/web-1"), Tcp, 8080, true);
    k.expect(&client, &c.end("ns-a/web-1"), Tcp, 9090, false);
    k.expect(&client, &c.end("ns-a/web-2"), Tcp, 9090, true);
    k.expect(&client, &c.end("ns-a/web-2"), Tcp, 8080, false);
    k.expect(&client, &c.end("ns-b/web-3"), Tcp, 7070, true);
    k.expect(&client, &c.end("ns-b/web-3"), Tcp, 8080, false);
}

/// Spec: an egress named port means the number on each destination pod, through a
/// podSelector or an ipBlock. The subject's own ports do not matter (no subject ports in
/// the egress RuleKey), so two subjects with different ports share the rule and both get
/// per-destination numbers.
#[test]
fn egress_named_port_resolves_on_each_destination_pod() {
    let mut c = Cluster::new();
    c.pod("ns-a", "app-1", &[("app", "app")], &["10.0.1.1"], "n1")
        .ports = vec![named("metrics", 1111, Tcp)];
    c.pod("ns-a", "app-2", &[("app", "app")], &["10.0.1.2"], "n1")
        .ports = vec![named("metrics", 2222, Tcp)];
    c.pod("ns-b", "db-1", &[("app", "db")], &["10.0.2.1"], "n2")
        .ports = vec![named("sql", 5432, Tcp)];
    c.pod("ns-b", "db-2", &[("app", "db")], &["10.0.2.2"], "n2")
        .ports = vec![named("sql", 3306, Tcp)];
    c.policy(
        "ns-a",
        "sql-out",
        json!({"podSelector": {"matchLabels": {"app": "app"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "db"}}}],
                           "ports": [{"port": "sql"}]},
                          {"to": [{"ipBlock": {"cidr": "10.0.2.0/24"}}], "ports": [{"port": "sql", "protocol": "UDP"}, {"port": 53}]}]}),
    );
    c.0.pods
        .get_mut(&ObjectRef::new("ns-b", "db-2"))
        .unwrap()
        .ports
        .push(named("sql", 3307, Udp));
    let k = Compiled::of(&c);
    for app in ["ns-a/app-1", "ns-a/app-2"] {
        let a = c.end(app);
        k.expect(&a, &c.end("ns-b/db-1"), Tcp, 5432, true);
        k.expect(&a, &c.end("ns-b/db-1"), Tcp, 3306, false);
        k.expect(&a, &c.end("ns-b/db-2"), Tcp, 3306, true);
        k.expect(&a, &c.end("ns-b/db-2"), Tcp, 5432, false);
        // The ipBlock rule: UDP "sql" only where a pod in the block names it.
        k.expect(&a, &c.end("ns-b/db-2"), Udp, 3307, true);
        k.expect(&a, &c.end("ns-b/db-1"), Udp, 3307, false);
        k.expect(&a, &c.end("10.0.2.77"), Tcp, 53, true);
        k.expect(&a, &c.end("10.0.2.77"), Udp, 3307, false);
    }
}

/// Spec: the same port list means different things in ingress (named port on the
/// subject) and egress (named port on the destination). Same text, same index, same
/// policy: only the direction in the RuleKey tells them apart.
#[test]
fn same_rule_text_in_ingress_and_egress_is_not_shared() {
    let mut c = Cluster::new();
    c.pod("ns-a", "me", &[("app", "me")], &["10.0.1.1"], "n1")
        .ports = vec![named("http", 8080, Tcp)];
    c.pod("ns-a", "peer", &[("app", "peer")], &["10.0.1.2"], "n2")
        .ports = vec![named("http", 9090, Tcp)];
    c.policy(
        "ns-a",
        "both",
        json!({"podSelector": {"matchLabels": {"app": "me"}},
               "policyTypes": ["Ingress", "Egress"],
               "ingress": [{"ports": [{"port": "http"}]}],
               "egress": [{"ports": [{"port": "http"}]}]}),
    );
    let k = Compiled::of(&c);
    let (me, peer) = (c.end("ns-a/me"), c.end("ns-a/peer"));
    k.expect(&peer, &me, Tcp, 8080, true);
    k.expect(&peer, &me, Tcp, 9090, false);
    k.expect(&me, &peer, Tcp, 9090, true);
    k.expect(&me, &peer, Tcp, 8080, false);
}

/// Project rule: a rule the API server would reject allows nothing and is reported, once
/// per policy. The same bad rule at the same index in three policies (two namespaces, two
/// subjects alike) is resolved once but must give three errors, each naming its policy.
#[test]
fn invalid_rule_in_several_policies_reports_each_policy() {
    let mut c = Cluster::new();
    c.pod("ns-a", "web", &[("app", "web")], &["10.0.1.1"], "n1");
    c.pod("ns-a", "web-2", &[("app", "web")], &["10.0.1.2"], "n2");
    c.pod("ns-b", "web", &[("app", "web")], &["10.0.2.1"], "n1");
    c.pod("ns-b", "client", &[("app", "client")], &["10.0.2.9"], "n2");
    let bad = json!({"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]},
                                 {"ports": [{"port": 443}]}]});
    c.policy("ns-a", "one", bad.clone());
    c.policy("ns-a", "two", bad.clone());
    c.policy("ns-b", "three", bad);
    let k = Compiled::of(&c);
    for (ns, name) in [("ns-a", "one"), ("ns-a", "two"), ("ns-b", "three")] {
        let errs = k.errors_of(&ObjectRef::new(ns, name));
        assert_eq!(errs.len(), 1, "{ns}/{name}: {errs:?}");
        assert_eq!(errs[0].location, "ingress[0].from[0]", "{errs:?}");
        assert!(errs[0].message.contains("/33"), "{errs:?}");
    }
    assert_eq!(k.errors(), errors_alone(&c.0, &c.nodes()));
    // The bad rule allows nothing; the good one still allows 443.
    let client = c.end("ns-b/client");
    k.expect(&client, &c.end("ns-a/web"), Tcp, 80, false);
    k.expect(&client, &c.end("ns-b/web"), Tcp, 80, false);
    k.expect(&client, &c.end("ns-a/web-2"), Tcp, 443, true);
}

/// The same invalid text at different indexes is a different rule: each error names its
/// own location (`egress[0]` in one policy, `egress[1]` in the other).
#[test]
fn same_invalid_rule_at_other_indexes_names_each_location() {
    let mut c = Cluster::new();
    c.pod("ns-a", "web", &[("app", "web")], &["10.0.1.1"], "n1");
    let bad = json!({"ports": [{"port": 90, "endPort": 80}]});
    let good = json!({"ports": [{"port": 53, "protocol": "UDP"}]});
    c.policy(
        "ns-a",
        "first",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [bad.clone(), good.clone()]}),
    );
    c.policy(
        "ns-a",
        "second",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [good, bad]}),
    );
    let k = Compiled::of(&c);
    let loc = |n: &str| -> Vec<String> {
        k.errors_of(&ObjectRef::new("ns-a", n))
            .into_iter()
            .map(|e| e.location)
            .collect()
    };
    assert_eq!(loc("first"), ["egress[0].ports[0]"]);
    assert_eq!(loc("second"), ["egress[1].ports[0]"]);
    assert_eq!(k.errors(), errors_alone(&c.0, &c.nodes()));
    k.expect(&c.end("ns-a/web"), &c.end("192.0.2.1"), Udp, 53, true);
    k.expect(&c.end("ns-a/web"), &c.end("192.0.2.1"), Tcp, 85, false);
}

/// The same invalid text as ingress[0] and egress[0] of one policy: the rule cache must
/// keep the direction, or one error would carry the other's location (`from`/`to`).
#[test]
fn same_invalid_rule_in_ingress_and_egress_names_each_direction() {
    let mut c = Cluster::new();
    c.pod("ns-a", "web", &[("app", "web")], &["10.0.1.1"], "n1");
    let bad = json!([{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]);
    c.policy(
        "ns-a",
        "both",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
               "ingress": [{"from": bad.clone()}], "egress": [{"to": bad}]}),
    );
    let k = Compiled::of(&c);
    let locations: Vec<String> = k
        .errors_of(&ObjectRef::new("ns-a", "both"))
        .into_iter()
        .map(|e| e.location)
        .collect();
    assert_eq!(locations, ["egress[0].to[0]", "ingress[0].from[0]"]);
    k.expect(&c.end("ns-a/web"), &c.end("10.2.0.1"), Tcp, 80, false);
    k.expect(&c.end("10.2.0.1"), &c.end("ns-a/web"), Tcp, 80, false);
}

/// Spec (and the project's reading): hostNetwork pods and Succeeded/Failed pods are not
/// selected as peers even with matching labels, while selected pods on other nodes are.
/// A replica on another node gets the same rule set there.
#[test]
fn host_network_and_terminated_pods_are_not_peers_other_nodes_are() {
    let mut c = Cluster::new();
    c.pod("ns-a", "db", &[("app", "db")], &["10.0.1.1"], "n1");
    c.pod("ns-a", "db-2", &[("app", "db")], &["10.0.1.2"], "n2");
    c.pod("ns-a", "api-far", &[("app", "api")], &["10.0.3.1"], "n3");
    c.pod(
        "ns-a",
        "api-host",
        &[("app", "api")],
        &["192.168.0.10"],
        "n1",
    )
    .host_network = true;
    c.pod("ns-a", "api-done", &[("app", "api")], &["10.0.1.9"], "n2")
        .terminated = true;
    c.policy(
        "ns-a",
        "db-in",
        json!({"podSelector": {"matchLabels": {"app": "db"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}]}),
    );
    let k = Compiled::of(&c);
    for db in ["ns-a/db", "ns-a/db-2"] {
        k.expect(&c.end("ns-a/api-far"), &c.end(db), Tcp, 5432, true);
        k.expect(&c.end("ns-a/api-host"), &c.end(db), Tcp, 5432, false);
        k.expect(&c.end("ns-a/api-done"), &c.end(db), Tcp, 5432, false);
    }
}

/// Spec: rules add up; a pod peer is allowed what any rule gives its address. With host
/// grants unioned apart from blocks: a dual-stack peer selected by a podSelector keeps
/// that on both families even when an ipBlock excepts its IPv4 address, and a pod inside
/// a block also gets the block's ports. A v4 block never covers the peer's v6 address.
#[test]
fn dual_stack_peer_hosts_and_blocks_add_up() {
    let mut c = Cluster::new();
    c.pod(
        "ns-a",
        "srv",
        &[("app", "srv")],
        &["10.0.1.1", "fd00::1:1"],
        "n1",
    );
    c.pod(
        "ns-b",
        "db",
        &[("app", "db")],
        &["10.0.2.1", "fd00::2:1"],
        "n2",
    );
    c.pod(
        "ns-b",
        "other",
        &[("app", "other")],
        &["10.0.2.2", "fd00::2:2"],
        "n2",
    );
    c.policy(
        "ns-a",
        "out",
        json!({"podSelector": {"matchLabels": {"app": "srv"}}, "policyTypes": ["Egress"],
               "egress": [
                   {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "db"}}}],
                    "ports": [{"port": 5432}]},
                   {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.2.1/32"]}}],
                    "ports": [{"port": 80}]},
                   {"to": [{"ipBlock": {"cidr": "fd00::/16"}}], "ports": [{"port": 443}]}]}),
    );
    let k = Compiled::of(&c);
    let srv4 = c.end_at("ns-a/srv", "10.0.1.1");
    let srv6 = c.end_at("ns-a/srv", "fd00::1:1");
    let db4 = c.end_at("ns-b/db", "10.0.2.1");
    let db6 = c.end_at("ns-b/db", "fd00::2:1");
    let other4 = c.end_at("ns-b/other", "10.0.2.2");
    k.expect(&srv4, &db4, Tcp, 5432, true);
    k.expect(&srv4, &db4, Tcp, 80, false); // excepted from the block
    k.expect(&srv6, &db6, Tcp, 5432, true);
    k.expect(&srv6, &db6, Tcp, 443, true);
    k.expect(&srv6, &db6, Tcp, 80, false); // the v4 block does not cover v6
    k.expect(&srv4, &other4, Tcp, 80, true);
    k.expect(&srv4, &other4, Tcp, 5432, false);
    k.expect(&srv4, &c.end("10.200.0.1"), Tcp, 80, true);
    k.expect(&srv4, &c.end("10.200.0.1"), Tcp, 443, false);
}

/// Rule sets are cached by the set of rule slots they unite. Two subjects selected by
/// different policies holding the same rule share a slot; a third selected by both gets
/// the union; a fourth by a policy with no rules is isolated with nothing allowed (the
/// empty slot set, shared by both directions).
#[test]
fn rule_sets_by_slot_set_are_unions_of_the_right_rules() {
    let mut c = Cluster::new();
    c.pod("ns-a", "x", &[("role", "x")], &["10.0.1.1"], "n1");
    c.pod("ns-a", "y", &[("role", "y")], &["10.0.1.2"], "n1");
    c.pod(
        "ns-a",
        "xy",
        &[("role", "x"), ("also", "y")],
        &["10.0.1.3"],
        "n1",
    );
    c.pod("ns-a", "none", &[("role", "none")], &["10.0.1.4"], "n1");
    c.pod("ns-b", "client", &[("app", "client")], &["10.0.2.9"], "n2");
    let shared = json!({"ports": [{"port": 80}]});
    c.policy(
        "ns-a",
        "px",
        json!({"podSelector": {"matchLabels": {"role": "x"}}, "ingress": [shared.clone()]}),
    );
    c.policy(
        "ns-a",
        "py",
        json!({"podSelector": {"matchExpressions": [{"key": "role", "operator": "In", "values": ["y"]}]},
               "ingress": [shared, {"ports": [{"port": 81}]}]}),
    );
    c.policy(
        "ns-a",
        "pxy",
        json!({"podSelector": {"matchLabels": {"also": "y"}}, "ingress": [{"ports": [{"port": 82}]}]}),
    );
    c.policy(
        "ns-a",
        "pnone",
        json!({"podSelector": {"matchLabels": {"role": "none"}}, "policyTypes": ["Ingress", "Egress"]}),
    );
    let k = Compiled::of(&c);
    let cl = c.end("ns-b/client");
    for (pod, open) in [
        ("ns-a/x", vec![80]),
        ("ns-a/y", vec![80, 81]),
        ("ns-a/xy", vec![80, 82]),
        ("ns-a/none", vec![]),
    ] {
        for port in [80, 81, 82] {
            k.expect(&cl, &c.end(pod), Tcp, port, open.contains(&port));
        }
    }
    k.expect(&c.end("ns-a/none"), &cl, Tcp, 80, false);
}

/// Spec/project reading: a named port cannot resolve on a Succeeded/Failed pod (its
/// address may already be someone else's), so an egress ipBlock rule naming a port does
/// not open it towards a terminated pod's address, and after the address is reused the
/// new pod's number applies. (The reference model disagrees for the terminated pod: its
/// `port_matches` resolves named ports on terminated pods; see the report.)
#[test]
fn egress_named_port_ignores_terminated_pods_and_follows_address_reuse() {
    let mut c = Cluster::new();
    c.pod("ns-a", "app", &[("app", "app")], &["10.0.1.1"], "n1");
    c.pod("ns-b", "old", &[("app", "db")], &["10.0.2.1"], "n2")
        .ports = vec![named("sql", 5432, Tcp)];
    c.0.pods
        .get_mut(&ObjectRef::new("ns-b", "old"))
        .unwrap()
        .terminated = true;
    c.pod("ns-b", "gone", &[("app", "db")], &["10.0.2.2"], "n2")
        .ports = vec![named("sql", 5432, Tcp)];
    c.0.pods
        .get_mut(&ObjectRef::new("ns-b", "gone"))
        .unwrap()
        .terminated = true;
    c.pod("ns-b", "new", &[("app", "db")], &["10.0.2.1"], "n2")
        .ports = vec![named("sql", 3306, Tcp)];
    c.policy(
        "ns-a",
        "out",
        json!({"podSelector": {"matchLabels": {"app": "app"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": "10.0.2.0/24"}}], "ports": [{"port": "sql"}]}]}),
    );
    let k = Compiled::of(&c);
    let app = c.end("ns-a/app");
    k.expect(&app, &c.end("ns-b/new"), Tcp, 3306, true);
    k.expect(&app, &c.end("ns-b/new"), Tcp, 5432, false);
    assert!(!k.decide(&app, &c.end("ns-b/gone"), Tcp, 5432));
}

// ---------------------------------------------------------------------------------------
// Random clusters built to hit the caches: few labels (many pods alike), a small pool of
// rules reused by every policy (the same text at the same index in several policies and
// namespaces), named ports with different numbers per pod, dual-stack and IPv6-only pods,
// hostNetwork and terminated pods (some reusing a live pod's address), a namespace the
// state has not seen, invalid rules and selectors, unknown policy types.
//
// Left out on purpose: flows *to or from* terminated pods (the reference resolves named
// ports on them, see above) and IPv4-mapped IPv6 CIDRs (the finding above).

const KEYS: [&str; 2] = ["app", "tier"];
const VALUES: [&str; 2] = ["one", "two"];
const NAMES: [&str; 2] = ["http", "dns"];
const NUMS: [u16; 4] = [53, 80, 81, 8080];
const PROTOS: [Protocol; 2] = [Tcp, Udp];
const OUTSIDE: [&str; 3] = ["192.0.2.5", "2001:db8::1", "10.9.9.9"];

fn random_labels(rng: &mut Rng) -> Labels {
    let mut l = Labels::new();
    for k in KEYS {
        if rng.chance(50) {
            l.insert(k.into(), rng.pick(&VALUES).to_string());
        }
    }
    l
}

fn random_selector(rng: &mut Rng) -> Value {
    match rng.below(5) {
        0 => json!({}),
        1 | 2 => json!({"matchLabels": {*rng.pick(&KEYS): *rng.pick(&VALUES)}}),
        3 => {
            json!({"matchExpressions": [{"key": *rng.pick(&KEYS), "operator": "NotIn", "values": [*rng.pick(&VALUES)]}]})
        }
        _ if rng.chance(30) => json!({"matchExpressions": [{"key": "app", "operator": "In"}]}),
        _ => json!({"matchExpressions": [{"key": *rng.pick(&KEYS), "operator": "Exists"}]}),
    }
}

fn random_peer(rng: &mut Rng, pod_ips: &[IpAddr]) -> Value {
    match rng.below(7) {
        0 | 1 => json!({"podSelector": random_selector(rng)}),
        2 => json!({"namespaceSelector": random_selector(rng)}),
        3 => {
            json!({"namespaceSelector": random_selector(rng), "podSelector": random_selector(rng)})
        }
        4 => {
            let a = rng.pick(pod_ips);
            let len = if a.is_ipv4() { 32 } else { 128 };
            json!({"ipBlock": {"cidr": format!("{a}/{len}")}})
        }
        5 => {
            let a = rng.pick(pod_ips);
            if a.is_ipv4() {
                json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": [format!("{a}/32"), "10.1.0.0/16"]}})
            } else {
                json!({"ipBlock": {"cidr": "fd00::/16", "except": [format!("{a}/128")]}})
            }
        }
        _ => match rng.below(8) {
            0 => json!({"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/24"]}}),
            1 => json!({"ipBlock": {"cidr": "::/0"}}),
            2 => json!({"ipBlock": {"cidr": "10.0.0.0/33"}}),
            3 => json!({}),
            4 => json!({"ipBlock": {"cidr": "10.1.0.0/16"}}),
            5 => json!({"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::10/126"]}}),
            6 => json!({"ipBlock": {"cidr": "::/64"}}),
            _ => json!({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}),
        },
    }
}

fn random_rule(rng: &mut Rng, pod_ips: &[IpAddr], field: &str) -> Value {
    let mut r = json!({});
    if rng.chance(75) {
        let peers: Vec<Value> = (0..1 + rng.below(2))
            .map(|_| random_peer(rng, pod_ips))
            .collect();
        r[field] = json!(peers);
    }
    if rng.chance(60) {
        let ports: Vec<Value> = (0..1 + rng.below(2))
            .map(|_| {
                let mut p = match rng.below(5) {
                    0 => json!({"port": *rng.pick(&NUMS)}),
                    1 => json!({"port": 80, "endPort": 81}),
                    2 if rng.chance(20) => json!({"port": 0}),
                    _ => json!({"port": *rng.pick(&NAMES)}),
                };
                if rng.chance(30) {
                    p["protocol"] = json!("UDP");
                }
                p
            })
            .collect();
        r["ports"] = json!(ports);
    }
    r
}

fn random_cluster(rng: &mut Rng) -> ClusterState {
    let mut s = ClusterState::default();
    // ns-d has pods but no Namespace object.
    let nss = ["ns-a", "ns-b", "ns-c", "ns-d"];
    for ns in &nss[..3] {
        let mut l = random_labels(rng);
        l.insert("kubernetes.io/metadata.name".into(), ns.to_string());
        s.namespaces.insert(ns.to_string(), l);
    }
    let mut pod_ips = Vec::new();
    for i in 0..3 + rng.below(8) {
        // Now and then a terminated pod still holds the address of the previous pod.
        let reuse = i > 0 && rng.chance(10);
        let k = if reuse { i - 1 } else { i };
        let v4: IpAddr = format!("10.{}.0.{}", rng.below(2), 10 + k).parse().unwrap();
        let v6: IpAddr = format!("fd00::{}", 10 + k).parse().unwrap();
        let ips = match rng.below(6) {
            0 => vec![v6],
            1 | 2 => vec![v4, v6],
            _ => vec![v4],
        };
        pod_ips.extend(ips.iter().copied());
        let mut ports = Vec::new();
        for n in NAMES {
            if rng.chance(60) {
                ports.push(named(n, *rng.pick(&NUMS), *rng.pick(&PROTOS)));
            }
        }
        s.pods.insert(
            ObjectRef::new(*rng.pick(&nss), format!("p{i}")),
            PodInfo {
                labels: random_labels(rng),
                node: Some(["n1", "n2"][rng.below(2)].into()),
                host_network: rng.chance(8),
                terminated: reuse || rng.chance(8),
                ips,
                ports,
            },
        );
    }
    let pool_in: Vec<Value> = (0..3).map(|_| random_rule(rng, &pod_ips, "from")).collect();
    let pool_eg: Vec<Value> = (0..3).map(|_| random_rule(rng, &pod_ips, "to")).collect();
    for i in 0..1 + rng.below(5) {
        let ns = *rng.pick(&nss);
        let mut spec = json!({"podSelector": random_selector(rng)});
        match rng.below(9) {
            0 | 1 => {}
            2 | 3 => spec["policyTypes"] = json!(["Ingress"]),
            4 | 5 => spec["policyTypes"] = json!(["Egress"]),
            6 => spec["policyTypes"] = json!(["Bogus"]),
            _ => spec["policyTypes"] = json!(["Ingress", "Egress"]),
        }
        if rng.chance(80) {
            let rules: Vec<Value> = (0..rng.below(3))
                .map(|_| rng.pick(&pool_in).clone())
                .collect();
            spec["ingress"] = json!(rules);
        }
        if rng.chance(80) {
            let rules: Vec<Value> = (0..rng.below(3))
                .map(|_| rng.pick(&pool_eg).clone())
                .collect();
            spec["egress"] = json!(rules);
        }
        let p: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": format!("pol{i}"), "namespace": ns}, "spec": spec}))
        .unwrap();
        s.policies.insert(ObjectRef::new(ns, format!("pol{i}")), p);
    }
    s
}

/// Every flow between live pods and a few outside addresses, every protocol and port of
/// the vocabulary, on random cache-heavy clusters: compiled maps == reference, and the
/// errors reported == the errors of each policy compiled alone.
/// NETPOL_CACHE_CLUSTERS=<n> scales it (default 1500).
#[test]
fn random_cache_heavy_clusters_agree_with_the_reference() {
    let clusters: u64 = std::env::var("NETPOL_CACHE_CLUSTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let (mut compared, mut allowed) = (0u64, 0u64);
    for seed in 0..clusters {
        let mut rng = Rng::new(seed);
        let c = Cluster(random_cluster(&mut rng));
        let k = Compiled::of(&c);
        assert_eq!(
            k.errors(),
            errors_alone(&c.0, &c.nodes()),
            "seed {seed}: errors differ from each policy compiled alone"
        );
        let mut ends: Vec<End> =
            c.0.pods
                .iter()
                .filter(|(_, p)| !p.terminated)
                .flat_map(|(r, p)| p.ips.iter().map(|a| End::Pod(r.clone(), *a)))
                .collect();
        ends.extend(OUTSIDE.iter().map(|o| End::Outside(ip(o))));
        for a in &ends {
            for b in &ends {
                if a.ip().is_ipv4() != b.ip().is_ipv4()
                    || matches!((a, b), (End::Outside(_), End::Outside(_)))
                {
                    continue;
                }
                for proto in PROTOS {
                    for port in [53u16, 80, 81, 82, 8080] {
                        let want = reference::allowed(&c.0, a, b, proto, port);
                        let got = k.decide(a, b, proto, port);
                        compared += 1;
                        allowed += u64::from(want);
                        assert_eq!(
                            got,
                            want,
                            "seed {seed}: {a:?} -> {b:?} {proto}/{port}\npods {:#?}\npolicies {}",
                            c.0.pods,
                            serde_json::to_string(&c.0.policies.values().collect::<Vec<_>>())
                                .unwrap_or_default()
                        );
                    }
                }
            }
        }
    }
    assert!(
        allowed > compared / 10 && allowed < compared * 9 / 10,
        "{allowed} of {compared} allowed"
    );
}
