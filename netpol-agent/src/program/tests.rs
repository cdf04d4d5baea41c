use std::collections::BTreeMap;
use std::net::IpAddr;

use super::memory::MemoryMaps;
use super::*;
use crate::compile;
use crate::state::{ClusterState, ContainerPort, PodInfo, Protocol};

fn state(policy_port: u16) -> ClusterState {
    let mut s = ClusterState::default();
    for (name, ip, app) in [
        ("a", "10.244.1.2", "client"),
        ("b", "10.244.1.3", "server"),
        ("c", "10.244.1.4", "server"),
    ] {
        add_pod(&mut s, name, ip, app, "n1");
    }
    let p: k8s_openapi::api::networking::v1::NetworkPolicy = serde_yaml::from_str(&format!(
        r#"
metadata: {{name: p, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]
    ports: [{{port: {policy_port}}}]
  - from: [{{ipBlock: {{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}}}]
"#
    ))
    .unwrap();
    s.policies.insert(ObjectRef::new("default", "p"), p);
    s.services.insert(
        ObjectRef::new("default", "svc"),
        crate::state::ServiceInfo {
            ips: vec!["10.96.0.1".parse().unwrap()],
            ports: vec![(crate::state::Protocol::Tcp, 80)],
        },
    );
    s
}

fn ifindexes(plan: &compile::Plan) -> BTreeMap<ObjectRef, u32> {
    plan.endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| (e.pod.clone(), 10 + i as u32))
        .collect()
}

#[test]
fn maps_decide_like_the_plan() {
    let plan = compile::compile(&state(80), "n1");
    let mut p = Programmer::new(MemoryMaps::default(), 100);
    p.apply(&plan, &ifindexes(&plan)).unwrap();
    let m = p.maps();
    let peers: Vec<IpAddr> = [
        "10.244.1.2",
        "10.244.1.3",
        "192.0.2.1",
        "192.0.2.200",
        "198.51.100.1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    for ep in &plan.endpoints {
        let info = m.endpoints[&addr_of(ep.ips[0])];
        for peer in &peers {
            for port in [79, 80, 81] {
                let want = ep
                    .ingress
                    .is_none_or(|r| plan.allows(r, *peer, Protocol::Tcp, port));
                assert_eq!(
                    m.allows(info.ingress_set, *peer, Protocol::Tcp, port),
                    want,
                    "{} from {peer}:{port}",
                    ep.pod
                );
                // The maps name the rule the plan names.
                let named = m
                    .rule_for(info.ingress_set, *peer, Protocol::Tcp, port)
                    .map(|position| netpol_common::rule_index(info.ingress_rules, position))
                    .and_then(|slot| p.rule_names().get(&slot).cloned())
                    .map(|r| r.to_string());
                let planned = plan
                    .rule_for(ep, compile::Direction::Ingress, *peer, Protocol::Tcp, port)
                    .map(|r| r.to_string());
                assert_eq!(named, planned, "{} from {peer}:{port}", ep.pod);
            }
        }
    }
    // Both servers share one rule set; the client is open.
    let sets: Vec<u32> = m.endpoints.values().map(|e| e.ingress_set).collect();
    assert_eq!(
        sets.iter()
            .filter(|s| **s != 0)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        1
    );
    assert_eq!(m.ifaces.len(), 3);
    assert_eq!(m.services.len(), 1);
}

#[test]
fn reapplying_the_same_plan_writes_nothing() {
    let plan = compile::compile(&state(80), "n1");
    let mut p = Programmer::new(MemoryMaps::default(), 100);
    p.apply(&plan, &ifindexes(&plan)).unwrap();
    let before = p.maps().writes;
    let stats = p.apply(&plan, &ifindexes(&plan)).unwrap();
    assert_eq!(p.maps().writes, before);
    assert_eq!(stats, ApplyStats::default());
}

#[test]
fn a_changed_rule_set_is_written_under_a_new_id_and_the_old_one_removed() {
    let plan1 = compile::compile(&state(80), "n1");
    let mut p = Programmer::new(MemoryMaps::default(), 100);
    p.apply(&plan1, &ifindexes(&plan1)).unwrap();
    let old_set = p.maps().endpoints[&addr_of("10.244.1.3".parse().unwrap())].ingress_set;

    let plan2 = compile::compile(&state(8080), "n1");
    let stats = p.apply(&plan2, &ifindexes(&plan2)).unwrap();
    assert_eq!(stats.rule_sets_added, 1);
    assert_eq!(stats.rule_sets_removed, 1);
    let m = p.maps();
    let new_set = m.endpoints[&addr_of("10.244.1.3".parse().unwrap())].ingress_set;
    assert_ne!(old_set, new_set);
    assert!(m.by_identity.keys().all(|k| k.ruleset != old_set));
    assert!(m.cidr.keys().all(|(id, _, _)| *id != old_set.to_be_bytes()));
    let client: IpAddr = "10.244.1.2".parse().unwrap();
    assert!(m.allows(new_set, client, Protocol::Tcp, 8080));
    assert!(!m.allows(new_set, client, Protocol::Tcp, 80));
    // Only the port set still in use remains.
    assert_eq!(m.portsets.len(), 1);
}

#[test]
fn removing_everything_leaves_empty_maps() {
    let plan = compile::compile(&state(80), "n1");
    let mut p = Programmer::new(MemoryMaps::default(), 100);
    p.apply(&plan, &ifindexes(&plan)).unwrap();
    let rules: Vec<String> = p.rule_names().values().map(|r| r.to_string()).collect();
    assert_eq!(rules, ["default/p ingress[0]", "default/p ingress[1]"]);
    p.apply(&compile::Plan::default(), &BTreeMap::new())
        .unwrap();
    assert!(p.rule_names().is_empty(), "rule ids are released");
    let m = p.maps();
    assert!(m.by_identity.is_empty() && m.cidr.is_empty() && m.portsets.is_empty());
    assert!(m.identities.is_empty());
    assert!(m.endpoints.is_empty() && m.ifaces.is_empty() && m.services.is_empty());
    assert!(p.endpoint_ids().is_empty());
}

#[test]
fn endpoint_ids_are_bounded() {
    let plan = compile::compile(&state(80), "n1");
    let mut p = Programmer::new(MemoryMaps::default(), 2);
    let err = p.apply(&plan, &ifindexes(&plan)).unwrap_err();
    assert!(err.to_string().contains("endpoints"), "{err}");
}

#[test]
fn a_rule_set_that_does_not_fit_keeps_the_last_state_and_recovers() {
    let plan1 = compile::compile(&state(80), "n1");
    let maps = MemoryMaps {
        peer_capacity: Some(3),
        ..Default::default()
    };
    let mut p = Programmer::new(maps, 100);
    let stats = p.apply(&plan1, &ifindexes(&plan1)).unwrap();
    assert!(stats.overflowed.is_empty(), "{stats:?}");
    let server: IpAddr = "10.244.1.3".parse().unwrap();
    let client: IpAddr = "10.244.1.2".parse().unwrap();
    let before = p.maps().endpoints[&addr_of(server)];

    // The new rule set needs 3 more entries while the old ones are still in place.
    let plan2 = compile::compile(&state(8080), "n1");
    let stats = p.apply(&plan2, &ifindexes(&plan2)).unwrap();
    assert_eq!(stats.overflowed.len(), 2, "both servers: {stats:?}");
    assert!(
        stats
            .overflow_error
            .as_deref()
            .unwrap_or("")
            .contains("full")
    );
    let m = p.maps();
    assert_eq!(
        m.endpoints[&addr_of(server)],
        before,
        "last complete state kept"
    );
    assert!(m.allows(before.ingress_set, client, Protocol::Tcp, 80));
    assert!(!m.allows(before.ingress_set, client, Protocol::Tcp, 8080));

    // Room returns: the next apply goes through.
    p.maps_mut().peer_capacity = Some(100);
    let stats = p.apply(&plan2, &ifindexes(&plan2)).unwrap();
    assert!(stats.overflowed.is_empty(), "{stats:?}");
    let now = p.maps().endpoints[&addr_of(server)];
    assert!(
        p.maps()
            .allows(now.ingress_set, client, Protocol::Tcp, 8080)
    );
    assert!(!p.maps().allows(now.ingress_set, client, Protocol::Tcp, 80));
}

#[test]
fn a_new_pod_whose_rule_set_does_not_fit_allows_nothing() {
    let plan = compile::compile(&state(80), "n1");
    let maps = MemoryMaps {
        peer_capacity: Some(0),
        ..Default::default()
    };
    let mut p = Programmer::new(maps, 100);
    let stats = p.apply(&plan, &ifindexes(&plan)).unwrap();
    assert_eq!(stats.overflowed.len(), 2);
    let m = p.maps();
    let server = m.endpoints[&addr_of("10.244.1.3".parse().unwrap())];
    assert_ne!(server.ingress_set, 0, "isolated, not open");
    let client: IpAddr = "10.244.1.2".parse().unwrap();
    assert!(!m.allows(server.ingress_set, client, Protocol::Tcp, 80));
    // The client is not isolated and is unaffected.
    let c = m.endpoints[&addr_of(client)];
    assert_eq!((c.ingress_set, c.egress_set), (0, 0));
}

#[test]
fn a_restarted_programmer_adopts_and_replaces_without_a_gap() {
    let plan1 = compile::compile(&state(80), "n1");
    let mut first = Programmer::new(MemoryMaps::default(), 100);
    first.apply(&plan1, &ifindexes(&plan1)).unwrap();
    let server: IpAddr = "10.244.1.3".parse().unwrap();
    let client: IpAddr = "10.244.1.2".parse().unwrap();
    let old = first.maps().endpoints[&addr_of(server)];

    // A new process: same maps (pinned), no memory of what it wrote.
    let maps = std::mem::take(first.maps_mut());
    let mut second = Programmer::new(maps, 100);
    assert_eq!(second.adopt().unwrap(), 3);
    // Until it applies, the adopted state is what enforces.
    assert!(
        second
            .maps()
            .allows(old.ingress_set, client, Protocol::Tcp, 80)
    );

    let plan2 = compile::compile(&state(8080), "n1");
    second.apply(&plan2, &ifindexes(&plan2)).unwrap();
    let m = second.maps();
    let now = m.endpoints[&addr_of(server)];
    assert_eq!(now.id, old.id, "endpoint ids (and counters) carry over");
    assert_ne!(now.ingress_set, old.ingress_set);
    assert!(m.allows(now.ingress_set, client, Protocol::Tcp, 8080));
    assert!(!m.allows(now.ingress_set, client, Protocol::Tcp, 80));
    // Nothing of the old rule set is left.
    assert!(m.by_identity.keys().all(|k| k.ruleset != old.ingress_set));
    assert!(
        m.cidr
            .keys()
            .all(|(id, _, _)| *id != old.ingress_set.to_be_bytes())
    );
    assert_eq!(m.portsets.len(), 1);

    // And a restart with an unchanged cluster changes nothing in the rules.
    let maps = std::mem::take(second.maps_mut());
    let mut third = Programmer::new(maps, 100);
    third.adopt().unwrap();
    third.apply(&plan2, &ifindexes(&plan2)).unwrap();
    let again = third.maps().endpoints[&addr_of(server)];
    assert_eq!(again.id, now.id);
    assert!(
        third
            .maps()
            .allows(again.ingress_set, client, Protocol::Tcp, 8080)
    );
    assert_eq!(
        third.maps().by_identity.len() + third.maps().cidr.len(),
        m_len(&plan2)
    );
}

fn m_len(plan: &compile::Plan) -> usize {
    plan.rule_sets.iter().map(|s| s.len()).sum()
}

/// A pod of `default` with an `app` label and a named port "http" (TCP 80).
fn add_pod(s: &mut ClusterState, name: &str, ip: &str, app: &str, node: &str) {
    s.pods.insert(
        ObjectRef::new("default", name),
        PodInfo {
            labels: [("app".to_string(), app.to_string())].into(),
            node: Some(node.into()),
            host_network: false,
            terminated: false,
            ips: vec![ip.parse().unwrap()],
            ports: vec![ContainerPort {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::Tcp,
            }],
        },
    );
}

fn remote_client(s: &mut ClusterState, name: &str, ip: &str, app: &str) {
    add_pod(s, name, ip, app, "n2");
}

fn server_set(p: &Programmer<MemoryMaps>) -> u32 {
    p.maps().endpoints[&addr_of("10.244.1.3".parse().unwrap())].ingress_set
}

#[test]
fn a_pod_like_others_is_one_identity_write() {
    let mut s = state(80);
    let plan = compile::compile(&s, "n1");
    let mut p = Programmer::new(MemoryMaps::default(), 100);
    p.apply(&plan, &ifindexes(&plan)).unwrap();
    let set = server_set(&p);
    let writes = p.maps().writes;

    // Another client on another node: same labels and ports as the local one.
    remote_client(&mut s, "d", "10.244.2.9", "client");
    let plan = compile::compile(&s, "n1");
    let stats = p.apply(&plan, &ifindexes(&plan)).unwrap();
    assert_eq!(stats.identities_written, 1);
    assert_eq!(stats.rule_sets_added + stats.rule_sets_renewed, 0);
    assert_eq!(p.maps().writes - writes, 1, "{stats:?}");
    assert_eq!(server_set(&p), set, "no endpoint flips");
    let d: IpAddr = "10.244.2.9".parse().unwrap();
    assert!(p.maps().allows(set, d, Protocol::Tcp, 80));
}

#[test]
fn a_peer_relabelled_out_of_a_rule_renews_the_rule_set() {
    let mut s = state(80);
    remote_client(&mut s, "d", "10.244.2.9", "client");
    let plan = compile::compile(&s, "n1");
    let mut p = Programmer::new(MemoryMaps::default(), 100);
    p.apply(&plan, &ifindexes(&plan)).unwrap();
    let before = server_set(&p);

    // The remote client takes labels no rule allows: the rule set's content is the same
    // (it names identities), but connections it allowed to that address must be decided
    // again, so the server moves to a new id of the same set.
    remote_client(&mut s, "d", "10.244.2.9", "other");
    let plan = compile::compile(&s, "n1");
    let stats = p.apply(&plan, &ifindexes(&plan)).unwrap();
    assert_eq!(stats.rule_sets_renewed, 1, "{stats:?}");
    let after = server_set(&p);
    assert_ne!(after, before);
    let d: IpAddr = "10.244.2.9".parse().unwrap();
    let a: IpAddr = "10.244.1.2".parse().unwrap();
    assert!(!p.maps().allows(after, d, Protocol::Tcp, 80));
    assert!(p.maps().allows(after, a, Protocol::Tcp, 80));
    // The earlier version is gone from the maps.
    assert!(p.maps().by_identity.keys().all(|k| k.ruleset != before));

    // Relabelled into a rule: nothing is taken away, nothing is renewed.
    remote_client(&mut s, "d", "10.244.2.9", "client");
    let plan = compile::compile(&s, "n1");
    let stats = p.apply(&plan, &ifindexes(&plan)).unwrap();
    assert_eq!(stats.rule_sets_renewed, 0, "{stats:?}");
    assert_eq!(server_set(&p), after);
    assert!(p.maps().allows(after, d, Protocol::Tcp, 80));
}

#[test]
fn a_new_pod_on_a_removed_pods_address_renews_what_allowed_the_old_one() {
    let mut s = state(80);
    remote_client(&mut s, "d", "10.244.2.9", "client");
    let plan = compile::compile(&s, "n1");
    let mut p = Programmer::new(MemoryMaps::default(), 100);
    p.apply(&plan, &ifindexes(&plan)).unwrap();
    let first = server_set(&p);

    s.pods.remove(&ObjectRef::new("default", "d"));
    let plan = compile::compile(&s, "n1");
    let stats = p.apply(&plan, &ifindexes(&plan)).unwrap();
    assert_eq!(stats.rule_sets_renewed, 0, "a removal alone renews nothing");
    let d: IpAddr = "10.244.2.9".parse().unwrap();
    assert!(!p.maps().allows(first, d, Protocol::Tcp, 80));

    // The address comes back on a pod no rule allows: the connections the old pod had
    // must not carry over to it.
    remote_client(&mut s, "e", "10.244.2.9", "other");
    let plan = compile::compile(&s, "n1");
    let stats = p.apply(&plan, &ifindexes(&plan)).unwrap();
    assert_eq!(stats.rule_sets_renewed, 1, "{stats:?}");
    assert_ne!(server_set(&p), first);
    assert!(!p.maps().allows(server_set(&p), d, Protocol::Tcp, 80));
}

#[test]
fn quarantined_veths_know_no_address_and_allow_nothing() {
    let plan = compile::compile(&state(80), "n1");
    let mut p = Programmer::new(MemoryMaps::default(), 100);
    let pods = ifindexes(&plan);
    let a_veth = pods[&ObjectRef::new("default", "a")];
    // 99 claims a pod it cannot have; a's own veth is listed too, and stays a's.
    p.quarantine(BTreeSet::from([99, a_veth]));
    p.apply(&plan, &pods).unwrap();
    let held = p.maps().ifaces[&99];
    assert_eq!((held.flags, held.endpoint_id), (0, 0));
    assert_eq!(held.ingress_set, held.egress_set);
    assert_ne!(held.ingress_set, RULESET_ALLOW_ALL);
    let peers: [IpAddr; 3] = [
        "10.244.1.2".parse().unwrap(),
        "10.244.1.3".parse().unwrap(),
        "192.0.2.1".parse().unwrap(),
    ];
    for peer in peers {
        for port in [53, 80, 443] {
            assert!(!p.maps().allows(held.ingress_set, peer, Protocol::Tcp, port));
            assert!(!p.maps().allows(held.ingress_set, peer, Protocol::Udp, port));
        }
    }
    assert_ne!(p.maps().ifaces[&a_veth].endpoint_id, 0, "a's veth is a's");
    assert!(
        p.maps().next_ruleset_id > held.ingress_set,
        "a later run never reuses it"
    );
    // Resolved: the veth is forgotten at the next apply.
    p.quarantine(BTreeSet::new());
    p.apply(&plan, &pods).unwrap();
    assert!(!p.maps().ifaces.contains_key(&99));
}

/// What `occupancy` reports is what the maps hold, also while an old rule set waits to
/// be deleted after a policy change.
#[test]
fn occupancy_counts_what_the_maps_hold() {
    let mut p = Programmer::new(MemoryMaps::default(), 100);
    for port in [80, 8080] {
        let plan = compile::compile(&state(port), "n1");
        p.apply(&plan, &ifindexes(&plan)).unwrap();
        let o = p.occupancy();
        let m = p.maps();
        for (map, held) in [
            (names::ENDPOINTS, m.endpoints.len()),
            (names::IFACES, m.ifaces.len()),
            (names::SERVICES, m.services.len()),
            (names::NODE_ADDRS, m.node_addrs.len()),
            (names::IDENTITIES, m.identities.len()),
            (names::PEERS_BY_IDENTITY, m.by_identity.len()),
            (names::PEERS_CIDR, m.cidr.len()),
            (names::PORTSETS, m.portsets.len()),
        ] {
            assert_eq!(o[map], held, "{map} after the policy on port {port}");
        }
        assert!(o[names::ENDPOINTS] > 0 && o[names::PORTSETS] > 0);
    }
}

/// The pod ranges (`RULESET_POD_RANGES`) are written with the plan, follow its changes,
/// survive a restart (not taken for an earlier run's leftover rule set, nor counted when
/// the next rule-set id is chosen), and holes for node addresses are written as holes.
#[test]
fn pod_ranges_follow_the_nodes_and_survive_a_restart() {
    let mut s = state(80);
    s.nodes.insert(
        "n1".into(),
        crate::state::NodeInfo {
            ips: vec!["10.244.1.1".parse().unwrap()],
            pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
            ..Default::default()
        },
    );
    let plan = compile::compile(&s, "n1");
    let mut first = Programmer::new(MemoryMaps::default(), 100);
    first.apply(&plan, &ifindexes(&plan)).unwrap();
    let ranges = |m: &MemoryMaps| -> Vec<(IpAddr, u8, bool)> {
        let id = RULESET_POD_RANGES.to_be_bytes();
        (m.cidr.iter())
            .filter(|((set, _, _), _)| *set == id)
            .map(|((_, a, len), v)| {
                let ip = std::net::Ipv6Addr::from(a.0);
                let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
                (ip, *len, v.rest_rule != REST_DENIED)
            })
            .collect()
    };
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // The range, with holes at its network address and the node's address.
    let want = vec![
        (ip("10.244.1.0"), 120, true),
        (ip("10.244.1.0"), 128, false),
        (ip("10.244.1.1"), 128, false),
    ];
    assert_eq!(ranges(first.maps()), want);

    let maps = std::mem::take(first.maps_mut());
    let mut second = Programmer::new(maps, 100);
    second.adopt().unwrap();
    assert!(second.set_ids.next < RULESET_POD_RANGES, "not a rule set");
    second.apply(&plan, &ifindexes(&plan)).unwrap();
    assert_eq!(ranges(second.maps()), want, "kept across a restart");

    s.nodes.clear();
    let plan = compile::compile(&s, "n1");
    second.apply(&plan, &ifindexes(&plan)).unwrap();
    assert_eq!(ranges(second.maps()), vec![], "gone with the node");
}

/// A restarted agent reads the interfaces before it applies its first plan: the Node's
/// addresses keep their `NAMED` flag (and the interfaces theirs) in between, so no packet
/// to the node is judged as if the node were reached at another address.
#[test]
fn adopted_node_address_kinds_survive_until_the_plan_comes() {
    let node: IpAddr = "10.1.0.1".parse().unwrap();
    let gateway: IpAddr = "10.244.1.1".parse().unwrap();
    let mut s = state(80);
    s.nodes.insert(
        "n1".into(),
        crate::state::NodeInfo {
            ips: vec![node],
            ..Default::default()
        },
    );
    let plan = compile::compile(&s, "n1");
    let mut first = Programmer::new(MemoryMaps::default(), 100);
    first
        .set_node_addresses(&[node, gateway].into(), &BTreeSet::new(), true)
        .unwrap();
    first.apply(&plan, &ifindexes(&plan)).unwrap();
    let kinds = first.maps().node_addrs.clone();
    assert_eq!(kinds[&addr_of(node)], node_addr::OWN | node_addr::NAMED);
    assert_eq!(kinds[&addr_of(gateway)], node_addr::OWN);

    let mut second = Programmer::new(std::mem::take(first.maps_mut()), 100);
    second.adopt().unwrap();
    let changed = second
        .set_node_addresses(&[node, gateway].into(), &BTreeSet::new(), true)
        .unwrap();
    assert_eq!(changed, 0, "{:?}", second.maps().node_addrs);
    second.apply(&plan, &ifindexes(&plan)).unwrap();
    assert_eq!(second.maps().node_addrs, kinds);
}
