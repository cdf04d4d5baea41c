//! `cargo xtask kernels`: netpol's crafted-packet datapath tests on the kernels it claims
//! to support, under qemu. Debian's kernel packages (bookworm's 6.1; bullseye's 5.10,
//! whose suite is added for the download only), a root filesystem made here as an
//! initramfs (busybox, iproute2 and the test binaries with their shared libraries, and
//! the kernel modules the tests need), and an init script that runs the tests and
//! powers off. Nothing leaves the VM: it has no network device.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, root, sh, step};

/// The crafted-packet tests (BPF_PROG_TEST_RUN on the real programs, in namespaces of
/// their own): what differs between kernels is the verifier, the helpers and the attach
/// path, and these exercise all three.
const TESTS: &[&str] = &[
    "root_datapath",
    "root_attack",
    "root_attack2",
    "root_attack3",
    "root_differential",
    "root_quarantine",
    "root_attack_fastpath",
    "root_iface_slots",
    "root_events",
    "root_rule_attribution",
    "root_audit",
    "root_datapath_log",
    "root_cnp_datapath",
    "root_cnp_attack_datapath",
    "root_cnp_attack2_datapath",
    "root_cnp_attack3_datapath",
    "root_node_hook",
    "root_node_hook_elsewhere",
];

/// Modules the tests need (veth pairs, netlink clsact filters, the kernel's connection
/// table read over ctnetlink, nftables rules with NAT), with what they depend on
/// (`modules.dep`); the rest is built in.
const MODULES: &[&str] = &[
    "veth",
    "sch_ingress",
    "cls_bpf",
    "nf_conntrack_netlink",
    "nf_tables",
    "nft_ct",
    "nft_nat",
    "nft_chain_nat",
];

struct Kernel {
    name: &'static str,
    suite: &'static str,
    /// `apt-cache search` pattern of the image package.
    package: &'static str,
}

const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        suite: "bullseye",
        package: "^linux-image-5\\.10\\.0-[0-9]+-cloud-amd64-unsigned$",
    },
    Kernel {
        name: "6.1",
        suite: "bookworm",
        package: "^linux-image-6\\.1\\.0-[0-9]+-cloud-amd64-unsigned$",
    },
];

pub fn kernels(only: &[String], tests: &[String]) -> Result<()> {
    if let Some(unknown) = tests.iter().find(|t| !TESTS.contains(&t.as_str())) {
        bail!("{unknown} is not one of the kernels' tests: {TESTS:?}");
    }
    let work = root().join("target/kernels");
    std::fs::create_dir_all(&work)?;
    step("kernels: qemu, busybox and cpio");
    sh(Command::new("bash").args([
        "-c",
        "command -v qemu-system-x86_64 >/dev/null && command -v cpio >/dev/null && [ -x /bin/busybox ] \
         || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 busybox-static cpio)",
    ]))?;
    step("kernels: the test binaries");
    let binaries = test_binaries(tests)?;
    let mut failed = Vec::new();
    for k in KERNELS
        .iter()
        .filter(|k| only.is_empty() || only.iter().any(|o| o == k.name))
    {
        step(&format!("kernels: Linux {} (Debian {})", k.name, k.suite));
        let started = Instant::now();
        let dir = work.join(k.name);
        let (vmlinuz, modules) = fetch_kernel(k, &dir)?;
        let initrd = make_initrd(&dir, &binaries, &modules)?;
        let passed = boot(&vmlinuz, &initrd, &dir.join("console.log"))?;
        println!(
            "kernels: Linux {}: {} in {:.0} s (console: {})",
            k.name,
            if passed { "passed" } else { "FAILED" },
            started.elapsed().as_secs_f64(),
            dir.join("console.log").display()
        );
        if !passed {
            failed.push(k.name);
        }
    }
    if !failed.is_empty() {
        bail!("kernels: failed on {}", failed.join(", "));
    }
    Ok(())
}

/// Builds the test targets (`wanted`, or all) and returns their executables.
fn test_binaries(wanted: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let mut c = cargo();
    c.args([
        "test",
        "-p",
        "netpol-tests",
        "--no-run",
        "--message-format=json",
    ]);
    let tests: Vec<&str> = (TESTS.iter().copied())
        .filter(|t| wanted.is_empty() || wanted.iter().any(|w| w == t))
        .collect();
    for t in &tests {
        c.args(["--test", t]);
    }
    let out = c
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .context("building the tests")?;
    if !out.status.success() {
        bail!("building the tests failed");
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let name = msg["target"]["name"].as_str().unwrap_or("");
        if let (true, Some(exe)) = (tests.contains(&name), msg["executable"].as_str()) {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    if found.len() != tests.len() {
        bail!(
            "expected {} test binaries, cargo built {found:?}",
            tests.len()
        );
    }
    Ok(found)
}

/// Downloads and unpacks the kernel package; returns vmlinuz and the modules directory.
fn fetch_kernel(k: &Kernel, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let unpacked = dir.join("pkg");
    if !unpacked.join("boot").is_dir() {
        std::fs::create_dir_all(dir)?;
        // A private apt state with only this suite: the host's sources stay as they are.
        let apt = dir.join("apt");
        for d in [
            "lists/partial",
            "cache/archives/partial",
            "etc/sources.list.d",
            "etc/preferences.d",
        ] {
            std::fs::create_dir_all(apt.join(d))?;
        }
        std::fs::write(
            apt.join("etc/sources.list"),
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {} main\n",
                k.suite
            ),
        )?;
        let opts = [
            format!("-oDir::Etc={}", apt.join("etc").display()),
            format!("-oDir::State::Lists={}", apt.join("lists").display()),
            format!("-oDir::Cache={}", apt.join("cache").display()),
            "-oDir::State::status=/dev/null".to_string(),
            "-oAPT::Get::AllowUnauthenticated=false".to_string(),
        ];
        sh(Command::new("apt-get").args(&opts).args(["update", "-qq"]))?;
        let search = Command::new("apt-cache")
            .args(&opts)
            .args(["search", "--names-only", k.package])
            .output()
            .context("apt-cache search")?;
        let mut names: Vec<String> = String::from_utf8_lossy(&search.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        names.sort_by_key(|n| abi_number(n));
        let Some(package) = names.last() else {
            bail!("no package matching {} in Debian {}", k.package, k.suite);
        };
        println!("kernels: {package}");
        // Not `sh`: that runs in the repository, and `apt-get download` writes where it runs.
        let status = Command::new("apt-get")
            .args(&opts)
            .args(["download", "-qq", package])
            .current_dir(dir)
            .status()
            .context("starting apt-get download")?;
        if !status.success() {
            bail!("apt-get download {package} failed ({status})");
        }
        let deb = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("the downloaded package")?;
        sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    }
    let vmlinuz = std::fs::read_dir(unpacked.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
        })
        .context("vmlinuz in the package")?;
    let modules = std::fs::read_dir(unpacked.join("lib/modules"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .next()
        .context("lib/modules in the package")?;
    Ok((vmlinuz, modules))
}

fn abi_number(package: &str) -> u32 {
    package
        .split('-')
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The root filesystem: busybox, `ip`, the test binaries and every shared library they
/// load, the modules, and `/init`.
fn make_initrd(dir: &Path, binaries: &[(String, PathBuf)], modules: &Path) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    for d in [
        "bin", "sbin", "tests", "modules", "proc", "sys", "dev", "run", "tmp", "etc",
    ] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("busybox-static")?;
    let mut libs = BTreeSet::new();
    for tool in ["/usr/bin/ip", "/usr/sbin/nft"] {
        let tool = PathBuf::from(tool);
        let name = tool.file_name().context("tool name")?;
        std::fs::copy(&tool, rootfs.join("sbin").join(name))
            .with_context(|| format!("copying {}", tool.display()))?;
        libs.extend(shared_libraries(&tool)?);
    }
    for (name, exe) in binaries {
        // Without debug information: the whole root filesystem lives in the VM's memory.
        sh(Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(rootfs.join("tests").join(name))
            .arg(exe))?;
        libs.extend(shared_libraries(exe)?);
    }
    for lib in &libs {
        let to = rootfs.join(lib.strip_prefix("/").unwrap_or(lib));
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::copy(lib, &to).with_context(|| format!("copying {}", lib.display()))?;
    }
    let mut loads = String::new();
    for m in with_dependencies(modules, MODULES)? {
        let name = m
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".xz").to_string())
            .context("module name")?;
        let found = m;
        let to = rootfs.join("modules").join(&name);
        if found.extension().is_some_and(|x| x == "xz") {
            let out = Command::new("xz").arg("-dc").arg(&found).output()?;
            std::fs::write(&to, out.stdout)?;
        } else {
            std::fs::copy(&found, &to)?;
        }
        loads.push_str(&format!(
            "insmod /modules/{name} || echo 'insmod {name} failed'\n"
        ));
    }
    let mut runs = String::new();
    for (name, _) in binaries {
        runs.push_str(&format!(
            "echo \"== {name}\"; if /tests/{name} --test-threads=1; then :; else fail=1; echo \"NETPOL-KERNEL-FAILED {name}\"; fi\n"
        ));
    }
    // Tests age conntrack entries by setting their last packet up to 200 s in the past
    // on CLOCK_MONOTONIC, which a freshly booted guest has not counted yet.
    let wait = "while [ \"$(cut -d. -f1 /proc/uptime)\" -lt 210 ]; do sleep 5; done\n";
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/sbin:/bin\n\
mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n\
mount -t tmpfs tmp /run\nmount -t tmpfs tmp /tmp\nmkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf\n\
ip link set lo up\necho \"kernel $(uname -r)\"\n{loads}fail=0\n{wait}{runs}\
if [ $fail = 0 ]; then echo NETPOL-KERNEL-PASSED; else echo NETPOL-KERNEL-FAILED; fi\n\
poweroff -f\n"
    );
    let init_path = rootfs.join("init");
    std::fs::write(&init_path, init)?;
    sh(Command::new("chmod").arg("755").arg(&init_path))?;
    let initrd = dir.join("initrd.cpio");
    let file = std::fs::File::create(&initrd)?;
    let status = Command::new("sh")
        .args(["-c", "find . | cpio -o -H newc --quiet"])
        .current_dir(&rootfs)
        .stdout(file)
        .status()
        .context("cpio")?;
    if !status.success() {
        bail!("cpio failed");
    }
    Ok(initrd)
}

/// Every shared library `exe` loads (the dynamic loader included), from `ldd`.
fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(exe).output().context("ldd")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// The module files for `wanted`, dependencies first, from each module's own
/// `depends=` (its `.modinfo`; the package ships no `modules.dep`, depmod makes it at
/// install); a module that is not there is built in.
fn with_dependencies(dir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>> {
    let out = Command::new("find")
        .arg(dir)
        .args(["-name", "*.ko", "-o", "-name", "*.ko.xz"])
        .output()
        .context("find")?;
    let index: std::collections::BTreeMap<String, PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .filter_map(|p| {
            let name = p
                .file_name()?
                .to_string_lossy()
                .split('.')
                .next()?
                .to_string();
            Some((name.replace('-', "_"), p))
        })
        .collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    let mut stack: Vec<(String, bool)> = wanted
        .iter()
        .rev()
        .map(|w| (w.to_string(), false))
        .collect();
    while let Some((m, expanded)) = stack.pop() {
        let Some(path) = index.get(&m.replace('-', "_")) else {
            continue; // built in
        };
        if expanded {
            if !order.contains(path) {
                order.push(path.clone());
            }
            continue;
        }
        if !seen.insert(m.clone()) {
            continue;
        }
        stack.push((m.clone(), true));
        for d in depends(path)? {
            stack.push((d, false));
        }
    }
    Ok(order)
}

/// A module's `depends=` list.
fn depends(path: &Path) -> Result<Vec<String>> {
    let bytes = if path.extension().is_some_and(|x| x == "xz") {
        Command::new("xz").arg("-dc").arg(path).output()?.stdout
    } else {
        std::fs::read(path)?
    };
    let key = b"depends=";
    let Some(at) = bytes.windows(key.len()).position(|w| w == key) else {
        return Ok(Vec::new());
    };
    let rest = &bytes[at + key.len()..];
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    Ok(String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect())
}

/// Boots the kernel with the initramfs (no KVM needed, no network device) and reads the
/// verdict from its console.
fn boot(vmlinuz: &Path, initrd: &Path, log: &Path) -> Result<bool> {
    // KVM when asked for: nested under another hypervisor it may refuse the CPU model
    // (seen here), and software emulation is fast enough for these tests.
    let kvm = std::env::var_os("NETPOL_KERNELS_KVM").is_some() && Path::new("/dev/kvm").exists();
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-m",
        "2048",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
    ])
    .arg("-kernel")
    .arg(vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", "console=ttyS0 panic=-1 rdinit=/init"]);
    if kvm {
        c.args(["-enable-kvm", "-cpu", "host"]);
    } else {
        c.args(["-cpu", "max"]);
    }
    let logf = std::fs::File::create(log)?;
    let mut child = c
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .context("starting qemu")?;
    // 5.10 took 1732 s for the twelve test files under software emulation.
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                println!("kernels: qemu exited with {status}");
            }
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            println!("kernels: gave up after 30 minutes");
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let console = std::fs::read_to_string(log).unwrap_or_default();
    for line in console.lines().filter(|l| {
        l.starts_with("== ")
            || l.starts_with("test result")
            || l.contains("NETPOL-KERNEL")
            || l.starts_with("kernel ")
    }) {
        println!("  {line}");
    }
    // What a verifier refused, once each: the first thing to read when a kernel fails.
    let mut refusals = BTreeSet::new();
    let lines: Vec<&str> = console.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("verifier rejected") {
            let why = lines[i..]
                .iter()
                .find(|l| l.contains("invalid") || l.contains("too large") || l.contains("unknown"))
                .map(|w| w.trim())
                .unwrap_or("");
            refusals.insert(format!("{} {why}", l.trim()));
        }
    }
    for r in &refusals {
        println!("  refused: {r}");
    }
    Ok(console.contains("NETPOL-KERNEL-PASSED"))
}
