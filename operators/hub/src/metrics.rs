//! `edgefleet_hub_*`: sessions, deliveries, queue depth, delivery lag, bytes, refusals.

use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Delivery lag buckets: sub-second on a good link, up to minutes behind a flapping one.
const LAG_SECONDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Clone, Debug)]
pub struct HubMetrics {
    /// Live sessions on this replica.
    pub sessions: IntGauge,
    /// Sessions opened, by outcome (`accepted`, `replaced`).
    pub sessions_opened: IntCounterVec,
    /// Session requests refused, by reason.
    pub refused: IntCounterVec,
    /// Messages sent to the edge (first sends), by operation.
    pub sent: IntCounterVec,
    pub acked: IntCounter,
    pub resent: IntCounter,
    /// Pending messages replaced by a newer version before being sent.
    pub superseded: IntCounter,
    /// Messages sent MAX_SENDS times without an ACK, left to resync.
    pub given_up: IntCounter,
    /// Pending + in-flight messages over all sessions.
    pub queue_depth: IntGauge,
    /// Object change seen → ACK.
    pub delivery_lag: Histogram,
    /// Bytes of WebSocket payload, by direction (`in`, `out`).
    pub bytes: IntCounterVec,
    /// Frames from the edge refused, by reason.
    pub frames_refused: IntCounterVec,
    /// Edge → cloud requests handled, by kind and result.
    pub edge_requests: IntCounterVec,
    /// Failed API calls, by action.
    pub api_errors: IntCounterVec,
    /// ObjectSync writes abandoned (conflicts, repeated failures, full board), by action.
    pub status_give_ups: IntCounterVec,
    /// Syncs waiting on the status board for a write.
    pub status_pending: IntGauge,
    /// Lease renewals, by result (`ok`, `failed`).
    pub lease_renewals: IntCounterVec,
    pub ready_reassertions: IntCounterVec,
    /// Age of the oldest renewal among heartbeating nodes: how close the renewer is to losing one.
    pub lease_oldest_renewal: Gauge,
    /// Unix time of this replica's last successful load report write (0: none yet). The
    /// balancer reads the reports; a report that stops being written leaves it blind.
    pub load_report_written: Gauge,
    /// `edgefleet_hub_device_*`: device twin and state reports (module `device`).
    pub devices: crate::device::DeviceMetrics,
}

impl HubMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            sessions: IntGauge::new("edgefleet_hub_sessions", "Live edge sessions.")?,
            sessions_opened: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_sessions_opened_total",
                    "Edge sessions opened.",
                ),
                &["outcome"],
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_refused_sessions_total",
                    "Session or bootstrap requests refused, by reason.",
                ),
                &["reason"],
            )?,
            sent: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_messages_sent_total",
                    "Messages sent to edges.",
                ),
                &["operation"],
            )?,
            acked: IntCounter::new(
                "edgefleet_hub_messages_acked_total",
                "Messages acknowledged by edges.",
            )?,
            resent: IntCounter::new(
                "edgefleet_hub_messages_resent_total",
                "Messages resent after no ACK within 5 s.",
            )?,
            superseded: IntCounter::new(
                "edgefleet_hub_messages_superseded_total",
                "Pending messages dropped unsent because a newer version replaced them.",
            )?,
            given_up: IntCounter::new(
                "edgefleet_hub_messages_given_up_total",
                "Messages sent the maximum number of times without an ACK (left to resync).",
            )?,
            queue_depth: IntGauge::new(
                "edgefleet_hub_queue_depth",
                "Messages pending or in flight over all sessions.",
            )?,
            delivery_lag: Histogram::with_opts(
                HistogramOpts::new(
                    "edgefleet_hub_delivery_lag_seconds",
                    "Time from an object change seen by the hub to the edge's ACK.",
                )
                .buckets(LAG_SECONDS.to_vec()),
            )?,
            bytes: IntCounterVec::new(
                Opts::new("edgefleet_hub_bytes_total", "WebSocket payload bytes."),
                &["direction"],
            )?,
            frames_refused: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_frames_refused_total",
                    "Frames from edges refused, by reason.",
                ),
                &["reason"],
            )?,
            edge_requests: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_edge_requests_total",
                    "Edge to cloud requests (node registration, status, twins), by kind and result.",
                ),
                &["kind", "result"],
            )?,
            api_errors: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_api_errors_total",
                    "Failed Kubernetes API calls, by action.",
                ),
                &["action"],
            )?,
            status_give_ups: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_status_give_ups_total",
                    "ObjectSync status writes abandoned and left to resync, by action.",
                ),
                &["action"],
            )?,
            status_pending: IntGauge::new(
                "edgefleet_hub_status_pending",
                "ObjectSyncs waiting on the status board for a write.",
            )?,
            lease_renewals: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_lease_renewals_total",
                    "Node Lease renewals, by result.",
                ),
                &["result"],
            )?,
            ready_reassertions: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_ready_reassertions_total",
                    "Checks of a connected node's Ready condition after its first or a late Lease renewal, by result (already_ready: read from the API server's cache, nothing written).",
                ),
                &["result"],
            )?,
            lease_oldest_renewal: Gauge::new(
                "edgefleet_hub_lease_oldest_renewal_seconds",
                "Seconds since the least recently renewed Lease of a heartbeating node here was renewed (a node goes NotReady past the node-monitor grace period, 40 s by default).",
            )?,
            load_report_written: Gauge::new(
                "edgefleet_hub_load_report_last_write_timestamp_seconds",
                "Unix time of this replica's last successful load report write (0: none yet).",
            )?,
            devices: crate::device::DeviceMetrics::new()?,
        };
        for c in m.collectors() {
            registry.register(c)?;
        }
        Ok(m)
    }

    /// Every metric, in one list: registered from it, and named from it by [`Self::names`].
    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        let own: Vec<Box<dyn Collector>> = vec![
            Box::new(self.sessions.clone()),
            Box::new(self.sessions_opened.clone()),
            Box::new(self.refused.clone()),
            Box::new(self.sent.clone()),
            Box::new(self.acked.clone()),
            Box::new(self.resent.clone()),
            Box::new(self.superseded.clone()),
            Box::new(self.given_up.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.delivery_lag.clone()),
            Box::new(self.bytes.clone()),
            Box::new(self.frames_refused.clone()),
            Box::new(self.edge_requests.clone()),
            Box::new(self.api_errors.clone()),
            Box::new(self.status_give_ups.clone()),
            Box::new(self.status_pending.clone()),
            Box::new(self.lease_renewals.clone()),
            Box::new(self.ready_reassertions.clone()),
            Box::new(self.lease_oldest_renewal.clone()),
            Box::new(self.load_report_written.clone()),
        ];
        own.into_iter().chain(self.devices.collectors()).collect()
    }

    /// The names of the metrics above (histograms without their suffixes).
    pub fn names(&self) -> Vec<String> {
        self.collectors()
            .iter()
            .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
            .collect()
    }
}
