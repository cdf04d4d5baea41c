//! Which veth leads to which pod, from the kernel rather than from routes: every veth of
//! this namespace whose peer lives in another network namespace is a pod's link, and the
//! peer's addresses (read over rtnetlink in the peer's namespace, by its namespace id)
//! say whose. Routed CNIs (ptp, kindnet, Calico) and bridged ones (the `bridge` plugin,
//! flannel) look the same from here.
//!
//! A pod that holds NET_ADMIN can put any address on its own interface, so a peer's
//! addresses are a claim, not proof. The resolution below trusts, in order: a host route
//! to the address (only the node can write one), then a claim no other veth makes, then
//! the veth that already held the pod when a second claimant appeared. A veth left with a
//! claim it cannot win is quarantined: it gets no pod, and the datapath drops what it
//! carries, so a contested address never leaves its pod unjudged.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;

use super::rtnl::dump;
use crate::state::ObjectRef;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage};

/// A link of this namespace, as far as hooking it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Ethernet framing (the datapath parses Ethernet headers).
    pub ethernet: bool,
    /// A veth whose peer is in another namespace: `(namespace id, peer's ifindex)`.
    pub peer: Option<(i32, u32)>,
    /// The bridge (or other master) it is a port of.
    pub controller: Option<u32>,
}

/// A pod's veth: the host side, and the global addresses its peer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLink {
    pub name: String,
    pub claims: BTreeSet<IpAddr>,
}

/// Every link of this network namespace.
pub fn links() -> io::Result<Vec<Link>> {
    let mut out = Vec::new();
    dump(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        |msg| {
            if let RouteNetlinkMessage::NewLink(m) = msg {
                out.push(link_of(&m));
            }
        },
    )?;
    Ok(out)
}

fn link_of(m: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut veth = false;
    let mut peer_index = None;
    let mut peer_ns = None;
    let mut controller = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Link(i) => peer_index = Some(*i),
            LinkAttribute::LinkNetNsId(ns) => peer_ns = Some(*ns),
            LinkAttribute::Controller(c) => controller = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                veth |= infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    Link {
        index: m.header.index,
        name,
        ethernet: m.header.link_layer_type == LinkLayerType::Ether,
        peer: match (veth, peer_ns, peer_index) {
            (true, Some(ns), Some(i)) if ns >= 0 => Some((ns, i)),
            _ => None,
        },
        controller,
    }
}

/// The pods' veths of this namespace and what their peers claim. A peer namespace that
/// went away while being read is skipped (its veth goes with it).
pub fn pod_links(links: &[Link]) -> io::Result<Vec<PodLink>> {
    let mut by_ns: BTreeMap<i32, Vec<(u32, &str)>> = BTreeMap::new();
    for l in links {
        if let Some((ns, peer)) = l.peer {
            by_ns.entry(ns).or_default().push((peer, &l.name));
        }
    }
    let mut out = Vec::new();
    for (ns, peers) in by_ns {
        let addrs = match addresses_in(ns) {
            Ok(a) => a,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
            Err(e) => return Err(e),
        };
        for (peer, name) in peers {
            out.push(PodLink {
                name: name.to_string(),
                claims: addrs
                    .iter()
                    .filter(|(i, _)| *i == peer)
                    .map(|(_, a)| *a)
                    .collect(),
            });
        }
    }
    Ok(out)
}

/// (ifindex, address) of every global address in the namespace with id `ns`.
fn addresses_in(ns: i32) -> io::Result<Vec<(u32, IpAddr)>> {
    let mut req = AddressMessage::default();
    req.attributes.push(AddressAttribute::TargetNetNsId(ns));
    let mut out = Vec::new();
    let mut foreign = false;
    dump(RouteNetlinkMessage::GetAddress(req), |msg| {
        let RouteNetlinkMessage::NewAddress(m) = msg else {
            return;
        };
        // A kernel that ignored the target would answer with this namespace's own
        // addresses: only answers that say whose they are count.
        if !m.attributes.contains(&AddressAttribute::TargetNetNsId(ns)) {
            foreign = true;
            return;
        }
        if m.header.scope == AddressScope::Universe {
            // IFA_ADDRESS is the peer's address on point-to-point links: IFA_LOCAL first.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                out.push((m.header.index, ip));
            }
        }
    })?;
    if foreign {
        return Err(io::Error::other(format!(
            "the kernel did not answer for network namespace id {ns} (IFA_TARGET_NETNSID, Linux >= 4.20)"
        )));
    }
    Ok(out)
}

/// How pods were matched to veths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// The veth of each pod that has one.
    pub hooked: BTreeMap<ObjectRef, String>,
    /// Veths that claim a pod's address they cannot be given, with the pods they claim:
    /// the datapath drops what they carry.
    pub quarantined: BTreeMap<String, BTreeSet<ObjectRef>>,
}

/// Matches `pods` (each with its addresses) to veths. `routes` are the node's host routes
/// (address -> interface), `links` the pods' veths, `before` the last resolution's veths,
/// `declared` the node-side interfaces the CNI plugin reported for a pod (the runtime's
/// word, above every other evidence).
pub fn resolve(
    pods: &[(ObjectRef, Vec<IpAddr>)],
    routes: &BTreeMap<IpAddr, String>,
    links: &[PodLink],
    before: &BTreeMap<ObjectRef, String>,
    declared: &BTreeMap<ObjectRef, Vec<String>>,
) -> Resolution {
    let veths: BTreeSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
    let mut claimants: BTreeMap<IpAddr, BTreeSet<&str>> = BTreeMap::new();
    for l in links {
        for ip in &l.claims {
            claimants.entry(*ip).or_default().insert(&l.name);
        }
    }
    // The pods whose addresses each veth claims: an honest pod claims only its own.
    let mut claimed_by: BTreeMap<&str, BTreeSet<&ObjectRef>> = BTreeMap::new();
    for (pod, ips) in pods {
        for c in ips.iter().filter_map(|ip| claimants.get(ip)).flatten() {
            claimed_by.entry(c).or_default().insert(pod);
        }
    }
    let mut chosen: BTreeMap<&ObjectRef, &str> = BTreeMap::new();
    for (pod, ips) in pods {
        // A bridge plugin reports its bridge beside the veth: only a pod veth counts.
        let by_cni = declared.get(pod).and_then(|names| {
            let mut v = names
                .iter()
                .map(String::as_str)
                .filter(|n| veths.contains(n));
            match (v.next(), v.next()) {
                (Some(one), None) => Some(one),
                _ => None,
            }
        });
        let by_route =
            by_cni.or_else(|| ips.iter().find_map(|ip| routes.get(ip)).map(String::as_str));
        let candidates: BTreeSet<&str> = ips
            .iter()
            .filter_map(|ip| claimants.get(ip))
            .flatten()
            .copied()
            .collect();
        let honest: Vec<&str> = candidates
            .iter()
            .copied()
            .filter(|c| claimed_by.get(c).is_some_and(|p| p.len() == 1))
            .collect();
        // A route to a link that is not a pod veth (a CNI whose pod link has no peer in
        // another namespace) is the only evidence there is.
        // A veth belongs to one pod for its whole life: the one it held stays its own,
        // whatever addresses the pod puts on it since (else a pod could unhook itself by
        // changing its address).
        let kept = before
            .get(pod)
            .map(String::as_str)
            .filter(|b| veths.contains(b));
        let pick = match by_route.or(kept) {
            Some(r) => Some(r),
            None if candidates.len() == 1 => candidates.first().copied(),
            None if honest.len() == 1 => Some(honest[0]),
            None => None,
        };
        if let Some(v) = pick {
            claimed_by.entry(v).or_default().insert(pod);
            chosen.insert(pod, v);
        }
    }
    // A veth chosen for two pods holds neither: which one it is, nothing here can tell.
    let mut chosen_by: BTreeMap<&str, usize> = BTreeMap::new();
    for v in chosen.values() {
        *chosen_by.entry(v).or_default() += 1;
    }
    let mut out = Resolution::default();
    for (pod, v) in &chosen {
        if chosen_by[v] == 1 {
            out.hooked.insert((*pod).clone(), v.to_string());
        }
    }
    let won: BTreeSet<&str> = out.hooked.values().map(String::as_str).collect();
    for (v, pods) in claimed_by {
        if !won.contains(v) && veths.contains(v) {
            out.quarantined
                .insert(v.to_string(), pods.into_iter().cloned().collect());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> ObjectRef {
        ObjectRef {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn link(name: &str, claims: &[&str]) -> PodLink {
        PodLink {
            name: name.into(),
            claims: claims.iter().map(|c| ip(c)).collect(),
        }
    }

    #[test]
    fn bridged_pods_are_found_by_their_peers_addresses() {
        let pods = vec![
            (pod("a"), vec![ip("10.244.1.10"), ip("fd00::a")]),
            (pod("b"), vec![ip("10.244.1.11")]),
            (pod("elsewhere"), vec![ip("10.244.2.10")]),
        ];
        let links = [
            link("veth1", &["10.244.1.10", "fd00::a"]),
            link("veth2", &["10.244.1.11"]),
        ];
        let r = resolve(
            &pods,
            &BTreeMap::new(),
            &links,
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert_eq!(r.hooked.len(), 2);
        assert_eq!(r.hooked[&pod("a")], "veth1");
        assert_eq!(r.hooked[&pod("b")], "veth2");
        assert!(r.quarantined.is_empty());
    }

    #[test]
    fn the_cni_plugins_word_outweighs_routes_and_claims() {
        let pods = vec![(pod("new"), vec![ip("10.244.1.10")])];
        let links = [
            link("veth1", &["10.244.1.10"]),
            link("veth9", &["10.244.1.10"]),
        ];
        let routes = BTreeMap::from([(ip("10.244.1.10"), "veth9".to_string())]);
        let declared =
            BTreeMap::from([(pod("new"), vec!["cni0".to_string(), "veth1".to_string()])]);
        let r = resolve(&pods, &routes, &links, &BTreeMap::new(), &declared);
        assert_eq!(r.hooked[&pod("new")], "veth1");
        assert_eq!(r.quarantined.keys().collect::<Vec<_>>(), vec!["veth9"]);
    }

    #[test]
    fn a_host_route_outweighs_any_claim() {
        let pods = vec![(pod("victim"), vec![ip("10.244.1.10")])];
        let routes = BTreeMap::from([(ip("10.244.1.10"), "veth1".to_string())]);
        // The attacker's peer claims the victim's address; the node's route says where
        // it lives.
        let links = [
            link("veth1", &["10.244.1.10"]),
            link("veth9", &["10.244.1.10"]),
        ];
        let r = resolve(&pods, &routes, &links, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(r.hooked[&pod("victim")], "veth1");
        assert_eq!(
            r.quarantined,
            BTreeMap::from([("veth9".to_string(), BTreeSet::from([pod("victim")]))])
        );
    }

    #[test]
    fn a_second_claimant_does_not_take_a_pod_over() {
        let pods = vec![
            (pod("victim"), vec![ip("10.244.1.10")]),
            (pod("attacker"), vec![ip("10.244.1.20")]),
        ];
        let links = [
            link("veth1", &["10.244.1.10"]),
            link("veth9", &["10.244.1.20", "10.244.1.10"]),
        ];
        let before = BTreeMap::from([(pod("victim"), "veth1".to_string())]);
        let r = resolve(&pods, &BTreeMap::new(), &links, &before, &BTreeMap::new());
        assert_eq!(r.hooked[&pod("victim")], "veth1");
        // The attacker keeps its own pod: its veth drops the victim's address as spoofed.
        assert_eq!(r.hooked[&pod("attacker")], "veth9");
        assert!(r.quarantined.is_empty());
    }

    #[test]
    fn a_veth_claiming_two_pods_loses_the_contested_one() {
        let pods = vec![
            (pod("new"), vec![ip("10.244.1.10")]),
            (pod("attacker"), vec![ip("10.244.1.20")]),
        ];
        let links = [
            link("veth1", &["10.244.1.10"]),
            link("veth9", &["10.244.1.20", "10.244.1.10"]),
        ];
        let r = resolve(
            &pods,
            &BTreeMap::new(),
            &links,
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert_eq!(r.hooked[&pod("new")], "veth1");
        assert_eq!(r.hooked[&pod("attacker")], "veth9");
        assert!(r.quarantined.is_empty());
    }

    #[test]
    fn a_pod_that_drops_its_address_keeps_its_veth() {
        let pods = vec![(pod("a"), vec![ip("10.244.1.10")])];
        let before = BTreeMap::from([(pod("a"), "veth1".to_string())]);
        for claims in [&[][..], &["10.244.1.50"], &["10.244.9.9", "10.244.1.51"]] {
            let links = [link("veth1", claims)];
            let r = resolve(&pods, &BTreeMap::new(), &links, &before, &BTreeMap::new());
            assert_eq!(r.hooked[&pod("a")], "veth1", "{claims:?}");
        }
        // Until the veth is gone.
        let r = resolve(&pods, &BTreeMap::new(), &[], &before, &BTreeMap::new());
        assert!(r.hooked.is_empty());
    }

    #[test]
    fn a_claim_contested_from_the_start_quarantines_every_claimant() {
        let pods = vec![(pod("new"), vec![ip("10.244.1.10")])];
        let links = [
            link("veth1", &["10.244.1.10"]),
            link("veth9", &["10.244.1.10"]),
        ];
        let r = resolve(
            &pods,
            &BTreeMap::new(),
            &links,
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert!(r.hooked.is_empty());
        assert_eq!(r.quarantined.len(), 2);
    }

    #[test]
    fn a_veth_that_is_the_only_claimant_of_two_pods_holds_neither() {
        let pods = vec![
            (pod("a"), vec![ip("10.244.1.10")]),
            (pod("b"), vec![ip("10.244.1.11")]),
        ];
        let links = [link("veth9", &["10.244.1.10", "10.244.1.11"])];
        let r = resolve(
            &pods,
            &BTreeMap::new(),
            &links,
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert!(r.hooked.is_empty());
        assert_eq!(r.quarantined["veth9"], BTreeSet::from([pod("a"), pod("b")]));
    }

    #[test]
    fn a_route_to_a_link_without_a_peer_still_hooks() {
        let pods = vec![(pod("a"), vec![ip("10.244.1.10")])];
        let routes = BTreeMap::from([(ip("10.244.1.10"), "vp0".to_string())]);
        let r = resolve(&pods, &routes, &[], &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(r.hooked[&pod("a")], "vp0");
    }

    #[test]
    fn veths_claiming_nothing_known_are_left_alone() {
        let pods = vec![(pod("a"), vec![ip("10.244.1.10")])];
        let links = [
            link("veth1", &["10.244.1.10"]),
            link("veth2", &["10.244.1.99"]),
        ];
        let r = resolve(
            &pods,
            &BTreeMap::new(),
            &links,
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert_eq!(r.hooked.len(), 1);
        assert!(r.quarantined.is_empty());
    }
}
