//! Fourth round of attacks on the datapath (BPF_PROG_TEST_RUN), after Service records
//! (`netpol-ebpf/src/service.rs`: one record per client port, up to four Services and
//! four backends, `SERVICE_FLOWS_NEW` until the first reply). **Needs root.**
//!
//! Tests named `root_attack4_finding_*` assert the CORRECT behaviour (DESIGN.md's spec)
//! and fail today; the others are attacks handled correctly, kept as regression guards.
//!
//! Time does not pass in these tests. Where a sequence relies on the kernel's
//! nf_conntrack having forgotten a connection that netpol's tables still hold (UDP: 30 s
//! in the kernel without a stream, 60 s / 180 s here), the test says so: the kernel then
//! translates the next datagram of the same socket afresh, possibly to another backend
//! or onto a tuple netpol still tracks.
//!
//! Every test runs in a network namespace of its own thread (unshare(CLONE_NEWNET)) with
//! veth pairs. Nothing touches the host's interfaces and nothing leaves the namespace.

use netpol_agent::program::addr_of;
use netpol_common::ServiceFlowKey;
use netpol_tests::lab::*;

const SVCB4: [u8; 4] = [10, 96, 0, 20];
/// A remote pod behind Service B (allowed where 10.2.0.0/16 is).
const Y4C: [u8; 4] = [10, 2, 0, 6];
/// A router on the way to a remote backend.
const ROUTER4: [u8; 4] = [10, 2, 255, 1];

/// Veths: client, server, other, and an uplink.
struct Ifs {
    c: u32,
    s: u32,
    o: u32,
    up: u32,
}

fn state4(policies: &[(&str, &str)]) -> ClusterState {
    let mut st = base();
    st.services.insert(
        ObjectRef::new("default", "svc-b"),
        ServiceInfo {
            ips: vec![v4a(SVCB4)],
            ports: vec![(Protocol::Udp, 53)],
        },
    );
    for (name, spec) in policies {
        set_policy(&mut st, name, spec);
    }
    st
}

/// `base()` plus Service B (10.96.0.20, UDP 53), the lab on the veths (small maps).
fn lab4(policies: &[(&str, &str)]) -> (Lab, Ifs) {
    let i = netns(&["vc", "vs", "vo", "upl"]);
    let ifs = Ifs {
        c: i[0],
        s: i[1],
        o: i[2],
        up: i[3],
    };
    let mut lab = Lab::new(
        state4(policies),
        &[("client", ifs.c), ("server", ifs.s), ("other", ifs.o)],
        &[v4a(NODE4), v4a(UPLINK4)],
    );
    lab.pr
        .maps_mut()
        .set_uplinks(&[ifs.up].into())
        .expect("uplinks");
    (lab, ifs)
}

/// `lab4` with the conntrack maps at their default (production) sizes.
fn lab4_default_conntrack(policies: &[(&str, &str)]) -> (Lab, Ifs) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "loads BPF: run as root");
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
    let veths = [("client", ifs.c), ("server", ifs.s), ("other", ifs.o)];
    (Lab::assemble(dp, pr, state4(policies), &veths), ifs)
}

/// The translated packet at the uplink, sent by the pod behind veth `from`.
fn uplink(lab: &mut Lab, ifs: &Ifs, from: u32, packet: &[u8]) -> i32 {
    lab.run_from(Hook::Uplink, ifs.up, from, packet)
}

/// The client's UDP exchange `sport` -> `svc`:53, DNATed to the remote `backend`:53
/// (allowed), answered.
fn udp_exchange(lab: &mut Lab, ifs: &Ifs, sport: u16, svc: [u8; 4], backend: [u8; 4]) {
    lab.expect(
        "client to the Service",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, svc, UDP, &udp(sport, 53)),
        PASS,
        "client",
        Some(reason::PASS_SERVICE),
    );
    let v = uplink(lab, ifs, ifs.c, &v4(CLIENT4, backend, UDP, &udp(sport, 53)));
    assert_eq!(v, PASS, "DNATed to an allowed backend: {}", show(v));
    lab.expect(
        &format!("the answer of {backend:?} (un-DNATed)"),
        Hook::ToPod,
        ifs.c,
        &v4(svc, CLIENT4, UDP, &udp(53, sport)),
        PASS,
        "client",
        Some(reason::ALLOW_TRACKED),
    );
}

/// TCP client:`sport` -> Service A 10.96.0.10:80, DNATed to the remote 10.2.0.5:8080:
/// SYN, translated SYN, SYN-ACK.
fn tcp_handshake(lab: &mut Lab, ifs: &Ifs, sport: u16, backend: [u8; 4]) {
    lab.expect(
        "SYN to the ClusterIP",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, TCP, &tcp(sport, 80, SYN)),
        PASS,
        "client",
        Some(reason::PASS_SERVICE),
    );
    let v = uplink(
        lab,
        ifs,
        ifs.c,
        &v4(CLIENT4, backend, TCP, &tcp(sport, 8080, SYN)),
    );
    assert_eq!(v, PASS, "SYN DNATed to an allowed backend: {}", show(v));
    lab.expect(
        "SYN-ACK from the Service",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, TCP, &tcp(80, sport, SYN | ACK)),
        PASS,
        "client",
        Some(reason::ALLOW_TRACKED),
    );
    lab.verdict(
        "ACK",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, TCP, &tcp(sport, 80, ACK)),
        PASS,
    );
    let v = uplink(
        lab,
        ifs,
        ifs.c,
        &v4(CLIENT4, backend, TCP, &tcp(sport, 8080, ACK)),
    );
    assert_eq!(v, PASS, "ACK DNATed: {}", show(v));
}

/// Data from the Service to client:`sport` (TCP, the server speaks).
fn service_data(sport: u16) -> Vec<u8> {
    v4(SVC4, CLIENT4, TCP, &tcp(80, sport, PSH | ACK))
}

fn revoke(lab: &mut Lab) {
    set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_Y_REVOKED);
    lab.apply();
}

fn record_key(port: u16, proto: u8) -> ServiceFlowKey {
    ServiceFlowKey {
        client: addr_of(v4a(CLIENT4)),
        client_port: port,
        proto,
        _pad: 0,
    }
}

/// The client may reach servers (any port) and 10.2.0.0/16 on UDP 53.
const CLIENT_EGRESS_Y_AND_SERVER: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"ipBlock": {"cidr": "10.2.0.0/16"}}], "ports": [{"port": 53, "protocol": "UDP"}]},
             {"to": [{"podSelector": {"matchLabels": {"app": "server"}}}]}]}"#;
const OTHER_INGRESS_NONE: &str =
    r#"{"podSelector": {"matchLabels": {"app": "other"}}, "policyTypes": ["Ingress"]}"#;

// =====================================================================================
// Findings: these assert the spec and fail today.
// =====================================================================================

/// Spec: "A policy change applies to existing connections at their next packet (revoked
/// ones stop)". TCP client port reuse to the same Service (an abortive close, then a new
/// connection from the same port; the kernel reopens and translates it to the same
/// single backend). `remember` resets the port's record (no other Service open), but
/// the translated SYN rides the first connection's DEFERRED_EGRESS entry at the uplink
/// (never marked finished: `judge_deferred_opener` does not update flags), so
/// `learn_backend` never runs: the record keeps no backend, and `still_allowed` passes
/// every reply of a record without backends. After the client's egress to the backend is
/// revoked, the backend's data still reaches the client through the ClusterIP.
#[test]
fn root_attack4_finding_reused_tcp_port_keeps_no_backend_and_skips_the_check() {
    let (mut lab, ifs) = lab4(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    tcp_handshake(&mut lab, &ifs, 40000, Y4);
    lab.verdict(
        "the client resets",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, TCP, &tcp(40000, 80, RST | ACK)),
        PASS,
    );
    let v = uplink(
        &mut lab,
        &ifs,
        ifs.c,
        &v4(CLIENT4, Y4, TCP, &tcp(40000, 8080, RST | ACK)),
    );
    assert_eq!(v, PASS, "RST DNATed: {}", show(v));
    // A new connection from the same port, to the same (single-backend) Service.
    tcp_handshake(&mut lab, &ifs, 40000, Y4);
    revoke(&mut lab);
    lab.verdict(
        "the revoked backend's data through the ClusterIP",
        Hook::ToPod,
        ifs.c,
        &service_data(40000),
        DROP,
    );
}

/// The same root cause through a lost record: an answered UDP exchange whose record is
/// gone (evicted: see `..._answered_dns_churn_evicts_...`) has its next answer dropped
/// (fail closed, the Service entry forgotten); the client's next datagram makes a new
/// record, and its translation rides the still-live DEFERRED_EGRESS entry at the uplink,
/// so no backend is learnt. After the revocation, the backend keeps pushing datagrams
/// into the client (a subscription: the client does not send again).
#[test]
fn root_attack4_finding_record_remade_after_a_loss_learns_no_backend() {
    let (mut lab, ifs) = lab4(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    udp_exchange(&mut lab, &ifs, 5000, SVC4, Y4);
    lab.pr
        .maps_mut()
        .service_flows
        .remove(&record_key(5000, UDP))
        .expect("the answered connection's record");
    lab.verdict(
        "an answer without its record (fail closed)",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        DROP,
    );
    udp_exchange(&mut lab, &ifs, 5000, SVC4, Y4);
    revoke(&mut lab);
    lab.verdict(
        "the revoked backend pushes through the ClusterIP",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        DROP,
    );
}

/// Spec: egress is decided on the backend actually chosen, and revoked connections stop.
/// The client talked to the server directly from UDP 5000 (allowed then). Its egress to
/// the server is revoked. Later (the kernel's 30 s UDP entry gone, netpol's 180 s one
/// not) the same socket asks Service A, which kube-proxy translates to the server: the
/// translated tuple is the direct connection's. `to_pod` at the server finds that entry
/// (no DEFERRED_EGRESS flag) and re-decides only the server's ingress, never the client's
/// egress; nothing is learnt for the record either, so the server's answers pass too.
/// Every packet refreshes the entry: the client reaches the revoked server for as long
/// as it likes.
#[test]
fn root_attack4_finding_direct_tuple_reused_by_a_service_reaches_a_revoked_local_backend() {
    let (mut lab, ifs) = lab4(&[
        ("client-egress", CLIENT_EGRESS_Y_AND_SERVER),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    let direct = v4(CLIENT4, SERVER4, UDP, &udp(5000, 53));
    lab.expect(
        "directly to the server",
        Hook::FromPod,
        ifs.c,
        &direct,
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
    let v = lab.run_from(Hook::ToPod, ifs.s, ifs.c, &direct);
    assert_eq!(v, PASS, "at the server: {}", show(v));
    let answer = v4(SERVER4, CLIENT4, UDP, &udp(53, 5000));
    assert_eq!(
        lab.run(Hook::FromPod, ifs.s, &answer),
        PASS,
        "server answers"
    );
    lab.verdict("the answer", Hook::ToPod, ifs.c, &answer, PASS);
    // The server is no longer allowed (only 10.2.0.0/16 and the like).
    set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_Y);
    lab.apply();
    lab.verdict(
        "directly to the server after the revocation",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SERVER4, UDP, &udp(5001, 53)),
        DROP,
    );
    lab.expect(
        "the same socket to Service A",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, UDP, &udp(5000, 53)),
        PASS,
        "client",
        Some(reason::PASS_SERVICE),
    );
    let v = lab.run_from(Hook::ToPod, ifs.s, ifs.c, &direct);
    assert_eq!(
        v,
        DROP,
        "DNATed to the server, whom the client's egress no longer allows: {}",
        show(v)
    );
}

/// The same at the uplink, with a remote backend: the direct connection's entry is
/// replied and has no DEFERRED_EGRESS flag, so `fast::tracked_at_uplink` passes the
/// translated datagram uncounted and never asks the client's current rule set.
#[test]
fn root_attack4_finding_direct_tuple_reused_by_a_service_passes_the_uplink_after_revocation() {
    let (mut lab, ifs) = lab4(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    let direct = v4(CLIENT4, Y4, UDP, &udp(5000, 53));
    lab.expect(
        "directly to 10.2.0.5",
        Hook::FromPod,
        ifs.c,
        &direct,
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
    assert_eq!(uplink(&mut lab, &ifs, ifs.c, &direct), PASS, "uplink");
    lab.verdict(
        "its answer",
        Hook::ToPod,
        ifs.c,
        &v4(Y4, CLIENT4, UDP, &udp(53, 5000)),
        PASS,
    );
    revoke(&mut lab);
    lab.expect(
        "the same socket to Service A",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, UDP, &udp(5000, 53)),
        PASS,
        "client",
        Some(reason::PASS_SERVICE),
    );
    let v = uplink(&mut lab, &ifs, ifs.c, &direct);
    assert_eq!(
        v,
        DROP,
        "DNATed to 10.2.0.5, revoked for the client: {}",
        show(v)
    );
}

/// Spec: "a connection needs egress allowed at the source AND ingress allowed at the
/// destination"; only replies of an allowed connection pass. The client (ingress
/// deny-all) sends to Service A; kube-proxy picks the local server, whose ingress admits
/// nobody: `to_pod` drops the opening but learns nothing for the record (the
/// egress-denied case learns `UNDECIDED`, this one nothing), and even a learnt backend
/// would only be checked against the client's egress, which allows the server. The
/// kernel's NAT entry exists, so the refused server can send into the client as
/// 10.96.0.10:53 (`still_allowed`: no backend -> pass).
#[test]
fn root_attack4_finding_backend_whose_ingress_refused_the_client_sends_into_it() {
    let (mut lab, ifs) = lab4(&[
        ("client-egress", CLIENT_EGRESS_SERVER),
        ("client-ingress", CLIENT_INGRESS_NONE),
        ("server-ingress", SERVER_INGRESS_NONE),
    ]);
    lab.expect(
        "client to the ClusterIP",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, UDP, &udp(5000, 53)),
        PASS,
        "client",
        Some(reason::PASS_SERVICE),
    );
    lab.expect(
        "DNATed to the server, whose ingress admits nobody",
        Hook::ToPod,
        ifs.s,
        &v4(CLIENT4, SERVER4, UDP, &udp(5000, 53)),
        DROP,
        "server",
        Some(reason::DROP_INGRESS),
    );
    let v = lab.run(
        Hook::FromPod,
        ifs.s,
        &v4(SERVER4, CLIENT4, UDP, &udp(53, 5000)),
    );
    assert_eq!(v, PASS, "the server's egress is open: {}", show(v));
    lab.verdict(
        "the refused server, reverse-NATed, into an ingress deny-all client",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        DROP,
    );
}

/// Ordinary use: records are never swept (no expiry, not removed when their connection
/// ends), so `SERVICE_FLOWS` fills with the records of finished answered connections
/// (every DNS lookup from a fresh port leaves one) and then evicts by LRU, live idle
/// connections among the first. Here the client holds an idle TCP connection to Service
/// A (its conntrack entry lives 6 h); the pods of the node, the client included, make
/// ordinary DNS lookups (UDP, a fresh port each, A and AAAA answered on the same socket
/// as glibc does), about 196000 of them: a few hours of a busy node. The server then
/// speaks on the idle connection: its data is dropped (record gone -> fail closed) and
/// the connection forgotten. Conntrack maps at their default sizes, as in production
/// (the lookups' conntrack entries would also be swept after 180 s; records never are).
#[test]
fn root_attack4_finding_answered_dns_churn_evicts_an_idle_connections_record() {
    let (mut lab, ifs) = lab4_default_conntrack(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
        ("other-ingress", OTHER_INGRESS_NONE),
        ("server-ingress", SERVER_INGRESS_NONE),
    ]);
    tcp_handshake(&mut lab, &ifs, 40000, Y4);
    lab.expect(
        "the server speaks first",
        Hook::ToPod,
        ifs.c,
        &service_data(40000),
        PASS,
        "client",
        Some(reason::ALLOW_TRACKED),
    );
    for (pod, addr) in [(ifs.o, OTHER4), (ifs.s, SERVER4), (ifs.c, CLIENT4)] {
        for sport in (1..=u16::MAX).filter(|p| *p != 40000) {
            assert_eq!(
                lab.run(Hook::FromPod, pod, &v4(addr, SVC4, UDP, &udp(sport, 53))),
                PASS,
                "lookup"
            );
            assert_eq!(
                // From the node (0), which the uplink takes as the sender's own veth:
                // a test run on every kernel (real packets would take minutes).
                uplink(&mut lab, &ifs, 0, &v4(addr, Y4, UDP, &udp(sport, 53))),
                PASS,
                "lookup, translated"
            );
            for rr in ["A", "AAAA"] {
                assert_eq!(
                    lab.run(Hook::ToPod, pod, &v4(SVC4, addr, UDP, &udp(53, sport))),
                    PASS,
                    "{rr} answer"
                );
            }
        }
    }
    lab.expect(
        "the server speaks again on the idle connection",
        Hook::ToPod,
        ifs.c,
        &service_data(40000),
        PASS,
        "client",
        Some(reason::ALLOW_TRACKED),
    );
}

/// Spec: "a Service whose backends are only partly allowed must work exactly for the
/// allowed ones". A UDP socket (one port) to Service A, whose backends are 10.3.0.5
/// (denied) and 10.2.0.5 (allowed). The first datagram goes to the denied one (dropped
/// at the uplink, learnt as denied). Later the kernel's entry is gone (30 s), netpol's
/// Service entry is not (60 s), and the next datagram goes to the allowed backend: its
/// answer is dropped, because the record still holds the denied backend of a kernel
/// connection that no longer exists.
#[test]
fn root_attack4_finding_stale_denied_backend_drops_the_allowed_backends_answer() {
    let (mut lab, ifs) = lab4(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    let ask = v4(CLIENT4, SVC4, UDP, &udp(5000, 53));
    lab.verdict("to Service A", Hook::FromPod, ifs.c, &ask, PASS);
    let v = uplink(
        &mut lab,
        &ifs,
        ifs.c,
        &v4(CLIENT4, Y4B, UDP, &udp(5000, 53)),
    );
    assert_eq!(v, DROP, "DNATed to the denied backend: {}", show(v));
    lab.verdict("to Service A again", Hook::FromPod, ifs.c, &ask, PASS);
    let v = uplink(&mut lab, &ifs, ifs.c, &v4(CLIENT4, Y4, UDP, &udp(5000, 53)));
    assert_eq!(v, PASS, "DNATed to the allowed backend: {}", show(v));
    lab.verdict(
        "the allowed backend answers",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        PASS,
    );
}

/// Ordinary use: one UDP socket to one Service with five allowed backends, a datagram
/// now and then (more than 30 s apart: each is a new kernel connection with a random
/// backend; less than 180 s: netpol's Service entry lives on). Backends pile up in the
/// record, and the answer of the fifth exchange is dropped (overflow).
#[test]
fn root_attack4_finding_one_socket_rotating_over_five_backends_loses_an_answer() {
    let (mut lab, ifs) = lab4(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    for i in 0..5u8 {
        udp_exchange(&mut lab, &ifs, 5000, SVC4, [10, 2, 0, 5 + i]);
    }
}

/// Spec: only replies of an allowed connection pass. The client talked to Service A from
/// UDP 5000 while isolated (record: 10.2.0.5). Its policies are deleted and re-created
/// (a redeploy); meanwhile the same socket's kernel connection to Service A went to
/// 10.3.0.5, which the re-created egress does not allow. The agent seeds from the
/// kernel's table, but `seed_conntrack` keeps the stale record (BPF_NOEXIST) and the old
/// Service entry: the denied backend's answers pass, checked against 10.2.0.5.
#[test]
fn root_attack4_finding_reisolation_keeps_a_stale_record_and_passes_a_denied_backend() {
    let policies = [
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ];
    let (mut lab, ifs) = lab4(&policies);
    udp_exchange(&mut lab, &ifs, 5000, SVC4, Y4);
    for (name, _) in policies {
        del_policy(&mut lab.state, name);
    }
    lab.apply();
    for (name, spec) in policies {
        set_policy(&mut lab.state, name, spec);
    }
    let c = v4a(CLIENT4);
    lab.apply_as_agent(&[flow(UDP, (c, 5000, v4a(SVC4), 53), (v4a(Y4B), 53, c, 5000))]);
    lab.verdict(
        "the denied backend answers through Service A",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        DROP,
    );
}

/// The other face of the stale record: after the same redeploy, the socket's kernel
/// connection went to Service B (backend 10.2.0.6, allowed). The seeded Service entry is
/// added, its record is not (the stale one, of Service A, stays): the allowed answer is
/// dropped and the connection forgotten.
#[test]
fn root_attack4_finding_reisolation_keeps_a_stale_record_and_drops_an_allowed_service() {
    let policies = [
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ];
    let (mut lab, ifs) = lab4(&policies);
    udp_exchange(&mut lab, &ifs, 5000, SVC4, Y4);
    for (name, _) in policies {
        del_policy(&mut lab.state, name);
    }
    lab.apply();
    for (name, spec) in policies {
        set_policy(&mut lab.state, name, spec);
    }
    let c = v4a(CLIENT4);
    let seeded = lab.apply_as_agent(&[flow(
        UDP,
        (c, 5000, v4a(SVCB4), 53),
        (v4a(Y4C), 53, c, 5000),
    )]);
    assert!(seeded > 0, "the kernel's connection is seeded");
    lab.verdict(
        "Service B answers (its backend is allowed)",
        Hook::ToPod,
        ifs.c,
        &v4(SVCB4, CLIENT4, UDP, &udp(53, 5000)),
        PASS,
    );
}

/// Time passes: every tracked connection of the lab is made idle for longer than its
/// lifetime (the agent's 30 s sweep has not removed them yet).
fn age_all_connections(lab: &mut Lab) {
    let maps = lab.pr.maps_mut();
    for map in [&mut maps.conntrack, &mut maps.conntrack_new] {
        let entries: Vec<_> = map.iter().filter_map(Result::ok).collect();
        for (k, mut e) in entries {
            e.last_seen_ns = 0;
            map.insert(k, e, 0).expect("age an entry");
        }
    }
}

/// Time passes for the client's Service entries only (`ct_flag::SERVICE`): they expire,
/// the backend entries at the uplink (younger than their 60 s) do not.
fn age_service_entries(lab: &mut Lab) {
    let maps = lab.pr.maps_mut();
    for map in [&mut maps.conntrack, &mut maps.conntrack_new] {
        let entries: Vec<_> = map.iter().filter_map(Result::ok).collect();
        for (k, mut e) in entries {
            if e.flags & netpol_common::ct_flag::SERVICE != 0 {
                e.last_seen_ns = 0;
                map.insert(k, e, 0).expect("age an entry");
            }
        }
    }
}

/// The record reset of `..._reused_tcp_port_keeps_no_backend_...`, triggered from
/// outside: a forged RST "from the Service" (conntrack does not check sequence numbers)
/// passes as the connection's and marks its Service entry closed (10 s). Ten seconds
/// later the client's next segment opens a new Service entry and resets the record; its
/// translation rides the backend entry at the uplink (younger than 60 s), so no backend
/// is learnt, and after the revocation the backend's data still passes.
#[test]
fn root_attack4_finding_forged_rst_turns_off_the_backend_check() {
    let (mut lab, ifs) = lab4(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    tcp_handshake(&mut lab, &ifs, 40000, Y4);
    let v = lab.run_from(
        Hook::ToPod,
        ifs.c,
        ifs.up,
        &v4(SVC4, CLIENT4, TCP, &tcp(80, 40000, RST)),
    );
    assert_eq!(v, PASS, "the forged RST rides the connection: {}", show(v));
    age_service_entries(&mut lab);
    lab.verdict(
        "the client goes on",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, TCP, &tcp(40000, 80, PSH | ACK)),
        PASS,
    );
    let v = uplink(
        &mut lab,
        &ifs,
        ifs.c,
        &v4(CLIENT4, Y4, TCP, &tcp(40000, 8080, PSH | ACK)),
    );
    assert_eq!(v, PASS, "translated: {}", show(v));
    lab.verdict("the answer", Hook::ToPod, ifs.c, &service_data(40000), PASS);
    revoke(&mut lab);
    lab.verdict(
        "the revoked backend's data",
        Hook::ToPod,
        ifs.c,
        &service_data(40000),
        DROP,
    );
}

/// Ordinary use: one UDP socket asked four Services, a few minutes ago (every one of
/// those connections has expired). It now asks a fifth: `others_open` counts conntrack
/// entries by presence, expired or not, so until the agent's sweep the record still has
/// four open Services and the new connection is dropped as untrackable.
#[test]
fn root_attack4_finding_expired_connections_still_fill_the_record() {
    let (mut lab, ifs) = lab4(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    for i in 0..5u8 {
        lab.state.services.insert(
            ObjectRef::new("default", format!("svc-{i}")),
            ServiceInfo {
                ips: vec![v4a([10, 96, 1, i])],
                ports: vec![(Protocol::Udp, 53)],
            },
        );
    }
    lab.apply();
    for i in 0..4u8 {
        udp_exchange(&mut lab, &ifs, 5000, [10, 96, 1, i], Y4);
    }
    age_all_connections(&mut lab);
    lab.expect(
        "a fifth Service, minutes later",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, [10, 96, 1, 4], UDP, &udp(5000, 53)),
        PASS,
        "client",
        Some(reason::PASS_SERVICE),
    );
}

// =====================================================================================
// Handled: regression guards.
// =====================================================================================

/// TCP port reuse to a Service whose backend is local: the first connection's RST marks
/// the client-server entry at the server's veth, so the reused port's SYN is decided
/// afresh there and the backend learnt; after the revocation the answer is dropped.
#[test]
fn root_attack4_reused_tcp_port_to_a_local_backend_is_checked_again() {
    let (mut lab, ifs) = lab4(&[
        ("client-egress", CLIENT_EGRESS_SERVER),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    let syn = v4(CLIENT4, SVC4, TCP, &tcp(40000, 80, SYN));
    let syn_t = v4(CLIENT4, SERVER4, TCP, &tcp(40000, 8080, SYN));
    let synack_t = v4(SERVER4, CLIENT4, TCP, &tcp(8080, 40000, SYN | ACK));
    let synack = v4(SVC4, CLIENT4, TCP, &tcp(80, 40000, SYN | ACK));
    for round in 0..2 {
        lab.verdict("SYN", Hook::FromPod, ifs.c, &syn, PASS);
        let v = lab.run_from(Hook::ToPod, ifs.s, ifs.c, &syn_t);
        assert_eq!(v, PASS, "SYN at the server, round {round}: {}", show(v));
        if round == 1 {
            set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_Y);
            lab.apply();
        }
        assert_eq!(lab.run(Hook::FromPod, ifs.s, &synack_t), PASS, "SYN-ACK");
        let want = if round == 0 { PASS } else { DROP };
        lab.verdict("SYN-ACK at the client", Hook::ToPod, ifs.c, &synack, want);
        if round == 0 {
            lab.verdict(
                "RST",
                Hook::FromPod,
                ifs.c,
                &v4(CLIENT4, SVC4, TCP, &tcp(40000, 80, RST | ACK)),
                PASS,
            );
            let v = lab.run_from(
                Hook::ToPod,
                ifs.s,
                ifs.c,
                &v4(CLIENT4, SERVER4, TCP, &tcp(40000, 8080, RST | ACK)),
            );
            assert_eq!(v, PASS, "RST at the server: {}", show(v));
        }
    }
}

/// TCP port reuse after a FIN close, the new connection translated to another remote
/// backend: nothing tracks that tuple yet, so it is decided at the uplink and learnt;
/// after its revocation the new backend's data is dropped.
#[test]
fn root_attack4_reused_tcp_port_to_another_backend_is_learnt() {
    let (mut lab, ifs) = lab4(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    tcp_handshake(&mut lab, &ifs, 40000, Y4);
    lab.verdict(
        "client FIN",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, TCP, &tcp(40000, 80, FIN | ACK)),
        PASS,
    );
    lab.verdict(
        "server FIN",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, TCP, &tcp(80, 40000, FIN | ACK)),
        PASS,
    );
    tcp_handshake(&mut lab, &ifs, 40000, Y4C);
    revoke(&mut lab);
    lab.verdict(
        "the revoked new backend's data",
        Hook::ToPod,
        ifs.c,
        &service_data(40000),
        DROP,
    );
}

/// ICMP errors about a Service connection (a router's "fragmentation needed", its quote
/// un-NATed by the kernel) pass while the backend is allowed and stop with it.
#[test]
fn root_attack4_icmp_error_about_a_service_connection_follows_the_backend() {
    let (mut lab, ifs) = lab4(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    udp_exchange(&mut lab, &ifs, 5000, SVC4, Y4);
    let quoted = v4(CLIENT4, SVC4, UDP, &udp(5000, 53));
    let error = v4(ROUTER4, CLIENT4, ICMP, &icmp4_error(3, 4, &quoted, 0));
    lab.expect(
        "frag needed while allowed",
        Hook::ToPod,
        ifs.c,
        &error,
        PASS,
        "client",
        Some(reason::ALLOW_RELATED),
    );
    revoke(&mut lab);
    lab.verdict(
        "frag needed after the revocation",
        Hook::ToPod,
        ifs.c,
        &error,
        DROP,
    );
}

/// DNS over UDP in ordinary use: a lookup per fresh port, answered; an egress change that
/// keeps the backend lets answers through, the revocation stops them; answers from a
/// Service to a port that never asked it are dropped.
#[test]
fn root_attack4_dns_lookups_follow_policy_changes() {
    let (mut lab, ifs) = lab4(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    for sport in 33000..33010u16 {
        udp_exchange(&mut lab, &ifs, sport, SVC4, Y4);
    }
    // Same rules under another name: a new rule-set id, the same backends allowed.
    del_policy(&mut lab.state, "client-egress");
    set_policy(&mut lab.state, "client-egress-2", CLIENT_EGRESS_Y);
    set_policy(
        &mut lab.state,
        "client-egress-3",
        r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}]}]}"#,
    );
    lab.apply();
    for sport in 33000..33005u16 {
        lab.verdict(
            "an answer after a change that keeps the backend",
            Hook::ToPod,
            ifs.c,
            &v4(SVC4, CLIENT4, UDP, &udp(53, sport)),
            PASS,
        );
    }
    del_policy(&mut lab.state, "client-egress-2");
    lab.apply();
    for sport in 33005..33010u16 {
        lab.verdict(
            "an answer after the revocation",
            Hook::ToPod,
            ifs.c,
            &v4(SVC4, CLIENT4, UDP, &udp(53, sport)),
            DROP,
        );
    }
    lab.verdict(
        "Service B to a port that asked only Service A",
        Hook::ToPod,
        ifs.c,
        &v4(SVCB4, CLIENT4, UDP, &udp(53, 33000)),
        DROP,
    );
}

/// Seeding at a pod's first isolation: a connection the kernel translated to an allowed
/// backend goes on, one translated to a denied backend is stopped at its next answer.
#[test]
fn root_attack4_seeded_service_connections_follow_their_backends() {
    let (mut lab, ifs) = lab4(&[]);
    set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_Y);
    set_policy(&mut lab.state, "client-ingress", CLIENT_INGRESS_NONE);
    let c = v4a(CLIENT4);
    let seeded = lab.apply_as_agent(&[
        flow(UDP, (c, 5000, v4a(SVC4), 53), (v4a(Y4), 53, c, 5000)),
        flow(UDP, (c, 5001, v4a(SVC4), 53), (v4a(Y4B), 53, c, 5001)),
    ]);
    assert_eq!(seeded, 4, "a Service entry and a backend entry each");
    lab.verdict(
        "the allowed backend answers",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        PASS,
    );
    lab.verdict(
        "the denied backend answers",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5001)),
        DROP,
    );
}

/// A socket idle for minutes (its Service entry and its backend entry at the uplink both
/// expired) asks again: the record starts over, the backend is decided and learnt afresh
/// at the uplink, and a revocation stops its answers.
#[test]
fn root_attack4_idle_socket_asks_again_and_learns_its_backend() {
    let (mut lab, ifs) = lab4(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    udp_exchange(&mut lab, &ifs, 5000, SVC4, Y4);
    age_all_connections(&mut lab);
    udp_exchange(&mut lab, &ifs, 5000, SVC4, Y4);
    revoke(&mut lab);
    lab.verdict(
        "the revoked backend answers",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        DROP,
    );
}

/// Forged answers from the uplink: to a port that never asked the Service (no record)
/// they are judged as new connections into an ingress deny-all client and dropped.
#[test]
fn root_attack4_forged_service_answers_to_unasked_ports_are_dropped() {
    let (mut lab, ifs) = lab4(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    udp_exchange(&mut lab, &ifs, 5000, SVC4, Y4);
    for (sport, what) in [(5001u16, "another port"), (5000, "same port, TCP")] {
        let p = if what.ends_with("TCP") {
            v4(SVC4, CLIENT4, TCP, &tcp(80, sport, SYN | ACK))
        } else {
            v4(SVC4, CLIENT4, UDP, &udp(53, sport))
        };
        let v = lab.run_from(Hook::ToPod, ifs.c, ifs.up, &p);
        assert_eq!(v, DROP, "forged answer to {what}: {}", show(v));
    }
}
