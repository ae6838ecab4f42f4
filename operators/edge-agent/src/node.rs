//! What the agent says about its own node: the `insert /node/<name>` registration and the
//! `update /nodestatus/<name>` heartbeat. Kept small: status reports cross 3 Mbit/s links.

use serde_json::{Value, json};

/// The Node object registered at the start of every session (the hub adds the edge role label
/// too; it is sent so the intent is plain).
pub fn registration(node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node,
            "labels": {
                "node-role.kubernetes.io/edge": "",
                "kubernetes.io/hostname": node,
                "kubernetes.io/os": std::env::consts::OS,
                "kubernetes.io/arch": arch(),
            }
        },
        "status": status(true)
    })
}

/// A Node status subset. The first report of a session carries nodeInfo and capacity; the
/// periodic ones only the Ready condition (the hub keeps the rest).
pub fn status(full: bool) -> Value {
    let ready = json!({
        "type": "Ready",
        "status": "True",
        "reason": "EdgeAgentReady",
        "message": "edge-agent is connected",
    });
    if !full {
        return json!({ "conditions": [ready] });
    }
    let mut capacity = serde_json::Map::new();
    if let Ok(cpus) = std::thread::available_parallelism() {
        capacity.insert("cpu".into(), Value::from(cpus.get().to_string()));
    }
    if let Some(kib) = mem_total_kib() {
        capacity.insert("memory".into(), Value::from(format!("{kib}Ki")));
    }
    capacity.insert("pods".into(), Value::from("110"));
    json!({
        "conditions": [ready],
        "capacity": capacity,
        "allocatable": capacity,
        "nodeInfo": {
            "architecture": arch(),
            "operatingSystem": std::env::consts::OS,
            "kubeletVersion": concat!("edgefleet-edge-agent/", env!("CARGO_PKG_VERSION")),
        }
    })
}

/// Kubernetes' spelling of the CPU architecture.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

fn mem_total_kib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_is_a_ready_edge_node() {
        let node = registration("edge-3");
        assert_eq!(node["metadata"]["name"], "edge-3");
        assert!(
            node["metadata"]["labels"]
                .get("node-role.kubernetes.io/edge")
                .is_some()
        );
        assert_eq!(node["status"]["conditions"][0]["type"], "Ready");
        assert!(node["status"]["nodeInfo"]["kubeletVersion"].is_string());
    }

    #[test]
    fn the_heartbeat_is_small() {
        let small = serde_json::to_string(&status(false)).unwrap();
        assert!(small.len() < 160, "{} bytes", small.len());
    }
}
