//! What wakes a job: cache events mapped to the jobs they concern, at most one wake per job per
//! second. The clock wakes a job only for what the clock drives (see [`crate::reconcile`]).
//!
//! - a pod of a workload a job holds, or labelled with a job's uid (its pre-pull pods);
//! - a node whose readiness or labels changed, through the pods on it;
//! - a workload given back by a job: the jobs waiting for it;
//! - a finished relist of the pod cache: every job (anything may have changed).
//!
//! [`Interest`] is the small index job ↔ workloads that reconciles keep up to date; it lives in
//! memory only, and is rebuilt by the first reconcile of every job after a restart (the
//! Controller reconciles every job when it starts). [`Throttle`] is the rate limit: the first
//! wake of a job goes at once, the next ones within a second are merged into one at the end of
//! that second (kube's own debounce keeps postponing under a steady stream, and would starve
//! a job whose pods change every few hundred milliseconds).

use futures::StreamExt;
use futures::channel::mpsc;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use edgefleet_api::rollout::{RolloutJob, keys};

use crate::cached::{CachedNode, CachedPod};
use crate::index::{PodIndex, WorkloadKey};

pub type JobRef = ObjectRef<RolloutJob>;

/// At most one wake per job in this long.
pub const WAKE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Registry {
    /// A job's uid and the workloads it holds or waits for.
    jobs: HashMap<JobRef, (String, Vec<WorkloadKey>, bool)>,
    by_uid: HashMap<String, JobRef>,
    holders: HashMap<WorkloadKey, HashSet<JobRef>>,
    waiters: HashMap<WorkloadKey, HashSet<JobRef>>,
}

impl Registry {
    fn forget(&mut self, job: &JobRef) {
        let Some((uid, workloads, waiting)) = self.jobs.remove(job) else {
            return;
        };
        self.by_uid.remove(&uid);
        let map = if waiting {
            &mut self.waiters
        } else {
            &mut self.holders
        };
        for w in &workloads {
            if let Some(set) = map.get_mut(w) {
                set.remove(job);
                if set.is_empty() {
                    map.remove(w);
                }
            }
        }
    }

    fn set(&mut self, job: &JobRef, uid: &str, workloads: Vec<WorkloadKey>, waiting: bool) {
        if self
            .jobs
            .get(job)
            .is_some_and(|(u, w, wt)| u == uid && *w == workloads && *wt == waiting)
        {
            return;
        }
        self.forget(job);
        let map = if waiting {
            &mut self.waiters
        } else {
            &mut self.holders
        };
        for w in &workloads {
            map.entry(w.clone()).or_default().insert(job.clone());
        }
        self.by_uid.insert(uid.to_string(), job.clone());
        self.jobs
            .insert(job.clone(), (uid.to_string(), workloads, waiting));
    }
}

/// The index job ↔ workloads, and the sender of wakes.
#[derive(Clone)]
pub struct Interest {
    registry: Arc<Mutex<Registry>>,
    wakes: mpsc::UnboundedSender<JobRef>,
}

impl Interest {
    /// The index, and the stream of (unthrottled) wakes it sends.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<JobRef>) {
        let (wakes, rx) = mpsc::unbounded();
        (
            Self {
                registry: Arc::default(),
                wakes,
            },
            rx,
        )
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The job drives these workloads: their pods (and its pre-pull pods) wake it.
    pub fn holds(&self, job: &JobRef, uid: &str, workloads: Vec<WorkloadKey>) {
        self.registry().set(job, uid, workloads, false);
    }

    /// The job waits for these workloads to be given back: their release wakes it.
    pub fn waits_for(&self, job: &JobRef, uid: &str, workloads: Vec<WorkloadKey>) {
        self.registry().set(job, uid, workloads, true);
    }

    /// The job is done with (or gone): nothing wakes it but its own changes.
    pub fn forget(&self, job: &JobRef) {
        self.registry().forget(job);
    }

    fn send(&self, jobs: impl IntoIterator<Item = JobRef>) {
        for job in jobs {
            // Closed only when the controller stopped: nothing left to wake.
            let _ = self.wakes.unbounded_send(job);
        }
    }

    /// The jobs a pod concerns.
    pub fn jobs_of_pod(&self, pod: &CachedPod) -> HashSet<JobRef> {
        let registry = self.registry();
        let mut jobs = HashSet::new();
        if let Some(w) = WorkloadKey::of_pod(pod)
            && let Some(holders) = registry.holders.get(&w)
        {
            jobs.extend(holders.iter().cloned());
        }
        if let Some(job) = pod
            .labels()
            .get(keys::JOB_UID_LABEL)
            .and_then(|uid| registry.by_uid.get(uid))
        {
            jobs.insert(job.clone());
        }
        jobs
    }

    /// A pod changed: wake the jobs it concerns (before and after the change).
    pub fn pod_changed(&self, old: Option<&CachedPod>, new: Option<&CachedPod>) {
        let mut jobs = HashSet::new();
        for pod in [old, new].into_iter().flatten() {
            jobs.extend(self.jobs_of_pod(pod));
        }
        self.send(jobs);
    }

    /// A node's readiness or labels changed: wake the jobs of the pods on it.
    pub fn node_changed(&self, pods: &PodIndex, node: &str) {
        let mut jobs = HashSet::new();
        for pod in pods.on_node(node) {
            jobs.extend(self.jobs_of_pod(&pod));
        }
        self.send(jobs);
    }

    /// These workloads were given back: wake the jobs waiting for them.
    pub fn released(&self, workloads: &[WorkloadKey]) {
        let jobs: HashSet<JobRef> = {
            let registry = self.registry();
            workloads
                .iter()
                .filter_map(|w| registry.waiters.get(w))
                .flatten()
                .cloned()
                .collect()
        };
        self.send(jobs);
    }

    /// Wake every job known (after a relist of the pod cache).
    pub fn everyone(&self) {
        let jobs: Vec<JobRef> = self.registry().jobs.keys().cloned().collect();
        self.send(jobs);
    }
}

/// Does a node event matter to a plan? Only its readiness and labels are read.
pub fn node_moved(old: Option<&CachedNode>, new: &CachedNode) -> bool {
    old.is_none_or(|old| old.ready() != new.ready() || old.labels() != new.labels())
}

/// At most one wake per job per [`WAKE_INTERVAL`]: the first at once, the rest merged into
/// one at the end of the interval. Pure (time passed in), so it is tested without a runtime.
#[derive(Default)]
pub struct Throttle {
    /// When each job was last let through.
    last: HashMap<JobRef, Instant>,
    /// Jobs asked for within their interval, and when they may go.
    deferred: HashMap<JobRef, Instant>,
}

impl Throttle {
    /// A wake asked for at `now`: `Some` to send it now, `None` when deferred (or already).
    pub fn offer(&mut self, job: JobRef, now: Instant) -> Option<JobRef> {
        if self.deferred.contains_key(&job) {
            return None;
        }
        match self.last.get(&job) {
            Some(at) if *at + WAKE_INTERVAL > now => {
                self.deferred.insert(job, *at + WAKE_INTERVAL);
                None
            }
            _ => {
                self.last.insert(job.clone(), now);
                Some(job)
            }
        }
    }

    /// The deferred wakes due at `now`; forgets jobs quiet for an interval (memory stays
    /// bounded by the jobs woken in the last second).
    pub fn due(&mut self, now: Instant) -> Vec<JobRef> {
        let due: Vec<JobRef> = self
            .deferred
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(j, _)| j.clone())
            .collect();
        for job in &due {
            self.deferred.remove(job);
            self.last.insert(job.clone(), now);
        }
        let deferred = &self.deferred;
        self.last
            .retain(|j, at| *at + WAKE_INTERVAL > now || deferred.contains_key(j));
        due
    }

    /// When the next deferred wake is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.deferred.values().min().copied()
    }
}

/// The wakes from `rx`, throttled: a stream for `Controller::reconcile_on`.
pub fn throttled(
    mut rx: mpsc::UnboundedReceiver<JobRef>,
) -> impl futures::Stream<Item = JobRef> + Send + 'static {
    let (out, out_rx) = mpsc::unbounded();
    tokio::spawn(async move {
        let mut throttle = Throttle::default();
        loop {
            let next = throttle.next_due();
            let job = tokio::select! {
                job = rx.next() => match job {
                    Some(job) => job,
                    None => return,
                },
                () = sleep_until(next) => {
                    for job in throttle.due(Instant::now()) {
                        if out.unbounded_send(job).is_err() {
                            return;
                        }
                    }
                    continue;
                }
            };
            if let Some(job) = throttle.offer(job, Instant::now())
                && out.unbounded_send(job).is_err()
            {
                return;
            }
        }
    });
    out_rx
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str) -> JobRef {
        ObjectRef::new(name).within("ns")
    }

    /// A storm of wakes for one job lets one through at once and one per second after, never
    /// postponing forever; another job is not held back by it.
    #[test]
    fn a_storm_wakes_a_job_once_a_second() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut th = Throttle::default();
        let mut sent = Vec::new();
        for n in (0..3000).step_by(100) {
            if th.offer(job("a"), ms(n)).is_some() {
                sent.push(n);
            }
            for _ in th.due(ms(n)) {
                sent.push(n);
            }
        }
        assert_eq!(sent, [0, 1000, 2000]);
        assert_eq!(
            th.next_due(),
            Some(ms(3000)),
            "the last ones merged, not lost"
        );
        assert!(th.offer(job("b"), ms(2950)).is_some());
        assert_eq!(th.due(ms(3000)), [job("a")]);
        assert!(th.due(ms(5000)).is_empty());
        assert!(th.offer(job("a"), ms(5000)).is_some(), "quiet for a second");
    }

    fn pod(owner: &str, labels: serde_json::Value) -> CachedPod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": owner,
                    "uid": "u", "controller": true}]},
        }))
        .unwrap()
    }

    #[test]
    fn pods_wake_the_jobs_that_hold_their_workload_or_label_them() {
        let (interest, _rx) = Interest::new();
        let toll = WorkloadKey::new("ns", "DaemonSet", "toll");
        interest.holds(&job("a"), "uid-a", vec![toll.clone()]);
        interest.waits_for(&job("b"), "uid-b", vec![toll.clone()]);
        let of = |p: &CachedPod| {
            let mut j: Vec<String> = interest
                .jobs_of_pod(p)
                .into_iter()
                .map(|j| j.name)
                .collect();
            j.sort();
            j
        };
        assert_eq!(of(&pod("toll", serde_json::json!({}))), ["a"], "b waits");
        assert!(of(&pod("other", serde_json::json!({}))).is_empty());
        assert_eq!(
            of(&pod(
                "other",
                serde_json::json!({keys::JOB_UID_LABEL: "uid-b"})
            )),
            ["b"]
        );
        interest.forget(&job("a"));
        assert!(of(&pod("toll", serde_json::json!({}))).is_empty());
        interest.holds(&job("b"), "uid-b", vec![toll]);
        assert_eq!(of(&pod("toll", serde_json::json!({}))), ["b"]);
    }
}
