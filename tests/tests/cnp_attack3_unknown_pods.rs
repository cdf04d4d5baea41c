//! Third attack on ClusterNetworkPolicy's ordered tables: the unknown pod (an address in
//! the nodes' pod ranges without an identity, `IDENTITY_UNKNOWN_POD`) and chained port
//! sets (`PortSet::len` carrying the next set's id). Pure userspace: `compile`,
//! `Programmer<MemoryMaps>`, read back with `MemoryMaps::rule_from` (the twin of the
//! datapath's lookup), and the plan (what explain and the tests' model use).
//!
//! Tests named `*_finding_*` assert what ClusterNetworkPolicy semantics (and the change's
//! own "fail closed" promise) require; they failed at a47228d and pass since the fix that
//! followed (a Pass denies the unknown pod; a range's network address is no pod). The
//! others are guards of corners that came out right.

use std::collections::BTreeMap;
use std::net::IpAddr;

use netpol_agent::compile::{Direction, compile};
use netpol_agent::program::memory::MemoryMaps;
use netpol_agent::program::{Programmer, addr_of};
use netpol_agent::state::{
    ClusterState, ContainerPort, Labels, NodeInfo, ObjectRef, PodInfo, Protocol,
};
use netpol_tests::cnp_fixtures::{add_cnp, labels, pods_with_app};
use netpol_tests::reference::{self, End};
use serde_json::{Value, json};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().expect("net")
}

/// Namespace `prod`; nodes n1 (10.0.0.1, pods in 10.244.1.0/24) and n2 (10.0.0.2, pods
/// in 10.244.2.0/24); `prod/server` (10.244.1.10) and `prod/server2` (10.244.1.11) on
/// n1, `prod/good` (10.244.2.20) and `prod/bad` (10.244.2.30) on n2. Each pod is
/// labelled `app: <name>`; the server has a container port `http` (TCP 8080).
fn world() -> ClusterState {
    let mut s = ClusterState::default();
    s.namespaces.insert(
        "prod".into(),
        labels(&[("kubernetes.io/metadata.name", "prod")]),
    );
    for (name, addr, pods) in [
        ("n1", "10.0.0.1", "10.244.1.0/24"),
        ("n2", "10.0.0.2", "10.244.2.0/24"),
    ] {
        s.nodes.insert(
            name.into(),
            NodeInfo {
                labels: Labels::new(),
                ips: vec![ip(addr)],
                pod_cidrs: vec![net(pods)],
            },
        );
    }
    for (name, node, addr) in [
        ("server", "n1", "10.244.1.10"),
        ("server2", "n1", "10.244.1.11"),
        ("good", "n2", "10.244.2.20"),
        ("bad", "n2", "10.244.2.30"),
    ] {
        add_pod(&mut s, name, node, addr);
    }
    if let Some(p) = s.pods.get_mut(&ObjectRef::new("prod", "server")) {
        p.ports = vec![ContainerPort {
            name: Some("http".into()),
            port: 8080,
            protocol: Protocol::Tcp,
        }];
    }
    s
}

fn add_pod(s: &mut ClusterState, name: &str, node: &str, addr: &str) {
    s.pods.insert(
        ObjectRef::new("prod", name),
        PodInfo {
            labels: labels(&[("app", name)]),
            node: Some(node.into()),
            host_network: false,
            terminated: false,
            ips: vec![ip(addr)],
            ports: Vec::new(),
        },
    );
}

/// The state programmed into fresh `MemoryMaps` (this node: n1).
fn programmed(s: &ClusterState) -> Programmer<MemoryMaps> {
    let plan = compile(s, "n1");
    assert!(plan.errors.is_empty(), "{:?}", plan.errors);
    let mut pr = Programmer::new(MemoryMaps::default(), 1000);
    pr.apply(&plan, &BTreeMap::new()).expect("programmed");
    pr
}

fn set_of(pr: &Programmer<MemoryMaps>, s: &ClusterState, pod: &str, dir: Direction) -> u32 {
    let a = addr_of(s.pods[&ObjectRef::new("prod", pod)].ips[0]);
    let e = pr.maps().endpoints[&a];
    match dir {
        Direction::Ingress => e.ingress_set,
        Direction::Egress => e.egress_set,
    }
}

/// What the maps decide for `peer` in `dir` of local pod `pod`.
fn maps_allow(
    pr: &Programmer<MemoryMaps>,
    s: &ClusterState,
    pod: &str,
    dir: Direction,
    peer: &str,
    proto: Protocol,
    port: u16,
) -> bool {
    let set = set_of(pr, s, pod, dir);
    (pr.maps())
        .rule_from(set, ip(peer), proto, port, false)
        .is_some()
}

/// `maps_allow` for the server, on TCP port 80.
fn server_tcp80(pr: &Programmer<MemoryMaps>, s: &ClusterState, dir: Direction, peer: &str) -> bool {
    maps_allow(pr, s, "server", dir, peer, Protocol::Tcp, 80)
}

/// What the plan decides for the same.
fn plan_allows(
    s: &ClusterState,
    pod: &str,
    dir: Direction,
    peer: &str,
    proto: Protocol,
    port: u16,
) -> bool {
    let plan = compile(s, "n1");
    let ep = (plan.endpoints.iter())
        .find(|e| e.pod.name == pod)
        .expect("local pod");
    plan.decide(ep, dir, ip(peer), proto, port).is_some()
}

fn end(s: &ClusterState, name: &str) -> End {
    let r = ObjectRef::new("prod", name);
    let addr = s.pods[&r].ips[0];
    End::Pod(r, addr)
}

// ---------------------------------------------------------------------------------------
// The unknown pod and Pass
// ---------------------------------------------------------------------------------------

/// FINDING. Admin priority 5 passes `app: good` to the lower tiers; Admin priority 10
/// denies every pod (`namespaces: {}`). A pod the agent has not seen yet (here
/// `stranger`, app: stranger, at 10.244.2.99 in n2's pod range) is denied by the spec:
/// it does not match the Pass, it matches the Deny. The agent looks it up as the unknown
/// pod, which matches *every* Pass rule selecting pods: the Pass at priority 5 comes
/// first, the Admin tier is left, nothing below isolates the server: it is let in.
/// Matching a Pass is not failing closed: a Pass skips every later Admin Deny too.
#[test]
fn cnp_attack3_finding_unknown_pod_matches_a_pass_and_skips_a_later_admin_deny() {
    let mut s = world();
    add_cnp(
        &mut s,
        "pass-good",
        "Admin",
        5,
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": "Pass", "from": [pods_with_app("good")]}]}),
    );
    add_cnp(
        &mut s,
        "deny-all-pods",
        "Admin",
        10,
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    // The truth: with the stranger known, the spec denies it.
    let mut truth = s.clone();
    add_pod(&mut truth, "stranger", "n2", "10.244.2.99");
    assert!(
        !reference::allowed(
            &truth,
            &end(&truth, "stranger"),
            &end(&truth, "server"),
            Protocol::Tcp,
            80
        ),
        "the spec denies the stranger"
    );
    // Sanity of the tables for known pods.
    let pr = programmed(&s);
    let ing = Direction::Ingress;
    assert!(server_tcp80(&pr, &s, ing, "10.244.2.20"), "10.244.2.20");
    assert!(!server_tcp80(&pr, &s, ing, "10.244.2.30"), "10.244.2.30");
    // The agent does not know the stranger yet.
    assert!(
        !maps_allow(&pr, &s, "server", ing, "10.244.2.99", Protocol::Tcp, 80),
        "maps: an unknown pod escapes the Deny of every pod through the Pass of `good`"
    );
    assert!(
        !plan_allows(&s, "server", ing, "10.244.2.99", Protocol::Tcp, 80),
        "plan: an unknown pod escapes the Deny of every pod through the Pass of `good`"
    );
}

/// FINDING (a regression of 41f1bdb). The server's egress: Admin priority 5 passes
/// `app: good`; Admin priority 10 denies the address block 10.244.0.0/16 (every pod
/// range; `networks` peers are egress only). Before the change, an address without an
/// identity met only address rules, and the Deny of the block dropped it. Now it is the
/// unknown pod, which matches the Pass (priority 5): the Pass wins over the block's Deny
/// and the server may reach an unknown address in the block. What the spec says (the
/// stranger matches the block's Deny only) and what the datapath did before both deny it.
#[test]
fn cnp_attack3_finding_unknown_pod_pass_hides_an_address_deny_it_met_before() {
    let mut s = world();
    add_cnp(
        &mut s,
        "pass-good",
        "Admin",
        5,
        json!({"subject": pods_with_app("server"),
               "egress": [{"action": "Pass", "to": [pods_with_app("good")]}]}),
    );
    add_cnp(
        &mut s,
        "deny-pod-block",
        "Admin",
        10,
        json!({"subject": pods_with_app("server"),
               "egress": [{"action": "Deny", "to": [{"networks": ["10.244.0.0/16"]}]}]}),
    );
    let mut truth = s.clone();
    add_pod(&mut truth, "stranger", "n2", "10.244.2.99");
    assert!(!reference::allowed(
        &truth,
        &end(&truth, "server"),
        &end(&truth, "stranger"),
        Protocol::Tcp,
        80
    ));
    let pr = programmed(&s);
    let eg = Direction::Egress;
    assert!(!server_tcp80(&pr, &s, eg, "10.244.2.30"), "10.244.2.30");
    assert!(server_tcp80(&pr, &s, eg, "10.244.2.20"), "10.244.2.20");
    // Without pod ranges (the datapath before 41f1bdb) the block's Deny drops it.
    let mut outside = s.clone();
    outside.nodes.clear();
    let pr_outside = programmed(&outside);
    assert!(
        !server_tcp80(&pr_outside, &outside, eg, "10.244.2.99"),
        "10.244.2.99"
    );
    assert!(
        !maps_allow(&pr, &s, "server", eg, "10.244.2.99", Protocol::Tcp, 80),
        "maps: the unknown pod's Pass hides the block's Deny"
    );
    assert!(
        !plan_allows(&s, "server", eg, "10.244.2.99", Protocol::Tcp, 80),
        "plan: the unknown pod's Pass hides the block's Deny"
    );
}

/// FINDING (fail closed too far). A pod range's network address is never a pod's (IPAM
/// hands out neither the network address nor, for IPv4, the broadcast one); flannel's
/// VXLAN backend gives it to the node's `flannel.1` device, so a remote node's host
/// traffic (host-network pods, the node itself) reaches local pods from 10.244.2.0.
/// The agent takes it for an unknown pod, and an Admin Deny of every pod drops a node's
/// traffic that no rule denies (the spec: `namespaces`/`pods` peers select pods only).
#[test]
fn cnp_attack3_finding_pod_range_network_address_is_taken_for_a_pod() {
    let mut s = world();
    add_cnp(
        &mut s,
        "deny-all-pods",
        "Admin",
        10,
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    let pr = programmed(&s);
    let ing = Direction::Ingress;
    assert!(
        maps_allow(&pr, &s, "server", ing, "10.0.0.2", Protocol::Tcp, 80),
        "n2"
    );
    assert!(!server_tcp80(&pr, &s, ing, "10.244.2.77"), "10.244.2.77");
    assert!(
        maps_allow(&pr, &s, "server", ing, "10.244.2.0", Protocol::Tcp, 80),
        "n2's flannel.1 address (its pod range's network address) is no pod"
    );
}

// ---------------------------------------------------------------------------------------
// Guards: the unknown pod
// ---------------------------------------------------------------------------------------

/// Guard: a Pass that the unknown pod matches *after* an Admin Deny of it does not undo
/// the Deny; an Accept of pods never matches it; Baseline Deny rules match it and
/// Baseline Accepts of pods do not.
#[test]
fn cnp_attack3_unknown_pod_in_admin_and_baseline_orders() {
    let ing = Direction::Ingress;
    // Deny before Pass.
    let mut s = world();
    add_cnp(
        &mut s,
        "deny-bad-then-pass",
        "Admin",
        5,
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": "Deny", "from": [pods_with_app("bad")]},
                           {"action": "Pass", "from": [pods_with_app("good")]}]}),
    );
    let pr = programmed(&s);
    assert!(!server_tcp80(&pr, &s, ing, "10.244.2.99"), "10.244.2.99");
    assert!(!plan_allows(
        &s,
        "server",
        ing,
        "10.244.2.99",
        Protocol::Tcp,
        80
    ));
    assert!(server_tcp80(&pr, &s, ing, "10.244.2.20"), "10.244.2.20");

    // Baseline only: Accept good, then Deny every pod.
    let mut s = world();
    add_cnp(
        &mut s,
        "baseline",
        "Baseline",
        5,
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": "Accept", "from": [pods_with_app("good")]},
                           {"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    let pr = programmed(&s);
    for (peer, want) in [
        ("10.244.2.20", true),
        ("10.244.2.30", false),
        ("10.244.2.99", false),
        ("10.244.1.99", false),
        ("192.0.2.1", true),
        ("10.0.0.2", true),
    ] {
        assert_eq!(
            maps_allow(&pr, &s, "server", ing, peer, Protocol::Tcp, 80),
            want,
            "maps {peer}"
        );
        assert_eq!(
            plan_allows(&s, "server", ing, peer, Protocol::Tcp, 80),
            want,
            "plan {peer}"
        );
    }

    // Admin Pass of every pod, then NetworkPolicy allowing the pod range by ipBlock: a
    // Pass denies the unknown pod (it could skip Deny rules otherwise: see the findings
    // above), though the ipBlock would allow it.
    let mut s = world();
    add_cnp(
        &mut s,
        "pass-all-pods",
        "Admin",
        5,
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": "Pass", "from": [{"namespaces": {}}]}]}),
    );
    add_cnp(
        &mut s,
        "baseline-deny",
        "Baseline",
        5,
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    let json = r#"{"metadata": {"name": "allow-block", "namespace": "prod"},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.2.0/24"}}]}]}}"#;
    let np: k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_json::from_str(json).expect("policy");
    s.policies.insert(ObjectRef::new("prod", "allow-block"), np);
    let pr = programmed(&s);
    for (peer, want) in [
        ("10.244.2.20", true),  // good: Pass, then the ipBlock allows
        ("10.244.2.99", false), // unknown: the Pass denies it
        ("10.244.1.99", false), // unknown: the Pass denies it
    ] {
        assert_eq!(
            maps_allow(&pr, &s, "server", ing, peer, Protocol::Tcp, 80),
            want,
            "maps {peer}"
        );
        assert_eq!(
            plan_allows(&s, "server", ing, peer, Protocol::Tcp, 80),
            want,
            "plan {peer}"
        );
    }
}

/// Guard: named ports. Egress Deny to pods on a named port: the unknown destination is
/// denied on every port of TCP, UDP and SCTP (0 and 65535 included), a known pod without
/// that name is not, an outside address is not. Ingress Deny from pods on a named port:
/// the name resolves on the server itself (http = TCP 8080): only that port.
#[test]
fn cnp_attack3_unknown_pod_and_named_ports() {
    let mut s = world();
    add_cnp(
        &mut s,
        "deny-named",
        "Admin",
        5,
        json!({"subject": pods_with_app("server"),
               "egress": [{"action": "Deny", "to": [{"namespaces": {}}],
                           "protocols": [{"destinationNamedPort": "dns"}]}],
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}],
                            "protocols": [{"destinationNamedPort": "http"}]}]}),
    );
    let pr = programmed(&s);
    let (eg, ing) = (Direction::Egress, Direction::Ingress);
    for (proto, port) in [
        (Protocol::Tcp, 0),
        (Protocol::Tcp, 53),
        (Protocol::Tcp, 65535),
        (Protocol::Udp, 53),
        (Protocol::Udp, 65535),
        (Protocol::Sctp, 1),
        (Protocol::Sctp, 65535),
    ] {
        assert!(
            !maps_allow(&pr, &s, "server", eg, "10.244.2.99", proto, port),
            "maps: unknown {proto:?}/{port}"
        );
        assert!(
            !plan_allows(&s, "server", eg, "10.244.2.99", proto, port),
            "plan: unknown {proto:?}/{port}"
        );
        assert!(
            maps_allow(&pr, &s, "server", eg, "10.244.2.20", proto, port),
            "good has no port named dns"
        );
        assert!(maps_allow(&pr, &s, "server", eg, "192.0.2.1", proto, port));
    }
    for (proto, port, want) in [
        (Protocol::Tcp, 8080, false),
        (Protocol::Tcp, 8081, true),
        (Protocol::Udp, 8080, true),
    ] {
        assert_eq!(
            maps_allow(&pr, &s, "server", ing, "10.244.2.99", proto, port),
            want,
            "maps ingress {proto:?}/{port}"
        );
        assert_eq!(
            plan_allows(&s, "server", ing, "10.244.2.99", proto, port),
            want,
            "plan ingress {proto:?}/{port}"
        );
    }
}

/// Guard: pod ranges of odd shapes. A node with an IPv6 address and an IPv4 pod range,
/// dual-stack ranges, ranges that overlap (n3's /16 holds n1's and n2's /24s), a node
/// address inside another node's range: every node address is a hole wherever it lies,
/// every other address of any range is the unknown pod. Removing n3 shrinks the ranges.
#[test]
fn cnp_attack3_pod_ranges_of_odd_shapes() {
    let mut s = world();
    s.nodes.insert(
        "n3".into(),
        NodeInfo {
            labels: Labels::new(),
            ips: vec![ip("fd00:9::1"), ip("10.244.2.250")],
            pod_cidrs: vec![net("10.244.0.0/16"), net("fd00:77::/64")],
        },
    );
    if let Some(n1) = s.nodes.get_mut("n1") {
        n1.ips.push(ip("fd00:77::5"));
    }
    add_cnp(
        &mut s,
        "deny-all-pods",
        "Admin",
        10,
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    let ing = Direction::Ingress;
    let cases = [
        ("10.244.2.99", false),
        ("10.244.200.1", false),
        ("fd00:77::1234", false),
        ("10.244.2.250", true), // n3's address, in n2's and n3's ranges
        ("fd00:77::5", true),   // n1's address in n3's IPv6 range
        ("fd00:9::1", true),
        ("10.0.0.2", true),
        ("10.245.0.1", true),
        ("fd00:78::1", true),
        ("::ffff:10.244.2.99", false),
    ];
    let pr = programmed(&s);
    for (peer, want) in cases {
        assert_eq!(
            maps_allow(&pr, &s, "server", ing, peer, Protocol::Tcp, 80),
            want,
            "maps {peer}"
        );
        assert_eq!(
            plan_allows(&s, "server", ing, peer, Protocol::Tcp, 80),
            want,
            "plan {peer}"
        );
    }
    // n3 leaves: 10.244.200.1 is no pod any more, and neither is fd00:77::1234.
    let mut pr = pr;
    s.nodes.remove("n3");
    let plan = compile(&s, "n1");
    pr.apply(&plan, &BTreeMap::new()).expect("programmed");
    for (peer, want) in [
        ("10.244.200.1", true),
        ("fd00:77::1234", true),
        ("10.244.2.99", false),
        ("10.244.2.250", false), // no node's address now: n2's unknown pod
    ] {
        assert_eq!(
            maps_allow(&pr, &s, "server", ing, peer, Protocol::Tcp, 80),
            want,
            "maps after n3 left: {peer}"
        );
        assert_eq!(
            plan_allows(&s, "server", ing, peer, Protocol::Tcp, 80),
            want,
            "plan after n3 left: {peer}"
        );
    }
}

/// Guard: a restart (adopt) with pod ranges present, then a plan whose ranges differ:
/// the new ranges are written, the old ones gone, no rule set takes the reserved id,
/// no identity gets `IDENTITY_UNKNOWN_POD`.
#[test]
fn cnp_attack3_restart_with_pod_ranges_then_ranges_change() {
    let mut s = world();
    add_cnp(
        &mut s,
        "deny-all-pods",
        "Admin",
        10,
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    let mut first = programmed(&s);
    let maps = std::mem::take(first.maps_mut());
    let mut second = Programmer::new(maps, 1000);
    second.adopt().expect("adopt");
    // n2's range moves.
    if let Some(n2) = s.nodes.get_mut("n2") {
        n2.pod_cidrs = vec![net("10.244.3.0/24")];
    }
    let plan = compile(&s, "n1");
    second.apply(&plan, &BTreeMap::new()).expect("applied");
    let ing = Direction::Ingress;
    for (peer, want) in [
        ("10.244.2.99", true),
        ("10.244.3.99", false),
        ("10.244.1.99", false),
    ] {
        assert_eq!(
            maps_allow(&second, &s, "server", ing, peer, Protocol::Tcp, 80),
            want,
            "after restart: {peer}"
        );
    }
    let m = second.maps();
    assert!(
        m.identities
            .values()
            .all(|i| *i != netpol_common::IDENTITY_UNKNOWN_POD),
        "no address holds the unknown pod's identity"
    );
    assert!(
        (m.endpoints.values())
            .flat_map(|e| e.sets())
            .all(|id| netpol_common::ruleset_base(id) != netpol_common::RULESET_POD_RANGES),
        "no endpoint points at the pod ranges"
    );
}

// ---------------------------------------------------------------------------------------
// Guards: chained port sets
// ---------------------------------------------------------------------------------------

/// The server accepts `good` on `n` separate TCP ports (1000, 1002, ...), in Accept rules
/// of at most 20 ports, then denies `good` everything.
fn with_ports(s: &mut ClusterState, name: &str, subj: &str, first: u16, n: u16) {
    let ports: Vec<Value> = (0..n)
        .map(|i| json!({"tcp": {"destinationPort": {"number": first + 2 * i}}}))
        .collect();
    let mut rules: Vec<Value> = (ports.chunks(20))
        .map(|c| json!({"action": "Accept", "from": [pods_with_app("good")], "protocols": c}))
        .collect();
    rules.push(json!({"action": "Deny", "from": [pods_with_app("good")]}));
    add_cnp(
        s,
        name,
        "Admin",
        10,
        json!({"subject": pods_with_app(subj), "ingress": rules}),
    );
}

/// Guard: chains of exactly 16, 17, 32, 33, 48, 49 and 64 ranges decide port by port
/// (first and last port of each link, the ports between, port 0 and 65535); 65 ranges
/// are reported and deny.
#[test]
fn cnp_attack3_chain_lengths_at_link_boundaries() {
    let ing = Direction::Ingress;
    for n in [16u16, 17, 32, 33, 48, 49, 64] {
        let mut s = world();
        with_ports(&mut s, "ports", "server", 1000, n);
        let pr = programmed(&s);
        let mut checks: Vec<(u16, bool)> = vec![(0, false), (65535, false), (999, false)];
        for i in 0..n {
            checks.push((1000 + 2 * i, true));
            checks.push((1001 + 2 * i, false));
        }
        for (port, want) in checks {
            assert_eq!(
                maps_allow(&pr, &s, "server", ing, "10.244.2.20", Protocol::Tcp, port),
                want,
                "{n} ranges: maps good -> server:{port}"
            );
        }
        for port in [1000, 1000 + 2 * (n - 1), 1001 + 2 * (n - 1)] {
            assert_eq!(
                plan_allows(&s, "server", ing, "10.244.2.20", Protocol::Tcp, port),
                maps_allow(&pr, &s, "server", ing, "10.244.2.20", Protocol::Tcp, port),
                "{n} ranges: plan = maps at {port}"
            );
        }
        let links = pr.maps().portsets.len();
        assert_eq!(
            links,
            usize::from(n).div_ceil(16),
            "{n} ranges: one chain of as many links as needed"
        );
    }
    let mut s = world();
    with_ports(&mut s, "ports", "server", 1000, 65);
    let plan = compile(&s, "n1");
    assert!((plan.errors.iter()).any(|e| e.message.contains("port ranges")));
}

/// Guard: chains shared. server and server2 get the same 17-range entry for `good` (one
/// chain, two users), server2 also has a Deny of `bad`, so their sets differ. Then a
/// third set shares only the tail: server2's ports are moved so its head differs and
/// its last range is the same. Releasing server2's entry keeps server's chain whole;
/// removing every policy leaves no port set.
#[test]
fn cnp_attack3_chains_shared_and_released() {
    let ing = Direction::Ingress;
    let check_server = |pr: &Programmer<MemoryMaps>, s: &ClusterState, what: &str| {
        for i in 0..17u16 {
            for (port, want) in [(1000 + 2 * i, true), (1001 + 2 * i, false)] {
                assert_eq!(
                    maps_allow(pr, s, "server", ing, "10.244.2.20", Protocol::Tcp, port),
                    want,
                    "{what}: good -> server:{port}"
                );
            }
        }
    };
    // One chain, two users.
    let mut s = world();
    let ports: Vec<Value> = (0..17u16)
        .map(|i| json!({"tcp": {"destinationPort": {"number": 1000 + 2 * i}}}))
        .collect();
    add_cnp(
        &mut s,
        "both",
        "Admin",
        10,
        json!({"subject": {"pods": {"namespaceSelector": {},
                   "podSelector": {"matchExpressions": [{"key": "app", "operator": "In",
                       "values": ["server", "server2"]}]}}},
               "ingress": [{"action": "Accept", "from": [pods_with_app("good")], "protocols": ports},
                           {"action": "Deny", "from": [pods_with_app("good")]}]}),
    );
    add_cnp(
        &mut s,
        "server2-deny-bad",
        "Admin",
        20,
        json!({"subject": pods_with_app("server2"),
               "ingress": [{"action": "Deny", "from": [pods_with_app("bad")]}]}),
    );
    let mut pr = programmed(&s);
    assert_ne!(
        set_of(&pr, &s, "server", ing),
        set_of(&pr, &s, "server2", ing)
    );
    check_server(&pr, &s, "shared");
    // server2 goes: its set, and its hold on the chain, are released.
    s.pods.remove(&ObjectRef::new("prod", "server2"));
    let plan = compile(&s, "n1");
    pr.apply(&plan, &BTreeMap::new()).expect("applied");
    check_server(&pr, &s, "after server2 left");

    // Shared tail, different heads.
    let mut s = world();
    with_ports(&mut s, "server-ports", "server", 1000, 17);
    let ports2: Vec<Value> = std::iter::once(900u16)
        .chain((1..17u16).map(|i| 1000 + 2 * i))
        .map(|p| json!({"tcp": {"destinationPort": {"number": p}}}))
        .collect();
    add_cnp(
        &mut s,
        "server2-ports",
        "Admin",
        10,
        json!({"subject": pods_with_app("server2"),
               "ingress": [{"action": "Accept", "from": [pods_with_app("good")], "protocols": ports2},
                           {"action": "Deny", "from": [pods_with_app("good")]}]}),
    );
    let mut pr = programmed(&s);
    check_server(&pr, &s, "tail shared");
    assert!(maps_allow(
        &pr,
        &s,
        "server2",
        ing,
        "10.244.2.20",
        Protocol::Tcp,
        900
    ));
    assert!(maps_allow(
        &pr,
        &s,
        "server2",
        ing,
        "10.244.2.20",
        Protocol::Tcp,
        1032
    ));
    assert!(!maps_allow(
        &pr,
        &s,
        "server2",
        ing,
        "10.244.2.20",
        Protocol::Tcp,
        1000
    ));
    s.cluster_policies.remove("server2-ports");
    let plan = compile(&s, "n1");
    pr.apply(&plan, &BTreeMap::new()).expect("applied");
    check_server(&pr, &s, "after server2's head was released");
    let bare = compile(&world(), "n1");
    pr.apply(&bare, &BTreeMap::new()).expect("applied");
    assert!(
        pr.maps().portsets.is_empty(),
        "{:?}",
        pr.maps().portsets.keys()
    );
}

/// Guard: identity ids next to `IDENTITY_UNKNOWN_POD` (u32::MAX). An earlier run left an
/// address on id u32::MAX - 1; after adopting, the next identity would be u32::MAX: the
/// programmer must refuse rather than hand out the unknown pod's id (an address holding
/// it would be every pod-selecting Deny's, and its leftover entries the unknown pod's).
#[test]
fn cnp_attack3_identity_ids_never_reach_the_unknown_pod() {
    let mut s = world();
    add_cnp(
        &mut s,
        "deny-bad",
        "Admin",
        10,
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": "Deny", "from": [pods_with_app("bad")]}]}),
    );
    let mut maps = MemoryMaps::default();
    netpol_agent::program::MapOps::set_identity(
        &mut maps,
        addr_of(ip("10.244.2.250")),
        netpol_common::IDENTITY_UNKNOWN_POD - 1,
    )
    .expect("seeded");
    let mut pr = Programmer::new(maps, 1000);
    pr.adopt().expect("adopt");
    let plan = compile(&s, "n1");
    let result = pr.apply(&plan, &BTreeMap::new());
    assert!(
        (pr.maps().identities.values()).all(|i| *i != netpol_common::IDENTITY_UNKNOWN_POD),
        "an address was given the unknown pod's id ({result:?})"
    );
}
