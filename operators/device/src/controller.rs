//! Wiring: three watches (Devices, DeviceModels, Nodes) fill the [`Index`] and queue the
//! [`Work`] each change calls for; workers take one Device or model at a time: read (the
//! index) → plan (pure, [`crate::plan`]) → act ([`crate::act`]); a census refreshes the gauges.
//!
//! Nothing is decided before all three watches have listed once: a Device seen before its
//! model would otherwise be reported `ModelNotFound` for a moment (and warned about).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use edgefleet_api::devices::{Device, DeviceModel, PropertySyncState};
use edgefleet_kit::ReconcileMetrics;
use futures::{FutureExt, Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::events::Recorder;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::act;
use crate::error::Result;
use crate::index::{Index, Key, Work};
use crate::metrics::DeviceMetrics;
use crate::plan::{self, MODEL_GENERATION_ANNOTATION};
use crate::sync::Staleness;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// A watch per entry (`--watch-namespace`, a list; `None`: every namespace), so a
    /// namespaced install needs no cluster-wide rights on Devices; nodes are cluster-wide.
    pub scopes: Vec<Option<String>>,
    pub staleness: Staleness,
    pub workers: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A de-duplicating work queue: an item queued twice is taken once, and an item queued while
/// a worker holds it is taken again after that worker is done (never by two at once).
#[derive(Default)]
pub struct Queue {
    state: Mutex<QueueState>,
    notify: Notify,
}

#[derive(Default)]
struct QueueState {
    pending: VecDeque<Work>,
    queued: HashSet<Work>,
    running: HashSet<Work>,
    dirty: HashSet<Work>,
}

impl Queue {
    pub fn push(&self, work: Work) {
        let mut s = lock(&self.state);
        if s.running.contains(&work) {
            s.dirty.insert(work);
        } else if s.queued.insert(work.clone()) {
            s.pending.push_back(work);
            self.notify.notify_one();
        }
    }

    pub async fn pop(&self) -> Work {
        loop {
            {
                let mut s = lock(&self.state);
                if let Some(work) = s.pending.pop_front() {
                    s.queued.remove(&work);
                    s.running.insert(work.clone());
                    return work;
                }
            }
            self.notify.notified().await;
        }
    }

    pub fn done(&self, work: &Work) {
        let again = {
            let mut s = lock(&self.state);
            s.running.remove(work);
            s.dirty.remove(work)
        };
        if again {
            self.push(work.clone());
        }
    }
}

/// What a Device's last reconcile found, for the census.
#[derive(Debug, Clone)]
struct Outcome {
    valid: bool,
    online: &'static str,
    states: Vec<PropertySyncState>,
}

/// State shared by the watches and the workers.
pub struct Shared {
    index: Mutex<Index>,
    queue: Queue,
    /// Watches that finished their first list.
    synced: tokio::sync::watch::Sender<usize>,
    /// The last warning message published per Device / model (the cache may lag our own
    /// status write: this keeps a warning to one per change).
    warned: Mutex<HashMap<Work, String>>,
    outcomes: Mutex<HashMap<Key, Outcome>>,
    /// Rechecks scheduled (a property going Stale), earliest per item.
    timers: Mutex<HashMap<Work, Timestamp>>,
}

impl Shared {
    fn new() -> Self {
        Self {
            index: Mutex::new(Index::new()),
            queue: Queue::default(),
            synced: tokio::sync::watch::Sender::new(0),
            warned: Mutex::new(HashMap::new()),
            outcomes: Mutex::new(HashMap::new()),
            timers: Mutex::new(HashMap::new()),
        }
    }

    fn queue_all(&self, work: Vec<Work>) {
        for w in work {
            self.queue.push(w);
        }
    }

    /// Looks at `work` again at `at` (unless an earlier look is already planned).
    fn recheck(self: &Arc<Self>, work: Work, at: Timestamp) {
        {
            let mut timers = lock(&self.timers);
            if timers.get(&work).is_some_and(|t| *t <= at) {
                return;
            }
            timers.insert(work.clone(), at);
        }
        let shared = self.clone();
        tokio::spawn(async move {
            let wait = Timestamp::now().duration_until(at).unsigned_abs();
            tokio::time::sleep(wait + Duration::from_millis(50)).await;
            let due = {
                let mut timers = lock(&shared.timers);
                let due = timers.get(&work) == Some(&at);
                if due {
                    timers.remove(&work);
                }
                due
            };
            if due {
                shared.queue.push(work);
            }
        });
    }
}

fn key_of<K: ResourceExt>(obj: &K) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

/// One table of the index and how an object is set into it.
trait Table: Clone + Debug + Send + 'static {
    fn key(&self) -> Key;
    fn set(index: &mut Index, key: Key, obj: Option<Self>) -> Vec<Work>;
    fn keys(index: &Index) -> Vec<Key>;
}

impl Table for Device {
    fn key(&self) -> Key {
        key_of(self)
    }
    fn set(index: &mut Index, key: Key, obj: Option<Self>) -> Vec<Work> {
        index.set_device(key, obj)
    }
    fn keys(index: &Index) -> Vec<Key> {
        index.device_keys()
    }
}

impl Table for DeviceModel {
    fn key(&self) -> Key {
        key_of(self)
    }
    fn set(index: &mut Index, key: Key, obj: Option<Self>) -> Vec<Work> {
        index.set_model(key, obj)
    }
    fn keys(index: &Index) -> Vec<Key> {
        index.model_keys()
    }
}

impl Table for Node {
    fn key(&self) -> Key {
        (String::new(), self.name_any())
    }
    fn set(index: &mut Index, key: Key, obj: Option<Self>) -> Vec<Work> {
        index.set_node(&key.1, obj.as_ref().map(edgefleet_kit::nodes::is_ready))
    }
    fn keys(index: &Index) -> Vec<Key> {
        index
            .node_names()
            .into_iter()
            .map(|n| (String::new(), n))
            .collect()
    }
}

/// Feeds one watch (of `scope`: one namespace, or all) into the index. A relist is applied as
/// it arrives and, once done, objects of its scope it did not contain count as deleted.
async fn drive<K: Table>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    scope: Option<String>,
    shared: Arc<Shared>,
) {
    let mut stream = std::pin::pin!(stream);
    let mut relist: Option<HashSet<Key>> = None;
    let mut first = true;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "watch error; retrying");
                continue;
            }
        };
        let mut index = lock(&shared.index);
        let work = match event {
            watcher::Event::Init => {
                relist = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
                let key = obj.key();
                if let Some(seen) = relist.as_mut() {
                    seen.insert(key.clone());
                }
                K::set(&mut index, key, Some(obj))
            }
            watcher::Event::Delete(obj) => K::set(&mut index, obj.key(), None),
            watcher::Event::InitDone => {
                let seen = relist.take().unwrap_or_default();
                let gone: Vec<Key> = K::keys(&index)
                    .into_iter()
                    .filter(|k| scope.as_ref().is_none_or(|ns| *ns == k.0))
                    .filter(|k| !seen.contains(k))
                    .collect();
                let mut work = Vec::new();
                for key in gone {
                    work.extend(K::set(&mut index, key, None));
                }
                if first {
                    first = false;
                    shared.synced.send_modify(|n| *n += 1);
                }
                work
            }
        };
        drop(index);
        shared.queue_all(work);
    }
}

fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

struct Worker {
    client: Client,
    shared: Arc<Shared>,
    metrics: ReconcileMetrics,
    device_metrics: DeviceMetrics,
    recorder: Recorder,
    staleness: Staleness,
}

impl Worker {
    async fn work(&self) {
        loop {
            let work = self.shared.queue.pop().await;
            let timer = self.metrics.reconcile_started();
            let result = match &work {
                Work::Device(key) => self.device(key).await,
                Work::Model(key) => self.model(key).await,
            };
            drop(timer);
            if let Err(e) = result {
                self.metrics.reconcile_failed(&e);
                tracing::warn!(error = %e, ?work, "reconcile failed; retrying in 5 s");
                let at = Timestamp::now()
                    .checked_add(jiff::SignedDuration::from_secs(5))
                    .unwrap_or_else(|_| Timestamp::now());
                self.shared.recheck(work.clone(), at);
            }
            self.shared.queue.done(&work);
        }
    }

    async fn device(&self, key: &Key) -> Result<()> {
        let now = Timestamp::now();
        let snapshot = {
            let index = lock(&self.shared.index);
            index.device(key).cloned().map(|d| {
                let model = index.model_of(&d).cloned();
                let session = d.node_name().and_then(|n| index.session(n));
                (d, model, session)
            })
        };
        let work = Work::Device(key.clone());
        let Some((device, model, session)) = snapshot else {
            lock(&self.shared.outcomes).remove(key);
            lock(&self.shared.warned).remove(&work);
            return Ok(());
        };
        let plan = plan::plan_device(&device, model.as_ref(), session, now, self.staleness);
        let api: Api<Device> = Api::namespaced(self.client.clone(), &key.0);
        if let Some(status) = &plan.status {
            act::apply_status(&api, &key.1, status).await?;
        }
        match &plan.warning {
            Some(w) => {
                let repeat = lock(&self.shared.warned).get(&work) == Some(&w.message);
                if !repeat {
                    act::warn(&self.recorder, "Device", &key.0, &key.1, device.uid(), w).await;
                    self.device_metrics
                        .warnings
                        .with_label_values(&[&w.reason])
                        .inc();
                    lock(&self.shared.warned).insert(work.clone(), w.message.clone());
                }
            }
            None if plan.valid => {
                lock(&self.shared.warned).remove(&work);
            }
            None => {}
        }
        // Last: once the annotation shows, this reconcile's status and event are done.
        if let Some(generation) = &plan.annotate {
            act::annotate(&api, &key.1, generation).await?;
            if device
                .annotations()
                .contains_key(MODEL_GENERATION_ANNOTATION)
            {
                self.device_metrics.redeliveries.inc();
                tracing::info!(device = %key.1, model_generation = %generation, "model changed; device re-delivered");
            }
        }
        let states = plan
            .status
            .as_ref()
            .map(|s| s.property_sync.iter().map(|p| p.state).collect())
            .unwrap_or_else(|| {
                device
                    .status
                    .as_ref()
                    .and_then(|s| s.property_sync.as_ref())
                    .map(|p| p.iter().map(|p| p.state).collect())
                    .unwrap_or_default()
            });
        lock(&self.shared.outcomes).insert(
            key.clone(),
            Outcome {
                valid: plan.valid,
                online: plan.online,
                states,
            },
        );
        if let Some(at) = plan.recheck_at {
            self.shared.recheck(work, at);
        }
        Ok(())
    }

    async fn model(&self, key: &Key) -> Result<()> {
        let snapshot = {
            let index = lock(&self.shared.index);
            index
                .model(key)
                .cloned()
                .map(|m| (m, index.devices_of(key)))
        };
        let work = Work::Model(key.clone());
        let Some((model, users)) = snapshot else {
            lock(&self.shared.warned).remove(&work);
            return Ok(());
        };
        let plan = plan::plan_model(&model, &users);
        let api: Api<DeviceModel> = Api::namespaced(self.client.clone(), &key.0);
        if let Some(hold) = plan.finalizer {
            act::set_finalizer(&api, &key.1, hold).await?;
        }
        if let Some(w) = &plan.in_use {
            let repeat = lock(&self.shared.warned).get(&work) == Some(&w.message);
            if !repeat {
                act::warn(
                    &self.recorder,
                    "DeviceModel",
                    &key.0,
                    &key.1,
                    model.uid(),
                    w,
                )
                .await;
                self.device_metrics
                    .warnings
                    .with_label_values(&[&w.reason])
                    .inc();
                lock(&self.shared.warned).insert(work, w.message.clone());
            }
        }
        Ok(())
    }
}

/// Runs the controller until `shutdown` (or until leadership is lost: the caller drops it).
pub async fn run(
    client: Client,
    config: Config,
    metrics: ReconcileMetrics,
    device_metrics: DeviceMetrics,
    recorder: Recorder,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared::new());
    let scopes = if config.scopes.is_empty() {
        vec![None]
    } else {
        config.scopes.clone()
    };
    // Devices and models per scope, plus nodes: the caches are synced when all have listed.
    let lists = 2 * scopes.len() + 1;
    let watches = async {
        let namespaced = scopes.iter().flat_map(|ns| {
            [
                drive(
                    watcher(api::<Device>(&client, ns), watcher::Config::default())
                        .default_backoff()
                        // Never read here; with two writers per Device (the hub's twins, this
                        // operator's conditions) most of what the index held per Device.
                        .modify(edgefleet_kit::forget_managed_fields),
                    ns.clone(),
                    shared.clone(),
                )
                .boxed(),
                drive(
                    watcher(api::<DeviceModel>(&client, ns), watcher::Config::default())
                        .default_backoff(),
                    ns.clone(),
                    shared.clone(),
                )
                .boxed(),
            ]
        });
        tokio::join!(
            futures::future::join_all(namespaced),
            drive(
                watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
                    .default_backoff(),
                None,
                shared.clone(),
            ),
        );
    };
    let worker = Worker {
        client: client.clone(),
        shared: shared.clone(),
        metrics,
        device_metrics: device_metrics.clone(),
        recorder,
        staleness: config.staleness,
    };
    let workers = async {
        let mut synced = shared.synced.subscribe();
        if synced.wait_for(|n| *n >= lists).await.is_err() {
            return;
        }
        let (devices, models) = lock(&shared.index).len();
        tracing::info!(devices, models, "caches synced; reconciling");
        let workers = (0..config.workers.max(1)).map(|_| worker.work());
        futures::future::join_all(workers).await;
    };
    let census = async {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            census(&shared, &device_metrics, lists);
        }
    };
    tokio::select! {
        () = watches => tracing::warn!("watches ended"),
        () = workers => tracing::warn!("workers ended"),
        () = census => {},
        () = shutdown.cancelled() => {},
    }
}

/// Counts Devices and properties for the gauges: O(devices) every 10 s, never per event.
/// Nothing before the first lists are in: a new leader's empty index is not "no devices".
fn census(shared: &Shared, metrics: &DeviceMetrics, lists: usize) {
    if *shared.synced.borrow() < lists {
        return;
    }
    for (state, n) in lock(&shared.index).devices_by_state() {
        metrics
            .devices_by_state
            .with_label_values(&[state.label()])
            .set(n);
    }
    let mut devices: HashMap<(bool, &'static str), i64> = HashMap::new();
    let mut properties: HashMap<PropertySyncState, i64> = HashMap::new();
    for o in lock(&shared.outcomes).values() {
        *devices.entry((o.valid, o.online)).or_default() += 1;
        for s in &o.states {
            *properties.entry(*s).or_default() += 1;
        }
    }
    for valid in [true, false] {
        for online in ["True", "False", "Unknown"] {
            let n = devices.get(&(valid, online)).copied().unwrap_or(0);
            metrics
                .devices
                .with_label_values(&[if valid { "true" } else { "false" }, online])
                .set(n);
        }
    }
    for state in [
        PropertySyncState::InSync,
        PropertySyncState::Pending,
        PropertySyncState::Drifted,
        PropertySyncState::Stale,
    ] {
        let n = properties.get(&state).copied().unwrap_or(0);
        metrics
            .properties
            .with_label_values(&[&format!("{state:?}")])
            .set(n);
    }
}
