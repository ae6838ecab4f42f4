//! Reconcile metrics every operator exports, under one per-operator prefix.

use prometheus::{
    Histogram, HistogramOpts, HistogramTimer, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::Result;

/// The names of `collectors`' metrics (histograms by their base name, without `_bucket`,
/// `_sum`, `_count`). Unlike `Registry::gather`, this names label vectors that have no child
/// yet, so an operator can list every metric it may export (the dashboards and alerts are
/// checked against these lists).
pub fn names_of(collectors: &[&dyn prometheus::core::Collector]) -> Vec<String> {
    collectors
        .iter()
        .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
        .collect()
}

/// A short, static, low-cardinality label for an error: the value of `error` in
/// `<prefix>_reconcile_errors_total{error="..."}`. Each operator's error enum implements it.
pub trait MetricLabel {
    /// E.g. `"kube_api"`, `"invalid_spec"`. Never message text: labels must stay few.
    fn metric_label(&self) -> &'static str;
}

/// Reconcile buckets (seconds): most reconciles are a few API calls (5 ms – 1 s); a slow API
/// server or a large plan takes seconds; anything past a minute is a problem to see.
pub const RECONCILE_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// `<prefix>_reconcile_total`, `<prefix>_reconcile_errors_total{error}`,
/// `<prefix>_reconcile_duration_seconds` and `<prefix>_leader`.
///
/// Cheap to clone (the metrics are shared handles); put one in each controller's context.
#[derive(Clone, Debug)]
pub struct ReconcileMetrics {
    /// Reconciles started.
    pub reconciles: IntCounter,
    /// Failed reconciles, by error label.
    pub failures: IntCounterVec,
    /// Reconcile duration, failed ones included.
    pub duration: Histogram,
    /// 1 while this replica leads (or runs without leader election), else 0.
    pub leader: IntGauge,
}

impl ReconcileMetrics {
    /// Creates the metrics and registers them in `registry`.
    ///
    /// `prefix` is the operator's, e.g. `edgefleet_rollout` (a trailing `_` is accepted).
    ///
    /// # Errors
    /// [`crate::Error::Metrics`] for a prefix that makes an invalid metric name, or when the
    /// metrics are already registered in `registry` under that prefix.
    pub fn register(registry: &Registry, prefix: &str) -> Result<Self> {
        let prefix = prefix.trim_end_matches('_');
        let name = |suffix: &str| format!("{prefix}_{suffix}");
        let metrics = Self {
            reconciles: IntCounter::new(name("reconcile_total"), "Reconciles started.")?,
            failures: IntCounterVec::new(
                Opts::new(
                    name("reconcile_errors_total"),
                    "Failed reconciles, by error.",
                ),
                &["error"],
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new(
                    name("reconcile_duration_seconds"),
                    "Time spent in one reconcile.",
                )
                .buckets(RECONCILE_BUCKETS.to_vec()),
            )?,
            leader: IntGauge::new(
                name("leader"),
                "1 while this replica is the leader (or leader election is off).",
            )?,
        };
        registry.register(Box::new(metrics.reconciles.clone()))?;
        registry.register(Box::new(metrics.failures.clone()))?;
        registry.register(Box::new(metrics.duration.clone()))?;
        registry.register(Box::new(metrics.leader.clone()))?;
        Ok(metrics)
    }

    /// The names of these metrics (see [`names_of`]).
    pub fn names(&self) -> Vec<String> {
        names_of(&[
            &self.reconciles,
            &self.failures,
            &self.duration,
            &self.leader,
        ])
    }

    /// Counts a reconcile and times it until the returned guard is dropped.
    ///
    /// ```ignore
    /// async fn reconcile(obj: Arc<RolloutJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    ///     let _timer = ctx.metrics.reconcile_started();
    ///     // ...
    /// }
    /// ```
    #[must_use = "the reconcile is timed until the guard is dropped"]
    pub fn reconcile_started(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer(self.duration.start_timer())
    }

    /// Counts a failed reconcile under the error's label (call it from the `error_policy`).
    pub fn reconcile_failed(&self, error: &impl MetricLabel) {
        self.failures
            .with_label_values(&[error.metric_label()])
            .inc();
    }
}

/// Observes one reconcile's duration when dropped, so early returns and `?` are timed too.
#[derive(Debug)]
pub struct ReconcileTimer(HistogramTimer);

impl ReconcileTimer {
    /// Ends the measurement now and returns the seconds observed.
    pub fn finish(self) -> f64 {
        self.0.stop_and_record()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Boom;
    impl MetricLabel for Boom {
        fn metric_label(&self) -> &'static str {
            "boom"
        }
    }

    fn names(registry: &Registry) -> Vec<String> {
        registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect()
    }

    #[test]
    fn names_follow_the_prefix_with_or_without_underscore() {
        for prefix in ["edgefleet_rollout", "edgefleet_rollout_"] {
            let registry = Registry::new();
            let m = ReconcileMetrics::register(&registry, prefix).unwrap();
            m.reconcile_failed(&Boom); // a vec family is only gathered once it has a child
            assert_eq!(
                names(&registry),
                [
                    "edgefleet_rollout_leader",
                    "edgefleet_rollout_reconcile_duration_seconds",
                    "edgefleet_rollout_reconcile_errors_total",
                    "edgefleet_rollout_reconcile_total",
                ]
            );
        }
    }

    #[test]
    fn names_include_vectors_without_children() {
        let m = ReconcileMetrics::register(&Registry::new(), "edgefleet_x").unwrap();
        let mut names = m.names();
        names.sort();
        assert_eq!(
            names,
            [
                "edgefleet_x_leader",
                "edgefleet_x_reconcile_duration_seconds",
                "edgefleet_x_reconcile_errors_total",
                "edgefleet_x_reconcile_total",
            ]
        );
    }

    #[test]
    fn registering_twice_or_with_a_bad_prefix_fails() {
        let registry = Registry::new();
        ReconcileMetrics::register(&registry, "edgefleet_device").unwrap();
        let err = ReconcileMetrics::register(&registry, "edgefleet_device").unwrap_err();
        assert_eq!(err.metric_label(), "metrics");
        // Two operators' prefixes live side by side in one registry.
        ReconcileMetrics::register(&registry, "edgefleet_balancer").unwrap();
        assert!(ReconcileMetrics::register(&Registry::new(), "edge-fleet").is_err());
    }

    #[test]
    fn timer_counts_and_observes() {
        let registry = Registry::new();
        let m = ReconcileMetrics::register(&registry, "t").unwrap();
        {
            let _timer = m.reconcile_started();
        }
        let secs = m.reconcile_started().finish();
        assert!(secs >= 0.0);
        m.reconcile_failed(&Boom);
        m.reconcile_failed(&Boom);
        m.reconcile_failed(&crate::Error::LeaseTiming {
            duration: 1,
            grace: 1,
        });
        assert_eq!(m.reconciles.get(), 2);
        assert_eq!(m.duration.get_sample_count(), 2);
        assert_eq!(m.failures.with_label_values(&["boom"]).get(), 2);
        assert_eq!(m.failures.with_label_values(&["lease_timing"]).get(), 1);
    }
}
