//! The device operator: checks every KubeEdge Device against its DeviceModel, tracks where each
//! property's desired value stands and whether the device is online, re-delivers a model's
//! Devices when the model changes, and holds a model in use against deletion. It writes only
//! its own fields (see [`plan`] for the field ownership shared with the hub).
//!
//! | step | module |
//! |---|---|
//! | the cluster, reduced and indexed (model → devices, node → devices) | [`controller`] (watch) → [`index`] |
//! | is the Device consistent with its model? (pure) | [`validate`] |
//! | per-property sync state, `TwinSynced`, `Online` (pure) | [`sync`] |
//! | decide what to write (pure) | [`plan`] |
//! | act: status apply, annotation, finalizer, events | [`act`] |
//! | wire it up, census | [`controller`], [`metrics`] |

pub mod act;
pub mod controller;
pub mod error;
pub mod index;
pub mod metrics;
pub mod plan;
pub mod sync;
pub mod validate;

/// The prefix of every metric this binary exports.
pub const METRICS_PREFIX: &str = "edgefleet_device";

/// Every metric `edgefleet-device` exports (what its `main` registers), named without serving
/// them: the dashboards and alert rules are checked against this list.
pub fn metric_names() -> Vec<String> {
    let registry = prometheus::Registry::new();
    let mut names = Vec::new();
    if let Ok(m) = edgefleet_kit::ReconcileMetrics::register(&registry, METRICS_PREFIX) {
        names.extend(m.names());
    }
    if let Ok(m) = metrics::DeviceMetrics::register(&registry) {
        names.extend(m.names());
    }
    if let Ok(layer) = edgefleet_kit::CountRequestsLayer::register(&registry, METRICS_PREFIX) {
        names.extend(edgefleet_kit::names_of(&[layer.counter()]));
    }
    names.sort();
    names
}
