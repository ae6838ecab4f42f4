//! What the node's mappers should hold, read from the objects the hub delivered: each Device and
//! DeviceModel (KubeEdge `devices.kubeedge.io/v1beta1` JSON) turned into its DMI message, plus
//! what a report is checked against (the device's protocol, each property's type).
//!
//! Pure: JSON in, [`Catalog`] out; every rule has a table test.

use std::collections::BTreeMap;

use prost::Message as _;
use serde_json::Value;

use super::proto;

/// `(namespace, name)` of a Device or a DeviceModel.
pub type ObjectKey = (String, String);

/// A property as the model declares it.
#[derive(Clone, Debug, PartialEq)]
pub struct PropertyType {
    pub type_: String,
    pub access_mode: String,
}

/// A DeviceModel on this node.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelEntry {
    pub protocol: String,
    pub properties: BTreeMap<String, PropertyType>,
    pub dmi: proto::DeviceModel,
    pub fingerprint: u64,
}

/// A Device on this node.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceEntry {
    /// The mapper it belongs to: the Device's protocol, else its model's.
    pub protocol: String,
    pub model: ObjectKey,
    pub dmi: proto::Device,
    pub fingerprint: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    pub devices: BTreeMap<ObjectKey, DeviceEntry>,
    pub models: BTreeMap<ObjectKey, ModelEntry>,
}

/// Why a report is refused (the gRPC status is chosen by the server).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("device {0}/{1} is not bound to this node")]
    UnknownDevice(String, String),
    #[error("device {0}/{1}: its DeviceModel {2} has not reached this node yet")]
    ModelMissing(String, String, String),
    #[error("device {0}/{1} has no property {2:?} in its model")]
    UnknownProperty(String, String, String),
    #[error("device {0}/{1} property {2}: {3}")]
    BadValue(String, String, String, String),
}

impl Catalog {
    /// Builds the catalog from the delivered objects (bodies as JSON text). Objects that do not
    /// parse are left out and named in the returned list, never a panic.
    pub fn build<'a>(
        devices: impl IntoIterator<Item = &'a str>,
        models: impl IntoIterator<Item = &'a str>,
    ) -> (Catalog, Vec<String>) {
        let mut catalog = Catalog::default();
        let mut skipped = Vec::new();
        for body in models {
            match serde_json::from_str::<Value>(body)
                .map_err(|e| e.to_string())
                .and_then(|v| model_entry(&v))
            {
                Ok((key, entry)) => {
                    catalog.models.insert(key, entry);
                }
                Err(e) => skipped.push(format!("devicemodel: {e}")),
            }
        }
        for body in devices {
            match serde_json::from_str::<Value>(body)
                .map_err(|e| e.to_string())
                .and_then(|v| device_entry(&v, &catalog.models))
            {
                Ok((key, entry)) => {
                    catalog.devices.insert(key, entry);
                }
                Err(e) => skipped.push(format!("device: {e}")),
            }
        }
        (catalog, skipped)
    }

    /// The model of a device, when it is on the node.
    pub fn model_of(&self, device: &DeviceEntry) -> Option<&ModelEntry> {
        self.models.get(&device.model)
    }

    /// Checks one reported twin (value and observed desired value) against the device's model;
    /// the property's declared type (lower case) when it passes.
    pub fn check_twin(
        &self,
        namespace: &str,
        device: &str,
        property: &str,
        values: &[&str],
    ) -> Result<String, ReportError> {
        let key = (namespace.to_string(), device.to_string());
        let entry = self
            .devices
            .get(&key)
            .ok_or_else(|| ReportError::UnknownDevice(key.0.clone(), key.1.clone()))?;
        let model = self.model_of(entry).ok_or_else(|| {
            ReportError::ModelMissing(key.0.clone(), key.1.clone(), entry.model.1.clone())
        })?;
        let declared = model.properties.get(property).ok_or_else(|| {
            ReportError::UnknownProperty(key.0.clone(), key.1.clone(), property.to_string())
        })?;
        for value in values {
            check_value(&declared.type_, value).map_err(|why| {
                ReportError::BadValue(key.0.clone(), key.1.clone(), property.to_string(), why)
            })?;
        }
        Ok(declared.type_.to_ascii_lowercase())
    }
}

/// Whether `value` is a value of the model's `type_` (KubeEdge's type names, any case). An
/// empty value is "not reported yet" and passes; a type we do not know is not refused.
pub fn check_value(type_: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    let ok = match type_.to_ascii_lowercase().as_str() {
        "int" | "integer" | "int64" | "int32" => value.trim().parse::<i64>().is_ok(),
        "float" | "double" => value.trim().parse::<f64>().is_ok_and(f64::is_finite),
        "boolean" | "bool" => matches!(value.trim(), "true" | "false"),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{value:?} is not a {type_}"))
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut at = v;
    for p in path {
        at = &at[*p];
    }
    at.as_str().unwrap_or("")
}

fn metadata_key(v: &Value) -> Result<ObjectKey, String> {
    let name = str_at(v, &["metadata", "name"]);
    if name.is_empty() {
        return Err("no metadata.name".into());
    }
    let namespace = match str_at(v, &["metadata", "namespace"]) {
        "" => "default",
        ns => ns,
    };
    Ok((namespace.to_string(), name.to_string()))
}

fn model_entry(v: &Value) -> Result<(ObjectKey, ModelEntry), String> {
    let key = metadata_key(v)?;
    let spec = &v["spec"];
    let mut properties = BTreeMap::new();
    let mut dmi_properties = Vec::new();
    for p in spec["properties"].as_array().into_iter().flatten() {
        let name = str_at(p, &["name"]).to_string();
        if name.is_empty() {
            continue;
        }
        properties.insert(
            name.clone(),
            PropertyType {
                type_: str_at(p, &["type"]).to_string(),
                access_mode: str_at(p, &["accessMode"]).to_string(),
            },
        );
        dmi_properties.push(proto::ModelProperty {
            name,
            description: str_at(p, &["description"]).to_string(),
            r#type: str_at(p, &["type"]).to_string(),
            access_mode: str_at(p, &["accessMode"]).to_string(),
            minimum: scalar_text(&p["minimum"]),
            maximum: scalar_text(&p["maximum"]),
            unit: str_at(p, &["unit"]).to_string(),
        });
    }
    let dmi = proto::DeviceModel {
        name: key.1.clone(),
        namespace: key.0.clone(),
        spec: Some(proto::DeviceModelSpec {
            properties: dmi_properties,
            commands: Vec::new(),
        }),
    };
    let fingerprint = fingerprint(&dmi.encode_to_vec());
    Ok((
        key,
        ModelEntry {
            protocol: str_at(spec, &["protocol"]).to_string(),
            properties,
            dmi,
            fingerprint,
        },
    ))
}

fn device_entry(
    v: &Value,
    models: &BTreeMap<ObjectKey, ModelEntry>,
) -> Result<(ObjectKey, DeviceEntry), String> {
    let key = metadata_key(v)?;
    let spec = &v["spec"];
    let model_name = str_at(spec, &["deviceModelRef", "name"]);
    if model_name.is_empty() {
        return Err(format!("{}/{}: no spec.deviceModelRef.name", key.0, key.1));
    }
    let model = (key.0.clone(), model_name.to_string());
    let protocol = match str_at(spec, &["protocol", "protocolName"]) {
        "" => models
            .get(&model)
            .map(|m| m.protocol.clone())
            .unwrap_or_default(),
        p => p.to_string(),
    };
    let properties = spec["properties"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| !str_at(p, &["name"]).is_empty())
        .map(device_property)
        .collect();
    let methods = spec["methods"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| proto::DeviceMethod {
            name: str_at(m, &["name"]).to_string(),
            description: str_at(m, &["description"]).to_string(),
            property_names: m["propertyNames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect(),
        })
        .collect();
    let dmi = proto::Device {
        name: key.1.clone(),
        namespace: key.0.clone(),
        spec: Some(proto::DeviceSpec {
            device_model_reference: model_name.to_string(),
            protocol: Some(proto::ProtocolConfig {
                protocol_name: protocol.clone(),
                config_data: customized(&spec["protocol"]["configData"]),
            }),
            properties,
            methods,
        }),
        status: None,
    };
    let fingerprint = fingerprint(&dmi.encode_to_vec());
    Ok((
        key,
        DeviceEntry {
            protocol,
            model,
            dmi,
            fingerprint,
        },
    ))
}

fn device_property(p: &Value) -> proto::DeviceProperty {
    let desired = &p["desired"];
    proto::DeviceProperty {
        name: str_at(p, &["name"]).to_string(),
        desired: desired.is_object().then(|| proto::TwinProperty {
            value: scalar_text(&desired["value"]),
            metadata: desired["metadata"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), scalar_text(v)))
                .collect(),
        }),
        visitors: p["visitors"].is_object().then(|| proto::VisitorConfig {
            protocol_name: str_at(p, &["visitors", "protocolName"]).to_string(),
            config_data: customized(&p["visitors"]["configData"]),
        }),
        report_cycle: p["reportCycle"].as_i64().unwrap_or(0),
        collect_cycle: p["collectCycle"].as_i64().unwrap_or(0),
        report_to_cloud: p["reportToCloud"].as_bool().unwrap_or(false),
        push_method: p["pushMethod"]
            .is_object()
            .then(|| push_method(&p["pushMethod"])),
    }
}

/// HTTP, MQTT and OTEL push methods are forwarded; database sinks are configured on the mapper.
fn push_method(v: &Value) -> proto::PushMethod {
    proto::PushMethod {
        http: v["http"].is_object().then(|| proto::PushMethodHttp {
            hostname: str_at(v, &["http", "hostName"]).to_string(),
            port: v["http"]["port"].as_i64().unwrap_or(0),
            requestpath: str_at(v, &["http", "requestPath"]).to_string(),
            timeout: v["http"]["timeout"].as_i64().unwrap_or(0),
        }),
        mqtt: v["mqtt"].is_object().then(|| proto::PushMethodMqtt {
            address: str_at(v, &["mqtt", "address"]).to_string(),
            topic: str_at(v, &["mqtt", "topic"]).to_string(),
            qos: i32::try_from(v["mqtt"]["qos"].as_i64().unwrap_or(0)).unwrap_or(0),
            retained: v["mqtt"]["retained"].as_bool().unwrap_or(false),
        }),
        otel: v["otel"].is_object().then(|| proto::PushMethodOtel {
            endpoint_url: str_at(v, &["otel", "endpointURL"]).to_string(),
        }),
        db_method: None,
        anomaly_detection: None,
    }
}

/// A JSON scalar as text (`"10"`, `10`, `true` → `10`, `10`, `true`); objects as JSON.
fn scalar_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

const WRAPPERS: &str = "type.googleapis.com/google.protobuf.";

/// `configData` packed as KubeEdge packs it: each value a google.protobuf wrapper in an Any
/// (string → StringValue, integer → Int64Value, number → DoubleValue, bool → BoolValue; lists
/// and objects as their JSON text in a StringValue).
fn customized(v: &Value) -> Option<proto::CustomizedValue> {
    let map = v.as_object()?;
    let data = map
        .iter()
        .map(|(k, v)| {
            let (kind, value) = match v {
                Value::Bool(b) => ("BoolValue", b.encode_to_vec()),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => ("Int64Value", i.encode_to_vec()),
                    None => ("DoubleValue", n.as_f64().unwrap_or(0.0).encode_to_vec()),
                },
                Value::String(s) => ("StringValue", s.encode_to_vec()),
                other => ("StringValue", other.to_string().encode_to_vec()),
            };
            (
                k.clone(),
                prost_types::Any {
                    type_url: format!("{WRAPPERS}{kind}"),
                    value,
                },
            )
        })
        .collect();
    Some(proto::CustomizedValue { data })
}

/// FNV-1a over the encoded message: stable across builds (it is persisted).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
pub(crate) mod tests_data {
    pub(crate) const MODEL: &str = r#"{"apiVersion":"devices.kubeedge.io/v1beta1","kind":"DeviceModel",
      "metadata":{"name":"thermo","namespace":"plant"},
      "spec":{"protocol":"modbus","properties":[
        {"name":"temperature","type":"FLOAT","accessMode":"ReadOnly","minimum":"-40","maximum":"125"},
        {"name":"interval","type":"INT","accessMode":"ReadWrite"},
        {"name":"alarm","type":"BOOLEAN","accessMode":"ReadWrite"},
        {"name":"label","type":"STRING","accessMode":"ReadWrite"}]}}"#;

    pub(crate) const DEVICE: &str = r#"{"apiVersion":"devices.kubeedge.io/v1beta1","kind":"Device",
      "metadata":{"name":"t0","namespace":"plant"},
      "spec":{"deviceModelRef":{"name":"thermo"},"nodeName":"edge-0",
        "protocol":{"protocolName":"modbus","configData":{"ip":"192.0.2.1","slaveID":1,"scale":0.5,"tcp":true,"regs":[1,2]}},
        "properties":[{"name":"interval","desired":{"value":"10"},"collectCycle":1000,"reportCycle":1000,"reportToCloud":true,
                       "pushMethod":{"mqtt":{"address":"tcp://127.0.0.1:1883","topic":"t","qos":1}}},
                      {"name":"temperature","collectCycle":500}]}}"#;
}

#[cfg(test)]
mod tests {
    use super::tests_data::{DEVICE, MODEL};
    use super::*;

    #[test]
    fn values_are_checked_against_the_models_type() {
        for (type_, value, ok) in [
            ("INT", "10", true),
            ("int", "-3", true),
            ("INT", "1.5", false),
            ("INT", "ten", false),
            ("FLOAT", "21.5", true),
            ("float", "1e3", true),
            ("FLOAT", "NaN", false),
            ("FLOAT", "inf", false),
            ("double", "abc", false),
            ("BOOLEAN", "true", true),
            ("boolean", "false", true),
            ("BOOLEAN", "yes", false),
            ("BOOLEAN", "1", false),
            ("STRING", "anything", true),
            ("bytes", "AAEC", true),
            ("INT", "", true),
            ("some-future-type", "x", true),
        ] {
            assert_eq!(check_value(type_, value).is_ok(), ok, "{type_} {value:?}");
        }
    }

    #[test]
    fn devices_and_models_become_dmi_messages() {
        let (catalog, skipped) = Catalog::build([DEVICE], [MODEL]);
        assert!(skipped.is_empty(), "{skipped:?}");
        let model = &catalog.models[&("plant".into(), "thermo".into())];
        assert_eq!(model.protocol, "modbus");
        assert_eq!(model.dmi.namespace, "plant");
        assert_eq!(model.properties["interval"].type_, "INT");
        let device = &catalog.devices[&("plant".into(), "t0".into())];
        assert_eq!(device.protocol, "modbus");
        let spec = device.dmi.spec.as_ref().unwrap();
        assert_eq!(spec.device_model_reference, "thermo");
        assert_eq!(spec.properties[0].desired.as_ref().unwrap().value, "10");
        assert_eq!(spec.properties[0].collect_cycle, 1000);
        assert!(spec.properties[0].report_to_cloud);
        assert_eq!(
            spec.properties[0]
                .push_method
                .as_ref()
                .unwrap()
                .mqtt
                .as_ref()
                .unwrap()
                .qos,
            1
        );
        assert!(spec.properties[1].desired.is_none());
        let data = &spec
            .protocol
            .as_ref()
            .unwrap()
            .config_data
            .as_ref()
            .unwrap()
            .data;
        let kinds: Vec<(&str, &str)> = data
            .iter()
            .map(|(k, v)| (k.as_str(), v.type_url.trim_start_matches(WRAPPERS)))
            .collect();
        assert_eq!(
            kinds,
            [
                ("ip", "StringValue"),
                ("regs", "StringValue"),
                ("scale", "DoubleValue"),
                ("slaveID", "Int64Value"),
                ("tcp", "BoolValue")
            ]
        );
        assert_eq!(
            String::decode(data["ip"].value.as_slice()).unwrap(),
            "192.0.2.1"
        );
        assert_eq!(i64::decode(data["slaveID"].value.as_slice()).unwrap(), 1);
    }

    #[test]
    fn a_desired_change_changes_the_fingerprint_and_nothing_else_does() {
        let (a, _) = Catalog::build([DEVICE], [MODEL]);
        let (b, _) = Catalog::build([DEVICE], [MODEL]);
        let key = ("plant".to_string(), "t0".to_string());
        assert_eq!(a.devices[&key].fingerprint, b.devices[&key].fingerprint);
        let changed = DEVICE.replace(r#""value":"10""#, r#""value":"20""#);
        let (c, _) = Catalog::build([changed.as_str()], [MODEL]);
        assert_ne!(a.devices[&key].fingerprint, c.devices[&key].fingerprint);
    }

    #[test]
    fn reports_are_checked_against_the_catalog() {
        let (catalog, _) = Catalog::build([DEVICE], [MODEL]);
        assert!(
            catalog
                .check_twin("plant", "t0", "temperature", &["21.5"])
                .is_ok()
        );
        assert!(
            catalog
                .check_twin("plant", "t0", "interval", &["10", "10"])
                .is_ok()
        );
        for (ns, dev, prop, value, want) in [
            (
                "plant",
                "ghost",
                "temperature",
                "1",
                "device plant/ghost is not bound to this node",
            ),
            (
                "other",
                "t0",
                "temperature",
                "1",
                "device other/t0 is not bound to this node",
            ),
            (
                "plant",
                "t0",
                "humidity",
                "1",
                "device plant/t0 has no property \"humidity\" in its model",
            ),
            (
                "plant",
                "t0",
                "interval",
                "fast",
                "device plant/t0 property interval: \"fast\" is not a INT",
            ),
            (
                "plant",
                "t0",
                "alarm",
                "on",
                "device plant/t0 property alarm: \"on\" is not a BOOLEAN",
            ),
        ] {
            let err = catalog.check_twin(ns, dev, prop, &[value]).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
        let (no_model, _) = Catalog::build([DEVICE], []);
        assert_eq!(
            no_model
                .check_twin("plant", "t0", "interval", &["1"])
                .unwrap_err()
                .to_string(),
            "device plant/t0: its DeviceModel thermo has not reached this node yet"
        );
    }

    #[test]
    fn objects_that_do_not_parse_are_named_not_fatal() {
        let (catalog, skipped) = Catalog::build(
            ["not json", r#"{"metadata":{"name":"x"},"spec":{}}"#, DEVICE],
            [r#"{"spec":{}}"#, MODEL],
        );
        assert_eq!(catalog.devices.len(), 1);
        assert_eq!(catalog.models.len(), 1);
        assert_eq!(skipped.len(), 3, "{skipped:?}");
    }
}
