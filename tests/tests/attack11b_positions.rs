//! Attack 11b: rule positions in shared rule sets, per-pod counter blocks (RuleTables).
//! The `root_` tests run the BPF programs with BPF_PROG_TEST_RUN (**needs root**); the
//! others program `MemoryMaps`. Tests assert the correct behaviour: failing ones expose a
//! bug.

use netpol_agent::program::Programmer;
use netpol_agent::program::memory::MemoryMaps;
use netpol_tests::lab::*;

fn ack(lab: &mut Lab, vc: u32, sport: u16) {
    assert_eq!(
        lab.run(
            Hook::FromPod,
            vc,
            &v4(CLIENT4, Y4, TCP, &tcp(sport, 80, ACK))
        ),
        PASS
    );
}

const CLIENT_EGRESS_Y4B: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"ipBlock": {"cidr": "10.3.0.0/16"}}], "ports": [{"port": 80}]}]}"#;

/// A live connection counted on `a` (5 packets). Policy `a2`, identical to `a`, is added:
/// the client's rule set stays the same, its list of rules becomes [a, a2]. `a` still
/// allows the connection (position 1): its packets go on counting on `a`, and what `a`
/// counted so far is not lost.
#[test]
fn root_attack11b_identical_policy_added_keeps_rule_count() {
    let i = netns(&["vc"]);
    let vc = i[0];
    let mut st = base();
    set_policy(&mut st, "a", CLIENT_EGRESS_Y);
    let mut lab = Lab::new(st, &[("client", vc)], &[v4a(NODE4), v4a(UPLINK4)]);
    lab.open_tcp_80(vc, Y4, 41000);
    for _ in 0..3 {
        ack(&mut lab, vc, 41000);
    }
    assert_eq!(
        lab.rule_packets(),
        BTreeMap::from([("default/a egress[0]".to_string(), 5)])
    );
    let set_before = lab.pr.ifaces()[&vc].egress_set;
    set_policy(&mut lab.state, "a2", CLIENT_EGRESS_Y);
    lab.apply();
    assert_eq!(
        lab.pr.ifaces()[&vc].egress_set,
        set_before,
        "same content: same rule set (else this test proves less)"
    );
    ack(&mut lab, vc, 41000);
    assert_eq!(
        lab.rule_packets(),
        BTreeMap::from([("default/a egress[0]".to_string(), 6)]),
        "a's packets so far must not be lost because a2 was added"
    );
}

/// Same, with a policy `b` of different content added (another egress rule of the
/// client): the connection is decided again, still by `a`; a's count goes on from 5.
#[test]
fn root_attack11b_other_policy_added_keeps_rule_count() {
    let i = netns(&["vc"]);
    let vc = i[0];
    let mut st = base();
    set_policy(&mut st, "a", CLIENT_EGRESS_Y);
    let mut lab = Lab::new(st, &[("client", vc)], &[v4a(NODE4), v4a(UPLINK4)]);
    lab.open_tcp_80(vc, Y4, 41000);
    for _ in 0..3 {
        ack(&mut lab, vc, 41000);
    }
    set_policy(&mut lab.state, "b", CLIENT_EGRESS_Y4B);
    lab.apply();
    ack(&mut lab, vc, 41000);
    assert_eq!(
        lab.rule_packets(),
        BTreeMap::from([("default/a egress[0]".to_string(), 6)]),
        "a's packets so far must not be lost because b was added"
    );
}

/// Rename with a live connection: `a` goes, `c` (same content) comes. The rule set is the
/// same; the connection's next packet counts on `c` (the rule that allows it now), never
/// on `a`.
#[test]
fn root_attack11b_rename_with_live_connection_counts_on_new_name() {
    let i = netns(&["vc"]);
    let vc = i[0];
    let mut st = base();
    set_policy(&mut st, "a", CLIENT_EGRESS_Y);
    let mut lab = Lab::new(st, &[("client", vc)], &[v4a(NODE4), v4a(UPLINK4)]);
    lab.open_tcp_80(vc, Y4, 41000);
    del_policy(&mut lab.state, "a");
    set_policy(&mut lab.state, "c", CLIENT_EGRESS_Y);
    lab.apply();
    ack(&mut lab, vc, 41000);
    ack(&mut lab, vc, 41000);
    assert_eq!(
        lab.rule_packets(),
        BTreeMap::from([("default/c egress[0]".to_string(), 2)])
    );
}

/// client and other share a rule set (policies `pc` and `po`, identical rules, selecting
/// one each): each one's packets count on its own policy's rule.
#[test]
fn root_attack11b_shared_set_counts_per_pod() {
    let i = netns(&["vc", "vo"]);
    let (vc, vo) = (i[0], i[1]);
    let mut st = base();
    set_policy(&mut st, "pc", CLIENT_EGRESS_Y);
    set_policy(
        &mut st,
        "po",
        &CLIENT_EGRESS_Y.replace(r#""app": "client""#, r#""app": "other""#),
    );
    let mut lab = Lab::new(
        st,
        &[("client", vc), ("other", vo)],
        &[v4a(NODE4), v4a(UPLINK4)],
    );
    assert_eq!(
        lab.pr.ifaces()[&vc].egress_set,
        lab.pr.ifaces()[&vo].egress_set,
        "shared set (else this test proves less)"
    );
    lab.open_tcp_80(vc, Y4, 41000);
    assert_eq!(
        lab.run(
            Hook::FromPod,
            vo,
            &v4(OTHER4, Y4, TCP, &tcp(42000, 80, SYN))
        ),
        PASS
    );
    assert_eq!(
        lab.run(
            Hook::FromPod,
            vo,
            &v4(OTHER4, Y4, TCP, &tcp(42000, 8080, SYN))
        ),
        PASS
    );
    assert_eq!(
        lab.run(
            Hook::FromPod,
            vo,
            &v4(OTHER4, Y4, TCP, &tcp(42001, 81, SYN))
        ),
        DROP
    );
    assert_eq!(
        lab.rule_packets(),
        BTreeMap::from([
            ("default/pc egress[0]".to_string(), 2),
            ("default/po egress[0]".to_string(), 2),
        ])
    );
}

// ---- RuleTables on MemoryMaps ------------------------------------------------------------

/// Client egress policy with `n` rules, each to a pod selector that selects nobody on its
/// own port: the rule set stays empty, the list of rules has `n` names.
fn n_rules(n: u16) -> String {
    let rules: Vec<String> = (0..n)
        .map(|p| {
            format!(
                r#"{{"to": [{{"podSelector": {{"matchLabels": {{"app": "nobody"}}}}}}], "ports": [{{"port": {}}}]}}"#,
                1000 + p
            )
        })
        .collect();
    format!(
        r#"{{"podSelector": {{"matchLabels": {{"app": "client"}}}}, "policyTypes": ["Egress"], "egress": [{}]}}"#,
        rules.join(",")
    )
}

/// One pod whose policy grows by one rule at a time (500 to 540 rules): at most ~540 of
/// the 16384 counter slots are ever in use at once, so every rule stays named. Freed
/// blocks are never merged and never give slots back to `next`, so each growth takes
/// fresh slots and naming gives up for good after ~30 edits.
#[test]
fn attack11b_growing_rule_list_keeps_being_named() {
    let mut st = base();
    let mut pr = Programmer::new(MemoryMaps::default(), sizes::COUNTERS);
    let none = BTreeMap::new();
    for n in 500..540u16 {
        set_policy(&mut st, "a", &n_rules(n));
        let plan = compile(&st, "n1");
        assert!(plan.errors.is_empty(), "{:?}", plan.errors);
        pr.apply(&plan, &none).expect("apply");
        let named = pr.rule_names().len();
        assert_eq!(
            named,
            usize::from(n),
            "after growing to {n} rules: {named} named (16384 slots, {n} in use)"
        );
    }
}

fn copy(m: &MemoryMaps) -> MemoryMaps {
    MemoryMaps {
        portsets: m.portsets.clone(),
        by_identity: m.by_identity.clone(),
        identities: m.identities.clone(),
        cidr: m.cidr.clone(),
        endpoints: m.endpoints.clone(),
        ifaces: m.ifaces.clone(),
        services: m.services.clone(),
        node_addrs: m.node_addrs.clone(),
        admin_tables: m.admin_tables.clone(),
        next_ruleset_id: m.next_ruleset_id,
        node_self: m.node_self,
        writes: 0,
        peer_capacity: None,
    }
}

/// Restart: an agent adopts the maps, and the client's new rule set does not fit, so the
/// client keeps its last state (the earlier run's set, and the earlier run's counter base
/// for it). The new run's counter blocks must not name that base's slots as other rules:
/// position 1 of the client's kept set is `a egress[0]`.
#[test]
fn attack11b_adopted_pod_kept_on_last_state_is_not_misnamed() {
    let client = Ipv4Addr::from(CLIENT4);
    let mut st = base();
    set_policy(&mut st, "a", CLIENT_EGRESS_Y);
    let mut pr = Programmer::new(MemoryMaps::default(), sizes::COUNTERS);
    let none = BTreeMap::new();
    let plan = compile(&st, "n1");
    pr.apply(&plan, &none).expect("apply");
    let key = netpol_agent::program::addr_of(IpAddr::V4(client));
    let old = pr.maps().endpoints[&key];
    assert_ne!(old.egress_rules, 0);

    // The restart.
    let mut maps = copy(pr.maps());
    let entries = maps.cidr.len() + maps.by_identity.len();
    maps.peer_capacity = Some(entries);
    let mut pr = Programmer::new(maps, sizes::COUNTERS);
    pr.adopt().expect("adopt");
    // A policy first in order adds a rule (a new set, which does not fit).
    set_policy(&mut st, "0first", CLIENT_EGRESS_Y4B);
    let plan = compile(&st, "n1");
    let stats = pr.apply(&plan, &none).expect("apply");
    assert!(
        !stats.overflowed.is_empty(),
        "the client overflowed (else this test proves less)"
    );
    let kept = pr.maps().endpoints[&key];
    assert_eq!(kept.egress_set, old.egress_set, "kept on its last state");
    let names = pr.rule_names();
    let named = names.get(&kept.egress_rules).map(|r| r.to_string());
    assert!(
        kept.egress_rules == 0 || named.as_deref() == Some("default/a egress[0]"),
        "the kept set's position 1 (a egress[0]) is counted in slot {} named {named:?}; all names: {:?}",
        kept.egress_rules,
        names
            .iter()
            .map(|(k, v)| (*k, v.to_string()))
            .collect::<Vec<_>>()
    );
}
