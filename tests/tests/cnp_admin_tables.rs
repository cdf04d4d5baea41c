//! Shared Admin tables (pure userspace, `MemoryMaps`): the ordered sets of pods under the
//! same Admin rules point at one Admin table (`ADMIN_TABLES`), written once, whatever
//! their NetworkPolicy; the table lives while a set (current or superseded) holds it;
//! what the maps answer is what the plan decides, rule names included; and an adopted
//! run's tables keep enforcing until nothing points at them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use netpol_agent::compile::{Direction, Plan, compile};
use netpol_agent::program::memory::MemoryMaps;
use netpol_agent::program::{Programmer, addr_of};
use netpol_agent::state::{ClusterState, Protocol};
use netpol_common::{RULESET_ADMIN_TABLE, RULESET_HAS_ADMIN, ruleset_base};
use netpol_tests::scale::{self, Generator, LOCAL_NODE};
use serde_json::json;

const PODS: usize = 1000;

/// The narrow cluster (a NetworkPolicy per deployment) under the Admin egress policy.
fn world() -> ClusterState {
    let mut s = scale::cluster(Generator::Narrow, PODS).expect("cluster");
    let (name, policy) = scale::admin_egress().expect("policy");
    s.cluster_policies.insert(name, policy);
    s
}

/// Admin table id -> its entries (identity and address), as the maps hold them.
fn admin_entries(m: &MemoryMaps) -> BTreeMap<u32, usize> {
    let mut out = BTreeMap::new();
    let by_identity = (m.by_identity.keys()).map(|k| k.ruleset);
    let by_address = (m.cidr.keys()).map(|(set, _, _)| u32::from_be_bytes(*set));
    for key in by_identity.chain(by_address) {
        if key & RULESET_ADMIN_TABLE != 0 {
            *out.entry(key & !RULESET_ADMIN_TABLE).or_insert(0) += 1;
        }
    }
    out
}

/// The ordered sets with an Admin table that endpoints point at.
fn admin_sets(m: &MemoryMaps) -> BTreeSet<u32> {
    (m.endpoints.values())
        .flat_map(|e| [e.ingress_set, e.egress_set])
        .filter(|s| s & RULESET_HAS_ADMIN != 0)
        .collect()
}

/// Every local pod's egress, as the maps answer it, equals the plan's decision and
/// names the same rule.
fn assert_maps_decide_as_plan(plan: &Plan, m: &MemoryMaps) {
    let peers: Vec<IpAddr> = (0..40)
        .map(|i| scale::pod_ip(i * 7))
        .chain(["192.0.2.7", "198.51.100.1", "203.0.113.9"].map(|a| a.parse().expect("ip")))
        .collect();
    for ep in &plan.endpoints {
        let info = m.endpoints[&addr_of(ep.ips[0])];
        for peer in &peers {
            for port in [80, 53, 8080] {
                let want = plan
                    .decide(ep, Direction::Egress, *peer, Protocol::Tcp, port)
                    .map(|rule| rule.map(|r| r.to_string()));
                let got = m
                    .rule_for(info.egress_set, *peer, Protocol::Tcp, port)
                    .map(|position| {
                        (position != 0)
                            .then(|| ep.rules.name(Direction::Egress, position))
                            .flatten()
                            .map(|r| r.to_string())
                    });
                assert_eq!(got, want, "{} egress to {peer}:{port}", ep.pod);
            }
        }
    }
}

#[test]
fn ordered_sets_of_pods_under_the_same_admin_rules_share_one_admin_table() {
    let plan = compile(&world(), LOCAL_NODE);
    let mut pr = Programmer::new(MemoryMaps::default(), 8192);
    pr.apply(&plan, &BTreeMap::new()).expect("programmed");
    let m = pr.maps();
    let sets = admin_sets(m);
    assert!(
        sets.len() > 1,
        "the world has several ordered egress sets: {}",
        sets.len()
    );
    let tables = admin_entries(m);
    assert_eq!(
        tables.len(),
        1,
        "one Admin table for all of them: {tables:?}"
    );
    let named: BTreeSet<u32> = sets
        .iter()
        .map(|s| m.admin_tables[&ruleset_base(*s)])
        .collect();
    assert_eq!(
        named,
        tables.keys().copied().collect(),
        "every set names the table written"
    );
    assert_eq!(
        m.admin_tables.len(),
        sets.len(),
        "one name per set, no stale one"
    );
    assert_maps_decide_as_plan(&plan, m);
}

#[test]
fn an_admin_table_is_deleted_with_its_last_holder_and_replaced_when_its_policy_changes() {
    let mut s = world();
    let mut pr = Programmer::new(MemoryMaps::default(), 8192);
    pr.apply(&compile(&s, LOCAL_NODE), &BTreeMap::new())
        .expect("programmed");
    let first = admin_entries(pr.maps());

    // A new rule at the top of the Admin policy: a new table; the old one is gone once
    // every set has flipped.
    let spec = json!({"tier": "Admin", "priority": 10,
    "subject": {"namespaces": {}},
    "egress": [
      {"action": "Deny", "to": [{"networks": ["203.0.113.0/24"]}]},
      {"action": "Deny", "to": [{"networks": ["192.0.2.0/24", "198.51.100.0/24"]}]},
      {"action": "Accept", "to": [{"pods": {"namespaceSelector": {},
          "podSelector": {"matchLabels": {"tier": "tier-1"}}}}]}
    ]});
    let (name, _) = scale::admin_egress().expect("policy");
    s.cluster_policies.insert(
        name.clone(),
        scale::cluster_policy(&name, spec).expect("policy"),
    );
    let plan = compile(&s, LOCAL_NODE);
    pr.apply(&plan, &BTreeMap::new()).expect("programmed");
    let second = admin_entries(pr.maps());
    assert_eq!(second.len(), 1, "only the new table is left: {second:?}");
    assert!(
        second.keys().all(|k| !first.contains_key(k)),
        "a new id: {first:?} then {second:?}"
    );
    assert_eq!(
        second.values().sum::<usize>(),
        first.values().sum::<usize>() + 1,
        "the new table has the new rule's one entry more"
    );
    assert_maps_decide_as_plan(&plan, pr.maps());

    // Without the policy, no Admin table and no name is left.
    s.cluster_policies.clear();
    pr.apply(&compile(&s, LOCAL_NODE), &BTreeMap::new())
        .expect("programmed");
    assert!(admin_entries(pr.maps()).is_empty());
    assert!(pr.maps().admin_tables.is_empty());
    assert!(admin_sets(pr.maps()).is_empty());
}

/// A peer whose Admin entry changes (it is relabelled into the Accept rule's pods)
/// renews every set holding the table: their connections are decided again.
#[test]
fn a_peer_changing_admin_entry_renews_every_set_holding_the_table() {
    let mut s = world();
    let mut pr = Programmer::new(MemoryMaps::default(), 8192);
    pr.apply(&compile(&s, LOCAL_NODE), &BTreeMap::new())
        .expect("programmed");
    let before = admin_sets(pr.maps());
    // Pod 3 is tier-0: the Admin table has no entry for it.
    let r = scale::pod_ref(3);
    s.pods
        .get_mut(&r)
        .expect("pod 3")
        .labels
        .insert("tier".into(), "tier-1".into());
    // Its new identity is one the table already names; its address moves to it.
    let plan = compile(&s, LOCAL_NODE);
    let stats = pr.apply(&plan, &BTreeMap::new()).expect("programmed");
    let after = admin_sets(pr.maps());
    assert!(stats.rule_sets_renewed >= before.len(), "{stats:?}");
    assert!(
        before.is_disjoint(&after),
        "every set holding the table has a new id: {before:?} then {after:?}"
    );
    assert_eq!(admin_entries(pr.maps()).len(), 1, "still one table");
    assert_maps_decide_as_plan(&plan, pr.maps());
}

/// A restarted agent adopts the maps: the earlier run's sets keep their Admin table
/// until every endpoint has flipped, then both go.
#[test]
fn an_adopted_runs_admin_table_lives_until_its_sets_are_unused() {
    let s = world();
    let plan = compile(&s, LOCAL_NODE);
    let mut first = Programmer::new(MemoryMaps::default(), 8192);
    first.apply(&plan, &BTreeMap::new()).expect("programmed");
    let earlier = admin_entries(first.maps());
    let maps = std::mem::take(first.maps_mut());

    let mut second = Programmer::new(maps, 8192);
    second.adopt().expect("adopted");
    assert_eq!(
        admin_entries(second.maps()),
        earlier,
        "untouched by adoption"
    );
    let plan = compile(&s, LOCAL_NODE);
    second.apply(&plan, &BTreeMap::new()).expect("programmed");
    let now = admin_entries(second.maps());
    assert_eq!(now.len(), 1, "the earlier table is gone: {now:?}");
    assert!(now.keys().all(|k| !earlier.contains_key(k)));
    let sets = admin_sets(second.maps());
    let names: BTreeSet<u32> = second.maps().admin_tables.keys().copied().collect();
    assert_eq!(
        names,
        sets.iter().map(|s| ruleset_base(*s)).collect(),
        "only the sets in use are named"
    );
    assert_maps_decide_as_plan(&plan, second.maps());
}

/// The same, when the new run's sets do not fit: the pods keep the adopted sets, and
/// those keep their Admin table (its entries are keyed by an id no endpoint points at).
#[test]
fn an_adopted_set_kept_after_an_overflow_keeps_its_admin_table() {
    let s = world();
    let plan = compile(&s, LOCAL_NODE);
    let mut first = Programmer::new(MemoryMaps::default(), 8192);
    first.apply(&plan, &BTreeMap::new()).expect("programmed");
    let earlier = admin_entries(first.maps());
    let mut maps = std::mem::take(first.maps_mut());
    // Full: no new entry fits.
    maps.peer_capacity = Some(maps.by_identity.len() + maps.cidr.len());

    let mut second = Programmer::new(maps, 8192);
    second.adopt().expect("adopted");
    let stats = second.apply(&plan, &BTreeMap::new()).expect("programmed");
    assert!(!stats.overflowed.is_empty(), "the new sets did not fit");
    assert_eq!(admin_entries(second.maps()), earlier, "kept whole");
    let kept = admin_sets(second.maps());
    assert!(!kept.is_empty());
    assert!(
        kept.iter()
            .all(|s| second.maps().admin_tables.contains_key(&ruleset_base(*s))),
        "every kept set still names its table"
    );
    // What the adopted sets answer (positions are the earlier run's, so only allowed or
    // not is compared).
    for ep in &plan.endpoints {
        let info = second.maps().endpoints[&addr_of(ep.ips[0])];
        for i in 0..40 {
            let peer = scale::pod_ip(i * 7);
            let want = plan
                .decide(ep, Direction::Egress, peer, Protocol::Tcp, 80)
                .is_some();
            let got = second
                .maps()
                .rule_for(info.egress_set, peer, Protocol::Tcp, 80)
                .is_some();
            assert_eq!(got, want, "{} egress to {peer}:80", ep.pod);
        }
    }
}
