//! Third round of attacks on the datapath (BPF_PROG_TEST_RUN), after SERVICE_FLOWS (the
//! backend a local client's Service connection went to), the uplink's `came_from` check,
//! the two conntrack maps, misdelivered unicast at `to_pod` and connection forgetting.
//! **Needs root.**
//!
//! Tests named `root_attack3_finding_*` assert the CORRECT behaviour (DESIGN.md's spec)
//! for an attack; all of them are fixed and pass. The others are attacks handled
//! correctly and guard against regressions.
//!
//! Every test runs in a network namespace of its own thread (unshare(CLONE_NEWNET)) with
//! veth pairs. Nothing touches the host's interfaces and nothing leaves the namespace.

use netpol_agent::program::addr_of;
use netpol_common::ServiceFlowKey;
use netpol_tests::lab::*;

const SVCB4: [u8; 4] = [10, 96, 0, 20];
/// A remote pod behind Service B.
const Y4C: [u8; 4] = [10, 2, 0, 6];

/// Veths: client, server, other, an uplink and a bridge (cni0 of a bridge CNI).
struct Ifs {
    c: u32,
    s: u32,
    o: u32,
    up: u32,
    br: u32,
}

/// `base()` plus Service B (10.96.0.20, UDP 53), the lab on the veths.
fn lab3(policies: &[(&str, &str)]) -> (Lab, Ifs) {
    let i = netns(&["vc", "vs", "vo", "upl", "cni0"]);
    let ifs = Ifs {
        c: i[0],
        s: i[1],
        o: i[2],
        up: i[3],
        br: i[4],
    };
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
    let mut lab = Lab::new(
        st,
        &[("client", ifs.c), ("server", ifs.s), ("other", ifs.o)],
        &[v4a(NODE4), v4a(UPLINK4)],
    );
    // The agent registers its uplinks (where forged pod addresses would come in).
    lab.pr
        .maps_mut()
        .set_uplinks(&[ifs.up].into())
        .expect("uplinks");
    (lab, ifs)
}

/// The client's UDP exchange 5000 -> Service A 10.96.0.10:53, DNATed to the remote
/// backend 10.2.0.5:53 (allowed), answered.
fn service_exchange(lab: &mut Lab, ifs: &Ifs, sport: u16) {
    lab.expect(
        "client to Service A",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, UDP, &udp(sport, 53)),
        PASS,
        "client",
        Some(reason::PASS_SERVICE),
    );
    let v = lab.run_from(
        Hook::Uplink,
        ifs.up,
        ifs.c,
        &v4(CLIENT4, Y4, UDP, &udp(sport, 53)),
    );
    assert_eq!(v, PASS, "DNATed to the allowed backend: {}", show(v));
    lab.expect(
        "the answer (un-DNATed)",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, sport)),
        PASS,
        "client",
        Some(reason::ALLOW_TRACKED),
    );
}

/// The client may reach only servers (any port) and 10.2.0.0/16 on UDP 53.
const CLIENT_EGRESS_Y_AND_SERVER: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"ipBlock": {"cidr": "10.2.0.0/16"}}], "ports": [{"port": 53, "protocol": "UDP"}]},
             {"to": [{"podSelector": {"matchLabels": {"app": "server"}}}]}]}"#;
const CLIENT_EGRESS_SERVER_ONLY: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}]}]}"#;
/// The server admits only the client, on TCP 8080 and UDP 53.
const SERVER_INGRESS_CLIENT: &str = r#"{"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
  "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
               "ports": [{"port": 8080}, {"port": 53, "protocol": "UDP"}]}]}"#;
/// The client admits `other` pods on UDP 137, nothing else.
const CLIENT_INGRESS_OTHER_137: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Ingress"],
  "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "other"}}}],
               "ports": [{"port": 137, "protocol": "UDP"}]}]}"#;
const CLIENT_INGRESS_Y6_5355: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Ingress"],
  "ingress": [{"from": [{"ipBlock": {"cidr": "fd00:2::/64"}}],
               "ports": [{"port": 5355, "protocol": "UDP"}]}]}"#;
const OTHER_INGRESS_NONE: &str =
    r#"{"podSelector": {"matchLabels": {"app": "other"}}, "policyTypes": ["Ingress"]}"#;

/// Replaces the Ethernet destination with the broadcast address.
fn broadcast(mut frame: Vec<u8>) -> Vec<u8> {
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame
}

// =====================================================================================
// Findings: these assert the spec and fail today.
// =====================================================================================

/// Spec: "a connection needs egress allowed at the source AND ingress allowed at the
/// destination"; only replies of an ALLOWED connection pass. Attack: the client (ingress
/// deny-all, egress only 10.3.0.0/16) sends to Service 10.96.0.10:53; kube-proxy picks the
/// remote backend 10.2.0.5, which the uplink rightly drops. But the kernel's NAT entry
/// exists (it is confirmed before TC egress), and SERVICE_FLOWS never learnt a backend
/// (`learn_backend` runs only on allowed openings): `still_allowed` returns true for
/// "backend unknown", so the denied backend can send into the client as 10.96.0.10:53 for
/// as long as it likes. Same with a local backend whose opening `to_pod` dropped.
#[test]
fn root_attack3_finding_dropped_service_opening_lets_the_denied_backend_in() {
    let (mut lab, ifs) = lab3(&[
        ("client-egress", CLIENT_EGRESS_Y_REVOKED),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    // Remote backend.
    lab.expect(
        "client to the ClusterIP",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, UDP, &udp(5000, 53)),
        PASS,
        "client",
        Some(reason::PASS_SERVICE),
    );
    let v = lab.run_from(
        Hook::Uplink,
        ifs.up,
        ifs.c,
        &v4(CLIENT4, Y4, UDP, &udp(5000, 53)),
    );
    assert_eq!(v, DROP, "DNATed to a denied backend: {}", show(v));
    // Local backend (the server), a second connection.
    lab.expect(
        "client to the ClusterIP again",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, UDP, &udp(5001, 53)),
        PASS,
        "client",
        Some(reason::PASS_SERVICE),
    );
    lab.expect(
        "DNATed to the local server, denied by the client's egress",
        Hook::ToPod,
        ifs.s,
        &v4(CLIENT4, SERVER4, UDP, &udp(5001, 53)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    let v = lab.run(
        Hook::FromPod,
        ifs.s,
        &v4(SERVER4, CLIENT4, UDP, &udp(53, 5001)),
    );
    assert_eq!(v, PASS, "the unisolated server may send: {}", show(v));
    let mut got = Vec::new();
    for sport in [5000u16, 5001] {
        for _ in 0..3 {
            got.push(show(lab.run(
                Hook::ToPod,
                ifs.c,
                &v4(SVC4, CLIENT4, UDP, &udp(53, sport)),
            )));
        }
    }
    assert_eq!(
        got,
        vec!["DROP"; 6],
        "a denied backend's packets (reverse-NATed) into an ingress deny-all client"
    );
}

/// Spec: "A policy change applies to existing connections at their next packet (revoked
/// ones stop)". Attack: SERVICE_FLOWS is keyed by (client, client port, proto) only. The
/// client talks to Service A (backend 10.2.0.5) from UDP port 5000, then sends one
/// datagram from the same socket to Service B: `remember` overwrites the entry with B
/// and no backend. After the client's egress to 10.2.0.0/16 is revoked, Service A's
/// replies find an entry of another Service (`f.service != service` -> true) and pass.
#[test]
fn root_attack3_finding_second_service_on_the_same_port_hides_a_revoked_backend() {
    let (mut lab, ifs) = lab3(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    service_exchange(&mut lab, &ifs, 5000);
    lab.expect(
        "same socket to Service B",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVCB4, UDP, &udp(5000, 53)),
        PASS,
        "client",
        Some(reason::PASS_SERVICE),
    );
    let v = lab.run_from(
        Hook::Uplink,
        ifs.up,
        ifs.c,
        &v4(CLIENT4, Y4C, UDP, &udp(5000, 53)),
    );
    assert_eq!(v, PASS, "Service B's backend is allowed too: {}", show(v));
    set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_Y_REVOKED);
    lab.apply();
    lab.verdict(
        "Service A's backend answers after the revocation",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        DROP,
    );
}

/// Spec: ingress is allowed only from the peers a rule selects ("the pod is identified by
/// the veth it came from"). Attack: a host outside the node sends a SYN with the client's
/// address (10.1.0.2) to the server (which admits only the client). `to_pod` trusts the
/// source: it judges the client's egress and the server's ingress and passes it; the
/// `came_from` check exists only at the uplink. Anyone who can route to the node (rp_filter
/// loose or off, as on many CNIs) reaches an ingress-isolated pod as any local pod.
#[test]
fn root_attack3_finding_forged_local_source_from_the_uplink_admitted_at_to_pod() {
    let (mut lab, ifs) = lab3(&[("server-ingress", SERVER_INGRESS_CLIENT)]);
    let syn = v4(CLIENT4, SERVER4, TCP, &tcp(40000, 8080, SYN));
    let v = lab.run_from(Hook::ToPod, ifs.s, ifs.c, &syn);
    assert_eq!(v, PASS, "from the client's veth: {}", show(v));
    let forged = v4(CLIENT4, SERVER4, TCP, &tcp(40001, 8080, SYN));
    let v = lab.run_from(Hook::ToPod, ifs.s, ifs.up, &forged);
    assert_eq!(
        v,
        DROP,
        "the client's address, entered through the uplink: {}",
        show(v)
    );
}

/// Spec: revoked connections stop. Attack on SERVICE_FLOWS: the backend is learnt from
/// any packet with the client's source and port that reaches a local pod as a new
/// connection, and `to_pod` does not check where it came from. After the client's
/// legitimate exchange with Service A (backend 10.2.0.5), a forged datagram
/// 10.1.0.2:5000 -> server:53 from the uplink rewrites the learnt backend to the server,
/// which the client may still reach after its egress to 10.2.0.0/16 is revoked: the
/// revoked backend's replies pass.
#[test]
fn root_attack3_finding_forged_packet_rewrites_the_learnt_backend() {
    let (mut lab, ifs) = lab3(&[
        ("client-egress", CLIENT_EGRESS_Y_AND_SERVER),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    service_exchange(&mut lab, &ifs, 5000);
    // The forgery (its own verdict is the previous finding).
    let _ = lab.run_from(
        Hook::ToPod,
        ifs.s,
        ifs.up,
        &v4(CLIENT4, SERVER4, UDP, &udp(5000, 53)),
    );
    set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_SERVER_ONLY);
    lab.apply();
    lab.verdict(
        "the revoked backend answers through Service A",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        DROP,
    );
}

/// Spec: revoked connections stop. Attack: SERVICE_FLOWS is an LRU map of 65536 entries
/// and `still_allowed` passes when the entry is missing. Another isolated pod on the node
/// sends to Service ports from 131070 source ports (UDP and TCP, each DNATed to a
/// backend, so its entry is referenced like the client's), evicting the client's entry; after the client's egress to the backend is revoked, the backend's replies
/// pass again. (Fail closed: without the entry, the reply is not known to be allowed.)
#[test]
fn root_attack3_finding_evicted_service_flow_fails_open() {
    let (mut lab, ifs) = lab3(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
        ("other-ingress", OTHER_INGRESS_NONE),
    ]);
    service_exchange(&mut lab, &ifs, 5000);
    // Each flow is also DNATed to a backend, so its entry is referenced again (the
    // kernel's LRU keeps referenced entries first, as the client's is).
    for sport in 1..=u16::MAX {
        for (opening, translated) in [
            (
                v4(OTHER4, SVC4, UDP, &udp(sport, 53)),
                v4(OTHER4, Y4, UDP, &udp(sport, 53)),
            ),
            (
                v4(OTHER4, SVC4, TCP, &tcp(sport, 80, SYN)),
                v4(OTHER4, Y4, TCP, &tcp(sport, 8080, SYN)),
            ),
        ] {
            assert_eq!(lab.run(Hook::FromPod, ifs.o, &opening), PASS, "flood");
            assert_eq!(
                // From the node (0), which the uplink takes as the sender's own veth:
                // a test run on every kernel (131070 real packets would take minutes).
                lab.run_from(Hook::Uplink, ifs.up, 0, &translated),
                PASS,
                "flood, translated"
            );
        }
    }
    set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_Y_REVOKED);
    lab.apply();
    lab.verdict(
        "the revoked backend answers after the flood",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        DROP,
    );
}

/// Spec: a pod's allowed egress is allowed; DESIGN supports bridge CNIs. On a bridge CNI
/// (flannel's cni0, bridge), a pod's routed traffic is received again on the bridge
/// device, so skb->ingress_ifindex at the uplink is the bridge's, never the pod's veth.
/// `came_from` then calls every such packet forged: an unisolated pod cannot reach
/// another node, and an isolated one cannot reach an allowed remote Service backend.
#[test]
fn root_attack3_finding_bridge_cni_uplink_traffic_dropped_as_spoofed() {
    let (mut lab, ifs) = lab3(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    // Unisolated server to another node.
    let v = lab.run(
        Hook::FromPod,
        ifs.s,
        &v4(SERVER4, Y4, TCP, &tcp(41000, 80, SYN)),
    );
    assert_eq!(v, PASS, "server's SYN at its veth: {}", show(v));
    let v = lab.run_from(
        Hook::Uplink,
        ifs.up,
        ifs.br,
        &v4(SERVER4, Y4, TCP, &tcp(41000, 80, SYN)),
    );
    assert_eq!(
        v,
        PASS,
        "unisolated server to another node, routed from cni0: {}",
        show(v)
    );
    // Isolated client through a Service to an allowed remote backend.
    lab.expect(
        "client to the ClusterIP",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, UDP, &udp(5000, 53)),
        PASS,
        "client",
        Some(reason::PASS_SERVICE),
    );
    let v = lab.run_from(
        Hook::Uplink,
        ifs.up,
        ifs.br,
        &v4(CLIENT4, Y4, UDP, &udp(5000, 53)),
    );
    assert_eq!(
        v,
        PASS,
        "DNATed to the allowed backend, routed from cni0: {}",
        show(v)
    );
}

/// Spec: ingress allowed by a rule (or by not being isolated for ingress) is allowed. On a
/// bridge CNI a subnet-directed broadcast (10.1.0.255, Ethernet ff:ff:ff:ff:ff:ff) is
/// delivered to every pod of the bridge, and their kernels accept it. `not_for` treats it
/// as misdelivered unicast: a pod isolated only for egress (ingress open), or one whose
/// ingress allows the sender, loses it (NetBIOS/DHCP-style discovery breaks).
#[test]
fn root_attack3_finding_subnet_broadcast_dropped_as_misdelivered() {
    let bcast = broadcast(v4(OTHER4, [10, 1, 0, 255], UDP, &udp(137, 137)));
    let (mut lab, ifs) = lab3(&[("client-egress", CLIENT_EGRESS_NONE)]);
    let v = lab.run(Hook::ToPod, ifs.c, &bcast);
    assert_eq!(v, PASS, "ingress not isolated: {}", show(v));
    set_policy(&mut lab.state, "client-ingress", CLIENT_INGRESS_OTHER_137);
    lab.apply();
    let v = lab.run(Hook::ToPod, ifs.c, &bcast);
    assert_eq!(v, PASS, "ingress allows other on UDP 137: {}", show(v));
}

// =====================================================================================
// Handled: regression guards.
// =====================================================================================

/// Spec: revoked connections stop. One client port used for TCP to Service :80 and UDP to
/// Service :53 (the key has the protocol), and the same port from IPv6: after the revocation
/// each reply is judged on its own learnt backend.
#[test]
fn root_attack3_service_flows_keep_protocols_apart() {
    let (mut lab, ifs) = lab3(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    service_exchange(&mut lab, &ifs, 5000);
    lab.expect(
        "TCP from the same port to Service :80",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, TCP, &tcp(5000, 80, SYN)),
        PASS,
        "client",
        Some(reason::PASS_SERVICE),
    );
    let v = lab.run_from(
        Hook::Uplink,
        ifs.up,
        ifs.c,
        &v4(CLIENT4, Y4, TCP, &tcp(5000, 80, SYN)),
    );
    assert_eq!(v, PASS, "TCP DNATed: {}", show(v));
    set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_Y_REVOKED);
    lab.apply();
    lab.verdict(
        "UDP reply after the revocation",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        DROP,
    );
    lab.verdict(
        "TCP reply after the revocation",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, TCP, &tcp(80, 5000, SYN | ACK)),
        DROP,
    );
}

/// Spec: misdelivered unicast is another pod's packet; never judged with this pod's
/// rules (an isolated client does not receive the server's traffic flooded by a bridge).
#[test]
fn root_attack3_misdelivered_unicast_dropped_for_isolated_pods() {
    let (mut lab, ifs) = lab3(&[("client-ingress", CLIENT_INGRESS_NONE)]);
    lab.expect(
        "the server's packet flooded to the client's port",
        Hook::ToPod,
        ifs.c,
        &v4(Y4, SERVER4, TCP, &tcp(40000, 8080, SYN)),
        DROP,
        "client",
        Some(reason::DROP_MISDELIVERED),
    );
}

/// Spec: ingress isolation covers multicast. IPv6 multicast (site scope) to an isolated
/// pod passes only from an allowed source and port; MLD queries (hop limit 1) pass as link
/// messages.
#[test]
fn root_attack3_ipv6_multicast_to_an_isolated_pod() {
    let (mut lab, ifs) = lab3(&[("client-ingress", CLIENT_INGRESS_Y6_5355)]);
    let group = ip6("ff05::1:3");
    lab.verdict(
        "from an allowed source and port",
        Hook::ToPod,
        ifs.c,
        &v6(ip6("fd00:2::5"), group, UDP, 64, &udp(6000, 5355)),
        PASS,
    );
    lab.verdict(
        "from a denied source",
        Hook::ToPod,
        ifs.c,
        &v6(ip6("fd00:9::5"), group, UDP, 64, &udp(6000, 5355)),
        DROP,
    );
    lab.verdict(
        "to a denied port",
        Hook::ToPod,
        ifs.c,
        &v6(ip6("fd00:2::5"), group, UDP, 64, &udp(6000, 5356)),
        DROP,
    );
    lab.verdict(
        "to all nodes, from a denied source",
        Hook::ToPod,
        ifs.c,
        &v6(ip6("fd00:9::5"), ip6("ff02::1"), UDP, 64, &udp(6000, 5355)),
        DROP,
    );
}

/// Spec: the pod is identified by the veth it came from. Uplink packets with the client's
/// address that entered through another pod's veth or through an uplink never open a
/// connection in the client's name. The node itself (ingress_ifindex 0) and a bridge
/// CNI's bridge carry pods' traffic and are not taken for forgers.
#[test]
fn root_attack3_uplink_checks_where_the_client_address_came_from() {
    let (mut lab, ifs) = lab3(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    for (came_in, what) in [(ifs.o, "other's veth"), (ifs.up, "an uplink")] {
        let v = lab.run_from(
            Hook::Uplink,
            ifs.up,
            came_in,
            &v4(CLIENT4, Y4, UDP, &udp(5000, 53)),
        );
        assert_eq!(v, DROP, "client's address from {what}: {}", show(v));
    }
    for (came_in, what) in [(0, "the node"), (ifs.br, "the bridge")] {
        let v = lab.run_from(
            Hook::Uplink,
            ifs.up,
            came_in,
            &v4(CLIENT4, Y4, UDP, &udp(5001, 53)),
        );
        assert_eq!(v, PASS, "client's address from {what}: {}", show(v));
    }
}

/// Spec: revoked connections stop. The client reuses its Service socket (UDP 5000) for a
/// direct datagram to the server: the flow is tracked at the client's veth, so `to_pod`
/// never takes it as a new Service backend and the learnt backend (10.2.0.5) stays; after
/// the revocation of 10.2.0.0/16 (the server still allowed) Service A's replies stop.
#[test]
fn root_attack3_direct_flow_from_the_service_port_keeps_the_learnt_backend() {
    let (mut lab, ifs) = lab3(&[
        ("client-egress", CLIENT_EGRESS_Y_AND_SERVER),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    service_exchange(&mut lab, &ifs, 5000);
    let direct = v4(CLIENT4, SERVER4, UDP, &udp(5000, 53));
    lab.expect(
        "same socket, directly to the server",
        Hook::FromPod,
        ifs.c,
        &direct,
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
    let v = lab.run_from(Hook::ToPod, ifs.s, ifs.c, &direct);
    assert_eq!(v, PASS, "at the server: {}", show(v));
    set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_SERVER_ONLY);
    lab.apply();
    lab.verdict(
        "the revoked backend answers through Service A",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        DROP,
    );
}

// =====================================================================================
// Service records (one per client port, every Service and backend in it).
// =====================================================================================

/// The client may reach 10.2.0.0/16 and 10.3.0.0/16 on UDP 53: an egress change that
/// revokes nothing its Service connections use.
const CLIENT_EGRESS_Y_AND_Y3: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"ipBlock": {"cidr": "10.2.0.0/16"}}, {"ipBlock": {"cidr": "10.3.0.0/16"}}],
              "ports": [{"port": 53, "protocol": "UDP"}]}]}"#;

/// One socket, two Services: each reply passes while both backends are allowed, and
/// after an egress change that keeps them allowed (every backend of the record is
/// checked again and still allowed).
#[test]
fn root_attack3_two_services_on_one_port_answer_while_allowed() {
    let (mut lab, ifs) = lab3(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    service_exchange(&mut lab, &ifs, 5000);
    lab.expect(
        "same socket to Service B",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVCB4, UDP, &udp(5000, 53)),
        PASS,
        "client",
        Some(reason::PASS_SERVICE),
    );
    let v = lab.run_from(
        Hook::Uplink,
        ifs.up,
        ifs.c,
        &v4(CLIENT4, Y4C, UDP, &udp(5000, 53)),
    );
    assert_eq!(v, PASS, "Service B's backend is allowed: {}", show(v));
    for (svc, what) in [(SVC4, "Service A"), (SVCB4, "Service B")] {
        lab.verdict(
            &format!("{what} answers"),
            Hook::ToPod,
            ifs.c,
            &v4(svc, CLIENT4, UDP, &udp(53, 5000)),
            PASS,
        );
    }
    set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_Y_AND_Y3);
    lab.apply();
    for (svc, what) in [(SVC4, "Service A"), (SVCB4, "Service B")] {
        lab.verdict(
            &format!("{what} answers after an egress change that keeps its backend"),
            Hook::ToPod,
            ifs.c,
            &v4(svc, CLIENT4, UDP, &udp(53, 5000)),
            PASS,
        );
    }
    lab.verdict(
        "a Service this port never asked",
        Hook::ToPod,
        ifs.c,
        &v4([10, 96, 0, 30], CLIENT4, UDP, &udp(53, 5000)),
        DROP,
    );
}

/// Spec: one pod flooding new flows must not break other pods' established connections.
/// Another isolated pod opens 70000 Service connections (more than either record map
/// holds); the client's answered connection keeps its record, and its replies pass.
#[test]
fn root_attack3_service_flood_keeps_answered_connections() {
    let (mut lab, ifs) = lab3(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
        ("other-ingress", OTHER_INGRESS_NONE),
    ]);
    service_exchange(&mut lab, &ifs, 5000);
    for svc in [SVC4, SVCB4] {
        for sport in 1..=35_000u16 {
            assert_eq!(
                lab.run(Hook::FromPod, ifs.o, &v4(OTHER4, svc, UDP, &udp(sport, 53))),
                PASS,
                "flood"
            );
        }
    }
    lab.expect(
        "the client's Service answers after the flood",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        PASS,
        "client",
        Some(reason::ALLOW_TRACKED),
    );
}

/// A reply whose record is gone cannot be checked against the backend: dropped (fail
/// closed). The record of an answered connection lives with the answered ones; here it
/// is deleted (as an eviction would), and the next answer is dropped.
#[test]
fn root_attack3_service_reply_without_a_record_is_dropped() {
    let (mut lab, ifs) = lab3(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    service_exchange(&mut lab, &ifs, 5000);
    let key = ServiceFlowKey {
        client: addr_of(v4a(CLIENT4)),
        client_port: 5000,
        proto: UDP,
        _pad: 0,
    };
    let maps = lab.pr.maps_mut();
    assert!(
        maps.service_flows_new.get(&key, 0).is_err(),
        "answered: no longer with the unanswered records"
    );
    maps.service_flows
        .remove(&key)
        .expect("the answered connection's record");
    lab.expect(
        "the next answer, its record gone",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, UDP, &udp(53, 5000)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

/// A record holds four Services: a fifth connection from the same port while the other
/// four are open cannot be checked, so it does not open (counted as untrackable).
#[test]
fn root_attack3_a_fifth_service_on_one_port_is_untrackable() {
    let (mut lab, ifs) = lab3(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    for i in 0..4u8 {
        let svc = [10, 96, 1, i];
        lab.state.services.insert(
            ObjectRef::new("default", format!("svc-{i}")),
            ServiceInfo {
                ips: vec![v4a(svc)],
                ports: vec![(Protocol::Udp, 53)],
            },
        );
    }
    lab.state.services.insert(
        ObjectRef::new("default", "svc-4"),
        ServiceInfo {
            ips: vec![v4a([10, 96, 1, 4])],
            ports: vec![(Protocol::Udp, 53)],
        },
    );
    lab.apply();
    for i in 0..4u8 {
        lab.expect(
            "one of four Services",
            Hook::FromPod,
            ifs.c,
            &v4(CLIENT4, [10, 96, 1, i], UDP, &udp(5000, 53)),
            PASS,
            "client",
            Some(reason::PASS_SERVICE),
        );
    }
    lab.expect(
        "a fifth",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, [10, 96, 1, 4], UDP, &udp(5000, 53)),
        DROP,
        "client",
        Some(reason::DROP_UNTRACKABLE),
    );
    lab.expect(
        "another port may",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, [10, 96, 1, 4], UDP, &udp(5001, 53)),
        PASS,
        "client",
        Some(reason::PASS_SERVICE),
    );
}

/// The agent's sweep deletes the records of finished connections only: a record whose
/// Service connection still has a conntrack entry stays, and goes once that entry has
/// expired and been swept.
#[test]
fn root_attack3_records_of_finished_connections_are_swept() {
    let (mut lab, ifs) = lab3(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-ingress", CLIENT_INGRESS_NONE),
    ]);
    service_exchange(&mut lab, &ifs, 5000);
    let key = ServiceFlowKey {
        client: addr_of(v4a(CLIENT4)),
        client_port: 5000,
        proto: UDP,
        _pad: 0,
    };
    let maps = lab.pr.maps_mut();
    assert_eq!(maps.sweep_service_flows().expect("sweep"), 0, "open: kept");
    assert!(maps.service_flows.get(&key, 0).is_ok());
    // An hour later every UDP entry has expired; the conntrack sweep removes them.
    let later = netpol_agent::datapath::monotonic_ns() + 3600 * 1_000_000_000;
    maps.sweep_conntrack(later).expect("conntrack sweep");
    assert_eq!(
        maps.sweep_service_flows().expect("sweep"),
        1,
        "finished: deleted"
    );
    assert!(maps.service_flows.get(&key, 0).is_err());
}
