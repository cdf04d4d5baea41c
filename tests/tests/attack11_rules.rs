//! Attack 11: per-rule attribution (rule-tagged port ranges, rule ids, rule counters),
//! audit-mode annotations and audit <-> enforce switches with live connections. The
//! `root_` tests run the BPF programs with BPF_PROG_TEST_RUN on crafted packets (**needs
//! root**); the others only compile. Tests assert the correct behaviour: those that fail
//! expose a bug.

use std::collections::BTreeMap;

use netpol_agent::compile::compile;
use netpol_tests::lab::*;

/// Client egress policy with one rule per port: each rule allows 10.2.0.0/16 on one TCP
/// port.
fn one_rule_per_port(ports: impl Iterator<Item = u16>) -> String {
    let rules: Vec<String> = ports
        .map(|p| {
            format!(r#"{{"to": [{{"ipBlock": {{"cidr": "10.2.0.0/16"}}}}], "ports": [{{"port": {p}}}]}}"#)
        })
        .collect();
    format!(
        r#"{{"podSelector": {{"matchLabels": {{"app": "client"}}}}, "policyTypes": ["Egress"], "egress": [{}]}}"#,
        rules.join(",")
    )
}

/// One rule with all these ports.
fn one_rule_all_ports(ports: impl Iterator<Item = u16>) -> String {
    let ports: Vec<String> = ports.map(|p| format!(r#"{{"port": {p}}}"#)).collect();
    format!(
        r#"{{"podSelector": {{"matchLabels": {{"app": "client"}}}}, "policyTypes": ["Egress"],
            "egress": [{{"to": [{{"ipBlock": {{"cidr": "10.2.0.0/16"}}}}], "ports": [{}]}}]}}"#,
        ports.join(",")
    )
}

const B_ALL_PORTS: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"ipBlock": {"cidr": "10.2.0.0/16"}}]}]}"#;

fn client_ep(plan: &netpol_agent::compile::Plan) -> &netpol_agent::compile::PlannedEndpoint {
    plan.endpoints
        .iter()
        .find(|e| e.pod.name == "client")
        .expect("client")
}

const EGRESS: netpol_agent::compile::Direction = netpol_agent::compile::Direction::Egress;

fn client_egress(plan: &netpol_agent::compile::Plan) -> netpol_agent::compile::RuleSetRef {
    plan.endpoints
        .iter()
        .find(|e| e.pod.name == "client")
        .expect("client")
        .egress
        .expect("isolated")
}

// ---- more than 16 ranges per peer, because of rule tags -----------------------------------

/// 17 rules of policy `a` each allow one (distinct, non-adjacent) port to 10.2.0.0/16,
/// and policy `b` allows 10.2.0.0/16 on every port. Spec: every port to 10.2.0.0/16 is
/// allowed (b). Before per-rule attribution the peer's ports were "all" (one entry);
/// now a's 17 ranges are kept for naming and the peer is denied entirely.
#[test]
fn attack11_overflow_with_an_every_port_rule_denies_everything() {
    let mut st = base();
    set_policy(
        &mut st,
        "a",
        &one_rule_per_port((0..17).map(|i| 1000 + 2 * i)),
    );
    set_policy(&mut st, "b", B_ALL_PORTS);
    let plan = compile(&st, "n1");
    let set = client_egress(&plan);
    assert!(
        plan.allows(set, v4a(Y4), Protocol::Tcp, 80),
        "b allows every port to 10.2.0.0/16; errors: {:?}",
        plan.errors
    );
    assert!(plan.allows(set, v4a(Y4), Protocol::Tcp, 1000));
}

/// 17 rules each allow one port of 1000..=1016 (adjacent): the same ports in one rule
/// are one range; split by rule they are 17 and the peer is denied.
#[test]
fn attack11_overflow_adjacent_ports_of_different_rules_deny_the_peer() {
    let mut st = base();
    set_policy(&mut st, "one", &one_rule_all_ports(1000..=1016));
    let plan = compile(&st, "n1");
    assert!(plan.errors.is_empty(), "one rule: {:?}", plan.errors);
    assert!(plan.allows(client_egress(&plan), v4a(Y4), Protocol::Tcp, 1005));

    let mut st = base();
    set_policy(&mut st, "split", &one_rule_per_port(1000..=1016));
    let plan = compile(&st, "n1");
    assert!(
        plan.allows(client_egress(&plan), v4a(Y4), Protocol::Tcp, 1005),
        "the same ports, one rule each; errors: {:?}",
        plan.errors
    );
}

/// The datapath of the first case: a SYN to 10.2.0.5:80 must pass.
#[test]
fn root_attack11_overflow_with_an_every_port_rule_drops_in_the_datapath() {
    let i = netns(&["vc"]);
    let mut st = base();
    set_policy(
        &mut st,
        "a",
        &one_rule_per_port((0..17).map(|i| 1000 + 2 * i)),
    );
    set_policy(&mut st, "b", B_ALL_PORTS);
    let mut lab = Lab::new(base(), &[("client", i[0])], &[v4a(NODE4), v4a(UPLINK4)]);
    lab.state = st;
    let plan = compile(&lab.state, "n1");
    lab.pr.apply(&plan, &lab.veths).expect("program maps");
    let v = lab.run(
        Hook::FromPod,
        i[0],
        &v4(CLIENT4, Y4, TCP, &tcp(40000, 80, SYN)),
    );
    assert_eq!(
        show(v),
        "PASS",
        "policy b allows every port to 10.2.0.0/16; plan errors: {:?}",
        plan.errors
    );
}

// ---- what holds -----------------------------------------------------------------------

/// 16 ranges (the limit) still fit with an every-port rule after them.
#[test]
fn attack11_sixteen_ranges_fit() {
    let mut st = base();
    set_policy(
        &mut st,
        "a",
        &one_rule_per_port((0..16).map(|i| 1000 + 2 * i)),
    );
    set_policy(&mut st, "b", B_ALL_PORTS);
    let plan = compile(&st, "n1");
    assert!(plan.errors.is_empty(), "{:?}", plan.errors);
    let set = client_egress(&plan);
    assert!(plan.allows(set, v4a(Y4), Protocol::Tcp, 80));
    assert_eq!(
        plan.rule_for(client_ep(&plan), EGRESS, v4a(Y4), Protocol::Tcp, 1002)
            .map(|r| r.to_string())
            .as_deref(),
        Some("default/a egress[1]")
    );
}

/// Except holes stay holes whatever the rules' port ranges and tags: two rules with the
/// same block and except on adjacent/overlapping ports, and a third block rule that
/// contains the hole on other ports.
#[test]
fn attack11_except_hole_survives_tag_splitting() {
    let mut st = base();
    set_policy(
        &mut st,
        "a",
        r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
          "egress": [
            {"to": [{"ipBlock": {"cidr": "10.2.0.0/16", "except": ["10.2.0.0/24"]}}], "ports": [{"port": 80, "endPort": 90}]},
            {"to": [{"ipBlock": {"cidr": "10.2.0.0/16", "except": ["10.2.0.0/25"]}}], "ports": [{"port": 85, "endPort": 100}]},
            {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 443}]}
          ]}"#,
    );
    let plan = compile(&st, "n1");
    assert!(plan.errors.is_empty(), "{:?}", plan.errors);
    let set = client_egress(&plan);
    let hole = v4a([10, 2, 0, 5]);
    let half = v4a([10, 2, 0, 200]); // in a's first except, not its second
    let open = v4a([10, 2, 1, 5]);
    for port in [80u16, 84, 85, 90, 100] {
        assert!(!plan.allows(set, hole, Protocol::Tcp, port), "hole {port}");
    }
    assert!(plan.allows(set, hole, Protocol::Tcp, 443));
    assert!(!plan.allows(set, half, Protocol::Tcp, 84));
    assert_eq!(
        plan.rule_for(client_ep(&plan), EGRESS, half, Protocol::Tcp, 85)
            .map(|r| r.to_string())
            .as_deref(),
        Some("default/a egress[1]")
    );
    assert_eq!(
        plan.rule_for(client_ep(&plan), EGRESS, open, Protocol::Tcp, 85)
            .map(|r| r.to_string())
            .as_deref(),
        Some("default/a egress[0]")
    );
    assert!(!plan.allows(set, open, Protocol::Tcp, 101));
}

/// The same in the datapath (hole, half-hole, open), with the rule each allow is
/// counted on.
#[test]
fn root_attack11_except_hole_in_the_datapath() {
    let i = netns(&["vc"]);
    let mut st = base();
    set_policy(
        &mut st,
        "a",
        r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
          "egress": [
            {"to": [{"ipBlock": {"cidr": "10.2.0.0/16", "except": ["10.2.0.0/24"]}}], "ports": [{"port": 80, "endPort": 90}]},
            {"to": [{"ipBlock": {"cidr": "10.2.0.0/16", "except": ["10.2.0.0/25"]}}], "ports": [{"port": 85, "endPort": 100}]},
            {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 443}]}
          ]}"#,
    );
    let mut lab = Lab::new(st, &[("client", i[0])], &[v4a(NODE4), v4a(UPLINK4)]);
    let vc = i[0];
    let mut sport = 40000;
    let mut send = |lab: &mut Lab, dst: [u8; 4], port: u16| {
        sport += 1;
        lab.run(
            Hook::FromPod,
            vc,
            &v4(CLIENT4, dst, TCP, &tcp(sport, port, SYN)),
        )
    };
    for port in [80, 84, 85, 90, 100] {
        assert_eq!(
            show(send(&mut lab, [10, 2, 0, 5], port)),
            "DROP",
            "hole {port}"
        );
    }
    assert_eq!(show(send(&mut lab, [10, 2, 0, 5], 443)), "PASS");
    assert_eq!(show(send(&mut lab, [10, 2, 0, 200], 84)), "DROP");
    assert_eq!(show(send(&mut lab, [10, 2, 0, 200], 85)), "PASS");
    assert_eq!(show(send(&mut lab, [10, 2, 1, 5], 85)), "PASS");
    assert_eq!(show(send(&mut lab, [10, 2, 1, 5], 101)), "DROP");
    assert_eq!(
        lab.rule_packets(),
        BTreeMap::from([
            ("default/a egress[0]".to_string(), 1),
            ("default/a egress[1]".to_string(), 1),
            ("default/a egress[2]".to_string(), 1),
        ])
    );
}

/// Rule ids reused: policy `a` allows a connection (counted), is deleted and `c` (same
/// spec, another name) created; c's id is a's old one. c's counter starts at 0 and only
/// counts what it allows from then on; the old connection's stale rule id never counts
/// on c without being decided again.
#[test]
fn root_attack11_rule_id_reuse_starts_from_zero() {
    let i = netns(&["vc"]);
    let vc = i[0];
    let mut st = base();
    set_policy(&mut st, "a", CLIENT_EGRESS_Y);
    let mut lab = Lab::new(st, &[("client", vc)], &[v4a(NODE4), v4a(UPLINK4)]);
    lab.open_tcp_80(vc, Y4, 41000);
    for _ in 0..3 {
        assert_eq!(
            lab.run(
                Hook::FromPod,
                vc,
                &v4(CLIENT4, Y4, TCP, &tcp(41000, 80, ACK))
            ),
            PASS
        );
    }
    let a_ids: Vec<u32> = lab.pr.rule_names().keys().copied().collect();
    assert_eq!(lab.rule_packets().values().sum::<u64>(), 5);
    del_policy(&mut lab.state, "a");
    lab.apply();
    assert!(lab.pr.rule_names().is_empty(), "a's ids released");
    set_policy(&mut lab.state, "c", CLIENT_EGRESS_Y);
    lab.apply();
    let c_ids: Vec<u32> = lab.pr.rule_names().keys().copied().collect();
    assert_eq!(
        a_ids, c_ids,
        "the id is reused (else this test proves less)"
    );
    assert_eq!(lab.rule_packets(), BTreeMap::new(), "c starts from 0");
    // A 10.2.0.0/16 connection is allowed by c too: decided again, counted on c.
    assert_eq!(
        lab.run(
            Hook::FromPod,
            vc,
            &v4(CLIENT4, Y4, TCP, &tcp(41000, 80, ACK))
        ),
        PASS
    );
    assert_eq!(
        lab.rule_packets(),
        BTreeMap::from([("default/c egress[0]".to_string(), 1)])
    );
    // Then c goes too and d allows nothing to 10.2: the connection is revoked, and
    // nothing is counted on whatever rule reuses the id.
    del_policy(&mut lab.state, "c");
    set_policy(&mut lab.state, "d", CLIENT_EGRESS_Y_REVOKED);
    lab.apply();
    assert_eq!(
        lab.run(
            Hook::FromPod,
            vc,
            &v4(CLIENT4, Y4, TCP, &tcp(41000, 80, ACK))
        ),
        DROP
    );
    assert_eq!(lab.rule_packets(), BTreeMap::new());
}

// ---- audit <-> enforce with live connections --------------------------------------------

/// A connection opened while only an audit policy selected the client (tracked, an audit
/// finding) is dropped on both paths as soon as the policy is enforced; back in audit
/// mode, it passes again.
#[test]
fn root_attack11_audit_enforce_audit_revokes_live_connections() {
    let i = netns(&["vc"]);
    let vc = i[0];
    let mut st = base();
    set_policy_mode(&mut st, "p", CLIENT_EGRESS_Y, Some("audit"));
    let mut lab = Lab::new(st, &[("client", vc)], &[v4a(NODE4), v4a(UPLINK4)]);
    let id = lab.id("client");
    // To 10.3.0.5 (outside what p allows): passes, a finding.
    lab.verdict(
        "SYN",
        Hook::FromPod,
        vc,
        &v4(CLIENT4, Y4B, TCP, &tcp(40000, 80, SYN)),
        PASS,
    );
    assert_eq!(lab.counters(id)[reason::AUDIT_EGRESS], 1);
    lab.verdict(
        "SYN-ACK",
        Hook::ToPod,
        vc,
        &v4(Y4B, CLIENT4, TCP, &tcp(80, 40000, SYN | ACK)),
        PASS,
    );
    // A UDP flow too, replied (established path afterwards).
    lab.verdict(
        "udp",
        Hook::FromPod,
        vc,
        &v4(CLIENT4, Y4B, UDP, &udp(5000, 53)),
        PASS,
    );
    lab.verdict(
        "udp reply",
        Hook::ToPod,
        vc,
        &v4(Y4B, CLIENT4, UDP, &udp(53, 5000)),
        PASS,
    );
    for _ in 0..2 {
        lab.verdict(
            "data",
            Hook::FromPod,
            vc,
            &v4(CLIENT4, Y4B, TCP, &tcp(40000, 80, ACK)),
            PASS,
        );
        lab.verdict(
            "data back",
            Hook::ToPod,
            vc,
            &v4(Y4B, CLIENT4, TCP, &tcp(80, 40000, ACK)),
            PASS,
        );
        lab.verdict(
            "udp",
            Hook::FromPod,
            vc,
            &v4(CLIENT4, Y4B, UDP, &udp(5000, 53)),
            PASS,
        );
    }
    // Enforced ("enforce").
    set_policy_mode(&mut lab.state, "p", CLIENT_EGRESS_Y, Some("enforce"));
    lab.apply();
    lab.verdict(
        "reply after enforce",
        Hook::ToPod,
        vc,
        &v4(Y4B, CLIENT4, TCP, &tcp(80, 40000, ACK)),
        DROP,
    );
    lab.verdict(
        "data after enforce",
        Hook::FromPod,
        vc,
        &v4(CLIENT4, Y4B, TCP, &tcp(40000, 80, ACK)),
        DROP,
    );
    lab.verdict(
        "udp reply after enforce",
        Hook::ToPod,
        vc,
        &v4(Y4B, CLIENT4, UDP, &udp(53, 5000)),
        DROP,
    );
    lab.verdict(
        "udp after enforce",
        Hook::FromPod,
        vc,
        &v4(CLIENT4, Y4B, UDP, &udp(5000, 53)),
        DROP,
    );
    // Back to audit: passes, and it is a new opening (a finding again).
    let before = lab.counters(id)[reason::AUDIT_EGRESS];
    set_policy_mode(&mut lab.state, "p", CLIENT_EGRESS_Y, Some("audit"));
    lab.apply();
    lab.verdict(
        "udp after audit again",
        Hook::FromPod,
        vc,
        &v4(CLIENT4, Y4B, UDP, &udp(5000, 53)),
        PASS,
    );
    assert_eq!(lab.counters(id)[reason::AUDIT_EGRESS], before + 1);
    let c = lab.counters(id);
    assert_eq!(c[reason::DROP_EGRESS], 4);
}

/// The same for the ingress side: the server's audit ingress policy, a remote client.
#[test]
fn root_attack11_audit_to_enforce_revokes_ingress() {
    let i = netns(&["vs"]);
    let vs = i[0];
    let spec = r#"{"podSelector": {"matchLabels": {"app": "server"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "other"}}}]}]}"#;
    let mut st = base();
    set_policy_mode(&mut st, "p", spec, Some("audit"));
    let mut lab = Lab::new(st, &[("server", vs)], &[v4a(NODE4), v4a(UPLINK4)]);
    lab.verdict(
        "SYN in",
        Hook::ToPod,
        vs,
        &v4(Y4, SERVER4, TCP, &tcp(40000, 80, SYN)),
        PASS,
    );
    assert_eq!(lab.counters(lab.id("server"))[reason::AUDIT_INGRESS], 1);
    lab.verdict(
        "SYN-ACK",
        Hook::FromPod,
        vs,
        &v4(SERVER4, Y4, TCP, &tcp(80, 40000, SYN | ACK)),
        PASS,
    );
    lab.verdict(
        "ACK",
        Hook::ToPod,
        vs,
        &v4(Y4, SERVER4, TCP, &tcp(40000, 80, ACK)),
        PASS,
    );
    lab.verdict(
        "data",
        Hook::FromPod,
        vs,
        &v4(SERVER4, Y4, TCP, &tcp(80, 40000, ACK)),
        PASS,
    );
    set_policy_mode(&mut lab.state, "p", spec, None);
    lab.apply();
    lab.verdict(
        "ACK after",
        Hook::ToPod,
        vs,
        &v4(Y4, SERVER4, TCP, &tcp(40000, 80, ACK)),
        DROP,
    );
    // (The server's egress is not isolated: what it sends now is its own opening.)
    lab.verdict(
        "SYN again",
        Hook::ToPod,
        vs,
        &v4(Y4, SERVER4, TCP, &tcp(40000, 80, SYN)),
        DROP,
    );
}

/// IPv6: an audit egress finding, and enforce drops.
#[test]
fn root_attack11_audit_ipv6() {
    let i = netns(&["vc"]);
    let vc = i[0];
    let mut st = base();
    set_policy_mode(&mut st, "p", CLIENT_EGRESS_Y, Some("audit"));
    let mut lab = Lab::new(st, &[("client", vc)], &[v4a(NODE4), v4a(UPLINK4)]);
    let id = lab.id("client");
    let out = v6(client6(), ip6("fd00:3::5"), TCP, 64, &tcp(40000, 80, SYN));
    let ok = v6(client6(), ip6("fd00:2::5"), TCP, 64, &tcp(40001, 80, SYN));
    lab.verdict("v6 outside", Hook::FromPod, vc, &out, PASS);
    lab.verdict("v6 inside", Hook::FromPod, vc, &ok, PASS);
    assert_eq!(lab.counters(id)[reason::AUDIT_EGRESS], 1);
    lab.verdict(
        "reply",
        Hook::ToPod,
        vc,
        &v6(
            ip6("fd00:3::5"),
            client6(),
            TCP,
            64,
            &tcp(80, 40000, SYN | ACK),
        ),
        PASS,
    );
    set_policy_mode(&mut lab.state, "p", CLIENT_EGRESS_Y, None);
    lab.apply();
    lab.verdict(
        "v6 data after enforce",
        Hook::FromPod,
        vc,
        &v6(client6(), ip6("fd00:3::5"), TCP, 64, &tcp(40000, 80, ACK)),
        DROP,
    );
}

// ---- annotation values ------------------------------------------------------------------

/// Anything but exactly `audit` enforces (and is reported, except `enforce`); `audit`
/// isolates nothing.
#[test]
fn attack11_mode_annotation_values() {
    for (mode, audited, error) in [
        (Some("audit"), true, false),
        (Some("enforce"), false, false),
        (None, false, false),
        (Some("Audit"), false, true),
        (Some("AUDIT"), false, true),
        (Some(" audit"), false, true),
        (Some("audit "), false, true),
        (Some(""), false, true),
        (Some("audit\n"), false, true),
        (Some("dry-run"), false, true),
    ] {
        let mut st = base();
        set_policy_mode(&mut st, "p", CLIENT_EGRESS_Y, mode);
        let plan = compile(&st, "n1");
        let client = plan
            .endpoints
            .iter()
            .find(|e| e.pod.name == "client")
            .unwrap();
        assert_eq!(client.egress.is_none(), audited, "{mode:?}: enforced?");
        assert_eq!(client.audit.egress.is_some(), audited, "{mode:?}: audited?");
        assert_eq!(
            !plan.errors.is_empty(),
            error,
            "{mode:?}: {:?}",
            plan.errors
        );
        if !audited {
            let set = client.egress.unwrap();
            assert!(!plan.allows(set, v4a(Y4B), Protocol::Tcp, 80), "{mode:?}");
        }
    }
}

/// An audit policy beside enforced ones never changes a verdict: egress enforced, audit
/// on ingress (and on egress with more), with every pair of ports/peers checked.
#[test]
fn attack11_audit_never_changes_enforced_sets() {
    let audit_in = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.3.0.0/16"}}]}],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.3.0.0/16"}}], "ports": [{"port": 80}]}]}"#;
    let mut with = base();
    set_policy(&mut with, "e", CLIENT_EGRESS_Y);
    set_policy_mode(&mut with, "z-audit", audit_in, Some("audit"));
    let mut without = base();
    set_policy(&mut without, "e", CLIENT_EGRESS_Y);
    let (pw, po) = (compile(&with, "n1"), compile(&without, "n1"));
    let cw = pw
        .endpoints
        .iter()
        .find(|e| e.pod.name == "client")
        .unwrap();
    let co = po
        .endpoints
        .iter()
        .find(|e| e.pod.name == "client")
        .unwrap();
    assert!(cw.ingress.is_none() && co.ingress.is_none());
    for peer in [Y4, Y4B, SERVER4, [10, 3, 7, 7]] {
        for port in [53u16, 79, 80, 81, 443, 8080] {
            for proto in [Protocol::Tcp, Protocol::Udp] {
                assert_eq!(
                    pw.allows(cw.egress.unwrap(), v4a(peer), proto, port),
                    po.allows(co.egress.unwrap(), v4a(peer), proto, port),
                    "{peer:?} {proto:?} {port}"
                );
                assert_eq!(
                    pw.rule_for(cw, EGRESS, v4a(peer), proto, port)
                        .map(|r| r.to_string()),
                    po.rule_for(co, EGRESS, v4a(peer), proto, port)
                        .map(|r| r.to_string()),
                );
            }
        }
    }
}
