//! Edge → cloud: what a node may ask of the hub, checked against who it is.
//!
//! [`classify`] (pure) decides from the envelope alone whether a message is an ACK, a keepalive,
//! one of the node's own requests, or refused; [`handle`] carries out an allowed request against
//! the API: register the node, keep it Ready, relay its own devices' twin reports, answer queries
//! for its own objects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use edgefleet_channel::device::DeviceRoute;
use edgefleet_channel::envelope::{EnvelopeError, SOURCE_CLOUD};
use edgefleet_channel::{Message, Operation, Resource, ResourceType};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::hub::{Hub, Session};
use crate::wire::FIELD_MANAGER;
use crate::{lease, route};

pub use edgefleet_api::objectsync::EDGE_ROLE_LABEL;
/// Edge → cloud requests one session may have in progress; more are refused with "busy".
pub const MAX_EDGE_REQUESTS: usize = 8;

/// What an edge message is, from the envelope alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// `response` (ok) or `error` (refused by the edge) naming one of our messages.
    Ack {
        parent: String,
        rv: String,
        ok: bool,
    },
    Keepalive,
    RegisterNode,
    NodeStatus,
    Query(Resource),
    /// A device twin or state report (`device/<ns>/<name>/...`, module [`crate::device`]).
    Device(DeviceRoute),
}

/// Why an edge message is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// Broke the protocol: close the session with CLOSE_PROTOCOL.
    Close(String),
    /// Not allowed or not understood: answer with an `error` message, keep the session.
    Reply(String),
}

impl Refused {
    pub fn label(&self) -> &'static str {
        match self {
            Refused::Close(_) => "protocol",
            Refused::Reply(_) => "refused",
        }
    }
}

/// Classifies a parsed edge message of the session's `node`.
pub fn classify(node: &str, msg: &Message) -> Result<Incoming, Refused> {
    let op = msg.operation().map_err(|e| Refused::Close(e.to_string()))?;
    match op {
        Operation::Response | Operation::Error => {
            if msg.header.parent_id.is_empty() {
                return Err(Refused::Reply("a response needs parent_msg_id".into()));
            }
            return Ok(Incoming::Ack {
                parent: msg.header.parent_id.clone(),
                rv: msg.header.resource_version.clone(),
                ok: op == Operation::Response,
            });
        }
        Operation::Keepalive => return Ok(Incoming::Keepalive),
        Operation::Update if DeviceRoute::is_device_report(&msg.route.resource) => {
            return msg
                .route
                .resource
                .parse::<DeviceRoute>()
                .map(Incoming::Device)
                .map_err(|e| Refused::Reply(e.to_string()));
        }
        _ => {}
    }
    let resource = msg.resource().map_err(|e| match e {
        EnvelopeError::Resource(r) => Refused::Reply(r.to_string()),
        other => Refused::Reply(other.to_string()),
    })?;
    let own = |what: &str| {
        if resource.name == node && resource.namespace.is_empty() {
            Ok(())
        } else {
            Err(Refused::Reply(format!(
                "forbidden: node {node} may not write {what} {}",
                resource
            )))
        }
    };
    match (op, resource.type_) {
        (Operation::Insert, ResourceType::Node) => own("node").map(|()| Incoming::RegisterNode),
        (Operation::Update, ResourceType::NodeStatus) => {
            own("node status").map(|()| Incoming::NodeStatus)
        }
        (Operation::Query, t) if t.kind().is_some() => Ok(Incoming::Query(resource)),
        (op, t) => Err(Refused::Reply(format!(
            "forbidden: {} of {t} from an edge node",
            op.as_str()
        ))),
    }
}

fn ok(msg: &Message) -> Message {
    msg.ack(SOURCE_CLOUD, "")
}

fn refuse(msg: &Message, reason: &str) -> Message {
    msg.refuse(SOURCE_CLOUD, reason)
}

/// Handles one allowed request of `session`'s node; returns the reply to send.
pub async fn handle(
    hub: &Arc<Hub>,
    session: &Arc<Session>,
    incoming: Incoming,
    msg: &Message,
) -> Message {
    let (kind, result) = match incoming {
        Incoming::RegisterNode => (
            "register",
            register_node(hub, &session.node, &msg.content).await,
        ),
        Incoming::NodeStatus => {
            let r = node_status(hub, &session.node, &msg.content).await;
            if r.is_ok() {
                session.heartbeat.store(true, Ordering::Relaxed);
                // The first report renews at once; the renewer keeps it renewed.
                lease::renew_first(hub, session).await;
            }
            ("nodestatus", r)
        }
        Incoming::Query(resource) => {
            let reply = query(hub, &session.node, &resource, msg).await;
            let result = if reply.route.operation == Operation::Error.as_str() {
                "refused"
            } else {
                "ok"
            };
            hub.metrics
                .edge_requests
                .with_label_values(&["query", result])
                .inc();
            return reply;
        }
        Incoming::Ack { .. } | Incoming::Keepalive | Incoming::Device(_) => return ok(msg),
    };
    match result {
        Ok(()) => {
            hub.metrics
                .edge_requests
                .with_label_values(&[kind, "ok"])
                .inc();
            ok(msg)
        }
        Err(reason) => {
            hub.metrics
                .edge_requests
                .with_label_values(&[kind, "refused"])
                .inc();
            tracing::info!(node = %session.node, kind, %reason, "edge request refused");
            refuse(msg, &reason)
        }
    }
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

fn api_err(action: &str, e: kube::Error) -> String {
    format!("{action}: {e}")
}

/// Creates the node's Node (labelled as an edge node) or makes sure an existing one is.
async fn register_node(hub: &Hub, node: &str, content: &Value) -> Result<(), String> {
    let api: Api<Node> = Api::all(hub.client.clone());
    let mut labels: BTreeMap<String, String> = content
        .pointer("/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    labels.insert(EDGE_ROLE_LABEL.into(), String::new());
    let obj = Node {
        metadata: ObjectMeta {
            name: Some(node.into()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let patch = json!({"metadata": {"labels": {EDGE_ROLE_LABEL: ""}}});
            api.patch(node, &params(), &Patch::Merge(patch))
                .await
                .map(|_| ())
                .map_err(|e| api_err("label node", e))
        }
        Err(e) => Err(api_err("create node", e)),
    }
}

/// The node status patch: what the edge reported (addresses, nodeInfo, capacity, its own
/// conditions) plus `Ready=True` from the hub, which holds the live session (pure).
pub fn node_status_patch(content: &Value, ready_since: Option<&Value>, now: &str) -> Value {
    let mut status = serde_json::Map::new();
    for key in [
        "addresses",
        "nodeInfo",
        "capacity",
        "allocatable",
        "daemonEndpoints",
    ] {
        if let Some(v) = content
            .get(key)
            .or_else(|| content.pointer(&format!("/status/{key}")))
        {
            status.insert(key.into(), v.clone());
        }
    }
    let mut conditions: Vec<Value> = content
        .get("conditions")
        .or_else(|| content.pointer("/status/conditions"))
        .and_then(Value::as_array)
        .map(|c| {
            c.iter()
                .filter(|c| c.get("type").and_then(Value::as_str) != Some("Ready"))
                .filter(|c| c.get("type").and_then(Value::as_str).is_some())
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    conditions.push(json!({
        "type": "Ready",
        "status": "True",
        "reason": "EdgeSessionReady",
        "message": "edge node connected to the hub",
        "lastHeartbeatTime": now,
        "lastTransitionTime": ready_since.cloned().unwrap_or_else(|| Value::from(now)),
    }));
    status.insert("conditions".into(), Value::Array(conditions));
    json!({ "status": status })
}

async fn node_status(hub: &Hub, node: &str, content: &Value) -> Result<(), String> {
    let api: Api<Node> = Api::all(hub.client.clone());
    let current = match api.get_opt(node).await {
        Ok(Some(n)) => n,
        Ok(None) => {
            register_node(hub, node, &Value::Null).await?;
            api.get(node).await.map_err(|e| api_err("get node", e))?
        }
        Err(e) => return Err(api_err("get node", e)),
    };
    let ready_since = current
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| Value::from(t.0.to_string()));
    let now = jiff::Timestamp::now().to_string();
    let patch = node_status_patch(content, ready_since.as_ref(), &now);
    api.patch_status(node, &params(), &Patch::Strategic(patch))
        .await
        .map(|_| ())
        .map_err(|e| api_err("patch node status", e))
}

/// Answers a query for one object, only if the node has a sync for it (a node reads only its own
/// objects). An object the cache does not hold (a Secret) is read from the API.
async fn query(hub: &Hub, node: &str, resource: &Resource, msg: &Message) -> Message {
    let not_found = || refuse(msg, &format!("not found: {resource}"));
    let cached = hub
        .caches
        .object(resource.type_, &resource.namespace, &resource.name);
    let obj = match cached {
        Some(o) => o,
        None => match route::get_object(hub, resource.type_, &resource.namespace, &resource.name)
            .await
        {
            Ok(Some(o)) => o,
            Ok(None) => return not_found(),
            Err(e) => return refuse(msg, &api_err("read", e)),
        },
    };
    let uid = obj.uid().unwrap_or_default();
    if !hub.caches.node_has(node, &uid) {
        // Same answer as for a missing object: do not reveal what exists.
        return not_found();
    }
    let rv = obj.resource_version().unwrap_or_default();
    msg.ack(SOURCE_CLOUD, &rv)
        .with_content(serde_json::to_value(&*obj).unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_channel::envelope::{GROUP_RESOURCE, SOURCE_EDGE};

    fn msg(op: Operation, resource: &str) -> Message {
        let mut m = Message::new(
            SOURCE_EDGE,
            GROUP_RESOURCE,
            op,
            &Resource::new("", ResourceType::Node, "x"),
        );
        m.route.resource = resource.into();
        m
    }

    #[test]
    fn a_node_writes_only_its_own_node_and_status() {
        assert_eq!(
            classify("edge-1", &msg(Operation::Insert, "/node/edge-1")),
            Ok(Incoming::RegisterNode)
        );
        assert_eq!(
            classify("edge-1", &msg(Operation::Update, "/nodestatus/edge-1")),
            Ok(Incoming::NodeStatus)
        );
        for forged in ["/node/edge-2", "ns/node/edge-1"] {
            assert!(matches!(
                classify("edge-1", &msg(Operation::Insert, forged)),
                Err(Refused::Reply(_))
            ));
        }
        assert!(matches!(
            classify("edge-1", &msg(Operation::Update, "/nodestatus/edge-2")),
            Err(Refused::Reply(_))
        ));
    }

    #[test]
    fn cloud_operations_from_the_edge_are_refused() {
        for (op, r) in [
            (Operation::Update, "ns/configmap/x"),
            (Operation::Insert, "ns/pod/x"),
            (Operation::Delete, "ns/secret/x"),
            (Operation::Query, "/nodestatus/edge-1"),
            (Operation::Update, "ns/configmap/../x"),
        ] {
            assert!(
                matches!(classify("edge-1", &msg(op, r)), Err(Refused::Reply(_))),
                "{op:?} {r}"
            );
        }
        assert_eq!(
            classify("edge-1", &msg(Operation::Query, "ns/configmap/x")),
            Ok(Incoming::Query(Resource::new(
                "ns",
                ResourceType::ConfigMap,
                "x"
            )))
        );
        // The pre-KubeEdge twin path is gone: only `device/<ns>/<name>/...` reports write
        // device status, ordered and coalesced (a write around them could flip values back).
        assert!(matches!(
            classify("edge-1", &msg(Operation::Update, "ns/devicetwin/t1")),
            Err(Refused::Reply(_))
        ));
    }

    #[test]
    fn device_reports_are_routed_and_bad_ones_refused_without_closing() {
        assert_eq!(
            classify(
                "e",
                &msg(Operation::Update, "device/ns/d/twin/edge_updated")
            ),
            Ok(Incoming::Device(DeviceRoute::new(
                "ns",
                "d",
                edgefleet_channel::device::DeviceTopic::TwinEdgeUpdated
            )))
        );
        for bad in ["device/ns/d/twin/cloud_updated", "device/ns/D/state/update"] {
            assert!(matches!(
                classify("e", &msg(Operation::Update, bad)),
                Err(Refused::Reply(_))
            ));
        }
    }

    #[test]
    fn acks_and_unknown_operations() {
        let mut ack = msg(Operation::Response, "ns/configmap/x");
        assert!(matches!(classify("e", &ack), Err(Refused::Reply(_))));
        ack.header.parent_id = "p".into();
        ack.header.resource_version = "9".into();
        assert_eq!(
            classify("e", &ack),
            Ok(Incoming::Ack {
                parent: "p".into(),
                rv: "9".into(),
                ok: true
            })
        );
        let mut bad = msg(Operation::Update, "ns/configmap/x");
        bad.route.operation = "explode".into();
        assert!(matches!(classify("e", &bad), Err(Refused::Close(_))));
    }

    #[test]
    fn node_status_patch_owns_ready_and_keeps_the_transition_time() {
        let p = node_status_patch(
            &json!({"conditions": [{"type": "Ready", "status": "False"}, {"type": "DiskPressure", "status": "False"}],
                    "nodeInfo": {"kubeletVersion": "edge"}}),
            Some(&json!("2020-01-01T00:00:00Z")),
            "2025-01-01T00:00:00Z",
        );
        let conds = p["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 2);
        assert_eq!(conds[1]["type"], "Ready");
        assert_eq!(conds[1]["status"], "True");
        assert_eq!(conds[1]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(p["status"]["nodeInfo"]["kubeletVersion"], "edge");
    }
}
