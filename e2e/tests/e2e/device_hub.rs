//! Device reports through the hub (issue 12, the cloud side): a real WebSocket edge client (the
//! hub tests' client) sends KubeEdge-shaped twin and state reports (`device/<ns>/<name>/twin/
//! edge_updated`, `.../state/update`) and the real API server holds the result. Also: a Device
//! is resent to its node on spec changes only, never on a status write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use edgefleet_api::devices::Device;
use edgefleet_api::objectsync::{ObjectSync, content_version, sync_name};
use edgefleet_channel::Message;
use edgefleet_channel::device::{
    BaseMessage, DeviceRoute, DeviceState, DeviceStateUpdate, DeviceTopic, DeviceTwinUpdate,
    MsgTwin, TwinValue, TwinVersion, TypeMetadata, ValueMetadata, report,
};
use edgefleet_e2e::edge::{http_get, metrics};
use edgefleet_e2e::{TestNamespace, client, install_crds, wait_for};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::hub::{Edge, Got, Hub, Session, acked, cleanup_nodes, node_name, object_sync, token_of};

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A twin report of one property, as edgecore sends it.
fn twin(ns: &str, dev: &str, prop: &str, value: &str, version: i64, ts: i64) -> Message {
    let update = DeviceTwinUpdate {
        base: BaseMessage {
            event_id: format!("{dev}-{prop}-{version}"),
            timestamp: ts,
        },
        twin: [(
            prop.to_string(),
            MsgTwin {
                expected: Some(TwinValue {
                    value: Some("20".into()),
                    metadata: Some(ValueMetadata { timestamp: ts }),
                }),
                actual: Some(TwinValue {
                    value: Some(value.into()),
                    metadata: Some(ValueMetadata { timestamp: ts }),
                }),
                metadata: Some(TypeMetadata {
                    type_: "int".into(),
                }),
                actual_version: Some(TwinVersion {
                    cloud: 0,
                    edge: version,
                }),
                ..Default::default()
            },
        )]
        .into(),
    };
    report(
        &DeviceRoute::new(ns, dev, DeviceTopic::TwinEdgeUpdated),
        serde_json::to_value(update).unwrap(),
    )
}

fn state(ns: &str, dev: &str, s: &str, last_online: &str) -> Message {
    let update = DeviceStateUpdate {
        base: BaseMessage {
            event_id: format!("{dev}-state"),
            timestamp: now_ms(),
        },
        device: DeviceState {
            name: dev.into(),
            state: s.into(),
            last_online_time: last_online.into(),
        },
    };
    report(
        &DeviceRoute::new(ns, dev, DeviceTopic::StateUpdate),
        serde_json::to_value(update).unwrap(),
    )
}

/// Sends every message, then collects their answers (by `parent_msg_id`), within `timeout`.
async fn ask_all(s: &mut Session, msgs: &[Message], timeout: Duration) -> Result<Vec<Message>> {
    for m in msgs {
        s.send(m).await?;
    }
    let mut answers: HashMap<String, Message> = HashMap::new();
    let deadline = Instant::now() + timeout;
    while answers.len() < msgs.len() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .with_context(|| format!("{} of {} answers", answers.len(), msgs.len()))?;
        match s.next(left).await {
            Some(Got::Msg(m)) if msgs.iter().any(|q| q.header.id == m.header.parent_id) => {
                answers.insert(m.header.parent_id.clone(), *m);
            }
            Some(Got::Msg(_)) => {}
            other => bail!("waiting for answers: {other:?}"),
        }
    }
    Ok(msgs
        .iter()
        .filter_map(|m| answers.remove(&m.header.id))
        .collect())
}

async fn ask(s: &mut Session, msg: &Message) -> Result<Message> {
    Ok(
        ask_all(s, std::slice::from_ref(msg), Duration::from_secs(30))
            .await?
            .remove(0),
    )
}

fn assert_ok(answer: &Message) {
    assert_eq!(answer.route.operation, "response", "{:?}", answer.content);
    assert_eq!(answer.route.group, "twin");
    assert_eq!(answer.content, json!("OK"));
}

async fn device(client: &Client, ns: &str, name: &str, node: &str) -> Result<Device> {
    let api: Api<Device> = Api::namespaced(client.clone(), ns);
    let d: Device = serde_json::from_value(json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": name},
        "spec": {"deviceModelRef": {"name": "thermo"}, "nodeName": node,
                 "properties": [{"name": "temp", "desired": {"value": "20"}}, {"name": "mode"}]},
    }))?;
    Ok(api.create(&PostParams::default(), &d).await?)
}

fn reported(
    d: &Device,
    prop: &str,
) -> Option<(String, std::collections::BTreeMap<String, String>)> {
    d.status
        .as_ref()?
        .twins
        .as_ref()?
        .iter()
        .find(|t| t.property_name == prop)?
        .reported
        .as_ref()
        .map(|r| (r.value.clone(), r.metadata.clone().unwrap_or_default()))
}

fn metric(addr: &str, name: &str) -> f64 {
    metrics(addr, "edgefleet_hub_device")
        .unwrap()
        .get(name)
        .copied()
        .unwrap_or(0.0)
}

/// Twin and state reports → `status.twins` (KubeEdge shape), `state`, `lastOnlineTime`;
/// a burst of reports → at most one write per flush; an unchanged value → no write; an older
/// report resent after a newer one → no flip-back; an undeclared property → condition;
/// another node's device and a malformed report → refused, the session unharmed.
#[tokio::test]
async fn device_reports_coalesced_ordered_and_bound_to_their_node() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "devhub").await.unwrap();
    let hub = Hub::start(&ns.name, &["--device-flush-ms=2000"])
        .await
        .unwrap();
    let maddr = hub.op.metrics_addr().await.unwrap().to_string();
    let edge = Edge::new(&client, &hub).await.unwrap();
    let token = token_of(&client).await.unwrap();
    let (a, b) = (node_name(&ns, "a"), node_name(&ns, "b"));
    let id_a = edge.bootstrap(&a, &token).await.unwrap();
    let mut sa = edge.connect(&id_a, &a).await.unwrap();
    device(&client, &ns.name, "thermo-a", &a).await.unwrap();
    device(&client, &ns.name, "thermo-b", &b).await.unwrap();
    let devices: Api<Device> = ns.api();

    // First reports: twin and state, answered "OK" as cloudcore does, once written.
    let t0 = now_ms();
    let answers = ask_all(
        &mut sa,
        &[
            twin(&ns.name, "thermo-a", "temp", "21", 1, t0),
            state(&ns.name, "thermo-a", "online", "2026-01-01T00:00:00Z"),
        ],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    answers.iter().for_each(assert_ok);
    let d = devices.get("thermo-a").await.unwrap();
    let (value, meta) = reported(&d, "temp").expect("temp reported");
    assert_eq!(value, "21");
    assert_eq!(meta["timestamp"], t0.to_string());
    assert_eq!(meta["type"], "int");
    let st = d.status.as_ref().unwrap();
    assert_eq!(st.state.as_deref(), Some("online"));
    assert_eq!(st.last_online_time.as_deref(), Some("2026-01-01T00:00:00Z"));
    let twin0 = &st.twins.as_ref().unwrap()[0];
    assert_eq!(twin0.observed_desired.as_ref().unwrap().value, "20");
    // Written by the hub's own field manager, apart from the operator's.
    assert!(
        d.managed_fields()
            .iter()
            .any(|m| m.manager.as_deref() == Some("edgefleet-hub")
                && m.operation.as_deref() == Some("Apply")),
        "{:?}",
        d.managed_fields()
    );

    // A burst of 20 reports: every one answered, at most 2 writes (a 2 s flush), newest wins.
    let ok_writes = "edgefleet_hub_device_status_writes_total{result=\"ok\"}";
    let before = metric(&maddr, ok_writes);
    let t1 = now_ms();
    let burst: Vec<Message> = (2..22)
        .map(|v| {
            twin(
                &ns.name,
                "thermo-a",
                "temp",
                &format!("{}", 100 + v),
                v,
                t1 + v,
            )
        })
        .collect();
    let answers = ask_all(&mut sa, &burst, Duration::from_secs(30))
        .await
        .unwrap();
    answers.iter().for_each(assert_ok);
    let writes = metric(&maddr, ok_writes) - before;
    assert!(
        (1.0..=2.0).contains(&writes),
        "20 reports → {writes} writes"
    );
    let d = devices.get("thermo-a").await.unwrap();
    assert_eq!(reported(&d, "temp").unwrap().0, "121");

    // From here the hub merges into the answer to its own last write: no read per report.
    let api_bases = "edgefleet_hub_device_status_bases_total{source=\"api\"}";
    let reads_before = metric(&maddr, api_bases);

    // The same value again (a fresh timestamp, within the refresh period): no write at all.
    let before = metric(&maddr, ok_writes);
    let rv = d.resource_version();
    assert_ok(
        &ask(
            &mut sa,
            &twin(&ns.name, "thermo-a", "temp", "121", 22, now_ms()),
        )
        .await
        .unwrap(),
    );
    assert_eq!(metric(&maddr, ok_writes), before, "unchanged value written");
    assert_eq!(
        devices.get("thermo-a").await.unwrap().resource_version(),
        rv
    );

    // An older report resent after the newer ones (KubeEdge #4437): answered, never written.
    let older = "edgefleet_hub_device_older_reports_total{at=\"status\"}";
    let before_older = metric(&maddr, older);
    assert_ok(
        &ask(
            &mut sa,
            &twin(&ns.name, "thermo-a", "temp", "105", 5, t1 + 5),
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        reported(&devices.get("thermo-a").await.unwrap(), "temp")
            .unwrap()
            .0,
        "121",
        "the value flipped back"
    );
    assert!(metric(&maddr, older) > before_older);
    // ...and an older state either.
    assert_ok(
        &ask(
            &mut sa,
            &state(&ns.name, "thermo-a", "offline", "2025-06-01T00:00:00Z"),
        )
        .await
        .unwrap(),
    );
    let st = devices.get("thermo-a").await.unwrap().status.unwrap();
    assert_eq!(st.state.as_deref(), Some("online"));
    assert_eq!(
        metric(&maddr, api_bases),
        reads_before,
        "a report read the Device the hub had just written"
    );

    // Another replica wrote a newer value meanwhile (the node's session moved and back): the
    // hub's base is stale, its apply refused (409), the Device read and merged again — the
    // other replica's newer value stays.
    let mut d = devices.get("thermo-a").await.unwrap();
    let twins = d.status.as_mut().unwrap().twins.as_mut().unwrap();
    let newest = twins[0].reported.as_mut().unwrap();
    newest.value = "999".into();
    let meta = newest.metadata.get_or_insert_default();
    meta.insert("version".into(), "50".into());
    meta.insert("timestamp".into(), (t1 + 50).to_string());
    let other = json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": "thermo-a", "namespace": ns.name},
        "status": {"twins": d.status.as_ref().unwrap().twins},
    });
    devices
        .patch_status(
            "thermo-a",
            &PatchParams::apply("e2e-other-replica").force(),
            &Patch::Apply(&other),
        )
        .await
        .unwrap();
    let conflicts = "edgefleet_hub_device_status_writes_total{result=\"conflict\"}";
    let conflicts_before = metric(&maddr, conflicts);
    assert_ok(
        &ask(
            &mut sa,
            &twin(&ns.name, "thermo-a", "temp", "123", 23, t1 + 23),
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        reported(&devices.get("thermo-a").await.unwrap(), "temp")
            .unwrap()
            .0,
        "999",
        "a stale base overwrote another replica's newer value"
    );
    assert!(metric(&maddr, conflicts) > conflicts_before);
    assert!(metric(&maddr, api_bases) > reads_before);

    // A property the Device does not declare: not written, named in a condition, counted.
    assert_ok(
        &ask(
            &mut sa,
            &twin(&ns.name, "thermo-a", "humidity", "40", 1, now_ms()),
        )
        .await
        .unwrap(),
    );
    let d = devices.get("thermo-a").await.unwrap();
    assert!(reported(&d, "humidity").is_none());
    let cond = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "UnknownReportedProperty"))
        .cloned()
        .expect("UnknownReportedProperty condition");
    assert_eq!(cond.status, "True");
    assert!(cond.message.ends_with(": humidity"), "{}", cond.message);
    assert!(
        metric(
            &maddr,
            &format!(
                "edgefleet_hub_device_unknown_properties_total{{namespace=\"{}\"}}",
                ns.name
            )
        ) >= 1.0
    );

    // Another node's device: refused with the reason, nothing written, the session goes on.
    let reply = ask(
        &mut sa,
        &twin(&ns.name, "thermo-b", "temp", "99", 1, now_ms()),
    )
    .await
    .unwrap();
    assert_eq!(reply.route.operation, "error");
    assert!(
        reply
            .content
            .as_str()
            .unwrap()
            .contains("not bound to node"),
        "{:?}",
        reply.content
    );
    assert!(
        devices
            .get("thermo-b")
            .await
            .unwrap()
            .status
            .and_then(|s| s.twins)
            .is_none()
    );
    assert!(
        metric(
            &maddr,
            "edgefleet_hub_device_reports_total{result=\"forbidden\",topic=\"twin\"}"
        ) >= 1.0
    );
    // Malformed content and a cloud-only topic: refused, the session still served.
    let mut bad = twin(&ns.name, "thermo-a", "temp", "1", 1, 1);
    bad.content = json!({"twin": {"temp": {"actual": {"value": 5}}}});
    assert_eq!(ask(&mut sa, &bad).await.unwrap().route.operation, "error");
    let mut cloud = twin(&ns.name, "thermo-a", "temp", "1", 1, 1);
    cloud.route.resource = format!("device/{}/thermo-a/twin/cloud_updated", ns.name);
    assert_eq!(ask(&mut sa, &cloud).await.unwrap().route.operation, "error");
    sa.alive().await.unwrap();
    assert_ok(
        &ask(
            &mut sa,
            &twin(&ns.name, "thermo-a", "mode", "eco", 1, now_ms()),
        )
        .await
        .unwrap(),
    );

    // `kubectl edgefleet device status`: desired vs reported per property, state.
    let (code, table, _) = plugin(&["device", "status", "thermo-a", "-n", &ns.name]);
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("State:       online"), "{table}");
    let temp: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("temp "))
        .unwrap_or_else(|| panic!("{table}"))
        .split_whitespace()
        .collect();
    assert_eq!(&temp[..4], ["temp", "20", "20", "999"], "{table}");
    assert!(table.contains("UnknownReportedProperty=True"), "{table}");
    let (code, json_out, _) =
        plugin(&["device", "status", "thermo-a", "-n", &ns.name, "-o", "json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(v["properties"][1]["name"], "mode");
    assert_eq!(v["properties"][1]["reported"], "eco");
    let (code, _, err) = plugin(&["device", "status", "nope", "-n", &ns.name]);
    assert_eq!(code, 1);
    assert!(err.contains("nope"), "{err}");
    drop(hub);
    cleanup_nodes(&client, &[a, b]).await;
}

/// Runs the plugin binary: (exit code, stdout, stderr).
fn plugin(args: &[&str]) -> (i32, String, String) {
    let bin = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| edgefleet_e2e::repo_root().join("target"))
        .join("debug/kubectl-edgefleet");
    let out = std::process::Command::new(&bin)
        .args(args)
        .env("KUBECONFIG", edgefleet_e2e::kubeconfig_path())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build -p kubectl-edgefleet)", bin.display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A hub replica SIGKILLed with reports waiting for their write: they were never answered, so
/// the edge resends them after reconnecting (here to the restarted replica) and they land; an
/// older report resent afterwards changes nothing.
#[tokio::test]
async fn device_reports_survive_a_hub_killed_mid_stream() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "devhub-kill").await.unwrap();
    // A long flush: the kill lands while the reports wait on the board.
    let mut hub = Hub::start(&ns.name, &["--device-flush-ms=20000"])
        .await
        .unwrap();
    let edge = Edge::new(&client, &hub).await.unwrap();
    let token = token_of(&client).await.unwrap();
    let a = node_name(&ns, "a");
    let id_a = edge.bootstrap(&a, &token).await.unwrap();
    device(&client, &ns.name, "meter", &a).await.unwrap();
    let devices: Api<Device> = ns.api();
    let mut sa = edge.connect(&id_a, &a).await.unwrap();
    // The flusher's first tick is at start; wait for one report to be written so that the
    // next ones wait a full interval.
    let t0 = now_ms();
    assert_ok(
        &ask(&mut sa, &twin(&ns.name, "meter", "temp", "1", 1, t0))
            .await
            .unwrap(),
    );
    let stream: Vec<Message> = (2..12)
        .map(|v| twin(&ns.name, "meter", "temp", &format!("{v}"), v, t0 + v))
        .collect();
    for m in &stream {
        sa.send(m).await.unwrap();
    }
    // Nothing is answered before the write.
    assert!(
        !matches!(sa.next(Duration::from_millis(500)).await, Some(Got::Msg(m)) if m.header.parent_id == stream[0].header.id)
    );
    hub.op.kill();
    assert_eq!(
        reported(&devices.get("meter").await.unwrap(), "temp")
            .unwrap()
            .0,
        "1"
    );
    hub.restart().await.unwrap();
    // The edge reconnects and resends what got no answer.
    let mut sa = wait_for("a session again", Duration::from_secs(60), || async {
        Ok(edge.connect(&id_a, &a).await.ok())
    })
    .await
    .unwrap();
    let answers = ask_all(&mut sa, &stream, Duration::from_secs(60))
        .await
        .unwrap();
    answers.iter().for_each(assert_ok);
    assert_eq!(
        reported(&devices.get("meter").await.unwrap(), "temp")
            .unwrap()
            .0,
        "11"
    );
    // A stale resend after the newer value (the restarted replica has nothing in memory: it
    // orders against the stored version).
    assert_ok(
        &ask(&mut sa, &twin(&ns.name, "meter", "temp", "3", 3, t0 + 3))
            .await
            .unwrap(),
    );
    assert_eq!(
        reported(&devices.get("meter").await.unwrap(), "temp")
            .unwrap()
            .0,
        "11"
    );
    drop(hub);
    cleanup_nodes(&client, &[a]).await;
}

/// The operator's and the hub's status writes move a Device's resourceVersion. The edge must
/// not get the Device again for that, and the Device's ObjectSync must not be written (it used
/// to be, once per status write: the API server's busiest request under device load). The
/// sync's acked content version (generation, labels, annotations) says the node holds it — also
/// for a hub restarted after a status write it never saw. A spec change does reach the edge.
#[tokio::test]
async fn device_resent_on_spec_changes_only() {
    let client = client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::new(&client, "devhub-gen").await.unwrap();
    let mut hub = Hub::start(&ns.name, &["--device-flush-ms=500"])
        .await
        .unwrap();
    let edge = Edge::new(&client, &hub).await.unwrap();
    let token = token_of(&client).await.unwrap();
    let a = node_name(&ns, "a");
    let id_a = edge.bootstrap(&a, &token).await.unwrap();
    let d = device(&client, &ns.name, "valve", &a).await.unwrap();
    let uid = d.uid().unwrap();
    object_sync(&ns, &a, "Device", "valve", &uid).await.unwrap();
    let sync = sync_name(&a, &uid);
    let syncs: Api<ObjectSync> = ns.api();
    // Every acked version the sync's status ever shows, in order.
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let watch = {
        let seen = seen.clone();
        let config = watcher::Config::default().fields(&format!("metadata.name={sync}"));
        tokio::spawn(
            watcher(syncs.clone(), config)
                .applied_objects()
                .for_each(move |s| {
                    if let Some(rv) = s.ok().and_then(|s| s.status?.object_resource_version) {
                        let mut seen = seen.lock().unwrap();
                        if seen.last() != Some(&rv) {
                            seen.push(rv);
                        }
                    }
                    futures::future::ready(())
                }),
        )
    };
    let mut sa = edge.connect(&id_a, &a).await.unwrap();
    let resource = format!("{}/device/valve", ns.name);
    let first = sa.expect(&resource, Duration::from_secs(30)).await.unwrap();
    sa.ack(&first).await.unwrap();
    let rv0 = first.header.resource_version.clone();
    let content_of = |m: &Message| {
        let meta: ObjectMeta = serde_json::from_value(m.content["metadata"].clone()).unwrap();
        content_version(&meta).unwrap()
    };
    let c0 = content_of(&first);
    wait_for(
        "the first delivery acked with its content version",
        Duration::from_secs(30),
        || async {
            let st = syncs.get(&sync).await?.status.unwrap_or_default();
            Ok((st.object_resource_version.as_deref() == Some(rv0.as_str())
                && st.object_content_version.as_deref() == Some(c0.as_str()))
            .then_some(()))
        },
    )
    .await
    .unwrap();
    let devices: Api<Device> = ns.api();
    let operator_write = |synced: &'static str| {
        let devices = devices.clone();
        async move {
            devices
                .patch_status(
                    "valve",
                    &PatchParams::apply("edgefleet-device").force(),
                    &Patch::Apply(json!({
                        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
                        "status": {"syncedProperties": synced},
                    })),
                )
                .await
                .unwrap()
                .resource_version()
                .unwrap()
        }
    };

    // (what writes the status, how) — neither may bring the Device back to the edge.
    // 1. The operator's status write (its own field manager).
    let rv1 = operator_write("0/1").await;
    // 2. The hub's own write of a report.
    let reply = ask(&mut sa, &twin(&ns.name, "valve", "temp", "20", 1, now_ms()))
        .await
        .unwrap();
    assert_ok(&reply);
    let rv2 = devices
        .get("valve")
        .await
        .unwrap()
        .resource_version()
        .unwrap();
    assert_ne!(rv1, rv2);
    // Nothing for the Device within a second of both writes.
    let quiet = Instant::now() + Duration::from_secs(1);
    while let Some(left) = quiet.checked_duration_since(Instant::now()) {
        if let Some(Got::Msg(m)) = sa.next(left).await {
            assert_ne!(
                m.route.resource, resource,
                "the Device was resent after a status-only change: {m:?}"
            );
        }
    }
    // 3. A status write the hub never sees: it is down. Restarted, it has nothing in memory
    // but the ObjectSync, and must not resend the Device on the new session.
    hub.op.kill();
    operator_write("1/1").await;
    hub.restart().await.unwrap();
    // Ready = its lists are in: a resend would be decided by now (no race with the spec change
    // below superseding it in the queue).
    let probe = hub.op.metrics_addr().await.unwrap().to_string();
    wait_for(
        "the restarted hub ready",
        Duration::from_secs(60),
        || async { Ok(matches!(http_get(&probe, "/readyz"), Ok((200, _))).then_some(())) },
    )
    .await
    .unwrap();
    let mut sa = wait_for("a session again", Duration::from_secs(60), || async {
        Ok(edge.connect(&id_a, &a).await.ok())
    })
    .await
    .unwrap();
    // Whatever the new session is sent at its start is sent now; the next Device message must
    // be the spec change below.
    if let Some(Got::Msg(m)) = sa.next(Duration::from_secs(1)).await {
        assert_ne!(
            m.route.resource, resource,
            "the restarted hub resent the Device for a status write: {m:?}"
        );
    }
    // A spec change does reach the edge, and is the first the new session gets of the Device.
    devices
        .patch(
            "valve",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"properties": [
                {"name": "temp", "desired": {"value": "25"}}, {"name": "mode"}]}})),
        )
        .await
        .unwrap();
    let update = sa.expect(&resource, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        update.content.pointer("/spec/properties/0/desired/value"),
        Some(&Value::from("25")),
        "the first Device message after the restart is the spec change, not a status write: {update:?}"
    );
    sa.ack(&update).await.unwrap();
    let rv4 = update.header.resource_version.clone();
    let c4 = content_of(&update);
    assert_ne!(c0, c4, "a spec change moves the content version");
    wait_for("the update acked", Duration::from_secs(30), || async {
        Ok((acked(&ns, &sync).await?.as_deref() == Some(rv4.as_str())).then_some(()))
    })
    .await
    .unwrap();
    let st = syncs.get(&sync).await.unwrap().status.unwrap_or_default();
    assert_eq!(st.object_content_version.as_deref(), Some(c4.as_str()));
    // The sync was written for the two deliveries only, never for a status write.
    wait_for(
        "the watch to see the last ack",
        Duration::from_secs(30),
        || async { Ok((seen.lock().unwrap().last() == Some(&rv4)).then_some(())) },
    )
    .await
    .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![rv0, rv4]);
    watch.abort();
    drop(hub);
    cleanup_nodes(&client, &[a]).await;
}
