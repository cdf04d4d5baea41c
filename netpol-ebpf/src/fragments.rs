//! Fragments: later fragments have no ports, so each hook records the ports of a first
//! fragment that passed, and later fragments of the same datagram take them (and with
//! them the first fragment's verdict).

use netpol_common::{FragKey, FragPorts, reason};

use crate::maps::FRAGMENTS;
use crate::parse::{Frag, Packet};

#[inline(always)]
pub fn frag_key(p: &Packet, id: u32, hook: u8) -> FragKey {
    FragKey {
        src: p.src,
        dst: p.dst,
        id,
        proto: p.frag_next,
        hook,
        _pad: [0; 2],
    }
}

/// `FragKey::hook` values.
pub const AT_FROM_POD: u8 = 0;
pub const AT_TO_POD: u8 = 1;
pub const AT_UPLINK: u8 = 2;

/// A later fragment takes the ports its first fragment recorded. False: none recorded.
#[inline(always)]
pub fn fragment_ports(p: &mut Packet, hook: u8) -> bool {
    let Frag::Later(id) = p.frag else {
        return true;
    };
    // SAFETY: plain-data value, copied out.
    match unsafe { FRAGMENTS.get(frag_key(p, id, hook)) } {
        Some(ports) => {
            p.sport = ports.sport;
            p.dport = ports.dport;
            p.proto = ports.proto;
            true
        }
        None => false,
    }
}

/// A first fragment that passed records its ports for the rest of the datagram.
#[inline(always)]
pub fn record_first_fragment(p: &Packet, why: usize, hook: u8) {
    if let Frag::First(id) = p.frag
        && why < reason::FIRST_DROP
    {
        let ports = FragPorts {
            sport: p.sport,
            dport: p.dport,
            proto: p.proto,
            _pad: [0; 3],
        };
        let _ = FRAGMENTS.insert(frag_key(p, id, hook), ports, 0);
    }
}
