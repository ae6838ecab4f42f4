//! The work queue of node names: each node is reconciled by one worker at a time, a node
//! queued several times before a worker takes it is reconciled once, and a node can be
//! scheduled for later (resync windows, retries). Memory is O(queued nodes).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Default)]
struct State {
    ready: VecDeque<String>,
    /// In `ready`.
    queued: HashSet<String>,
    /// Taken by a worker and not `done` yet.
    active: HashSet<String>,
    /// Queued again while active: goes back to `ready` on `done`.
    again: HashSet<String>,
    delayed: BTreeSet<(Instant, String)>,
    /// The one pending time of each delayed node (the earliest asked for).
    delay_of: HashMap<String, Instant>,
}

/// A deduplicating, delaying queue of node names shared by the watchers and the workers.
#[derive(Default)]
pub struct Queue {
    state: Mutex<State>,
    notify: Notify,
}

impl Queue {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A worker that panicked while holding the lock left consistent sets behind (every
        // mutation is a single insert/remove), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `node` for a reconcile as soon as a worker is free.
    pub fn add(&self, node: &str) {
        let mut s = self.lock();
        Self::add_locked(&mut s, node);
        drop(s);
        self.notify.notify_one();
    }

    fn add_locked(s: &mut State, node: &str) {
        if s.active.contains(node) {
            s.again.insert(node.to_owned());
        } else if s.queued.insert(node.to_owned()) {
            s.ready.push_back(node.to_owned());
        }
    }

    /// Queues `node` at `at` (or earlier if it is already scheduled earlier).
    pub fn add_at(&self, node: &str, at: Instant) {
        let mut s = self.lock();
        if let Some(&old) = s.delay_of.get(node) {
            if old <= at {
                return;
            }
            s.delayed.remove(&(old, node.to_owned()));
        }
        s.delay_of.insert(node.to_owned(), at);
        s.delayed.insert((at, node.to_owned()));
        drop(s);
        // Wakes a waiting worker so it recomputes its sleep.
        self.notify.notify_one();
    }

    /// Waits for the next node to reconcile; call [`Queue::done`] with it afterwards.
    pub async fn next(&self) -> String {
        loop {
            let notified = self.notify.notified();
            let wake_at = {
                let mut s = self.lock();
                let now = Instant::now();
                while let Some((at, _)) = s.delayed.first() {
                    if *at > now {
                        break;
                    }
                    if let Some((_, node)) = s.delayed.pop_first() {
                        s.delay_of.remove(&node);
                        Self::add_locked(&mut s, &node);
                    }
                }
                if let Some(node) = s.ready.pop_front() {
                    s.queued.remove(&node);
                    s.active.insert(node.clone());
                    let more = !s.ready.is_empty();
                    drop(s);
                    if more {
                        // Another worker may take the rest.
                        self.notify.notify_one();
                    }
                    return node;
                }
                s.delayed.first().map(|(at, _)| *at)
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// The worker finished `node`; if it was queued meanwhile, it is ready again.
    pub fn done(&self, node: &str) {
        let mut s = self.lock();
        s.active.remove(node);
        if s.again.remove(node) && s.queued.insert(node.to_owned()) {
            s.ready.push_back(node.to_owned());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Nodes waiting for a worker now (not the delayed ones).
    pub fn depth(&self) -> usize {
        self.lock().ready.len()
    }

    /// Nodes scheduled for later.
    pub fn scheduled(&self) -> usize {
        self.lock().delayed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn duplicates_collapse_and_order_is_kept() {
        let q = Queue::new();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.depth(), 2);
        assert_eq!(q.next().await, "a");
        assert_eq!(q.next().await, "b");
        assert_eq!(q.depth(), 0);
    }

    #[tokio::test]
    async fn a_node_queued_while_active_comes_back_after_done() {
        let q = Queue::new();
        q.add("a");
        let n = q.next().await;
        q.add("a");
        assert_eq!(q.depth(), 0, "not handed to a second worker while active");
        q.done(&n);
        assert_eq!(q.depth(), 1);
        assert_eq!(q.next().await, "a");
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_nodes_come_due_earliest_first() {
        let q = Queue::new();
        let now = Instant::now();
        q.add_at("late", now + Duration::from_secs(20));
        q.add_at("soon", now + Duration::from_secs(10));
        q.add_at("late", now + Duration::from_secs(30)); // later than pending: ignored
        assert_eq!(q.scheduled(), 2);
        assert_eq!(q.next().await, "soon");
        assert!(Instant::now() >= now + Duration::from_secs(10));
        assert_eq!(q.next().await, "late");
        assert!(Instant::now() >= now + Duration::from_secs(20));
        assert!(Instant::now() < now + Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_time_replaces_a_later_one() {
        let q = Queue::new();
        let now = Instant::now();
        q.add_at("a", now + Duration::from_secs(60));
        q.add_at("a", now + Duration::from_secs(5));
        assert_eq!(q.scheduled(), 1);
        assert_eq!(q.next().await, "a");
        assert!(Instant::now() < now + Duration::from_secs(60));
    }
}
