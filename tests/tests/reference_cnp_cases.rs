//! The reference reading of ClusterNetworkPolicy (`reference_cnp`, with NetworkPolicy
//! between its tiers in `reference`) against every check of the public ClusterNetworkPolicy
//! cases: the property tests compare the compiler with this reading, so it must say what
//! upstream's conformance suite says. Pure userspace; no BPF.

use netpol_tests::cnp_cases::assert_every_check;
use netpol_tests::reference::allowed;

#[test]
fn reference_agrees_with_every_public_cnp_check() {
    assert_every_check("reference", |s, checks| {
        (checks.iter())
            .map(|c| allowed(s, &c.from, &c.to, c.protocol, c.port))
            .collect()
    });
}
