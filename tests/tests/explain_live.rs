//! `netpol-agent explain` without `--policy-dir` reads the cluster from the API server:
//! the tests' in-memory API server, holding the objects of the tutorial case "deny
//! external egress" (Nodes included), answers every pod-to-pod, pod-to-Service and
//! pod-to-address check as the case expects. No root, no kernel.

use std::path::Path;
use std::process::Command;

use netpol_tests::apiserver::{ApiServer, Kind};
use netpol_tests::cases::{CheckKind, Loaded, load_checked};
use netpol_tests::explain_world::World;

const AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/netpol-agent");
const CASE: &str = "seed-000-deny-external-egress";

#[test]
fn explain_reads_the_cluster_from_the_api_server() {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/cases/seeds.json");
    let case = load_checked(&file)
        .unwrap_or_else(|e| panic!("{}: {e:#}", file.display()))
        .into_iter()
        .find_map(|l| match l {
            Loaded::Case(c) if c.id == CASE => Some(c),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no case {CASE}"));
    let step = case.steps()[0].clone();
    let mut world = World::new(&case.model()).unwrap_or_else(|e| panic!("{e:#}"));
    world.apply(&step).unwrap_or_else(|e| panic!("{e:#}"));

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let api = ApiServer::new();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    rt.spawn(api.clone().serve(listener));
    for obj in world.objects() {
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let kind = Kind::from_kind(&kind).unwrap_or_else(|| panic!("kind {kind}"));
        api.apply(kind, obj).expect("apply");
    }
    for policy in world.policies() {
        api.apply(Kind::NetworkPolicy, policy.clone())
            .expect("apply a policy");
    }
    let kubeconfig =
        std::env::temp_dir().join(format!("netpol-explain-live-{}", std::process::id()));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: t\n  context: {{cluster: t, user: u}}\ncurrent-context: t\n"
        ),
    )
    .expect("kubeconfig");

    let checks = case.checks_of(&step).expect("checks");
    let (mut allowed, mut blocked) = (0, 0);
    for check in checks
        .iter()
        .filter(|c| c.kind == CheckKind::Connect)
        .filter(|c| !c.from.starts_with("node:") && !c.to.starts_with("node:"))
    {
        let [from, to, port] = world.cli_args(check).unwrap_or_else(|e| panic!("{e:#}"));
        let out = Command::new(AGENT)
            .args(["explain", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(["--from", &from, "--to", &to, "--port", &port, "-o", "json"])
            .output()
            .expect("run netpol-agent explain");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{from} -> {to} {port}: {stderr}");
        let got: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {stderr}"));
        assert_eq!(
            got["allowed"].as_bool(),
            Some(check.expect),
            "{from} -> {to} {port}: {got}"
        );
        if check.expect {
            allowed += 1;
        } else {
            blocked += 1;
        }
    }
    let _ = std::fs::remove_file(&kubeconfig);
    println!(
        "explain from the API server: {allowed} allowed and {blocked} blocked checks as expected"
    );
    assert!(allowed > 0 && blocked > 0, "both verdicts are shown");
}
