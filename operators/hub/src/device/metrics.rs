//! `edgefleet_hub_device_*`: reports taken, status writes, the report → status lag.

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

use super::board::Board;
use super::merge::Merged;

const LAG_SECONDS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0];
/// Around the refresh period (60 s by default) and the device operator's Stale floor (120 s).
const REFRESH_AGE_SECONDS: &[f64] = &[30.0, 60.0, 75.0, 90.0, 120.0, 180.0, 300.0, 600.0];

#[derive(Clone, Debug)]
pub struct DeviceMetrics {
    /// Reports, by topic (`twin`, `state`) and result (`accepted`, `forbidden`, `malformed`,
    /// `busy`, `queued`: held for a write farther than the answer timeout, `not_found`).
    pub reports: IntCounterVec,
    /// Property values or states dropped as older than what was held, by where (`board`,
    /// `status`).
    pub older: IntCounterVec,
    /// Reported properties the Device does not declare.
    pub unknown_properties: IntCounterVec,
    /// Device status writes, by result (`ok`, `unchanged`, `conflict`, `failed`).
    pub writes: IntCounterVec,
    /// Reports answered without being written, by reason (`full`, `device_busy`, `retries`,
    /// `timeout`, `queued`, `not_found`).
    pub give_ups: IntCounterVec,
    /// Where a status write found the Device it merged into, by source (`cache`: the hub's
    /// watch cache, `written`: the answer to its own last write, `api`: a read).
    pub reads: IntCounterVec,
    /// Reports answered at once, without waiting for a write, by how (`unchanged`,
    /// `refresh_queued`, `refresh_deferred`; see [`super::board::Taken`]).
    pub settled: IntCounterVec,
    /// Devices with a value change waiting for a write.
    pub pending: IntGauge,
    /// Devices waiting only to renew times.
    pub refresh_pending: IntGauge,
    /// First report of a write → the write done.
    pub lag: Histogram,
    /// How old the stored times a refresh renewed were: beyond the device operator's Stale
    /// floor, refreshes do not keep up (more write budget, or a longer refresh).
    pub refresh_age: Histogram,
}

impl DeviceMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self::new()?;
        for c in m.collectors() {
            registry.register(c)?;
        }
        Ok(m)
    }

    pub fn new() -> prometheus::Result<Self> {
        Ok(Self {
            reports: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_device_reports_total",
                    "Device twin and state reports from edges, by topic and result.",
                ),
                &["topic", "result"],
            )?,
            older: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_device_older_reports_total",
                    "Reported values older than the one held, dropped (a resent report), by where.",
                ),
                &["at"],
            )?,
            unknown_properties: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_device_unknown_properties_total",
                    "Reported properties the Device does not declare, by namespace.",
                ),
                &["namespace"],
            )?,
            writes: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_device_status_writes_total",
                    "Device status writes (one per device per flush at most), by result.",
                ),
                &["result"],
            )?,
            give_ups: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_device_give_ups_total",
                    "Device reports answered without being written, by reason (the edge resends).",
                ),
                &["reason"],
            )?,
            reads: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_device_status_bases_total",
                    "Devices a status write merged into, by where they came from (cache, written, api: only api costs a read).",
                ),
                &["source"],
            )?,
            settled: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_device_reports_settled_total",
                    "Device reports answered at once, nothing of them waiting for a write (unchanged) or only their times (refresh_queued, refresh_deferred).",
                ),
                &["how"],
            )?,
            pending: IntGauge::new(
                "edgefleet_hub_device_pending",
                "Devices with a changed value waiting for a status write.",
            )?,
            refresh_pending: IntGauge::new(
                "edgefleet_hub_device_refresh_pending",
                "Devices waiting only to renew the times of unchanged values (after value changes, with the budget they leave).",
            )?,
            lag: Histogram::with_opts(
                HistogramOpts::new(
                    "edgefleet_hub_device_report_lag_seconds",
                    "Time from a device report reaching the hub to its value written in the Device status.",
                )
                .buckets(LAG_SECONDS.to_vec()),
            )?,
            refresh_age: Histogram::with_opts(
                HistogramOpts::new(
                    "edgefleet_hub_device_refresh_age_seconds",
                    "Age of the stored times a refresh renewed (an unchanged value rewritten): past the device operator's --stale-after-seconds, properties show Stale.",
                )
                .buckets(REFRESH_AGE_SECONDS.to_vec()),
            )?,
        })
    }

    /// What a merge into a Device of `namespace` left out: undeclared properties, older values.
    pub fn left_out(&self, namespace: &str, merged: &Merged) {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        if !merged.unknown.is_empty() {
            self.unknown_properties
                .with_label_values(&[namespace])
                .inc_by(count(merged.unknown.len()));
        }
        if merged.older > 0 {
            self.older
                .with_label_values(&["status"])
                .inc_by(count(merged.older));
        }
    }

    /// The board's gauges.
    pub fn waiting(&self, board: &Board) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.pending.set(gauge(board.changes()));
        self.refresh_pending.set(gauge(board.refreshes()));
    }

    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.reports.clone()),
            Box::new(self.older.clone()),
            Box::new(self.unknown_properties.clone()),
            Box::new(self.writes.clone()),
            Box::new(self.give_ups.clone()),
            Box::new(self.reads.clone()),
            Box::new(self.settled.clone()),
            Box::new(self.pending.clone()),
            Box::new(self.refresh_pending.clone()),
            Box::new(self.lag.clone()),
            Box::new(self.refresh_age.clone()),
        ]
    }
}
