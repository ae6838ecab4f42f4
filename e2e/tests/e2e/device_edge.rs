//! The whole device path as a user runs it (issue 12): a KubeEdge DeviceModel and Device are
//! applied → the objectsync operator → 2 hub replicas → a real `edge-agent run` per node → DMI
//! over a unix socket → the test mapper (mapper-framework's behaviour); and back: the mapper's
//! reports → the agent's book → the hub → `Device.status` → the device operator's conditions.
//! Every process is the real binary, run as the chart's ServiceAccount where it talks to the API.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use edgefleet_api::devices::{Device, PropertySyncState};
use edgefleet_channel::device::{
    BaseMessage, DeviceRoute, DeviceTopic, DeviceTwinUpdate, MsgTwin, TwinValue, TwinVersion,
    TypeMetadata, ValueMetadata, report,
};
use edgefleet_e2e::edge::{HubProcess, metrics};
use edgefleet_e2e::mapper::TestMapper;
use edgefleet_e2e::operator::Operator;
use edgefleet_e2e::wait_for;
use edgefleet_e2e::{TestNamespace, apply_object, client, documents, install_crds, repo_root};
use edgefleet_edge_agent::dmi::proto;
use futures::StreamExt;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use crate::agent::{Bed, EdgeAgent, hub_flags, wait_ready};
use crate::hub::{Edge, Got, Identity, node_name};

const WAIT: Duration = Duration::from_secs(60);
const CYCLE: Duration = Duration::from_millis(200);
const DEVICE: &str = "temperature-instance";
const SWITCH: &str = "temperature-switch";
const TEMP: &str = "temperature";

/// One edge node: its agent (DMI socket in a short directory: a unix socket path has at most
/// 107 bytes) and the mapper connected to it.
struct Site {
    name: String,
    agent: EdgeAgent,
    mapper: TestMapper,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Site {
    async fn start(bed: &Bed, name: String, hubs: &[&HubProcess]) -> Result<Site> {
        let dir = tempfile::Builder::new().prefix("ef-dev").tempdir()?;
        let socket = dir.path().join("dmi.sock");
        let mut args = hub_flags(hubs);
        args.extend(bed.bootstrap_flags());
        args.push(format!("--dmi-socket={}", socket.display()));
        let agent = EdgeAgent::run(bed, &name, &args, &[])?;
        let mapper = mapper(dir.path(), &socket).await?;
        Ok(Site {
            name,
            agent,
            mapper,
            socket,
            _dir: dir,
        })
    }

    /// `edge-agent run` again on the same data dir and socket (no bootstrap: it has its
    /// certificate).
    fn restart_agent(&mut self, bed: &Bed, hubs: &[&HubProcess]) -> Result<()> {
        self.agent.kill();
        let mut args = hub_flags(hubs);
        args.push(format!("--dmi-socket={}", self.socket.display()));
        self.agent = EdgeAgent::run(bed, &self.name, &args, &[])?;
        Ok(())
    }

    fn identity(&self, bed: &Bed) -> Result<Identity> {
        let data = bed.dir.join(&self.name);
        Ok(Identity {
            cert: std::fs::read_to_string(data.join("node.crt"))?,
            key: std::fs::read_to_string(data.join("node.key"))?,
        })
    }

    fn called(&self, call: &str) -> bool {
        self.mapper.calls().iter().any(|c| c == call)
    }
}

/// The mapper registers once the agent serves its socket (a mapper-framework mapper retries).
async fn mapper(dir: &Path, socket: &Path) -> Result<TestMapper> {
    wait_for("the agent's DMI socket", WAIT, || async {
        Ok(TestMapper::start(dir, "modbus", socket, CYCLE).await.ok())
    })
    .await
}

/// KubeEdge's own example (kubeedge/examples temperature-sensor-demo), bound to `node`, with
/// `switch` desired; the temperature is the sensor's, never desired.
fn kubeedge_device(node: &str, switch: &str) -> Result<Value> {
    let path = repo_root().join("e2e/testdata/kubeedge/device-modbus.yaml");
    let mut device = documents(&std::fs::read_to_string(path)?)?
        .pop()
        .context("no Device in the file")?;
    device["spec"]["nodeName"] = json!(node);
    for p in device["spec"]["properties"]
        .as_array_mut()
        .context("no properties")?
    {
        if p["name"] == SWITCH {
            p["desired"] = json!({"value": switch});
        }
    }
    Ok(device)
}

fn twin<'a>(d: &'a Device, property: &str) -> Option<&'a edgefleet_api::devices::Twin> {
    d.status
        .as_ref()?
        .twins
        .as_ref()?
        .iter()
        .find(|t| t.property_name == property)
}

fn reported(d: &Device, property: &str) -> Option<String> {
    twin(d, property)?
        .reported
        .as_ref()
        .map(|r| r.value.clone())
}

/// `(status, reason)` of condition `type_`, when it is about the Device's current generation.
fn condition(d: &Device, type_: &str) -> Option<(String, String)> {
    let c = d
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)?;
    (c.observed_generation == d.metadata.generation).then(|| (c.status.clone(), c.reason.clone()))
}

fn sync_state(d: &Device, property: &str) -> Option<PropertySyncState> {
    d.status
        .as_ref()?
        .property_sync
        .as_ref()?
        .iter()
        .find(|p| p.property_name == property)
        .map(|p| p.state)
}

/// Waits until the Device satisfies `ok`; the error shows its last status.
async fn device_until(
    api: &Api<Device>,
    what: &str,
    ok: impl Fn(&Device) -> bool,
) -> Result<Device> {
    let last: Mutex<Option<Value>> = Mutex::new(None);
    let got = wait_for(what, WAIT, || async {
        let d = api.get(DEVICE).await?;
        if ok(&d) {
            return Ok(Some(d));
        }
        *last.lock().unwrap() = serde_json::to_value(&d.status).ok();
        Ok(None)
    })
    .await;
    got.with_context(|| format!("last status: {:?}", last.lock().unwrap()))
}

/// Every `temperature` value the API server held, in order, as a watch sees them: a value
/// older than one seen before is a flip-back.
fn watch_temperature(api: Api<Device>) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let config = watcher::Config::default().fields(&format!("metadata.name={DEVICE}"));
        let mut events = watcher(api, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(event) = events.next().await {
            let Ok(d) = event else { continue };
            if let Some(v) = reported(&d, TEMP) {
                let mut seen = out.lock().unwrap();
                if seen.last() != Some(&v) {
                    seen.push(v);
                }
            }
        }
    });
    (seen, task)
}

/// The values seen from the first `first` on (the history before it is another step's).
fn seen_from(seen: &Mutex<Vec<String>>, first: &str) -> Vec<String> {
    let seen = seen.lock().unwrap();
    let start = seen.iter().position(|v| v == first).unwrap_or(seen.len());
    seen[start..].to_vec()
}

/// A twin report for the Device's temperature, as an edge sends it.
fn temperature_report(ns: &str, value: &str, edge_version: i64) -> edgefleet_channel::Message {
    let ts = edgefleet_edge_agent::dmi::now_ms();
    let meta = Some(ValueMetadata { timestamp: ts });
    let update = DeviceTwinUpdate {
        base: BaseMessage {
            event_id: format!("replayed-{edge_version}"),
            timestamp: ts,
        },
        twin: [(
            TEMP.to_string(),
            MsgTwin {
                actual: Some(TwinValue {
                    value: Some(value.into()),
                    metadata: meta,
                }),
                metadata: Some(TypeMetadata {
                    type_: "float".into(),
                }),
                actual_version: Some(TwinVersion {
                    cloud: 0,
                    edge: edge_version,
                }),
                ..Default::default()
            },
        )]
        .into(),
    };
    report(
        &DeviceRoute::new(ns, DEVICE, DeviceTopic::TwinEdgeUpdated),
        serde_json::to_value(update).unwrap(),
    )
}

/// Sends `report` on a session of its own as `id` and returns the hub's answer.
async fn send_as(
    client: &Client,
    hub: &HubProcess,
    id: &Identity,
    node: &str,
    msg: &edgefleet_channel::Message,
) -> Result<edgefleet_channel::Message> {
    let edge = Edge::new(client, hub).await?;
    let mut session = edge.connect(id, node).await?;
    session.send(msg).await?;
    loop {
        match session.next(Duration::from_secs(30)).await {
            Some(Got::Msg(m)) if m.header.parent_id == msg.header.id => return Ok(*m),
            Some(Got::Msg(_)) => continue,
            other => anyhow::bail!("no answer to the report: {other:?}"),
        }
    }
}

/// Live sessions of a hub replica.
async fn sessions(hub: &HubProcess) -> Result<f64> {
    let addr = hub.op.metrics_addr().await?.to_string();
    Ok(metrics(&addr, "edgefleet_hub_sessions")?
        .get("edgefleet_hub_sessions")
        .copied()
        .unwrap_or(0.0))
}

/// a. apply → RegisterDevice with the desired values → reports → status and TwinSynced;
/// b. desired changed → UpdateDevice → InSync; c. moved to node B: RemoveDevice on A,
/// RegisterDevice on B, A's reports refused; d. B's link down while its mapper reports, then
/// back: the latest value wins, no flip-back on an older resend; e. the hub replica holding B
/// killed mid-stream: reports keep arriving, nothing lost or flipped.
#[tokio::test]
async fn device_edge_twin_round_trip_through_agents_and_hubs() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "devedge").await.unwrap();
    let _objectsync = Operator::start_with_args(
        "objectsync",
        &ns.name,
        &["--resend-window-seconds=5".to_string()],
    )
    .await
    .unwrap();
    let _device_op = Operator::start("device", &ns.name).await.unwrap();
    let flush = ["--device-flush-ms=500"];
    let mut hub1 = HubProcess::start(&ns.name, &flush).await.unwrap();
    let mut hub2 = HubProcess::start(&ns.name, &flush).await.unwrap();
    let bed = Bed::new(&client, &ns.name).await.unwrap();
    let mut a = Site::start(&bed, node_name(&ns, "a"), &[&hub1, &hub2])
        .await
        .unwrap();
    let mut b = Site::start(&bed, node_name(&ns, "b"), &[&hub1, &hub2])
        .await
        .unwrap();
    wait_ready(&client, &a.name).await.unwrap();
    wait_ready(&client, &b.name).await.unwrap();
    let devices: Api<Device> = ns.api();
    let key = format!("{}/{DEVICE}", ns.name);

    // a. The model and the device, as KubeEdge's example has them.
    let model_path = repo_root().join("e2e/testdata/kubeedge/devicemodel-modbus.yaml");
    let model = documents(&std::fs::read_to_string(model_path).unwrap()).unwrap();
    apply_object(&client, &model[0], Some(&ns.name))
        .await
        .unwrap();
    apply_object(
        &client,
        &kubeedge_device(&a.name, "1").unwrap(),
        Some(&ns.name),
    )
    .await
    .unwrap();
    wait_for("node A's mapper to get RegisterDevice", WAIT, || async {
        Ok(a.called(&format!("register {key}")).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(
        a.mapper.values(&ns.name, DEVICE).unwrap().get(SWITCH),
        Some(&"1".to_string()),
        "RegisterDevice carried the desired value"
    );
    let d = device_until(&devices, "reported twins, state and TwinSynced", |d| {
        let st = d.status.as_ref();
        reported(d, SWITCH).as_deref() == Some("1")
            && reported(d, TEMP).is_some()
            && twin(d, SWITCH)
                .and_then(|t| t.observed_desired.as_ref())
                .is_some_and(|o| o.value == "1")
            && st.and_then(|s| s.state.as_deref()) == Some("ok")
            && st.and_then(|s| s.last_online_time.as_deref()).is_some()
            && condition(d, "TwinSynced") == Some(("True".into(), "InSync".into()))
    })
    .await
    .unwrap();
    let meta = twin(&d, SWITCH)
        .and_then(|t| t.reported.as_ref())
        .and_then(|r| r.metadata.clone())
        .unwrap_or_default();
    assert!(meta.contains_key("timestamp"), "{meta:?}");
    // mapper-framework reports "ok" for a healthy device: that is online.
    device_until(&devices, "Online True", |d| {
        condition(d, "Online") == Some(("True".into(), "Online".into()))
    })
    .await
    .unwrap();

    // b. Desired changed: UpdateDevice, the hardware follows, the report comes back InSync.
    apply_object(
        &client,
        &kubeedge_device(&a.name, "0").unwrap(),
        Some(&ns.name),
    )
    .await
    .unwrap();
    wait_for(
        "node A's mapper to get UpdateDevice with 0",
        WAIT,
        || async {
            Ok((a.called(&format!("update {key}"))
                && a.mapper
                    .values(&ns.name, DEVICE)
                    .is_some_and(|v| v.get(SWITCH).map(String::as_str) == Some("0")))
            .then_some(()))
        },
    )
    .await
    .unwrap();
    device_until(&devices, "0 reported, InSync, TwinSynced", |d| {
        reported(d, SWITCH).as_deref() == Some("0")
            && sync_state(d, SWITCH) == Some(PropertySyncState::InSync)
            && condition(d, "TwinSynced") == Some(("True".into(), "InSync".into()))
    })
    .await
    .unwrap();

    // c. Moved to node B: removed from A's mapper, registered on B's; reports now come from B.
    apply_object(
        &client,
        &kubeedge_device(&b.name, "0").unwrap(),
        Some(&ns.name),
    )
    .await
    .unwrap();
    wait_for("RemoveDevice on A, RegisterDevice on B", WAIT, || async {
        Ok((a.called(&format!("remove {key}"))
            && a.mapper.values(&ns.name, DEVICE).is_none()
            && b.called(&format!("register {key}")))
        .then_some(()))
    })
    .await
    .unwrap();
    assert!(b.mapper.set_value(&ns.name, DEVICE, TEMP, "41.5"));
    device_until(&devices, "B's reading in status", |d| {
        reported(d, TEMP).as_deref() == Some("41.5")
            && condition(d, "TwinSynced") == Some(("True".into(), "InSync".into()))
    })
    .await
    .unwrap();
    // Node A's mapper still reporting it: its agent refuses (the device is no longer A's).
    let refused = a
        .mapper
        .agent(&a.socket)
        .unwrap()
        .report_device_status(proto::ReportDeviceStatusRequest {
            device_name: DEVICE.into(),
            device_namespace: ns.name.clone(),
            reported_device: Some(proto::DeviceStatus {
                twins: vec![proto::Twin {
                    property_name: TEMP.into(),
                    reported: Some(proto::TwinProperty {
                        value: "99.5".into(),
                        metadata: Default::default(),
                    }),
                    observed_desired: None,
                }],
                report_to_cloud: true,
                report_cycle: 0,
            }),
        })
        .await;
    assert!(refused.is_err(), "agent A took a report of B's device");
    // ...and node A itself, on a session of its own: the hub answers an error, not "OK".
    a.agent.kill();
    let answer = send_as(
        &client,
        &hub1,
        &a.identity(&bed).unwrap(),
        &a.name,
        &temperature_report(&ns.name, "99.5", i64::MAX / 2),
    )
    .await
    .unwrap();
    assert_eq!(answer.route.operation, "error", "{:?}", answer.content);
    assert_ne!(answer.content, json!("OK"));
    assert_eq!(
        reported(&devices.get(DEVICE).await.unwrap(), TEMP).as_deref(),
        Some("41.5")
    );

    // d. B's link down (both hubs gone) while its mapper reports 51.5, 52.5, 53.5; back.
    let (seen, watch) = watch_temperature(devices.clone());
    wait_for("the watch to see 41.5", WAIT, || async {
        Ok((seen.lock().unwrap().last().map(String::as_str) == Some("41.5")).then_some(()))
    })
    .await
    .unwrap();
    hub1.op.kill();
    hub2.op.kill();
    b.agent
        .wait_metric("sessions_up", "B's session to drop", |v| v == 0.0)
        .await
        .unwrap();
    for v in ["51.5", "52.5", "53.5"] {
        assert!(b.mapper.set_value(&ns.name, DEVICE, TEMP, v));
        wait_for(&format!("agent B to take {v} offline"), WAIT, || async {
            Ok((b.mapper.accepted(&ns.name, DEVICE, TEMP).as_deref() == Some(v)).then_some(()))
        })
        .await
        .unwrap();
    }
    hub1.restart().await.unwrap();
    hub2.restart().await.unwrap();
    // Judged on the watch, not a GET: a GET can see 53.5 before the watch has delivered it.
    wait_for(
        "the watch to see the latest offline value",
        WAIT,
        || async {
            Ok((seen.lock().unwrap().last().map(String::as_str) == Some("53.5")).then_some(()))
        },
    )
    .await
    .unwrap();
    let after = seen_from(&seen, "41.5");
    assert_eq!(
        after,
        vec!["41.5".to_string(), "53.5".to_string()],
        "the outage's reports were not coalesced to the latest"
    );
    // An older report resent after the newer one (KubeEdge #4437), by node B on a session of
    // its own while its agent is down: answered, never written.
    b.agent.kill();
    let answer = send_as(
        &client,
        &hub2,
        &b.identity(&bed).unwrap(),
        &b.name,
        &temperature_report(&ns.name, "51.5", 1),
    )
    .await
    .unwrap();
    assert_eq!(answer.content, json!("OK"), "{answer:?}");
    // The hub answers once the report is settled; the status has had its chance to flip.
    assert_eq!(
        reported(&devices.get(DEVICE).await.unwrap(), TEMP).as_deref(),
        Some("53.5"),
        "an older report flipped the value back"
    );
    b.restart_agent(&bed, &[&hub1, &hub2]).unwrap();
    b.agent
        .wait_metric("sessions_up", "B back", |v| v == 1.0)
        .await
        .unwrap();

    // e. The hub replica holding B's session killed while B's values keep changing.
    let holder_is_1 = wait_for("one replica to hold B's session", WAIT, || async {
        let (one, two) = (sessions(&hub1).await?, sessions(&hub2).await?);
        Ok((one + two == 1.0).then_some(one == 1.0))
    })
    .await
    .unwrap();
    let values: Vec<String> = (60..80).map(|i| format!("{i}.5")).collect();
    for (i, v) in values.iter().enumerate() {
        assert!(b.mapper.set_value(&ns.name, DEVICE, TEMP, v));
        wait_for(&format!("agent B to take {v}"), WAIT, || async {
            Ok(
                (b.mapper.accepted(&ns.name, DEVICE, TEMP).as_deref() == Some(v.as_str()))
                    .then_some(()),
            )
        })
        .await
        .unwrap();
        if i == 5 {
            if holder_is_1 {
                hub1.op.kill();
            } else {
                hub2.op.kill();
            }
        }
    }
    let last = values.last().unwrap().clone();
    device_until(&devices, "the last value after the hub died", |d| {
        reported(d, TEMP).as_deref() == Some(last.as_str())
    })
    .await
    .unwrap();
    let history = seen_from(&seen, "53.5");
    let numbers: Vec<f64> = history.iter().map(|v| v.parse().unwrap()).collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "a value flipped back: {history:?}"
    );
    assert!(history.iter().all(|v| v != "51.5"), "{history:?}");
    watch.abort();
}
