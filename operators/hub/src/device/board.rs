//! The device board: reports waiting for their device's next status write (pure, no I/O).
//!
//! Invariants:
//! - one entry per Device, however many reports: per property only the newest value by
//!   [`ReportOrder`] is kept, per device only the newest state — an older resent report never
//!   replaces a newer one here (and [`super::merge`] checks it again against what is stored);
//! - bounded: at most `capacity` devices wait; a report for one more is refused ("busy"), counted,
//!   and the edge resends it (it had no "OK");
//! - each report's answer waits on its entry (a [`Waiter`]) and is given once the entry is written
//!   (or dropped as unchanged/older): an "OK" means the value is in the API, so a hub killed
//!   before a flush loses nothing the edge believes delivered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use edgefleet_channel::device::{DeviceStateUpdate, DeviceTwinUpdate, ReportOrder};
use tokio::sync::oneshot;

/// A Device: (namespace, name).
pub type DeviceKey = (String, String);

/// Gets the answer of one report: `Ok` ("OK") or the reason it was not written.
pub type Waiter = oneshot::Sender<Result<(), String>>;

/// Reports waiting on one device beyond which a report is refused busy (a flood from one
/// device cannot hold the board's memory).
pub const MAX_WAITERS_PER_DEVICE: usize = 256;

/// The newest report of one property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingTwin {
    pub order: ReportOrder,
    /// Reported value, its read time (ms) and type.
    pub actual: Option<(String, i64, String)>,
    /// The desired value the mapper holds, with its time (ms).
    pub expected: Option<(String, i64)>,
}

/// The newest state report of a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingState {
    pub timestamp: i64,
    pub state: String,
    pub last_online_time: String,
}

/// What waits for one device's next write.
#[derive(Debug, Default)]
pub struct Pending {
    pub twins: BTreeMap<String, PendingTwin>,
    pub state: Option<PendingState>,
    /// When the oldest report of this entry arrived (report → status lag).
    pub since: Option<Instant>,
    /// Failed writes of this entry so far.
    pub failures: u32,
    pub waiters: Vec<Waiter>,
}

impl Pending {
    /// Folds a twin report in, keeping the newer value of each property. Returns how many of
    /// its properties were older than what waits already.
    pub fn add_twins(&mut self, update: &DeviceTwinUpdate) -> usize {
        let mut older = 0;
        for (name, twin) in &update.twin {
            let order = twin.order(update.base.timestamp);
            let actual = twin.actual.as_ref().and_then(|a| {
                let value = a.value.clone()?;
                let at = a
                    .metadata
                    .as_ref()
                    .map(|m| m.timestamp)
                    .filter(|t| *t > 0)
                    .unwrap_or(update.base.timestamp);
                let type_ = twin
                    .metadata
                    .as_ref()
                    .map(|m| m.type_.clone())
                    .unwrap_or_default();
                Some((value, at, type_))
            });
            let expected = twin.expected.as_ref().and_then(|e| {
                let value = e.value.clone()?;
                let at = e.metadata.as_ref().map_or(0, |m| m.timestamp);
                Some((value, at))
            });
            let new = PendingTwin {
                order,
                actual,
                expected,
            };
            match self.twins.get(name) {
                Some(current) if current.order > order => older += 1,
                _ => {
                    self.twins.insert(name.clone(), new);
                }
            }
        }
        older
    }

    /// Folds a state report in; `false` when it is older than the one waiting.
    pub fn add_state(&mut self, update: &DeviceStateUpdate) -> bool {
        let new = PendingState {
            timestamp: update.base.timestamp,
            state: update.device.state.clone(),
            last_online_time: update.device.last_online_time.clone(),
        };
        match &self.state {
            Some(current) if current.timestamp > new.timestamp => false,
            _ => {
                self.state = Some(new);
                true
            }
        }
    }

    /// Folds a later entry (taken again after a failed write) into this one.
    pub fn absorb(&mut self, other: Pending) {
        for (name, twin) in other.twins {
            match self.twins.get(&name) {
                Some(current) if current.order > twin.order => {}
                _ => {
                    self.twins.insert(name, twin);
                }
            }
        }
        if let Some(s) = other.state
            && self
                .state
                .as_ref()
                .is_none_or(|c| c.timestamp <= s.timestamp)
        {
            self.state = Some(s);
        }
        self.since = match (self.since, other.since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.failures = self.failures.max(other.failures);
        self.waiters.extend(other.waiters);
    }

    /// Answers every report waiting on this entry.
    pub fn answer(self, result: &Result<(), String>) {
        for w in self.waiters {
            let _ = w.send(result.clone());
        }
    }
}

/// Why a report was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The board holds `capacity` devices already.
    Full,
    /// This device has [`MAX_WAITERS_PER_DEVICE`] reports waiting.
    DeviceBusy,
}

/// What [`Board::offer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    /// Properties (or the state) older than what waited already.
    pub older: usize,
}

/// One report as the board takes it.
#[derive(Debug)]
pub enum Report<'a> {
    Twins(&'a DeviceTwinUpdate),
    State(&'a DeviceStateUpdate),
}

/// The pending map, bounded.
#[derive(Debug)]
pub struct Board {
    capacity: usize,
    pending: HashMap<DeviceKey, Pending>,
    /// Devices in the order they entered (drained oldest first).
    order: Vec<DeviceKey>,
    /// Devices taken for a write not finished yet: not taken again until it is (one write per
    /// device at a time; reports meanwhile wait in a new entry).
    in_flight: HashSet<DeviceKey>,
}

impl Board {
    pub fn new(capacity: usize) -> Self {
        Board {
            capacity: capacity.max(1),
            pending: HashMap::new(),
            order: Vec::new(),
            in_flight: HashSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes one report of `key`, its answer to be sent to `waiter` after the write.
    pub fn offer(
        &mut self,
        key: &DeviceKey,
        report: Report<'_>,
        waiter: Waiter,
        now: Instant,
    ) -> Result<Offered, (Refusal, Waiter)> {
        if !self.pending.contains_key(key) {
            if self.pending.len() >= self.capacity {
                return Err((Refusal::Full, waiter));
            }
            self.order.push(key.clone());
        }
        let entry = self.pending.entry(key.clone()).or_default();
        if entry.waiters.len() >= MAX_WAITERS_PER_DEVICE {
            return Err((Refusal::DeviceBusy, waiter));
        }
        let older = match report {
            Report::Twins(u) => entry.add_twins(u),
            Report::State(u) => usize::from(!entry.add_state(u)),
        };
        entry.since.get_or_insert(now);
        entry.waiters.push(waiter);
        Ok(Offered { older })
    }

    /// Every waiting device, oldest first; the board is empty afterwards.
    pub fn take_all(&mut self) -> Vec<(DeviceKey, Pending)> {
        let order = std::mem::take(&mut self.order);
        let mut out = Vec::with_capacity(order.len());
        for key in order {
            if let Some(p) = self.pending.remove(&key) {
                out.push((key, p));
            }
        }
        out
    }

    /// Up to `limit` waiting devices not being written, oldest first, now in flight (each to
    /// be given back with [`Board::written`] or [`Board::put_back`]).
    pub fn take_ready(&mut self, limit: usize) -> Vec<(DeviceKey, Pending)> {
        let mut out = Vec::new();
        let mut left = Vec::with_capacity(self.order.len());
        for key in std::mem::take(&mut self.order) {
            if out.len() >= limit || self.in_flight.contains(&key) {
                left.push(key);
            } else if let Some(p) = self.pending.remove(&key) {
                self.in_flight.insert(key.clone());
                out.push((key, p));
            }
        }
        self.order = left;
        out
    }

    /// Devices being written.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The write of `key` ended (its reports answered).
    pub fn written(&mut self, key: &DeviceKey) {
        self.in_flight.remove(key);
    }

    /// Puts back an entry whose write failed; reports that arrived meanwhile are folded in.
    pub fn put_back(&mut self, key: DeviceKey, mut entry: Pending) {
        self.in_flight.remove(&key);
        entry.failures += 1;
        match self.pending.remove(&key) {
            Some(newer) => entry.absorb(newer),
            None => self.order.push(key.clone()),
        }
        self.pending.insert(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn twins(prop: &str, value: &str, version: i64, ts: i64) -> DeviceTwinUpdate {
        DeviceTwinUpdate::parse(&json!({"event_id": "e", "timestamp": ts, "twin": {prop: {
            "actual": {"value": value, "metadata": {"timestamp": ts}},
            "metadata": {"type": "int"},
            "actual_version": {"cloud": 0, "edge": version}}}}))
        .unwrap()
    }

    fn state(s: &str, ts: i64) -> DeviceStateUpdate {
        DeviceStateUpdate::parse(&json!({"timestamp": ts, "device": {"name": "d", "state": s}}))
            .unwrap()
    }

    fn key(n: &str) -> DeviceKey {
        ("ns".into(), n.into())
    }

    #[test]
    fn many_reports_one_entry_newest_wins() {
        let mut b = Board::new(10);
        let now = Instant::now();
        let mut answers = Vec::new();
        for (value, version) in [("1", 1), ("3", 3), ("2", 2)] {
            let (tx, rx) = oneshot::channel();
            answers.push(rx);
            let r = b.offer(
                &key("d"),
                Report::Twins(&twins("t", value, version, version)),
                tx,
                now,
            );
            assert_eq!(r.unwrap().older, usize::from(value == "2"));
        }
        let (tx, _rx) = oneshot::channel();
        b.offer(&key("d"), Report::State(&state("online", 5)), tx, now)
            .unwrap();
        let (tx, _rx) = oneshot::channel();
        let r = b.offer(&key("d"), Report::State(&state("offline", 4)), tx, now);
        assert_eq!(r.unwrap().older, 1, "an older state is kept out");
        let all = b.take_all();
        assert_eq!(all.len(), 1);
        let p = &all[0].1;
        assert_eq!(p.twins["t"].actual.as_ref().unwrap().0, "3");
        assert_eq!(p.state.as_ref().unwrap().state, "online");
        assert_eq!(p.waiters.len(), 5);
        assert!(b.is_empty());
    }

    #[test]
    fn bounded_and_put_back_keeps_the_newest() {
        let mut b = Board::new(1);
        let now = Instant::now();
        let (tx, _r) = oneshot::channel();
        b.offer(&key("a"), Report::Twins(&twins("t", "5", 5, 5)), tx, now)
            .unwrap();
        let (tx, _r) = oneshot::channel();
        assert!(matches!(
            b.offer(&key("b"), Report::Twins(&twins("t", "1", 1, 1)), tx, now),
            Err((Refusal::Full, _))
        ));
        let (k, entry) = b.take_all().remove(0);
        // While "a" is being written, a newer report arrives; the write fails and the entry
        // comes back: the newer value stays.
        let (tx, _r) = oneshot::channel();
        b.offer(&key("a"), Report::Twins(&twins("t", "6", 6, 6)), tx, now)
            .unwrap();
        b.put_back(k, entry);
        let all = b.take_all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.twins["t"].actual.as_ref().unwrap().0, "6");
        assert_eq!(all[0].1.failures, 1);
        assert_eq!(all[0].1.waiters.len(), 2);
    }

    #[test]
    fn a_device_being_written_is_not_taken_again_and_the_oldest_go_first() {
        let mut b = Board::new(10);
        let now = Instant::now();
        let mut keep = Vec::new();
        for (n, v) in [("a", 1), ("b", 2), ("c", 3)] {
            let (tx, rx) = oneshot::channel();
            keep.push(rx);
            b.offer(&key(n), Report::Twins(&twins("t", "1", v, v)), tx, now)
                .unwrap();
        }
        let first = b.take_ready(2);
        let names: Vec<&str> = first.iter().map(|(k, _)| k.1.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!((b.len(), b.in_flight()), (1, 2));
        // A report for "a" while it is written waits in a new entry, not taken until the
        // write ends.
        let (tx, _r) = oneshot::channel();
        b.offer(&key("a"), Report::Twins(&twins("t", "2", 4, 4)), tx, now)
            .unwrap();
        let next = b.take_ready(10);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].0.1, "c");
        assert!(b.take_ready(10).is_empty());
        b.written(&key("a"));
        let mut again = b.take_ready(10);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].1.twins["t"].actual.as_ref().unwrap().0, "2");
        // A failed write puts its entry back, no longer in flight.
        let (k, entry) = again.pop().unwrap();
        b.put_back(k, entry);
        let retried = b.take_ready(10);
        assert_eq!((retried.len(), retried[0].1.failures), (1, 1));
    }

    #[test]
    fn a_flooding_device_is_refused_busy() {
        let mut b = Board::new(10);
        let now = Instant::now();
        let mut keep = Vec::new();
        for i in 0..MAX_WAITERS_PER_DEVICE {
            let (tx, rx) = oneshot::channel();
            keep.push(rx);
            let v = i64::try_from(i).unwrap();
            b.offer(&key("d"), Report::Twins(&twins("t", "1", v, v)), tx, now)
                .unwrap();
        }
        let (tx, _r) = oneshot::channel();
        assert!(matches!(
            b.offer(&key("d"), Report::Twins(&twins("t", "1", 0, 0)), tx, now),
            Err((Refusal::DeviceBusy, _))
        ));
    }
}
