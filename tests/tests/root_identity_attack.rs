//! Attacks on peer identities (`IDENTITIES`, `PEERS_BY_IDENTITY`) and the programmer's
//! renew logic. **Needs root** (the datapath tests load BPF; the `MemoryMaps` ones do not).
//!
//! The rule these check (README, "What it enforces"): "A policy change re-decides each
//! open connection at its next packet: revoked ones stop, allowed ones go on", "a peer is
//! allowed by its identity's entry or its address's longest block, whichever allows", and
//! "when a map is full, the pods whose new rules do not fit keep their last complete
//! rules". Connections are re-decided only when their pod's rule-set id changes, so every
//! way an address can come to be allowed less must change that id.
//!
//! Tests named `..._finding_...` were found by this attack and failed before the fixes in
//! `program/mod.rs` (ids for identities rule sets name, renewals kept pending until they
//! fit, removals before inserts and no address left on its old identity when its new one
//! does not fit, adopted identity ids kept); the others are cases checked and found
//! correct. Every datapath test runs in a network namespace of its own thread; nothing
//! leaves it.

use netpol_agent::program::memory::MemoryMaps;
use netpol_agent::program::{Programmer, addr_of};
use netpol_agent::state::ContainerPort;
use netpol_tests::lab::*;

/// The client may reach `app=server` pods on TCP 80, nothing else.
const CLIENT_EGRESS_SERVERS_80: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}], "ports": [{"port": 80}]}]}"#;

/// Remote pods (node n2), not in `base()`.
const REPLICA4: [u8; 4] = [10, 1, 7, 9];
const NEWCOMER4: [u8; 4] = [10, 1, 7, 10];

fn remote(ip: IpAddr, labels: &[(&str, &str)]) -> PodInfo {
    let mut p = pod(&[ip], "x");
    p.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    p.node = Some("n2".into());
    p
}

fn add(st: &mut ClusterState, name: &str, p: PodInfo) {
    st.pods.insert(ObjectRef::new("default", name), p);
}

fn del(st: &mut ClusterState, name: &str) {
    st.pods.remove(&ObjectRef::new("default", name));
}

fn relabel(st: &mut ClusterState, name: &str, app: &str) {
    let p = st
        .pods
        .get_mut(&ObjectRef::new("default", name))
        .expect("pod");
    p.labels.insert("app".into(), app.into());
}

/// A lab like `Lab::new`, with map sizes of the test's choosing.
fn lab_sized(st: ClusterState, veths: &[(&str, u32)], f: impl FnOnce(&mut MapSizes)) -> Lab {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "loads BPF: run as root");
    let mut ms = small_maps();
    f(&mut ms);
    let mut dp = Datapath::load(AttachMode::Auto, &ms, None).expect("load BPF");
    let maps = dp.take_maps().expect("maps");
    let mut pr = Programmer::new(maps, sizes::COUNTERS);
    let node: BTreeSet<IpAddr> = [v4a(NODE4), v4a(UPLINK4)].into_iter().collect();
    pr.set_node_addrs(&node).expect("node addrs");
    Lab::assemble(dp, pr, st, veths)
}

/// Programs the current state, whatever comes of it (map-full paths).
fn try_apply(lab: &mut Lab) -> bool {
    let plan = compile(&lab.state, "n1");
    assert!(plan.errors.is_empty(), "{:?}", plan.errors);
    lab.pr.apply(&plan, &lab.veths).is_ok()
}

/// Data on client:`sport` -> `to`:80.
#[track_caller]
fn data(lab: &mut Lab, what: &str, c: u32, to: [u8; 4], sport: u16, verdict: i32) {
    lab.verdict(
        what,
        Hook::FromPod,
        c,
        &v4(CLIENT4, to, TCP, &tcp(sport, 80, PSH | ACK)),
        verdict,
    );
}

/// base() with the client isolated on egress to servers:80, and a remote server replica
/// (so relabelling the local server does not change the rule set's identities).
fn servers_state() -> ClusterState {
    let mut st = base();
    set_policy(&mut st, "client-out", CLIENT_EGRESS_SERVERS_80);
    add(
        &mut st,
        "replica",
        remote(v4a(REPLICA4), &[("app", "server")]),
    );
    st
}

// ---------------------------------------------------------------------------------------
// Findings (fixed)
// ---------------------------------------------------------------------------------------

/// Rule: a pod the policy allows is allowed (`podSelector` peers). Two pods briefly list
/// the same address (the old one not yet marked terminated when its IP is handed out
/// again). The new pod's identity has no address of its own in that plan, so it gets no
/// id, and the rule set naming it is written without its entry. Once the old pod goes,
/// the address maps to the new identity, but the rule set's content did not change, so it
/// is never rewritten: the allowed pod stays denied.
#[test]
fn root_identity_attack_finding_identity_first_seen_on_a_shared_address_is_never_allowed() {
    let i = netns(&["vc"]);
    let mut st = servers_state();
    // The old pod at NEWCOMER4 (sorts last by name, so it wins the address).
    add(
        &mut st,
        "zzz-old",
        remote(v4a(NEWCOMER4), &[("app", "old")]),
    );
    let mut lab = lab_sized(st, &[("client", i[0])], |_| {});
    // The new pod takes the address before the old one is gone; its identity is new.
    add(
        &mut lab.state,
        "aaa-new",
        remote(v4a(NEWCOMER4), &[("app", "server"), ("v", "2")]),
    );
    lab.apply();
    del(&mut lab.state, "zzz-old");
    lab.apply();
    lab.expect(
        "SYN to the new server (app=server), alone at its address",
        Hook::FromPod,
        i[0],
        &v4(CLIENT4, NEWCOMER4, TCP, &tcp(41000, 80, SYN)),
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
}

/// Rule: revoked connections stop; a full map keeps the last complete rules "until room
/// returns". A relabel that needs a rule set renewed while the peer map is full leaves
/// the set's id (documented in `write_identities`). But once room returns, nothing renews
/// it: the next apply sees no identity move, so the established connection to the
/// relabelled pod lives on forever.
#[test]
fn root_identity_attack_finding_renew_that_did_not_fit_is_never_retried() {
    let i = netns(&["vc", "vo"]);
    let mut st = servers_state();
    // A second rule set naming the server identity, only to take room.
    set_policy(
        &mut st,
        "other-in",
        r#"{"podSelector": {"matchLabels": {"app": "other"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "server"}}}]}]}"#,
    );
    // Two entries: each set's (server identity) entry. No room for a renewed copy.
    let mut lab = lab_sized(st, &[("client", i[0]), ("other", i[1])], |m| {
        m.peer_entries = 2
    });
    lab.open_tcp_80(i[0], SERVER4, 41000);
    relabel(&mut lab.state, "server", "nope");
    let _ = try_apply(&mut lab);
    // Room returns: the other pod's policy goes.
    del_policy(&mut lab.state, "other-in");
    assert!(try_apply(&mut lab), "apply once room returned");
    data(
        &mut lab,
        "data to the relabelled server after room returned",
        i[0],
        SERVER4,
        41000,
        DROP,
    );
}

/// Rule: revoked connections stop. A failed `IDENTITIES` insert aborts `apply` half way
/// through `write_identities`: the relabelled address was already rewritten, the renew
/// was not done. The next apply (the pod that did not fit is gone) sees no move, so the rule set is never renewed and the
/// connection to the relabelled pod survives.
#[test]
fn root_identity_attack_finding_identity_map_error_loses_the_renew() {
    let i = netns(&["vc"]);
    let mut st = servers_state();
    // Single-stack server, so its only address is rewritten before the failing insert.
    st.pods
        .get_mut(&ObjectRef::new("default", "server"))
        .expect("server")
        .ips = vec![v4a(SERVER4)];
    // client (2) + server + other + replica = 5 addresses: full.
    let mut lab = lab_sized(st, &[("client", i[0])], |m| m.identity_entries = 5);
    lab.open_tcp_80(i[0], SERVER4, 41000);
    relabel(&mut lab.state, "server", "nope");
    add(
        &mut lab.state,
        "newcomer",
        remote(v4a(NEWCOMER4), &[("app", "x")]),
    );
    let _ = try_apply(&mut lab); // the newcomer does not fit
    // The pod that did not fit goes away.
    del(&mut lab.state, "newcomer");
    assert!(try_apply(&mut lab), "apply once room returned");
    data(
        &mut lab,
        "data to the relabelled server",
        i[0],
        SERVER4,
        41000,
        DROP,
    );
}

/// Rule: revoked connections stop. With `IDENTITIES` exactly full, a pod replaced by
/// another (same count of addresses, the new state fits) fails the whole apply: new
/// addresses are inserted before removed ones are deleted. The policy change made in
/// the same apply (the client's egress revoked) is never programmed.
#[test]
fn root_identity_attack_finding_full_identity_map_blocks_a_revocation_on_pod_churn() {
    let i = netns(&["vc"]);
    // client (2) + server (2) + other + replica = 6 addresses: full.
    let mut lab = lab_sized(servers_state(), &[("client", i[0])], |m| {
        m.identity_entries = 6
    });
    lab.open_tcp_80(i[0], SERVER4, 41000);
    // One remote pod replaced by another, and the client's egress revoked.
    del(&mut lab.state, "replica");
    add(
        &mut lab.state,
        "replica2",
        remote(v4a(NEWCOMER4), &[("app", "server")]),
    );
    set_policy(&mut lab.state, "client-out", CLIENT_EGRESS_NONE);
    let ok = try_apply(&mut lab);
    data(
        &mut lab,
        "data after the client's egress was revoked",
        i[0],
        SERVER4,
        41000,
        DROP,
    );
    assert!(
        ok,
        "the new state has as many addresses as the old: it fits"
    );
}

/// Rule: when a map is full, the pods whose new rules do not fit keep their last
/// complete rules. After a restart (`adopt`), identities get new ids and every address
/// of `IDENTITIES` is rewritten to them before any endpoint flips; a pod whose new rule
/// set does not fit (the old run's entries still take the room) keeps the adopted set,
/// whose entries name the old ids: it now allows no pod peer at all.
#[test]
fn root_identity_attack_finding_adopted_set_kept_on_overflow_loses_its_pod_peers() {
    let st = servers_state();
    let plan = compile(&st, "n1");
    let mut p1 = Programmer::new(MemoryMaps::default(), 64);
    p1.apply(&plan, &BTreeMap::new()).expect("first run");
    let client = addr_of(v4a(CLIENT4));
    let set = p1.maps().endpoints[&client].egress_set;
    assert!(
        p1.maps().allows(set, v4a(SERVER4), Protocol::Tcp, 80),
        "first run allows the server"
    );
    // The agent restarts on the pinned maps, which have no room for a second copy.
    let mut maps = std::mem::take(p1.maps_mut());
    maps.peer_capacity = Some(maps.by_identity.len() + maps.cidr.len());
    let mut p2 = Programmer::new(maps, 64);
    p2.adopt().expect("adopt");
    let stats = p2.apply(&plan, &BTreeMap::new()).expect("second run");
    assert!(
        !stats.overflowed.is_empty(),
        "precondition: the client overflowed"
    );
    let set = p2.maps().endpoints[&client].egress_set;
    assert!(
        p2.maps().allows(set, v4a(SERVER4), Protocol::Tcp, 80),
        "the client keeps its last complete rules, which allow the server"
    );
}

// ---------------------------------------------------------------------------------------
// Checked and found correct
// ---------------------------------------------------------------------------------------

/// Rule: revoked connections stop. A relabel to an identity the rule allows just as much
/// renews nothing and keeps the connection; to one it allows less, the connection stops.
#[test]
fn root_identity_attack_relabel_equal_keeps_less_drops() {
    let i = netns(&["vc"]);
    let mut st = servers_state();
    set_policy(
        &mut st,
        "client-out",
        r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
          "egress": [{"to": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["server", "server2"]}]}}], "ports": [{"port": 80}]}]}"#,
    );
    add(
        &mut st,
        "replica2",
        remote(v4a(NEWCOMER4), &[("app", "server2")]),
    );
    let mut lab = lab_sized(st, &[("client", i[0])], |_| {});
    lab.open_tcp_80(i[0], SERVER4, 41000);
    let set = lab
        .pr
        .maps()
        .endpoints
        .get(&addr_of(v4a(CLIENT4)), 0)
        .unwrap()
        .egress_set;
    relabel(&mut lab.state, "server", "server2");
    lab.apply();
    let after = lab
        .pr
        .maps()
        .endpoints
        .get(&addr_of(v4a(CLIENT4)), 0)
        .unwrap()
        .egress_set;
    assert_eq!(set, after, "equal allowance: no renew");
    data(&mut lab, "still allowed", i[0], SERVER4, 41000, PASS);
    relabel(&mut lab.state, "server", "nope");
    lab.apply();
    data(&mut lab, "relabelled out", i[0], SERVER4, 41000, DROP);
}

/// Rule: namespaceSelector peers follow namespace labels; a label change revokes.
#[test]
fn root_identity_attack_namespace_label_change_revokes() {
    let i = netns(&["vc"]);
    let mut st = servers_state();
    st.namespaces.insert(
        "default".into(),
        [("team".to_string(), "a".to_string())].into(),
    );
    set_policy(
        &mut st,
        "client-out",
        r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
          "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {"matchLabels": {"app": "server"}}}], "ports": [{"port": 80}]}]}"#,
    );
    let mut lab = lab_sized(st, &[("client", i[0])], |_| {});
    lab.open_tcp_80(i[0], REPLICA4, 41000);
    lab.state.namespaces.insert(
        "default".into(),
        [("team".to_string(), "b".to_string())].into(),
    );
    lab.apply();
    data(
        &mut lab,
        "namespace relabelled",
        i[0],
        REPLICA4,
        41000,
        DROP,
    );
}

/// Rule: a peer is allowed by its identity's entry or its address's longest block,
/// whichever allows (ports unite; an `except` does not take away what a pod rule gives).
#[test]
fn root_identity_attack_block_and_identity_unite() {
    let i = netns(&["vc"]);
    let mut st = servers_state();
    set_policy(
        &mut st,
        "client-out",
        r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
          "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}], "ports": [{"port": 80}]},
                     {"to": [{"ipBlock": {"cidr": "10.1.0.0/16", "except": ["10.1.0.0/24"]}}], "ports": [{"port": 443}]}]}"#,
    );
    let mut lab = lab_sized(st, &[("client", i[0])], |_| {});
    let cases: [([u8; 4], u16, i32); 6] = [
        (SERVER4, 80, PASS),   // identity
        (SERVER4, 443, DROP),  // in the except, not allowed by identity
        (REPLICA4, 80, PASS),  // identity
        (REPLICA4, 443, PASS), // block
        ([10, 1, 7, 20], 443, PASS),
        ([10, 1, 7, 20], 80, DROP), // no pod: block only
    ];
    for (n, (to, port, v)) in cases.into_iter().enumerate() {
        lab.verdict(
            &format!("{to:?}:{port}"),
            Hook::FromPod,
            i[0],
            &v4(CLIENT4, to, TCP, &tcp(42000 + n as u16, port, SYN)),
            v,
        );
    }
}

/// Rule: named ports resolve on each destination pod; pods alike in labels but not in
/// named ports are told apart.
#[test]
fn root_identity_attack_named_ports_differ_among_alike_pods() {
    let i = netns(&["vc"]);
    let mut st = servers_state();
    set_policy(
        &mut st,
        "client-out",
        r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
          "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}], "ports": [{"port": "http"}]}]}"#,
    );
    let port = |n| ContainerPort {
        name: Some("http".into()),
        port: n,
        protocol: Protocol::Tcp,
    };
    st.pods
        .get_mut(&ObjectRef::new("default", "server"))
        .unwrap()
        .ports = vec![port(80)];
    st.pods
        .get_mut(&ObjectRef::new("default", "replica"))
        .unwrap()
        .ports = vec![port(8080)];
    let mut lab = lab_sized(st, &[("client", i[0])], |_| {});
    let cases = [
        (SERVER4, 80, PASS),
        (SERVER4, 8080, DROP),
        (REPLICA4, 8080, PASS),
        (REPLICA4, 80, DROP),
    ];
    for (n, (to, port, v)) in cases.into_iter().enumerate() {
        lab.verdict(
            &format!("{to:?}:{port}"),
            Hook::FromPod,
            i[0],
            &v4(CLIENT4, to, TCP, &tcp(43000 + n as u16, port, SYN)),
            v,
        );
    }
}

/// Rule: revoked connections stop. A dual-stack server loses its IPv6 address, which
/// then goes to a pod the rule does not allow: the IPv6 connection stops.
#[test]
fn root_identity_attack_dual_stack_address_lost_then_reused() {
    let i = netns(&["vc"]);
    let mut lab = lab_sized(servers_state(), &[("client", i[0])], |_| {});
    let s6 = ip6("fd00:1::3");
    lab.expect(
        "SYN v6",
        Hook::FromPod,
        i[0],
        &v6(client6(), s6, TCP, 64, &tcp(41000, 80, SYN)),
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
    lab.verdict(
        "SYN-ACK v6",
        Hook::ToPod,
        i[0],
        &v6(s6, client6(), TCP, 64, &tcp(80, 41000, SYN | ACK)),
        PASS,
    );
    lab.state
        .pods
        .get_mut(&ObjectRef::new("default", "server"))
        .unwrap()
        .ips = vec![v4a(SERVER4)];
    lab.apply();
    add(
        &mut lab.state,
        "newcomer",
        remote(IpAddr::V6(s6), &[("app", "nope")]),
    );
    lab.apply();
    lab.verdict(
        "data v6 to the address's new owner",
        Hook::FromPod,
        i[0],
        &v6(client6(), s6, TCP, 64, &tcp(41000, 80, PSH | ACK)),
        DROP,
    );
}

/// Rule: revoked connections stop. A terminated replica's address goes to a pod the rule
/// does not allow (tombstone); a removed-then-re-added replica of the same identity keeps
/// its connection and flips nothing.
#[test]
fn root_identity_attack_terminated_reuse_drops_same_identity_readd_keeps() {
    let i = netns(&["vc"]);
    let mut lab = lab_sized(servers_state(), &[("client", i[0])], |_| {});
    lab.open_tcp_80(i[0], REPLICA4, 41000);
    let set = lab
        .pr
        .maps()
        .endpoints
        .get(&addr_of(v4a(CLIENT4)), 0)
        .unwrap()
        .egress_set;
    // Same identity, same address, after a removal.
    del(&mut lab.state, "replica");
    lab.apply();
    add(
        &mut lab.state,
        "replica-b",
        remote(v4a(REPLICA4), &[("app", "server")]),
    );
    lab.apply();
    let after = lab
        .pr
        .maps()
        .endpoints
        .get(&addr_of(v4a(CLIENT4)), 0)
        .unwrap()
        .egress_set;
    assert_eq!(set, after, "same identity back: nothing renewed");
    data(&mut lab, "same identity back", i[0], REPLICA4, 41000, PASS);
    // Terminated; its address goes to a pod the rule does not allow.
    lab.state
        .pods
        .get_mut(&ObjectRef::new("default", "replica-b"))
        .unwrap()
        .terminated = true;
    lab.apply();
    add(
        &mut lab.state,
        "newcomer",
        remote(v4a(REPLICA4), &[("app", "nope")]),
    );
    lab.apply();
    data(
        &mut lab,
        "address reused by a denied pod",
        i[0],
        REPLICA4,
        41000,
        DROP,
    );
}

/// Rule: revoked connections stop, also across a restart: the adopted maps' addresses
/// keep no tombstone, but every rule set gets a new id, so the connection is re-decided.
#[test]
fn root_identity_attack_restart_then_reuse_drops() {
    let mut st = servers_state();
    let mut p1 = Programmer::new(MemoryMaps::default(), 64);
    p1.apply(&compile(&st, "n1"), &BTreeMap::new()).unwrap();
    let client = addr_of(v4a(CLIENT4));
    let conn_set = p1.maps().endpoints[&client].egress_set;
    del(&mut st, "replica");
    add(
        &mut st,
        "replica2",
        remote(v4a(NEWCOMER4), &[("app", "server")]),
    );
    p1.apply(&compile(&st, "n1"), &BTreeMap::new()).unwrap();
    let maps = std::mem::take(p1.maps_mut());
    let mut p2 = Programmer::new(maps, 64);
    p2.adopt().unwrap();
    p2.apply(&compile(&st, "n1"), &BTreeMap::new()).unwrap();
    add(
        &mut st,
        "newcomer",
        remote(v4a(REPLICA4), &[("app", "nope")]),
    );
    p2.apply(&compile(&st, "n1"), &BTreeMap::new()).unwrap();
    let now = p2.maps().endpoints[&client].egress_set;
    assert_ne!(
        conn_set, now,
        "the connection's set id changed: it is re-decided"
    );
    assert!(!p2.maps().allows(now, v4a(REPLICA4), Protocol::Tcp, 80));
    assert!(p2.maps().allows(now, v4a(NEWCOMER4), Protocol::Tcp, 80));
}
