//! The agent's side of netpol-cni (see `crate::cni`): what the plugin announced, how
//! it amends the API view (this node, the sandbox's addresses) or holds a pod the view
//! does not have yet, and the plugin's installation.

use std::time::Duration;

use tracing::{info, warn};

use super::Agent;
use crate::cni;
use crate::compile;
use crate::state::{ClusterState, ObjectRef};

/// What the CNI plugin said about a pod's current sandbox: its addresses and node-side
/// interfaces.
pub(super) struct CniPod {
    /// The sandbox (CNI_CONTAINERID): a DEL of another sandbox of the pod leaves it.
    pub(super) container_id: String,
    pub(super) ips: Vec<std::net::IpAddr>,
    pub(super) host_interfaces: Vec<String>,
    pub(super) added: std::time::Instant,
    /// The API view has had the pod: once it no longer does, the pod is gone.
    pub(super) seen_in_api: bool,
}

/// An announced pod the API view never shows is forgotten after this (its DEL was lost).
const CNI_UNSEEN_FOR: Duration = Duration::from_secs(600);

impl Agent {
    /// The runtime of this node runs the plugin, so an announced pod is here, with the
    /// addresses of its current sandbox: the API view's pod takes this node and those
    /// addresses (it may lag: no node yet, no address yet, or an earlier sandbox's), so
    /// its own rules apply from its first packet. Entries of pods the API view has had
    /// and deleted, or never shows, are dropped. Returns whether the state changed.
    pub(super) fn patch_cni_addresses(&mut self) -> bool {
        let Some(state) = self.state.as_mut() else {
            return false;
        };
        let mut changed = false;
        self.cni_pods.retain(|pod, c| match state.pods.get(pod) {
            None if c.seen_in_api => false,
            None if c.added.elapsed() > CNI_UNSEEN_FOR => {
                warn!(%pod, "announced by the CNI plugin but never seen in the API: forgotten");
                false
            }
            _ => true,
        });
        for (pod, c) in self.cni_pods.iter_mut() {
            let Some(info) = state.pods.get_mut(pod) else {
                continue;
            };
            c.seen_in_api = true;
            if info.host_network || info.terminated {
                continue;
            }
            if info.node.as_deref() != Some(self.node.as_str()) {
                info.node = Some(self.node.clone());
                changed = true;
            }
            if info.ips != c.ips {
                info.ips = c.ips.clone();
                changed = true;
            }
        }
        changed
    }

    /// `plan` with the pods the CNI plugin announced that the API view does not have yet,
    /// held (see `compile::held`); `None` when there are none.
    pub(super) fn hold_unknown_pods(
        &self,
        plan: &compile::Plan,
        state: &ClusterState,
    ) -> Option<compile::Plan> {
        // Newest first: of two announced pods with one address, the later one has it.
        let mut unknown: Vec<(&ObjectRef, &CniPod)> = self
            .cni_pods
            .iter()
            .filter(|(pod, _)| !state.pods.contains_key(*pod))
            .collect();
        unknown.sort_by_key(|(_, c)| std::cmp::Reverse(c.added));
        let unknown: Vec<(ObjectRef, Vec<std::net::IpAddr>)> = unknown
            .into_iter()
            .map(|(pod, c)| (pod.clone(), c.ips.clone()))
            .collect();
        if unknown.is_empty() {
            return None;
        }
        let mut held = plan.clone();
        compile::held::hold(&mut held, state, &unknown);
        Some(held)
    }

    /// A request of the CNI plugin: ADD enforces the pod before the runtime goes on, DEL
    /// forgets it, CHECK says whether it is enforced.
    pub(super) fn cni_request(&mut self, incoming: cni::server::Incoming) {
        use cni::protocol::{Op, Reply};
        let r = incoming.request;
        let pod = ObjectRef::new(&r.namespace, &r.name);
        match r.op {
            Op::Add => {
                self.cni_pods.insert(
                    pod.clone(),
                    CniPod {
                        container_id: r.container_id,
                        ips: r.ips,
                        host_interfaces: r.host_interfaces,
                        added: std::time::Instant::now(),
                        seen_in_api: false,
                    },
                );
                self.reload_fresh();
            }
            Op::Del => {
                let current = self
                    .cni_pods
                    .get(&pod)
                    .is_some_and(|c| r.container_id.is_empty() || c.container_id == r.container_id);
                if current {
                    self.cni_pods.remove(&pod);
                    self.reload_fresh();
                }
                let _ = incoming.reply.send(Reply {
                    enforced: false,
                    message: "forgotten".into(),
                });
                return;
            }
            Op::Check => {}
        }
        let known = self
            .state
            .as_ref()
            .is_some_and(|s| s.pods.contains_key(&pod));
        let reply = match self.hooked_before.get(&pod) {
            Some(iface) if known => Reply {
                enforced: true,
                message: format!("enforced on {iface}"),
            },
            Some(iface) => Reply {
                enforced: true,
                message: format!(
                    "held on {iface}: not in the agent's API view yet, so it allows nothing in the directions its namespace's policies isolate until it is"
                ),
            },
            None if self.state.is_none() => Reply {
                enforced: false,
                message: "the agent has not synced with the API server yet".into(),
            },
            None => Reply {
                enforced: false,
                message: "its veth was not found".into(),
            },
        };
        info!(%pod, op = ?r.op, enforced = reply.enforced, "CNI: {}", reply.message);
        let _ = incoming.reply.send(reply);
    }

    /// Reconciles from a fresh copy of the source's state (the freshest API view, and
    /// none of the addresses patched in for announcements since changed).
    pub(super) fn reload_fresh(&mut self) {
        self.state_key.clear();
        self.plan = None;
        self.reconcile(true);
    }

    /// With --cni-bin-dir and --cni-conf-dir: `netpol-cni` installed and chained.
    pub(super) fn install_cni(&mut self) {
        let (Some(bin), Some(conf)) = (&self.args.cni_bin_dir, &self.args.cni_conf_dir) else {
            return;
        };
        let plugin = std::env::current_exe().map(|p| p.with_file_name(cni::install::PLUGIN_TYPE));
        let result = plugin.and_then(|p| {
            let copied = cni::install::install_binary(&p, bin)?;
            let socket = self.args.cni_socket.to_string_lossy();
            Ok((copied, cni::install::ensure_chained(conf, &socket)?))
        });
        let error = match result {
            Ok((copied, chained)) => {
                if copied {
                    info!(dir = %bin.display(), "netpol-cni installed");
                }
                if let Some(list) = chained {
                    info!(conf_list = %list.display(), "netpol-cni chained");
                }
                None
            }
            Err(e) => Some(e.to_string()),
        };
        if error != self.snapshot().cni_install_error {
            if let Some(e) = &error {
                warn!(error = %e, "installing netpol-cni; new pods are enforced once the API and the kernel show them");
            }
            self.update_status(|s| s.cni_install_error = error);
        }
    }
}
