//! Is a Device consistent with its DeviceModel? (pure)
//!
//! What needs only the Device or only the model (property types and access modes, duplicate
//! names, `minimum <= maximum`, a model reference) is the CRD schema's job and never reaches
//! here. This module checks what needs both objects, in this order, and reports every problem
//! found (the `Valid` condition's reason is the first one's):
//!
//! | reason | when |
//! |---|---|
//! | `ModelNotFound` | no DeviceModel of that name in the Device's namespace |
//! | `ProtocolMismatch` | the Device's `protocol.protocolName` (or a property visitor's) differs from the model's `protocol` |
//! | `UnknownProperty` | a Device property the model does not declare |
//! | `ReadOnlyProperty` | a desired value on a property the model marks `ReadOnly` |
//! | `InvalidValue` | a desired value that does not parse as the model property's type |
//! | `OutOfRange` | a numeric desired value below `minimum` or above `maximum` |
//!
//! Values, per type (a desired value `""` means "no desired value", as KubeEdge's Go clients
//! write it, and is never checked):
//! - `INT`: a 64-bit signed integer (`-12`, `+7`).
//! - `FLOAT`, `DOUBLE`: a finite number (`21.5`, `1e3`); FLOAT must fit a 32-bit float.
//! - `BOOLEAN`: what Go's `strconv.ParseBool` accepts (`true`, `false`, `1`, `0`, `t`, `F`,
//!   `TRUE`, `False`, ...), since mapper-framework mappers parse it so.
//! - `STRING`, `BYTES`: any string (mapper-framework hands BYTES to the driver as the string's
//!   bytes; no encoding is imposed).
//! - `STREAM`: no desired value at all (a stream property is a frame/video sink the mapper
//!   drives, there is nothing to set).
//! - no `type` in the model: any string.
//!
//! `minimum` / `maximum` are checked for INT, FLOAT and DOUBLE only, and only when the bound
//! itself is a number (the schema lets other strings through, as KubeEdge does).

use edgefleet_api::devices::{
    Device, DeviceModel, DeviceProperty, ModelProperty, PropertyAccessMode, PropertyType,
};

/// One reason a Device is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

/// The outcome of validating one Device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validity {
    Valid,
    Invalid(Vec<Problem>),
}

/// Condition reason of a valid Device.
pub const REASON_VALID: &str = "Valid";
pub const REASON_MODEL_NOT_FOUND: &str = "ModelNotFound";
pub const REASON_PROTOCOL_MISMATCH: &str = "ProtocolMismatch";
pub const REASON_UNKNOWN_PROPERTY: &str = "UnknownProperty";
pub const REASON_READ_ONLY: &str = "ReadOnlyProperty";
pub const REASON_INVALID_VALUE: &str = "InvalidValue";
pub const REASON_OUT_OF_RANGE: &str = "OutOfRange";

impl Validity {
    pub fn is_valid(&self) -> bool {
        matches!(self, Validity::Valid)
    }

    /// `(reason, message)` of the `Valid` condition.
    pub fn reason_and_message(&self, model: &str) -> (&'static str, String) {
        match self {
            Validity::Valid => (REASON_VALID, format!("consistent with DeviceModel {model}")),
            Validity::Invalid(problems) => {
                let reason = problems.first().map_or(REASON_VALID, |p| p.reason);
                let message = problems
                    .iter()
                    .map(|p| p.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                (reason, message)
            }
        }
    }
}

/// Validates `device` against `model` (`None`: the model does not exist).
pub fn validate(device: &Device, model: Option<&DeviceModel>) -> Validity {
    let model_name = &device.spec.device_model_ref.name;
    let Some(model) = model else {
        return Validity::Invalid(vec![Problem {
            reason: REASON_MODEL_NOT_FOUND,
            message: format!("DeviceModel {model_name} not found in the device's namespace"),
        }]);
    };
    let mut problems = Vec::new();
    let model_protocol = model.spec.protocol.as_deref().filter(|p| !p.is_empty());
    let device_protocol = device
        .spec
        .protocol
        .as_ref()
        .and_then(|p| p.protocol_name.as_deref())
        .filter(|p| !p.is_empty());
    if let (Some(m), Some(d)) = (model_protocol, device_protocol)
        && m != d
    {
        problems.push(Problem {
            reason: REASON_PROTOCOL_MISMATCH,
            message: format!("protocol {d:?} differs from DeviceModel {model_name}'s {m:?}"),
        });
    }
    let expected_protocol = device_protocol.or(model_protocol);
    for property in device.spec.properties.iter().flatten() {
        let visitor_protocol = property
            .visitors
            .as_ref()
            .and_then(|v| v.protocol_name.as_deref())
            .filter(|p| !p.is_empty());
        if let (Some(v), Some(e)) = (visitor_protocol, expected_protocol)
            && v != e
        {
            problems.push(Problem {
                reason: REASON_PROTOCOL_MISMATCH,
                message: format!(
                    "property {}: visitor protocol {v:?} differs from the device's {e:?}",
                    property.name
                ),
            });
        }
        match model.property(&property.name) {
            None => problems.push(Problem {
                reason: REASON_UNKNOWN_PROPERTY,
                message: format!(
                    "property {} is not declared by DeviceModel {model_name}",
                    property.name
                ),
            }),
            Some(declared) => {
                if let Some(problem) = check_desired(property, declared) {
                    problems.push(problem);
                }
            }
        }
    }
    if problems.is_empty() {
        Validity::Valid
    } else {
        Validity::Invalid(problems)
    }
}

/// The desired value of one property (`None`: none, or `""`).
pub fn desired_value(property: &DeviceProperty) -> Option<&str> {
    property
        .desired
        .as_ref()
        .map(|d| d.value.as_str())
        .filter(|v| !v.is_empty())
}

fn check_desired(property: &DeviceProperty, declared: &ModelProperty) -> Option<Problem> {
    let value = desired_value(property)?;
    let name = &property.name;
    if declared.access_mode == Some(PropertyAccessMode::ReadOnly) {
        return Some(Problem {
            reason: REASON_READ_ONLY,
            message: format!("property {name} is ReadOnly in the model: it takes no desired value"),
        });
    }
    let type_ = declared.type_?;
    let number = match parse_value(type_, value) {
        Ok(number) => number,
        Err(expected) => {
            return Some(Problem {
                reason: REASON_INVALID_VALUE,
                message: format!("property {name}: desired value {value:?} is not {expected}"),
            });
        }
    };
    let number = number?;
    let bound = |b: &Option<String>| b.as_deref().and_then(|b| b.trim().parse::<f64>().ok());
    if let Some(min) = bound(&declared.minimum)
        && number < min
    {
        return Some(Problem {
            reason: REASON_OUT_OF_RANGE,
            message: format!("property {name}: desired value {value} is below the minimum {min}"),
        });
    }
    if let Some(max) = bound(&declared.maximum)
        && number > max
    {
        return Some(Problem {
            reason: REASON_OUT_OF_RANGE,
            message: format!("property {name}: desired value {value} is above the maximum {max}"),
        });
    }
    None
}

/// Parses `value` as `type_`: `Ok(Some(n))` for a number (to check bounds), `Ok(None)` for a
/// valid non-number, `Err(what was expected)`.
pub fn parse_value(type_: PropertyType, value: &str) -> Result<Option<f64>, &'static str> {
    match type_ {
        PropertyType::Int => value
            .parse::<i64>()
            .map(|n| Some(n as f64))
            .map_err(|_| "an INT (64-bit integer)"),
        PropertyType::Float => match value.parse::<f32>() {
            Ok(n) if n.is_finite() => Ok(Some(f64::from(n))),
            _ => Err("a FLOAT (finite 32-bit number)"),
        },
        PropertyType::Double => match value.parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(Some(n)),
            _ => Err("a DOUBLE (finite number)"),
        },
        PropertyType::Boolean => match value {
            "1" | "t" | "T" | "TRUE" | "true" | "True" | "0" | "f" | "F" | "FALSE" | "false"
            | "False" => Ok(None),
            _ => Err("a BOOLEAN (true or false)"),
        },
        PropertyType::String | PropertyType::Bytes => Ok(None),
        PropertyType::Stream => Err("allowed: a STREAM property takes no desired value"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn model(properties: serde_json::Value) -> DeviceModel {
        serde_json::from_value(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
            "metadata": {"name": "thermo", "namespace": "ns"},
            "spec": {"protocol": "modbus", "properties": properties},
        }))
        .unwrap()
    }

    fn device(protocol: &str, properties: serde_json::Value) -> Device {
        serde_json::from_value(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
            "metadata": {"name": "d", "namespace": "ns"},
            "spec": {
                "deviceModelRef": {"name": "thermo"},
                "nodeName": "edge-0000",
                "protocol": {"protocolName": protocol},
                "properties": properties,
            },
        }))
        .unwrap()
    }

    fn prop(name: &str, type_: &str, access: &str) -> serde_json::Value {
        json!({"name": name, "type": type_, "accessMode": access, "minimum": "-10", "maximum": "100"})
    }

    fn desired(name: &str, value: &str) -> serde_json::Value {
        json!({"name": name, "desired": {"value": value}})
    }

    fn the_model() -> DeviceModel {
        model(json!([
            prop("int", "INT", "ReadWrite"),
            prop("float", "FLOAT", "ReadWrite"),
            prop("double", "DOUBLE", "ReadWrite"),
            prop("string", "STRING", "ReadWrite"),
            prop("bool", "BOOLEAN", "ReadWrite"),
            prop("bytes", "BYTES", "ReadWrite"),
            prop("stream", "STREAM", "ReadWrite"),
            prop("temperature", "INT", "ReadOnly"),
            {"name": "untyped"},
        ]))
    }

    #[test]
    fn validation_table() {
        use Validity::Valid;
        let invalid = |reason: &'static str, message: &str| {
            Validity::Invalid(vec![Problem {
                reason,
                message: message.to_owned(),
            }])
        };
        let cases: Vec<(&str, &str, serde_json::Value, Validity)> = vec![
            ("int ok", "modbus", json!([desired("int", "42")]), Valid),
            ("int signed", "modbus", json!([desired("int", "-7")]), Valid),
            (
                "float ok",
                "modbus",
                json!([desired("float", "21.5")]),
                Valid,
            ),
            (
                "double exp",
                "modbus",
                json!([desired("double", "1e1")]),
                Valid,
            ),
            (
                "string any",
                "modbus",
                json!([desired("string", "x y")]),
                Valid,
            ),
            ("bool go", "modbus", json!([desired("bool", "T")]), Valid),
            (
                "bytes any",
                "modbus",
                json!([desired("bytes", "\u{1}ab")]),
                Valid,
            ),
            (
                "untyped any",
                "modbus",
                json!([desired("untyped", "?")]),
                Valid,
            ),
            (
                "empty desired on ro",
                "modbus",
                json!([desired("temperature", "")]),
                Valid,
            ),
            (
                "no desired on ro",
                "modbus",
                json!([{"name": "temperature"}]),
                Valid,
            ),
            (
                "no device protocol",
                "",
                json!([desired("int", "1")]),
                Valid,
            ),
            (
                "int not a number",
                "modbus",
                json!([desired("int", "4.5")]),
                invalid(
                    REASON_INVALID_VALUE,
                    "property int: desired value \"4.5\" is not an INT (64-bit integer)",
                ),
            ),
            (
                "float overflow",
                "modbus",
                json!([desired("float", "1e40")]),
                invalid(
                    REASON_INVALID_VALUE,
                    "property float: desired value \"1e40\" is not a FLOAT (finite 32-bit number)",
                ),
            ),
            (
                "double nan",
                "modbus",
                json!([desired("double", "NaN")]),
                invalid(
                    REASON_INVALID_VALUE,
                    "property double: desired value \"NaN\" is not a DOUBLE (finite number)",
                ),
            ),
            (
                "bool yes",
                "modbus",
                json!([desired("bool", "yes")]),
                invalid(
                    REASON_INVALID_VALUE,
                    "property bool: desired value \"yes\" is not a BOOLEAN (true or false)",
                ),
            ),
            (
                "stream value",
                "modbus",
                json!([desired("stream", "x")]),
                invalid(
                    REASON_INVALID_VALUE,
                    "property stream: desired value \"x\" is not allowed: a STREAM property takes no desired value",
                ),
            ),
            (
                "below min",
                "modbus",
                json!([desired("int", "-11")]),
                invalid(
                    REASON_OUT_OF_RANGE,
                    "property int: desired value -11 is below the minimum -10",
                ),
            ),
            (
                "above max",
                "modbus",
                json!([desired("double", "100.5")]),
                invalid(
                    REASON_OUT_OF_RANGE,
                    "property double: desired value 100.5 is above the maximum 100",
                ),
            ),
            (
                "read only",
                "modbus",
                json!([desired("temperature", "5")]),
                invalid(
                    REASON_READ_ONLY,
                    "property temperature is ReadOnly in the model: it takes no desired value",
                ),
            ),
            (
                "unknown property",
                "modbus",
                json!([{"name": "humidity"}]),
                invalid(
                    REASON_UNKNOWN_PROPERTY,
                    "property humidity is not declared by DeviceModel thermo",
                ),
            ),
            (
                "protocol mismatch",
                "opcua",
                json!([]),
                invalid(
                    REASON_PROTOCOL_MISMATCH,
                    "protocol \"opcua\" differs from DeviceModel thermo's \"modbus\"",
                ),
            ),
            (
                "visitor protocol mismatch",
                "modbus",
                json!([{"name": "int", "visitors": {"protocolName": "bluetooth"}}]),
                invalid(
                    REASON_PROTOCOL_MISMATCH,
                    "property int: visitor protocol \"bluetooth\" differs from the device's \"modbus\"",
                ),
            ),
        ];
        let model = the_model();
        for (name, protocol, properties, expected) in cases {
            let got = validate(&device(protocol, properties), Some(&model));
            assert_eq!(got, expected, "case {name}");
        }
    }

    #[test]
    fn every_problem_is_reported_and_the_first_names_the_reason() {
        let got = validate(
            &device("modbus", json!([{"name": "humidity"}, desired("int", "x")])),
            Some(&the_model()),
        );
        let (reason, message) = got.reason_and_message("thermo");
        assert_eq!(reason, REASON_UNKNOWN_PROPERTY);
        assert_eq!(
            message,
            "property humidity is not declared by DeviceModel thermo; property int: desired value \"x\" is not an INT (64-bit integer)"
        );
    }

    #[test]
    fn a_missing_model_is_reported() {
        let got = validate(&device("modbus", json!([])), None);
        assert_eq!(
            got.reason_and_message("thermo"),
            (
                REASON_MODEL_NOT_FOUND,
                "DeviceModel thermo not found in the device's namespace".to_owned()
            )
        );
        assert_eq!(
            Validity::Valid.reason_and_message("thermo"),
            (
                REASON_VALID,
                "consistent with DeviceModel thermo".to_owned()
            )
        );
    }

    #[test]
    fn non_numeric_bounds_are_ignored() {
        let model = model(json!([{"name": "int", "type": "INT", "minimum": "low"}]));
        assert_eq!(
            validate(
                &device("modbus", json!([desired("int", "-99")])),
                Some(&model)
            ),
            Validity::Valid
        );
    }
}
