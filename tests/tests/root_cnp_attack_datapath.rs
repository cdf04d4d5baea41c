//! Attacks on the datapath's ClusterNetworkPolicy enforcement (ordered rule sets), run
//! with BPF_PROG_TEST_RUN. **Needs root.**
//!
//! Tests named `*_finding_*` assert what ClusterNetworkPolicy + NetworkPolicy semantics
//! require, and failed on the first ordered datapath (c820853): those fixed pass, those
//! still open are ignored with their reason (`-- --ignored` shows them failing). The
//! others are corners that came out right, kept as guards.
//!
//! Every test runs in a network namespace of its own thread (unshare(CLONE_NEWNET)) with
//! veth pairs, which goes away with the thread. Nothing leaves the namespace.

use netpol_agent::compile::cnp_check::check;
use netpol_tests::cnp_fixtures::{
    BAD4, X4, add_cnp, add_cnp_unchecked, cnp_state, labels, pods_with_app,
};
use netpol_tests::lab::*;
use serde_json::json;

struct Ifs {
    c: u32,
    s: u32,
    up: u32,
}

fn lab_with(st: ClusterState) -> (Lab, Ifs) {
    let i = netns(&["vc", "vs", "upl"]);
    let ifs = Ifs {
        c: i[0],
        s: i[1],
        up: i[2],
    };
    let mut lab = Lab::new(
        st,
        &[("client", ifs.c), ("server", ifs.s)],
        &[v4a(NODE4), IpAddr::V6(ip6("fd00:1::1")), v4a(UPLINK4)],
    );
    lab.pr
        .maps_mut()
        .set_uplinks(&[ifs.up].into())
        .expect("uplinks");
    (lab, ifs)
}

// ---------------------------------------------------------------------------------------
// Replies to connections between a pod and its own node
// ---------------------------------------------------------------------------------------

/// FOUND. The client's egress is denied everything by an Admin rule (a common "deny all
/// egress" ClusterNetworkPolicy); its ingress has no policy at all. Its own node (the
/// kubelet's probes) opens a TCP connection to it: the client's ingress allows it (nothing
/// applies), and the client's egress policy has no say over the replies of a connection
/// it did not open. The datapath passes the SYN at `to_pod` through the node shortcut
/// without tracking it (the ingress set is not ordered), then judges the SYN-ACK at
/// `from_pod` as a new connection of the client towards the node, which the ordered
/// egress set denies: the probe can never connect.
#[test]
fn root_cnp_attack_finding_node_probe_reply_dropped_by_admin_egress_deny() {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "deny-all-egress",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    lab.verdict(
        "kubelet SYN node -> client:8080",
        Hook::ToPod,
        ifs.c,
        &v4(NODE4, CLIENT4, TCP, &tcp(40000, 8080, SYN)),
        PASS,
    );
    lab.verdict(
        "client's SYN-ACK to its node (a reply of an allowed connection)",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(8080, 40000, SYN | ACK)),
        PASS,
    );
}

/// FOUND. The same over IPv6, with a Baseline "deny all egress" (no NetworkPolicy selects
/// the client, so the Baseline tier decides its egress): the node's connection is allowed
/// in, its replies are dropped.
#[test]
fn root_cnp_attack_finding_node_probe_reply_dropped_by_baseline_egress_deny_v6() {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "baseline-deny-egress",
        "Baseline",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    let node6 = ip6("fd00:1::1");
    lab.verdict(
        "kubelet SYN node -> client:8080 (IPv6)",
        Hook::ToPod,
        ifs.c,
        &v6(node6, client6(), TCP, 64, &tcp(40001, 8080, SYN)),
        PASS,
    );
    lab.verdict(
        "client's SYN-ACK to its node (IPv6)",
        Hook::FromPod,
        ifs.c,
        &v6(client6(), node6, TCP, 64, &tcp(8080, 40001, SYN | ACK)),
        PASS,
    );
}

/// FOUND (needs a policy that fails closed). An Admin ingress rule naming a peer this
/// version does not know (here `nodes`, which only egress peers have) fails closed: "deny
/// everything" into the client. Its egress has no policy. The client opens a connection
/// to its own node: its egress allows it, and the node's answer is a reply of the
/// client's own connection, which an ingress rule has no say over (a remote peer's answer
/// passes, see the first steps). `from_pod` passes the SYN to the node by the node
/// shortcut without tracking it, and `to_pod` judges the node's SYN-ACK as the node
/// opening a connection: dropped.
#[test]
fn root_cnp_attack_finding_reply_from_own_node_dropped_by_failed_closed_ingress_deny() {
    let mut st = cnp_state();
    add_cnp_unchecked(
        &mut st,
        "deny-ingress-from-nodes",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "ingress": [{"action": "Deny", "from": [{"nodes": {}}]}]}),
    );
    let (_, errors) = check(&st.cluster_policies["deny-ingress-from-nodes"]);
    assert!(!errors.is_empty(), "the rule fails closed");
    let (mut lab, ifs) = lab_with(st);
    lab.verdict(
        "a remote pod's SYN is denied (deny everything)",
        Hook::ToPod,
        ifs.c,
        &v4(X4, CLIENT4, TCP, &tcp(40005, 8080, SYN)),
        DROP,
    );
    lab.verdict(
        "client SYN -> a remote pod",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, X4, TCP, &tcp(40006, 80, SYN)),
        PASS,
    );
    lab.verdict(
        "the remote pod's SYN-ACK (a reply) passes",
        Hook::ToPod,
        ifs.c,
        &v4(X4, CLIENT4, TCP, &tcp(80, 40006, SYN | ACK)),
        PASS,
    );
    lab.verdict(
        "client SYN -> its node:10250",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(40002, 10250, SYN)),
        PASS,
    );
    lab.verdict(
        "the node's SYN-ACK (a reply)",
        Hook::ToPod,
        ifs.c,
        &v4(NODE4, CLIENT4, TCP, &tcp(10250, 40002, SYN | ACK)),
        PASS,
    );
}

/// Guard: the same kubelet probe with a NetworkPolicy denying the client all egress
/// (unordered): the node shortcut passes the reply.
#[test]
fn root_cnp_attack_node_probe_reply_passes_under_networkpolicy_egress_deny() {
    let mut st = cnp_state();
    set_policy(&mut st, "client-egress-none", CLIENT_EGRESS_NONE);
    let (mut lab, ifs) = lab_with(st);
    lab.verdict(
        "kubelet SYN",
        Hook::ToPod,
        ifs.c,
        &v4(NODE4, CLIENT4, TCP, &tcp(40007, 8080, SYN)),
        PASS,
    );
    lab.verdict(
        "SYN-ACK",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(8080, 40007, SYN | ACK)),
        PASS,
    );
}

/// Guard: where the client's ingress is ordered too, the node's connection is tracked and
/// its replies pass.
#[test]
fn root_cnp_attack_node_probe_reply_passes_when_both_sides_are_ordered() {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "deny-all-egress",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "ingress": [{"action": "Accept", "from": [{"namespaces": {}}]}],
               "egress": [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    lab.verdict(
        "kubelet SYN",
        Hook::ToPod,
        ifs.c,
        &v4(NODE4, CLIENT4, TCP, &tcp(40003, 8080, SYN)),
        PASS,
    );
    lab.verdict(
        "SYN-ACK",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(8080, 40003, SYN | ACK)),
        PASS,
    );
    lab.verdict(
        "the client's own connection to the node is denied",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(40004, 10250, SYN)),
        DROP,
    );
}

/// FOUND. The server is isolated for ingress by a NetworkPolicy that allows nothing, and
/// an Admin rule accepts `app: x` into it: its ingress set is ordered. Its own node opens
/// a connection (NetworkPolicy's exemption, after the Admin tier: allowed, tracked under
/// the ordered set). Then the ClusterNetworkPolicy is deleted: NetworkPolicy alone
/// decides, and it still lets the own node in. The connection's next packet finds the
/// pod's set id changed and is decided again with `allowed()`, which for an unordered
/// set does not apply the own-node exemption (the hooks apply it, but only for packets
/// without a conntrack entry): the node's connection is cut.
#[test]
fn root_cnp_attack_finding_node_connection_cut_when_the_cluster_policy_goes() {
    let mut st = cnp_state();
    set_policy(&mut st, "server-ingress-none", SERVER_INGRESS_NONE);
    add_cnp(
        &mut st,
        "accept-x",
        "Admin",
        10,
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": "Accept", "from": [{"pods": {"namespaceSelector": {},
                   "podSelector": {"matchLabels": {"app": "x"}}}}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    lab.verdict(
        "the node's SYN",
        Hook::ToPod,
        ifs.s,
        &v4(NODE4, SERVER4, TCP, &tcp(41000, 8080, SYN)),
        PASS,
    );
    lab.verdict(
        "SYN-ACK",
        Hook::FromPod,
        ifs.s,
        &v4(SERVER4, NODE4, TCP, &tcp(8080, 41000, SYN | ACK)),
        PASS,
    );
    lab.verdict(
        "ACK",
        Hook::ToPod,
        ifs.s,
        &v4(NODE4, SERVER4, TCP, &tcp(41000, 8080, ACK)),
        PASS,
    );
    lab.state.cluster_policies.clear();
    lab.apply();
    lab.verdict(
        "a new connection from the node passes (NetworkPolicy's exemption)",
        Hook::ToPod,
        ifs.s,
        &v4(NODE4, SERVER4, TCP, &tcp(41001, 8080, SYN)),
        PASS,
    );
    lab.verdict(
        "the node's data on its established connection",
        Hook::ToPod,
        ifs.s,
        &v4(NODE4, SERVER4, TCP, &tcp(41000, 8080, PSH | ACK)),
        PASS,
    );
}

/// FOUND (NetworkPolicy alone, the same root as the finding above). The server gets a
/// NetworkPolicy that isolates its ingress while its node has a connection open to it;
/// the agent seeds that connection from the kernel's conntrack (undecided, "decided at
/// its next packet under the rules in force"). The node's next packet is decided with
/// `allowed()` on the unordered set, without NetworkPolicy's own-node exemption: cut,
/// though NetworkPolicy always lets the pod's own node in.
#[test]
fn root_cnp_attack_finding_seeded_node_connection_cut_by_networkpolicy_isolation() {
    let st = cnp_state();
    let (mut lab, ifs) = lab_with(st);
    set_policy(&mut lab.state, "server-ingress-none", SERVER_INGRESS_NONE);
    let seeded = lab.apply_as_agent(&[flow(
        TCP,
        (v4a(NODE4), 41100, v4a(SERVER4), 8080),
        (v4a(SERVER4), 8080, v4a(NODE4), 41100),
    )]);
    assert_eq!(seeded, 1, "the node's connection is seeded");
    lab.verdict(
        "a new connection from the node passes",
        Hook::ToPod,
        ifs.s,
        &v4(NODE4, SERVER4, TCP, &tcp(41101, 8080, SYN)),
        PASS,
    );
    lab.verdict(
        "the node's data on its seeded connection",
        Hook::ToPod,
        ifs.s,
        &v4(NODE4, SERVER4, TCP, &tcp(41100, 8080, PSH | ACK)),
        PASS,
    );
}

// ---------------------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------------------

/// FOUND, fixed by `to_node`. An Admin rule denies the client egress to every node (its
/// own included). The client connects to a Service whose backend is on its own node's host
/// network (the `kubernetes` Service on a control-plane node, any hostNetwork backend): the
/// packet is DNATed to the node's address and delivered locally, so no TC hook sees it
/// after translation. `from_pod` passes the SYN towards the ClusterIP (decided after
/// translation); `to_node`, on the node's cgroup, sees the translated SYN reach the node's
/// socket and decides it under the client's egress: denied. Should the node answer anyway
/// (a SYN-ACK un-DNATed to the ClusterIP), the Service's record has learnt the refused
/// backend, and `to_pod` drops it.
#[test]
fn root_cnp_attack_finding_service_with_a_backend_on_the_own_node_escapes_admin_deny() {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "deny-nodes",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"action": "Deny", "to": [{"nodes": {}}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    lab.verdict(
        "a direct connection to the node is denied (the Admin rule applies)",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(40010, 6443, SYN)),
        DROP,
    );
    let k8s = [10, 96, 0, 1];
    lab.verdict(
        "SYN to the kubernetes Service (decided after translation)",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, k8s, TCP, &tcp(40011, 443, SYN)),
        PASS,
    );
    // kube-proxy DNATs it to 10.1.0.1:6443 (this node): local delivery.
    lab.verdict(
        "the translated SYN reaching the node's socket",
        Hook::ToNode,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(40011, 6443, SYN)),
        DROP,
    );
    lab.verdict(
        "the SYN-ACK of the node-local backend, un-DNATed, must not reach the client",
        Hook::ToPod,
        ifs.c,
        &v4(k8s, CLIENT4, TCP, &tcp(443, 40011, SYN | ACK)),
        DROP,
    );
}

/// Guard: the same Service with its backend on another node is decided at the uplink.
#[test]
fn root_cnp_attack_service_with_a_backend_on_another_node_is_denied_at_the_uplink() {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "deny-nodes",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"action": "Deny", "to": [{"nodes": {}}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    let k8s = [10, 96, 0, 1];
    lab.verdict(
        "SYN to the kubernetes Service",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, k8s, TCP, &tcp(40012, 443, SYN)),
        PASS,
    );
    let v = lab.run_from(
        Hook::Uplink,
        ifs.up,
        ifs.c,
        &v4(CLIENT4, REMOTE_NODE4, TCP, &tcp(40012, 6443, SYN)),
    );
    assert_eq!(v, DROP, "DNATed to the other node: {}", show(v));
}

/// The client reaches itself through a Service (a hairpin kube-proxy does not
/// masquerade): issue 12 says that is subject to ClusterNetworkPolicy ("a pod reaching
/// itself by its own IP is not; through a Service that comes back to it, it is"). Its
/// own address never crosses its veth otherwise, so `to_pod` judging the client's egress
/// on that tuple, and the Admin "deny egress to every pod" dropping it, is the spec.
#[test]
fn root_cnp_attack_hairpin_to_itself_is_judged_by_cluster_policy() {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "deny-pods",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"action": "Deny", "to": [{"namespaces": {}}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    lab.verdict(
        "SYN to the Service",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, TCP, &tcp(40020, 80, SYN)),
        PASS,
    );
    let v = lab.run_from(
        Hook::ToPod,
        ifs.c,
        ifs.c,
        &v4(CLIENT4, CLIENT4, TCP, &tcp(40020, 8080, SYN)),
    );
    assert_eq!(v, DROP, "the SYN DNATed to the client itself: {}", show(v));
}

/// The server's (ingress set, egress set) as the maps hold them.
fn server_sets(lab: &Lab) -> (u32, u32) {
    use netpol_agent::program::MapOps;
    let want = netpol_agent::program::addr_of(v4a(SERVER4));
    let e = lab.pr.maps().existing().expect("maps");
    let (_, info) = e
        .endpoints
        .iter()
        .find(|(a, _)| *a == want)
        .expect("the server's endpoint");
    (info.ingress_set, info.egress_set)
}

/// Guard: the same hairpin under an Admin rule that denies egress to pod `x` only passes.
#[test]
fn root_cnp_attack_hairpin_passes_when_no_rule_covers_the_pod_itself() {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "deny-x",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"action": "Deny", "to": [{"pods": {"namespaceSelector": {},
                   "podSelector": {"matchLabels": {"app": "x"}}}}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    lab.verdict(
        "SYN to the Service",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, TCP, &tcp(40021, 80, SYN)),
        PASS,
    );
    let v = lab.run_from(
        Hook::ToPod,
        ifs.c,
        ifs.c,
        &v4(CLIENT4, CLIENT4, TCP, &tcp(40021, 8080, SYN)),
    );
    assert_eq!(v, PASS, "hairpin: {}", show(v));
}

// ---------------------------------------------------------------------------------------
// Established connections when a peer's identity changes
// ---------------------------------------------------------------------------------------

/// FOUND. An Admin rule denies the server ingress from pods labelled `app: bad` (a pod
/// so labelled exists). Pod `x` (app: x, on another node) connects to the server:
/// allowed. Then `x` is relabelled `app: bad`. Its connection must be cut at its next
/// packet. The server's rule set is the same as before (it already denied the identity
/// `bad`, and never named `x`'s old one), so its id does not change, and the renewal the
/// programmer does for relabelled peers looks only for sets that had an entry for the
/// old identity: none here. The connection goes on.
#[test]
fn root_cnp_attack_finding_relabelled_peer_keeps_its_connection_past_an_admin_deny() {
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
    lab.verdict(
        "the bad pod is denied",
        Hook::ToPod,
        ifs.s,
        &v4(BAD4, SERVER4, TCP, &tcp(50000, 80, SYN)),
        DROP,
    );
    lab.verdict(
        "x's SYN",
        Hook::ToPod,
        ifs.s,
        &v4(X4, SERVER4, TCP, &tcp(50001, 80, SYN)),
        PASS,
    );
    lab.verdict(
        "SYN-ACK",
        Hook::FromPod,
        ifs.s,
        &v4(SERVER4, X4, TCP, &tcp(80, 50001, SYN | ACK)),
        PASS,
    );
    lab.verdict(
        "ACK",
        Hook::ToPod,
        ifs.s,
        &v4(X4, SERVER4, TCP, &tcp(50001, 80, ACK)),
        PASS,
    );
    let before = server_sets(&lab);
    lab.state
        .pods
        .get_mut(&ObjectRef::new("default", "x"))
        .expect("x")
        .labels = labels(&[("app", "bad")]);
    lab.apply();
    let after = server_sets(&lab);
    lab.verdict(
        "a new connection of x (now app: bad) is denied",
        Hook::ToPod,
        ifs.s,
        &v4(X4, SERVER4, TCP, &tcp(50002, 80, SYN)),
        DROP,
    );
    let v = lab.run(
        Hook::ToPod,
        ifs.s,
        &v4(X4, SERVER4, TCP, &tcp(50001, 80, PSH | ACK)),
    );
    assert_eq!(
        v,
        DROP,
        "data on x's established connection after x became app: bad: {} (server's endpoint before {before:?}, after {after:?})",
        show(v)
    );
}

/// FOUND. The same through address reuse: `x` (app: x, another node) has a connection to
/// the server; `x` is deleted and a new pod `x2` labelled `app: bad` gets its address
/// (the node's conntrack entry is not this node's pod's, so nothing forgets it). The
/// server's Admin rule denies `app: bad`; the connection's next packet must be dropped.
#[test]
fn root_cnp_attack_finding_reused_address_keeps_its_connection_past_an_admin_deny() {
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
    lab.verdict(
        "x's SYN",
        Hook::ToPod,
        ifs.s,
        &v4(X4, SERVER4, TCP, &tcp(50021, 80, SYN)),
        PASS,
    );
    lab.verdict(
        "SYN-ACK",
        Hook::FromPod,
        ifs.s,
        &v4(SERVER4, X4, TCP, &tcp(80, 50021, SYN | ACK)),
        PASS,
    );
    lab.verdict(
        "ACK",
        Hook::ToPod,
        ifs.s,
        &v4(X4, SERVER4, TCP, &tcp(50021, 80, ACK)),
        PASS,
    );
    let x = lab
        .state
        .pods
        .remove(&ObjectRef::new("default", "x"))
        .expect("x");
    lab.apply();
    let mut x2 = x;
    x2.labels = labels(&[("app", "bad")]);
    lab.state.pods.insert(ObjectRef::new("default", "x2"), x2);
    lab.apply();
    lab.verdict(
        "a new connection from x2 (app: bad) is denied",
        Hook::ToPod,
        ifs.s,
        &v4(X4, SERVER4, TCP, &tcp(50022, 80, SYN)),
        DROP,
    );
    let v = lab.run(
        Hook::ToPod,
        ifs.s,
        &v4(X4, SERVER4, TCP, &tcp(50021, 80, PSH | ACK)),
    );
    assert_eq!(
        v,
        DROP,
        "data on the old connection, now from app: bad: {}",
        show(v)
    );
}

/// Guard: the same with a NetworkPolicy-style change (the Admin policy itself changes from
/// Accept to Deny): the set id changes and the connection is cut at its next packet.
#[test]
fn root_cnp_attack_policy_flip_accept_to_deny_cuts_the_connection() {
    let mut st = cnp_state();
    let spec = |action: &str| {
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": action, "from": [{"pods": {"namespaceSelector": {},
                   "podSelector": {"matchLabels": {"app": "x"}}}}]}]})
    };
    add_cnp(&mut st, "x-rule", "Admin", 10, spec("Accept"));
    let (mut lab, ifs) = lab_with(st);
    lab.verdict(
        "x's SYN",
        Hook::ToPod,
        ifs.s,
        &v4(X4, SERVER4, TCP, &tcp(50011, 80, SYN)),
        PASS,
    );
    lab.verdict(
        "SYN-ACK",
        Hook::FromPod,
        ifs.s,
        &v4(SERVER4, X4, TCP, &tcp(80, 50011, SYN | ACK)),
        PASS,
    );
    lab.verdict(
        "ACK",
        Hook::ToPod,
        ifs.s,
        &v4(X4, SERVER4, TCP, &tcp(50011, 80, ACK)),
        PASS,
    );
    add_cnp(&mut lab.state, "x-rule", "Admin", 10, spec("Deny"));
    lab.apply();
    lab.verdict(
        "data after the flip to Deny",
        Hook::ToPod,
        ifs.s,
        &v4(X4, SERVER4, TCP, &tcp(50011, 80, PSH | ACK)),
        DROP,
    );
}

// ---------------------------------------------------------------------------------------
// First-rule order in the BPF table lookup
// ---------------------------------------------------------------------------------------

/// Guard: the datapath's first rule, by identity and by address and across overlapping
/// port ranges of rules of different actions, in both Admin and Baseline tiers.
#[test]
fn root_cnp_attack_first_rule_order_in_the_datapath() {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "order",
        "Admin",
        10,
        json!({"subject": pods_with_app("server"),
               "ingress": [
                 {"action": "Deny", "from": [{"pods": {"namespaceSelector": {},
                     "podSelector": {"matchLabels": {"app": "x"}}}}],
                  "protocols": [{"tcp": {"destinationPort": {"range": {"start": 80, "end": 90}}}}]},
                 {"action": "Accept", "from": [{"namespaces": {}}],
                  "protocols": [{"tcp": {"destinationPort": {"range": {"start": 85, "end": 100}}}}]},
                 {"action": "Pass", "from": [{"namespaces": {}}]}]}),
    );
    add_cnp(
        &mut st,
        "egress-order",
        "Admin",
        11,
        json!({"subject": pods_with_app("server"),
               "egress": [
                 {"action": "Deny", "to": [{"networks": ["10.2.0.0/16"]}],
                  "protocols": [{"tcp": {"destinationPort": {"number": 443}}}]},
                 {"action": "Accept", "to": [{"pods": {"namespaceSelector": {},
                     "podSelector": {"matchLabels": {"app": "x"}}}}]},
                 {"action": "Deny", "to": [{"networks": ["10.2.0.0/16"]}]}]}),
    );
    add_cnp(
        &mut st,
        "baseline",
        "Baseline",
        10,
        json!({"subject": pods_with_app("server"),
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    let mut port = 52000;
    let mut ingress = |lab: &mut Lab, from: [u8; 4], dport: u16, want: i32| {
        port += 1;
        lab.verdict(
            &format!("{from:?} -> server:{dport}"),
            Hook::ToPod,
            ifs.s,
            &v4(from, SERVER4, TCP, &tcp(port, dport, SYN)),
            want,
        );
    };
    ingress(&mut lab, X4, 80, DROP);
    ingress(&mut lab, X4, 90, DROP);
    ingress(&mut lab, X4, 91, PASS);
    ingress(&mut lab, X4, 100, PASS);
    ingress(&mut lab, X4, 101, DROP); // Pass, then the Baseline Deny
    ingress(&mut lab, BAD4, 80, DROP);
    ingress(&mut lab, BAD4, 85, PASS);
    ingress(&mut lab, Y4B, 85, PASS); // not a pod: no rule, default allow
    let mut egress = |lab: &mut Lab, to: [u8; 4], dport: u16, want: i32| {
        port += 1;
        lab.verdict(
            &format!("server -> {to:?}:{dport}"),
            Hook::FromPod,
            ifs.s,
            &v4(SERVER4, to, TCP, &tcp(port, dport, SYN)),
            want,
        );
    };
    egress(&mut lab, X4, 443, DROP);
    egress(&mut lab, X4, 80, PASS);
    egress(&mut lab, BAD4, 80, DROP);
    egress(&mut lab, Y4B, 80, PASS);
}

// ---------------------------------------------------------------------------------------
// Pod addresses the agent cannot name
// ---------------------------------------------------------------------------------------

/// FOUND (cnp_attack_programmer first showed it on the maps): an Admin rule denies the
/// client ingress from pods labelled `app: bad`. A pod address without an identity (a
/// pod the agent has not seen yet, or `IDENTITIES` full) matched no rule that selects
/// pods, so it escaped the Deny. Fixed: inside the nodes' pod ranges it is the unknown
/// pod, which Deny and Pass rules selecting pods match. Addresses outside the ranges and
/// the node's own are not pods and are not touched.
#[test]
fn root_cnp_attack_finding_unknown_pod_address_escapes_a_pod_selecting_deny() {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "deny-bad",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "ingress": [{"action": "Deny", "from": [pods_with_app("bad")]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    let syn = |src: [u8; 4], sport: u16| v4(src, CLIENT4, TCP, &tcp(sport, 8080, SYN));
    lab.verdict("bad's SYN", Hook::ToPod, ifs.c, &syn(BAD4, 41000), DROP);
    lab.verdict("x's SYN", Hook::ToPod, ifs.c, &syn(X4, 41001), PASS);
    lab.verdict(
        "an unknown address in n2's pod range",
        Hook::ToPod,
        ifs.c,
        &syn([10, 2, 0, 77], 41002),
        DROP,
    );
    lab.verdict(
        "an outside address (no pod range)",
        Hook::ToPod,
        ifs.c,
        &syn([192, 0, 2, 7], 41003),
        PASS,
    );
    lab.verdict(
        "the node (its address lies in n1's pod range)",
        Hook::ToPod,
        ifs.c,
        &syn(NODE4, 41004),
        PASS,
    );
    let unknown6 = v6(
        ip6("fd00:1::77"),
        client6(),
        TCP,
        64,
        &tcp(41005, 8080, SYN),
    );
    lab.verdict(
        "an unknown IPv6 address in n1's pod range",
        Hook::ToPod,
        ifs.c,
        &unknown6,
        DROP,
    );
}

// ---------------------------------------------------------------------------------------
// Port sets of ordered tables that chain
// ---------------------------------------------------------------------------------------

/// FOUND (cnp_attack_programmer first showed it): more than 16 port ranges for one peer
/// of an ordered table denied the whole direction. Fixed: the port sets chain. Two Admin
/// rules accept 40 separate ports from `x` (three chained sets), the next denies `x`
/// every port: the datapath decides port by port, through every link.
#[test]
fn root_cnp_attack_finding_forty_ports_for_one_peer_chain_their_port_sets() {
    let mut st = cnp_state();
    let ports: Vec<serde_json::Value> = (0..40u16)
        .map(|i| json!({"tcp": {"destinationPort": {"number": 1000 + 2 * i}}}))
        .collect();
    let x = json!([pods_with_app("x")]);
    let mut rules: Vec<serde_json::Value> = (ports.chunks(20))
        .map(|c| json!({"action": "Accept", "from": x, "protocols": c}))
        .collect();
    rules.push(json!({"action": "Deny", "from": x}));
    add_cnp(
        &mut st,
        "x-ports-only",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"), "ingress": rules}),
    );
    let (mut lab, ifs) = lab_with(st);
    for (i, (port, want)) in [
        (1000, PASS),
        (1001, DROP),
        (1038, PASS),
        (1040, PASS),
        (1065, DROP),
        (1066, PASS),
        (1078, PASS),
        (1079, DROP),
        (1080, DROP),
    ]
    .into_iter()
    .enumerate()
    {
        lab.verdict(
            &format!("x's SYN to client:{port}"),
            Hook::ToPod,
            ifs.c,
            &v4(X4, CLIENT4, TCP, &tcp(42000 + i as u16, port, SYN)),
            want,
        );
    }
}
