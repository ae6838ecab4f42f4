//! The status writer: what the edges acknowledged, recorded on the ObjectSyncs.
//!
//! Sessions never wait on the API. They [`StatusBoard::record`] what happened into the board,
//! which keeps one entry per ObjectSync (the latest ACK, a give-up, a delete) — a burst of ACKs
//! of one sync is one write — and is bounded: it never holds more entries than `capacity`
//! (beyond it a record is refused, counted and logged, and the sync is left to the objectsync
//! resync). [`run`] drains it with a fixed number of writes in flight, in the order syncs first
//! entered the board.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use edgefleet_api::objectsync::{CONDITION_DELIVERED, FINALIZER, ObjectSync};
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;

use crate::cache::Caches;
use crate::lock;
use crate::metrics::HubMetrics;
use crate::wire::{FIELD_MANAGER, acked_rv, grows};

/// An ObjectSync: (namespace, name).
pub type SyncKey = (String, String);

/// What happened to one sync since its last write.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entry {
    /// The edge stored this version (the highest seen).
    pub acked: Option<Ack>,
    /// A message was sent the maximum number of times without an ACK.
    pub gave_up: Option<u32>,
    /// The edge ACKed the delete: remove the finalizer.
    pub deleted: bool,
    /// Writes of this entry that failed on a transient error.
    pub failures: u32,
}

/// What the edge stored of one sync's object.
#[derive(Clone, Debug, PartialEq)]
pub struct Ack {
    pub rv: String,
    /// Sends it took.
    pub attempts: u32,
    /// The object's content version, for kinds delivered by content
    /// (`edgefleet_api::objectsync::content_version`).
    pub content: Option<String>,
}

/// One event of a sync, as a session reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Acked(Ack),
    GaveUp { attempts: u32 },
    EdgeDeleted,
}

impl Entry {
    /// Folds `event` in: the acked version only grows, a delete stays.
    pub fn merge(&mut self, event: Event) {
        match event {
            Event::Acked(ack) => {
                let newer = match &self.acked {
                    None => true,
                    Some(current) => grows(&current.rv, &ack.rv),
                };
                if newer {
                    self.acked = Some(ack);
                }
            }
            Event::GaveUp { attempts } => self.gave_up = Some(attempts),
            Event::EdgeDeleted => self.deleted = true,
        }
    }

    fn absorb(&mut self, other: Entry) {
        if let Some(ack) = other.acked {
            self.merge(Event::Acked(ack));
        }
        if other.gave_up.is_some() {
            self.gave_up = other.gave_up;
        }
        self.deleted |= other.deleted;
        self.failures = self.failures.max(other.failures);
    }
}

#[derive(Debug, Default)]
struct Pending {
    entries: HashMap<SyncKey, Entry>,
    order: VecDeque<SyncKey>,
}

/// The bounded, coalescing board between the sessions and the status writer.
#[derive(Debug)]
pub struct StatusBoard {
    pending: std::sync::Mutex<Pending>,
    wake: Notify,
    capacity: usize,
}

impl StatusBoard {
    pub fn new(capacity: usize) -> Self {
        StatusBoard {
            pending: std::sync::Mutex::new(Pending::default()),
            wake: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `event` of `key`; `false` when the board is full and `key` not already on it.
    pub fn record(&self, key: SyncKey, event: Event) -> bool {
        let mut entry = Entry::default();
        entry.merge(event);
        self.put(key, entry)
    }

    fn put(&self, key: SyncKey, entry: Entry) -> bool {
        {
            let mut p = lock(&self.pending);
            if let Some(e) = p.entries.get_mut(&key) {
                e.absorb(entry);
                return true;
            }
            if p.entries.len() >= self.capacity {
                return false;
            }
            p.order.push_back(key.clone());
            p.entries.insert(key, entry);
        }
        self.wake.notify_one();
        true
    }

    /// Syncs waiting for a write.
    pub fn len(&self) -> usize {
        lock(&self.pending).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pop(&self) -> Option<(SyncKey, Entry)> {
        let mut p = lock(&self.pending);
        while let Some(key) = p.order.pop_front() {
            if let Some(e) = p.entries.remove(&key) {
                return Some((key, e));
            }
        }
        None
    }

    /// The oldest entry, waiting for one.
    pub async fn next(&self) -> (SyncKey, Entry) {
        loop {
            if let Some(x) = self.pop() {
                return x;
            }
            self.wake.notified().await;
        }
    }
}

/// What the writer's parts share.
#[derive(Clone)]
pub struct Writer {
    pub client: Client,
    pub caches: Arc<Caches>,
    pub metrics: HubMetrics,
    pub board: Arc<StatusBoard>,
}

/// Transient failures are retried this many times (back on the board), then given up.
const MAX_FAILURES: u32 = 3;
/// Optimistic-lock conflicts retried at once before giving up.
const MAX_CONFLICTS: usize = 4;

/// Why a write did not happen.
enum Outcome {
    Done,
    /// Conflicted [`MAX_CONFLICTS`] times in a row.
    Conflicts,
    Failed(kube::Error),
}

/// Drains the board with `concurrency` writes in flight, until the task is dropped.
pub async fn run(writer: Writer, concurrency: usize) {
    let board = writer.board.clone();
    futures::stream::unfold(board, |b| async move {
        let item = b.next().await;
        Some((item, b))
    })
    .for_each_concurrent(concurrency.max(1), |(key, entry)| {
        let w = writer.clone();
        async move { w.write(key, entry).await }
    })
    .await;
}

impl Writer {
    async fn write(&self, key: SyncKey, entry: Entry) {
        self.metrics
            .status_pending
            .set(i64::try_from(self.board.len()).unwrap_or(i64::MAX));
        let (ns, name) = (&key.0, &key.1);
        let (action, outcome) = if entry.deleted {
            ("remove_finalizer", self.remove_finalizer(ns, name).await)
        } else if let Some(ack) = &entry.acked {
            ("patch_acked", self.patch_acked(ns, name, ack).await)
        } else if let Some(attempts) = entry.gave_up {
            (
                "patch_attempts",
                self.patch_gave_up(ns, name, attempts).await,
            )
        } else {
            return;
        };
        match outcome {
            Outcome::Done => {}
            Outcome::Conflicts => self.give_up(action, ns, name, "conflicts"),
            Outcome::Failed(e) => {
                self.metrics.api_errors.with_label_values(&[action]).inc();
                if entry.failures + 1 < MAX_FAILURES && transient(&e) {
                    tracing::debug!(namespace = %ns, %name, action, error = %e, "retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let mut again = entry;
                    again.failures += 1;
                    let (ns, name) = (ns.clone(), name.clone());
                    if !self.board.put(key, again) {
                        self.give_up(action, &ns, &name, "board full");
                    }
                } else {
                    self.give_up(action, ns, name, &e.to_string());
                }
            }
        }
    }

    /// One line and one count per write abandoned: the sync is left to the objectsync resync.
    fn give_up(&self, action: &str, ns: &str, name: &str, why: &str) {
        self.metrics
            .status_give_ups
            .with_label_values(&[action])
            .inc();
        tracing::warn!(namespace = %ns, %name, action, why, "ObjectSync write given up; left to resync");
    }

    fn api(&self, ns: &str) -> Api<ObjectSync> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Records an ACK: `objectResourceVersion` only if it grows, under an optimistic lock (the
    /// sync's resourceVersion), so two writers can never move it back. The cached sync is the
    /// first guess; a conflict reads the current one. The content version, when there is one,
    /// is written with the version it belongs to.
    async fn patch_acked(&self, ns: &str, name: &str, ack: &Ack) -> Outcome {
        let (rv, attempts) = (ack.rv.as_str(), ack.attempts);
        let api = self.api(ns);
        let mut current = self.caches.sync(ns, name).map(|s| (*s).clone());
        for _ in 0..MAX_CONFLICTS {
            let sync = match current.take() {
                Some(s) => s,
                None => match api.get_opt(name).await {
                    Ok(Some(s)) => s,
                    Ok(None) => return Outcome::Done,
                    Err(e) => return Outcome::Failed(e),
                },
            };
            if !grows(acked_rv(&sync), rv) {
                return Outcome::Done;
            }
            let now = now_time();
            let patch = json!({
                "metadata": {"resourceVersion": sync.metadata.resource_version},
                "status": {
                    "objectResourceVersion": rv,
                    "objectContentVersion": ack.content,
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
                Ok(_) => return Outcome::Done,
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(kube::Error::Api(e)) if e.code == 404 => return Outcome::Done,
                Err(e) => return Outcome::Failed(e),
            }
        }
        Outcome::Conflicts
    }

    async fn patch_gave_up(&self, ns: &str, name: &str, attempts: u32) -> Outcome {
        let patch = json!({"status": {"attempts": attempts, "lastAttemptTime": now_time()}});
        match self
            .api(ns)
            .patch_status(name, &params(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => Outcome::Done,
            Err(kube::Error::Api(e)) if e.code == 404 => Outcome::Done,
            Err(e) => Outcome::Failed(e),
        }
    }

    /// Removes [`FINALIZER`] from a sync the edge deleted the object of (under an optimistic
    /// lock: other finalizers are kept). The cached sync is the first guess.
    async fn remove_finalizer(&self, ns: &str, name: &str) -> Outcome {
        let api = self.api(ns);
        let mut current = self.caches.sync(ns, name).map(|s| (*s).clone());
        for _ in 0..MAX_CONFLICTS {
            let sync = match current.take() {
                Some(s) => s,
                None => match api.get_opt(name).await {
                    Ok(Some(s)) => s,
                    Ok(None) => return Outcome::Done,
                    Err(e) => return Outcome::Failed(e),
                },
            };
            let finalizers = sync.finalizers();
            if !finalizers.iter().any(|f| f == FINALIZER) {
                return Outcome::Done;
            }
            let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
            let patch = json!({"metadata": {
                "resourceVersion": sync.metadata.resource_version,
                "finalizers": rest,
            }});
            match api.patch(name, &params(), &Patch::Merge(patch)).await {
                Ok(_) => return Outcome::Done,
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(kube::Error::Api(e)) if e.code == 404 => return Outcome::Done,
                Err(e) => return Outcome::Failed(e),
            }
        }
        Outcome::Conflicts
    }
}

/// A failure worth another try: no answer, or the server's own trouble.
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        _ => true,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> SyncKey {
        ("ns".into(), n.into())
    }

    fn ack(rv: &str) -> Ack {
        Ack {
            rv: rv.into(),
            attempts: 1,
            content: Some(format!("c{rv}")),
        }
    }

    fn acked(rv: &str) -> Event {
        Event::Acked(ack(rv))
    }

    #[test]
    fn a_sync_is_one_entry_holding_its_highest_ack() {
        let board = StatusBoard::new(10);
        for (k, e) in [
            ("a", acked("5")),
            ("b", acked("1")),
            ("a", acked("9")),
            ("a", acked("7")),
            ("a", Event::GaveUp { attempts: 5 }),
            ("b", Event::EdgeDeleted),
        ] {
            assert!(board.record(key(k), e));
        }
        assert_eq!(board.len(), 2);
        let (k, a) = board.pop().unwrap();
        assert_eq!(k, key("a"), "first in, first out");
        assert_eq!(
            a.acked,
            Some(ack("9")),
            "a late ACK never moves it back, nor the content version that came with it"
        );
        assert_eq!(a.gave_up, Some(5));
        let (_, b) = board.pop().unwrap();
        assert!(b.deleted);
        assert!(board.pop().is_none());
    }

    #[test]
    fn a_full_board_refuses_new_syncs_and_still_coalesces_known_ones() {
        let board = StatusBoard::new(2);
        assert!(board.record(key("a"), acked("1")));
        assert!(board.record(key("b"), acked("1")));
        assert!(!board.record(key("c"), acked("1")), "bounded");
        assert!(
            board.record(key("a"), acked("2")),
            "coalesced into its entry"
        );
        assert_eq!(board.len(), 2);
    }

    #[tokio::test]
    async fn next_waits_for_a_record() {
        let board = Arc::new(StatusBoard::new(4));
        let b = board.clone();
        let waiter = tokio::spawn(async move { b.next().await });
        tokio::task::yield_now().await;
        assert!(board.record(key("a"), Event::EdgeDeleted));
        let (k, e) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((k, e.deleted), (key("a"), true));
    }

    #[test]
    fn only_no_answer_and_server_trouble_are_retried() {
        let api = |code| {
            kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert!(transient(&api(500)));
        assert!(transient(&api(429)));
        assert!(!transient(&api(403)));
        assert!(!transient(&api(422)));
    }
}
