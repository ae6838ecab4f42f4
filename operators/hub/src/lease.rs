//! Node Leases of the connected, heartbeating nodes, renewed as a kubelet would.
//!
//! One write per renewal (a merge patch of `spec`, a create only when the Lease is missing),
//! never a read. Every tick the renewer takes the nodes whose renewal is due, least recently
//! renewed first (a node never renewed by this replica first of all: its Lease is the one
//! closest to expiry), up to the free slots of its own concurrency budget
//! (`--lease-renewals-in-flight`): other API work of the hub (status writes, edge requests)
//! cannot take those slots. Renewals spread over the interval by themselves: a node is due again
//! one interval after its last renewal finished. When the API server cannot take N ÷ interval
//! writes a second, every node is renewed less often but in turn (oldest first), and
//! `edgefleet_hub_lease_oldest_renewal_seconds` shows how close the least recent one is to the
//! node-monitor grace period — the figure to alert on before a node goes NotReady. In the chart
//! a FlowSchema puts these writes in the `node-high` priority level, as a kubelet's own.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, GetParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::hub::{Hub, Session};
use crate::lock;
use crate::wire::FIELD_MANAGER;

/// Namespace of node Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// Lease duration written for edge nodes (kubelet's default).
pub const NODE_LEASE_SECONDS: i32 = 40;
/// A renewal that has not finished by then failed (the next tick tries again).
pub const RENEWAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the renewer looks for due nodes.
const TICK: Duration = Duration::from_millis(100);
/// A failed renewal is retried after this.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A session's Lease bookkeeping.
#[derive(Debug, Default)]
pub struct LeaseState {
    /// When this replica last renewed the node's Lease (start of the successful write).
    pub renewed: Option<Instant>,
    pub in_flight: bool,
    /// After a failed renewal: not before then (a failing API is not hammered).
    pub retry_at: Option<Instant>,
    /// Renewals failed in a row (the first is logged, the rest counted).
    pub failures: u32,
    /// From then on, the next successful renewal also re-asserts the node's Ready condition
    /// (see [`ready_due`]); `None` while none is due.
    pub confirm_at: Option<Instant>,
}

/// The node-lifecycle controller marks a node NotReady (Unknown) when its Lease is older than
/// the grace period, and never sets it back: that is the kubelet's job, done at its next status
/// update. The agent's status report comes through the hub only every few minutes, so the hub
/// re-asserts Ready for its sessions itself: this long after the session's first renewal (the
/// Lease may have lapsed in a reconnect storm after the hub set the node Ready), and
/// [`READY_CONFIRM_AFTER_LAPSE`] after any renewal that came late enough for the Lease to have
/// lapsed ([`LAPSED_AFTER`]) — late enough that the controller has seen the fresh Lease and
/// does not undo it. A re-assertion that fails is retried with the next renewal.
pub const READY_CONFIRM_AFTER: Duration = Duration::from_secs(60);
pub const READY_CONFIRM_AFTER_LAPSE: Duration = Duration::from_secs(20);
/// A gap this long between two renewals of one node may have let its Lease lapse (40 s, less a
/// margin for the controller's view lagging under load).
pub const LAPSED_AFTER: Duration = Duration::from_secs(30);
/// A re-assertion that failed is tried again with the next renewal after this.
const CONFIRM_RETRY_AFTER: Duration = Duration::from_secs(10);

/// After a successful renewal started at `now` (the session's previous one at `previous`):
/// whether to re-assert Ready now, and when the next re-assertion is due (pure). `confirm_at`
/// is the current schedule (`None`: nothing due).
pub fn ready_due(
    confirm_at: Option<Instant>,
    previous: Option<Instant>,
    now: Instant,
) -> (bool, Option<Instant>) {
    let Some(previous) = previous else {
        return (false, Some(now + READY_CONFIRM_AFTER));
    };
    if confirm_at.is_some_and(|at| at <= now) {
        return (true, None);
    }
    if now.saturating_duration_since(previous) >= LAPSED_AFTER {
        let after_lapse = now + READY_CONFIRM_AFTER_LAPSE;
        return (
            false,
            Some(confirm_at.map_or(after_lapse, |at| at.min(after_lapse))),
        );
    }
    (false, confirm_at)
}

/// The next re-assertion after one started at `now`, by its outcome (pure).
pub fn after_confirm(ok: bool, now: Instant) -> Option<Instant> {
    (!ok).then_some(now + CONFIRM_RETRY_AFTER)
}

/// The nodes to renew now, most urgent first, at most `slots` (pure). `nodes` are (index,
/// last renewal, busy: in flight or waiting to retry).
pub fn due(
    nodes: &[(usize, Option<Instant>, bool)],
    now: Instant,
    interval: Duration,
    slots: usize,
) -> Vec<usize> {
    let mut due: Vec<(Option<Instant>, usize)> = nodes
        .iter()
        .filter(|(_, last, in_flight)| {
            !*in_flight && last.is_none_or(|t| now.saturating_duration_since(t) >= interval)
        })
        .map(|(i, last, _)| (*last, *i))
        .collect();
    // `None` (never renewed here) sorts first, then the oldest renewal.
    due.sort();
    due.into_iter().take(slots).map(|(_, i)| i).collect()
}

/// Seconds since the least recent renewal among `nodes` (those never renewed here are not
/// counted: they go first anyway), 0 when there is none (pure).
pub fn oldest_renewal(nodes: &[(usize, Option<Instant>, bool)], now: Instant) -> f64 {
    nodes
        .iter()
        .filter_map(|(_, last, _)| *last)
        .min()
        .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64())
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Renews (or creates) the node's Lease in kube-node-lease: one write.
pub async fn renew(hub: &Hub, node: &str) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(hub.heartbeat.clone(), NODE_LEASE_NAMESPACE);
    let now = MicroTime(jiff::Timestamp::now());
    let patch = json!({"spec": {
        "holderIdentity": node,
        "leaseDurationSeconds": NODE_LEASE_SECONDS,
        "renewTime": now,
    }});
    match api.patch(node, &params(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node.into()),
                    namespace: Some(NODE_LEASE_NAMESPACE.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(node.into()),
                    lease_duration_seconds: Some(NODE_LEASE_SECONDS),
                    renew_time: Some(now.clone()),
                    acquire_time: Some(now),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// A node's first status report on this replica: its Lease is renewed at once, so the node is
/// healthy without waiting a tick (the renewer's bookkeeping is shared, so it is not renewed
/// twice). Later reports leave it to the renewer.
pub async fn renew_first(hub: &Arc<Hub>, session: &Arc<Session>) {
    {
        let mut state = lock(&session.lease);
        if state.renewed.is_some() || state.in_flight {
            return;
        }
        state.in_flight = true;
    }
    renew_one(hub.clone(), session.clone(), None).await;
}

async fn renew_one(
    hub: Arc<Hub>,
    session: Arc<Session>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let started = Instant::now();
    let result = tokio::time::timeout(RENEWAL_TIMEOUT, renew(&hub, &session.node)).await;
    let ok = matches!(result, Ok(Ok(())));
    let mut confirm = false;
    let first_failure = {
        let mut state = lock(&session.lease);
        state.in_flight = false;
        if ok {
            (confirm, state.confirm_at) = ready_due(state.confirm_at, state.renewed, started);
            state.renewed = Some(started);
            state.retry_at = None;
            state.failures = 0;
            false
        } else {
            state.retry_at = Some(Instant::now() + RETRY_AFTER);
            state.failures += 1;
            state.failures == 1
        }
    };
    drop(permit);
    let label = if ok { "ok" } else { "failed" };
    hub.metrics.lease_renewals.with_label_values(&[label]).inc();
    if ok {
        if confirm {
            let result = confirm_ready(&hub, &session.node).await;
            lock(&session.lease).confirm_at = after_confirm(result.is_ok(), started);
            if let Err(e) = result {
                hub.metrics
                    .ready_reassertions
                    .with_label_values(&["failed"])
                    .inc();
                hub.metrics
                    .api_errors
                    .with_label_values(&["confirm_ready"])
                    .inc();
                tracing::warn!(node = %session.node, error = %e, "re-asserting Ready; retrying");
            }
        }
        return;
    }
    hub.metrics
        .api_errors
        .with_label_values(&["renew_lease"])
        .inc();
    let error = match result {
        Ok(Err(e)) => e.to_string(),
        _ => format!("no answer within {RENEWAL_TIMEOUT:?}"),
    };
    if first_failure {
        tracing::warn!(node = %session.node, %error, "lease renewal failed; retrying every second");
    } else {
        tracing::debug!(node = %session.node, %error, "lease renewal failed again");
    }
}

/// Sets the node's Ready condition (the session lives) with a fresh heartbeat, unless it is
/// Ready already. The check is a read from the API server's watch cache (no etcd, no write):
/// after a ramp of 10,000 sessions, 10,000 re-assertions as writes would compete with the Lease
/// renewals themselves, and nearly every node is Ready.
async fn confirm_ready(hub: &Hub, node: &str) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(hub.heartbeat.clone());
    let bounded =
        |what| kube::Error::Service(format!("{what}: no answer within {RENEWAL_TIMEOUT:?}").into());
    let current = tokio::time::timeout(RENEWAL_TIMEOUT, api.get_with(node, &GetParams::any()))
        .await
        .map_err(|_| bounded("reading the node"))??;
    if edgefleet_kit::nodes::is_ready(&current) {
        hub.metrics
            .ready_reassertions
            .with_label_values(&["already_ready"])
            .inc();
        return Ok(());
    }
    let now = jiff::Timestamp::now().to_string();
    let patch = json!({"status": {"conditions": [{
        "type": "Ready",
        "status": "True",
        "reason": "EdgeSessionReady",
        "message": "edge node connected to the hub",
        "lastHeartbeatTime": now,
    }]}});
    tokio::time::timeout(
        RENEWAL_TIMEOUT,
        api.patch_status(node, &params(), &Patch::Strategic(patch)),
    )
    .await
    .map_err(|_| bounded("re-asserting Ready"))??;
    hub.metrics
        .ready_reassertions
        .with_label_values(&["written"])
        .inc();
    Ok(())
}

/// Renews the Leases of the heartbeating nodes whose sessions live here, until shutdown. A node
/// whose session is gone is not renewed: the node-lifecycle controller marks it NotReady.
pub async fn run(hub: Arc<Hub>) {
    let budget = Arc::new(Semaphore::new(hub.config.lease_renewals_in_flight.max(1)));
    let interval = hub.config.lease_renew_interval;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let slots = budget.available_permits();
        let sessions: Vec<Arc<Session>> = hub
            .registry
            .all()
            .into_iter()
            .filter(|s| s.heartbeat.load(Ordering::Relaxed))
            .collect();
        let now = Instant::now();
        let states: Vec<(usize, Option<Instant>, bool)> = sessions
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let st = lock(&s.lease);
                let waiting = st.retry_at.is_some_and(|t| now < t);
                (i, st.renewed, st.in_flight || waiting)
            })
            .collect();
        hub.metrics
            .lease_oldest_renewal
            .set(oldest_renewal(&states, now));
        for i in due(&states, now, interval, slots) {
            let Some(session) = sessions.get(i) else {
                continue;
            };
            let Ok(permit) = budget.clone().try_acquire_owned() else {
                break;
            };
            lock(&session.lease).in_flight = true;
            tokio::spawn(renew_one(hub.clone(), session.clone(), Some(permit)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_reasserted_after_the_first_renewal_and_after_a_lapse() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // (case, schedule, previous renewal, this renewal, re-assert now?, next due)
        #[rustfmt::skip]
        let cases = [
            ("the session's first renewal", None, None, at(0), false, Some(at(60))),
            ("before it is due", Some(at(60)), Some(at(40)), at(50), false, Some(at(60))),
            ("due", Some(at(60)), Some(at(50)), at(60), true, None),
            ("overdue", Some(at(60)), Some(at(55)), at(65), true, None),
            ("nothing due", None, Some(at(90)), at(100), false, None),
            ("a renewal 30 s late", None, Some(at(70)), at(100), false, Some(at(120))),
            ("a lapse when one is due sooner", Some(at(110)), Some(at(70)), at(100), false, Some(at(110))),
            ("a lapse when one is due later", Some(at(200)), Some(at(70)), at(100), false, Some(at(120))),
            ("due and lapsed", Some(at(100)), Some(at(60)), at(100), true, None),
            ("29 s is no lapse", None, Some(at(71)), at(100), false, None),
        ];
        for (case, schedule, previous, now, confirm, next) in cases {
            assert_eq!(
                ready_due(schedule, previous, now),
                (confirm, next),
                "{case}"
            );
        }
        assert_eq!(after_confirm(true, at(60)), None, "done");
        assert_eq!(
            after_confirm(false, at(60)),
            Some(at(70)),
            "failed: with the next renewal"
        );
    }

    #[test]
    fn the_never_renewed_then_the_oldest_go_first_within_the_budget() {
        let now = Instant::now();
        let ago = |s: u64| Some(now - Duration::from_secs(s));
        let interval = Duration::from_secs(10);
        let nodes = [
            (0, ago(12), false),
            (1, ago(3), false),  // not due
            (2, None, false),    // never renewed here
            (3, ago(30), false), // the most overdue
            (4, None, true),     // in flight
            (5, ago(10), false), // just due
        ];
        assert_eq!(due(&nodes, now, interval, 10), vec![2, 3, 0, 5]);
        assert_eq!(due(&nodes, now, interval, 2), vec![2, 3]);
        assert!(due(&nodes, now, interval, 0).is_empty());
    }

    #[test]
    fn the_oldest_renewal_is_the_least_recent_one_renewed_here() {
        let now = Instant::now();
        let ago = |s: u64| Some(now - Duration::from_secs(s));
        assert_eq!(oldest_renewal(&[], now), 0.0);
        assert_eq!(oldest_renewal(&[(0, None, false)], now), 0.0);
        let nodes = [(0, ago(3), false), (1, None, false), (2, ago(31), true)];
        assert_eq!(oldest_renewal(&nodes, now), 31.0);
    }
}
