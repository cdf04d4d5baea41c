//! Property test: on generated clusters mixing ClusterNetworkPolicies of both tiers with
//! NetworkPolicies, the compiler's tier tables (`compile::tiers`) decide every flow as the
//! reference reading does (`reference` with `reference_cnp`, written apart from the
//! compiler). Flows go between pods, node addresses and outside addresses (not from a
//! pod to itself: the datapath passes those before any table). Pure
//! userspace. NETPOL_PROP_SEED=<n> starts at another seed; NETPOL_PROP_CLUSTERS / _FLOWS
//! scale it.

use std::net::IpAddr;

use netpol_agent::state::ClusterState;
use netpol_tests::decide_tiers::{allowed, per_node};
use netpol_tests::generate::{self, NODES, PROTOCOLS, Rng};
use netpol_tests::reference::{self, End};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A pod address, else a node's or an outside one, of one family.
fn random_end(rng: &mut Rng, state: &ClusterState, v4: bool) -> End {
    let pods: Vec<End> = (state.pods.iter())
        .flat_map(|(r, p)| {
            (p.ips.iter())
                .filter(|ip| ip.is_ipv4() == v4)
                .map(|ip| End::Pod(r.clone(), *ip))
                .collect::<Vec<_>>()
        })
        .collect();
    if pods.is_empty() || rng.chance(30) {
        let others: Vec<IpAddr> = (generate::OUTSIDE.iter())
            .filter_map(|s| s.parse::<IpAddr>().ok())
            .chain(state.nodes.values().flat_map(|n| n.ips.iter().copied()))
            .filter(|ip| ip.is_ipv4() == v4)
            .collect();
        return End::Outside(*rng.pick(&others));
    }
    rng.pick(&pods).clone()
}

#[test]
fn tier_tables_agree_with_the_reference_reading() {
    let base = env_or("NETPOL_PROP_SEED", 1);
    let clusters = env_or("NETPOL_PROP_CLUSTERS", 1000);
    let flows = env_or("NETPOL_PROP_FLOWS", 200);
    let (mut compared, mut allowed_n, mut with_cnp) = (0u64, 0u64, 0u64);
    for seed in base..base + clusters {
        let mut rng = Rng::new(seed);
        let mut state = generate::cluster(&mut rng);
        generate::add_cluster_policies(&mut rng, &mut state);
        with_cnp += u64::from(!state.cluster_policies.is_empty());
        let nodes = per_node(&state, &NODES);
        for _ in 0..flows {
            let v4 = rng.chance(80);
            let src = random_end(&mut rng, &state, v4);
            let dst = random_end(&mut rng, &state, v4);
            // At least one end a pod; a pod reaching itself is passed by the datapath
            // before any table.
            if (!matches!(src, End::Pod(..)) && !matches!(dst, End::Pod(..))) || src == dst {
                continue;
            }
            let protocol = *rng.pick(&PROTOCOLS);
            let port = *rng.pick(&[53u16, 79, 80, 81, 82, 83, 84, 443, 8080, 9000]);
            let want = reference::allowed(&state, &src, &dst, protocol, port);
            let got = allowed(&state, &nodes, &src, &dst, protocol, port);
            compared += 1;
            allowed_n += u64::from(want);
            if want != got {
                panic!(
                    "seed {seed} (rerun with NETPOL_PROP_SEED={seed} NETPOL_PROP_CLUSTERS=1): {src:?} -> {dst:?} {protocol}/{port}: reference says {want}, tables say {got}\npods: {:#?}\nnodes: {:#?}\npolicies: {}\ncluster policies: {}",
                    state.pods,
                    state.nodes,
                    serde_json::to_string_pretty(&state.policies.values().collect::<Vec<_>>())
                        .unwrap_or_default(),
                    serde_json::to_string_pretty(&state.cluster_policies).unwrap_or_default()
                );
            }
        }
    }
    assert!(
        allowed_n > compared / 10 && allowed_n < compared * 9 / 10,
        "{allowed_n} of {compared} allowed"
    );
    assert!(
        with_cnp > clusters / 2,
        "{with_cnp} of {clusters} clusters have ClusterNetworkPolicies"
    );
    println!(
        "{compared} flows over {clusters} clusters ({with_cnp} with ClusterNetworkPolicies) agree ({allowed_n} allowed)"
    );
}
