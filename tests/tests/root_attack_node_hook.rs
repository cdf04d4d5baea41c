//! Attacks on `to_node` (the cgroup_skb ingress program on the node's cgroup v2) and on
//! what it teaches the Service records, run with BPF_PROG_TEST_RUN. **Needs root.**
//!
//! Tests named `*_finding_*` assert what the semantics require and failed on the datapath
//! of d739315; the others are guards for corners that came out right.
//! (`..._forged_local_source_from_the_uplink_...` passes since e102fa8, which made
//! `to_node` check where the packet came in; the others but one pass since the commit
//! that added this file; the open one is ignored with its reason.)
//!
//! Every test runs in a network namespace of its own thread (unshare(CLONE_NEWNET)) with
//! veth pairs, which goes away with the thread. Nothing is sent anywhere.

use netpol_common::{Addr, CtKey, ct_flag, events as ev};
use netpol_tests::cnp_fixtures::{X4, add_cnp, cnp_state, pods_with_app};
use netpol_tests::lab::*;
use serde_json::json;

/// The `kubernetes` Service of `base()`: 10.96.0.1, TCP 443.
const K8S4: [u8; 4] = [10, 96, 0, 1];

struct Ifs {
    c: u32,
    up: u32,
}

fn lab_events(st: ClusterState, events: EventOptions) -> (Lab, Ifs) {
    let i = netns(&["vc", "vs", "upl"]);
    let ifs = Ifs { c: i[0], up: i[2] };
    let mut lab = Lab::with_events(
        st,
        &[("client", i[0]), ("server", i[1])],
        &[v4a(NODE4), IpAddr::V6(ip6("fd00:1::1")), v4a(UPLINK4)],
        AttachMode::Auto,
        events,
    );
    lab.pr
        .maps_mut()
        .set_uplinks(&[ifs.up].into())
        .expect("uplinks");
    (lab, ifs)
}

fn lab_with(st: ClusterState) -> (Lab, Ifs) {
    lab_events(st, EventOptions::default())
}

/// An Admin policy over the client: accept every node (the kubelet, the API server), and
/// nothing else said. Its egress set is ordered; everything else falls through to allow.
fn accept_nodes(st: &mut ClusterState) {
    add_cnp(
        st,
        "client-nodes",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"name": "nodes", "action": "Accept", "to": [{"nodes": {}}]}]}),
    );
}

/// An Admin policy over the client: deny the pods `app: x` (X4, on node n2).
fn deny_x(st: &mut ClusterState) {
    add_cnp(
        st,
        "client-no-x",
        "Admin",
        5,
        json!({"subject": pods_with_app("client"),
               "egress": [{"name": "no-x", "action": "Deny", "to": [
                   {"pods": {"namespaceSelector": {},
                             "podSelector": {"matchLabels": {"app": "x"}}}}]}]}),
    );
}

/// The client opens `svc`:80 from `sport`, kube-proxy sends it to X4:80 on node n2 (the
/// uplink decides it, allowed), and X4 answers through the Service.
fn open_service_to_x(lab: &mut Lab, ifs: &Ifs, sport: u16) {
    lab.verdict(
        "SYN to the Service 10.96.0.10:80 (decided after translation)",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, TCP, &tcp(sport, 80, SYN)),
        PASS,
    );
    let v = lab.run_from(
        Hook::Uplink,
        ifs.up,
        ifs.c,
        &v4(CLIENT4, X4, TCP, &tcp(sport, 80, SYN)),
    );
    assert_eq!(v, PASS, "translated to X4:80, allowed at the uplink");
    lab.verdict(
        "X4's SYN-ACK through the Service",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, TCP, &tcp(80, sport, SYN | ACK)),
        PASS,
    );
    lab.verdict(
        "the client's ACK",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, SVC4, TCP, &tcp(sport, 80, ACK)),
        PASS,
    );
}

// ---------------------------------------------------------------------------------------
// A direct packet to the node taken for a translated one: the Service record rewritten
// ---------------------------------------------------------------------------------------

/// FINDING. The client (ordered egress: Admin Accept of nodes) holds a connection from
/// port 43000 to the Service 10.96.0.10:80, which kube-proxy sent to X4 (remote). Then an
/// Admin Deny of `app: x` is added: the connection is revoked, and X4's data through the
/// Service must be dropped from now on (a policy change applies at the next packet).
///
/// The client sends, from the same port 43000 (a raw socket, or SO_REUSEADDR), one
/// direct SYN|FIN to its node's port 10250 (any node socket its rules accept). `from_pod`
/// allows it (Accept nodes) and tracks it, with FIN_OPENER set by the opening itself.
/// At the kubelet's listening socket (`tcp_filter` runs before the TCP state machine
/// discards SYN|FIN), `to_node` finds that entry "finished" for an opening packet
/// (`usable` forgets it), so it takes the *direct* packet for one translated on its way,
/// and `service::learn_backend(.., translated = true)` replaces the backend of the
/// record of client port 43000 (one Service) with NODE4:10250 under the current set.
/// X4's next data through the Service then meets `still_allowed` with a record that
/// names only the node, under the current set: it passes, though the client may no
/// longer reach X4.
///
/// Expected: X4's data dropped. Datapath: passed.
/// Fix: in `delivered_to_node`, a packet whose (unusable or fresh) entry was made at the
/// pod's veth for this very tuple is not a translated one: learn nothing (or learn with
/// `translated = false`, adding up); more robustly, only learn `translated = true` when
/// the record's Service differs from the packet's destination and no direct entry of
/// this tuple existed (e.g. look the entry up before `usable` forgets it).
#[test]
fn root_attack_node_hook_finding_direct_syn_fin_to_the_node_rewrites_a_service_record() {
    let mut st = cnp_state();
    accept_nodes(&mut st);
    let (mut lab, ifs) = lab_with(st);
    open_service_to_x(&mut lab, &ifs, 43000);

    deny_x(&mut lab.state);
    lab.apply();

    let syn_fin = v4(CLIENT4, NODE4, TCP, &tcp(43000, 10250, SYN | FIN));
    lab.verdict(
        "a direct SYN|FIN to the node's port 10250 (Accept nodes)",
        Hook::FromPod,
        ifs.c,
        &syn_fin,
        PASS,
    );
    lab.verdict(
        "the same packet at the kubelet's socket",
        Hook::ToNode,
        ifs.c,
        &syn_fin,
        PASS,
    );
    lab.verdict(
        "X4's data through the Service after the Deny of app: x must not reach the client",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, TCP, &tcp(80, 43000, PSH | ACK)),
        DROP,
    );
}

/// Guard (the control of the finding above): a plain direct SYN to the node from the
/// same port is found on its entry at `to_node`; the node's backend adds up to X4 in the
/// record, and X4's data after the Deny is dropped.
#[test]
fn root_attack_node_hook_a_plain_direct_syn_to_the_node_adds_up_in_the_record() {
    let mut st = cnp_state();
    accept_nodes(&mut st);
    let (mut lab, ifs) = lab_with(st);
    open_service_to_x(&mut lab, &ifs, 43010);
    deny_x(&mut lab.state);
    lab.apply();
    let syn = v4(CLIENT4, NODE4, TCP, &tcp(43010, 10250, SYN));
    lab.verdict("direct SYN at the veth", Hook::FromPod, ifs.c, &syn, PASS);
    lab.verdict("direct SYN at the node", Hook::ToNode, ifs.c, &syn, PASS);
    lab.verdict(
        "X4's data after the Deny",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, TCP, &tcp(80, 43010, PSH | ACK)),
        DROP,
    );
}

// ---------------------------------------------------------------------------------------
// The record's node backend, and the own-node exemption of NetworkPolicy
// ---------------------------------------------------------------------------------------

/// FINDING. The client is isolated for egress by a NetworkPolicy that allows nothing,
/// and an Admin policy accepts nodes: its egress set is ordered. It connects to the
/// `kubernetes` Service, whose backend is its own node (NODE4:6443): `to_node` accepts
/// it and teaches the record the backend under the ordered set. Then the
/// ClusterNetworkPolicy is deleted: NetworkPolicy alone decides, and NetworkPolicy always
/// lets a pod reach its own node (the connection goes on: `to_node` passes the client's
/// packets by the exemption).
///
/// The API server's next data, from the Service address, meets `still_allowed`: the
/// record's set differs from the client's, so each backend is checked with
/// `verdict::allowed` on the unordered set, which has no own-node exemption (the hooks
/// apply it, and `revalidate` adds it for tracked entries since the fix of
/// `root_cnp_attack_finding_node_connection_cut_when_the_cluster_policy_goes`; the
/// record's check does not): dropped, and the Service entry forgotten.
///
/// Expected: passes (own node, NetworkPolicy alone). Datapath: dropped.
/// Fix: in `service::still_allowed`, a backend that is a node address passes for an
/// unordered set (`set & RULESET_ORDERED == 0 && is_node(addr)`), as in `revalidate`.
#[test]
fn root_attack_node_hook_finding_node_backend_reply_dropped_when_the_cluster_policy_goes() {
    let mut st = cnp_state();
    set_policy(&mut st, "client-egress-none", CLIENT_EGRESS_NONE);
    accept_nodes(&mut st);
    let (mut lab, ifs) = lab_with(st);
    lab.verdict(
        "SYN to the kubernetes Service",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, K8S4, TCP, &tcp(43100, 443, SYN)),
        PASS,
    );
    lab.verdict(
        "translated to NODE4:6443, at the API server's socket: Accept nodes",
        Hook::ToNode,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(43100, 6443, SYN)),
        PASS,
    );
    lab.verdict(
        "the API server's SYN-ACK through the Service",
        Hook::ToPod,
        ifs.c,
        &v4(K8S4, CLIENT4, TCP, &tcp(443, 43100, SYN | ACK)),
        PASS,
    );
    lab.state.cluster_policies.clear();
    lab.apply();
    lab.verdict(
        "the client's ACK at its veth (NetworkPolicy alone now)",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, K8S4, TCP, &tcp(43100, 443, ACK)),
        PASS,
    );
    lab.verdict(
        "the same at the node's socket: the own-node exemption",
        Hook::ToNode,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(43100, 6443, ACK)),
        PASS,
    );
    lab.verdict(
        "the API server's data through the Service (own node, NetworkPolicy alone)",
        Hook::ToPod,
        ifs.c,
        &v4(K8S4, CLIENT4, TCP, &tcp(443, 43100, PSH | ACK)),
        PASS,
    );
}

/// FINDING (same root as the one above; the seeding predates `to_node`, but its record
/// check is what `to_node`'s node backends now meet every time). The client, not
/// isolated, holds a connection to the `kubernetes` Service whose backend is its own
/// node. A NetworkPolicy then isolates its egress (allowing nothing): the agent seeds the
/// connection from the kernel's table, with a Service record naming the backend
/// NODE4:6443, undecided. NetworkPolicy lets a pod reach its own node: the connection
/// must go on. The API server's next data is checked by `still_allowed` with
/// `allowed()` on the unordered set, without the own-node exemption: dropped.
#[test]
fn root_attack_node_hook_finding_seeded_node_backend_reply_dropped_by_networkpolicy_isolation() {
    let st = cnp_state();
    let (mut lab, ifs) = lab_with(st);
    set_policy(&mut lab.state, "client-egress-none", CLIENT_EGRESS_NONE);
    let seeded = lab.apply_as_agent(&[flow(
        TCP,
        (v4a(CLIENT4), 43200, v4a(K8S4), 443),
        (v4a(NODE4), 6443, v4a(CLIENT4), 43200),
    )]);
    assert!(seeded >= 1, "the Service connection is seeded");
    lab.verdict(
        "the client's segment at its veth",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, K8S4, TCP, &tcp(43200, 443, ACK)),
        PASS,
    );
    lab.verdict(
        "at the node's socket (own-node exemption)",
        Hook::ToNode,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(43200, 6443, ACK)),
        PASS,
    );
    lab.verdict(
        "the API server's data through the Service",
        Hook::ToPod,
        ifs.c,
        &v4(K8S4, CLIENT4, TCP, &tcp(443, 43200, PSH | ACK)),
        PASS,
    );
}

// ---------------------------------------------------------------------------------------
// A forged local source arriving from outside the node
// ---------------------------------------------------------------------------------------

/// FINDING (fixed by e102fa8). The client (ordered egress: Admin Accept of nodes) holds a
/// connection from port 43300 to the Service 10.96.0.10:80, sent to X4 (another node); an
/// Admin Deny of `app: x` then revokes it, so X4's data through the Service must be dropped from now on.
/// Someone outside the node (X4's side of the wire, any host that can reach the node's
/// uplink with a forged source; rp_filter loose or off, as on many Kubernetes nodes, lets
/// the stack deliver it) sends one SYN with the *client's* address and port 43300 as its
/// source to the node's port 10250, where the kubelet listens. `to_pod` and the uplink
/// drop a local pod's source that came in through an uplink (`came_from`), and the design
/// drops and counts forged sources; `to_node` never looks at where the packet came in:
/// it judges it as the client's egress opening (accepted: a node), tracks it as a
/// connection the client opened, and, taking it for a translated one, rewrites the
/// client's Service record of port 43300 to the node's backend under the current set.
/// X4's next data through the Service then passes.
///
/// Expected: the forged SYN dropped (a local pod's source from an uplink), and X4's data
/// dropped. Datapath: both passed.
/// Fix: `delivered_to_node` reads `ingress_ifindex` (readable by cgroup_skb programs) and
/// applies `came_from(&sender, came_in)` as `to_pod` and the uplink do, before it tracks
/// or learns anything.
#[test]
fn root_attack_node_hook_finding_forged_local_source_from_the_uplink_rewrites_a_record() {
    let mut st = cnp_state();
    accept_nodes(&mut st);
    let (mut lab, ifs) = lab_with(st);
    open_service_to_x(&mut lab, &ifs, 43300);
    deny_x(&mut lab.state);
    lab.apply();
    let forged = v4(CLIENT4, NODE4, TCP, &tcp(43300, 10250, SYN));
    let v = lab.run_from(Hook::ToNode, ifs.c, ifs.up, &forged);
    let data = v4(SVC4, CLIENT4, TCP, &tcp(80, 43300, PSH | ACK));
    let answer = lab.run(Hook::ToPod, ifs.c, &data);
    assert_eq!(
        (show(v), show(answer)),
        ("DROP", "DROP"),
        "a SYN with the client's source that came in through the uplink, at the node's \
         socket; then X4's data through the Service after the Deny of app: x"
    );
}

/// Guard: the same SYN from the client's own veth (the real client) is its egress to
/// the node, accepted, and the node's answer is its reply.
#[test]
fn root_attack_node_hook_the_real_clients_syn_from_its_veth_is_accepted() {
    let mut st = cnp_state();
    accept_nodes(&mut st);
    let (mut lab, ifs) = lab_with(st);
    let syn = v4(CLIENT4, NODE4, TCP, &tcp(43310, 10250, SYN));
    lab.verdict("at the veth", Hook::FromPod, ifs.c, &syn, PASS);
    assert_eq!(lab.run_from(Hook::ToNode, ifs.c, ifs.c, &syn), PASS);
    lab.verdict(
        "the node's SYN-ACK",
        Hook::ToPod,
        ifs.c,
        &v4(NODE4, CLIENT4, TCP, &tcp(10250, 43310, SYN | ACK)),
        PASS,
    );
}

// ---------------------------------------------------------------------------------------
// A record restarted with no backend: "the node" by default
// ---------------------------------------------------------------------------------------

/// FINDING (the record's rule predates `to_node`; `to_node` now makes its premise
/// untrue for ordered sets, and the fix belongs with it). The client (ordered egress:
/// Admin Accept nodes) holds a connection to 10.96.0.10:80 sent to X4 (remote); an Admin
/// Deny of `app: x` revokes it. X4's next data is dropped at `to_pod`, which forgets the
/// Service entry. The client then sends one segment of that connection with TTL 1:
/// `from_pod` makes a new Service entry and, no other Service connection of that port
/// being open, *restarts* the record with no backend; the kernel translates the segment
/// to X4 and drops it in forwarding (TTL exceeded), so no uplink ever teaches the record
/// X4. `still_allowed` takes a record without a backend for "a backend on this node
/// itself, which the node rule allows": X4's data passes again, for as long as X4 sends
/// (a UDP stream needs nothing more from the client).
///
/// Expected: X4's data dropped (revoked). Datapath: passed.
/// Fix: a record without a backend vouches for nothing under an ordered set (`to_node`
/// now learns the node's backends there); for unordered sets have `to_node` learn the
/// node backend too (under the exemption) and drop replies of records without one.
#[test]
fn root_attack_node_hook_finding_record_restarted_without_backend_lets_a_revoked_backend_in() {
    let mut st = cnp_state();
    accept_nodes(&mut st);
    let (mut lab, ifs) = lab_with(st);
    open_service_to_x(&mut lab, &ifs, 43400);
    deny_x(&mut lab.state);
    lab.apply();
    lab.verdict(
        "X4's data after the Deny is dropped",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, TCP, &tcp(80, 43400, PSH | ACK)),
        DROP,
    );
    let mut ttl1 = v4(CLIENT4, SVC4, TCP, &tcp(43400, 80, ACK));
    ttl1[14 + 8] = 1;
    lab.verdict(
        "the client's TTL-1 segment towards the Service (dies in forwarding)",
        Hook::FromPod,
        ifs.c,
        &ttl1,
        PASS,
    );
    lab.verdict(
        "X4's next data through the Service",
        Hook::ToPod,
        ifs.c,
        &v4(SVC4, CLIENT4, TCP, &tcp(80, 43400, PSH | ACK)),
        DROP,
    );
}

// ---------------------------------------------------------------------------------------
// Node sockets reached at addresses that are not NODE_ADDRS
// ---------------------------------------------------------------------------------------

/// FINDING (arguable: what "to the node" covers). An Admin rule denies the client every
/// node. `to_node` decides only packets whose destination is in NODE_ADDRS, but the
/// node's sockets take in more than that: a UDP datagram to the limited broadcast
/// 255.255.255.255 from a pod reaches every node socket bound to 0.0.0.0 on that port
/// (the veth is an IPv4 interface of the host; a DHCP server, an SSDP or discovery
/// daemon), and under kube-proxy's IPVS mode every ClusterIP is a local address of
/// kube-ipvs0 (left out of NODE_ADDRS by design), so a ClusterIP on a port no Service
/// defines reaches the kubelet's 0.0.0.0:10250. `from_pod` judges those on their
/// destination address (no node rule matches), and `to_node` passes them: the node's
/// own sockets take in the client's packets despite the Deny of nodes.
///
/// Expected: dropped at the node's socket. Datapath: passed.
/// Fix: at `to_node`, a local pod's packet delivered to a socket of the host's network
/// namespace is a packet to the node whatever its destination address (judge it with a
/// node address as the peer when the destination is not a node's: a broadcast, a
/// multicast group, a Service address on a port no Service defines).
#[test]
fn root_attack_node_hook_finding_node_sockets_reached_at_other_addresses_escape_deny_nodes() {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "deny-nodes",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"action": "Deny", "to": [{"nodes": {}}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    let bcast = v4(CLIENT4, [255, 255, 255, 255], UDP, &udp(43500, 67));
    let ipvs = v4(CLIENT4, K8S4, TCP, &tcp(43501, 10250, SYN));
    let veth = (
        lab.run(Hook::FromPod, ifs.c, &bcast),
        lab.run(Hook::FromPod, ifs.c, &ipvs),
    );
    let node = (
        lab.run(Hook::ToNode, ifs.c, &bcast),
        lab.run(Hook::ToNode, ifs.c, &ipvs),
    );
    assert_eq!(
        (show(node.0), show(node.1)),
        ("DROP", "DROP"),
        "the broadcast to a node socket on UDP 67, and a ClusterIP:10250 (IPVS) reaching \
         the kubelet, at the node's socket (at the veth: {} / {})",
        show(veth.0),
        show(veth.1)
    );
}

// ---------------------------------------------------------------------------------------
// Guards
// ---------------------------------------------------------------------------------------

/// An Admin policy: accept the node's TCP 6443, deny the node otherwise.
fn node_port_only() -> ClusterState {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "node-port",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [
                   {"name": "api", "action": "Accept", "to": [{"nodes": {}}],
                    "protocols": [{"tcp": {"destinationPort": {"number": 6443}}}]},
                   {"name": "no-nodes", "action": "Deny", "to": [{"nodes": {}}]}]}),
    );
    st
}

/// IPv4 options and IPv6 extension headers in front of the transport header: `parse_l3`
/// finds the ports behind them at the node's socket.
#[test]
fn root_attack_node_hook_options_and_extension_headers_do_not_hide_the_port() {
    let (mut lab, ifs) = lab_with(node_port_only());
    // IPv4 with 8 bytes of options (two NOPs, a router alert, padding): IHL 7.
    let with_options = |dport: u16, sport: u16| {
        let mut f = v4(CLIENT4, NODE4, TCP, &tcp(sport, dport, SYN));
        let opts = [1u8, 1, 0x94, 4, 0, 0, 0, 0];
        f.splice(14 + 20..14 + 20, opts);
        f[14] = 0x47;
        let total = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f
    };
    assert_eq!(
        lab.run(Hook::ToNode, ifs.c, &with_options(10250, 43600)),
        DROP,
        "IPv4 options, denied port"
    );
    assert_eq!(
        lab.run(Hook::ToNode, ifs.c, &with_options(6443, 43601)),
        PASS,
        "IPv4 options, accepted port"
    );
    // IPv6: hop-by-hop (8 bytes), then destination options (8 bytes), then TCP.
    let node6 = ip6("fd00:1::1");
    let with_ext = |dport: u16, sport: u16| {
        let mut payload = vec![60u8, 0, 1, 4, 0, 0, 0, 0]; // HBH -> DSTOPTS, PadN
        payload.extend_from_slice(&[TCP, 0, 1, 4, 0, 0, 0, 0]); // DSTOPTS -> TCP
        payload.extend_from_slice(&tcp(sport, dport, SYN));
        v6(client6(), node6, 0, 64, &payload)
    };
    assert_eq!(
        lab.run(Hook::ToNode, ifs.c, &with_ext(10250, 43602)),
        DROP,
        "IPv6 extension headers, denied port"
    );
    assert_eq!(
        lab.run(Hook::ToNode, ifs.c, &with_ext(6443, 43603)),
        PASS,
        "IPv6 extension headers, accepted port"
    );
}

/// A denied translation, then the policy opens the port: the client's retransmitted
/// SYN is accepted at the node's socket, and the answer through the Service passes
/// (the refusal the record learnt is replaced).
#[test]
fn root_attack_node_hook_deny_then_accept_lets_the_retransmitted_syn_connect() {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "node-port",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"action": "Deny", "to": [{"nodes": {}}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    let to_svc = v4(CLIENT4, K8S4, TCP, &tcp(43700, 443, SYN));
    let at_node = v4(CLIENT4, NODE4, TCP, &tcp(43700, 6443, SYN));
    lab.verdict("SYN to the Service", Hook::FromPod, ifs.c, &to_svc, PASS);
    lab.verdict("denied at the node", Hook::ToNode, ifs.c, &at_node, DROP);
    lab.state.cluster_policies.clear();
    accept_nodes(&mut lab.state);
    lab.apply();
    lab.verdict("retransmitted SYN", Hook::FromPod, ifs.c, &to_svc, PASS);
    lab.verdict("accepted at the node", Hook::ToNode, ifs.c, &at_node, PASS);
    lab.verdict(
        "the API server's SYN-ACK",
        Hook::ToPod,
        ifs.c,
        &v4(K8S4, CLIENT4, TCP, &tcp(443, 43700, SYN | ACK)),
        PASS,
    );
}

/// A client not isolated, with a connection to the `kubernetes` Service on its own node,
/// gets an Admin Deny of nodes: the agent seeds the connection (undecided), and its next
/// packet at the node's socket is dropped, as is the API server's answer.
#[test]
fn root_attack_node_hook_a_seeded_service_connection_to_the_node_is_cut_by_an_admin_deny() {
    let st = cnp_state();
    let (mut lab, ifs) = lab_with(st);
    add_cnp(
        &mut lab.state,
        "deny-nodes",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"action": "Deny", "to": [{"nodes": {}}]}]}),
    );
    let seeded = lab.apply_as_agent(&[flow(
        TCP,
        (v4a(CLIENT4), 43800, v4a(K8S4), 443),
        (v4a(NODE4), 6443, v4a(CLIENT4), 43800),
    )]);
    assert!(seeded >= 1);
    lab.verdict(
        "the client's segment at its veth",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, K8S4, TCP, &tcp(43800, 443, ACK)),
        PASS,
    );
    lab.verdict(
        "at the node's socket: denied",
        Hook::ToNode,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(43800, 6443, ACK)),
        DROP,
    );
    lab.verdict(
        "the node's answer through the Service",
        Hook::ToPod,
        ifs.c,
        &v4(K8S4, CLIENT4, TCP, &tcp(443, 43800, PSH | ACK)),
        DROP,
    );
}

/// A drop at the node's socket is reported as `to_node`, on the client, egress, naming
/// the Deny rule; the connection the node's socket accepted counts the Accept rule once.
#[test]
fn root_attack_node_hook_events_and_counters_name_to_node_and_the_client() {
    let (mut lab, ifs) = lab_events(
        node_port_only(),
        EventOptions {
            kind: EventKind::Drop,
            per_second: 1000,
            ..Default::default()
        },
    );
    lab.verdict(
        "SYN to the Service",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, K8S4, TCP, &tcp(43900, 443, SYN)),
        PASS,
    );
    lab.expect(
        "denied at the node",
        Hook::ToNode,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(43900, 10250, SYN)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    let events = lab.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events[0];
    assert_eq!(
        (e.endpoint_id, e.hook, e.dport),
        (lab.id("client"), ev::AT_TO_NODE, 10250)
    );
    let named = lab.named_events(&events);
    assert_eq!(named[0].0, "drop_egress", "{named:?}");
    assert!(
        named[0]
            .1
            .as_deref()
            .is_some_and(|r| r.contains("node-port") && r.contains("egress[1]")),
        "{named:?}"
    );
}

/// The translated entry `to_node` makes is never refreshed at `to_node` and never
/// replied (the answers come back from the Service address): after 60 s the next packet
/// is decided again as an opening, under the same rules: still accepted.
#[test]
fn root_attack_node_hook_an_aged_translated_entry_is_decided_again_alike() {
    let (mut lab, ifs) = lab_with(node_port_only());
    lab.verdict(
        "SYN to the Service",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, K8S4, TCP, &tcp(44000, 443, SYN)),
        PASS,
    );
    lab.verdict(
        "accepted at the node",
        Hook::ToNode,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(44000, 6443, SYN)),
        PASS,
    );
    let (key, _) = CtKey::of(
        &Addr::from_v4(CLIENT4),
        &Addr::from_v4(NODE4),
        44000,
        6443,
        TCP,
    );
    let new = &mut lab.pr.maps_mut().conntrack_new;
    let mut e = new.get(&key, 0).expect("the translated entry, unreplied");
    assert_ne!(e.flags & ct_flag::DEFERRED_EGRESS, 0);
    e.last_seen_ns = monotonic_ns().saturating_sub(61 * 1_000_000_000);
    new.insert(key, e, 0).expect("age");
    lab.verdict(
        "the client's data at the node after 61 s",
        Hook::ToNode,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(44000, 6443, PSH | ACK)),
        PASS,
    );
    lab.verdict(
        "the API server's data",
        Hook::ToPod,
        ifs.c,
        &v4(K8S4, CLIENT4, TCP, &tcp(443, 44000, PSH | ACK)),
        PASS,
    );
}
