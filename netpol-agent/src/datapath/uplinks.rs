//! Where pod traffic leaves the node, when no `--uplink` is given: every interface that a
//! route (any table but `local`, IPv4 and IPv6) towards a network leaves by, default routes
//! and routes towards other nodes' pods (a VXLAN device, a second NIC) alike. Host routes
//! (/32, /128) are how a routed CNI reaches its pods, so they do not count, and neither do
//! the pods' own links: their veths, and the bridges those are ports of. (Being a veth
//! says nothing: a kind node's eth0 is one.) The datapath parses Ethernet frames, so a
//! layer-3 device (WireGuard, IPIP, tun) is refused, with a reason.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::pod_links::Link;
use super::rtnl::dump;

/// The interface index of every unicast route's way out, in every routing table but
/// `local` (policy routing sends pods out by tables of their own, as the AWS VPC CNI
/// does for secondary interfaces), both families; routes through nexthop objects
/// included.
pub fn route_interfaces() -> io::Result<BTreeSet<u32>> {
    let mut out = BTreeSet::new();
    let mut via_objects = BTreeSet::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        let got = dump(RouteNetlinkMessage::GetRoute(req), |msg| {
            if let RouteNetlinkMessage::NewRoute(m) = msg {
                let (ways, object) = ways_out(&m);
                out.extend(ways);
                via_objects.extend(object);
            }
        });
        match got {
            Ok(()) => {}
            // A kernel without IPv6.
            Err(e)
                if family == AddressFamily::Inet6
                    && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
            Err(e) => return Err(e),
        }
    }
    if !via_objects.is_empty() {
        let objects = super::nexthops::dump()?;
        out.extend(
            via_objects
                .iter()
                .flat_map(|id| super::nexthops::interfaces(&objects, *id)),
        );
    }
    Ok(out)
}

/// The interfaces a route leaves by, and the nexthop object it uses, if any.
fn ways_out(m: &RouteMessage) -> (Vec<u32>, Option<u32>) {
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table));
    if table == u32::from(RT_TABLE_LOCAL) || m.header.kind != RouteType::Unicast {
        return (Vec::new(), None);
    }
    // A CNI's route to one pod is direct; a host route through a gateway leaves the node.
    let via_gateway = m
        .attributes
        .iter()
        .any(|a| matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Via(_)));
    let host_route = !via_gateway
        && match m.header.address_family {
            AddressFamily::Inet => m.header.destination_prefix_length == 32,
            _ => m.header.destination_prefix_length == 128,
        };
    // Every IPv6 interface has a route to fe80::/64 (IPv4's 169.254/16 is alike): the
    // link itself, not a way out of the node.
    let link_local = host_route
        || m.attributes.iter().any(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => {
                d.segments()[0] & 0xffc0 == 0xfe80
            }
            RouteAttribute::Destination(RouteAddress::Inet(d)) => d.is_link_local(),
            _ => false,
        });
    if link_local {
        return (Vec::new(), None);
    }
    let ways = m
        .attributes
        .iter()
        .flat_map(|a| match a {
            RouteAttribute::Oif(i) => vec![*i],
            RouteAttribute::MultiPath(hops) => hops.iter().map(|h| h.interface_index).collect(),
            _ => Vec::new(),
        })
        .collect();
    let object = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::NhId(id) => Some(*id),
        _ => None,
    });
    (ways, object)
}

/// `RT_TABLE_LOCAL`: the node's own addresses, never a way out.
const RT_TABLE_LOCAL: u8 = 255;

/// The uplinks found, and the interfaces refused (name -> why).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub uplinks: Vec<String>,
    pub refused: BTreeMap<String, String>,
}

/// Picks the uplinks among `links` from the interfaces routes leave by; `pod_veths` are
/// the veths known to be pods'.
pub fn pick(links: &[Link], route_ifs: &BTreeSet<u32>, pod_veths: &BTreeSet<&str>) -> Found {
    let pod_bridges: BTreeSet<u32> = links
        .iter()
        .filter(|l| l.peer.is_some())
        .filter_map(|l| l.controller)
        .collect();
    let mut out = Found::default();
    for l in links {
        // A pod bridge's other ports (a NIC enslaved to it) carry pod traffic out of the
        // node without any route naming them.
        let bridge_port_out = l
            .controller
            .is_some_and(|c| pod_bridges.contains(&c) && route_ifs.contains(&c))
            && l.peer.is_none();
        if !(route_ifs.contains(&l.index) || bridge_port_out)
            || l.name == "lo"
            || pod_veths.contains(l.name.as_str())
            || pod_bridges.contains(&l.index)
        {
            continue;
        }
        if l.ethernet {
            out.uplinks.push(l.name.clone());
        } else {
            out.refused.insert(
                l.name.clone(),
                "not an Ethernet device (a layer-3 tunnel such as WireGuard or IPIP): netpol's programs parse Ethernet frames, so pod traffic leaving by it is decided at the pods' veths only".into(),
            );
        }
    }
    out
}

/// Refuses `--uplink` names that are not Ethernet devices.
pub fn check_configured(links: &[Link], names: &[String]) -> Result<(), String> {
    for n in names {
        match links.iter().find(|l| &l.name == n) {
            None => return Err(format!("uplink {n}: no such interface")),
            Some(l) if !l.ethernet => {
                return Err(format!(
                    "uplink {n} is not an Ethernet device (layer-3 devices such as WireGuard, IPIP or tun are not supported: netpol's programs parse Ethernet frames)"
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, ethernet: bool) -> Link {
        Link {
            index,
            name: name.into(),
            ethernet,
            peer: None,
            controller: None,
        }
    }

    #[test]
    fn routes_ways_out_except_the_pods_own_links() {
        let mut veth = link(5, "veth1", true);
        veth.peer = Some((0, 2));
        veth.controller = Some(4);
        // A kind node's eth0 is a veth too.
        let mut eth0 = link(2, "eth0", true);
        eth0.peer = Some((1, 9));
        let mut ptp = link(8, "veth2", true);
        ptp.peer = Some((2, 2));
        let links = vec![
            link(1, "lo", false),
            eth0,
            link(3, "flannel.1", true),
            link(4, "cni0", true),
            veth,
            link(6, "wg0", false),
            link(7, "eth1", true),
            ptp,
            link(9, "eth2", true),
        ];
        let routes = BTreeSet::from([1, 2, 3, 4, 6, 8]);
        let mut links = links;
        // eth2 is a port of the pods' bridge cni0.
        links[8].controller = Some(4);
        let f = pick(&links, &routes, &BTreeSet::from(["veth2"]));
        assert_eq!(f.uplinks, vec!["eth0", "flannel.1", "eth2"]);
        assert_eq!(f.refused.keys().collect::<Vec<_>>(), vec!["wg0"]);
    }

    #[test]
    fn configured_layer_3_uplinks_are_refused() {
        let links = vec![link(2, "eth0", true), link(6, "wg0", false)];
        assert!(check_configured(&links, &["eth0".into()]).is_ok());
        assert!(check_configured(&links, &["wg0".into()]).is_err());
        assert!(check_configured(&links, &["nope".into()]).is_err());
    }
}
