//! Node helpers every operator reads the same way.

use k8s_openapi::api::core::v1::Node;

/// Whether the node's Ready condition is True (pure): Unknown (the node-lifecycle controller's
/// mark for a stale Lease), False or missing are not.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ready_is_read_from_the_ready_condition_alone() {
        let node = |conds: &[(&str, &str)]| -> Node {
            serde_json::from_value(json!({"metadata": {"name": "n"}, "status": {"conditions":
                conds.iter().map(|(t, s)| json!({"type": t, "status": s})).collect::<Vec<_>>()}}))
            .unwrap()
        };
        #[rustfmt::skip]
        let cases = [
            ("Ready", node(&[("Ready", "True")]), true),
            ("Unknown, as the node-lifecycle controller leaves it", node(&[("Ready", "Unknown")]), false),
            ("False", node(&[("Ready", "False")]), false),
            ("another condition True", node(&[("MemoryPressure", "True"), ("Ready", "Unknown")]), false),
            ("no conditions", node(&[]), false),
            ("no status", serde_json::from_value(json!({"metadata": {"name": "n"}})).unwrap(), false),
        ];
        for (case, node, ready) in cases {
            assert_eq!(is_ready(&node), ready, "{case}");
        }
    }
}
