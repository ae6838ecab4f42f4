//! What users watch about rollouts, beside the kit's reconcile metrics.

use prometheus::{Histogram, HistogramOpts, IntGaugeVec, Opts, Registry};

/// Seconds buckets from sub-second swaps to half-hour pulls over slow links.
const SECONDS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Finer where the promise is (interruption ≤ 10 s): a p99 read off the histogram is only as
/// precise as the buckets around 10 s.
const INTERRUPTION_SECONDS: &[f64] = &[
    0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Clone, Debug)]
pub struct RolloutMetrics {
    /// `edgefleet_rollout_targets{namespace, job, state}`.
    pub targets: IntGaugeVec,
    /// Batch start → all members done.
    pub batch_duration: Histogram,
    /// Pre-pull pod created → image reported on the node.
    pub prepull_duration: Histogram,
    /// Old pod deleted → new pod Ready on the same node: what the edge app feels.
    pub interruption: Histogram,
}

impl RolloutMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            targets: IntGaugeVec::new(
                Opts::new(
                    "edgefleet_rollout_targets",
                    "Targets of active RolloutJobs by state.",
                ),
                &["namespace", "job", "state"],
            )?,
            batch_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "edgefleet_rollout_batch_duration_seconds",
                    "Time from a batch's start to its last member done.",
                )
                .buckets(SECONDS.to_vec()),
            )?,
            prepull_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "edgefleet_rollout_prepull_duration_seconds",
                    "Time from a pre-pull pod's creation to the image being on the node.",
                )
                .buckets(SECONDS.to_vec()),
            )?,
            interruption: Histogram::with_opts(
                HistogramOpts::new(
                    "edgefleet_rollout_interruption_seconds",
                    "Per target: old pod deleted to new pod Ready on the same node.",
                )
                .buckets(INTERRUPTION_SECONDS.to_vec()),
            )?,
        };
        registry.register(Box::new(m.targets.clone()))?;
        registry.register(Box::new(m.batch_duration.clone()))?;
        registry.register(Box::new(m.prepull_duration.clone()))?;
        registry.register(Box::new(m.interruption.clone()))?;
        Ok(m)
    }
}
