//! Local clients' connections to Service ports. The client's veth sees the Service
//! address; its egress is decided after translation, where the backend is known; replies
//! come back from the Service address. A record per client port (`ServiceFlow`) ties the
//! three together: a reply from the Service passes only while the client's rules still
//! allow every backend that port's connections went to. Without a record it is dropped:
//! nothing then says which backend answered.
//!
//! Records wait in `SERVICE_FLOWS_NEW` until their connection's first reply, then live
//! in `SERVICE_FLOWS`: a pod flooding new connections churns only unreplied ones.

use netpol_common::{
    Addr, CT_UNDECIDED, CtKey, RULESET_ORDERED, SERVICE_FLOW_SLOTS, ServiceFlow, ServiceFlowKey,
    ServiceTarget, ct_lifetime_ns,
};

use crate::clock::now;

use crate::maps::{
    CONNTRACK, CONNTRACK_NEW, FLOW_SCRATCH, SERVICE_FLOWS, SERVICE_FLOWS_NEW, is_node,
};
use crate::parse::Packet;
use crate::verdict::{Sets, allowed_as, node_alias};

#[inline(always)]
fn key(client: &Addr, client_port: u16, proto: u8) -> ServiceFlowKey {
    ServiceFlowKey {
        client: *client,
        client_port,
        proto,
        _pad: 0,
    }
}

#[inline(always)]
fn target(addr: &Addr, port: u16) -> ServiceTarget {
    ServiceTarget {
        addr: *addr,
        port,
        _pad: 0,
    }
}

/// The record of `k`, replied connections' first.
#[inline(always)]
fn record(k: &ServiceFlowKey) -> Option<&'static mut ServiceFlow> {
    let f = match SERVICE_FLOWS.get_ptr_mut(k) {
        Some(f) => f,
        None => SERVICE_FLOWS_NEW.get_ptr_mut(k)?,
    };
    // SAFETY: valid map value pointer for this program run; plain data.
    Some(unsafe { &mut *f })
}

#[inline(always)]
fn holds(list: &[ServiceTarget; SERVICE_FLOW_SLOTS], len: u8, t: &ServiceTarget) -> bool {
    for (i, x) in list.iter().enumerate() {
        if i >= len as usize {
            break;
        }
        if x.addr == t.addr && x.port == t.port {
            return true;
        }
    }
    false
}

/// Does a connection from `client:port` to one of the record's Services other than
/// `except` still have a conntrack entry?
#[inline(always)]
fn others_open(
    f: &ServiceFlow,
    client: &Addr,
    port: u16,
    proto: u8,
    except: &ServiceTarget,
) -> bool {
    for (i, s) in f.services.iter().enumerate() {
        if i >= f.services_len as usize {
            break;
        }
        if s.addr == except.addr && s.port == except.port {
            continue;
        }
        let (k, _) = CtKey::of(client, &s.addr, port, s.port, proto);
        // SAFETY: plain-data values, copied out.
        let entry = unsafe { CONNTRACK.get(k).or_else(|| CONNTRACK_NEW.get(k)) }.copied();
        if let Some(e) = entry
            && now().saturating_sub(e.last_seen_ns) <= ct_lifetime_ns(proto, e.flags)
        {
            return true;
        }
    }
    false
}

/// Makes `f` the record of one connection to `service`, no backend known yet (what lies
/// beyond the lengths is never read).
#[inline(always)]
fn start(f: &mut ServiceFlow, service: ServiceTarget) {
    f.services[0] = service;
    f.services_len = 1;
    f.backends_len = 0;
    f.overflow = 0;
    f.refused = 0;
    f.egress_set = CT_UNDECIDED;
}

/// The client (sender of `p`) opens a connection to a Service port. False when its port
/// already talks to as many other Services as a record holds: the connection cannot be
/// checked, and must not open.
// By reference: a record copied by value would land on the BPF stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
pub fn remember(p: &Packet) -> bool {
    let k = key(&p.t_src, p.sport, p.proto);
    let service = target(&p.dst, p.dport);
    let Some(f) = record(&k) else {
        // Built in place (a record is too big for the BPF stack).
        let Some(blank) = FLOW_SCRATCH.get_ptr_mut(0) else {
            return false;
        };
        // SAFETY: this CPU's scratch value, valid for the run.
        let blank = unsafe { &mut *blank };
        start(blank, service);
        return SERVICE_FLOWS_NEW.insert(k, &*blank, 0).is_ok();
    };
    if !others_open(f, &p.t_src, p.sport, p.proto, &service) {
        if holds(&f.services, f.services_len, &service) {
            // Every connection to another Service from this port is over, but this
            // Service's may not be: our entry can be gone (a drop forgets it) while the
            // kernel still translates the port's packets to a backend learnt before. Its
            // backends stay until a translation replaces them.
            f.services[0] = service;
            f.services_len = 1;
            return true;
        }
        // Every earlier connection from this port is over: their backends no longer
        // answer here.
        start(f, service);
        return true;
    }
    if holds(&f.services, f.services_len, &service) {
        return true;
    }
    match f.services.get_mut(f.services_len as usize) {
        Some(slot) => {
            *slot = service;
            f.services_len += 1;
            true
        }
        None => false,
    }
}

/// After translation, `p` goes from a local client to the backend the translation chose,
/// allowed by the client's egress rule set `egress_set` (`CT_UNDECIDED`: denied).
/// `translated`: the packet was decided after translation here (a new connection whose
/// tuple no hook tracked: a direct packet's tuple has the entry its veth made), so for a
/// port that talks to one Service it is that Service's current backend and replaces the
/// earlier ones (one kernel translation per tuple at a time). Otherwise, or when the port
/// talks to several Services, backends add up: the packet may be a direct one, and no
/// direct packet may push a Service's backend out.
#[inline(always)]
pub fn learn_backend(p: &Packet, egress_set: u32, translated: bool) {
    let Some(f) = record(&key(&p.t_src, p.sport, p.proto)) else {
        return;
    };
    let backend = target(&p.t_dst, p.dport);
    if translated && f.services_len == 1 && f.overflow == 0 {
        f.backends[0] = backend;
        f.backends_len = 1;
        f.egress_set = egress_set;
        f.refused = 0;
        return;
    }
    if !holds(&f.backends, f.backends_len, &backend) {
        match f.backends.get_mut(f.backends_len as usize) {
            Some(slot) => *slot = backend,
            None => {
                f.overflow = 1;
                return;
            }
        }
        f.backends_len += 1;
        if f.backends_len == 1 {
            f.egress_set = egress_set;
            return;
        }
    }
    if f.egress_set != egress_set {
        // Allowed under different sets: check them all at the next reply.
        f.egress_set = CT_UNDECIDED;
    }
}

/// A backend refused the client's new connection (its ingress): nothing it sends back
/// through the Service is a reply of an allowed connection, so the record drops replies
/// until a later translation of a one-Service port goes to another backend.
/// `translated` as for `learn_backend`.
#[inline(always)]
pub fn refuse(p: &Packet, translated: bool) {
    learn_backend(p, CT_UNDECIDED, translated);
    if let Some(f) = record(&key(&p.t_src, p.sport, p.proto)) {
        f.refused = 1;
    }
}

/// Does the client's egress still allow every backend behind its port's Services? A
/// record that never learnt a backend went to this node itself without a socket taking
/// the packet in (`to_node` learns the others): the node's own answer, a reset or an
/// unreachable. NetworkPolicy alone lets a pod reach its own node: under an unordered set
/// a backend at a node address passes (the exemption `to_node` applies to its packets).
#[inline(always)]
pub fn still_allowed(
    client: &Addr,
    client_port: u16,
    service: &Addr,
    service_port: u16,
    proto: u8,
    client_sets: Sets,
) -> bool {
    let Some(f) = record(&key(client, client_port, proto)) else {
        return false;
    };
    if f.overflow != 0
        || f.refused != 0
        || !holds(&f.services, f.services_len, &target(service, service_port))
    {
        return false;
    }
    if f.backends_len == 0 || f.egress_set == client_sets.egress {
        return true;
    }
    for (i, b) in f.backends.iter().enumerate() {
        if i >= f.backends_len as usize {
            break;
        }
        let exempt = client_sets.egress & RULESET_ORDERED == 0 && is_node(&b.addr);
        // A backend at another address of the node is judged as `to_node` judged it.
        let node = node_alias(client_sets.egress, &b.addr);
        let by_rule = allowed_as(client_sets.egress, &b.addr, node.as_ref(), proto, b.port);
        if !exempt && by_rule.is_none() {
            return false;
        }
    }
    f.egress_set = client_sets.egress;
    true
}

/// The client's connection got its first reply: its record joins the replied ones.
#[allow(clippy::needless_borrows_for_generic_args)] // see `remember`
#[inline(always)]
pub fn replied(client: &Addr, client_port: u16, proto: u8) {
    let k = key(client, client_port, proto);
    let Some(f) = SERVICE_FLOWS_NEW.get_ptr(k) else {
        return;
    };
    // SAFETY: valid map value pointer for this run; copied by the map from there.
    if SERVICE_FLOWS.insert(k, unsafe { &*f }, 0).is_ok() {
        let _ = SERVICE_FLOWS_NEW.remove(k);
    } else {
        crate::log::insert_failed(crate::log::SERVICE_FLOWS);
    }
}
