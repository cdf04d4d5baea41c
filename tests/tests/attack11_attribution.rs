//! Attack 11: per-rule attribution of connections whose egress is decided after
//! translation (a local client reaching a Service). BPF_PROG_TEST_RUN on crafted packets;
//! **needs root**. Tests assert the correct behaviour: those that fail expose a bug.
//!
//! Each test runs in a network namespace of its own thread with veth pairs; nothing
//! leaves it.

use std::collections::BTreeMap;

use netpol_tests::lab::*;

/// The client's egress: only to the server (every port).
const CLIENT_TO_SERVER: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}]}]}"#;

/// README (Attribution): "the programs count every packet of the connection on it (its
/// opening and everything after ...)"; only Service *replies* name no rule. A client
/// whose egress rule allows a local Service backend: its packets towards the backend
/// (the opening included) are never counted on that rule.
#[test]
fn root_attack11_service_to_local_backend_egress_rule_never_counted() {
    let i = netns(&["vc", "vs"]);
    let (vc, vs) = (i[0], i[1]);
    let mut st = base();
    set_policy(&mut st, "e", CLIENT_TO_SERVER);
    let mut lab = Lab::new(
        st,
        &[("client", vc), ("server", vs)],
        &[v4a(NODE4), v4a(UPLINK4)],
    );
    let syn_svc = v4(CLIENT4, SVC4, TCP, &tcp(43000, 80, SYN));
    lab.verdict("SYN to the Service", Hook::FromPod, vc, &syn_svc, PASS);
    let syn = v4(CLIENT4, SERVER4, TCP, &tcp(43000, 80, SYN));
    lab.verdict(
        "translated to the local server",
        Hook::ToPod,
        vs,
        &syn,
        PASS,
    );
    lab.verdict(
        "SYN-ACK leaves the server",
        Hook::FromPod,
        vs,
        &v4(SERVER4, CLIENT4, TCP, &tcp(80, 43000, SYN | ACK)),
        PASS,
    );
    lab.verdict(
        "SYN-ACK (from the Service) reaches the client",
        Hook::ToPod,
        vc,
        &v4(SVC4, CLIENT4, TCP, &tcp(80, 43000, SYN | ACK)),
        PASS,
    );
    for _ in 0..3 {
        lab.verdict(
            "data to the Service",
            Hook::FromPod,
            vc,
            &v4(CLIENT4, SVC4, TCP, &tcp(43000, 80, ACK)),
            PASS,
        );
        lab.verdict(
            "translated",
            Hook::ToPod,
            vs,
            &v4(CLIENT4, SERVER4, TCP, &tcp(43000, 80, ACK)),
            PASS,
        );
    }
    let counted = lab
        .rule_packets()
        .get("default/e egress[0]")
        .copied()
        .unwrap_or(0);
    assert!(
        counted >= 1,
        "the client's egress rule allowed this connection (4 packets to the backend); counted {counted}: {:?}",
        lab.rule_packets()
    );
}

/// Control (holds): the same connection without the Service is counted on every packet
/// the client sends (its veth) and on none of the server's rules (it has none).
#[test]
fn root_attack11_direct_to_local_server_egress_rule_counted() {
    let i = netns(&["vc", "vs"]);
    let (vc, vs) = (i[0], i[1]);
    let mut st = base();
    set_policy(&mut st, "e", CLIENT_TO_SERVER);
    let mut lab = Lab::new(
        st,
        &[("client", vc), ("server", vs)],
        &[v4a(NODE4), v4a(UPLINK4)],
    );
    let syn = v4(CLIENT4, SERVER4, TCP, &tcp(43001, 80, SYN));
    lab.verdict("SYN", Hook::FromPod, vc, &syn, PASS);
    lab.verdict("SYN in", Hook::ToPod, vs, &syn, PASS);
    let synack = v4(SERVER4, CLIENT4, TCP, &tcp(80, 43001, SYN | ACK));
    lab.verdict("SYN-ACK", Hook::FromPod, vs, &synack, PASS);
    lab.verdict("SYN-ACK in", Hook::ToPod, vc, &synack, PASS);
    let ack = v4(CLIENT4, SERVER4, TCP, &tcp(43001, 80, ACK));
    for _ in 0..3 {
        lab.verdict("data", Hook::FromPod, vc, &ack, PASS);
        lab.verdict("data in", Hook::ToPod, vs, &ack, PASS);
    }
    // The client's own veth counts each packet it sends or receives on e: SYN, SYN-ACK,
    // 3 data.
    assert_eq!(
        lab.rule_packets(),
        BTreeMap::from([("default/e egress[0]".to_string(), 5)])
    );
}
