//! Which case fields, check kinds and model options this runner implements. A case that
//! uses anything else is refused with the reason (FORMAT.md: "A runner must refuse a case
//! that uses a field, check kind or model option it does not implement").

use serde_json::{Map, Value};

/// Fields of a step (also allowed at the top level of a case without `steps`).
const STEP: &[&str] = &[
    "policies",
    "cluster_network_policies",
    "namespace_labels",
    "pod_labels",
    "probes",
    "expected",
    "checks",
];
const CASE: &[&str] = &["id", "name", "model", "ignore_loopback", "steps"];
/// Informational: documented as ignorable, or provenance notes of the transcribed suites.
const CASE_INFO: &[&str] = &[
    "description",
    "source",
    "source_commit",
    "origin",
    "channel",
    "features",
    "manifests",
    "uses_ip_placeholders",
    "full_name",
    "notes",
    "expected_origin",
    "upstream_model",
    "expectation_calls",
    "actions",
];
const STEP_INFO: &[&str] = &[
    "step",
    "name",
    "upstream_subtest",
    "actions",
    "expectation_calls",
    "notes",
];
const MODEL: &[&str] = &[
    "namespaces",
    "pods",
    "services",
    "external",
    "nodes",
    "external_path_mtu",
    "node_labels",
];
const POD: &[&str] = &["ns", "name", "labels", "ports", "node", "hostNetwork"];
const PORT: &[&str] = &["name", "port", "protocol"];
const SERVICE: &[&str] = &["ns", "name", "selector", "ports"];
const SERVICE_PORT: &[&str] = &["name", "port", "targetPort", "protocol"];
const EXTERNAL: &[&str] = &["name", "ip", "ports"];
const PROBES: &[&str] = &["port", "protocol"];

type Check = Result<(), String>;

/// `Ok` if this runner can run the case as written, else why not.
pub fn check_case(case: &Value) -> Check {
    let obj = object(case, "case")?;
    fields(obj, "case", &[CASE, CASE_INFO, STEP])?;
    check_step(obj, "case")?;
    if let Some(model) = obj.get("model") {
        check_model(model)?;
    }
    for (i, step) in array(obj.get("steps"), "steps")?.iter().enumerate() {
        let where_ = format!("step {}", i + 1);
        let s = object(step, &where_)?;
        fields(s, &where_, &[STEP, STEP_INFO])?;
        check_step(s, &where_)?;
    }
    Ok(())
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what} is not a JSON object"))
}

fn array<'a>(v: Option<&'a Value>, what: &str) -> Result<&'a [Value], String> {
    match v {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!("{what} is not a list")),
    }
}

/// Is the field present with a value that means something (not null, false or empty)?
fn used(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

fn fields(obj: &Map<String, Value>, what: &str, allowed: &[&[&str]]) -> Check {
    for k in obj.keys() {
        if allowed.iter().any(|set| set.contains(&k.as_str())) {
            continue;
        }
        return Err(format!(
            "{what} uses `{k}`, which this runner does not implement"
        ));
    }
    Ok(())
}

fn each(v: Option<&Value>, what: &str, allowed: &[&str]) -> Check {
    for (i, item) in array(v, what)?.iter().enumerate() {
        fields(
            object(item, what)?,
            &format!("{what} #{}", i + 1),
            &[allowed],
        )?;
    }
    Ok(())
}

fn check_model(model: &Value) -> Check {
    let m = object(model, "model")?;
    fields(m, "model", &[MODEL])?;
    let nodes = match m.get("nodes") {
        None => crate::cases::DEFAULT_NODES as u64,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| format!("model: `nodes` must be 1 to 200, not {v}"))?,
    };
    for (i, pod) in array(m.get("pods"), "pods")?.iter().enumerate() {
        let what = format!("pod #{}", i + 1);
        let p = object(pod, &what)?;
        fields(p, &what, &[POD])?;
        each(p.get("ports"), &format!("{what} ports"), PORT)?;
        if let Some(node) = p.get("node") {
            check_node(node, nodes, &what)?;
        }
        if p.get("hostNetwork").is_some_and(used) && p.get("node").is_none() {
            return Err(format!("{what}: a hostNetwork pod needs `node`"));
        }
    }
    if let Some(labels) = m.get("node_labels") {
        let labels = object(labels, "model node_labels")?;
        for node in labels.keys() {
            check_node(&Value::from(node.as_str()), nodes, "model node_labels")?;
        }
    }
    for (i, svc) in array(m.get("services"), "services")?.iter().enumerate() {
        let what = format!("service #{}", i + 1);
        let s = object(svc, &what)?;
        fields(s, &what, &[SERVICE])?;
        each(s.get("ports"), &format!("{what} ports"), SERVICE_PORT)?;
    }
    each(m.get("external"), "external", EXTERNAL)?;
    if let Some(mtu) = m.get("external_path_mtu") {
        mtu.as_u64()
            .filter(|n| (576..=1500).contains(n))
            .ok_or_else(|| format!("model: `external_path_mtu` must be 576 to 1500, not {mtu}"))?;
    }
    Ok(())
}

fn check_node(node: &Value, nodes: u64, what: &str) -> Check {
    let k = node
        .as_str()
        .and_then(|s| s.strip_prefix("node-"))
        .and_then(|k| k.parse::<u64>().ok());
    match k {
        Some(k) if (1..=nodes).contains(&k) => Ok(()),
        _ => Err(format!(
            "{what}: node {node} is not one of node-1 .. node-{nodes}"
        )),
    }
}

fn check_step(step: &Map<String, Value>, what: &str) -> Check {
    if let Some(p) = step.get("probes") {
        fields(object(p, "probes")?, &format!("{what} probes"), &[PROBES])?;
    }
    for (i, c) in array(step.get("checks"), "checks")?.iter().enumerate() {
        check_check(c, &format!("{what} check #{}", i + 1))?;
    }
    Ok(())
}

/// The fields each kind of check may carry.
fn kind_fields(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "connect" => &[
            "kind",
            "from",
            "to",
            "port",
            "protocol",
            "expect",
            "attempts",
            "answered_by",
            "bytes",
        ],
        "stray" => &[
            "kind", "from", "to", "port", "protocol", "flags", "sport", "expect",
        ],
        "open" => &["kind", "name", "from", "to", "port", "protocol", "expect"],
        "use" => &["kind", "name", "expect"],
        "close" => &["kind", "name"],
        _ => return None,
    })
}

fn check_check(check: &Value, what: &str) -> Check {
    let c = object(check, what)?;
    let kind = c.get("kind").and_then(Value::as_str).unwrap_or("connect");
    let allowed = kind_fields(kind)
        .ok_or_else(|| format!("{what}: check kind {kind:?} is not implemented by this runner"))?;
    fields(c, &format!("{what} ({kind})"), &[allowed])?;
    let protocol = c.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
    let ok_protocol = match kind {
        "stray" => protocol == "TCP",
        "open" => matches!(protocol, "TCP" | "UDP"),
        _ => matches!(protocol, "TCP" | "UDP" | "SCTP"),
    };
    if !ok_protocol {
        return Err(format!(
            "{what}: protocol {protocol} in a {kind} check is not implemented by this runner"
        ));
    }
    if c.contains_key("bytes") && protocol == "SCTP" {
        return Err(format!("{what}: `bytes` over SCTP is not implemented"));
    }
    let to = c.get("to").and_then(Value::as_str).unwrap_or_default();
    if kind == "stray" && to.starts_with("svc:") {
        return Err(format!(
            "{what}: a stray segment to a Service ({to}) is not implemented (FORMAT: pod: or ext:)"
        ));
    }
    if matches!(kind, "open" | "use" | "close") && !c.contains_key("name") {
        return Err(format!("{what}: a {kind} check needs `name`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refuses_what_is_not_implemented() {
        let ok = json!({"id": "a", "steps": [{"step": 1, "policies": [], "checks": [
            {"kind": "stray", "from": "x/a", "to": "pod:x/b", "port": 80, "flags": "A", "expect": false},
            {"kind": "use", "name": "c1", "expect": true}]}]});
        assert!(check_case(&ok).is_ok());
        let cnp = json!({"id": "a", "model": {"namespaces": {}, "pods": [
            {"ns": "x", "name": "h", "node": "node-1", "hostNetwork": true}],
            "node_labels": {"node-2": {"zone": "b"}}},
            "steps": [{"cluster_network_policies": [{"a": 1}]}]});
        assert!(check_case(&cnp).is_ok(), "{:?}", check_case(&cnp));
        let host = json!({"id": "a", "model": {"namespaces": {}, "pods": [
            {"ns": "x", "name": "h", "hostNetwork": true}]}});
        assert!(check_case(&host).unwrap_err().contains("hostNetwork"));
        let labels = json!({"id": "a", "model": {"namespaces": {}, "pods": [],
            "node_labels": {"node-3": {}}}});
        assert!(check_case(&labels).is_err());
        let kind = json!({"id": "a", "checks": [{"kind": "teleport", "from": "x/a"}]});
        assert!(check_case(&kind).unwrap_err().contains("teleport"));
        let field = json!({"id": "a", "checks": [{"from": "x/a", "to": "pod:x/b", "port": 1, "expect": true, "ttl": 3}]});
        assert!(check_case(&field).unwrap_err().contains("ttl"));
        let option = json!({"id": "a", "model": {"namespaces": {}, "pods": [], "ipv6_only": true}});
        assert!(check_case(&option).unwrap_err().contains("ipv6_only"));
        let node = json!({"id": "a", "model": {"namespaces": {}, "nodes": 3, "pods": [
            {"ns": "x", "name": "p", "node": "node-4"}]}});
        assert!(check_case(&node).is_err());
    }
}
