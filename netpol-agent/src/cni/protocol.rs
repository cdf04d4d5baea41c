//! What the plugin and the agent say to each other: one JSON line each way.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Where the agent listens unless told otherwise (root only: the directory is 0700).
pub const DEFAULT_SOCKET: &str = "/run/netpol/cni.sock";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Op {
    Add,
    Del,
    Check,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub op: Op,
    pub namespace: String,
    pub name: String,
    pub container_id: String,
    /// The pod's addresses, from the pod network plugin's result.
    pub ips: Vec<IpAddr>,
    /// The node-side interfaces of that result (the pod's veth among them; a bridge
    /// plugin lists its bridge too).
    pub host_interfaces: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The pod's veth is hooked and its rules (or its hold) are programmed.
    pub enforced: bool,
    pub message: String,
}
