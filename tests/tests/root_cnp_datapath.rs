//! ClusterNetworkPolicy in the BPF programs (BPF_PROG_TEST_RUN on crafted packets;
//! **needs root**): the Admin tier decides before NetworkPolicy, Pass hands over to it,
//! NetworkPolicy's own-node exemption comes after the Admin tier, a tracked connection
//! whose rule turns to Deny is cut at its next packet, and drop events and rule counters
//! name the ClusterNetworkPolicy rule that decided.
//!
//! Each test runs in a network namespace of its own thread with veth pairs; nothing
//! leaves it.

use netpol_agent::state::ClusterState;
use netpol_common::reason;
use netpol_tests::cnp_fixtures::{add_cnp, pods_with_app};
use netpol_tests::lab::*;
use serde_json::Value;

/// Adds (or replaces) ClusterNetworkPolicy `name` whose subject is the `client` pods;
/// `rules`: its `ingress`/`egress` members, as JSON.
fn set_cnp(s: &mut ClusterState, name: &str, tier: &str, priority: i64, rules: &str) {
    let mut spec: Value = serde_json::from_str(&format!("{{{rules}}}"))
        .unwrap_or_else(|e| panic!("{name}: {e}: {rules}"));
    spec["subject"] = pods_with_app("client");
    add_cnp(s, name, tier, priority, spec);
}

fn client_lab(st: ClusterState) -> (Lab, u32) {
    let i = netns(&["vc"]);
    let lab = Lab::with_events(
        st,
        &[("client", i[0])],
        &[v4a(NODE4), v4a(UPLINK4)],
        AttachMode::Auto,
        EventOptions {
            kind: EventKind::Allow,
            per_second: 1000,
            ..Default::default()
        },
    );
    (lab, i[0])
}

const DENY_Y_80: &str = r#""egress": [{"name": "no-y-web", "action": "Deny", "to": [{"networks": ["10.2.0.0/16"]}],
    "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}]"#;

#[test]
fn root_cnp_admin_deny_beats_a_network_policy_allow_and_names_its_rule() {
    let mut st = base();
    set_policy(&mut st, "y", CLIENT_EGRESS_Y);
    set_cnp(&mut st, "guard", "Admin", 5, DENY_Y_80);
    let (mut lab, vc) = client_lab(st);
    let syn = |to, port| v4(CLIENT4, to, TCP, &tcp(40000, port, SYN));
    lab.expect(
        "Admin Deny before NetworkPolicy's allow",
        Hook::FromPod,
        vc,
        &syn(Y4, 80),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    lab.expect(
        "another port: NetworkPolicy allows",
        Hook::FromPod,
        vc,
        &syn(Y4, 8080),
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
    lab.expect(
        "what NetworkPolicy does not allow stays denied",
        Hook::FromPod,
        vc,
        &syn(Y4B, 8080),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    let events = lab.drain_events();
    let got = lab.named_events(&events);
    assert_eq!(
        got,
        vec![
            (
                "drop_egress".to_string(),
                Some("ClusterNetworkPolicy guard (Admin tier) egress[0]".to_string())
            ),
            (
                "allow_policy".to_string(),
                Some("default/y egress[0]".to_string())
            ),
            (
                "drop_egress".to_string(),
                Some("default/y egress default deny".to_string())
            ),
        ]
    );
}

#[test]
fn root_cnp_pass_hands_over_and_accept_overrides_isolation() {
    let mut st = base();
    set_policy(&mut st, "y", CLIENT_EGRESS_Y);
    set_cnp(
        &mut st,
        "tiers",
        "Admin",
        5,
        r#""egress": [
            {"name": "y-to-np", "action": "Pass", "to": [{"networks": ["10.2.0.0/16"]}]},
            {"name": "y-b-ok", "action": "Accept", "to": [{"networks": ["10.3.0.0/16"]}]},
            {"name": "rest", "action": "Deny", "to": [{"networks": ["10.0.0.0/8"]}]}]"#,
    );
    let (mut lab, vc) = client_lab(st);
    let syn = |to, port| v4(CLIENT4, to, TCP, &tcp(40001, port, SYN));
    // Pass: NetworkPolicy decides (80 allowed, 443 not), not the later Deny.
    lab.verdict(
        "Pass, NetworkPolicy allows",
        Hook::FromPod,
        vc,
        &syn(Y4, 80),
        PASS,
    );
    lab.verdict(
        "Pass, NetworkPolicy denies",
        Hook::FromPod,
        vc,
        &syn(Y4, 443),
        DROP,
    );
    // Accept: past NetworkPolicy's isolation, on any port, and its replies pass.
    lab.verdict("Accept", Hook::FromPod, vc, &syn(Y4B, 443), PASS);
    lab.expect(
        "the reply of an accepted connection",
        Hook::ToPod,
        vc,
        &v4(Y4B, CLIENT4, TCP, &tcp(443, 40001, SYN | ACK)),
        PASS,
        "client",
        Some(reason::ALLOW_TRACKED),
    );
    assert_eq!(
        lab.rule_packets()
            .get("ClusterNetworkPolicy tiers (Admin tier) egress[1]"),
        Some(&2),
        "{:?}",
        lab.rule_packets()
    );
}

#[test]
fn root_cnp_own_node_exemption_comes_after_the_admin_tier() {
    let mut st = base();
    set_policy(&mut st, "in", CLIENT_INGRESS_NONE);
    set_policy(&mut st, "out", CLIENT_EGRESS_NONE);
    // A Baseline rule makes both directions ordered; it never matches the node.
    set_cnp(
        &mut st,
        "baseline",
        "Baseline",
        1,
        r#""ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"none": "x"}}}]}],
           "egress": [{"action": "Deny", "to": [{"networks": ["192.0.2.0/24"]}]}]"#,
    );
    let (mut lab, vc) = client_lab(st.clone());
    let probe = v4(NODE4, CLIENT4, TCP, &tcp(50000, 8080, SYN));
    lab.verdict(
        "kubelet probe to an isolated pod",
        Hook::ToPod,
        vc,
        &probe,
        PASS,
    );
    let to_node = v4(CLIENT4, NODE4, TCP, &tcp(40002, 10250, SYN));
    lab.verdict("pod to its own node", Hook::FromPod, vc, &to_node, PASS);
    drop(lab);

    // An Admin rule that matches the node decides for it.
    set_cnp(
        &mut st,
        "no-node",
        "Admin",
        1,
        r#""egress": [{"action": "Deny", "to": [{"networks": ["10.1.0.1/32"]}]}]"#,
    );
    let (mut lab, vc) = client_lab(st);
    let to_node = v4(CLIENT4, NODE4, TCP, &tcp(40003, 10250, SYN));
    lab.expect(
        "Admin Deny of the own node",
        Hook::FromPod,
        vc,
        &to_node,
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    lab.verdict(
        "the node's probe still comes in",
        Hook::ToPod,
        vc,
        &probe,
        PASS,
    );
}

#[test]
fn root_cnp_a_connection_is_cut_when_its_rule_turns_to_deny() {
    let mut st = base();
    set_cnp(
        &mut st,
        "flip",
        "Admin",
        5,
        r#""egress": [{"action": "Accept", "to": [{"networks": ["10.2.0.0/16"]}]}]"#,
    );
    let (mut lab, vc) = client_lab(st);
    lab.open_tcp_80(vc, Y4, 40004);
    let ack = v4(CLIENT4, Y4, TCP, &tcp(40004, 80, ACK));
    lab.verdict("established", Hook::FromPod, vc, &ack, PASS);
    set_cnp(&mut lab.state, "flip", "Admin", 5, DENY_Y_80);
    lab.apply();
    lab.expect(
        "the next packet after the Deny",
        Hook::FromPod,
        vc,
        &ack,
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    // The entry is gone: the next segment is judged as an opening, and denied again.
    lab.verdict("and the one after", Hook::FromPod, vc, &ack, DROP);
}

#[test]
fn root_cnp_ipv6_admin_deny() {
    let mut st = base();
    set_policy(&mut st, "y", CLIENT_EGRESS_Y);
    set_cnp(
        &mut st,
        "guard6",
        "Admin",
        5,
        r#""egress": [{"action": "Deny", "to": [{"networks": ["fd00:2::/64"]}]}]"#,
    );
    let (mut lab, vc) = client_lab(st);
    let syn = v6(client6(), ip6("fd00:2::5"), TCP, 64, &tcp(40005, 80, SYN));
    lab.expect(
        "IPv6: Admin Deny before NetworkPolicy's allow",
        Hook::FromPod,
        vc,
        &syn,
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}
