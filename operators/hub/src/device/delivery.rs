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
//! Two checks, neither of which writes anything:
//! - the ObjectSync records the acked version's content version (generation and a digest of
//!   labels and annotations, `edgefleet_api::objectsync::content_version`); routing
//!   ([`crate::route::plan`]) and the objectsync operator count a Device whose content version
//!   equals the acked one as delivered. This survives reconnects and restarts.
//! - until that write comes back through the ObjectSync watch, each session remembers the
//!   content version of each Device the edge ACKed ([`status_only`]).
//!
//! A status write therefore costs no ObjectSync write: before, each one did (the acked version
//! was moved along), which made ObjectSync status patches the API server's busiest request.

use edgefleet_api::objectsync::content_version;
use kube::ResourceExt;
use kube::api::DynamicObject;

use crate::hub::Session;
use crate::lock;

/// The edge ACKed a Device delivery: remember what it holds.
pub fn delivered(session: &Session, obj: &DynamicObject) {
    if let (Some(uid), Some(content)) = (obj.uid(), content_version(&obj.metadata)) {
        lock(&session.delivered_devices).insert(uid, content);
    }
}

/// A Device changed: `true` when `session`'s node already holds its spec and nothing of it is
/// queued or in flight, so there is nothing to send. `false`: route it as usual.
pub fn status_only(session: &Session, obj: &DynamicObject) -> bool {
    let (Some(uid), Some(content)) = (obj.uid(), content_version(&obj.metadata)) else {
        return false;
    };
    let same = lock(&session.delivered_devices).get(&uid) == Some(&content);
    same && !lock(&session.queue).holds(&uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn device(generation: i64, status: Value, annotations: Value, rv: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
            "metadata": {"name": "d", "namespace": "ns", "uid": "u1", "resourceVersion": rv,
                         "generation": generation, "annotations": annotations},
            "spec": {"nodeName": "n"}, "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_devices_status_and_version_leave_its_content_version_alone() {
        let base = content_version(&device(1, json!({}), json!({}), "1").metadata);
        // (case, other object, same content version?)
        let cases = [
            (
                "status write",
                device(1, json!({"state": "online"}), json!({}), "2"),
                true,
            ),
            ("spec change", device(2, json!({}), json!({}), "3"), false),
            (
                "model changed",
                device(
                    1,
                    json!({}),
                    json!({"edgefleet.io/device-model-generation": "2"}),
                    "4",
                ),
                false,
            ),
        ];
        for (case, other, same) in cases {
            assert_eq!(content_version(&other.metadata) == base, same, "{case}");
        }
    }
}
