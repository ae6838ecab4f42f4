//! One node's delivery queue: keyed by object UID, latest wins, a small in-flight window, resend
//! after [`RESEND_AFTER`] up to [`MAX_SENDS`] sends, then it is left to the objectsync resync.
//!
//! Pure bookkeeping (no I/O, the clock is passed in), so it is tested with a fake clock. At most
//! one message per UID is in flight: a newer version of an object waits in `pending` and replaces
//! any older pending one there (the superseded one is never sent — the bandwidth saving on slow
//! links). When the in-flight one times out while a newer one waits, the newer one is sent
//! instead of a resend of the old.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use edgefleet_api::objectsync::compare_resource_versions;
pub use edgefleet_channel::session::{MAX_SENDS, RESEND_AFTER};

/// What a queued message does on the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

/// What [`NodeQueue::push`] did with an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// New pending entry for the UID.
    Queued,
    /// Replaced an older pending entry, which will never be sent.
    Superseded,
    /// The same version is already pending or in flight.
    Duplicate,
    /// Older than what is already pending for the UID.
    Stale,
}

#[derive(Clone, Debug)]
struct Pending<T> {
    op: Op,
    rv: String,
    payload: T,
    enqueued: Instant,
}

#[derive(Clone, Debug)]
struct InFlight<T> {
    msg_id: String,
    op: Op,
    rv: String,
    payload: T,
    enqueued: Instant,
    sent_at: Instant,
    sends: u32,
}

/// A message to put on the wire (first send or resend: a resend keeps its msg_id, so a late ACK
/// of an earlier send still counts).
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing<T> {
    pub msg_id: String,
    pub uid: String,
    pub op: Op,
    pub rv: String,
    pub payload: T,
    /// 1 for the first send.
    pub sends: u32,
}

/// An in-flight message that was sent [`MAX_SENDS`] times without an ACK and is dropped.
#[derive(Clone, Debug, PartialEq)]
pub struct GaveUp<T> {
    pub uid: String,
    pub op: Op,
    pub rv: String,
    pub payload: T,
}

/// An ACKed message.
#[derive(Clone, Debug, PartialEq)]
pub struct Acked<T> {
    pub uid: String,
    pub op: Op,
    pub rv: String,
    pub payload: T,
    pub sends: u32,
    /// When the change was queued: ACK time − this = delivery lag.
    pub enqueued: Instant,
}

#[derive(Debug, Default, PartialEq)]
pub struct Poll<T> {
    pub send: Vec<Outgoing<T>>,
    pub gave_up: Vec<GaveUp<T>>,
    /// Sendable work was left because `max` was reached.
    pub more: bool,
}

#[derive(Debug)]
pub struct NodeQueue<T> {
    window: usize,
    pending: HashMap<String, Pending<T>>,
    /// UIDs in first-queued order; may hold UIDs no longer pending (skipped lazily).
    order: VecDeque<String>,
    in_flight: HashMap<String, InFlight<T>>,
    by_msg: HashMap<String, String>,
    next_id: u64,
    prefix: String,
}

impl<T: Clone> NodeQueue<T> {
    /// `window`: messages in flight at once (at least 1). `prefix` makes msg ids unique across
    /// sessions (a session id).
    pub fn new(window: usize, prefix: impl Into<String>) -> Self {
        NodeQueue {
            window: window.max(1),
            pending: HashMap::new(),
            order: VecDeque::new(),
            in_flight: HashMap::new(),
            by_msg: HashMap::new(),
            next_id: 0,
            prefix: prefix.into(),
        }
    }

    /// Queues `op` of version `rv` of object `uid`; the latest version wins.
    pub fn push(&mut self, uid: &str, op: Op, rv: &str, payload: T, now: Instant) -> Pushed {
        if let Some(f) = self.in_flight.get(uid)
            && f.op == op
            && f.rv == rv
        {
            return Pushed::Duplicate;
        }
        // The edge has (or is about to have) an earlier version: this one updates it.
        let op = if op == Op::Insert && self.in_flight.contains_key(uid) {
            Op::Update
        } else {
            op
        };
        if let Some(p) = self.pending.get_mut(uid) {
            if p.op == op && p.rv == rv {
                return Pushed::Duplicate;
            }
            // A delete always wins; an older version never replaces a newer one.
            if op != Op::Delete
                && p.op != Op::Delete
                && compare_resource_versions(rv, &p.rv) == Some(std::cmp::Ordering::Less)
            {
                return Pushed::Stale;
            }
            // An update of an object whose insert was never sent is still an insert.
            let op = if p.op == Op::Insert && op == Op::Update {
                Op::Insert
            } else {
                op
            };
            *p = Pending {
                op,
                rv: rv.to_string(),
                payload,
                enqueued: now,
            };
            return Pushed::Superseded;
        }
        self.pending.insert(
            uid.to_string(),
            Pending {
                op,
                rv: rv.to_string(),
                payload,
                enqueued: now,
            },
        );
        self.order.push_back(uid.to_string());
        Pushed::Queued
    }

    fn new_msg_id(&mut self) -> String {
        self.next_id += 1;
        format!("{}-{}", self.prefix, self.next_id)
    }

    fn launch(&mut self, uid: String, p: Pending<T>, now: Instant) -> Outgoing<T> {
        let msg_id = self.new_msg_id();
        if let Some(old) = self.in_flight.get(&uid) {
            self.by_msg.remove(&old.msg_id);
        }
        self.by_msg.insert(msg_id.clone(), uid.clone());
        let out = Outgoing {
            msg_id: msg_id.clone(),
            uid: uid.clone(),
            op: p.op,
            rv: p.rv.clone(),
            payload: p.payload.clone(),
            sends: 1,
        };
        self.in_flight.insert(
            uid,
            InFlight {
                msg_id,
                op: p.op,
                rv: p.rv,
                payload: p.payload,
                enqueued: p.enqueued,
                sent_at: now,
                sends: 1,
            },
        );
        out
    }

    /// What to send now, at most `max` messages: due resends first, then pending items while the
    /// window has room.
    pub fn poll(&mut self, now: Instant, max: usize) -> Poll<T> {
        let mut out = Poll {
            send: Vec::new(),
            gave_up: Vec::new(),
            more: false,
        };
        let due: Vec<String> = self
            .in_flight
            .iter()
            .filter(|(_, f)| now >= f.sent_at + RESEND_AFTER)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in due {
            if out.send.len() >= max {
                out.more = true;
                return out;
            }
            if let Some(p) = self.pending.remove(&uid) {
                // A newer version waits: send it instead of resending the old one.
                out.send.push(self.launch(uid, p, now));
                continue;
            }
            let Some(f) = self.in_flight.get_mut(&uid) else {
                continue;
            };
            if f.sends >= MAX_SENDS {
                if let Some(f) = self.in_flight.remove(&uid) {
                    self.by_msg.remove(&f.msg_id);
                    out.gave_up.push(GaveUp {
                        uid,
                        op: f.op,
                        rv: f.rv,
                        payload: f.payload,
                    });
                }
                continue;
            }
            f.sends += 1;
            f.sent_at = now;
            out.send.push(Outgoing {
                msg_id: f.msg_id.clone(),
                uid,
                op: f.op,
                rv: f.rv.clone(),
                payload: f.payload.clone(),
                sends: f.sends,
            });
        }
        let mut blocked = VecDeque::new();
        while self.in_flight.len() < self.window {
            let Some(uid) = self.order.pop_front() else {
                break;
            };
            if !self.pending.contains_key(&uid) {
                continue;
            }
            if self.in_flight.contains_key(&uid) {
                // Waits for its in-flight predecessor's ACK (or timeout).
                blocked.push_back(uid);
                continue;
            }
            if out.send.len() >= max {
                self.order.push_front(uid);
                out.more = true;
                break;
            }
            if let Some(p) = self.pending.remove(&uid) {
                out.send.push(self.launch(uid, p, now));
            }
        }
        while let Some(uid) = blocked.pop_back() {
            self.order.push_front(uid);
        }
        out
    }

    /// The ACK of `msg_id`: frees its window slot. `None` for an unknown or superseded id.
    pub fn ack(&mut self, msg_id: &str) -> Option<Acked<T>> {
        let uid = self.by_msg.remove(msg_id)?;
        let f = self.in_flight.remove(&uid)?;
        if self.pending.contains_key(&uid) && !self.order.contains(&uid) {
            self.order.push_back(uid.clone());
        }
        Some(Acked {
            uid,
            op: f.op,
            rv: f.rv,
            payload: f.payload,
            sends: f.sends,
            enqueued: f.enqueued,
        })
    }

    /// When the next resend falls due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.in_flight
            .values()
            .map(|f| f.sent_at + RESEND_AFTER)
            .min()
    }

    /// Pending plus in-flight messages.
    /// Whether a message for `uid` is pending or in flight.
    pub fn holds(&self, uid: &str) -> bool {
        self.pending.contains_key(uid) || self.in_flight.contains_key(uid)
    }

    pub fn depth(&self) -> usize {
        self.pending.len() + self.in_flight.len()
    }

    /// Whether something could be sent now (pending and not blocked by the window).
    pub fn has_sendable(&self) -> bool {
        self.in_flight.len() < self.window
            && self
                .pending
                .keys()
                .any(|uid| !self.in_flight.contains_key(uid))
    }
}

/// Seconds of a duration as f64, for histograms.
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> (NodeQueue<&'static str>, Instant) {
        (NodeQueue::new(2, "s"), Instant::now())
    }

    fn rvs<T>(p: &Poll<T>) -> Vec<(String, String)> {
        p.send
            .iter()
            .map(|o| (o.uid.clone(), o.rv.clone()))
            .collect()
    }

    #[test]
    fn latest_wins_and_the_superseded_update_is_never_sent() {
        let (mut q, t) = q();
        assert_eq!(q.push("a", Op::Insert, "1", "v1", t), Pushed::Queued);
        let p = q.poll(t, 10);
        assert_eq!(rvs(&p), vec![("a".into(), "1".into())]);
        let first = p.send[0].msg_id.clone();
        // Two changes while v1 is unacked (planned as inserts: nothing acked yet): v2 is
        // replaced by v3 before it is ever sent, and goes out as an update.
        assert_eq!(q.push("a", Op::Insert, "2", "v2", t), Pushed::Queued);
        assert!(
            q.poll(t, 10).send.is_empty(),
            "one message per UID in flight"
        );
        assert_eq!(q.push("a", Op::Insert, "3", "v3", t), Pushed::Superseded);
        assert_eq!(q.push("a", Op::Update, "2", "v2", t), Pushed::Stale);
        let acked = q.ack(&first).unwrap();
        assert_eq!((acked.rv.as_str(), acked.op), ("1", Op::Insert));
        let p = q.poll(t, 10);
        assert_eq!(rvs(&p), vec![("a".into(), "3".into())]);
        assert_eq!(p.send[0].op, Op::Update);
        assert!(q.ack(&p.send[0].msg_id).is_some());
        assert_eq!(q.depth(), 0);
    }

    #[test]
    fn duplicates_are_ignored() {
        let (mut q, t) = q();
        q.push("a", Op::Insert, "1", "v1", t);
        assert_eq!(q.push("a", Op::Insert, "1", "v1", t), Pushed::Duplicate);
        q.poll(t, 10);
        assert_eq!(q.push("a", Op::Insert, "1", "v1", t), Pushed::Duplicate);
        assert_eq!(q.depth(), 1);
    }

    #[test]
    fn an_unsent_insert_stays_an_insert() {
        let (mut q, t) = q();
        q.push("a", Op::Insert, "1", "v1", t);
        q.push("a", Op::Update, "2", "v2", t);
        let p = q.poll(t, 10);
        assert_eq!((p.send[0].op, p.send[0].rv.as_str()), (Op::Insert, "2"));
    }

    #[test]
    fn window_bounds_in_flight_and_max_bounds_a_poll() {
        let (mut q, t) = q();
        for uid in ["a", "b", "c"] {
            q.push(uid, Op::Insert, "1", "x", t);
        }
        let p = q.poll(t, 1);
        assert_eq!(p.send.len(), 1);
        assert!(p.more);
        let p2 = q.poll(t, 10);
        assert_eq!(p2.send.len(), 1, "window of 2");
        assert!(!q.has_sendable());
        assert!(q.poll(t, 10).send.is_empty());
        q.ack(&p.send[0].msg_id);
        assert!(q.has_sendable());
        let p3 = q.poll(t, 10);
        assert_eq!(rvs(&p3), vec![("c".into(), "1".into())]);
    }

    #[test]
    fn resends_after_five_seconds_five_sends_in_all_then_gives_up() {
        let (mut q, t) = q();
        q.push("a", Op::Insert, "1", "x", t);
        let first = q.poll(t, 10).send.remove(0);
        assert_eq!(q.next_deadline(), Some(t + RESEND_AFTER));
        assert!(q.poll(t + Duration::from_secs(4), 10).send.is_empty());
        let mut now = t;
        for n in 2..=MAX_SENDS {
            now += RESEND_AFTER;
            let p = q.poll(now, 10);
            assert_eq!(p.send.len(), 1);
            assert_eq!(p.send[0].msg_id, first.msg_id, "a resend keeps its id");
            assert_eq!(p.send[0].sends, n);
        }
        now += RESEND_AFTER;
        let p = q.poll(now, 10);
        assert!(p.send.is_empty());
        assert_eq!(p.gave_up.len(), 1);
        assert_eq!(q.depth(), 0);
        assert_eq!(q.next_deadline(), None);
        // A late ACK of a given-up message is ignored.
        assert!(q.ack(&first.msg_id).is_none());
    }

    #[test]
    fn a_timed_out_message_with_a_newer_version_waiting_sends_the_newer() {
        let (mut q, t) = q();
        q.push("a", Op::Insert, "1", "v1", t);
        let first = q.poll(t, 10).send.remove(0);
        q.push("a", Op::Update, "5", "v5", t);
        let p = q.poll(t + RESEND_AFTER, 10);
        assert_eq!(rvs(&p), vec![("a".into(), "5".into())]);
        assert_ne!(p.send[0].msg_id, first.msg_id);
        assert!(q.ack(&first.msg_id).is_none(), "old id retired");
        assert!(q.ack(&p.send[0].msg_id).is_some());
    }

    #[test]
    fn delete_replaces_a_pending_update() {
        let (mut q, t) = q();
        q.push("a", Op::Update, "7", "u", t);
        assert_eq!(q.push("a", Op::Delete, "7", "d", t), Pushed::Superseded);
        let p = q.poll(t, 10);
        assert_eq!(p.send[0].op, Op::Delete);
    }

    #[test]
    fn blocked_uids_keep_their_place() {
        let (mut q, t) = q();
        q.push("a", Op::Insert, "1", "x", t);
        let a1 = q.poll(t, 10).send.remove(0);
        q.push("a", Op::Update, "2", "x", t);
        q.push("b", Op::Insert, "1", "x", t);
        let p = q.poll(t, 10);
        assert_eq!(rvs(&p), vec![("b".into(), "1".into())]);
        q.ack(&a1.msg_id);
        let p = q.poll(t, 10);
        assert_eq!(rvs(&p), vec![("a".into(), "2".into())]);
    }
}
