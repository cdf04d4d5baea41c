use super::*;
use crate::state::{ContainerPort, Labels};

const NODE: &str = "node-a";

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Cluster(ClusterState);

impl Cluster {
    fn new() -> Self {
        let mut s = ClusterState::default();
        for ns in ["default", "kube-system", "other"] {
            s.namespaces
                .insert(ns.into(), labels(&[("kubernetes.io/metadata.name", ns)]));
        }
        Cluster(s)
    }

    fn pod(mut self, ns: &str, name: &str, l: &[(&str, &str)], addr: &str, node: &str) -> Self {
        self.0.pods.insert(
            ObjectRef::new(ns, name),
            PodInfo {
                labels: labels(l),
                node: Some(node.into()),
                host_network: false,
                terminated: false,
                ips: vec![ip(addr)],
                ports: vec![
                    ContainerPort {
                        name: Some("http".into()),
                        port: 8080,
                        protocol: Protocol::Tcp,
                    },
                    ContainerPort {
                        name: Some("dns".into()),
                        port: 53,
                        protocol: Protocol::Udp,
                    },
                ],
            },
        );
        self
    }

    fn policy(mut self, yaml: &str) -> Self {
        let p: NetworkPolicy = serde_yaml::from_str(yaml).expect("test policy parses");
        let key = ObjectRef::new(
            p.metadata.namespace.clone().unwrap(),
            p.metadata.name.clone().unwrap(),
        );
        self.0.policies.insert(key, p);
        self
    }

    fn plan(&self) -> Plan {
        compile(&self.0, NODE)
    }
}

/// Decides like the datapath does: egress at the source (if local), ingress at the
/// destination (if local); a direction without a rule set is open.
fn allowed(
    plan: &Plan,
    from: &str,
    to: IpAddr,
    proto: Protocol,
    port: u16,
    state: &ClusterState,
) -> bool {
    let from_ref = {
        let (ns, name) = from.split_once('/').unwrap();
        ObjectRef::new(ns, name)
    };
    let src_ip = state.pods[&from_ref].ips[0];
    let egress_ok = match plan.endpoints.iter().find(|e| e.pod == from_ref) {
        Some(ep) => ep.egress.is_none_or(|r| plan.allows(r, to, proto, port)),
        None => true,
    };
    let ingress_ok = match plan.endpoints.iter().find(|e| e.ips.contains(&to)) {
        Some(ep) => ep
            .ingress
            .is_none_or(|r| plan.allows(r, src_ip, proto, port)),
        None => true,
    };
    egress_ok && ingress_ok
}

fn base() -> Cluster {
    Cluster::new()
        .pod("default", "foo", &[("app", "foo")], "10.244.1.10", NODE)
        .pod("default", "web", &[("app", "web")], "10.244.1.11", NODE)
        .pod("default", "db", &[("app", "db")], "10.244.2.12", "node-b")
        .pod(
            "kube-system",
            "coredns",
            &[("k8s-app", "kube-dns")],
            "10.244.2.53",
            "node-b",
        )
}

#[test]
fn rules_of_several_policies_add_up() {
    let c = base()
        .policy(
            r#"
metadata: {name: only-web, namespace: default}
spec:
  podSelector: {matchLabels: {app: foo}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 80}]
"#,
        )
        .policy(
            r#"
metadata: {name: dns, namespace: default}
spec:
  podSelector: {matchLabels: {app: foo}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}]
    ports: [{port: 53, protocol: UDP}]
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 443}]
"#,
        );
    let plan = c.plan();
    assert!(plan.errors.is_empty(), "{:?}", plan.errors);
    let s = &c.0;
    let web = ip("10.244.1.11");
    assert!(allowed(&plan, "default/foo", web, Protocol::Tcp, 80, s));
    assert!(allowed(&plan, "default/foo", web, Protocol::Tcp, 443, s));
    assert!(!allowed(&plan, "default/foo", web, Protocol::Tcp, 22, s));
    assert!(allowed(
        &plan,
        "default/foo",
        ip("10.244.2.53"),
        Protocol::Udp,
        53,
        s
    ));
    assert!(!allowed(
        &plan,
        "default/foo",
        ip("10.244.2.53"),
        Protocol::Tcp,
        53,
        s
    ));
    assert!(!allowed(
        &plan,
        "default/foo",
        ip("10.244.2.12"),
        Protocol::Tcp,
        80,
        s
    ));
    // web is not selected: open both ways.
    assert!(allowed(
        &plan,
        "default/web",
        ip("203.0.113.1"),
        Protocol::Tcp,
        1,
        s
    ));
}

#[test]
fn except_inside_a_cidr_is_denied_and_the_rest_allowed() {
    let c = base().policy(
        r#"
metadata: {name: ext, namespace: default}
spec:
  podSelector: {matchLabels: {app: foo}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32]}}]
    ports: [{port: 443, protocol: TCP}]
"#,
    );
    let plan = c.plan();
    assert!(plan.errors.is_empty(), "{:?}", plan.errors);
    let s = &c.0;
    assert!(allowed(
        &plan,
        "default/foo",
        ip("198.51.100.7"),
        Protocol::Tcp,
        443,
        s
    ));
    assert!(!allowed(
        &plan,
        "default/foo",
        ip("169.254.169.254"),
        Protocol::Tcp,
        443,
        s
    ));
    assert!(!allowed(
        &plan,
        "default/foo",
        ip("198.51.100.7"),
        Protocol::Tcp,
        80,
        s
    ));
    // The ipBlock covers pods too.
    assert!(allowed(
        &plan,
        "default/foo",
        ip("10.244.2.12"),
        Protocol::Tcp,
        443,
        s
    ));
}

#[test]
fn port_only_rule_allows_that_port_to_everyone() {
    let c = base().policy(
        r#"
metadata: {name: dns-anywhere, namespace: default}
spec:
  podSelector: {matchLabels: {app: foo}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 53, protocol: UDP}]
"#,
    );
    let plan = c.plan();
    let s = &c.0;
    assert!(allowed(
        &plan,
        "default/foo",
        ip("198.51.100.53"),
        Protocol::Udp,
        53,
        s
    ));
    assert!(allowed(
        &plan,
        "default/foo",
        ip("10.244.2.53"),
        Protocol::Udp,
        53,
        s
    ));
    assert!(allowed(
        &plan,
        "default/foo",
        ip("2001:db8::53"),
        Protocol::Udp,
        53,
        s
    ));
    assert!(!allowed(
        &plan,
        "default/foo",
        ip("10.244.2.53"),
        Protocol::Tcp,
        53,
        s
    ));
    assert!(!allowed(
        &plan,
        "default/foo",
        ip("10.244.1.11"),
        Protocol::Tcp,
        80,
        s
    ));
}

#[test]
fn a_policy_that_selects_nothing_changes_nothing() {
    let c = base().policy(
        r#"
metadata: {name: nobody, namespace: default}
spec:
  podSelector: {matchLabels: {app: does-not-exist}}
  policyTypes: [Ingress, Egress]
"#,
    );
    let plan = c.plan();
    assert!(plan.errors.is_empty());
    assert_eq!(plan.endpoints.len(), 2, "foo and web are local");
    assert!(
        plan.endpoints
            .iter()
            .all(|e| e.ingress.is_none() && e.egress.is_none())
    );
    assert!(plan.rule_sets.is_empty());
}

#[test]
fn bad_cidr_is_reported_isolates_and_allows_nothing_through_that_rule() {
    let c = base().policy(
        r#"
metadata: {name: broken, namespace: default}
spec:
  podSelector: {matchLabels: {app: foo}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/33}}]
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 80}]
"#,
    );
    let plan = c.plan();
    assert_eq!(plan.errors.len(), 1, "{:?}", plan.errors);
    let e = &plan.errors[0];
    assert_eq!(e.policy, ObjectRef::new("default", "broken"));
    assert_eq!(e.location, "egress[0].to[0]");
    assert!(e.to_string().contains("10.0.0.0/33"), "{e}");
    assert!(e.to_string().contains("allows nothing"), "{e}");
    let s = &c.0;
    // The good rule still works; the bad one opened nothing; foo is still isolated.
    assert!(allowed(
        &plan,
        "default/foo",
        ip("10.244.1.11"),
        Protocol::Tcp,
        80,
        s
    ));
    assert!(!allowed(
        &plan,
        "default/foo",
        ip("10.0.0.1"),
        Protocol::Tcp,
        80,
        s
    ));
    assert!(!allowed(
        &plan,
        "default/foo",
        ip("10.244.2.12"),
        Protocol::Tcp,
        5432,
        s
    ));
}

#[test]
fn invalid_rules_of_every_kind_are_reported_and_allow_nothing() {
    let cases = [
        ("{ports: [{port: 90, endPort: 80}]}", "below port"),
        ("{ports: [{port: http, endPort: 90}]}", "named port"),
        ("{ports: [{port: 80, protocol: ICMP}]}", "unknown protocol"),
        ("{ports: [{port: 70000}]}", "outside 1-65535"),
        (
            "{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}",
            "strictly inside",
        ),
        ("{to: [{ipBlock: {cidr: nonsense}}]}", "nonsense"),
        ("{to: [{}]}", "must name"),
        (
            "{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}",
            "cannot be combined",
        ),
        (
            "{to: [{podSelector: {matchExpressions: [{key: a, operator: In}]}}]}",
            "at least one value",
        ),
    ];
    for (rule, expected) in cases {
        let c = base().policy(&format!(
            "metadata: {{name: bad, namespace: default}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress: [{rule}]\n"
        ));
        let plan = c.plan();
        assert_eq!(plan.errors.len(), 1, "{rule}: {:?}", plan.errors);
        assert!(
            plan.errors[0].message.contains(expected),
            "{rule}: {}",
            plan.errors[0]
        );
        let foo = plan.endpoints.iter().find(|e| e.pod.name == "foo").unwrap();
        let set = plan.rule_set(foo.egress.expect("still isolated"));
        assert!(
            set.peers
                .values()
                .chain(set.blocks.values())
                .all(Allowed::is_none),
            "{rule}: {set:?}"
        );
    }
}

#[test]
fn invalid_pod_selector_isolates_the_whole_namespace() {
    let c = base().policy(
        r#"
metadata: {name: bad-selector, namespace: default}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Equals, values: [foo]}]}
  ingress: [{}]
"#,
    );
    let plan = c.plan();
    assert_eq!(plan.errors.len(), 1);
    // Every pod of the namespace is isolated for the listed (defaulted) type, Ingress,
    // with nothing allowed; egress stays open.
    for e in &plan.endpoints {
        let set = plan.rule_set(e.ingress.expect("isolated"));
        assert!(
            set.peers
                .values()
                .chain(set.blocks.values())
                .all(Allowed::is_none)
        );
        assert!(e.egress.is_none());
    }
}

#[test]
fn replicas_share_one_rule_set() {
    let c = base()
        .pod("default", "web-2", &[("app", "web")], "10.244.1.21", NODE)
        .pod("default", "web-3", &[("app", "web")], "10.244.1.22", NODE)
        .policy(
            r#"
metadata: {name: web-in, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: foo}}}], ports: [{port: 8080}]}]
"#,
        );
    let plan = c.plan();
    let refs: BTreeSet<_> = plan
        .endpoints
        .iter()
        .filter(|e| e.pod.name.starts_with("web"))
        .map(|e| e.ingress.unwrap())
        .collect();
    assert_eq!(refs.len(), 1);
    assert_eq!(plan.rule_sets.len(), 1);
}

#[test]
fn named_ports_resolve_per_destination_pod() {
    let mut c = base().policy(
        r#"
metadata: {name: named, namespace: default}
spec:
  podSelector: {matchLabels: {app: foo}}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}]}]
"#,
    );
    // db serves "http" on 9090 instead of 8080.
    let db = c.0.pods.get_mut(&ObjectRef::new("default", "db")).unwrap();
    db.ports[0].port = 9090;
    let plan = c.plan();
    let s = &c.0;
    assert!(allowed(
        &plan,
        "default/foo",
        ip("10.244.1.11"),
        Protocol::Tcp,
        8080,
        s
    ));
    assert!(!allowed(
        &plan,
        "default/foo",
        ip("10.244.1.11"),
        Protocol::Tcp,
        9090,
        s
    ));
    assert!(allowed(
        &plan,
        "default/foo",
        ip("10.244.2.12"),
        Protocol::Tcp,
        9090,
        s
    ));
    assert!(!allowed(
        &plan,
        "default/foo",
        ip("10.244.2.12"),
        Protocol::Tcp,
        8080,
        s
    ));
    // Not a pod: a name means nothing there.
    assert!(!allowed(
        &plan,
        "default/foo",
        ip("203.0.113.5"),
        Protocol::Tcp,
        8080,
        s
    ));
}

#[test]
fn policy_types_default_like_the_api() {
    let c = base().policy(
        r#"
metadata: {name: implicit, namespace: default}
spec:
  podSelector: {matchLabels: {app: foo}}
  egress: [{to: [{podSelector: {matchLabels: {app: web}}}]}]
"#,
    );
    let plan = c.plan();
    let foo = plan.endpoints.iter().find(|e| e.pod.name == "foo").unwrap();
    assert!(foo.ingress.is_some(), "Ingress is always implied");
    assert!(foo.egress.is_some(), "Egress implied by egress rules");
}

#[test]
fn unknown_policy_type_isolates_both_ways() {
    let c = base().policy(
        r#"
metadata: {name: typo, namespace: default}
spec:
  podSelector: {matchLabels: {app: foo}}
  policyTypes: [Egres]
"#,
    );
    let plan = c.plan();
    assert_eq!(plan.errors.len(), 1);
    assert!(plan.errors[0].message.contains("Egres"));
    let foo = plan.endpoints.iter().find(|e| e.pod.name == "foo").unwrap();
    assert!(foo.ingress.is_some() && foo.egress.is_some());
}

#[test]
fn an_ipv6_block_with_a_named_port_does_not_reach_ipv4_pods() {
    // Found by the property test (seed 69): the per-pod expansion of named ports used
    // bit containment, in which ::/0 holds the IPv4-mapped space.
    let c = base().policy(
        r#"
metadata: {name: v6-named, namespace: default}
spec:
  podSelector: {matchLabels: {app: foo}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: "::/0"}}], ports: [{port: http}]}]
"#,
    );
    let plan = c.plan();
    let s = &c.0;
    assert!(!allowed(
        &plan,
        "default/foo",
        ip("10.244.1.11"),
        Protocol::Tcp,
        8080,
        s
    ));
}

#[test]
fn every_invalid_policy_gets_its_own_error_and_the_rest_keeps_working() {
    // (name, egress rule of a policy selecting app=foo, what its error must say)
    let bad = [
        (
            "end-below",
            "{ports: [{port: 90, endPort: 80}]}",
            "below port",
        ),
        (
            "end-named",
            "{ports: [{port: http, endPort: 90}]}",
            "named port",
        ),
        (
            "end-alone",
            "{ports: [{endPort: 90}]}",
            "endPort without port",
        ),
        (
            "end-huge",
            "{ports: [{port: 80, endPort: 70000}]}",
            "endPort",
        ),
        ("port-zero", "{ports: [{port: 0}]}", "outside 1-65535"),
        (
            "bad-proto",
            "{ports: [{port: 80, protocol: ICMP}]}",
            "unknown protocol",
        ),
        (
            "lower-proto",
            "{ports: [{port: 80, protocol: tcp}]}",
            "unknown protocol",
        ),
        (
            "bad-name",
            "{ports: [{port: HTTP}]}",
            "not a valid port name",
        ),
        ("slash-33", "{to: [{ipBlock: {cidr: 10.0.0.0/33}}]}", "/33"),
        ("not-a-cidr", "{to: [{ipBlock: {cidr: banana}}]}", "banana"),
        (
            "except-outside",
            "{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}",
            "strictly inside",
        ),
        (
            "except-equal",
            "{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]}",
            "strictly inside",
        ),
        (
            "except-family",
            "{to: [{ipBlock: {cidr: 10.0.0.0/8, except: ['fd00::/64']}}]}",
            "strictly inside",
        ),
        ("empty-peer", "{to: [{}]}", "must name"),
        (
            "block-and-ns",
            "{to: [{ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}}]}",
            "cannot be combined",
        ),
        (
            "in-no-values",
            "{to: [{namespaceSelector: {matchExpressions: [{key: a, operator: In}]}}]}",
            "at least one value",
        ),
        (
            "exists-values",
            "{to: [{podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}}]}",
            "takes no values",
        ),
        (
            "odd-operator",
            "{to: [{podSelector: {matchExpressions: [{key: a, operator: Gt, values: ['1']}]}}]}",
            "unknown operator",
        ),
    ];
    let mut c = base().policy(
        r#"
metadata: {name: good, namespace: default}
spec:
  podSelector: {matchLabels: {app: foo}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 8080}]}]
"#,
    );
    for (name, rule, _) in bad {
        c = c.policy(&format!(
            "metadata: {{name: {name}, namespace: default}}\nspec:\n  podSelector: {{matchLabels: {{app: foo}}}}\n  policyTypes: [Egress]\n  egress: [{rule}]\n"
        ));
    }
    let plan = c.plan();
    for (name, _, expected) in bad {
        let errs: Vec<&PolicyError> = plan
            .errors
            .iter()
            .filter(|e| e.policy.name == name)
            .collect();
        assert_eq!(errs.len(), 1, "{name}: {errs:?}");
        assert!(
            errs[0].to_string().contains(expected),
            "{name}: {}",
            errs[0]
        );
    }
    assert_eq!(plan.errors.len(), bad.len(), "no error for the good policy");
    let s = &c.0;
    assert!(allowed(
        &plan,
        "default/foo",
        ip("10.244.1.11"),
        Protocol::Tcp,
        8080,
        s
    ));
    assert!(!allowed(
        &plan,
        "default/foo",
        ip("10.244.1.11"),
        Protocol::Tcp,
        8081,
        s
    ));
    assert!(!allowed(
        &plan,
        "default/foo",
        ip("10.0.0.1"),
        Protocol::Tcp,
        80,
        s
    ));
    assert!(!allowed(
        &plan,
        "default/foo",
        ip("203.0.113.1"),
        Protocol::Tcp,
        80,
        s
    ));
}

/// Rule sets and identities keep their hash once computed: equal fields stay equal
/// (found in the programmer's maps), different fields never compare equal, whether or not
/// either hash is known yet.
#[test]
fn cached_hashes_never_change_equality() {
    use std::hash::{BuildHasher, RandomState};
    let identity = |app: &str| {
        Arc::new(Identity::new(
            "ns".into(),
            labels(&[("app", app)]),
            Vec::new(),
        ))
    };
    let set = |app: &str| {
        let peers = BTreeMap::from([(identity(app), Allowed::by(&PortSpec::All, &1))]);
        RuleSet::new(peers, BTreeMap::new())
    };
    let hasher = RandomState::new();
    let (a, a2, b) = (set("a"), set("a"), set("b"));
    assert_eq!(a, a2, "equal before any hash is known");
    assert_ne!(a, b);
    assert_eq!(hasher.hash_one(&a), hasher.hash_one(&a2));
    hasher.hash_one(&b);
    assert_eq!(a, a2, "equal once both hashes are known");
    assert_ne!(a, b, "still different once both hashes are known");
    assert_eq!(a.cmp(&a2), std::cmp::Ordering::Equal);
    let (x, y) = (identity("x"), identity("y"));
    hasher.hash_one(&x);
    assert_ne!(*x, *y, "one hash known");
    assert_eq!(*x, *identity("x"));
}

const WEB_FROM_FOO_AUDIT: &str = r#"
metadata:
  name: web-from-foo
  namespace: default
  annotations: {netpol.io/mode: audit}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: foo}}}]}]
"#;

#[test]
fn an_audit_policy_isolates_nothing_and_gets_its_own_rule_sets() {
    let plan = base().policy(WEB_FROM_FOO_AUDIT).plan();
    assert!(plan.errors.is_empty(), "{:?}", plan.errors);
    let web = plan.endpoints.iter().find(|e| e.pod.name == "web").unwrap();
    assert_eq!(web.ingress, None, "audit mode does not isolate");
    let audit = web.audit.ingress.expect("an audit rule set");
    assert!(plan.allows(audit, ip("10.244.1.10"), Protocol::Tcp, 80));
    assert!(!plan.allows(audit, ip("10.244.2.12"), Protocol::Tcp, 80));
    assert_eq!(web.audit.egress, None);
    assert_eq!(
        web.isolated_by.audit_ingress,
        vec![ObjectRef::new("default", "web-from-foo")]
    );
    assert!(web.isolated_by.ingress.is_empty());
    let foo = plan.endpoints.iter().find(|e| e.pod.name == "foo").unwrap();
    assert_eq!(foo.audit, Audit::default());
}

#[test]
fn an_audit_policy_is_judged_with_the_enforced_ones() {
    let plan = base()
        .policy(WEB_FROM_FOO_AUDIT)
        .policy(
            r#"
metadata: {name: web-from-db, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: 5432}]}]
"#,
        )
        .plan();
    let web = plan.endpoints.iter().find(|e| e.pod.name == "web").unwrap();
    let enforced = web.ingress.expect("isolated by web-from-db");
    let audit = web.audit.ingress.expect("audited");
    // Enforced: db on 5432 only. Audit: that, and foo on every port.
    assert!(plan.allows(enforced, ip("10.244.2.12"), Protocol::Tcp, 5432));
    assert!(!plan.allows(enforced, ip("10.244.1.10"), Protocol::Tcp, 80));
    assert!(plan.allows(audit, ip("10.244.2.12"), Protocol::Tcp, 5432));
    assert!(plan.allows(audit, ip("10.244.1.10"), Protocol::Tcp, 80));
    assert!(!plan.allows(audit, ip("10.244.2.12"), Protocol::Tcp, 80));
    assert_eq!(
        web.isolated_by.ingress,
        vec![ObjectRef::new("default", "web-from-db")]
    );
}

#[test]
fn an_unknown_mode_is_reported_and_enforced() {
    let plan = base()
        .policy(&WEB_FROM_FOO_AUDIT.replace("mode: audit", "mode: audti"))
        .plan();
    assert_eq!(plan.errors.len(), 1, "{:?}", plan.errors);
    assert!(plan.errors[0].message.contains("unknown mode"));
    let web = plan.endpoints.iter().find(|e| e.pod.name == "web").unwrap();
    assert!(web.ingress.is_some(), "enforced");
    assert_eq!(web.audit, Audit::default());
}

#[test]
fn the_mode_annotation_survives_trimming() {
    let mut s = ClusterState::default();
    let p: NetworkPolicy = serde_yaml::from_str(WEB_FROM_FOO_AUDIT).unwrap();
    s.upsert_policy(&p).unwrap();
    let kept = &s.policies[&ObjectRef::new("default", "web-from-foo")];
    assert_eq!(
        kept.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::state::MODE_ANNOTATION))
            .map(String::as_str),
        Some("audit")
    );
}
