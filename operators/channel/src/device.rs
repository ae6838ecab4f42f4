//! Device reports, edge → cloud: KubeEdge v1.22's twin and state messages, carried in our envelope.
//!
//! The one definition of the device contract between the edge-agent (which sends reports from
//! its mappers) and the hub (which writes them into `Device.status`). Shapes follow KubeEdge's
//! `cloud/pkg/devicecontroller` (`upstream.go`, `types/types.go`) and `edge/pkg/devicetwin`
//! (`dttype`), so an edgecore's reports parse here unchanged.
//!
//! | what | route (`source`, `group`, `operation`, `resource`) | content |
//! |---|---|---|
//! | twin report | `twin`, `resource`, `update`, `device/<ns>/<name>/twin/edge_updated` | [`DeviceTwinUpdate`] |
//! | state report | `twin`, `resource`, `update`, `device/<ns>/<name>/state/update` | [`DeviceStateUpdate`] |
//! | cloud's answer | `edgecontroller`, `twin`, `response` (or `error`), same resource, `parent_msg_id` | `"OK"` (or the reason) |
//!
//! **Ordering.** A report may be resent (no answer within the resend window) and arrive after a
//! newer one. Each property's value is ordered by [`ReportOrder`]: `actual_version.edge` first
//! (the edge's per-property counter, persisted on the edge), then `actual.metadata.timestamp`
//! (ms). A state report is ordered by its `timestamp` (ms). The hub keeps the newest and drops
//! an older one (answered "OK" all the same: the edge need not resend it).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::envelope::{
    GROUP_RESOURCE, GROUP_TWIN, Header, Message, Operation, Route, SOURCE_CLOUD,
};
use crate::resource::{ResourceError, is_valid_name};

/// `route.source` of device reports (KubeEdge's devicetwin module).
pub const SOURCE_TWIN: &str = "twin";
/// Topic suffix of a twin report (KubeEdge's `ResourceTypeTwinEdgeUpdated`).
pub const TOPIC_TWIN_EDGE_UPDATED: &str = "twin/edge_updated";
/// Topic suffix of a state report (KubeEdge's `ResourceDeviceStateUpdated`).
pub const TOPIC_STATE_UPDATE: &str = "state/update";
/// Largest number of properties one twin report may carry (a Device declares at most this many
/// in practice; more is malformed).
pub const MAX_TWINS_PER_REPORT: usize = 256;
/// Longest reported value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Start of every answer that asks the edge to resend later, and to hold its reports back a
/// while (the hub is full).
pub const BUSY: &str = "busy";
/// Start of the answer to a report the hub holds (its values wait, coalesced, for the
/// Device's status write) but has not written within its answer timeout: the edge keeps it
/// unanswered — resent only if nothing newer goes — and sends newer values as they come, with
/// no hold-back. Under [`BUSY`], so an older edge-agent still resends it.
pub const QUEUED: &str = "busy: queued";

/// Which device report a route names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceTopic {
    TwinEdgeUpdated,
    StateUpdate,
}

impl DeviceTopic {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceTopic::TwinEdgeUpdated => TOPIC_TWIN_EDGE_UPDATED,
            DeviceTopic::StateUpdate => TOPIC_STATE_UPDATE,
        }
    }
}

/// `device/<namespace>/<name>/<topic>`, parsed strictly (valid Kubernetes names, known topic).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeviceRoute {
    pub namespace: String,
    pub name: String,
    pub topic: DeviceTopic,
}

impl DeviceRoute {
    pub fn new(namespace: &str, name: &str, topic: DeviceTopic) -> Self {
        DeviceRoute {
            namespace: namespace.into(),
            name: name.into(),
            topic,
        }
    }

    /// Whether a route resource is a device report at all (then [`FromStr`] decides if it is a
    /// well-formed one).
    pub fn is_device_report(resource: &str) -> bool {
        resource.starts_with("device/")
    }
}

impl fmt::Display for DeviceRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "device/{}/{}/{}",
            self.namespace,
            self.name,
            self.topic.as_str()
        )
    }
}

impl FromStr for DeviceRoute {
    type Err = ResourceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.splitn(6, '/').collect();
        let ["device", namespace, name, a, b] = parts.as_slice() else {
            return Err(ResourceError::Shape(s.to_string()));
        };
        let topic = match (*a, *b) {
            ("twin", "edge_updated") => DeviceTopic::TwinEdgeUpdated,
            ("state", "update") => DeviceTopic::StateUpdate,
            _ => return Err(ResourceError::UnknownType(format!("{a}/{b}"))),
        };
        for part in [namespace, name] {
            if !is_valid_name(part) {
                return Err(ResourceError::InvalidName((*part).to_string()));
            }
        }
        Ok(DeviceRoute::new(namespace, name, topic))
    }
}

/// KubeEdge's `BaseMessage`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BaseMessage {
    #[serde(default)]
    pub event_id: String,
    /// Milliseconds since the Unix epoch, when the edge made the report.
    #[serde(default)]
    pub timestamp: i64,
}

/// `ValueMetadata`: when the value was read (ms).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueMetadata {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timestamp: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// `TwinValue`: a value as a string, whatever the property's type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ValueMetadata>,
}

/// `TypeMetadata`: the property's type (`int`, `float`, `string`, …).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeMetadata {
    #[serde(rename = "type", default)]
    pub type_: String,
}

/// `TwinVersion`: per-side counters of a twin value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinVersion {
    #[serde(default)]
    pub cloud: i64,
    #[serde(default)]
    pub edge: i64,
}

/// `MsgTwin`: one property of a twin report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgTwin {
    /// The desired value the mapper holds (→ `status.twins[].observedDesired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<TwinValue>,
    /// The value the device reports (→ `status.twins[].reported`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<TwinValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TypeMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<TwinVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_version: Option<TwinVersion>,
}

/// Order of two reports of one property: the newer is the greater.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReportOrder {
    /// `actual_version.edge` (0 when absent).
    pub edge_version: i64,
    /// `actual.metadata.timestamp`, else the report's timestamp (ms).
    pub timestamp: i64,
}

impl MsgTwin {
    /// Where this property's reported value stands in time; `report_timestamp` stands in for a
    /// value without its own timestamp.
    pub fn order(&self, report_timestamp: i64) -> ReportOrder {
        let own = self
            .actual
            .as_ref()
            .and_then(|a| a.metadata.as_ref())
            .map(|m| m.timestamp)
            .filter(|t| *t > 0);
        ReportOrder {
            edge_version: self.actual_version.map_or(0, |v| v.edge),
            timestamp: own.unwrap_or(report_timestamp),
        }
    }
}

/// Content of `device/<ns>/<name>/twin/edge_updated` (KubeEdge's `DeviceTwinUpdate`): only the
/// properties that changed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceTwinUpdate {
    #[serde(flatten)]
    pub base: BaseMessage,
    #[serde(default)]
    pub twin: BTreeMap<String, MsgTwin>,
}

/// The device part of a state report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceState {
    #[serde(default)]
    pub name: String,
    /// `online`, `offline`, `ok`, `unknown` or `unhealthy` (as the mapper reports it).
    #[serde(default)]
    pub state: String,
    /// RFC 3339, as the mapper reports it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_online_time: String,
}

/// Content of `device/<ns>/<name>/state/update`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceStateUpdate {
    #[serde(flatten)]
    pub base: BaseMessage,
    #[serde(default)]
    pub device: DeviceState,
}

/// Why a device report is refused before it reaches the API.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("malformed report content: {0}")]
    Content(String),
    #[error("a twin report names no property")]
    Empty,
    #[error("a twin report of {0} properties is over the limit of {MAX_TWINS_PER_REPORT}")]
    TooManyTwins(usize),
    #[error("property {0:?}: value over {MAX_VALUE_BYTES} bytes")]
    ValueTooLong(String),
    #[error("property name {0:?} is empty or too long")]
    BadPropertyName(String),
    #[error("state report for {0:?} carries no state")]
    NoState(String),
}

impl DeviceTwinUpdate {
    /// Parses and bounds a twin report's content.
    pub fn parse(content: &serde_json::Value) -> Result<Self, ReportError> {
        let update: DeviceTwinUpdate = serde_json::from_value(content.clone())
            .map_err(|e| ReportError::Content(e.to_string()))?;
        if update.twin.is_empty() {
            return Err(ReportError::Empty);
        }
        if update.twin.len() > MAX_TWINS_PER_REPORT {
            return Err(ReportError::TooManyTwins(update.twin.len()));
        }
        for (name, twin) in &update.twin {
            if name.is_empty() || name.len() > 253 {
                return Err(ReportError::BadPropertyName(name.clone()));
            }
            let long = |v: &Option<TwinValue>| {
                v.as_ref()
                    .and_then(|v| v.value.as_ref())
                    .is_some_and(|v| v.len() > MAX_VALUE_BYTES)
            };
            if long(&twin.actual) || long(&twin.expected) {
                return Err(ReportError::ValueTooLong(name.clone()));
            }
        }
        Ok(update)
    }
}

impl DeviceStateUpdate {
    /// Parses and bounds a state report's content.
    pub fn parse(content: &serde_json::Value) -> Result<Self, ReportError> {
        let update: DeviceStateUpdate = serde_json::from_value(content.clone())
            .map_err(|e| ReportError::Content(e.to_string()))?;
        if update.device.state.is_empty() {
            return Err(ReportError::NoState(update.device.name));
        }
        if update.device.state.len() > 64 || update.device.last_online_time.len() > 64 {
            return Err(ReportError::Content(
                "state or lastOnlineTime too long".into(),
            ));
        }
        Ok(update)
    }
}

/// A device report as the edge sends it: `update` on `device/<ns>/<name>/<topic>`.
pub fn report(route: &DeviceRoute, content: serde_json::Value) -> Message {
    let mut msg = Message::new(
        SOURCE_TWIN,
        GROUP_RESOURCE,
        Operation::Update,
        &crate::Resource::new("", crate::ResourceType::Device, "x"),
    );
    msg.route.resource = route.to_string();
    msg.content = content;
    msg
}

/// The cloud's answer to a device report, as cloudcore sends it: group `twin`, `response` with
/// content `"OK"`, or `error` with the reason.
pub fn answer(report: &Message, result: Result<(), &str>) -> Message {
    let (operation, content) = match result {
        Ok(()) => (Operation::Response, crate::envelope::ACK_OK.to_string()),
        Err(reason) => (Operation::Error, reason.to_string()),
    };
    let reply = report.ack(SOURCE_CLOUD, "");
    Message {
        header: Header {
            resource_version: String::new(),
            ..reply.header
        },
        route: Route {
            source: SOURCE_CLOUD.into(),
            group: GROUP_TWIN.into(),
            operation: operation.as_str().into(),
            resource: report.route.resource.clone(),
        },
        content: serde_json::Value::from(content),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn routes_round_trip_and_refuse_forgeries() {
        for s in [
            "device/plant-7/thermo.1/twin/edge_updated",
            "device/default/d/state/update",
        ] {
            assert_eq!(s.parse::<DeviceRoute>().unwrap().to_string(), s);
        }
        // (route, why it is refused)
        let cases = [
            ("device/ns/d/twin", "too few parts"),
            ("device/ns/d/twin/edge_updated/x", "too many parts"),
            (
                "device/ns/d/twin/cloud_updated",
                "cloud topic from the edge",
            ),
            ("device/ns/d/state/get", "unknown state topic"),
            ("device/NS/d/twin/edge_updated", "bad namespace"),
            ("device/ns/../twin/edge_updated", "bad name"),
            ("device//d/twin/edge_updated", "empty namespace"),
            ("node/n/device/d/twin/edge_updated", "not a device route"),
        ];
        for (route, why) in cases {
            assert!(route.parse::<DeviceRoute>().is_err(), "{why}: {route}");
        }
        assert!(DeviceRoute::is_device_report("device/ns/d/state/update"));
        assert!(!DeviceRoute::is_device_report("ns/device/d"));
    }

    #[test]
    fn kubeedge_twin_report_parses_unchanged() {
        // As edgecore's devicetwin sends it (dttype.DeviceTwinUpdate, only changed twins).
        let content = json!({
            "event_id": "5a9f-1", "timestamp": 1_700_000_000_500_i64,
            "twin": {"temperature": {
                "expected": {"value": "20", "metadata": {"timestamp": 1_700_000_000_000_i64}},
                "actual": {"value": "19.5", "metadata": {"timestamp": 1_700_000_000_400_i64}},
                "optional": false, "metadata": {"type": "float"},
                "expected_version": {"cloud": 3, "edge": 0},
                "actual_version": {"cloud": 0, "edge": 17}
            }}
        });
        let u = DeviceTwinUpdate::parse(&content).unwrap();
        let t = &u.twin["temperature"];
        assert_eq!(t.actual.as_ref().unwrap().value.as_deref(), Some("19.5"));
        assert_eq!(t.metadata.as_ref().unwrap().type_, "float");
        assert_eq!(
            t.order(u.base.timestamp),
            ReportOrder {
                edge_version: 17,
                timestamp: 1_700_000_000_400
            }
        );
        assert_eq!(serde_json::to_value(&u).unwrap(), content);
    }

    #[test]
    fn order_prefers_the_edge_version_then_the_value_time() {
        let twin = |edge: Option<i64>, ts: i64| MsgTwin {
            actual: Some(TwinValue {
                value: Some("1".into()),
                metadata: Some(ValueMetadata { timestamp: ts }),
            }),
            actual_version: edge.map(|edge| TwinVersion { cloud: 0, edge }),
            ..Default::default()
        };
        // (older, newer, case)
        let cases = [
            (twin(Some(1), 900), twin(Some(2), 100), "version beats time"),
            (twin(Some(2), 100), twin(Some(2), 200), "same version: time"),
            (twin(None, 100), twin(None, 200), "no versions: time"),
            (twin(None, 0), twin(None, 5), "no value time: report time"),
        ];
        for (older, newer, case) in cases {
            assert!(older.order(1) < newer.order(1), "{case}");
        }
        assert_eq!(twin(None, 0).order(42).timestamp, 42);
    }

    #[test]
    fn bad_reports_are_refused_with_a_reason() {
        let long = "x".repeat(MAX_VALUE_BYTES + 1);
        let many: serde_json::Map<String, serde_json::Value> = (0..=MAX_TWINS_PER_REPORT)
            .map(|i| (format!("p{i}"), json!({"actual": {"value": "1"}})))
            .collect();
        let cases = [
            (json!("OK"), "not an object"),
            (json!({"twin": {}}), "no property"),
            (
                json!({"twin": {"": {"actual": {"value": "1"}}}}),
                "empty name",
            ),
            (
                json!({"twin": {"t": {"actual": {"value": long}}}}),
                "long value",
            ),
            (json!({"twin": many}), "too many"),
            (
                json!({"twin": {"t": {"actual": {"value": 5}}}}),
                "value not a string",
            ),
        ];
        for (content, case) in cases {
            assert!(DeviceTwinUpdate::parse(&content).is_err(), "{case}");
        }
        assert_eq!(
            DeviceStateUpdate::parse(&json!({"device": {"name": "d"}})),
            Err(ReportError::NoState("d".into()))
        );
        let s = DeviceStateUpdate::parse(&json!({"event_id": "e", "timestamp": 7,
            "device": {"name": "d", "state": "online", "lastOnlineTime": "2026-01-01T00:00:00Z"}}))
        .unwrap();
        assert_eq!(s.device.state, "online");
        assert_eq!(s.base.timestamp, 7);
    }

    #[test]
    fn reports_and_answers_have_kubeedge_routes() {
        let route = DeviceRoute::new("ns", "d", DeviceTopic::StateUpdate);
        let msg = report(&route, json!({"device": {"state": "online"}}));
        assert_eq!(msg.route.source, SOURCE_TWIN);
        assert_eq!(msg.route.group, GROUP_RESOURCE);
        assert_eq!(msg.route.operation, "update");
        assert_eq!(msg.route.resource, "device/ns/d/state/update");
        let ok = answer(&msg, Ok(()));
        assert_eq!(ok.header.parent_id, msg.header.id);
        assert_eq!(ok.route.group, GROUP_TWIN);
        assert_eq!(ok.route.operation, "response");
        assert_eq!(ok.content, json!("OK"));
        let no = answer(&msg, Err("forbidden"));
        assert_eq!(no.route.operation, "error");
        assert_eq!(no.content, json!("forbidden"));
    }
}
