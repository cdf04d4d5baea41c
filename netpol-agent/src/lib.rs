//! netpol agent: sources -> state -> compile -> program -> datapath.
//!
//! * [`sources`] read the cluster (a folder of YAML here) into a [`state::ClusterState`].
//! * [`compile`] turns the state and this node's name into a [`compile::Plan`]: pure.
//! * [`program`] writes a plan into the BPF maps as a diff.
//! * [`datapath`] loads the BPF object and attaches it to pod veths and uplinks.
//! * [`explain`] answers, offline, whether a connection would be allowed and by which rule.
//! * [`agent`] is the loop that runs them; [`status`] reports what it enforces, and
//!   [`events`] the verdicts the datapath reports.
pub mod agent;
pub mod cni;
pub mod compile;
pub mod datapath;
pub mod events;
pub mod explain;
pub mod program;
pub mod sources;
pub mod state;
pub mod status;
