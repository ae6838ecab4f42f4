//! Device delivery on spec changes only.
//!
//! Every status write (the hub's reported twins, the operator's conditions and sync states)
//! moves a Device's `resourceVersion`. Comparing versions alone, the hub would resend the whole
//! Device to its node after each one — a report would bounce back to the edge as an update, and
//! at 10,000 reports/s the links would carry little else. The edge needs a Device again only
//! when what it acts on changed: `spec`, labels and annotations (the device operator's
//! `edgefleet.io/device-model-generation` annotation re-delivers Devices when their model
//! changes).
//!
//! So each session remembers, per Device it delivered and the edge ACKed, a digest of those
//! parts. A Device event whose digest equals the delivered one, with nothing of that Device
//! queued or in flight, is not sent: its new version is recorded as acked on the status board
//! (the ObjectSync's acked version keeps up with the live one, so the objectsync operator asks
//! for no resync). Limit: the digests live with the session; after a reconnect or a hub restart
//! the first change of each Device is sent once (the edge ignores nothing it needs).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use kube::ResourceExt;
use kube::api::DynamicObject;
use serde_json::Value;

use crate::hub::{Hub, Session};
use crate::lock;
use crate::status::Event;

/// Digest of what the edge acts on in a Device: spec, labels, annotations (pure).
pub fn spec_digest(obj: &DynamicObject) -> u64 {
    let mut h = DefaultHasher::new();
    obj.data
        .get("spec")
        .map(Value::to_string)
        .unwrap_or_default()
        .hash(&mut h);
    obj.labels().hash(&mut h);
    obj.annotations().hash(&mut h);
    h.finish()
}

/// The edge ACKed a Device delivery: remember what it holds.
pub fn delivered(session: &Session, obj: &DynamicObject) {
    if let Some(uid) = obj.uid() {
        lock(&session.delivered_devices).insert(uid, spec_digest(obj));
    }
}

/// A Device changed: `true` when `session`'s node already holds its spec, in which case the new
/// version is recorded as acked (no message). `false`: deliver as usual.
pub fn status_only(
    hub: &Hub,
    session: &Session,
    sync_key: (String, String),
    obj: &DynamicObject,
) -> bool {
    let (Some(uid), Some(rv)) = (obj.uid(), obj.resource_version()) else {
        return false;
    };
    let same = lock(&session.delivered_devices).get(&uid) == Some(&spec_digest(obj));
    if !same || lock(&session.queue).holds(&uid) {
        return false;
    }
    // `attempts: 0`: nothing was sent for this version; the node holds an equal spec.
    hub.status
        .record(sync_key, Event::Acked { rv, attempts: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn device(spec: Value, status: Value, annotations: Value, rv: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
            "metadata": {"name": "d", "namespace": "ns", "uid": "u1", "resourceVersion": rv,
                         "annotations": annotations},
            "spec": spec, "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn status_and_version_do_not_change_the_digest_spec_and_annotations_do() {
        let spec =
            json!({"nodeName": "n", "properties": [{"name": "t", "desired": {"value": "1"}}]});
        let base = device(spec.clone(), json!({}), json!({}), "1");
        // (case, other object, same digest?)
        let cases = [
            (
                "status write",
                device(spec.clone(), json!({"state": "online"}), json!({}), "2"),
                true,
            ),
            (
                "desired value",
                device(
                    json!({"nodeName": "n", "properties": [{"name": "t", "desired": {"value": "2"}}]}),
                    json!({}),
                    json!({}),
                    "3",
                ),
                false,
            ),
            (
                "model changed",
                device(
                    spec.clone(),
                    json!({}),
                    json!({"edgefleet.io/device-model-generation": "2"}),
                    "4",
                ),
                false,
            ),
        ];
        for (case, other, same) in cases {
            assert_eq!(spec_digest(&base) == spec_digest(&other), same, "{case}");
        }
    }
}
