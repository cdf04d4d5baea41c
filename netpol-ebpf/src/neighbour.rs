//! Neighbour discovery: what a pod may say about itself on its link, whatever its policy.

use netpol_common::{Addr, IFACE_HAS_V4, IFACE_HAS_V6, IfaceInfo};

use crate::maps::{endpoint, is_node};
use crate::parse::{self, Icmp, Packet};

#[inline(always)]
pub fn own_address(iface: &IfaceInfo, a: &Addr) -> bool {
    (iface.flags & IFACE_HAS_V4 != 0 && *a == iface.addr4)
        || (iface.flags & IFACE_HAS_V6 != 0 && *a == iface.addr6)
}

/// Neighbour discovery and multicast listener messages a pod sends about itself: hop
/// limits as RFC 4861 / 2710 require (so nothing routed qualifies), from its own address,
/// a link-local one or `::`, and advertising only its own addresses.
#[inline(always)]
pub fn own_neighbour_message(iface: &IfaceInfo, p: &Packet) -> bool {
    let own_or_ll = |a: &Addr| own_address(iface, a) || parse::is_link_local_or_unspecified(a);
    match p.icmp {
        Icmp::Neighbour => {
            p.hop_limit == 255 && own_or_ll(&p.src) && own_target(iface, p) && on_link(&p.dst)
        }
        Icmp::Listener => {
            p.hop_limit == 1
                && parse::is_link_local_or_unspecified(&p.src)
                && is_link_multicast(&p.dst)
        }
        _ => false,
    }
}

/// `ff02::/16`: link-scope multicast, where listener reports go.
#[inline(always)]
fn is_link_multicast(dst: &Addr) -> bool {
    dst.0[0] == 0xff && dst.0[1] & 0x0f == 0x02
}

/// A neighbour advertisement names one of the sender's own addresses (or a link-local
/// one); other messages carry no claim.
#[inline(always)]
pub fn own_target(iface: &IfaceInfo, p: &Packet) -> bool {
    let t = &p.nd_target;
    u128::from_be_bytes(t.0) == 0 || own_address(iface, t) || parse::is_link_local_or_unspecified(t)
}

/// Where neighbour discovery may go: link-scope multicast, link-local addresses, the
/// node (a routed veth's only neighbour), or another pod of this node (its neighbour on a
/// bridged CNI: answers to its solicitations, reachability probes). Anything else, a
/// remote or external address above all, is judged by policy.
#[inline(always)]
pub fn on_link(dst: &Addr) -> bool {
    is_link_multicast(dst)
        || parse::is_link_local_or_unspecified(dst)
        || is_node(dst)
        || endpoint(dst).is_some()
}

/// Neighbour discovery towards a pod, as only its link can send it.
#[inline(always)]
pub fn link_message(p: &Packet) -> bool {
    match p.icmp {
        Icmp::Neighbour | Icmp::Router => p.hop_limit == 255,
        Icmp::Listener => p.hop_limit == 1,
        _ => false,
    }
}

/// A packet for someone else than the pod: unicast (in its frame and its address) and
/// not one of its addresses. A subnet broadcast arrives in a broadcast frame.
#[inline(always)]
pub fn not_for(iface: &IfaceInfo, p: &Packet) -> bool {
    if p.eth_group {
        return false;
    }
    let dst = &p.dst;
    let multicast = if dst.is_v4() {
        dst.0[12] & 0xf0 == 0xe0
            || u32::from_be_bytes([dst.0[12], dst.0[13], dst.0[14], dst.0[15]]) == u32::MAX
    } else {
        dst.0[0] == 0xff
    };
    !multicast && !own_address(iface, dst)
}
