//! `netpol-agent explain` against the public conformance cases (`../shared/conformance`,
//! `cases/*.json` and `realnet/*.json`): every check that is a policy verdict on the
//! opening of a connection must get the case's expectation from explain, offline. Then
//! the real binary on written folders answers exactly as the library does, and on
//! generated clusters explain agrees with the compiled plan and the reference evaluator.
//!
//! The binary is the debug agent (`cargo build -p netpol-agent` first).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use netpol_agent::compile::{Direction, Plan, compile};
use netpol_agent::explain::{self, Cluster, Endpoint, Explanation, Query};
use netpol_agent::state::Protocol;
use netpol_tests::cases::{Case, CheckDef, CheckKind, Loaded, StepDef, load_checked};
use netpol_tests::explain_world::World;
use netpol_tests::generate::{self, NODES, PROTOCOLS, Rng};
use netpol_tests::reference::{self, End};

const AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/netpol-agent");

fn case_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance");
    let mut files = Vec::new();
    for sub in ["cases", "realnet"] {
        let dir = root.join(sub);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading the case folder {}: {e}", dir.display()));
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        found.sort();
        files.extend(found);
    }
    assert!(!files.is_empty(), "no case files under {}", root.display());
    files
}

/// Every step of every case, in order, with the world as of that step and its checks.
fn for_each_step(mut visit: impl FnMut(&Case, usize, &StepDef, &World, &[CheckDef])) {
    for file in case_files() {
        let loaded = load_checked(&file).unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
        for l in loaded {
            let case = match l {
                Loaded::Case(c) => c,
                Loaded::Refused { id, reason, .. } => {
                    panic!("{}: case {id} refused: {reason}", file.display())
                }
            };
            let mut world = World::new(&case.model())
                .unwrap_or_else(|e| panic!("case {}: model: {e:#}", case.id));
            for (i, step) in case.steps().iter().enumerate() {
                world
                    .apply(step)
                    .unwrap_or_else(|e| panic!("case {} step {}: {e:#}", case.id, i + 1));
                let checks = case
                    .checks_of(step)
                    .unwrap_or_else(|e| panic!("case {} step {}: {e:#}", case.id, i + 1));
                visit(&case, i, step, &world, &checks);
            }
        }
    }
}

/// Whether explain says what the check expects. For a Service: `expect: false` needs every
/// backend denied; `answered_by` needs some backend allowed and only listed ones; else
/// every backend allowed (the top-level `allowed`). `None` when the answer depends on
/// which backend kube-proxy picked (a held connection through a Service whose backends
/// disagree).
fn agrees(x: &Explanation, check: &CheckDef, held: bool) -> Option<bool> {
    let Some(backends) = &x.backends else {
        return Some(x.allowed == check.expect);
    };
    let allowed: Vec<&str> = backends
        .iter()
        .filter(|b| b.allowed)
        .map(|b| b.pod.as_str())
        .collect();
    if held && !allowed.is_empty() && allowed.len() < backends.len() {
        return None;
    }
    Some(match (&check.answered_by, check.expect) {
        (_, false) => allowed.is_empty(),
        (Some(list), true) => {
            !allowed.is_empty() && allowed.iter().all(|p| list.iter().any(|l| l == p))
        }
        (None, true) => x.allowed,
    })
}

fn describe(case: &Case, step: usize, check: &CheckDef) -> String {
    format!(
        "case {} step {}: {:?} {} -> {} {}/{} expect {}",
        case.id,
        step + 1,
        check.kind,
        check.from,
        check.to,
        check.port,
        check.protocol,
        check.expect
    )
}

#[test]
fn explain_agrees_with_every_public_case() {
    let mut compared: BTreeMap<&str, usize> = BTreeMap::new();
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    // Held connections by name, per case: `use` is judged on its opening.
    let mut opened: BTreeMap<(String, String), CheckDef> = BTreeMap::new();
    let folder = std::env::temp_dir().join(format!("netpol-explain-cases-{}", std::process::id()));
    for_each_step(|case, i, step, world, checks| {
        let cluster = world
            .cluster()
            .unwrap_or_else(|e| panic!("case {} step {}: {e:#}", case.id, i + 1));
        // The folder the binary reads holds the same cluster.
        world.write(&folder).unwrap_or_else(|e| panic!("{e:#}"));
        let loaded = Cluster::load(&folder).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            loaded,
            cluster,
            "case {} step {}: the folder differs",
            case.id,
            i + 1
        );
        for (j, check) in checks.iter().enumerate() {
            let name = check.name.clone().unwrap_or_default();
            let (kind, asked, held) = match check.kind {
                CheckKind::Connect if j >= step.checks.len() => {
                    ("matrix cell", check.clone(), false)
                }
                CheckKind::Connect if check.bytes.is_some() => (
                    "connect with bytes (the verdict of its opening)",
                    check.clone(),
                    false,
                ),
                CheckKind::Connect => ("connect", check.clone(), false),
                // FORMAT.md: a segment of no connection is judged as an opening.
                CheckKind::Stray => ("stray segment (judged as an opening)", check.clone(), false),
                CheckKind::Open => {
                    opened.insert((case.id.clone(), name), check.clone());
                    ("open", check.clone(), false)
                }
                CheckKind::Use => match opened.get(&(case.id.clone(), name.clone())) {
                    // Re-decided on its opening under the policies in force.
                    Some(o) => (
                        "use (its opening re-decided)",
                        CheckDef {
                            expect: check.expect,
                            ..o.clone()
                        },
                        true,
                    ),
                    None => panic!(
                        "{}: `use` of {name:?} before its `open`",
                        describe(case, i, check)
                    ),
                },
                CheckKind::Close => {
                    *skipped
                        .entry("close (ends a held connection, no verdict)".into())
                        .or_default() += 1;
                    continue;
                }
            };
            let query = world
                .query(&asked)
                .unwrap_or_else(|e| panic!("{}: {e:#}", describe(case, i, check)));
            let x = explain::explain(&cluster, &query)
                .unwrap_or_else(|e| panic!("{}: explain failed: {e}", describe(case, i, check)));
            match agrees(&x, &asked, held) {
                Some(true) => *compared.entry(kind).or_default() += 1,
                Some(false) => failures.push(format!(
                    "{}: explain says {} ({})",
                    describe(case, i, &asked),
                    if x.allowed { "allowed" } else { "denied" },
                    x.reason
                )),
                None => {
                    *skipped
                        .entry("use through a Service whose backends disagree (which one was picked is unknown)".into())
                        .or_default() += 1
                }
            }
        }
    });
    let _ = std::fs::remove_dir_all(&folder);
    let total: usize = compared.values().sum();
    println!("explain compared {total} checks with the cases' expectations:");
    for (kind, n) in &compared {
        println!("  {n:5} {kind}");
    }
    println!("skipped {}:", skipped.values().sum::<usize>());
    for (why, n) in &skipped {
        println!("  {n:5} {why}");
    }
    assert!(
        failures.is_empty(),
        "{} checks disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(total > 0, "no check was compared");
}

fn run_agent(args: &[&str]) -> std::process::Output {
    Command::new(AGENT)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {AGENT} (build it: cargo build -p netpol-agent): {e}"))
}

/// Runs `netpol-agent explain -o json` on every check of a step, and compares its output
/// with the library's answer. Returns (allowed, blocked) counts.
fn binary_answers_like_the_library(
    case: &Case,
    i: usize,
    world: &World,
    checks: &[CheckDef],
) -> (usize, usize) {
    let folder = std::env::temp_dir().join(format!(
        "netpol-explain-bin-{}-{}-{i}",
        std::process::id(),
        case.id
    ));
    world.write(&folder).unwrap_or_else(|e| panic!("{e:#}"));
    let cluster = world.cluster().unwrap_or_else(|e| panic!("{e:#}"));
    let (mut allowed, mut blocked) = (0, 0);
    for check in checks.iter().filter(|c| c.kind == CheckKind::Connect) {
        let [from, to, port] = world.cli_args(check).unwrap_or_else(|e| panic!("{e:#}"));
        let dir = folder.to_string_lossy().to_string();
        let out = run_agent(&[
            "explain",
            "--policy-dir",
            &dir,
            "--from",
            &from,
            "--to",
            &to,
            "--port",
            &port,
            "-o",
            "json",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{}: explain failed: {stderr}",
            describe(case, i, check)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {stderr}", describe(case, i, check)));
        let query = world.query(check).unwrap_or_else(|e| panic!("{e:#}"));
        let want = explain::explain(&cluster, &query).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            got,
            serde_json::to_value(&want).unwrap(),
            "{}",
            describe(case, i, check)
        );
        for field in ["isolated", "allowed", "policies", "rule"] {
            assert!(got["egress"].get(field).is_some() && got["ingress"].get(field).is_some());
        }
        assert_eq!(
            agrees(&want, check, false),
            Some(true),
            "{}",
            describe(case, i, check)
        );
        if check.expect {
            allowed += 1;
        } else {
            blocked += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&folder);
    (allowed, blocked)
}

/// The binary, on the first step that has allowed and blocked checks, and on the first
/// step that names a node.
#[test]
fn the_binary_answers_like_the_library() {
    let (mut mixed_done, mut node_done) = (false, false);
    let (mut allowed, mut blocked) = (0, 0);
    for_each_step(|case, i, _, world, checks| {
        let connects = checks.iter().filter(|c| c.kind == CheckKind::Connect);
        let mixed = connects.clone().any(|c| c.expect) && connects.clone().any(|c| !c.expect);
        let node = connects
            .clone()
            .any(|c| c.from.starts_with("node:") || c.to.starts_with("node:"));
        if (mixed && !mixed_done) || (node && !node_done) {
            let (a, b) = binary_answers_like_the_library(case, i, world, checks);
            println!(
                "case {} step {}: the binary answered {a} allowed and {b} blocked checks",
                case.id,
                i + 1
            );
            allowed += a;
            blocked += b;
            mixed_done |= mixed;
            node_done |= node;
        }
    });
    assert!(
        allowed > 0 && blocked > 0,
        "{allowed} allowed, {blocked} blocked"
    );
}

#[test]
fn the_binary_fails_clearly_on_bad_input() {
    let folder = std::env::temp_dir().join(format!("netpol-explain-bad-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("pods.yaml"),
        "kind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, image: i}]}\nstatus: {podIP: 10.244.1.10}\n---\nkind: Service\nmetadata: {name: s, namespace: x}\nspec: {clusterIP: 10.96.0.1, selector: {app: a}, ports: [{port: 80}]}\n",
    )
    .unwrap();
    let dir = folder.to_string_lossy().to_string();
    let cases: [(&[&str], &str); 6] = [
        (
            &["--from", "x/nope", "--to", "x/a", "--port", "80/TCP"],
            "no pod x/nope",
        ),
        (
            &["--from", "x/a", "--to", "x/a", "--port", "80/HTTP"],
            "unknown protocol",
        ),
        (
            &["--from", "x/a", "--to", "x/a", "--port", "eighty"],
            "bad port",
        ),
        (
            &["--from", "x/a", "--to", "svc:x/s", "--port", "81/TCP"],
            "has no port 81/TCP",
        ),
        (
            &["--from", "x/a", "--to", "svc:x/t", "--port", "80/TCP"],
            "no Service x/t",
        ),
        (
            &["--from", "a", "--to", "x/a", "--port", "80"],
            "bad endpoint",
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["explain", "--policy-dir", dir.as_str()];
        all.extend_from_slice(args);
        let out = run_agent(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let missing = folder.join("missing").to_string_lossy().to_string();
    let out = run_agent(&[
        "explain",
        "--policy-dir",
        &missing,
        "--from",
        "x/a",
        "--to",
        "x/a",
        "--port",
        "80",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("missing"),
        "{stderr}"
    );
    // Text output: a few lines, the verdict first.
    let out = run_agent(&[
        "explain",
        "--policy-dir",
        &dir,
        "--from",
        "x/a",
        "--to",
        "svc:x/s",
        "--port",
        "80",
    ]);
    let _ = std::fs::remove_dir_all(&folder);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("DENIED: pod x/a"), "no backend: {text}");
}

/// What the compiled plans decide for a direction of a pod (no rule set: open), and the
/// rule the datapath names for it.
fn plan_allows(
    plans: &BTreeMap<&str, Plan>,
    pod: &str,
    ingress: bool,
    peer: IpAddr,
    protocol: Protocol,
    port: u16,
) -> (bool, Option<String>) {
    for plan in plans.values() {
        if let Some(ep) = plan.endpoints.iter().find(|e| e.pod.to_string() == pod) {
            let dir = if ingress {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            return match plan.decide(ep, dir, peer, protocol, port) {
                Some(rule) => (true, rule.map(ToString::to_string)),
                None => (false, None),
            };
        }
    }
    (true, None)
}

/// Generated clusters (the compiler's property-test generator): explain's verdict equals
/// the reference evaluator's, and each direction equals the compiled plan's, down to
/// the rule it names.
#[test]
fn explain_agrees_with_the_compiler_and_the_reference_on_generated_clusters() {
    let mut compared = 0;
    let mut named = 0;
    for seed in 1..=300u64 {
        let mut rng = Rng::new(seed);
        let state = generate::cluster(&mut rng);
        let plans: BTreeMap<&str, Plan> = NODES.iter().map(|n| (*n, compile(&state, n))).collect();
        let addresses = generate::addresses(&state);
        let cluster = Cluster::from_state(state.clone());
        for _ in 0..100 {
            let v4 = rng.chance(80);
            let Some(ips) = addresses.get(&v4) else {
                continue;
            };
            let (src, dst) = (*rng.pick(ips), *rng.pick(ips));
            let end = |ip: IpAddr| match state.pods.iter().find(|(_, p)| p.ips.contains(&ip)) {
                Some((r, _)) => End::Pod(r.clone(), ip),
                None => End::Outside(ip),
            };
            let (s, d) = (end(src), end(dst));
            // A pod reaching itself always passes in netpol; the reference has no such rule.
            if matches!((&s, &d), (End::Pod(a, _), End::Pod(b, _)) if a == b) {
                continue;
            }
            let protocol = *rng.pick(&PROTOCOLS);
            let port = *rng.pick(&[53u16, 79, 80, 81, 82, 84, 443, 8080, 9000]);
            let query = Query {
                from: Endpoint::Address(src),
                to: Endpoint::Address(dst),
                protocol,
                port,
                // Generated host-network pods sit on nodes like the others: judge them by
                // policy, as the reference does.
                strict_node_traffic: true,
            };
            let x = explain::explain(&cluster, &query)
                .unwrap_or_else(|e| panic!("seed {seed}: {query:?}: {e}"));
            let want = reference::allowed(&state, &s, &d, protocol, port);
            assert_eq!(x.allowed, want, "seed {seed}: {query:?}: {x:#?}");
            if let Some(pod) = &x.egress.pod {
                let (allowed, rule) = plan_allows(&plans, pod, false, dst, protocol, port);
                assert_eq!(x.egress.allowed, allowed, "seed {seed}: {query:?}: {x:#?}");
                assert_eq!(x.egress.rule, rule, "seed {seed}: {query:?}: {x:#?}");
                named += usize::from(rule.is_some());
            }
            if let Some(pod) = &x.ingress.pod {
                let (allowed, rule) = plan_allows(&plans, pod, true, src, protocol, port);
                assert_eq!(x.ingress.allowed, allowed, "seed {seed}: {query:?}: {x:#?}");
                assert_eq!(x.ingress.rule, rule, "seed {seed}: {query:?}: {x:#?}");
                named += usize::from(rule.is_some());
            }
            compared += 1;
        }
    }
    println!(
        "{compared} generated flows: explain equals the reference and the compiled plans ({named} sides named a rule)"
    );
    assert!(compared > 10_000);
    assert!(named > 1000, "{named} of {compared}");
}
