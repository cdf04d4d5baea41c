//! An attack on `to_node`'s judgement of a local pod's packet that reaches the node's
//! sockets at an address that is not the node's own (commit 892ff9c: `towards_node`,
//! `Plan::node_self`, `NODE_ADDRS` kinds). Tests named `..._finding_...` assert what the
//! semantics require and fail on the code they were written against; the others guard
//! corners that came out right. Run with BPF_PROG_TEST_RUN. **Needs root** (except the
//! programmer tests on memory maps). Every root test runs in a network namespace of its
//! own thread; nothing is sent.

use netpol_agent::program::Programmer;
use netpol_agent::program::memory::MemoryMaps;
use netpol_tests::cnp_fixtures::{add_cnp, client_node_port_only, cnp_state, pods_with_app};
use netpol_tests::lab::*;
use serde_json::json;

use netpol_common::{node_addr, reason};

/// The `kubernetes` Service's address (`base()`).
const K8S4: [u8; 4] = [10, 96, 0, 1];
/// A bridge CNI's gateway (say `cni0`): an address of this node's interfaces inside its
/// pod range 10.1.0.0/24, and not one of its Node's addresses.
const GW4: [u8; 4] = [10, 1, 0, 254];

fn node6() -> Ipv6Addr {
    ip6("fd00:1::1")
}

/// The node's interface addresses as the lab programs them by default.
fn own() -> BTreeSet<IpAddr> {
    [v4a(NODE4), IpAddr::V6(node6()), v4a(UPLINK4)].into()
}

fn lab_with(st: ClusterState) -> (Lab, u32) {
    let i = netns(&["vc", "vs"]);
    let lab = Lab::new(
        st,
        &[("client", i[0]), ("server", i[1])],
        &[v4a(NODE4), IpAddr::V6(node6()), v4a(UPLINK4)],
    );
    (lab, i[0])
}

/// What the agent programs with `--strict-node-traffic` (`Agent::program_node_addresses`):
/// the interface addresses (the gateway `GW4` among them) without the exemption, the
/// broadcast addresses.
fn strict(lab: &mut Lab, broadcast: &[IpAddr]) {
    let own = [v4a(NODE4), IpAddr::V6(node6()), v4a(UPLINK4), v4a(GW4)].into();
    lab.pr
        .set_node_addresses(&own, &broadcast.iter().copied().collect(), false)
        .expect("node addresses");
}

/// Admin policy `deny-nodes` over pods `app: client`: rule `no-nodes` denies every node.
fn deny_nodes(st: &mut ClusterState) {
    add_cnp(
        st,
        "deny-nodes",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"name": "no-nodes", "action": "Deny", "to": [{"nodes": {}}]}]}),
    );
}

// ---- findings ----------------------------------------------------------------------

/// A Service whose backend is this node at another of its addresses (a selectorless
/// Service's Endpoints, or the `kubernetes` Service with the API server advertising an
/// address that is not the Node's first): the pod's veth saw only the Service address,
/// so `to_node` is the only hook that sees the backend. It now judges the backend as
/// `node_self` and never on the backend's own address: an Admin Deny of that address is
/// skipped. (Before 892ff9c, `deferred_egress` judged the backend and dropped it.)
#[test]
fn root_attack_node_elsewhere_finding_a_translated_backend_at_another_node_address_escapes_its_deny()
 {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "deny-uplink",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"name": "no-uplink", "action": "Deny",
                           "to": [{"networks": ["172.18.0.3/32"]}]}]}),
    );
    let (mut lab, c) = lab_with(st);
    lab.expect(
        "direct: the address is denied at the veth",
        Hook::FromPod,
        c,
        &v4(CLIENT4, UPLINK4, TCP, &tcp(43000, 6443, SYN)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    lab.verdict(
        "SYN to the kubernetes Service (decided after translation)",
        Hook::FromPod,
        c,
        &v4(CLIENT4, K8S4, TCP, &tcp(43001, 443, SYN)),
        PASS,
    );
    lab.expect(
        "the SYN translated to the denied address, at the node's socket: rule no-uplink",
        Hook::ToNode,
        c,
        &v4(CLIENT4, UPLINK4, TCP, &tcp(43001, 6443, SYN)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

/// A Node with several addresses (InternalIP and a second InternalIP or ExternalIP, both
/// on its interfaces): rules about nodes name the second one too, so it is no address
/// "that rules about nodes do not name". A higher-priority rule accepting that address
/// by `networks` lets the veth pass the connection, but `to_node` judges every packet as
/// going to the first address, where the lower `Deny` of nodes drops it.
#[test]
fn root_attack_node_elsewhere_finding_a_second_node_address_is_judged_as_the_first() {
    let mut st = cnp_state();
    st.nodes.get_mut("n1").expect("n1").ips = vec![v4a(NODE4), IpAddr::V6(node6()), v4a(UPLINK4)];
    add_cnp(
        &mut st,
        "uplink-kubelet",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [
                   {"name": "uplink-ok", "action": "Accept",
                    "to": [{"networks": ["172.18.0.3/32"]}]},
                   {"name": "no-nodes", "action": "Deny", "to": [{"nodes": {}}]}]}),
    );
    let (mut lab, c) = lab_with(st);
    let syn = v4(CLIENT4, UPLINK4, TCP, &tcp(43100, 10250, SYN));
    lab.expect(
        "the veth: rule uplink-ok",
        Hook::FromPod,
        c,
        &syn,
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
    lab.expect(
        "the node's socket: the connection the veth accepted",
        Hook::ToNode,
        c,
        &syn,
        PASS,
        "client",
        None,
    );
}

/// `--strict-node-traffic` cleared the interface addresses from `NODE_ADDRS` (only the
/// broadcast addresses stayed). A bridge's gateway inside the pod range (cni0; Calico's
/// tunl0, Cilium's cilium_host alike) was then taken for an unknown pod's socket by
/// `towards_node` and never judged as the node: the kubelet was reached past an Admin
/// Deny of nodes. (Without the flag the same packet is dropped; see the guard below.)
/// Now the flag writes them without the exemption (`node_addr::LOCAL`).
#[test]
fn root_attack_node_elsewhere_finding_strict_node_traffic_gateway_in_the_pod_range_reaches_the_kubelet()
 {
    let (mut lab, c) = lab_with(client_node_port_only());
    strict(&mut lab, &[v4a([10, 1, 0, 255])]);
    let syn = v4(CLIENT4, GW4, TCP, &tcp(43200, 10250, SYN));
    lab.verdict(
        "the veth: another address of the node, rule no-nodes",
        Hook::FromPod,
        c,
        &syn,
        DROP,
    );
    lab.expect(
        "the kubelet's socket at the gateway address: rule no-nodes",
        Hook::ToNode,
        c,
        &syn,
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

/// With `--strict-node-traffic` the node's own address is in no `NODE_ADDRS` entry, so
/// `towards_node` says `Node(node_self)` for it, and a Service translated to the node is
/// judged packet by packet, untracked, with no Service record learning the backend. Its
/// answer passes (guarded below); but when a policy change denies the node, the node's
/// data on the established connection, from the Service address, must meet the same
/// refusal (as without the flag, `root_node_hook_a_policy_change_cuts_an_established_
/// connection_to_the_node`).
#[test]
fn root_attack_node_elsewhere_finding_strict_node_traffic_revoked_service_to_the_node_keeps_talking()
 {
    let (mut lab, c) = lab_with(client_node_port_only());
    strict(&mut lab, &[]);
    lab.verdict(
        "SYN to the kubernetes Service",
        Hook::FromPod,
        c,
        &v4(CLIENT4, K8S4, TCP, &tcp(43310, 443, SYN)),
        PASS,
    );
    let to_node = |flags| v4(CLIENT4, NODE4, TCP, &tcp(43310, 6443, flags));
    lab.verdict("SYN at the node", Hook::ToNode, c, &to_node(SYN), PASS);
    lab.verdict(
        "SYN-ACK",
        Hook::ToPod,
        c,
        &v4(K8S4, CLIENT4, TCP, &tcp(443, 43310, SYN | ACK)),
        PASS,
    );
    deny_nodes(&mut lab.state);
    lab.state.cluster_policies.remove("node-port");
    lab.apply();
    lab.verdict(
        "the client's next segment at the node, under the Deny",
        Hook::ToNode,
        c,
        &to_node(ACK),
        DROP,
    );
    lab.verdict(
        "the node's data, from the Service address",
        Hook::ToPod,
        c,
        &v4(K8S4, CLIENT4, TCP, &tcp(443, 43310, PSH | ACK)),
        DROP,
    );
}

/// With `--strict-node-traffic`, an accepted Service connection to the node is answered,
/// the client's ingress isolated.
#[test]
fn root_attack_node_elsewhere_strict_node_traffic_service_to_the_node_is_answered() {
    let mut st = client_node_port_only();
    set_policy(&mut st, "client-ingress-none", CLIENT_INGRESS_NONE);
    let (mut lab, c) = lab_with(st);
    strict(&mut lab, &[]);
    lab.verdict(
        "SYN to the kubernetes Service",
        Hook::FromPod,
        c,
        &v4(CLIENT4, K8S4, TCP, &tcp(43300, 443, SYN)),
        PASS,
    );
    lab.expect(
        "the SYN at the node's socket: rule api",
        Hook::ToNode,
        c,
        &v4(CLIENT4, NODE4, TCP, &tcp(43300, 6443, SYN)),
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
    lab.verdict(
        "the node's SYN-ACK, from the Service address",
        Hook::ToPod,
        c,
        &v4(K8S4, CLIENT4, TCP, &tcp(443, 43300, SYN | ACK)),
        PASS,
    );
}

/// A dual-stack pod on a node whose Node lists only its IPv4 address (kubelet
/// `--node-ip` of one family): `node_self` has no IPv6 address, so `towards_node` says
/// `Itself` for the node's IPv6 interface address and judges it as an address that no
/// rule about nodes names. The kubelet (listening on `::`) is reached past an Admin Deny
/// of nodes; IPv6 multicast to node sockets likewise is not judged at all.
#[test]
fn root_attack_node_elsewhere_finding_the_nodes_ipv6_address_escapes_deny_nodes_when_its_node_lists_ipv4_only()
 {
    let mut st = cnp_state();
    st.nodes.get_mut("n1").expect("n1").ips = vec![v4a(NODE4)];
    deny_nodes(&mut st);
    let (mut lab, c) = lab_with(st);
    lab.expect(
        "IPv4: the node is denied",
        Hook::FromPod,
        c,
        &v4(CLIENT4, NODE4, TCP, &tcp(43400, 10250, SYN)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    lab.expect(
        "IPv6: the kubelet at the node's IPv6 address: rule no-nodes",
        Hook::ToNode,
        c,
        &v6(client6(), node6(), TCP, 64, &tcp(43401, 10250, SYN)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    lab.expect(
        "IPv6 all-nodes multicast at the node's socket: rule no-nodes",
        Hook::ToNode,
        c,
        &v6(client6(), ip6("ff02::1"), UDP, 64, &udp(43402, 547)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

/// A pod that the CNI plugin announced before the API view has it (`held::hold`) is an
/// endpoint of this node with no identity. Where the nodes have no `podCIDRs` (Calico,
/// Cilium's cluster-pool IPAM), its address is in no pod range either, so `towards_node`
/// takes a neighbour pod's packet to its socket for one to the node: an Admin Deny of
/// nodes drops plain pod-to-pod traffic. (`ENDPOINTS` names it a local pod.)
#[test]
fn root_attack_node_elsewhere_finding_a_held_pod_without_pod_ranges_is_taken_for_the_node() {
    let mut st = cnp_state();
    for n in st.nodes.values_mut() {
        n.pod_cidrs.clear();
    }
    deny_nodes(&mut st);
    let server = ObjectRef::new("default", "server");
    let server_ips = st.pods.remove(&server).expect("server").ips;
    let (mut lab, c) = lab_with(st);
    let mut plan = compile(&lab.state, "n1");
    netpol_agent::compile::held::hold(&mut plan, &lab.state, &[(server, server_ips)]);
    lab.pr.apply(&plan, &lab.veths).expect("program maps");
    let syn = v4(CLIENT4, SERVER4, TCP, &tcp(43500, 8080, SYN));
    lab.verdict(
        "the veth: a pod, no rule about it",
        Hook::FromPod,
        c,
        &syn,
        PASS,
    );
    lab.expect(
        "the held pod's socket: no node traffic",
        Hook::ToNode,
        c,
        &syn,
        PASS,
        "client",
        None,
    );
}

/// An ICMP echo is answered by the node's stack, no socket taking it in, so `to_node`
/// never sees it and the veth decides it alone, on its address: the node answers a ping
/// at another of its addresses past an Admin Deny of nodes that drops the same ping to
/// its own address. The veth knows the address is the node's (`NODE_ADDRS`).
#[test]
fn root_attack_node_elsewhere_finding_a_ping_to_another_node_address_passes_deny_nodes() {
    let mut st = cnp_state();
    deny_nodes(&mut st);
    let (mut lab, c) = lab_with(st);
    lab.expect(
        "echo to the node's own address: rule no-nodes",
        Hook::FromPod,
        c,
        &v4(CLIENT4, NODE4, ICMP, &echo(8, 1)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    lab.expect(
        "echo to another address of the node: the node answers it",
        Hook::FromPod,
        c,
        &v4(CLIENT4, UPLINK4, ICMP, &echo(8, 2)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

// ---- guards -------------------------------------------------------------------------

/// Without `--strict-node-traffic` the gateway inside the pod range is an `OWN` entry and
/// is judged as the node.
#[test]
fn root_attack_node_elsewhere_a_gateway_in_the_pod_range_is_the_node() {
    let (mut lab, c) = lab_with(client_node_port_only());
    let mut addrs = own();
    addrs.insert(v4a(GW4));
    lab.pr
        .set_node_addresses(&addrs, &[v4a([10, 1, 0, 255])].into(), true)
        .expect("node addresses");
    lab.expect(
        "the kubelet at the gateway: rule no-nodes",
        Hook::ToNode,
        c,
        &v4(CLIENT4, GW4, TCP, &tcp(44000, 10250, SYN)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    lab.expect(
        "the API port at the gateway: rule api",
        Hook::ToNode,
        c,
        &v4(CLIENT4, GW4, TCP, &tcp(44001, 6443, SYN)),
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
}

/// Without `--strict-node-traffic`, the answer of a Service translated to the node rides
/// the entry `to_node` made, the client's ingress isolated.
#[test]
fn root_attack_node_elsewhere_service_to_the_node_is_answered_with_ingress_isolated() {
    let mut st = client_node_port_only();
    set_policy(&mut st, "client-ingress-none", CLIENT_INGRESS_NONE);
    let (mut lab, c) = lab_with(st);
    lab.verdict(
        "SYN to the kubernetes Service",
        Hook::FromPod,
        c,
        &v4(CLIENT4, K8S4, TCP, &tcp(44100, 443, SYN)),
        PASS,
    );
    lab.verdict(
        "the SYN at the node's socket",
        Hook::ToNode,
        c,
        &v4(CLIENT4, NODE4, TCP, &tcp(44100, 6443, SYN)),
        PASS,
    );
    lab.verdict(
        "the SYN-ACK from the Service address",
        Hook::ToPod,
        c,
        &v4(K8S4, CLIENT4, TCP, &tcp(443, 44100, SYN | ACK)),
        PASS,
    );
}

/// The address no pod gets in each range (the network address, a hole: a subnet
/// broadcast on Linux, flannel's VXLAN device, IPv6's subnet-router anycast) reaches the
/// node and is judged as the node.
#[test]
fn root_attack_node_elsewhere_a_ranges_network_address_is_the_node() {
    let (mut lab, c) = lab_with(client_node_port_only());
    lab.expect(
        "IPv4 network address",
        Hook::ToNode,
        c,
        &v4(CLIENT4, [10, 1, 0, 0], UDP, &udp(44200, 53)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    lab.expect(
        "IPv6 subnet-router anycast",
        Hook::ToNode,
        c,
        &v6(client6(), ip6("fd00:1::"), UDP, 64, &udp(44201, 53)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

/// A pod reaching itself, and a neighbour pod, at their own addresses: pods' sockets.
#[test]
fn root_attack_node_elsewhere_a_pod_reaching_itself_or_a_neighbour_is_no_node_traffic() {
    let (mut lab, c) = lab_with(client_node_port_only());
    for (what, pkt) in [
        (
            "itself, IPv4",
            v4(CLIENT4, CLIENT4, TCP, &tcp(44300, 10250, SYN)),
        ),
        (
            "itself, IPv6",
            v6(client6(), client6(), TCP, 64, &tcp(44301, 10250, SYN)),
        ),
        (
            "the server, IPv6",
            v6(client6(), ip6("fd00:1::3"), UDP, 64, &udp(44302, 10250)),
        ),
    ] {
        lab.expect(what, Hook::ToNode, c, &pkt, PASS, "client", None);
    }
}

/// An IPv4-mapped destination in an IPv6 header cannot pose as the node's IPv4 address or
/// a pod's: the veth drops it.
#[test]
fn root_attack_node_elsewhere_a_v4_mapped_destination_is_dropped_at_the_veth() {
    let (mut lab, c) = lab_with(client_node_port_only());
    for dst in ["::ffff:10.1.0.1", "::ffff:10.96.0.1", "::ffff:10.1.0.3"] {
        lab.expect(
            dst,
            Hook::FromPod,
            c,
            &v6(client6(), ip6(dst), TCP, 64, &tcp(44400, 10250, SYN)),
            DROP,
            "client",
            Some(reason::DROP_ADDRESS),
        );
    }
}

/// The acceptor-side exception is the node's connection only: a pod's own opening to the
/// node at another address finds its veth's entry but is judged, every packet, as going
/// to the node; a node-opened connection's entry carries only its tuple.
#[test]
fn root_attack_node_elsewhere_the_acceptor_exception_opens_nothing_else() {
    let (mut lab, c) = lab_with(client_node_port_only());
    lab.verdict(
        "the node's SYN from another address to the client's 9000",
        Hook::ToPod,
        c,
        &v4(UPLINK4, CLIENT4, TCP, &tcp(50100, 9000, SYN)),
        PASS,
    );
    lab.expect(
        "the answer at the node's client socket",
        Hook::ToNode,
        c,
        &v4(CLIENT4, UPLINK4, TCP, &tcp(9000, 50100, SYN | ACK)),
        PASS,
        "client",
        None,
    );
    lab.expect(
        "the client's fresh SYN to the kubelet from 9000",
        Hook::ToNode,
        c,
        &v4(CLIENT4, UPLINK4, TCP, &tcp(9000, 10250, SYN)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    lab.expect(
        "UDP from 9000 to the node's 50100 (another protocol, no entry)",
        Hook::ToNode,
        c,
        &v4(CLIENT4, UPLINK4, UDP, &udp(9000, 50100)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    // The client opened towards the node's other address on the accepted port: a later
    // segment rides the veth's entry, judged as going to the node again (uncounted: the
    // opening was counted at the veth).
    lab.expect(
        "the client's SYN to 6443 at the veth: rule api",
        Hook::FromPod,
        c,
        &v4(CLIENT4, UPLINK4, TCP, &tcp(44500, 6443, SYN)),
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
    lab.expect(
        "its ACK at the node's socket: judged again, rule api",
        Hook::ToNode,
        c,
        &v4(CLIENT4, UPLINK4, TCP, &tcp(44500, 6443, ACK)),
        PASS,
        "client",
        None,
    );
}

/// The node's link-local address (an `OWN` entry, the host side of the pod's veth) is
/// the node; an IPv4 link-local address of the node (NodeLocal DNSCache's 169.254.20.10
/// on its dummy) too.
#[test]
fn root_attack_node_elsewhere_the_nodes_link_local_addresses_are_the_node() {
    let (mut lab, c) = lab_with(client_node_port_only());
    let mut addrs = own();
    addrs.insert(IpAddr::V6(ip6("fe80::1")));
    addrs.insert(v4a([169, 254, 20, 10]));
    lab.pr
        .set_node_addresses(&addrs, &BTreeSet::new(), true)
        .expect("node addresses");
    lab.expect(
        "fe80::1, the kubelet's port",
        Hook::ToNode,
        c,
        &v6(client6(), ip6("fe80::1"), TCP, 64, &tcp(44600, 10250, SYN)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    lab.expect(
        "169.254.20.10:53",
        Hook::ToNode,
        c,
        &v4(CLIENT4, [169, 254, 20, 10], UDP, &udp(44601, 53)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
}

/// A packet with a pod's address that entered through another pod's veth is forged:
/// dropped before anything is judged, a group destination included.
#[test]
fn root_attack_node_elsewhere_a_forged_source_to_a_group_is_spoofed() {
    let i = netns(&["vc", "vs"]);
    let mut lab = Lab::new(
        client_node_port_only(),
        &[("client", i[0]), ("server", i[1])],
        &[v4a(NODE4), IpAddr::V6(node6()), v4a(UPLINK4)],
    );
    // The server's veth carries the client's address only when forged.
    let v = lab.run_from(
        Hook::ToNode,
        i[1],
        i[1],
        &v4(CLIENT4, [224, 0, 0, 251], UDP, &udp(5353, 5353)),
    );
    assert_eq!(v, DROP, "forged multicast: {}", show(v));
}

// ---- the programmer ---------------------------------------------------------------------

fn mem() -> Programmer<MemoryMaps> {
    Programmer::new(MemoryMaps::default(), sizes::COUNTERS)
}

/// Kinds survive a restart: the next run adopts them, writes nothing when nothing
/// changed, and turns a broadcast address that became an interface address (or back)
/// into the right kind.
#[test]
fn root_attack_node_elsewhere_programmer_adopts_node_address_kinds() {
    let own: BTreeSet<IpAddr> = [v4a(NODE4)].into();
    let bc: BTreeSet<IpAddr> = [v4a([10, 1, 0, 255])].into();
    let mut pr = mem();
    assert_eq!(pr.set_node_addresses(&own, &bc, true).expect("set"), 2);
    let maps = std::mem::take(pr.maps_mut());
    let mut next = Programmer::new(maps, sizes::COUNTERS);
    next.adopt().expect("adopt");
    assert_eq!(next.set_node_addresses(&own, &bc, true).expect("again"), 0);
    // Both: the node's.
    let both: BTreeSet<IpAddr> = [v4a(NODE4), v4a([10, 1, 0, 255])].into();
    assert_eq!(next.set_node_addresses(&both, &bc, true).expect("both"), 1);
    let kinds = &next.maps().node_addrs;
    let a = |o: [u8; 4]| netpol_common::Addr::from_v4(o);
    assert_eq!(kinds.get(&a([10, 1, 0, 255])), Some(&node_addr::OWN));
    assert_eq!(next.set_node_addresses(&own, &bc, true).expect("back"), 1);
    assert_eq!(
        next.maps().node_addrs.get(&a([10, 1, 0, 255])),
        Some(&node_addr::BROADCAST)
    );
    // Strict: the interface address loses its exemption, and stays the node's.
    assert_eq!(
        next.set_node_addresses(&own, &bc, false).expect("strict"),
        1
    );
    assert_eq!(
        next.maps().node_addrs.get(&a(NODE4)),
        Some(&node_addr::LOCAL)
    );
    assert_eq!(next.maps().node_addrs.len(), 2);
}

/// `node_self` follows the Node: written on the first apply of a run (also after an
/// adoption), rewritten when the Node's first address changes, cleared when it goes.
#[test]
fn root_attack_node_elsewhere_programmer_keeps_node_self_right() {
    let words =
        |v4: Option<[u8; 4]>, v6: Option<[u8; 16]>| netpol_common::meta::node_self_words(v4, v6);
    let veths = BTreeMap::new();
    let mut st = cnp_state();
    let mut pr = mem();
    pr.apply(&compile(&st, "n1"), &veths).expect("apply");
    assert_eq!(
        pr.maps().node_self,
        words(Some(NODE4), Some(node6().octets()))
    );
    st.nodes.get_mut("n1").expect("n1").ips = vec![IpAddr::V6(node6()), v4a(UPLINK4), v4a(NODE4)];
    pr.apply(&compile(&st, "n1"), &veths).expect("apply");
    assert_eq!(
        pr.maps().node_self,
        words(Some(UPLINK4), Some(node6().octets()))
    );
    // A restart: the maps keep the old words, the new run writes its own.
    let mut maps = std::mem::take(pr.maps_mut());
    maps.node_self = [0; 3];
    let mut next = Programmer::new(maps, sizes::COUNTERS);
    next.adopt().expect("adopt");
    next.apply(&compile(&st, "n1"), &veths).expect("apply");
    assert_eq!(
        next.maps().node_self,
        words(Some(UPLINK4), Some(node6().octets()))
    );
    st.nodes.remove("n1");
    next.apply(&compile(&st, "n1"), &veths).expect("apply");
    assert_eq!(next.maps().node_self, [0; 3]);
}

/// The incremental compiler's plan keeps `node_self` as a full compile has it when only
/// addresses change hands, and when the Node's addresses change.
#[test]
fn root_attack_node_elsewhere_incremental_compile_keeps_node_self() {
    use netpol_agent::compile::incremental::Compiler;
    let mut st = cnp_state();
    deny_nodes(&mut st);
    let mut inc = Compiler::default();
    let mut step = |st: &ClusterState| {
        let plan = inc.compile(st, "n1");
        inc.remember(st, &plan);
        plan
    };
    let plan = step(&st);
    assert_eq!(plan.node_self, compile(&st, "n1").node_self);
    st.nodes.get_mut("n1").expect("n1").ips = vec![v4a(UPLINK4), v4a(NODE4)];
    let plan = step(&st);
    assert_eq!(plan.node_self.v4, Some(Ipv4Addr::from(UPLINK4)));
    assert_eq!(plan.node_self.v6, None);
    // A pod's address changes hands (the incremental path).
    st.pods
        .get_mut(&ObjectRef::new("default", "other"))
        .expect("other")
        .ips = vec![v4a([10, 1, 0, 9])];
    let plan = step(&st);
    assert_eq!(plan.node_self, compile(&st, "n1").node_self);
}
