//! The device status writer: every flush interval, each device with reports waiting gets at
//! most one write — read, merge (pure), server-side apply of the hub's fields — and its
//! reports are answered.
//!
//! A conflict (another writer moved the Device since the read) is read and merged again, up to
//! three times in one flush; a failed write goes back on the board for the next flush, up to
//! [`MAX_FAILURES`] flushes, then its reports are answered "busy" (the edge resends) and counted.

use std::sync::Arc;

use edgefleet_api::devices::Device;
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};

use super::board::{DeviceKey, Pending};
use super::merge::merge;
use crate::hub::Hub;
use crate::lock;
use crate::wire::FIELD_MANAGER;

/// Flushes an entry may fail before its reports are given up.
pub const MAX_FAILURES: u32 = 3;

/// Runs until the task is aborted.
pub async fn run(hub: Arc<Hub>) {
    let settings = hub.devices.settings.clone();
    let mut tick = tokio::time::interval(settings.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = hub.devices.wake.notified() => {}
        }
        let entries = lock(&hub.devices.board).take_all();
        hub.metrics.devices.pending.set(0);
        if entries.is_empty() {
            continue;
        }
        futures::stream::iter(entries)
            .for_each_concurrent(settings.writers.max(1), |(key, entry)| {
                let hub = hub.clone();
                async move { write(&hub, key, entry).await }
            })
            .await;
        let left = lock(&hub.devices.board).len();
        hub.metrics
            .devices
            .pending
            .set(i64::try_from(left).unwrap_or(i64::MAX));
    }
}

fn done(hub: &Hub, entry: Pending, result: &Result<(), String>) {
    if let Some(since) = entry.since
        && result.is_ok()
    {
        hub.metrics
            .devices
            .lag
            .observe(since.elapsed().as_secs_f64());
    }
    entry.answer(result);
}

/// One device: at most one successful write.
async fn write(hub: &Hub, key: DeviceKey, entry: Pending) {
    let metrics = &hub.metrics.devices;
    let api: Api<Device> = Api::namespaced(hub.client.clone(), &key.0);
    let refresh_ms = i64::try_from(hub.devices.settings.refresh.as_millis()).unwrap_or(i64::MAX);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for _ in 0..3 {
        let device = match api.get_opt(&key.1).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                metrics.give_ups.with_label_values(&["not_found"]).inc();
                let reason = format!("not found: device {}/{}", key.0, key.1);
                done(hub, entry, &Err(reason));
                return;
            }
            Err(e) => {
                tracing::info!(device = %key.1, error = %e, "reading a device for its status");
                break;
            }
        };
        let now = jiff::Timestamp::now().to_string();
        let merged = merge(&device, &entry, refresh_ms, &now);
        if !merged.unknown.is_empty() {
            metrics
                .unknown_properties
                .with_label_values(&[&key.0])
                .inc_by(u64::try_from(merged.unknown.len()).unwrap_or(0));
        }
        if merged.older > 0 {
            metrics
                .older
                .with_label_values(&["status"])
                .inc_by(u64::try_from(merged.older).unwrap_or(0));
        }
        let Some(body) = merged.apply else {
            metrics.writes.with_label_values(&["unchanged"]).inc();
            done(hub, entry, &Ok(()));
            return;
        };
        match api
            .patch_status(&key.1, &params, &Patch::Apply(&body))
            .await
        {
            Ok(_) => {
                metrics.writes.with_label_values(&["ok"]).inc();
                done(hub, entry, &Ok(()));
                return;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                metrics.writes.with_label_values(&["conflict"]).inc();
            }
            Err(e) => {
                metrics.writes.with_label_values(&["failed"]).inc();
                tracing::info!(device = %key.1, error = %e, "device status write failed");
                break;
            }
        }
    }
    if entry.failures + 1 >= MAX_FAILURES {
        metrics.give_ups.with_label_values(&["retries"]).inc();
        let reason = "busy: device status write failed; resend".to_string();
        done(hub, entry, &Err(reason));
    } else {
        lock(&hub.devices.board).put_back(key, entry);
    }
}
