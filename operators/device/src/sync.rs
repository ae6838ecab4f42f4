//! Where each property's desired value stands, and whether the device is online (pure).
//!
//! For every Device property with a desired value (not `""`), from `spec` and the edge's
//! `status.twins[]` (`reported`, `observedDesired`, `reported.metadata.timestamp` in ms):
//!
//! | state | when |
//! |---|---|
//! | `InSync` | `reported.value == desired` (and the report is fresh) |
//! | `Pending` | the mapper has not acknowledged this desired value (`observedDesired` differs) or has it but the device never reported it yet |
//! | `Drifted` | the mapper has this desired value, the property was `InSync` (or `Drifted`) and now reports another value |
//! | `Stale` | the last report is older than `max(3 × reportCycle, --stale-after-seconds)` |
//!
//! `lastChangeTime` is when the property entered its state: kept while the state holds.
//! `TwinSynced` is True when every tracked property is InSync (or none is tracked), False
//! otherwise naming the properties; Unknown while the Device is not Valid.
//!
//! `Online`: True when `status.state` (written from the edge) is `online` and the node's edge
//! session is up. "Session up" is read from the Node's `Ready` condition: the hub keeps the
//! Nodes it manages Ready while their session lives and lets them go NotReady when it ends
//! (its load-report ConfigMaps only carry counts, not node names).

use std::time::Duration;

use edgefleet_api::devices::{Device, PropertySyncState, PropertySyncStatus, Twin};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::validate::desired_value;

/// What the sync computation needs besides the Device.
#[derive(Debug, Clone, Copy)]
pub struct Staleness {
    /// A report older than `max(3 × reportCycle, floor)` is stale.
    pub floor: Duration,
}

/// Per-property sync states and the next time one may turn Stale on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncOutcome {
    pub properties: Vec<PropertySyncStatus>,
    /// When to look again: the earliest time a fresh report goes stale.
    pub recheck_at: Option<Timestamp>,
}

fn reported_at(twin: &Twin) -> Option<Timestamp> {
    let ms = twin
        .reported
        .as_ref()?
        .metadata
        .as_ref()?
        .get("timestamp")?
        .parse::<i64>()
        .ok()?;
    Timestamp::from_millisecond(ms).ok()
}

/// Computes the sync state of every property of `device` that has a desired value.
pub fn property_sync(device: &Device, now: Timestamp, staleness: Staleness) -> SyncOutcome {
    let status = device.status.as_ref();
    let twins = status.and_then(|s| s.twins.as_deref()).unwrap_or_default();
    let previous = status
        .and_then(|s| s.property_sync.as_deref())
        .unwrap_or_default();
    let mut properties = Vec::new();
    let mut recheck_at: Option<Timestamp> = None;
    for property in device.spec.properties.iter().flatten() {
        let Some(desired) = desired_value(property) else {
            continue;
        };
        let twin = twins.iter().find(|t| t.property_name == property.name);
        let before = previous.iter().find(|p| p.property_name == property.name);
        let reported = twin
            .and_then(|t| t.reported.as_ref())
            .map(|r| r.value.as_str());
        let observed = twin
            .and_then(|t| t.observed_desired.as_ref())
            .map(|r| r.value.as_str());
        let cycle = property
            .report_cycle
            .and_then(|ms| u64::try_from(ms).ok())
            .map_or(Duration::ZERO, |ms| {
                Duration::from_millis(ms.saturating_mul(3))
            });
        let stale_after =
            SignedDuration::try_from(cycle.max(staleness.floor)).unwrap_or(SignedDuration::MAX);
        let stale_at = twin
            .and_then(reported_at)
            .and_then(|at| at.checked_add(stale_after).ok());
        let was_reached = matches!(
            before.map(|b| b.state),
            Some(PropertySyncState::InSync | PropertySyncState::Drifted)
        );
        let (state, message) = match (reported, stale_at) {
            (Some(_), Some(at)) if at <= now => (
                PropertySyncState::Stale,
                format!("no report since {}", at - stale_after),
            ),
            (Some(r), _) if r == desired => (PropertySyncState::InSync, format!("reported {r}")),
            _ if observed != Some(desired) => (
                PropertySyncState::Pending,
                format!("desired {desired} not yet acknowledged by the mapper"),
            ),
            (Some(r), _) if was_reached => (
                PropertySyncState::Drifted,
                format!("desired {desired}, reported {r}"),
            ),
            (Some(r), _) => (
                PropertySyncState::Pending,
                format!("desired {desired}, reported {r}"),
            ),
            (None, _) => (
                PropertySyncState::Pending,
                format!("desired {desired}, nothing reported yet"),
            ),
        };
        if state != PropertySyncState::Stale
            && let Some(at) = stale_at
        {
            recheck_at = Some(recheck_at.map_or(at, |r| r.min(at)));
        }
        let since = match before {
            Some(b) if b.state == state => b.last_change_time.clone(),
            _ => Some(Time(now)),
        };
        properties.push(PropertySyncStatus {
            property_name: property.name.clone(),
            state,
            last_change_time: since,
            message: Some(message),
        });
    }
    SyncOutcome {
        properties,
        recheck_at,
    }
}

/// `(synced properties, tracked properties)`.
pub fn synced_count(properties: &[PropertySyncStatus]) -> (usize, usize) {
    let synced = properties
        .iter()
        .filter(|p| p.state == PropertySyncState::InSync)
        .count();
    (synced, properties.len())
}

/// `(status, reason, message)` of `TwinSynced`.
pub fn twin_synced(
    valid: bool,
    properties: &[PropertySyncStatus],
) -> (&'static str, &'static str, String) {
    if !valid {
        return (
            "Unknown",
            "Invalid",
            "the device is not valid (see the Valid condition)".into(),
        );
    }
    let (synced, total) = synced_count(properties);
    if synced == total {
        let message = if total == 0 {
            "no property has a desired value".to_owned()
        } else {
            format!("{synced}/{total} properties in sync")
        };
        return ("True", "InSync", message);
    }
    // The worst state names the reason: Drifted > Stale > Pending.
    let rank = |s: PropertySyncState| match s {
        PropertySyncState::Drifted => 3,
        PropertySyncState::Stale => 2,
        PropertySyncState::Pending => 1,
        PropertySyncState::InSync => 0,
    };
    let worst = properties
        .iter()
        .map(|p| p.state)
        .max_by_key(|s| rank(*s))
        .unwrap_or(PropertySyncState::Pending);
    let reason = match worst {
        PropertySyncState::Drifted => "Drifted",
        PropertySyncState::Stale => "Stale",
        _ => "Pending",
    };
    let out: Vec<String> = properties
        .iter()
        .filter(|p| p.state != PropertySyncState::InSync)
        .map(|p| format!("{} {:?}", p.property_name, p.state))
        .collect();
    (
        "False",
        reason,
        format!(
            "{synced}/{total} properties in sync; out of sync: {}",
            out.join(", ")
        ),
    )
}

/// Whether the device's node holds an edge session: `None` when there is no such Node.
pub type SessionUp = Option<bool>;

/// What the edge's `status.state` says, in the words of KubeEdge's mapper-framework
/// (`pkg/common`: ok, online, offline, disconnected, unhealthy, unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceState {
    /// `online`, or `ok`: what a mapper-framework driver reports for a healthy device
    /// (`GetDeviceStates` of the mapper template returns `DeviceStatusOK`).
    Online,
    /// `offline`, `disconnected`.
    Offline,
    /// `unhealthy`: reachable, but the mapper says it is not working.
    Unhealthy,
    /// No state reported yet, `unknown`, or a word no mapper-framework version uses.
    Unknown,
}

impl DeviceState {
    pub const ALL: [DeviceState; 4] = [
        DeviceState::Online,
        DeviceState::Offline,
        DeviceState::Unhealthy,
        DeviceState::Unknown,
    ];

    pub fn of(device: &Device) -> DeviceState {
        let state = device.status.as_ref().and_then(|s| s.state.as_deref());
        match state.map(str::to_ascii_lowercase).as_deref() {
            Some("online" | "ok") => DeviceState::Online,
            Some("offline" | "disconnected") => DeviceState::Offline,
            Some("unhealthy") => DeviceState::Unhealthy,
            _ => DeviceState::Unknown,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DeviceState::Online => "online",
            DeviceState::Offline => "offline",
            DeviceState::Unhealthy => "unhealthy",
            DeviceState::Unknown => "unknown",
        }
    }
}

/// `(status, reason, message)` of `Online`.
pub fn online(device: &Device, session: SessionUp) -> (&'static str, &'static str, String) {
    let Some(node) = device.node_name() else {
        return ("False", "NoNode", "the device is bound to no node".into());
    };
    match session {
        None => {
            return (
                "False",
                "NodeNotFound",
                format!("node {node} does not exist"),
            );
        }
        Some(false) => {
            return (
                "False",
                "SessionDown",
                format!("node {node} has no live edge session (Node not Ready)"),
            );
        }
        Some(true) => {}
    }
    // No time in the message: `lastOnlineTime` moves on every state report, and a message
    // that moved with it would be one more status write per report.
    let status = device.status.as_ref();
    match status
        .and_then(|s| s.state.as_deref())
        .filter(|s| !s.is_empty())
    {
        None => (
            "Unknown",
            "NotReported",
            format!("node {node} is connected; the mapper reported no state yet"),
        ),
        Some(_) if DeviceState::of(device) == DeviceState::Online => {
            ("True", "Online", format!("reported online on node {node}"))
        }
        Some(state) => (
            "False",
            "DeviceOffline",
            format!("reported {state} on node {node}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW_MS: i64 = 1_800_000_000_000;

    fn now() -> Timestamp {
        Timestamp::from_millisecond(NOW_MS).unwrap()
    }

    fn staleness() -> Staleness {
        Staleness {
            floor: Duration::from_secs(60),
        }
    }

    /// A device with `temp` desired `desired`, and a twin (reported, observedDesired, age of
    /// the report in seconds), and a previous sync state.
    fn device(
        desired: &str,
        twin: Option<(Option<&str>, Option<&str>, i64)>,
        before: Option<(&str, i64)>,
    ) -> Device {
        let mut status = json!({});
        if let Some((reported, observed, age)) = twin {
            let mut t = json!({"propertyName": "temp"});
            if let Some(r) = reported {
                t["reported"] = json!({"value": r, "metadata": {"timestamp": (NOW_MS - age * 1000).to_string()}});
            }
            if let Some(o) = observed {
                t["observedDesired"] = json!({"value": o});
            }
            status["twins"] = json!([t]);
        }
        if let Some((state, ago)) = before {
            let at = Timestamp::from_millisecond(NOW_MS - ago * 1000).unwrap();
            status["propertySync"] =
                json!([{"propertyName": "temp", "state": state, "lastChangeTime": at.to_string()}]);
        }
        serde_json::from_value(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
            "metadata": {"name": "d", "namespace": "ns"},
            "spec": {
                "deviceModelRef": {"name": "m"},
                "nodeName": "edge-0000",
                "properties": [
                    {"name": "temp", "desired": {"value": desired}, "reportCycle": 30000},
                    {"name": "ro"},
                ],
            },
            "status": status,
        }))
        .unwrap()
    }

    /// (case, desired, twin (reported, observedDesired, age s), before (state, ago s), expected
    /// state, kept the previous time?)
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<(Option<&'a str>, Option<&'a str>, i64)>,
        Option<(&'a str, i64)>,
        PropertySyncState,
        bool,
    );

    #[test]
    fn state_transitions() {
        use PropertySyncState::*;
        // (case, desired, twin, before, expected state, kept the previous time?)
        let cases: Vec<Case> = vec![
            ("no twin yet", "20", None, None, Pending, false),
            (
                "acked, nothing reported",
                "20",
                Some((None, Some("20"), 0)),
                None,
                Pending,
                false,
            ),
            (
                "reported desired",
                "20",
                Some((Some("20"), Some("20"), 5)),
                None,
                InSync,
                false,
            ),
            (
                "in sync stays, time kept",
                "20",
                Some((Some("20"), Some("20"), 5)),
                Some(("InSync", 300)),
                InSync,
                true,
            ),
            (
                "desired changed: pending",
                "25",
                Some((Some("20"), Some("20"), 5)),
                Some(("InSync", 300)),
                Pending,
                false,
            ),
            (
                "mapper acked, not reached yet",
                "25",
                Some((Some("20"), Some("25"), 5)),
                Some(("Pending", 10)),
                Pending,
                true,
            ),
            (
                "reached then moved: drifted",
                "25",
                Some((Some("24"), Some("25"), 5)),
                Some(("InSync", 300)),
                Drifted,
                false,
            ),
            (
                "drifted stays drifted",
                "25",
                Some((Some("23"), Some("25"), 5)),
                Some(("Drifted", 60)),
                Drifted,
                true,
            ),
            (
                "drifted back in sync",
                "25",
                Some((Some("25"), Some("25"), 5)),
                Some(("Drifted", 60)),
                InSync,
                false,
            ),
            // 3 × 30 s report cycle = 90 s > the 60 s floor.
            (
                "report 80 s old is fresh",
                "20",
                Some((Some("20"), Some("20"), 80)),
                Some(("InSync", 300)),
                InSync,
                true,
            ),
            (
                "report 91 s old is stale",
                "20",
                Some((Some("20"), Some("20"), 91)),
                Some(("InSync", 300)),
                Stale,
                false,
            ),
            (
                "stale, then a fresh report",
                "20",
                Some((Some("20"), Some("20"), 1)),
                Some(("Stale", 30)),
                InSync,
                false,
            ),
        ];
        for (name, desired, twin, before, expected, kept) in cases {
            let d = device(desired, twin, before);
            let out = property_sync(&d, now(), staleness());
            assert_eq!(
                out.properties.len(),
                1,
                "{name}: only desired properties are tracked"
            );
            let p = &out.properties[0];
            assert_eq!(p.state, expected, "{name}");
            let before_time = before
                .map(|(_, ago)| Time(Timestamp::from_millisecond(NOW_MS - ago * 1000).unwrap()));
            if kept {
                assert_eq!(p.last_change_time, before_time, "{name}: time kept");
            } else {
                assert_eq!(p.last_change_time, Some(Time(now())), "{name}: time is now");
            }
        }
    }

    #[test]
    fn a_fresh_report_schedules_the_stale_check() {
        let d = device("20", Some((Some("20"), Some("20"), 10)), None);
        let out = property_sync(&d, now(), staleness());
        let expected = Timestamp::from_millisecond(NOW_MS - 10_000 + 90_000).unwrap();
        assert_eq!(out.recheck_at, Some(expected));
    }

    #[test]
    fn twin_synced_names_the_worst_state_and_the_properties() {
        let p = |name: &str, state| PropertySyncStatus {
            property_name: name.into(),
            state,
            last_change_time: None,
            message: None,
        };
        assert_eq!(
            twin_synced(true, &[]),
            ("True", "InSync", "no property has a desired value".into())
        );
        assert_eq!(
            twin_synced(true, &[p("a", PropertySyncState::InSync)]),
            ("True", "InSync", "1/1 properties in sync".into())
        );
        assert_eq!(
            twin_synced(
                true,
                &[
                    p("a", PropertySyncState::Pending),
                    p("b", PropertySyncState::Drifted),
                    p("c", PropertySyncState::InSync)
                ]
            ),
            (
                "False",
                "Drifted",
                "1/3 properties in sync; out of sync: a Pending, b Drifted".into()
            )
        );
        assert_eq!(twin_synced(false, &[]).0, "Unknown");
    }

    #[test]
    fn device_state_words() {
        let mut d = device("20", None, None);
        assert_eq!(DeviceState::of(&d), DeviceState::Unknown);
        for (word, want) in [
            ("online", DeviceState::Online),
            ("OK", DeviceState::Online),
            ("offline", DeviceState::Offline),
            ("disconnected", DeviceState::Offline),
            ("unhealthy", DeviceState::Unhealthy),
            ("unknown", DeviceState::Unknown),
            ("", DeviceState::Unknown),
            ("on fire", DeviceState::Unknown),
        ] {
            d.status.get_or_insert_with(Default::default).state = Some(word.into());
            assert_eq!(DeviceState::of(&d), want, "{word}");
        }
    }

    #[test]
    fn online_table() {
        let mut d = device("20", None, None);
        assert_eq!(online(&d, None).1, "NodeNotFound");
        assert_eq!(online(&d, Some(false)).1, "SessionDown");
        assert_eq!(online(&d, Some(true)).1, "NotReported");
        let status = d.status.get_or_insert_with(Default::default);
        status.state = Some("online".into());
        status.last_online_time = Some("2026-12-02T10:00:00Z".into());
        assert_eq!(
            online(&d, Some(true)),
            ("True", "Online", "reported online on node edge-0000".into())
        );
        assert_eq!(online(&d, Some(false)).0, "False");
        if let Some(s) = d.status.as_mut() {
            s.state = Some("offline".into());
        }
        assert_eq!(online(&d, Some(true)).1, "DeviceOffline");
        // mapper-framework's healthy device reports "ok".
        if let Some(s) = d.status.as_mut() {
            s.state = Some("ok".into());
        }
        assert_eq!(online(&d, Some(true)).1, "Online");
        d.spec.node_name = None;
        assert_eq!(online(&d, Some(true)).1, "NoNode");
    }
}
