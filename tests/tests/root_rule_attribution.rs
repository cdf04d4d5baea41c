//! Per-rule attribution in the BPF programs (BPF_PROG_TEST_RUN on crafted packets;
//! **needs root**): an allowed connection's packets are counted on the rule that allowed
//! it, at the opening and every packet after (full and established paths), its verdict
//! event names that rule, the rule named is the one `Plan::rule_for` names when several
//! allow, and a connection whose rules change is counted on the rule that allows it now.
//!
//! Each test runs in a network namespace of its own thread with veth pairs; nothing
//! leaves it.

use std::collections::BTreeMap;

use netpol_agent::state::Protocol;
use netpol_tests::lab::*;

/// `a` allows 10.2.0.0/16 TCP 80; `b` allows 10.2.0.0/16 on every port. Port 80 is
/// named by `a` (first in policy order), any other port by `b`.
const A_PORT_80: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}]}, {"to": [{"ipBlock": {"cidr": "10.2.0.0/16"}}], "ports": [{"port": 80}]}]}"#;
const B_ALL_PORTS: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"ipBlock": {"cidr": "10.2.0.0/16"}}]}]}"#;

fn lab_with(policies: &[(&str, &str)], events: EventOptions) -> (Lab, u32) {
    let i = netns(&["vc"]);
    let mut st = base();
    for (name, spec) in policies {
        set_policy(&mut st, name, spec);
    }
    let lab = Lab::with_events(
        st,
        &[("client", i[0])],
        &[v4a(NODE4), v4a(UPLINK4)],
        AttachMode::Auto,
        events,
    );
    (lab, i[0])
}

#[test]
fn root_rules_count_every_packet_of_the_connections_they_allowed() {
    let (mut lab, vc) = lab_with(
        &[("a", A_PORT_80), ("b", B_ALL_PORTS)],
        EventOptions {
            kind: EventKind::Allow,
            per_second: 100,
            ..Default::default()
        },
    );
    // Port 80: opening (full path), first reply (full path, unreplied entry), then data
    // both ways (established path).
    assert_eq!(
        lab.run(
            Hook::FromPod,
            vc,
            &v4(CLIENT4, Y4, TCP, &tcp(40000, 80, SYN))
        ),
        PASS
    );
    assert_eq!(
        lab.run(
            Hook::ToPod,
            vc,
            &v4(Y4, CLIENT4, TCP, &tcp(80, 40000, SYN | ACK))
        ),
        PASS
    );
    for _ in 0..3 {
        assert_eq!(
            lab.run(
                Hook::FromPod,
                vc,
                &v4(CLIENT4, Y4, TCP, &tcp(40000, 80, ACK))
            ),
            PASS
        );
        assert_eq!(
            lab.run(Hook::ToPod, vc, &v4(Y4, CLIENT4, TCP, &tcp(80, 40000, ACK))),
            PASS
        );
    }
    // Port 443: only `b` allows it.
    assert_eq!(
        lab.run(
            Hook::FromPod,
            vc,
            &v4(CLIENT4, Y4, TCP, &tcp(40001, 443, SYN))
        ),
        PASS
    );
    // Denied: counted on no rule.
    assert_eq!(
        lab.run(
            Hook::FromPod,
            vc,
            &v4(CLIENT4, Y4B, TCP, &tcp(40002, 80, SYN))
        ),
        DROP
    );
    assert_eq!(
        lab.rule_packets(),
        BTreeMap::from([
            ("default/a egress[1]".to_string(), 8),
            ("default/b egress[0]".to_string(), 1),
        ])
    );
    let events = lab.drain_events();
    let named = lab.named_events(&events);
    assert_eq!(
        named,
        vec![
            (
                "allow_policy".to_string(),
                Some("default/a egress[1]".to_string())
            ),
            (
                "allow_policy".to_string(),
                Some("default/b egress[0]".to_string())
            ),
            ("drop_egress".to_string(), None),
        ]
    );
}

#[test]
fn root_rules_the_programs_name_are_the_plans() {
    let (mut lab, vc) = lab_with(
        &[("a", A_PORT_80), ("b", B_ALL_PORTS)],
        EventOptions {
            kind: EventKind::Allow,
            per_second: 100,
            ..Default::default()
        },
    );
    let plan = netpol_agent::compile::compile(&lab.state, "n1");
    let client = plan
        .endpoints
        .iter()
        .find(|e| e.pod.name == "client")
        .expect("client");
    assert!(client.egress.is_some(), "isolated");
    let ports = [79u16, 80, 81, 443];
    for (i, port) in ports.iter().enumerate() {
        let sport = 42000 + i as u16;
        let syn = v4(CLIENT4, Y4, TCP, &tcp(sport, *port, SYN));
        assert_eq!(lab.run(Hook::FromPod, vc, &syn), PASS, "port {port}");
    }
    let events = lab.drain_events();
    let from_programs: Vec<Option<String>> = lab
        .named_events(&events)
        .into_iter()
        .map(|(_, rule)| rule)
        .collect();
    let from_plan: Vec<Option<String>> = ports
        .iter()
        .map(|port| {
            let egress = netpol_agent::compile::Direction::Egress;
            plan.rule_for(client, egress, v4a(Y4), Protocol::Tcp, *port)
                .map(|r| r.to_string())
        })
        .collect();
    assert_eq!(from_programs, from_plan);
    assert_eq!(
        from_plan,
        [
            Some("default/b egress[0]".to_string()),
            Some("default/a egress[1]".to_string()),
            Some("default/b egress[0]".to_string()),
            Some("default/b egress[0]".to_string()),
        ]
    );
}

#[test]
fn root_rules_a_connection_moves_to_the_rule_that_allows_it_now() {
    let (mut lab, vc) = lab_with(
        &[("a", A_PORT_80), ("b", B_ALL_PORTS)],
        EventOptions::default(),
    );
    lab.open_tcp_80(vc, Y4, 41000);
    let before = lab.rule_packets();
    assert_eq!(before.keys().collect::<Vec<_>>(), ["default/a egress[1]"]);
    // `a` goes: the connection is decided again at its next packet, now by `b`.
    lab.state
        .policies
        .remove(&netpol_agent::state::ObjectRef::new("default", "a"));
    lab.apply();
    for _ in 0..2 {
        assert_eq!(
            lab.run(
                Hook::FromPod,
                vc,
                &v4(CLIENT4, Y4, TCP, &tcp(41000, 80, ACK))
            ),
            PASS
        );
    }
    assert_eq!(
        lab.rule_packets(),
        BTreeMap::from([("default/b egress[0]".to_string(), 2)]),
        "a's id is released with its entries; b counts what it allows now"
    );
}
