//! Conntrack entries for connections that existed before netpol tracked a pod, from the
//! kernel's evidence (`datapath::kernel_conntrack`). The kernel says who opened each
//! connection and where translation sent it; it does not say whether policy allows it.
//! So every side is seeded undecided: the connection's next packet decides it under the
//! rules in force, exactly as after a policy change. Allowed connections go on; the
//! others stop.

use std::collections::BTreeSet;
use std::net::IpAddr;

use netpol_common::{CT_UNDECIDED, CtEntry, CtKey, ServiceFlow, ServiceFlowKey, ct_flag};

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
            seeds.service_flows.push((
                ServiceFlowKey {
                    client: addr_of(opener),
                    client_port: oport,
                    proto: f.proto,
                    _pad: 0,
                },
                ServiceFlow {
                    service: addr_of(service.0),
                    backend: addr_of(acceptor),
                    service_port: service.1,
                    backend_port: aport,
                    egress_set: CT_UNDECIDED,
                    has_backend: 1,
                    _pad: [0; 7],
                },
            ));
        }
    }
    seeds
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
        assert_eq!(seeds.service_flows[0].1.backend, addr_of(ip("10.244.2.9")));
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
