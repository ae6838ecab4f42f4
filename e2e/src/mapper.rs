//! A device mapper for the tests, behaving as KubeEdge's mapper-framework does (KubeEdge's Go
//! modules are not served by our module proxy): it serves `DeviceMapperService` on its own unix
//! socket, registers with the agent (`MapperRegister`, withData) under one protocol, applies
//! desired values when a device is registered or updated, and reports one twin per call every
//! collect cycle (plus the device's state), over real gRPC on real unix sockets.
//!
//! Every call it gets is logged ([`TestMapper::calls`]), so tests assert what reached it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use edgefleet_edge_agent::dmi::deliver::mapper_channel;
use edgefleet_edge_agent::dmi::proto;
use edgefleet_edge_agent::dmi::proto::device_manager_service_client::DeviceManagerServiceClient;
use edgefleet_edge_agent::dmi::proto::device_mapper_service_server::{
    DeviceMapperService, DeviceMapperServiceServer,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// A device as the mapper holds it: the last spec it got and the values "on the hardware".
#[derive(Clone, Debug, Default)]
pub struct HeldDevice {
    pub device: proto::Device,
    pub values: BTreeMap<String, String>,
}

#[derive(Default)]
struct State {
    devices: BTreeMap<(String, String), HeldDevice>,
    models: BTreeMap<(String, String), proto::DeviceModel>,
    calls: Vec<String>,
    /// `(namespace, device, property)` → the last value the agent took (answered OK).
    accepted: BTreeMap<(String, String, String), String>,
}

type Shared = Arc<Mutex<State>>;

fn key_of(device: &proto::Device) -> (String, String) {
    (device.namespace.clone(), device.name.clone())
}

/// Sets the desired values on "the hardware" (mapper-framework does it only on register and
/// update).
fn apply(state: &mut State, device: proto::Device) {
    let key = key_of(&device);
    let mut values = state
        .devices
        .get(&key)
        .map(|d| d.values.clone())
        .unwrap_or_default();
    for p in device.spec.iter().flat_map(|s| &s.properties) {
        if let Some(d) = &p.desired
            && !d.value.is_empty()
        {
            values.insert(p.name.clone(), d.value.clone());
        }
    }
    state.devices.insert(key, HeldDevice { device, values });
}

struct Service(Shared);

impl Service {
    fn log(&self, call: String) -> std::sync::MutexGuard<'_, State> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.calls.push(call);
        s
    }
}

#[tonic::async_trait]
impl DeviceMapperService for Service {
    async fn register_device(
        &self,
        request: Request<proto::RegisterDeviceRequest>,
    ) -> Result<Response<proto::RegisterDeviceResponse>, Status> {
        let device = request.into_inner().device.unwrap_or_default();
        let (ns, name) = key_of(&device);
        let mut s = self.log(format!("register {ns}/{name}"));
        if s.devices.contains_key(&(ns.clone(), name.clone())) {
            return Err(Status::already_exists(format!("device {ns}/{name} exists")));
        }
        apply(&mut s, device);
        Ok(Response::new(proto::RegisterDeviceResponse {
            device_name: name,
            device_namespace: ns,
        }))
    }

    async fn remove_device(
        &self,
        request: Request<proto::RemoveDeviceRequest>,
    ) -> Result<Response<proto::RemoveDeviceResponse>, Status> {
        let r = request.into_inner();
        let mut s = self.log(format!("remove {}/{}", r.device_namespace, r.device_name));
        s.devices.remove(&(r.device_namespace, r.device_name));
        Ok(Response::new(proto::RemoveDeviceResponse {}))
    }

    async fn update_device(
        &self,
        request: Request<proto::UpdateDeviceRequest>,
    ) -> Result<Response<proto::UpdateDeviceResponse>, Status> {
        let device = request.into_inner().device.unwrap_or_default();
        let (ns, name) = key_of(&device);
        let mut s = self.log(format!("update {ns}/{name}"));
        apply(&mut s, device);
        Ok(Response::new(proto::UpdateDeviceResponse {}))
    }

    async fn create_device_model(
        &self,
        request: Request<proto::CreateDeviceModelRequest>,
    ) -> Result<Response<proto::CreateDeviceModelResponse>, Status> {
        let model = request.into_inner().model.unwrap_or_default();
        let mut s = self.log(format!("create-model {}/{}", model.namespace, model.name));
        let (ns, name) = (model.namespace.clone(), model.name.clone());
        s.models.insert((ns.clone(), name.clone()), model);
        Ok(Response::new(proto::CreateDeviceModelResponse {
            device_model_name: name,
            device_model_namespace: ns,
        }))
    }

    async fn remove_device_model(
        &self,
        request: Request<proto::RemoveDeviceModelRequest>,
    ) -> Result<Response<proto::RemoveDeviceModelResponse>, Status> {
        let r = request.into_inner();
        let mut s = self.log(format!(
            "remove-model {}/{}",
            r.model_namespace, r.model_name
        ));
        s.models.remove(&(r.model_namespace, r.model_name));
        Ok(Response::new(proto::RemoveDeviceModelResponse {}))
    }

    async fn update_device_model(
        &self,
        request: Request<proto::UpdateDeviceModelRequest>,
    ) -> Result<Response<proto::UpdateDeviceModelResponse>, Status> {
        let model = request.into_inner().model.unwrap_or_default();
        let mut s = self.log(format!("update-model {}/{}", model.namespace, model.name));
        s.models
            .insert((model.namespace.clone(), model.name.clone()), model);
        Ok(Response::new(proto::UpdateDeviceModelResponse {}))
    }

    async fn get_device(
        &self,
        request: Request<proto::GetDeviceRequest>,
    ) -> Result<Response<proto::GetDeviceResponse>, Status> {
        let r = request.into_inner();
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let held = s
            .devices
            .get(&(r.device_namespace.clone(), r.device_name.clone()))
            .ok_or_else(|| {
                Status::not_found(format!("{}/{}", r.device_namespace, r.device_name))
            })?;
        Ok(Response::new(proto::GetDeviceResponse {
            device: Some(held.device.clone()),
        }))
    }
}

/// A running test mapper.
pub struct TestMapper {
    pub protocol: String,
    pub socket: PathBuf,
    state: Shared,
    cancel: CancellationToken,
}

impl Drop for TestMapper {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A value of the model's type for a property nobody set (a sensor reading).
fn reading(model: Option<&proto::DeviceModel>, property: &str, tick: u64) -> String {
    let type_ = model
        .and_then(|m| m.spec.as_ref())
        .and_then(|s| s.properties.iter().find(|p| p.name == property))
        .map(|p| p.r#type.to_ascii_lowercase())
        .unwrap_or_default();
    match type_.as_str() {
        "int" => (tick % 100).to_string(),
        "float" | "double" => format!("{}.5", 20 + tick % 10),
        "boolean" => tick.is_multiple_of(2).to_string(),
        _ => format!("reading-{tick}"),
    }
}

impl TestMapper {
    /// Serves on `<dir>/<protocol>.sock`, registers with the agent's DMI socket (withData: the
    /// devices of the reply are set up as mapper-framework does), then reports every
    /// `collect_cycle`.
    pub async fn start(
        dir: &Path,
        protocol: &str,
        agent_socket: &Path,
        collect_cycle: Duration,
    ) -> Result<TestMapper> {
        let socket = dir.join(format!("{protocol}.sock"));
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket)
            .with_context(|| format!("binding {}", socket.display()))?;
        let state: Shared = Arc::default();
        let cancel = CancellationToken::new();
        let service = DeviceMapperServiceServer::new(Service(state.clone()));
        let stop = cancel.clone();
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stop.cancelled())
                .await;
        });
        let mapper = TestMapper {
            protocol: protocol.to_string(),
            socket,
            state,
            cancel,
        };
        let mut client = mapper.agent(agent_socket)?;
        let reply = client
            .mapper_register(proto::MapperRegisterRequest {
                with_data: true,
                mapper: Some(proto::MapperInfo {
                    name: format!("test-{protocol}-mapper"),
                    version: "v1.22.0".into(),
                    api_version: "v1beta1".into(),
                    protocol: protocol.into(),
                    address: mapper.socket.to_string_lossy().as_bytes().to_vec(),
                    state: "ok".into(),
                }),
            })
            .await
            .context("MapperRegister")?
            .into_inner();
        {
            let mut s = mapper.lock();
            s.calls.push(format!(
                "registered: {} models, {} devices",
                reply.model_list.len(),
                reply.device_list.len()
            ));
            for m in reply.model_list {
                s.models.insert((m.namespace.clone(), m.name.clone()), m);
            }
            for d in reply.device_list {
                apply(&mut s, d);
            }
        }
        tokio::spawn(report_loop(
            mapper.state.clone(),
            client,
            collect_cycle,
            mapper.cancel.clone(),
        ));
        Ok(mapper)
    }

    /// A client of the agent's DMI socket (what a mapper holds).
    pub fn agent(&self, agent_socket: &Path) -> Result<DeviceManagerServiceClient<Channel>> {
        let channel = mapper_channel(&agent_socket.to_string_lossy())?;
        Ok(DeviceManagerServiceClient::new(channel))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call the agent made, in order (`register plant/t0`, `update plant/t0`, ...).
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The values "on the hardware" of a device, when the mapper holds it.
    pub fn values(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        self.lock()
            .devices
            .get(&(namespace.to_string(), name.to_string()))
            .map(|d| d.values.clone())
    }

    /// The hardware's value of `property` changes (a sensor reading, a knob turned by hand):
    /// reported from the next cycle on, until a desired value or another change replaces it.
    /// False when the mapper does not hold the device.
    pub fn set_value(&self, namespace: &str, name: &str, property: &str, value: &str) -> bool {
        let mut s = self.lock();
        let Some(held) = s
            .devices
            .get_mut(&(namespace.to_string(), name.to_string()))
        else {
            return false;
        };
        held.values.insert(property.to_string(), value.to_string());
        true
    }

    /// The last value of `property` the agent took from this mapper (its report answered OK).
    pub fn accepted(&self, namespace: &str, name: &str, property: &str) -> Option<String> {
        self.lock()
            .accepted
            .get(&(
                namespace.to_string(),
                name.to_string(),
                property.to_string(),
            ))
            .cloned()
    }

    /// Stops serving and reporting (the agent sees the mapper gone).
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

fn state_lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// One twin per call, every property of every device, each cycle; then each device's state.
async fn report_loop(
    state: Shared,
    mut client: DeviceManagerServiceClient<Channel>,
    cycle: Duration,
    cancel: CancellationToken,
) {
    let mut tick = 0u64;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(cycle) => {}
        }
        tick += 1;
        let reports: Vec<(
            proto::ReportDeviceStatusRequest,
            proto::ReportDeviceStatesRequest,
        )> = {
            let s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.devices
                .values()
                .flat_map(|held| {
                    let d = &held.device;
                    let model = d.spec.as_ref().and_then(|spec| {
                        s.models
                            .get(&(d.namespace.clone(), spec.device_model_reference.clone()))
                    });
                    d.spec
                        .iter()
                        .flat_map(|spec| &spec.properties)
                        .map(|p| {
                            let desired = p
                                .desired
                                .as_ref()
                                .map(|x| x.value.clone())
                                .unwrap_or_default();
                            let value = held
                                .values
                                .get(&p.name)
                                .cloned()
                                .unwrap_or_else(|| reading(model, &p.name, tick));
                            let metadata: BTreeMap<String, String> = [
                                (
                                    "timestamp".to_string(),
                                    edgefleet_edge_agent::dmi::now_ms().to_string(),
                                ),
                                ("type".to_string(), "string".to_string()),
                            ]
                            .into();
                            (
                                proto::ReportDeviceStatusRequest {
                                    device_name: d.name.clone(),
                                    device_namespace: d.namespace.clone(),
                                    reported_device: Some(proto::DeviceStatus {
                                        twins: vec![proto::Twin {
                                            property_name: p.name.clone(),
                                            reported: Some(proto::TwinProperty { value, metadata }),
                                            observed_desired: Some(proto::TwinProperty {
                                                value: desired,
                                                metadata: BTreeMap::new(),
                                            }),
                                        }],
                                        report_to_cloud: p.report_to_cloud,
                                        report_cycle: p.report_cycle,
                                    }),
                                },
                                proto::ReportDeviceStatesRequest {
                                    device_name: d.name.clone(),
                                    device_namespace: d.namespace.clone(),
                                    state: "ok".into(),
                                },
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let mut states = BTreeMap::new();
        for (twin, device_state) in reports {
            let key = (
                twin.device_namespace.clone(),
                twin.device_name.clone(),
                twin.reported_device
                    .as_ref()
                    .and_then(|d| d.twins.first())
                    .map(|t| t.property_name.clone())
                    .unwrap_or_default(),
            );
            let value = twin
                .reported_device
                .as_ref()
                .and_then(|d| d.twins.first())
                .and_then(|t| t.reported.as_ref())
                .map(|r| r.value.clone())
                .unwrap_or_default();
            match client.report_device_status(twin).await {
                Ok(_) => {
                    let mut s = state_lock(&state);
                    s.accepted.insert(key, value);
                }
                Err(e) => tracing::debug!(error = %e, "test mapper report refused"),
            }
            states.insert(
                (
                    device_state.device_namespace.clone(),
                    device_state.device_name.clone(),
                ),
                device_state,
            );
        }
        for state in states.into_values() {
            let _ = client.report_device_states(state).await;
        }
    }
}
