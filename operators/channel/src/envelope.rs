//! KubeEdge's message envelope: `{header, route, content}`.
//!
//! Field names and JSON shape follow beehive's `model.Message`, so frames from and to a KubeEdge
//! edgecore parse here. Parsing is strict about what we act on (operation, resource) and lenient
//! about what we do not (unknown fields are ignored), and never panics on hostile input.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::resource::Resource;

/// Largest frame either end accepts. A Secret or ConfigMap is at most 1 MiB in the API, plus
/// the envelope; anything bigger is malformed by definition.
pub const MAX_FRAME_BYTES: usize = 1536 * 1024;

/// `route.source` of messages the hub sends (KubeEdge's edgecontroller name).
pub const SOURCE_CLOUD: &str = "edgecontroller";
/// `route.source` of messages the agent sends.
pub const SOURCE_EDGE: &str = "edged";
/// `route.group` of object messages (KubeEdge's "resource" group).
pub const GROUP_RESOURCE: &str = "resource";
/// `route.group` of device twin messages (KubeEdge's devicecontroller group).
pub const GROUP_TWIN: &str = "twin";
/// `content` of a successful ACK.
pub const ACK_OK: &str = "OK";

/// What a message asks for. Serialized as KubeEdge's lower-case strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Insert,
    Update,
    Delete,
    Query,
    Response,
    Keepalive,
    /// A negative response (beehive's `ResponseErrorOperation`).
    Error,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::Query => "query",
            Operation::Response => "response",
            Operation::Keepalive => "keepalive",
            Operation::Error => "error",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Unique per message; an ACK names it in `parent_msg_id`.
    #[serde(rename = "msg_id", default)]
    pub id: String,
    #[serde(
        rename = "parent_msg_id",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub parent_id: String,
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    pub timestamp: i64,
    /// The resourceVersion of the object carried (or, in an ACK, the one the edge stored).
    #[serde(
        rename = "resourceversion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sync: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Kept as a string on the wire: an unknown operation is refused by [`Message::operation`],
    /// not by the JSON parser, so the refusal can name it.
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub resource: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub header: Header,
    #[serde(rename = "route", default)]
    pub route: Route,
    #[serde(default)]
    pub content: Value,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvelopeError {
    #[error("frame of {0} bytes is over the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("not a message envelope: {0}")]
    Json(String),
    #[error("unknown operation {0:?}")]
    UnknownOperation(String),
    #[error("message has no msg_id")]
    MissingId,
    #[error(transparent)]
    Resource(#[from] crate::resource::ResourceError),
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Message {
    /// A new message with a fresh id and the current time.
    pub fn new(source: &str, group: &str, operation: Operation, resource: &Resource) -> Self {
        Message {
            header: Header {
                id: uuid::Uuid::new_v4().to_string(),
                parent_id: String::new(),
                timestamp: now_millis(),
                resource_version: String::new(),
                sync: false,
            },
            route: Route {
                source: source.to_string(),
                group: group.to_string(),
                operation: operation.as_str().to_string(),
                resource: resource.to_string(),
            },
            content: Value::Null,
        }
    }

    pub fn with_resource_version(mut self, rv: impl Into<String>) -> Self {
        self.header.resource_version = rv.into();
        self
    }

    pub fn with_content(mut self, content: Value) -> Self {
        self.content = content;
        self
    }

    /// The ACK of `self`: same route with operation `response`, `parent_msg_id` = our id,
    /// `resourceversion` = what the receiver now holds.
    pub fn ack(&self, source: &str, stored_resource_version: &str) -> Message {
        self.reply(source, Operation::Response, Value::from(ACK_OK))
            .with_resource_version(stored_resource_version)
    }

    /// A refusal of `self` with a reason the sender can log.
    pub fn refuse(&self, source: &str, reason: &str) -> Message {
        self.reply(source, Operation::Error, Value::from(reason))
    }

    fn reply(&self, source: &str, operation: Operation, content: Value) -> Message {
        Message {
            header: Header {
                id: uuid::Uuid::new_v4().to_string(),
                parent_id: self.header.id.clone(),
                timestamp: now_millis(),
                resource_version: String::new(),
                sync: false,
            },
            route: Route {
                source: source.to_string(),
                group: self.route.group.clone(),
                operation: operation.as_str().to_string(),
                resource: self.route.resource.clone(),
            },
            content,
        }
    }

    /// Parses one text frame, bounded and without trusting it.
    pub fn parse(frame: &str) -> Result<Message, EnvelopeError> {
        if frame.len() > MAX_FRAME_BYTES {
            return Err(EnvelopeError::TooLarge(frame.len()));
        }
        let message: Message =
            serde_json::from_str(frame).map_err(|e| EnvelopeError::Json(e.to_string()))?;
        if message.header.id.is_empty() {
            return Err(EnvelopeError::MissingId);
        }
        message.operation()?;
        Ok(message)
    }

    pub fn to_frame(&self) -> String {
        // A Message is plain data (strings and a JSON value): serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn operation(&self) -> Result<Operation, EnvelopeError> {
        serde_json::from_value(Value::from(self.route.operation.as_str()))
            .map_err(|_| EnvelopeError::UnknownOperation(self.route.operation.clone()))
    }

    /// The resource string parsed. Keepalives carry none; callers ask only when they need it.
    pub fn resource(&self) -> Result<Resource, EnvelopeError> {
        Ok(self.route.resource.parse::<Resource>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::ResourceType;
    use serde_json::json;

    fn configmap() -> Resource {
        Resource::new("default", ResourceType::ConfigMap, "toll-config")
    }

    #[test]
    fn round_trips_with_kubeedge_field_names() {
        let msg = Message::new(
            SOURCE_CLOUD,
            GROUP_RESOURCE,
            Operation::Update,
            &configmap(),
        )
        .with_resource_version("42")
        .with_content(json!({"data": {"a": "b"}}));
        let frame = msg.to_frame();
        let raw: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(raw["header"]["resourceversion"], "42");
        assert!(raw["header"]["msg_id"].as_str().unwrap().len() >= 32);
        assert_eq!(raw["route"]["operation"], "update");
        assert_eq!(raw["route"]["resource"], "default/configmap/toll-config");
        assert_eq!(Message::parse(&frame).unwrap(), msg);
    }

    #[test]
    fn parses_a_kubeedge_edgecore_frame() {
        // Shape as edgecore sends it (beehive model.Message, encoding/json).
        let frame = r#"{"header":{"msg_id":"7b0c","parent_msg_id":"abc","timestamp":1700000000000,"resourceversion":"9","sync":false},
            "route":{"source":"edged","group":"resource","operation":"response","resource":"default/configmap/x"},
            "content":"OK"}"#;
        let msg = Message::parse(frame).unwrap();
        assert_eq!(msg.operation().unwrap(), Operation::Response);
        assert_eq!(msg.header.parent_id, "abc");
        assert_eq!(msg.header.resource_version, "9");
        assert_eq!(msg.resource().unwrap(), configmap().with_name("x"));
    }

    #[test]
    fn ack_names_the_message_and_the_stored_version() {
        let msg = Message::new(
            SOURCE_CLOUD,
            GROUP_RESOURCE,
            Operation::Insert,
            &configmap(),
        );
        let ack = msg.ack(SOURCE_EDGE, "17");
        assert_eq!(ack.header.parent_id, msg.header.id);
        assert_eq!(ack.header.resource_version, "17");
        assert_eq!(ack.operation().unwrap(), Operation::Response);
        assert_eq!(ack.content, json!("OK"));
        assert_eq!(ack.route.resource, msg.route.resource);
    }

    #[test]
    fn refuses_malformed_frames_with_a_reason() {
        assert!(matches!(
            Message::parse("not json"),
            Err(EnvelopeError::Json(_))
        ));
        assert_eq!(
            Message::parse(r#"{"header":{},"route":{"operation":"insert"}}"#),
            Err(EnvelopeError::MissingId)
        );
        assert_eq!(
            Message::parse(r#"{"header":{"msg_id":"1"},"route":{"operation":"explode"}}"#),
            Err(EnvelopeError::UnknownOperation("explode".into()))
        );
        let huge = "x".repeat(MAX_FRAME_BYTES + 1);
        assert_eq!(
            Message::parse(&huge),
            Err(EnvelopeError::TooLarge(MAX_FRAME_BYTES + 1))
        );
        // Wrong types in the header are refused, not coerced.
        assert!(Message::parse(r#"{"header":{"msg_id":5}}"#).is_err());
    }
}
