//! Routing: which node gets what. The watchers that fill the caches act on each event here: a
//! sync is compared with its live object ([`plan`], pure) and what the node lacks is queued on
//! its session, if this replica holds it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgefleet_api::objectsync::{FINALIZER, ObjectSync, compare_resource_versions, object_uid_of};
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
use crate::wire::{Body, DELIVERED, Delivery, acked_rv, api_resource};

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
                && hub.registry.get(&node).is_some_and(|s| {
                    crate::device::delivery::status_only(hub, &s, (ns.clone(), name.clone()), obj)
                })
            {
                continue;
            }
            evaluate_with(hub, &sync, None, Some(obj));
        }
    }
}

fn strip_managed_fields<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
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
        strip_managed_fields(&mut o);
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

/// Runs the watchers until `hub.shutdown`: the ObjectSync reflector, and a watcher per delivered
/// kind but Secrets whose events are held only when a sync names the object (dropped
/// otherwise), in `namespace` or cluster-wide; plus the fetcher.
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
            Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => {
                on_sync(&h, &s, false)
            }
            Ok(watcher::Event::Delete(s)) => on_sync(&h, &s, true),
            Ok(watcher::Event::InitDone) => {
                h.caches.rebuild_index();
                // The store swaps the list in only now: a session taken during the list (or a
                // fetch that came back then) could not look its syncs up. Compare them all.
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
                tracing::warn!(error = %e, "ObjectSync watch");
            }
        }
        futures::future::ready(())
    });
    let mut tasks = vec![tokio::spawn(syncs), tokio::spawn(run_fetcher(hub.clone()))];
    for t in DELIVERED.into_iter().filter(|t| cacheable(*t)) {
        let Some(api) = objects_api(&client, t, namespace.as_deref()) else {
            continue;
        };
        let h = hub.clone();
        let mut first_list = true;
        let objects = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(strip_managed_fields)
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
                    Ok(watcher::Event::Init) => h.caches.listing_started(t),
                    Ok(watcher::Event::InitDone) => {
                        h.caches.listing_done(t);
                        if std::mem::take(&mut first_list) {
                            h.caches.listed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
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

/// Waits until the ObjectSyncs and every watched kind have listed once (bounded).
pub async fn wait_ready(hub: &Hub, timeout: Duration) -> bool {
    let kinds = DELIVERED.iter().filter(|t| cacheable(**t)).count();
    let all = async {
        let _ = hub.caches.syncs.wait_until_ready().await;
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
