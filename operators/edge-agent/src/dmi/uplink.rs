//! Reports → hub, over the session (contract: `edgefleet_channel::device`, KubeEdge v1.22's twin
//! and state messages). What is sent is what the [`Book`] holds as pending: the latest value
//! per property, so after an outage of any length each property is sent once, with its newest
//! value. A report leaves the pending set only when the hub answers `"OK"` for exactly that
//! version; a newer value that arrived meanwhile stays pending. Unanswered reports are resent
//! after [`RESEND_AFTER`], and all of them on a new session (the hub drops an older resend).
//! A newer value goes while an older report of the device waits (the hub's board merges them, so
//! what it writes is the freshest value it has); a `busy` answer holds the session's reports
//! back for a while ([`busy_hold`]), except `busy: queued` (the hub holds the values for the
//! device's next write): that report stays on its way and newer values keep going, so what the
//! hub writes at full load is fresh, not a held edge's minute-old value.
//!
//! `actual_version.edge` is the book's arrival counter: it grows, per property too, and is
//! persisted with the value, so the hub orders reports across agent restarts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edgefleet_channel::device::{
    BUSY, BaseMessage, DeviceRoute, DeviceState, DeviceStateUpdate, DeviceTopic, DeviceTwinUpdate,
    MAX_TWINS_PER_REPORT, MsgTwin, QUEUED, TwinValue, TwinVersion, TypeMetadata, ValueMetadata,
    report,
};
use edgefleet_channel::{Message, Operation};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::book::{Book, DeviceKey, Pending};

/// An unanswered report is sent again after this long (KubeEdge: 60 s idle). Longer than the
/// hub's wait for a status write (`device::Settings::answer_timeout`, 30 s), so a full hub's
/// `busy` arrives first and holds the session back, rather than a resend on top of it.
pub const RESEND_AFTER: Duration = Duration::from_secs(45);
/// Reports waiting for the hub's answer, per session (the hub takes up to 512).
pub const MAX_IN_FLIGHT: usize = 256;
/// After a `busy` answer the session sends no report for this long, doubling with each busy
/// answer in a row up to [`BUSY_HOLD_MAX`] (a random half to whole of it, so a fleet told busy
/// at once does not come back at once). Sent again at once, a fleet's busy reports were four
/// thousand a second of work that a full hub refused again (README, `hack/bench/devices`).
pub const BUSY_HOLD_MIN: Duration = Duration::from_secs(2);
pub const BUSY_HOLD_MAX: Duration = Duration::from_secs(60);

/// Where a session finds the reports to send.
#[derive(Clone)]
pub struct UplinkSource {
    pub book: Arc<Book>,
    /// Signalled when a report is kept.
    pub reported: Arc<Notify>,
}

/// One session's uplink state.
pub struct Uplink {
    source: UplinkSource,
    /// msg_id → what that message carried.
    in_flight: HashMap<String, (DeviceKey, Pending, Instant)>,
    /// No report goes before this (the hub answered busy).
    hold_until: Option<Instant>,
    /// Busy answers in a row.
    busy_streak: u32,
}

/// How long to hold reports back after the `streak`-th busy answer in a row, before jitter.
pub fn busy_hold(streak: u32) -> Duration {
    let doublings = streak.saturating_sub(1).min(16);
    BUSY_HOLD_MIN
        .saturating_mul(1 << doublings)
        .min(BUSY_HOLD_MAX)
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The twin report of a device's pending twins (at most [`MAX_TWINS_PER_REPORT`]).
pub fn twin_message(device: &DeviceKey, pending: &Pending, now_ms: i64) -> Option<Message> {
    if pending.twins.is_empty() {
        return None;
    }
    let twin = pending
        .twins
        .iter()
        .take(MAX_TWINS_PER_REPORT)
        .map(|(name, t)| {
            let version = Some(TwinVersion {
                cloud: 0,
                edge: i64::try_from(t.seq).unwrap_or(i64::MAX),
            });
            let meta = Some(ValueMetadata {
                timestamp: t.timestamp_ms,
            });
            (
                name.clone(),
                MsgTwin {
                    expected: (!t.observed_desired.is_empty()).then(|| TwinValue {
                        value: Some(t.observed_desired.clone()),
                        metadata: meta.clone(),
                    }),
                    actual: Some(TwinValue {
                        value: Some(t.reported.clone()),
                        metadata: meta,
                    }),
                    optional: Some(false),
                    metadata: Some(TypeMetadata {
                        type_: if t.type_.is_empty() {
                            "string".into()
                        } else {
                            t.type_.clone()
                        },
                    }),
                    expected_version: version,
                    actual_version: version,
                },
            )
        })
        .collect();
    let update = DeviceTwinUpdate {
        base: BaseMessage {
            event_id: uuid_like(device, now_ms),
            timestamp: now_ms,
        },
        twin,
    };
    let content = serde_json::to_value(&update).ok()?;
    Some(report(
        &DeviceRoute::new(&device.0, &device.1, DeviceTopic::TwinEdgeUpdated),
        content,
    ))
}

/// The state report of a device's pending state.
pub fn state_message(device: &DeviceKey, pending: &Pending, now_ms: i64) -> Option<Message> {
    let state = pending.state.as_ref()?;
    let update = DeviceStateUpdate {
        base: BaseMessage {
            event_id: uuid_like(device, now_ms),
            timestamp: state.timestamp_ms,
        },
        device: DeviceState {
            name: device.1.clone(),
            state: state.state.clone(),
            last_online_time: rfc3339(state.timestamp_ms),
        },
    };
    let content = serde_json::to_value(&update).ok()?;
    Some(report(
        &DeviceRoute::new(&device.0, &device.1, DeviceTopic::StateUpdate),
        content,
    ))
}

fn uuid_like(device: &DeviceKey, now_ms: i64) -> String {
    format!("{}-{}-{now_ms}-{}", device.0, device.1, fastrand::u32(..))
}

impl Uplink {
    pub fn new(source: UplinkSource) -> Self {
        Uplink {
            source,
            in_flight: HashMap::new(),
            hold_until: None,
            busy_streak: 0,
        }
    }

    pub fn reported(&self) -> Arc<Notify> {
        self.source.reported.clone()
    }

    /// What to send now: pending reports not already waiting for an answer (or waiting too
    /// long), within the in-flight bound.
    pub fn due(&mut self, now_ms: i64) -> Vec<Message> {
        let now = Instant::now();
        self.in_flight
            .retain(|_, (_, _, sent)| now.duration_since(*sent) < RESEND_AFTER);
        if self.hold_until.is_some_and(|until| now < until) {
            return Vec::new();
        }
        let room = MAX_IN_FLIGHT.saturating_sub(self.in_flight.len());
        if room == 0 {
            return Vec::new();
        }
        let pending = match self.source.book.pending(room) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "dmi book");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (device, mut p) in pending {
            // Leave out what is already on its way at the same version.
            for (_, (_, sent, _)) in self.in_flight.iter().filter(|(_, (k, ..))| k == &device) {
                p.twins
                    .retain(|name, t| sent.twins.get(name).is_none_or(|s| s.seq != t.seq));
                if p.state
                    .as_ref()
                    .zip(sent.state.as_ref())
                    .is_some_and(|(a, b)| a.seq == b.seq)
                {
                    p.state = None;
                }
            }
            let twins = Pending {
                twins: p.twins.into_iter().take(MAX_TWINS_PER_REPORT).collect(),
                state: None,
            };
            if let Some(m) = twin_message(&device, &twins, now_ms) {
                self.in_flight
                    .insert(m.header.id.clone(), (device.clone(), twins, now));
                out.push(m);
            }
            if let Some(state) = p.state {
                let only_state = Pending {
                    twins: Default::default(),
                    state: Some(state),
                };
                if let Some(m) = state_message(&device, &only_state, now_ms) {
                    self.in_flight
                        .insert(m.header.id.clone(), (device.clone(), only_state, now));
                    out.push(m);
                }
            }
        }
        out
    }

    /// Takes the hub's answer to one of our reports (also a late one, to a report already
    /// resent); false for any other frame.
    pub fn on_frame(&mut self, text: &str) -> bool {
        if !text.contains("\"device/") {
            return false;
        }
        let Ok(message) = Message::parse(text) else {
            return false;
        };
        let answer = matches!(
            message.operation(),
            Ok(Operation::Response | Operation::Error)
        );
        if !answer || !message.route.resource.starts_with("device/") {
            return false;
        }
        let Some((device, sent, at)) = self.in_flight.remove(&message.header.parent_id) else {
            // Late: its report was sent again meanwhile, and that one's answer counts.
            return true;
        };
        match message.operation() {
            Ok(Operation::Response) => {
                self.busy_streak = 0;
                if let Err(e) = self.source.book.taken(&device, &sent) {
                    tracing::error!(error = %e, "dmi book");
                }
            }
            _ => {
                let reason = message.content.as_str().unwrap_or_default();
                if reason.starts_with(QUEUED) {
                    // The hub holds it for the device's next write: still on its way (resent
                    // after RESEND_AFTER if nothing newer went), newer values go as they come.
                    self.in_flight
                        .insert(message.header.parent_id.clone(), (device, sent, at));
                } else if reason.starts_with(BUSY) {
                    // The hub is full: the report stays pending, and none goes for a while.
                    self.busy_streak = self.busy_streak.saturating_add(1);
                    let hold = busy_hold(self.busy_streak).mul_f64(0.5 + fastrand::f64() / 2.0);
                    self.hold_until = Some(Instant::now() + hold);
                } else {
                    tracing::warn!(device = ?device, %reason, "hub refused a device report");
                    let _ = self.source.book.taken(&device, &sent);
                }
            }
        }
        true
    }

    /// A new session: everything unanswered goes again, at once.
    pub fn reset(&mut self) {
        self.in_flight.clear();
        self.hold_until = None;
        self.busy_streak = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dmi::book::BookLimits;

    fn source() -> UplinkSource {
        UplinkSource {
            book: Arc::new(Book::memory(BookLimits::default())),
            reported: Arc::new(Notify::new()),
        }
    }

    fn report(p: &str, v: &str, ts: i64) -> crate::dmi::book::TwinReport {
        crate::dmi::book::TwinReport {
            property: p.into(),
            reported: v.into(),
            observed_desired: String::new(),
            type_: "int".into(),
            timestamp_ms: ts,
        }
    }

    fn dev() -> DeviceKey {
        ("plant".into(), "t0".into())
    }

    fn answer(to: &Message, ok: bool) -> String {
        edgefleet_channel::device::answer(to, if ok { Ok(()) } else { Err("busy: board full") })
            .to_frame()
    }

    #[tokio::test]
    async fn latest_per_property_is_sent_once_and_cleared_only_by_its_ok() {
        let src = source();
        let mut up = Uplink::new(src.clone());
        // An outage: many reports, one value per property kept.
        for i in 0..50 {
            src.book
                .record_twins(&dev(), vec![report("a", &i.to_string(), 100 + i)])
                .unwrap();
        }
        src.book
            .record_state(&dev(), "online".into(), 1_700_000_000_000)
            .unwrap();
        let sent = up.due(1);
        assert_eq!(sent.len(), 2, "one twin report, one state report");
        let update = DeviceTwinUpdate::parse(&sent[0].content).unwrap();
        assert_eq!(
            update.twin["a"].actual.as_ref().unwrap().value.as_deref(),
            Some("49")
        );
        assert_eq!(update.twin["a"].metadata.as_ref().unwrap().type_, "int");
        assert_eq!(sent[0].route.resource, "device/plant/t0/twin/edge_updated");
        let state = DeviceStateUpdate::parse(&sent[1].content).unwrap();
        assert_eq!(state.device.state, "online");
        assert!(
            state
                .device
                .last_online_time
                .starts_with("2023-11-14T22:13:20")
        );
        // Nothing new: nothing resent while the answer is awaited.
        assert!(up.due(2).is_empty());
        // A newer value meanwhile, then the OK of the older one: the newer stays pending.
        src.book
            .record_twins(&dev(), vec![report("a", "new", 999)])
            .unwrap();
        assert!(up.on_frame(&answer(&sent[0], true)));
        assert!(up.on_frame(&answer(&sent[1], true)));
        let again = up.due(3);
        assert_eq!(again.len(), 1);
        let update = DeviceTwinUpdate::parse(&again[0].content).unwrap();
        assert_eq!(
            update.twin["a"].actual.as_ref().unwrap().value.as_deref(),
            Some("new")
        );
        // busy: stays pending; a new session resends it.
        assert!(up.on_frame(&answer(&again[0], false)));
        up.reset();
        let resent = up.due(4);
        assert_eq!(resent.len(), 1);
        assert!(up.on_frame(&answer(&resent[0], true)));
        assert!(up.due(5).is_empty());
        assert!(src.book.pending(10).unwrap().is_empty());
        // Versions grow per property across reports.
        let v_old = update.twin["a"].actual_version.unwrap().edge;
        assert!(v_old > 0);
    }

    #[tokio::test]
    async fn a_busy_hub_is_left_alone_for_a_while_and_late_answers_are_taken_quietly() {
        let src = source();
        let mut up = Uplink::new(src.clone());
        src.book
            .record_twins(&dev(), vec![report("a", "1", 100)])
            .unwrap();
        let sent = up.due(1);
        assert_eq!(sent.len(), 1);
        assert!(up.on_frame(&answer(&sent[0], false)));
        // Still pending, but held back: nothing goes, even with a newer value.
        src.book
            .record_twins(&dev(), vec![report("a", "2", 200)])
            .unwrap();
        assert!(up.due(2).is_empty());
        // A late answer to a report no longer awaited is ours, not a refused hub message.
        assert!(up.on_frame(&answer(&sent[0], false)));
        // Another hub frame is not.
        let other = Message::new(
            "edgecontroller",
            "resource",
            Operation::Insert,
            &edgefleet_channel::Resource::new(
                "ns",
                edgefleet_channel::ResourceType::ConfigMap,
                "c",
            ),
        );
        assert!(!up.on_frame(&other.to_frame()));
        // A new session sends at once.
        up.reset();
        assert_eq!(up.due(3).len(), 1);
    }

    #[tokio::test]
    async fn a_queued_report_stays_on_its_way_and_newer_values_keep_going() {
        let src = source();
        let mut up = Uplink::new(src.clone());
        src.book
            .record_twins(&dev(), vec![report("a", "1", 100)])
            .unwrap();
        let sent = up.due(1);
        assert_eq!(sent.len(), 1);
        let queued = edgefleet_channel::device::answer(
            &sent[0],
            Err(&format!(
                "{QUEUED}: the device's status write has not come yet"
            )),
        );
        assert!(up.on_frame(&queued.to_frame()));
        // Not held, not resent at once: the hub has it.
        assert!(up.due(2).is_empty());
        // A newer value goes at once.
        src.book
            .record_twins(&dev(), vec![report("a", "2", 200)])
            .unwrap();
        let newer = up.due(3);
        assert_eq!(newer.len(), 1);
        let update = DeviceTwinUpdate::parse(&newer[0].content).unwrap();
        assert_eq!(
            update.twin["a"].actual.as_ref().unwrap().value.as_deref(),
            Some("2")
        );
        // Its OK clears the property; the first report's late OK changes nothing.
        assert!(up.on_frame(&answer(&newer[0], true)));
        assert!(up.on_frame(&answer(&sent[0], true)));
        assert!(src.book.pending(10).unwrap().is_empty());
    }

    #[test]
    fn busy_holds_double_up_to_a_minute() {
        let cases = [
            (1, 2),
            (2, 4),
            (3, 8),
            (4, 16),
            (5, 32),
            (6, 60),
            (7, 60),
            (40, 60),
        ];
        for (streak, secs) in cases {
            assert_eq!(
                busy_hold(streak),
                Duration::from_secs(secs),
                "streak {streak}"
            );
        }
    }
}
