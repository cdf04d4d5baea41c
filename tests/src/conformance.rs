//! Runs conformance cases on real packets: one sandbox per case, steps in order, every
//! check of a step in parallel. One unit of the summary is one step of one case.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;

use std::collections::BTreeMap;

use crate::cases::{Case, CheckDef, CheckKind, Loaded, load_checked};
use crate::held::HeldConns;
use crate::sandbox::{self, Answer, Config, Sandbox};

/// The outcome of one check.
#[derive(Clone, Debug)]
pub struct CheckResult {
    pub check: CheckDef,
    pub passed: bool,
    /// What was seen, for humans: `allowed (default/web)`, `blocked (connect: timed out)`.
    pub observed: String,
}

#[derive(Debug)]
pub struct StepResult {
    pub case: String,
    pub step: usize,
    pub checks: Vec<CheckResult>,
    /// Set when the step could not be applied or probed at all.
    pub error: Option<String>,
    pub apply_time: Duration,
    /// For a failed step: the netpol counters that moved on the pods of its failed
    /// checks while the checks ran.
    pub counters: Vec<String>,
}

impl StepResult {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.checks.iter().all(|c| c.passed)
    }
}

/// Judges the answers of one check against what it expects. `expect: false` needs
/// silence: no answer, and no refusal (a policy drop sends no reset or unreachable).
pub fn judge(check: &CheckDef, answers: &[Answer]) -> (bool, String) {
    let ok: Vec<&String> = answers
        .iter()
        .filter_map(|a| match a {
            Answer::Ok(who) => Some(who),
            _ => None,
        })
        .collect();
    let failed: Vec<String> = answers
        .iter()
        .filter_map(|a| match a {
            Answer::Ok(_) => None,
            Answer::Silent(why) => Some(format!("no answer: {why}")),
            Answer::Refused(why) => Some(format!("refused: {why}")),
            Answer::Error(why) => Some(format!("error: {why}")),
        })
        .collect();
    let observed = if failed.is_empty() {
        format!("allowed (answered by {})", dedup(&ok))
    } else if ok.is_empty() {
        format!("blocked ({})", failed[0])
    } else {
        format!(
            "{} of {} allowed (answered by {}), others blocked ({})",
            ok.len(),
            answers.len(),
            dedup(&ok),
            failed[0]
        )
    };
    let silent = |a: &Answer| matches!(a, Answer::Silent(_));
    let passed = if !check.expect {
        !answers.is_empty() && answers.iter().all(silent)
    } else if let Some(allowed) = &check.answered_by {
        !ok.is_empty() && ok.iter().all(|who| allowed.contains(who))
    } else {
        !answers.is_empty() && failed.is_empty()
    };
    (passed, observed)
}

fn dedup(names: &[&String]) -> String {
    let mut v: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    v.sort();
    v.dedup();
    v.join(", ")
}

pub fn run_case(
    case: &Case,
    cfg: &Config,
    mut on_step: impl FnMut(&StepResult),
) -> Vec<StepResult> {
    let steps = case.steps();
    let fail_all = |msg: String| -> Vec<StepResult> {
        (0..steps.len())
            .map(|i| StepResult {
                case: case.id.clone(),
                step: i,
                checks: Vec::new(),
                error: Some(msg.clone()),
                apply_time: Duration::ZERO,
                counters: Vec::new(),
            })
            .collect()
    };
    let mut sb = match Sandbox::start(&case.model(), cfg) {
        Ok(sb) => sb,
        Err(e) => {
            let r = fail_all(format!("sandbox: {e:#}"));
            r.iter().for_each(&mut on_step);
            return r;
        }
    };
    let held = HeldConns::default();
    let mut results = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let result = run_step(case, &mut sb, &held, i, step);
        on_step(&result);
        results.push(result);
    }
    held.close_all();
    results
}

fn run_step(
    case: &Case,
    sb: &mut Sandbox,
    held: &HeldConns,
    i: usize,
    step: &crate::cases::StepDef,
) -> StepResult {
    let mut result = StepResult {
        case: case.id.clone(),
        step: i,
        checks: Vec::new(),
        error: None,
        apply_time: Duration::ZERO,
        counters: Vec::new(),
    };
    let applied = sb
        .set_cluster_policies(&step.cluster_network_policies)
        .and_then(|()| sb.apply(&step.policies, &step.namespace_labels, &step.pod_labels));
    match applied {
        Ok(t) => result.apply_time = t,
        Err(e) => result.error = Some(format!("apply: {e:#}")),
    }
    if result.error.is_some() {
        return result;
    }
    match case.checks_of(step) {
        Ok(checks) => {
            let before = counters(sb);
            result.checks = run_checks(sb, held, &checks);
            if !result.passed() {
                result.counters = moved_counters(sb, &before, &result.checks);
            }
        }
        Err(e) => result.error = Some(format!("{e:#}")),
    }
    result
}

/// Packets per reason, per pod, over every node's agent.
type Counters = BTreeMap<String, BTreeMap<String, u64>>;

fn counters(sb: &Sandbox) -> Counters {
    let mut out = Counters::new();
    for st in sb.statuses() {
        for ep in st.endpoints {
            out.insert(ep.pod, ep.packets);
        }
    }
    out
}

/// The counters that moved since `before` on the pods of the failed checks.
fn moved_counters(sb: &Sandbox, before: &Counters, checks: &[CheckResult]) -> Vec<String> {
    // The agents refresh their counters every second.
    std::thread::sleep(Duration::from_millis(1200));
    let after = counters(sb);
    let mut pods: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed)
        .flat_map(|c| {
            let mut p = sb.pods_of(&c.check.from);
            p.extend(sb.pods_of(&c.check.to));
            p
        })
        .collect();
    pods.sort();
    pods.dedup();
    let mut lines = Vec::new();
    for pod in pods {
        let (Some(now), old) = (after.get(&pod), before.get(&pod)) else {
            lines.push(format!("{pod}: no counters (not enforced by any agent)"));
            continue;
        };
        let moved: Vec<String> = now
            .iter()
            .filter_map(|(reason, n)| {
                let was = old.and_then(|o| o.get(reason)).copied().unwrap_or(0);
                (*n > was).then(|| format!("{reason} +{}", n - was))
            })
            .collect();
        let moved = if moved.is_empty() {
            "nothing moved".to_string()
        } else {
            moved.join(", ")
        };
        lines.push(format!("{pod}: {moved}"));
    }
    lines
}

/// Checks run in parallel, except that the checks of one held connection run in their
/// order (`open` before `use` before `close`).
pub fn run_checks(sb: &Sandbox, held: &HeldConns, checks: &[CheckDef]) -> Vec<CheckResult> {
    let mut lanes: Vec<Vec<usize>> = Vec::new();
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, c) in checks.iter().enumerate() {
        match (c.kind, c.name.as_deref()) {
            (CheckKind::Open | CheckKind::Use | CheckKind::Close, Some(name)) => {
                let lane = *by_name.entry(name).or_insert_with(|| {
                    lanes.push(Vec::new());
                    lanes.len() - 1
                });
                lanes[lane].push(i);
            }
            _ => lanes.push(vec![i]),
        }
    }
    let mut results: Vec<Option<CheckResult>> = vec![None; checks.len()];
    std::thread::scope(|s| {
        let handles: Vec<_> = lanes
            .iter()
            .map(|lane| {
                s.spawn(move || {
                    lane.iter()
                        .map(|i| (*i, run_check(sb, held, &checks[*i])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for (h, lane) in handles.into_iter().zip(&lanes) {
            match h.join() {
                Ok(done) => done.into_iter().for_each(|(i, r)| results[i] = Some(r)),
                Err(_) => lane.iter().for_each(|i| {
                    results[*i] = Some(CheckResult {
                        check: checks[*i].clone(),
                        passed: false,
                        observed: "probe thread panicked".into(),
                    })
                }),
            }
        }
    });
    results.into_iter().flatten().collect()
}

/// Runs one check of any kind.
pub fn run_check(sb: &Sandbox, held: &HeldConns, check: &CheckDef) -> CheckResult {
    let outcome = match check.kind {
        CheckKind::Connect => sb.probe(check).map(|a| (check.clone(), judge(check, &a))),
        CheckKind::Stray => sb.stray(check).map(|seen| {
            let observed = if seen {
                "reached the destination's namespace"
            } else {
                "not seen in the destination's namespace"
            };
            (check.clone(), (seen == check.expect, observed.to_string()))
        }),
        CheckKind::Open => held
            .open(sb, check)
            .map(|a| (check.clone(), judge(check, &[a]))),
        CheckKind::Use => held.use_conn(check).map(|(a, opened)| {
            let shown = CheckDef {
                kind: CheckKind::Use,
                name: check.name.clone(),
                expect: check.expect,
                ..opened
            };
            let verdict = judge(&shown, &[a]);
            (shown, verdict)
        }),
        CheckKind::Close => held.close(check).map(|opened| {
            let shown = CheckDef {
                kind: CheckKind::Close,
                name: check.name.clone(),
                expect: true,
                ..opened
            };
            (shown, (true, "closed".to_string()))
        }),
    };
    match outcome {
        Ok((shown, (passed, observed))) => CheckResult {
            check: shown,
            passed,
            observed,
        },
        Err(e) => CheckResult {
            check: check.clone(),
            passed: false,
            observed: format!("not probed: {e:#}"),
        },
    }
}

pub fn describe(c: &CheckResult) -> String {
    let ch = &c.check;
    let what = match ch.kind {
        CheckKind::Connect => String::new(),
        CheckKind::Stray => format!(
            "stray [{}] sport {} ",
            ch.flags.as_deref().unwrap_or_default(),
            ch.sport.map_or("any".to_string(), |p| p.to_string())
        ),
        kind => format!(
            "{} {} ",
            format!("{kind:?}").to_lowercase(),
            ch.name.as_deref().unwrap_or_default()
        ),
    };
    let bytes = ch
        .bytes
        .map(|b| format!(" ({b} bytes each way)"))
        .unwrap_or_default();
    let mut s = format!(
        "{what}{} -> {} {}/{}{bytes}: expected {}, observed {}",
        ch.from,
        ch.to,
        ch.port,
        ch.protocol,
        if ch.expect { "allowed" } else { "blocked" },
        c.observed
    );
    if let Some(a) = &ch.answered_by {
        let _ = write!(s, " (must be answered by {})", a.join(", "));
    }
    s
}

/// The `conformance` command: every case of every file, a line per step, the failed
/// checks of failed steps, and `N passed, N failed` at the end.
pub fn run_files(files: &[PathBuf], cfg: &Config) -> Result<(usize, usize)> {
    let removed = sandbox::remove_stale()?;
    if removed > 0 {
        println!("removed {removed} namespaces left by an earlier sandbox run");
    }
    let mut cases = Vec::new();
    for f in files {
        cases.extend(load_checked(f)?);
    }
    println!(
        "running {} cases from {} files on real packets (attach mode {})",
        cases.len(),
        files.len(),
        cfg.attach_mode
    );
    println!(
        "TCP: handshake and one request/response; UDP: one datagram answered; SCTP: this kernel has no SCTP sockets, so a crafted INIT is sent over a raw socket and a crafted INIT-ACK naming the server must come back; expect false needs silence (a reset or ICMP unreachable fails)"
    );
    let started = Instant::now();
    let (mut passed, mut failed) = (0, 0);
    let mut report = |r: &StepResult| {
        if r.passed() {
            passed += 1;
        } else {
            failed += 1;
        }
        print_step(r);
    };
    for loaded in &cases {
        match loaded {
            Loaded::Case(case) => {
                run_case(case, cfg, &mut report);
            }
            Loaded::Refused { id, steps, reason } => {
                for step in 0..*steps {
                    report(&StepResult {
                        case: id.clone(),
                        step,
                        checks: Vec::new(),
                        error: Some(format!("refused: {reason}")),
                        apply_time: Duration::ZERO,
                        counters: Vec::new(),
                    });
                }
            }
        }
    }
    println!(
        "conformance run took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("{passed} passed, {failed} failed");
    Ok((passed, failed))
}

fn print_step(r: &StepResult) {
    println!(
        "{} {} step {} ({} checks, applied in {} ms)",
        if r.passed() { "PASS" } else { "FAIL" },
        r.case,
        r.step,
        r.checks.len(),
        r.apply_time.as_millis()
    );
    if let Some(e) = &r.error {
        println!("    error: {e}");
    }
    for c in r.checks.iter().filter(|c| !c.passed) {
        println!("    differs: {}", describe(c));
    }
    for line in &r.counters {
        println!("    counters: {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(expect: bool, answered_by: Option<Vec<&str>>) -> CheckDef {
        CheckDef {
            from: "a/b".into(),
            to: "svc:a/c".into(),
            port: 80,
            protocol: "TCP".into(),
            expect,
            attempts: Some(3),
            answered_by: answered_by.map(|v| v.into_iter().map(String::from).collect()),
            ..CheckDef::default()
        }
    }

    #[test]
    fn judging() {
        let ok = |s: &str| Answer::Ok(s.to_string());
        let no = || Answer::Silent("connect: timed out".to_string());
        assert!(judge(&check(true, None), &[ok("x"), ok("y")]).0);
        assert!(!judge(&check(true, None), &[ok("x"), no()]).0);
        assert!(judge(&check(false, None), &[no(), no()]).0);
        assert!(!judge(&check(false, None), &[no(), ok("x")]).0);
        let only_a = check(true, Some(vec!["ns/a"]));
        assert!(judge(&only_a, &[ok("ns/a"), no(), ok("ns/a")]).0);
        assert!(!judge(&only_a, &[ok("ns/a"), ok("ns/b")]).0);
        assert!(!judge(&only_a, &[no(), no()]).0);
        assert!(!judge(&check(true, None), &[]).0);
        let refused = Answer::Refused("connect: connection refused".into());
        assert!(
            !judge(&check(false, None), &[no(), refused]).0,
            "a refusal is not silence"
        );
    }
}
