//! Pods networked by a real CNI plugin (Debian's containernetworking-plugins), invoked
//! as a container runtime invokes it: in the node's network namespace, with CNI_COMMAND,
//! CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and CNI_PATH set and the network configuration
//! on stdin. IPAM is `host-local`, with a range of exactly the address the sandbox's plan
//! gives the pod, so cases see the same addresses whichever plugin runs.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use super::{Family, Sandbox};

/// Where Debian installs the plugins.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// The CNI plugins the sandbox can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugin {
    /// A veth per pod, routed: the node holds a /32 host route to each pod (kindnet's
    /// shape).
    Ptp,
    /// A veth per pod on a node bridge (`cni0`) that holds the gateway address: pods of
    /// a node share one L2 segment and the node has no route per pod (flannel's shape).
    Bridge,
}

impl Plugin {
    pub fn parse(s: &str) -> Result<Option<Plugin>> {
        match s {
            "none" | "" => Ok(None),
            "ptp" => Ok(Some(Plugin::Ptp)),
            "bridge" => Ok(Some(Plugin::Bridge)),
            other => bail!("unknown CNI plugin {other:?} (expected none, ptp or bridge)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Plugin::Ptp => "ptp",
            Plugin::Bridge => "bridge",
        }
    }
}

impl Sandbox {
    /// The network configuration for a pod at `addr` on node `node`.
    fn cni_config(&self, plugin: Plugin, node: usize, addr: Ipv4Addr) -> Value {
        let fam = self.fam();
        let [a, b, c, _] = addr.octets();
        let subnet = fam.net(Ipv4Addr::new(a, b, c, 0), 24);
        let gateway = fam.addr(Ipv4Addr::new(a, b, c, 1)).to_string();
        let at = fam.addr(addr).to_string();
        let default = match fam {
            Family::V4 => "0.0.0.0/0",
            Family::V6 => "::/0",
        };
        let mut config = json!({
            "cniVersion": "1.0.0",
            "name": "sandbox",
            "type": plugin.name(),
            "mtu": 1500,
            "ipam": {
                "type": "host-local",
                "dataDir": self.dir().join(format!("cni-ipam-{node}")),
                "ranges": [[{"subnet": subnet, "rangeStart": at, "rangeEnd": at,
                             "gateway": gateway}]],
                "routes": [{"dst": default}],
            },
        });
        if plugin == Plugin::Bridge {
            // As flannel configures it: the bridge is the pods' gateway, a pod reaches
            // itself through its Service (hairpin), and masquerading is kube-proxy's.
            config["bridge"] = json!("cni0");
            config["isGateway"] = json!(true);
            config["ipMasq"] = json!(false);
            config["hairpinMode"] = json!(true);
        }
        config
    }

    /// Runs the plugin for `command` (ADD, DEL) on the pod whose network namespace is
    /// `pod_ns`, from node `node`'s namespace. Returns the plugin's result (ADD).
    pub(super) fn run_cni(
        &self,
        plugin: Plugin,
        command: &str,
        node: usize,
        pod_ns: &str,
        addr: Ipv4Addr,
    ) -> Result<Value> {
        let config = self.cni_config(plugin, node, addr);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node_ns(node)])
            .arg(format!("{CNI_PATH}/{}", plugin.name()))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod_ns)
            .env("CNI_NETNS", format!("/run/netns/{pod_ns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "running the {} CNI plugin (scripts/install-prereqs.sh installs containernetworking-plugins)",
                    plugin.name()
                )
            })?;
        child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no stdin for the CNI plugin"))?
            .write_all(config.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "CNI {command} of {pod_ns} failed: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if out.stdout.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout).context("reading the CNI plugin's result")
    }
}
