//! The Device as the hub last saw it, without a read: the newer of its watch cache and the
//! answer to its own last write (which the watch may not have brought back yet). Both the
//! writer (the base a write merges into) and the door (what a report would change) use it.

use edgefleet_api::devices::Device;
use kube::ResourceExt;

use super::board::DeviceKey;
use crate::hub::Hub;
use crate::lock;
use edgefleet_channel::resource::ResourceType;

/// The resourceVersion as a number: etcd's revision, which orders versions of one object.
fn version(d: &Device) -> Option<u64> {
    d.resource_version()?.parse().ok()
}

/// The Device as the hub last saw it without a read: the newer of the watch cache and the
/// answer to its own last write. `None` when it holds neither (the caller reads it).
pub fn known(hub: &Hub, key: &DeviceKey) -> Option<(Device, &'static str)> {
    let cached = hub
        .caches
        .object(ResourceType::Device, &key.0, &key.1)
        .and_then(|o| serde_json::to_value(o.as_ref()).ok())
        .and_then(|v| serde_json::from_value::<Device>(v).ok());
    let written = lock(&hub.devices.written)
        .get(key)
        .map(|(_, d)| d.as_ref().clone());
    newer(cached, written)
}

/// The newer of the cached Device and the answer to the hub's own last write (pure).
fn newer(cached: Option<Device>, written: Option<Device>) -> Option<(Device, &'static str)> {
    match (cached, written) {
        (Some(c), Some(w)) if version(&w) > version(&c) => Some((w, "written")),
        (Some(c), _) => Some((c, "cache")),
        (None, Some(w)) => Some((w, "written")),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rv: &str) -> Device {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
            "metadata": {"name": "d", "namespace": "ns", "resourceVersion": rv},
            "spec": {"deviceModelRef": {"name": "m"}},
        }))
        .unwrap()
    }

    #[test]
    fn the_newer_of_the_cache_and_the_own_last_write_is_the_base() {
        let rv = |x: Option<(Device, &'static str)>| {
            x.map(|(d, source)| (d.resource_version().unwrap(), source))
        };
        // The watch has not brought the hub's own write back yet: its answer is newer.
        assert_eq!(
            rv(newer(Some(at("10")), Some(at("12")))),
            Some(("12".into(), "written"))
        );
        // Someone wrote after the hub (another replica, the device operator): the cache wins.
        assert_eq!(
            rv(newer(Some(at("15")), Some(at("12")))),
            Some(("15".into(), "cache"))
        );
        assert_eq!(
            rv(newer(Some(at("12")), Some(at("12")))),
            Some(("12".into(), "cache"))
        );
        assert_eq!(
            rv(newer(None, Some(at("3")))),
            Some(("3".into(), "written"))
        );
        assert_eq!(rv(newer(None, None)), None);
    }
}
