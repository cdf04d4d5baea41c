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

fn plugin_path(plugin: Plugin) -> std::path::PathBuf {
    std::path::Path::new(CNI_PATH).join(plugin.name())
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

    /// Where node `node`'s agent listens for netpol's CNI plugin.
    pub(super) fn cni_socket(&self, node: usize) -> std::path::PathBuf {
        self.dir()
            .join(format!("cni-{}.sock", super::node_name(node)))
    }

    /// Runs the conf list for `command` (ADD, DEL) on pod `key`, whose network namespace
    /// is `pod_ns`, from node `node`'s namespace: the pod network's plugin, then netpol's
    /// chained plugin (`netpol-cni`, beside the agent binary) with the first one's result
    /// as `prevResult`; DEL runs them in reverse. Returns the chain's result (ADD).
    pub(super) fn run_cni(
        &self,
        plugin: Plugin,
        command: &str,
        node: usize,
        key: &str,
        pod_ns: &str,
        addr: Ipv4Addr,
    ) -> Result<Value> {
        let config = self.cni_config(plugin, node, addr);
        let netpol = self.cfg.agent.with_file_name("netpol-cni");
        let chained = |prev: &Value| {
            let mut c = json!({"cniVersion": "1.0.0", "name": "sandbox", "type": "netpol-cni",
                "socket": self.cni_socket(node)});
            if !prev.is_null() {
                c["prevResult"] = prev.clone();
            }
            c
        };
        if command == "DEL" {
            // Best effort: a missing agent or binary never stops a pod's removal.
            if let Err(e) =
                self.exec_plugin(&netpol, command, node, key, pod_ns, &chained(&Value::Null))
            {
                eprintln!("  {e:#}");
            }
            return self.exec_plugin(&plugin_path(plugin), command, node, key, pod_ns, &config);
        }
        let first = self.exec_plugin(&plugin_path(plugin), command, node, key, pod_ns, &config)?;
        self.exec_plugin(&netpol, command, node, key, pod_ns, &chained(&first))
    }

    fn exec_plugin(
        &self,
        binary: &std::path::Path,
        command: &str,
        node: usize,
        key: &str,
        pod_ns: &str,
        config: &Value,
    ) -> Result<Value> {
        let (ns, name) = key
            .split_once('/')
            .ok_or_else(|| anyhow!("bad pod {key}"))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node_ns(node)])
            .arg(binary)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod_ns)
            .env("CNI_NETNS", format!("/run/netns/{pod_ns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "running the CNI plugin {} (scripts/install-prereqs.sh installs containernetworking-plugins)",
                    binary.display()
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
                "CNI {command} of {key} by {} failed: {} {}",
                binary.display(),
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
