//! The cluster as the operator needs it: Devices, DeviceModels, whether each node's edge
//! session is up, and two indexes — model → the Devices that reference it, node → the Devices
//! bound to it — so a model or node change reaches its devices without a scan of all devices.
//!
//! Every `set_*` returns the [`Work`] the change calls for.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use edgefleet_api::devices::{Device, DeviceModel};
use kube::ResourceExt;

use crate::sync::DeviceState;

/// `(namespace, name)`.
pub type Key = (String, String);

/// What to reconcile.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Work {
    Device(Key),
    Model(Key),
}

/// The reduced cluster.
#[derive(Debug, Default)]
pub struct Index {
    devices: HashMap<Key, Device>,
    models: HashMap<Key, DeviceModel>,
    /// Node name → whether its edge session is up (Node `Ready`).
    nodes: HashMap<String, bool>,
    /// Model key → names of the Devices of its namespace that reference it (whether it exists
    /// or not: creating it must reach them).
    by_model: HashMap<Key, BTreeSet<String>>,
    /// Node name → Devices bound to it.
    by_node: HashMap<String, BTreeSet<Key>>,
}

fn model_key_of(device: &Device) -> Key {
    (
        device.namespace().unwrap_or_default(),
        device.spec.device_model_ref.name.clone(),
    )
}

fn remove_from<K: std::hash::Hash + Eq, V: Ord>(
    map: &mut HashMap<K, BTreeSet<V>>,
    key: &K,
    value: &V,
) {
    if let Some(set) = map.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or, `None`, removes) a Device.
    pub fn set_device(&mut self, key: Key, device: Option<Device>) -> Vec<Work> {
        let old = self.devices.remove(&key);
        let mut work = vec![Work::Device(key.clone())];
        let old_model = old.as_ref().map(model_key_of);
        let old_node = old.as_ref().and_then(|d| d.node_name().map(str::to_owned));
        let new_model = device.as_ref().map(model_key_of);
        let new_node = device
            .as_ref()
            .and_then(|d| d.node_name().map(str::to_owned));
        if old_model != new_model {
            if let Some(m) = old_model {
                remove_from(&mut self.by_model, &m, &key.1);
                work.push(Work::Model(m));
            }
            if let Some(m) = new_model.clone() {
                self.by_model
                    .entry(m.clone())
                    .or_default()
                    .insert(key.1.clone());
                work.push(Work::Model(m));
            }
        }
        if old_node != new_node {
            if let Some(n) = old_node {
                remove_from(&mut self.by_node, &n, &key);
            }
            if let Some(n) = new_node {
                self.by_node.entry(n).or_default().insert(key.clone());
            }
        }
        match device {
            Some(d) => {
                self.devices.insert(key, d);
            }
            None => work.retain(|w| !matches!(w, Work::Device(_))),
        }
        work
    }

    /// Sets (or removes) a DeviceModel. A new model, a spec change (generation) or a removal
    /// re-validates its Devices; any change looks at the model itself (finalizer).
    pub fn set_model(&mut self, key: Key, model: Option<DeviceModel>) -> Vec<Work> {
        let old_generation = self
            .models
            .get(&key)
            .map(|m| (m.uid(), m.metadata.generation));
        let new_generation = model.as_ref().map(|m| (m.uid(), m.metadata.generation));
        let mut work = Vec::new();
        match model {
            Some(m) => {
                self.models.insert(key.clone(), m);
                work.push(Work::Model(key.clone()));
            }
            None => {
                self.models.remove(&key);
            }
        }
        if old_generation != new_generation {
            work.extend(
                self.devices_of(&key)
                    .into_iter()
                    .map(|name| Work::Device((key.0.clone(), name))),
            );
        }
        work
    }

    /// Sets (or removes) whether `node`'s edge session is up; a change reaches its Devices.
    pub fn set_node(&mut self, node: &str, ready: Option<bool>) -> Vec<Work> {
        let old = match ready {
            Some(r) => self.nodes.insert(node.to_owned(), r),
            None => self.nodes.remove(node),
        };
        if old == ready {
            return Vec::new();
        }
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .map(|k| Work::Device(k.clone()))
            .collect()
    }

    pub fn device(&self, key: &Key) -> Option<&Device> {
        self.devices.get(key)
    }

    pub fn model(&self, key: &Key) -> Option<&DeviceModel> {
        self.models.get(key)
    }

    /// The model a Device references, if it exists.
    pub fn model_of(&self, device: &Device) -> Option<&DeviceModel> {
        self.models.get(&model_key_of(device))
    }

    /// Whether `node`'s session is up (`None`: no such Node).
    pub fn session(&self, node: &str) -> Option<bool> {
        self.nodes.get(node).copied()
    }

    /// Names of the Devices that reference the model `key`, sorted.
    pub fn devices_of(&self, key: &Key) -> Vec<String> {
        self.by_model
            .get(key)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn device_keys(&self) -> Vec<Key> {
        self.devices.keys().cloned().collect()
    }

    pub fn model_keys(&self) -> Vec<Key> {
        self.models.keys().cloned().collect()
    }

    pub fn node_names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    pub fn len(&self) -> (usize, usize) {
        (self.devices.len(), self.models.len())
    }

    /// Devices by the state their edge last reported, every state present (0 when none): the
    /// index holds what the API server holds, so a restarted operator counts right as soon as
    /// its first list is in. O(devices).
    pub fn devices_by_state(&self) -> BTreeMap<DeviceState, i64> {
        let mut out: BTreeMap<DeviceState, i64> =
            DeviceState::ALL.iter().map(|s| (*s, 0)).collect();
        for device in self.devices.values() {
            *out.entry(DeviceState::of(device)).or_default() += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(name: &str) -> Key {
        ("ns".into(), name.into())
    }

    fn device(name: &str, model: &str, node: &str) -> Device {
        serde_json::from_value(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"deviceModelRef": {"name": model}, "nodeName": node},
        }))
        .unwrap()
    }

    fn model(name: &str, generation: i64) -> DeviceModel {
        serde_json::from_value(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "generation": generation},
            "spec": {"protocol": "modbus"},
        }))
        .unwrap()
    }

    fn with_state(mut d: Device, state: &str) -> Device {
        d.status.get_or_insert_with(Default::default).state = Some(state.into());
        d
    }

    #[test]
    fn devices_are_counted_by_reported_state() {
        let mut index = Index::new();
        let count =
            |index: &Index| -> Vec<i64> { index.devices_by_state().into_values().collect() };
        // Online, Offline, Unhealthy, Unknown: every state present from the start.
        assert_eq!(count(&index), vec![0, 0, 0, 0]);
        index.set_device(key("a"), Some(with_state(device("a", "m", "n1"), "online")));
        index.set_device(key("b"), Some(with_state(device("b", "m", "n1"), "ok")));
        index.set_device(
            key("c"),
            Some(with_state(device("c", "m", "n2"), "offline")),
        );
        index.set_device(key("d"), Some(device("d", "m", "n2")));
        index.set_device(
            key("e"),
            Some(with_state(device("e", "m", "n2"), "unhealthy")),
        );
        assert_eq!(count(&index), vec![2, 1, 1, 1]);
        // A device changing state moves, never counts twice; a deleted one leaves.
        index.set_device(
            key("a"),
            Some(with_state(device("a", "m", "n1"), "disconnected")),
        );
        index.set_device(key("c"), None);
        assert_eq!(count(&index), vec![1, 1, 1, 1]);
        // The same event twice (a watch relist) changes nothing.
        index.set_device(key("b"), Some(with_state(device("b", "m", "n1"), "ok")));
        assert_eq!(count(&index), vec![1, 1, 1, 1]);
    }

    #[test]
    fn a_model_change_reaches_only_its_devices() {
        let mut index = Index::new();
        index.set_device(key("a"), Some(device("a", "thermo", "n1")));
        index.set_device(key("b"), Some(device("b", "thermo", "n2")));
        index.set_device(key("c"), Some(device("c", "switch", "n1")));
        // Created after its devices: they are re-validated.
        let work = index.set_model(key("thermo"), Some(model("thermo", 1)));
        assert_eq!(
            work,
            vec![
                Work::Model(key("thermo")),
                Work::Device(key("a")),
                Work::Device(key("b"))
            ]
        );
        // Metadata only (same generation): only the model itself.
        let work = index.set_model(key("thermo"), Some(model("thermo", 1)));
        assert_eq!(work, vec![Work::Model(key("thermo"))]);
        // A spec change.
        let work = index.set_model(key("thermo"), Some(model("thermo", 2)));
        assert_eq!(work.len(), 3);
        assert!(!work.contains(&Work::Device(key("c"))));
        // Removed: its devices lose their model.
        let work = index.set_model(key("thermo"), None);
        assert_eq!(work, vec![Work::Device(key("a")), Work::Device(key("b"))]);
    }

    #[test]
    fn a_device_moving_to_another_model_updates_both() {
        let mut index = Index::new();
        index.set_model(key("thermo"), Some(model("thermo", 1)));
        index.set_model(key("switch"), Some(model("switch", 1)));
        let work = index.set_device(key("a"), Some(device("a", "thermo", "n1")));
        assert_eq!(
            work,
            vec![Work::Device(key("a")), Work::Model(key("thermo"))]
        );
        assert_eq!(index.devices_of(&key("thermo")), vec!["a".to_owned()]);
        let work = index.set_device(key("a"), Some(device("a", "switch", "n1")));
        assert_eq!(
            work,
            vec![
                Work::Device(key("a")),
                Work::Model(key("thermo")),
                Work::Model(key("switch"))
            ]
        );
        assert!(index.devices_of(&key("thermo")).is_empty());
        // Unchanged reference: the device only.
        let work = index.set_device(key("a"), Some(device("a", "switch", "n1")));
        assert_eq!(work, vec![Work::Device(key("a"))]);
        // Deleted: the model is looked at (finalizer), the device is gone.
        let work = index.set_device(key("a"), None);
        assert_eq!(work, vec![Work::Model(key("switch"))]);
        assert!(index.devices_of(&key("switch")).is_empty());
        assert!(index.device(&key("a")).is_none());
    }

    #[test]
    fn a_node_session_change_reaches_its_devices_only() {
        let mut index = Index::new();
        index.set_device(key("a"), Some(device("a", "m", "n1")));
        index.set_device(key("b"), Some(device("b", "m", "n2")));
        assert_eq!(
            index.set_node("n1", Some(true)),
            vec![Work::Device(key("a"))]
        );
        assert!(index.set_node("n1", Some(true)).is_empty(), "no change");
        assert_eq!(
            index.set_node("n1", Some(false)),
            vec![Work::Device(key("a"))]
        );
        assert_eq!(index.session("n1"), Some(false));
        // The device moves to n2: n1's changes no longer reach it.
        index.set_device(key("a"), Some(device("a", "m", "n2")));
        assert!(index.set_node("n1", None).is_empty());
        assert_eq!(index.set_node("n2", Some(true)).len(), 2);
    }
}
