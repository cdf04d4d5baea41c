//! Attack on shared Admin tables (812096a) and Baseline pruning (579ba6d), pure userspace
//! (`MemoryMaps`).
//!
//! Tests named `*_finding_*` assert what the change must do and failed on 579ba6d (both
//! fixed in the commit that added this file); the others are corners that came out
//! right, kept as guards.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use netpol_agent::compile::{Direction, Plan, compile};
use netpol_agent::program::memory::MemoryMaps;
use netpol_agent::program::{Programmer, addr_of};
use netpol_agent::state::{ClusterState, ObjectRef, Protocol};
use netpol_common::{
    RULESET_ADMIN_TABLE, RULESET_HAS_ADMIN, RULESET_ORDERED, RULESET_POD_RANGES, names,
    ruleset_base,
};
use netpol_tests::cnp_fixtures::{X4, add_cnp, cnp_state, pods_with_app};
use netpol_tests::lab::{CLIENT4, SERVER4, set_policy, v4a};
use serde_json::json;

const LOCAL: &str = "n1";

fn program(s: &ClusterState) -> (Plan, Programmer<MemoryMaps>) {
    let plan = compile(s, LOCAL);
    let mut pr = Programmer::new(MemoryMaps::default(), 8192);
    pr.apply(&plan, &BTreeMap::new()).expect("programmed");
    (plan, pr)
}

/// Admin table id -> entries, as the maps hold them.
fn admin_entries(m: &MemoryMaps) -> BTreeMap<u32, usize> {
    let by_identity = (m.by_identity.keys()).map(|k| k.ruleset);
    let by_address = (m.cidr.keys()).map(|(set, _, _)| u32::from_be_bytes(*set));
    let mut out = BTreeMap::new();
    for key in by_identity.chain(by_address) {
        if key & RULESET_ADMIN_TABLE != 0 {
            *out.entry(ruleset_base(key)).or_insert(0) += 1;
        }
    }
    out
}

fn ep_sets(m: &MemoryMaps, addr: [u8; 4]) -> (u32, u32) {
    let e = m.endpoints[&addr_of(v4a(addr))];
    (e.ingress_set, e.egress_set)
}

/// What the maps answer for `pod`'s side, with the rule named through its rule names,
/// against what the plan says.
fn assert_decides_as_plan(plan: &Plan, m: &MemoryMaps, pod: &str, dir: Direction) {
    let ep = (plan.endpoints.iter())
        .find(|e| e.pod == ObjectRef::new("default", pod))
        .expect("local pod");
    let info = m.endpoints[&addr_of(ep.ips[0])];
    let set = match dir {
        Direction::Ingress => info.ingress_set,
        Direction::Egress => info.egress_set,
    };
    let peers: Vec<IpAddr> = [X4, [10, 2, 0, 9], CLIENT4, SERVER4, [192, 0, 2, 7]]
        .into_iter()
        .map(v4a)
        .filter(|p| !ep.ips.contains(p))
        .collect();
    for peer in peers {
        for port in [53u16, 80, 443] {
            let want = plan
                .decide(ep, dir, peer, Protocol::Tcp, port)
                .map(|r| r.map(|r| r.to_string()));
            let got = m.rule_for(set, peer, Protocol::Tcp, port).map(|p| {
                (p != 0)
                    .then(|| ep.rules.name(dir, p))
                    .flatten()
                    .map(|r| r.to_string())
            });
            assert_eq!(got, want, "{pod} {dir} with {peer}:{port}");
        }
    }
}

/// An Admin policy denying egress to `bad` and to 192.0.2.0/24 for client and server.
fn admin_world() -> ClusterState {
    let mut s = cnp_state();
    add_cnp(
        &mut s,
        "deny-bad",
        "Admin",
        10,
        json!({"subject": {"namespaces": {}},
               "egress": [
                 {"action": "Deny", "to": [pods_with_app("bad")]},
                 {"action": "Deny", "to": [{"networks": ["192.0.2.0/24"]}]}]}),
    );
    s
}

// ---------------------------------------------------------------------------------------
// Findings
// ---------------------------------------------------------------------------------------

/// FINDING (fixed). `MapSizes::capacities` now reports `ADMIN_TABLES` (16384), but
/// `Programmer::occupancy`, which fills the status's and `/metrics`' `map_entries`, has
/// no `ADMIN_TABLES` line: `netpol-agent status` shows the new map at 0/16384 whatever
/// it holds, and a map filling up (new ordered sets then fail to program) gives no
/// warning. Occupancy must count the `ADMIN_TABLES` entries this programmer wrote (and
/// those of an adopted run it keeps).
#[test]
fn attack_admin_tables_finding_occupancy_leaves_out_admin_tables() {
    let (_, pr) = program(&admin_world());
    let held = pr.maps().admin_tables.len();
    assert!(held >= 1, "the ordered egress set names the table: {held}");
    assert_eq!(
        pr.occupancy().get(names::ADMIN_TABLES).copied(),
        Some(held),
        "occupancy: {:?}",
        pr.occupancy()
    );
}

/// FINDING (accounting; fixed). `ApplyStats::peer_entries_written` counts each new set's own
/// table only (`loaded.table.len()`): the entries of an Admin table written by
/// `hold_admin_table` are counted nowhere (before the change, a set's Admin entries were
/// counted with it). A first apply writes every peer entry the maps hold (pod ranges
/// aside), so the two must be equal.
#[test]
fn attack_admin_tables_finding_apply_stats_leave_out_admin_table_entries() {
    let s = admin_world();
    let plan = compile(&s, LOCAL);
    let mut pr = Programmer::new(MemoryMaps::default(), 8192);
    let stats = pr.apply(&plan, &BTreeMap::new()).expect("programmed");
    let m = pr.maps();
    let held = m.by_identity.len()
        + (m.cidr.keys())
            .filter(|(set, _, _)| u32::from_be_bytes(*set) != RULESET_POD_RANGES)
            .count();
    let admin: usize = admin_entries(m).values().sum();
    assert!(admin > 0);
    assert_eq!(
        stats.peer_entries_written, held,
        "{admin} of the {held} entries are the Admin table's: {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Guards
// ---------------------------------------------------------------------------------------

/// Two pods under different Admin policies whose tables come out equal share one table;
/// each names its own policy's rule for the same position.
#[test]
fn attack_admin_tables_guard_equal_tables_of_different_policies_name_each_pods_rule() {
    let mut s = cnp_state();
    for (name, app) in [("a-client", "client"), ("b-server", "server")] {
        add_cnp(
            &mut s,
            name,
            "Admin",
            10,
            json!({"subject": pods_with_app(app),
                   "egress": [{"action": "Deny", "to": [pods_with_app("bad")]}]}),
        );
    }
    let (plan, pr) = program(&s);
    let m = pr.maps();
    assert_eq!(
        admin_entries(m).len(),
        1,
        "one table: {:?}",
        admin_entries(m)
    );
    for pod in ["client", "server"] {
        assert_decides_as_plan(&plan, m, pod, Direction::Egress);
    }
    // The drop of client -> bad names a-client's rule, server -> bad b-server's.
    for (pod, addr, policy) in [
        ("client", CLIENT4, "a-client"),
        ("server", SERVER4, "b-server"),
    ] {
        let ep = (plan.endpoints.iter())
            .find(|e| e.pod == ObjectRef::new("default", pod))
            .expect("pod");
        let (_, egress) = ep_sets(m, addr);
        let admin = m.admin_tables[&ruleset_base(egress)];
        assert!(egress & RULESET_HAS_ADMIN != 0);
        let name = ep.rules.name(Direction::Egress, 1).expect("position 1");
        assert!(
            name.to_string().contains(policy),
            "{pod}'s position 1 is {name} (table {admin})"
        );
    }
}

/// The same Admin rules in both directions (a Deny of `bad` to and from): the ingress and
/// egress tables are equal in content and shared; each direction names its own rule.
#[test]
fn attack_admin_tables_guard_ingress_and_egress_tables_shared_named_per_direction() {
    let mut s = cnp_state();
    add_cnp(
        &mut s,
        "both-ways",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "ingress": [{"action": "Deny", "from": [pods_with_app("bad")]}],
               "egress": [{"action": "Deny", "to": [pods_with_app("bad")]}]}),
    );
    let (plan, pr) = program(&s);
    let m = pr.maps();
    let (i, e) = ep_sets(m, CLIENT4);
    assert!(i & RULESET_HAS_ADMIN != 0 && e & RULESET_HAS_ADMIN != 0);
    assert_decides_as_plan(&plan, m, "client", Direction::Egress);
    assert_decides_as_plan(&plan, m, "client", Direction::Ingress);
    let ep = (plan.endpoints.iter())
        .find(|e| e.pod == ObjectRef::new("default", "client"))
        .expect("pod");
    let ing = ep
        .rules
        .name(Direction::Ingress, 1)
        .expect("named")
        .to_string();
    let eg = ep
        .rules
        .name(Direction::Egress, 1)
        .expect("named")
        .to_string();
    assert!(ing.contains("ingress"), "{ing}");
    assert!(eg.contains("egress"), "{eg}");
}

/// Baseline pruning: a pod NetworkPolicy isolates, under a Baseline Accept of what its
/// NetworkPolicy denies, keeps NetworkPolicy's own (unordered) set and denies; once the
/// NetworkPolicy goes, the Baseline Accept decides through an ordered set; when it comes
/// back, the pod is isolated again. No Admin table at any point.
#[test]
fn attack_admin_tables_guard_baseline_pruning_follows_isolation_both_ways() {
    let mut s = cnp_state();
    add_cnp(
        &mut s,
        "baseline-accept-x",
        "Baseline",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"action": "Accept", "to": [pods_with_app("x")]},
                          {"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}),
    );
    set_policy(
        &mut s,
        "client-egress-none",
        r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"]}"#,
    );
    let mut pr = Programmer::new(MemoryMaps::default(), 8192);
    let x = v4a(X4);
    let mut check = |s: &ClusterState, ordered: bool, allows_x: bool| {
        let plan = compile(s, LOCAL);
        pr.apply(&plan, &BTreeMap::new()).expect("programmed");
        let m = pr.maps();
        let (_, e) = ep_sets(m, CLIENT4);
        assert_eq!(e & RULESET_ORDERED != 0, ordered, "set {e:#x}");
        assert!(m.admin_tables.is_empty());
        assert_eq!(m.allows(e, x, Protocol::Tcp, 80), allows_x);
        assert_decides_as_plan(&plan, m, "client", Direction::Egress);
    };
    check(&s, false, false);
    s.policies.clear();
    check(&s, true, true);
    set_policy(
        &mut s,
        "client-egress-none",
        r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"]}"#,
    );
    check(&s, false, false);
}

/// Two restarts in a row while the pods are kept on the first run's sets (full maps):
/// the first run's Admin table and its names survive both adoptions, then go once the
/// pods flip.
#[test]
fn attack_admin_tables_guard_two_restarts_keep_a_kept_sets_admin_table() {
    let mut s = admin_world();
    // No pod ranges: an adopting run rewrites them first, which `MemoryMaps` (unlike a
    // BPF map overwriting a key) refuses when full.
    for n in s.nodes.values_mut() {
        n.pod_cidrs.clear();
    }
    let plan = compile(&s, LOCAL);
    let mut first = Programmer::new(MemoryMaps::default(), 8192);
    first.apply(&plan, &BTreeMap::new()).expect("programmed");
    let earlier = admin_entries(first.maps());
    let mut maps = std::mem::take(first.maps_mut());
    maps.peer_capacity = Some(maps.by_identity.len() + maps.cidr.len());
    let mut pr = Programmer::new(maps, 8192);
    for round in 0..2 {
        pr.adopt().expect("adopted");
        let stats = pr.apply(&plan, &BTreeMap::new()).expect("programmed");
        assert!(!stats.overflowed.is_empty(), "round {round}: nothing fits");
        assert_eq!(admin_entries(pr.maps()), earlier, "round {round}");
        let (_, e) = ep_sets(pr.maps(), CLIENT4);
        assert!(
            pr.maps().admin_tables.contains_key(&ruleset_base(e)),
            "round {round}: the kept set still names its table"
        );
        assert!(!pr.maps().allows(e, v4a([10, 2, 0, 9]), Protocol::Tcp, 80));
        let maps = std::mem::take(pr.maps_mut());
        pr = Programmer::new(maps, 8192);
    }
    pr.adopt().expect("adopted");
    pr.maps_mut().peer_capacity = None;
    pr.apply(&plan, &BTreeMap::new()).expect("programmed");
    let now = admin_entries(pr.maps());
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(now.keys().all(|k| !earlier.contains_key(k)));
    let in_use: BTreeSet<u32> = (pr.maps().endpoints.values())
        .flat_map(|e| [e.ingress_set, e.egress_set])
        .filter(|s| s & RULESET_HAS_ADMIN != 0)
        .map(ruleset_base)
        .collect();
    assert_eq!(
        pr.maps()
            .admin_tables
            .keys()
            .copied()
            .collect::<BTreeSet<_>>(),
        in_use
    );
    assert_decides_as_plan(&plan, pr.maps(), "client", Direction::Egress);
}
