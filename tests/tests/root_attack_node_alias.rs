//! An attack on the node alias (commits 892ff9c and c1ca48c): a local pod's packet that
//! reaches the node at an address that rules about nodes do not name is judged, under an
//! ordered egress set, as going both to its address and to the node (`verdict::decide`'s
//! `node`, `verdict::node_alias` at the veth, `towards_node` at `to_node`). Tests named
//! `..._finding_...` assert what the semantics require and fail on the code they were
//! written against; the others guard corners that came out right. Run with
//! BPF_PROG_TEST_RUN. **Needs root.** Every test runs in a network namespace of its own
//! thread; nothing is sent.

use netpol_tests::cnp_fixtures::{add_cnp, client_node_port_only, cnp_state, pods_with_app};
use netpol_tests::lab::*;
use serde_json::json;

use netpol_common::reason;

/// The `kubernetes` Service's address (`base()`).
const K8S4: [u8; 4] = [10, 96, 0, 1];
/// A bridge CNI's gateway (`cni0`): an address of this node's interfaces in its pod range
/// 10.1.0.0/24, not one of its Node's addresses.
const GW4: [u8; 4] = [10, 1, 0, 254];
/// The pod range's broadcast address, `cni0`'s broadcast address.
const BCAST4: [u8; 4] = [10, 1, 0, 255];

fn node6() -> Ipv6Addr {
    ip6("fd00:1::1")
}

fn lab_with(st: ClusterState) -> (Lab, u32) {
    let i = netns(&["vc", "vs"]);
    let mut lab = Lab::new(
        st,
        &[("client", i[0]), ("server", i[1])],
        &[v4a(NODE4), IpAddr::V6(node6()), v4a(UPLINK4)],
    );
    // What the agent programs from getifaddrs on a bridge node (no --strict-node-traffic).
    let own = [v4a(NODE4), IpAddr::V6(node6()), v4a(UPLINK4), v4a(GW4)].into();
    lab.pr
        .set_node_addresses(&own, &[v4a(BCAST4)].into(), true)
        .expect("node addresses");
    (lab, i[0])
}

/// An Admin policy over the client that says nothing about nodes or the pod range: rule
/// `x-web` accepts pods `app: x` on TCP 80. It makes the client's egress set ordered.
fn unrelated_admin(st: &mut ClusterState) {
    add_cnp(
        st,
        "x-web",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"name": "x-web", "action": "Accept",
                           "to": [pods_with_app("x")],
                           "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}]}),
    );
}

fn deny_nodes(st: &mut ClusterState, priority: i64) {
    add_cnp(
        st,
        "deny-nodes",
        "Admin",
        priority,
        json!({"subject": pods_with_app("client"),
               "egress": [{"name": "no-nodes", "action": "Deny", "to": [{"nodes": {}}]}]}),
    );
}

// ---- findings ----------------------------------------------------------------------

/// The client's egress is isolated by NetworkPolicy (no egress allowed). NetworkPolicy
/// alone judges a packet to the bridge's broadcast address by that address (it is not the
/// node's own address: no exemption) and drops it; a broadcast also reaches the bridged
/// neighbour pods' sockets. An Admin policy that says nothing of this packet (it accepts
/// another peer) must leave it to NetworkPolicy as it was; but with the client's egress
/// set ordered, `node_alias` gives the packet the node's address, and `decide`'s
/// NetworkPolicy exemption (`node.is_some_and(is_node)`) lets it through.
#[test]
fn root_attack_node_alias_finding_an_unrelated_admin_policy_lets_np_isolated_broadcast_through() {
    let mut st = cnp_state();
    set_policy(&mut st, "client-egress-none", CLIENT_EGRESS_NONE);
    let pkt = v4(CLIENT4, BCAST4, UDP, &udp(45000, 9999));
    // NetworkPolicy alone.
    let (mut lab, c) = lab_with(st.clone());
    lab.expect(
        "NetworkPolicy alone: the broadcast is denied",
        Hook::FromPod,
        c,
        &pkt,
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    // The same NetworkPolicy, and an Admin policy about pods `app: x`.
    unrelated_admin(&mut st);
    lab.state = st;
    lab.apply();
    lab.expect(
        "with an unrelated Admin policy: NetworkPolicy still denies the broadcast",
        Hook::FromPod,
        c,
        &pkt,
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

/// The same with an Admin `Pass` of nodes: the packet goes to NetworkPolicy, which
/// isolates the client and exempts only the node's own addresses. A broadcast on the
/// bridge (the neighbour pods' sockets take it too) is no own-node traffic.
#[test]
fn root_attack_node_alias_finding_admin_pass_of_nodes_gives_a_broadcast_the_node_exemption() {
    let mut st = cnp_state();
    set_policy(&mut st, "client-egress-none", CLIENT_EGRESS_NONE);
    add_cnp(
        &mut st,
        "pass-nodes",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"name": "to-np", "action": "Pass", "to": [{"nodes": {}}]}]}),
    );
    let (mut lab, c) = lab_with(st);
    lab.expect(
        "the node itself: Pass, then NetworkPolicy's exemption",
        Hook::FromPod,
        c,
        &v4(CLIENT4, NODE4, UDP, &udp(45100, 9999)),
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
    lab.expect(
        "the bridge's broadcast: NetworkPolicy denies it",
        Hook::FromPod,
        c,
        &v4(CLIENT4, BCAST4, UDP, &udp(45101, 9999)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

/// A Service whose backend is this node at its gateway address (an address rules about
/// nodes do not name): `to_node` judges the translated SYN with the alias (rule `api`
/// accepts it) and the Service record learns the backend. After a policy change that
/// leaves the client's verdict as it was (another Admin policy is added), the Service's
/// replies are re-judged by `service::still_allowed` on the backend's address alone,
/// without the alias: rule `no-gw` (after `api`) denies it and the connection is cut,
/// although `to_node` still passes the client's side by rule `api`.
#[test]
fn root_attack_node_alias_finding_service_replies_from_an_aliased_backend_are_cut_by_an_unrelated_change()
 {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "node-port",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [
                   {"name": "api", "action": "Accept", "to": [{"nodes": {}}],
                    "protocols": [{"tcp": {"destinationPort": {"number": 6443}}}]},
                   {"name": "no-nodes", "action": "Deny", "to": [{"nodes": {}}]},
                   {"name": "no-gw", "action": "Deny", "to": [{"networks": ["10.1.0.254/32"]}]}]}),
    );
    let (mut lab, c) = lab_with(st);
    lab.expect(
        "SYN to the kubernetes Service",
        Hook::FromPod,
        c,
        &v4(CLIENT4, K8S4, TCP, &tcp(45200, 443, SYN)),
        PASS,
        "client",
        Some(reason::PASS_SERVICE),
    );
    lab.expect(
        "the SYN translated to the gateway address: as the node, rule api",
        Hook::ToNode,
        c,
        &v4(CLIENT4, GW4, TCP, &tcp(45200, 6443, SYN)),
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
    lab.verdict(
        "SYN-ACK from the Service address",
        Hook::ToPod,
        c,
        &v4(K8S4, CLIENT4, TCP, &tcp(443, 45200, SYN | ACK)),
        PASS,
    );
    unrelated_admin(&mut lab.state);
    lab.apply();
    lab.verdict(
        "the client's ACK at the node: still rule api",
        Hook::ToNode,
        c,
        &v4(CLIENT4, GW4, TCP, &tcp(45200, 6443, ACK)),
        PASS,
    );
    lab.verdict(
        "a fresh connection the same way: rule api",
        Hook::ToNode,
        c,
        &v4(CLIENT4, GW4, TCP, &tcp(45201, 6443, SYN)),
        PASS,
    );
    lab.verdict(
        "the node's data from the Service address: the connection is still allowed",
        Hook::ToPod,
        c,
        &v4(K8S4, CLIENT4, TCP, &tcp(443, 45200, PSH | ACK)),
        PASS,
    );
}

/// Under kube-proxy's IPVS mode a ClusterIP is an address of `kube-ipvs0`, and the
/// node's stack answers an ICMP echo to it (no socket takes it in, so `to_node` never
/// judges it). The agent left `kube-ipvs0` out of `NODE_ADDRS`, so the veth judged the
/// echo by the Service address alone: the node answered a ping past an Admin Deny of
/// nodes, which drops the same ping to the node's own address and to its gateway. (In
/// iptables mode no one answers, so dropping it costs nothing.) Now the agent writes
/// `kube-ipvs0`'s addresses (`set_service_addresses`, as `node_addr::LOCAL`).
#[test]
fn root_attack_node_alias_finding_a_ping_to_an_ipvs_cluster_ip_passes_deny_nodes() {
    let mut st = cnp_state();
    deny_nodes(&mut st, 10);
    let (mut lab, c) = lab_with(st);
    lab.pr
        .set_service_addresses(&[v4a(K8S4)].into())
        .expect("kube-ipvs0's addresses");
    lab.expect(
        "echo to the gateway: rule no-nodes",
        Hook::FromPod,
        c,
        &v4(CLIENT4, GW4, ICMP, &echo(8, 1)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    lab.expect(
        "echo to the kubernetes ClusterIP: the node answers it",
        Hook::FromPod,
        c,
        &v4(CLIENT4, K8S4, ICMP, &echo(8, 2)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

// ---- guards -------------------------------------------------------------------------

/// An Admin Deny of nodes drops the broadcast at the veth, and lets the client reach pod
/// `x` (rule `x-web` first).
#[test]
fn root_attack_node_alias_deny_nodes_drops_the_broadcast_at_the_veth() {
    let mut st = cnp_state();
    unrelated_admin(&mut st);
    deny_nodes(&mut st, 20);
    let (mut lab, c) = lab_with(st);
    lab.expect(
        "broadcast",
        Hook::FromPod,
        c,
        &v4(CLIENT4, BCAST4, UDP, &udp(46000, 9999)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    lab.expect(
        "the gateway",
        Hook::FromPod,
        c,
        &v4(CLIENT4, GW4, TCP, &tcp(46001, 10250, SYN)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

/// Admin `Pass` of nodes, then a Baseline `Deny` of nodes: a pod that NetworkPolicy does
/// not isolate is denied the node at its gateway and at a group address, at its socket.
#[test]
fn root_attack_node_alias_pass_then_baseline_deny_of_nodes() {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "pass-nodes",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"name": "to-np", "action": "Pass", "to": [{"nodes": {}}]}]}),
    );
    add_cnp(
        &mut st,
        "baseline-nodes",
        "Baseline",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"name": "bl-no-nodes", "action": "Deny", "to": [{"nodes": {}}]}]}),
    );
    let (mut lab, c) = lab_with(st);
    for (what, dst) in [
        ("gateway", GW4),
        ("group", [224, 0, 0, 251]),
        ("a ClusterIP on a port no Service has", K8S4),
    ] {
        lab.expect(
            what,
            Hook::ToNode,
            c,
            &v4(CLIENT4, dst, UDP, &udp(46100, 5353)),
            DROP,
            "client",
            Some(reason::DROP_EGRESS),
        );
    }
}

/// NetworkPolicy isolating the client and an Admin Pass of nodes: the node's own
/// addresses (NAMED or an interface's) keep NetworkPolicy's exemption at the socket.
#[test]
fn root_attack_node_alias_np_exemption_for_the_nodes_own_addresses_after_pass() {
    let mut st = cnp_state();
    set_policy(&mut st, "client-egress-none", CLIENT_EGRESS_NONE);
    add_cnp(
        &mut st,
        "pass-nodes",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"name": "to-np", "action": "Pass", "to": [{"nodes": {}}]}]}),
    );
    let (mut lab, c) = lab_with(st);
    for (what, dst) in [("own", NODE4), ("gateway", GW4), ("uplink", UPLINK4)] {
        lab.verdict(
            what,
            Hook::FromPod,
            c,
            &v4(CLIENT4, dst, TCP, &tcp(46200, 10250, SYN)),
            PASS,
        );
        lab.verdict(
            what,
            Hook::ToNode,
            c,
            &v4(CLIENT4, dst, TCP, &tcp(46200, 10250, SYN)),
            PASS,
        );
    }
}

/// A Node listing IPv6 only: the IPv4 gateway is judged as the Node's IPv6 address (the
/// other family), so a Deny of nodes holds.
#[test]
fn root_attack_node_alias_node_self_falls_back_to_ipv6() {
    let mut st = cnp_state();
    st.nodes.get_mut("n1").expect("n1").ips = vec![IpAddr::V6(node6())];
    deny_nodes(&mut st, 10);
    let (mut lab, c) = lab_with(st);
    lab.expect(
        "gateway at the veth",
        Hook::FromPod,
        c,
        &v4(CLIENT4, GW4, TCP, &tcp(46300, 10250, SYN)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    lab.expect(
        "the node's IPv4 address (no longer named) at its socket",
        Hook::ToNode,
        c,
        &v4(CLIENT4, NODE4, TCP, &tcp(46301, 10250, SYN)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

/// A connection to the gateway accepted by a rule naming the node: a policy change that
/// denies nodes cuts it at the veth and at the socket alike.
#[test]
fn root_attack_node_alias_deny_after_accept_cuts_at_both_hooks() {
    let (mut lab, c) = lab_with(client_node_port_only());
    let seg = |flags| v4(CLIENT4, GW4, TCP, &tcp(46400, 6443, flags));
    lab.verdict("SYN at the veth", Hook::FromPod, c, &seg(SYN), PASS);
    lab.verdict("SYN at the socket", Hook::ToNode, c, &seg(SYN), PASS);
    lab.verdict(
        "SYN-ACK",
        Hook::ToPod,
        c,
        &v4(GW4, CLIENT4, TCP, &tcp(6443, 46400, SYN | ACK)),
        PASS,
    );
    lab.state.cluster_policies.remove("node-port");
    deny_nodes(&mut lab.state, 10);
    lab.apply();
    lab.verdict("ACK at the socket", Hook::ToNode, c, &seg(ACK), DROP);
    lab.verdict("ACK at the veth", Hook::FromPod, c, &seg(ACK), DROP);
}
