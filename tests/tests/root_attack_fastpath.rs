//! Attacks on the established path (`fast.rs`) and IFACE_SLOTS lookups, from an attack
//! review of commit 1b2072b. **Needs root.**
//!
//! Tests named `root_fastpath_finding_*` are that review's findings: they failed on
//! 1b2072b, whose `tc_index` mark let `uplink_egress` skip packets `from_pod` had passed
//! before translation (the mark is gone since 91a65f9). The others pin the established
//! path to the full path's decision for the same packet and map state.
//!
//! The BPF_PROG_TEST_RUN tests run in a network namespace of the test thread
//! (`lab::netns`). The real-packet tests add two named namespaces (a pod and a "remote"
//! host behind the node's uplink veth), deleted on drop; every packet stays inside them.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use netpol_common::{CtEntry, CtKey, ct_flag};
use netpol_tests::attach::{PodNetns, in_netns};
use netpol_tests::lab::*;

// =====================================================================================
// The mark: a final pass at the pod's veth is trusted by the uplink, but it was decided on
// the address before translation.
// =====================================================================================

/// An address kube-proxy translates that is neither a ClusterIP the agent knows
/// (`SERVICES`) nor an address of the node: a Service's externalIP (or a LoadBalancer
/// ingress IP, which kube-proxy also translates for in-cluster clients).
const EXT4: [u8; 4] = [203, 0, 113, 10];
/// A ClusterIP kube-proxy already translates but the agent has not learnt yet (a new
/// Service: kube-proxy and netpol watch the API independently).
const NEW_SVC4: [u8; 4] = [10, 96, 0, 50];
/// The remote backend the translation picks (another node's pod, behind the uplink).
const BACKEND: ([u8; 4], u16) = (Y4, 40000);

/// The client may reach everything but the cluster's 10.0.0.0/8 (the tutorials' "deny
/// internal egress, allow the internet").
const CLIENT_EGRESS_NOT_INTERNAL: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}]}"#;
/// The client may reach everything but the pod networks (10.1.0.0/16 here, 10.2.0.0/16
/// and 10.3.0.0/16 on other nodes): Service ranges and the internet stay open.
const CLIENT_EGRESS_NOT_PODS: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16"]}}]}]}"#;
const CLIENT_EGRESS_ALL: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{}]}"#;

struct Rig {
    lab: Lab,
    pod: PodNetns,
    _remote: PodNetns,
    listener: UdpSocket,
}

/// The node is the test thread's namespace: veth v0 to the pod (10.1.0.2, the lab's
/// client) and uplink veth up0 (172.18.0.3) to a remote namespace (172.18.0.2) that holds
/// the backend 10.2.0.5 and listens on UDP 40000. The node forwards, and translates
/// (nftables, like kube-proxy's KUBE-SERVICES, no masquerade for pod sources) the
/// externalIP 203.0.113.10:8080, the new ClusterIP 10.96.0.50:53 and the known ClusterIP
/// 10.96.0.10:53 to the backend. netpol is attached to v0 (pod) and up0 (uplink).
fn rig(tag: &str, policy: &str) -> Rig {
    let ifs = netns(&["v0", "up0"]);
    let pid = std::process::id();
    let pod = PodNetns(format!("np-fpp{tag}-{pid}"));
    let remote = PodNetns(format!("np-fpr{tag}-{pid}"));
    sh(&["ip", "netns", "add", &pod.0], None);
    sh(&["ip", "netns", "add", &remote.0], None);
    sh(&["ip", "link", "set", "v0p", "netns", &pod.0], None);
    sh(&["ip", "link", "set", "up0p", "netns", &remote.0], None);
    for args in [
        &["ip", "link", "set", "lo", "up"][..],
        &["ip", "addr", "add", "10.1.0.1/24", "dev", "v0"],
        &["ip", "link", "set", "v0", "up"],
        &["ip", "addr", "add", "172.18.0.3/24", "dev", "up0"],
        &["ip", "link", "set", "up0", "up"],
        &[
            "ip",
            "route",
            "add",
            "10.2.0.0/16",
            "via",
            "172.18.0.2",
            "dev",
            "up0",
        ],
        &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
    ] {
        sh(args, None);
    }
    let ns = |n: &str, args: &[&str]| {
        let mut all = vec!["ip", "-n", n];
        all.extend_from_slice(args);
        sh(&all, None);
    };
    for args in [
        &["addr", "add", "10.1.0.2/24", "dev", "v0p"][..],
        &["link", "set", "v0p", "up"],
        &["link", "set", "lo", "up"],
        &["route", "add", "default", "via", "10.1.0.1"],
    ] {
        ns(&pod.0, args);
    }
    for args in [
        &["addr", "add", "172.18.0.2/24", "dev", "up0p"][..],
        &["link", "set", "up0p", "up"],
        &["link", "set", "lo", "up"],
        &["addr", "add", "10.2.0.5/32", "dev", "lo"],
        &["route", "add", "10.1.0.0/16", "via", "172.18.0.3"],
    ] {
        ns(&remote.0, args);
    }
    sh(
        &["nft", "-f", "-"],
        Some(
            "table ip fpnat { chain pre { type nat hook prerouting priority -100; \
               ip daddr 203.0.113.10 udp dport 8080 dnat to 10.2.0.5:40000; \
               ip daddr 10.96.0.50 udp dport 53 dnat to 10.2.0.5:40000; \
               ip daddr 10.96.0.10 udp dport 53 dnat to 10.2.0.5:40000; }; }",
        ),
    );
    let listener = in_netns(&remote.0, || {
        let l = UdpSocket::bind(SocketAddr::from(BACKEND)).expect("listener");
        l.set_read_timeout(Some(Duration::from_millis(400)))
            .expect("timeout");
        l
    });
    let mut s = base();
    set_policy(&mut s, "client-egress", policy);
    let mut lab = Lab::new(s, &[("client", ifs[0])], &[v4a(NODE4), v4a(UPLINK4)]);
    lab.pr
        .maps_mut()
        .set_uplinks(&[ifs[1]].into())
        .expect("uplinks");
    lab.dp.attach_pod("v0").expect("attach pod");
    lab.dp.attach_uplink("up0").expect("attach uplink");
    Rig {
        lab,
        pod,
        _remote: remote,
        listener,
    }
}

impl Rig {
    /// Sends datagram `n` from the pod to `to`; whether the backend got it.
    fn reaches_backend(&self, to: ([u8; 4], u16), n: u8) -> bool {
        in_netns(&self.pod.0, || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind in pod");
            s.send_to(&[n], SocketAddr::from(to)).expect("send");
        });
        let mut buf = [0u8; 8];
        loop {
            match self.listener.recv_from(&mut buf) {
                Ok((1, _)) if buf[0] != n => continue,
                Ok(_) => return true,
                Err(_) => return false,
            }
        }
    }

    fn set_policy(&mut self, policy: &str) {
        set_policy(&mut self.lab.state, "client-egress", policy);
        self.lab.apply();
    }
}

/// The path works, and the uplink does decide (and drop) a denied backend when the pod's
/// veth did not mark the packet: a known ClusterIP passes the pod's veth as
/// `pass_service` (unmarked) and its translation to 10.2.0.5 (in 10.0.0.0/8) is dropped
/// at the uplink. Passes today: the control for the findings below.
#[test]
fn root_fastpath_uplink_still_decides_known_service_backend() {
    let mut r = rig("ctl", CLIENT_EGRESS_ALL);
    assert!(
        r.reaches_backend((EXT4, 8080), 1),
        "setup: the translated path does not work"
    );
    assert!(
        r.reaches_backend((SVC4, 53), 2),
        "setup: the known Service does not work"
    );
    r.set_policy(CLIENT_EGRESS_NOT_INTERNAL);
    assert!(
        !r.reaches_backend(BACKEND, 3),
        "control: the backend itself is denied at the pod's veth"
    );
    let id = r.lab.id("client");
    let before = r.lab.counters(id)[reason::DROP_EGRESS];
    assert!(
        !r.reaches_backend((SVC4, 53), 4),
        "a known Service translated to a denied backend passed the uplink"
    );
    assert!(
        r.lab.counters(id)[reason::DROP_EGRESS] > before,
        "the uplink did not count the drop"
    );
}

/// Finding (fixed). Egress policy must be decided on the backend actually chosen, after
/// translation: the uplink judges every packet of a local pod that leaves the node
/// untracked under its translated tuple, so a pod whose egress denies 10.0.0.0/8 cannot
/// reach 10.2.0.5 through an externalIP (or a LoadBalancer IP) that kube-proxy translates
/// to it. `from_pod` passes 10.1.0.2 -> 203.0.113.10:8080 as `allow_policy` (the
/// pre-translation address is allowed, and it is neither a ClusterIP in SERVICES nor a
/// node address); 1b2072b marked that final in `tc_index` and `uplink_egress` returned
/// before looking at the translated packet. BPF_PROG_TEST_RUN shows that the uplink's own
/// decision on the translated packet is DROP (drop_egress).
#[test]
fn root_fastpath_finding_external_ip_translated_to_denied_backend_skips_uplink() {
    let mut r = rig("ext", CLIENT_EGRESS_NOT_INTERNAL);
    assert!(
        !r.reaches_backend(BACKEND, 1),
        "control: the backend itself is denied at the pod's veth"
    );
    let got = r.reaches_backend((EXT4, 8080), 2);
    // What the uplink decides on the translated datagram when it does look at it.
    let c = r.lab.veths[&ObjectRef::new("default", "client")];
    let up = netpol_agent::datapath::ifindex("up0").expect("up0");
    let uplink_says = r.lab.run_from(
        Hook::Uplink,
        up,
        c,
        &v4(CLIENT4, BACKEND.0, UDP, &udp(41999, BACKEND.1)),
    );
    assert_eq!(
        uplink_says, DROP,
        "the uplink's decision on the translated packet"
    );
    assert!(
        !got,
        "egress to 10.2.0.5 (denied) passed through externalIP 203.0.113.10: from_pod marked \
         the uplink did not judge the translated packet"
    );
}

/// Finding, same mechanism: a ClusterIP kube-proxy translates before the agent has
/// programmed it (both watch the API; kube-proxy is often first). The uplink judges the
/// backend; under 1b2072b the pod's veth marked the pass final and the connection reached
/// the denied backend, and stayed tracked (non-Service entry) after the agent learnt the
/// Service.
#[test]
fn root_fastpath_finding_clusterip_not_yet_known_translated_to_denied_backend_skips_uplink() {
    let r = rig("new", CLIENT_EGRESS_NOT_PODS);
    assert!(
        !r.reaches_backend(BACKEND, 1),
        "control: the backend itself is denied at the pod's veth"
    );
    assert!(
        !r.reaches_backend((NEW_SVC4, 53), 2),
        "egress to 10.2.0.5 (denied) passed through a ClusterIP the agent did not know yet: \
         the uplink did not judge the translated packet"
    );
}

// =====================================================================================
// The established path against the full path (BPF_PROG_TEST_RUN).
// =====================================================================================

struct Ifs {
    c: u32,
    s: u32,
}

fn lab_fp(policies: &[(&str, &str)]) -> (Lab, Ifs) {
    let i = netns(&["fc", "fs", "fo"]);
    let ifs = Ifs { c: i[0], s: i[1] };
    let mut st = base();
    for (name, spec) in policies {
        set_policy(&mut st, name, spec);
    }
    let lab = Lab::new(
        st,
        &[("client", i[0]), ("server", i[1]), ("other", i[2])],
        &[v4a(NODE4), v4a(UPLINK4)],
    );
    (lab, ifs)
}

const ALL_INGRESS_OPEN: &str =
    r#"{"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]}"#;

fn ack(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    v4(src, dst, TCP, &tcp(sport, dport, ACK | PSH))
}

/// A replied connection passes both ways as allow_tracked; once the client's egress is
/// revoked, its next segment (sent) and the next reply (received) are dropped, as the
/// full path decides.
#[test]
fn root_fastpath_revoked_egress_drops_both_directions() {
    let (mut lab, i) = lab_fp(&[("client-egress", CLIENT_EGRESS_Y)]);
    lab.open_tcp_80(i.c, Y4, 41000);
    lab.open_tcp_80(i.c, Y4, 41001);
    for (what, hook, p) in [
        ("client data", Hook::FromPod, ack(CLIENT4, Y4, 41000, 80)),
        ("reply data", Hook::ToPod, ack(Y4, CLIENT4, 80, 41000)),
    ] {
        lab.expect(
            what,
            hook,
            i.c,
            &p,
            PASS,
            "client",
            Some(reason::ALLOW_TRACKED),
        );
    }
    set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_Y_REVOKED);
    lab.apply();
    lab.expect(
        "client data after revocation",
        Hook::FromPod,
        i.c,
        &ack(CLIENT4, Y4, 41000, 80),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    lab.expect(
        "reply after revocation",
        Hook::ToPod,
        i.c,
        &ack(Y4, CLIENT4, 80, 41001),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

/// The same in IPv6 (tuple_v6, four-word key order).
#[test]
fn root_fastpath_v6_revoked_egress_drops() {
    let (mut lab, i) = lab_fp(&[("client-egress", CLIENT_EGRESS_Y)]);
    let y6 = ip6("fd00:2::5");
    let out = v6(client6(), y6, UDP, 64, &udp(5353, 53));
    let back = v6(y6, client6(), UDP, 64, &udp(53, 5353));
    lab.expect(
        "query",
        Hook::FromPod,
        i.c,
        &out,
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
    lab.expect(
        "answer",
        Hook::ToPod,
        i.c,
        &back,
        PASS,
        "client",
        Some(reason::ALLOW_TRACKED),
    );
    lab.expect(
        "query 2",
        Hook::FromPod,
        i.c,
        &out,
        PASS,
        "client",
        Some(reason::ALLOW_TRACKED),
    );
    set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_Y_REVOKED);
    lab.apply();
    lab.expect(
        "answer after revocation",
        Hook::ToPod,
        i.c,
        &back,
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

/// Local to local, both pods under one shared ingress rule set: if the established path
/// mixed up which side the pod is (opener / acceptor), it would compare the acceptor's
/// ingress set with the client's ingress set (equal) and pass a revoked opener. Client
/// 10.1.0.2 opens to server 10.1.0.3 (opener is side a), and server opens to client
/// (opener is side b).
#[test]
fn root_fastpath_opener_side_is_checked_in_both_key_orders() {
    for (opener, o4, acceptor, a4) in [
        ("client", CLIENT4, "server", SERVER4),
        ("server", SERVER4, "client", CLIENT4),
    ] {
        let egress = format!(
            r#"{{"podSelector": {{"matchLabels": {{"app": "{opener}"}}}}, "policyTypes": ["Egress"],
                "egress": [{{"to": [{{"podSelector": {{"matchLabels": {{"app": "{acceptor}"}}}}}}]}}]}}"#
        );
        let (mut lab, i) = lab_fp(&[("all-in", ALL_INGRESS_OPEN), ("p-out", &egress)]);
        let (oi, ai) = if opener == "client" {
            (i.c, i.s)
        } else {
            (i.s, i.c)
        };
        let syn = v4(o4, a4, TCP, &tcp(42000, 8080, SYN));
        let synack = v4(a4, o4, TCP, &tcp(8080, 42000, SYN | ACK));
        lab.verdict("SYN out", Hook::FromPod, oi, &syn, PASS);
        lab.verdict("SYN in", Hook::ToPod, ai, &syn, PASS);
        lab.verdict("SYN-ACK out", Hook::FromPod, ai, &synack, PASS);
        lab.verdict("SYN-ACK in", Hook::ToPod, oi, &synack, PASS);
        let data = ack(o4, a4, 42000, 8080);
        lab.expect(
            "data",
            Hook::FromPod,
            oi,
            &data,
            PASS,
            opener,
            Some(reason::ALLOW_TRACKED),
        );
        let none = format!(
            r#"{{"podSelector": {{"matchLabels": {{"app": "{opener}"}}}}, "policyTypes": ["Egress"]}}"#
        );
        set_policy(&mut lab.state, "p-out", &none);
        lab.apply();
        lab.expect(
            &format!("{opener}'s data after its egress was revoked"),
            Hook::FromPod,
            oi,
            &data,
            DROP,
            opener,
            Some(reason::DROP_EGRESS),
        );
    }
}

/// Another pod's tuple: the server's veth sends a segment of the client's replied
/// connection with the client's address (spoofed), and the client's connection's reply
/// reaches the isolated server's veth (misdelivered). Neither rides the entry.
#[test]
fn root_fastpath_other_pods_tuple_is_not_taken() {
    let (mut lab, i) = lab_fp(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("server-in", SERVER_INGRESS_NONE),
    ]);
    lab.open_tcp_80(i.c, Y4, 41000);
    lab.expect(
        "client's segment from the server's veth",
        Hook::FromPod,
        i.s,
        &ack(CLIENT4, Y4, 41000, 80),
        DROP,
        "server",
        Some(reason::DROP_SPOOFED),
    );
    lab.expect(
        "client's reply at the server's veth",
        Hook::ToPod,
        i.s,
        &ack(Y4, CLIENT4, 80, 41000),
        DROP,
        "server",
        Some(reason::DROP_MISDELIVERED),
    );
    lab.expect(
        "the client's connection goes on",
        Hook::ToPod,
        i.c,
        &ack(Y4, CLIENT4, 80, 41000),
        PASS,
        "client",
        Some(reason::ALLOW_TRACKED),
    );
}

/// IPv4-mapped / -compatible IPv6 packets whose key equals the v4 connection's key
/// (CtKey stores v4 as ::ffff:a.b.c.d): dropped as drop_address, never tracked.
#[test]
fn root_fastpath_v4_mapped_v6_does_not_ride_v4_entry() {
    let (mut lab, i) = lab_fp(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-in", CLIENT_INGRESS_NONE),
    ]);
    lab.open_tcp_80(i.c, Y4, 41000);
    let m = |o: [u8; 4]| Ipv4Addr::from(o).to_ipv6_mapped();
    let c = |o: [u8; 4]| Ipv4Addr::from(o).to_ipv6_compatible();
    let seg = tcp(80, 41000, ACK | PSH);
    let seg_out = tcp(41000, 80, ACK | PSH);
    for (what, src, dst) in [
        ("mapped", m(Y4), m(CLIENT4)),
        ("compatible", c(Y4), c(CLIENT4)),
    ] {
        lab.expect(
            what,
            Hook::ToPod,
            i.c,
            &v6(src, dst, TCP, 64, &seg),
            DROP,
            "client",
            Some(reason::DROP_ADDRESS),
        );
    }
    lab.expect(
        "mapped, sent",
        Hook::FromPod,
        i.c,
        &v6(m(CLIENT4), m(Y4), TCP, 64, &seg_out),
        DROP,
        "client",
        Some(reason::DROP_ADDRESS),
    );
}

/// Cut-short transport headers, in-frame VLAN tags, a SYN from the acceptor's side on a
/// replied tuple: the full path's verdicts.
#[test]
fn root_fastpath_odd_packets_on_replied_tuple() {
    let (mut lab, i) = lab_fp(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-in", CLIENT_INGRESS_NONE),
    ]);
    lab.open_tcp_80(i.c, Y4, 41000);
    let mut short = ack(Y4, CLIENT4, 80, 41000);
    short.truncate(14 + 20 + 13); // no flags byte
    lab.expect(
        "13-byte TCP header",
        Hook::ToPod,
        i.c,
        &short,
        DROP,
        "client",
        Some(reason::DROP_MALFORMED),
    );
    // 802.1Q tag in the frame, then the replied tuple.
    let plain = ack(Y4, CLIENT4, 80, 41000);
    let mut tagged = plain[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    tagged.extend_from_slice(&plain[12..]);
    lab.expect(
        "VLAN-tagged",
        Hook::ToPod,
        i.c,
        &tagged,
        DROP,
        "client",
        Some(reason::DROP_FRAME),
    );
    lab.expect(
        "SYN from the acceptor's side",
        Hook::ToPod,
        i.c,
        &v4(Y4, CLIENT4, TCP, &tcp(80, 41000, SYN)),
        DROP,
        "client",
        Some(reason::DROP_INGRESS),
    );
    // IPv4 options: the full path, still the connection's.
    let mut opt = ack(Y4, CLIENT4, 80, 41000);
    opt[14] = 0x46;
    opt.splice(14 + 20..14 + 20, [1u8, 1, 1, 0]);
    lab.expect(
        "IPv4 options",
        Hook::ToPod,
        i.c,
        &opt,
        PASS,
        "client",
        Some(reason::ALLOW_TRACKED),
    );
}

/// Entry states the established path must leave to the full path.
#[test]
fn root_fastpath_entry_states() {
    let (mut lab, i) = lab_fp(&[
        ("client-egress", CLIENT_EGRESS_Y),
        ("client-in", CLIENT_INGRESS_NONE),
    ]);
    // A replied UDP exchange, then its entry idle past the UDP lifetime (180 s).
    let q = v4(CLIENT4, Y4, UDP, &udp(5300, 53));
    let a = v4(Y4, CLIENT4, UDP, &udp(53, 5300));
    lab.expect(
        "query",
        Hook::FromPod,
        i.c,
        &q,
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
    lab.expect(
        "answer",
        Hook::ToPod,
        i.c,
        &a,
        PASS,
        "client",
        Some(reason::ALLOW_TRACKED),
    );
    let (key, _) = CtKey::of(
        &netpol_common::Addr::from_v4(CLIENT4),
        &netpol_common::Addr::from_v4(Y4),
        5300,
        53,
        UDP,
    );
    let ct = &mut lab.pr.maps_mut().conntrack;
    let mut e: CtEntry = ct.get(&key, 0).expect("replied entry");
    assert_ne!(e.flags & ct_flag::REPLIED, 0);
    e.last_seen_ns = monotonic_ns().saturating_sub(200 * 1_000_000_000);
    ct.insert(key, e, 0).expect("age");
    lab.expect(
        "answer after expiry",
        Hook::ToPod,
        i.c,
        &a,
        DROP,
        "client",
        Some(reason::DROP_INGRESS),
    );

    // An entry in the replied map without REPLIED, opener Y (remote), acceptor the
    // client under an old rule set: the client's ingress (nothing) decides again.
    let (key, y_is_a) = CtKey::of(
        &netpol_common::Addr::from_v4(Y4),
        &netpol_common::Addr::from_v4(CLIENT4),
        6000,
        22,
        TCP,
    );
    let forged = CtEntry {
        last_seen_ns: monotonic_ns(),
        opener_set: netpol_common::CT_UNDECIDED,
        acceptor_set: 0x7fff_fff0,
        opener_rule: 0,
        acceptor_rule: 0,
        flags: ct_flag::REPLIED | if y_is_a { 0 } else { ct_flag::OPENER_B },
        _pad: [0; 7],
    };
    lab.pr
        .maps_mut()
        .conntrack
        .insert(key, forged, 0)
        .expect("insert");
    lab.expect(
        "segment under an old acceptor set",
        Hook::ToPod,
        i.c,
        &ack(Y4, CLIENT4, 6000, 22),
        DROP,
        "client",
        Some(reason::DROP_INGRESS),
    );
}

/// A local client's connection through a Service to the local server: its entry
/// (client -> server, translated) is DEFERRED_EGRESS. After the client's egress is
/// revoked, the next segment at the server's veth is dropped for the client (the full
/// path's judge_deferred_opener), not passed by the established path.
#[test]
fn root_fastpath_deferred_opener_revoked_at_receiver() {
    let (mut lab, i) = lab_fp(&[("client-egress", CLIENT_EGRESS_SERVER)]);
    lab.expect(
        "SYN to the Service",
        Hook::FromPod,
        i.c,
        &v4(CLIENT4, SVC4, TCP, &tcp(43000, 80, SYN)),
        PASS,
        "client",
        Some(reason::PASS_SERVICE),
    );
    lab.verdict(
        "SYN translated",
        Hook::ToPod,
        i.s,
        &v4(CLIENT4, SERVER4, TCP, &tcp(43000, 8080, SYN)),
        PASS,
    );
    lab.verdict(
        "SYN-ACK",
        Hook::FromPod,
        i.s,
        &v4(SERVER4, CLIENT4, TCP, &tcp(8080, 43000, SYN | ACK)),
        PASS,
    );
    let seg = ack(CLIENT4, SERVER4, 43000, 8080);
    lab.verdict("data translated", Hook::ToPod, i.s, &seg, PASS);
    set_policy(&mut lab.state, "client-egress", CLIENT_EGRESS_NONE);
    lab.apply();
    lab.expect(
        "data translated after the client's egress was revoked",
        Hook::ToPod,
        i.s,
        &seg,
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

/// The datapath's clock (a clock-source reading cached per CPU and tick) is
/// CLOCK_MONOTONIC to within a tick: the opening stamps its entry with it, and the
/// established path, finding the entry idle for more than a second, stamps it again.
#[test]
fn root_fastpath_clock_stamps_entries_with_monotonic_time() {
    let (mut lab, i) = lab_fp(&[("client-egress", CLIENT_EGRESS_Y)]);
    // A tick is at most 10 ms (HZ >= 100); the cached coarse clock lags by up to two.
    const TICKS: u64 = 50_000_000;
    let before = monotonic_ns();
    lab.open_tcp_80(i.c, Y4, 41500);
    let after = monotonic_ns();
    let (key, _) = CtKey::of(
        &netpol_common::Addr::from_v4(CLIENT4),
        &netpol_common::Addr::from_v4(Y4),
        41500,
        80,
        TCP,
    );
    let stamp = |lab: &mut Lab| -> CtEntry {
        lab.pr
            .maps_mut()
            .conntrack
            .get(&key, 0)
            .expect("replied entry")
    };
    let opened = stamp(&mut lab).last_seen_ns;
    assert!(
        opened + TICKS >= before && opened <= after,
        "opening stamped {opened}, monotonic {before}..{after}"
    );

    let mut e = stamp(&mut lab);
    e.last_seen_ns = monotonic_ns().saturating_sub(5_000_000_000);
    lab.pr
        .maps_mut()
        .conntrack
        .insert(key, e, 0)
        .expect("age the entry");
    // Longer than TICKS: a reading cached past its tick would show here.
    std::thread::sleep(Duration::from_millis(200));
    let before = monotonic_ns();
    lab.expect(
        "segment after 5 s idle",
        Hook::FromPod,
        i.c,
        &ack(CLIENT4, Y4, 41500, 80),
        PASS,
        "client",
        Some(reason::ALLOW_TRACKED),
    );
    let after = monotonic_ns();
    let seen = stamp(&mut lab).last_seen_ns;
    assert!(
        seen + TICKS >= before && seen <= after,
        "established path stamped {seen}, monotonic {before}..{after}"
    );
}
