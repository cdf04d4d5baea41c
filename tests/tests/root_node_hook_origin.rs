//! `to_node` and where a packet came in: a packet with a local pod's source address that
//! entered the node through an uplink or another pod's veth is forged, and must neither
//! pass as the pod's nor open a connection in its name. **Needs root**, and a kernel whose
//! BPF_PROG_TEST_RUN takes `ingress_ifindex` (not 5.10: this file is not among the
//! kernels' tests). Every test runs in a network namespace of its own thread; nothing is
//! sent.

use netpol_common::reason;
use netpol_tests::cnp_fixtures::client_node_port_only;
use netpol_tests::lab::*;

/// The client may reach the node's TCP 6443 (an Admin Accept, so its set is ordered).
fn lab() -> (Lab, [u32; 3]) {
    let st = client_node_port_only();
    let i = netns(&["vc", "vs", "upl"]);
    let mut lab = Lab::new(
        st,
        &[("client", i[0]), ("server", i[1])],
        &[v4a(NODE4), IpAddr::V6(ip6("fd00:1::1")), v4a(UPLINK4)],
    );
    lab.pr
        .maps_mut()
        .set_uplinks(&[i[2]].into())
        .expect("uplinks");
    (lab, [i[0], i[1], i[2]])
}

#[test]
fn root_node_hook_a_pods_address_from_an_uplink_is_forged() {
    let (mut lab, [c, _, up]) = lab();
    let id = lab.id("client");
    let before = lab.counters(id)[reason::DROP_SPOOFED];
    let syn = v4(CLIENT4, NODE4, TCP, &tcp(43000, 6443, SYN));
    assert_eq!(lab.run_from(Hook::ToNode, c, up, &syn), DROP);
    assert_eq!(lab.counters(id)[reason::DROP_SPOOFED], before + 1);
    // Nothing was opened in the client's name: the node's answer is judged as an
    // opening towards the client, whose ingress has no rule, and passes as such,
    // not as a reply (no entry).
    lab.expect(
        "the node's SYN-ACK to the client",
        Hook::ToPod,
        c,
        &v4(NODE4, CLIENT4, TCP, &tcp(6443, 43000, SYN | ACK)),
        PASS,
        "client",
        Some(reason::ALLOW_NODE),
    );
}

#[test]
fn root_node_hook_a_pods_address_from_another_pods_veth_is_forged() {
    let (mut lab, [c, s, _]) = lab();
    let syn = v4(CLIENT4, NODE4, TCP, &tcp(43001, 6443, SYN));
    assert_eq!(lab.run_from(Hook::ToNode, c, s, &syn), DROP);
}

#[test]
fn root_node_hook_the_pods_own_veth_is_its_origin() {
    let (mut lab, [c, _, _]) = lab();
    let syn = v4(CLIENT4, NODE4, TCP, &tcp(43002, 6443, SYN));
    assert_eq!(lab.run_from(Hook::ToNode, c, c, &syn), PASS);
}
