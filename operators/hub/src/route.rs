//! Routing: which node gets what. The watchers that fill the caches act on each event here: a
//! sync is compared with its live object ([`plan`], pure) and what the node lacks is queued on
//! its session, if this replica holds it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgefleet_api::objectsync::{
    FINALIZER, NODE_LABEL, ObjectSync, RESYNC_ANNOTATION, compare_resource_versions,
    content_version, object_uid_of,
};
use edgefleet_channel::{Resource, ResourceType};
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;

use crate::cache::{Writers, cacheable, keys};
use crate::hub::{Hub, Session};
use crate::lock;
use crate::queue::Op;
use crate::wire::{Body, DELIVERED, Delivery, acked_content, acked_rv, api_resource, by_content};

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
    // A Device whose newer versions differ only in status: the node holds what it acts on.
    let held = by_content(&sync.spec.object_kind)
        && acked_content(sync).is_some()
        && acked_content(sync) == content_version(&live.metadata).as_deref();
    (trailing && !held).then(|| (Op::Update, rv, Body::Object(live.clone())))
}

/// Compares one sync with its live object and queues what the node lacks, if this replica
/// holds the node's session. An object the cache does not hold (a Secret, or one seen before
/// its first sync) is fetched; the fetcher comes back here with it.
pub fn evaluate(hub: &Hub, sync: &ObjectSync, session: Option<&Session>) {
    let Some(t) = ResourceType::of_kind(&sync.spec.object_kind) else {
        return;
    };
    let ns = sync.namespace().unwrap_or_default();
    let live = hub.caches.object(t, &ns, &sync.spec.object_name);
    if live.is_none() && sync.metadata.deletion_timestamp.is_none() {
        let held = session.is_some() || sync.node_name().is_some_and(|n| hub.registry.contains(n));
        if held {
            hub.caches
                .fetch
                .request((t, ns, sync.spec.object_name.clone()));
        }
        return;
    }
    evaluate_with(hub, sync, session, live.as_ref());
}

/// [`evaluate`] against a given live object.
fn evaluate_with(
    hub: &Hub,
    sync: &ObjectSync,
    session: Option<&Session>,
    live: Option<&Arc<DynamicObject>>,
) {
    let Some(node) = sync.node_name() else { return };
    let held;
    let session = match session {
        Some(s) => s,
        None => match hub.registry.get(node) {
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
    let Some((op, rv, body)) = plan(sync, live) else {
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
    session.push(&hub.metrics, uid, op, &rv, delivery);
}

/// A new session: compare every sync of its node.
pub fn session_started(hub: &Hub, session: &Session) {
    for (ns, name) in hub.caches.syncs_of(&session.node) {
        if let Some(sync) = hub.caches.sync(&ns, &name) {
            evaluate(hub, &sync, Some(session));
        }
    }
}

fn on_sync(hub: &Hub, sync: &ObjectSync, deleted: bool) {
    let Some((node, uid, ns, name)) = keys(sync) else {
        return;
    };
    let changed = {
        let mut index = lock(&hub.caches.index);
        if deleted {
            index.remove(node, uid, &ns, &name);
            false
        } else {
            index.add(node, uid, &ns, &name);
            index.triggers(sync, &ns, &name)
        }
    };
    if deleted {
        hub.caches.sync_gone(sync, uid);
    }
    if changed {
        evaluate(hub, sync, None);
    }
}

/// A live object: queue it for every connected node with a sync for it.
fn on_object(hub: &Hub, t: ResourceType, obj: &Arc<DynamicObject>) {
    let Some(uid) = obj.uid() else { return };
    let ns = obj.namespace().unwrap_or_default();
    let is_device = t == ResourceType::Device;
    for node in hub.caches.nodes_of(&uid) {
        if !hub.registry.contains(&node) {
            continue;
        }
        let name = edgefleet_api::objectsync::sync_name(&node, &uid);
        if let Some(sync) = hub.caches.sync(&ns, &name) {
            if is_device
                && sync.metadata.deletion_timestamp.is_none()
                && hub
                    .registry
                    .get(&node)
                    .is_some_and(|s| crate::device::delivery::status_only(&s, obj))
            {
                continue;
            }
            evaluate_with(hub, &sync, None, Some(obj));
        }
    }
}

fn objects_api(
    client: &kube::Client,
    t: ResourceType,
    namespace: Option<&str>,
) -> Option<Api<DynamicObject>> {
    let ar = api_resource(t)?;
    Some(match namespace {
        Some(ns) if !ns.is_empty() => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    })
}

/// Reads one object from the API (managedFields stripped).
pub async fn get_object(
    hub: &Hub,
    t: ResourceType,
    ns: &str,
    name: &str,
) -> Result<Option<Arc<DynamicObject>>, kube::Error> {
    let Some(api) = objects_api(&hub.client, t, Some(ns)) else {
        return Ok(None);
    };
    Ok(api.get_opt(name).await?.map(|mut o| {
        edgefleet_kit::forget_managed_fields(&mut o);
        Arc::new(o)
    }))
}

/// Objects read in parallel by the fetcher.
const FETCHES_IN_FLIGHT: usize = 16;

/// Reads what [`evaluate`] asked for and queues it; a Secret is queued, never cached.
async fn run_fetcher(hub: Arc<Hub>) {
    let h = hub.clone();
    futures::stream::unfold(h, |h| async move {
        let key = h.caches.fetch.next().await;
        Some((key, h))
    })
    .for_each_concurrent(FETCHES_IN_FLIGHT, |(t, ns, name)| {
        let hub = hub.clone();
        async move {
            match get_object(&hub, t, &ns, &name).await {
                Ok(Some(obj)) => {
                    if hub.caches.observe(t, &obj) || !cacheable(t) {
                        on_object(&hub, t, &obj);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    hub.metrics
                        .api_errors
                        .with_label_values(&["fetch_object"])
                        .inc();
                    tracing::warn!(kind = %t, namespace = %ns, %name, error = %e, "object fetch");
                }
            }
        }
    })
    .await;
}

/// Keeps of an ObjectSync what routing and the status writer read: name, namespace, uid,
/// resourceVersion, generation, finalizers, deletion mark, the node label, the resync
/// annotation, the spec, the acked resourceVersion and content version. Conditions, attempts, managedFields,
/// other labels and annotations are dropped: a replica holds every sync of its scope, so this
/// is what its memory grows with.
pub fn strip_sync(sync: &mut ObjectSync) {
    let meta = &mut sync.metadata;
    meta.managed_fields = None;
    meta.owner_references = None;
    if let Some(labels) = meta.labels.as_mut() {
        labels.retain(|k, _| k == NODE_LABEL);
    }
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k == RESYNC_ANNOTATION);
    }
    if let Some(status) = sync.status.as_mut() {
        status.conditions = None;
        status.attempts = None;
        status.last_attempt_time = None;
    }
}

/// Runs the watchers until `hub.shutdown`: per scope (a watched namespace, or `None` for
/// every namespace) an ObjectSync reflector, and a watcher per delivered kind but Secrets whose
/// events are held only when a sync names the object (dropped otherwise); plus the fetcher.
pub async fn run_watchers(hub: Arc<Hub>, writers: Writers) {
    let client = hub.client.clone();
    let mut tasks = vec![tokio::spawn(run_fetcher(hub.clone()))];
    for (scope, writer) in writers.syncs {
        let sync_api: Api<ObjectSync> = match &scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let h = hub.clone();
        let scope_of_watch = scope.clone();
        let syncs = reflector::reflector(
            writer,
            watcher(sync_api, watcher::Config::default())
                .default_backoff()
                .modify(strip_sync),
        )
        .for_each(move |ev| {
            match ev {
                Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => {
                    on_sync(&h, &s, false)
                }
                Ok(watcher::Event::Delete(s)) => on_sync(&h, &s, true),
                Ok(watcher::Event::InitDone) => {
                    h.caches.rebuild_index();
                    // The store swaps the list in only now: a session taken during the list
                    // (or a fetch that came back then) could not look its syncs up. Compare
                    // them all.
                    for session in h.registry.all() {
                        session_started(&h, &session);
                    }
                }
                Ok(watcher::Event::Init) => {}
                Err(e) => {
                    h.metrics
                        .api_errors
                        .with_label_values(&["watch_objectsyncs"])
                        .inc();
                    tracing::warn!(
                        namespace = scope_name(scope_of_watch.as_deref()),
                        error = %e,
                        "ObjectSync watch"
                    );
                }
            }
            futures::future::ready(())
        });
        tasks.push(tokio::spawn(syncs));
        for t in DELIVERED.into_iter().filter(|t| cacheable(*t)) {
            if let Some(objects) = watch_objects(hub.clone(), t, scope.clone()) {
                tasks.push(tokio::spawn(objects));
            }
        }
    }
    hub.shutdown.cancelled().await;
    for t in tasks {
        t.abort();
    }
}

fn scope_name(scope: Option<&str>) -> &str {
    scope.unwrap_or("*")
}

/// The watcher of delivered kind `t` in `scope`: what it sees is held only when a sync names it.
fn watch_objects(
    hub: Arc<Hub>,
    t: ResourceType,
    scope: Option<String>,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let api = objects_api(&hub.client, t, scope.as_deref())?;
    let h = hub;
    let mut first_list = true;
    Some(
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(edgefleet_kit::forget_managed_fields)
            .for_each(move |ev| {
                match ev {
                    Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                        let o = Arc::new(o);
                        if h.caches.observe(t, &o) {
                            on_object(&h, t, &o);
                        }
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        h.caches
                            .forget(t, &o.namespace().unwrap_or_default(), &o.name_any());
                    }
                    Ok(watcher::Event::Init) => h.caches.listing_started(t, scope.as_deref()),
                    Ok(watcher::Event::InitDone) => {
                        h.caches.listing_done(t, scope.as_deref());
                        if std::mem::take(&mut first_list) {
                            h.caches.listed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        h.metrics
                            .api_errors
                            .with_label_values(&["watch_objects"])
                            .inc();
                        tracing::warn!(
                            kind = %t,
                            namespace = scope_name(scope.as_deref()),
                            error = %e,
                            "object watch"
                        );
                    }
                }
                futures::future::ready(())
            }),
    )
}

/// Waits until the ObjectSyncs and every watched kind have listed once in every scope
/// (bounded).
pub async fn wait_ready(hub: &Hub, timeout: Duration) -> bool {
    let kinds = DELIVERED.iter().filter(|t| cacheable(**t)).count() * hub.caches.syncs.len();
    let all = async {
        for (_, store) in &hub.caches.syncs {
            let _ = store.wait_until_ready().await;
        }
        while hub.caches.listed.load(Ordering::Relaxed) < kinds {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(timeout, all).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::grows;

    fn now_time() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())
    }
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

    /// What a replica holds per sync is what routing reads: the rest of the object is dropped
    /// on sight, and what is kept still plans the same.
    #[test]
    fn a_held_sync_keeps_only_what_routing_reads() {
        let mut s = sync(Some("11"));
        s.metadata.labels = Some(
            [
                (NODE_LABEL.to_string(), "edge-1".to_string()),
                ("team".into(), "a".into()),
            ]
            .into(),
        );
        s.metadata.annotations = Some(
            [
                (RESYNC_ANNOTATION.to_string(), "t1".to_string()),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".into(),
                    "x".repeat(4096),
                ),
            ]
            .into(),
        );
        s.metadata.finalizers = Some(vec![FINALIZER.into()]);
        s.metadata.managed_fields = Some(vec![Default::default()]);
        if let Some(st) = s.status.as_mut() {
            st.attempts = Some(3);
            st.conditions = Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                    type_: "Delivered".into(),
                    status: "True".into(),
                    reason: "Acknowledged".into(),
                    message: "x".repeat(256),
                    last_transition_time: now_time(),
                    observed_generation: Some(1),
                },
            ]);
            st.last_attempt_time = Some(now_time());
        }
        let obj = live(UID, "12");
        let before = plan(&s, Some(&obj)).map(|(op, rv, _)| (op, rv));
        strip_sync(&mut s);
        assert_eq!(plan(&s, Some(&obj)).map(|(op, rv, _)| (op, rv)), before);
        assert_eq!(s.node_name(), Some("edge-1"));
        assert_eq!(s.labels().len(), 1);
        assert_eq!(s.annotations().len(), 1, "only the resync annotation");
        assert_eq!(s.finalizers(), [FINALIZER.to_string()]);
        assert!(s.metadata.managed_fields.is_none());
        let st = s.status.as_ref().unwrap();
        assert_eq!(st.object_resource_version.as_deref(), Some("11"));
        assert!(st.conditions.is_none() && st.attempts.is_none());
    }

    /// A Device is sent again for what the edge acts on, not for its status writes: the acked
    /// content version says what the node holds (and survives a restart of the hub).
    #[test]
    fn a_device_is_planned_by_content_not_by_version() {
        let device = |rv: &str, generation: i64, model: &str| {
            let ar = api_resource(ResourceType::Device).unwrap();
            let mut o = DynamicObject::new("valve", &ar).within("ns");
            o.metadata.uid = Some(UID.into());
            o.metadata.resource_version = Some(rv.into());
            o.metadata.generation = Some(generation);
            o.metadata.annotations =
                Some([("edgefleet.io/device-model-generation".into(), model.into())].into());
            Arc::new(o)
        };
        let acked = device("10", 2, "1");
        let sync_of = |content: Option<String>| {
            let mut s = sync(Some("10"));
            s.spec.object_kind = "Device".into();
            s.spec.object_api_version = Some("devices.kubeedge.io/v1beta1".into());
            if let Some(st) = s.status.as_mut() {
                st.object_content_version = content;
            }
            s
        };
        let held = sync_of(content_version(&acked.metadata));
        // (case, sync, live, op planned)
        let cases = [
            ("a status write", held.clone(), device("11", 2, "1"), None),
            (
                "a spec change",
                held.clone(),
                device("12", 3, "1"),
                Some(Op::Update),
            ),
            (
                "its model changed",
                held.clone(),
                device("13", 2, "2"),
                Some(Op::Update),
            ),
            (
                "no content version acked",
                sync_of(None),
                device("11", 2, "1"),
                Some(Op::Update),
            ),
            (
                "the acked version itself",
                held.clone(),
                device("10", 2, "1"),
                None,
            ),
        ];
        for (case, s, live, op) in cases {
            assert_eq!(plan(&s, Some(&live)).map(|(op, _, _)| op), op, "{case}");
        }
        let mut cm = sync(Some("10"));
        if let Some(st) = cm.status.as_mut() {
            st.object_content_version = content_version(&acked.metadata);
        }
        let mut newer = (*live(UID, "11")).clone();
        newer.metadata = acked.metadata.clone();
        newer.metadata.resource_version = Some("11".into());
        assert_eq!(
            plan(&cm, Some(&Arc::new(newer))).map(|(op, _, _)| op),
            Some(Op::Update),
            "other kinds go by resourceVersion"
        );
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
