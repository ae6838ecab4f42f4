//! What one device's waiting reports change in its status, and the apply body (pure).
//!
//! The hub owns (field manager `edgefleet-hub`, server-side apply) `status.twins` (an atomic
//! list: always applied whole), `status.state`, `status.lastOnlineTime` and the one condition
//! `UnknownReportedProperty`; the device operator (`edgefleet-device`) owns the rest of the
//! status. Each twin keeps KubeEdge v1.22's shape: `reported{value, metadata{timestamp, type}}`,
//! `observedDesired{value, metadata{timestamp}}`; the hub adds `metadata.version` (the edge's
//! version) so that any replica can order a report against what is stored.
//!
//! | rule | why |
//! |---|---|
//! | a property's report older than the stored one (by `(version, timestamp)`) is dropped | KubeEdge #4437: a resent report flips values back |
//! | a state report whose `lastOnlineTime` is older than the stored one is dropped | same, for state |
//! | a report for a property `spec.properties` does not declare is not written, counted and named in `UnknownReportedProperty` | KubeEdge #5468 drops it silently |
//! | nothing is written when no value, type, desired value or state changed; a timestamp alone (a property's read time, `lastOnlineTime`) is refreshed at most once per `refresh` | KubeEdge #3761: one PATCH per report |
//! | a write that only refreshes times is a [`Change::Refresh`], which waits for spare budget behind value changes | unchanged values once took the whole budget at full load |

use std::collections::BTreeSet;

use edgefleet_api::devices::{Device, Twin, TwinProperty};
use jiff::Timestamp;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::board::{Pending, PendingTwin};

/// Condition the hub sets while the edge reports properties the Device does not declare.
pub const CONDITION_UNKNOWN_PROPERTY: &str = "UnknownReportedProperty";
const UNKNOWN_PREFIX: &str = "reported properties not declared in spec.properties: ";

/// What a merge would write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing: every value and state is stored already, and stored recently enough.
    Nothing,
    /// Only times are renewed (a value unchanged for `refresh`); `since_ms`: the oldest stored
    /// time it renews, so the stalest go first.
    Refresh { since_ms: i64 },
    /// A value, type, desired value, state or condition changed.
    Value,
}

impl Change {
    /// The larger of two changes (a value change outranks a refresh; two refreshes keep the
    /// older stored time).
    fn and(self, other: Change) -> Change {
        match (self, other) {
            (Change::Value, _) | (_, Change::Value) => Change::Value,
            (Change::Refresh { since_ms: a }, Change::Refresh { since_ms: b }) => {
                Change::Refresh { since_ms: a.min(b) }
            }
            (r @ Change::Refresh { .. }, Change::Nothing) | (Change::Nothing, r) => r,
        }
    }
}

/// Result of merging one device's waiting reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The server-side apply body, `None` when nothing changed.
    pub apply: Option<Value>,
    /// What the body changes ([`Change::Nothing`] when `apply` is `None`).
    pub change: Change,
    /// Reported properties the Device does not declare.
    pub unknown: Vec<String>,
    /// Properties (or the state) older than what the status holds, dropped.
    pub older: usize,
}

fn stored_order(t: &TwinProperty) -> (i64, i64) {
    let get = |k: &str| {
        t.metadata
            .as_ref()
            .and_then(|m| m.get(k))
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    (get("version"), get("timestamp"))
}

fn meta(pairs: &[(&str, String)]) -> Option<std::collections::BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect(),
    )
}

/// Folds one pending twin into the stored twin; `None` when it is older than what is stored.
fn merge_twin(stored: &Twin, p: &PendingTwin, refresh_ms: i64) -> Option<(Twin, Change)> {
    let mut out = stored.clone();
    let mut changed = Change::Nothing;
    if let Some((value, at, type_)) = &p.actual {
        if let Some(r) = &stored.reported
            && (p.order.edge_version, p.order.timestamp) < stored_order(r)
        {
            return None;
        }
        let version = if p.order.edge_version > 0 {
            p.order.edge_version.to_string()
        } else {
            String::new()
        };
        let new = TwinProperty {
            value: value.clone(),
            metadata: meta(&[
                ("timestamp", at.to_string()),
                ("type", type_.clone()),
                ("version", version),
            ]),
        };
        changed = changed.and(match &stored.reported {
            None => Change::Value,
            Some(r) => {
                let m =
                    |t: &TwinProperty, k: &str| t.metadata.as_ref().and_then(|m| m.get(k)).cloned();
                let stored_at = stored_order(r).1;
                if r.value != new.value || m(r, "type") != m(&new, "type") {
                    Change::Value
                } else if at - stored_at >= refresh_ms {
                    Change::Refresh {
                        since_ms: stored_at,
                    }
                } else {
                    Change::Nothing
                }
            }
        });
        out.reported = Some(new);
    }
    if let Some((value, at)) = &p.expected {
        let new = TwinProperty {
            value: value.clone(),
            metadata: meta(&[(
                "timestamp",
                if *at > 0 {
                    at.to_string()
                } else {
                    String::new()
                },
            )]),
        };
        if stored.observed_desired.as_ref().map(|o| &o.value) != Some(&new.value) {
            changed = Change::Value;
            out.observed_desired = Some(new);
        }
    }
    Some((out, changed))
}

fn rfc3339(s: &str) -> Option<Timestamp> {
    s.parse::<Timestamp>().ok()
}

/// Merges `pending` into `device`'s status. `refresh_ms`: an unchanged value whose stored time
/// is older than this is written again (so the operator can tell a live value from a stale one).
pub fn merge(device: &Device, pending: &Pending, refresh_ms: i64, now: &str) -> Merged {
    let status = device.status.clone().unwrap_or_default();
    let declared: BTreeSet<&str> = device
        .spec
        .properties
        .iter()
        .flatten()
        .map(|p| p.name.as_str())
        .collect();
    let mut twins = status.twins.clone().unwrap_or_default();
    let mut changed = Change::Nothing;
    let mut older = 0;
    let mut unknown = Vec::new();
    for (name, p) in &pending.twins {
        if !declared.contains(name.as_str()) {
            unknown.push(name.clone());
            continue;
        }
        let idx = match twins.iter().position(|t| &t.property_name == name) {
            Some(i) => i,
            None => {
                twins.push(Twin {
                    property_name: name.clone(),
                    ..Default::default()
                });
                twins.len() - 1
            }
        };
        match merge_twin(&twins[idx], p, refresh_ms) {
            None => older += 1,
            Some((t, c)) => {
                changed = changed.and(c);
                twins[idx] = t;
            }
        }
    }
    // Twins the operator's spec no longer declares stay as reported: KubeEdge keeps them too.
    twins.retain(|t| t.reported.is_some() || t.observed_desired.is_some());

    let mut state = status.state.clone();
    let mut last_online = status.last_online_time.clone();
    if let Some(s) = &pending.state {
        let times = (
            rfc3339(&s.last_online_time),
            status.last_online_time.as_deref().and_then(rfc3339),
        );
        let is_older = match times {
            (Some(new), Some(stored)) => new < stored,
            _ => false,
        };
        if is_older {
            older += 1;
        } else {
            if state.as_deref() != Some(s.state.as_str()) {
                changed = Change::Value;
                state = Some(s.state.clone());
            }
            if !s.last_online_time.is_empty()
                && last_online.as_deref() != Some(s.last_online_time.as_str())
            {
                // The same state again with a later time (mappers report state every cycle):
                // a refresh, like an unchanged value.
                changed = changed.and(match times {
                    (Some(new), Some(stored)) => {
                        let (new, stored) = (new.as_millisecond(), stored.as_millisecond());
                        if new - stored >= refresh_ms {
                            Change::Refresh { since_ms: stored }
                        } else {
                            Change::Nothing
                        }
                    }
                    _ => Change::Value,
                });
                last_online = Some(s.last_online_time.clone());
            }
        }
    }

    // The condition names every undeclared property seen, until the spec declares it.
    let previous = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == CONDITION_UNKNOWN_PROPERTY);
    let mut names: BTreeSet<String> = previous
        .and_then(|c| c.message.strip_prefix(UNKNOWN_PREFIX))
        .map(|m| m.split(", ").map(str::to_string).collect())
        .unwrap_or_default();
    names.extend(unknown.iter().cloned());
    names.retain(|n| !n.is_empty() && !declared.contains(n.as_str()));
    let condition = (!names.is_empty()).then(|| {
        let message = format!(
            "{UNKNOWN_PREFIX}{}",
            names.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        let since = previous
            .filter(|c| c.status == "True")
            .map_or_else(|| now.to_string(), |c| c.last_transition_time.0.to_string());
        (message, since)
    });
    let condition_changed =
        condition.as_ref().map(|(m, _)| m.as_str()) != previous.map(|c| c.message.as_str());
    if condition_changed {
        changed = Change::Value;
    }
    if changed == Change::Nothing {
        return Merged {
            apply: None,
            change: changed,
            unknown,
            older,
        };
    }

    let mut body_status = serde_json::Map::new();
    body_status.insert(
        "twins".into(),
        serde_json::to_value(&twins).unwrap_or(Value::Null),
    );
    if let Some(s) = state {
        body_status.insert("state".into(), Value::from(s));
    }
    if let Some(t) = last_online {
        body_status.insert("lastOnlineTime".into(), Value::from(t));
    }
    if let Some((message, since)) = condition {
        body_status.insert(
            "conditions".into(),
            json!([{
                "type": CONDITION_UNKNOWN_PROPERTY,
                "status": "True",
                "reason": "NotDeclared",
                "message": message,
                "lastTransitionTime": since,
            }]),
        );
    }
    let mut metadata = json!({"name": device.name_any(), "namespace": device.namespace()});
    if let Some(rv) = device.resource_version() {
        metadata["resourceVersion"] = Value::from(rv);
    }
    Merged {
        apply: Some(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1",
            "kind": "Device",
            "metadata": metadata,
            "status": body_status,
        })),
        change: changed,
        unknown,
        older,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_channel::device::{DeviceStateUpdate, DeviceTwinUpdate};

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn device(status: Value) -> Device {
        serde_json::from_value(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
            "metadata": {"name": "d", "namespace": "ns", "resourceVersion": "7"},
            "spec": {"deviceModelRef": {"name": "m"}, "nodeName": "n",
                     "properties": [{"name": "temp"}, {"name": "mode"}]},
            "status": status,
        }))
        .unwrap()
    }

    fn pending(twins: Value, state: Option<(&str, &str, i64)>) -> Pending {
        let mut p = Pending::default();
        if !twins.is_null() {
            p.add_twins(&DeviceTwinUpdate::parse(&json!({"timestamp": 1, "twin": twins})).unwrap());
        }
        if let Some((s, t, ts)) = state {
            p.add_state(
                &DeviceStateUpdate::parse(&json!({"timestamp": ts,
                    "device": {"name": "d", "state": s, "lastOnlineTime": t}}))
                .unwrap(),
            );
        }
        p
    }

    fn twin(value: &str, version: i64, ts: i64) -> Value {
        json!({"actual": {"value": value, "metadata": {"timestamp": ts}},
               "expected": {"value": "20"},
               "metadata": {"type": "int"},
               "actual_version": {"edge": version}})
    }

    fn stored(value: &str, version: i64, ts: i64) -> Value {
        json!({"twins": [{"propertyName": "temp",
            "reported": {"value": value, "metadata": {"timestamp": ts.to_string(), "type": "int", "version": version.to_string()}},
            "observedDesired": {"value": "20"}}],
            "state": "online", "lastOnlineTime": "2026-01-01T00:00:00Z"})
    }

    #[test]
    fn writes_twins_in_kubeedge_shape_with_state() {
        let m = merge(
            &device(json!({})),
            &pending(
                json!({"temp": twin("21", 3, 1000)}),
                Some(("online", "2026-01-01T00:00:00Z", 1)),
            ),
            60_000,
            NOW,
        );
        let body = m.apply.unwrap();
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        let s = &body["status"];
        assert_eq!(s["twins"][0]["propertyName"], "temp");
        assert_eq!(s["twins"][0]["reported"]["value"], "21");
        assert_eq!(s["twins"][0]["reported"]["metadata"]["timestamp"], "1000");
        assert_eq!(s["twins"][0]["reported"]["metadata"]["type"], "int");
        assert_eq!(s["twins"][0]["reported"]["metadata"]["version"], "3");
        assert_eq!(s["twins"][0]["observedDesired"]["value"], "20");
        assert_eq!(s["state"], "online");
        assert_eq!(s["lastOnlineTime"], "2026-01-01T00:00:00Z");
        assert!(s.get("conditions").is_none());
    }

    #[test]
    fn decides_write_or_not_by_order_and_change() {
        const V: Change = Change::Value;
        const N: Change = Change::Nothing;
        // (case, stored (value, version, ts), report (value, version, ts), change, older)
        let cases = [
            ("newer value", ("21", 3, 1000), ("22", 4, 2000), V, 0),
            ("same value, fresh", ("21", 3, 1000), ("21", 4, 2000), N, 0),
            (
                "same value, refresh due: the stored time says how stale",
                ("21", 3, 1000),
                ("21", 4, 61_000),
                Change::Refresh { since_ms: 1000 },
                0,
            ),
            ("resent older value", ("22", 4, 2000), ("21", 3, 1000), N, 1),
            (
                "older version, later clock",
                ("22", 4, 2000),
                ("21", 3, 9000),
                N,
                1,
            ),
            (
                "no versions: time decides",
                ("22", 0, 2000),
                ("23", 0, 3000),
                V,
                0,
            ),
        ];
        for (case, (sv, sver, sts), (rv, rver, rts), change, older) in cases {
            let m = merge(
                &device(stored(sv, sver, sts)),
                &pending(json!({"temp": twin(rv, rver, rts)}), None),
                60_000,
                NOW,
            );
            assert_eq!(m.change, change, "{case}");
            assert_eq!(m.apply.is_some(), change != N, "{case}");
            assert_eq!(m.older, older, "{case}");
        }
    }

    #[test]
    fn the_same_state_again_is_a_refresh_once_its_time_is_old_enough() {
        // Stored: online since 2026-01-01T00:00:00Z.
        let d = device(stored("21", 3, 1000));
        let cases = [
            (
                "same state, 30 s later",
                "online",
                "2026-01-01T00:00:30Z",
                Change::Nothing,
            ),
            (
                "same state, 90 s later",
                "online",
                "2026-01-01T00:01:30Z",
                Change::Refresh {
                    since_ms: 1_767_225_600_000,
                },
            ),
            (
                "another state",
                "offline",
                "2026-01-01T00:00:30Z",
                Change::Value,
            ),
        ];
        for (case, state, at, change) in cases {
            let m = merge(&d, &pending(Value::Null, Some((state, at, 1))), 60_000, NOW);
            assert_eq!(m.change, change, "{case}");
            if change != Change::Nothing {
                assert_eq!(m.apply.unwrap()["status"]["lastOnlineTime"], at, "{case}");
            }
        }
        // A value change and a refresh in one write: a value change.
        let m = merge(
            &d,
            &pending(
                json!({"temp": twin("25", 4, 2000)}),
                Some(("online", "2026-01-01T00:01:30Z", 1)),
            ),
            60_000,
            NOW,
        );
        assert_eq!(m.change, Change::Value);
    }

    #[test]
    fn an_older_state_never_replaces_a_newer_one() {
        let d = device(stored("21", 3, 1000));
        let m = merge(
            &d,
            &pending(Value::Null, Some(("offline", "2025-12-31T00:00:00Z", 1))),
            60_000,
            NOW,
        );
        assert_eq!((m.apply.is_none(), m.older), (true, 1));
        let m = merge(
            &d,
            &pending(Value::Null, Some(("offline", "2026-01-02T00:00:00Z", 1))),
            60_000,
            NOW,
        );
        assert_eq!(m.apply.unwrap()["status"]["state"], "offline");
    }

    #[test]
    fn undeclared_properties_are_named_in_a_condition_not_written() {
        let m = merge(
            &device(json!({})),
            &pending(
                json!({"temp": twin("21", 1, 1), "humidity": twin("40", 1, 1)}),
                None,
            ),
            60_000,
            NOW,
        );
        assert_eq!(m.unknown, vec!["humidity".to_string()]);
        let body = m.apply.unwrap();
        let twins = body["status"]["twins"].as_array().unwrap();
        assert_eq!(twins.len(), 1);
        let c = &body["status"]["conditions"][0];
        assert_eq!(c["type"], CONDITION_UNKNOWN_PROPERTY);
        assert_eq!(
            c["message"],
            "reported properties not declared in spec.properties: humidity"
        );
        // The condition alone (values unchanged) is still written once; then nothing.
        let mut again = device(body["status"].clone());
        again.metadata.resource_version = Some("8".into());
        let m = merge(
            &again,
            &pending(json!({"humidity": twin("41", 2, 2)}), None),
            60_000,
            NOW,
        );
        assert_eq!(m.apply, None, "same unknown names, nothing to write");
        assert_eq!(m.unknown.len(), 1);
    }
}
