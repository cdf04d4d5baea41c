//! Plan -> map writes, as a diff against what is loaded.
//!
//! Rule sets are immutable once written: a changed rule set is written in full under a new
//! id, then endpoints are flipped to it (one map update each), then the old entries are
//! deleted. No packet ever sees a half-written rule set, and an unchanged rule set is not
//! touched.

pub mod kernel;
pub mod memory;
mod rules;
pub mod seed;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use netpol_common::{
    Addr, EndpointInfo, IDENTITY_UNKNOWN_POD, IFACE_HAS_V4, IFACE_HAS_V6, IdentityId, IdentityKey,
    IfaceInfo, MAX_ORDERED_PORT_RANGES, MAX_PORT_RANGES, NO_AUDIT, NO_PORTSET, PORTSET_NEXT_SHIFT,
    PeerKey, PeerValue, PortRange, PortSet, REST_DENIED, RULE_UNNAMED, RULESET_ADMIN_TABLE,
    RULESET_ALLOW_ALL, RULESET_HAS_ADMIN, RULESET_NP_ISOLATED, RULESET_ORDERED, RULESET_POD_RANGES,
    ServiceKey, names, node_addr, ruleset_base, tag,
};

use crate::compile::Position;
use crate::compile::allowed::{Allowed, RuleTag};
use crate::compile::ports::Ports;
use crate::compile::prefix::Prefix;
use crate::compile::tiers::AdminTable;
use crate::compile::{Identity, Plan, RuleSet, ServicePort};
use crate::state::ObjectRef;
use rules::RuleTables;

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("map {map}: {op} failed: {message}")]
    Op {
        map: &'static str,
        op: &'static str,
        message: String,
    },
    #[error("out of ids for {0}")]
    IdsExhausted(&'static str),
}

/// The writes the programmer makes. The kernel implementation is `kernel::KernelMaps`; the
/// tests use an in-memory one.
pub trait MapOps {
    fn set_portset(&mut self, id: u32, set: &PortSet) -> Result<(), MapError>;
    fn del_portset(&mut self, id: u32) -> Result<(), MapError>;
    /// An ipBlock entry; `prefix_len` counts address bits only (0..=128).
    fn set_peer(&mut self, key: PeerKey, prefix_len: u8, value: PeerValue) -> Result<(), MapError>;
    fn del_peer(&mut self, key: PeerKey, prefix_len: u8) -> Result<(), MapError>;
    /// A pod-selector entry: what rule set `key.ruleset` allows to pods of `key.identity`.
    fn set_identity_peer(&mut self, key: IdentityKey, value: PeerValue) -> Result<(), MapError>;
    fn del_identity_peer(&mut self, key: IdentityKey) -> Result<(), MapError>;
    /// Which identity a pod address has.
    fn set_identity(&mut self, addr: Addr, identity: IdentityId) -> Result<(), MapError>;
    fn del_identity(&mut self, addr: Addr) -> Result<(), MapError>;
    fn set_endpoint(&mut self, addr: Addr, info: EndpointInfo) -> Result<(), MapError>;
    fn del_endpoint(&mut self, addr: Addr) -> Result<(), MapError>;
    fn set_iface(&mut self, ifindex: u32, info: IfaceInfo) -> Result<(), MapError>;
    fn del_iface(&mut self, ifindex: u32) -> Result<(), MapError>;
    fn set_service(&mut self, key: ServiceKey) -> Result<(), MapError>;
    fn del_service(&mut self, key: ServiceKey) -> Result<(), MapError>;
    /// `kind`: `node_addr::OWN` or `node_addr::BROADCAST`.
    fn set_node_addr(&mut self, addr: Addr, kind: u32) -> Result<(), MapError>;
    /// Names the Admin table of ordered set `set` (its id without flags).
    fn set_admin_table(&mut self, set: u32, table: u32) -> Result<(), MapError>;
    fn del_admin_table(&mut self, set: u32) -> Result<(), MapError>;
    fn del_node_addr(&mut self, addr: Addr) -> Result<(), MapError>;
    /// Persists the next rule-set id (ids are never reused, also across restarts).
    fn set_next_ruleset_id(&mut self, next: u32) -> Result<(), MapError>;
    /// The `META` slots of this node's own addresses (`meta::node_self_words`).
    fn set_node_self(&mut self, words: [u64; 3]) -> Result<(), MapError>;
    /// Forgets every tracked connection of these addresses (their pods are gone: a new
    /// pod given the same address must not inherit them). Returns how many.
    fn forget_connections(&mut self, addrs: &BTreeSet<Addr>) -> Result<usize, MapError>;
    fn reset_counters(&mut self, endpoint_id: u32) -> Result<(), MapError>;
    /// Zeroes a rule counter slot before it names another rule.
    fn reset_rule_counter(&mut self, slot: u32) -> Result<(), MapError>;
    /// What a rule counter slot counted (summed over CPUs).
    fn read_rule_counter(&self, slot: u32) -> Result<u64, MapError>;
    /// Everything the maps hold now, for adopting the state of an earlier run.
    fn existing(&self) -> Result<Existing, MapError>;
}

/// What maps pinned by an earlier run hold.
#[derive(Debug, Default, Clone)]
pub struct Existing {
    pub endpoints: Vec<(Addr, EndpointInfo)>,
    pub ifaces: Vec<(u32, IfaceInfo)>,
    pub services: Vec<ServiceKey>,
    /// (address, its kind)
    pub node_addrs: Vec<(Addr, u32)>,
    /// (ordered set, its Admin table)
    pub admin_tables: Vec<(u32, u32)>,
    /// The next rule-set id an earlier run would have handed out (0: none recorded).
    pub next_ruleset_id: u32,
    /// ipBlock entries: (key, address prefix length)
    pub peers: Vec<(PeerKey, u8)>,
    pub identity_peers: Vec<IdentityKey>,
    pub identities: Vec<(Addr, IdentityId)>,
    pub portsets: Vec<u32>,
}

pub fn service_key(s: &ServicePort) -> ServiceKey {
    ServiceKey {
        addr: addr_of(s.ip),
        port: s.port,
        proto: s.protocol.number(),
        _pad: 0,
    }
}

pub fn addr_of(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => Addr::from_v4(v4.octets()),
        IpAddr::V6(v6) => Addr(v6.octets()),
    }
}

/// The entries of one table as written.
#[derive(Default)]
struct LoadedTable {
    /// Value of each peer identity written.
    peers: BTreeMap<IdentityId, PeerValue>,
    /// (key, address prefix length, value) of every block entry written.
    blocks: Vec<(PeerKey, u8, PeerValue)>,
}

impl LoadedTable {
    fn len(&self) -> usize {
        self.peers.len() + self.blocks.len()
    }
}

/// A rule set as it sits in the maps.
struct LoadedSet {
    /// The id endpoints point at: flags included (`RULESET_ORDERED`, ...).
    id: u32,
    /// Its table (an ordered set's rest table).
    table: LoadedTable,
    /// An ordered set's Admin table, in `Programmer::admin_tables`.
    admin: Option<Arc<AdminTable>>,
    /// Entries written with it: its table's, and its Admin table's when no set held it
    /// before (for `ApplyStats`).
    written: usize,
}

/// An Admin table as it sits in the maps: keyed by its own id with `RULESET_ADMIN_TABLE`,
/// named by each set holding it in `ADMIN_TABLES`.
struct LoadedAdmin {
    id: u32,
    table: LoadedTable,
    /// Loaded sets (current or superseded) holding it: deleted at 0.
    holders: usize,
}

/// Whether an ordered table's entry has a rule that is not an Accept.
fn not_only_accepts(a: &Allowed<Position>) -> bool {
    let tags = a
        .ranges()
        .iter()
        .filter_map(|(_, t)| *t)
        .chain(a.rest().copied());
    tags.map(tag::action).any(|action| action != tag::ACCEPT)
}

/// The id a rule set's endpoints point at: `base` with the flags of what it holds.
fn flagged_id(base: u32, set: &RuleSet) -> u32 {
    let Some(o) = &set.ordered else {
        return base;
    };
    let mut id = base | RULESET_ORDERED;
    if o.admin.is_some() {
        id |= RULESET_HAS_ADMIN;
    }
    if o.np_isolated {
        id |= RULESET_NP_ISOLATED;
    }
    id
}

/// What one `apply` changed, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyStats {
    pub rule_sets_added: usize,
    pub rule_sets_removed: usize,
    pub peer_entries_written: usize,
    pub endpoints_written: usize,
    pub endpoints_removed: usize,
    /// Tracked connections of removed pods' addresses, forgotten.
    pub connections_forgotten: usize,
    /// Pod addresses whose identity was written or removed.
    pub identities_written: usize,
    /// Rule sets written again under a new id, unchanged, because an address they
    /// allowed now has an identity they allow less: their connections are decided again.
    pub rule_sets_renewed: usize,
    /// Pods whose new rule set did not fit in the maps: they keep their last complete
    /// state (or, when new, allow nothing in the isolated direction) until it does.
    pub overflowed: Vec<ObjectRef>,
    /// Why the first rule set that did not fit was refused.
    pub overflow_error: Option<String>,
}

/// Bounded id allocator; ids are reused after release.
pub(crate) struct Ids {
    next: u32,
    free: BTreeSet<u32>,
    limit: u32,
    what: &'static str,
}

impl Ids {
    fn new(first: u32, limit: u32, what: &'static str) -> Self {
        Ids {
            next: first,
            free: BTreeSet::new(),
            limit,
            what,
        }
    }
    fn take(&mut self) -> Result<u32, MapError> {
        if let Some(id) = self.free.pop_first() {
            return Ok(id);
        }
        if self.next >= self.limit {
            return Err(MapError::IdsExhausted(self.what));
        }
        self.next += 1;
        Ok(self.next - 1)
    }
    fn release(&mut self, id: u32) {
        self.free.insert(id);
    }
}

/// A port set as it sits in the maps, keyed by its ranges.
struct LoadedPortSet {
    id: u32,
    /// The set it chains to (`NO_PORTSET`: none), held once by this one.
    next: u32,
    /// Entries using it.
    refs: usize,
}

pub struct Programmer<M: MapOps> {
    maps: M,
    /// Keyed by the latest plan's own `Arc` of each set (see `recognise_sets`).
    sets: HashMap<Arc<RuleSet>, LoadedSet>,
    /// Admin tables, shared by the ordered sets of `sets` and `superseded`. Their ids are
    /// rule-set ids (`set_ids`).
    admin_tables: HashMap<Arc<AdminTable>, LoadedAdmin>,
    set_ids: Ids,
    portsets: HashMap<Vec<(Ports, Option<Position>)>, LoadedPortSet>,
    portset_ids: Ids,
    rule_tables: RuleTables,
    endpoint_ids: BTreeMap<ObjectRef, u32>,
    ep_ids: Ids,
    endpoints: BTreeMap<Addr, EndpointInfo>,
    ifaces: BTreeMap<u32, IfaceInfo>,
    services: BTreeSet<ServiceKey>,
    /// What `NODE_ADDRS` holds: address -> kind (`node_addr` flags), from the two below.
    node_addrs: BTreeMap<Addr, u32>,
    /// The node's interfaces' addresses (`set_node_addresses`).
    iface_addrs: BTreeMap<Addr, u32>,
    /// kube-proxy's IPVS Service addresses (`set_service_addresses`).
    service_addrs: BTreeSet<Addr>,
    /// Its Node's addresses (the plan's `node_self`).
    named_addrs: BTreeSet<Addr>,
    /// This node's own addresses as written (`None`: not yet by this run).
    node_self: Option<[u64; 3]>,
    /// The pod ranges written (`RULESET_POD_RANGES`), by address and prefix length: true
    /// for a range, false for a hole.
    pod_ranges: BTreeMap<(Addr, u8), bool>,
    /// Adopted pod ranges: their values are unknown until written again.
    stale_pod_ranges: bool,
    /// Entries of an adopted earlier run's rule sets, deleted once nothing points at them.
    leftover_peers: Vec<(PeerKey, u8)>,
    leftover_identity_peers: Vec<IdentityKey>,
    leftover_portsets: Vec<u32>,
    /// `ADMIN_TABLES` entries of an adopted earlier run: (set, Admin table).
    leftover_admin_tables: Vec<(u32, u32)>,
    /// Identity ids are never reused (no stale entry can alias a new identity).
    /// Keyed by the latest plan's own `Arc` of each identity, like `sets`.
    identity_ids: HashMap<Arc<Identity>, IdentityId>,
    next_identity: IdentityId,
    /// What `IDENTITIES` holds.
    addresses: BTreeMap<Addr, IdentityId>,
    /// The identity a removed address last had: should a new pod take the address with
    /// an identity that some rule set allows less, that set is renewed.
    retired_addresses: BTreeMap<Addr, IdentityId>,
    /// Earlier versions of renewed rule sets, deleted once no endpoint points at them.
    superseded: Vec<LoadedSet>,
    /// Rule sets to write again under a new id (see `write_identities`).
    pending_renewals: BTreeSet<Arc<RuleSet>>,
    /// What `IDENTITIES` held when adopted: identities keep those ids where they can.
    adopted_identities: BTreeMap<Addr, IdentityId>,
    /// Endpoints as an earlier run wrote them, until this run writes them: their rule
    /// counter slots are that run's.
    adopted_rule_slots: BTreeSet<Addr>,
    /// Veths whose pod cannot be told (see `datapath::pod_links`): they drop everything.
    quarantined: BTreeSet<u32>,
    /// The rule set of quarantined veths: an id of its own that never gets an entry.
    quarantine_set: Option<u32>,
}

impl<M: MapOps> Programmer<M> {
    /// Takes over what an earlier run left in (pinned) maps: its endpoints, interfaces and
    /// Services stay as they are until the next `apply` diffs against them, endpoint ids
    /// (and so counters) carry over, and its rule sets keep enforcing until every endpoint
    /// has flipped to a new one; then they are deleted. Returns the endpoints adopted.
    pub fn adopt(&mut self) -> Result<usize, MapError> {
        let mut e = self.maps.existing()?;
        let (ranges, peers): (Vec<_>, Vec<_>) = (std::mem::take(&mut e.peers).into_iter())
            .partition(|(k, _)| u32::from_be_bytes(k.ruleset_be) == RULESET_POD_RANGES);
        e.peers = peers;
        // Values are not listed: rewritten at the next apply, which diffs against these.
        self.pod_ranges = (ranges.into_iter())
            .map(|(k, len)| ((k.addr, len), false))
            .collect();
        self.stale_pod_ranges = !self.pod_ranges.is_empty();
        let max_set = e
            .peers
            .iter()
            .map(|(k, _)| u32::from_be_bytes(k.ruleset_be))
            .chain(e.endpoints.iter().flat_map(|(_, i)| i.sets()))
            .chain(e.admin_tables.iter().flat_map(|(s, t)| [*s, *t]))
            .map(ruleset_base)
            .max()
            .unwrap_or(0);
        self.set_ids.next = self
            .set_ids
            .next
            .max(max_set.saturating_add(1))
            .max(e.next_ruleset_id);
        let max_portset = e.portsets.iter().copied().max().unwrap_or(0);
        self.portset_ids.next = self.portset_ids.next.max(max_portset.saturating_add(1));
        let used: BTreeSet<u32> = e.endpoints.iter().map(|(_, i)| i.id).collect();
        let max_ep = used.iter().copied().max().unwrap_or(0);
        if max_ep >= self.ep_ids.next {
            self.ep_ids
                .free
                .extend((self.ep_ids.next..max_ep).filter(|i| !used.contains(i)));
            self.ep_ids.next = max_ep + 1;
        }
        self.endpoints = e.endpoints.iter().copied().collect();
        self.adopted_rule_slots = self.endpoints.keys().copied().collect();
        self.ifaces = e.ifaces.into_iter().collect();
        self.services = e.services.into_iter().collect();
        self.node_addrs = e.node_addrs.into_iter().collect();
        // Kept as they are until this run reads the interfaces and the Node again.
        for (a, kind) in &self.node_addrs {
            if kind & node_addr::NAMED != 0 {
                self.named_addrs.insert(*a);
            }
            if kind & !node_addr::NAMED != 0 {
                self.iface_addrs.insert(*a, kind & !node_addr::NAMED);
            }
        }
        let max_identity = e
            .identities
            .iter()
            .map(|(_, i)| *i)
            .chain(e.identity_peers.iter().map(|k| k.identity))
            .filter(|i| *i != IDENTITY_UNKNOWN_POD)
            .max()
            .unwrap_or(0);
        // New identity ids never alias what the earlier run's rule sets name.
        self.next_identity = self.next_identity.max(max_identity.saturating_add(1));
        self.addresses = e.identities.into_iter().collect();
        self.adopted_identities = self.addresses.clone();
        self.leftover_peers = e.peers;
        self.leftover_identity_peers = e.identity_peers;
        self.leftover_portsets = e.portsets;
        self.leftover_admin_tables = e.admin_tables;
        Ok(self.endpoints.len())
    }

    /// `max_endpoints` bounds endpoint ids (they index the counters array).
    pub fn new(maps: M, max_endpoints: u32) -> Self {
        Programmer {
            maps,
            sets: HashMap::new(),
            admin_tables: HashMap::new(),
            // 0 means "not isolated".
            set_ids: Ids::new(1, RULESET_POD_RANGES, "rule sets"),
            // 0 is `NO_PORTSET`.
            // Ids fit above the count in `PortSet::len` (a chain's link).
            portset_ids: Ids::new(1, 1 << (32 - PORTSET_NEXT_SHIFT), "port sets"),
            portsets: HashMap::new(),
            rule_tables: RuleTables::new(),
            endpoint_ids: BTreeMap::new(),
            // Id 0 is left for traffic that belongs to no endpoint.
            ep_ids: Ids::new(1, max_endpoints, "endpoints"),
            endpoints: BTreeMap::new(),
            ifaces: BTreeMap::new(),
            services: BTreeSet::new(),
            node_addrs: BTreeMap::new(),
            iface_addrs: BTreeMap::new(),
            service_addrs: BTreeSet::new(),
            named_addrs: BTreeSet::new(),
            node_self: None,
            pod_ranges: BTreeMap::new(),
            stale_pod_ranges: false,
            leftover_peers: Vec::new(),
            leftover_identity_peers: Vec::new(),
            leftover_portsets: Vec::new(),
            leftover_admin_tables: Vec::new(),
            identity_ids: HashMap::new(),
            // 0 is never an identity.
            next_identity: 1,
            addresses: BTreeMap::new(),
            retired_addresses: BTreeMap::new(),
            superseded: Vec::new(),
            pending_renewals: BTreeSet::new(),
            adopted_identities: BTreeMap::new(),
            adopted_rule_slots: BTreeSet::new(),
            quarantined: BTreeSet::new(),
            quarantine_set: None,
        }
    }

    /// Veths that carry a claim on a pod's address but cannot be given a pod: from the
    /// next `apply` on, they know no address and allow nothing, so all they carry is
    /// dropped (counted on endpoint 0) except neighbour discovery from link-local
    /// addresses. A veth that is also some pod's in the next plan is that pod's.
    pub fn quarantine(&mut self, ifindexes: BTreeSet<u32>) {
        self.quarantined = ifindexes;
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    pub fn endpoint_ids(&self) -> &BTreeMap<ObjectRef, u32> {
        &self.endpoint_ids
    }

    /// What `IFACES` holds (an adopted earlier run's entries until the first `apply`).
    pub fn ifaces(&self) -> &BTreeMap<u32, IfaceInfo> {
        &self.ifaces
    }

    /// Entries this programmer has written in each map it owns, by map name (the
    /// conntrack maps are the datapath's).
    pub fn occupancy(&self) -> BTreeMap<&'static str, usize> {
        let sets = self.sets.values().chain(&self.superseded).map(|s| &s.table);
        let admin = self.admin_tables.values().map(|a| &a.table);
        let (mut by_identity, mut blocks) = (0, 0);
        for table in sets.chain(admin) {
            by_identity += table.peers.len();
            blocks += table.blocks.len();
        }
        BTreeMap::from([
            (names::ENDPOINTS, self.endpoints.len()),
            (names::IFACES, self.ifaces.len()),
            (names::SERVICES, self.services.len()),
            (names::NODE_ADDRS, self.node_addrs.len()),
            (
                names::ADMIN_TABLES,
                (self.admin_tables.values())
                    .map(|a| a.holders)
                    .sum::<usize>()
                    + self.leftover_admin_tables.len(),
            ),
            (names::IDENTITIES, self.addresses.len()),
            (
                names::PEERS_BY_IDENTITY,
                by_identity + self.leftover_identity_peers.len(),
            ),
            (names::PEERS_CIDR, blocks + self.leftover_peers.len()),
            (
                names::PORTSETS,
                self.portsets.len() + self.leftover_portsets.len(),
            ),
        ])
    }

    /// Writes `plan`. `ifindexes` maps local pods to the host side of their veth; a pod
    /// without one is programmed by address only (enforced once its veth shows up).
    pub fn apply(
        &mut self,
        plan: &Plan,
        ifindexes: &BTreeMap<ObjectRef, u32>,
    ) -> Result<ApplyStats, MapError> {
        let mut stats = self.apply_once(plan, ifindexes)?;
        // A renewal that did not fit may fit now that stale sets are gone: once more, so
        // a revocation does not wait for the next change.
        if !self.pending_renewals.is_empty() && stats.rule_sets_removed > 0 {
            let again = self.apply_once(plan, ifindexes)?;
            stats.rule_sets_added += again.rule_sets_added;
            stats.rule_sets_removed += again.rule_sets_removed;
            stats.peer_entries_written += again.peer_entries_written;
            stats.endpoints_written += again.endpoints_written;
            stats.endpoints_removed += again.endpoints_removed;
            stats.connections_forgotten += again.connections_forgotten;
            stats.identities_written += again.identities_written;
            stats.rule_sets_renewed += again.rule_sets_renewed;
            stats.overflowed = again.overflowed;
            stats.overflow_error = again.overflow_error;
        }
        Ok(stats)
    }

    fn apply_once(
        &mut self,
        plan: &Plan,
        ifindexes: &BTreeMap<ObjectRef, u32>,
    ) -> Result<ApplyStats, MapError> {
        let mut stats = ApplyStats::default();

        // 0. The pod ranges, before any table names the unknown pod; the node's own
        // addresses.
        self.write_pod_ranges(&plan.pod_ranges)?;
        self.write_node_self(&plan.node_self)?;

        // 1. Identities get ids; new rule sets are written in full before anything points
        // at them. A set that does not fit is left out; the pods that need it are handled
        // below.
        self.recognise_sets(plan);
        let plan_ids = self.identity_ids_of(plan)?;
        // Ids written by this apply: no connection names them yet, nothing to renew.
        let mut fresh: HashSet<u32> = HashSet::new();
        for set in &plan.rule_sets {
            if self.sets.contains_key(&**set) {
                continue;
            }
            match self.write_set(set) {
                Ok(loaded) => {
                    fresh.insert(loaded.id);
                    stats.rule_sets_added += 1;
                    stats.peer_entries_written += loaded.written;
                    self.sets.insert(set.clone(), loaded);
                }
                Err(e) => {
                    stats.overflow_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        // 2. Addresses take their identities; a set that allowed an address more under its
        // earlier identity is renewed, so its connections are decided again.
        self.write_identities(plan, &plan_ids, &fresh, &mut stats)?;
        let set_ids: Vec<Option<u32>> = plan
            .rule_sets
            .iter()
            .map(|set| self.sets.get(&**set).map(|l| l.id))
            .collect();
        // Isolated with nothing allowed: the fallback of a new pod whose set did not fit.
        // It has no entries, so it always fits.
        let deny_all = if set_ids.iter().any(Option::is_none) {
            Some(self.deny_all_set()?)
        } else {
            None
        };

        // 3. Endpoints flip to their sets; veths learn their pod.
        let mut want_endpoints = BTreeMap::new();
        let mut want_ifaces = BTreeMap::new();
        let mut live_pods = BTreeSet::new();
        for ep in &plan.endpoints {
            live_pods.insert(ep.pod.clone());
            let adopted = ep
                .ips
                .iter()
                .find_map(|ip| self.endpoints.get(&addr_of(*ip)))
                .map(|e| e.id)
                .filter(|id| !self.endpoint_ids.values().any(|v| v == id));
            let id = match self.endpoint_ids.get(&ep.pod).copied().or(adopted) {
                Some(id) => {
                    self.endpoint_ids.insert(ep.pod.clone(), id);
                    id
                }
                None => {
                    let id = self.ep_ids.take()?;
                    self.maps.reset_counters(id)?;
                    self.endpoint_ids.insert(ep.pod.clone(), id);
                    id
                }
            };
            let wanted = |r: Option<crate::compile::RuleSetRef>| match r {
                None => Some(RULESET_ALLOW_ALL),
                Some(r) => set_ids[r.0],
            };
            // An audit set that did not fit only leaves that audit undone.
            let audit = |r: Option<crate::compile::RuleSetRef>| {
                r.and_then(|r| set_ids[r.0]).unwrap_or(NO_AUDIT)
            };
            let ingress_rules = self
                .rule_tables
                .base_of(&ep.rules.ingress, &mut self.maps)?;
            let egress_rules = self.rule_tables.base_of(&ep.rules.egress, &mut self.maps)?;
            let info = match (wanted(ep.ingress), wanted(ep.egress)) {
                (Some(ingress_set), Some(egress_set)) => EndpointInfo {
                    id,
                    ingress_set,
                    egress_set,
                    audit_ingress_set: audit(ep.audit.ingress),
                    audit_egress_set: audit(ep.audit.egress),
                    ingress_rules,
                    egress_rules,
                },
                (ingress, egress) => {
                    stats.overflowed.push(ep.pod.clone());
                    let current = ep
                        .ips
                        .iter()
                        .find_map(|ip| self.endpoints.get(&addr_of(*ip)));
                    match current {
                        // Last complete state: the pod is not flipped at all. An earlier
                        // run's counter slots may name other rules in this run: an adopted
                        // pod kept so counts on none.
                        Some(old) => {
                            let mut kept = *old;
                            let adopted = ep
                                .ips
                                .iter()
                                .any(|ip| self.adopted_rule_slots.contains(&addr_of(*ip)));
                            if adopted {
                                kept.ingress_rules = 0;
                                kept.egress_rules = 0;
                            }
                            kept
                        }
                        None => {
                            let fallback = deny_all.unwrap_or(RULESET_ALLOW_ALL);
                            EndpointInfo {
                                id,
                                ingress_set: ingress.unwrap_or(fallback),
                                egress_set: egress.unwrap_or(fallback),
                                audit_ingress_set: NO_AUDIT,
                                audit_egress_set: NO_AUDIT,
                                ingress_rules: 0,
                                egress_rules: 0,
                            }
                        }
                    }
                }
            };
            let mut iface = IfaceInfo {
                endpoint_id: id,
                ingress_set: info.ingress_set,
                egress_set: info.egress_set,
                audit_ingress_set: info.audit_ingress_set,
                audit_egress_set: info.audit_egress_set,
                ingress_rules: info.ingress_rules,
                egress_rules: info.egress_rules,
                ..Default::default()
            };
            for ip in &ep.ips {
                want_endpoints.insert(addr_of(*ip), info);
                match ip {
                    IpAddr::V4(_) => {
                        iface.addr4 = addr_of(*ip);
                        iface.flags |= IFACE_HAS_V4;
                    }
                    IpAddr::V6(_) => {
                        iface.addr6 = addr_of(*ip);
                        iface.flags |= IFACE_HAS_V6;
                    }
                }
            }
            if let Some(ifindex) = ifindexes.get(&ep.pod) {
                want_ifaces.insert(*ifindex, iface);
            }
        }
        if !self.quarantined.is_empty() {
            let deny = match self.quarantine_set {
                Some(id) => id,
                None => {
                    let id = self.take_set_id()?;
                    *self.quarantine_set.insert(id)
                }
            };
            for ifindex in &self.quarantined {
                want_ifaces.entry(*ifindex).or_insert(IfaceInfo {
                    endpoint_id: 0,
                    ingress_set: deny,
                    egress_set: deny,
                    ..Default::default()
                });
            }
        }
        for (addr, info) in &want_endpoints {
            if self.endpoints.get(addr) != Some(info) {
                self.maps.set_endpoint(*addr, *info)?;
                self.endpoints.insert(*addr, *info);
                self.adopted_rule_slots.remove(addr);
                stats.endpoints_written += 1;
            }
        }
        // Addresses before interfaces: a veth never points at an unknown endpoint.
        for (ifindex, info) in &want_ifaces {
            if self.ifaces.get(ifindex) != Some(info) {
                self.maps.set_iface(*ifindex, *info)?;
                self.ifaces.insert(*ifindex, *info);
            }
        }
        let want_services: BTreeSet<ServiceKey> =
            plan.service_ports.iter().map(service_key).collect();
        for key in want_services.difference(&self.services.clone()) {
            self.maps.set_service(*key)?;
            self.services.insert(*key);
        }

        // 4. Whatever is no longer wanted.
        for ifindex in self.ifaces.keys().copied().collect::<Vec<_>>() {
            if !want_ifaces.contains_key(&ifindex) {
                self.maps.del_iface(ifindex)?;
                self.ifaces.remove(&ifindex);
            }
        }
        let mut gone = BTreeSet::new();
        for addr in self.endpoints.keys().copied().collect::<Vec<_>>() {
            if !want_endpoints.contains_key(&addr) {
                self.maps.del_endpoint(addr)?;
                self.endpoints.remove(&addr);
                stats.endpoints_removed += 1;
                gone.insert(addr);
            }
        }
        if !gone.is_empty() {
            stats.connections_forgotten = self.maps.forget_connections(&gone)?;
        }
        for pod in self.endpoint_ids.keys().cloned().collect::<Vec<_>>() {
            if !live_pods.contains(&pod)
                && let Some(id) = self.endpoint_ids.remove(&pod)
            {
                self.ep_ids.release(id);
            }
        }
        for addr in self
            .services
            .difference(&want_services)
            .copied()
            .collect::<Vec<_>>()
        {
            self.maps.del_service(addr)?;
            self.services.remove(&addr);
        }
        // A set is stale when the plan does not have it and no endpoint still points at it
        // (pods kept on their last state after an overflow do).
        let wanted_sets: HashSet<&RuleSet> = plan.rule_sets.iter().map(|s| &**s).collect();
        let in_use: BTreeSet<u32> = self.endpoints.values().flat_map(|e| e.sets()).collect();
        let stale: Vec<Arc<RuleSet>> = self
            .sets
            .iter()
            .filter(|(s, l)| !wanted_sets.contains(&***s) && !in_use.contains(&l.id))
            .map(|(s, _)| s.clone())
            .collect();
        for set in stale {
            if let Some(loaded) = self.sets.remove(&*set) {
                self.delete_set(loaded)?;
                stats.rule_sets_removed += 1;
            }
        }
        for loaded in std::mem::take(&mut self.superseded) {
            if in_use.contains(&loaded.id) {
                self.superseded.push(loaded);
            } else {
                self.delete_set(loaded)?;
            }
        }
        self.delete_leftovers(&in_use)?;
        self.forget_unused_identities();
        let counted: BTreeSet<u32> = self
            .endpoints
            .values()
            .flat_map(|e| [e.ingress_rules, e.egress_rules])
            .collect();
        self.rule_tables.keep_used(&counted, &self.maps)?;
        Ok(stats)
    }

    /// Keys each loaded set the plan has by the plan's own `Arc`: the plans that follow
    /// (incremental compiles share their sets) then find it by pointer, not by comparing
    /// thousands of entries.
    fn recognise_sets(&mut self, plan: &Plan) {
        for set in &plan.rule_sets {
            let shared = match self.sets.get_key_value(&**set) {
                Some((key, _)) => Arc::ptr_eq(key, set),
                None => true,
            };
            if !shared && let Some(loaded) = self.sets.remove(&**set) {
                self.sets.insert(set.clone(), loaded);
            }
        }
    }

    /// Makes `IDENTITIES` hold the plan's addresses, and renews every rule set that
    /// allowed an address something its new identity is not allowed (a pod relabelled,
    /// or a new pod on a removed pod's address): established connections are only
    /// re-decided when the set id of their pod changes.
    ///
    /// The sets to renew are recorded before any write and kept until renewed, so a
    /// failed write (a full map) delays a renewal but never loses it. An address whose
    /// identity does not fit is left without one: pod-selector rules deny it.
    fn write_identities(
        &mut self,
        plan: &Plan,
        plan_ids: &HashMap<*const Identity, IdentityId>,
        fresh: &HashSet<u32>,
        stats: &mut ApplyStats,
    ) -> Result<(), MapError> {
        let mut want: BTreeMap<Addr, IdentityId> = BTreeMap::new();
        for (ip, identity) in &plan.identities {
            if let Some(id) = plan_ids.get(&Arc::as_ptr(identity)) {
                want.insert(addr_of(*ip), *id);
            }
        }
        // (identity before, identity after; None: the address is left without one).
        let mut moved: BTreeSet<(IdentityId, Option<IdentityId>)> = BTreeSet::new();
        // Identities of addresses that had none (as far as this run knows).
        let mut first: BTreeSet<IdentityId> = BTreeSet::new();
        for (addr, id) in &want {
            let before = self
                .addresses
                .get(addr)
                .or_else(|| self.retired_addresses.get(addr));
            match before {
                Some(old) if old != id => {
                    moved.insert((*old, Some(*id)));
                }
                Some(_) => {}
                None => {
                    first.insert(*id);
                }
            }
        }
        self.note_renewals(&moved);
        self.note_first_identities(&first, fresh);
        // Removals first: they make room.
        let gone: Vec<(Addr, IdentityId)> = self
            .addresses
            .iter()
            .filter(|(a, _)| !want.contains_key(a))
            .map(|(a, i)| (*a, *i))
            .collect();
        for (addr, id) in gone {
            self.maps.del_identity(addr)?;
            self.addresses.remove(&addr);
            self.retired_addresses.insert(addr, id);
            stats.identities_written += 1;
        }
        let mut lost = BTreeSet::new();
        for (addr, id) in &want {
            if self.addresses.get(addr) == Some(id) {
                continue;
            }
            match self.maps.set_identity(*addr, *id) {
                Ok(()) => {
                    self.addresses.insert(*addr, *id);
                    self.retired_addresses.remove(addr);
                }
                Err(e) => {
                    // Never left on its old identity: that could allow more.
                    self.maps.del_identity(*addr)?;
                    if let Some(old) = self.addresses.remove(addr) {
                        self.retired_addresses.insert(*addr, old);
                        lost.insert((old, None));
                    }
                    stats.overflow_error.get_or_insert_with(|| e.to_string());
                }
            }
            stats.identities_written += 1;
        }
        self.note_renewals(&lost);
        self.renew_pending(plan, stats);
        Ok(())
    }

    /// Records the ordered sets whose connections with an address that had no identity
    /// may be decided otherwise now that it has one: those with a Deny or Pass for it
    /// (without an identity only address rules matched it; Accepts can only allow more).
    /// Unordered sets only allow, so they never need it.
    fn note_first_identities(&mut self, first: &BTreeSet<IdentityId>, fresh: &HashSet<u32>) {
        if first.is_empty() {
            return;
        }
        let named: Vec<&Arc<Identity>> = (self.identity_ids.iter())
            .filter(|(_, id)| first.contains(id))
            .map(|(i, _)| i)
            .collect();
        for (set, l) in &self.sets {
            let Some(o) = &set.ordered else {
                continue;
            };
            if fresh.contains(&l.id) {
                continue;
            }
            let restricts = named.iter().any(|i| {
                [
                    set.peers.get(*i),
                    o.admin.as_ref().and_then(|a| a.peers.get(*i)),
                ]
                .into_iter()
                .flatten()
                .any(not_only_accepts)
            });
            if restricts {
                self.pending_renewals.insert(set.clone());
            }
        }
    }

    /// Records the loaded sets that allowed an address more before a move.
    fn note_renewals(&mut self, moved: &BTreeSet<(IdentityId, Option<IdentityId>)>) {
        if moved.is_empty() {
            return;
        }
        for (set, l) in &self.sets {
            let less = moved.iter().any(|(old, new)| {
                let before = self.value_of(l, old);
                let after = match new {
                    Some(n) => self.value_of(l, n),
                    None => (None, None),
                };
                if l.id & RULESET_ORDERED != 0 {
                    // A Deny matches by identity too, and no entry is the default's
                    // answer: any change of entry can decide otherwise.
                    before != after
                } else {
                    before != (None, None) && before != after
                }
            });
            if less {
                self.pending_renewals.insert(set.clone());
            }
        }
    }

    /// The value set `l` holds for `identity`, in each of its tables.
    fn value_of<'a>(
        &'a self,
        l: &'a LoadedSet,
        identity: &IdentityId,
    ) -> (Option<&'a PeerValue>, Option<&'a PeerValue>) {
        let admin = (l.admin.as_ref())
            .and_then(|a| self.admin_tables.get(a))
            .and_then(|a| a.table.peers.get(identity));
        (l.table.peers.get(identity), admin)
    }

    /// Writes each pending set again under a new id; what does not fit stays pending.
    /// Sets the plan still wants go first: the others are on their way out (their pods
    /// flip to new ids anyway), and must not take the room.
    fn renew_pending(&mut self, plan: &Plan, stats: &mut ApplyStats) {
        let wanted: HashSet<&RuleSet> = plan.rule_sets.iter().map(|s| &**s).collect();
        let (mut order, rest): (Vec<Arc<RuleSet>>, Vec<Arc<RuleSet>>) =
            std::mem::take(&mut self.pending_renewals)
                .into_iter()
                .partition(|s| wanted.contains(&**s));
        order.extend(rest);
        for set in order {
            if !self.sets.contains_key(&*set) {
                continue; // gone: its pods flip to other sets anyway
            }
            match self.write_set(&set) {
                Ok(loaded) => {
                    stats.rule_sets_renewed += 1;
                    stats.peer_entries_written += loaded.written;
                    if let Some(old) = self.sets.insert(set, loaded) {
                        self.superseded.push(old);
                    }
                }
                Err(e) => {
                    stats.overflow_error.get_or_insert_with(|| e.to_string());
                    self.pending_renewals.insert(set);
                }
            }
        }
    }

    /// The id of every identity of the plan (new ones get one), by the plan's shared
    /// `Arc`s: each distinct identity is looked up once, not once per address. Rule sets
    /// may name an identity no address has (yet): it gets an id too. After a restart, an
    /// identity whose addresses all carry one adopted id keeps it, so the adopted rule
    /// sets (which name adopted ids) keep deciding as before until pods flip.
    fn identity_ids_of(
        &mut self,
        plan: &Plan,
    ) -> Result<HashMap<*const Identity, IdentityId>, MapError> {
        let mut adopted_of: HashMap<*const Identity, Option<IdentityId>> = HashMap::new();
        if !self.adopted_identities.is_empty() {
            for (ip, identity) in &plan.identities {
                let carried = self.adopted_identities.get(&addr_of(*ip)).copied();
                adopted_of
                    .entry(Arc::as_ptr(identity))
                    .and_modify(|c| {
                        if *c != carried {
                            *c = None;
                        }
                    })
                    .or_insert(carried);
            }
        }
        // Only needed to reuse an adopted id (after a restart).
        let mut taken: BTreeSet<IdentityId> = if adopted_of.is_empty() {
            BTreeSet::new()
        } else {
            self.identity_ids.values().copied().collect()
        };
        // A loaded set's identities have ids (kept while it names them).
        let named = plan
            .rule_sets
            .iter()
            .filter(|s| !self.sets.contains_key(&***s))
            .flat_map(|s| s.named_identities());
        let named: Vec<&Arc<Identity>> = named.collect();
        let mut ids = HashMap::new();
        for identity in plan.identities.values().chain(named) {
            let ptr = Arc::as_ptr(identity);
            if ids.contains_key(&ptr) {
                continue;
            }
            if identity.is_unknown_pod() {
                // Reserved: written by `write_table`, never held by an address.
                continue;
            }
            let id = match self.identity_ids.get_key_value(&**identity) {
                Some((key, id)) if Arc::ptr_eq(key, identity) => *id,
                Some((_, id)) => {
                    // Equal, but another plan's: keyed by this one from now on.
                    let id = *id;
                    self.identity_ids.remove(&**identity);
                    self.identity_ids.insert(identity.clone(), id);
                    id
                }
                None => {
                    let reuse = adopted_of
                        .get(&ptr)
                        .copied()
                        .flatten()
                        .filter(|id| !taken.contains(id));
                    let id = match reuse {
                        Some(id) => id,
                        None => {
                            let id = self.next_identity;
                            if id == IDENTITY_UNKNOWN_POD {
                                return Err(MapError::IdsExhausted("identities"));
                            }
                            self.next_identity = id + 1;
                            id
                        }
                    };
                    taken.insert(id);
                    self.identity_ids.insert(identity.clone(), id);
                    id
                }
            };
            ids.insert(ptr, id);
        }
        self.adopted_identities.clear();
        Ok(ids)
    }

    /// Identities no address has and no rule set names (their ids are not reused).
    fn forget_unused_identities(&mut self) {
        let tables = (self.sets.values().map(|l| &l.table.peers))
            .chain(self.superseded.iter().map(|l| &l.table.peers))
            .chain(self.admin_tables.values().map(|a| &a.table.peers));
        let named: BTreeSet<IdentityId> = (self.addresses.values().copied())
            .chain(tables.flat_map(|peers| peers.keys().copied()))
            .collect();
        self.identity_ids.retain(|_, id| named.contains(id));
    }

    /// An adopted run's entries whose rule set no endpoint uses any more.
    fn delete_leftovers(&mut self, in_use: &BTreeSet<u32>) -> Result<(), MapError> {
        if self.leftover_peers.is_empty()
            && self.leftover_identity_peers.is_empty()
            && self.leftover_portsets.is_empty()
            && self.leftover_admin_tables.is_empty()
        {
            return Ok(());
        }
        // Compared without flags: an Admin table's key has one endpoints never point at.
        let mine: BTreeSet<u32> = (self.sets.values().map(|l| ruleset_base(l.id)))
            .chain(self.admin_tables.values().map(|a| a.id))
            .collect();
        let mut in_use: BTreeSet<u32> = in_use.iter().map(|id| ruleset_base(*id)).collect();
        // An adopted set still in use keeps its Admin table, and its name in the map.
        let mut kept_admin_tables = Vec::new();
        for (set, table) in std::mem::take(&mut self.leftover_admin_tables) {
            if mine.contains(&set) {
                continue;
            }
            if in_use.contains(&set) {
                kept_admin_tables.push((set, table));
            } else {
                self.maps.del_admin_table(set)?;
            }
        }
        in_use.extend(kept_admin_tables.iter().map(|(_, table)| *table));
        self.leftover_admin_tables = kept_admin_tables;
        let mut kept_identity_peers = Vec::new();
        for key in std::mem::take(&mut self.leftover_identity_peers) {
            if mine.contains(&ruleset_base(key.ruleset)) {
                continue;
            }
            if in_use.contains(&ruleset_base(key.ruleset)) {
                kept_identity_peers.push(key);
            } else {
                self.maps.del_identity_peer(key)?;
            }
        }
        self.leftover_identity_peers = kept_identity_peers;
        let mut kept = Vec::new();
        for (key, len) in std::mem::take(&mut self.leftover_peers) {
            let set = ruleset_base(u32::from_be_bytes(key.ruleset_be));
            if mine.contains(&set) {
                continue; // reused id: the entry is ours now
            }
            if in_use.contains(&set) {
                kept.push((key, len));
            } else {
                self.maps.del_peer(key, len)?;
            }
        }
        self.leftover_peers = kept;
        if self.leftover_peers.is_empty() && self.leftover_identity_peers.is_empty() {
            let mine: BTreeSet<u32> = self.portsets.values().map(|p| p.id).collect();
            for id in std::mem::take(&mut self.leftover_portsets) {
                if !mine.contains(&id) {
                    self.maps.del_portset(id)?;
                }
            }
        }
        Ok(())
    }

    fn deny_all_set(&mut self) -> Result<u32, MapError> {
        let empty = RuleSet::default();
        if let Some(l) = self.sets.get(&empty) {
            return Ok(l.id);
        }
        let loaded = self.write_set(&empty)?;
        let id = loaded.id;
        self.sets.insert(Arc::new(empty), loaded);
        Ok(id)
    }

    /// The peer entry of `spec`, holding its port set.
    fn peer_value(&mut self, spec: &Allowed<Position>) -> Result<PeerValue, MapError> {
        let portset = self.portset_for(spec.ranges())?;
        let rest_rule = spec.rest().copied().unwrap_or(REST_DENIED);
        Ok(PeerValue { portset, rest_rule })
    }

    fn release_peer_value(&mut self, value: PeerValue) -> Result<(), MapError> {
        self.release_portset(value.portset)
    }

    /// The port set holding `ranges`; more than `MAX_PORT_RANGES` are chained (only
    /// ordered tables need it, and only their lookup follows chains).
    fn portset_for(&mut self, ranges: &[(Ports, Option<Position>)]) -> Result<u32, MapError> {
        // compile() already replaced sets that do not fit with "none".
        if ranges.is_empty() || ranges.len() > MAX_ORDERED_PORT_RANGES {
            return Ok(NO_PORTSET);
        }
        if let Some(loaded) = self.portsets.get_mut(ranges) {
            loaded.refs += 1;
            return Ok(loaded.id);
        }
        let (here, rest) = ranges.split_at(ranges.len().min(MAX_PORT_RANGES));
        let next = self.portset_for(rest)?;
        let mut encoded = PortSet {
            len: here.len() as u32 | next << PORTSET_NEXT_SHIFT,
            ..Default::default()
        };
        for ((r, rule), slot) in here.iter().zip(encoded.ranges.iter_mut()) {
            *slot = PortRange {
                proto: r.protocol.number(),
                _pad: 0,
                first: r.first,
                last: r.last,
                _pad2: 0,
                rule: rule.unwrap_or(RULE_UNNAMED),
            };
        }
        let written = self.portset_ids.take().and_then(|id| {
            self.maps.set_portset(id, &encoded)?;
            Ok(id)
        });
        let id = match written {
            Ok(id) => id,
            Err(e) => {
                self.release_portset(next)?;
                return Err(e);
            }
        };
        let loaded = LoadedPortSet { id, next, refs: 1 };
        self.portsets.insert(ranges.to_vec(), loaded);
        Ok(id)
    }

    fn release_portset(&mut self, id: u32) -> Result<(), MapError> {
        if id == NO_PORTSET {
            return Ok(());
        }
        let Some(key) = self
            .portsets
            .iter()
            .find(|(_, p)| p.id == id)
            .map(|(k, _)| k.clone())
        else {
            return Ok(());
        };
        if let Some(loaded) = self.portsets.get_mut(&key) {
            loaded.refs -= 1;
            if loaded.refs == 0 {
                let next = loaded.next;
                self.portsets.remove(&key);
                self.maps.del_portset(id)?;
                self.portset_ids.release(id);
                self.release_portset(next)?;
            }
        }
        Ok(())
    }

    /// Every counted rule, by its `RULE_COUNTERS` slot (what names events). A rule of
    /// several pods' lists has several slots.
    pub fn rule_names(&self) -> BTreeMap<u32, RuleTag> {
        self.rule_tables.names()
    }

    /// Packets allowed per rule since it was first named (the rule counters' values).
    pub fn rule_packets(&self) -> Result<BTreeMap<RuleTag, u64>, MapError> {
        self.rule_tables.packets(&self.maps)
    }

    fn write_set(&mut self, set: &RuleSet) -> Result<LoadedSet, MapError> {
        let id = self.take_set_id()?;
        let mut loaded = LoadedSet {
            id: flagged_id(id, set),
            table: LoadedTable::default(),
            admin: None,
            written: 0,
        };
        let mut written = self.write_table(loaded.id, &set.peers, &set.blocks, &mut loaded.table);
        if let (Ok(()), Some(admin)) = (
            &written,
            set.ordered.as_ref().and_then(|o| o.admin.as_ref()),
        ) {
            written = match self.hold_admin_table(id, admin) {
                Ok(entries) => {
                    loaded.admin = Some(admin.clone());
                    loaded.written = entries;
                    Ok(())
                }
                Err(e) => Err(e),
            };
        }
        if let Err(e) = written {
            // Nothing points at this id yet: take back what was written.
            let _ = self.delete_set(loaded);
            return Err(e);
        }
        loaded.written += loaded.table.len();
        Ok(loaded)
    }

    fn take_set_id(&mut self) -> Result<u32, MapError> {
        let id = self.set_ids.take()?;
        // Recorded before use: a restarted agent must never hand this id out again.
        self.maps.set_next_ruleset_id(id.saturating_add(1))?;
        Ok(id)
    }

    /// Names `table` the Admin table of the set `set` (its id without flags), writing the
    /// table first if no set holds it yet. Returns the table entries it wrote.
    fn hold_admin_table(&mut self, set: u32, table: &Arc<AdminTable>) -> Result<usize, MapError> {
        let mut entries = 0;
        let id = match self.admin_tables.get(table) {
            Some(loaded) => loaded.id,
            None => {
                let id = self.take_set_id()?;
                let key = id | RULESET_ADMIN_TABLE;
                let mut written = LoadedTable::default();
                if let Err(e) = self.write_table(key, &table.peers, &table.blocks, &mut written) {
                    let _ = self.delete_table(key, written);
                    return Err(e);
                }
                entries = written.len();
                let loaded = LoadedAdmin {
                    id,
                    table: written,
                    holders: 0,
                };
                self.admin_tables.insert(table.clone(), loaded);
                id
            }
        };
        match self.maps.set_admin_table(set, id) {
            Ok(()) => {
                if let Some(loaded) = self.admin_tables.get_mut(table) {
                    loaded.holders += 1;
                }
                Ok(entries)
            }
            Err(e) => {
                // No holder yet: `release_admin_table` deletes it again.
                if self.admin_tables.get(table).is_some_and(|l| l.holders == 0) {
                    self.release_admin_table(table)?;
                }
                Err(e)
            }
        }
    }

    /// One holder of `table` fewer: the last deletes it.
    fn release_admin_table(&mut self, table: &Arc<AdminTable>) -> Result<(), MapError> {
        let Some(loaded) = self.admin_tables.get_mut(table) else {
            return Ok(());
        };
        loaded.holders = loaded.holders.saturating_sub(1);
        if loaded.holders > 0 {
            return Ok(());
        }
        if let Some(loaded) = self.admin_tables.remove(table) {
            self.delete_table(loaded.id | RULESET_ADMIN_TABLE, loaded.table)?;
        }
        Ok(())
    }

    /// Writes one table under key `key_id` (a set's id, or an Admin table's with its key
    /// bit), recording what it wrote in `loaded`.
    fn write_table(
        &mut self,
        key_id: u32,
        peers: &BTreeMap<Arc<Identity>, Allowed<Position>>,
        blocks: &BTreeMap<Prefix, Allowed<Position>>,
        loaded: &mut LoadedTable,
    ) -> Result<(), MapError> {
        for (identity, spec) in peers {
            // Every identity of the plan got an id in `apply`; one without is not allowed.
            let id = match identity.is_unknown_pod() {
                true => Some(IDENTITY_UNKNOWN_POD),
                false => self.identity_ids.get(identity).copied(),
            };
            let Some(identity) = id else {
                continue;
            };
            let value = self.peer_value(spec)?;
            let key = IdentityKey {
                ruleset: key_id,
                identity,
            };
            if let Err(e) = self.maps.set_identity_peer(key, value) {
                self.release_peer_value(value)?;
                return Err(e);
            }
            loaded.peers.insert(identity, value);
        }
        for (prefix, spec) in blocks {
            let value = self.peer_value(spec)?;
            let key = PeerKey::new(key_id, prefix.addr());
            if let Err(e) = self.maps.set_peer(key, prefix.bits(), value) {
                self.release_peer_value(value)?;
                return Err(e);
            }
            loaded.blocks.push((key, prefix.bits(), value));
        }
        Ok(())
    }

    fn delete_set(&mut self, loaded: LoadedSet) -> Result<(), MapError> {
        if let Some(admin) = &loaded.admin {
            self.maps.del_admin_table(ruleset_base(loaded.id))?;
            self.release_admin_table(admin)?;
        }
        // The id is not released: conntrack entries may still name it, and an entry must
        // never validate against a different rule set that reused it.
        self.delete_table(loaded.id, loaded.table)
    }

    fn delete_table(&mut self, key_id: u32, table: LoadedTable) -> Result<(), MapError> {
        for (identity, value) in &table.peers {
            self.maps.del_identity_peer(IdentityKey {
                ruleset: key_id,
                identity: *identity,
            })?;
            self.release_peer_value(*value)?;
        }
        for (key, len, value) in &table.blocks {
            self.maps.del_peer(*key, *len)?;
            self.release_peer_value(*value)?;
        }
        Ok(())
    }
}

impl<M: MapOps> Programmer<M> {
    /// Addresses of local pods that `plan` isolates in a direction they are not isolated
    /// in now (new pods included): their existing connections must be tracked before the
    /// flip, from the kernel's evidence.
    pub fn newly_isolated(&self, plan: &Plan) -> BTreeSet<IpAddr> {
        let mut out = BTreeSet::new();
        for ep in &plan.endpoints {
            for ip in &ep.ips {
                let now = self.endpoints.get(&addr_of(*ip));
                let ingress_now = now.is_some_and(|e| e.ingress_set != RULESET_ALLOW_ALL);
                let egress_now = now.is_some_and(|e| e.egress_set != RULESET_ALLOW_ALL);
                if (ep.ingress.is_some() && !ingress_now) || (ep.egress.is_some() && !egress_now) {
                    out.insert(*ip);
                }
            }
        }
        out
    }

    /// Makes the pod-range entries (`RULESET_POD_RANGES`) hold exactly `ranges`.
    fn write_pod_ranges(&mut self, ranges: &BTreeMap<Prefix, bool>) -> Result<(), MapError> {
        let value = |in_range: bool| PeerValue {
            portset: NO_PORTSET,
            rest_rule: if in_range { RULE_UNNAMED } else { REST_DENIED },
        };
        let want: BTreeMap<(Addr, u8), bool> = (ranges.iter())
            .map(|(p, in_range)| ((p.addr(), p.bits()), *in_range))
            .collect();
        for (&(addr, len), &in_range) in &want {
            if self.pod_ranges.get(&(addr, len)) != Some(&in_range) || self.stale_pod_ranges {
                let key = PeerKey::new(RULESET_POD_RANGES, addr);
                self.maps.set_peer(key, len, value(in_range))?;
                self.pod_ranges.insert((addr, len), in_range);
            }
        }
        let gone: Vec<(Addr, u8)> = (self.pod_ranges.keys())
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for (addr, len) in gone {
            self.maps
                .del_peer(PeerKey::new(RULESET_POD_RANGES, addr), len)?;
            self.pod_ranges.remove(&(addr, len));
        }
        self.stale_pod_ranges = false;
        Ok(())
    }

    /// The node's own addresses (`META`), and the addresses its Node has (`NODE_ADDRS`).
    fn write_node_self(&mut self, own: &crate::compile::NodeSelf) -> Result<(), MapError> {
        let v4 = own.v4.map(|a| a.octets());
        let words = netpol_common::meta::node_self_words(v4, own.v6.map(|a| a.octets()));
        if self.node_self != Some(words) {
            self.maps.set_node_self(words)?;
            self.node_self = Some(words);
        }
        self.named_addrs = own.addresses.iter().map(|ip| addr_of(*ip)).collect();
        self.sync_node_addrs()?;
        Ok(())
    }

    /// Makes the node-address map hold exactly `addrs` (every address of this node: traffic
    /// between a pod and its own node always passes). Returns how many entries changed.
    pub fn set_node_addrs(&mut self, addrs: &BTreeSet<IpAddr>) -> Result<usize, MapError> {
        self.set_node_addresses(addrs, &BTreeSet::new(), true)
    }

    /// The addresses of the node's interfaces: `own` (with NetworkPolicy's own-node
    /// exemption when `exempt`) and `broadcast` (without; an address that is both is the
    /// node's). Returns how many `NODE_ADDRS` entries changed.
    pub fn set_node_addresses(
        &mut self,
        own: &BTreeSet<IpAddr>,
        broadcast: &BTreeSet<IpAddr>,
        exempt: bool,
    ) -> Result<usize, MapError> {
        let own_kind = if exempt {
            node_addr::OWN
        } else {
            node_addr::LOCAL
        };
        let kinds = [(broadcast, node_addr::BROADCAST), (own, own_kind)];
        self.iface_addrs = (kinds.iter())
            .flat_map(|(ips, kind)| ips.iter().map(|ip| (addr_of(*ip), *kind)))
            .collect();
        self.sync_node_addrs()
    }

    /// The Service addresses kube-proxy's IPVS mode puts on the node (`kube-ipvs0`): what
    /// reaches one on a port no Service has reaches the node's sockets. Returns how many
    /// `NODE_ADDRS` entries changed.
    pub fn set_service_addresses(&mut self, addrs: &BTreeSet<IpAddr>) -> Result<usize, MapError> {
        self.service_addrs = addrs.iter().map(|ip| addr_of(*ip)).collect();
        self.sync_node_addrs()
    }

    /// Makes `NODE_ADDRS` hold the interfaces' addresses and the Node's, with their kinds.
    fn sync_node_addrs(&mut self) -> Result<usize, MapError> {
        let mut want = self.iface_addrs.clone();
        for a in &self.service_addrs {
            want.entry(*a).or_insert(node_addr::LOCAL);
        }
        for a in &self.named_addrs {
            *want.entry(*a).or_default() |= node_addr::NAMED;
        }
        let mut changed = 0;
        for (a, kind) in &want {
            if self.node_addrs.get(a) != Some(kind) {
                self.maps.set_node_addr(*a, *kind)?;
                self.node_addrs.insert(*a, *kind);
                changed += 1;
            }
        }
        let gone: Vec<Addr> = (self.node_addrs.keys())
            .filter(|a| !want.contains_key(a))
            .copied()
            .collect();
        for a in gone {
            self.maps.del_node_addr(a)?;
            self.node_addrs.remove(&a);
            changed += 1;
        }
        Ok(changed)
    }
}

/// The LPM prefix length of an address prefix length, counting the rule-set id bits.
pub fn lpm_len(addr_prefix_len: u8) -> u32 {
    netpol_common::RULESET_ID_BITS + u32::from(addr_prefix_len)
}
