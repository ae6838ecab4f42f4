//! The objectsync operator: the single writer of ObjectSyncs. One sync per (edge node, object
//! it needs) — pods bound to the node, the ConfigMaps and Secrets they reference, Devices bound
//! to it and their DeviceModels — named `<node>.<uid>`, labelled by node, held by a finalizer
//! until the edge acknowledged the object's delete. Trailing deliveries are handed back to the
//! hub (resync annotation); a deleted node's syncs are removed through the node index.
//!
//! | step | module |
//! |---|---|
//! | what a pod references (pure) | [`refs`] |
//! | the cluster, reduced and indexed by node | [`watch`] → [`index`] |
//! | which node to look at | [`queue`] |
//! | decide (pure) | [`plan`] |
//! | act | [`act`] |
//! | wire it up, census | [`controller`], [`metrics`] |

pub mod act;
pub mod controller;
pub mod error;
pub mod index;
pub mod metrics;
pub mod plan;
pub mod queue;
pub mod refs;
pub mod watch;

/// The prefix of every metric this binary exports.
pub const METRICS_PREFIX: &str = "edgefleet_objectsync";

/// Every metric `edgefleet-objectsync` exports (what its `main` registers), named without serving
/// them: the dashboards and alert rules are checked against this list.
pub fn metric_names() -> Vec<String> {
    let registry = prometheus::Registry::new();
    let mut names = Vec::new();
    if let Ok(m) = edgefleet_kit::ReconcileMetrics::register(&registry, METRICS_PREFIX) {
        names.extend(m.names());
    }
    if let Ok(m) = metrics::SyncMetrics::register(&registry) {
        names.extend(m.names());
    }
    if let Ok(layer) = edgefleet_kit::CountRequestsLayer::register(&registry, METRICS_PREFIX) {
        names.extend(edgefleet_kit::names_of(&[layer.counter()]));
    }
    names.sort();
    names
}
