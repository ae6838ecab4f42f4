//! The replica's shared state: configuration, the session registry (one live session per node),
//! the caches, the metrics. Locks here are `std` mutexes held for a few map operations and never
//! across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cache::Caches;
use crate::identity::Ca;
use crate::lease::LeaseState;
pub use crate::lock;
use crate::metrics::HubMetrics;
use crate::queue::{NodeQueue, Op, Pushed};
use crate::status::StatusBoard;
use crate::wire::Delivery;

/// Settings of one replica.
#[derive(Clone, Debug)]
pub struct Config {
    /// The hub's own namespace: CA and token Secrets, load report ConfigMap.
    pub namespace: String,
    /// This replica's name (pod name) in its load report.
    pub identity: String,
    /// Sessions accepted before refusing with 503 + Retry-After.
    pub max_sessions: usize,
    /// Messages in flight per session.
    pub window: usize,
    /// Base of the jittered Retry-After / reconnect hint, seconds.
    pub retry_after_seconds: u64,
    /// How often the Leases of heartbeating nodes are renewed.
    pub lease_renew_interval: Duration,
    /// Lease renewals in flight at most.
    pub lease_renewals_in_flight: usize,
    /// How often the load report is rewritten.
    pub report_interval: Duration,
    /// Device report coalescing and writes.
    pub devices: crate::device::Settings,
}

/// One live session's state shared between its connection task and the watchers that queue.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub node: String,
    pub queue: Mutex<NodeQueue<Delivery>>,
    /// Wakes the connection task: something was queued.
    pub wake: Notify,
    /// Tripped to close the session; the reason is in `close_reason`.
    pub close: CancellationToken,
    pub close_reason: Mutex<Option<(u16, String)>>,
    /// The node reported its status: renew its Lease while the session lives.
    pub heartbeat: AtomicBool,
    /// When this replica last renewed the node's Lease.
    pub lease: Mutex<LeaseState>,
    /// Edge → cloud requests of this session being handled right now.
    pub edge_requests: AtomicUsize,
    /// Device reports of this session waiting for their status write.
    pub device_reports: AtomicUsize,
    /// Devices the edge ACKed, by UID: their content version (module `device::delivery`).
    pub delivered_devices: Mutex<HashMap<String, String>>,
    depth: AtomicUsize,
}

impl Session {
    pub fn new(id: u64, node: &str, window: usize) -> Self {
        let prefix = uuid::Uuid::new_v4().simple().to_string();
        Session {
            id,
            node: node.to_string(),
            queue: Mutex::new(NodeQueue::new(window, &prefix[..12])),
            wake: Notify::new(),
            close: CancellationToken::new(),
            close_reason: Mutex::new(None),
            heartbeat: AtomicBool::new(false),
            lease: Mutex::new(LeaseState::default()),
            edge_requests: AtomicUsize::new(0),
            device_reports: AtomicUsize::new(0),
            delivered_devices: Mutex::new(HashMap::new()),
            depth: AtomicUsize::new(0),
        }
    }

    /// Queues a delivery; wakes the connection task when there is something new to send.
    pub fn push(
        &self,
        metrics: &HubMetrics,
        uid: &str,
        op: Op,
        rv: &str,
        delivery: Delivery,
    ) -> Pushed {
        let pushed = {
            let mut q = lock(&self.queue);
            let pushed = q.push(uid, op, rv, delivery, Instant::now());
            self.track_depth(metrics, q.depth());
            pushed
        };
        match pushed {
            Pushed::Queued => self.wake.notify_one(),
            Pushed::Superseded => {
                metrics.superseded.inc();
                self.wake.notify_one();
            }
            Pushed::Duplicate | Pushed::Stale => {}
        }
        pushed
    }

    /// Keeps the replica-wide queue depth gauge in step with this queue.
    pub fn track_depth(&self, metrics: &HubMetrics, depth: usize) {
        let prev = self.depth.swap(depth, Ordering::Relaxed);
        metrics
            .queue_depth
            .add(i64::try_from(depth).unwrap_or(0) - i64::try_from(prev).unwrap_or(0));
    }

    /// Asks the connection task to close with `code` and `reason`.
    pub fn request_close(&self, code: u16, reason: String) {
        *lock(&self.close_reason) = Some((code, reason));
        self.close.cancel();
    }
}

/// The sessions this replica holds, by node. At most one per node.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl Registry {
    /// Registers `session` as its node's live session; returns the one it replaces.
    pub fn insert(&self, session: Arc<Session>) -> Option<Arc<Session>> {
        lock(&self.sessions).insert(session.node.clone(), session)
    }

    /// Removes the node's entry only if it is still `session` (a replaced session ending late
    /// must not remove its successor — KubeEdge #4070).
    pub fn remove(&self, session: &Session) -> bool {
        let mut map = lock(&self.sessions);
        if map.get(&session.node).is_some_and(|s| s.id == session.id) {
            map.remove(&session.node);
            true
        } else {
            false
        }
    }

    pub fn get(&self, node: &str) -> Option<Arc<Session>> {
        lock(&self.sessions).get(node).cloned()
    }

    pub fn contains(&self, node: &str) -> bool {
        lock(&self.sessions).contains_key(node)
    }

    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of every live session.
    pub fn all(&self) -> Vec<Arc<Session>> {
        lock(&self.sessions).values().cloned().collect()
    }
}

/// Everything a replica shares between its tasks.
pub struct Hub {
    pub config: Config,
    pub client: Client,
    /// Node Lease renewals and Ready checks only: a connection of their own, so a flood of other
    /// requests (a ramp's registrations, status writes) never queues them.
    pub heartbeat: Client,
    pub metrics: HubMetrics,
    pub registry: Registry,
    pub caches: Arc<Caches>,
    /// ACKs, give-ups and edge deletes waiting for the status writer.
    pub status: Arc<StatusBoard>,
    pub ca: Ca,
    /// Sessions accepted (upgrade answered) and not yet ended; checked against capacity.
    pub connections: AtomicUsize,
    pub shutdown: CancellationToken,
    /// Device reports waiting for their status write.
    pub devices: crate::device::Devices,
    next_session: AtomicU64,
}

impl Hub {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        client: Client,
        heartbeat: Client,
        metrics: HubMetrics,
        caches: Arc<Caches>,
        status: Arc<StatusBoard>,
        ca: Ca,
        shutdown: CancellationToken,
    ) -> Self {
        let devices = crate::device::Devices::new(config.devices.clone());
        Hub {
            config,
            client,
            heartbeat,
            metrics,
            registry: Registry::default(),
            caches,
            status,
            ca,
            connections: AtomicUsize::new(0),
            shutdown,
            devices,
            next_session: AtomicU64::new(1),
        }
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// A retry hint around the configured base, jittered ±50% so refused nodes spread out.
    pub fn jittered_retry(&self) -> Duration {
        jitter(self.config.retry_after_seconds)
    }
}

/// The client for the hub's own reads of one Secret (CA, bootstrap token).
pub fn secrets(client: &Client, namespace: &str) -> kube::Api<k8s_openapi::api::core::v1::Secret> {
    kube::Api::namespaced(client.clone(), namespace)
}

/// `base` seconds ±50% (at least 1 s), random.
pub fn jitter(base: u64) -> Duration {
    let base = base.max(1);
    let span = base; // base/2 .. base*3/2
    let r = u64::try_from(uuid::Uuid::new_v4().as_u128() % u128::from(span + 1)).unwrap_or(0);
    Duration::from_secs((base / 2 + r).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_session_ending_late_keeps_its_successor() {
        let reg = Registry::default();
        let old = Arc::new(Session::new(1, "edge-1", 4));
        let new = Arc::new(Session::new(2, "edge-1", 4));
        assert!(reg.insert(old.clone()).is_none());
        let replaced = reg.insert(new.clone()).unwrap();
        assert_eq!(replaced.id, 1);
        assert!(
            !reg.remove(&old),
            "old session's cleanup leaves the new one"
        );
        assert_eq!(reg.get("edge-1").unwrap().id, 2);
        assert!(reg.remove(&new));
        assert!(reg.is_empty());
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..200 {
            let d = jitter(10).as_secs();
            assert!((5..=15).contains(&d), "{d}");
        }
        assert!(jitter(0).as_secs() >= 1);
    }
}
