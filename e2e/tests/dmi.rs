//! The agent's DMI server with the test mapper: real gRPC over real unix sockets, the agent's
//! real SQLite stores, no cluster (the agent ↔ mapper half of the device path). Objects are put
//! into the agent's store exactly as the session's handler puts what the hub delivers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use edgefleet_channel::ResourceType;
use edgefleet_e2e::mapper::TestMapper;
use edgefleet_e2e::wait_for;
use edgefleet_edge_agent::dmi::book::{Book, BookLimits};
use edgefleet_edge_agent::dmi::proto;
use edgefleet_edge_agent::dmi::{self, Dmi, DmiConfig, WatchedStore};
use edgefleet_edge_agent::store::{Key, Object, SqliteStore, Store};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);
const CYCLE: Duration = Duration::from_millis(200);

/// One agent's DMI side on a data dir; stopped and started again on the same dir for restarts.
struct Agent {
    dir: PathBuf,
    store: Arc<dyn Store>,
    dmi: Arc<Dmi>,
    cancel: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Agent {
    async fn start(dir: &Path, rate: f64, burst: f64) -> Result<Agent> {
        let changed = Arc::new(tokio::sync::Notify::new());
        let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("store.db"))?);
        let store: Arc<dyn Store> = Arc::new(WatchedStore {
            inner: sqlite,
            changed: changed.clone(),
        });
        let book = Book::open(&dir.join("dmi.db"), BookLimits::default())?;
        let config = DmiConfig {
            socket: dir.join("dmi.sock"),
            rate_per_second: rate,
            burst,
        };
        let dmi = Dmi::new(store.clone(), Arc::new(book), config, changed);
        let cancel = CancellationToken::new();
        let server = dmi::serve(dmi.clone(), cancel.clone())
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(Agent {
            dir: dir.to_path_buf(),
            store,
            dmi,
            cancel,
            server,
        })
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("dmi.sock")
    }

    async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.server)
            .await
            .context("the DMI server did not stop")??;
        Ok(())
    }

    /// What the handler does with a delivered object.
    fn put(&self, type_: ResourceType, object: &Value) -> Result<()> {
        let meta = &object["metadata"];
        let key = Key::new(
            type_,
            meta["namespace"].as_str().unwrap_or("default"),
            meta["name"].as_str().context("name")?,
        );
        self.store.put(
            &key,
            Object {
                uid: meta["uid"].as_str().unwrap_or("uid-1").into(),
                resource_version: meta["resourceVersion"].as_str().context("rv")?.into(),
                body: object.to_string(),
            },
        )?;
        Ok(())
    }

    fn reported(&self, ns: &str, device: &str, property: &str) -> Option<String> {
        self.dmi
            .book
            .twins(&(ns.into(), device.into()))
            .ok()?
            .get(property)
            .map(|t| t.reported.clone())
    }
}

fn model(name: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
        "metadata": {"name": name, "namespace": "plant", "resourceVersion": rv},
        "spec": {"protocol": "modbus", "properties": [
            {"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly"},
            {"name": "interval", "type": "INT", "accessMode": "ReadWrite"},
            {"name": "alarm", "type": "BOOLEAN", "accessMode": "ReadWrite"}]}
    })
}

fn device(name: &str, model: &str, interval: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": name, "namespace": "plant", "resourceVersion": rv},
        "spec": {"deviceModelRef": {"name": model}, "nodeName": "edge-0",
            "protocol": {"protocolName": "modbus", "configData": {"ip": "192.0.2.7", "slaveID": 1}},
            "properties": [
                {"name": "interval", "desired": {"value": interval}, "collectCycle": 200, "reportToCloud": true},
                {"name": "alarm", "desired": {"value": "true"}, "collectCycle": 200, "reportToCloud": true},
                {"name": "temperature", "collectCycle": 200, "reportToCloud": true}]}
    })
}

async fn until(what: &str, check: impl Fn() -> bool) -> Result<()> {
    wait_for(what, WAIT, || {
        let ok = check();
        async move { Ok(ok.then_some(())) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapper_gets_its_devices_desired_values_and_updates_and_its_reports_are_kept()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let agent = Agent::start(dir.path(), 1000.0, 1000.0).await?;
    agent.put(ResourceType::DeviceModel, &model("thermo", "1"))?;
    agent.put(ResourceType::Device, &device("t0", "thermo", "10", "2"))?;
    let mapper = TestMapper::start(dir.path(), "modbus", &agent.socket(), CYCLE).await?;
    // Registered with data: the mapper got the device and set its desired values.
    until("the mapper to hold t0 with interval=10", || {
        mapper
            .values("plant", "t0")
            .and_then(|v| v.get("interval").cloned())
            .as_deref()
            == Some("10")
    })
    .await?;
    until("t0's reports to be kept", || {
        agent.reported("plant", "t0", "interval").as_deref() == Some("10")
            && agent.reported("plant", "t0", "alarm").as_deref() == Some("true")
            && agent.reported("plant", "t0", "temperature").is_some()
    })
    .await?;
    assert_eq!(
        agent
            .dmi
            .book
            .state(&("plant".into(), "t0".into()))?
            .map(|s| s.state)
            .as_deref(),
        Some("ok")
    );
    // A desired change → one UpdateDevice → the reported value follows.
    agent.put(ResourceType::Device, &device("t0", "thermo", "30", "3"))?;
    until("UpdateDevice with interval=30", || {
        mapper
            .values("plant", "t0")
            .and_then(|v| v.get("interval").cloned())
            .as_deref()
            == Some("30")
    })
    .await?;
    until("the reported interval to follow", || {
        agent.reported("plant", "t0", "interval").as_deref() == Some("30")
    })
    .await?;
    let calls = mapper.calls();
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("update plant/t0"))
            .count(),
        1,
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c.starts_with("register ")),
        "the reply had it: {calls:?}"
    );
    // The device leaves the node: RemoveDevice, then its model; its reports are forgotten.
    agent
        .store
        .delete(&Key::new(ResourceType::Device, "plant", "t0"), "uid-1", "4")?;
    until("RemoveDevice then RemoveDeviceModel", || {
        let calls = mapper.calls();
        calls.iter().any(|c| c == "remove plant/t0")
            && calls.iter().any(|c| c == "remove-model plant/thermo")
    })
    .await?;
    let calls = mapper.calls();
    let at = |c: &str| calls.iter().position(|x| x == c);
    assert!(
        at("remove plant/t0") < at("remove-model plant/thermo"),
        "{calls:?}"
    );
    mapper.stop();
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_model_arrives_later_is_registered_when_it_does() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agent = Agent::start(dir.path(), 1000.0, 1000.0).await?;
    let mapper = TestMapper::start(dir.path(), "modbus", &agent.socket(), CYCLE).await?;
    agent.put(
        ResourceType::Device,
        &device("late", "late-model", "5", "10"),
    )?;
    // Reports for it are refused while its model is missing (no value is kept unchecked).
    // The agent takes the put in asynchronously: until it has, the device is unknown here
    // (NotFound); once it has, the missing model is the refusal.
    let client = mapper.agent(&agent.socket())?;
    let early = wait_for("the agent to know the device", WAIT, || {
        let mut client = client.clone();
        async move {
            let e = client
                .report_device_status(twin_report("late", "interval", "5"))
                .await
                .expect_err("a report for a device without its model");
            Ok((e.code() != tonic::Code::NotFound).then_some(e))
        }
    })
    .await?;
    assert_eq!(early.code(), tonic::Code::FailedPrecondition, "{early:?}");
    assert!(
        early
            .message()
            .contains("late-model has not reached this node"),
        "{early:?}"
    );
    // Nothing is sent to the mapper while the model is missing; then it arrives.
    assert!(mapper.values("plant", "late").is_none());
    agent.put(ResourceType::DeviceModel, &model("late-model", "11"))?;
    until(
        "RegisterDevice of the device once its model arrived",
        || {
            mapper
                .values("plant", "late")
                .and_then(|v| v.get("interval").cloned())
                .as_deref()
                == Some("5")
        },
    )
    .await?;
    let calls = mapper.calls();
    let at = |c: &str| calls.iter().position(|x| x == c);
    assert!(
        at("create-model plant/late-model") < at("register plant/late"),
        "{calls:?}"
    );
    until("its reports to be kept", || {
        agent.reported("plant", "late", "interval").as_deref() == Some("5")
    })
    .await?;
    mapper.stop();
    agent.stop().await
}

fn twin_report(device: &str, property: &str, value: &str) -> proto::ReportDeviceStatusRequest {
    proto::ReportDeviceStatusRequest {
        device_name: device.into(),
        device_namespace: "plant".into(),
        reported_device: Some(proto::DeviceStatus {
            twins: vec![proto::Twin {
                property_name: property.into(),
                reported: Some(proto::TwinProperty {
                    value: value.into(),
                    metadata: Default::default(),
                }),
                observed_desired: None,
            }],
            report_to_cloud: true,
            report_cycle: 0,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_from_a_mapper_is_refused_stores_nothing_and_other_mappers_go_on() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A small bucket: 20 requests, then 1 per second per mapper.
    let agent = Agent::start(dir.path(), 1.0, 20.0).await?;
    agent.put(ResourceType::DeviceModel, &model("thermo", "1"))?;
    agent.put(ResourceType::Device, &device("t0", "thermo", "10", "2"))?;
    let mut opcua_model = model("light", "3");
    opcua_model["spec"]["protocol"] = json!("opcua");
    agent.put(ResourceType::DeviceModel, &opcua_model)?;
    let mut lamp = device("lamp", "light", "1", "4");
    lamp["spec"]["protocol"]["protocolName"] = json!("opcua");
    agent.put(ResourceType::Device, &lamp)?;
    // Mappers that report rarely: the test makes the calls.
    let modbus = TestMapper::start(
        dir.path(),
        "modbus",
        &agent.socket(),
        Duration::from_secs(3600),
    )
    .await?;
    let opcua = TestMapper::start(
        dir.path(),
        "opcua",
        &agent.socket(),
        Duration::from_secs(3600),
    )
    .await?;
    let mut client = modbus.agent(&agent.socket())?;
    let big = "x".repeat(5000);
    for (request, code, message) in [
        (
            twin_report("ghost", "interval", "1"),
            tonic::Code::NotFound,
            "device plant/ghost is not bound to this node",
        ),
        (
            twin_report("t0", "interval", "fast"),
            tonic::Code::InvalidArgument,
            "\"fast\" is not a INT",
        ),
        (
            twin_report("t0", "alarm", "on"),
            tonic::Code::InvalidArgument,
            "\"on\" is not a BOOLEAN",
        ),
        (
            twin_report("t0", "humidity", "1"),
            tonic::Code::InvalidArgument,
            "has no property \"humidity\"",
        ),
        (
            twin_report("t0", "interval", &big),
            tonic::Code::InvalidArgument,
            "5000 bytes, more than 4096",
        ),
    ] {
        let err = client
            .report_device_status(request)
            .await
            .expect_err(message);
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(message), "{message}: {err:?}");
    }
    // A message over the size limit never reaches the handler.
    let mut flood = twin_report("t0", "interval", "1");
    if let Some(status) = flood.reported_device.as_mut() {
        status.twins = (0..200)
            .flat_map(|_| {
                twin_report("t0", "label", &"y".repeat(4000))
                    .reported_device
                    .unwrap_or_default()
                    .twins
            })
            .collect();
    }
    let err = client
        .report_device_status(flood)
        .await
        .expect_err("an oversize message");
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err:?}"
    );
    let bad_state = client
        .report_device_states(proto::ReportDeviceStatesRequest {
            device_name: "t0".into(),
            device_namespace: "plant".into(),
            state: "exploded".into(),
        })
        .await
        .expect_err("an unknown state");
    assert_eq!(bad_state.code(), tonic::Code::InvalidArgument);
    // Nothing of the refused reports was kept.
    assert!(
        agent
            .dmi
            .book
            .twins(&("plant".into(), "t0".into()))?
            .is_empty()
    );
    assert!(
        agent
            .dmi
            .book
            .twins(&("plant".into(), "ghost".into()))?
            .is_empty()
    );
    // A flood from the modbus mapper hits its own limit...
    let mut limited = 0;
    for i in 0..40 {
        if let Err(e) = client
            .report_device_status(twin_report("t0", "interval", &i.to_string()))
            .await
        {
            assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
            assert!(e.message().contains("over its rate limit"), "{e:?}");
            limited += 1;
        }
    }
    assert!(
        limited >= 10,
        "the flood was limited ({limited} of 40 refused)"
    );
    // ...and the opcua mapper is not affected.
    let mut other = opcua.agent(&agent.socket())?;
    for i in 0..5 {
        other
            .report_device_status(twin_report("lamp", "interval", &i.to_string()))
            .await?;
    }
    assert_eq!(
        agent.reported("plant", "lamp", "interval").as_deref(),
        Some("4")
    );
    assert!(agent.dmi.metrics.refused_count("rate_limited") >= 10);
    assert_eq!(agent.dmi.metrics.refused_count("unknown_device"), 1);
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapper_registrations_and_what_they_hold_survive_an_agent_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agent = Agent::start(dir.path(), 1000.0, 1000.0).await?;
    agent.put(ResourceType::DeviceModel, &model("thermo", "1"))?;
    agent.put(ResourceType::Device, &device("t0", "thermo", "10", "2"))?;
    let mapper = TestMapper::start(dir.path(), "modbus", &agent.socket(), CYCLE).await?;
    until("t0's reports", || {
        agent.reported("plant", "t0", "interval").as_deref() == Some("10")
    })
    .await?;
    agent.stop().await?;
    // A new agent process on the same data dir; the mapper does not register again.
    let agent = Agent::start(dir.path(), 1000.0, 1000.0).await?;
    assert_eq!(
        agent.dmi.book.mapper("modbus")?.map(|m| m.address),
        Some(mapper.socket.to_string_lossy().into_owned())
    );
    // The reports kept before the restart are still there, and new ones arrive (the mapper's
    // channel reconnects to the new socket).
    assert_eq!(
        agent.reported("plant", "t0", "interval").as_deref(),
        Some("10")
    );
    agent.put(ResourceType::Device, &device("t0", "thermo", "25", "3"))?;
    until("UpdateDevice after the restart", || {
        mapper
            .values("plant", "t0")
            .and_then(|v| v.get("interval").cloned())
            .as_deref()
            == Some("25")
    })
    .await?;
    until("the reported value to follow after the restart", || {
        agent.reported("plant", "t0", "interval").as_deref() == Some("25")
    })
    .await?;
    let calls = mapper.calls();
    // Nothing resent after the restart: exactly one update, no register, no model re-create.
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("update plant/t0"))
            .count(),
        1,
        "{calls:?}"
    );
    if calls
        .iter()
        .any(|c| c.starts_with("register ") || c.starts_with("create-model"))
    {
        bail!("the restart resent what the mapper had: {calls:?}");
    }
    mapper.stop();
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeedge_mappers_go_manifest_reaches_the_mapper_unchanged_in_meaning() -> Result<()> {
    // kubeedge/mappers-go's virtual device, as the repo keeps it verbatim.
    let root = edgefleet_e2e::repo_root().join("e2e/testdata/kubeedge");
    let read = |f: &str| -> Result<Value> {
        let mut v: Value = serde_yaml::from_str(&std::fs::read_to_string(root.join(f))?)?;
        v["metadata"]["resourceVersion"] = json!("1");
        Ok(v)
    };
    let dir = tempfile::tempdir()?;
    let agent = Agent::start(dir.path(), 1000.0, 1000.0).await?;
    agent.put(ResourceType::DeviceModel, &read("devicemodel.yaml")?)?;
    agent.put(ResourceType::Device, &read("device.yaml")?)?;
    let mapper = TestMapper::start(dir.path(), "virtualProtocol", &agent.socket(), CYCLE).await?;
    until(
        "the virtual device at the mapper and its reports kept",
        || {
            mapper.values("default", "random-instance-01").is_some()
                && agent
                    .reported("default", "random-instance-01", "random-int")
                    .is_some()
        },
    )
    .await?;
    mapper.stop();
    agent.stop().await
}
