//! Conntrack entries for connections that existed before netpol tracked a pod, from the
//! kernel's evidence (`datapath::kernel_conntrack`). The kernel says who opened each
//! connection and where translation sent it; it does not say whether policy allows it.
//! So every side is seeded undecided: the connection's next packet decides it under the
//! rules in force, exactly as after a policy change. Allowed connections go on; the
//! others stop.

use std::collections::BTreeSet;
use std::net::IpAddr;

use netpol_common::{
    CT_UNDECIDED, CtEntry, CtKey, SERVICE_FLOW_SLOTS, ServiceFlow, ServiceFlowKey, ServiceTarget,
    ct_flag,
};

use super::addr_of;
use crate::datapath::kernel_conntrack::KernelFlow;

/// What to seed: conntrack entries, and for a local client's translated connections the
/// backend they went to (so replies from the Service are checked against the client's
/// rules for that backend).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seeds {
    pub conntrack: Vec<(CtKey, CtEntry)>,
    pub service_flows: Vec<(ServiceFlowKey, ServiceFlow)>,
}

/// Entries for the kernel's connections that involve one of `isolated` (pods about to be
/// isolated). `local` holds every local pod address: a local opener whose connection was
/// translated is decided after translation, and its replies come from the Service.
pub fn seed_entries(
    flows: &[KernelFlow],
    isolated: &BTreeSet<IpAddr>,
    local: &BTreeSet<IpAddr>,
    now_ns: u64,
) -> Seeds {
    let mut seeds = Seeds::default();
    let out = &mut seeds.conntrack;
    for f in flows {
        // The opener as it sent (its own address), the acceptor as it answers (the
        // backend, after DNAT).
        let (opener, oport) = (f.orig.src, f.orig.sport);
        let (acceptor, aport) = (f.reply.src, f.reply.sport);
        if f.closed || !(isolated.contains(&opener) || isolated.contains(&acceptor)) {
            continue;
        }
        let translated = (f.orig.dst, f.orig.dport) != (acceptor, aport);
        let local_opener = local.contains(&opener);
        let mut flags = if f.replied { ct_flag::REPLIED } else { 0 };
        if translated && local_opener {
            flags |= ct_flag::DEFERRED_EGRESS;
        }
        out.push(entry(
            f.proto,
            (opener, oport),
            (acceptor, aport),
            flags,
            now_ns,
        ));
        if translated && local_opener {
            let service = (f.orig.dst, f.orig.dport);
            let flags = ct_flag::SERVICE | if f.replied { ct_flag::REPLIED } else { 0 };
            out.push(entry(f.proto, (opener, oport), service, flags, now_ns));
            let client = ServiceFlowKey {
                client: addr_of(opener),
                client_port: oport,
                proto: f.proto,
                _pad: 0,
            };
            record_backend(
                &mut seeds.service_flows,
                client,
                target(service),
                target((acceptor, aport)),
            );
        }
    }
    seeds
}

fn target((ip, port): (IpAddr, u16)) -> ServiceTarget {
    ServiceTarget {
        addr: addr_of(ip),
        port,
        _pad: 0,
    }
}

/// Adds a Service connection of `client`'s port to its record, as the datapath would
/// have: one record per client port, every Service and backend in it (a record that
/// cannot hold them all is marked overflowed, and its replies are dropped).
fn record_backend(
    records: &mut Vec<(ServiceFlowKey, ServiceFlow)>,
    client: ServiceFlowKey,
    service: ServiceTarget,
    backend: ServiceTarget,
) {
    let at = match records.iter().position(|(k, _)| *k == client) {
        Some(i) => i,
        None => {
            records.push((client, ServiceFlow::default()));
            records.len() - 1
        }
    };
    add_to_record(&mut records[at].1, service, backend);
}

fn add_to_record(f: &mut ServiceFlow, service: ServiceTarget, backend: ServiceTarget) {
    add_item(
        &mut f.services,
        &mut f.services_len,
        service,
        &mut f.overflow,
    );
    add_item(
        &mut f.backends,
        &mut f.backends_len,
        backend,
        &mut f.overflow,
    );
    f.egress_set = CT_UNDECIDED;
}

/// Adds `item` to a record's list unless it is there; a full list overflows the record.
fn add_item(
    list: &mut [ServiceTarget; SERVICE_FLOW_SLOTS],
    len: &mut u8,
    item: ServiceTarget,
    overflow: &mut u8,
) {
    let n = usize::from(*len).min(SERVICE_FLOW_SLOTS);
    if list[..n].contains(&item) {
        return;
    }
    match list.get_mut(n) {
        Some(slot) => {
            *slot = item;
            *len += 1;
        }
        None => *overflow = 1,
    }
}

/// `seeded`'s Services and backends added to a record the datapath already holds; all
/// its backends are checked again at the next reply.
pub fn merge_record(current: &mut ServiceFlow, seeded: &ServiceFlow) {
    let services = seeded
        .services
        .iter()
        .take(usize::from(seeded.services_len));
    for s in services {
        add_item(
            &mut current.services,
            &mut current.services_len,
            *s,
            &mut current.overflow,
        );
    }
    let backends = seeded
        .backends
        .iter()
        .take(usize::from(seeded.backends_len));
    for b in backends {
        add_item(
            &mut current.backends,
            &mut current.backends_len,
            *b,
            &mut current.overflow,
        );
    }
    current.overflow |= seeded.overflow;
    current.egress_set = CT_UNDECIDED;
}

fn entry(
    proto: u8,
    opener: (IpAddr, u16),
    acceptor: (IpAddr, u16),
    flags: u8,
    now_ns: u64,
) -> (CtKey, CtEntry) {
    let (key, opener_is_a) = CtKey::of(
        &addr_of(opener.0),
        &addr_of(acceptor.0),
        opener.1,
        acceptor.1,
        proto,
    );
    let flags = if opener_is_a {
        flags
    } else {
        flags | ct_flag::OPENER_B
    };
    (
        key,
        CtEntry {
            last_seen_ns: now_ns,
            opener_set: CT_UNDECIDED,
            acceptor_set: CT_UNDECIDED,
            opener_rule: netpol_common::RULE_UNNAMED,
            acceptor_rule: netpol_common::RULE_UNNAMED,
            flags,
            _pad: [0; 7],
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::kernel_conntrack::Tuple4;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn flow(orig: (&str, u16, &str, u16), reply: (&str, u16, &str, u16)) -> KernelFlow {
        KernelFlow {
            proto: 6,
            orig: Tuple4 {
                src: ip(orig.0),
                sport: orig.1,
                dst: ip(orig.2),
                dport: orig.3,
            },
            reply: Tuple4 {
                src: ip(reply.0),
                sport: reply.1,
                dst: ip(reply.2),
                dport: reply.3,
            },
            replied: true,
            closed: false,
        }
    }

    #[test]
    fn a_direct_connection_is_seeded_undecided_with_its_opener() {
        let f = flow(
            ("10.244.1.5", 40000, "10.244.2.7", 5432),
            ("10.244.2.7", 5432, "10.244.1.5", 40000),
        );
        let pod = [ip("10.244.1.5")].into();
        let out = seed_entries(&[f], &pod, &pod, 7).conntrack;
        assert_eq!(out.len(), 1);
        let (k, e) = out[0];
        let (want, opener_is_a) = CtKey::of(
            &addr_of(ip("10.244.1.5")),
            &addr_of(ip("10.244.2.7")),
            40000,
            5432,
            6,
        );
        assert_eq!(k, want);
        assert_eq!(e.flags & ct_flag::OPENER_B != 0, !opener_is_a);
        assert_eq!((e.opener_set, e.acceptor_set), (CT_UNDECIDED, CT_UNDECIDED));
        assert_ne!(e.flags & ct_flag::REPLIED, 0);
        assert_eq!(e.flags & (ct_flag::SERVICE | ct_flag::DEFERRED_EGRESS), 0);
    }

    #[test]
    fn a_service_connection_gets_its_backend_and_service_entries() {
        let f = flow(
            ("10.244.1.5", 40000, "10.96.0.10", 53),
            ("10.244.2.9", 53, "10.244.1.5", 40000),
        );
        let pod = [ip("10.244.1.5")].into();
        let seeds = seed_entries(&[f], &pod, &pod, 7);
        assert_eq!(seeds.service_flows.len(), 1, "the backend is remembered");
        let record = seeds.service_flows[0].1;
        assert_eq!((record.services_len, record.backends_len), (1, 1));
        assert_eq!(record.services[0].addr, addr_of(ip("10.96.0.10")));
        assert_eq!(record.backends[0].addr, addr_of(ip("10.244.2.9")));
        let out = seeds.conntrack;
        assert_eq!(out.len(), 2);
        assert_ne!(
            out[0].1.flags & ct_flag::DEFERRED_EGRESS,
            0,
            "backend entry"
        );
        assert_ne!(out[1].1.flags & ct_flag::SERVICE, 0, "service entry");
        let (svc_key, _) = CtKey::of(
            &addr_of(ip("10.244.1.5")),
            &addr_of(ip("10.96.0.10")),
            40000,
            53,
            6,
        );
        assert_eq!(out[1].0, svc_key);
    }

    /// One client port, two Services (and two backends each): one record holds them
    /// all, a fifth backend overflows it.
    #[test]
    fn service_connections_of_one_client_port_share_a_record() {
        let pod = [ip("10.244.1.5")].into();
        let to = |service: &str, backend: &str| {
            flow(
                ("10.244.1.5", 40000, service, 53),
                (backend, 53, "10.244.1.5", 40000),
            )
        };
        let flows = [
            to("10.96.0.10", "10.244.2.9"),
            to("10.96.0.11", "10.244.2.10"),
            to("10.96.0.11", "10.244.2.11"),
            to("10.96.0.10", "10.244.2.12"),
        ];
        let seeds = seed_entries(&flows, &pod, &pod, 7);
        assert_eq!(seeds.service_flows.len(), 1);
        let record = seeds.service_flows[0].1;
        assert_eq!((record.services_len, record.backends_len), (2, 4));
        assert_eq!(record.overflow, 0);
        let mut more = flows.to_vec();
        more.push(to("10.96.0.10", "10.244.2.13"));
        let record = seed_entries(&more, &pod, &pod, 7).service_flows[0].1;
        assert_eq!(record.overflow, 1, "a fifth backend does not fit");
    }

    /// A record the datapath has keeps what it holds and takes the seeded Services and
    /// backends in; its backends are checked again.
    #[test]
    fn seeded_records_merge_into_existing_ones() {
        let t = |ip: &str, port| {
            target((
                super::IpAddr::from(ip.parse::<std::net::Ipv4Addr>().expect("ip")),
                port,
            ))
        };
        let mut current = ServiceFlow::new(t("10.96.0.10", 53));
        current.backends[0] = t("10.244.2.9", 53);
        current.backends_len = 1;
        current.egress_set = 7;
        let mut seeded = ServiceFlow::new(t("10.96.0.11", 53));
        seeded.backends[0] = t("10.244.2.9", 53);
        seeded.backends[1] = t("10.244.3.1", 53);
        seeded.backends_len = 2;
        merge_record(&mut current, &seeded);
        assert_eq!((current.services_len, current.backends_len), (2, 2));
        assert_eq!(current.backends[1], t("10.244.3.1", 53));
        assert_eq!(current.egress_set, CT_UNDECIDED, "checked again");
        assert_eq!(current.overflow, 0);
        let mut more = ServiceFlow::new(t("10.96.0.12", 53));
        for (i, b) in ["10.244.4.1", "10.244.4.2", "10.244.4.3"]
            .iter()
            .enumerate()
        {
            more.backends[i] = t(b, 53);
        }
        more.backends_len = 3;
        merge_record(&mut current, &more);
        assert_eq!(current.overflow, 1, "five backends do not fit");
    }

    #[test]
    fn closed_and_unrelated_connections_are_not_seeded() {
        let mut closed = flow(
            ("10.244.1.5", 40000, "10.244.2.7", 5432),
            ("10.244.2.7", 5432, "10.244.1.5", 40000),
        );
        closed.closed = true;
        let other = flow(
            ("10.244.1.6", 40000, "10.244.2.7", 5432),
            ("10.244.2.7", 5432, "10.244.1.6", 40000),
        );
        let pod = [ip("10.244.1.5")].into();
        assert_eq!(
            seed_entries(&[closed, other], &pod, &pod, 7),
            Seeds::default()
        );
    }

    #[test]
    fn an_inbound_connection_is_seeded_for_its_acceptor() {
        let f = flow(
            ("203.0.113.10", 50000, "10.244.1.5", 80),
            ("10.244.1.5", 80, "203.0.113.10", 50000),
        );
        let pod: BTreeSet<IpAddr> = [ip("10.244.1.5")].into();
        let out = seed_entries(&[f], &pod, &pod, 7).conntrack;
        assert_eq!(out.len(), 1);
        let (_, opener_is_a) = CtKey::of(
            &addr_of(ip("203.0.113.10")),
            &addr_of(ip("10.244.1.5")),
            50000,
            80,
            6,
        );
        assert_eq!(out[0].1.flags & ct_flag::OPENER_B != 0, !opener_is_a);
    }
}
