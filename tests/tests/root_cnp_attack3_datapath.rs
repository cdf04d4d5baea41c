//! Third attack on the datapath's ClusterNetworkPolicy enforcement: the unknown pod
//! (`IDENTITY_UNKNOWN_POD` inside the nodes' pod ranges) and chained port sets, run with
//! BPF_PROG_TEST_RUN. **Needs root** (`cargo build -p netpol-agent` first).
//!
//! Tests named `*_finding_*` assert what the spec requires; they failed at a47228d and
//! pass since the fix that followed; the others are guards. Every test runs in a network
//! namespace of its own thread (unshare(CLONE_NEWNET)) with veth pairs; nothing leaves the
//! namespace.

use netpol_tests::cnp_fixtures::{X4, add_cnp, cnp_state, pods_with_app};
use netpol_tests::lab::*;
use serde_json::json;

struct Ifs {
    c: u32,
}

fn lab_with(st: ClusterState) -> (Lab, Ifs) {
    let i = netns(&["vc", "vs", "upl"]);
    let ifs = Ifs { c: i[0] };
    let mut lab = Lab::new(
        st,
        &[("client", i[0]), ("server", i[1])],
        &[v4a(NODE4), IpAddr::V6(ip6("fd00:1::1")), v4a(UPLINK4)],
    );
    lab.pr
        .maps_mut()
        .set_uplinks(&[i[2]].into())
        .expect("uplinks");
    (lab, ifs)
}

/// An address of n2's pod range (10.2.0.0/24) that no pod known to the agent holds.
const UNKNOWN4: [u8; 4] = [10, 2, 0, 77];

/// FINDING. Admin priority 5 passes `app: x` to the lower tiers; Admin priority 10
/// denies the client ingress from every pod. A pod the agent does not know yet (at
/// 10.2.0.77, not labelled `app: x`) matches the Deny by the spec. The datapath looks it
/// up as the unknown pod, which matches every Pass selecting pods: the Pass comes first,
/// the Admin tier is left, nothing below isolates the client: the SYN passes.
#[test]
fn root_cnp_attack3_finding_unknown_pod_passes_through_an_earlier_pass() {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "pass-x",
        "Admin",
        5,
        json!({"subject": pods_with_app("client"),
               "ingress": [{"action": "Pass", "from": [pods_with_app("x")]}]}),
    );
    add_cnp(
        &mut st,
        "deny-all-pods",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    let syn = |src: [u8; 4], sport: u16| v4(src, CLIENT4, TCP, &tcp(sport, 8080, SYN));
    lab.verdict("x's SYN (Pass)", Hook::ToPod, ifs.c, &syn(X4, 43000), PASS);
    lab.verdict(
        "bad's SYN (Deny)",
        Hook::ToPod,
        ifs.c,
        &syn(netpol_tests::cnp_fixtures::BAD4, 43001),
        DROP,
    );
    lab.verdict(
        "an unknown pod's SYN: the spec's Deny of every pod",
        Hook::ToPod,
        ifs.c,
        &syn(UNKNOWN4, 43002),
        DROP,
    );
}

/// FINDING (a regression of 41f1bdb). The client's egress: Admin priority 5 passes
/// `app: x`; Admin priority 10 denies the block 10.2.0.0/16. Before the change an
/// address without an identity met only address rules, and the block's Deny dropped
/// it; now the unknown pod matches the Pass, which comes first: the client reaches an
/// unknown address in the denied block.
#[test]
fn root_cnp_attack3_finding_unknown_pod_pass_hides_a_block_deny() {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "pass-x",
        "Admin",
        5,
        json!({"subject": pods_with_app("client"),
               "egress": [{"action": "Pass", "to": [pods_with_app("x")]}]}),
    );
    add_cnp(
        &mut st,
        "deny-block",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"action": "Deny", "to": [{"networks": ["10.2.0.0/16"]}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    let syn = |dst: [u8; 4], sport: u16| v4(CLIENT4, dst, TCP, &tcp(sport, 80, SYN));
    lab.verdict(
        "SYN to x (Pass)",
        Hook::FromPod,
        ifs.c,
        &syn(X4, 44000),
        PASS,
    );
    lab.verdict(
        "SYN to bad (block Deny)",
        Hook::FromPod,
        ifs.c,
        &syn(netpol_tests::cnp_fixtures::BAD4, 44001),
        DROP,
    );
    lab.verdict(
        "SYN to an outside address of the block (not in a pod range)",
        Hook::FromPod,
        ifs.c,
        &syn([10, 2, 9, 9], 44002),
        DROP,
    );
    lab.verdict(
        "SYN to an unknown pod of the block",
        Hook::FromPod,
        ifs.c,
        &syn(UNKNOWN4, 44003),
        DROP,
    );
}

/// FINDING (fail closed too far). n2's pod range's network address (10.2.0.0, flannel
/// VXLAN's `flannel.1` address, the source of n2's host traffic to remote pods) is no
/// pod's: IPAM never hands it out. An Admin Deny of every pod drops it.
#[test]
fn root_cnp_attack3_finding_pod_range_network_address_is_no_pod() {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "deny-all-pods",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    let syn = |src: [u8; 4], sport: u16| v4(src, CLIENT4, TCP, &tcp(sport, 8080, SYN));
    lab.verdict(
        "n2 itself",
        Hook::ToPod,
        ifs.c,
        &syn(REMOTE_NODE4, 45000),
        PASS,
    );
    lab.verdict(
        "an unknown pod",
        Hook::ToPod,
        ifs.c,
        &syn(UNKNOWN4, 45001),
        DROP,
    );
    lab.verdict(
        "n2's flannel.1 address (10.2.0.0)",
        Hook::ToPod,
        ifs.c,
        &syn([10, 2, 0, 0], 45002),
        PASS,
    );
}

/// Guard: the unknown pod against a chain. Two Admin rules deny the unknown-pod-bearing
/// peers (`namespaces: {}`) 17 separate ports (one chain of two links on the unknown
/// pod's entry), then an Accept of the block lets the rest in. Ports of both links
/// drop, ports between them and 0/65535 pass; a known pod with no rule of its own is
/// matched by the Deny too (it is in every namespace).
#[test]
fn root_cnp_attack3_unknown_pod_through_a_chained_deny() {
    let mut st = cnp_state();
    let ports: Vec<serde_json::Value> = (0..17u16)
        .map(|i| json!({"tcp": {"destinationPort": {"number": 2000 + 2 * i}}}))
        .collect();
    add_cnp(
        &mut st,
        "deny-ports",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"action": "Deny", "to": [{"namespaces": {}}], "protocols": ports},
                          {"action": "Accept", "to": [{"networks": ["10.2.0.0/16"]}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    for (i, (port, want)) in [
        (2000u16, DROP),
        (2001, PASS),
        (2030, DROP),
        (2032, DROP),
        (2033, PASS),
        (2034, PASS),
        (0, PASS),
        (65535, PASS),
    ]
    .into_iter()
    .enumerate()
    {
        lab.verdict(
            &format!("SYN to an unknown pod :{port}"),
            Hook::FromPod,
            ifs.c,
            &v4(CLIENT4, UNKNOWN4, TCP, &tcp(46000 + i as u16, port, SYN)),
            want,
        );
        lab.verdict(
            &format!("SYN to x :{port}"),
            Hook::FromPod,
            ifs.c,
            &v4(CLIENT4, X4, TCP, &tcp(46100 + i as u16, port, SYN)),
            want,
        );
    }
}
