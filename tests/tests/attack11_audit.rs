//! Attack 11: audit mode (`netpol.io/mode: audit`) in the BPF programs
//! (BPF_PROG_TEST_RUN on crafted packets; **needs root**). Tests assert the correct
//! behaviour: those that fail expose a bug.
//!
//! Each test runs in a network namespace of its own thread with veth pairs; nothing
//! leaves it.

use netpol_agent::compile::compile;
use netpol_tests::lab::*;

fn audit(st: &mut ClusterState, name: &str, spec: &str) {
    set_policy_mode(st, name, spec, Some("audit"));
}

/// The server's ingress, in audit mode: only from app=other.
const SERVER_FROM_OTHER: &str = r#"{"podSelector": {"matchLabels": {"app": "server"}},
    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "other"}}}]}]}"#;

/// The client may send to the server (any port).
const CLIENT_EGRESS_TO_SERVER: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}]}]}"#;

/// The client's ingress: only from app=other (the client's egress stays open).
const CLIENT_INGRESS_FROM_OTHER: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Ingress"],
  "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "other"}}}]}]}"#;

fn two_pod_lab(st: ClusterState) -> (Lab, u32, u32) {
    let i = netns(&["vc", "vs"]);
    let lab = Lab::new(
        st,
        &[("client", i[0]), ("server", i[1])],
        &[v4a(NODE4), v4a(UPLINK4)],
    );
    (lab, i[0], i[1])
}

/// Sends client -> server SYN through both veths (same node), returns the server's
/// audit_ingress count.
fn same_node_syn(lab: &mut Lab, vc: u32, vs: u32, sport: u16) -> u64 {
    let syn = v4(CLIENT4, SERVER4, TCP, &tcp(sport, 80, SYN));
    lab.verdict("client's SYN leaves", Hook::FromPod, vc, &syn, PASS);
    lab.verdict("and reaches the server", Hook::ToPod, vs, &syn, PASS);
    lab.counters(lab.id("server"))[reason::AUDIT_INGRESS]
}

// ---- what holds ------------------------------------------------------------------------

#[test]
fn root_attack11_audit_ingress_finding_with_unpoliced_sender_holds() {
    let mut st = base();
    audit(&mut st, "server-from-other", SERVER_FROM_OTHER);
    let (mut lab, vc, vs) = two_pod_lab(st);
    assert_eq!(same_node_syn(&mut lab, vc, vs, 41000), 1);
}

// ---- findings ---------------------------------------------------------------------------

/// The sender is isolated by an enforced egress policy (which allows the server), so its
/// veth tracks the connection; the server has only an audit ingress policy that would
/// refuse the client. The opening passes (correct) but must be an audit_ingress finding
/// for the server, exactly as when the sender has no policy (test above) or sits on
/// another node.
#[test]
fn root_attack11_audit_ingress_finding_missing_when_local_sender_is_isolated() {
    let mut st = base();
    set_policy(&mut st, "client-egress", CLIENT_EGRESS_TO_SERVER);
    audit(&mut st, "server-from-other", SERVER_FROM_OTHER);
    let (mut lab, vc, vs) = two_pod_lab(st);
    assert_eq!(
        same_node_syn(&mut lab, vc, vs, 41001),
        1,
        "the server's audit policy would refuse the client: one audit_ingress finding"
    );
}

/// Same, with a sender isolated for ingress only (its egress is open): any policy on the
/// sender makes its veth track the connection.
#[test]
fn root_attack11_audit_ingress_finding_missing_when_sender_has_ingress_policy() {
    let mut st = base();
    set_policy(&mut st, "client-ingress", CLIENT_INGRESS_FROM_OTHER);
    audit(&mut st, "server-from-other", SERVER_FROM_OTHER);
    let (mut lab, vc, vs) = two_pod_lab(st);
    assert_eq!(
        same_node_syn(&mut lab, vc, vs, 41002),
        1,
        "the server's audit policy would refuse the client: one audit_ingress finding"
    );
}

/// Same, with a sender that only has an audit policy (new: audited pods are tracked, so
/// this used to reach the server's veth as a new connection).
#[test]
fn root_attack11_audit_ingress_finding_missing_when_sender_is_only_audited() {
    let mut st = base();
    audit(&mut st, "client-egress-audit", CLIENT_EGRESS_TO_SERVER);
    audit(&mut st, "server-from-other", SERVER_FROM_OTHER);
    let (mut lab, vc, vs) = two_pod_lab(st);
    assert_eq!(
        same_node_syn(&mut lab, vc, vs, 41003),
        1,
        "the server's audit policy would refuse the client: one audit_ingress finding"
    );
    assert_eq!(
        lab.counters(lab.id("client"))[reason::AUDIT_EGRESS],
        0,
        "the client's own audit policy allows the server"
    );
}

/// A client with only an audit egress policy (that would refuse the server) reaches a
/// local backend through a Service; the backend's enforced ingress policy drops it. The
/// packet did not pass: README says a finding is "an opening that passes and that this
/// would have dropped". Every retransmitted SYN counts again.
#[test]
fn root_attack11_audit_egress_finding_counted_for_a_dropped_service_opening() {
    let mut st = base();
    audit(&mut st, "client-egress-audit", CLIENT_EGRESS_Y);
    set_policy(&mut st, "server-ingress-none", SERVER_INGRESS_NONE);
    let (mut lab, vc, vs) = two_pod_lab(st);
    let to_svc = v4(CLIENT4, SVC4, TCP, &tcp(42000, 80, SYN));
    lab.verdict("client -> Service", Hook::FromPod, vc, &to_svc, PASS);
    let translated = v4(CLIENT4, SERVER4, TCP, &tcp(42000, 80, SYN));
    for _ in 0..3 {
        lab.verdict(
            "translated to the local backend: the server refuses",
            Hook::ToPod,
            vs,
            &translated,
            DROP,
        );
    }
    let c = lab.counters(lab.id("client"));
    let s = lab.counters(lab.id("server"));
    assert_eq!(s[reason::DROP_INGRESS], 3);
    assert_eq!(
        c[reason::AUDIT_EGRESS],
        0,
        "nothing passed: no audit finding for a dropped opening"
    );
}

/// Sanity: the plan of the first finding (the server's audit set refuses the client).
#[test]
fn attack11_plan_server_audit_set_refuses_client() {
    let mut st = base();
    set_policy(&mut st, "client-egress", CLIENT_EGRESS_TO_SERVER);
    audit(&mut st, "server-from-other", SERVER_FROM_OTHER);
    let plan = compile(&st, "n1");
    assert!(plan.errors.is_empty(), "{:?}", plan.errors);
    let server = plan
        .endpoints
        .iter()
        .find(|e| e.pod.name == "server")
        .unwrap();
    assert!(server.ingress.is_none());
    let a = server.audit.ingress.expect("audited");
    assert!(!plan.allows(a, v4a(CLIENT4), Protocol::Tcp, 80));
}
