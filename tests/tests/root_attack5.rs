//! Fifth round of attacks on the datapath (BPF_PROG_TEST_RUN), after commit 9431098
//! (`learn_backend(.., translated)` replacing a one-Service port's backend, `refuse`,
//! `opener_current`, SERVICE_FLOWS a plain hash). **Needs root.**
//!
//! Tests named `root_attack5_finding_*` assert the CORRECT behaviour (DESIGN.md's spec)
//! and fail today; the others are attacks handled correctly, kept as regression guards.
//!
//! Time does not pass here. Where a sequence relies on the kernel's nf_conntrack having
//! forgotten a UDP connection that netpol still tracks (kernel: 30 s without a stream;
//! netpol: 60 s / 180 s), the kernel translates the socket's next datagram afresh,
//! possibly to another backend of the same Service.

use netpol_agent::program::addr_of;
use netpol_common::ServiceFlowKey;
use netpol_tests::lab::*;

/// A second remote backend of Service A (10.96.0.10, UDP 53).
const Y4C: [u8; 4] = [10, 2, 0, 6];

struct Ifs {
    c: u32,
    s: u32,
    o: u32,
    up: u32,
}

fn lab5(policies: &[(&str, &str)]) -> (Lab, Ifs) {
    let i = netns(&["vc", "vs", "vo", "upl"]);
    let ifs = Ifs {
        c: i[0],
        s: i[1],
        o: i[2],
        up: i[3],
    };
    let mut st = base();
    for (name, spec) in policies {
        set_policy(&mut st, name, spec);
    }
    let mut lab = Lab::new(
        st,
        &[("client", ifs.c), ("server", ifs.s), ("other", ifs.o)],
        &[v4a(NODE4), v4a(UPLINK4)],
    );
    lab.pr
        .maps_mut()
        .set_uplinks(&[ifs.up].into())
        .expect("uplinks");
    (lab, ifs)
}

fn uplink(lab: &mut Lab, ifs: &Ifs, from: u32, packet: &[u8]) -> i32 {
    lab.run_from(Hook::Uplink, ifs.up, from, packet)
}

#[allow(dead_code)]
fn _record_key(port: u16, proto: u8) -> ServiceFlowKey {
    ServiceFlowKey {
        client: addr_of(v4a(CLIENT4)),
        client_port: port,
        proto,
        _pad: 0,
    }
}

/// The client may send UDP 53 to 10.2.0.5 and 10.2.0.6.
const CLIENT_EGRESS_BOTH: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"ipBlock": {"cidr": "10.2.0.0/16"}}], "ports": [{"port": 53, "protocol": "UDP"}]}]}"#;
/// 10.2.0.5 revoked: only 10.2.0.6 stays.
const CLIENT_EGRESS_ONLY_C: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"ipBlock": {"cidr": "10.2.0.6/32"}}], "ports": [{"port": 53, "protocol": "UDP"}]}]}"#;

/// Client's UDP `sport` -> Service A:53, the kernel picking the remote `backend`; answered.
fn exchange_via_uplink(lab: &mut Lab, ifs: &Ifs, sport: u16, backend: [u8; 4]) {
    lab.verdict(
        "client to the Service",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, UDP, &udp(sport, 53)),
        PASS,
    );
    let v = uplink(lab, ifs, ifs.c, &v4(CLIENT4, backend, UDP, &udp(sport, 53)));
    assert_eq!(v, PASS, "DNATed to {backend:?}: {}", show(v));
    lab.verdict(
        "the answer through the Service",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, sport)),
        PASS,
    );
}

// =====================================================================================
// Findings
// =====================================================================================

/// Spec: revoked connections stop at their next packet. One UDP socket (port 5000)
/// asks Service A; the kernel picks 10.2.0.6 (DEFERRED_EGRESS entry at the uplink).
/// Later (the kernel's 30 s entry gone, netpol's not) the socket's next datagram to the
/// Service is translated to 10.2.0.5: the record now holds [10.2.0.5]. The same socket
/// also sends one datagram directly to 10.2.0.6:53 (allowed): it rides the old
/// translation's DEFERRED_EGRESS entry at the uplink, so `learn_backend(.., translated =
/// true)` takes it as the Service's current translation and REPLACES 10.2.0.5 with
/// 10.2.0.6. After 10.2.0.5 is revoked, its datagrams through the ClusterIP still reach
/// the client: the record only knows 10.2.0.6, which is still allowed.
#[test]
fn root_attack5_finding_direct_packet_on_old_translation_pushes_out_current_backend_uplink() {
    let (mut lab, ifs) = lab5(&[
        ("client-egress", CLIENT_EGRESS_BOTH),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    exchange_via_uplink(&mut lab, &ifs, 5000, Y4C);
    // The kernel forgot the first translation: the next datagram goes to 10.2.0.5.
    exchange_via_uplink(&mut lab, &ifs, 5000, Y4);
    // The same socket, directly to 10.2.0.6 (allowed).
    let direct = v4(CLIENT4, Y4C, UDP, &udp(5000, 53));
    lab.verdict("directly to 10.2.0.6", Hook::FromPod, ifs.c, &direct, PASS);
    assert_eq!(
        uplink(&mut lab, &ifs, ifs.c, &direct),
        PASS,
        "at the uplink"
    );
    // 10.2.0.5 is revoked for the client.
    set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_ONLY_C);
    lab.apply();
    lab.verdict(
        "10.2.0.5 (revoked) pushes through the ClusterIP",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        DROP,
    );
}

/// Control: without the direct datagram, the revoked backend's answers are dropped.
#[test]
fn root_attack5_revoked_current_backend_is_dropped_without_the_direct_packet() {
    let (mut lab, ifs) = lab5(&[
        ("client-egress", CLIENT_EGRESS_BOTH),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    exchange_via_uplink(&mut lab, &ifs, 5000, Y4C);
    exchange_via_uplink(&mut lab, &ifs, 5000, Y4);
    set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_ONLY_C);
    lab.apply();
    lab.verdict(
        "10.2.0.5 (revoked) through the ClusterIP",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        DROP,
    );
}

/// The client may send to server and other (any port).
const CLIENT_EGRESS_SERVER_OTHER: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}, {"podSelector": {"matchLabels": {"app": "other"}}}]}]}"#;
/// The server revoked: only other stays.
const CLIENT_EGRESS_OTHER: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "other"}}}]}]}"#;

/// Client's UDP `sport` -> Service A:53, the kernel picking the local backend behind veth
/// `bif` at `baddr`; the backend answers.
fn exchange_local(lab: &mut Lab, ifs: &Ifs, sport: u16, bif: u32, baddr: [u8; 4]) {
    lab.verdict(
        "client to the Service",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, UDP, &udp(sport, 53)),
        PASS,
    );
    let v = lab.run_from(
        Hook::ToPod,
        bif,
        ifs.c,
        &v4(CLIENT4, baddr, UDP, &udp(sport, 53)),
    );
    assert_eq!(v, PASS, "DNATed to {baddr:?}: {}", show(v));
    let v = lab.run(
        Hook::FromPod,
        bif,
        &v4(baddr, CLIENT4, UDP, &udp(53, sport)),
    );
    assert_eq!(v, PASS, "{baddr:?} answers: {}", show(v));
    lab.verdict(
        "the answer through the Service",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, sport)),
        PASS,
    );
}

/// The local form of `..._uplink`: Service A's backends are the local server and other.
/// The socket's first translation went to other, its current one to server; one direct
/// datagram to other rides the old translation's DEFERRED_EGRESS entry at other's veth
/// (`received_by_pod`, tracked path: `learn_backend(.., translated)`), replacing server in
/// the record. After server is revoked for the client, server's datagrams through the
/// ClusterIP still reach the client.
#[test]
fn root_attack5_finding_direct_packet_on_old_translation_pushes_out_current_backend_local() {
    let (mut lab, ifs) = lab5(&[
        ("client-egress", CLIENT_EGRESS_SERVER_OTHER),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    exchange_local(&mut lab, &ifs, 5000, ifs.o, OTHER4);
    exchange_local(&mut lab, &ifs, 5000, ifs.s, SERVER4);
    let direct = v4(CLIENT4, OTHER4, UDP, &udp(5000, 53));
    lab.verdict("directly to other", Hook::FromPod, ifs.c, &direct, PASS);
    let v = lab.run_from(Hook::ToPod, ifs.o, ifs.c, &direct);
    assert_eq!(v, PASS, "at other: {}", show(v));
    set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_OTHER);
    lab.apply();
    let v = lab.run(
        Hook::FromPod,
        ifs.s,
        &v4(SERVER4, CLIENT4, UDP, &udp(53, 5000)),
    );
    assert_eq!(
        v,
        PASS,
        "server sends (its own side allows it): {}",
        show(v)
    );
    lab.verdict(
        "server (revoked) pushes through the ClusterIP",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        DROP,
    );
}

/// The same push-out done by nobody on the node: a datagram forged outside, with the
/// client's address and port, enters through the uplink to other. `to_pod`'s tracked
/// path asks `came_from` nothing (only the new-connection path does), so the forged
/// datagram rides the client's DEFERRED_EGRESS entry and rewrites the client's record.
#[test]
fn root_attack5_finding_forged_uplink_packet_rewrites_the_clients_record() {
    let (mut lab, ifs) = lab5(&[
        ("client-egress", CLIENT_EGRESS_SERVER_OTHER),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    exchange_local(&mut lab, &ifs, 5000, ifs.o, OTHER4);
    exchange_local(&mut lab, &ifs, 5000, ifs.s, SERVER4);
    // Forged: the client's address, from outside the node.
    let forged = v4(CLIENT4, OTHER4, UDP, &udp(5000, 53));
    let forged_verdict = lab.run_from(Hook::ToPod, ifs.o, ifs.up, &forged);
    set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_OTHER);
    lab.apply();
    let v = lab.run(
        Hook::FromPod,
        ifs.s,
        &v4(SERVER4, CLIENT4, UDP, &udp(53, 5000)),
    );
    assert_eq!(v, PASS, "server sends: {}", show(v));
    let got = lab.run(Hook::ToPod, ifs.c, &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)));
    assert_eq!(
        (show(forged_verdict), show(got)),
        ("DROP", "DROP"),
        "(forged client datagram from the uplink at other's veth, revoked server's datagram through the ClusterIP)"
    );
}

/// Spec: still-allowed connections go on, whatever else changed. One UDP socket talks to
/// Service A (backend: the local server, allowed) and, directly, to other. The direct
/// datagram at other's veth is a from-opener packet of a tracked entry, so the tracked
/// path now calls `learn_backend(.., translated = false)` for it (before 9431098 only
/// DEFERRED_EGRESS entries did): other is added to the Service record's backends. Once
/// the client's egress to other is revoked (the server still allowed), the server's
/// answers through the Service are dropped and the Service entry forgotten.
#[test]
#[ignore = "known limit: a translated packet and a direct one from the same port look alike after translation, so a record learns both (fail closed: a revoked direct peer also stops that port's Service answers)"]
fn root_attack5_finding_direct_peer_on_same_port_poisons_an_allowed_service() {
    let (mut lab, ifs) = lab5(&[
        ("client-egress", CLIENT_EGRESS_SERVER_OTHER),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    exchange_local(&mut lab, &ifs, 5000, ifs.s, SERVER4);
    let direct = v4(CLIENT4, OTHER4, UDP, &udp(5000, 53));
    lab.verdict("directly to other", Hook::FromPod, ifs.c, &direct, PASS);
    let v = lab.run_from(Hook::ToPod, ifs.o, ifs.c, &direct);
    assert_eq!(v, PASS, "at other: {}", show(v));
    // Unrelated to the Service: other is no longer allowed.
    set_policy(
        &mut lab.state,
        "client-egress",
        r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}]}]}"#,
    );
    lab.apply();
    let v = lab.run(
        Hook::FromPod,
        ifs.s,
        &v4(SERVER4, CLIENT4, UDP, &udp(53, 5000)),
    );
    assert_eq!(v, PASS, "server answers: {}", show(v));
    lab.verdict(
        "the (still allowed) server's answer through the Service",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        PASS,
    );
}

/// The client admits the server (any port).
const CLIENT_INGRESS_SERVER: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Ingress"],
  "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "server"}}}]}]}"#;
/// The client admits 10.2.0.0/16 (any port).
const CLIENT_INGRESS_Y: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Ingress"],
  "ingress": [{"from": [{"ipBlock": {"cidr": "10.2.0.0/16"}}]}]}"#;

/// Spec: egress is decided on the backend actually chosen; revoked connections stop.
/// The server once opened UDP server:53 -> client:5000 (the client's ingress admitted it;
/// the client answered). The client's ingress is then revoked for the server, and its
/// egress never allowed the server. Later (the kernel's 30 s entry gone, netpol's not)
/// the client's socket 5000 asks Service A, translated to server:53: the tuple is the
/// server's old connection, in the other orientation. At the server's veth the packet is
/// not from that entry's opener, so 9431098's "a local opener's packet is judged on its
/// current egress" never applies: `fast::established` passes it as the server's own
/// connection (only the server's egress, the opener side, is compared). No backend is
/// learnt either, so the server's answers through the ClusterIP pass (`still_allowed`:
/// a record without backends passes).
#[test]
fn root_attack5_finding_service_translation_onto_a_reversed_tuple_skips_the_clients_egress() {
    let (mut lab, ifs) = lab5(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_SERVER),
    ]);
    // The server opens to the client (allowed by the client's ingress), which answers.
    let opening = v4(SERVER4, CLIENT4, UDP, &udp(53, 5000));
    assert_eq!(
        lab.run(Hook::FromPod, ifs.s, &opening),
        PASS,
        "server sends"
    );
    let v = lab.run_from(Hook::ToPod, ifs.c, ifs.s, &opening);
    assert_eq!(v, PASS, "admitted by the client's ingress: {}", show(v));
    let answer = v4(CLIENT4, SERVER4, UDP, &udp(5000, 53));
    lab.verdict("the client answers", Hook::FromPod, ifs.c, &answer, PASS);
    assert_eq!(
        lab.run_from(Hook::ToPod, ifs.s, ifs.c, &answer),
        PASS,
        "the answer at the server"
    );
    // The client no longer admits the server (its egress never allowed it).
    set_policy(&mut lab.state, "client-ingress", CLIENT_INGRESS_NONE);
    lab.apply();
    lab.verdict(
        "the same socket to Service A",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, UDP, &udp(5000, 53)),
        PASS,
    );
    let at_server = lab.run_from(Hook::ToPod, ifs.s, ifs.c, &answer);
    // The server's answer leaves its veth (its own side of its own connection).
    let _ = lab.run(Hook::FromPod, ifs.s, &opening);
    let through_service = lab.run(Hook::ToPod, ifs.c, &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)));
    assert_eq!(
        (show(at_server), show(through_service)),
        ("DROP", "DROP"),
        "(translated to the server, whom the client's egress denies; the server's answer \
         through the ClusterIP)"
    );
}

/// The same at the uplink with a remote backend: `fast::tracked_at_uplink` passes every
/// replied entry's packet that is not from its opener (`Some(_) => true`), so the client's
/// translated datagram to 10.2.0.5:53 passes uncounted although the client's egress
/// allows nothing and 10.2.0.5's own connection to the client was revoked.
#[test]
fn root_attack5_finding_service_translation_onto_a_reversed_tuple_passes_the_uplink() {
    let (mut lab, ifs) = lab5(&[
        ("client-egress", CLIENT_EGRESS_NONE),
        ("client-ingress", CLIENT_INGRESS_Y),
    ]);
    let opening = v4(Y4, CLIENT4, UDP, &udp(53, 5000));
    lab.verdict(
        "10.2.0.5 opens to the client",
        Hook::ToPod,
        ifs.c,
        &opening,
        PASS,
    );
    let answer = v4(CLIENT4, Y4, UDP, &udp(5000, 53));
    lab.verdict("the client answers", Hook::FromPod, ifs.c, &answer, PASS);
    assert_eq!(
        uplink(&mut lab, &ifs, ifs.c, &answer),
        PASS,
        "answer at the uplink"
    );
    set_policy(&mut lab.state, "client-ingress", CLIENT_INGRESS_NONE);
    lab.apply();
    lab.verdict(
        "the same socket to Service A",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, UDP, &udp(5000, 53)),
        PASS,
    );
    let at_uplink = uplink(&mut lab, &ifs, ifs.c, &answer);
    let through_service = lab.run(Hook::ToPod, ifs.c, &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)));
    assert_eq!(
        (show(at_uplink), show(through_service)),
        ("DROP", "DROP"),
        "(translated to 10.2.0.5, denied by the client's egress; its answer through the ClusterIP)"
    );
}

/// `lab5` with the conntrack maps at their production sizes (a flood must not evict the
/// victim's conntrack entry: only its Service record is at stake).
fn lab5_default_conntrack(policies: &[(&str, &str)]) -> (Lab, Ifs) {
    use std::collections::BTreeSet;
    use std::net::IpAddr;
    let i = netns(&["vc", "vs", "vo", "upl"]);
    let ifs = Ifs {
        c: i[0],
        s: i[1],
        o: i[2],
        up: i[3],
    };
    let mut ms = small_maps();
    ms.conntrack_entries = sizes::CONNTRACK;
    ms.conntrack_new_entries = sizes::CONNTRACK_NEW;
    let mut dp = Datapath::load(AttachMode::Auto, &ms, None).expect("load BPF");
    let maps = dp.take_maps().expect("maps");
    let mut pr = netpol_agent::program::Programmer::new(maps, sizes::COUNTERS);
    let node: BTreeSet<IpAddr> = [v4a(NODE4), v4a(UPLINK4)].into_iter().collect();
    pr.set_node_addrs(&node).expect("node addrs");
    pr.maps_mut()
        .set_uplinks(&[ifs.up].into())
        .expect("uplinks");
    let mut st = base();
    for (name, spec) in policies {
        set_policy(&mut st, name, spec);
    }
    let veths = [("client", ifs.c), ("server", ifs.s), ("other", ifs.o)];
    (Lab::assemble(dp, pr, st, &veths), ifs)
}

const OTHER_INGRESS_NONE: &str =
    r#"{"podSelector": {"matchLabels": {"app": "other"}}, "policyTypes": ["Ingress"]}"#;

/// Spec: replies of an allowed connection pass. SERVICE_FLOWS is now a plain hash of
/// 65,536 records (not configurable), emptied only by the agent's sweep of records whose
/// Service connections have no conntrack entry. One pod (here client and server, both
/// isolated) that keeps 65,536 answered Service connections alive (DNS from every UDP
/// port: ~360 queries/s within netpol's 180 s UDP lifetime) fills it. Every other pod's
/// answered Service connection then keeps its record in SERVICE_FLOWS_NEW (an LRU of
/// 16,384), which the same pod churns with unanswered openings: the victim's record is
/// evicted and its next answer through the ClusterIP is dropped (fail closed). A
/// cross-pod denial of service of allowed Service traffic (DNS, long-lived connections).
#[test]
#[ignore = "known limit: SERVICE_FLOWS has no per-pod quota; a pod holding as many answered Service connections as it has entries makes others' new records wait with the unanswered ones, where a flood evicts them"]
fn root_attack5_finding_filled_service_flows_lets_one_pod_drop_anothers_service_answers() {
    let (mut lab, ifs) = lab5_default_conntrack(&[
        ("client-ingress", CLIENT_INGRESS_NONE),
        ("server-ingress", SERVER_INGRESS_NONE),
        ("other-ingress", OTHER_INGRESS_NONE),
    ]);
    // The flood: answered DNS through Service A from every port of client and server.
    let mut filled = 0u32;
    'outer: for (addr, ifi) in [(CLIENT4, ifs.c), (SERVER4, ifs.s)] {
        for port in 1..=65535u16 {
            if filled == sizes::SERVICE_FLOWS {
                break 'outer;
            }
            let q = v4(addr, SVC4, UDP, &udp(port, 53));
            assert_eq!(lab.run(Hook::FromPod, ifi, &q), PASS, "query");
            let a = v4(SVC4, addr, UDP, &udp(53, port));
            assert_eq!(lab.run(Hook::ToPod, ifi, &a), PASS, "answer");
            filled += 1;
        }
    }
    // The victim: other's answered DNS connection (a long-lived UDP stream).
    lab.verdict(
        "other asks Service A",
        Hook::FromPod,
        ifs.o,
        &v4(OTHER4, SVC4, UDP, &udp(7000, 53)),
        PASS,
    );
    lab.verdict(
        "its answer",
        Hook::ToPod,
        ifs.o,
        &v4(SVC4, OTHER4, UDP, &udp(53, 7000)),
        PASS,
    );
    let victim = ServiceFlowKey {
        client: addr_of(v4a(OTHER4)),
        client_port: 7000,
        proto: UDP,
        _pad: 0,
    };
    assert!(
        lab.pr.maps_mut().service_flows.get(&victim, 0).is_err(),
        "SERVICE_FLOWS is full: the victim's record stays in SERVICE_FLOWS_NEW"
    );
    // Unanswered openings of the flooder (TCP SYNs to Service A's port 80, translated
    // to a remote backend: each record is looked up again at the uplink, as the
    // victim's is at each answer).
    for _round in 0..3 {
        for port in 1..=30000u16 {
            let syn = v4(CLIENT4, SVC4, TCP, &tcp(port, 80, SYN));
            let _ = lab.run(Hook::FromPod, ifs.c, &syn);
            let t = v4(CLIENT4, Y4, TCP, &tcp(port, 80, SYN));
            let _ = uplink(&mut lab, &ifs, ifs.c, &t);
        }
    }
    assert!(
        lab.pr.maps_mut().service_flows_new.get(&victim, 0).is_err(),
        "the victim's record is evicted"
    );
    lab.verdict(
        "other's next answer (its connection allowed, open)",
        Hook::ToPod,
        ifs.o,
        &v4(SVC4, OTHER4, UDP, &udp(53, 7000)),
        PASS,
    );
}

/// Verdict events: the budget (`events::take_token`) is per endpoint id, and a drop of a
/// packet sent TO a pod is charged to that pod. Anyone who can send to a pod (another
/// pod, or from outside) spends its budget with refused openings, and the pod's own
/// drops (here its egress refused, what an operator watches `monitor --pod` for) are
/// suppressed: one pod silences another's events. Pinned to one CPU (the budget is per
/// CPU).
#[test]
fn root_attack5_finding_anyone_spends_a_pods_event_budget() {
    // SAFETY: plain libc calls on this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
    let i = netns(&["vc", "vs", "vo", "upl"]);
    let (vs, vo, up) = (i[1], i[2], i[3]);
    let mut st = base();
    set_policy(&mut st, "server-ingress", SERVER_INGRESS_NONE);
    set_policy(&mut st, "server-egress", SERVER_EGRESS_NONE);
    let mut lab = Lab::with_events(
        st,
        &[("client", i[0]), ("server", vs), ("other", vo)],
        &[v4a(NODE4), v4a(UPLINK4)],
        AttachMode::Auto,
        EventOptions {
            kind: EventKind::Drop,
            per_second: 5,
            ..Default::default()
        },
    );
    lab.pr
        .maps_mut()
        .set_uplinks(&[up].into())
        .expect("uplinks");
    let server = lab.id("server");
    // Someone outside sends refused openings to the server.
    for sport in 0..50u16 {
        let p = v4(Y4, SERVER4, TCP, &tcp(20000 + sport, 80, SYN));
        assert_eq!(lab.run_from(Hook::ToPod, vs, up, &p), DROP);
    }
    // The server's own egress is refused (say, a compromised server calling out).
    let own = v4(SERVER4, Y4B, TCP, &tcp(40000, 443, SYN));
    assert_eq!(lab.run(Hook::FromPod, vs, &own), DROP);
    let (mut ring, _) = lab.dp.take_events().expect("events maps");
    let mut own_reported = false;
    while let Some(record) = ring.next() {
        let e = netpol_agent::events::reader::decode(&record).expect("event");
        if e.endpoint_id == server && usize::from(e.reason) == reason::DROP_EGRESS {
            own_reported = true;
        }
    }
    assert!(
        own_reported,
        "the server's own egress drop is reported (not suppressed by others' traffic)"
    );
}

/// Spec: a Service whose backends are only partly allowed works exactly for the allowed
/// ones. Service A's backends: server (its ingress refuses the client) and other (admits
/// it). The client's UDP socket 5000 asks the Service; the kernel picks server, whose
/// veth refuses it: `service::refuse` sets the record's `overflow`. 30 s later the
/// kernel has forgotten that translation (netpol's unanswered Service entry lives 60 s)
/// and the socket's retry goes to other, which admits it. `learn_backend(.., true)` only
/// replaces a backend when `overflow == 0`, and nothing else clears it: other's answer,
/// the reply of an allowed connection, is dropped (and the Service entry forgotten).
#[test]
fn root_attack5_finding_refused_backend_poisons_the_retry_to_an_allowed_one() {
    let (mut lab, ifs) = lab5(&[
        ("client-egress", CLIENT_EGRESS_SERVER_OTHER),
        ("client-ingress", CLIENT_INGRESS_NONE),
        ("server-ingress", SERVER_INGRESS_NONE),
    ]);
    let ask = v4(CLIENT4, SVC4, UDP, &udp(5000, 53));
    lab.verdict("client asks Service A", Hook::FromPod, ifs.c, &ask, PASS);
    let to_server = v4(CLIENT4, SERVER4, UDP, &udp(5000, 53));
    let v = lab.run_from(Hook::ToPod, ifs.s, ifs.c, &to_server);
    assert_eq!(v, DROP, "server refuses: {}", show(v));
    // The kernel's translation forgotten: the retry goes to other.
    lab.verdict("the retry", Hook::FromPod, ifs.c, &ask, PASS);
    let to_other = v4(CLIENT4, OTHER4, UDP, &udp(5000, 53));
    let v = lab.run_from(Hook::ToPod, ifs.o, ifs.c, &to_other);
    assert_eq!(v, PASS, "other admits it: {}", show(v));
    let v = lab.run(
        Hook::FromPod,
        ifs.o,
        &v4(OTHER4, CLIENT4, UDP, &udp(53, 5000)),
    );
    assert_eq!(v, PASS, "other answers: {}", show(v));
    lab.verdict(
        "other's answer through the ClusterIP",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        PASS,
    );
}

// =====================================================================================
// Handled correctly (regression guards)
// =====================================================================================

/// A direct local connection goes on after an unrelated change of the client's egress
/// rule set (the server still allowed): the client's packet at the server's veth leaves
/// the established path (`opener_current`) and is re-judged, and passes; the answers too.
#[test]
fn root_attack5_local_connection_survives_an_unrelated_egress_change() {
    let (mut lab, ifs) = lab5(&[
        ("client-egress", CLIENT_EGRESS_SERVER_OTHER),
        (
            "server-ingress",
            r#"{"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
  "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}"#,
        ),
    ]);
    let syn = v4(CLIENT4, SERVER4, TCP, &tcp(41000, 80, SYN));
    lab.verdict("SYN", Hook::FromPod, ifs.c, &syn, PASS);
    assert_eq!(lab.run_from(Hook::ToPod, ifs.s, ifs.c, &syn), PASS);
    let synack = v4(SERVER4, CLIENT4, TCP, &tcp(80, 41000, SYN | ACK));
    assert_eq!(lab.run(Hook::FromPod, ifs.s, &synack), PASS);
    lab.verdict("SYN-ACK", Hook::ToPod, ifs.c, &synack, PASS);
    // Unrelated: the client may no longer reach other; the server stays allowed.
    set_policy(
        &mut lab.state,
        "client-egress",
        r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}]}]}"#,
    );
    lab.apply();
    let data = v4(CLIENT4, SERVER4, TCP, &tcp(41000, 80, PSH | ACK));
    // The packet reaches the server's veth first (as a translation would) and then the
    // client's: both orders pass.
    assert_eq!(
        lab.run_from(Hook::ToPod, ifs.s, ifs.c, &data),
        PASS,
        "at the server"
    );
    lab.verdict("from the client", Hook::FromPod, ifs.c, &data, PASS);
    assert_eq!(
        lab.run_from(Hook::ToPod, ifs.s, ifs.c, &data),
        PASS,
        "again"
    );
    let back = v4(SERVER4, CLIENT4, TCP, &tcp(80, 41000, PSH | ACK));
    assert_eq!(lab.run(Hook::FromPod, ifs.s, &back), PASS);
    lab.verdict("the answer", Hook::ToPod, ifs.c, &back, PASS);
}

/// `opener_current`: a replied direct connection whose opener's egress was revoked is
/// dropped at the acceptor's veth even when the client's veth never saw the packet (a
/// Service translation landing on the tuple), and at the uplink for a remote peer.
#[test]
fn root_attack5_revoked_opener_is_rejudged_at_the_backends_veth_and_the_uplink() {
    let (mut lab, ifs) = lab5(&[
        ("client-egress", CLIENT_EGRESS_SERVER_OTHER),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    let direct = v4(CLIENT4, SERVER4, UDP, &udp(5000, 53));
    lab.verdict("to the server", Hook::FromPod, ifs.c, &direct, PASS);
    assert_eq!(lab.run_from(Hook::ToPod, ifs.s, ifs.c, &direct), PASS);
    let answer = v4(SERVER4, CLIENT4, UDP, &udp(53, 5000));
    assert_eq!(lab.run(Hook::FromPod, ifs.s, &answer), PASS);
    lab.verdict("answer", Hook::ToPod, ifs.c, &answer, PASS);
    set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_OTHER);
    lab.apply();
    assert_eq!(
        lab.run_from(Hook::ToPod, ifs.s, ifs.c, &direct),
        DROP,
        "revoked, at the server's veth"
    );
}

/// A datagram forged outside with a local pod's address, opening a connection to another
/// local pod, is dropped as spoofed before it can touch the pod's Service record.
#[test]
fn root_attack5_forged_opening_from_the_uplink_is_spoofed() {
    let (mut lab, ifs) = lab5(&[
        ("client-egress", CLIENT_EGRESS_SERVER_OTHER),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    exchange_local(&mut lab, &ifs, 5000, ifs.s, SERVER4);
    let v = lab.run_from(
        Hook::ToPod,
        ifs.o,
        ifs.up,
        &v4(CLIENT4, OTHER4, UDP, &udp(5000, 53)),
    );
    assert_eq!(v, DROP, "forged client datagram to other: {}", show(v));
    lab.verdict(
        "the server's answer still passes",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        PASS,
    );
}
