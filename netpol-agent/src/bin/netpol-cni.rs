//! netpol's chained CNI plugin: see `netpol_agent::cni`. The runtime runs it with the
//! CNI_* variables set and the network configuration on stdin.

use std::io::{Read, Write};

use netpol_agent::cni::plugin::{self, Env};

fn main() -> std::process::ExitCode {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let env = Env {
        command: var("CNI_COMMAND"),
        container_id: var("CNI_CONTAINERID"),
        args: var("CNI_ARGS"),
    };
    let mut stdin = String::new();
    if env.command != "VERSION"
        && let Err(e) = std::io::stdin().read_to_string(&mut stdin)
    {
        eprintln!("netpol-cni: reading the network configuration: {e}");
    }
    let out = plugin::run(&env, &stdin, plugin::ask_agent);
    if !out.stderr.is_empty() {
        eprintln!("{}", out.stderr);
    }
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(out.stdout.as_bytes());
    let _ = stdout.flush();
    std::process::ExitCode::from(u8::try_from(out.exit).unwrap_or(1))
}
