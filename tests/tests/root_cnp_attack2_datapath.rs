//! Second attack on the ordered datapath, after cea5b4b ("Fixes from an attack on the
//! ordered datapath"), which (a) tracks a connection between a pod and its own node that
//! passed the hooks' node exemption when the other direction's set is ordered, (b) applies
//! NetworkPolicy's own-node exemption when a tracked connection is decided again under an
//! unordered set, and (c) renews ordered sets on identity moves. Run with
//! BPF_PROG_TEST_RUN. **Needs root.**
//!
//! Tests named `*_finding_*` assert what ClusterNetworkPolicy + NetworkPolicy semantics
//! require and failed on cea5b4b; all pass since the fixes that followed. The others are
//! corners that came out right, kept as guards.
//!
//! Every test runs in a network namespace of its own thread (unshare(CLONE_NEWNET)) with
//! veth pairs, which goes away with the thread. Nothing leaves the namespace.

use netpol_agent::compile::cnp_check::check;
use netpol_tests::cnp_fixtures::{
    X4, add_cnp, add_cnp_unchecked, cnp_state, pods_with_app, remote,
};
use netpol_tests::lab::*;
use serde_json::json;

/// An address no pod the agent knows holds (yet), outside the nodes' pod ranges (a CNI that gives pods addresses the agent cannot tell
/// from outside ones): inside them, an unknown pod is denied by the Deny from its first
/// packet (`root_cnp_attack_datapath`).
const LATE4: [u8; 4] = [10, 3, 0, 77];

struct Ifs {
    c: u32,
    s: u32,
}

/// Admin: an ingress rule for `app` naming a peer ingress rules cannot have (`nodes`): it
/// fails closed, "deny everything" into `app`, its own node included. (Ingress peers are
/// pods and namespaces only: no valid ingress rule matches the node's address; a rule
/// that fails closed is the way an Admin ingress Deny reaches it, as in
/// `root_cnp_attack_datapath`.)
fn admin_deny_ingress_from_node(st: &mut ClusterState, app: &str) {
    let name = format!("deny-node-ingress-{app}");
    add_cnp_unchecked(
        st,
        &name,
        "Admin",
        10,
        json!({"subject": pods_with_app(app),
               "ingress": [{"action": "Deny", "from": [{"nodes": {}}]}]}),
    );
    let (_, errors) = check(&st.cluster_policies[&name]);
    assert!(!errors.is_empty(), "the rule fails closed");
}

/// Admin: `app`'s egress to every node (its own included) is denied.
fn admin_deny_egress_to_nodes(st: &mut ClusterState, app: &str) {
    add_cnp(
        st,
        &format!("deny-node-egress-{app}"),
        "Admin",
        10,
        json!({"subject": pods_with_app(app),
               "egress": [{"action": "Deny", "to": [{"nodes": {}}]}]}),
    );
}

fn lab_with(st: ClusterState) -> (Lab, Ifs) {
    let i = netns(&["vc", "vs", "upl"]);
    let ifs = Ifs { c: i[0], s: i[1] };
    let mut lab = Lab::new(
        st,
        &[("client", ifs.c), ("server", ifs.s)],
        &[v4a(NODE4), IpAddr::V6(ip6("fd00:1::1")), v4a(UPLINK4)],
    );
    lab.pr
        .maps_mut()
        .set_uplinks(&[i[2]].into())
        .expect("uplinks");
    (lab, ifs)
}

/// A TCP handshake `from:sport -> to:dport`, `from` opening; `at` is the local pod's veth
/// and `opener_is_pod` says which side that pod is.
#[allow(clippy::too_many_arguments)]
fn handshake(
    lab: &mut Lab,
    at: u32,
    opener_is_pod: bool,
    from: [u8; 4],
    sport: u16,
    to: [u8; 4],
    dport: u16,
) {
    let (there, back) = if opener_is_pod {
        (Hook::FromPod, Hook::ToPod)
    } else {
        (Hook::ToPod, Hook::FromPod)
    };
    lab.verdict(
        "SYN",
        there,
        at,
        &v4(from, to, TCP, &tcp(sport, dport, SYN)),
        PASS,
    );
    lab.verdict(
        "SYN-ACK",
        back,
        at,
        &v4(to, from, TCP, &tcp(dport, sport, SYN | ACK)),
        PASS,
    );
    lab.verdict(
        "ACK",
        there,
        at,
        &v4(from, to, TCP, &tcp(sport, dport, ACK)),
        PASS,
    );
}

// ---------------------------------------------------------------------------------------
// (a) Untracked node connections when the other direction becomes ordered
// ---------------------------------------------------------------------------------------

/// FOUND (DROP of allowed traffic). The server's egress is isolated by a NetworkPolicy
/// (unordered) and its ingress by nothing. Its own node opens a connection to it (a
/// kubelet probe, a hostNetwork ingress controller's keep-alive upstream): the hooks'
/// node exemption passes it, and cea5b4b tracks it only when the other direction's set is
/// ordered at that moment, which it is not. Then a ClusterNetworkPolicy denying the
/// server's egress to nodes arrives. The server is already isolated in egress, so the
/// agent seeds nothing from the kernel (`newly_isolated` only looks for ALLOW_ALL ->
/// isolated), and the server's next reply on the node's connection has no entry: judged as
/// an opening of the server towards its node, denied by the Admin rule (and so every
/// retransmission, until the node sends a segment, which is judged as its opening and
/// makes the entry cea5b4b would have made). A reply of a
/// connection the server's ingress allowed is not the server's egress opening (the same
/// connection opened after the policy passes: `root_cnp_attack_datapath`'s kubelet-probe
/// finding, fixed by cea5b4b).
#[test]
fn root_cnp_attack2_finding_node_connection_cut_when_np_isolated_egress_becomes_ordered() {
    let mut st = cnp_state();
    set_policy(&mut st, "server-egress-none", SERVER_EGRESS_NONE);
    let (mut lab, ifs) = lab_with(st);
    handshake(&mut lab, ifs.s, false, NODE4, 42000, SERVER4, 8080);
    admin_deny_egress_to_nodes(&mut lab.state, "server");
    let seeded = lab.apply_as_agent(&[flow(
        TCP,
        (v4a(NODE4), 42000, v4a(SERVER4), 8080),
        (v4a(SERVER4), 8080, v4a(NODE4), 42000),
    )]);
    // Guard: a new connection of the server towards its node is denied.
    lab.verdict(
        "the server's own SYN to its node is denied by the Admin rule",
        Hook::FromPod,
        ifs.s,
        &v4(SERVER4, NODE4, TCP, &tcp(42001, 10250, SYN)),
        DROP,
    );
    // The server speaks next (its answer to a request in flight, a push on an idle
    // stream). (Were the node to send first, its segment, judged as an opening, would
    // make a fresh entry that the answer then rides.)
    let v = lab.run(
        Hook::FromPod,
        ifs.s,
        &v4(SERVER4, NODE4, TCP, &tcp(8080, 42000, PSH | ACK)),
    );
    assert_eq!(
        v,
        PASS,
        "the server's reply on the node's connection: {} (kernel flows seeded: {seeded})",
        show(v)
    );
}

/// FOUND (DROP of allowed traffic), the mirror. The client's ingress is isolated by a
/// NetworkPolicy (unordered), its egress by nothing. It opens a connection to its node
/// (a node-local agent, the kubelet's port): node exemption, untracked. Then an Admin
/// ingress rule that fails closed (deny everything, the node included) arrives. The
/// node's next segment on the client's own connection is judged as the node opening one:
/// dropped (until the client's next segment, judged as an opening, makes an entry).
#[test]
fn root_cnp_attack2_finding_own_node_connection_cut_when_np_isolated_ingress_becomes_ordered() {
    let mut st = cnp_state();
    set_policy(&mut st, "client-ingress-none", CLIENT_INGRESS_NONE);
    let (mut lab, ifs) = lab_with(st);
    handshake(&mut lab, ifs.c, true, CLIENT4, 42100, NODE4, 10250);
    admin_deny_ingress_from_node(&mut lab.state, "client");
    let seeded = lab.apply_as_agent(&[flow(
        TCP,
        (v4a(CLIENT4), 42100, v4a(NODE4), 10250),
        (v4a(NODE4), 10250, v4a(CLIENT4), 42100),
    )]);
    lab.verdict(
        "guard: the node's own SYN to the client is denied by the Admin rule",
        Hook::ToPod,
        ifs.c,
        &v4(NODE4, CLIENT4, TCP, &tcp(42101, 8080, SYN)),
        DROP,
    );
    // The node speaks next (its answer to the client's request in flight).
    let v = lab.run(
        Hook::ToPod,
        ifs.c,
        &v4(NODE4, CLIENT4, TCP, &tcp(10250, 42100, PSH | ACK)),
    );
    assert_eq!(
        v,
        PASS,
        "the node's reply on the client's own connection: {} (kernel flows seeded: {seeded})",
        show(v)
    );
}

/// Guard: the same as the first finding where the server was not isolated at all before:
/// the agent seeds the node's connection from the kernel, and (b) lets it go on.
#[test]
fn root_cnp_attack2_node_connection_seeded_when_an_unisolated_pod_becomes_ordered() {
    let st = cnp_state();
    let (mut lab, ifs) = lab_with(st);
    handshake(&mut lab, ifs.s, false, NODE4, 42200, SERVER4, 8080);
    admin_deny_egress_to_nodes(&mut lab.state, "server");
    let seeded = lab.apply_as_agent(&[flow(
        TCP,
        (v4a(NODE4), 42200, v4a(SERVER4), 8080),
        (v4a(SERVER4), 8080, v4a(NODE4), 42200),
    )]);
    assert_eq!(seeded, 1);
    lab.verdict(
        "the server's reply on the node's connection",
        Hook::FromPod,
        ifs.s,
        &v4(SERVER4, NODE4, TCP, &tcp(8080, 42200, PSH | ACK)),
        PASS,
    );
}

/// Guard: the first finding with a remote pod instead of the node: connections of an
/// isolated pod are tracked, so its replies survive the new Admin egress rule.
#[test]
fn root_cnp_attack2_remote_connection_survives_when_np_isolated_egress_becomes_ordered() {
    let mut st = cnp_state();
    set_policy(&mut st, "server-egress-none", SERVER_EGRESS_NONE);
    let (mut lab, ifs) = lab_with(st);
    handshake(&mut lab, ifs.s, false, X4, 42300, SERVER4, 8080);
    add_cnp(
        &mut lab.state,
        "deny-egress-all",
        "Admin",
        10,
        json!({"subject": pods_with_app("server"),
               "egress": [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}),
    );
    lab.apply();
    lab.verdict(
        "the server's reply to x",
        Hook::FromPod,
        ifs.s,
        &v4(SERVER4, X4, TCP, &tcp(8080, 42300, PSH | ACK)),
        PASS,
    );
    lab.verdict(
        "a new connection of the server to x",
        Hook::FromPod,
        ifs.s,
        &v4(SERVER4, X4, TCP, &tcp(42301, 80, SYN)),
        DROP,
    );
}

// ---------------------------------------------------------------------------------------
// (a) Entries a pod makes towards its node: what they carry, and what they do not
// ---------------------------------------------------------------------------------------

/// Guard. The client's ingress denies everything, its node included (an Admin rule that
/// fails closed); its egress is not ordered. The
/// client sends a stray ACK, a UDP datagram and an echo request to its node: the node
/// exemption passes them and cea5b4b tracks them. What the node sends back on the same
/// tuples passes (replies); the node opening on the reversed tuples (a SYN, an echo
/// request) is judged as an opening and denied; nobody else (a remote pod, another node,
/// an outside address) can use the tuples.
#[test]
fn root_cnp_attack2_pod_made_node_entries_carry_only_replies() {
    let mut st = cnp_state();
    admin_deny_ingress_from_node(&mut st, "client");
    let (mut lab, ifs) = lab_with(st);
    let c = ifs.c;
    // A stray ACK from the client's listening port 8080 to node:40000.
    lab.verdict(
        "client's stray ACK to its node",
        Hook::FromPod,
        c,
        &v4(CLIENT4, NODE4, TCP, &tcp(8080, 40000, ACK)),
        PASS,
    );
    lab.verdict(
        "the node opening a connection to client:8080 from 40000 (SYN) is denied",
        Hook::ToPod,
        c,
        &v4(NODE4, CLIENT4, TCP, &tcp(40000, 8080, SYN)),
        DROP,
    );
    for (who, addr) in [
        ("a remote pod", X4),
        ("another node", REMOTE_NODE4),
        ("an outside address", Y4B),
    ] {
        lab.verdict(
            &format!("{who} with the tuple's ports"),
            Hook::ToPod,
            c,
            &v4(addr, CLIENT4, TCP, &tcp(40000, 8080, ACK)),
            DROP,
        );
    }
    lab.verdict(
        "the node's SYN on a tuple the client never used",
        Hook::ToPod,
        c,
        &v4(NODE4, CLIENT4, TCP, &tcp(40001, 8080, SYN)),
        DROP,
    );

    // UDP from the client's port 53 to node:5353.
    lab.verdict(
        "client's UDP to its node",
        Hook::FromPod,
        c,
        &v4(CLIENT4, NODE4, UDP, &udp(53, 5353)),
        PASS,
    );
    lab.verdict(
        "the node's answer",
        Hook::ToPod,
        c,
        &v4(NODE4, CLIENT4, UDP, &udp(5353, 53)),
        PASS,
    );
    lab.verdict(
        "the node from another port",
        Hook::ToPod,
        c,
        &v4(NODE4, CLIENT4, UDP, &udp(5354, 53)),
        DROP,
    );
    lab.verdict(
        "a remote pod from the node's port",
        Hook::ToPod,
        c,
        &v4(X4, CLIENT4, UDP, &udp(5353, 53)),
        DROP,
    );

    // ICMP echo, id 7.
    lab.verdict(
        "client's echo request to its node",
        Hook::FromPod,
        c,
        &v4(CLIENT4, NODE4, ICMP, &echo(8, 7)),
        PASS,
    );
    lab.verdict(
        "the node's echo reply",
        Hook::ToPod,
        c,
        &v4(NODE4, CLIENT4, ICMP, &echo(0, 7)),
        PASS,
    );
    lab.verdict(
        "the node's own echo request with the same id",
        Hook::ToPod,
        c,
        &v4(NODE4, CLIENT4, ICMP, &echo(8, 7)),
        DROP,
    );
    lab.verdict(
        "a remote pod's echo reply with the same id",
        Hook::ToPod,
        c,
        &v4(X4, CLIENT4, ICMP, &echo(0, 7)),
        DROP,
    );
}

/// Guard, the mirror. The server's egress denies every node (Admin); its ingress is not
/// ordered, so its node's probe passes and is tracked. The server may answer on the
/// probe's tuple only: its own SYN on the reversed tuple, to another port of the node, to
/// another node, is judged as its opening and denied.
#[test]
fn root_cnp_attack2_node_made_entries_carry_only_replies() {
    let mut st = cnp_state();
    admin_deny_egress_to_nodes(&mut st, "server");
    let (mut lab, ifs) = lab_with(st);
    let s = ifs.s;
    handshake(&mut lab, s, false, NODE4, 43000, SERVER4, 8080);
    lab.verdict(
        "server's data on the probe",
        Hook::FromPod,
        s,
        &v4(SERVER4, NODE4, TCP, &tcp(8080, 43000, PSH | ACK)),
        PASS,
    );
    lab.verdict(
        "server's SYN on the reversed tuple",
        Hook::FromPod,
        s,
        &v4(SERVER4, NODE4, TCP, &tcp(8080, 43000, SYN)),
        DROP,
    );
    lab.verdict(
        "server's SYN to another port of its node",
        Hook::FromPod,
        s,
        &v4(SERVER4, NODE4, TCP, &tcp(8080, 43001, SYN)),
        DROP,
    );
    lab.verdict(
        "server's segment to another node with the probe's ports",
        Hook::FromPod,
        s,
        &v4(SERVER4, REMOTE_NODE4, TCP, &tcp(8080, 43000, ACK)),
        DROP,
    );
    // A UDP datagram the node sends first: the server may answer on that tuple only.
    lab.verdict(
        "node's UDP to the server",
        Hook::ToPod,
        s,
        &v4(NODE4, SERVER4, UDP, &udp(5353, 9000)),
        PASS,
    );
    lab.verdict(
        "server's answer",
        Hook::FromPod,
        s,
        &v4(SERVER4, NODE4, UDP, &udp(9000, 5353)),
        PASS,
    );
    lab.verdict(
        "server to another port of its node",
        Hook::FromPod,
        s,
        &v4(SERVER4, NODE4, UDP, &udp(9000, 53)),
        DROP,
    );
}

/// Guard: an entry the client made to its node under an unordered egress set is decided
/// again when its egress becomes ordered, and an Admin Deny of nodes cuts it (the own-node
/// fallback of (b) is for unordered sets only); over IPv6 too.
#[test]
fn root_cnp_attack2_node_entry_cut_when_egress_becomes_ordered_with_a_deny() {
    let mut st = cnp_state();
    admin_deny_ingress_from_node(&mut st, "client");
    let (mut lab, ifs) = lab_with(st);
    let node6 = ip6("fd00:1::1");
    handshake(&mut lab, ifs.c, true, CLIENT4, 43100, NODE4, 10250);
    lab.verdict(
        "client SYN to its node (IPv6)",
        Hook::FromPod,
        ifs.c,
        &v6(client6(), node6, TCP, 64, &tcp(43101, 10250, SYN)),
        PASS,
    );
    lab.verdict(
        "SYN-ACK (IPv6)",
        Hook::ToPod,
        ifs.c,
        &v6(node6, client6(), TCP, 64, &tcp(10250, 43101, SYN | ACK)),
        PASS,
    );
    admin_deny_egress_to_nodes(&mut lab.state, "client");
    lab.apply();
    lab.verdict(
        "the client's data after the Admin Deny of nodes",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(43100, 10250, PSH | ACK)),
        DROP,
    );
    lab.verdict(
        "the node's data on the cut connection (now judged as its opening)",
        Hook::ToPod,
        ifs.c,
        &v4(NODE4, CLIENT4, TCP, &tcp(10250, 43100, PSH | ACK)),
        DROP,
    );
    lab.verdict(
        "the node's data (IPv6), the client's side decided again",
        Hook::ToPod,
        ifs.c,
        &v6(node6, client6(), TCP, 64, &tcp(10250, 43101, PSH | ACK)),
        DROP,
    );
}

// ---------------------------------------------------------------------------------------
// (b) The own-node fallback when deciding again under an unordered set
// ---------------------------------------------------------------------------------------

/// Guard: the fallback names the node only. A connection the client opened to a remote
/// pod under an ordered egress set (Admin Accept) is cut when the ClusterNetworkPolicy
/// goes and a NetworkPolicy that allows nothing decides alone; its connection to its node
/// goes on.
#[test]
fn root_cnp_attack2_unordered_fallback_is_for_the_node_only() {
    let mut st = cnp_state();
    set_policy(&mut st, "client-egress-none", CLIENT_EGRESS_NONE);
    add_cnp(
        &mut st,
        "accept-x",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"action": "Accept", "to": [{"pods": {"namespaceSelector": {},
                   "podSelector": {"matchLabels": {"app": "x"}}}}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    handshake(&mut lab, ifs.c, true, CLIENT4, 43200, X4, 80);
    handshake(&mut lab, ifs.c, true, CLIENT4, 43201, NODE4, 10250);
    lab.state.cluster_policies.clear();
    lab.apply();
    lab.verdict(
        "x's data after the Accept went (the client's side decided again)",
        Hook::ToPod,
        ifs.c,
        &v4(X4, CLIENT4, TCP, &tcp(80, 43200, PSH | ACK)),
        DROP,
    );
    lab.verdict(
        "the client's data to x",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, X4, TCP, &tcp(43200, 80, PSH | ACK)),
        DROP,
    );
    lab.verdict(
        "data to the node",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(43201, 10250, PSH | ACK)),
        PASS,
    );
    lab.verdict(
        "the node's data",
        Hook::ToPod,
        ifs.c,
        &v4(NODE4, CLIENT4, TCP, &tcp(10250, 43201, PSH | ACK)),
        PASS,
    );
}

/// FOUND (a false audit finding). The server's ingress gets an enforced NetworkPolicy
/// that allows nothing and a second one in audit mode (`netpol.io/mode: audit`) that
/// allows `app: other`. Its node's connection, seeded from the kernel, is decided at its
/// next packet: (b) lets the node in (NetworkPolicy's exemption), and since that side was
/// undecided, the audit-mode policies judge it too, with `allowed()` on the unordered
/// audit set, which knows no own-node exemption: an `audit_ingress` finding ("audit mode
/// would drop this") for traffic NetworkPolicy never drops. A fresh connection from the
/// node passes the hooks' exemption with no finding.
#[test]
fn root_cnp_attack2_finding_seeded_node_connection_gets_a_false_audit_finding() {
    let st = cnp_state();
    let (mut lab, ifs) = lab_with(st);
    set_policy(&mut lab.state, "server-ingress-none", SERVER_INGRESS_NONE);
    set_policy_mode(
        &mut lab.state,
        "server-from-other",
        r#"{"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "other"}}}]}]}"#,
        Some("audit"),
    );
    let seeded = lab.apply_as_agent(&[flow(
        TCP,
        (v4a(NODE4), 43300, v4a(SERVER4), 8080),
        (v4a(SERVER4), 8080, v4a(NODE4), 43300),
    )]);
    assert_eq!(seeded, 1);
    let id = lab.id("server");
    lab.verdict(
        "a fresh connection from the node",
        Hook::ToPod,
        ifs.s,
        &v4(NODE4, SERVER4, TCP, &tcp(43301, 8080, SYN)),
        PASS,
    );
    assert_eq!(
        lab.counters(id)[reason::AUDIT_INGRESS],
        0,
        "guard: no finding for a fresh node connection"
    );
    lab.verdict(
        "the node's data on its seeded connection",
        Hook::ToPod,
        ifs.s,
        &v4(NODE4, SERVER4, TCP, &tcp(43300, 8080, PSH | ACK)),
        PASS,
    );
    assert_eq!(
        lab.counters(id)[reason::AUDIT_INGRESS],
        0,
        "an audit finding for the node's seeded connection: audit-mode NetworkPolicy would let the own node in"
    );
}

// ---------------------------------------------------------------------------------------
// (c) Identity changes and established connections, in the datapath
// ---------------------------------------------------------------------------------------

/// FOUND (PASS of denied traffic). An Admin rule denies the server's ingress from pods
/// labelled `app: bad`. A pod the agent does not know yet, with an address outside the
/// nodes' pod ranges (so not taken for the unknown pod), connects from 10.3.0.77. Then the agent
/// learns the pod: labelled `app: bad`. New connections from it are denied, but its
/// established one goes on forever: the address had no identity before, so no set is
/// renewed (see `cnp_attack2_programmer`).
#[test]
fn root_cnp_attack2_finding_connection_from_a_late_known_pod_outlives_an_admin_deny() {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "deny-bad",
        "Admin",
        10,
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": "Deny", "from": [{"pods": {"namespaceSelector": {},
                   "podSelector": {"matchLabels": {"app": "bad"}}}}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    handshake(&mut lab, ifs.s, false, LATE4, 43400, SERVER4, 80);
    lab.state
        .pods
        .insert(ObjectRef::new("default", "late"), remote(LATE4, "bad"));
    lab.apply();
    lab.verdict(
        "a new connection from the late pod (app: bad) is denied",
        Hook::ToPod,
        ifs.s,
        &v4(LATE4, SERVER4, TCP, &tcp(43401, 80, SYN)),
        DROP,
    );
    let v = lab.run(
        Hook::ToPod,
        ifs.s,
        &v4(LATE4, SERVER4, TCP, &tcp(43400, 80, PSH | ACK)),
    );
    assert_eq!(
        v,
        DROP,
        "data on the connection opened before the pod was known: {}",
        show(v)
    );
}
