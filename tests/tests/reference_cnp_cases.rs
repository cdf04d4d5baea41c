//! The reference reading of ClusterNetworkPolicy (`reference_cnp`, with NetworkPolicy
//! between its tiers in `reference`) against every check of the public ClusterNetworkPolicy
//! cases: the property tests compare the compiler with this reading, so it must say what
//! upstream's conformance suite says. Pure userspace; no BPF.

use netpol_tests::cnp_cases::load;
use netpol_tests::reference::allowed;

#[test]
fn reference_agrees_with_every_public_cnp_check() {
    let (mut checked, mut wrong) = (0, Vec::new());
    for (s, checks) in load() {
        for c in checks {
            let got = allowed(&s, &c.from, &c.to, c.protocol, c.port);
            checked += 1;
            if got != c.expect {
                wrong.push(format!(
                    "{}: {:?} -> {:?} {:?}/{}: reference {got}, case {}",
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
