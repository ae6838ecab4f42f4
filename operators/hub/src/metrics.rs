//! `edgefleet_hub_*`: sessions, deliveries, queue depth, delivery lag, bytes, refusals.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

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
        };
        registry.register(Box::new(m.sessions.clone()))?;
        registry.register(Box::new(m.sessions_opened.clone()))?;
        registry.register(Box::new(m.refused.clone()))?;
        registry.register(Box::new(m.sent.clone()))?;
        registry.register(Box::new(m.acked.clone()))?;
        registry.register(Box::new(m.resent.clone()))?;
        registry.register(Box::new(m.superseded.clone()))?;
        registry.register(Box::new(m.given_up.clone()))?;
        registry.register(Box::new(m.queue_depth.clone()))?;
        registry.register(Box::new(m.delivery_lag.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.frames_refused.clone()))?;
        registry.register(Box::new(m.edge_requests.clone()))?;
        registry.register(Box::new(m.api_errors.clone()))?;
        Ok(m)
    }
}
