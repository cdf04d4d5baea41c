//! `cargo xtask <task>`: the project's entry points. Each task installs what it needs first
//! (scripts/install-prereqs.sh, which skips what is present), so each works on a fresh
//! machine. This crate depends on nothing of the project, so it builds before the BPF
//! toolchain exists.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod kernels;
mod kind;

#[derive(Parser)]
#[command(about = "netpol build, demo and test tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces (apt packages, rust-src, bpf-linker) that are missing.
    Prereqs,
    /// Build the agent (with its BPF object) and the sandbox tools.
    Build,
    /// Start the sandbox cluster with the tutorial scenario "deny external egress except
    /// DNS and app=web", print which connections pass or are blocked, and the counters.
    Demo {
        /// Case id of ../shared/conformance/cases/seeds.json to show.
        #[arg(long, default_value = "seed-000-deny-external-egress")]
        case: String,
    },
    /// Run conformance case files on real packets in the sandbox.
    Conformance {
        #[arg(long, num_args = 1.., required = true)]
        cases: Vec<PathBuf>,
        /// Attach mode of the agents: auto, tcx or netlink.
        #[arg(long, default_value = "auto")]
        attach_mode: String,
        /// Address family of the sandbox: ipv4 or ipv6.
        #[arg(long, default_value = "ipv4")]
        family: String,
        /// What networks the pods: none (the sandbox's own veths and /32 routes), ptp or
        /// bridge (the reference CNI plugins, invoked as a container runtime does).
        #[arg(long, default_value = "none")]
        cni: String,
    },
    /// Everything CI runs: formatting, clippy, unit, property and crafted-packet tests,
    /// the mutation check, every conformance case in the sandbox (IPv4 with TCX and
    /// netlink attachment, IPv6, and both families with the ptp and the bridge CNI
    /// plugins), and the sandbox scenarios.
    Test,
    /// Policy propagation latency in the sandbox (root): API write -> maps updated, and
    /// -> first packet with the new verdict, over N changes; prints p50 and p99.
    Latency {
        #[arg(long, default_value_t = 100)]
        changes: usize,
    },
    /// One pod floods new flows through a small conntrack map (root) while another pod's
    /// established TCP connection and UDP exchange, busy and idle in turns, must go on.
    /// Known to fail with the current datapath (idle entries are evicted), so not in
    /// `test`.
    Flood {
        /// `--conntrack-entries` and `--conntrack-new-entries` of the agents.
        #[arg(long, default_value_t = 4096)]
        conntrack_entries: u32,
        /// How long the attacker floods.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Mutation check: break one semantic rule of the compiler at a time (in a scratch
    /// copy of the tree) and require the property test against the reference evaluator
    /// to catch each.
    Mutants,
    /// Render the manifests (`kubectl kustomize deploy/`) and validate them, and the
    /// example policies, against the Kubernetes JSON schemas, offline.
    ValidateManifests,
    /// Build the statically linked (musl) agent the image ships and run its `--help`.
    Static,
    /// On a machine with Docker and kind: a 2-node kind cluster with kind's own policy
    /// enforcement off, the image built and loaded, netpol deployed, and the tutorial
    /// scenarios run with real pods.
    KindE2e {
        /// Keep the cluster afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// Datapath cost per packet with BPF_PROG_TEST_RUN (root, release build): empty
    /// program, established connection, new flows against 1, 1k and 10k CIDR entries.
    Bench {
        /// Also write the results as JSON ([{"name", "value", "unit"}]).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// A sandbox scenario (root) by name, with its own flags after `--`: pod-start,
    /// restart, api-faults, audit, churn, flood, cleanup, latency. E.g. `cargo xtask scenario
    /// pod-start --cni bridge -- --pods 100`.
    Scenario {
        name: String,
        /// The CNI plugin that networks the pods: none, ptp or bridge (pod-start needs
        /// one; default ptp there, none elsewhere).
        #[arg(long)]
        cni: Option<String>,
        #[arg(long, default_value = "ipv4")]
        family: String,
        #[arg(long, default_value = "auto")]
        attach_mode: String,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The crafted-packet datapath tests on Debian's kernels under qemu (root; no KVM
    /// needed, slow without): bullseye's 5.10 and bookworm's 6.1, or those named.
    Kernels {
        /// Only these (5.10, 6.1).
        #[arg(long = "kernel")]
        only: Vec<String>,
        /// Only these test files (of the crafted-packet ones), e.g. to check one change
        /// on a kernel quickly.
        #[arg(long = "test")]
        tests: Vec<String>,
    },
    /// Remove sandbox namespaces left behind by killed runs.
    Clean,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn shared_cases() -> Result<PathBuf> {
    let dir = root().join("../shared/conformance/cases");
    if !dir.is_dir() {
        bail!(
            "{} not found: the conformance cases live in shared/ beside this repository",
            dir.display()
        );
    }
    Ok(dir)
}

fn cnp_cases() -> Result<PathBuf> {
    let dir = root().join("../shared/conformance/cnp");
    if !dir.is_dir() {
        bail!("{} not found", dir.display());
    }
    Ok(dir)
}

fn realnet_cases() -> Result<PathBuf> {
    let dir = root().join("../shared/conformance/realnet");
    if !dir.is_dir() {
        bail!("{} not found", dir.display());
    }
    Ok(dir)
}

fn step(what: &str) {
    println!("\n==> {what}");
}

fn sh(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    // The rustup proxy, not $CARGO: `+nightly` must work.
    let mut c = Command::new("cargo");
    // bpf-linker is built against LLVM 22.
    let path = std::env::var("PATH").unwrap_or_default();
    c.env("PATH", format!("/usr/lib/llvm-22/bin:{path}"));
    c
}

fn prereqs() -> Result<()> {
    step("prerequisites");
    sh(Command::new("bash").arg(root().join("scripts/install-prereqs.sh")))
}

fn test_tools() -> Result<()> {
    step("test tools");
    sh(Command::new("bash")
        .arg(root().join("scripts/install-prereqs.sh"))
        .arg("--test-tools"))
}

const VALIDATOR: &str = "/opt/netpol-tools/venv/bin/kubernetes-validate";

fn validates(file: &Path) -> Result<bool> {
    let out = Command::new(VALIDATOR)
        .args(["--strict", "--quiet"])
        .arg(file)
        .output()
        .with_context(|| {
            format!("running {VALIDATOR} (cargo xtask prereqs installs it with the test tools)")
        })?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    print!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(out.status.success())
}

/// `kubectl kustomize DIR` (relative to the repository).
fn kustomize(dir: &str) -> Result<String> {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(root().join(dir))
        .output()
        .context("running kubectl kustomize")?;
    if !out.status.success() {
        bail!(
            "kubectl kustomize {dir}/ failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn validate_manifests() -> Result<()> {
    step("manifests: kubectl kustomize deploy/ | kubernetes-validate --strict");
    let dir = root().join("target/manifests");
    std::fs::create_dir_all(&dir)?;
    let rendered_text = kustomize("deploy")?;
    let rendered = dir.join("rendered.yaml");
    std::fs::write(&rendered, &rendered_text)?;
    if !validates(&rendered)? {
        bail!("the rendered manifests do not validate");
    }
    println!("rendered manifests: valid");
    // The check must be able to fail: the same manifests with one wrong field.
    let text = rendered_text.replace("hostNetwork: true", "hostNetwork: \"yes\"");
    let broken = dir.join("broken.yaml");
    std::fs::write(&broken, text)?;
    if validates(&broken)? {
        bail!(
            "a DaemonSet with hostNetwork: \"yes\" passed validation: the validation checks nothing"
        );
    }
    println!("the same manifests with hostNetwork: \"yes\": rejected, as they must be");
    let uninstall = dir.join("uninstall.yaml");
    std::fs::write(&uninstall, kustomize("deploy/uninstall")?)?;
    if !validates(&uninstall)? {
        bail!("the uninstall manifests do not validate");
    }
    println!("uninstall manifests: valid");
    for ex in case_files_with(&root().join("deploy/examples"), "yaml")? {
        if !validates(&ex)? {
            bail!("{} does not validate", ex.display());
        }
    }
    println!("example policies: valid");
    Ok(())
}

/// The agent as the image ships it: musl, static, and it starts.
fn static_check() -> Result<()> {
    prereqs()?;
    step("static (musl) agent");
    let target = "x86_64-unknown-linux-musl";
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "netpol-agent",
        "--target",
        target,
    ]))?;
    let bin = root().join(format!("target/{target}/release/netpol-agent"));
    let elf = std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    if has_interpreter(&elf) {
        bail!("{} is dynamically linked", bin.display());
    }
    let out = Command::new(&bin).arg("--help").output()?;
    if !out.status.success()
        || !String::from_utf8_lossy(&out.stdout).contains("Usage: netpol-agent")
    {
        bail!("{} --help failed", bin.display());
    }
    println!(
        "{}: statically linked ({} bytes); --help works",
        bin.display(),
        elf.len()
    );
    Ok(())
}

/// Does this ELF64 file ask for a dynamic loader (a PT_INTERP program header)?
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(|b: [u8; 8]| u64::from_le_bytes(b) as usize)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return true;
    };
    (0..phnum).any(|i| {
        elf.get(phoff + i * phentsize..phoff + i * phentsize + 4)
            .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == 3)
    })
}

fn case_files_with(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    Ok(files)
}

fn build() -> Result<(PathBuf, PathBuf, PathBuf)> {
    prereqs()?;
    step("build");
    sh(cargo().args(["build", "-p", "netpol-agent", "-p", "netpol-tests"]))?;
    let bin = root().join("target/debug");
    Ok((
        bin.join("netpol-agent"),
        bin.join("netpol-probe"),
        bin.join("netpol-sandbox"),
    ))
}

fn require_root() -> Result<()> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("running id")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("the sandbox creates network namespaces and loads BPF programs: run as root");
    }
    Ok(())
}

/// Runs `netpol-sandbox` (built by `build`) with the agent and probe it needs.
fn sandbox_cmd(bins: &(PathBuf, PathBuf, PathBuf), attach_mode: &str, family: &str) -> Command {
    let (agent, probe, sandbox) = bins;
    let mut c = Command::new(sandbox);
    c.arg("--agent").arg(agent).arg("--probe").arg(probe).args([
        "--attach-mode",
        attach_mode,
        "--family",
        family,
    ]);
    c
}

fn sandbox(args: &[&str], attach_mode: &str, family: &str) -> Result<()> {
    require_root()?;
    let bins = build()?;
    sh(sandbox_cmd(&bins, attach_mode, family).args(args))
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Prereqs => prereqs(),
        Task::Build => build().map(|_| ()),
        Task::Demo { case } => {
            let seeds = shared_cases()?.join("seeds.json");
            sandbox(
                &["demo", "--cases", &seeds.to_string_lossy(), "--case", &case],
                "auto",
                "ipv4",
            )
        }
        Task::Conformance {
            cases,
            attach_mode,
            family,
            cni,
        } => {
            let cases: Vec<String> = cases
                .iter()
                .map(|c| {
                    std::fs::canonicalize(c)
                        .with_context(|| format!("case file {}", c.display()))
                        .map(|p| p.to_string_lossy().to_string())
                })
                .collect::<Result<_>>()?;
            let mut args = vec!["--cni", cni.as_str(), "conformance", "--cases"];
            args.extend(cases.iter().map(String::as_str));
            sandbox(&args, &attach_mode, &family)
        }
        Task::Test => test(),
        Task::Mutants => mutants(),
        Task::Latency { changes } => sandbox(
            &["latency", "--changes", &changes.to_string()],
            "auto",
            "ipv4",
        ),
        Task::Flood {
            conntrack_entries,
            seconds,
        } => sandbox(
            &[
                "flood",
                "--conntrack-entries",
                &conntrack_entries.to_string(),
                "--seconds",
                &seconds.to_string(),
            ],
            "auto",
            "ipv4",
        ),
        Task::Clean => sandbox(&["clean"], "auto", "ipv4"),
        Task::Kernels { only, tests } => {
            require_root()?;
            prereqs()?;
            kernels::kernels(&only, &tests)
        }
        Task::Scenario {
            name,
            cni,
            family,
            attach_mode,
            args,
        } => {
            let cni =
                cni.unwrap_or_else(|| if name == "pod-start" { "ptp" } else { "none" }.to_string());
            let mut all = vec!["--cni", cni.as_str(), name.as_str()];
            all.extend(args.iter().map(String::as_str));
            sandbox(&all, &attach_mode, &family)
        }
        Task::Bench { json } => bench(json.as_deref()),
        Task::ValidateManifests => {
            test_tools()?;
            validate_manifests()
        }
        Task::Static => static_check(),
        Task::KindE2e { keep } => kind::e2e(&root(), keep),
    }
}

fn test() -> Result<()> {
    require_root()?;
    let shared = shared_cases()?;
    let bins = build()?;
    test_tools()?;
    validate_manifests()?;
    static_check()?;
    step("cargo fmt --check");
    sh(cargo().args(["fmt", "--all", "--check"]))?;
    step("cargo clippy -D warnings");
    sh(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    sh(cargo().args([
        "+nightly",
        "clippy",
        "-p",
        "netpol-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("unit, property and crafted-packet tests (the root_* ones load BPF)");
    sh(cargo().args(["test"]))?;
    mutants()?;
    // Every public case and the project's own, in both families; the netlink attach path
    // must keep working on kernels where TCX is preferred.
    let mut cases = case_files(&shared)?;
    cases.extend(case_files(&root().join("tests/cases"))?);
    // With the ClusterNetworkPolicy cases (Admin and Baseline tiers, node peers,
    // host-network pods).
    let cnp = case_files(&cnp_cases()?)?;
    for (mode, family) in [("auto", "ipv4"), ("auto", "ipv6"), ("netlink", "ipv4")] {
        step(&format!(
            "conformance in the sandbox (root): {family}, attach mode {mode}"
        ));
        sh(sandbox_cmd(&bins, mode, family)
            .args(["conformance", "--cases"])
            .args(&cases)
            .args(&cnp))?;
    }
    // The same cases, and the real-network ones, with pods networked by the reference
    // CNI plugins (invoked as a container runtime invokes them), routed (ptp) and bridged,
    // in both families.
    let realnet = case_files(&realnet_cases()?)?;
    for (plugin, family) in [
        ("ptp", "ipv4"),
        ("ptp", "ipv6"),
        ("bridge", "ipv4"),
        ("bridge", "ipv6"),
    ] {
        step(&format!(
            "conformance in the sandbox (root): {family}, pods networked by the {plugin} CNI plugin"
        ));
        sh(sandbox_cmd(&bins, "auto", family)
            .args(["--cni", plugin, "conformance", "--cases"])
            .args(&cases)
            .args(&realnet))?;
    }
    // New pods enforced from their first packet (netpol's chained CNI plugin), with both
    // kinds of pod network.
    for plugin in ["ptp", "bridge"] {
        step(&format!(
            "scenario in the sandbox (root): pod-start, 100 pods by the {plugin} CNI plugin"
        ));
        sh(sandbox_cmd(&bins, "auto", "ipv4").args([
            "--cni",
            plugin,
            "pod-start",
            "--pods",
            "100",
        ]))?;
    }
    for (mode, scenario) in [
        ("auto", &["restart"][..]),
        ("netlink", &["restart"][..]),
        ("auto", &["api-faults"][..]),
        ("auto", &["audit"][..]),
        ("auto", &["cleanup"][..]),
        ("netlink", &["cleanup"][..]),
        ("auto", &["churn", "--seconds", "60"][..]),
        ("auto", &["flood"][..]),
    ] {
        step(&format!(
            "scenario in the sandbox (root): {} ({mode})",
            scenario.join(" ")
        ));
        sh(sandbox_cmd(&bins, mode, "ipv4").args(scenario))?;
    }
    // Last, the real-network cases (nodes, stray segments, held connections, fragments and
    // path MTU), timed: they must keep CI short.
    let mut failed = Vec::new();
    for (mode, family) in [("auto", "ipv4"), ("auto", "ipv6"), ("netlink", "ipv4")] {
        step(&format!(
            "real-network conformance in the sandbox (root): {family}, attach mode {mode}"
        ));
        let started = std::time::Instant::now();
        let result = sh(sandbox_cmd(&bins, mode, family)
            .args(["conformance", "--cases"])
            .args(&realnet));
        println!(
            "real-network conformance ({family}, {mode}) took {:.1} s",
            started.elapsed().as_secs_f64()
        );
        if let Err(e) = result {
            failed.push(format!("{family}/{mode}: {e:#}"));
        }
    }
    if !failed.is_empty() {
        bail!("real-network conformance failed: {}", failed.join("; "));
    }
    Ok(())
}

fn bench(json: Option<&Path>) -> Result<()> {
    require_root()?;
    prereqs()?;
    step("bench (release)");
    // The network part runs the release agent and probe in the sandbox.
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "netpol-agent",
        "--bin",
        "netpol-agent",
        "-p",
        "netpol-tests",
        "--bin",
        "netpol-bench",
        "--bin",
        "netpol-probe",
    ]))?;
    let mut cmd = Command::new(root().join("target/release/netpol-bench"));
    if let Some(j) = json {
        let abs = std::env::current_dir()?.join(j);
        cmd.arg("--json").arg(abs);
    }
    sh(&mut cmd)
}

fn case_files(dir: &Path) -> Result<Vec<PathBuf>> {
    case_files_with(dir, "json")
}

/// (file, original text, mutated text, what the mutation breaks)
const MUTANTS: &[(&str, &str, &str, &str)] = &[
    (
        "netpol-agent/src/compile/incremental.rs",
        "if have == 0 || have + d <= 0 {",
        "if have == 0 {",
        "the incremental compile keeps rule sets naming an identity that is gone",
    ),
    (
        "netpol-agent/src/compile/incremental.rs",
        "if before.is_some_and(local) || after.is_some_and(local) {",
        "if after.is_some_and(local) {",
        "a pod leaving this node keeps its endpoint in the incremental plan",
    ),
    (
        "netpol-agent/src/compile/prefix.rs",
        "if g.prefix.contains(&p) && !g.except.iter().any(|e| e.contains(&p)) {",
        "if g.prefix.contains(&p) {",
        "ipBlock except is ignored",
    ),
    (
        "netpol-agent/src/compile/prefix.rs",
        "ports.add(block_ports);",
        "let _ = block_ports;",
        "a pod inside an allowed ipBlock loses the block's ports",
    ),
    (
        "netpol-agent/src/compile/mod.rs",
        ".any(|p| matches!(p.port, Some(IntOrString::String(_))))",
        ".any(|_| false)",
        "ingress named ports are resolved once for pods with different ports",
    ),
    (
        "netpol-agent/src/compile/mod.rs",
        ".any(|p| p.ip_block.is_none() && p.namespace_selector.is_none());",
        ".any(|_| false);",
        "a podSelector rule is resolved once for policies of different namespaces",
    ),
    (
        "netpol-agent/src/compile/mod.rs",
        "ports: &pod.ports,",
        "ports: &[],",
        "pods with different named ports share an identity",
    ),
    (
        "netpol-agent/src/compile/selector.rs",
        "labels.get(k).is_none_or(|v| !vs.contains(v))",
        "labels.get(k).is_some_and(|v| !vs.contains(v))",
        "NotIn no longer matches a missing label",
    ),
    (
        "netpol-agent/src/compile/mod.rs",
        "Direction::Egress => peer_pod,",
        "Direction::Egress => Some(self.rules_of.subject),",
        "egress named ports resolve on the source pod",
    ),
    (
        "netpol-agent/src/compile/mod.rs",
        "None => **ns == self.namespace,",
        "None => true,",
        "a podSelector-only peer matches pods of every namespace",
    ),
    (
        "netpol-agent/src/compile/validate.rs",
        "            types.insert(Direction::Ingress);\n            if spec",
        "            if spec",
        "policyTypes no longer defaults to Ingress",
    ),
    (
        "netpol-agent/src/compile/ports.rs",
        "u32::from(r.first) <= u32::from(last.last) + 1",
        "u32::from(r.first) <= u32::from(last.last) + 2",
        "port ranges merge across a gap of one port",
    ),
    (
        "netpol-agent/src/compile/allowed.rs",
        "&& u32::from(last.last) + 1 == u32::from(range.first)",
        "&& u32::from(last.last) + 2 >= u32::from(range.first)",
        "a rule's port ranges in a rule set merge across a gap of one port",
    ),
];

fn mutants() -> Result<()> {
    let scratch = root().join("target/mutants/tree");
    let target = root().join("target/mutants/target");
    let files = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root())
        .output()
        .context("git ls-files")?;
    let mut survived = Vec::new();
    for (file, from, to, what) in MUTANTS {
        step(&format!("mutant: {what}"));
        let _ = std::fs::remove_dir_all(&scratch);
        for f in files.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
            let rel = String::from_utf8_lossy(f).to_string();
            let dst = scratch.join(&rel);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(root().join(&rel), &dst).with_context(|| format!("copying {rel}"))?;
        }
        let path = scratch.join(file);
        let text = std::fs::read_to_string(&path)?;
        if !text.contains(from) {
            bail!("mutant {what:?}: {file} no longer contains the text to mutate; update MUTANTS");
        }
        std::fs::write(&path, text.replacen(from, to, 1))?;
        // Only a test that runs and fails catches a mutant: one that does not build
        // (or a build that was interrupted) says nothing.
        let property_test = |extra: &[&str]| {
            cargo()
                .args([
                    "test",
                    "-p",
                    "netpol-tests",
                    "--test",
                    "compile_vs_reference",
                    "--test",
                    "compile_incremental",
                ])
                .args(extra)
                .env("AYA_BUILD_SKIP", "1")
                .env("CARGO_TARGET_DIR", &target)
                .current_dir(&scratch)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
        };
        let built =
            property_test(&["--no-run"]).context("building the property test on the mutant")?;
        if !built.success() {
            bail!("mutant {what:?} does not build ({built}); fix MUTANTS");
        }
        let status = property_test(&[]).context("running the property test on the mutant")?;
        if status.success() {
            println!("SURVIVED: the property test passed with \"{what}\"");
            survived.push(*what);
        } else {
            println!("caught");
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if std::env::var_os("CI").is_some() {
        // A CI machine builds once; its disk is better spent on the sandbox runs.
        let _ = std::fs::remove_dir_all(&target);
    }
    println!(
        "\n{} mutants caught, {} survived",
        MUTANTS.len() - survived.len(),
        survived.len()
    );
    if !survived.is_empty() {
        bail!("mutants survived: {survived:?}");
    }
    Ok(())
}
