//! What users watch about rollouts, beside the kit's reconcile metrics.

use jiff::SignedDuration;
use prometheus::core::Collector;
use prometheus::{GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Seconds buckets from sub-second swaps to half-hour pulls over slow links.
const SECONDS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Finer where the promise is (interruption ≤ 10 s): a p99 read off the histogram is only as
/// precise as the buckets around 10 s.
/// Past 10 s too: a p99 of 36 s once read 59.7 s, interpolated inside a 30–60 s bucket.
const INTERRUPTION_SECONDS: &[f64] = &[
    0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 60.0, 90.0,
    120.0, 300.0,
];

#[derive(Clone, Debug)]
pub struct RolloutMetrics {
    /// Swaps whose interruption this process observed but whose mark on the new pod is not
    /// known written yet (a conflict, a reconcile cut short): never observed twice. Holds only
    /// swaps in flight, by `namespace/pre-pull pod`.
    interruptions_pending: Arc<Mutex<HashSet<String>>>,
    /// `edgefleet_rollout_targets{namespace, job, state}`.
    pub targets: IntGaugeVec,
    /// Batch start → all members done.
    pub batch_duration: Histogram,
    /// Pre-pull pod created → image reported on the node.
    pub prepull_duration: Histogram,
    /// Old pod deleted → new pod Ready on the same node: what the edge app feels.
    pub interruption: Histogram,
    /// `edgefleet_rollout_phase{namespace, job, phase}`: 1 for the job's phase, 0 for the others.
    pub phase: IntGaugeVec,
    /// `edgefleet_rollout_last_progress_timestamp_seconds{namespace, job}`: when a target last
    /// reached an end state (done, failed, skipped) or the phase last changed, as seen by this
    /// replica (a new leader starts the clock at its first reconcile).
    pub last_progress: GaugeVec,
    /// `edgefleet_rollout_failure_budget_breaches_total{namespace, job}`: times the failures
    /// went past the tolerance (the job then paused, aborted or rolled back).
    pub budget_breaches: IntCounterVec,
}

/// Labels of the per-job series.
const JOB_LABELS: &[&str] = &["namespace", "job"];

impl RolloutMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            interruptions_pending: Arc::default(),
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
            phase: IntGaugeVec::new(
                Opts::new(
                    "edgefleet_rollout_phase",
                    "RolloutJobs by phase: 1 for the job's phase, 0 for the others.",
                ),
                &["namespace", "job", "phase"],
            )?,
            last_progress: GaugeVec::new(
                Opts::new(
                    "edgefleet_rollout_last_progress_timestamp_seconds",
                    "Unix time a target of the job last reached an end state or its phase changed.",
                ),
                JOB_LABELS,
            )?,
            budget_breaches: IntCounterVec::new(
                Opts::new(
                    "edgefleet_rollout_failure_budget_breaches_total",
                    "Times a job's failures went past its tolerance.",
                ),
                JOB_LABELS,
            )?,
        };
        for c in m.collectors() {
            registry.register(c)?;
        }
        Ok(m)
    }

    /// Every metric, in one list: registered from it, and named from it by [`Self::names`].
    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.targets.clone()),
            Box::new(self.batch_duration.clone()),
            Box::new(self.prepull_duration.clone()),
            Box::new(self.interruption.clone()),
            Box::new(self.phase.clone()),
            Box::new(self.last_progress.clone()),
            Box::new(self.budget_breaches.clone()),
        ]
    }

    /// The names of the metrics above (without histogram suffixes).
    /// Observes one swap's interruption, unless this process already did and its mark is not
    /// known written yet.
    pub fn observe_interruption_once(&self, swap: &str, interruption: SignedDuration) {
        let mut pending = self
            .interruptions_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if pending.insert(swap.to_string()) {
            self.interruption
                .observe(interruption.as_secs_f64().max(0.0));
        }
    }

    /// The swap's mark is on the cluster: it says "recorded" from now on.
    pub fn interruption_recorded(&self, swap: &str) {
        self.interruptions_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(swap);
    }

    pub fn names(&self) -> Vec<String> {
        self.collectors()
            .iter()
            .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
            .collect()
    }

    /// Drops a deleted job's series, so that gauges and counters do not outlive it.
    pub fn forget_job(&self, namespace: &str, job: &str, states: &[&str], phases: &[&str]) {
        for state in states {
            let _ = self.targets.remove_label_values(&[namespace, job, state]);
        }
        for phase in phases {
            let _ = self.phase.remove_label_values(&[namespace, job, phase]);
        }
        let _ = self.last_progress.remove_label_values(&[namespace, job]);
        let _ = self.budget_breaches.remove_label_values(&[namespace, job]);
    }
}

/// The unix time now, in seconds, for timestamp gauges.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A swap is observed once whatever happens to its mark: repeats before the mark is known
    /// written (a conflict, a reconcile cut short) do not count again.
    #[test]
    fn a_swap_is_observed_once_until_its_mark_is_written() {
        let m = RolloutMetrics::register(&Registry::new()).unwrap();
        let d = SignedDuration::from_secs(3);
        m.observe_interruption_once("ns/pp-a", d);
        m.observe_interruption_once("ns/pp-a", d);
        m.observe_interruption_once("ns/pp-b", d);
        assert_eq!(m.interruption.get_sample_count(), 2);
        m.interruption_recorded("ns/pp-a");
        m.interruption_recorded("ns/pp-b");
        assert!(m.interruptions_pending.lock().unwrap().is_empty());
    }
}
