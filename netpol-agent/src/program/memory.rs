//! The maps as plain collections, for tests and tools: `MapOps` on `BTreeMap`s, and the
//! datapath's lookup (`allows`) on top, so what the programmer wrote can be decoded and
//! compared with the plan or a reference evaluator without a kernel.

use std::collections::BTreeMap;
use std::net::IpAddr;

use netpol_common::{
    Addr, EndpointInfo, IDENTITY_UNKNOWN_POD, IdentityId, IdentityKey, IfaceInfo,
    MAX_PORTSET_CHAIN, NO_PORTSET, PeerKey, PeerValue, PortSet, REST_DENIED, RULE_UNNAMED,
    RULESET_ADMIN_TABLE, RULESET_ALLOW_ALL, RULESET_HAS_ADMIN, RULESET_NP_ISOLATED,
    RULESET_ORDERED, RULESET_POD_RANGES, ServiceKey, ruleset_base, tag,
};

use super::{MapError, MapOps, addr_of};
use crate::state::Protocol;

/// The maps as plain collections, with the datapath's lookup on top.
#[derive(Default)]
pub struct MemoryMaps {
    pub portsets: BTreeMap<u32, PortSet>,
    pub by_identity: BTreeMap<IdentityKey, PeerValue>,
    pub identities: BTreeMap<Addr, IdentityId>,
    pub cidr: BTreeMap<([u8; 4], Addr, u8), PeerValue>,
    pub endpoints: BTreeMap<Addr, EndpointInfo>,
    pub ifaces: BTreeMap<u32, IfaceInfo>,
    pub services: BTreeMap<ServiceKey, ()>,
    /// Address -> its kind (`node_addr`).
    pub node_addrs: BTreeMap<Addr, u32>,
    /// Ordered set (id without flags) -> its Admin table.
    pub admin_tables: BTreeMap<u32, u32>,
    pub next_ruleset_id: u32,
    /// `META`'s node-self slots.
    pub node_self: [u64; 3],
    pub writes: usize,
    /// Capacity of the two peer maps together, like a full BPF map (None = unbounded).
    pub peer_capacity: Option<usize>,
}

impl MapOps for MemoryMaps {
    fn set_portset(&mut self, id: u32, set: &PortSet) -> Result<(), MapError> {
        self.writes += 1;
        self.portsets.insert(id, *set);
        Ok(())
    }
    fn del_portset(&mut self, id: u32) -> Result<(), MapError> {
        self.portsets.remove(&id);
        Ok(())
    }
    fn set_peer(&mut self, key: PeerKey, len: u8, value: PeerValue) -> Result<(), MapError> {
        if !self.cidr.contains_key(&(key.ruleset_be, key.addr, len)) {
            self.check_capacity()?;
        }
        self.writes += 1;
        self.cidr.insert((key.ruleset_be, key.addr, len), value);
        Ok(())
    }
    fn del_peer(&mut self, key: PeerKey, len: u8) -> Result<(), MapError> {
        self.cidr.remove(&(key.ruleset_be, key.addr, len));
        Ok(())
    }
    fn set_identity_peer(&mut self, key: IdentityKey, value: PeerValue) -> Result<(), MapError> {
        if !self.by_identity.contains_key(&key) {
            self.check_capacity()?;
        }
        self.writes += 1;
        self.by_identity.insert(key, value);
        Ok(())
    }
    fn del_identity_peer(&mut self, key: IdentityKey) -> Result<(), MapError> {
        self.by_identity.remove(&key);
        Ok(())
    }
    fn set_identity(&mut self, addr: Addr, identity: IdentityId) -> Result<(), MapError> {
        self.writes += 1;
        self.identities.insert(addr, identity);
        Ok(())
    }
    fn del_identity(&mut self, addr: Addr) -> Result<(), MapError> {
        self.identities.remove(&addr);
        Ok(())
    }
    fn set_endpoint(&mut self, addr: Addr, info: EndpointInfo) -> Result<(), MapError> {
        self.writes += 1;
        self.endpoints.insert(addr, info);
        Ok(())
    }
    fn del_endpoint(&mut self, addr: Addr) -> Result<(), MapError> {
        self.endpoints.remove(&addr);
        Ok(())
    }
    fn set_iface(&mut self, ifindex: u32, info: IfaceInfo) -> Result<(), MapError> {
        self.writes += 1;
        self.ifaces.insert(ifindex, info);
        Ok(())
    }
    fn del_iface(&mut self, ifindex: u32) -> Result<(), MapError> {
        self.ifaces.remove(&ifindex);
        Ok(())
    }
    fn set_service(&mut self, key: ServiceKey) -> Result<(), MapError> {
        self.writes += 1;
        self.services.insert(key, ());
        Ok(())
    }
    fn del_service(&mut self, key: ServiceKey) -> Result<(), MapError> {
        self.services.remove(&key);
        Ok(())
    }
    fn set_node_addr(&mut self, addr: Addr, kind: u32) -> Result<(), MapError> {
        self.writes += 1;
        self.node_addrs.insert(addr, kind);
        Ok(())
    }
    fn del_node_addr(&mut self, addr: Addr) -> Result<(), MapError> {
        self.node_addrs.remove(&addr);
        Ok(())
    }
    fn set_admin_table(&mut self, set: u32, table: u32) -> Result<(), MapError> {
        self.writes += 1;
        self.admin_tables.insert(set, table);
        Ok(())
    }
    fn del_admin_table(&mut self, set: u32) -> Result<(), MapError> {
        self.admin_tables.remove(&set);
        Ok(())
    }
    fn set_next_ruleset_id(&mut self, next: u32) -> Result<(), MapError> {
        self.next_ruleset_id = next;
        Ok(())
    }
    fn set_node_self(&mut self, words: [u64; 3]) -> Result<(), MapError> {
        self.writes += 1;
        self.node_self = words;
        Ok(())
    }
    fn forget_connections(
        &mut self,
        _addrs: &std::collections::BTreeSet<Addr>,
    ) -> Result<usize, MapError> {
        // No conntrack here: the datapath owns it.
        Ok(0)
    }
    fn reset_counters(&mut self, _id: u32) -> Result<(), MapError> {
        Ok(())
    }
    fn reset_rule_counter(&mut self, _slot: u32) -> Result<(), MapError> {
        Ok(())
    }
    fn read_rule_counter(&self, _slot: u32) -> Result<u64, MapError> {
        // No datapath here: nothing is counted.
        Ok(0)
    }
    fn existing(&self) -> Result<super::Existing, MapError> {
        Ok(super::Existing {
            endpoints: self.endpoints.iter().map(|(a, i)| (*a, *i)).collect(),
            ifaces: self.ifaces.iter().map(|(k, v)| (*k, *v)).collect(),
            services: self.services.keys().copied().collect(),
            node_addrs: self.node_addrs.iter().map(|(a, k)| (*a, *k)).collect(),
            admin_tables: self.admin_tables.iter().map(|(s, t)| (*s, *t)).collect(),
            next_ruleset_id: self.next_ruleset_id,
            peers: self
                .cidr
                .keys()
                .map(|(id, a, len)| {
                    (
                        PeerKey {
                            ruleset_be: *id,
                            addr: *a,
                        },
                        *len,
                    )
                })
                .collect(),
            identity_peers: self.by_identity.keys().copied().collect(),
            identities: self.identities.iter().map(|(a, i)| (*a, *i)).collect(),
            portsets: self.portsets.keys().copied().collect(),
        })
    }
}

fn prefix_match(entry: &Addr, len: u8, addr: &Addr) -> bool {
    let a = u128::from_be_bytes(entry.0);
    let b = u128::from_be_bytes(addr.0);
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    a & mask == b & mask
}

impl MemoryMaps {
    /// Like a full BPF map: the two peer maps together hold at most `peer_capacity` (an
    /// existing key can still be written).
    fn check_capacity(&self) -> Result<(), MapError> {
        if self
            .peer_capacity
            .is_some_and(|cap| self.by_identity.len() + self.cidr.len() >= cap)
        {
            return Err(MapError::Op {
                map: "PEERS",
                op: "insert",
                message: "map full (E2BIG)".into(),
            });
        }
        Ok(())
    }

    /// Same order as `allowed()` in the BPF verdict code: unordered sets by union (the
    /// peer's identity, then the longest block containing its address); ordered sets by
    /// their first rules (`netpol_common::tiered_verdict`). The rule id it names when it
    /// allows. `own_node`: the peer is an address of this node (`NODE_ADDRS`).
    pub fn rule_for(&self, set: u32, peer: IpAddr, proto: Protocol, port: u16) -> Option<u32> {
        self.rule_from(set, peer, proto, port, false)
    }

    pub fn rule_from(
        &self,
        set: u32,
        peer: IpAddr,
        proto: Protocol,
        port: u16,
        own_node: bool,
    ) -> Option<u32> {
        if set == RULESET_ALLOW_ALL {
            return Some(RULE_UNNAMED);
        }
        if set & RULESET_ORDERED == 0 {
            return self.union_rule(set, peer, proto, port);
        }
        let admin = if set & RULESET_HAS_ADMIN == 0 {
            tag::NONE
        } else {
            match self.admin_tables.get(&ruleset_base(set)) {
                Some(table) => self.first_rule(table | RULESET_ADMIN_TABLE, peer, proto, port),
                None => tag::new(RULE_UNNAMED, tag::DENY),
            }
        };
        netpol_common::tiered_verdict(
            admin,
            || set & RULESET_NP_ISOLATED != 0 && own_node,
            || self.first_rule(set, peer, proto, port),
        )
    }

    /// `unknown_pods`: an address without an identity inside the pod ranges, and not
    /// this node's, is looked up as `IDENTITY_UNKNOWN_POD` (ordered tables).
    fn identity_value(&self, set: u32, addr: &Addr, unknown_pods: bool) -> Option<PeerValue> {
        let identity = match self.identities.get(addr) {
            Some(i) => *i,
            None if unknown_pods
                && !self.node_addrs.contains_key(addr)
                && (self.block_value(RULESET_POD_RANGES, addr))
                    .is_some_and(|v| v.rest_rule != REST_DENIED) =>
            {
                IDENTITY_UNKNOWN_POD
            }
            None => return None,
        };
        self.by_identity
            .get(&IdentityKey {
                ruleset: set,
                identity,
            })
            .copied()
    }

    fn block_value(&self, set: u32, addr: &Addr) -> Option<PeerValue> {
        let id = set.to_be_bytes();
        self.cidr
            .iter()
            .filter(|((i, a, len), _)| *i == id && prefix_match(a, *len, addr))
            .max_by_key(|((_, _, len), _)| *len)
            .map(|(_, v)| *v)
    }

    fn union_rule(&self, set: u32, peer: IpAddr, proto: Protocol, port: u16) -> Option<u32> {
        let addr = addr_of(peer);
        let by_identity = self.identity_value(set, &addr, false);
        if let Some(rule) = by_identity.and_then(|v| self.peer_allows(v, proto, port)) {
            return Some(rule);
        }
        (self.block_value(set, &addr)).and_then(|v| self.peer_allows(v, proto, port))
    }

    fn first_rule(&self, set: u32, peer: IpAddr, proto: Protocol, port: u16) -> u32 {
        let addr = addr_of(peer);
        [
            self.identity_value(set, &addr, true),
            self.block_value(set, &addr),
        ]
        .into_iter()
        .flatten()
        .filter_map(|v| self.first_tag(v, proto, port))
        .min()
        .unwrap_or(tag::NONE)
    }

    /// `peer_allows` following chained port sets, as ordered tables are read.
    fn first_tag(&self, value: PeerValue, proto: Protocol, port: u16) -> Option<u32> {
        let mut id = value.portset;
        for _ in 0..MAX_PORTSET_CHAIN {
            let Some(set) = self.portsets.get(&id).filter(|_| id != NO_PORTSET) else {
                break;
            };
            if let Some(rule) = set.rule_for(proto.number(), port) {
                return Some(rule);
            }
            id = set.next();
        }
        (value.rest_rule != REST_DENIED).then_some(value.rest_rule)
    }

    pub fn allows(&self, set: u32, peer: IpAddr, proto: Protocol, port: u16) -> bool {
        self.rule_for(set, peer, proto, port).is_some()
    }

    fn peer_allows(&self, value: PeerValue, proto: Protocol, port: u16) -> Option<u32> {
        let ranges = match value.portset {
            NO_PORTSET => None,
            id => self
                .portsets
                .get(&id)
                .and_then(|s| s.rule_for(proto.number(), port)),
        };
        ranges.or((value.rest_rule != REST_DENIED).then_some(value.rest_rule))
    }
}
