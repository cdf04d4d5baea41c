//! Attack on the incremental compiler (`Compiler`) now that it reuses the last plan while
//! ClusterNetworkPolicies exist (and on `tiers::Peers`, which now takes the identity of
//! every policy subject pod). The invariant: after any change sequence, `Compiler::compile`
//! (with `remember` after it, as the agent does) equals `compile`.
//!
//! Hand-built sequences around what a full compile reads and the memo might not compare
//! (node labels and pod ranges, ClusterNetworkPolicy and namespace changes, addresses
//! changing hands or held twice, host-network and terminated toggles, pods without
//! addresses, IPv6, identities held only by a pod that lost its address, `nodes` and
//! `networks` peers, named ports, Services), each checked for equality, for the path taken
//! and for what the plan decides; and two random differentials with changes the existing
//! generator does not make (several pods per step, node and ClusterNetworkPolicy changes,
//! pod ranges, unknown namespaces, duplicate and IPv6-only addresses), one of them against
//! the reference reading.
//!
//! The attack found nothing; these are its guards. Each was checked to fail on a mutant
//! of the change it guards: the old `Peers::new` (addressed identities only), or the memo
//! not comparing nodes, or not comparing ClusterNetworkPolicies.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netpol_agent::compile::{Compiler, Direction, Plan, compile};
use netpol_agent::state::{
    ClusterState, ContainerPort, NodeInfo, ObjectRef, PodInfo, Protocol, ServiceInfo,
};
use netpol_tests::cnp_fixtures::{add_cnp, labels, pods_with_app};
use netpol_tests::generate::{self, NODES, Rng};
use serde_json::json;

const LOCAL: &str = "n1";

fn v4(c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 2, c, d))
}

fn v6(d: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, d))
}

fn http(port: u16) -> Vec<ContainerPort> {
    vec![ContainerPort {
        name: Some("http".into()),
        port,
        protocol: Protocol::Tcp,
    }]
}

fn pod(app: &str, node: &str, ips: &[IpAddr]) -> PodInfo {
    PodInfo {
        labels: labels(&[("app", app)]),
        node: Some(node.into()),
        host_network: false,
        terminated: false,
        ips: ips.to_vec(),
        ports: Vec::new(),
    }
}

fn r(name: &str) -> ObjectRef {
    ObjectRef::new("default", name)
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().expect("constant")
}

/// Local `server` (app: server, named port http 8080) and `client` (app: client) on n1;
/// on n2 two `bad` replicas, two `good` replicas (named port http 8080) and sixteen
/// `filler` replicas (so that several pods may change in one step). Nodes n1 and n2 with
/// pod ranges 10.1.0.0/24 and 10.2.0.0/16 (+ fd00:2::/64). ClusterNetworkPolicies:
/// * `deny-bad` (Admin 10): server's ingress from app bad is denied;
/// * `client-out` (Admin 20): client's egress to nodes labelled role=worker denied, to
///   app good on named port http accepted, to 10.2.9.9/32 denied;
/// * `baseline` (Baseline): client's egress to every namespace denied.
fn cluster() -> ClusterState {
    let mut s = ClusterState::default();
    for ns in ["default", "other"] {
        s.namespaces.insert(
            ns.into(),
            labels(&[("kubernetes.io/metadata.name", ns), ("team", "a")]),
        );
    }
    s.nodes.insert(
        "n1".into(),
        NodeInfo {
            labels: labels(&[("role", "local")]),
            ips: vec![IpAddr::V4(Ipv4Addr::new(172, 18, 0, 1))],
            pod_cidrs: vec![net("10.1.0.0/24")],
        },
    );
    s.nodes.insert(
        "n2".into(),
        NodeInfo {
            labels: labels(&[("role", "worker")]),
            ips: vec![IpAddr::V4(Ipv4Addr::new(172, 18, 0, 2))],
            pod_cidrs: vec![net("10.2.0.0/16"), net("fd00:2::/64")],
        },
    );
    let mut server = pod("server", LOCAL, &[IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2))]);
    server.ports = http(8080);
    s.pods.insert(r("server"), server);
    s.pods.insert(
        r("client"),
        pod("client", LOCAL, &[IpAddr::V4(Ipv4Addr::new(10, 1, 0, 3))]),
    );
    s.pods.insert(r("bad-1"), pod("bad", "n2", &[v4(0, 5)]));
    s.pods.insert(r("bad-2"), pod("bad", "n2", &[v4(0, 6)]));
    for (name, d) in [("good-1", 7), ("good-2", 8)] {
        let mut p = pod("good", "n2", &[v4(0, d)]);
        p.ports = http(8080);
        s.pods.insert(r(name), p);
    }
    for i in 0..16u8 {
        s.pods.insert(
            r(&format!("filler-{i:02}")),
            pod("filler", "n2", &[v4(1, i)]),
        );
    }
    add_cnp(
        &mut s,
        "deny-bad",
        "Admin",
        10,
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": "Deny", "from": [pods_with_app("bad")]}]}),
    );
    add_cnp(
        &mut s,
        "client-out",
        "Admin",
        20,
        json!({"subject": pods_with_app("client"),
               "egress": [
                   {"action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "worker"}}}]},
                   {"action": "Accept", "to": [pods_with_app("good")],
                    "protocols": [{"destinationNamedPort": "http"}]},
                   {"action": "Deny", "to": [{"networks": ["10.2.9.9/32"]}]}]}),
    );
    add_cnp(
        &mut s,
        "baseline",
        "Baseline",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"action": "Deny", "to": [{"namespaces": {}}]}]}),
    );
    s
}

/// A compiler that has compiled and remembered `s` (in full).
fn primed(s: &ClusterState) -> Compiler {
    let mut c = Compiler::default();
    let plan = c.compile(s, LOCAL);
    assert!(!c.last_was_incremental);
    c.remember(s, &plan);
    c
}

/// Compiles `s` as the agent does; panics when the plan differs from a full compile.
/// Returns the plan and whether the incremental path was taken.
fn step(c: &mut Compiler, s: &ClusterState, what: &str) -> (Plan, bool) {
    let got = c.compile(s, LOCAL);
    let incremental = c.last_was_incremental;
    c.remember(s, &got);
    let want = compile(s, LOCAL);
    assert!(
        got == want,
        "{what} (incremental: {incremental}): the plan differs from a full compile\nincremental: {got:#?}\nfull: {want:#?}"
    );
    (got, incremental)
}

/// Whether `plan` lets `peer` reach (ingress) / be reached from (egress) local pod `pod`
/// on TCP `port`.
fn allows(plan: &Plan, pod: &str, dir: Direction, peer: IpAddr, port: u16) -> bool {
    let ep = (plan.endpoints.iter())
        .find(|e| e.pod == r(pod))
        .unwrap_or_else(|| panic!("{pod} is planned"));
    plan.decide(ep, dir, peer, Protocol::Tcp, port).is_some()
}

fn server_admits(plan: &Plan, peer: IpAddr) -> bool {
    allows(plan, "server", Direction::Ingress, peer, 8080)
}

fn client_reaches(plan: &Plan, peer: IpAddr, port: u16) -> bool {
    allows(plan, "client", Direction::Egress, peer, port)
}

#[test]
fn incr_cnp_guard_the_fixture_decides_as_written() {
    let s = cluster();
    let plan = compile(&s, LOCAL);
    assert!(!server_admits(&plan, v4(0, 5)), "bad is denied");
    assert!(server_admits(&plan, v4(0, 7)), "good is let in");
    assert!(client_reaches(&plan, v4(0, 7), 8080), "good's named port");
    assert!(!client_reaches(&plan, v4(0, 7), 9090), "not another port");
    assert!(
        !client_reaches(&plan, IpAddr::V4(Ipv4Addr::new(172, 18, 0, 2)), 10250),
        "a worker node is denied"
    );
    assert!(
        !server_admits(&plan, v4(9, 1)),
        "an address in the pod ranges no pod holds is the unknown pod: denied by the pod-selecting Deny"
    );
}

/// A `bad` replica goes and another comes on a fresh address: incremental, equal, and the
/// new address is denied while the old one is the unknown pod (denied too).
#[test]
fn incr_cnp_guard_a_replica_replaced_stays_incremental() {
    let mut s = cluster();
    let mut c = primed(&s);
    s.pods.remove(&r("bad-1"));
    s.pods.insert(r("bad-3"), pod("bad", "n2", &[v4(0, 50)]));
    let (plan, incremental) = step(&mut c, &s, "bad-1 replaced by bad-3");
    assert!(incremental, "only addresses changed hands");
    assert!(!server_admits(&plan, v4(0, 50)));
    assert!(!server_admits(&plan, v4(0, 5)));
}

/// `bad-1` and `good-1` swap addresses in one step (two pods changed, limit 3).
#[test]
fn incr_cnp_guard_two_pods_swap_addresses_in_one_step() {
    let mut s = cluster();
    let mut c = primed(&s);
    s.pods.get_mut(&r("bad-1")).expect("pod").ips = vec![v4(0, 7)];
    s.pods.get_mut(&r("good-1")).expect("pod").ips = vec![v4(0, 5)];
    let (plan, incremental) = step(&mut c, &s, "swap");
    assert!(incremental);
    assert!(!server_admits(&plan, v4(0, 7)), "bad now holds .7");
    assert!(server_admits(&plan, v4(0, 5)), "good now holds .5");
}

/// A node label change under ClusterNetworkPolicy compiles in full: the `nodes` peer stops
/// (then starts again) matching n2.
#[test]
fn incr_cnp_guard_node_relabelled_compiles_in_full() {
    let mut s = cluster();
    let mut c = primed(&s);
    let node2 = IpAddr::V4(Ipv4Addr::new(172, 18, 0, 2));
    s.nodes.get_mut("n2").expect("n2").labels = labels(&[("role", "spare")]);
    let (plan, incremental) = step(&mut c, &s, "n2 relabelled");
    assert!(!incremental);
    assert!(client_reaches(&plan, node2, 10250), "n2 is no worker now");
    // An address change next (incremental), then the label back (full).
    s.pods.insert(r("bad-3"), pod("bad", "n2", &[v4(0, 51)]));
    let (_, incremental) = step(&mut c, &s, "bad-3 added");
    assert!(incremental);
    s.nodes.get_mut("n2").expect("n2").labels = labels(&[("role", "worker")]);
    let (plan, incremental) = step(&mut c, &s, "n2 a worker again");
    assert!(!incremental);
    assert!(!client_reaches(&plan, node2, 10250));
}

/// A node's address or pod range changing under ClusterNetworkPolicy compiles in full.
#[test]
fn incr_cnp_guard_node_addresses_and_pod_ranges_compile_in_full() {
    let mut s = cluster();
    let mut c = primed(&s);
    let spare = IpAddr::V4(Ipv4Addr::new(172, 18, 0, 9));
    s.nodes.get_mut("n2").expect("n2").ips.push(spare);
    let (plan, incremental) = step(&mut c, &s, "n2 gets another address");
    assert!(!incremental);
    assert!(!client_reaches(&plan, spare, 1));
    s.nodes.get_mut("n2").expect("n2").pod_cidrs = vec![net("10.2.0.0/24")];
    let (plan, incremental) = step(&mut c, &s, "n2's pod range shrinks");
    assert!(!incremental);
    assert!(
        server_admits(&plan, v4(1, 0)),
        "10.2.1.0 is no pod address now"
    );
    assert!(
        !server_admits(&plan, v4(0, 99)),
        "10.2.0.99 still is (the unknown pod)"
    );
}

/// A ClusterNetworkPolicy changed, removed or added, and a namespace relabelled: full.
#[test]
fn incr_cnp_guard_policy_and_namespace_changes_compile_in_full() {
    let mut s = cluster();
    let mut c = primed(&s);
    add_cnp(
        &mut s,
        "deny-bad",
        "Admin",
        10,
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": "Deny", "from": [pods_with_app("good")]}]}),
    );
    let (plan, incremental) = step(&mut c, &s, "deny-bad now denies good");
    assert!(!incremental);
    assert!(!server_admits(&plan, v4(0, 7)));
    assert!(server_admits(&plan, v4(0, 5)));
    s.cluster_policies.remove("deny-bad");
    let (plan, incremental) = step(&mut c, &s, "deny-bad removed");
    assert!(!incremental);
    assert!(server_admits(&plan, v4(0, 7)));
    add_cnp(
        &mut s,
        "deny-team-b",
        "Admin",
        5,
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"team": "b"}}}]}]}),
    );
    let (plan, incremental) = step(&mut c, &s, "deny-team-b added");
    assert!(!incremental);
    assert!(server_admits(&plan, v4(0, 7)));
    s.namespaces
        .get_mut("default")
        .expect("ns")
        .insert("team".into(), "b".into());
    let (plan, incremental) = step(&mut c, &s, "default is team b");
    assert!(!incremental);
    assert!(!server_admits(&plan, v4(0, 7)));
}

/// Host-network and terminated toggles of a `bad` replica whose identity lives on: the
/// address leaves the identities (incremental) and becomes the unknown pod (denied).
#[test]
fn incr_cnp_guard_host_network_and_terminated_toggles() {
    let mut s = cluster();
    let mut c = primed(&s);
    for toggle in ["host network", "terminated", "no addresses"] {
        let p = s.pods.get_mut(&r("bad-1")).expect("pod");
        match toggle {
            "host network" => p.host_network = true,
            "terminated" => p.terminated = true,
            _ => p.ips.clear(),
        }
        let (plan, incremental) = step(&mut c, &s, toggle);
        assert!(incremental, "{toggle}: bad-2 keeps the identity");
        assert!(!plan.identities.contains_key(&v4(0, 5)));
        assert!(!server_admits(&plan, v4(0, 5)), "{toggle}: unknown pod");
        let p = s.pods.get_mut(&r("bad-1")).expect("pod");
        *p = pod("bad", "n2", &[v4(0, 5)]);
        let (plan, incremental) = step(&mut c, &s, "back");
        assert!(incremental);
        assert!(!server_admits(&plan, v4(0, 5)));
    }
    // The last replica of an identity going compiles in full.
    s.pods.get_mut(&r("bad-1")).expect("pod").terminated = true;
    step(&mut c, &s, "bad-1 terminated");
    s.pods.get_mut(&r("bad-2")).expect("pod").terminated = true;
    let (plan, incremental) = step(&mut c, &s, "bad-2 terminated: no bad left");
    assert!(!incremental);
    assert!(!server_admits(&plan, v4(0, 6)), "unknown pod");
}

/// A pod taking an address another pod holds (held twice: full), then giving it back.
#[test]
fn incr_cnp_guard_an_address_held_twice_compiles_in_full() {
    let mut s = cluster();
    let mut c = primed(&s);
    s.pods.insert(r("zz-good"), {
        let mut p = pod("good", "n2", &[v4(0, 5)]);
        p.ports = http(8080);
        p
    });
    let (_, incremental) = step(&mut c, &s, "zz-good takes bad-1's address");
    assert!(!incremental);
    s.pods.remove(&r("zz-good"));
    let (plan, incremental) = step(&mut c, &s, "zz-good goes");
    assert!(!incremental);
    assert!(!server_admits(&plan, v4(0, 5)));
}

/// An identity (app: evil) whose only pod lost its address to another pod: the tables
/// name it all the same (`Peers` takes every subject pod), so a replica of it coming on a
/// fresh address is incremental and denied.
#[test]
fn incr_cnp_guard_identity_held_only_by_a_pod_without_its_address() {
    let mut s = cluster();
    add_cnp(
        &mut s,
        "deny-evil",
        "Admin",
        1,
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": "Deny", "from": [pods_with_app("evil")]}]}),
    );
    // evil-1 and zz-filler share 10.2.0.40; zz-filler sorts last and has it.
    s.pods.insert(r("evil-1"), pod("evil", "n2", &[v4(0, 40)]));
    s.pods
        .insert(r("zz-filler"), pod("filler", "n2", &[v4(0, 40)]));
    let mut c = primed(&s);
    let plan = compile(&s, LOCAL);
    assert!(
        !(plan.identities.values())
            .any(|i| i.labels.get("app").map(String::as_str) == Some("evil")),
        "no address has the evil identity"
    );
    s.pods.insert(r("evil-2"), pod("evil", "n2", &[v4(0, 41)]));
    let (plan, incremental) = step(&mut c, &s, "evil-2 on a fresh address");
    assert!(incremental, "the evil identity existed");
    assert!(!server_admits(&plan, v4(0, 41)), "evil-2 is denied");
}

/// IPv6: a dual-stack replica replaced by an IPv6-only one.
#[test]
fn incr_cnp_guard_ipv6_addresses_change_hands() {
    let mut s = cluster();
    s.pods.get_mut(&r("bad-1")).expect("pod").ips = vec![v4(0, 5), v6(5)];
    let mut c = primed(&s);
    s.pods.remove(&r("bad-1"));
    s.pods.insert(r("bad-6"), pod("bad", "n2", &[v6(6)]));
    let (plan, incremental) = step(&mut c, &s, "bad-1 replaced by an IPv6-only bad-6");
    assert!(incremental);
    let ep = (plan.endpoints.iter())
        .find(|e| e.pod == r("server"))
        .expect("server");
    for ip in [v6(5), v6(6)] {
        assert!(
            plan.decide(ep, Direction::Ingress, ip, Protocol::Tcp, 8080)
                .is_none(),
            "{ip}"
        );
    }
}

/// A `networks` peer naming a pod's address keeps denying it whoever holds it; a `good`
/// replica on it is still denied by the address rule (positions: the Accept comes first
/// only on http).
#[test]
fn incr_cnp_guard_networks_peer_on_a_pod_address() {
    let mut s = cluster();
    let mut c = primed(&s);
    s.pods
        .insert(r("filler-x"), pod("filler", "n2", &[v4(9, 9)]));
    let (plan, incremental) = step(&mut c, &s, "a filler on 10.2.9.9");
    assert!(incremental);
    assert!(!client_reaches(&plan, v4(9, 9), 8080));
    s.pods.remove(&r("filler-x"));
    s.pods.insert(r("good-x"), {
        let mut p = pod("good", "n2", &[v4(9, 9)]);
        p.ports = http(8080);
        p
    });
    let (plan, incremental) = step(&mut c, &s, "a good replica on 10.2.9.9");
    assert!(incremental);
    assert!(
        client_reaches(&plan, v4(9, 9), 8080),
        "the Accept on http comes first"
    );
    assert!(
        !client_reaches(&plan, v4(9, 9), 8081),
        "else the networks Deny"
    );
}

/// Named ports: a `good` replica with the same named port is incremental; one with http
/// on another number is a new identity (full) and reached on that number only.
#[test]
fn incr_cnp_guard_named_ports_resolve_per_identity() {
    let mut s = cluster();
    let mut c = primed(&s);
    s.pods.insert(r("good-3"), {
        let mut p = pod("good", "n2", &[v4(0, 60)]);
        p.ports = http(8080);
        p
    });
    let (_, incremental) = step(&mut c, &s, "good-3, http 8080");
    assert!(incremental);
    s.pods.insert(r("good-4"), {
        let mut p = pod("good", "n2", &[v4(0, 61)]);
        p.ports = http(9090);
        p
    });
    let (plan, incremental) = step(&mut c, &s, "good-4, http 9090");
    assert!(!incremental, "a new identity");
    assert!(client_reaches(&plan, v4(0, 61), 9090));
    assert!(!client_reaches(&plan, v4(0, 61), 8080));
    // good-3 takes good-4's ports: both identities live on.
    s.pods.get_mut(&r("good-3")).expect("pod").ports = http(9090);
    let (plan, incremental) = step(&mut c, &s, "good-3 now http 9090");
    assert!(incremental);
    assert!(client_reaches(&plan, v4(0, 60), 9090));
    assert!(!client_reaches(&plan, v4(0, 60), 8080));
}

/// A remote pod moving to this node, a Service appearing, a pod without a node.
#[test]
fn incr_cnp_guard_moves_services_and_unscheduled_pods() {
    let mut s = cluster();
    let mut c = primed(&s);
    s.services.insert(
        r("svc"),
        ServiceInfo {
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10))],
            ports: vec![(Protocol::Tcp, 80)],
        },
    );
    let (_, incremental) = step(&mut c, &s, "a Service");
    assert!(incremental);
    let mut p = pod("bad", "n2", &[v4(0, 70)]);
    p.node = None;
    s.pods.insert(r("bad-unscheduled"), p);
    let (plan, incremental) = step(&mut c, &s, "a bad pod without a node");
    assert!(incremental);
    assert!(!server_admits(&plan, v4(0, 70)));
    s.pods.get_mut(&r("bad-2")).expect("pod").node = Some(LOCAL.into());
    let (_, incremental) = step(&mut c, &s, "bad-2 moves here");
    assert!(!incremental);
}

fn random_pod<'a>(rng: &mut Rng, s: &'a ClusterState) -> Option<(&'a ObjectRef, &'a PodInfo)> {
    let n = s.pods.len();
    (n > 0).then(|| s.pods.iter().nth(rng.below(n))).flatten()
}

/// One random change, of more kinds than `compile_incremental`'s: nodes (labels, pod
/// ranges, an address a pod has), ClusterNetworkPolicies (added from the generator,
/// removed), namespaces, Services, and pods (copies into unknown namespaces, on a third
/// node or none, IPv6-only, without addresses, duplicate addresses, reordered ports).
/// `nodes`: where pods may go.
fn mutate(rng: &mut Rng, s: &mut ClusterState, step: usize, nodes: &[Option<&str>]) -> String {
    match rng.below(30) {
        0 => {
            if let Some((_, n)) = s.nodes.iter_mut().nth(rng.below(2)) {
                n.labels.insert("zone".into(), format!("z{}", rng.below(3)));
            }
            return "node relabelled".into();
        }
        1 => {
            if let Some((_, n)) = s.nodes.iter_mut().nth(rng.below(2)) {
                n.pod_cidrs = if rng.chance(50) {
                    vec![net("10.0.0.0/16"), net("fd00::/64")]
                } else {
                    Vec::new()
                };
            }
            return "node pod ranges".into();
        }
        2 => {
            let ip = random_pod(rng, s).and_then(|(_, p)| p.ips.first().copied());
            if let Some((_, n)) = s.nodes.iter_mut().nth(rng.below(2))
                && let Some(ip) = ip
            {
                n.ips = vec![ip];
            }
            return "a node takes a pod's address".into();
        }
        3 => {
            let name = format!("cnp-x{}", rng.below(3));
            let mut t = generate::cluster(rng);
            generate::add_cluster_policies(rng, &mut t);
            if let Some(p) = t.cluster_policies.values().next() {
                s.cluster_policies.insert(name.clone(), p.clone());
            }
            return format!("cluster policy {name} set");
        }
        4 => {
            if let Some(k) = s.cluster_policies.keys().next().cloned() {
                s.cluster_policies.remove(&k);
            }
            return "a cluster policy removed".into();
        }
        5 => {
            let ns = ["ns-a", "ns-b", "ns-c"][rng.below(3)];
            if let Some(l) = s.namespaces.get_mut(ns) {
                l.insert("team".into(), format!("t{}", rng.below(2)));
            }
            return "namespace relabelled".into();
        }
        6 => {
            s.services.insert(
                ObjectRef::new("ns-a", "svc"),
                ServiceInfo {
                    ips: vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, rng.below(3) as u8))],
                    ports: vec![(Protocol::Tcp, 80)],
                },
            );
            return "Service".into();
        }
        _ => {}
    }
    let Some((r, p)) = random_pod(rng, s) else {
        return "nothing".into();
    };
    let (r, mut p) = (r.clone(), p.clone());
    let other = random_pod(rng, s).map(|(_, p)| p.clone());
    let node = |rng: &mut Rng| rng.pick(nodes).map(str::to_string);
    let what = match rng.below(14) {
        0 => {
            s.pods.remove(&r);
            return format!("delete {r}");
        }
        1 => {
            let ns = ["ns-a", "ns-b", "ns-c", "ns-z"][rng.below(4)];
            let name = ObjectRef::new(ns, format!("copy-{step}-{}", rng.below(1000)));
            match rng.below(4) {
                0 => {
                    p.ips = vec![IpAddr::V4(Ipv4Addr::new(
                        10,
                        99,
                        rng.below(4) as u8,
                        step as u8,
                    ))]
                }
                1 => {
                    p.ips = vec![IpAddr::V6(Ipv6Addr::new(
                        0xfd00,
                        0,
                        0,
                        0,
                        0,
                        0,
                        9,
                        step as u16,
                    ))]
                }
                2 => p.ips = Vec::new(),
                _ => {}
            }
            p.node = node(rng);
            s.pods.insert(name.clone(), p);
            return format!("add {name} (a copy of {r})");
        }
        2 => {
            p.node = node(rng);
            "move"
        }
        3 | 4 => {
            if let Some(o) = &other {
                p.labels = o.labels.clone();
                p.ports = o.ports.clone();
            }
            "take another pod's labels and ports"
        }
        5 => {
            if let Some(o) = &other {
                p.ips = o.ips.clone();
            }
            "take another pod's addresses"
        }
        6 => {
            p.terminated = !p.terminated;
            "toggle terminated"
        }
        7 => {
            p.host_network = !p.host_network;
            "toggle host network"
        }
        8 => {
            p.labels
                .insert("extra".into(), format!("v{}", rng.below(2)));
            "relabel"
        }
        9 => {
            p.ips.clear();
            "lose its addresses"
        }
        10 => {
            p.ports.reverse();
            "ports reordered"
        }
        11 => {
            p.ports.pop();
            "a port less"
        }
        12 => {
            if let Some(ip) = p.ips.first().copied() {
                p.ips.push(ip);
            }
            "an address twice"
        }
        _ => {
            p.ips.retain(|i| i.is_ipv6());
            "IPv6 only"
        }
    };
    s.pods.insert(r.clone(), p);
    format!("{what}: {r}")
}

/// A generated cluster with ClusterNetworkPolicies, pod ranges half the time and, half
/// the time, forty more remote replicas (so that several pods may change in one step).
fn generated(rng: &mut Rng) -> (ClusterState, bool) {
    let mut s = generate::cluster(rng);
    generate::add_cluster_policies(rng, &mut s);
    if rng.chance(50) {
        for n in s.nodes.values_mut() {
            n.pod_cidrs = vec![net("10.0.0.0/16")];
        }
    }
    let big = rng.chance(50);
    if big {
        let base: Vec<(ObjectRef, PodInfo)> =
            s.pods.iter().map(|(r, p)| (r.clone(), p.clone())).collect();
        for k in 0..40usize {
            let (r, mut p) = base[rng.below(base.len())].clone();
            p.node = Some(NODES[1].to_string());
            p.ips = vec![IpAddr::V4(Ipv4Addr::new(10, 50, 0, k as u8))];
            s.pods
                .insert(ObjectRef::new(r.namespace.clone(), format!("rep-{k}")), p);
        }
    }
    (s, big)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Random differential: the incremental plan equals the full one after every step, with
/// `remember` skipped now and then and the node switched now and then.
#[test]
fn incr_cnp_guard_random_sequences_equal_full_compiles() {
    let seed = env_or("NETPOL_INCR_CNP_SEED", 7);
    let sequences = env_or("NETPOL_INCR_CNP_SEQUENCES", 300);
    let nodes = [Some("node-a"), Some("node-b"), Some("node-c"), None];
    let (mut under_cnp, mut total) = (0, 0);
    for i in 0..sequences {
        let mut rng = Rng::new(seed.wrapping_mul(7919).wrapping_add(i));
        let (mut s, big) = generated(&mut rng);
        let mut c = Compiler::default();
        let mut history = Vec::new();
        for step in 0..40 {
            let node = if rng.chance(3) { NODES[1] } else { NODES[0] };
            let got = c.compile(&s, node);
            let want = compile(&s, node);
            if rng.chance(92) {
                c.remember(&s, &got);
            }
            assert!(
                got == want,
                "seed {seed}, sequence {i}, step {step}: the plan differs\nchanges: {history:#?}\nincremental: {got:#?}\nfull: {want:#?}"
            );
            total += 1;
            if c.last_was_incremental && !s.cluster_policies.is_empty() {
                under_cnp += 1;
            }
            for _ in 0..if big { 1 + rng.below(5) } else { 1 } {
                history.push(mutate(&mut rng, &mut s, step, &nodes));
            }
        }
    }
    println!("{under_cnp} of {total} plans incremental under a ClusterNetworkPolicy");
    assert!(under_cnp * 20 >= total, "only {under_cnp} of {total}");
}

/// Random semantic check: along the same kind of sequences (pods on the two nodes only,
/// no pod ranges, no address held twice, so that the reference reading applies), the
/// incremental plan of each node decides every sampled flow as the reference does.
#[test]
fn incr_cnp_guard_random_sequences_agree_with_the_reference() {
    use netpol_tests::decide_tiers::{allowed, per_node};
    use netpol_tests::reference::{self, End};
    let seed = env_or("NETPOL_INCR_CNP_SEED", 7);
    let sequences = env_or("NETPOL_INCR_CNP_SEQUENCES", 150);
    let nodes = [Some("node-a"), Some("node-b")];
    let mut compared = 0;
    for i in 0..sequences {
        let mut rng = Rng::new(seed.wrapping_mul(104_729).wrapping_add(i));
        let mut s = generate::cluster(&mut rng);
        generate::add_cluster_policies(&mut rng, &mut s);
        let mut compilers: BTreeMap<&str, Compiler> =
            NODES.iter().map(|n| (*n, Compiler::default())).collect();
        let mut history = Vec::new();
        for step in 0..25 {
            let mut planned = per_node(&s, &NODES);
            for (node, c) in compilers.iter_mut() {
                let plan = c.compile(&s, node);
                c.remember(&s, &plan);
                assert!(
                    plan == planned[*node].plan,
                    "sequence {i} step {step} {node}"
                );
                planned.get_mut(*node).expect("node").plan = plan;
            }
            let mut holders: BTreeMap<IpAddr, usize> = BTreeMap::new();
            for ip in s.pods.values().flat_map(|p| p.ips.iter()) {
                *holders.entry(*ip).or_default() += 1;
            }
            let clean = holders.values().all(|n| *n == 1)
                && s.nodes.values().all(|n| {
                    n.pod_cidrs.is_empty() && n.ips.iter().all(|ip| !holders.contains_key(ip))
                });
            if clean && !s.cluster_policies.is_empty() {
                let ends: Vec<End> = (s.pods.iter())
                    .flat_map(|(r, p)| p.ips.iter().map(|ip| End::Pod(r.clone(), *ip)))
                    .chain(
                        (generate::OUTSIDE.iter())
                            .map(|a| End::Outside(a.parse().expect("constant"))),
                    )
                    .chain(
                        s.nodes
                            .values()
                            .flat_map(|n| n.ips.iter().map(|ip| End::Outside(*ip))),
                    )
                    .collect();
                for _ in 0..40 {
                    let (src, dst) = (rng.pick(&ends).clone(), rng.pick(&ends).clone());
                    if src.ip().is_ipv4() != dst.ip().is_ipv4()
                        || (!matches!(src, End::Pod(..)) && !matches!(dst, End::Pod(..)))
                        || src == dst
                    {
                        continue;
                    }
                    let protocol = *rng.pick(&generate::PROTOCOLS);
                    let port = *rng.pick(&[53u16, 79, 80, 81, 82, 84, 443, 8080, 9000]);
                    let want = reference::allowed(&s, &src, &dst, protocol, port);
                    let got = allowed(&s, &planned, &src, &dst, protocol, port);
                    compared += 1;
                    assert_eq!(
                        want, got,
                        "sequence {i} step {step}: {src:?} -> {dst:?} {protocol}/{port}\nchanges: {history:#?}"
                    );
                }
            }
            history.push(mutate(&mut rng, &mut s, step, &nodes));
        }
    }
    println!("{compared} flows agree");
    assert!(compared > 1000, "only {compared} flows compared");
}
