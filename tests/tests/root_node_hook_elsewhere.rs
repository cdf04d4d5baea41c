//! `to_node` on a local pod's packet that reaches the node's sockets at an address that
//! is not the node's own: another of its interfaces' addresses, a broadcast or multicast
//! group, a Service address of kube-proxy's IPVS dummy on a port no Service has. Rules
//! about nodes name the node by its Node's addresses, so such a packet is judged as going
//! to the node's own address (`Plan::node_self`). Run with BPF_PROG_TEST_RUN. **Needs
//! root.** Every test runs in a network namespace of its own thread; nothing is sent.

use netpol_tests::cnp_fixtures::{X4, add_cnp, client_node_port_only, cnp_state, pods_with_app};
use netpol_tests::lab::*;
use serde_json::json;

use netpol_common::reason;

/// A ClusterIP; under IPVS an address of the node's `kube-ipvs0`.
const SVC_ADDR4: [u8; 4] = [10, 96, 0, 1];

fn lab_with(st: ClusterState) -> (Lab, u32) {
    let i = netns(&["vc", "vs"]);
    // UPLINK4 is an address of this node's interfaces, but not of its Node object.
    let lab = Lab::new(
        st,
        &[("client", i[0]), ("server", i[1])],
        &[v4a(NODE4), IpAddr::V6(ip6("fd00:1::1")), v4a(UPLINK4)],
    );
    (lab, i[0])
}

/// `client_node_port_only`: rule `api` accepts the nodes' TCP 6443, `no-nodes` denies
/// the nodes otherwise.
#[test]
fn root_node_hook_elsewhere_other_addresses_of_the_node_are_the_node() {
    let (mut lab, c) = lab_with(client_node_port_only());
    for (what, dst) in [
        ("another interface's address", UPLINK4),
        ("a Service address on a port no Service has", SVC_ADDR4),
    ] {
        lab.expect(
            &format!("{what}, the kubelet's port: rule no-nodes"),
            Hook::ToNode,
            c,
            &v4(CLIENT4, dst, TCP, &tcp(42000, 10250, SYN)),
            DROP,
            "client",
            Some(reason::DROP_EGRESS),
        );
        lab.expect(
            &format!("{what}, the accepted port: rule api"),
            Hook::ToNode,
            c,
            &v4(CLIENT4, dst, TCP, &tcp(42001, 6443, SYN)),
            PASS,
            "client",
            Some(reason::ALLOW_POLICY),
        );
        // Judged packet by packet: a later segment is judged alike, with no entry to ride.
        lab.expect(
            &format!("{what}, a later segment to the kubelet's port"),
            Hook::ToNode,
            c,
            &v4(CLIENT4, dst, TCP, &tcp(42000, 10250, ACK)),
            DROP,
            "client",
            Some(reason::DROP_EGRESS),
        );
    }
    let rules = lab.rule_packets();
    assert_eq!(rules.len(), 1, "only rule api counts: {rules:?}");
}

#[test]
fn root_node_hook_elsewhere_broadcast_and_multicast_reach_the_node() {
    let (mut lab, c) = lab_with(client_node_port_only());
    for (what, dst) in [
        ("limited broadcast", [255, 255, 255, 255]),
        ("a multicast group", [224, 0, 0, 251]),
    ] {
        lab.expect(
            what,
            Hook::ToNode,
            c,
            &v4(CLIENT4, dst, UDP, &udp(42100, 5353)),
            DROP,
            "client",
            Some(reason::DROP_EGRESS),
        );
    }
    let ff02 = v6(client6(), ip6("ff02::1"), UDP, 64, &udp(42101, 547));
    lab.expect(
        "IPv6 all-nodes multicast",
        Hook::ToNode,
        c,
        &ff02,
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

/// What a pod's own socket takes in stays the veths' to decide: a local pod, a pod the
/// agent cannot name yet (in the pod range), a link-local address.
#[test]
fn root_node_hook_elsewhere_pods_sockets_are_not_the_node() {
    let (mut lab, c) = lab_with(client_node_port_only());
    for (what, dst) in [
        ("a local pod", SERVER4),
        ("an unknown pod of this node's range", [10, 1, 0, 77]),
        ("a remote pod", X4),
    ] {
        lab.expect(
            what,
            Hook::ToNode,
            c,
            &v4(CLIENT4, dst, TCP, &tcp(42200, 10250, SYN)),
            PASS,
            "client",
            None,
        );
    }
    let ll = v6(client6(), ip6("fe80::5"), UDP, 64, &udp(42201, 10250));
    lab.expect(
        "a link-local peer",
        Hook::ToNode,
        c,
        &ll,
        PASS,
        "client",
        None,
    );
}

/// A connection the node opened from another of its addresses: the pod's replies are on
/// the entry its veth made, not openings towards the node.
#[test]
fn root_node_hook_elsewhere_replies_to_a_connection_the_node_opened_pass() {
    let (mut lab, c) = lab_with(client_node_port_only());
    lab.verdict(
        "the node's SYN to the client, from another of its addresses",
        Hook::ToPod,
        c,
        &v4(UPLINK4, CLIENT4, TCP, &tcp(50000, 8080, SYN)),
        PASS,
    );
    lab.expect(
        "the client's SYN-ACK at the node's socket",
        Hook::ToNode,
        c,
        &v4(CLIENT4, UPLINK4, TCP, &tcp(8080, 50000, SYN | ACK)),
        PASS,
        "client",
        None,
    );
    lab.expect(
        "but a fresh SYN from the same port to the kubelet is an opening",
        Hook::ToNode,
        c,
        &v4(CLIENT4, UPLINK4, TCP, &tcp(8081, 10250, SYN)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

/// Without ClusterNetworkPolicy the pod's veth decides alone (NetworkPolicy's own-node
/// exemption); without a Node for this node no rule names it, and the packet goes on as
/// its veth decided.
#[test]
fn root_node_hook_elsewhere_leaves_networkpolicy_and_an_unknown_node_alone() {
    let (mut lab, c) = lab_with(cnp_state());
    lab.expect(
        "no ClusterNetworkPolicy",
        Hook::ToNode,
        c,
        &v4(CLIENT4, SVC_ADDR4, TCP, &tcp(42300, 10250, SYN)),
        PASS,
        "client",
        None,
    );
    let mut st = cnp_state();
    st.nodes.remove("n1");
    add_cnp(
        &mut st,
        "deny-nodes",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"name": "no-nodes", "action": "Deny", "to": [{"nodes": {}}]}]}),
    );
    let (mut lab, c) = lab_with(st);
    lab.expect(
        "no Node for this node",
        Hook::ToNode,
        c,
        &v4(CLIENT4, SVC_ADDR4, TCP, &tcp(42301, 10250, SYN)),
        PASS,
        "client",
        None,
    );
}

/// The broadcast address of one of the node's interfaces (a bridge's subnet): a crafted
/// frame to it is delivered to the node's sockets whatever its link-layer address. It is
/// the node's to reach, but no own-node exemption: NetworkPolicy judges it by address.
#[test]
fn root_node_hook_elsewhere_an_interface_broadcast_address_is_the_node_but_not_exempt() {
    const BCAST4: [u8; 4] = [10, 1, 0, 255];
    let own = [v4a(NODE4), IpAddr::V6(ip6("fd00:1::1")), v4a(UPLINK4)].into();
    let (mut lab, c) = lab_with(client_node_port_only());
    lab.pr
        .set_node_addresses(&own, &[v4a(BCAST4)].into(), true)
        .expect("node addresses");
    lab.expect(
        "UDP to the subnet's broadcast address at the node's socket: rule no-nodes",
        Hook::ToNode,
        c,
        &v4(CLIENT4, BCAST4, UDP, &udp(42400, 67)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );

    let mut st = cnp_state();
    set_policy(&mut st, "client-egress-none", CLIENT_EGRESS_NONE);
    let (mut lab, c) = lab_with(st);
    lab.pr
        .set_node_addresses(&own, &[v4a(BCAST4)].into(), true)
        .expect("node addresses");
    lab.expect(
        "NetworkPolicy isolates the client's egress: its broadcast is no node traffic",
        Hook::FromPod,
        c,
        &v4(CLIENT4, BCAST4, UDP, &udp(42401, 67)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    lab.expect(
        "while the node's own address stays exempt",
        Hook::FromPod,
        c,
        &v4(CLIENT4, NODE4, UDP, &udp(42402, 67)),
        PASS,
        "client",
        Some(reason::ALLOW_NODE),
    );
}

/// NodeLocal DNSCache's address on the node's dummy interface: a rule that accepts the
/// address, before the Deny of nodes, decides (the first rule that names the address or
/// the node decides), at the veth and at the node's socket alike; another port of that
/// address is the node's, denied.
#[test]
fn root_node_hook_elsewhere_the_first_rule_naming_the_address_or_the_node_decides() {
    const DNS_CACHE4: [u8; 4] = [169, 254, 20, 10];
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "dns-then-no-nodes",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [
                   {"name": "dns", "action": "Accept",
                    "to": [{"networks": ["169.254.20.10/32"]}],
                    "protocols": [{"udp": {"destinationPort": {"number": 53}}}]},
                   {"name": "no-nodes", "action": "Deny", "to": [{"nodes": {}}]}]}),
    );
    let (mut lab, c) = lab_with(st);
    let own = [v4a(NODE4), IpAddr::V6(ip6("fd00:1::1")), v4a(DNS_CACHE4)].into();
    lab.pr
        .set_node_addresses(&own, &[].into(), true)
        .expect("node addresses");
    let dns = |sport: u16| v4(CLIENT4, DNS_CACHE4, UDP, &udp(sport, 53));
    lab.expect(
        "DNS to the cache at the veth: rule dns",
        Hook::FromPod,
        c,
        &dns(42500),
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
    lab.expect(
        "at the cache's socket: on the veth's entry, judged again",
        Hook::ToNode,
        c,
        &dns(42500),
        PASS,
        "client",
        None,
    );
    lab.expect(
        "a datagram no hook saw (as if translated): rule dns at the socket",
        Hook::ToNode,
        c,
        &dns(42502),
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
    lab.expect(
        "the kubelet's port at the cache's address: rule no-nodes, at the veth",
        Hook::FromPod,
        c,
        &v4(CLIENT4, DNS_CACHE4, TCP, &tcp(42501, 10250, SYN)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}
