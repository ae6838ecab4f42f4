//! The pod cache, indexed the ways a reconcile and the wake-up path look pods up, so neither
//! scans every pod of the cluster (100,000 at the reference user):
//!
//! - by workload (the pod's controlling owner; a Deployment's pods through their ReplicaSet's
//!   name, `<deployment>-<pod-template-hash>`, so no ReplicaSet is read),
//! - by job (the `JOB_UID_LABEL` of pre-pull pods),
//! - by node (where it is bound or pinned), for node events.
//!
//! Invariants: the indexes hold exactly the keys of `pods`; a relist (the watcher's
//! `Init`..`InitDone`) replaces everything at `InitDone`, as kube's reflector does, so a
//! reconcile never sees half a relist. A poisoned lock is taken over: the maps are rebuilt from
//! whole events, never left half-written by a panic between two statements that matter.

use edgefleet_api::rollout::keys;
use kube::ResourceExt;
use kube::runtime::watcher;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::cached::CachedPod;

/// `(namespace, name)` of a pod.
pub type PodKey = (String, String);

/// A workload as pods name it: `(namespace, kind, name)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadKey {
    pub namespace: String,
    pub kind: String,
    pub name: String,
}

impl WorkloadKey {
    pub fn new(namespace: &str, kind: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
        }
    }

    /// The workload controlling a pod: its controller owner, a ReplicaSet read as the
    /// Deployment it belongs to.
    pub fn of_pod(pod: &CachedPod) -> Option<Self> {
        let ns = pod.namespace()?;
        let owner = pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))?;
        if owner.kind == "ReplicaSet"
            && let Some(hash) = pod.labels().get("pod-template-hash")
            && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}"))
        {
            return Some(Self::new(&ns, "Deployment", deployment));
        }
        Some(Self::new(&ns, &owner.kind, &owner.name))
    }
}

/// What one pod is indexed under.
#[derive(Default)]
struct Entries {
    workload: Option<WorkloadKey>,
    job: Option<String>,
    node: Option<String>,
}

fn entries(pod: &CachedPod) -> Entries {
    Entries {
        workload: WorkloadKey::of_pod(pod),
        job: pod.labels().get(keys::JOB_UID_LABEL).cloned(),
        node: pod.intended_node(),
    }
}

#[derive(Default)]
struct Maps {
    pods: HashMap<PodKey, Arc<CachedPod>>,
    by_workload: HashMap<WorkloadKey, HashSet<PodKey>>,
    by_job: HashMap<String, HashSet<PodKey>>,
    by_node: HashMap<String, HashSet<PodKey>>,
}

fn add<K: std::hash::Hash + Eq>(map: &mut HashMap<K, HashSet<PodKey>>, k: K, pod: &PodKey) {
    map.entry(k).or_default().insert(pod.clone());
}

fn remove<K: std::hash::Hash + Eq>(map: &mut HashMap<K, HashSet<PodKey>>, k: &K, pod: &PodKey) {
    if let Some(set) = map.get_mut(k) {
        set.remove(pod);
        if set.is_empty() {
            map.remove(k);
        }
    }
}

impl Maps {
    fn insert(&mut self, pod: Arc<CachedPod>) {
        let key = key_of(&pod);
        self.remove(&key);
        let e = entries(&pod);
        if let Some(w) = e.workload {
            add(&mut self.by_workload, w, &key);
        }
        if let Some(j) = e.job {
            add(&mut self.by_job, j, &key);
        }
        if let Some(n) = e.node {
            add(&mut self.by_node, n, &key);
        }
        self.pods.insert(key, pod);
    }

    fn remove(&mut self, key: &PodKey) -> Option<Arc<CachedPod>> {
        let old = self.pods.remove(key)?;
        let e = entries(&old);
        if let Some(w) = &e.workload {
            remove(&mut self.by_workload, w, key);
        }
        if let Some(j) = &e.job {
            remove(&mut self.by_job, j, key);
        }
        if let Some(n) = &e.node {
            remove(&mut self.by_node, n, key);
        }
        Some(old)
    }

    fn get_all<'a>(&'a self, keys: Option<&'a HashSet<PodKey>>) -> Vec<Arc<CachedPod>> {
        keys.into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k).cloned())
            .collect()
    }
}

fn key_of(pod: &CachedPod) -> PodKey {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

#[derive(Default)]
struct Inner {
    live: Maps,
    /// A relist in progress: replaces `live` at `InitDone`.
    relist: Option<Maps>,
    ready: bool,
}

/// What an event changed, for the wake-up path: the pods before and after.
pub enum Change {
    /// One pod added, updated or deleted: its old version (if any) and its new one (if any).
    Pod(Option<Arc<CachedPod>>, Option<Arc<CachedPod>>),
    /// A relist finished: anything may have changed.
    Relisted,
    /// Nothing a reader sees yet (a relist in progress).
    None,
}

/// The pod cache with its indexes; cheap to clone (one shared map).
#[derive(Clone, Default)]
pub struct PodIndex {
    inner: Arc<RwLock<Inner>>,
    ready: Arc<tokio::sync::Notify>,
}

impl PodIndex {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one watcher event; says what changed.
    pub fn apply(&self, event: watcher::Event<CachedPod>) -> Change {
        let mut inner = self.write();
        match event {
            watcher::Event::Apply(pod) => {
                let pod = Arc::new(pod);
                let old = inner.live.pods.get(&key_of(&pod)).cloned();
                inner.live.insert(pod.clone());
                Change::Pod(old, Some(pod))
            }
            watcher::Event::Delete(pod) => {
                let old = inner.live.remove(&key_of(&pod));
                Change::Pod(old, Some(Arc::new(pod)))
            }
            watcher::Event::Init => {
                inner.relist = Some(Maps::default());
                Change::None
            }
            watcher::Event::InitApply(pod) => {
                if let Some(relist) = inner.relist.as_mut() {
                    relist.insert(Arc::new(pod));
                }
                Change::None
            }
            watcher::Event::InitDone => {
                if let Some(relist) = inner.relist.take() {
                    inner.live = relist;
                }
                if !inner.ready {
                    inner.ready = true;
                    self.ready.notify_waiters();
                }
                Change::Relisted
            }
        }
    }

    /// Waits for the first complete list.
    pub async fn wait_until_ready(&self) {
        loop {
            let notified = self.ready.notified();
            if self.read().ready {
                return;
            }
            notified.await;
        }
    }

    /// The pods a workload controls (for a Deployment: through its ReplicaSets).
    pub fn of_workload(&self, key: &WorkloadKey) -> Vec<Arc<CachedPod>> {
        let inner = self.read();
        inner.live.get_all(inner.live.by_workload.get(key))
    }

    /// The pods labelled with a job's uid (its pre-pull pods).
    pub fn of_job(&self, job_uid: &str) -> Vec<Arc<CachedPod>> {
        let inner = self.read();
        inner.live.get_all(inner.live.by_job.get(job_uid))
    }

    /// The pods bound (or pinned) to a node.
    pub fn on_node(&self, node: &str) -> Vec<Arc<CachedPod>> {
        let inner = self.read();
        inner.live.get_all(inner.live.by_node.get(node))
    }

    /// How many pods the cache holds.
    pub fn len(&self) -> usize {
        self.read().live.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, owner: (&str, &str), labels: serde_json::Value, node: &str) -> CachedPod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner.0, "name": owner.1,
                    "uid": "u", "controller": true}]},
            "spec": {"nodeName": node, "containers": []}
        }))
        .unwrap()
    }

    fn names(pods: Vec<Arc<CachedPod>>) -> Vec<String> {
        let mut n: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        n.sort();
        n
    }

    #[test]
    fn pods_are_found_by_workload_job_and_node() {
        let index = PodIndex::default();
        index.apply(watcher::Event::Apply(pod(
            "toll-a",
            ("DaemonSet", "toll"),
            serde_json::json!({}),
            "n1",
        )));
        index.apply(watcher::Event::Apply(pod(
            "api-7d9-x",
            ("ReplicaSet", "api-7d9"),
            serde_json::json!({"pod-template-hash": "7d9"}),
            "n1",
        )));
        index.apply(watcher::Event::Apply(pod(
            "api-v2-5f-y",
            ("ReplicaSet", "api-v2-5f"),
            serde_json::json!({"pod-template-hash": "5f"}),
            "n2",
        )));
        index.apply(watcher::Event::Apply(pod(
            "pp",
            ("RolloutJob", "j"),
            serde_json::json!({keys::JOB_UID_LABEL: "job-uid"}),
            "n2",
        )));
        let w = |kind, name| WorkloadKey::new("ns", kind, name);
        assert_eq!(
            names(index.of_workload(&w("DaemonSet", "toll"))),
            ["toll-a"]
        );
        assert_eq!(
            names(index.of_workload(&w("Deployment", "api"))),
            ["api-7d9-x"],
            "not api-v2's pods"
        );
        assert_eq!(names(index.of_job("job-uid")), ["pp"]);
        assert_eq!(names(index.on_node("n1")), ["api-7d9-x", "toll-a"]);

        index.apply(watcher::Event::Delete(pod(
            "toll-a",
            ("DaemonSet", "toll"),
            serde_json::json!({}),
            "n1",
        )));
        assert!(index.of_workload(&w("DaemonSet", "toll")).is_empty());
        assert_eq!(names(index.on_node("n1")), ["api-7d9-x"]);
        assert_eq!(index.len(), 3);
    }

    /// A relist replaces the cache at its end, dropping pods deleted while the watch was down;
    /// until then readers see the old picture, never half of the new one.
    #[test]
    fn a_relist_replaces_everything_at_its_end() {
        let index = PodIndex::default();
        let ds = |name: &str| pod(name, ("DaemonSet", "toll"), serde_json::json!({}), name);
        index.apply(watcher::Event::Apply(ds("a")));
        index.apply(watcher::Event::Apply(ds("b")));
        index.apply(watcher::Event::Init);
        index.apply(watcher::Event::InitApply(ds("b")));
        let toll = WorkloadKey::new("ns", "DaemonSet", "toll");
        assert_eq!(names(index.of_workload(&toll)), ["a", "b"]);
        assert!(matches!(
            index.apply(watcher::Event::InitDone),
            Change::Relisted
        ));
        assert_eq!(names(index.of_workload(&toll)), ["b"]);
        assert!(index.on_node("a").is_empty());
    }
}
