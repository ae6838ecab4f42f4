//! What users watch about balancing, beside the kit's reconcile metrics. Labels: `balancer`
//! (`namespace/name`) and `hub` (pod name): a handful of hubs per balancer.

use prometheus::core::Collector;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone, Debug)]
pub struct BalancerMetrics {
    /// `edgefleet_balancer_rounds_total{balancer,decision}`: rounds by what they decided.
    pub rounds: IntCounterVec,
    /// Orders written.
    pub orders: IntCounterVec,
    /// Sessions ordered released.
    pub released: IntCounterVec,
    /// 1 when every counted hub is within tolerance, else 0.
    pub balanced: IntGaugeVec,
    /// Hubs whose report counts.
    pub hubs: IntGaugeVec,
    /// Connections and expected connections per hub (counted hubs only).
    pub connections: IntGaugeVec,
    pub expected: IntGaugeVec,
}

impl BalancerMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            rounds: IntCounterVec::new(
                Opts::new(
                    "edgefleet_balancer_rounds_total",
                    "Balancing rounds by decision.",
                ),
                &["balancer", "decision"],
            )?,
            orders: IntCounterVec::new(
                Opts::new("edgefleet_balancer_orders_total", "Release orders written."),
                &["balancer"],
            )?,
            released: IntCounterVec::new(
                Opts::new(
                    "edgefleet_balancer_released_sessions_total",
                    "Sessions hubs were ordered to release.",
                ),
                &["balancer"],
            )?,
            balanced: IntGaugeVec::new(
                Opts::new(
                    "edgefleet_balancer_balanced",
                    "1 when every hub with a counted report is within tolerance of its expected load.",
                ),
                &["balancer"],
            )?,
            hubs: IntGaugeVec::new(
                Opts::new("edgefleet_balancer_hubs", "Hubs whose load report counts."),
                &["balancer"],
            )?,
            connections: IntGaugeVec::new(
                Opts::new(
                    "edgefleet_balancer_hub_connections",
                    "Live sessions per hub, as reported.",
                ),
                &["balancer", "hub"],
            )?,
            expected: IntGaugeVec::new(
                Opts::new(
                    "edgefleet_balancer_hub_expected_connections",
                    "Sessions each hub should hold.",
                ),
                &["balancer", "hub"],
            )?,
        };
        for c in m.collectors() {
            registry.register(c)?;
        }
        Ok(m)
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.rounds.clone()),
            Box::new(self.orders.clone()),
            Box::new(self.released.clone()),
            Box::new(self.balanced.clone()),
            Box::new(self.hubs.clone()),
            Box::new(self.connections.clone()),
            Box::new(self.expected.clone()),
        ]
    }

    pub fn names(&self) -> Vec<String> {
        self.collectors()
            .iter()
            .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
            .collect()
    }
}
