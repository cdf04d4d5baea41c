//! The decision for one local endpoint on one side of a packet.
//!
//! Each local endpoint keeps its own conntrack entries: `dir` says whether it opened the
//! connection (egress) or accepted it (ingress), and the entry remembers the rule set it
//! was allowed under, so a policy change re-decides existing connections.

use aya_ebpf::maps::lpm_trie::Key;
use netpol_common::{
    Addr, CT_DIR_EGRESS, CT_DIR_INGRESS, CtKey, CtValue, EndpointInfo, IFACE_HAS_V4, IFACE_HAS_V6,
    IfaceInfo, PORTSET_ALL, PORTSET_NONE, PROTO_TCP, PeerKey, RULESET_ALLOW_ALL, RULESET_ID_BITS,
    reason,
};

use crate::{CONNTRACK, PEERS_CIDR, PEERS_EXACT, PORTSETS, parse::Flow};

#[inline(always)]
pub fn sent_from_own_address(iface: &IfaceInfo, flow: &Flow) -> bool {
    (iface.flags & IFACE_HAS_V4 != 0 && flow.src == iface.addr4)
        || (iface.flags & IFACE_HAS_V6 != 0 && flow.src == iface.addr6)
}

/// Does rule set `set` allow `peer` on `proto`/`port`?
#[inline(always)]
fn allowed(set: u32, peer: &Addr, proto: u8, port: u16) -> bool {
    if set == RULESET_ALLOW_ALL {
        return true;
    }
    let key = PeerKey::new(set, *peer);
    // SAFETY (both lookups): plain-data values, copied out.
    let portset = match unsafe { PEERS_EXACT.get(key) } {
        Some(p) => *p,
        None => match PEERS_CIDR.get(Key::new(RULESET_ID_BITS + 128, key)) {
            Some(p) => *p,
            None => return false,
        },
    };
    match portset {
        PORTSET_ALL => true,
        PORTSET_NONE => false,
        // SAFETY: plain-data value.
        id => match unsafe { PORTSETS.get(id) } {
            Some(ports) => ports.allows(proto, port),
            None => false,
        },
    }
}

/// The endpoint sends `flow`: its egress policy, or the reply of something it accepted.
#[inline(always)]
pub fn sender_side(ep: &EndpointInfo, flow: &Flow) -> usize {
    decide(
        Side {
            endpoint: flow.src,
            peer: flow.dst,
            endpoint_port: flow.sport,
            peer_port: flow.dport,
            forward_dir: CT_DIR_EGRESS,
            forward_set: ep.egress_set,
            reverse_set: ep.ingress_set,
            drop: reason::DROP_EGRESS,
        },
        flow,
    )
}

/// The endpoint receives `flow`: its ingress policy, or the reply of something it opened.
#[inline(always)]
pub fn receiver_side(ep: &EndpointInfo, flow: &Flow) -> usize {
    decide(
        Side {
            endpoint: flow.dst,
            peer: flow.src,
            endpoint_port: flow.dport,
            peer_port: flow.sport,
            forward_dir: CT_DIR_INGRESS,
            forward_set: ep.ingress_set,
            reverse_set: ep.egress_set,
            drop: reason::DROP_INGRESS,
        },
        flow,
    )
}

/// A connection towards a Service address: its egress is decided after translation, but
/// its replies come back from the Service address and must match a tracked connection.
#[inline(always)]
pub fn track_service_open(ep: &EndpointInfo, flow: &Flow) {
    let key = CtKey {
        endpoint: flow.src,
        peer: flow.dst,
        endpoint_port: flow.sport,
        peer_port: flow.dport,
        proto: flow.proto,
        dir: CT_DIR_EGRESS,
        _pad: [0; 2],
    };
    let _ = CONNTRACK.insert(
        key,
        CtValue {
            ruleset: ep.egress_set,
            _pad: 0,
        },
        0,
    );
}

struct Side {
    endpoint: Addr,
    peer: Addr,
    endpoint_port: u16,
    peer_port: u16,
    forward_dir: u8,
    forward_set: u32,
    reverse_set: u32,
    drop: usize,
}

#[inline(always)]
fn decide(s: Side, flow: &Flow) -> usize {
    let reverse_dir = CT_DIR_EGRESS + CT_DIR_INGRESS - s.forward_dir;
    let mut key = CtKey {
        endpoint: s.endpoint,
        peer: s.peer,
        endpoint_port: s.endpoint_port,
        peer_port: s.peer_port,
        proto: flow.proto,
        dir: s.forward_dir,
        _pad: [0; 2],
    };
    let mut seen = false;
    // SAFETY (both lookups): plain-data values, copied out.
    if let Some(v) = unsafe { CONNTRACK.get(key) } {
        if v.ruleset == s.forward_set {
            return reason::ALLOW_TRACKED;
        }
        seen = true;
    }
    // A TCP SYN opens a connection in the forward direction: it must never ride on an
    // entry of the reverse direction (that would let a peer turn a reply into an open).
    if !flow.tcp_open {
        key.dir = reverse_dir;
        if let Some(v) = unsafe { CONNTRACK.get(key) } {
            if v.ruleset == s.reverse_set {
                return reason::ALLOW_TRACKED;
            }
            seen = true;
        }
    }

    // The policy port is always the destination port of the packet: the peer's port when
    // the endpoint sends, its own when it receives.
    if allowed(s.forward_set, &s.peer, flow.proto, flow.dport) {
        key.dir = s.forward_dir;
        let _ = CONNTRACK.insert(
            key,
            CtValue {
                ruleset: s.forward_set,
                _pad: 0,
            },
            0,
        );
        return if s.forward_set == RULESET_ALLOW_ALL {
            reason::ALLOW_UNISOLATED
        } else {
            reason::ALLOW_POLICY
        };
    }

    // Replies of connections opened before we tracked them (agent start, or a rule set
    // change): allowed if the reverse direction would be allowed as new. TCP can tell a
    // reply from an open; other protocols only when a (stale) entry shows the flow existed.
    let may_be_reply = if flow.proto == PROTO_TCP {
        !flow.tcp_open
    } else {
        seen
    };
    if may_be_reply && allowed(s.reverse_set, &s.peer, flow.proto, flow.sport) {
        key.dir = reverse_dir;
        let _ = CONNTRACK.insert(
            key,
            CtValue {
                ruleset: s.reverse_set,
                _pad: 0,
            },
            0,
        );
        return reason::ALLOW_LATE_REPLY;
    }
    s.drop
}
