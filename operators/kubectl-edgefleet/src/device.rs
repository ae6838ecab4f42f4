//! `device status DEVICE`: desired vs reported per property, the device's state and the sync
//! state of each property, from the Device alone (spec, and the status the hub and the device
//! operator write).

use edgefleet_api::devices::{Device, PropertySyncState};
use jiff::Timestamp;
use kube::api::Api;
use serde::Serialize;

use crate::cli::{DeviceArgs, Output};
use crate::error::Result;
use crate::kube_ctx::Ctx;
use crate::table::{age, render};
use crate::{exit, out, serialize};

const RESOURCE: &str = "devices.devices.kubeedge.io";
const SINGULAR: &str = "device";

/// One property as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PropertyRow {
    pub name: String,
    pub desired: Option<String>,
    /// The desired value the mapper last acknowledged.
    pub observed_desired: Option<String>,
    pub reported: Option<String>,
    /// When the reported value was read (ms since the epoch, from its metadata).
    pub reported_at_ms: Option<i64>,
    pub sync: Option<PropertySyncState>,
    pub sync_message: Option<String>,
}

/// The whole view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceView {
    pub name: String,
    pub namespace: String,
    pub node: Option<String>,
    pub model: String,
    pub state: Option<String>,
    pub last_online_time: Option<String>,
    /// `type=status (reason)` of each condition.
    pub conditions: Vec<String>,
    pub properties: Vec<PropertyRow>,
}

/// The view of a Device (pure).
pub fn view(d: &Device) -> DeviceView {
    let status = d.status.as_ref();
    let twins = status.and_then(|s| s.twins.as_deref()).unwrap_or_default();
    let sync = status
        .and_then(|s| s.property_sync.as_deref())
        .unwrap_or_default();
    let mut names: Vec<String> = d
        .spec
        .properties
        .iter()
        .flatten()
        .map(|p| p.name.clone())
        .collect();
    // Reported twins the spec does not declare are shown too (they point at a mismatch).
    for t in twins {
        if !names.contains(&t.property_name) {
            names.push(t.property_name.clone());
        }
    }
    let properties = names
        .into_iter()
        .map(|name| {
            let desired = d
                .spec
                .properties
                .iter()
                .flatten()
                .find(|p| p.name == name)
                .and_then(|p| p.desired.as_ref())
                .map(|v| v.value.clone())
                .filter(|v| !v.is_empty());
            let twin = twins.iter().find(|t| t.property_name == name);
            let reported = twin.and_then(|t| t.reported.as_ref());
            let s = sync.iter().find(|s| s.property_name == name);
            PropertyRow {
                desired,
                observed_desired: twin
                    .and_then(|t| t.observed_desired.as_ref())
                    .map(|v| v.value.clone()),
                reported: reported.map(|r| r.value.clone()),
                reported_at_ms: reported
                    .and_then(|r| r.metadata.as_ref())
                    .and_then(|m| m.get("timestamp"))
                    .and_then(|t| t.parse().ok()),
                sync: s.map(|s| s.state),
                sync_message: s.and_then(|s| s.message.clone()),
                name,
            }
        })
        .collect();
    DeviceView {
        name: d.metadata.name.clone().unwrap_or_default(),
        namespace: d.metadata.namespace.clone().unwrap_or_default(),
        node: d.node_name().map(str::to_string),
        model: d.spec.device_model_ref.name.clone(),
        state: status.and_then(|s| s.state.clone()),
        last_online_time: status.and_then(|s| s.last_online_time.clone()),
        conditions: status
            .and_then(|s| s.conditions.as_ref())
            .map(|c| {
                c.iter()
                    .map(|c| format!("{}={} ({})", c.type_, c.status, c.reason))
                    .collect()
            })
            .unwrap_or_default(),
        properties,
    }
}

fn dash(v: Option<&str>) -> String {
    v.map_or_else(|| "-".to_string(), str::to_string)
}

/// The table (pure).
pub fn render_view(v: &DeviceView, now: Timestamp) -> String {
    let mut text = format!(
        "Device:      {}/{}\nNode:        {}\nModel:       {}\nState:       {}\nLast online: {}\nConditions:  {}\n\n",
        v.namespace,
        v.name,
        dash(v.node.as_deref()),
        v.model,
        dash(v.state.as_deref()),
        dash(v.last_online_time.as_deref()),
        if v.conditions.is_empty() {
            "-".to_string()
        } else {
            v.conditions.join(", ")
        },
    );
    let rows: Vec<Vec<String>> = v
        .properties
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                dash(p.desired.as_deref()),
                dash(p.observed_desired.as_deref()),
                dash(p.reported.as_deref()),
                p.reported_at_ms
                    .and_then(|ms| Timestamp::from_millisecond(ms).ok())
                    .map_or_else(|| "-".to_string(), |t| age(Some(t), now)),
                p.sync.map_or_else(|| "-".to_string(), |s| format!("{s:?}")),
            ]
        })
        .collect();
    text.push_str(&render(
        &[
            "PROPERTY",
            "DESIRED",
            "MAPPER HAS",
            "REPORTED",
            "REPORTED AGO",
            "SYNC",
        ],
        &rows,
    ));
    text
}

pub async fn run(ctx: &Ctx, args: DeviceArgs) -> Result<u8> {
    let api: Api<Device> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let d = api.get(&args.device).await.map_err(|e| {
        ctx.request(
            "get",
            RESOURCE,
            SINGULAR,
            Some(&args.device),
            Some(&ctx.namespace),
        )
        .error(e)
    })?;
    let v = view(&d);
    match args.output {
        Output::Table => out(&render_view(&v, Timestamp::now()))?,
        format => out(&serialize(&v, format)?)?,
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn desired_against_reported_per_property() {
        let d: Device = serde_json::from_value(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
            "metadata": {"name": "thermo", "namespace": "plant"},
            "spec": {"deviceModelRef": {"name": "thermo-model"}, "nodeName": "edge-1",
                     "properties": [{"name": "setpoint", "desired": {"value": "22"}},
                                    {"name": "temp", "desired": {"value": ""}}]},
            "status": {
                "state": "online", "lastOnlineTime": "2026-01-01T00:00:00Z",
                "twins": [
                    {"propertyName": "setpoint", "reported": {"value": "21", "metadata": {"timestamp": "1767225590000"}},
                     "observedDesired": {"value": "22"}},
                    {"propertyName": "humidity", "reported": {"value": "40"}}],
                "propertySync": [{"propertyName": "setpoint", "state": "Drifted", "message": "desired 22, reported 21"}],
                "conditions": [{"type": "TwinSynced", "status": "False", "reason": "Drifted", "message": "m",
                                "lastTransitionTime": "2026-01-01T00:00:00Z"}]
            }
        }))
        .unwrap();
        let v = view(&d);
        assert_eq!(v.node.as_deref(), Some("edge-1"));
        assert_eq!(v.conditions, vec!["TwinSynced=False (Drifted)".to_string()]);
        let names: Vec<&str> = v.properties.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["setpoint", "temp", "humidity"]);
        let sp = &v.properties[0];
        assert_eq!(sp.desired.as_deref(), Some("22"));
        assert_eq!(sp.reported.as_deref(), Some("21"));
        assert_eq!(sp.sync, Some(PropertySyncState::Drifted));
        assert_eq!(v.properties[1].desired, None, "an empty desired is none");
        let now = Timestamp::from_millisecond(1_767_225_600_000).unwrap();
        let text = render_view(&v, now);
        assert!(text.contains("State:       online"), "{text}");
        let line = text.lines().find(|l| l.starts_with("setpoint")).unwrap();
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells, ["setpoint", "22", "22", "21", "10s", "Drifted"]);
        let line = text.lines().find(|l| l.starts_with("humidity")).unwrap();
        assert!(line.contains("40"), "{line}");
    }
}
