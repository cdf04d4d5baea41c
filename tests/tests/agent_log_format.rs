//! The agent's log lines as log pipelines read them: `--log-format json` writes one JSON
//! object per line, and text written anywhere but a terminal carries no colour codes
//! (`kubectl logs` would show them). Runs the debug agent (`cargo build` first) on an
//! uninstall that fails at once (its CNI conf dir is not a directory): no root, no BPF,
//! nothing touched.

use std::process::Command;

fn failing_cleanup(format: Option<&str>) -> String {
    let agent = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/netpol-agent");
    let pins = std::env::temp_dir().join(format!("np-logfmt-{}", std::process::id()));
    let mut cmd = Command::new(agent);
    if let Some(f) = format {
        cmd.args(["--log-format", f]);
    }
    let out = cmd
        .arg("cleanup")
        .arg("--pin-dir")
        .arg(&pins)
        .args(["--cni-conf-dir", "/dev/null"])
        .output()
        .unwrap_or_else(|e| panic!("running {agent} (build it: cargo build): {e}"));
    assert!(!out.status.success(), "the cleanup must fail");
    String::from_utf8(out.stderr).expect("utf-8 log")
}

#[test]
fn json_log_lines_are_json_objects() {
    let log = failing_cleanup(Some("json"));
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty(), "the failure is logged");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["level"], "ERROR", "{line}");
        let message = v["fields"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("/dev/null"),
            "the message says what failed: {line}"
        );
    }
}

#[test]
fn text_logs_to_a_pipe_have_no_colour_codes() {
    for format in [None, Some("text")] {
        let log = failing_cleanup(format);
        assert!(log.contains("ERROR"), "the failure is logged: {log}");
        assert!(
            !log.contains('\u{1b}'),
            "escape codes in a piped log: {log:?}"
        );
    }
}
