//! Carrying out the balancer's release order (contract: docs/channel.md, "Release orders").
//!
//! 1. The order is for this pod (`podUID`), not done, not started, not expired — otherwise it is
//!    left alone; one started before a restart (`releaseStarted` = its id, not done) is marked
//!    done without acting, so a restart never repeats it.
//! 2. `releaseStarted` is written before the first close.
//! 3. Readiness fails (`/readyz` 503), so the load balancer stops sending new agents here, and
//!    the hub waits `drain` for its health checks to notice.
//! 4. It closes `min(release, sessions − keep)` sessions, least in flight first, with close
//!    4000 and a jittered reconnect hint, spread over `window` with ±10 % jitter per close and
//!    at most `rate` closes a second; it stops early at `keep` sessions or at `expiresAt`.
//! 5. Readiness returns, and `releaseDone` is written.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edgefleet_api::balancer::{ReleaseOrder, report_keys};
use edgefleet_channel::session::{CLOSE_RECONNECT, reconnect_reason};
use edgefleet_kit::Readiness;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};

use crate::hub::{Hub, Session, lock};

/// How a replica releases sessions.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This replica's pod UID (downward API); orders for another UID are ignored.
    pub pod_uid: String,
    /// Out of rotation this long before the first close (≥ the LB's `inter × fall`).
    pub drain: Duration,
    /// Closes are spread over this window.
    pub window: Duration,
    /// At most this many closes a second.
    pub rate: u32,
}

/// The releaser of one replica: its settings, its readiness, whether an order is running.
pub struct Releaser {
    pub settings: Settings,
    readiness: Readiness,
    running: AtomicBool,
    /// Ids this process marked started / done (kept across report rewrites until persisted).
    pub started: std::sync::Mutex<Option<String>>,
    pub done: std::sync::Mutex<Option<String>>,
}

/// What to do with an order as read from the report (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not ours, already done, or already running here.
    Ignore,
    /// Started before a restart, or expired before it started: record done, close nothing.
    Abandon,
    /// Carry it out.
    Execute,
}

/// The verdict on `order` given the report's `started` / `done` ids.
pub fn verdict(
    order: &ReleaseOrder,
    pod_uid: &str,
    started: Option<&str>,
    done: Option<&str>,
    running: bool,
    now: Timestamp,
) -> Verdict {
    if order.pod_uid != pod_uid || done == Some(order.id.as_str()) || running {
        return Verdict::Ignore;
    }
    let expired = order
        .expires_at
        .parse::<Timestamp>()
        .map_or(true, |t| now >= t);
    if started == Some(order.id.as_str()) || expired || order.release <= 0 {
        return Verdict::Abandon;
    }
    Verdict::Execute
}

/// How many to close: `release`, never leaving fewer than `keep` (pure).
pub fn to_close(sessions: usize, release: i64, keep: i64) -> usize {
    let sessions_i = i64::try_from(sessions).unwrap_or(i64::MAX);
    let n = release.min(sessions_i - keep.max(0)).max(0);
    usize::try_from(n).unwrap_or(0)
}

/// The gap between two closes: `window / n`, but at least `1 / rate` (pure).
pub fn gap(window: Duration, n: usize, rate: u32) -> Duration {
    let spread = window / u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    spread.max(Duration::from_secs(1) / rate.max(1))
}

/// `d` ± 10 %, random.
fn jittered(d: Duration) -> Duration {
    let r = (uuid::Uuid::new_v4().as_u128() % 2001) as f64 / 10_000.0; // 0 ..= 0.2
    d.mul_f64(0.9 + r)
}

/// A session's load right now: messages queued or in flight plus edge requests being handled.
fn in_flight(s: &Session) -> usize {
    lock(&s.queue).depth() + s.edge_requests.load(Ordering::Relaxed)
}

impl Releaser {
    pub fn new(settings: Settings, readiness: Readiness) -> Self {
        Releaser {
            settings,
            readiness,
            running: AtomicBool::new(false),
            started: std::sync::Mutex::new(None),
            done: std::sync::Mutex::new(None),
        }
    }

    /// Looks at the order in the report just read; starts carrying it out when it should.
    pub async fn consider(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        api: &Api<ConfigMap>,
        name: &str,
        order: ReleaseOrder,
        started: Option<String>,
        done: Option<String>,
    ) {
        let started = lock(&self.started).clone().or(started);
        let done = lock(&self.done).clone().or(done);
        let running = self.running.load(Ordering::SeqCst);
        match verdict(
            &order,
            &self.settings.pod_uid,
            started.as_deref(),
            done.as_deref(),
            running,
            Timestamp::now(),
        ) {
            Verdict::Ignore => {}
            Verdict::Abandon => {
                tracing::info!(order = %order.id, "release order started before a restart or expired: recorded done, nothing closed");
                *lock(&self.done) = Some(order.id.clone());
                record(api, name, report_keys::RELEASE_DONE, &order.id).await;
            }
            Verdict::Execute => {
                // Started is on record before the first close, or nothing happens.
                if !record(api, name, report_keys::RELEASE_STARTED, &order.id).await {
                    return;
                }
                *lock(&self.started) = Some(order.id.clone());
                self.running.store(true, Ordering::SeqCst);
                let me = self.clone();
                let hub = hub.clone();
                let api = api.clone();
                let name = name.to_string();
                tokio::spawn(async move {
                    me.execute(&hub, &order).await;
                    *lock(&me.done) = Some(order.id.clone());
                    record(&api, &name, report_keys::RELEASE_DONE, &order.id).await;
                    me.running.store(false, Ordering::SeqCst);
                });
            }
        }
    }

    async fn execute(&self, hub: &Hub, order: &ReleaseOrder) {
        let expires = order.expires_at.parse::<Timestamp>().ok();
        let n = to_close(hub.registry.len(), order.release, order.keep);
        tracing::info!(order = %order.id, release = order.release, keep = order.keep, closing = n, "release order: out of rotation");
        self.readiness.set_ready(false);
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tokio::time::sleep(self.settings.drain) => {}
        }
        let mut sessions = hub.registry.all();
        sessions.sort_by_key(|s| in_flight(s));
        let step = gap(self.settings.window, n, self.settings.rate);
        let keep = usize::try_from(order.keep.max(0)).unwrap_or(0);
        let mut closed = 0usize;
        for s in sessions.into_iter().take(n) {
            if hub.registry.len() <= keep
                || expires.is_some_and(|t| Timestamp::now() >= t)
                || hub.shutdown.is_cancelled()
            {
                break;
            }
            // Ended, or replaced by a newer session of the node, since the snapshot.
            if hub.registry.get(&s.node).is_none_or(|live| live.id != s.id) {
                continue;
            }
            s.request_close(CLOSE_RECONNECT, reconnect_reason(hub.jittered_retry()));
            closed += 1;
            tokio::select! {
                _ = hub.shutdown.cancelled() => break,
                _ = tokio::time::sleep(jittered(step)) => {}
            }
        }
        if !hub.shutdown.is_cancelled() {
            self.readiness.set_ready(true);
        }
        tracing::info!(order = %order.id, closed, sessions = hub.registry.len(), "release order done: back in rotation");
    }
}

/// Writes one key of the report (merge patch); `false` when it did not land.
async fn record(api: &Api<ConfigMap>, name: &str, key: &str, id: &str) -> bool {
    let patch = serde_json::json!({ "data": { key: id } });
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, key, "recording the release order");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, release: i64, expires_in: i64) -> ReleaseOrder {
        ReleaseOrder {
            id: id.into(),
            pod_uid: "me".into(),
            release,
            keep: 10,
            issued_at: Timestamp::from_second(1000).unwrap().to_string(),
            expires_at: Timestamp::from_second(1000 + expires_in)
                .unwrap()
                .to_string(),
        }
    }

    #[test]
    fn verdicts() {
        let now = Timestamp::from_second(1010).unwrap();
        let o = order("o1", 5, 60);
        assert_eq!(verdict(&o, "me", None, None, false, now), Verdict::Execute);
        assert_eq!(
            verdict(&o, "other", None, None, false, now),
            Verdict::Ignore,
            "another pod's"
        );
        assert_eq!(
            verdict(&o, "me", Some("o1"), Some("o1"), false, now),
            Verdict::Ignore,
            "done"
        );
        assert_eq!(
            verdict(&o, "me", None, None, true, now),
            Verdict::Ignore,
            "running"
        );
        assert_eq!(
            verdict(&o, "me", Some("o1"), Some("o0"), false, now),
            Verdict::Abandon,
            "restarted mid-order"
        );
        assert_eq!(
            verdict(&o, "me", Some("o0"), Some("o0"), false, now),
            Verdict::Execute,
            "a new order"
        );
        assert_eq!(
            verdict(&order("o1", 5, 5), "me", None, None, false, now),
            Verdict::Abandon,
            "expired"
        );
        assert_eq!(
            verdict(&order("o1", 0, 60), "me", None, None, false, now),
            Verdict::Abandon
        );
    }

    #[test]
    fn never_below_keep_and_rate_capped() {
        assert_eq!(to_close(100, 30, 80), 20);
        assert_eq!(to_close(100, 30, 10), 30);
        assert_eq!(to_close(5, 30, 10), 0);
        assert_eq!(to_close(100, -3, 0), 0);
        assert_eq!(
            gap(Duration::from_secs(10), 10, 100),
            Duration::from_secs(1)
        );
        assert_eq!(
            gap(Duration::from_secs(10), 10_000, 100),
            Duration::from_millis(10)
        );
        assert_eq!(
            gap(Duration::from_secs(10), 0, 100),
            Duration::from_secs(10)
        );
    }
}
