//! `HubBalancer` (edgefleet.io/v1alpha1): keeps edge connections spread over the hub replicas.
//!
//! Every hub replica rewrites a load-report ConfigMap (labelled [`LOAD_REPORT_LABEL`]) every few
//! seconds. The balancer computes the expected connections per replica from all fresh reports and
//! orders a replica over `expected × (1 + tolerance)` to release the excess, then observes for
//! `observationPeriodSeconds` before it looks again.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Label on each hub replica's load-report ConfigMap (value `hub`).
pub const LOAD_REPORT_LABEL: &str = "edgefleet.io/load-report";

/// Keys of a load-report ConfigMap's `data`.
pub mod report_keys {
    /// Name of the hub pod that wrote the report.
    pub const REPLICA: &str = "replica";
    /// Live edge sessions.
    pub const CONNECTIONS: &str = "connections";
    /// Sessions the replica accepts before refusing with a retry-after hint.
    pub const CAPACITY: &str = "capacity";
    /// Messages queued for delivery across all sessions.
    pub const QUEUED: &str = "queued";
    /// RFC 3339 time the report was written.
    pub const TIMESTAMP: &str = "timestamp";
    /// UID of the hub pod that wrote the report; a report whose pod is gone or has another UID
    /// is ignored.
    pub const POD_UID: &str = "podUID";
    /// The balancer's order, a JSON [`ReleaseOrder`](super::ReleaseOrder) (written by the
    /// balancer, kept by the hub when it rewrites the report).
    pub const RELEASE_ORDER: &str = "releaseOrder";
    /// Id of the order the hub started carrying out (written by the hub before its first close).
    pub const RELEASE_STARTED: &str = "releaseStarted";
    /// Id of the order the hub finished (or abandoned after a restart): no longer in flight.
    pub const RELEASE_DONE: &str = "releaseDone";
}

/// An order to one hub replica, stored as JSON under `releaseOrder` in its load report (the
/// contract is in docs/channel.md, "Release orders").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseOrder {
    /// Unique per order; the hub records it under `releaseStarted` / `releaseDone`.
    pub id: String,
    /// The pod the order is for: another pod (a replacement with the same name) ignores it.
    #[serde(rename = "podUID")]
    pub pod_uid: String,
    /// Sessions to close.
    pub release: i64,
    /// Sessions to keep at least (the expected count): the hub never goes below it.
    pub keep: i64,
    /// RFC 3339 time the order was written; the observation period runs from it.
    pub issued_at: String,
    /// RFC 3339 time (`issuedAt` + the observation period) after which the hub no longer acts
    /// on the order, and the balancer no longer waits for it.
    pub expires_at: String,
}

/// A HubBalancer balances the edge sessions of the hub replicas its selector picks.
// kube's `printcolumn(...)` repeats `type_ =` by design; clippy reads that as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "edgefleet.io",
    version = "v1alpha1",
    kind = "HubBalancer",
    plural = "hubbalancers",
    shortname = "hb",
    category = "edgefleet",
    namespaced,
    status = "HubBalancerStatus",
    printcolumn(name = "Hubs", type_ = "integer", json_path = ".status.hubCount"),
    printcolumn(
        name = "Connections",
        type_ = "integer",
        json_path = ".status.totalConnections"
    ),
    printcolumn(
        name = "Balanced",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Balanced\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.reportStaleAfterSeconds <= self.observationPeriodSeconds * 10").message("spec.reportStaleAfterSeconds must be at most 10 observation periods"))]
pub struct HubBalancerSpec {
    /// Selects the hub pods (in the HubBalancer's namespace) whose load is balanced.
    #[x_kube(validation = Rule::new("has(self.matchLabels) || has(self.matchExpressions)").message("spec.hubSelector must have matchLabels or matchExpressions"))]
    pub hub_selector: LabelSelector,

    /// A hub may exceed the expected connection count by this percentage before it is asked
    /// to release connections.
    #[serde(default = "default_tolerance_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub tolerance_percent: i32,

    /// After ordering releases, wait this long for agents to reconnect before looking again.
    #[serde(default = "default_observation_period")]
    #[schemars(range(min = 1, max = 3600))]
    pub observation_period_seconds: i64,

    /// Most connections one hub is asked to release in one round. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_release_per_round: Option<i64>,

    /// A load report older than this is ignored (its hub is treated as gone).
    #[serde(default = "default_report_stale_after")]
    #[schemars(range(min = 1, max = 3600))]
    pub report_stale_after_seconds: i64,
}

/// One hub replica as the balancer last saw it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HubLoad {
    /// Hub pod name.
    pub name: String,
    pub connections: i64,
    pub capacity: i64,
    /// Connections this hub should hold when balanced.
    pub expected: i64,
    /// Connections this hub was last ordered to release (0: none).
    #[serde(default)]
    pub release_order: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_time: Option<Time>,
}

/// Observed state of a HubBalancer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HubBalancerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Hubs with a fresh load report.
    #[serde(default)]
    pub hub_count: i32,
    #[serde(default)]
    pub total_connections: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub hubs: Vec<HubLoad>,
    /// When releases were last ordered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_release_time: Option<Time>,
    /// Balanced (Kubernetes condition shape).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn default_tolerance_percent() -> i32 {
    10
}
/// 60 s. A released agent is back, and counted, within the hub's release window (10 s), plus
/// the agent's back-off after close 4000 (hint 10 s ± 50 %, then hint plus up to the hint
/// again: at most 30 s), plus one report interval (5 s): 45 s. An upstream edgecore, which
/// comes back after exactly 30 s, needs 10 + 30 + 5 = 45 s too. 60 s leaves 15 s for a loaded
/// API server; a shorter period would look before the released sessions are back and release
/// twice (EMQX waits 60 s too).
fn default_observation_period() -> i64 {
    60
}
fn default_report_stale_after() -> i64 {
    30
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_has_rules_and_defaults() {
        let crd = serde_json::to_string(&HubBalancer::crd()).unwrap();
        assert!(crd.contains("spec.hubSelector must have matchLabels"));
        assert!(crd.contains("\"default\":60"));
    }
}
