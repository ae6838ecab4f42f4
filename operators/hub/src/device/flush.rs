//! The device status writer: every flush interval it starts writes for the devices with
//! reports waiting — value changes oldest first, then refreshes stalest first with the budget
//! left ([`super::board`]) — within a write budget (`writes_per_second`) and `writers`
//! in flight; each write merges (pure) into the Device as the hub last saw it and applies the
//! hub's fields (server-side apply), and the reports are answered.
//!
//! No read per write: the Device comes from the hub's watch cache, or from the answer to the
//! hub's own last write of it while the cache lags behind that. The apply carries the
//! resourceVersion it merged into, so a stale Device is refused (409) and read fresh, merged
//! again, up to three times. No barrier: a slow write holds only its own device; the next
//! tick starts writes for the others. A backlog beyond the budget waits on the board, where
//! each device has one entry however many reports arrive, so writes per device space out as
//! the fleet grows instead of the API server's load growing with it.
//!
//! A failed write goes back on the board for the next flush, up to [`MAX_FAILURES`] flushes,
//! then its reports are answered "busy" (the edge resends) and counted.

use std::sync::Arc;
use std::time::Instant;

use edgefleet_api::devices::Device;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::Semaphore;

use super::base::known;
use super::board::{DeviceKey, Pending};
use super::merge::merge;
use super::{Devices, WRITTEN_KEPT};
use crate::hub::Hub;
use crate::lock;
use crate::wire::FIELD_MANAGER;

/// Flushes an entry may fail before its reports are given up.
pub const MAX_FAILURES: u32 = 3;

/// Runs until the task is aborted.
pub async fn run(hub: Arc<Hub>) {
    let settings = hub.devices.settings.clone();
    let writers = Arc::new(Semaphore::new(settings.writers.max(1)));
    let mut tick = tokio::time::interval(settings.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut budget = Budget::new(settings.writes_per_second, Instant::now());
    let queued_max = usize::try_from(settings.writes_per_second)
        .unwrap_or(usize::MAX)
        .max(settings.writers);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = hub.devices.wake.notified() => {}
        }
        let now = Instant::now();
        forget_old_writes(&hub.devices, now);
        // Taken this tick: what the budget allows, and no more than a second's worth waiting
        // for a writer or being written. The writers start them as fast as the API server
        // answers (taking only as many as were free would cap the rate at `writers` per tick
        // — 16 writes/s at the default flush, whatever the budget); a device in flight is not
        // taken again, so each gets at most one write per tick.
        let entries = {
            let mut board = lock(&hub.devices.board);
            let room = queued_max.saturating_sub(board.in_flight());
            board.take_ready(budget.available(now).min(room))
        };
        budget.spend(entries.len());
        for (key, entry) in entries {
            let (hub, writers) = (hub.clone(), writers.clone());
            tokio::spawn(async move {
                match writers.acquire_owned().await {
                    Ok(_permit) => write(&hub, key, entry).await,
                    // The semaphore is never closed; give the reports back rather than lose them.
                    Err(_) => lock(&hub.devices.board).put_back(key, entry),
                }
            });
        }
        hub.metrics.devices.waiting(&lock(&hub.devices.board));
    }
}

/// Writes the budget allows to start, refilled continuously up to one second's worth.
#[derive(Debug)]
struct Budget {
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn new(per_second: u32, now: Instant) -> Self {
        let per_second = f64::from(per_second.max(1));
        Budget {
            per_second,
            tokens: per_second,
            at: now,
        }
    }

    /// Whole writes that may start now.
    fn available(&mut self, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.at = now;
        // Whole tokens only; the fraction stays for the next tick.
        self.tokens.floor().max(0.0) as usize
    }

    fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

/// Drops answers to writes old enough that the watch cache holds them (or something newer).
fn forget_old_writes(devices: &Devices, now: Instant) {
    lock(&devices.written).retain(|_, (at, _)| now.saturating_duration_since(*at) < WRITTEN_KEPT);
}

fn done(hub: &Hub, key: &DeviceKey, entry: Pending, result: &Result<(), String>) {
    lock(&hub.devices.board).written(key);
    if result.is_ok() {
        let metrics = &hub.metrics.devices;
        if let Some(since) = entry.since {
            metrics.lag.observe(since.elapsed().as_secs_f64());
        }
        if let Some(stored_ms) = entry.refresh {
            let age_ms = jiff::Timestamp::now().as_millisecond() - stored_ms;
            metrics.refresh_age.observe(age_ms.max(0) as f64 / 1000.0);
        }
    }
    entry.answer(result);
}

/// One device: at most one successful write.
async fn write(hub: &Hub, key: DeviceKey, entry: Pending) {
    let metrics = &hub.metrics.devices;
    let api: Api<Device> = Api::namespaced(hub.client.clone(), &key.0);
    let refresh_ms = hub.devices.settings.refresh_ms();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut base = known(hub, &key);
    for _ in 0..3 {
        let device = match base.take() {
            Some((d, source)) => {
                metrics.reads.with_label_values(&[source]).inc();
                d
            }
            None => match api.get_opt(&key.1).await {
                Ok(Some(d)) => {
                    metrics.reads.with_label_values(&["api"]).inc();
                    d
                }
                Ok(None) => {
                    metrics.give_ups.with_label_values(&["not_found"]).inc();
                    let reason = format!("not found: device {}/{}", key.0, key.1);
                    done(hub, &key, entry, &Err(reason));
                    return;
                }
                Err(e) => {
                    tracing::info!(device = %key.1, error = %e, "reading a device for its status");
                    break;
                }
            },
        };
        let now = jiff::Timestamp::now().to_string();
        let merged = merge(&device, &entry, refresh_ms, &now);
        metrics.left_out(&key.0, &merged);
        let Some(body) = merged.apply else {
            metrics.writes.with_label_values(&["unchanged"]).inc();
            done(hub, &key, entry, &Ok(()));
            return;
        };
        match api
            .patch_status(&key.1, &params, &Patch::Apply(&body))
            .await
        {
            Ok(mut written) => {
                metrics.writes.with_label_values(&["ok"]).inc();
                // Kept up to WRITTEN_KEPT for the next merge, which never reads managed fields:
                // with two writers per Device they were most of its size.
                edgefleet_kit::forget_managed_fields(&mut written);
                lock(&hub.devices.written).insert(key.clone(), (Instant::now(), Arc::new(written)));
                done(hub, &key, entry, &Ok(()));
                return;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Merged into a stale Device (another writer, or a lagging cache): read it.
                metrics.writes.with_label_values(&["conflict"]).inc();
                lock(&hub.devices.written).remove(&key);
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
        done(hub, &key, entry, &Err(reason));
    } else {
        lock(&hub.devices.board).put_back(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_budget_refills_to_a_seconds_worth_and_keeps_fractions() {
        let t0 = Instant::now();
        let mut b = Budget::new(10, t0);
        assert_eq!(b.available(t0), 10);
        b.spend(10);
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.available(t0 + Duration::from_millis(250)), 2);
        b.spend(2);
        // 0.5 left from the last refill, + 0.5 → 1.
        assert_eq!(b.available(t0 + Duration::from_millis(300)), 1);
        // A long quiet spell gives a second's worth, not more.
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 10);
    }
}
