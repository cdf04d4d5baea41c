//! Peer identities in the datapath (BPF_PROG_TEST_RUN). **Needs root.**
//!
//! Pod-selector rules name identities; an address maps to its pod's identity. These tests
//! check what that must not change: a connection allowed to a pod stops when the pod is
//! relabelled out of the rule, or when its address goes to a pod the rule does not allow;
//! a new replica is allowed without touching any rule set.
//!
//! Every test runs in a network namespace of its own thread with veth pairs; nothing
//! leaves it.

use netpol_tests::lab::*;

/// The client may reach servers on TCP 80, nothing else.
const CLIENT_EGRESS_SERVERS_80: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}], "ports": [{"port": 80}]}]}"#;

/// A remote server replica (another node), not in `base()`.
const REPLICA4: [u8; 4] = [10, 1, 7, 9];

fn lab() -> (Lab, u32) {
    let i = netns(&["vc", "vs"]);
    let mut st = base();
    set_policy(&mut st, "client-out", CLIENT_EGRESS_SERVERS_80);
    let lab = Lab::new(
        st,
        &[("client", i[0]), ("server", i[1])],
        &[v4a(NODE4), v4a(UPLINK4)],
    );
    (lab, i[0])
}

/// Opens client:41000 -> `to`:80, sees the reply, and acknowledges it.
fn open(lab: &mut Lab, c: u32, to: [u8; 4]) {
    lab.open_tcp_80(c, to, 41000);
    lab.expect(
        "ACK",
        Hook::FromPod,
        c,
        &v4(CLIENT4, to, TCP, &tcp(41000, 80, ACK)),
        PASS,
        "client",
        Some(reason::ALLOW_TRACKED),
    );
}

fn client_egress_set(lab: &Lab) -> u32 {
    let addr = netpol_agent::program::addr_of(v4a(CLIENT4));
    lab.pr
        .maps()
        .endpoints
        .get(&addr, 0)
        .expect("client endpoint")
        .egress_set
}

fn remote(app: &str) -> netpol_agent::state::PodInfo {
    let mut p = pod(&[v4a(REPLICA4)], app);
    p.node = Some("n2".into());
    p
}

#[test]
fn root_identity_relabelled_peer_loses_its_established_connection() {
    let (mut lab, c) = lab();
    // Another server stays, so the rule set's content (identities) does not change.
    lab.state
        .pods
        .insert(ObjectRef::new("default", "replica"), remote("server"));
    lab.apply();
    open(&mut lab, c, SERVER4);
    // The server becomes an `other`: the rule no longer selects it.
    if let Some(p) = lab.state.pods.get_mut(&ObjectRef::new("default", "server")) {
        p.labels.insert("app".into(), "other".into());
    }
    lab.apply();
    lab.expect(
        "data on the connection after the relabel",
        Hook::FromPod,
        c,
        &v4(CLIENT4, SERVER4, TCP, &tcp(41000, 80, PSH | ACK)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

#[test]
fn root_identity_reused_address_does_not_inherit_the_old_pods_connection() {
    let (mut lab, c) = lab();
    lab.state
        .pods
        .insert(ObjectRef::new("default", "replica"), remote("server"));
    lab.apply();
    open(&mut lab, c, REPLICA4);
    // The replica goes; a pod the rule does not allow gets its address.
    lab.state.pods.remove(&ObjectRef::new("default", "replica"));
    lab.apply();
    lab.state
        .pods
        .insert(ObjectRef::new("default", "newcomer"), remote("other"));
    lab.apply();
    lab.expect(
        "the old connection's tuple, now towards the newcomer",
        Hook::FromPod,
        c,
        &v4(CLIENT4, REPLICA4, TCP, &tcp(41000, 80, PSH | ACK)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

#[test]
fn root_identity_new_replica_is_allowed_without_a_new_rule_set() {
    let (mut lab, c) = lab();
    open(&mut lab, c, SERVER4);
    let before = client_egress_set(&lab);
    lab.state
        .pods
        .insert(ObjectRef::new("default", "replica"), remote("server"));
    lab.apply();
    assert_eq!(before, client_egress_set(&lab), "no flip for a new replica");
    lab.expect(
        "SYN to the new replica",
        Hook::FromPod,
        c,
        &v4(CLIENT4, REPLICA4, TCP, &tcp(41001, 80, SYN)),
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
    lab.expect(
        "the established connection goes on",
        Hook::FromPod,
        c,
        &v4(CLIENT4, SERVER4, TCP, &tcp(41000, 80, PSH | ACK)),
        PASS,
        "client",
        Some(reason::ALLOW_TRACKED),
    );
    lab.expect(
        "another port of the replica is not allowed",
        Hook::FromPod,
        c,
        &v4(CLIENT4, REPLICA4, TCP, &tcp(41002, 81, SYN)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}
