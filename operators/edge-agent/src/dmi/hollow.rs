//! Hollow devices for `simulate` (benchmarks): each hollow agent has N devices of P properties
//! that report every T seconds, through the same book and uplink as real mappers' reports.
//!
//! Names: device `<node>-d<i>` in `--device-namespace`, properties `p0..p<P-1>` (INT values),
//! so a benchmark creates the matching Devices and DeviceModel (`hack/bench/devices`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::book::TwinReport;
use super::now_ms;
use super::uplink::UplinkSource;

#[derive(Clone, Debug)]
pub struct HollowDevices {
    pub per_agent: usize,
    pub properties: usize,
    pub every: Duration,
    pub namespace: String,
    /// A property's value changes every this many reports (1: every report).
    pub change_every: u64,
}

pub fn device_name(node: &str, index: usize) -> String {
    format!("{node}-d{index}")
}

pub fn property_name(index: usize) -> String {
    format!("p{index}")
}

/// The value property `p` of device `d` reports at `tick`.
pub fn value(d: usize, p: usize, tick: u64, change_every: u64) -> String {
    ((tick / change_every.max(1)) + (d * 7 + p) as u64).to_string()
}

/// Reports every device's properties every `every` (first after a random part of it, so a
/// fleet's reports spread over the period), and each device's state once.
pub async fn run(
    node: String,
    cfg: HollowDevices,
    source: UplinkSource,
    cancel: CancellationToken,
) {
    let keys: Vec<(String, String)> = (0..cfg.per_agent)
        .map(|i| (cfg.namespace.clone(), device_name(&node, i)))
        .collect();
    for key in &keys {
        if let Err(e) = source.book.record_state(key, "online".into(), now_ms()) {
            tracing::error!(error = %e, "hollow devices");
            return;
        }
    }
    let every = cfg.every.max(Duration::from_millis(100));
    let offset = every.mul_f64(fastrand::f64());
    tokio::select! {
        () = cancel.cancelled() => return,
        () = tokio::time::sleep(offset) => {}
    }
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Each agent's values change at its own point of the change period: counted from 0, a
    // fleet started together changed every value in the same tick (--change-every 100: none
    // for 1,000 s, then all 20,000 devices at once).
    let mut tick = fastrand::u64(0..cfg.change_every.max(1));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = now_ms();
        for (d, key) in keys.iter().enumerate() {
            let twins = (0..cfg.properties)
                .map(|p| TwinReport {
                    property: property_name(p),
                    reported: value(d, p, tick, cfg.change_every),
                    observed_desired: String::new(),
                    type_: "int".into(),
                    timestamp_ms: now,
                })
                .collect();
            if let Err(e) = source.book.record_twins(key, twins) {
                tracing::warn!(error = %e, device = %key.1, "hollow device report");
            }
        }
        source.reported.notify_one();
        tick += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dmi::book::{Book, BookLimits};
    use std::sync::Arc;

    #[tokio::test]
    async fn hollow_devices_report_every_period_latest_value_kept() {
        let source = UplinkSource {
            book: Arc::new(Book::memory(BookLimits::default())),
            reported: Arc::new(tokio::sync::Notify::new()),
        };
        let cfg = HollowDevices {
            per_agent: 3,
            properties: 5,
            every: Duration::from_millis(100),
            namespace: "bench".into(),
            change_every: 1,
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run("edge-0001".into(), cfg, source.clone(), cancel.clone()));
        let key = ("bench".to_string(), "edge-0001-d1".to_string());
        let p2 = || {
            source
                .book
                .twins(&key)
                .unwrap()
                .get("p2")
                .map(|t| t.reported.parse::<u64>().unwrap())
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while p2().is_none_or(|v| v < 11) {
            assert!(
                std::time::Instant::now() < deadline,
                "no third report in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
        task.await.unwrap();
        let pending = source.book.pending(100).unwrap();
        assert_eq!(pending.len(), 3);
        assert_eq!(
            pending[&key].twins.len(),
            5,
            "one value per property, the latest"
        );
        assert_eq!(pending[&key].state.as_ref().unwrap().state, "online");
        assert_eq!(value(1, 2, 5, 2), "11");
    }
}
