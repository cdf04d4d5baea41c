//! What the programmed maps decide for a flow, read back in userspace with the datapath's
//! lookup (`MemoryMaps::allows`): egress at the source's node, ingress at the
//! destination's node. The property tests compare it with `reference::allowed`.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use netpol_agent::program::memory::MemoryMaps;
use netpol_agent::program::{Programmer, addr_of};
use netpol_agent::state::{ClusterState, Protocol};

use crate::reference::End;

/// `maps`: each node's programmer, by node name.
pub fn maps_decide<K: Ord + Borrow<str>>(
    state: &ClusterState,
    maps: &BTreeMap<K, Programmer<MemoryMaps>>,
    src: &End,
    dst: &End,
    protocol: Protocol,
    port: u16,
) -> bool {
    let side = |end: &End| -> Option<(&Programmer<MemoryMaps>, IpAddr)> {
        let End::Pod(r, ip) = end else { return None };
        let node = state.pods.get(r)?.node.as_deref()?;
        Some((maps.get(node)?, *ip))
    };
    let egress_ok = match side(src) {
        Some((p, ip)) => match p.maps().endpoints.get(&addr_of(ip)) {
            Some(ep) => p.maps().allows(ep.egress_set, dst.ip(), protocol, port),
            None => true,
        },
        None => true,
    };
    let ingress_ok = match side(dst) {
        Some((p, ip)) => match p.maps().endpoints.get(&addr_of(ip)) {
            Some(ep) => p.maps().allows(ep.ingress_set, src.ip(), protocol, port),
            None => true,
        },
        None => true,
    };
    egress_ok && ingress_ok
}
