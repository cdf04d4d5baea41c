//! Shared Admin tables on the BPF datapath (BPF_PROG_TEST_RUN). **Needs root.** Guards:
//! corners of 812096a that came out right.
//!
//! Every test runs in a network namespace of its own thread with veth pairs, which goes
//! away with the thread. Nothing leaves the namespace.

use netpol_common::{RULESET_ADMIN_TABLE, RULESET_HAS_ADMIN, ruleset_base};
use netpol_tests::cnp_fixtures::{X4, add_cnp, cnp_state, labels, pods_with_app};
use netpol_tests::lab::*;
use serde_json::json;

/// `ADMIN_TABLES` as the kernel holds it.
fn admin_names(lab: &Lab) -> Vec<(u32, u32)> {
    let m = &lab.pr.maps().admin_tables;
    m.iter().map(|kv| kv.expect("read")).collect()
}

/// Admin-table keyed entries in the kernel's peer maps.
fn admin_entries(lab: &Lab) -> usize {
    let m = lab.pr.maps();
    let by_identity = (m.peers_by_identity.keys())
        .map(|k| k.expect("read").ruleset)
        .filter(|r| r & RULESET_ADMIN_TABLE != 0)
        .count();
    let by_address = (m.peers_cidr.keys())
        .map(|k| u32::from_be_bytes(k.expect("read").data().ruleset_be))
        .filter(|r| r & RULESET_ADMIN_TABLE != 0)
        .count();
    by_identity + by_address
}

/// Client and server (both local, different NetworkPolicies, so different sets) under one
/// Admin egress Deny of `bad`: one table in the kernel. Both talk to `x`; `x` is
/// relabelled `bad`: the next segment of each established connection is dropped (the
/// sets holding the shared table were renewed, the datapath reads the table through the
/// new ids). The policy removed: no `ADMIN_TABLES` entry and no Admin entry left.
#[test]
fn root_attack_admin_tables_guard_shared_table_revokes_both_pods_and_goes() {
    let i = netns(&["vc", "vs"]);
    let (vc, vs) = (i[0], i[1]);
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "deny-bad",
        "Admin",
        10,
        json!({"subject": {"namespaces": {}},
               "egress": [{"action": "Deny", "to": [pods_with_app("bad")]}]}),
    );
    set_policy(
        &mut st,
        "server-egress-x",
        r#"{"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.2.0.0/24"}}]}]}"#,
    );
    let mut lab = Lab::new(
        st,
        &[("client", vc), ("server", vs)],
        &[v4a(NODE4), v4a(UPLINK4)],
    );
    let c_set = lab.pr.ifaces()[&vc].egress_set;
    let s_set = lab.pr.ifaces()[&vs].egress_set;
    assert!(c_set & RULESET_HAS_ADMIN != 0 && s_set & RULESET_HAS_ADMIN != 0);
    assert_ne!(ruleset_base(c_set), ruleset_base(s_set), "two sets");
    let names = admin_names(&lab);
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names[0].1, names[1].1, "one table: {names:?}");

    lab.open_tcp_80(vc, X4, 41000);
    lab.verdict(
        "server SYN to x",
        Hook::FromPod,
        vs,
        &v4(SERVER4, X4, TCP, &tcp(42000, 80, SYN)),
        PASS,
    );
    lab.verdict(
        "x SYN-ACK to server",
        Hook::ToPod,
        vs,
        &v4(X4, SERVER4, TCP, &tcp(80, 42000, SYN | ACK)),
        PASS,
    );
    lab.verdict(
        "client ACK",
        Hook::FromPod,
        vc,
        &v4(CLIENT4, X4, TCP, &tcp(41000, 80, ACK)),
        PASS,
    );

    lab.state
        .pods
        .get_mut(&ObjectRef::new("default", "x"))
        .expect("x")
        .labels = labels(&[("app", "bad")]);
    lab.apply();
    lab.verdict(
        "client ACK to x, now bad",
        Hook::FromPod,
        vc,
        &v4(CLIENT4, X4, TCP, &tcp(41000, 80, ACK)),
        DROP,
    );
    lab.verdict(
        "server ACK to x, now bad",
        Hook::FromPod,
        vs,
        &v4(SERVER4, X4, TCP, &tcp(42000, 80, ACK)),
        DROP,
    );

    lab.state.cluster_policies.clear();
    lab.apply();
    assert!(admin_names(&lab).is_empty(), "{:?}", admin_names(&lab));
    assert_eq!(admin_entries(&lab), 0);
    lab.verdict(
        "client SYN to x, no Admin policy",
        Hook::FromPod,
        vc,
        &v4(CLIENT4, X4, TCP, &tcp(41001, 80, SYN)),
        PASS,
    );
}
