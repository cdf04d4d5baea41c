//! netpol's chained CNI plugin and the agent's side of it. The container runtime runs the
//! plugin (`netpol-cni`, listed after the pod network's own plugin in the node's conf
//! list) once the pod's network exists and before its containers start; the plugin asks
//! the local agent, over a unix socket, to enforce the new pod, and waits (bounded) until
//! the agent has hooked its veth and programmed its rules. The plugin never fails a pod
//! because the agent is down: it says so on stderr, which the runtime logs.
//!
//! * [`protocol`]: one JSON line each way.
//! * [`plugin`]: the plugin's logic (CNI environment and configuration in, result out).
//! * [`server`]: the agent's listener, which hands requests to the agent's loop.
//! * [`install`]: puts the plugin into the node's CNI bin directory and conf list.

pub mod install;
pub mod plugin;
pub mod protocol;
pub mod server;
