//! The compiler's tier tables (`compile::tiers`: ClusterNetworkPolicy's Admin and Baseline
//! tiers around NetworkPolicy, per local pod and direction) decide every check of the
//! public ClusterNetworkPolicy cases as the case expects, each side on its own node's
//! tables. Pure userspace; no BPF (the datapath does not hold these tables yet).

use netpol_tests::cnp_cases::load;
use netpol_tests::decide_tiers::{allowed, per_node};

#[test]
fn tier_tables_decide_every_public_cnp_check() {
    let (mut checked, mut wrong) = (0, Vec::new());
    for (s, checks) in load() {
        let names: Vec<&str> = s.nodes.keys().map(String::as_str).collect();
        let nodes = per_node(&s, &names);
        for c in &checks {
            let got = allowed(&s, &nodes, &c.from, &c.to, c.protocol, c.port);
            checked += 1;
            if got != c.expect {
                wrong.push(format!(
                    "{}: {:?} -> {:?} {:?}/{}: tables {got}, case {}",
                    c.at, c.from, c.to, c.protocol, c.port, c.expect
                ));
            }
        }
    }
    assert!(checked > 0);
    assert!(
        wrong.is_empty(),
        "{} of {checked} checks disagree:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
