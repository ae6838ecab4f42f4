//! Pods as the operators (and the test bed) read them.

/// The node a DaemonSet pod is for: where it is bound, or — not scheduled yet, e.g. its node
/// is NotReady — the node the DaemonSet controller pinned it to by affinity.
pub fn intended_node(spec: &k8s_openapi::api::core::v1::PodSpec) -> Option<String> {
    intended_node_of(spec.node_name.as_ref(), spec.affinity.as_ref())
}

/// [`intended_node`] from the two fields it reads, for callers that keep only those.
pub fn intended_node_of(
    node_name: Option<&String>,
    affinity: Option<&k8s_openapi::api::core::v1::Affinity>,
) -> Option<String> {
    if let Some(node) = node_name {
        return Some(node.clone());
    }
    let terms = &affinity?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}
