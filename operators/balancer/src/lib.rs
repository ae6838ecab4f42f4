//! The balancer operator: keeps the edge sessions of the hub replicas a `HubBalancer` selects
//! spread as their capacities say. Each hub rewrites a load-report ConfigMap; a hub over
//! `expected × (1 + tolerance)` gets a release order in that same ConfigMap, carries it out
//! (docs/channel.md, "Release orders") and the balancer observes for a period before it looks
//! again. Every piece of state a round depends on (orders, when they were issued, which were
//! carried out) lives in the ConfigMaps, so a balancer killed at any point never orders twice.
//!
//! | step | module |
//! |---|---|
//! | read the cluster: reports, hub pods, the hubs' Deployments | [`watch`] |
//! | decide (pure): which reports count, expected per hub, who releases how many | [`plan`] |
//! | act: write the orders, status, events | [`act`] |
//! | wire it up: one round per HubBalancer per tick, metrics | [`controller`], [`metrics`] |

pub mod act;
pub mod controller;
pub mod error;
pub mod metrics;
pub mod plan;
pub mod watch;

/// The prefix of every metric this binary exports.
pub const METRICS_PREFIX: &str = "edgefleet_balancer";

/// Every metric `edgefleet-balancer` exports (what its `main` registers), named without serving
/// them: the dashboards and alert rules are checked against this list.
pub fn metric_names() -> Vec<String> {
    let registry = prometheus::Registry::new();
    let mut names = Vec::new();
    if let Ok(m) = edgefleet_kit::ReconcileMetrics::register(&registry, METRICS_PREFIX) {
        names.extend(m.names());
    }
    if let Ok(m) = metrics::BalancerMetrics::register(&registry) {
        names.extend(m.names());
    }
    if let Ok(layer) = edgefleet_kit::CountRequestsLayer::register(&registry, METRICS_PREFIX) {
        names.extend(edgefleet_kit::names_of(&[layer.counter()]));
    }
    names.sort();
    names
}
