//! The chained plugin's logic, apart from its process (see `src/bin/netpol-cni.rs`) so it
//! is tested without a runtime. CNI 1.x: ADD, DEL, CHECK, VERSION; the configuration
//! carries the pod network plugin's result (`prevResult`), which is passed on unchanged.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::protocol::{DEFAULT_SOCKET, Op, Reply, Request};

/// How long ADD waits for the agent unless the configuration says (`timeoutMs`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
const SUPPORTED: [&str; 6] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "1.2.0"];

/// The CNI_* variables the runtime sets.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    /// `CNI_ARGS`: `K=V;K=V`, where Kubernetes runtimes put the pod's name.
    pub args: String,
}

/// What the process prints and exits with.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    /// For the runtime's log.
    pub stderr: String,
    pub exit: i32,
}

/// Runs one invocation; `ask` talks to the agent (the socket in production).
pub fn run(
    env: &Env,
    stdin: &str,
    ask: impl FnOnce(&Path, Duration, &Request) -> Result<Reply, String>,
) -> Outcome {
    if env.command == "VERSION" {
        return ok(
            json!({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED}).to_string(),
            String::new(),
        );
    }
    let config: Value = match serde_json::from_str(stdin) {
        Ok(v) => v,
        Err(e) => {
            return error(
                7,
                &format!("netpol-cni: the network configuration is not JSON: {e}"),
            );
        }
    };
    let version = config["cniVersion"].as_str().unwrap_or("1.0.0").to_string();
    let op = match env.command.as_str() {
        "ADD" => Op::Add,
        "DEL" => Op::Del,
        "CHECK" => Op::Check,
        other => return error(4, &format!("netpol-cni: unknown CNI_COMMAND {other:?}")),
    };
    let socket = config["socket"]
        .as_str()
        .unwrap_or(DEFAULT_SOCKET)
        .to_string();
    let timeout = config["timeoutMs"]
        .as_u64()
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_TIMEOUT);
    // What the chain hands on: the pod network's result, as it came.
    let mut result = config.get("prevResult").cloned().unwrap_or(Value::Null);
    if let Some(r) = result.as_object_mut() {
        r.insert("cniVersion".into(), json!(version));
    }
    let passed_on = || match op {
        Op::Add if result.is_object() => result.to_string(),
        Op::Add => json!({"cniVersion": version}).to_string(),
        _ => String::new(),
    };
    let (Some(namespace), Some(name)) = (
        arg(&env.args, "K8S_POD_NAMESPACE"),
        arg(&env.args, "K8S_POD_NAME"),
    ) else {
        return ok(passed_on(), "netpol-cni: no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS: not a Kubernetes pod, nothing to enforce".into());
    };
    let request = Request {
        op,
        namespace: namespace.to_string(),
        name: name.to_string(),
        container_id: env.container_id.clone(),
        ips: ips_of(&result),
        host_interfaces: host_interfaces_of(&result),
    };
    if op == Op::Add && result.is_null() {
        return ok(
            passed_on(),
            format!(
                "netpol-cni: no prevResult (netpol-cni must follow the pod network's plugin in the conf list): {namespace}/{name} starts unenforced until the agent finds it"
            ),
        );
    }
    // DEL and CHECK never hold the runtime up for long.
    let wait = if op == Op::Add {
        timeout
    } else {
        timeout.min(Duration::from_secs(1))
    };
    match (op, ask(Path::new(&socket), wait, &request)) {
        (Op::Check, Ok(r)) if !r.enforced => error(
            11,
            &format!(
                "netpol-cni: {namespace}/{name} is not enforced: {}",
                r.message
            ),
        ),
        (_, Ok(r)) => ok(
            passed_on(),
            format!("netpol-cni: {namespace}/{name}: {}", r.message),
        ),
        (_, Err(e)) => ok(
            passed_on(),
            format!(
                "netpol-cni: the netpol agent was not reached at {socket} ({e}): {namespace}/{name} goes on, enforced once the agent finds it"
            ),
        ),
    }
}

fn ok(stdout: String, stderr: String) -> Outcome {
    Outcome {
        stdout,
        stderr,
        exit: 0,
    }
}

fn error(code: u32, msg: &str) -> Outcome {
    Outcome {
        stdout: json!({"cniVersion": "1.0.0", "code": code, "msg": msg}).to_string(),
        stderr: msg.to_string(),
        exit: 1,
    }
}

fn arg<'a>(args: &'a str, key: &str) -> Option<&'a str> {
    args.split(';')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

fn ips_of(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect()
}

/// Interfaces of the result that are not in the pod's namespace.
fn host_interfaces_of(result: &Value) -> Vec<String> {
    result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["sandbox"].as_str().is_none_or(str::is_empty))
        .filter_map(|i| i["name"].as_str().map(str::to_string))
        .collect()
}

/// Asks the agent on its socket: one line out, one line back, within `timeout`.
pub fn ask_agent(socket: &Path, timeout: Duration, request: &Request) -> Result<Reply, String> {
    let stream = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_string(request).map_err(|e| e.to_string())?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer within {timeout:?}: {e}"))?;
    serde_json::from_str(&answer).map_err(|e| format!("unreadable answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &str) -> Env {
        Env {
            command: command.into(),
            container_id: "c1".into(),
            args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-1;K8S_POD_UID=u".into(),
        }
    }

    const BRIDGE_RESULT: &str = r#"{"cniVersion": "1.0.0", "name": "k8s", "type": "netpol-cni",
        "prevResult": {"cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0", "mac": "aa:00:00:00:00:01"},
                           {"name": "veth1234", "mac": "aa:00:00:00:00:02"},
                           {"name": "eth0", "mac": "aa:00:00:00:00:03", "sandbox": "/var/run/netns/x"}],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2},
                    {"address": "fd00::5/64", "interface": 2}]}}"#;

    #[test]
    fn add_asks_the_agent_and_passes_the_result_on() {
        let mut asked = None;
        let out = run(&env("ADD"), BRIDGE_RESULT, |_, wait, r| {
            asked = Some((wait, r.clone()));
            Ok(Reply {
                enforced: true,
                message: "enforced on veth1234".into(),
            })
        });
        assert_eq!(out.exit, 0);
        let (wait, r) = asked.unwrap();
        assert_eq!(wait, DEFAULT_TIMEOUT);
        assert_eq!(
            (r.op, r.namespace.as_str(), r.name.as_str()),
            (Op::Add, "ns", "web-1")
        );
        assert_eq!(
            r.ips,
            vec![
                "10.244.1.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(r.host_interfaces, vec!["cni0", "veth1234"]);
        let passed: Value = serde_json::from_str(&out.stdout).unwrap();
        let prev: Value =
            serde_json::from_str::<Value>(BRIDGE_RESULT).unwrap()["prevResult"].clone();
        assert_eq!(passed, prev);
    }

    #[test]
    fn an_agent_that_is_down_never_fails_the_pod() {
        for command in ["ADD", "DEL", "CHECK"] {
            let out = run(&env(command), BRIDGE_RESULT, |_, _, _| {
                Err("connection refused".into())
            });
            assert_eq!(out.exit, 0, "{command}");
            assert!(
                out.stderr.contains("not reached"),
                "{command}: {}",
                out.stderr
            );
        }
        let out = run(&env("ADD"), BRIDGE_RESULT, |_, _, _| Err("x".into()));
        assert!(out.stdout.contains("10.244.1.5/24"));
    }

    #[test]
    fn check_fails_only_when_the_agent_says_the_pod_is_not_enforced() {
        let out = run(&env("CHECK"), BRIDGE_RESULT, |_, _, _| {
            Ok(Reply {
                enforced: false,
                message: "no veth".into(),
            })
        });
        assert_eq!(out.exit, 1);
        assert!(out.stdout.contains("\"code\":11"));
        let out = run(&env("DEL"), BRIDGE_RESULT, |_, wait, _| {
            assert!(wait <= Duration::from_secs(1));
            Ok(Reply {
                enforced: false,
                message: "forgotten".into(),
            })
        });
        assert_eq!((out.exit, out.stdout.as_str()), (0, ""));
    }

    #[test]
    fn not_a_pod_or_not_chained_passes_through() {
        let mut e = env("ADD");
        e.args = "IgnoreUnknown=1".into();
        let out = run(&e, BRIDGE_RESULT, |_, _, _| panic!("not asked"));
        assert_eq!(out.exit, 0);
        let out = run(&env("ADD"), r#"{"cniVersion": "1.0.0"}"#, |_, _, _| {
            panic!("not asked")
        });
        assert_eq!(
            (out.exit, out.stdout.as_str()),
            (0, r#"{"cniVersion":"1.0.0"}"#)
        );
        let out = run(&env("VERSION"), "", |_, _, _| panic!("not asked"));
        assert!(out.stdout.contains("supportedVersions"));
        let out = run(&env("ADD"), "not json", |_, _, _| panic!("not asked"));
        assert_eq!(out.exit, 1);
    }
}
