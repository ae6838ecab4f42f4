//! `DeviceManagerService`, served to the node's mappers on a unix socket: MapperRegister,
//! ReportDeviceStatus (twins), ReportDeviceStates (state).
//!
//! Every request is checked before anything is kept: the device is bound to this node, each
//! property is in its model, each value parses as the model's type, sizes are bounded, and the
//! mapper is within its own rate limit (one bucket per protocol, not one for the whole node). A
//! refused request is a gRPC error and stores nothing; other mappers are not affected.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::book::{BookError, MapperRecord, Sent, TwinReport};
use super::catalog::ReportError;
use super::proto::device_manager_service_server::DeviceManagerService;
use super::proto::{
    MapperRegisterRequest, MapperRegisterResponse, ReportDeviceStatesRequest,
    ReportDeviceStatesResponse, ReportDeviceStatusRequest, ReportDeviceStatusResponse,
};
use super::{Dmi, now_ms};

/// Longest reported value (KubeEdge sets none; a twin is a sensor value, not a file).
pub const MAX_VALUE_BYTES: usize = 4096;
/// Most twins in one report, metadata entries per twin.
pub const MAX_TWINS_PER_REPORT: usize = 256;
pub const MAX_METADATA: usize = 16;
/// The states KubeEdge knows.
pub const STATES: [&str; 5] = ["online", "offline", "ok", "unknown", "unhealthy"];
/// The rate-limit bucket of requests naming no known device.
const UNATTRIBUTED: &str = "\u{0}unattributed";

pub struct DmiServer(pub Arc<Dmi>);

fn refused(dmi: &Dmi, reason: &'static str, status: Status) -> Status {
    dmi.metrics.refused(reason);
    tracing::debug!(reason, message = status.message(), "dmi request refused");
    status
}

fn report_status(e: &ReportError) -> (&'static str, Status) {
    match e {
        ReportError::UnknownDevice(..) => ("unknown_device", Status::not_found(e.to_string())),
        ReportError::ModelMissing(..) => {
            ("model_missing", Status::failed_precondition(e.to_string()))
        }
        ReportError::UnknownProperty(..) => {
            ("unknown_property", Status::invalid_argument(e.to_string()))
        }
        ReportError::BadValue(..) => ("bad_value", Status::invalid_argument(e.to_string())),
    }
}

fn book_status(dmi: &Dmi, e: BookError) -> Status {
    match e {
        BookError::Full(_) => refused(dmi, "book_full", Status::resource_exhausted(e.to_string())),
        other => {
            tracing::error!(error = %other, "dmi book");
            Status::internal(other.to_string())
        }
    }
}

fn namespace_or_default(ns: &str) -> String {
    if ns.is_empty() { "default" } else { ns }.to_string()
}

fn check_len(what: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        return Err(Status::invalid_argument(format!(
            "{what} is {} bytes, more than {max}",
            value.len()
        )));
    }
    Ok(())
}

impl DmiServer {
    fn limit(&self, bucket: &str) -> Result<(), Status> {
        if self.0.limiter.take(bucket) {
            Ok(())
        } else {
            Err(refused(
                &self.0,
                "rate_limited",
                Status::resource_exhausted(format!(
                    "mapper {bucket:?} is over its rate limit of {}/s (burst {})",
                    self.0.config.rate_per_second, self.0.config.burst
                )),
            ))
        }
    }

    /// The bucket a report is charged to: the mapper of the device's protocol.
    fn bucket_of(&self, namespace: &str, device: &str) -> String {
        self.0
            .catalog()
            .devices
            .get(&(namespace.to_string(), device.to_string()))
            .map_or_else(|| UNATTRIBUTED.to_string(), |d| d.protocol.clone())
    }
}

#[tonic::async_trait]
impl DeviceManagerService for DmiServer {
    async fn mapper_register(
        &self,
        request: Request<MapperRegisterRequest>,
    ) -> Result<Response<MapperRegisterResponse>, Status> {
        let dmi = &self.0;
        let req = request.into_inner();
        let Some(info) = req.mapper else {
            return Err(refused(
                dmi,
                "bad_register",
                Status::invalid_argument("no mapper info"),
            ));
        };
        let address = String::from_utf8(info.address.clone()).map_err(|_| {
            refused(
                dmi,
                "bad_register",
                Status::invalid_argument("mapper address is not UTF-8"),
            )
        })?;
        let problem = if info.protocol.is_empty() || info.protocol.len() > 63 {
            Some("mapper protocol must be 1 to 63 bytes".to_string())
        } else if info.name.len() > 253 {
            Some("mapper name is longer than 253 bytes".to_string())
        } else if !address.starts_with('/') || address.len() > 107 {
            Some(format!(
                "mapper address {address:?} must be an absolute unix socket path of at most 107 bytes"
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(refused(
                dmi,
                "bad_register",
                Status::invalid_argument(problem),
            ));
        }
        self.limit(&info.protocol)?;
        let catalog = dmi.refresh_catalog();
        let mut models = BTreeMap::new();
        let mut devices = Vec::new();
        let mut sent = Sent::new();
        if req.with_data {
            for ((ns, name), device) in catalog
                .devices
                .iter()
                .filter(|(_, d)| d.protocol == info.protocol)
            {
                let Some(model) = catalog.model_of(device) else {
                    continue;
                };
                models.insert(device.model.clone(), model.dmi.clone());
                sent.insert(
                    (
                        "model".into(),
                        device.model.0.clone(),
                        device.model.1.clone(),
                    ),
                    model.fingerprint,
                );
                sent.insert(
                    ("device".into(), ns.clone(), name.clone()),
                    device.fingerprint,
                );
                devices.push(device.dmi.clone());
            }
        }
        let record = MapperRecord {
            protocol: info.protocol.clone(),
            name: info.name.clone(),
            version: info.version.clone(),
            api_version: info.api_version.clone(),
            address,
        };
        dmi.book
            .register_mapper(record, sent)
            .map_err(|e| book_status(dmi, e))?;
        dmi.metrics.registered();
        tracing::info!(protocol = %info.protocol, name = %info.name, devices = devices.len(), "mapper registered");
        dmi.changed.notify_one();
        Ok(Response::new(MapperRegisterResponse {
            model_list: models.into_values().collect(),
            device_list: devices,
        }))
    }

    async fn report_device_status(
        &self,
        request: Request<ReportDeviceStatusRequest>,
    ) -> Result<Response<ReportDeviceStatusResponse>, Status> {
        let dmi = &self.0;
        let req = request.into_inner();
        let namespace = namespace_or_default(&req.device_namespace);
        self.limit(&self.bucket_of(&namespace, &req.device_name))?;
        let twins = req.reported_device.map(|d| d.twins).unwrap_or_default();
        if twins.len() > MAX_TWINS_PER_REPORT {
            return Err(refused(
                dmi,
                "oversize",
                Status::invalid_argument(format!(
                    "{} twins in one report, more than {MAX_TWINS_PER_REPORT}",
                    twins.len()
                )),
            ));
        }
        let catalog = dmi.catalog();
        let now = now_ms();
        let mut kept = Vec::with_capacity(twins.len());
        for twin in twins {
            let reported = twin.reported.unwrap_or_default();
            let observed = twin.observed_desired.unwrap_or_default();
            for (what, value) in [
                ("reported value", &reported.value),
                ("observedDesired value", &observed.value),
            ] {
                check_len(what, value, MAX_VALUE_BYTES).map_err(|s| refused(dmi, "oversize", s))?;
            }
            if reported.metadata.len() > MAX_METADATA || observed.metadata.len() > MAX_METADATA {
                return Err(refused(
                    dmi,
                    "oversize",
                    Status::invalid_argument(format!("more than {MAX_METADATA} metadata entries")),
                ));
            }
            let declared = catalog
                .check_twin(
                    &namespace,
                    &req.device_name,
                    &twin.property_name,
                    &[&reported.value, &observed.value],
                )
                .map_err(|e| {
                    let (reason, status) = report_status(&e);
                    refused(dmi, reason, status)
                })?;
            let timestamp = reported
                .metadata
                .get("timestamp")
                .and_then(|t| t.parse::<i64>().ok())
                .unwrap_or(now);
            kept.push(TwinReport {
                property: twin.property_name,
                reported: reported.value,
                observed_desired: observed.value,
                type_: declared,
                timestamp_ms: timestamp,
            });
        }
        let device = (namespace, req.device_name);
        let count = dmi
            .book
            .record_twins(&device, kept)
            .map_err(|e| book_status(dmi, e))?;
        dmi.metrics.twins(count);
        dmi.reported.notify_one();
        Ok(Response::new(ReportDeviceStatusResponse {}))
    }

    async fn report_device_states(
        &self,
        request: Request<ReportDeviceStatesRequest>,
    ) -> Result<Response<ReportDeviceStatesResponse>, Status> {
        let dmi = &self.0;
        let req = request.into_inner();
        let namespace = namespace_or_default(&req.device_namespace);
        self.limit(&self.bucket_of(&namespace, &req.device_name))?;
        let state = req.state.to_ascii_lowercase();
        if !STATES.contains(&state.as_str()) {
            return Err(refused(
                dmi,
                "bad_state",
                Status::invalid_argument(format!(
                    "state {:?} is not one of {}",
                    req.state,
                    STATES.join(", ")
                )),
            ));
        }
        let device = (namespace, req.device_name);
        if !dmi.catalog().devices.contains_key(&device) {
            let e = ReportError::UnknownDevice(device.0, device.1);
            let (reason, status) = report_status(&e);
            return Err(refused(dmi, reason, status));
        }
        dmi.book
            .record_state(&device, state, now_ms())
            .map_err(|e| book_status(dmi, e))?;
        dmi.metrics.states();
        dmi.reported.notify_one();
        Ok(Response::new(ReportDeviceStatesResponse {}))
    }
}
