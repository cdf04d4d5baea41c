//! The sandbox's network: nodes on one switch, the external side behind node-1 (with an
//! optional narrow router hop), pods behind veths, Services as kube-proxy-like nftables
//! rules. No static neighbour entries anywhere: ARP and IPv6 neighbour discovery run for
//! real on every link.
//!
//! ```text
//!   pod netns (eth0, 10.244.N.x/32, default via 169.254.1.1 / fe80::ecee:eeff:feee:eeee)
//!        | veth (host side vpK: the gateway address, the agent's pod hook)
//!   node-K netns --nl0-- switch netns (bridge) --nl0-- other nodes (10.255.0.K/24)
//!   node-1 --ext0 (10.255.1.1/30)-- [r1 ==MTU N== r2 --] ext netns (the model's external hosts)
//! ```

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use super::{Family, PodPlace, Sandbox, ip, run, veth};
use crate::cases::selects;

/// MAC of every node-side pod veth; in IPv6 the pods' gateway is its EUI-64 link-local.
const GW_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// The pods' IPv4 gateway: an address of the host side of every pod veth (link scope).
const GW_IP: &str = "169.254.1.1";
const GW_IP6: &str = "fe80::ecee:eeff:feee:eeee";
/// Ports of the stray checks lie outside this range; probes use it for their own.
const EPHEMERAL: &str = "32768 60999";
/// kube-proxy's masquerade mark.
const MASQ_MARK: &str = "0x4000";

const fn v4(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// The link between hop `k` and hop `k + 1` of the external chain: 10.255.1.(4k)/30.
fn chain_link(k: usize) -> Result<(Ipv4Addr, Ipv4Addr, Ipv4Addr)> {
    let base = u8::try_from(4 * k).map_err(|_| anyhow!("external chain too long"))?;
    Ok((
        v4(10, 255, 1, base),
        v4(10, 255, 1, base + 1),
        v4(10, 255, 1, base + 2),
    ))
}

impl Sandbox {
    pub(super) fn node_ns(&self, i: usize) -> String {
        self.netns(&format!("n{}", i + 1))
    }

    /// A node's primary address: the one on its link to the other nodes.
    pub fn node_addr(&self, i: usize) -> IpAddr {
        self.fam().addr(Self::node_v4(i))
    }

    fn node_v4(i: usize) -> Ipv4Addr {
        v4(10, 255, 0, i as u8 + 1)
    }

    fn sysctl(&self, ns: &str, settings: &[&str]) -> Result<()> {
        let mut args = vec!["ip", "netns", "exec", ns, "sysctl", "-qw"];
        args.extend_from_slice(settings);
        run(&args)
    }

    /// Settings of every namespace: no DAD (addresses usable at once), the ephemeral
    /// port range the stray checks stay out of, no TCP MTU probing.
    pub(super) fn base_sysctls(&self, ns: &str) -> Result<()> {
        let range = format!("net.ipv4.ip_local_port_range={EPHEMERAL}");
        self.sysctl(
            ns,
            &[
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
                &range,
                "net.ipv4.tcp_mtu_probing=0",
            ],
        )
    }

    fn forwarding_sysctls(&self, ns: &str) -> Result<()> {
        self.sysctl(
            ns,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )
    }

    pub(super) fn build_network(&mut self) -> Result<()> {
        let nodes: Vec<String> = (0..self.nodes).map(|i| self.node_ns(i)).collect();
        for ns in &nodes {
            self.add_netns(ns)?;
            self.forwarding_sysctls(ns)?;
        }
        self.build_node_switch(&nodes)?;
        self.build_external_side(&nodes)?;
        self.place_pods()?;
        self.add_service_addresses()?;
        self.load_service_rules(&nodes)
    }

    /// All nodes on one bridge (in a namespace of its own), each routing the others' pod
    /// ranges via their primary addresses.
    fn build_node_switch(&mut self, nodes: &[String]) -> Result<()> {
        let sw = self.netns("sw");
        self.add_netns(&sw)?;
        self.sysctl(
            &sw,
            &[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )?;
        ip(
            &sw,
            &[
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            ],
        )?;
        ip(&sw, &["link", "set", "br0", "up"])?;
        for (i, ns) in nodes.iter().enumerate() {
            let port = format!("s{i}");
            veth(("nl0", ns, None), (&port, &sw, None))?;
            ip(&sw, &["link", "set", &port, "master", "br0", "up"])?;
            self.add_addr(ns, Self::node_v4(i), 24, "nl0")?;
            ip(ns, &["link", "set", "nl0", "up"])?;
        }
        for (i, ns) in nodes.iter().enumerate() {
            for j in (0..nodes.len()).filter(|j| *j != i) {
                self.add_route(ns, v4(10, 244, j as u8 + 1, 0), 24, Self::node_v4(j))?;
            }
        }
        Ok(())
    }

    /// node-1 -- [r1 == r2 --] ext: the hops between node-1 and the external hosts.
    fn build_external_side(&mut self, nodes: &[String]) -> Result<()> {
        let mut hops = vec![nodes[0].clone()];
        if self.model.external_path_mtu.is_some() {
            hops.push(self.netns("r1"));
            hops.push(self.netns("r2"));
        }
        hops.push(self.netns("ext"));
        for ns in &hops[1..] {
            self.add_netns(ns)?;
        }
        for ns in &hops[1..hops.len() - 1] {
            self.forwarding_sysctls(ns)?;
            // Every too-big packet is answered.
            self.sysctl(
                ns,
                &["net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0"],
            )?;
        }
        for k in 0..hops.len() - 1 {
            self.link_hops(&hops, k)?;
        }
        let ext_ips = self.external_addresses()?;
        for k in 0..hops.len() {
            self.route_hop(&hops, k, &ext_ips)?;
        }
        let ext = &hops[hops.len() - 1];
        for (name, addr) in &ext_ips {
            self.add_addr(ext, *addr, 32, "eth0")?;
            self.external.insert(name.clone(), self.fam().addr(*addr));
        }
        // The other nodes reach the external side through node-1.
        for ns in &nodes[1..] {
            for (_, addr) in &ext_ips {
                self.add_route(ns, *addr, 32, Self::node_v4(0))?;
            }
            self.add_route(ns, v4(10, 255, 1, 0), 24, Self::node_v4(0))?;
        }
        Ok(())
    }

    fn external_addresses(&self) -> Result<Vec<(String, Ipv4Addr)>> {
        self.model
            .external
            .iter()
            .map(|e| {
                let addr: Ipv4Addr =
                    e.ip.parse()
                        .with_context(|| format!("external {}: bad ip {:?}", e.name, e.ip))?;
                Ok((e.name.clone(), addr))
            })
            .collect()
    }

    /// Interface names of hop `k` towards node-1 and towards the external hosts.
    fn hop_ifaces(hops: &[String], k: usize) -> (&'static str, &'static str) {
        match k {
            0 => ("", "ext0"),
            k if k == hops.len() - 1 => ("eth0", ""),
            _ => ("in0", "out0"),
        }
    }

    /// The link from hop `k` to hop `k + 1`. The middle link of a narrow path (between
    /// the two routers) has the model's MTU at both ends; every other interface keeps
    /// 1500, so neither end's MSS reveals the narrow hop.
    fn link_hops(&self, hops: &[String], k: usize) -> Result<()> {
        let (_, out_if) = Self::hop_ifaces(hops, k);
        let (in_if, _) = Self::hop_ifaces(hops, k + 1);
        veth((out_if, &hops[k], None), (in_if, &hops[k + 1], None))?;
        let (_, near, far) = chain_link(k)?;
        self.add_addr(&hops[k], near, 30, out_if)?;
        self.add_addr(&hops[k + 1], far, 30, in_if)?;
        let narrow = hops.len() == 4 && k == 1;
        if let (true, Some(mtu)) = (narrow, self.model.external_path_mtu) {
            let mtu = mtu.to_string();
            ip(&hops[k], &["link", "set", out_if, "mtu", &mtu])?;
            ip(&hops[k + 1], &["link", "set", in_if, "mtu", &mtu])?;
        }
        ip(&hops[k], &["link", "set", out_if, "up"])?;
        ip(&hops[k + 1], &["link", "set", in_if, "up"])
    }

    /// Routes of hop `k`: the cluster towards node-1, the external hosts and the links
    /// beyond the next hop outwards. No default route anywhere.
    fn route_hop(&self, hops: &[String], k: usize, ext: &[(String, Ipv4Addr)]) -> Result<()> {
        let ns = &hops[k];
        if k > 0 {
            let (_, inward, _) = chain_link(k - 1)?;
            self.add_route(ns, v4(10, 244, 0, 0), 16, inward)?;
            self.add_route(ns, v4(10, 96, 0, 0), 16, inward)?;
            self.add_route(ns, v4(10, 255, 0, 0), 16, inward)?;
        }
        if k + 1 < hops.len() {
            let (_, _, outward) = chain_link(k)?;
            for (_, addr) in ext {
                self.add_route(ns, *addr, 32, outward)?;
            }
            for j in k + 1..hops.len() - 1 {
                let (net, _, _) = chain_link(j)?;
                self.add_route(ns, net, 30, outward)?;
            }
        }
        Ok(())
    }

    /// Pods go to their model node, or are spread over the nodes in turn.
    fn place_pods(&mut self) -> Result<()> {
        let mut per_node = vec![0usize; self.nodes];
        let mut spread = 0;
        for (k, pod) in self.model.pods.clone().iter().enumerate() {
            let node = match &pod.node {
                Some(name) => node_index(name, self.nodes)?,
                None => {
                    spread += 1;
                    (spread - 1) % self.nodes
                }
            };
            let host = u8::try_from(10 + per_node[node])
                .ok()
                .filter(|h| *h < 255)
                .ok_or_else(|| anyhow!("too many pods on {}", super::node_name(node)))?;
            per_node[node] += 1;
            let key = format!("{}/{}", pod.ns, pod.name);
            if pod.host_network {
                // The node's own namespace and address; its servers listen there.
                let node_ns = self.node_ns(node);
                self.place_pod(&key, k, node, Self::node_v4(node), node_ns);
                continue;
            }
            let addr = v4(10, 244, node as u8 + 1, host);
            self.plumb_pod(&key, k, node, addr)?;
        }
        Ok(())
    }

    /// A pod's network namespace, its veth into node `node`, addresses and routes. The
    /// host side holds the gateway address (IPv4: 169.254.1.1/32, link scope; IPv6: its
    /// EUI-64 link-local) and answers ARP/NDP for it itself.
    pub(super) fn plumb_pod(
        &mut self,
        key: &str,
        k: usize,
        node: usize,
        addr: Ipv4Addr,
    ) -> Result<()> {
        let node_ns = self.node_ns(node);
        let pns = self.netns(&format!("p{k}"));
        self.add_netns(&pns)?;
        if let Some(plugin) = self.cfg.cni {
            let result = self.run_cni(plugin, "ADD", node, key, &pns, addr)?;
            let want = self.fam().addr(addr).to_string();
            let got: Vec<&str> = result["ips"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["address"].as_str())
                .collect();
            if !got
                .iter()
                .any(|a| a.split('/').next() == Some(want.as_str()))
            {
                bail!("the CNI plugin gave {key} {got:?}, not {want}");
            }
            self.place_pod(key, k, node, addr, pns);
            return Ok(());
        }
        let host_if = format!("vp{k}");
        veth((&host_if, &node_ns, Some(GW_MAC)), ("eth0", &pns, None))?;
        ip(&node_ns, &["link", "set", &host_if, "up"])?;
        let host_net = self.fam().net(addr, 32);
        let src = self.node_addr(node).to_string();
        if self.fam() == Family::V4 {
            let gw = format!("{GW_IP}/32");
            ip(
                &node_ns,
                &["addr", "add", &gw, "dev", &host_if, "scope", "link"],
            )?;
        }
        // The node's own traffic to the pod leaves from its primary address.
        ip(
            &node_ns,
            &["route", "add", &host_net, "dev", &host_if, "src", &src],
        )?;
        self.add_addr(&pns, addr, 32, "eth0")?;
        ip(&pns, &["link", "set", "eth0", "up"])?;
        let gw = match self.fam() {
            Family::V4 => {
                ip(
                    &pns,
                    &["route", "add", GW_IP, "dev", "eth0", "scope", "link"],
                )?;
                GW_IP
            }
            Family::V6 => GW_IP6,
        };
        ip(&pns, &["route", "add", "default", "via", gw, "dev", "eth0"])?;
        self.place_pod(key, k, node, addr, pns);
        Ok(())
    }

    fn place_pod(&mut self, key: &str, k: usize, node: usize, addr: Ipv4Addr, netns: String) {
        self.pods.insert(
            key.to_string(),
            PodPlace {
                netns,
                v4: addr,
                ip: self.fam().addr(addr),
                node,
            },
        );
        self.next_index = self.next_index.max(k + 1);
    }

    fn add_service_addresses(&mut self) -> Result<()> {
        for (k, svc) in self.model.services.iter().enumerate() {
            let addr = v4(10, 96, (k / 250) as u8, (k % 250) as u8 + 1);
            self.services
                .insert(format!("{}/{}", svc.ns, svc.name), self.fam().addr(addr));
        }
        Ok(())
    }

    /// Services' rules in every node; conntrack stays loose and nothing drops invalid
    /// packets, so stray segments meet netpol, not the node's firewall.
    fn load_service_rules(&self, nodes: &[String]) -> Result<()> {
        let rules = self.nft_rules()?;
        for ns in nodes {
            let path = self.dir.join(format!("{ns}.nft"));
            std::fs::write(&path, &rules)?;
            run(&[
                "ip",
                "netns",
                "exec",
                ns,
                "nft",
                "-f",
                &path.to_string_lossy(),
            ])?;
            self.sysctl(ns, &["net.netfilter.nf_conntrack_tcp_loose=1"])?;
        }
        Ok(())
    }

    /// The backends of one Service port: (address, target port) of each selected pod.
    /// Backends follow the model's labels (cases relabel pods to change policy, not
    /// Service membership).
    fn backends(
        &self,
        svc: &crate::cases::ServiceDef,
        sp: &crate::cases::ServicePort,
    ) -> Result<Vec<(IpAddr, u16)>> {
        let mut out = Vec::new();
        for p in &self.model.pods {
            if p.ns != svc.ns || !selects(&svc.selector, &p.labels) {
                continue;
            }
            let target = match &sp.target_port {
                None => Some(sp.port),
                Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                Some(Value::String(name)) => p
                    .ports
                    .iter()
                    .find(|c| c.name.as_deref() == Some(name.as_str()) && c.protocol == sp.protocol)
                    .map(|c| c.port),
                Some(other) => bail!("service {}: bad targetPort {other}", svc.name),
            };
            if let Some(t) = target {
                out.push((self.pods[&format!("{}/{}", p.ns, p.name)].ip, t));
            }
        }
        Ok(out)
    }

    /// kube-proxy as nftables: DNAT at prerouting (pods) and output (the node itself) to a
    /// random backend; a backend reaching its own Service (hairpin) is marked and
    /// masqueraded, as kube-proxy's KUBE-MARK-MASQ does.
    fn nft_rules(&self) -> Result<String> {
        let (table, saddr, daddr) = match self.fam() {
            Family::V4 => ("ip", "ip saddr", "ip daddr"),
            Family::V6 => ("ip6", "ip6 saddr", "ip6 daddr"),
        };
        let mut out = format!("table {table} netpol_sandbox_kp {{\n");
        let mut jumps = String::new();
        let mut chain_no = 0;
        for svc in &self.model.services {
            let vip = self.services[&format!("{}/{}", svc.ns, svc.name)];
            for sp in &svc.ports {
                let proto = sp.protocol.to_lowercase();
                let backends = self.backends(svc, sp)?;
                if backends.is_empty() || !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
                    continue;
                }
                let chain = format!("svc{chain_no}");
                chain_no += 1;
                let _ = writeln!(
                    jumps,
                    "    {daddr} {vip} {proto} dport {} jump {chain}",
                    sp.port
                );
                let mut vmap = Vec::new();
                for (i, (addr, port)) in backends.iter().enumerate() {
                    let ep = format!("{chain}_ep{i}");
                    let dst = match addr {
                        IpAddr::V4(a) => a.to_string(),
                        IpAddr::V6(a) => format!("[{a}]"),
                    };
                    let _ = writeln!(
                        out,
                        "  chain {ep} {{\n    {saddr} {addr} meta mark set meta mark or {MASQ_MARK}\n    meta l4proto {proto} dnat to {dst}:{port}\n  }}"
                    );
                    vmap.push(format!("{i} : jump {ep}"));
                }
                let _ = writeln!(
                    out,
                    "  chain {chain} {{\n    numgen random mod {} vmap {{ {} }}\n  }}",
                    backends.len(),
                    vmap.join(", ")
                );
            }
        }
        for (name, hook) in [("prerouting", "prerouting"), ("output", "output")] {
            let _ = writeln!(
                out,
                "  chain {name} {{\n    type nat hook {hook} priority -100; policy accept;\n{jumps}  }}"
            );
        }
        let _ = writeln!(
            out,
            "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    meta mark & {MASQ_MARK} == {MASQ_MARK} masquerade\n  }}\n}}"
        );
        Ok(out)
    }
}

/// `node-K` as an index.
pub fn node_index(name: &str, nodes: usize) -> Result<usize> {
    name.strip_prefix("node-")
        .and_then(|k| k.parse::<usize>().ok())
        .filter(|k| (1..=nodes).contains(k))
        .map(|k| k - 1)
        .ok_or_else(|| anyhow!("{name:?} is not one of node-1 .. node-{nodes}"))
}
