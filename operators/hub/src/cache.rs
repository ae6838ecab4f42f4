//! The replica's caches: the ObjectSync store, the index object UID → nodes / node → syncs, and
//! only the objects some sync names (managedFields stripped) — never every Pod and ConfigMap of
//! the cluster, never a Secret. Data only: the watchers and the fetcher that fill them and act
//! on their events are in [`crate::route`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use edgefleet_api::objectsync::{ObjectSync, RESYNC_ANNOTATION, object_uid_of};
use edgefleet_channel::ResourceType;
use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::runtime::reflector::{self, ObjectRef, Store};
use tokio::sync::Notify;

use crate::lock;

#[derive(Debug, Default)]
pub struct SyncIndex {
    /// node → its syncs (namespace, name).
    by_node: HashMap<String, HashSet<(String, String)>>,
    /// object UID → nodes with a sync for it.
    by_uid: HashMap<String, HashSet<String>>,
    /// (namespace, name) → what last triggered a re-queue: resync annotation, deleting.
    seen: HashMap<(String, String), (Option<String>, bool)>,
}

impl SyncIndex {
    pub fn add(&mut self, node: &str, uid: &str, ns: &str, name: &str) {
        self.by_node
            .entry(node.to_string())
            .or_default()
            .insert((ns.to_string(), name.to_string()));
        self.by_uid
            .entry(uid.to_string())
            .or_default()
            .insert(node.to_string());
    }

    /// Records a sync's triggers; `true` when it is new or a trigger changed (a new resync
    /// annotation, a deletionTimestamp). Status-only changes — our own ACK and give-up patches
    /// among them — are not triggers: a given-up message is left to the objectsync resync.
    pub fn triggers(&mut self, sync: &ObjectSync, ns: &str, name: &str) -> bool {
        let now = (
            sync.annotations().get(RESYNC_ANNOTATION).cloned(),
            sync.metadata.deletion_timestamp.is_some(),
        );
        self.seen
            .insert((ns.to_string(), name.to_string()), now.clone())
            != Some(now)
    }

    pub fn remove(&mut self, node: &str, uid: &str, ns: &str, name: &str) {
        self.seen.remove(&(ns.to_string(), name.to_string()));
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

/// An object of a delivered kind: (kind, namespace, name).
pub type ObjKey = (ResourceType, String, String);

/// The objects some ObjectSync names, as last seen (managedFields stripped). Everything else
/// the watchers see is dropped at once; Secrets are never held here (fetched per delivery).
#[derive(Debug, Default)]
struct Objects {
    by_key: HashMap<ObjKey, Arc<DynamicObject>>,
    /// Keys seen during the current (re-)list of a kind in a scope (a watched namespace, or
    /// `None` for all): what was not seen in that scope is gone.
    listing: HashMap<(ResourceType, Option<String>), HashSet<ObjKey>>,
}

/// Objects to read from the API because a sync needs one the cache does not hold (a Secret,
/// or an object seen before its first sync): deduplicated, drained by the fetcher.
#[derive(Debug, Default)]
pub struct FetchQueue {
    pending: Mutex<(HashSet<ObjKey>, VecDeque<ObjKey>)>,
    wake: Notify,
}

impl FetchQueue {
    /// Asks for `key` (once, however often it is asked before it is fetched).
    pub fn request(&self, key: ObjKey) {
        {
            let mut p = lock(&self.pending);
            if !p.0.insert(key.clone()) {
                return;
            }
            p.1.push_back(key);
        }
        self.wake.notify_one();
    }

    /// The next key, waiting for one.
    pub async fn next(&self) -> ObjKey {
        loop {
            {
                let mut p = lock(&self.pending);
                if let Some(k) = p.1.pop_front() {
                    p.0.remove(&k);
                    return k;
                }
            }
            self.wake.notified().await;
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.pending).1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The replica's caches: the ObjectSync stores (one per watched scope), the index, the objects
/// syncs name.
pub struct Caches {
    /// (scope, its ObjectSyncs), stripped to what routing reads ([`crate::route`]).
    pub syncs: Vec<(Option<String>, Store<ObjectSync>)>,
    objects: Mutex<Objects>,
    pub index: Mutex<SyncIndex>,
    pub fetch: FetchQueue,
    /// Delivered kinds listed at least once (readiness).
    pub listed: AtomicUsize,
}

/// The ObjectSync reflectors' writers (one per scope), consumed by the watchers.
pub struct Writers {
    pub syncs: Vec<(Option<String>, reflector::store::Writer<ObjectSync>)>,
}

/// Whether namespace `ns` lies in `scope` (`None`: every namespace).
pub fn in_scope(scope: Option<&str>, ns: &str) -> bool {
    scope.is_none_or(|s| s == ns)
}

/// Whether objects of kind `t` may be held in memory (Secrets never are).
pub fn cacheable(t: ResourceType) -> bool {
    t != ResourceType::Secret
}

impl Caches {
    /// Caches for `scopes`: `[None]` (every namespace) or the watched namespaces.
    pub fn new(scopes: &[Option<String>]) -> (Caches, Writers) {
        let (syncs, sync_writers) = scopes
            .iter()
            .map(|scope| {
                let (store, writer) = reflector::store();
                ((scope.clone(), store), (scope.clone(), writer))
            })
            .unzip();
        (
            Caches {
                syncs,
                objects: Mutex::new(Objects::default()),
                index: Mutex::new(SyncIndex::default()),
                fetch: FetchQueue::default(),
                listed: AtomicUsize::new(0),
            },
            Writers {
                syncs: sync_writers,
            },
        )
    }

    /// The cached object of type `t`.
    pub fn object(&self, t: ResourceType, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        lock(&self.objects)
            .by_key
            .get(&(t, ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Objects held.
    pub fn objects_len(&self) -> usize {
        lock(&self.objects).by_key.len()
    }

    /// Whether some sync names the object `uid`.
    pub fn wanted(&self, uid: &str) -> bool {
        lock(&self.index).by_uid.contains_key(uid)
    }

    /// Takes in an object a watcher or the fetcher saw: held if a sync names it (and its kind
    /// may be held), dropped otherwise. `true` when held.
    pub fn observe(&self, t: ResourceType, obj: &Arc<DynamicObject>) -> bool {
        let key = (t, obj.namespace().unwrap_or_default(), obj.name_any());
        let keep = cacheable(t) && obj.uid().is_some_and(|u| self.wanted(&u));
        let mut o = lock(&self.objects);
        if keep {
            for ((kind, scope), seen) in o.listing.iter_mut() {
                if *kind == t && in_scope(scope.as_deref(), &key.1) {
                    seen.insert(key.clone());
                }
            }
        }
        if keep {
            o.by_key.insert(key, obj.clone());
        } else {
            o.by_key.remove(&key);
        }
        keep
    }

    /// The object is gone from the API.
    pub fn forget(&self, t: ResourceType, ns: &str, name: &str) {
        lock(&self.objects)
            .by_key
            .remove(&(t, ns.to_string(), name.to_string()));
    }

    /// A (re-)list of kind `t` in `scope` begins.
    pub fn listing_started(&self, t: ResourceType, scope: Option<&str>) {
        lock(&self.objects)
            .listing
            .insert((t, scope.map(str::to_owned)), HashSet::new());
    }

    /// A (re-)list of kind `t` in `scope` ended: what it did not see there is gone (what other
    /// scopes' watches hold stays).
    pub fn listing_done(&self, t: ResourceType, scope: Option<&str>) {
        let mut o = lock(&self.objects);
        if let Some(seen) = o.listing.remove(&(t, scope.map(str::to_owned))) {
            o.by_key
                .retain(|k, _| k.0 != t || !in_scope(scope, &k.1) || seen.contains(k));
        }
    }

    /// The last sync naming object `uid` went: drop the object.
    fn evict(&self, t: ResourceType, ns: &str, name: &str, uid: &str) {
        let mut o = lock(&self.objects);
        let key = (t, ns.to_string(), name.to_string());
        if o.by_key
            .get(&key)
            .is_some_and(|x| x.uid().as_deref() == Some(uid))
        {
            o.by_key.remove(&key);
        }
    }

    /// Drops the object of a deleted sync if no other sync names it.
    pub fn sync_gone(&self, sync: &ObjectSync, uid: &str) {
        if self.wanted(uid) {
            return;
        }
        if let Some(t) = ResourceType::of_kind(&sync.spec.object_kind) {
            self.evict(
                t,
                &sync.namespace().unwrap_or_default(),
                &sync.spec.object_name,
                uid,
            );
        }
    }

    pub fn sync(&self, ns: &str, name: &str) -> Option<Arc<ObjectSync>> {
        let key = ObjectRef::<ObjectSync>::new(name).within(ns);
        self.syncs
            .iter()
            .filter(|(scope, _)| in_scope(scope.as_deref(), ns))
            .find_map(|(_, store)| store.get(&key))
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

    /// Whether `node` has a live (not deleting) sync for the object `t` `ns/name`: what the
    /// objectsync operator bound to it, known without the object itself.
    pub fn node_syncs(&self, node: &str, t: ResourceType, ns: &str, name: &str) -> bool {
        let Some(kind) = t.kind() else {
            return false;
        };
        self.syncs_of(node)
            .iter()
            .filter(|(sync_ns, _)| sync_ns == ns)
            .filter_map(|(sync_ns, sync_name)| self.sync(sync_ns, sync_name))
            .any(|s| {
                s.spec.object_kind == kind
                    && s.spec.object_name == name
                    && s.metadata.deletion_timestamp.is_none()
            })
    }

    pub fn nodes_of(&self, uid: &str) -> Vec<String> {
        lock(&self.index)
            .by_uid
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn rebuild_index(&self) {
        let mut index = SyncIndex::default();
        let mut guard = lock(&self.index);
        for sync in self.syncs.iter().flat_map(|(_, store)| store.state()) {
            if let Some((node, uid, ns, name)) = keys(&sync) {
                index.add(node, uid, &ns, &name);
                let key = (ns, name);
                if let Some(seen) = guard.seen.remove(&key) {
                    index.seen.insert(key, seen);
                }
            }
        }
        *guard = index;
        let by_uid = &guard.by_uid;
        lock(&self.objects)
            .by_key
            .retain(|_, o| o.uid().is_some_and(|u| by_uid.contains_key(&u)));
    }
}

pub fn keys(sync: &ObjectSync) -> Option<(&str, &str, String, String)> {
    let name = sync.metadata.name.as_deref()?;
    Some((
        sync.node_name()?,
        object_uid_of(name)?,
        sync.namespace().unwrap_or_default(),
        name.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::api_resource;
    use edgefleet_api::objectsync::ObjectSyncSpec;

    const UID: &str = "6f1c3a52-8d0e-4c55-9a3e-1b2c3d4e5f60";

    fn cm(name: &str, uid: &str) -> Arc<DynamicObject> {
        let ar = api_resource(ResourceType::ConfigMap).unwrap();
        let mut o = DynamicObject::new(name, &ar).within("ns");
        o.metadata.uid = Some(uid.into());
        Arc::new(o)
    }

    fn sync() -> ObjectSync {
        let mut s = ObjectSync::new(
            &format!("edge-1.{UID}"),
            ObjectSyncSpec {
                object_api_version: Some("v1".into()),
                object_kind: "ConfigMap".into(),
                object_name: "cfg".into(),
            },
        );
        s.metadata.namespace = Some("ns".into());
        s
    }

    #[test]
    fn only_objects_a_sync_names_are_held_and_never_a_secret() {
        let (caches, _w) = Caches::new(&[None]);
        let t = ResourceType::ConfigMap;
        assert!(!caches.observe(t, &cm("cfg", UID)), "no sync names it yet");
        assert!(!caches.observe(t, &cm("unrelated", "u-2")));
        lock(&caches.index).add("edge-1", UID, "ns", &format!("edge-1.{UID}"));
        assert!(caches.observe(t, &cm("cfg", UID)));
        assert!(!caches.observe(t, &cm("unrelated", "u-2")));
        assert!(!caches.observe(ResourceType::Secret, &cm("cfg", UID)));
        assert_eq!(caches.objects_len(), 1);

        // A re-list that does not see it: gone.
        caches.listing_started(t, None);
        caches.listing_done(t, None);
        assert!(caches.object(t, "ns", "cfg").is_none());

        // The last sync naming it goes: dropped.
        assert!(caches.observe(t, &cm("cfg", UID)));
        lock(&caches.index).remove("edge-1", UID, "ns", &format!("edge-1.{UID}"));
        caches.sync_gone(&sync(), UID);
        assert_eq!(caches.objects_len(), 0);
    }

    /// One watch per watched namespace: a relist of one namespace drops what it did not see
    /// there, never what another namespace's watch holds.
    #[test]
    fn a_relist_of_one_namespace_keeps_the_others() {
        let scopes = [Some("ns".to_string()), Some("other".to_string())];
        let (caches, _w) = Caches::new(&scopes);
        let t = ResourceType::ConfigMap;
        let ar = api_resource(t).unwrap();
        let mut there = DynamicObject::new("cfg", &ar).within("other");
        there.metadata.uid = Some("u-other".into());
        lock(&caches.index).add("edge-1", UID, "ns", &format!("edge-1.{UID}"));
        lock(&caches.index).add("edge-1", "u-other", "other", "edge-1.u-other");
        assert!(caches.observe(t, &cm("cfg", UID)));
        assert!(caches.observe(t, &Arc::new(there)));

        caches.listing_started(t, Some("ns"));
        caches.listing_done(t, Some("ns"));
        assert!(
            caches.object(t, "ns", "cfg").is_none(),
            "not seen in its relist"
        );
        assert!(
            caches.object(t, "other", "cfg").is_some(),
            "another scope's"
        );

        // A relist that sees it keeps it.
        assert!(caches.observe(t, &cm("cfg", UID)));
        caches.listing_started(t, Some("ns"));
        assert!(caches.observe(t, &cm("cfg", UID)));
        caches.listing_done(t, Some("ns"));
        assert!(caches.object(t, "ns", "cfg").is_some());

        // Syncs are looked up in their namespace's store only.
        assert!(caches.sync("ns", "x").is_none());
        assert_eq!(caches.syncs.len(), 2);
    }

    /// A device report's binding check needs no Device: the node's live sync for it is enough.
    #[test]
    fn a_node_syncs_what_its_live_syncs_name_and_nothing_else() {
        let (caches, mut w) = Caches::new(&[None]);
        let name = format!("edge-1.{UID}");
        let mut device = sync();
        device.spec.object_kind = "Device".into();
        device.spec.object_name = "thermo".into();
        w.syncs[0]
            .1
            .apply_watcher_event(&kube::runtime::watcher::Event::Apply(device.clone()));
        lock(&caches.index).add("edge-1", UID, "ns", &name);
        let t = ResourceType::Device;
        assert!(caches.node_syncs("edge-1", t, "ns", "thermo"));
        assert!(
            !caches.node_syncs("edge-2", t, "ns", "thermo"),
            "another node"
        );
        assert!(
            !caches.node_syncs("edge-1", t, "other", "thermo"),
            "another namespace"
        );
        assert!(
            !caches.node_syncs("edge-1", t, "ns", "other"),
            "another device"
        );
        assert!(!caches.node_syncs("edge-1", ResourceType::ConfigMap, "ns", "thermo"));
        // Being deleted from the edge (the Device moved away): no longer bound.
        device.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        w.syncs[0]
            .1
            .apply_watcher_event(&kube::runtime::watcher::Event::Apply(device));
        assert!(!caches.node_syncs("edge-1", t, "ns", "thermo"));
    }

    #[tokio::test]
    async fn fetches_are_asked_once_until_taken() {
        let q = FetchQueue::default();
        let k = (ResourceType::Secret, "ns".to_string(), "s".to_string());
        q.request(k.clone());
        q.request(k.clone());
        assert_eq!(q.len(), 1);
        assert_eq!(q.next().await, k);
        assert!(q.is_empty());
        q.request(k);
        assert_eq!(q.len(), 1);
    }
}
