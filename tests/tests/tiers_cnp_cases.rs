//! The compiler's tier tables (`compile::tiers`: ClusterNetworkPolicy's Admin and Baseline
//! tiers around NetworkPolicy, per local pod and direction) decide every check of the
//! public ClusterNetworkPolicy cases as the case expects, each side on its own node's
//! tables. Pure userspace; no BPF (the datapath does not hold these tables yet).

use netpol_tests::cnp_cases::assert_every_check;
use netpol_tests::decide_tiers::{allowed, per_node};

#[test]
fn tier_tables_decide_every_public_cnp_check() {
    assert_every_check("tables", |s, checks| {
        let names: Vec<&str> = s.nodes.keys().map(String::as_str).collect();
        let nodes = per_node(s, &names);
        (checks.iter())
            .map(|c| allowed(s, &nodes, &c.from, &c.to, c.protocol, c.port))
            .collect()
    });
}
