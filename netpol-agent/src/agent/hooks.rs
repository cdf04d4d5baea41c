//! What the agent hooks: each local pod's veth (see `datapath::pod_links`), veths held
//! in quarantine, and the uplinks (see `datapath::uplinks`).

use std::collections::BTreeMap;

use tracing::{error, info, warn};

use super::Agent;
use crate::compile;
use crate::datapath::{self, pod_links, routes, uplinks};
use crate::state::ObjectRef;

impl Agent {
    /// The veth of each local pod that has one (see `datapath::pod_links`); veths that
    /// claim a pod they cannot be given go to `self.quarantined`. `None` when the kernel
    /// could not be read (nothing changes then).
    pub(super) fn find_pod_veths(
        &mut self,
        plan: &compile::Plan,
        links: &[pod_links::Link],
    ) -> Option<BTreeMap<ObjectRef, (String, u32)>> {
        let read =
            || -> std::io::Result<_> { Ok((routes::host_routes()?, pod_links::pod_links(links)?)) };
        let (host_routes, veths) = match read() {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "reading pod addresses and routes");
                return None;
            }
        };
        let pods: Vec<(ObjectRef, Vec<std::net::IpAddr>)> = plan
            .endpoints
            .iter()
            .map(|ep| (ep.pod.clone(), ep.ips.clone()))
            .collect();
        if !self.adopted_veths_read {
            self.adopted_veths_read = true;
            self.hooked_before = self.adopted_veths(plan, links);
        }
        let declared: BTreeMap<ObjectRef, Vec<String>> = self
            .cni_pods
            .iter()
            .map(|(pod, c)| (pod.clone(), c.host_interfaces.clone()))
            .collect();
        let found = pod_links::resolve(&pods, &host_routes, &veths, &self.hooked_before, &declared);
        let index: BTreeMap<&str, u32> = links.iter().map(|l| (l.name.as_str(), l.index)).collect();
        let mut ifaces = BTreeMap::new();
        for (pod, name) in found.hooked {
            match index
                .get(name.as_str())
                .copied()
                .map(Ok)
                .unwrap_or_else(|| datapath::ifindex(&name))
            {
                Ok(idx) => {
                    ifaces.insert(pod, (name, idx));
                }
                Err(e) => warn!(%pod, iface = %name, error = %e, "interface vanished"),
            }
        }
        if found.quarantined != self.quarantined {
            for (name, pods) in &found.quarantined {
                if self.quarantined.get(name) != Some(pods) {
                    let pods: Vec<String> = pods.iter().map(ToString::to_string).collect();
                    warn!(iface = %name, ?pods, "veth claims the address of a pod it cannot be matched to (a pod that sets its own addresses, or an old pod's namespace still holding a reused address): everything it carries is dropped until the claim is resolved");
                }
            }
            for name in self.quarantined.keys() {
                if !found.quarantined.contains_key(name) {
                    info!(iface = %name, "veth no longer quarantined");
                }
            }
        }
        self.quarantined = found
            .quarantined
            .into_iter()
            .filter_map(|(name, pods)| index.get(name.as_str()).map(|_| (name, pods)))
            .collect();
        self.quarantined_index = self
            .quarantined
            .keys()
            .filter_map(|n| index.get(n.as_str()).copied())
            .collect();
        Some(ifaces)
    }

    /// Without `--uplink`: hooks every interface routes leave the node by (see
    /// `datapath::uplinks`), as they come and go (a tunnel device made after netpol
    /// started included).
    pub(super) fn refresh_uplinks(
        &mut self,
        links: &[pod_links::Link],
        pods: &BTreeMap<ObjectRef, (String, u32)>,
    ) {
        if !self.args.uplinks.is_empty() {
            return;
        }
        let pod_veths: std::collections::BTreeSet<&str> = pods
            .values()
            .map(|(n, _)| n.as_str())
            .chain(self.quarantined.keys().map(String::as_str))
            .collect();
        let found = match uplinks::route_interfaces() {
            Ok(r) => uplinks::pick(links, &r, &pod_veths),
            Err(e) => {
                error!(error = %e, "reading routes for the uplinks");
                return;
            }
        };
        for (name, why) in &found.refused {
            if self.refused_uplinks.get(name) != Some(why) {
                warn!(iface = %name, "not hooked as an uplink: {why}");
            }
        }
        self.refused_uplinks = found.refused;
        let mut hooked = Vec::new();
        let mut indexes = std::collections::BTreeSet::new();
        for up in found.uplinks {
            let Some(l) = links.iter().find(|l| l.name == up) else {
                continue;
            };
            if !self.datapath.is_attached(&up) {
                match self.datapath.attach_uplink(&up) {
                    Ok(()) => info!(iface = %up, "uplink attached"),
                    Err(e) => {
                        self.metrics.attach_failures.inc();
                        error!(iface = %up, error = format!("{e:#}"), "attaching an uplink failed");
                        continue;
                    }
                }
            }
            indexes.insert(l.index);
            hooked.push(up);
        }
        if hooked == self.uplinks && self.uplinks_known {
            return;
        }
        if let Err(e) = self.programmer.maps_mut().set_uplinks(&indexes) {
            error!(error = %e, "programming the uplinks");
            return;
        }
        info!(uplinks = ?hooked, "uplinks");
        self.uplinks_known = true;
        self.uplinks = hooked.clone();
        self.update_status(|s| s.uplinks = hooked);
    }

    /// The veths an earlier run had matched to pods (its pinned `IFACES`, by the pod's
    /// addresses): what a restarted agent knows of who held which veth, so that a claim
    /// made while it was down wins nothing.
    pub(super) fn adopted_veths(
        &self,
        plan: &compile::Plan,
        links: &[pod_links::Link],
    ) -> BTreeMap<ObjectRef, String> {
        use netpol_common::{IFACE_HAS_V4, IFACE_HAS_V6};
        let by_addr: BTreeMap<netpol_common::Addr, &ObjectRef> = plan
            .endpoints
            .iter()
            .flat_map(|ep| {
                ep.ips
                    .iter()
                    .map(move |ip| (crate::program::addr_of(*ip), &ep.pod))
            })
            .collect();
        let mut out = BTreeMap::new();
        for (ifindex, info) in self.programmer.ifaces() {
            let Some(link) = links.iter().find(|l| l.index == *ifindex) else {
                continue;
            };
            let addrs = [
                (info.flags & IFACE_HAS_V4 != 0).then_some(info.addr4),
                (info.flags & IFACE_HAS_V6 != 0).then_some(info.addr6),
            ];
            if let Some(pod) = addrs.into_iter().flatten().find_map(|a| by_addr.get(&a)) {
                out.insert((*pod).clone(), link.name.clone());
            }
        }
        out
    }

    /// Quarantined veths get netpol's programs (they drop what such a veth carries once
    /// the maps say so).
    pub(super) fn hold_quarantined(&mut self) {
        for name in self.quarantined.keys() {
            if !self.datapath.is_attached(name)
                && let Err(e) = self.datapath.attach_pod(name)
            {
                self.metrics.attach_failures.inc();
                error!(iface = %name, error = format!("{e:#}"), "attaching a quarantined veth failed");
            }
        }
        self.programmer.quarantine(self.quarantined_index.clone());
    }
}
