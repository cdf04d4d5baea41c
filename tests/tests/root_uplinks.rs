//! Uplinks found from the routes (**needs root**): a node namespace of the test thread's
//! own with two ways out (an IPv4 default route, an IPv6 route towards other nodes' pods),
//! a bridge of pod veths, and a layer-3 tun device. No packet is sent.

use std::collections::BTreeSet;

use netpol_agent::datapath::{pod_links, uplinks};
use netpol_tests::attach::PodNetns;
use netpol_tests::lab::{netns, sh};

#[test]
fn root_uplinks_follow_the_routes_of_both_families() {
    std::thread::spawn(|| {
        netns(&[]);
        for (dev, peer) in [("up0", "up0p"), ("up1", "up1p"), ("spare", "sparep")] {
            sh(
                &[
                    "ip", "link", "add", dev, "type", "veth", "peer", "name", peer,
                ],
                None,
            );
            sh(&["ip", "link", "set", dev, "up"], None);
            sh(&["ip", "link", "set", peer, "up"], None);
        }
        sh(&["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"], None);
        sh(&["sysctl", "-qw", "net.ipv6.conf.up1.accept_dad=0"], None);
        sh(&["ip", "addr", "add", "172.31.0.2/24", "dev", "up0"], None);
        sh(
            &["ip", "route", "add", "default", "via", "172.31.0.1"],
            None,
        );
        sh(
            &["ip", "addr", "add", "fd00:77::2/64", "dev", "up1", "nodad"],
            None,
        );
        sh(
            &[
                "ip",
                "route",
                "add",
                "fd00:99::/64",
                "via",
                "fd00:77::1",
                "dev",
                "up1",
            ],
            None,
        );
        // One address out through a gateway: a way out too, unlike a CNI's route to a pod.
        sh(
            &[
                "ip",
                "route",
                "add",
                "203.0.113.9/32",
                "via",
                "10.77.0.1",
                "dev",
                "spare",
                "onlink",
            ],
            None,
        );
        // The pods' bridge and veth: never uplinks.
        sh(&["ip", "link", "add", "br0", "type", "bridge"], None);
        sh(&["ip", "addr", "add", "10.1.0.1/24", "dev", "br0"], None);
        sh(&["ip", "link", "set", "br0", "up"], None);
        let pod = PodNetns(format!("np-uplinks-{}", std::process::id()));
        sh(&["ip", "netns", "add", &pod.0], None);
        sh(
            &[
                "ip", "link", "add", "hv1", "type", "veth", "peer", "name", "eth0", "netns", &pod.0,
            ],
            None,
        );
        sh(&["ip", "link", "set", "hv1", "master", "br0", "up"], None);
        sh(&["ip", "-n", &pod.0, "link", "set", "eth0", "up"], None);
        // A layer-3 device with a route: refused.
        sh(&["ip", "tuntap", "add", "tun0", "mode", "tun"], None);
        sh(&["ip", "addr", "add", "10.50.0.1/24", "dev", "tun0"], None);
        sh(&["ip", "link", "set", "tun0", "up"], None);

        let links = pod_links::links().expect("links");
        let routes = uplinks::route_interfaces().expect("routes");
        let found = uplinks::pick(&links, &routes, &BTreeSet::new());
        assert_eq!(
            found.uplinks,
            vec!["up0", "up1", "spare"],
            "{links:?} {routes:?}"
        );
        assert_eq!(
            found
                .refused
                .keys()
                .map(String::as_str)
                .collect::<BTreeSet<_>>(),
            BTreeSet::from(["tun0"])
        );
        assert!(uplinks::check_configured(&links, &["tun0".into()]).is_err());
        assert!(uplinks::check_configured(&links, &["spare".into()]).is_ok());
    })
    .join()
    .expect("test thread");
}
