//! What users watch about delivery, beside the kit's reconcile metrics.

use prometheus::core::Collector;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// States a sync is counted under by the census (`edgefleet_objectsync_syncs{state}`).
pub const STATES: [&str; 6] = [
    "delivered",
    "pending",
    "stale",
    "deleting",
    "unordered",
    "untracked",
];

#[derive(Clone, Debug)]
pub struct SyncMetrics {
    /// `edgefleet_objectsync_syncs{state}`: delivered (acked the live version), pending
    /// (trailing, within the resend window), stale (trailing past it), deleting (waiting for
    /// the edge's delete ACK), unordered (versions that cannot be compared), untracked (the
    /// object is not one this operator holds: gone, or a kind it does not deliver).
    pub syncs: IntGaugeVec,
    /// Syncs trailing the live object beyond the resend window.
    pub stale: IntGauge,
    /// Resync requests written (annotation set).
    pub resyncs: IntCounter,
    /// Syncs created.
    pub created: IntCounter,
    /// Syncs of another writer (KubeEdge) given this operator's labels and finalizer.
    pub adopted: IntCounter,
    /// Syncs garbage-collected, by reason: `not_needed` (the object was deleted or is no
    /// longer needed by the node; the finalizer is held until the edge ACKs the delete) or
    /// `node_gone` (the node was deleted; the operator removes the finalizer itself).
    pub gc: IntCounterVec,
    /// Nodes waiting for a worker.
    pub queue_depth: IntGauge,
    /// Nodes scheduled for a later look (resync windows, retries).
    pub scheduled: IntGauge,
    /// Watch errors by resource (each is retried with back-off).
    pub watch_errors: IntCounterVec,
}

impl SyncMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            syncs: IntGaugeVec::new(
                Opts::new(
                    "edgefleet_objectsync_syncs",
                    "ObjectSyncs by delivery state.",
                ),
                &["state"],
            )?,
            stale: IntGauge::new(
                "edgefleet_objectsync_stale_syncs",
                "ObjectSyncs whose acked version trails the live object beyond the resend window.",
            )?,
            resyncs: IntCounter::new(
                "edgefleet_objectsync_resyncs_total",
                "Resync requests written to stale ObjectSyncs.",
            )?,
            created: IntCounter::new("edgefleet_objectsync_created_total", "ObjectSyncs created.")?,
            adopted: IntCounter::new(
                "edgefleet_objectsync_adopted_total",
                "ObjectSyncs of another writer adopted (labels and finalizer added).",
            )?,
            gc: IntCounterVec::new(
                Opts::new(
                    "edgefleet_objectsync_gc_total",
                    "ObjectSyncs garbage-collected, by reason.",
                ),
                &["reason"],
            )?,
            queue_depth: IntGauge::new(
                "edgefleet_objectsync_queue_depth",
                "Nodes waiting for a reconcile.",
            )?,
            scheduled: IntGauge::new(
                "edgefleet_objectsync_scheduled_nodes",
                "Nodes scheduled for a later reconcile (resync windows, retries).",
            )?,
            watch_errors: IntCounterVec::new(
                Opts::new(
                    "edgefleet_objectsync_watch_errors_total",
                    "Watch errors by resource; each is retried with back-off.",
                ),
                &["resource"],
            )?,
        };
        for state in STATES {
            m.syncs.with_label_values(&[state]).set(0);
        }
        for reason in ["not_needed", "node_gone"] {
            m.gc.with_label_values(&[reason]).inc_by(0);
        }
        for c in m.collectors() {
            registry.register(c)?;
        }
        Ok(m)
    }

    /// Every metric, in one list: registered from it, and named from it by [`Self::names`].
    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.syncs.clone()),
            Box::new(self.stale.clone()),
            Box::new(self.resyncs.clone()),
            Box::new(self.created.clone()),
            Box::new(self.adopted.clone()),
            Box::new(self.gc.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.scheduled.clone()),
            Box::new(self.watch_errors.clone()),
        ]
    }

    /// The names of the metrics above.
    pub fn names(&self) -> Vec<String> {
        self.collectors()
            .iter()
            .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
            .collect()
    }
}
