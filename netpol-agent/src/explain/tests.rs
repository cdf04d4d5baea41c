use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;

use super::*;

/// Two namespaces; pods on two nodes; a Service over the two `app=web` pods (named target
/// port `http`, 8080 on web-1 and 8081 on web-2).
const BASE: &str = r#"
kind: Namespace
metadata: {name: default}
---
kind: Namespace
metadata: {name: other, labels: {team: ops}}
---
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 10.255.0.1}, {type: Hostname, address: node-a}]}
---
kind: Node
metadata: {name: node-b}
status: {addresses: [{type: InternalIP, address: 10.255.0.2}]}
---
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
spec: {nodeName: node-a, containers: [{name: c, image: i}]}
status: {podIP: 10.244.1.10}
---
kind: Pod
metadata: {name: web-1, namespace: default, labels: {app: web, tier: front}}
spec: {nodeName: node-a, containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}]}
status: {podIP: 10.244.1.11}
---
kind: Pod
metadata: {name: web-2, namespace: default, labels: {app: web}}
spec: {nodeName: node-b, containers: [{name: c, image: i, ports: [{name: http, containerPort: 8081}]}]}
status: {podIP: 10.244.2.10}
---
kind: Pod
metadata: {name: mon, namespace: other, labels: {app: mon}}
spec: {nodeName: node-b, containers: [{name: c, image: i}]}
status: {podIP: 10.244.2.11}
---
kind: Pod
metadata: {name: agent, namespace: other, labels: {app: agent}}
spec: {nodeName: node-a, hostNetwork: true, containers: [{name: c, image: i}]}
status: {podIP: 10.255.0.1}
---
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: http}, {port: 53, protocol: UDP, targetPort: 53}]}
"#;

fn cluster(extra: &str) -> Cluster {
    let mut c = Cluster::default();
    let text = format!("{BASE}\n---\n{extra}");
    for de in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(de).expect("test YAML");
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().expect("kind").to_string();
        let s = &mut c.state;
        match kind.as_str() {
            "Namespace" => {
                s.upsert_namespace(&serde_yaml::from_value::<Namespace>(v).unwrap())
                    .unwrap();
            }
            "Pod" => {
                s.upsert_pod(&serde_yaml::from_value::<Pod>(v).unwrap())
                    .unwrap();
            }
            "NetworkPolicy" => {
                s.upsert_policy(&serde_yaml::from_value::<NetworkPolicy>(v).unwrap())
                    .unwrap();
            }
            "Service" => c
                .add_service(&serde_yaml::from_value::<Service>(v).unwrap())
                .unwrap(),
            "Node" => c
                .add_node(&serde_yaml::from_value::<Node>(v).unwrap())
                .unwrap(),
            "ClusterNetworkPolicy" => {
                let p = serde_yaml::from_value::<crate::sources::cnp::ClusterNetworkPolicy>(v);
                s.upsert_cluster_policy(&p.unwrap()).unwrap();
            }
            other => panic!("kind {other}"),
        }
    }
    c
}

fn ask(c: &Cluster, from: &str, to: &str, port: &str) -> Explanation {
    try_ask(c, from, to, port).unwrap_or_else(|e| panic!("{from} -> {to} {port}: {e}"))
}

fn try_ask(c: &Cluster, from: &str, to: &str, port: &str) -> Result<Explanation, ExplainError> {
    let (port, protocol) = parse_port(port)?;
    explain(
        c,
        &Query {
            from: from.parse()?,
            to: to.parse()?,
            protocol,
            port,
            strict_node_traffic: false,
        },
    )
}

const DENY_ALL: &str = r#"
kind: NetworkPolicy
metadata: {name: deny-all, namespace: default}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"#;

#[test]
fn nothing_isolated_allows_everything() {
    let c = cluster("");
    let x = ask(&c, "default/client", "default/web-2", "8081/TCP");
    assert!(x.allowed);
    for s in [&x.egress, &x.ingress] {
        assert!(!s.isolated && s.allowed && s.policies.is_empty() && s.rule.is_none());
    }
    assert_eq!(x.from.kind, "pod");
    assert_eq!(x.to.ip, Some("10.244.2.10".parse::<IpAddr>().unwrap()));
}

#[test]
fn deny_all_isolates_and_names_its_policy() {
    let c = cluster(DENY_ALL);
    let x = ask(&c, "default/client", "default/web-2", "8081/TCP");
    assert!(!x.allowed);
    assert!(x.egress.isolated && !x.egress.allowed);
    assert_eq!(x.egress.policies, vec!["default/deny-all"]);
    assert_eq!(x.egress.rule, None);
    assert!(x.ingress.isolated && !x.ingress.allowed);
    // The JSON shape the CLI prints.
    let v = serde_json::to_value(&x).unwrap();
    assert_eq!(v["allowed"], false);
    assert_eq!(v["protocol"], "TCP");
    assert_eq!(v["egress"]["rule"], serde_json::Value::Null);
    assert_eq!(v["ingress"]["policies"][0], "default/deny-all");
    assert!(v.get("backends").is_none());
}

#[test]
fn the_rule_named_is_the_datapaths_pod_selectors_first_then_policy_order() {
    let c = cluster(
        r#"
kind: NetworkPolicy
metadata: {name: b-policy, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 9999}]}, {from: [{podSelector: {}}]}]
---
kind: NetworkPolicy
metadata: {name: a-policy, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 1}]}, {ports: [{port: 8081}]}, {}]
"#,
    );
    let x = ask(&c, "default/client", "default/web-2", "8081/TCP");
    assert!(x.allowed);
    assert_eq!(
        x.ingress.policies,
        vec!["default/a-policy", "default/b-policy"]
    );
    // A pod peer: the pod-selector rule, looked at first, although a-policy's rules
    // without `from` (every address) allow it too.
    assert_eq!(
        x.ingress.rule.as_deref(),
        Some("default/b-policy ingress[1]")
    );
    let x = ask(&c, "default/client", "default/web-2", "7/UDP");
    assert_eq!(
        x.ingress.rule.as_deref(),
        Some("default/b-policy ingress[1]")
    );
    // An address that is no pod: the first rule in policy order that allows the port.
    for (port, rule) in [
        ("8081/TCP", "default/a-policy ingress[1]"),
        ("7/UDP", "default/a-policy ingress[2]"),
        ("9999/TCP", "default/a-policy ingress[2]"),
    ] {
        let x = ask(&c, "192.0.2.7", "default/web-2", port);
        assert_eq!(x.ingress.rule.as_deref(), Some(rule), "{port}");
    }
}

#[test]
fn policy_types_default_like_the_api() {
    // No policyTypes and egress rules: both directions. policyTypes [Ingress] with egress
    // rules: ingress only.
    let c = cluster(
        r#"
kind: NetworkPolicy
metadata: {name: p, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  egress: [{ports: [{port: 53, protocol: UDP}]}]
---
kind: NetworkPolicy
metadata: {name: q, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  egress: [{ports: [{port: 1}]}]
"#,
    );
    let x = ask(&c, "default/client", "default/web-2", "8081/TCP");
    assert!(x.egress.isolated && !x.egress.allowed);
    let x = ask(&c, "default/web-2", "other/mon", "80/TCP");
    assert!(!x.egress.isolated && x.allowed);
    let x = ask(&c, "other/mon", "default/client", "80/TCP");
    assert!(x.ingress.isolated && !x.allowed, "client's ingress too");
}

#[test]
fn namespace_and_pod_selectors_combine_as_the_spec_says() {
    let c = cluster(
        r#"
kind: NetworkPolicy
metadata: {name: in, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: ops}}, podSelector: {matchLabels: {app: mon}}}]
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: http}]
"#,
    );
    assert!(ask(&c, "other/mon", "default/web-1", "9/TCP").allowed);
    // podSelector alone means the policy's namespace.
    assert!(ask(&c, "default/client", "default/web-1", "8080/TCP").allowed);
    assert!(!ask(&c, "default/client", "default/web-1", "8081/TCP").allowed);
    // The named port resolves on each destination pod: 8081 on web-2.
    let x = ask(&c, "default/client", "default/web-2", "8081/TCP");
    assert_eq!(x.ingress.rule.as_deref(), Some("default/in ingress[1]"));
    assert!(!ask(&c, "default/web-1", "default/web-2", "8081/TCP").allowed);
}

#[test]
fn ip_blocks_with_except_and_port_ranges() {
    let c = cluster(
        r#"
kind: NetworkPolicy
metadata: {name: out, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.2.0/24]}}]
    ports: [{port: 8000, endPort: 8090}]
  - to: [{ipBlock: {cidr: 203.0.113.0/24}}]
    ports: [{port: 443}, {port: 53, protocol: UDP}, {port: 132, protocol: SCTP}]
"#,
    );
    // ipBlocks match pod peers by their IP.
    let x = ask(&c, "default/client", "default/web-1", "8080/TCP");
    assert_eq!(x.egress.rule.as_deref(), Some("default/out egress[0]"));
    assert!(!ask(&c, "default/client", "default/web-1", "8091/TCP").allowed);
    assert!(
        !ask(&c, "default/client", "default/web-2", "8081/TCP").allowed,
        "except"
    );
    let x = ask(&c, "default/client", "203.0.113.9", "443/TCP");
    assert!(x.allowed);
    assert_eq!(x.to.kind, "address");
    assert_eq!(x.ingress.pod, None);
    assert!(ask(&c, "default/client", "203.0.113.9", "53/udp").allowed);
    assert!(!ask(&c, "default/client", "203.0.113.9", "53/TCP").allowed);
    assert!(ask(&c, "default/client", "203.0.113.9", "132/SCTP").allowed);
    assert!(!ask(&c, "default/client", "203.0.114.9", "443/TCP").allowed);
}

#[test]
fn egress_named_ports_resolve_on_the_destination_pod() {
    let c = cluster(
        r#"
kind: NetworkPolicy
metadata: {name: out, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]
  - to: [{ipBlock: {cidr: 10.244.0.0/16}}]
    ports: [{port: dns, protocol: UDP}]
"#,
    );
    assert!(ask(&c, "default/client", "default/web-1", "8080/TCP").allowed);
    assert!(!ask(&c, "default/client", "default/web-1", "8081/TCP").allowed);
    assert!(ask(&c, "default/client", "default/web-2", "8081/TCP").allowed);
    // Through an ipBlock: only pods with that name resolve it.
    let x = ask(&c, "default/client", "default/web-1", "53/UDP");
    assert_eq!(x.egress.rule.as_deref(), Some("default/out egress[1]"));
    assert!(!ask(&c, "default/client", "default/web-2", "53/UDP").allowed);
    assert!(!ask(&c, "default/client", "10.244.9.9", "53/UDP").allowed);
}

#[test]
fn a_rule_the_api_would_reject_allows_nothing_and_is_reported() {
    let c = cluster(
        r#"
kind: NetworkPolicy
metadata: {name: bad, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{port: 8090, endPort: 8000}]
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/24]}}]
  - ports: [{port: 8081}]
"#,
    );
    let x = ask(&c, "default/client", "default/web-2", "8081/TCP");
    assert_eq!(x.ingress.rule.as_deref(), Some("default/bad ingress[2]"));
    assert_eq!(x.ingress.errors.len(), 2, "{:?}", x.ingress.errors);
    assert!(x.ingress.errors[0].contains("ingress[0].ports[0]: endPort 8000 is below port 8090"));
    assert!(x.ingress.errors[1].contains("ingress[1].from[0]"));
    let x = ask(&c, "default/client", "default/web-2", "8085/TCP");
    assert!(x.ingress.isolated && !x.allowed);
}

#[test]
fn an_invalid_pod_selector_isolates_the_namespace_and_allows_nothing() {
    let c = cluster(
        r#"
kind: NetworkPolicy
metadata: {name: bad, namespace: default}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Equals, values: [web]}]}
  ingress: [{}]
"#,
    );
    let x = ask(&c, "other/mon", "default/client", "80/TCP");
    assert!(x.ingress.isolated && !x.allowed);
    assert!(
        x.ingress.errors[0].contains("podSelector"),
        "{:?}",
        x.ingress.errors
    );
}

#[test]
fn a_pod_reaches_itself_and_its_own_node() {
    let c = cluster(DENY_ALL);
    let x = ask(&c, "default/web-1", "default/web-1", "8080/TCP");
    assert!(x.allowed && x.egress.isolated);
    assert_eq!(x.egress.reason, "a pod always reaches itself");
    // Its own node, by name or by address, both ways; the other node follows policy.
    let x = ask(&c, "node:node-a", "default/web-1", "8080/TCP");
    assert!(x.allowed, "{x:?}");
    assert_eq!(x.from.kind, "node");
    assert!(ask(&c, "default/web-1", "10.255.0.1", "10250/TCP").allowed);
    let x = ask(&c, "node:node-b", "default/web-1", "8080/TCP");
    assert!(!x.allowed && x.ingress.isolated);
    // A host-network pod has its node's address.
    let x = ask(&c, "other/agent", "default/web-1", "8080/TCP");
    assert_eq!(x.from.kind, "host-network-pod");
    assert!(x.allowed);
    assert!(!ask(&c, "other/agent", "default/web-2", "8081/TCP").allowed);
    assert_eq!(
        ask(&c, "10.255.0.1", "default/web-2", "80").from.kind,
        "node"
    );
    // Strict: the own node is an address like any other.
    let (port, protocol) = parse_port("8080").unwrap();
    let strict = explain(
        &c,
        &Query {
            from: "node:node-a".parse().unwrap(),
            to: "default/web-1".parse().unwrap(),
            protocol,
            port,
            strict_node_traffic: true,
        },
    )
    .unwrap();
    assert!(!strict.allowed);
}

#[test]
fn a_service_is_judged_on_every_backend() {
    let c = cluster(
        r#"
kind: NetworkPolicy
metadata: {name: to-front, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {tier: front}}}]}]
"#,
    );
    let x = ask(&c, "default/client", "svc:default/web", "80/TCP");
    assert!(!x.allowed, "one of two backends is denied");
    let backends = x.backends.as_ref().unwrap();
    let summary: Vec<(&str, u16, bool)> = backends
        .iter()
        .map(|b| (b.pod.as_str(), b.port, b.allowed))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("default/web-1", 8080, true),
            ("default/web-2", 8081, false)
        ]
    );
    assert_eq!(
        backends[0].egress.rule.as_deref(),
        Some("default/to-front egress[0]")
    );
    // The top level shows the backend that denies.
    assert_eq!(x.egress, backends[1].egress);
    assert_eq!(x.to.kind, "service");
    assert_eq!(x.port, 80);
    // The ClusterIP on a Service port means the Service; on another port, an address.
    let x = ask(&c, "default/client", "10.96.0.10", "80/TCP");
    assert_eq!(x.to.name.as_deref(), Some("default/web"));
    let x = ask(&c, "default/client", "10.96.0.10", "81/TCP");
    assert_eq!(x.to.kind, "address");
    // A pod reaching itself through its Service.
    let x = ask(&c, "default/web-2", "svc:default/web", "53/UDP");
    let b = x.backends.unwrap();
    assert_eq!(b.len(), 2, "a numeric target port: every selected pod");
    let me = b.iter().find(|b| b.pod == "default/web-2").unwrap();
    assert!(me.allowed);
    assert_eq!(me.egress.reason, "a pod always reaches itself");
}

#[test]
fn an_ip_of_a_pod_means_that_pod() {
    let c = cluster(DENY_ALL);
    let x = ask(&c, "10.244.1.10", "10.244.2.10", "8081/TCP");
    assert_eq!(x.from.name.as_deref(), Some("default/client"));
    assert_eq!(x.to.name.as_deref(), Some("default/web-2"));
    assert!(x.egress.isolated);
}

#[test]
fn clear_errors() {
    let c = cluster("");
    let err = |from: &str, to: &str, port: &str| {
        try_ask(&c, from, to, port)
            .err()
            .unwrap_or_else(|| panic!("{from} -> {to} {port} must fail"))
            .to_string()
    };
    assert!(err("default/nope", "default/web-1", "80/TCP").contains("no pod default/nope"));
    assert!(err("default/client", "svc:default/nope", "80/TCP").contains("no Service"));
    let e = err("default/client", "svc:default/web", "81/TCP");
    assert!(
        e.contains("has no port 81/TCP") && e.contains("80/TCP"),
        "{e}"
    );
    assert!(err("default/client", "default/web-1", "80/HTTP").contains("unknown protocol"));
    assert!(err("default/client", "default/web-1", "0/TCP").contains("bad port"));
    assert!(err("default/client", "default/web-1", "x").contains("bad port"));
    assert!(err("svc:default/web", "default/web-1", "80").contains("does not open"));
    assert!(err("node:node-z", "default/web-1", "80").contains("no node node-z"));
    assert!(err("client", "default/web-1", "80").contains("bad endpoint"));
    assert!(err("::ffff:10.0.0.1", "default/web-1", "80").contains("IPv4-mapped"));
}

#[test]
fn text_output_names_the_verdict_and_the_rule() {
    let c = cluster(DENY_ALL);
    let out = text::render(&ask(&c, "default/client", "svc:default/web", "80/TCP"));
    assert!(out.starts_with("DENIED: pod default/client"), "{out}");
    assert!(
        out.contains("backend default/web-1 (10.244.1.11:8080, on node-a): denied"),
        "{out}"
    );
    assert!(out.contains("isolated by default/deny-all"), "{out}");
}

/// Every pair of ends, ports and protocols over a cluster with most policy features:
/// explain's verdict per direction equals what the compiled plan holds.
#[test]
fn verdicts_equal_the_compiled_plan() {
    let c = cluster(
        r#"
kind: NetworkPolicy
metadata: {name: mix, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {}}, {ipBlock: {cidr: 10.255.0.0/24, except: [10.255.0.2/32]}}]
    ports: [{port: http}, {port: 50, endPort: 60, protocol: UDP}]
  - from: [{podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web]}]}}]
    ports: [{port: 9000, protocol: SCTP}]
  egress:
  - to: [{ipBlock: {cidr: 10.244.0.0/16}}]
    ports: [{port: http}, {port: dns, protocol: UDP}]
  - to: [{namespaceSelector: {matchLabels: {team: ops}}}]
---
kind: NetworkPolicy
metadata: {name: mon, namespace: other}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}, podSelector: {matchLabels: {tier: front}}}]}]
  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.244.1.0/24]}}], ports: [{port: 8080, endPort: 8081}]}]
"#,
    );
    let plans: Vec<(&str, crate::compile::Plan)> = ["node-a", "node-b"]
        .into_iter()
        .map(|n| (n, crate::compile::compile(&c.state, n)))
        .collect();
    let dir_allows = |pod: &str, ingress: bool, peer: IpAddr, proto, port| -> bool {
        for (_, plan) in &plans {
            if let Some(ep) = plan.endpoints.iter().find(|e| e.pod.to_string() == pod) {
                let set = if ingress { ep.ingress } else { ep.egress };
                return set.is_none_or(|r| plan.allows(r, peer, proto, port));
            }
        }
        true
    };
    let ends = [
        "10.244.1.10",
        "10.244.1.11",
        "10.244.2.10",
        "10.244.2.11",
        "10.255.0.2",
        "203.0.113.1",
    ];
    let mut compared = 0;
    for from in ends {
        for to in ends {
            if from == to {
                continue;
            }
            for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                for port in [53, 55, 80, 8080, 8081, 9000] {
                    let q = Query {
                        from: from.parse().unwrap(),
                        to: to.parse().unwrap(),
                        protocol: proto,
                        port,
                        strict_node_traffic: true,
                    };
                    let x = explain(&c, &q).unwrap();
                    let (f, t): (IpAddr, IpAddr) = (from.parse().unwrap(), to.parse().unwrap());
                    if let Some(p) = &x.egress.pod {
                        assert_eq!(
                            x.egress.allowed,
                            dir_allows(p, false, t, proto, port),
                            "{q:?}: {x:#?}"
                        );
                    }
                    if let Some(p) = &x.ingress.pod {
                        assert_eq!(
                            x.ingress.allowed,
                            dir_allows(p, true, f, proto, port),
                            "{q:?}: {x:#?}"
                        );
                    }
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > 500);
}

#[test]
fn a_peer_entry_beyond_the_datapath_port_limit_is_denied_as_the_compiler_does() {
    let ports: Vec<String> = (0..20)
        .map(|i| format!("{{port: {}}}", 1000 + 2 * i))
        .collect();
    let c = cluster(&format!(
        r#"
kind: NetworkPolicy
metadata: {{name: many, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - from: [{{podSelector: {{}}}}]
    ports: [{}]
  - from: [{{ipBlock: {{cidr: 0.0.0.0/0}}}}]
    ports: [{{port: 80}}]
"#,
        ports.join(", ")
    ));
    let plan = crate::compile::compile(&c.state, "node-b");
    let ep = plan
        .endpoints
        .iter()
        .find(|e| e.pod.name == "web-2")
        .unwrap();
    let client: IpAddr = "10.244.1.10".parse().unwrap();
    let set = ep.ingress.unwrap();
    assert!(!plan.allows(set, client, Protocol::Tcp, 1000));
    let x = ask(&c, "default/client", "default/web-2", "1000/TCP");
    assert!(!x.allowed);
    assert!(
        x.ingress.errors[0].contains("more than the 16"),
        "{:?}",
        x.ingress.errors
    );
    let x = ask(&c, "default/client", "default/web-2", "80/TCP");
    assert_eq!(x.ingress.rule.as_deref(), Some("default/many ingress[1]"));
    assert!(plan.allows(set, client, Protocol::Tcp, 80));
}

#[test]
fn a_folder_loads_with_services_nodes_and_lists() {
    let dir = std::env::temp_dir().join(format!("netpol-explain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("base.yaml"), BASE).unwrap();
    std::fs::write(
        dir.join("list.json"),
        r#"{"kind": "List", "items": [
            {"kind": "NetworkPolicy", "metadata": {"name": "deny-all", "namespace": "default"},
             "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}},
            {"kind": "NetworkPolicy", "metadata": {"name": "garbled", "namespace": "other"},
             "spec": {"podSelector": 7}}]}"#,
    )
    .unwrap();
    let loaded = Cluster::load(&dir);
    let missing = Cluster::load(&dir.join("nope"));
    let _ = std::fs::remove_dir_all(&dir);
    let loaded = loaded.unwrap();
    assert_eq!(
        loaded.state.nodes["node-a"].ips,
        vec!["10.255.0.1".parse::<IpAddr>().unwrap()]
    );
    let built = cluster(DENY_ALL);
    assert_eq!(loaded.services, built.services);
    let x = ask(&loaded, "default/client", "svc:default/web", "80/TCP");
    assert_eq!(x.backends.map(|b| b.len()), Some(2));
    // A policy that cannot be read isolates its namespace both ways and says why.
    let x = ask(&loaded, "default/client", "other/mon", "80/TCP");
    assert!(!x.ingress.allowed);
    assert_eq!(x.ingress.policies, vec!["other/garbled"]);
    assert!(
        x.ingress.errors[0].contains("cannot be read"),
        "{:?}",
        x.ingress.errors
    );
    let e = missing.expect_err("a missing folder fails").to_string();
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn a_service_without_backends_allows_nothing() {
    let c = cluster(
        r#"
kind: Service
metadata: {name: empty, namespace: default}
spec: {clusterIP: 10.96.0.11, selector: {app: none}, ports: [{port: 80}]}
"#,
    );
    let x = ask(&c, "default/client", "svc:default/empty", "80/TCP");
    assert!(!x.allowed);
    assert_eq!(x.backends, Some(Vec::new()));
    assert!(x.reason.contains("no backend"), "{}", x.reason);
    assert!(text::render(&x).starts_with("DENIED"));
}

/// The tutorials' cluster-wide rules: nothing reaches the metadata service (Admin), DNS
/// to the `web` pods is allowed at Baseline, and the rest of `other`'s ingress is denied
/// at Baseline.
const TIERS: &str = r#"
kind: ClusterNetworkPolicy
metadata: {name: no-metadata}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {}}
  egress:
  - {name: metadata, action: Deny, to: [{networks: [169.254.169.254/32]}]}
  - {name: to-web-pass, action: Pass, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}]}
---
kind: ClusterNetworkPolicy
metadata: {name: baseline}
spec:
  tier: Baseline
  priority: 5
  subject: {namespaces: {matchLabels: {team: ops}}}
  ingress:
  - {name: deny-rest, action: Deny, from: [{namespaces: {}}]}
"#;

#[test]
fn cluster_network_policy_tiers_name_the_rule_that_decided() {
    let c = cluster(TIERS);
    let x = ask(&c, "default/client", "169.254.169.254", "80/TCP");
    assert!(!x.allowed, "{x:?}");
    assert_eq!(
        x.egress.rule.as_deref(),
        Some("ClusterNetworkPolicy no-metadata (Admin tier) rule metadata")
    );
    assert!(
        x.egress.reason.starts_with("denied by"),
        "{}",
        x.egress.reason
    );

    // Pass leaves the Admin tier; nothing else isolates the client: allowed by default.
    let x = ask(&c, "default/client", "default/web-2", "8081/TCP");
    assert!(x.allowed, "{x:?}");
    assert!(x.egress.reason.contains("allowed"), "{}", x.egress.reason);

    // Baseline denies ingress to `other` from any pod.
    let x = ask(&c, "default/client", "other/mon", "9000/TCP");
    assert!(!x.allowed);
    assert_eq!(
        x.ingress.rule.as_deref(),
        Some("ClusterNetworkPolicy baseline (Baseline tier) rule deny-rest")
    );
}

#[test]
fn network_policy_decides_between_the_tiers() {
    // An NetworkPolicy allow for `other/mon` comes before the Baseline deny.
    let allow = r#"
kind: NetworkPolicy
metadata: {name: allow-client, namespace: other}
spec:
  podSelector: {matchLabels: {app: mon}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: client}}}]}]
"#;
    let c = cluster(&format!("{TIERS}\n---\n{allow}"));
    let x = ask(&c, "default/client", "other/mon", "9000/TCP");
    assert!(x.allowed, "{x:?}");
    assert_eq!(
        x.ingress.rule.as_deref(),
        Some("other/allow-client ingress[0]")
    );
    let x = ask(&c, "default/web-1", "other/mon", "9000/TCP");
    assert!(!x.allowed, "{x:?}");
}

/// The README's example (deploy/examples/cluster-network-policies.yaml) does what it says.
#[test]
fn the_cluster_network_policy_example_does_what_the_readme_says() {
    let dns = r#"
kind: Namespace
metadata: {name: kube-system}
---
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {nodeName: node-b, containers: [{name: c, image: i, ports: [{containerPort: 53, protocol: UDP}]}]}
status: {podIP: 10.244.2.53}
"#;
    let example = include_str!("../../../deploy/examples/cluster-network-policies.yaml");
    let c = cluster(&format!("{dns}\n---\n{example}"));
    let x = ask(&c, "default/client", "169.254.169.254", "80/TCP");
    assert!(!x.allowed);
    assert!(
        x.egress.reason.contains("deny-metadata-service"),
        "{}",
        x.egress.reason
    );
    let x = ask(&c, "default/client", "kube-system/coredns", "53/UDP");
    assert!(x.allowed, "{x:?}");
    assert!(x.egress.reason.contains("rule dns"), "{}", x.egress.reason);
    for to in ["default/web-2", "192.0.2.1"] {
        let x = ask(&c, "default/client", to, "8081/TCP");
        assert!(!x.allowed, "{to}: {x:?}");
        assert!(
            x.egress.reason.contains("rule everything-else"),
            "{}",
            x.egress.reason
        );
    }
    // A namespace's own policy relaxes the baseline for the pods it isolates.
    let allow = r#"
kind: NetworkPolicy
metadata: {name: web-out, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: web}}}]}]
"#;
    let c = cluster(&format!("{dns}\n---\n{example}\n---\n{allow}"));
    assert!(ask(&c, "default/client", "default/web-2", "8081/TCP").allowed);
    // ... but not past the Admin tier.
    assert!(!ask(&c, "default/client", "169.254.169.254", "80/TCP").allowed);
}
