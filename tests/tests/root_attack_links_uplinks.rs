//! Uplinks found from routes (`datapath::uplinks`) missing real ways out of a node
//! (**needs root**; a namespace of the test thread's own, no packet sent). A way out that
//! is not hooked lets a local client's Service traffic to a remote backend leave
//! without its egress being decided (the client's veth passes Service traffic, the
//! uplink was to decide it after translation).

use std::collections::BTreeSet;

use netpol_agent::datapath::{pod_links, uplinks};
use netpol_tests::lab::{netns, sh};

fn found() -> uplinks::Found {
    let links = pod_links::links().expect("links");
    let routes = uplinks::route_interfaces().expect("routes");
    uplinks::pick(&links, &routes, &BTreeSet::new())
}

/// The shape of the AWS VPC CNI's secondary ENIs: pods whose addresses come from eth1
/// leave by it through a policy-routing table of their own (`ip rule from POD lookup
/// N`), and the main table has no route by eth1 at all.
#[test]
fn root_attack_links_policy_routing_table_uplink_is_missed() {
    std::thread::spawn(|| {
        netns(&["eth0", "eth1"]);
        for (dev, addr) in [("eth0", "192.168.1.10/24"), ("eth1", "192.168.2.10/24")] {
            sh(&["ip", "link", "set", dev, "up"], None);
            sh(
                &["ip", "addr", "add", addr, "dev", dev, "noprefixroute"],
                None,
            );
        }
        sh(
            &["ip", "route", "add", "192.168.1.0/24", "dev", "eth0"],
            None,
        );
        sh(
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                "192.168.1.1",
                "dev",
                "eth0",
            ],
            None,
        );
        sh(
            &[
                "ip",
                "route",
                "add",
                "192.168.2.0/24",
                "dev",
                "eth1",
                "table",
                "2",
            ],
            None,
        );
        sh(
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                "192.168.2.1",
                "dev",
                "eth1",
                "table",
                "2",
            ],
            None,
        );
        sh(
            &["ip", "rule", "add", "from", "10.1.0.128/25", "lookup", "2"],
            None,
        );
        let f = found();
        assert!(f.uplinks.contains(&"eth0".to_string()), "{f:?}");
        assert!(
            f.uplinks.contains(&"eth1".to_string()),
            "eth1 is where pods 10.1.0.128/25 leave the node (ip rule -> table 2), \
             but only the main table is read: {f:?}"
        );
    })
    .join()
    .expect("test thread");
}

/// Routes that use nexthop objects (`ip route add ... nhid N`, as FRR installs them)
/// carry no RTA_OIF when `nexthop_compat_mode` is off.
#[test]
fn root_attack_links_nexthop_object_uplink_is_missed() {
    std::thread::spawn(|| {
        netns(&["eth0"]);
        sh(&["sysctl", "-qw", "net.ipv4.nexthop_compat_mode=0"], None);
        sh(&["ip", "link", "set", "eth0", "up"], None);
        sh(&["ip", "link", "set", "eth0p", "up"], None);
        // A /32, as flannel puts on flannel.1: no connected route names the device.
        sh(
            &["ip", "addr", "add", "192.168.1.10/32", "dev", "eth0"],
            None,
        );
        sh(
            &[
                "ip",
                "nexthop",
                "add",
                "id",
                "1",
                "via",
                "192.168.1.1",
                "dev",
                "eth0",
                "onlink",
            ],
            None,
        );
        sh(&["ip", "route", "add", "default", "nhid", "1"], None);
        sh(&["ip", "route", "add", "10.244.0.0/16", "nhid", "1"], None);
        let f = found();
        assert!(
            f.uplinks.contains(&"eth0".to_string()),
            "the default route leaves by eth0 (nexthop object 1): {f:?}"
        );
    })
    .join()
    .expect("test thread");
}
