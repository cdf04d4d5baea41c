//! Local clients' connections to Service ports. The client's veth sees the Service
//! address; its egress is decided after translation, where the backend is known; replies
//! come back from the Service address. `SERVICE_FLOWS` ties the three together, so a
//! reply from the Service passes only while the client's rules still allow the backend
//! its connection went to.

use netpol_common::{Addr, CT_UNDECIDED, ServiceFlow, ServiceFlowKey};

use crate::maps::SERVICE_FLOWS;
use crate::parse::Packet;
use crate::verdict::{Sets, allowed};

#[inline(always)]
fn key(client: &Addr, client_port: u16, proto: u8) -> ServiceFlowKey {
    ServiceFlowKey {
        client: *client,
        client_port,
        proto,
        _pad: 0,
    }
}

/// The client (sender of `p`) opens a connection to a Service port.
#[inline(always)]
pub fn remember(p: &Packet) {
    let flow = ServiceFlow {
        service: p.dst,
        backend: Addr([0; 16]),
        service_port: p.dport,
        backend_port: 0,
        egress_set: CT_UNDECIDED,
        has_backend: 0,
        _pad: [0; 7],
    };
    let _ = SERVICE_FLOWS.insert(key(&p.t_src, p.sport, p.proto), flow, 0);
}

/// After translation, `p` goes from a local client to the backend the translation chose,
/// allowed by the client's egress rule set `egress_set`.
#[inline(always)]
pub fn learn_backend(p: &Packet, egress_set: u32) {
    if let Some(f) = SERVICE_FLOWS.get_ptr_mut(key(&p.t_src, p.sport, p.proto)) {
        // SAFETY: valid map value pointer for this run; plain data.
        let f = unsafe { &mut *f };
        f.backend = p.t_dst;
        f.backend_port = p.dport;
        f.egress_set = egress_set;
        f.has_backend = 1;
    }
}

/// Does the client's egress still allow the backend behind `service:service_port`? A
/// connection whose backend is not known (it predates tracking, or the table lost it)
/// is left to its Service entry.
#[inline(always)]
pub fn still_allowed(
    client: &Addr,
    client_port: u16,
    service: &Addr,
    service_port: u16,
    proto: u8,
    client_sets: Sets,
) -> bool {
    let Some(f) = SERVICE_FLOWS.get_ptr_mut(key(client, client_port, proto)) else {
        return true;
    };
    // SAFETY: valid map value pointer for this run; plain data.
    let f = unsafe { &mut *f };
    if f.has_backend == 0 || f.service != *service || f.service_port != service_port {
        return true;
    }
    if f.egress_set == client_sets.egress {
        return true;
    }
    if allowed(client_sets.egress, &f.backend, proto, f.backend_port) {
        f.egress_set = client_sets.egress;
        return true;
    }
    false
}
