//! `cargo xtask kind-e2e`: netpol on a real (kind) cluster. Needs Docker and kind, which
//! the project's own machines do not have; it says so and stops at once where they are
//! missing. Not part of the test command.
//!
//! kind (>= 0.24) enforces NetworkPolicy itself with a `kube-network-policies`
//! DaemonSet. It is deleted before netpol is deployed, and the run first proves that no
//! enforcer is left: a default-deny policy must change nothing. Then every check of
//! `seeds.json` runs with real pods (agnhost servers answering with their name, probes by
//! `kubectl exec ... agnhost connect`). Checks towards `ext:` hosts are skipped: those hosts
//! exist only in the network-namespace sandbox, and nothing is sent outside the cluster.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

const CLUSTER: &str = "netpol-e2e";
const IMAGE: &str = "netpol-agent:e2e";
const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn kubectl_apply(obj: &Value) -> Result<()> {
    let mut child = Command::new("kubectl")
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("running kubectl apply")?;
    if let Some(stdin) = child.stdin.as_mut() {
        use std::io::Write;
        stdin.write_all(obj.to_string().as_bytes())?;
    }
    if !child.wait()?.success() {
        bail!("kubectl apply failed for {}", obj["metadata"]);
    }
    Ok(())
}

pub fn e2e(root: &Path, keep: bool) -> Result<()> {
    let missing: Vec<&str> = ["docker", "kind", "kubectl"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        bail!(
            "kind-e2e needs Docker (with a running engine), kind and kubectl; missing here: {}. \
             Run it on a machine that has them; the sandbox tests (cargo xtask test) cover the rest.",
            missing.join(", ")
        );
    }
    if run(&["docker", "info"]).is_err() {
        bail!("kind-e2e needs a running Docker engine: `docker info` fails here");
    }
    let cases = root.join("../shared/conformance/cases/seeds.json");
    let cases: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(&cases).with_context(|| format!("reading {}", cases.display()))?,
    )?;

    println!("==> kind cluster {CLUSTER} (2 nodes)");
    let config = root.join("deploy/kind/cluster.yaml");
    run(&[
        "kind",
        "create",
        "cluster",
        "--name",
        CLUSTER,
        "--config",
        &config.to_string_lossy(),
        "--wait",
        "180s",
    ])?;
    let result = (|| -> Result<(usize, usize, usize)> {
        // Pods on both nodes.
        let _ = run(&[
            "kubectl",
            "taint",
            "nodes",
            "--all",
            "node-role.kubernetes.io/control-plane-",
        ]);
        println!("==> turning kind's own NetworkPolicy enforcement off");
        run(&[
            "kubectl",
            "-n",
            "kube-system",
            "delete",
            "daemonset",
            "kube-network-policies",
            "--ignore-not-found",
            "--wait=true",
        ])?;
        prove_no_enforcer()?;

        println!("==> image {IMAGE}");
        run(&[
            "docker",
            "build",
            "-f",
            &root.join("deploy/Dockerfile").to_string_lossy(),
            "-t",
            IMAGE,
            &root.to_string_lossy(),
        ])?;
        run(&["kind", "load", "docker-image", IMAGE, "--name", CLUSTER])?;

        println!("==> deploy (kubectl apply -k) with the e2e image");
        let overlay = root.join("target/kind-e2e");
        std::fs::create_dir_all(&overlay)?;
        std::fs::write(
            overlay.join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- {}\nimages:\n- name: netpol-agent\n  newName: netpol-agent\n  newTag: e2e\n",
                root.join("deploy").to_string_lossy()
            ),
        )?;
        run(&["kubectl", "apply", "-k", &overlay.to_string_lossy()])?;
        run(&[
            "kubectl",
            "-n",
            "netpol-system",
            "rollout",
            "status",
            "daemonset/netpol-agent",
            "--timeout=180s",
        ])?;

        let (mut passed, mut failed, mut skipped) = (0, 0, 0);
        for case in &cases {
            let (p, f, s) = run_case(case)?;
            passed += p;
            failed += f;
            skipped += s;
        }
        Ok((passed, failed, skipped))
    })();
    if !keep {
        let _ = run(&["kind", "delete", "cluster", "--name", CLUSTER]);
    }
    let (passed, failed, skipped) = result?;
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        bail!("{failed} checks failed on kind");
    }
    Ok(())
}

fn apply_namespace(ns: &str, labels: &Value) -> Result<()> {
    kubectl_apply(&json!({"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": ns, "labels": labels}}))
}

fn wait_ready(ns: &str) -> Result<()> {
    run(&[
        "kubectl",
        "-n",
        ns,
        "wait",
        "--for=condition=Ready",
        "pod",
        "--all",
        "--timeout=180s",
    ])
    .map(|_| ())
}

fn pod_object(ns: &str, name: &str, labels: &Value, ports: &[Value]) -> Value {
    // agnhost porter answers on every SERVE_PORT_n / SERVE_UDP_PORT_n with that variable's value.
    let mut env = vec![];
    for p in ports {
        let port = p["port"].as_u64().unwrap_or(0);
        let var = if p["protocol"] == "UDP" {
            format!("SERVE_UDP_PORT_{port}")
        } else {
            format!("SERVE_PORT_{port}")
        };
        env.push(json!({"name": var, "value": format!("{ns}/{name}")}));
    }
    let container_ports: Vec<Value> = ports
        .iter()
        .map(|p| json!({"name": p["name"], "containerPort": p["port"], "protocol": p["protocol"]}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
           "spec": {"containers": [{"name": "main", "image": AGNHOST, "args": ["porter"], "env": env, "ports": container_ports}]}})
}

fn prove_no_enforcer() -> Result<()> {
    let ns = "netpol-e2e-check";
    apply_namespace(ns, &json!({}))?;
    kubectl_apply(&pod_object(
        ns,
        "server",
        &json!({"app": "server"}),
        &[json!({"name": "http", "port": 80, "protocol": "TCP"})],
    ))?;
    kubectl_apply(&pod_object(ns, "client", &json!({"app": "client"}), &[]))?;
    wait_ready(ns)?;
    kubectl_apply(
        &json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny-all", "namespace": ns}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    )?;
    std::thread::sleep(Duration::from_secs(5));
    let ip = run(&[
        "kubectl",
        "-n",
        ns,
        "get",
        "pod",
        "server",
        "-o",
        "jsonpath={.status.podIP}",
    ])?;
    let ok = connect(ns, "client", &ip, 80, "TCP");
    run(&["kubectl", "delete", "namespace", ns, "--wait=false"])?;
    if !ok {
        bail!(
            "a default-deny policy is enforced before netpol is deployed: kind's own enforcement is still on"
        );
    }
    println!("no NetworkPolicy enforcer left: default-deny changed nothing");
    Ok(())
}

fn connect(ns: &str, pod: &str, host: &str, port: u64, proto: &str) -> bool {
    Command::new("kubectl")
        .args([
            "-n",
            ns,
            "exec",
            pod,
            "--",
            "/agnhost",
            "connect",
            &format!("{host}:{port}"),
            "--timeout=3s",
            &format!("--protocol={}", proto.to_lowercase()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run_case(case: &Value) -> Result<(usize, usize, usize)> {
    let id = case["id"].as_str().unwrap_or("?");
    println!("==> {id}");
    let model = &case["model"];
    let namespaces: Vec<String> = model["namespaces"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for (ns, labels) in model["namespaces"].as_object().into_iter().flatten() {
        apply_namespace(ns, labels)?;
    }
    for p in model["pods"].as_array().into_iter().flatten() {
        let (ns, name) = (
            p["ns"].as_str().unwrap_or_default(),
            p["name"].as_str().unwrap_or_default(),
        );
        let ports: Vec<Value> = p["ports"].as_array().cloned().unwrap_or_default();
        kubectl_apply(&pod_object(ns, name, &p["labels"], &ports))?;
    }
    for s in model["services"].as_array().into_iter().flatten() {
        kubectl_apply(&json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": s["name"], "namespace": s["ns"]},
            "spec": {"selector": s["selector"], "ports": s["ports"].as_array().map(|ps| ps.iter().map(|p| json!({
                "name": format!("p{}-{}", p["port"], p["protocol"].as_str().unwrap_or("TCP").to_lowercase()),
                "port": p["port"], "targetPort": p["targetPort"], "protocol": p["protocol"]})).collect::<Vec<_>>())}}))?;
    }
    for ns in &namespaces {
        wait_ready(ns)?;
    }
    let steps: Vec<Value> = case["steps"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![case.clone()]);
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (i, step) in steps.iter().enumerate() {
        for ns in &namespaces {
            run(&["kubectl", "-n", ns, "delete", "networkpolicy", "--all"])?;
        }
        for (ns, labels) in step["namespace_labels"].as_object().into_iter().flatten() {
            apply_namespace(ns, labels)?;
        }
        for p in step["policies"].as_array().into_iter().flatten() {
            kubectl_apply(p)?;
        }
        std::thread::sleep(Duration::from_secs(3));
        for c in step["checks"].as_array().into_iter().flatten() {
            let to = c["to"].as_str().unwrap_or_default();
            let (from_ns, from_pod) = c["from"]
                .as_str()
                .unwrap_or_default()
                .split_once('/')
                .unwrap_or_default();
            let host = match to.split_once(':') {
                Some(("svc", r)) => {
                    let (ns, name) = r.split_once('/').unwrap_or_default();
                    format!("{name}.{ns}.svc.cluster.local")
                }
                Some(("pod", r)) => {
                    let (ns, name) = r.split_once('/').unwrap_or_default();
                    run(&[
                        "kubectl",
                        "-n",
                        ns,
                        "get",
                        "pod",
                        name,
                        "-o",
                        "jsonpath={.status.podIP}",
                    ])?
                }
                _ => {
                    println!(
                        "  SKIP step {i} {} -> {to}: external hosts exist only in the netns sandbox",
                        c["from"]
                    );
                    skipped += 1;
                    continue;
                }
            };
            let ok = connect(
                from_ns,
                from_pod,
                &host,
                c["port"].as_u64().unwrap_or(0),
                c["protocol"].as_str().unwrap_or("TCP"),
            );
            let want = c["expect"].as_bool().unwrap_or(false);
            if ok == want {
                passed += 1;
            } else {
                failed += 1;
            }
            println!(
                "  {} step {i} {} -> {to} {}/{}: expected {want}, observed {ok}",
                if ok == want { "PASS" } else { "FAIL" },
                c["from"],
                c["port"],
                c["protocol"]
            );
        }
    }
    for ns in &namespaces {
        if !matches!(ns.as_str(), "default" | "kube-system") {
            let _ = run(&["kubectl", "delete", "namespace", ns, "--wait=false"]);
        } else {
            let _ = run(&[
                "kubectl",
                "-n",
                ns,
                "delete",
                "networkpolicy,pod,service",
                "-l",
                "app",
            ]);
        }
    }
    Ok((passed, failed, skipped))
}
