//! `MapOps` on the maps of the loaded BPF object.

use std::time::{Duration, Instant};

use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues};
use netpol_common::{
    Addr, Counters, CtEntry, CtKey, EndpointInfo, IdentityId, IdentityKey, IfaceInfo, IfaceSlot,
    PeerKey, PeerValue, PortSet, ServiceFlow, ServiceFlowKey, ServiceKey, meta, names,
};

use super::seed::Seeds;
use super::{MapError, MapOps, lpm_len};

pub struct KernelMaps {
    pub ifaces: HashMap<MapData, u32, IfaceInfo>,
    /// The same, indexed by ifindex for the programs' established path.
    pub iface_slots: Array<MapData, IfaceSlot>,
    pub endpoints: HashMap<MapData, Addr, EndpointInfo>,
    pub services: HashMap<MapData, ServiceKey, u32>,
    pub node_addrs: HashMap<MapData, Addr, u32>,
    /// Ordered rule set -> its Admin table.
    pub admin_tables: HashMap<MapData, u32, u32>,
    /// Replied connections.
    pub conntrack: HashMap<MapData, CtKey, CtEntry>,
    /// Connections waiting for their first reply.
    pub conntrack_new: HashMap<MapData, CtKey, CtEntry>,
    /// Local clients' Service connections and the backends they went to (replied).
    pub service_flows: HashMap<MapData, ServiceFlowKey, ServiceFlow>,
    /// The same, waiting for their first reply.
    pub service_flows_new: HashMap<MapData, ServiceFlowKey, ServiceFlow>,
    /// The node's uplinks, by ifindex: a pod's address coming in through one is forged.
    pub uplinks: HashMap<MapData, u32, u32>,
    pub meta: Array<MapData, u64>,
    pub peers_by_identity: HashMap<MapData, IdentityKey, PeerValue>,
    pub identities: HashMap<MapData, Addr, IdentityId>,
    pub peers_cidr: LpmTrie<MapData, PeerKey, PeerValue>,
    pub portsets: HashMap<MapData, u32, PortSet>,
    pub counters: PerCpuArray<MapData, Counters>,
    /// Packets allowed per rule id.
    pub rule_counters: PerCpuArray<MapData, u64>,
    /// When each slot was last retired: a program that read the old owner just before
    /// may still be reading its info, so the slot gets no new info for `SLOT_GRACE`.
    pub slots_retired: std::collections::HashMap<u32, Instant>,
}

/// Far longer than any TC program run (microseconds, under RCU).
const SLOT_GRACE: Duration = Duration::from_secs(1);

impl KernelMaps {
    fn slot(&self, index: u32) -> Result<IfaceSlot, MapError> {
        self.iface_slots
            .get(&index, 0)
            .map_err(op(names::IFACE_SLOTS, "read"))
    }

    fn retire_slot(&mut self, index: u32, info: IfaceInfo) -> Result<(), MapError> {
        self.write_slot(index, 0, info)?;
        self.slots_retired.insert(index, Instant::now());
        Ok(())
    }

    fn write_slot(&mut self, index: u32, ifindex: u32, info: IfaceInfo) -> Result<(), MapError> {
        self.iface_slots
            .set(index, IfaceSlot { ifindex, info }, 0)
            .map_err(op(names::IFACE_SLOTS, "write"))
    }

    /// Gives every `IFACES` entry whose slot is free (and settled), or holds an older copy
    /// of it, its slot: after an agent stopped between the steps of `set_iface`, and for
    /// a veth whose slot its holder left (the agent calls this periodically).
    pub fn sync_iface_slots(&mut self) -> Result<(), MapError> {
        let mut entries = Vec::new();
        for kv in self.ifaces.iter() {
            entries.push(kv.map_err(op(names::IFACES, "read"))?);
        }
        for (ifindex, info) in entries {
            let slot = self.slot(IfaceSlot::index_of(ifindex))?;
            if slot.ifindex == 0 || (slot.ifindex == ifindex && slot.info != info) {
                self.set_iface(ifindex, info)?;
            }
        }
        Ok(())
    }
}

fn op(map: &'static str, op: &'static str) -> impl Fn(aya::maps::MapError) -> MapError {
    move |e| MapError::Op {
        map,
        op,
        message: e.to_string(),
    }
}

/// Removing what is already gone is fine: the goal state is reached.
fn gone_ok(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

impl MapOps for KernelMaps {
    fn set_portset(&mut self, id: u32, set: &PortSet) -> Result<(), MapError> {
        self.portsets
            .insert(id, set, 0)
            .map_err(op(names::PORTSETS, "insert"))
    }
    fn del_portset(&mut self, id: u32) -> Result<(), MapError> {
        gone_ok(self.portsets.remove(&id)).map_err(op(names::PORTSETS, "remove"))
    }
    fn set_peer(&mut self, key: PeerKey, prefix_len: u8, value: PeerValue) -> Result<(), MapError> {
        self.peers_cidr
            .insert(&Key::new(lpm_len(prefix_len), key), value, 0)
            .map_err(op(names::PEERS_CIDR, "insert"))
    }
    fn del_peer(&mut self, key: PeerKey, prefix_len: u8) -> Result<(), MapError> {
        gone_ok(self.peers_cidr.remove(&Key::new(lpm_len(prefix_len), key)))
            .map_err(op(names::PEERS_CIDR, "remove"))
    }
    fn set_identity_peer(&mut self, key: IdentityKey, value: PeerValue) -> Result<(), MapError> {
        self.peers_by_identity
            .insert(key, value, 0)
            .map_err(op(names::PEERS_BY_IDENTITY, "insert"))
    }
    fn del_identity_peer(&mut self, key: IdentityKey) -> Result<(), MapError> {
        gone_ok(self.peers_by_identity.remove(&key)).map_err(op(names::PEERS_BY_IDENTITY, "remove"))
    }
    fn set_identity(&mut self, addr: Addr, identity: IdentityId) -> Result<(), MapError> {
        self.identities
            .insert(addr, identity, 0)
            .map_err(op(names::IDENTITIES, "insert"))
    }
    fn del_identity(&mut self, addr: Addr) -> Result<(), MapError> {
        gone_ok(self.identities.remove(&addr)).map_err(op(names::IDENTITIES, "remove"))
    }
    fn set_endpoint(&mut self, addr: Addr, info: EndpointInfo) -> Result<(), MapError> {
        self.endpoints
            .insert(addr, info, 0)
            .map_err(op(names::ENDPOINTS, "insert"))
    }
    fn del_endpoint(&mut self, addr: Addr) -> Result<(), MapError> {
        gone_ok(self.endpoints.remove(&addr)).map_err(op(names::ENDPOINTS, "remove"))
    }
    /// `IFACES` first (the full record), then the veth's slot if it holds it or it is
    /// free. A slot is never written with a new owner and new info at once: it is retired
    /// (owner 0, info unchanged), given the new info (owner still 0), then published
    /// (info unchanged). A program that checked the owner keeps reading the slot's info
    /// for the rest of its run, so a retired slot gets no new info for `SLOT_GRACE`
    /// (the veth waits in `IFACES`; `sync_iface_slots` gives it the slot later). The
    /// holder's own new info (its rule sets) goes through the same steps at once: a
    /// program that checked the owner before reads each field old or new, all of them
    /// this veth's. An agent stopped between two steps leaves a retired slot, so
    /// programs use `IFACES`.
    fn set_iface(&mut self, ifindex: u32, info: IfaceInfo) -> Result<(), MapError> {
        let index = IfaceSlot::index_of(ifindex);
        let slot = self.slot(index)?;
        let ours = slot.ifindex == ifindex;
        if ours && slot.info == info {
            return self
                .ifaces
                .insert(ifindex, info, 0)
                .map_err(op(names::IFACES, "insert"));
        }
        if ours {
            self.retire_slot(index, slot.info)?;
        }
        self.ifaces
            .insert(ifindex, info, 0)
            .map_err(op(names::IFACES, "insert"))?;
        let settled = self
            .slots_retired
            .get(&index)
            .is_none_or(|t| t.elapsed() >= SLOT_GRACE);
        if ours || (slot.ifindex == 0 && settled) {
            self.write_slot(index, 0, info)?;
            self.write_slot(index, ifindex, info)?;
        }
        Ok(())
    }
    fn del_iface(&mut self, ifindex: u32) -> Result<(), MapError> {
        let index = IfaceSlot::index_of(ifindex);
        let slot = self.slot(index)?;
        if slot.ifindex == ifindex {
            self.retire_slot(index, slot.info)?;
        }
        gone_ok(self.ifaces.remove(&ifindex)).map_err(op(names::IFACES, "remove"))
    }
    fn set_service(&mut self, key: ServiceKey) -> Result<(), MapError> {
        self.services
            .insert(key, 1, 0)
            .map_err(op(names::SERVICES, "insert"))
    }
    fn del_service(&mut self, key: ServiceKey) -> Result<(), MapError> {
        gone_ok(self.services.remove(&key)).map_err(op(names::SERVICES, "remove"))
    }
    fn set_node_addr(&mut self, addr: Addr, kind: u32) -> Result<(), MapError> {
        self.node_addrs
            .insert(addr, kind, 0)
            .map_err(op(names::NODE_ADDRS, "insert"))
    }
    fn del_node_addr(&mut self, addr: Addr) -> Result<(), MapError> {
        gone_ok(self.node_addrs.remove(&addr)).map_err(op(names::NODE_ADDRS, "remove"))
    }
    fn set_admin_table(&mut self, set: u32, table: u32) -> Result<(), MapError> {
        self.admin_tables
            .insert(set, table, 0)
            .map_err(op(names::ADMIN_TABLES, "insert"))
    }
    fn del_admin_table(&mut self, set: u32) -> Result<(), MapError> {
        gone_ok(self.admin_tables.remove(&set)).map_err(op(names::ADMIN_TABLES, "remove"))
    }
    fn forget_connections(
        &mut self,
        addrs: &std::collections::BTreeSet<Addr>,
    ) -> Result<usize, MapError> {
        let mut forgotten = 0;
        for map in [&mut self.conntrack, &mut self.conntrack_new] {
            let keys: Vec<CtKey> = map
                .keys()
                .filter_map(Result::ok)
                .filter(|k| addrs.contains(&k.a) || addrs.contains(&k.b))
                .collect();
            for k in &keys {
                gone_ok(map.remove(k)).map_err(op(names::CONNTRACK, "remove"))?;
            }
            forgotten += keys.len();
        }
        for (name, map) in [
            (names::SERVICE_FLOWS, &mut self.service_flows),
            (names::SERVICE_FLOWS_NEW, &mut self.service_flows_new),
        ] {
            let flows: Vec<ServiceFlowKey> = map
                .keys()
                .filter_map(Result::ok)
                .filter(|k| addrs.contains(&k.client))
                .collect();
            for k in &flows {
                gone_ok(map.remove(k)).map_err(op(name, "remove"))?;
            }
        }
        Ok(forgotten)
    }
    fn set_next_ruleset_id(&mut self, next: u32) -> Result<(), MapError> {
        self.meta
            .set(meta::NEXT_RULESET_ID, u64::from(next), 0)
            .map_err(op(names::META, "set"))
    }
    fn set_node_self(&mut self, words: [u64; 3]) -> Result<(), MapError> {
        let slots = [
            meta::NODE_SELF_V4,
            meta::NODE_SELF_V6_HI,
            meta::NODE_SELF_V6_LO,
        ];
        for (slot, word) in slots.into_iter().zip(words) {
            (self.meta.set(slot, word, 0)).map_err(op(names::META, "set"))?;
        }
        Ok(())
    }
    fn existing(&self) -> Result<super::Existing, MapError> {
        let mut e = super::Existing::default();
        for kv in self.endpoints.iter() {
            e.endpoints.push(kv.map_err(op(names::ENDPOINTS, "read"))?);
        }
        for kv in self.ifaces.iter() {
            e.ifaces.push(kv.map_err(op(names::IFACES, "read"))?);
        }
        for k in self.services.keys() {
            e.services.push(k.map_err(op(names::SERVICES, "read"))?);
        }
        for kv in self.node_addrs.iter() {
            e.node_addrs
                .push(kv.map_err(op(names::NODE_ADDRS, "read"))?);
        }
        for kv in self.admin_tables.iter() {
            e.admin_tables
                .push(kv.map_err(op(names::ADMIN_TABLES, "read"))?);
        }
        let next = self
            .meta
            .get(&meta::NEXT_RULESET_ID, 0)
            .map_err(op(names::META, "read"))?;
        e.next_ruleset_id = u32::try_from(next).unwrap_or(u32::MAX);
        for k in self.peers_by_identity.keys() {
            e.identity_peers
                .push(k.map_err(op(names::PEERS_BY_IDENTITY, "read"))?);
        }
        for kv in self.identities.iter() {
            e.identities
                .push(kv.map_err(op(names::IDENTITIES, "read"))?);
        }
        for k in self.peers_cidr.keys() {
            let k = k.map_err(op(names::PEERS_CIDR, "read"))?;
            let len = k
                .prefix_len()
                .saturating_sub(netpol_common::RULESET_ID_BITS);
            e.peers.push((k.data(), len as u8));
        }
        for k in self.portsets.keys() {
            e.portsets.push(k.map_err(op(names::PORTSETS, "read"))?);
        }
        Ok(e)
    }

    fn reset_counters(&mut self, endpoint_id: u32) -> Result<(), MapError> {
        let zero = per_cpu_zero(names::COUNTERS, Counters::default())?;
        self.counters
            .set(endpoint_id, zero, 0)
            .map_err(op(names::COUNTERS, "reset"))
    }

    fn reset_rule_counter(&mut self, slot: u32) -> Result<(), MapError> {
        let zero = per_cpu_zero(names::RULE_COUNTERS, 0u64)?;
        self.rule_counters
            .set(slot, zero, 0)
            .map_err(op(names::RULE_COUNTERS, "reset"))
    }

    fn read_rule_counter(&self, slot: u32) -> Result<u64, MapError> {
        self.rule_packets(slot)
    }
}

/// One `value` per possible CPU.
fn per_cpu_zero<T: aya::Pod + Clone>(
    map: &'static str,
    value: T,
) -> Result<PerCpuValues<T>, MapError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| MapError::Op {
        map,
        op: "count cpus",
        message: e.to_string(),
    })?;
    PerCpuValues::try_from(vec![value; cpus]).map_err(|e| MapError::Op {
        map,
        op: "reset",
        message: e.to_string(),
    })
}

impl KernelMaps {
    /// Deletes conntrack entries idle for longer than their lifetime, as of `now_ns` on the
    /// clock of `bpf_ktime_get_ns` (CLOCK_MONOTONIC), in both conntrack maps. Returns,
    /// per map, (its name, distinct entries seen, deleted). A walk of a map the datapath
    /// changes meanwhile may visit a key twice (the kernel starts over when the key it
    /// stood on is gone), hence the set; a read error ends the walk of that map, and is
    /// returned once both maps are swept.
    pub fn sweep_conntrack(
        &mut self,
        now_ns: u64,
    ) -> Result<[(&'static str, usize, usize); 2], MapError> {
        let mut out = [(names::CONNTRACK, 0, 0), (names::CONNTRACK_NEW, 0, 0)];
        let mut failed = None;
        for (map, result) in [&mut self.conntrack, &mut self.conntrack_new]
            .into_iter()
            .zip(out.iter_mut())
        {
            let mut seen = std::collections::HashSet::new();
            let mut expired = Vec::new();
            for kv in map.iter() {
                let (k, v) = match kv {
                    Ok(kv) => kv,
                    Err(e) => {
                        failed = Some(op(result.0, "read")(e));
                        break;
                    }
                };
                if !seen.insert(k) {
                    continue;
                }
                let idle = now_ns.saturating_sub(v.last_seen_ns);
                if idle > netpol_common::ct_lifetime_ns(k.proto, v.flags) {
                    expired.push(k);
                }
            }
            for k in &expired {
                gone_ok(map.remove(k)).map_err(op(result.0, "remove"))?;
            }
            result.1 = seen.len();
            result.2 = expired.len();
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Adds seeded entries where the datapath has none yet (a live entry, in either
    /// conntrack map, knows more). Returns how many connections were added.
    pub fn seed_conntrack(&mut self, seeds: &Seeds) -> Result<usize, MapError> {
        const BPF_NOEXIST: u64 = 1;
        let mut added = 0;
        for (k, v) in &seeds.conntrack {
            if self.conntrack.get(k, 0).is_ok() || self.conntrack_new.get(k, 0).is_ok() {
                continue;
            }
            let map = if v.flags & netpol_common::ct_flag::REPLIED != 0 {
                &mut self.conntrack
            } else {
                &mut self.conntrack_new
            };
            match map.insert(k, v, BPF_NOEXIST) {
                Ok(()) => added += 1,
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(op(names::CONNTRACK, "seed")(e)),
            }
        }
        // A record the datapath already has (from before the pod was isolated again)
        // takes the kernel's Services and backends in too: its backends are checked again.
        for (k, seeded) in &seeds.service_flows {
            let (name, map) = match self.service_flows_new.get(k, 0) {
                Ok(_) => (names::SERVICE_FLOWS_NEW, &mut self.service_flows_new),
                Err(_) => (names::SERVICE_FLOWS, &mut self.service_flows),
            };
            let record = match map.get(k, 0) {
                Ok(mut current) => {
                    super::seed::merge_record(&mut current, seeded);
                    current
                }
                Err(_) => *seeded,
            };
            map.insert(k, record, 0).map_err(op(name, "seed"))?;
        }
        Ok(added)
    }

    /// Deletes Service records none of whose Services has a conntrack entry any more (run
    /// after the conntrack sweep): their connections are over. A record is written after
    /// its connection's entry, and each is looked at again just before it goes, so a port
    /// reused meanwhile keeps its record. Returns how many were deleted.
    pub fn sweep_service_flows(&mut self) -> Result<usize, MapError> {
        let mut deleted = 0;
        for name in [names::SERVICE_FLOWS, names::SERVICE_FLOWS_NEW] {
            let map = self.flows(name);
            let mut dead = Vec::new();
            for kv in map.iter() {
                let (k, record) = kv.map_err(op(name, "read"))?;
                if !self.has_open_service(&k, &record) {
                    dead.push(k);
                }
            }
            for k in &dead {
                let still_dead = match self.flows(name).get(k, 0) {
                    Ok(record) => !self.has_open_service(k, &record),
                    Err(_) => false,
                };
                if still_dead {
                    gone_ok(self.flows_mut(name).remove(k)).map_err(op(name, "remove"))?;
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }

    fn flows(&self, name: &str) -> &HashMap<MapData, ServiceFlowKey, ServiceFlow> {
        if name == names::SERVICE_FLOWS {
            &self.service_flows
        } else {
            &self.service_flows_new
        }
    }

    fn flows_mut(&mut self, name: &str) -> &mut HashMap<MapData, ServiceFlowKey, ServiceFlow> {
        if name == names::SERVICE_FLOWS {
            &mut self.service_flows
        } else {
            &mut self.service_flows_new
        }
    }

    /// Does a connection from the record's client port to one of its Services still have
    /// a conntrack entry?
    fn has_open_service(&self, k: &ServiceFlowKey, record: &ServiceFlow) -> bool {
        record
            .services
            .iter()
            .take(usize::from(record.services_len))
            .any(|s| {
                let (ct, _) = CtKey::of(&k.client, &s.addr, k.client_port, s.port, k.proto);
                self.conntrack.get(&ct, 0).is_ok() || self.conntrack_new.get(&ct, 0).is_ok()
            })
    }

    /// Makes the uplink map hold exactly `ifindexes`.
    pub fn set_uplinks(
        &mut self,
        ifindexes: &std::collections::BTreeSet<u32>,
    ) -> Result<(), MapError> {
        let old: Vec<u32> = self.uplinks.keys().filter_map(Result::ok).collect();
        for i in old.iter().filter(|i| !ifindexes.contains(i)) {
            gone_ok(self.uplinks.remove(i)).map_err(op(names::UPLINKS, "remove"))?;
        }
        for i in ifindexes {
            self.uplinks
                .insert(i, 1, 0)
                .map_err(op(names::UPLINKS, "insert"))?;
        }
        Ok(())
    }

    /// Forgets every tracked connection (tests start each sequence from nothing).
    pub fn clear_conntrack(&mut self) {
        for map in [&mut self.conntrack, &mut self.conntrack_new] {
            let keys: Vec<CtKey> = map.keys().filter_map(Result::ok).collect();
            for k in keys {
                let _ = map.remove(&k);
            }
        }
    }

    /// Every conntrack entry (for status and tests).
    pub fn conntrack_entries(&self) -> Vec<(CtKey, CtEntry)> {
        self.conntrack
            .iter()
            .chain(self.conntrack_new.iter())
            .filter_map(Result::ok)
            .collect()
    }

    /// Packets a rule counter slot counted, summed over CPUs.
    pub fn rule_packets(&self, slot: u32) -> Result<u64, MapError> {
        let per_cpu = self
            .rule_counters
            .get(&slot, 0)
            .map_err(op(names::RULE_COUNTERS, "read"))?;
        Ok(per_cpu.iter().sum())
    }

    /// Packets per reason of one endpoint, summed over CPUs.
    pub fn counters(&self, endpoint_id: u32) -> Result<Counters, MapError> {
        let per_cpu = self
            .counters
            .get(&endpoint_id, 0)
            .map_err(op(names::COUNTERS, "read"))?;
        let mut total = Counters::default();
        for c in per_cpu.iter() {
            for (t, v) in total.packets.iter_mut().zip(c.packets.iter()) {
                *t += v;
            }
        }
        Ok(total)
    }
}
