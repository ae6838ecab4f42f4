//! The replica's caches: reflector stores of ObjectSyncs and of the delivered kinds (managedFields
//! stripped), and the index object UID → nodes / node → syncs. Data only: the watchers that fill
//! them and act on their events are in [`crate::route`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use edgefleet_api::objectsync::{ObjectSync, RESYNC_ANNOTATION, object_uid_of};
use edgefleet_channel::ResourceType;
use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::discovery::ApiResource;
use kube::runtime::reflector::{self, ObjectRef, Store};

use crate::lock;
use crate::wire::{DELIVERED, api_resource};

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

/// The reflectors' stores plus the index, shared by every session.
pub struct Caches {
    pub syncs: Store<ObjectSync>,
    objects: BTreeMap<ResourceType, (ApiResource, Store<DynamicObject>)>,
    pub index: Mutex<SyncIndex>,
}

/// The reflector writers, consumed by [`run_watchers`].
pub struct Writers {
    pub syncs: reflector::store::Writer<ObjectSync>,
    pub objects: Vec<(
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
        for sync in self.syncs.state() {
            if let Some((node, uid, ns, name)) = keys(&sync) {
                index.add(node, uid, &ns, &name);
                let key = (ns, name);
                if let Some(seen) = guard.seen.remove(&key) {
                    index.seen.insert(key, seen);
                }
            }
        }
        *guard = index;
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

impl Caches {
    /// Every object store, to wait for their first list.
    pub fn object_stores(&self) -> impl Iterator<Item = &Store<DynamicObject>> {
        self.objects.values().map(|(_, s)| s)
    }
}
