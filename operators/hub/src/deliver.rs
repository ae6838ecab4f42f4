//! What to deliver to whom: reflectors over ObjectSyncs and the delivered kinds (shared by every
//! session, managedFields stripped), an index object UID → nodes, the decision per sync (insert,
//! update, delete or nothing), and the status writer that records ACKs on the ObjectSyncs.
//!
//! Only nodes whose session this replica holds are acted for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgefleet_api::objectsync::{
    CONDITION_DELIVERED, ObjectSync, compare_resource_versions, object_uid_of,
};
use edgefleet_channel::{Resource, ResourceType};
use futures::{StreamExt, stream};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::hub::{Hub, Session, lock};
use crate::queue::Op;

/// Field manager of the hub's writes.
pub const FIELD_MANAGER: &str = "edgefleet-hub";
/// Finalizer the objectsync operator sets; the hub removes it once the edge ACKed the delete.
pub const FINALIZER: &str = "edgefleet.io/edge-delete";
/// Annotation whose change asks the hub to re-queue a trailing sync.
pub const RESYNC_ANNOTATION: &str = "edgefleet.io/resync-requested";

/// One queued message's payload: which sync it serves and what to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub sync_namespace: String,
    pub sync_name: String,
    pub resource: Resource,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// insert / update: the object as cached (managedFields stripped).
    Object(Arc<DynamicObject>),
    /// delete: `{uid, name, namespace, resourceVersion}`.
    Delete(Arc<Value>),
}

impl Body {
    pub fn content(&self) -> Value {
        match self {
            Body::Object(o) => serde_json::to_value(&**o).unwrap_or(Value::Null),
            Body::Delete(v) => (**v).clone(),
        }
    }
}

/// Writes to ObjectSyncs, done off the session tasks by the status writer.
#[derive(Clone, Debug, PartialEq)]
pub enum StatusJob {
    /// The edge stored `rv`: record it if it grows.
    Acked {
        namespace: String,
        name: String,
        rv: String,
        attempts: u32,
    },
    /// Sent the maximum number of times without an ACK: record the attempts, resync takes over.
    GaveUp {
        namespace: String,
        name: String,
        attempts: u32,
    },
    /// The edge ACKed the delete: remove the finalizer.
    EdgeDeleted { namespace: String, name: String },
}

/// The ApiResource of a delivered type.
pub fn api_resource(t: ResourceType) -> Option<ApiResource> {
    let (group, version, kind, plural) = match t {
        ResourceType::Pod => ("", "v1", "Pod", "pods"),
        ResourceType::ConfigMap => ("", "v1", "ConfigMap", "configmaps"),
        ResourceType::Secret => ("", "v1", "Secret", "secrets"),
        ResourceType::Device => ("devices.kubeedge.io", "v1beta1", "Device", "devices"),
        ResourceType::DeviceModel => (
            "devices.kubeedge.io",
            "v1beta1",
            "DeviceModel",
            "devicemodels",
        ),
        _ => return None,
    };
    let api_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(ApiResource {
        group: group.into(),
        version: version.into(),
        api_version,
        kind: kind.into(),
        plural: plural.into(),
    })
}

/// The delivered types, in the order their watchers start.
pub const DELIVERED: [ResourceType; 5] = [
    ResourceType::Pod,
    ResourceType::ConfigMap,
    ResourceType::Secret,
    ResourceType::Device,
    ResourceType::DeviceModel,
];

#[derive(Debug, Default)]
struct SyncIndex {
    /// node → its syncs (namespace, name).
    by_node: HashMap<String, HashSet<(String, String)>>,
    /// object UID → nodes with a sync for it.
    by_uid: HashMap<String, HashSet<String>>,
}

impl SyncIndex {
    fn add(&mut self, node: &str, uid: &str, ns: &str, name: &str) {
        self.by_node
            .entry(node.to_string())
            .or_default()
            .insert((ns.to_string(), name.to_string()));
        self.by_uid
            .entry(uid.to_string())
            .or_default()
            .insert(node.to_string());
    }

    fn remove(&mut self, node: &str, uid: &str, ns: &str, name: &str) {
        if let Some(set) = self.by_node.get_mut(node) {
            set.remove(&(ns.to_string(), name.to_string()));
            if set.is_empty() {
                self.by_node.remove(node);
            }
        }
        if let Some(set) = self.by_uid.get_mut(uid) {
            set.remove(node);
            if set.is_empty() {
                self.by_uid.remove(uid);
            }
        }
    }
}

/// The reflectors' stores plus the index, shared by every session.
pub struct Caches {
    pub syncs: Store<ObjectSync>,
    objects: BTreeMap<ResourceType, (ApiResource, Store<DynamicObject>)>,
    index: Mutex<SyncIndex>,
}

/// The reflector writers, consumed by [`run_watchers`].
pub struct Writers {
    syncs: reflector::store::Writer<ObjectSync>,
    objects: Vec<(
        ResourceType,
        ApiResource,
        reflector::store::Writer<DynamicObject>,
    )>,
}

impl Caches {
    pub fn new() -> (Caches, Writers) {
        let (syncs, sync_writer) = reflector::store();
        let mut objects = BTreeMap::new();
        let mut writers = Vec::new();
        for t in DELIVERED {
            if let Some(ar) = api_resource(t) {
                let writer = reflector::store::Writer::new(ar.clone());
                objects.insert(t, (ar.clone(), writer.as_reader()));
                writers.push((t, ar, writer));
            }
        }
        (
            Caches {
                syncs,
                objects,
                index: Mutex::new(SyncIndex::default()),
            },
            Writers {
                syncs: sync_writer,
                objects: writers,
            },
        )
    }

    /// The cached object of type `t`.
    pub fn object(&self, t: ResourceType, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        let (ar, store) = self.objects.get(&t)?;
        let mut r = ObjectRef::<DynamicObject>::new_with(name, ar.clone());
        if !ns.is_empty() {
            r = r.within(ns);
        }
        store.get(&r)
    }

    pub fn sync(&self, ns: &str, name: &str) -> Option<Arc<ObjectSync>> {
        self.syncs
            .get(&ObjectRef::<ObjectSync>::new(name).within(ns))
    }

    /// Whether `node` has a sync for the object `uid`.
    pub fn node_has(&self, node: &str, uid: &str) -> bool {
        lock(&self.index)
            .by_uid
            .get(uid)
            .is_some_and(|n| n.contains(node))
    }

    /// Every sync of `node`.
    pub fn syncs_of(&self, node: &str) -> Vec<(String, String)> {
        lock(&self.index)
            .by_node
            .get(node)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn nodes_of(&self, uid: &str) -> Vec<String> {
        lock(&self.index)
            .by_uid
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn rebuild_index(&self) {
        let mut index = SyncIndex::default();
        for sync in self.syncs.state() {
            if let Some((node, uid, ns, name)) = keys(&sync) {
                index.add(node, uid, &ns, &name);
            }
        }
        *lock(&self.index) = index;
    }
}

fn keys(sync: &ObjectSync) -> Option<(&str, &str, String, String)> {
    let name = sync.metadata.name.as_deref()?;
    Some((
        sync.node_name()?,
        object_uid_of(name)?,
        sync.namespace().unwrap_or_default(),
        name.to_string(),
    ))
}

/// The acked resourceVersion of a sync ("" = nothing acked).
pub fn acked_rv(sync: &ObjectSync) -> &str {
    match sync
        .status
        .as_ref()
        .and_then(|s| s.object_resource_version.as_deref())
    {
        None | Some("0") => "",
        Some(rv) => rv,
    }
}

/// Whether `new` moves the acked version forward from `acked` (only ever grows; versions
/// without an order never move it, except from nothing acked).
pub fn grows(acked: &str, new: &str) -> bool {
    if new.is_empty() {
        return false;
    }
    if acked.is_empty() || acked == "0" {
        return true;
    }
    compare_resource_versions(new, acked) == Some(std::cmp::Ordering::Greater)
}

/// What a sync needs sent now, given the live object (pure).
pub fn plan(sync: &ObjectSync, live: Option<&Arc<DynamicObject>>) -> Option<(Op, String, Body)> {
    let uid = object_uid_of(sync.metadata.name.as_deref()?)?;
    let acked = acked_rv(sync);
    if sync.metadata.deletion_timestamp.is_some() {
        if !sync.finalizers().iter().any(|f| f == FINALIZER) {
            return None;
        }
        let rv = live
            .filter(|o| o.uid().as_deref() == Some(uid))
            .and_then(|o| o.resource_version())
            .unwrap_or_else(|| acked.to_string());
        let body = json!({
            "uid": uid,
            "name": sync.spec.object_name,
            "namespace": sync.namespace().unwrap_or_default(),
            "resourceVersion": rv,
        });
        return Some((Op::Delete, rv, Body::Delete(Arc::new(body))));
    }
    let live = live.filter(|o| o.uid().as_deref() == Some(uid))?;
    let rv = live.resource_version()?;
    if acked.is_empty() {
        return Some((Op::Insert, rv, Body::Object(live.clone())));
    }
    let trailing = match compare_resource_versions(&rv, acked) {
        Some(o) => o == std::cmp::Ordering::Greater,
        None => rv != acked,
    };
    trailing.then(|| (Op::Update, rv, Body::Object(live.clone())))
}

impl Hub {
    /// Compares one sync with its live object and queues what the node lacks, if this replica
    /// holds the node's session.
    pub fn evaluate(&self, sync: &ObjectSync, session: Option<&Session>) {
        let Some(node) = sync.node_name() else { return };
        let held;
        let session = match session {
            Some(s) => s,
            None => match self.registry.get(node) {
                Some(s) => {
                    held = s;
                    &held
                }
                None => return,
            },
        };
        let Some(t) = ResourceType::of_kind(&sync.spec.object_kind) else {
            return;
        };
        let ns = sync.namespace().unwrap_or_default();
        let live = self.caches.object(t, &ns, &sync.spec.object_name);
        let Some((op, rv, body)) = plan(sync, live.as_ref()) else {
            return;
        };
        let Some(uid) = sync.metadata.name.as_deref().and_then(object_uid_of) else {
            return;
        };
        let delivery = Delivery {
            sync_namespace: ns.clone(),
            sync_name: sync.name_any(),
            resource: Resource::new(&ns, t, &sync.spec.object_name),
            body,
        };
        session.push(&self.metrics, uid, op, &rv, delivery);
    }

    /// A new session: compare every sync of its node.
    pub fn session_started(&self, session: &Session) {
        for (ns, name) in self.caches.syncs_of(&session.node) {
            if let Some(sync) = self.caches.sync(&ns, &name) {
                self.evaluate(&sync, Some(session));
            }
        }
    }

    fn on_sync(&self, sync: &ObjectSync, deleted: bool) {
        let Some((node, uid, ns, name)) = keys(sync) else {
            return;
        };
        {
            let mut index = lock(&self.caches.index);
            if deleted {
                index.remove(node, uid, &ns, &name);
            } else {
                index.add(node, uid, &ns, &name);
            }
        }
        if !deleted {
            // Covers a new sync, a deletionTimestamp, a resync annotation change and our own
            // status patches (which find nothing trailing).
            self.evaluate(sync, None);
        }
    }

    fn on_object(&self, obj: &DynamicObject) {
        let Some(uid) = obj.uid() else { return };
        for node in self.caches.nodes_of(&uid) {
            if self.registry.get(&node).is_none() {
                continue;
            }
            let ns = obj.namespace().unwrap_or_default();
            if let Some(sync) = self
                .caches
                .sync(&ns, &edgefleet_api::objectsync::sync_name(&node, &uid))
            {
                self.evaluate(&sync, None);
            }
        }
    }
}

fn strip_managed_fields<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// Runs the reflectors until `hub.shutdown`: ObjectSyncs and every delivered kind, in
/// `namespace` or cluster-wide.
pub async fn run_watchers(hub: Arc<Hub>, writers: Writers, namespace: Option<String>) {
    let client = hub.client.clone();
    let sync_api: Api<ObjectSync> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let h = hub.clone();
    let syncs = reflector::reflector(
        writers.syncs,
        watcher(sync_api, watcher::Config::default())
            .default_backoff()
            .modify(strip_managed_fields),
    )
    .for_each(move |ev| {
        match ev {
            Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => h.on_sync(&s, false),
            Ok(watcher::Event::Delete(s)) => h.on_sync(&s, true),
            Ok(watcher::Event::InitDone) => h.caches.rebuild_index(),
            Ok(watcher::Event::Init) => {}
            Err(e) => {
                h.metrics
                    .api_errors
                    .with_label_values(&["watch_objectsyncs"])
                    .inc();
                tracing::warn!(error = %e, "ObjectSync watch");
            }
        }
        futures::future::ready(())
    });
    let mut tasks = vec![tokio::spawn(syncs)];
    for (t, ar, writer) in writers.objects {
        let api: Api<DynamicObject> = match &namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let h = hub.clone();
        let objects = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default())
                .default_backoff()
                .modify(strip_managed_fields),
        )
        .for_each(move |ev| {
            match ev {
                Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => h.on_object(&o),
                Ok(_) => {}
                Err(e) => {
                    h.metrics
                        .api_errors
                        .with_label_values(&["watch_objects"])
                        .inc();
                    tracing::warn!(kind = %t, error = %e, "object watch");
                }
            }
            futures::future::ready(())
        });
        tasks.push(tokio::spawn(objects));
    }
    hub.shutdown.cancelled().await;
    for t in tasks {
        t.abort();
    }
}

/// Waits until every store has listed once (bounded).
pub async fn wait_ready(hub: &Hub, timeout: Duration) -> bool {
    let all = async {
        let _ = hub.caches.syncs.wait_until_ready().await;
        for (_, store) in hub.caches.objects.values() {
            let _ = store.wait_until_ready().await;
        }
    };
    tokio::time::timeout(timeout, all).await.is_ok()
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

fn now_time() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())
}

/// Records an ACK: `objectResourceVersion` only if it grows, under an optimistic lock (the
/// sync's resourceVersion), so two writers can never move it back.
async fn patch_acked(
    hub: &Hub,
    namespace: &str,
    name: &str,
    rv: &str,
    attempts: u32,
) -> Result<(), kube::Error> {
    let api: Api<ObjectSync> = Api::namespaced(hub.client.clone(), namespace);
    let mut current = hub.caches.sync(namespace, name).map(|s| (*s).clone());
    for _ in 0..4 {
        let sync = match current.take() {
            Some(s) => s,
            None => match api.get_opt(name).await? {
                Some(s) => s,
                None => return Ok(()),
            },
        };
        if !grows(acked_rv(&sync), rv) {
            return Ok(());
        }
        let now = now_time();
        let patch = json!({
            "metadata": {"resourceVersion": sync.metadata.resource_version},
            "status": {
                "objectResourceVersion": rv,
                "attempts": attempts,
                "lastAttemptTime": now,
                "conditions": [{
                    "type": CONDITION_DELIVERED,
                    "status": "True",
                    "reason": "Acknowledged",
                    "message": format!("the node stored resourceVersion {rv}"),
                    "lastTransitionTime": now,
                    "observedGeneration": sync.metadata.generation,
                }],
            },
        });
        match api
            .patch_status(name, &params(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn patch_gave_up(
    hub: &Hub,
    namespace: &str,
    name: &str,
    attempts: u32,
) -> Result<(), kube::Error> {
    let api: Api<ObjectSync> = Api::namespaced(hub.client.clone(), namespace);
    let patch = json!({"status": {"attempts": attempts, "lastAttemptTime": now_time()}});
    match api
        .patch_status(name, &params(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes [`FINALIZER`] from a sync the edge deleted the object of (under an optimistic lock:
/// other finalizers are kept).
async fn remove_finalizer(hub: &Hub, namespace: &str, name: &str) -> Result<(), kube::Error> {
    let api: Api<ObjectSync> = Api::namespaced(hub.client.clone(), namespace);
    for _ in 0..4 {
        let Some(sync) = api.get_opt(name).await? else {
            return Ok(());
        };
        let finalizers = sync.finalizers();
        if !finalizers.iter().any(|f| f == FINALIZER) {
            return Ok(());
        }
        let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
        let patch = json!({"metadata": {
            "resourceVersion": sync.metadata.resource_version,
            "finalizers": rest,
        }});
        match api.patch(name, &params(), &Patch::Merge(patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Applies status jobs, a bounded number at once, until the channel closes.
pub async fn run_status_writer(hub: Arc<Hub>, rx: mpsc::Receiver<StatusJob>, concurrency: usize) {
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|j| (j, rx)) })
        .for_each_concurrent(concurrency, |job| {
            let hub = hub.clone();
            async move {
                let (action, result) = match &job {
                    StatusJob::Acked {
                        namespace,
                        name,
                        rv,
                        attempts,
                    } => (
                        "patch_acked",
                        patch_acked(&hub, namespace, name, rv, *attempts).await,
                    ),
                    StatusJob::GaveUp {
                        namespace,
                        name,
                        attempts,
                    } => (
                        "patch_attempts",
                        patch_gave_up(&hub, namespace, name, *attempts).await,
                    ),
                    StatusJob::EdgeDeleted { namespace, name } => (
                        "remove_finalizer",
                        remove_finalizer(&hub, namespace, name).await,
                    ),
                };
                if let Err(e) = result {
                    hub.metrics.api_errors.with_label_values(&[action]).inc();
                    tracing::warn!(?job, error = %e, "ObjectSync write failed");
                }
            }
        })
        .await;
}

/// The client for the hub's own reads of one Secret (bootstrap token).
pub fn secrets(client: &Client, namespace: &str) -> Api<k8s_openapi::api::core::v1::Secret> {
    Api::namespaced(client.clone(), namespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_api::objectsync::{ObjectSyncSpec, ObjectSyncStatus};

    const UID: &str = "6f1c3a52-8d0e-4c55-9a3e-1b2c3d4e5f60";

    fn sync(acked: Option<&str>) -> ObjectSync {
        let mut s = ObjectSync::new(
            &format!("edge-1.{UID}"),
            ObjectSyncSpec {
                object_api_version: Some("v1".into()),
                object_kind: "ConfigMap".into(),
                object_name: "cfg".into(),
            },
        );
        s.metadata.namespace = Some("ns".into());
        s.status = acked.map(|rv| ObjectSyncStatus {
            object_resource_version: Some(rv.into()),
            ..Default::default()
        });
        s
    }

    fn live(uid: &str, rv: &str) -> Arc<DynamicObject> {
        let ar = api_resource(ResourceType::ConfigMap).unwrap();
        let mut o = DynamicObject::new("cfg", &ar).within("ns");
        o.metadata.uid = Some(uid.into());
        o.metadata.resource_version = Some(rv.into());
        Arc::new(o)
    }

    #[test]
    fn acked_versions_only_grow() {
        assert!(grows("", "5"));
        assert!(grows("0", "5"));
        assert!(grows("4", "5"));
        assert!(!grows("5", "5"));
        assert!(!grows("10", "9"), "a late ACK never moves it back");
        assert!(!grows("5", ""));
        assert!(!grows("5", "x"), "no order, no move");
        assert!(grows("9", "10"), "numeric, not lexical");
    }

    #[test]
    fn plans_insert_update_nothing_and_delete() {
        let obj = live(UID, "12");
        let (op, rv, _) = plan(&sync(None), Some(&obj)).unwrap();
        assert_eq!((op, rv.as_str()), (Op::Insert, "12"));
        let (op, _, _) = plan(&sync(Some("0")), Some(&obj)).unwrap();
        assert_eq!(op, Op::Insert);
        let (op, rv, _) = plan(&sync(Some("11")), Some(&obj)).unwrap();
        assert_eq!((op, rv.as_str()), (Op::Update, "12"));
        assert!(plan(&sync(Some("12")), Some(&obj)).is_none());
        assert!(plan(&sync(Some("13")), Some(&obj)).is_none());
        assert!(
            plan(&sync(None), None).is_none(),
            "object gone: operator's job"
        );
        assert!(
            plan(&sync(None), Some(&live("other-uid", "12"))).is_none(),
            "a recreated object is another sync"
        );

        let mut deleting = sync(Some("12"));
        deleting.metadata.deletion_timestamp = Some(now_time());
        assert!(
            plan(&deleting, None).is_none(),
            "no finalizer: nothing to do"
        );
        deleting.metadata.finalizers = Some(vec![FINALIZER.into()]);
        let (op, rv, body) = plan(&deleting, None).unwrap();
        assert_eq!((op, rv.as_str()), (Op::Delete, "12"));
        assert_eq!(
            body.content(),
            json!({"uid": UID, "name": "cfg", "namespace": "ns", "resourceVersion": "12"})
        );
    }
}
