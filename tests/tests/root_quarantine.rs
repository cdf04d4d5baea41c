//! A quarantined veth (one that claims a pod's address but cannot be matched to it, see
//! `datapath::pod_links`) on real BPF programs (**needs root**, BPF_PROG_TEST_RUN in a
//! namespace of the test's own): whatever it carries is dropped and counted on endpoint
//! 0, whoever's address it uses and whatever the policy, and it gets its pod back once
//! the claim is resolved.

use std::collections::BTreeSet;

use netpol_agent::datapath::Hook;
use netpol_common::reason;
use netpol_tests::lab::*;

#[test]
fn root_quarantined_veth_carries_nothing() {
    // No policy at all: every pod is open, and still the held veth passes nothing.
    let mut lab = Lab::new(
        base(),
        &[],
        &[
            v4a(NODE4),
            v4a(UPLINK4),
            std::net::IpAddr::V6(ip6("fd00:1::1")),
        ],
    );
    lab.pr.quarantine(BTreeSet::from([1]));
    lab.apply();
    let before = lab.counters(0);
    let packets: [(&str, Hook, Vec<u8>); 6] = [
        (
            "a claimed pod's address, out",
            Hook::FromPod,
            eth(0x0800, &v4(CLIENT4, Y4, TCP, &tcp(40000, 80, SYN))),
        ),
        (
            "to the node, out",
            Hook::FromPod,
            eth(0x0800, &v4(CLIENT4, NODE4, TCP, &tcp(40000, 80, SYN))),
        ),
        (
            "an address nobody has, out",
            Hook::FromPod,
            eth(0x0800, &v4([10, 1, 0, 99], Y4, UDP, &udp(4000, 53))),
        ),
        (
            "IPv6, out",
            Hook::FromPod,
            eth(
                0x86dd,
                &v6(client6(), ip6("fd00:9::1"), TCP, 64, &tcp(40000, 80, SYN)),
            ),
        ),
        (
            "to the claimed address, in",
            Hook::ToPod,
            eth(0x0800, &v4(Y4, CLIENT4, TCP, &tcp(80, 40000, SYN))),
        ),
        (
            "from the node, in",
            Hook::ToPod,
            eth(0x0800, &v4(NODE4, CLIENT4, TCP, &tcp(50000, 8080, SYN))),
        ),
    ];
    for (what, hook, packet) in &packets {
        assert_eq!(lab.run(*hook, 1, packet), DROP, "{what}");
    }
    let after = lab.counters(0);
    let dropped: u64 = (reason::FIRST_DROP..reason::COUNT)
        .map(|r| after[r] - before[r])
        .sum();
    assert_eq!(
        dropped,
        packets.len() as u64,
        "every drop counted on endpoint 0"
    );

    // The claim resolved: the veth is the client's again, and open as the client is.
    lab.pr.quarantine(BTreeSet::new());
    lab.veths
        .insert(netpol_agent::state::ObjectRef::new("default", "client"), 1);
    lab.apply();
    for (what, hook, packet) in &packets[..2] {
        assert_eq!(lab.run(*hook, 1, packet), PASS, "{what}, after");
    }
}
