//! The device board: reports waiting for their device's next status write (pure, no I/O).
//!
//! Invariants:
//! - one entry per Device, however many reports: per property only the newest value by
//!   [`ReportOrder`] is kept, per device only the newest state — an older resent report never
//!   replaces a newer one here (and [`super::merge`] checks it again against what is stored);
//! - bounded: at most `capacity` devices wait with a value change; a report for one more is
//!   refused ("busy"), counted, and the edge resends it (it had no "OK");
//! - value changes first: an entry that only renews times (a [`Class::Refresh`]: the same value
//!   again after `refresh`) is answered at once — its values are in the API already — and waits
//!   apart, stalest first, for the budget value changes leave; at most `refresh_capacity` of
//!   them, a staler one pushing out the freshest. At full load with unchanged values, refreshes
//!   once filled the board and every changed value waited behind them, answered busy;
//! - a report that changes nothing (a [`Class::Settled`]) is answered at once, never held;
//! - each report's answer waits on its entry (a [`Waiter`]) and is given once the entry is written
//!   (or dropped as unchanged/older): an "OK" means the value is in the API, so a hub killed
//!   before a flush loses nothing the edge believes delivered.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

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

/// How a report stands against the Device as the hub last saw it (from
/// [`super::merge::Change`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Nothing to write, against the Device known when [`Board::epoch`] was `epoch` (a write
    /// that ended since may have stored something else: then it is written to be sure).
    Settled { epoch: u64 },
    /// Only times to renew; `since_ms` is the oldest stored time it renews.
    Refresh { since_ms: i64 },
    /// A value to write, or a Device the hub does not know yet.
    Change,
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
    /// `Some(oldest stored time, ms)` while the entry only renews times: no waiters (answered
    /// when taken), taken after value changes, stalest first.
    pub refresh: Option<i64>,
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

/// What [`Board::offer`] did with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// It waits for its device's write; answered after it.
    Waiting,
    /// Answered at once: nothing to write.
    Unchanged,
    /// Answered at once; its times wait for spare budget (`evicted`: a fresher refresh made
    /// room for it).
    RefreshQueued { evicted: bool },
    /// Answered at once; its times are not renewed now (the refresh room holds staler ones):
    /// the device's next report tries again.
    RefreshDeferred,
}

/// What [`Board::offer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    /// Properties (or the state) older than what waited already.
    pub older: usize,
    pub taken: Taken,
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
    refresh_capacity: usize,
    pending: HashMap<DeviceKey, Pending>,
    /// Devices with a value change, in the order they entered (drained oldest first).
    order: Vec<DeviceKey>,
    /// Devices that only renew times, by their oldest stored time (drained stalest first).
    refreshes: BTreeSet<(i64, DeviceKey)>,
    /// Devices taken for a write not finished yet: not taken again until it is (one write per
    /// device at a time; reports meanwhile wait in a new entry).
    in_flight: HashSet<DeviceKey>,
    /// Writes ended so far (see [`Class::Settled`]).
    epoch: u64,
}

impl Board {
    pub fn new(capacity: usize, refresh_capacity: usize) -> Self {
        Board {
            capacity: capacity.max(1),
            refresh_capacity: refresh_capacity.max(1),
            pending: HashMap::new(),
            order: Vec::new(),
            refreshes: BTreeSet::new(),
            in_flight: HashSet::new(),
            epoch: 0,
        }
    }

    /// Devices waiting, value changes and refreshes.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Devices waiting with a value change.
    pub fn changes(&self) -> usize {
        self.order.len()
    }

    /// Devices waiting only to renew times.
    pub fn refreshes(&self) -> usize {
        self.refreshes.len()
    }

    /// Writes ended so far: read before a report is classified, given back in
    /// [`Class::Settled`].
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the value changes waiting outlast `timeout` at `writes_per_second`: a report
    /// put on the board now would wait longer than that for its write.
    pub fn waits_beyond(&self, writes_per_second: u32, timeout: Duration) -> bool {
        self.order.len() as f64 > f64::from(writes_per_second) * timeout.as_secs_f64()
    }

    /// Whether a value change of `key` waits already (a report joins it whatever it holds, so
    /// it needs no classification).
    pub fn holds_change(&self, key: &DeviceKey) -> bool {
        self.pending.get(key).is_some_and(|p| p.refresh.is_none())
    }

    /// Takes one report of `key`, its answer to be sent to `waiter` (at once when it has
    /// nothing to wait for, else after the write).
    pub fn offer(
        &mut self,
        key: &DeviceKey,
        report: Report<'_>,
        class: Class,
        waiter: Waiter,
        now: Instant,
    ) -> Result<Offered, (Refusal, Waiter)> {
        let held = self.pending.get(key).map(|p| p.refresh);
        let in_flight = self.in_flight.contains(key);
        let taken = match (held, class) {
            // Joins a value change waiting: answered with it.
            (Some(None), _) | (_, Class::Change) => Taken::Waiting,
            (None, Class::Settled { epoch }) if !in_flight && epoch == self.epoch => {
                let _ = waiter.send(Ok(()));
                return Ok(Offered {
                    older: 0,
                    taken: Taken::Unchanged,
                });
            }
            // Classified against a Device a write may have changed since: written to be sure.
            (None, Class::Settled { .. }) => Taken::Waiting,
            (Some(Some(_)), _) => Taken::RefreshQueued { evicted: false },
            (None, Class::Refresh { since_ms }) => match self.refresh_room(since_ms) {
                Some(evicted) => Taken::RefreshQueued { evicted },
                None => {
                    let _ = waiter.send(Ok(()));
                    return Ok(Offered {
                        older: 0,
                        taken: Taken::RefreshDeferred,
                    });
                }
            },
        };
        if taken == Taken::Waiting {
            match held {
                Some(None) => {}
                // A refresh waiting becomes a value change, or a new entry: room for one more.
                Some(Some(_)) | None if self.order.len() >= self.capacity => {
                    return Err((Refusal::Full, waiter));
                }
                Some(Some(since_ms)) => {
                    self.refreshes.remove(&(since_ms, key.clone()));
                    self.order.push(key.clone());
                }
                None => self.order.push(key.clone()),
            }
        }
        let entry = self.pending.entry(key.clone()).or_default();
        if taken == Taken::Waiting {
            entry.refresh = None;
            if entry.waiters.len() >= MAX_WAITERS_PER_DEVICE {
                return Err((Refusal::DeviceBusy, waiter));
            }
        } else if held.is_none()
            && let Class::Refresh { since_ms } = class
        {
            entry.refresh = Some(since_ms);
            self.refreshes.insert((since_ms, key.clone()));
        }
        let older = match report {
            Report::Twins(u) => entry.add_twins(u),
            Report::State(u) => usize::from(!entry.add_state(u)),
        };
        if taken == Taken::Waiting {
            entry.since.get_or_insert(now);
            entry.waiters.push(waiter);
        } else {
            // Its values are in the API already; only their times wait.
            let _ = waiter.send(Ok(()));
        }
        Ok(Offered { older, taken })
    }

    /// Room for a new refresh of stored time `since_ms`: `Some(evicted)` when it may wait
    /// (`true`: the freshest waiting refresh was dropped for it), `None` when every waiting
    /// one is staler.
    fn refresh_room(&mut self, since_ms: i64) -> Option<bool> {
        if self.refreshes.len() < self.refresh_capacity {
            return Some(false);
        }
        let freshest = self.refreshes.last()?.clone();
        if freshest.0 <= since_ms {
            return None;
        }
        self.refreshes.remove(&freshest);
        self.pending.remove(&freshest.1);
        Some(true)
    }

    /// Every waiting device, value changes oldest first, then refreshes stalest first; the
    /// board is empty afterwards.
    pub fn take_all(&mut self) -> Vec<(DeviceKey, Pending)> {
        let keys = std::mem::take(&mut self.order).into_iter().chain(
            std::mem::take(&mut self.refreshes)
                .into_iter()
                .map(|(_, k)| k),
        );
        let mut out = Vec::with_capacity(self.pending.len());
        for key in keys {
            if let Some(p) = self.pending.remove(&key) {
                out.push((key, p));
            }
        }
        out
    }

    /// Up to `limit` waiting devices not being written — value changes oldest first, then
    /// refreshes stalest first with what is left of `limit` — now in flight (each to be given
    /// back with [`Board::written`] or [`Board::put_back`]).
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
        let refreshes: Vec<(i64, DeviceKey)> = self
            .refreshes
            .iter()
            .filter(|(_, key)| !self.in_flight.contains(key))
            .take(limit.saturating_sub(out.len()))
            .cloned()
            .collect();
        for entry in refreshes {
            self.refreshes.remove(&entry);
            if let Some(p) = self.pending.remove(&entry.1) {
                self.in_flight.insert(entry.1.clone());
                out.push((entry.1, p));
            }
        }
        out
    }

    /// Devices being written.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The write of `key` ended (its reports answered).
    pub fn written(&mut self, key: &DeviceKey) {
        self.in_flight.remove(key);
        self.epoch += 1;
    }

    /// Puts back an entry whose write failed; reports that arrived meanwhile are folded in. A
    /// refresh is dropped instead: nothing waits on it, and the device's next report brings
    /// its times again.
    pub fn put_back(&mut self, key: DeviceKey, mut entry: Pending) {
        self.written(&key);
        if entry.refresh.is_some() {
            return;
        }
        entry.failures += 1;
        match self.pending.remove(&key) {
            Some(newer) => {
                if let Some(since_ms) = newer.refresh {
                    self.refreshes.remove(&(since_ms, key.clone()));
                    self.order.push(key.clone());
                }
                entry.absorb(newer);
            }
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
        let mut b = Board::new(10, 10);
        let now = Instant::now();
        let mut answers = Vec::new();
        for (value, version) in [("1", 1), ("3", 3), ("2", 2)] {
            let (tx, rx) = oneshot::channel();
            answers.push(rx);
            let r = b.offer(
                &key("d"),
                Report::Twins(&twins("t", value, version, version)),
                Class::Change,
                tx,
                now,
            );
            assert_eq!(r.unwrap().older, usize::from(value == "2"));
        }
        let (tx, _rx) = oneshot::channel();
        b.offer(
            &key("d"),
            Report::State(&state("online", 5)),
            Class::Change,
            tx,
            now,
        )
        .unwrap();
        let (tx, _rx) = oneshot::channel();
        let r = b.offer(
            &key("d"),
            Report::State(&state("offline", 4)),
            Class::Change,
            tx,
            now,
        );
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
        let mut b = Board::new(1, 1);
        let now = Instant::now();
        let (tx, _r) = oneshot::channel();
        b.offer(
            &key("a"),
            Report::Twins(&twins("t", "5", 5, 5)),
            Class::Change,
            tx,
            now,
        )
        .unwrap();
        let (tx, _r) = oneshot::channel();
        assert!(matches!(
            b.offer(
                &key("b"),
                Report::Twins(&twins("t", "1", 1, 1)),
                Class::Change,
                tx,
                now
            ),
            Err((Refusal::Full, _))
        ));
        let (k, entry) = b.take_all().remove(0);
        // While "a" is being written, a newer report arrives; the write fails and the entry
        // comes back: the newer value stays.
        let (tx, _r) = oneshot::channel();
        b.offer(
            &key("a"),
            Report::Twins(&twins("t", "6", 6, 6)),
            Class::Change,
            tx,
            now,
        )
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
        let mut b = Board::new(10, 10);
        let now = Instant::now();
        let mut keep = Vec::new();
        for (n, v) in [("a", 1), ("b", 2), ("c", 3)] {
            let (tx, rx) = oneshot::channel();
            keep.push(rx);
            b.offer(
                &key(n),
                Report::Twins(&twins("t", "1", v, v)),
                Class::Change,
                tx,
                now,
            )
            .unwrap();
        }
        let first = b.take_ready(2);
        let names: Vec<&str> = first.iter().map(|(k, _)| k.1.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!((b.len(), b.in_flight()), (1, 2));
        // A report for "a" while it is written waits in a new entry, not taken until the
        // write ends.
        let (tx, _r) = oneshot::channel();
        b.offer(
            &key("a"),
            Report::Twins(&twins("t", "2", 4, 4)),
            Class::Change,
            tx,
            now,
        )
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
        let mut b = Board::new(10, 10);
        let now = Instant::now();
        let mut keep = Vec::new();
        for i in 0..MAX_WAITERS_PER_DEVICE {
            let (tx, rx) = oneshot::channel();
            keep.push(rx);
            let v = i64::try_from(i).unwrap();
            b.offer(
                &key("d"),
                Report::Twins(&twins("t", "1", v, v)),
                Class::Change,
                tx,
                now,
            )
            .unwrap();
        }
        let (tx, _r) = oneshot::channel();
        assert!(matches!(
            b.offer(
                &key("d"),
                Report::Twins(&twins("t", "1", 0, 0)),
                Class::Change,
                tx,
                now
            ),
            Err((Refusal::DeviceBusy, _))
        ));
    }

    /// Offers a report of `n` as `class`; the answer, if it came at once.
    fn offer_as(
        b: &mut Board,
        n: &str,
        class: Class,
    ) -> (Result<Offered, Refusal>, Option<Result<(), String>>) {
        let (tx, mut rx) = oneshot::channel();
        let r = b.offer(
            &key(n),
            Report::Twins(&twins("t", "1", 1, 1)),
            class,
            tx,
            Instant::now(),
        );
        (r.map_err(|(refusal, _)| refusal), rx.try_recv().ok())
    }

    fn names(taken: &[(DeviceKey, Pending)]) -> Vec<&str> {
        taken.iter().map(|(k, _)| k.1.as_str()).collect()
    }

    #[test]
    fn value_changes_go_before_refreshes_and_refreshes_go_stalest_first() {
        let mut b = Board::new(10, 10);
        let refresh = |since_ms| Class::Refresh { since_ms };
        for (n, class) in [
            ("r500", refresh(500)),
            ("c1", Class::Change),
            ("r100", refresh(100)),
            ("c2", Class::Change),
        ] {
            let (r, answered) = offer_as(&mut b, n, class);
            let waits = class == Class::Change;
            let taken = r.unwrap().taken;
            assert_eq!(taken == Taken::Waiting, waits, "{n}");
            // A refresh's values are in the API already: answered at once, nothing waits.
            assert_eq!(answered.is_some(), !waits, "{n}");
        }
        assert_eq!((b.changes(), b.refreshes()), (2, 2));
        let first = b.take_ready(3);
        assert_eq!(names(&first), ["c1", "c2", "r100"]);
        assert!(first[2].1.waiters.is_empty() && first[2].1.since.is_none());
        assert_eq!(names(&b.take_ready(10)), ["r500"]);
    }

    #[test]
    fn the_refresh_room_keeps_the_stalest_and_never_holds_value_changes_out() {
        let mut b = Board::new(1, 2);
        let refresh = |since_ms| Class::Refresh { since_ms };
        // (device, class, what the board does)
        let cases = [
            (
                "r300",
                refresh(300),
                Ok(Taken::RefreshQueued { evicted: false }),
            ),
            (
                "r200",
                refresh(200),
                Ok(Taken::RefreshQueued { evicted: false }),
            ),
            (
                "r100",
                refresh(100),
                Ok(Taken::RefreshQueued { evicted: true }),
            ),
            ("r400", refresh(400), Ok(Taken::RefreshDeferred)),
            ("c", Class::Change, Ok(Taken::Waiting)),
            ("c2", Class::Change, Err(Refusal::Full)),
            // A value for a device whose refresh waits needs a value change's room too.
            ("r100", Class::Change, Err(Refusal::Full)),
        ];
        for (n, class, want) in cases {
            let (r, _) = offer_as(&mut b, n, class);
            assert_eq!(r.map(|o| o.taken), want, "{n}");
        }
        assert_eq!(names(&b.take_ready(10)), ["c", "r100", "r200"]);
    }

    #[test]
    fn a_value_for_a_device_whose_refresh_waits_makes_it_a_value_change() {
        let mut b = Board::new(10, 10);
        let (_, answered) = offer_as(&mut b, "d", Class::Refresh { since_ms: 1 });
        assert_eq!(answered, Some(Ok(())));
        assert!(!b.holds_change(&key("d")));
        let (r, answered) = offer_as(&mut b, "d", Class::Change);
        assert_eq!((r.unwrap().taken, answered), (Taken::Waiting, None));
        assert_eq!((b.changes(), b.refreshes()), (1, 0));
        assert!(b.holds_change(&key("d")));
        let taken = b.take_ready(10);
        assert_eq!(taken.len(), 1);
        let p = &taken[0].1;
        assert_eq!(
            (p.refresh, p.waiters.len(), p.since.is_some()),
            (None, 1, true)
        );
    }

    #[test]
    fn a_settled_report_is_answered_at_once_unless_a_write_could_have_changed_the_device() {
        let mut b = Board::new(10, 10);
        let settled = |b: &Board| Class::Settled { epoch: b.epoch() };
        let class = settled(&b);
        let (r, answered) = offer_as(&mut b, "quiet", class);
        assert_eq!(
            (r.unwrap().taken, answered),
            (Taken::Unchanged, Some(Ok(())))
        );
        assert!(b.is_empty());
        // A value change waits for "d": a settled report joins it (and may be the newest).
        offer_as(&mut b, "d", Class::Change).0.unwrap();
        let class = settled(&b);
        let (r, answered) = offer_as(&mut b, "d", class);
        assert_eq!((r.unwrap().taken, answered), (Taken::Waiting, None));
        // "d" is being written: what it was classified against may be overwritten.
        let taken = b.take_ready(10);
        let class = settled(&b);
        let (r, _) = offer_as(&mut b, "d", class);
        assert_eq!(r.unwrap().taken, Taken::Waiting);
        // A write ended between the classification and the offer: written to be sure.
        let before = b.epoch();
        b.written(&taken[0].0);
        let (r, _) = offer_as(&mut b, "e", Class::Settled { epoch: before });
        assert_eq!(r.unwrap().taken, Taken::Waiting);
    }

    #[test]
    fn a_failed_refresh_is_dropped_not_retried() {
        let mut b = Board::new(10, 10);
        offer_as(&mut b, "r", Class::Refresh { since_ms: 1 })
            .0
            .unwrap();
        let (k, entry) = b.take_ready(10).remove(0);
        b.put_back(k, entry);
        assert!(b.is_empty());
        assert_eq!(b.in_flight(), 0);
    }

    #[test]
    fn a_backlog_longer_than_the_answer_timeout_is_told() {
        let mut b = Board::new(100, 100);
        for i in 0..31 {
            offer_as(&mut b, &format!("d{i}"), Class::Change).0.unwrap();
        }
        // (writes/s, timeout, beyond?)
        let cases = [(1, 30, true), (1, 31, false), (2, 30, false), (10, 1, true)];
        for (rate, secs, beyond) in cases {
            assert_eq!(
                b.waits_beyond(rate, Duration::from_secs(secs)),
                beyond,
                "{rate}/s, {secs} s"
            );
        }
        // Refreshes are not a backlog anyone waits on.
        let mut r = Board::new(100, 100);
        for i in 0..31 {
            offer_as(&mut r, &format!("r{i}"), Class::Refresh { since_ms: i })
                .0
                .unwrap();
        }
        assert!(!r.waits_beyond(1, Duration::from_secs(30)));
    }
}
