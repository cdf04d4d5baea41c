//! Test support for netpol: the conformance case format, a sandbox cluster built from
//! network namespaces (needs root), and the runner that checks cases on real packets.
pub mod apiserver;
pub mod attach;
pub mod bridged;
pub mod cases;
pub mod cnp_cases;
pub mod cnp_fixtures;
pub mod conformance;
pub mod decide;
pub mod decide_tiers;
pub mod explain_world;
pub mod flood;
pub mod generate;
pub mod held;
pub mod lab;
pub mod netbench;
pub mod pod_start;
pub mod rawtcp;
pub mod real_run;
pub mod reference;
pub mod reference_cnp;
pub mod sandbox;
pub mod scale;
pub mod scenarios;
pub mod sctp;
pub mod traffic;
pub mod validate;
