//! One frame from the hub in, at most one reply out: the store-then-ACK rule, and refusals.
//!
//! Pure over a [`Store`]: no socket here, so every rule has a unit test. The session calls
//! [`handle_frame`] for each text frame and sends back what it returns.

use std::sync::atomic::Ordering;

use edgefleet_channel::envelope::{
    EnvelopeError, GROUP_RESOURCE, Header, Message, Route, SOURCE_EDGE,
};
use edgefleet_channel::{Operation, Resource};
use serde_json::Value;

use crate::metrics::{Metrics, inc};
use crate::store::{Key, Object, Store};

/// Handles one text frame: `Some(reply)` to send (an ACK or an error), `None` for frames that
/// need no answer (keepalives, the hub's responses to our own messages).
pub fn handle_frame(
    store: &dyn Store,
    node: &str,
    frame: &str,
    metrics: &Metrics,
) -> Option<Message> {
    inc(&metrics.messages_received);
    let message = match Message::parse(frame) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "malformed frame from the hub");
            inc(&metrics.messages_refused);
            return Some(refuse_unparsed(frame, &e));
        }
    };
    let reply = match message.operation() {
        Ok(Operation::Insert | Operation::Update) => apply_put(store, node, &message, metrics),
        Ok(Operation::Delete) => apply_delete(store, &message, metrics),
        // The hub's answers to our node registration and status reports.
        Ok(Operation::Response) => return None,
        Ok(Operation::Error) => {
            tracing::warn!(resource = %message.route.resource, reason = %message.content, "hub refused a message");
            return None;
        }
        Ok(Operation::Keepalive) => return None,
        Ok(Operation::Query) => Err("queries are not served by the edge-agent".to_string()),
        Err(e) => Err(e.to_string()),
    };
    match reply {
        Ok(rv) => {
            inc(&metrics.messages_acked);
            Some(message.ack(SOURCE_EDGE, &rv))
        }
        Err(reason) => {
            tracing::warn!(resource = %message.route.resource, %reason, "refused a message from the hub");
            inc(&metrics.messages_refused);
            Some(message.refuse(SOURCE_EDGE, &reason))
        }
    }
}

/// The delivered resource of a cloud→edge message: a known object type, never an edge→cloud one.
fn delivered_resource(message: &Message) -> Result<Resource, String> {
    let resource = message.resource().map_err(|e| e.to_string())?;
    if resource.type_.kind().is_none() {
        return Err(format!("{} is not delivered to the edge", resource.type_));
    }
    Ok(resource)
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(value, |v, k| v.get(*k))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn apply_put(
    store: &dyn Store,
    node: &str,
    message: &Message,
    metrics: &Metrics,
) -> Result<String, String> {
    let resource = delivered_resource(message)?;
    let object = &message.content;
    if !object.is_object() {
        return Err("content is not an object".into());
    }
    let (name, namespace) = (
        str_at(object, &["metadata", "name"]),
        str_at(object, &["metadata", "namespace"]),
    );
    if name != resource.name || namespace != resource.namespace {
        return Err(format!(
            "content is {namespace}/{name}, route says {}/{}",
            resource.namespace, resource.name
        ));
    }
    // Pods and Devices name their node: one bound elsewhere is not ours to hold.
    let bound_to = str_at(object, &["spec", "nodeName"]);
    if !bound_to.is_empty() && bound_to != node {
        return Err(format!(
            "object is bound to node {bound_to:?}, not {node:?}"
        ));
    }
    let rv = match message.header.resource_version.as_str() {
        "" => str_at(object, &["metadata", "resourceVersion"]),
        rv => rv,
    };
    if rv.is_empty() {
        return Err("no resourceVersion".into());
    }
    let key = Key::new(resource.type_, &resource.namespace, &resource.name);
    let stored = Object {
        uid: str_at(object, &["metadata", "uid"]).to_string(),
        resource_version: rv.to_string(),
        body: object.to_string(),
    };
    let applied = store.put(&key, stored).map_err(|e| {
        inc(&metrics.store_errors);
        format!("store: {e}")
    })?;
    if !applied.changed {
        metrics.messages_stale.fetch_add(1, Ordering::Relaxed);
    }
    Ok(applied.resource_version)
}

fn apply_delete(store: &dyn Store, message: &Message, metrics: &Metrics) -> Result<String, String> {
    let resource = delivered_resource(message)?;
    let content = &message.content;
    let (name, namespace) = (str_at(content, &["name"]), str_at(content, &["namespace"]));
    if (!name.is_empty() && name != resource.name)
        || (!namespace.is_empty() && namespace != resource.namespace)
    {
        return Err(format!(
            "content names {namespace}/{name}, route says {}/{}",
            resource.namespace, resource.name
        ));
    }
    let rv = match message.header.resource_version.as_str() {
        "" => str_at(content, &["resourceVersion"]),
        rv => rv,
    };
    let key = Key::new(resource.type_, &resource.namespace, &resource.name);
    let applied = store
        .delete(&key, str_at(content, &["uid"]), rv)
        .map_err(|e| {
            inc(&metrics.store_errors);
            format!("store: {e}")
        })?;
    if !applied.changed {
        metrics.messages_stale.fetch_add(1, Ordering::Relaxed);
    }
    Ok(applied.resource_version)
}

/// An `error` reply to a frame that did not parse: names its msg_id when one can be found.
fn refuse_unparsed(frame: &str, error: &EnvelopeError) -> Message {
    let raw: Value = match error {
        EnvelopeError::TooLarge(_) => Value::Null,
        _ => serde_json::from_str(frame).unwrap_or(Value::Null),
    };
    Message {
        header: Header {
            id: uuid_like(),
            parent_id: str_at(&raw, &["header", "msg_id"]).to_string(),
            timestamp: now_millis(),
            resource_version: String::new(),
            sync: false,
        },
        route: Route {
            source: SOURCE_EDGE.to_string(),
            group: GROUP_RESOURCE.to_string(),
            operation: Operation::Error.as_str().to_string(),
            resource: str_at(&raw, &["route", "resource"])
                .chars()
                .take(512)
                .collect(),
        },
        content: Value::from(error.to_string().chars().take(512).collect::<String>()),
    }
}

fn uuid_like() -> String {
    format!("{:032x}", fastrand::u128(..))
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Applied, MemoryStore, StoreError};
    use edgefleet_channel::envelope::SOURCE_CLOUD;
    use edgefleet_channel::{Message, ResourceType};
    use serde_json::json;

    fn deliver(op: Operation, name: &str, rv: &str) -> Message {
        Message::new(
            SOURCE_CLOUD,
            GROUP_RESOURCE,
            op,
            &Resource::new("default", ResourceType::ConfigMap, name),
        )
        .with_resource_version(rv)
        .with_content(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default", "uid": "u-1", "resourceVersion": rv},
            "data": {"k": rv}
        }))
    }

    fn handle(store: &dyn Store, msg: &Message) -> Message {
        handle_frame(store, "edge-1", &msg.to_frame(), &Metrics::default()).unwrap()
    }

    #[test]
    fn stores_then_acks_with_the_stored_version() {
        let store = MemoryStore::new();
        let msg = deliver(Operation::Insert, "cfg", "10");
        let ack = handle(&store, &msg);
        assert_eq!(ack.operation().unwrap(), Operation::Response);
        assert_eq!(ack.header.parent_id, msg.header.id);
        assert_eq!(ack.header.resource_version, "10");
        assert_eq!(ack.content, json!("OK"));
        let key = Key::new(ResourceType::ConfigMap, "default", "cfg");
        let held = store.get(&key).unwrap().unwrap();
        assert_eq!(held.uid, "u-1");
        assert_eq!(
            serde_json::from_str::<Value>(&held.body).unwrap()["data"]["k"],
            "10"
        );
        // An older update is ACKed with the stored version and not applied.
        let ack = handle(&store, &deliver(Operation::Update, "cfg", "9"));
        assert_eq!(ack.header.resource_version, "10");
        assert_eq!(store.get(&key).unwrap().unwrap().resource_version, "10");
    }

    #[test]
    fn deletes_apply_and_ack() {
        let store = MemoryStore::new();
        handle(&store, &deliver(Operation::Insert, "cfg", "10"));
        let del = Message::new(
            SOURCE_CLOUD,
            GROUP_RESOURCE,
            Operation::Delete,
            &Resource::new("default", ResourceType::ConfigMap, "cfg"),
        )
        .with_content(
            json!({"uid": "u-1", "name": "cfg", "namespace": "default", "resourceVersion": "11"}),
        );
        let ack = handle(&store, &del);
        assert_eq!(ack.operation().unwrap(), Operation::Response);
        assert_eq!(ack.header.resource_version, "11");
        assert!(
            store
                .get(&Key::new(ResourceType::ConfigMap, "default", "cfg"))
                .unwrap()
                .is_none()
        );
    }

    /// A store whose writes fail: nothing may be ACKed.
    struct Broken;
    impl Store for Broken {
        fn put(&self, _: &Key, _: Object) -> Result<Applied, StoreError> {
            Err(StoreError::Poisoned)
        }
        fn delete(&self, _: &Key, _: &str, _: &str) -> Result<Applied, StoreError> {
            Err(StoreError::Poisoned)
        }
        fn get(&self, _: &Key) -> Result<Option<Object>, StoreError> {
            Ok(None)
        }
        fn list(&self, _: ResourceType, _: &str) -> Result<Vec<(String, Object)>, StoreError> {
            Ok(vec![])
        }
        fn export(&self) -> Result<Vec<crate::store::Listed>, StoreError> {
            Ok(vec![])
        }
    }

    #[test]
    fn no_ack_when_the_store_fails() {
        let metrics = Metrics::default();
        let msg = deliver(Operation::Insert, "cfg", "10");
        let reply = handle_frame(&Broken, "edge-1", &msg.to_frame(), &metrics).unwrap();
        assert_eq!(reply.operation().unwrap(), Operation::Error);
        assert_eq!(reply.header.parent_id, msg.header.id);
        assert_eq!(metrics.messages_acked.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.store_errors.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn refuses_malformed_and_foreign_frames() {
        let store = MemoryStore::new();
        let metrics = Metrics::default();
        let refused = |frame: &str| {
            let reply = handle_frame(&store, "edge-1", frame, &metrics).unwrap();
            assert_eq!(reply.operation().unwrap(), Operation::Error, "{frame}");
            reply
        };
        refused("not json");
        refused("");
        refused(
            r#"{"header":{"msg_id":"m1"},"route":{"operation":"explode","resource":"default/configmap/x"}}"#,
        );
        let r = refused(
            r#"{"header":{"msg_id":"m2"},"route":{"operation":"insert","resource":"default/configmap/x"},"content":"just a string"}"#,
        );
        assert_eq!(r.header.parent_id, "m2");
        // route and content disagree
        let mut m = deliver(Operation::Insert, "a", "1");
        m.route.resource = "default/configmap/b".into();
        refused(&m.to_frame());
        // an edge→cloud resource pushed down
        let mut m = deliver(Operation::Insert, "a", "1");
        m.route.resource = "/nodestatus/edge-1".into();
        refused(&m.to_frame());
        // a forged path
        let mut m = deliver(Operation::Insert, "a", "1");
        m.route.resource = "default/configmap/../../x".into();
        refused(&m.to_frame());
        // another node's pod
        let pod = Message::new(
            SOURCE_CLOUD,
            GROUP_RESOURCE,
            Operation::Insert,
            &Resource::new("default", ResourceType::Pod, "p"),
        )
        .with_resource_version("3")
        .with_content(json!({"metadata": {"name": "p", "namespace": "default", "uid": "u"}, "spec": {"nodeName": "edge-2"}}));
        refused(&pod.to_frame());
        // no resourceVersion anywhere
        let mut m = deliver(Operation::Insert, "a", "");
        m.content["metadata"]["resourceVersion"] = Value::Null;
        refused(&m.to_frame());
        // a query
        let q = Message::new(
            SOURCE_CLOUD,
            GROUP_RESOURCE,
            Operation::Query,
            &Resource::new("default", ResourceType::Pod, "p"),
        );
        refused(&q.to_frame());
        assert!(store.export().unwrap().is_empty());
        assert_eq!(metrics.messages_acked.load(Ordering::Relaxed), 0);
        // Our own pod is fine.
        let mine = Message {
            content: json!({"metadata": {"name": "p", "namespace": "default", "uid": "u"}, "spec": {"nodeName": "edge-1"}}),
            ..pod
        };
        assert_eq!(
            handle(&store, &mine).operation().unwrap(),
            Operation::Response
        );
    }

    #[test]
    fn responses_and_keepalives_need_no_answer() {
        let store = MemoryStore::new();
        let msg = deliver(Operation::Insert, "cfg", "1");
        let ack = msg.ack(SOURCE_CLOUD, "1");
        assert!(handle_frame(&store, "edge-1", &ack.to_frame(), &Metrics::default()).is_none());
        let mut ka = msg.clone();
        ka.route.operation = "keepalive".into();
        assert!(handle_frame(&store, "edge-1", &ka.to_frame(), &Metrics::default()).is_none());
    }
}
