//! Second attack on the programmer's renewals of ordered rule sets (cea5b4b,
//! `Programmer::note_renewals`: an ordered set is renewed whenever an identity move changes
//! its entries). Pure userspace: the maps are `MemoryMaps`, read back the way the datapath
//! reads them (`MemoryMaps::rule_from`).
//!
//! The invariant (see `cnp_attack_programmer::cnp_attack_finding_relabelled_peer_denied_without_a_new_set_id`):
//! the datapath decides a tracked connection again only when its pod's rule-set id
//! changes, so whenever the programmed maps start deciding a peer's address less, the id
//! of every set that now decides it less must change.
//!
//! Tests named `*_finding_*` assert what ClusterNetworkPolicy semantics require and failed
//! on cea5b4b; all pass since the fixes that followed. The others are guards for what
//! held.

use std::collections::BTreeMap;
use std::net::IpAddr;

use netpol_agent::compile::compile;
use netpol_agent::program::memory::MemoryMaps;
use netpol_agent::program::{MapError, Programmer, addr_of};
use netpol_agent::state::{
    ClusterState, ContainerPort, Labels, NodeInfo, ObjectRef, PodInfo, Protocol,
};
use netpol_tests::cnp_fixtures::{add_cnp, labels};
use serde_json::json;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn remote_pod(app: &str, addr: &str) -> PodInfo {
    PodInfo {
        labels: labels(&[("app", app)]),
        node: Some("n2".into()),
        host_network: false,
        terminated: false,
        ips: vec![ip(addr)],
        ports: Vec::<ContainerPort>::new(),
    }
}

/// Namespace `prod`; nodes n1 (10.0.0.1) and n2 (10.0.0.2); `prod/server` on n1
/// (10.244.1.10), `prod/good` (10.244.2.20) and `prod/bad` (10.244.2.30, app: bad) on n2.
fn world() -> ClusterState {
    let mut s = ClusterState::default();
    s.namespaces.insert(
        "prod".into(),
        labels(&[("kubernetes.io/metadata.name", "prod")]),
    );
    for (name, addr) in [("n1", "10.0.0.1"), ("n2", "10.0.0.2")] {
        s.nodes.insert(
            name.into(),
            NodeInfo {
                labels: Labels::new(),
                ips: vec![ip(addr)],
                pod_cidrs: Vec::new(),
            },
        );
    }
    let mut server = remote_pod("server", "10.244.1.10");
    server.node = Some("n1".into());
    s.pods.insert(ObjectRef::new("prod", "server"), server);
    s.pods.insert(
        ObjectRef::new("prod", "good"),
        remote_pod("good", "10.244.2.20"),
    );
    s.pods.insert(
        ObjectRef::new("prod", "bad"),
        remote_pod("bad", "10.244.2.30"),
    );
    s
}

/// Admin: the server's ingress from pods labelled `app: bad` is denied.
fn deny_bad(s: &mut ClusterState) {
    add_cnp(
        s,
        "deny-bad",
        "Admin",
        10,
        json!({"subject": {"namespaces": {}},
               "ingress": [{"action": "Deny", "from": [{"pods": {"namespaceSelector": {},
                   "podSelector": {"matchLabels": {"app": "bad"}}}}]}]}),
    );
}

fn server_addr(s: &ClusterState) -> netpol_common::Addr {
    addr_of(s.pods[&ObjectRef::new("prod", "server")].ips[0])
}

fn server_ingress_set(pr: &Programmer<MemoryMaps>, s: &ClusterState) -> u32 {
    pr.maps().endpoints[&server_addr(s)].ingress_set
}

/// What the programmed maps decide for address `peer` on the server's ingress (TCP 80).
fn maps_allow(pr: &Programmer<MemoryMaps>, s: &ClusterState, peer: &str) -> bool {
    let set = server_ingress_set(pr, s);
    pr.maps()
        .rule_from(set, ip(peer), Protocol::Tcp, 80, false)
        .is_some()
}

fn apply(pr: &mut Programmer<MemoryMaps>, s: &ClusterState) {
    let plan = compile(s, "n1");
    assert!(plan.errors.is_empty(), "{:?}", plan.errors);
    pr.apply(&plan, &BTreeMap::new()).expect("programmed");
}

/// FOUND. An address that had no identity before (a pod whose address the agent learns
/// after its traffic started: the pod's status lags its sandbox, or the watch lags; or an
/// identity that did not fit `IDENTITIES` before and fits now) gets one that an Admin rule
/// denies. Without an identity the address met the rest table's default allow, so a
/// connection from it was opened and tracked (the open fail-open of
/// `cnp_attack_programmer::cnp_attack_finding_peer_without_identity_escapes_an_admin_deny`).
/// Once the identity is written the maps deny the address, but `note_renewals` only looks
/// at addresses that had an identity before (`moved` is built from `addresses` and
/// `retired_addresses`), so the server's set id stays: the connection is never decided
/// again and outlives the window for good. cea5b4b's reasoning ("no entry is the default's
/// answer: any change of entry can decide otherwise") applies to "no identity" as well.
#[test]
fn cnp_attack2_finding_first_identity_of_an_address_does_not_renew_ordered_sets() {
    let mut s = world();
    deny_bad(&mut s);
    let late = "10.244.2.40";
    let mut pr = Programmer::new(MemoryMaps::default(), 1000);
    apply(&mut pr, &s);
    let before_set = server_ingress_set(&pr, &s);
    assert!(
        maps_allow(&pr, &s, late),
        "an address without an identity meets the default allow (the open fail-open)"
    );
    assert!(!maps_allow(&pr, &s, "10.244.2.30"), "bad is denied");

    // The agent learns the pod behind the address: labelled app: bad.
    s.pods
        .insert(ObjectRef::new("prod", "late"), remote_pod("bad", late));
    apply(&mut pr, &s);
    let after_set = server_ingress_set(&pr, &s);
    assert!(
        !maps_allow(&pr, &s, late),
        "the maps now deny the address (a new connection is dropped)"
    );
    assert_ne!(
        before_set, after_set,
        "the maps deny {late} now, but the server's ingress set id is unchanged: the connection it opened while unknown is never decided again"
    );
}

/// `MemoryMaps` whose `IDENTITIES` refuses some addresses, as a full BPF map does.
#[derive(Default)]
struct RefusingIdentities {
    inner: MemoryMaps,
    refuse: std::collections::BTreeSet<netpol_common::Addr>,
}

impl netpol_agent::program::MapOps for RefusingIdentities {
    fn set_portset(&mut self, id: u32, set: &netpol_common::PortSet) -> Result<(), MapError> {
        self.inner.set_portset(id, set)
    }
    fn del_portset(&mut self, id: u32) -> Result<(), MapError> {
        self.inner.del_portset(id)
    }
    fn set_peer(
        &mut self,
        key: netpol_common::PeerKey,
        len: u8,
        value: netpol_common::PeerValue,
    ) -> Result<(), MapError> {
        self.inner.set_peer(key, len, value)
    }
    fn del_peer(&mut self, key: netpol_common::PeerKey, len: u8) -> Result<(), MapError> {
        self.inner.del_peer(key, len)
    }
    fn set_identity_peer(
        &mut self,
        key: netpol_common::IdentityKey,
        value: netpol_common::PeerValue,
    ) -> Result<(), MapError> {
        self.inner.set_identity_peer(key, value)
    }
    fn del_identity_peer(&mut self, key: netpol_common::IdentityKey) -> Result<(), MapError> {
        self.inner.del_identity_peer(key)
    }
    fn set_identity(
        &mut self,
        addr: netpol_common::Addr,
        identity: netpol_common::IdentityId,
    ) -> Result<(), MapError> {
        if self.refuse.contains(&addr) {
            return Err(MapError::Op {
                map: "IDENTITIES",
                op: "insert",
                message: "map full (E2BIG)".into(),
            });
        }
        self.inner.set_identity(addr, identity)
    }
    fn del_identity(&mut self, addr: netpol_common::Addr) -> Result<(), MapError> {
        self.inner.del_identity(addr)
    }
    fn set_endpoint(
        &mut self,
        addr: netpol_common::Addr,
        info: netpol_common::EndpointInfo,
    ) -> Result<(), MapError> {
        self.inner.set_endpoint(addr, info)
    }
    fn del_endpoint(&mut self, addr: netpol_common::Addr) -> Result<(), MapError> {
        self.inner.del_endpoint(addr)
    }
    fn set_iface(&mut self, ifindex: u32, info: netpol_common::IfaceInfo) -> Result<(), MapError> {
        self.inner.set_iface(ifindex, info)
    }
    fn del_iface(&mut self, ifindex: u32) -> Result<(), MapError> {
        self.inner.del_iface(ifindex)
    }
    fn set_service(&mut self, key: netpol_common::ServiceKey) -> Result<(), MapError> {
        self.inner.set_service(key)
    }
    fn del_service(&mut self, key: netpol_common::ServiceKey) -> Result<(), MapError> {
        self.inner.del_service(key)
    }
    fn set_node_addr(&mut self, addr: netpol_common::Addr, kind: u32) -> Result<(), MapError> {
        self.inner.set_node_addr(addr, kind)
    }
    fn del_node_addr(&mut self, addr: netpol_common::Addr) -> Result<(), MapError> {
        self.inner.del_node_addr(addr)
    }
    fn set_admin_table(&mut self, set: u32, table: u32) -> Result<(), MapError> {
        self.inner.set_admin_table(set, table)
    }
    fn del_admin_table(&mut self, set: u32) -> Result<(), MapError> {
        self.inner.del_admin_table(set)
    }
    fn set_next_ruleset_id(&mut self, next: u32) -> Result<(), MapError> {
        self.inner.set_next_ruleset_id(next)
    }
    fn set_node_self(&mut self, words: [u64; 3]) -> Result<(), MapError> {
        self.inner.set_node_self(words)
    }
    fn forget_connections(
        &mut self,
        addrs: &std::collections::BTreeSet<netpol_common::Addr>,
    ) -> Result<usize, MapError> {
        self.inner.forget_connections(addrs)
    }
    fn reset_counters(&mut self, endpoint_id: u32) -> Result<(), MapError> {
        self.inner.reset_counters(endpoint_id)
    }
    fn reset_rule_counter(&mut self, slot: u32) -> Result<(), MapError> {
        self.inner.reset_rule_counter(slot)
    }
    fn read_rule_counter(&self, slot: u32) -> Result<u64, MapError> {
        self.inner.read_rule_counter(slot)
    }
    fn existing(&self) -> Result<netpol_agent::program::Existing, MapError> {
        self.inner.existing()
    }
}

/// FOUND (the IDENTITIES-full variant of the finding above). `bad`'s identity does not fit
/// `IDENTITIES` at first (the programmer leaves the address without one), so the default
/// allow lets it in. When it fits at a later apply (room was made), no set is renewed.
#[test]
fn cnp_attack2_finding_identity_written_after_an_overflow_does_not_renew() {
    let mut s = world();
    deny_bad(&mut s);
    let bad = addr_of(ip("10.244.2.30"));
    let refusing = RefusingIdentities {
        refuse: [bad].into(),
        ..Default::default()
    };
    let mut pr = Programmer::new(refusing, 1000);
    let plan = compile(&s, "n1");
    let stats = pr.apply(&plan, &BTreeMap::new()).expect("programmed");
    assert!(
        stats.overflow_error.is_some(),
        "the refused identity is reported"
    );
    let server = server_addr(&s);
    let set_of =
        |pr: &Programmer<RefusingIdentities>| pr.maps().inner.endpoints[&server].ingress_set;
    let allows = |pr: &Programmer<RefusingIdentities>| {
        pr.maps()
            .inner
            .rule_from(set_of(pr), ip("10.244.2.30"), Protocol::Tcp, 80, false)
            .is_some()
    };
    let before_set = set_of(&pr);
    assert!(
        allows(&pr),
        "without its identity, bad meets the default allow (open fail-open)"
    );

    // Room in IDENTITIES: the next apply writes bad's identity.
    pr.maps_mut().refuse.clear();
    let stats = pr.apply(&plan, &BTreeMap::new()).expect("programmed");
    assert!(stats.overflow_error.is_none(), "{stats:?}");
    assert!(!allows(&pr), "bad is denied now");
    assert_ne!(
        before_set,
        set_of(&pr),
        "10.244.2.30 is denied now, with the same set id: its connection opened meanwhile goes on ({stats:?})"
    );
}

/// FOUND. Address reuse across an agent restart: `retired_addresses` lives in memory
/// only. `good` (app: good) talks to the server; `good` is deleted; the agent restarts
/// (its first apply flips every pod to new sets); then a new pod labelled `app: bad` gets
/// `good`'s address. The new programmer has no record of the address's earlier identity,
/// so no set is renewed. A connection whose server side was decided again after the
/// restart (the server's retransmissions or keepalives towards the dead peer, decided
/// under the post-restart set while the address had no identity) passes for the new pod.
#[test]
fn cnp_attack2_finding_address_reused_after_a_restart_does_not_renew() {
    let mut s = world();
    deny_bad(&mut s);
    let mut first = Programmer::new(MemoryMaps::default(), 1000);
    apply(&mut first, &s);
    let good = s
        .pods
        .remove(&ObjectRef::new("prod", "good"))
        .expect("good");
    apply(&mut first, &s);

    let maps = std::mem::take(first.maps_mut());
    let mut second = Programmer::new(maps, 1000);
    second.adopt().expect("adopted");
    apply(&mut second, &s);
    let settled = server_ingress_set(&second, &s);
    assert!(maps_allow(&second, &s, "10.244.2.20"), "no identity there");

    let mut reused = good;
    reused.labels = labels(&[("app", "bad")]);
    s.pods.insert(ObjectRef::new("prod", "reused"), reused);
    apply(&mut second, &s);
    assert!(!maps_allow(&second, &s, "10.244.2.20"));
    assert_ne!(
        settled,
        server_ingress_set(&second, &s),
        "the reused address is denied now, with the same set id"
    );
}

/// Guard: the same reuse without a restart is renewed (cea5b4b).
#[test]
fn cnp_attack2_address_reused_without_a_restart_is_renewed() {
    let mut s = world();
    deny_bad(&mut s);
    let mut pr = Programmer::new(MemoryMaps::default(), 1000);
    apply(&mut pr, &s);
    let good = s
        .pods
        .remove(&ObjectRef::new("prod", "good"))
        .expect("good");
    apply(&mut pr, &s);
    let before = server_ingress_set(&pr, &s);
    let mut reused = good;
    reused.labels = labels(&[("app", "bad")]);
    s.pods.insert(ObjectRef::new("prod", "reused"), reused);
    apply(&mut pr, &s);
    assert!(!maps_allow(&pr, &s, "10.244.2.20"));
    assert_ne!(before, server_ingress_set(&pr, &s));
}

/// Guard: a move between two identities that the ordered set holds no entry for (both the
/// default's answer) renews nothing: the change does not churn sets it cannot affect.
#[test]
fn cnp_attack2_move_between_identities_without_entries_renews_nothing() {
    let mut s = world();
    deny_bad(&mut s);
    let mut pr = Programmer::new(MemoryMaps::default(), 1000);
    apply(&mut pr, &s);
    let before = server_ingress_set(&pr, &s);
    s.pods
        .get_mut(&ObjectRef::new("prod", "good"))
        .expect("good")
        .labels = labels(&[("app", "neutral")]);
    let plan = compile(&s, "n1");
    let stats = pr.apply(&plan, &BTreeMap::new()).expect("programmed");
    assert_eq!(stats.rule_sets_renewed, 0, "{stats:?}");
    assert_eq!(before, server_ingress_set(&pr, &s));
    assert!(maps_allow(&pr, &s, "10.244.2.20"));
}

/// Guard: a move from an identity an Admin Accept names to one a later Admin Deny
/// catches (by namespace, so both identities have entries) renews the set.
#[test]
fn cnp_attack2_move_from_accept_to_a_namespace_deny_is_renewed() {
    let mut s = world();
    add_cnp(
        &mut s,
        "accept-good-deny-rest",
        "Admin",
        10,
        json!({"subject": {"pods": {"namespaceSelector": {},
                   "podSelector": {"matchLabels": {"app": "server"}}}},
               "ingress": [{"action": "Accept", "from": [{"pods": {"namespaceSelector": {},
                   "podSelector": {"matchLabels": {"app": "good"}}}}]},
                           {"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    let mut pr = Programmer::new(MemoryMaps::default(), 1000);
    apply(&mut pr, &s);
    let before = server_ingress_set(&pr, &s);
    assert!(maps_allow(&pr, &s, "10.244.2.20"));
    s.pods
        .get_mut(&ObjectRef::new("prod", "good"))
        .expect("good")
        .labels = labels(&[("app", "other")]);
    apply(&mut pr, &s);
    assert!(!maps_allow(&pr, &s, "10.244.2.20"));
    assert_ne!(before, server_ingress_set(&pr, &s));
}
