//! The device operator against the real control plane, run as the chart's ServiceAccount. No
//! hub runs here: where the hub's part matters (reported twins) the test writes it, under a
//! field manager of its own, as the hub will.

use std::time::Duration;

use edgefleet_api::devices::{Device, DeviceModel, PropertySyncState};
use edgefleet_e2e::operator::Operator;
use edgefleet_e2e::{TestNamespace, apply_manifest, client, install_crds, repo_root, wait_for};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const GENERATION: &str = "edgefleet.io/device-model-generation";
const FINALIZER: &str = "edgefleet.io/device-model-in-use";

struct Bed {
    client: Client,
    ns: TestNamespace,
    op: Operator,
}

async fn bed(prefix: &str) -> Bed {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, prefix).await.unwrap();
    let op = Operator::start("device", &ns.name).await.unwrap();
    Bed { client, ns, op }
}

impl Bed {
    fn devices(&self) -> Api<Device> {
        self.ns.api()
    }

    fn models(&self) -> Api<DeviceModel> {
        self.ns.api()
    }

    async fn model(&self, name: &str, protocol: &str, properties: Value) -> anyhow::Result<()> {
        let m: DeviceModel = serde_json::from_value(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
            "metadata": {"name": name},
            "spec": {"protocol": protocol, "properties": properties},
        }))?;
        self.models().create(&PostParams::default(), &m).await?;
        Ok(())
    }

    async fn device(
        &self,
        name: &str,
        model: &str,
        node: &str,
        properties: Value,
    ) -> anyhow::Result<()> {
        let d: Device = serde_json::from_value(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
            "metadata": {"name": name},
            "spec": {
                "deviceModelRef": {"name": model},
                "nodeName": node,
                "protocol": {"protocolName": "modbus"},
                "properties": properties,
            },
        }))?;
        self.devices().create(&PostParams::default(), &d).await?;
        Ok(())
    }

    /// Waits for condition `type_` of `device` to read `(status, reason, message)`.
    async fn condition(&self, device: &str, type_: &str, want: (&str, &str, &str)) {
        let api = self.devices();
        wait_for(&format!("{device} {type_} = {want:?}"), WAIT, || async {
            let d = api.get(device).await?;
            let got = d
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == type_)
                .map(|c| (c.status, c.reason, c.message));
            Ok(got
                .filter(|(s, r, m)| (s.as_str(), r.as_str(), m.as_str()) == want)
                .map(|_| ()))
        })
        .await
        .unwrap();
    }

    /// Warning events about `kind/name` in the namespace, as `(reason, note)`.
    async fn warnings(&self, kind: &str, name: &str) -> Vec<(String, String)> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns.name);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name)
                })
            })
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    async fn annotation(&self, device: &str) -> Option<String> {
        let d = self.devices().get(device).await.ok()?;
        d.annotations().get(GENERATION).cloned()
    }

    async fn wait_annotation(&self, device: &str, want: &str) {
        wait_for(&format!("{device} annotated {want}"), WAIT, || async {
            Ok((self.annotation(device).await.as_deref() == Some(want)).then_some(()))
        })
        .await
        .unwrap();
    }
}

/// A Ready, kwok-managed edge node of the test bed.
async fn ready_node(client: &Client) -> String {
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default().labels("node-role.kubernetes.io/edge"))
        .await
        .unwrap();
    list.items
        .into_iter()
        .filter(|n| !n.labels().contains_key(edgefleet_e2e::DISTURBED_LABEL))
        .find(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .map(|n| n.name_any())
        .unwrap()
}

fn thermo_properties(maximum: &str) -> Value {
    json!([
        {"name": "setpoint", "type": "INT", "accessMode": "ReadWrite", "minimum": "0", "maximum": maximum},
        {"name": "gain", "type": "FLOAT", "accessMode": "ReadWrite"},
        {"name": "ratio", "type": "DOUBLE", "accessMode": "ReadWrite", "minimum": "-1", "maximum": "1"},
        {"name": "enabled", "type": "BOOLEAN", "accessMode": "ReadWrite"},
        {"name": "label", "type": "STRING", "accessMode": "ReadWrite"},
        {"name": "camera", "type": "STREAM", "accessMode": "ReadWrite"},
        {"name": "temperature", "type": "INT", "accessMode": "ReadOnly"},
    ])
}

fn desired(name: &str, value: &str) -> Value {
    json!({"name": name, "desired": {"value": value}})
}

#[tokio::test]
async fn device_kubeedge_manifests_are_valid() {
    let b = bed("dev-ke").await;
    let dir = repo_root().join("e2e/testdata/kubeedge");
    for file in ["devicemodel.yaml", "device.yaml"] {
        apply_manifest(&b.client, &dir.join(file), Some(&b.ns.name))
            .await
            .unwrap();
    }
    b.condition(
        "random-instance-01",
        "Valid",
        ("True", "Valid", "consistent with DeviceModel random-01"),
    )
    .await;
    b.condition(
        "random-instance-01",
        "TwinSynced",
        ("True", "InSync", "no property has a desired value"),
    )
    .await;
    b.condition(
        "random-instance-01",
        "Online",
        ("False", "NodeNotFound", "node edge-node does not exist"),
    )
    .await;
    b.wait_annotation("random-instance-01", "1").await;
    let m = b.models().get("random-01").await.unwrap();
    assert!(m.finalizers().iter().any(|f| f == FINALIZER));
    assert!(b.warnings("Device", "random-instance-01").await.is_empty());
    // The spec read back is still KubeEdge's, unchanged by the operator.
    let d = b.devices().get("random-instance-01").await.unwrap();
    assert_eq!(d.spec.device_model_ref.name, "random-01");
    drop(b.op);
}

/// What the API server refuses, with the message it gives.
#[tokio::test]
async fn device_invalid_objects_are_refused_by_the_api_server() {
    let b = bed("dev-refused").await;
    let models = b.models();
    let devices = b.devices();
    let model = |props: Value| -> DeviceModel {
        serde_json::from_value(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
            "metadata": {"name": "bad"}, "spec": {"protocol": "modbus", "properties": props},
        }))
        .unwrap()
    };
    let cases: Vec<(&str, Result<(), kube::Error>, &str)> = vec![
        (
            "minimum above maximum",
            models
                .create(&PostParams::default(), &model(json!([{"name": "a", "type": "INT", "minimum": "10", "maximum": "1"}])))
                .await
                .map(|_| ()),
            "spec.properties[0].minimum: Invalid value: \"object\": minimum must not be greater than maximum",
        ),
        (
            "duplicate property",
            models
                .create(&PostParams::default(), &model(json!([{"name": "a"}, {"name": "a"}])))
                .await
                .map(|_| ()),
            "spec.properties[1]: Duplicate value: {\"name\":\"a\"}",
        ),
        (
            "negative report cycle",
            devices
                .create(&PostParams::default(), &serde_json::from_value(json!({
                    "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
                    "metadata": {"name": "bad"},
                    "spec": {"deviceModelRef": {"name": "m"}, "properties": [{"name": "a", "reportCycle": -1}]},
                })).unwrap())
                .await
                .map(|_| ()),
            "should be greater than or equal to 0",
        ),
    ];
    for (name, result, message) in cases {
        let err = result.expect_err(name);
        assert!(
            err.to_string().contains(message),
            "{name}: {err} does not say {message:?}"
        );
    }
    // No model reference at all: the Go-shaped body, since the typed one cannot omit it.
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        b.client.clone(),
        &b.ns.name,
        &kube::api::ApiResource::erase::<Device>(&()),
    );
    let obj: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": "no-model"}, "spec": {"nodeName": "n"},
    }))
    .unwrap();
    let err = api.create(&PostParams::default(), &obj).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.deviceModelRef: Required value"),
        "{err}"
    );
    // An unknown property type (the typed model cannot even hold it).
    let models_dyn: Api<kube::api::DynamicObject> = Api::namespaced_with(
        b.client.clone(),
        &b.ns.name,
        &kube::api::ApiResource::erase::<DeviceModel>(&()),
    );
    let obj: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
        "metadata": {"name": "bad-type"},
        "spec": {"properties": [{"name": "a", "type": "INTEGER"}]},
    }))
    .unwrap();
    let err = models_dyn
        .create(&PostParams::default(), &obj)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("Unsupported value: \"INTEGER\""),
        "{err}"
    );
}

/// What only the operator can tell (two objects), each conditioned with its exact message and
/// warned about once — not once per reconcile.
#[tokio::test]
async fn device_invalid_devices_are_conditioned_and_warned_once() {
    let b = bed("dev-invalid").await;
    b.model("thermo", "modbus", thermo_properties("100"))
        .await
        .unwrap();
    let cases: Vec<(&str, &str, Value, &str, &str)> = vec![
        (
            "no-model",
            "absent",
            json!([]),
            "ModelNotFound",
            "DeviceModel absent not found in the device's namespace",
        ),
        (
            "unknown",
            "thermo",
            json!([{"name": "humidity"}]),
            "UnknownProperty",
            "property humidity is not declared by DeviceModel thermo",
        ),
        (
            "read-only",
            "thermo",
            json!([desired("temperature", "5")]),
            "ReadOnlyProperty",
            "property temperature is ReadOnly in the model: it takes no desired value",
        ),
        (
            "int-text",
            "thermo",
            json!([desired("setpoint", "high")]),
            "InvalidValue",
            "property setpoint: desired value \"high\" is not an INT (64-bit integer)",
        ),
        (
            "int-fraction",
            "thermo",
            json!([desired("setpoint", "4.5")]),
            "InvalidValue",
            "property setpoint: desired value \"4.5\" is not an INT (64-bit integer)",
        ),
        (
            "float-overflow",
            "thermo",
            json!([desired("gain", "1e40")]),
            "InvalidValue",
            "property gain: desired value \"1e40\" is not a FLOAT (finite 32-bit number)",
        ),
        (
            "double-nan",
            "thermo",
            json!([desired("ratio", "NaN")]),
            "InvalidValue",
            "property ratio: desired value \"NaN\" is not a DOUBLE (finite number)",
        ),
        (
            "bool-yes",
            "thermo",
            json!([desired("enabled", "yes")]),
            "InvalidValue",
            "property enabled: desired value \"yes\" is not a BOOLEAN (true or false)",
        ),
        (
            "stream",
            "thermo",
            json!([desired("camera", "x")]),
            "InvalidValue",
            "property camera: desired value \"x\" is not allowed: a STREAM property takes no desired value",
        ),
        (
            "above-max",
            "thermo",
            json!([desired("setpoint", "101")]),
            "OutOfRange",
            "property setpoint: desired value 101 is above the maximum 100",
        ),
        (
            "below-min",
            "thermo",
            json!([desired("ratio", "-1.5")]),
            "OutOfRange",
            "property ratio: desired value -1.5 is below the minimum -1",
        ),
        (
            "visitor-protocol",
            "thermo",
            json!([{"name": "setpoint", "visitors": {"protocolName": "opcua"}}]),
            "ProtocolMismatch",
            "property setpoint: visitor protocol \"opcua\" differs from the device's \"modbus\"",
        ),
    ];
    for (name, model, props, _, _) in &cases {
        b.device(name, model, "edge-none", props.clone())
            .await
            .unwrap();
    }
    // A Device whose own protocol differs from the model's.
    let d: Device = serde_json::from_value(json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": "protocol"},
        "spec": {"deviceModelRef": {"name": "thermo"}, "protocol": {"protocolName": "bluetooth"}},
    }))
    .unwrap();
    b.devices()
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    let mut all = cases
        .iter()
        .map(|(n, _, _, r, m)| ((*n).to_owned(), *r, (*m).to_owned()))
        .collect::<Vec<_>>();
    all.push((
        "protocol".into(),
        "ProtocolMismatch",
        "protocol \"bluetooth\" differs from DeviceModel thermo's \"modbus\"".into(),
    ));
    for (name, reason, message) in &all {
        b.condition(name, "Valid", ("False", reason, message)).await;
    }
    // A model spec change reconciles every one of them again (their annotation moves last).
    b.models()
        .patch(
            "thermo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"protocolConfigData": {"port": 502}}})),
        )
        .await
        .unwrap();
    for (name, _, _) in all.iter().filter(|(n, _, _)| n != "no-model") {
        b.wait_annotation(name, "2").await;
    }
    for (name, reason, message) in &all {
        let warnings = b.warnings("Device", name).await;
        assert_eq!(
            warnings,
            vec![((*reason).to_owned(), message.clone())],
            "{name}: one warning"
        );
    }
}

#[tokio::test]
async fn device_model_change_revalidates_only_its_devices() {
    let b = bed("dev-model").await;
    b.model("thermo", "modbus", thermo_properties("100"))
        .await
        .unwrap();
    b.model("other", "modbus", thermo_properties("100"))
        .await
        .unwrap();
    b.device(
        "a1",
        "thermo",
        "edge-none",
        json!([desired("setpoint", "50")]),
    )
    .await
    .unwrap();
    b.device(
        "a2",
        "thermo",
        "edge-none",
        json!([desired("setpoint", "80")]),
    )
    .await
    .unwrap();
    b.device(
        "b1",
        "other",
        "edge-none",
        json!([desired("setpoint", "80")]),
    )
    .await
    .unwrap();
    for d in ["a1", "a2", "b1"] {
        b.wait_annotation(d, "1").await;
        b.condition(
            d,
            "Valid",
            (
                "True",
                "Valid",
                if d == "b1" {
                    "consistent with DeviceModel other"
                } else {
                    "consistent with DeviceModel thermo"
                },
            ),
        )
        .await;
    }
    let b1_rv = b.devices().get("b1").await.unwrap().resource_version();
    b.models()
        .patch(
            "thermo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"properties": thermo_properties("60")}})),
        )
        .await
        .unwrap();
    b.wait_annotation("a1", "2").await;
    b.wait_annotation("a2", "2").await;
    b.condition(
        "a2",
        "Valid",
        (
            "False",
            "OutOfRange",
            "property setpoint: desired value 80 is above the maximum 60",
        ),
    )
    .await;
    b.condition(
        "a1",
        "Valid",
        ("True", "Valid", "consistent with DeviceModel thermo"),
    )
    .await;
    assert_eq!(b.warnings("Device", "a2").await.len(), 1);
    // The other model's device was not touched at all.
    let b1 = b.devices().get("b1").await.unwrap();
    assert_eq!(b1.resource_version(), b1_rv);
    assert_eq!(
        b1.annotations().get(GENERATION).map(String::as_str),
        Some("1")
    );
}

#[tokio::test]
async fn device_model_in_use_deletion_is_held() {
    let b = bed("dev-inuse").await;
    b.model("thermo", "modbus", thermo_properties("100"))
        .await
        .unwrap();
    b.device("d1", "thermo", "edge-none", json!([]))
        .await
        .unwrap();
    b.device("d2", "thermo", "edge-none", json!([]))
        .await
        .unwrap();
    wait_for("the in-use finalizer", WAIT, || async {
        let m = b.models().get("thermo").await?;
        Ok(m.finalizers().iter().any(|f| f == FINALIZER).then_some(()))
    })
    .await
    .unwrap();
    b.models()
        .delete("thermo", &DeleteParams::default())
        .await
        .unwrap();
    let message = "DeviceModel thermo is used by 2 Device(s): d1, d2; it is deleted once no Device references it";
    wait_for("the ModelInUse warning", WAIT, || async {
        let w = b.warnings("DeviceModel", "thermo").await;
        Ok((w == vec![("ModelInUse".to_owned(), message.to_owned())]).then_some(()))
    })
    .await
    .unwrap();
    let m = b.models().get("thermo").await.unwrap();
    assert!(m.metadata.deletion_timestamp.is_some(), "held, not gone");
    b.devices()
        .delete("d1", &DeleteParams::default())
        .await
        .unwrap();
    b.devices()
        .delete("d2", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the model to be gone", WAIT, || async {
        Ok(b.models().get_opt("thermo").await?.is_none().then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn device_operator_restart_resumes_from_the_cluster() {
    let mut b = bed("dev-restart").await;
    b.model("thermo", "modbus", thermo_properties("100"))
        .await
        .unwrap();
    b.device(
        "bad",
        "thermo",
        "edge-none",
        json!([desired("setpoint", "200")]),
    )
    .await
    .unwrap();
    b.device(
        "good",
        "thermo",
        "edge-none",
        json!([desired("setpoint", "20")]),
    )
    .await
    .unwrap();
    let over = "property setpoint: desired value 200 is above the maximum 100";
    b.condition("bad", "Valid", ("False", "OutOfRange", over))
        .await;
    b.wait_annotation("good", "1").await;
    b.op.kill();
    // While it is down, a Device turns invalid.
    b.devices()
        .patch(
            "good",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"properties": [desired("setpoint", "-3")]}})),
        )
        .await
        .unwrap();
    b.op.restart().unwrap();
    let under = "property setpoint: desired value -3 is below the minimum 0";
    b.condition("good", "Valid", ("False", "OutOfRange", under))
        .await;
    // A model change after the restart, to know every device was looked at again.
    b.models()
        .patch(
            "thermo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"protocolConfigData": {"port": 502}}})),
        )
        .await
        .unwrap();
    b.wait_annotation("bad", "2").await;
    b.wait_annotation("good", "2").await;
    // The device that was invalid before the restart was not warned about again.
    assert_eq!(b.warnings("Device", "bad").await.len(), 1);
    assert_eq!(b.warnings("Device", "good").await.len(), 1);
}

/// The hub's status fields and the operator's, each under its own field manager: neither
/// write removes the other's.
#[tokio::test]
async fn device_status_fields_survive_the_hubs_writes() {
    let b = bed("dev-owners").await;
    let node = ready_node(&b.client).await;
    b.model("thermo", "modbus", thermo_properties("100"))
        .await
        .unwrap();
    b.device("d", "thermo", &node, json!([desired("setpoint", "20")]))
        .await
        .unwrap();
    b.condition(
        "d",
        "TwinSynced",
        (
            "False",
            "Pending",
            "0/1 properties in sync; out of sync: setpoint Pending",
        ),
    )
    .await;
    let hub = PatchParams::apply("edgefleet-hub").force();
    let report = |value: &str| {
        let now = jiff::Timestamp::now().as_millisecond().to_string();
        json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
            "metadata": {"name": "d"},
            "status": {
                "twins": [{"propertyName": "setpoint",
                           "reported": {"value": value, "metadata": {"timestamp": now}},
                           "observedDesired": {"value": "20"}}],
                "state": "online",
                "lastOnlineTime": "2026-12-02T10:00:00Z",
            },
        })
    };
    b.devices()
        .patch_status("d", &hub, &Patch::Apply(report("20")))
        .await
        .unwrap();
    b.condition(
        "d",
        "TwinSynced",
        ("True", "InSync", "1/1 properties in sync"),
    )
    .await;
    b.condition(
        "d",
        "Online",
        ("True", "Online", &format!("reported online on node {node}")),
    )
    .await;
    // The hub writes again: the operator's fields stay, and follow.
    b.devices()
        .patch_status("d", &hub, &Patch::Apply(report("23")))
        .await
        .unwrap();
    let d = b.devices().get("d").await.unwrap();
    let status = d.status.clone().unwrap();
    assert_eq!(
        status.conditions.as_ref().map(Vec::len),
        Some(3),
        "{status:?}"
    );
    b.condition(
        "d",
        "TwinSynced",
        (
            "False",
            "Drifted",
            "0/1 properties in sync; out of sync: setpoint Drifted",
        ),
    )
    .await;
    // And the operator's write left the hub's twins alone.
    let d = b.devices().get("d").await.unwrap();
    let status = d.status.unwrap();
    let twins = status.twins.unwrap();
    assert_eq!(twins[0].reported.as_ref().unwrap().value, "23");
    assert_eq!(status.state.as_deref(), Some("online"));
    assert_eq!(
        status.property_sync.unwrap()[0].state,
        PropertySyncState::Drifted
    );
    let managers: Vec<String> = d
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.contains(&"edgefleet-hub".to_owned()),
        "{managers:?}"
    );
    assert!(
        managers.contains(&"edgefleet-device".to_owned()),
        "{managers:?}"
    );
}
