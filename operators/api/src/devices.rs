//! `DeviceModel` and `Device` (devices.kubeedge.io/v1beta1), field-compatible with KubeEdge v1.22.
//!
//! A KubeEdge v1.22 manifest applies unchanged: the JSON field names, nesting and types below are
//! KubeEdge's (`staging/src/github.com/kubeedge/api/apis/devices/v1beta1/device_model_types.go`,
//! `device_instance_types.go`), status included, as in v1.22 (v1.23 moved it to a `DeviceStatus`
//! CRD). Every field KubeEdge leaves optional is an `Option` here and is skipped when absent, so
//! reading and writing an object back never invents a field.
//!
//! edgefleet adds only optional status fields KubeEdge clients ignore: `observedGeneration`,
//! `conditions` (`Valid`, `TwinSynced`, `Online`), `propertySync` (per-property sync state) and
//! `syncedProperties` (`x/y`, for `kubectl get`).
//!
//! The schema rejects what is wrong within one object: unknown property types and access modes,
//! duplicate property or method names, `minimum` above `maximum`, negative cycles, a Device
//! without a model reference. Checks that need two objects (a Device property missing from its
//! model, a desired value on a property the model marks `ReadOnly`) are the device controller's:
//! it reports them in the `Valid` condition.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Rule;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group both kinds live in (KubeEdge's).
pub const GROUP: &str = "devices.kubeedge.io";
/// The API version both kinds are served and stored as.
pub const VERSION: &str = "v1beta1";

/// Condition type: the Device is consistent with its DeviceModel (the model exists, every device
/// property is declared by the model, no desired value on a `ReadOnly` property).
pub const CONDITION_VALID: &str = "Valid";
/// Condition type: every property's reported value matches its desired value (see `propertySync`).
pub const CONDITION_TWIN_SYNCED: &str = "TwinSynced";
/// Condition type: the device's node holds a live session and the mapper reports the device online.
pub const CONDITION_ONLINE: &str = "Online";

/// A free-form JSON object whose content belongs to a protocol mapper (`configData`).
pub type ConfigData = serde_json::Map<String, serde_json::Value>;

/// Schema for a free-form object: the API server keeps every field in it as given.
fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A number as KubeEdge writes `minimum` / `maximum` (a string): optional sign, digits, optional
/// fraction, optional exponent. CEL's `double()` only runs on strings that match it, so a bound
/// that is not a plain number never fails the min/max rule.
const NUMBER_PATTERN: &str = "^[-+]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][-+]?[0-9]+)?$";

/// Message of the `minimum <= maximum` rule on a DeviceModel property.
pub const MIN_MAX_MESSAGE: &str = "minimum must not be greater than maximum";

/// The CEL rule comparing `minimum` and `maximum` of a model property when both are numbers.
fn min_max_rule() -> Rule {
    Rule::new(format!(
        "!has(self.minimum) || !has(self.maximum) || !self.minimum.matches('{NUMBER_PATTERN}') \
         || !self.maximum.matches('{NUMBER_PATTERN}') \
         || double(self.minimum) <= double(self.maximum)"
    ))
    .message(MIN_MAX_MESSAGE)
    .field_path(".minimum")
}

// ---------------------------------------------------------------------------------------------
// DeviceModel
// ---------------------------------------------------------------------------------------------

/// A DeviceModel describes a kind of device: the properties it exposes (type, access mode,
/// bounds, unit), the protocol it speaks, and defaults for how every Device of this model is
/// accessed (protocol config and per-property visitors, which a Device may override).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "devices.kubeedge.io",
    version = "v1beta1",
    kind = "DeviceModel",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    shortname = "dm",
    category = "kubeedge",
    doc = "DeviceModel is the template of a kind of device: its properties, protocol and default access settings (KubeEdge v1.22 compatible).",
    printcolumn = r#"{"name": "Protocol", "type": "string", "jsonPath": ".spec.protocol"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceModelSpec {
    /// The properties a device of this model exposes, for example temperature or a switch.
    /// Property names are unique within the model; at most 4096 properties (a bound the API
    /// server needs to budget the per-property CEL rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub properties: Option<Vec<ModelProperty>>,

    /// Name of the protocol devices of this model speak (for example `modbus`); the mapper
    /// registered for this protocol on the edge node serves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,

    /// Default protocol configuration for every Device of this model (free-form, read by the
    /// mapper). A Device's `spec.protocol.configData` overrides it key by key. KubeEdge v1.22+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub protocol_config_data: Option<ConfigData>,
}

/// One property of a device model, such as temperature or humidity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = min_max_rule())]
#[serde(rename_all = "camelCase")]
pub struct ModelProperty {
    /// Name of the property, unique within the model. Devices refer to it by this name. To use
    /// the mapper's built-in stream processing, name it `saveFrame` or `saveVideo`.
    pub name: String,

    /// Human-readable description of the property.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,

    /// Data type of the property's value: INT, FLOAT, DOUBLE, STRING, BOOLEAN, BYTES or STREAM.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<PropertyType>,

    /// Whether the property can be written from the cloud (`ReadWrite`) or only read (`ReadOnly`).
    /// Devices must not set a desired value on a `ReadOnly` property.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<PropertyAccessMode>,

    /// Lowest valid value, as a string (KubeEdge's type). When both bounds are plain numbers,
    /// `minimum` must not be greater than `maximum`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub minimum: Option<String>,

    /// Highest valid value, as a string (KubeEdge's type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub maximum: Option<String>,

    /// Unit of the value, for example `Celsius`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,

    /// Default visitor (how the mapper reads / writes this property) for every Device of this
    /// model; a Device property's `visitors.configData` overrides it key by key. KubeEdge v1.22+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visitors: Option<VisitorConfig>,
}

/// Data type of a device property's value.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PropertyType {
    /// 64-bit signed integer.
    Int,
    /// 32-bit floating point number.
    Float,
    /// 64-bit floating point number.
    Double,
    /// Text.
    String,
    /// `true` or `false`.
    Boolean,
    /// Raw bytes.
    Bytes,
    /// A media stream (frames or video) processed by the mapper.
    Stream,
}

/// Whether a property can be written from the cloud.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PropertyAccessMode {
    /// The cloud may set a desired value; the mapper writes it to the device.
    ReadWrite,
    /// The device only reports the value; a desired value is not allowed.
    ReadOnly,
}

// ---------------------------------------------------------------------------------------------
// Device
// ---------------------------------------------------------------------------------------------

/// A Device is one physical device bound to an edge node: which model it is, how the node's
/// mapper reaches it, and the desired values of its writable properties.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "devices.kubeedge.io",
    version = "v1beta1",
    kind = "Device",
    namespaced,
    status = "DeviceStatus",
    derive = "PartialEq",
    derive = "Default",
    shortname = "dev",
    category = "kubeedge",
    doc = "Device is one device bound to an edge node: its model, protocol, desired property values and reported twin (KubeEdge v1.22 compatible).",
    selectable = ".spec.nodeName",
    selectable = ".spec.deviceModelRef.name",
    printcolumn = r#"{"name": "Model", "type": "string", "jsonPath": ".spec.deviceModelRef.name"}"#,
    printcolumn = r#"{"name": "Node", "type": "string", "jsonPath": ".spec.nodeName"}"#,
    printcolumn = r#"{"name": "State", "type": "string", "jsonPath": ".status.state"}"#,
    printcolumn = r#"{"name": "Valid", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Valid\")].status", "description": "Whether the device is consistent with its model"}"#,
    printcolumn = r#"{"name": "Synced", "type": "string", "jsonPath": ".status.syncedProperties", "description": "Properties whose reported value matches the desired one, of those with a desired value"}"#,
    printcolumn = r#"{"name": "Online", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Online\")].status", "description": "Reported online and the node's edge session up"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    /// The DeviceModel (in the same namespace) this device is an instance of. Required.
    pub device_model_ref: DeviceModelRef,

    /// The edge node the device is attached to; its mapper serves the device. Changing it moves
    /// the device: it is removed from the old node and added to the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,

    /// The device's properties: how each is accessed and, for writable ones, the desired value.
    /// Property names are unique within the device and should be declared by the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub properties: Option<Vec<DeviceProperty>>,

    /// How the mapper connects to the device (protocol name and protocol configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProtocolConfig>,

    /// Operations the device offers, each controlling one or more properties. Method names are
    /// unique within the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub methods: Option<Vec<DeviceMethod>>,

    /// How the mapper reports the device's state (KubeEdge v1.23; accepted so newer manifests
    /// apply too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_report: Option<StateReport>,
}

/// Reference to the DeviceModel a Device instantiates.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct DeviceModelRef {
    /// Name of a DeviceModel in the Device's namespace.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// How the mapper connects to a device.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolConfig {
    /// Name of the protocol, matching the mapper that serves it (for example `modbus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_name: Option<String>,

    /// Protocol configuration (free-form, read by the mapper), for example a Modbus slave ID,
    /// address and port. Overrides the model's `protocolConfigData` key by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub config_data: Option<ConfigData>,
}

/// One property of a device: how the mapper reaches it, how often it is collected and
/// reported, where the values are pushed, and (for writable properties) the desired value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceProperty {
    /// Name of the property, unique within the device; it should be declared by the model.
    /// To use the mapper's built-in stream processing, name it `saveFrame` or `saveVideo`.
    pub name: String,

    /// The value the cloud wants the property to have; the mapper writes it to the device.
    /// Only for properties the model marks `ReadWrite`: the model lives in another object, so
    /// the API server cannot check this; the device controller reports a desired value on a
    /// `ReadOnly` property in the `Valid` condition. KubeEdge's Go clients write
    /// `desired: {value: ""}` for "no desired value".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<TwinProperty>,

    /// How the mapper reads / writes this property (protocol-specific, for example a Modbus
    /// register and offset). Overrides the model property's `visitors` key by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visitors: Option<VisitorConfig>,

    /// How often the mapper reports the value, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub report_cycle: Option<i64>,

    /// How often the mapper reads the value from the device, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub collect_cycle: Option<i64>,

    /// Whether the mapper reports the value to the cloud (into `status.twins`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_to_cloud: Option<bool>,

    /// Where the mapper also pushes collected values (HTTP, MQTT, OpenTelemetry, a database).
    /// The mapper must be able to reach the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_method: Option<PushMethod>,
}

/// A method the device offers: an operation controlling one or more of its properties.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceMethod {
    /// Name of the method, unique within the device.
    pub name: String,

    /// Human-readable description of the method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,

    /// The device properties this method controls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property_names: Option<Vec<String>>,
}

/// How the mapper reaches one property: the protocol and its protocol-specific settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VisitorConfig {
    /// Name of the protocol, matching the device's protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_name: Option<String>,

    /// Protocol-specific access settings (free-form, read by the mapper), for example
    /// `register`, `offset`, `limit`, `scale`, `dataType`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub config_data: Option<ConfigData>,
}

/// A value of a twin property with its metadata.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct TwinProperty {
    /// The value, as a string whatever the property's type. Required.
    pub value: String,

    /// Additional metadata, for example the `timestamp` (milliseconds) at which the value was
    /// reported and its `type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Where the mapper pushes a property's collected values, besides reporting them to the cloud.
/// More than one destination may be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushMethod {
    /// Push to an HTTP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<PushMethodHttp>,

    /// Publish to an MQTT broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<PushMethodMqtt>,

    /// Export as OpenTelemetry metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otel: Option<PushMethodOtel>,

    /// Write to a database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_method: Option<DbMethodConfig>,

    /// Settings for the mapper's anomaly detection (free-form; KubeEdge v1.23, accepted so
    /// newer manifests apply too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub anomaly_detection: Option<ConfigData>,
}

/// Push collected values to an HTTP endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushMethodHttp {
    /// Host name or address of the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,

    /// TCP port of the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,

    /// Path of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_path: Option<String>,

    /// Request timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}

/// Publish collected values to an MQTT broker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PushMethodMqtt {
    /// Broker address, for example `tcp://127.0.0.1:1883`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,

    /// Topic to publish to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,

    /// MQTT quality of service of the publish: 0, 1 or 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2))]
    pub qos: Option<i32>,

    /// Whether the broker retains the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained: Option<bool>,
}

/// Export collected values as OpenTelemetry metrics.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PushMethodOtel {
    /// Endpoint the exporter connects to, for example `https://localhost:4318/v1/metrics`.
    #[serde(
        rename = "endpointURL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub endpoint_url: Option<String>,
}

/// Write collected values to a database. Field names are KubeEdge's, including their case.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct DbMethodConfig {
    /// InfluxDB v2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub influxdb2: Option<DbMethodInfluxdb2>,

    /// Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<DbMethodRedis>,

    /// TDengine.
    #[serde(rename = "TDEngine", default, skip_serializing_if = "Option::is_none")]
    pub tdengine: Option<DbMethodTdEngine>,

    /// MySQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mysql: Option<DbMethodMysql>,

    /// KaiwuDB (KubeEdge v1.23; accepted so newer manifests apply too).
    #[serde(rename = "Kwdb", default, skip_serializing_if = "Option::is_none")]
    pub kwdb: Option<DbMethodKwdb>,
}

/// Write collected values to InfluxDB v2.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DbMethodInfluxdb2 {
    /// Where the database is and which bucket to write to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub influxdb2_client_config: Option<Influxdb2ClientConfig>,

    /// How values are written (measurement, tags, field key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub influxdb2_data_config: Option<Influxdb2DataConfig>,
}

/// Connection settings of an InfluxDB v2 database.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Influxdb2ClientConfig {
    /// URL of the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// Organization of the writing user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,

    /// Bucket to write to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
}

/// How values are written to InfluxDB v2.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Influxdb2DataConfig {
    /// Measurement name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<String>,

    /// Tags added to every point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<BTreeMap<String, String>>,

    /// Field key the value is written under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_key: Option<String>,
}

/// Write collected values to Redis.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DbMethodRedis {
    /// Connection settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_client_config: Option<RedisClientConfig>,
}

/// Connection settings of a Redis database.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisClientConfig {
    /// Address, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,

    /// Database number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<i64>,

    /// Connection pool size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poolsize: Option<i64>,

    /// Minimum number of idle connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_idle_conns: Option<i64>,
}

/// Write collected values to TDengine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct DbMethodTdEngine {
    /// Connection settings.
    #[serde(
        rename = "TDEngineClientConfig",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tdengine_client_config: Option<TdEngineClientConfig>,
}

/// Connection settings of a TDengine (or KaiwuDB) database.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TdEngineClientConfig {
    /// Address, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,

    /// Database name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_name: Option<String>,
}

/// Write collected values to MySQL.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DbMethodMysql {
    /// Connection settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mysql_client_config: Option<MysqlClientConfig>,
}

/// Connection settings of a MySQL database.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MysqlClientConfig {
    /// Address, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,

    /// Database name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,

    /// User name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
}

/// Write collected values to KaiwuDB (KubeEdge v1.23).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct DbMethodKwdb {
    /// Connection settings.
    #[serde(
        rename = "KWDBClientConfig",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub kwdb_client_config: Option<TdEngineClientConfig>,
}

/// How the mapper reports the device's state (KubeEdge v1.23).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateReport {
    /// Whether the state is reported to the cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_to_cloud: Option<bool>,

    /// How often the state is reported, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub report_cycle: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// Device status
// ---------------------------------------------------------------------------------------------

/// What the edge reports about a device (KubeEdge's fields) and how far the twin is in sync
/// (edgefleet's optional fields, which KubeEdge clients ignore).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// The device twin: per property, the value last reported by the device and the desired
    /// value the mapper last received. Written from the edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twins: Option<Vec<Twin>>,

    /// State of the device as the mapper reports it, for example `online` or `offline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,

    /// When the device was last online, as the mapper reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_online_time: Option<String>,

    /// Whether the mapper reports the device's state to the cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_to_cloud: Option<bool>,

    /// How often the mapper reports the device's state, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub report_cycle: Option<i64>,

    /// The `metadata.generation` the device controller last acted on (edgefleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,

    /// Conditions of the device (edgefleet): `Valid` (consistent with its model), `TwinSynced`
    /// (every reported value matches its desired value), `Online`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Option<Vec<Condition>>,

    /// `<in sync>/<with a desired value>` properties, for `kubectl get` (edgefleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_properties: Option<String>,

    /// Sync state of each property that has a desired value (edgefleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["propertyName".into()]))]
    pub property_sync: Option<Vec<PropertySyncStatus>>,
}

/// The twin of one property: reported value and the desired value the mapper last received.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Twin {
    /// Name of the property (as in the model and the device's `spec.properties`).
    pub property_name: String,

    /// The value the device last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<TwinProperty>,

    /// The desired value the mapper received in its current cycle, to check that the mapper is
    /// up to date. Written only from the edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_desired: Option<TwinProperty>,
}

/// Sync state of one property's desired value (edgefleet).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PropertySyncStatus {
    /// Name of the property.
    pub property_name: String,

    /// InSync, Pending, Drifted or Stale.
    pub state: PropertySyncState,

    /// When `state` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_time: Option<Time>,

    /// Why the property is in this state, for a human.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where one property's desired value stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PropertySyncState {
    /// The device reports the desired value.
    InSync,
    /// The desired value changed and has not reached the device yet.
    Pending,
    /// The device reached the desired value once but now reports another one.
    Drifted,
    /// No report has come from the edge for longer than the property's report cycle allows.
    Stale,
}

impl Device {
    /// The node the device is bound to, if any (an empty `nodeName` counts as none).
    pub fn node_name(&self) -> Option<&str> {
        self.spec.node_name.as_deref().filter(|n| !n.is_empty())
    }

    /// The device's property named `name`, if declared.
    pub fn property(&self, name: &str) -> Option<&DeviceProperty> {
        self.spec
            .properties
            .as_deref()?
            .iter()
            .find(|p| p.name == name)
    }
}

impl DeviceModel {
    /// The model's property named `name`, if declared.
    pub fn property(&self, name: &str) -> Option<&ModelProperty> {
        self.spec
            .properties
            .as_deref()?
            .iter()
            .find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    const KUBEEDGE_DEVICE: &str = include_str!("../../../e2e/testdata/kubeedge/device.yaml");
    const KUBEEDGE_MODEL: &str = include_str!("../../../e2e/testdata/kubeedge/devicemodel.yaml");
    const KUBEEDGE_MODBUS_DEVICE: &str =
        include_str!("../../../e2e/testdata/kubeedge/device-modbus.yaml");
    const KUBEEDGE_MODBUS_MODEL: &str =
        include_str!("../../../e2e/testdata/kubeedge/devicemodel-modbus.yaml");
    const SAMPLE_DEVICE: &str = include_str!("../../../config/samples/devices_device.yaml");
    const SAMPLE_MODEL: &str = include_str!("../../../config/samples/devices_devicemodel.yaml");

    fn schema_of(
        crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    ) -> Value {
        let version = &crd.spec.versions[0];
        serde_json::to_value(
            version
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap()
    }

    /// Walks a schema and fails on anything a structural schema forbids or that kube's
    /// rewriting might leave behind.
    fn assert_structural(path: &str, s: &Value) {
        let obj = s
            .as_object()
            .unwrap_or_else(|| panic!("{path}: schema is not an object"));
        for banned in [
            "$ref",
            "oneOf",
            "anyOf",
            "allOf",
            "not",
            "definitions",
            "$defs",
        ] {
            assert!(!obj.contains_key(banned), "{path}: has {banned}: {s}");
        }
        let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
        let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
        assert!(
            obj.contains_key("type") || int_or_string,
            "{path}: no type: {s}"
        );
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                assert_structural(&format!("{path}.{k}"), v);
            }
        }
        if let Some(items) = obj.get("items") {
            assert_structural(&format!("{path}[]"), items);
        }
        if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
            assert_structural(&format!("{path}{{}}"), extra);
        }
        if obj.get("type") == Some(&json!("object")) && !preserve {
            assert!(
                obj.contains_key("properties") || obj.contains_key("additionalProperties"),
                "{path}: object without properties must preserve unknown fields: {s}"
            );
        }
    }

    fn rules(schema: &Value) -> Vec<(String, String)> {
        fn walk(s: &Value, out: &mut Vec<(String, String)>) {
            match s {
                Value::Object(m) => {
                    if let Some(Value::Array(rs)) = m.get("x-kubernetes-validations") {
                        for r in rs {
                            out.push((
                                r["rule"].as_str().unwrap_or_default().to_string(),
                                r["message"].as_str().unwrap_or_default().to_string(),
                            ));
                        }
                    }
                    m.values().for_each(|v| walk(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut out = vec![];
        walk(schema, &mut out);
        out
    }

    #[test]
    fn device_model_crd_carries_the_validation() {
        let crd = DeviceModel::crd();
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.versions[0].name, VERSION);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert!(
            crd.spec.versions[0].subresources.is_none(),
            "KubeEdge's DeviceModel has no status"
        );
        let schema = schema_of(&crd);
        assert_structural("DeviceModel", &schema);

        let props = &schema["properties"]["spec"]["properties"]["properties"];
        assert_eq!(props["x-kubernetes-list-type"], "map");
        assert_eq!(props["x-kubernetes-list-map-keys"], json!(["name"]));
        // Without these bounds the API server refuses the CRD: the per-property CEL rule's
        // estimated cost exceeds its budget (checked against kube-apiserver 1.34).
        assert_eq!(props["maxItems"], 4096);
        assert_eq!(props["items"]["properties"]["minimum"]["maxLength"], 64);
        assert_eq!(props["items"]["properties"]["maximum"]["maxLength"], 64);
        let columns: Vec<_> = crd.spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Protocol", "Age"]);
        let item = &props["items"];
        assert_eq!(item["required"], json!(["name"]));
        assert_eq!(
            item["properties"]["type"]["enum"],
            json!([
                "INT", "FLOAT", "DOUBLE", "STRING", "BOOLEAN", "BYTES", "STREAM"
            ])
        );
        assert_eq!(
            item["properties"]["accessMode"]["enum"],
            json!(["ReadWrite", "ReadOnly"])
        );
        let rules = rules(&schema);
        assert!(
            rules.iter().any(|(r, m)| m == MIN_MAX_MESSAGE
                && r.contains("double(self.minimum) <= double(self.maximum)")),
            "{rules:?}"
        );
        assert_eq!(
            schema["properties"]["spec"]["properties"]["protocolConfigData"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
    }

    #[test]
    fn device_crd_carries_the_validation() {
        let crd = Device::crd();
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            ["Model", "Node", "State", "Valid", "Synced", "Online", "Age"]
        );
        let schema = schema_of(&crd);
        assert_structural("Device", &schema);

        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["required"], json!(["deviceModelRef"]));
        assert_eq!(
            spec["properties"]["deviceModelRef"]["required"],
            json!(["name"])
        );
        assert_eq!(
            spec["properties"]["deviceModelRef"]["properties"]["name"]["minLength"],
            1
        );
        for list in ["properties", "methods"] {
            assert_eq!(
                spec["properties"][list]["x-kubernetes-list-type"], "map",
                "{list}"
            );
            assert_eq!(
                spec["properties"][list]["x-kubernetes-list-map-keys"],
                json!(["name"])
            );
        }
        let property = &spec["properties"]["properties"]["items"]["properties"];
        assert_eq!(property["reportCycle"]["minimum"], 0.0);
        assert_eq!(property["collectCycle"]["minimum"], 0.0);
        assert_eq!(
            property["visitors"]["properties"]["configData"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
        assert_eq!(property["desired"]["required"], json!(["value"]));

        let status = &schema["properties"]["status"]["properties"];
        assert_eq!(
            status["conditions"]["x-kubernetes-list-map-keys"],
            json!(["type"])
        );
        assert_eq!(
            status["propertySync"]["items"]["properties"]["state"]["enum"],
            json!(["InSync", "Pending", "Drifted", "Stale"])
        );
        // nodeName stays mutable: moving a device to another node is allowed.
        assert!(rules(&schema).iter().all(|(r, _)| !r.contains("oldSelf")));
    }

    /// A KubeEdge manifest reads into the types and writes back without losing or adding fields.
    fn assert_round_trip<K>(manifest: &str)
    where
        K: serde::de::DeserializeOwned + Serialize,
    {
        let original: Value = serde_yaml::from_str(manifest).unwrap();
        let typed: K = serde_json::from_value(original.clone()).unwrap();
        let back = serde_json::to_value(&typed).unwrap();
        for part in ["spec", "status"] {
            assert_eq!(
                back.get(part),
                original.get(part),
                "{part} differs after a round trip"
            );
        }
        assert_eq!(back["metadata"]["name"], original["metadata"]["name"]);
    }

    #[test]
    fn kubeedge_manifests_round_trip() {
        assert_round_trip::<Device>(KUBEEDGE_DEVICE);
        assert_round_trip::<DeviceModel>(KUBEEDGE_MODEL);
        assert_round_trip::<Device>(KUBEEDGE_MODBUS_DEVICE);
        assert_round_trip::<DeviceModel>(KUBEEDGE_MODBUS_MODEL);
        assert_round_trip::<Device>(SAMPLE_DEVICE);
        assert_round_trip::<DeviceModel>(SAMPLE_MODEL);
    }

    #[test]
    fn kubeedge_device_reads_as_expected() {
        let device: Device = serde_yaml::from_str(KUBEEDGE_DEVICE).unwrap();
        assert_eq!(device.spec.device_model_ref.name, "random-01");
        assert_eq!(device.node_name(), Some("edge-node"));
        let int = device.property("random-int").unwrap();
        let push = int.push_method.as_ref().unwrap();
        assert_eq!(
            push.mqtt.as_ref().unwrap().topic.as_deref(),
            Some("random-int")
        );
        let influx = push.db_method.as_ref().unwrap().influxdb2.as_ref().unwrap();
        assert_eq!(
            influx
                .influxdb2_client_config
                .as_ref()
                .unwrap()
                .bucket
                .as_deref(),
            Some("test-bucket")
        );
        let twins = device.status.as_ref().unwrap().twins.as_ref().unwrap();
        assert_eq!(twins[0].reported.as_ref().unwrap().value, "100");

        let model: DeviceModel = serde_yaml::from_str(KUBEEDGE_MODEL).unwrap();
        let float = model.property("random-float").unwrap();
        assert_eq!(float.type_, Some(PropertyType::Float));
        assert_eq!(float.access_mode, Some(PropertyAccessMode::ReadOnly));
    }

    #[test]
    fn samples_bind_a_temperature_sensor_to_edge_0000() {
        let device: Device = serde_yaml::from_str(SAMPLE_DEVICE).unwrap();
        let model: DeviceModel = serde_yaml::from_str(SAMPLE_MODEL).unwrap();
        assert_eq!(device.node_name(), Some("edge-0000"));
        assert_eq!(
            device.spec.device_model_ref.name,
            model.metadata.name.clone().unwrap()
        );
        assert!(device.metadata.namespace.is_none() && model.metadata.namespace.is_none());
        for property in device.spec.properties.as_deref().unwrap() {
            let declared = model.property(&property.name).unwrap();
            if property.desired.is_some() {
                assert_eq!(declared.access_mode, Some(PropertyAccessMode::ReadWrite));
            }
        }
    }

    #[test]
    fn our_status_fields_are_optional_and_skipped() {
        let status = DeviceStatus::default();
        assert_eq!(serde_json::to_value(&status).unwrap(), json!({}));
        let status = DeviceStatus {
            property_sync: Some(vec![PropertySyncStatus {
                property_name: "temperature".into(),
                state: PropertySyncState::Drifted,
                last_change_time: None,
                message: None,
            }]),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            json!({"propertySync": [{"propertyName": "temperature", "state": "Drifted"}]})
        );
    }
}
