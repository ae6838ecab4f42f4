//! Wiring: the watches fill the index and queue the nodes each change affects; workers take
//! one node at a time: read (the index) → plan (pure, [`crate::plan`]) → act
//! ([`crate::act`]); a census refreshes the gauges.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use edgefleet_api::devices::{Device, DeviceModel};
use edgefleet_api::objectsync::ObjectSync;
use edgefleet_kit::ReconcileMetrics;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Node, ObjectReference, Pod, Secret};
use kube::api::Api;
use kube::core::{NamespaceResourceScope, PartialObjectMeta};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::act::{self, Done};
use crate::error::{Error, Result};
use crate::index::{Index, NodeState, Touched};
use crate::metrics::SyncMetrics;
use crate::plan::{self, Freshness, Window};
use crate::queue::Queue;
use crate::watch::{self, Table};

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// What to watch (`--watch-namespace`, [`edgefleet_kit::CommonArgs::watch_scopes`]): `[None]`
    /// for every namespace, else one watch per namespace; nodes are cluster-wide.
    pub scopes: Vec<Option<String>>,
    pub window: Window,
    /// Nodes reconciled concurrently.
    pub workers: usize,
    /// Writes in flight per node.
    pub writes_per_node: usize,
}

/// State shared by the watches and the workers.
pub struct Shared {
    index: Mutex<Index>,
    queue: Queue,
    /// (table, scope) of every watch that listed once.
    synced: tokio::sync::watch::Sender<Vec<(Table, Option<String>)>>,
    failures: Mutex<HashMap<String, u32>>,
    /// Syncs a warning about unordered versions was published for (once per process).
    warned: Mutex<HashSet<(String, String)>>,
    window: Window,
    pub metrics: SyncMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub fn new(window: Window, metrics: SyncMetrics) -> Self {
        Self {
            index: Mutex::new(Index::new()),
            queue: Queue::new(),
            synced: tokio::sync::watch::Sender::new(Vec::new()),
            failures: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
            window,
            metrics,
        }
    }

    pub fn lock_index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    /// Queues the touched nodes: `now` ones at once, `later` ones just after the resend
    /// window (a version change the hub delivers by itself; checked once it had its chance).
    pub fn enqueue(&self, touched: &Touched) {
        for node in &touched.now {
            self.queue.add(node);
        }
        if !touched.later.is_empty() {
            let at = Instant::now() + self.window.resend + Duration::from_secs(1);
            for node in &touched.later {
                self.queue.add_at(node, at);
            }
        }
    }

    pub fn mark_synced(&self, table: Table, scope: Option<String>) {
        self.synced.send_if_modified(|tables| {
            let key = (table, scope);
            if tables.contains(&key) {
                return false;
            }
            tracing::info!(table = key.0.name(), namespace = ?key.1, "cache synced");
            tables.push(key);
            true
        });
    }

    /// Until every table listed once in every scope (nodes: cluster-wide only).
    async fn wait_synced(&self, scopes: &[Option<String>]) {
        let mut rx = self.synced.subscribe();
        let _ = rx
            .wait_for(|tables| {
                Table::ALL.iter().all(|t| {
                    if *t == Table::Nodes {
                        return tables.contains(&(*t, None));
                    }
                    scopes.iter().all(|s| tables.contains(&(*t, s.clone())))
                })
            })
            .await;
    }
}

fn namespaced<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn stream<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    <K as Resource>::DynamicType: Default + Clone + Eq + std::hash::Hash,
{
    watcher(api, config).default_backoff()
}

/// Runs the watches, the workers and the census until `shutdown` trips.
pub async fn run(
    client: Client,
    config: Config,
    metrics: ReconcileMetrics,
    sync_metrics: SyncMetrics,
    recorder: Recorder,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared::new(config.window, sync_metrics));
    let default = watcher::Config::default;

    // One watch per table and scope, every one feeding the one index.
    let mut watches: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>> = Vec::new();
    for scope in &config.scopes {
        let ns = scope;
        let s = || scope.clone();
        watches.push(Box::pin(watch::drive(
            Table::Pods,
            s(),
            // Only pods bound to a node matter.
            stream(
                namespaced::<Pod>(&client, ns),
                default().fields("spec.nodeName!="),
            ),
            watch::pod_entry,
            shared.clone(),
        )));
        watches.push(Box::pin(watch::drive(
            Table::ConfigMaps,
            s(),
            stream(
                namespaced::<PartialObjectMeta<ConfigMap>>(&client, ns),
                default(),
            ),
            watch::meta_entry,
            shared.clone(),
        )));
        watches.push(Box::pin(watch::drive(
            Table::Secrets,
            s(),
            stream(
                namespaced::<PartialObjectMeta<Secret>>(&client, ns),
                default(),
            ),
            watch::meta_entry,
            shared.clone(),
        )));
        watches.push(Box::pin(watch::drive(
            Table::Devices,
            s(),
            stream(namespaced::<Device>(&client, ns), default()),
            watch::device_entry,
            shared.clone(),
        )));
        watches.push(Box::pin(watch::drive(
            Table::DeviceModels,
            s(),
            stream(
                namespaced::<PartialObjectMeta<DeviceModel>>(&client, ns),
                default(),
            ),
            watch::meta_entry,
            shared.clone(),
        )));
        watches.push(Box::pin(watch::drive(
            Table::Syncs,
            s(),
            stream(namespaced::<ObjectSync>(&client, ns), default()),
            watch::sync_entry,
            shared.clone(),
        )));
    }
    watches.push(Box::pin(watch::drive(
        Table::Nodes,
        None,
        stream(
            Api::<PartialObjectMeta<Node>>::all(client.clone()),
            default(),
        ),
        watch::node_entry,
        shared.clone(),
    )));
    let watches = futures::future::join_all(watches);

    let ctx = Worker {
        client: client.clone(),
        shared: shared.clone(),
        metrics,
        recorder,
        writes_per_node: config.writes_per_node.max(1),
    };
    let workers = async {
        // Decisions made from half-filled caches would delete syncs that are needed.
        shared.wait_synced(&config.scopes).await;
        let known = shared.lock_index().known_nodes();
        tracing::info!(nodes = known.len(), "caches synced; reconciling nodes");
        for node in &known {
            shared.queue.add(node);
        }
        let workers = (0..config.workers.max(1)).map(|_| ctx.work());
        futures::future::join_all(workers).await;
    };

    let census = async {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            census(&shared);
        }
    };

    tokio::select! {
        _ = watches => tracing::warn!("watches ended"),
        () = workers => tracing::warn!("workers ended"),
        () = census => {},
        () = shutdown.cancelled() => {},
    }
}

/// Counts every sync by state for the gauges: O(syncs) every 10 s, never per event.
fn census(shared: &Shared) {
    let now = Timestamp::now();
    let mut counts: HashMap<&'static str, i64> = HashMap::new();
    {
        let index = shared.lock_index();
        for s in index.all_syncs() {
            let state = if s.deleting {
                "deleting"
            } else {
                match index.live_of(s) {
                    None => "untracked",
                    Some(live) => match plan::freshness_of(s, live) {
                        Freshness::Acked => "delivered",
                        Freshness::Unordered => "unordered",
                        Freshness::Trailing if plan::is_stale(s, live, now, shared.window) => {
                            "stale"
                        }
                        Freshness::Trailing => "pending",
                    },
                }
            };
            *counts.entry(state).or_default() += 1;
        }
    }
    let m = &shared.metrics;
    for state in crate::metrics::STATES {
        m.syncs
            .with_label_values(&[state])
            .set(counts.get(state).copied().unwrap_or(0));
    }
    m.stale.set(counts.get("stale").copied().unwrap_or(0));
    m.queue_depth
        .set(i64::try_from(shared.queue.depth()).unwrap_or(i64::MAX));
    m.scheduled
        .set(i64::try_from(shared.queue.scheduled()).unwrap_or(i64::MAX));
}

/// The longest one node's reconcile may take. The client has no read timeout (watches stream
/// for minutes), so a request the API server never answers would otherwise stall a worker.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);

struct Worker {
    client: Client,
    shared: Arc<Shared>,
    metrics: ReconcileMetrics,
    recorder: Recorder,
    writes_per_node: usize,
}

impl Worker {
    async fn work(&self) {
        loop {
            let node = self.shared.queue.next().await;
            let outcome = tokio::time::timeout(RECONCILE_TIMEOUT, self.reconcile(&node))
                .await
                .unwrap_or(Err(Error::Timeout(RECONCILE_TIMEOUT)));
            match outcome {
                Ok(()) => {
                    lock(&self.shared.failures).remove(&node);
                }
                Err(error) => {
                    self.metrics.reconcile_failed(&error);
                    let n = {
                        let mut failures = lock(&self.shared.failures);
                        let n = failures.entry(node.clone()).or_default();
                        *n = n.saturating_add(1);
                        *n
                    };
                    let backoff = Duration::from_millis(500)
                        .saturating_mul(1 << n.min(7))
                        .min(Duration::from_secs(60));
                    tracing::warn!(%node, %error, retry_in = ?backoff, "reconcile failed");
                    self.shared.queue.add_at(&node, Instant::now() + backoff);
                }
            }
            self.shared.queue.done(&node);
        }
    }

    #[tracing::instrument(skip(self), fields(node = %node))]
    async fn reconcile(&self, node: &str) -> Result<()> {
        let _timer = self.metrics.reconcile_started();
        let (state, desired, syncs) = {
            let index = self.shared.lock_index();
            (
                index.node_state(node),
                index.desired(node),
                index.syncs_of(node),
            )
        };
        let now = Timestamp::now();
        let plan = plan::plan(node, state, &desired, &syncs, now, self.shared.window);
        if !plan.actions.is_empty() {
            tracing::debug!(
                ?state,
                desired = desired.len(),
                syncs = syncs.len(),
                actions = plan.actions.len(),
                "acting"
            );
        }

        for name in &plan.unordered {
            if let Some(s) = syncs.iter().find(|s| &s.name == name) {
                self.warn_unordered(s).await;
            }
        }

        let results: Vec<Result<Done>> = futures::stream::iter(&plan.actions)
            .map(|a| async move {
                let done = act::run(&self.client, a).await;
                if let (
                    Ok(Done::Resynced),
                    plan::Action::Resync {
                        namespace,
                        name,
                        at,
                    },
                ) = (&done, a)
                {
                    self.shared
                        .lock_index()
                        .note_resync(&(namespace.clone(), name.clone()), *at);
                }
                done
            })
            .buffer_unordered(self.writes_per_node)
            .collect()
            .await;
        let total = results.len();
        let mut released = 0;
        let mut errors = Vec::new();
        for r in results {
            let m = &self.shared.metrics;
            match r {
                Ok(Done::Created) => m.created.inc(),
                Ok(Done::Adopted) => m.adopted.inc(),
                Ok(Done::Deleted) => m.gc.with_label_values(&["not_needed"]).inc(),
                Ok(Done::Released) => {
                    released += 1;
                    m.gc.with_label_values(&["node_gone"]).inc();
                }
                Ok(Done::Resynced) => m.resyncs.inc(),
                Ok(Done::Nothing) => {}
                Err(e) => errors.push(e),
            }
        }
        if state == NodeState::Gone && released > 0 {
            self.node_gone_event(node, released).await;
        }
        if let Some(at) = plan.recheck_at {
            let wait =
                Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO);
            self.shared.queue.add_at(node, Instant::now() + wait);
        }
        let failed = errors.len();
        match errors.into_iter().next() {
            None => Ok(()),
            Some(first) => Err(Error::Writes {
                node: node.to_owned(),
                failed,
                total,
                first: Box::new(first),
            }),
        }
    }

    async fn node_gone_event(&self, node: &str, released: usize) {
        let event = Event {
            type_: EventType::Normal,
            reason: "SyncsReleased".into(),
            note: Some(format!(
                "node {node} is gone: removed {released} ObjectSync(s) and their edge-delete finalizers"
            )),
            action: "GarbageCollect".into(),
            secondary: None,
        };
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_owned()),
            ..ObjectReference::default()
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, "could not publish event");
        }
    }

    async fn warn_unordered(&self, sync: &crate::index::SyncEntry) {
        let first = lock(&self.shared.warned).insert((sync.namespace.clone(), sync.name.clone()));
        if !first {
            return;
        }
        let event = Event {
            type_: EventType::Warning,
            reason: "UnorderedResourceVersions".into(),
            note: Some(format!(
                "acked resourceVersion {:?} and the live object's cannot be ordered; no resync is requested for it",
                sync.acked.as_deref().unwrap_or_default()
            )),
            action: "Resync".into(),
            secondary: None,
        };
        let reference = ObjectReference {
            api_version: Some("reliablesyncs.kubeedge.io/v1alpha1".into()),
            kind: Some("ObjectSync".into()),
            name: Some(sync.name.clone()),
            namespace: Some(sync.namespace.clone()),
            ..ObjectReference::default()
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, "could not publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Live, NodeEntry, PodEntry, SyncEntry};
    use crate::refs::Kind;

    fn window() -> Window {
        Window {
            resend: Duration::from_secs(30),
            max_backoff: Duration::from_secs(600),
        }
    }

    fn sync(uid: &str, acked: Option<&str>, created_ago: i64, deleting: bool) -> SyncEntry {
        let now = Timestamp::now();
        SyncEntry {
            namespace: "ns".into(),
            name: format!("a.{uid}"),
            node: "a".into(),
            uid: uid.into(),
            kind: Some(Kind::Pod),
            object_name: uid.into(),
            acked: acked.map(Into::into),
            acked_content: None,
            last_attempt: None,
            created: Some(now - jiff::SignedDuration::from_secs(created_ago)),
            resync_requested: None,
            deleting,
            finalizers: vec![plan::FINALIZER.into()],
            adopted: true,
        }
    }

    #[test]
    fn the_census_counts_syncs_by_state() {
        let registry = prometheus::Registry::new();
        let shared = Shared::new(window(), SyncMetrics::register(&registry).unwrap());
        {
            let mut index = shared.lock_index();
            index.set_node("a", Some(NodeEntry { edge: true }));
            let long_ago = Timestamp::now() - jiff::SignedDuration::from_secs(3600);
            for (uid, rv) in [("p1", "5"), ("p2", "5"), ("p3", "5"), ("p4", "x")] {
                index.set_pod(
                    ("ns".into(), uid.into()),
                    Some(PodEntry {
                        live: Live {
                            uid: uid.into(),
                            rv: rv.into(),
                            content: None,
                            changed: long_ago,
                        },
                        node: "a".into(),
                        refs: vec![],
                    }),
                );
            }
            for s in [
                sync("p1", Some("5"), 100, false), // delivered
                sync("p2", Some("4"), 5, false),   // pending: within the window
                sync("p3", None, 100, false),      // stale
                sync("p4", Some("y"), 100, false), // unordered
                sync("gone", None, 100, false),    // untracked
                sync("p5", None, 100, true),       // deleting
            ] {
                index.set_sync(("ns".into(), s.name.clone()), Some(s));
            }
        }
        census(&shared);
        let m = &shared.metrics;
        for (state, n) in [
            ("delivered", 1),
            ("pending", 1),
            ("stale", 1),
            ("unordered", 1),
            ("untracked", 1),
            ("deleting", 1),
        ] {
            assert_eq!(m.syncs.with_label_values(&[state]).get(), n, "{state}");
        }
        assert_eq!(m.stale.get(), 1);
    }
}
