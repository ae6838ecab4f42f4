//! The rollout operator: reconciles `RolloutJob`s — batched image rollouts across many edge
//! workloads, pulling the new image on each node before its pod is swapped.
//!
//! | step | module |
//! |---|---|
//! | what wakes a job: cache events → jobs, at most once a second | [`wake`], [`index`] (pods by workload, job, node), [`cached`] (what a cached pod or node keeps) |
//! | read the cluster into targets | [`snapshot`] |
//! | decide (pure) | [`plan`], [`prepull`] (pod shape, pull outcome), [`workload`] (patches) |
//! | act | [`act`] |
//! | status, events, gauges | [`status`], [`behind`] (targets left behind, held), [`report`] |
//! | one reconcile, step by step | [`reconcile`] |
//! | wire it up, release on the way out | [`controller`], [`metrics`] |

pub mod act;
pub mod behind;
pub mod cached;
pub mod controller;
pub mod error;
pub mod index;
pub mod metrics;
pub mod plan;
pub mod prepull;
pub mod reconcile;
pub mod report;
pub mod snapshot;
pub mod stall;
pub mod status;
pub mod wake;
pub mod workload;

/// The prefix of every metric this binary exports.
pub const METRICS_PREFIX: &str = "edgefleet_rollout";

/// Every metric `edgefleet-rollout` exports (what its `main` registers), named without serving
/// them: the dashboards and alert rules are checked against this list.
pub fn metric_names() -> Vec<String> {
    let registry = prometheus::Registry::new();
    let mut names = Vec::new();
    if let Ok(m) = edgefleet_kit::ReconcileMetrics::register(&registry, METRICS_PREFIX) {
        names.extend(m.names());
    }
    if let Ok(m) = metrics::RolloutMetrics::register(&registry) {
        names.extend(m.names());
    }
    if let Ok(layer) = edgefleet_kit::CountRequestsLayer::register(&registry, METRICS_PREFIX) {
        names.extend(edgefleet_kit::names_of(&[layer.counter()]));
    }
    names.sort();
    names
}
