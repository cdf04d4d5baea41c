//! Policies in audit mode (`netpol.io/mode: audit`) in the BPF programs
//! (BPF_PROG_TEST_RUN on crafted packets; **needs root**): an opening they would drop
//! passes, counted as `audit_egress`/`audit_ingress` beside its verdict and reported as
//! an audit event, once per connection (what follows rides the tracked connection);
//! what they would allow passes unremarked; switched to enforce, they drop.
//!
//! Each test runs in a network namespace of its own thread with veth pairs; nothing
//! leaves it.

use netpol_agent::events::{History, KnownPod};
use netpol_tests::lab::*;

/// Adds policy `name` in `default`, in audit mode when `audit`.
fn set_policy_in_mode(st: &mut ClusterState, name: &str, spec: &str, audit: bool) {
    set_policy_mode(
        st,
        name,
        spec,
        Some(if audit { "audit" } else { "enforce" }),
    );
}

/// Client egress to 10.2.0.0/16 (TCP 80, 8080, UDP 53) only.
fn lab(audit: bool) -> (Lab, u32, u32) {
    let i = netns(&["vc", "vs"]);
    let mut st = base();
    set_policy_in_mode(&mut st, "staged", CLIENT_EGRESS_Y, audit);
    let lab = Lab::with_events(
        st,
        &[("client", i[0]), ("server", i[1])],
        &[v4a(NODE4), v4a(UPLINK4)],
        AttachMode::Auto,
        EventOptions::default(),
    );
    (lab, i[0], i[1])
}

#[test]
fn root_audit_a_would_be_drop_passes_and_is_counted_and_reported_once() {
    let (mut lab, vc, _) = lab(true);
    let id = lab.id("client");
    // 10.3.0.5 is outside what the staged policy allows.
    lab.verdict(
        "SYN the audit policy would drop",
        Hook::FromPod,
        vc,
        &v4(CLIENT4, Y4B, TCP, &tcp(40000, 80, SYN)),
        PASS,
    );
    lab.verdict(
        "its SYN-ACK",
        Hook::ToPod,
        vc,
        &v4(Y4B, CLIENT4, TCP, &tcp(80, 40000, SYN | ACK)),
        PASS,
    );
    for _ in 0..3 {
        lab.verdict(
            "data",
            Hook::FromPod,
            vc,
            &v4(CLIENT4, Y4B, TCP, &tcp(40000, 80, ACK)),
            PASS,
        );
    }
    // Allowed by the staged policy: no finding.
    lab.verdict(
        "SYN the audit policy allows",
        Hook::FromPod,
        vc,
        &v4(CLIENT4, Y4, TCP, &tcp(40001, 80, SYN)),
        PASS,
    );
    let c = lab.counters(id);
    assert_eq!(c[reason::AUDIT_EGRESS], 1, "one finding per connection");
    assert_eq!(c[reason::AUDIT_INGRESS], 0);
    assert_eq!(
        (reason::FIRST_DROP..reason::FIRST_AUDIT)
            .map(|r| c[r])
            .sum::<u64>(),
        0,
        "nothing dropped"
    );

    let events = lab.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    let mut h = History::new("n1");
    h.set_pods(
        [(
            id,
            KnownPod {
                name: "default/client".into(),
                audit_egress_policies: vec!["default/staged".into()],
                ..Default::default()
            },
        )]
        .into(),
    );
    h.push(&events[0], 0);
    let e = &h.page(0, 1).events[0];
    assert_eq!(
        (e.verdict.as_str(), e.reason.as_str(), e.direction.as_str()),
        ("audit", "audit_egress", "egress")
    );
    assert_eq!(e.dst.as_deref(), Some("10.3.0.5"));
}

#[test]
fn root_audit_ingress_findings_are_the_receivers() {
    let i = netns(&["vc", "vs"]);
    let mut st = base();
    set_policy_in_mode(
        &mut st,
        "server-from-other",
        r#"{"podSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "other"}}}]}]}"#,
        true,
    );
    let mut lab = Lab::new(
        st,
        &[("client", i[0]), ("server", i[1])],
        &[v4a(NODE4), v4a(UPLINK4)],
    );
    let syn = v4(CLIENT4, SERVER4, TCP, &tcp(41000, 80, SYN));
    lab.verdict("client's SYN leaves", Hook::FromPod, i[0], &syn, PASS);
    lab.verdict("and reaches the server", Hook::ToPod, i[1], &syn, PASS);
    let server = lab.counters(lab.id("server"));
    let client = lab.counters(lab.id("client"));
    assert_eq!(server[reason::AUDIT_INGRESS], 1);
    assert_eq!(
        client[reason::AUDIT_EGRESS] + client[reason::AUDIT_INGRESS],
        0
    );
}

#[test]
fn root_audit_switched_to_enforce_it_drops() {
    let (mut lab, vc, _) = lab(false);
    let id = lab.id("client");
    lab.verdict(
        "SYN the enforced policy drops",
        Hook::FromPod,
        vc,
        &v4(CLIENT4, Y4B, TCP, &tcp(40000, 80, SYN)),
        DROP,
    );
    let c = lab.counters(id);
    assert_eq!(c[reason::DROP_EGRESS], 1);
    assert_eq!(c[reason::AUDIT_EGRESS], 0);
}

#[test]
fn root_audit_changes_nothing_where_enforced_policies_isolate() {
    // Policies only add what they allow: with the direction isolated by an enforced
    // policy, an audit policy can only allow more, so it never finds a drop.
    let (mut lab, vc, _) = lab(true);
    set_policy(&mut lab.state, "enforced", CLIENT_EGRESS_Y);
    lab.apply();
    let id = lab.id("client");
    lab.verdict(
        "denied by the enforced policy",
        Hook::FromPod,
        vc,
        &v4(CLIENT4, Y4B, TCP, &tcp(40000, 80, SYN)),
        DROP,
    );
    lab.verdict(
        "allowed by it",
        Hook::FromPod,
        vc,
        &v4(CLIENT4, Y4, TCP, &tcp(40001, 80, SYN)),
        PASS,
    );
    assert_eq!(lab.counters(id)[reason::AUDIT_EGRESS], 0);
}
