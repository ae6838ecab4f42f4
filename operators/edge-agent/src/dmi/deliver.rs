//! Cloud → mapper: keeps each registered mapper holding exactly the node's models and devices of
//! its protocol. [`plan`] (pure) compares the catalog with what each mapper was sent (persisted,
//! see [`super::book`]); [`run`] makes the calls and records each success.
//!
//! - a new device → CreateDeviceModel (first) then RegisterDevice; a desired value (or anything
//!   else of the device) changed → UpdateDevice; gone → RemoveDevice, then its model if unused;
//! - a device whose model is not on the node yet is left out, and registered when the model
//!   arrives (KubeEdge v1.22 fails "model not found" once and never retries);
//! - a failed call is retried on the next pass (every [`RETRY`]); a mapper that is down delays
//!   only its own calls.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};

use super::Dmi;
use super::book::{MapperRecord, Sent};
use super::catalog::Catalog;
use super::proto;
use super::proto::device_mapper_service_client::DeviceMapperServiceClient;

/// How often failed calls are retried (and the catalog re-read without a change signal).
pub const RETRY: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    CreateModel(proto::DeviceModel),
    UpdateModel(proto::DeviceModel),
    RegisterDevice(proto::Device),
    UpdateDevice(proto::Device),
    RemoveDevice { namespace: String, name: String },
    RemoveModel { namespace: String, name: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    pub protocol: String,
    pub call: Call,
    /// The `sent` entry to record on success (kind, namespace, name) and its new fingerprint.
    pub key: (String, String, String),
    pub fingerprint: Option<u64>,
}

/// What to call, mapper by mapper, in order: models created/updated, devices registered/updated,
/// devices removed, models removed.
pub fn plan(
    catalog: &Catalog,
    mappers: &[MapperRecord],
    sent: &BTreeMap<String, Sent>,
) -> Vec<Action> {
    let mut out = Vec::new();
    let empty = Sent::new();
    for mapper in mappers {
        let protocol = &mapper.protocol;
        let sent = sent.get(protocol).unwrap_or(&empty);
        let mut want: BTreeMap<(String, String, String), u64> = BTreeMap::new();
        let (mut models, mut devices, mut removals) = (Vec::new(), Vec::new(), Vec::new());
        for ((ns, name), device) in catalog
            .devices
            .iter()
            .filter(|(_, d)| &d.protocol == protocol)
        {
            let Some(model) = catalog.model_of(device) else {
                continue;
            };
            let model_key = (
                "model".to_string(),
                device.model.0.clone(),
                device.model.1.clone(),
            );
            if !want.contains_key(&model_key) {
                want.insert(model_key.clone(), model.fingerprint);
                match sent.get(&model_key) {
                    None => models.push((
                        model_key,
                        model.fingerprint,
                        Call::CreateModel(model.dmi.clone()),
                    )),
                    Some(fp) if *fp != model.fingerprint => {
                        models.push((
                            model_key,
                            model.fingerprint,
                            Call::UpdateModel(model.dmi.clone()),
                        ));
                    }
                    Some(_) => {}
                }
            }
            let device_key = ("device".to_string(), ns.clone(), name.clone());
            want.insert(device_key.clone(), device.fingerprint);
            match sent.get(&device_key) {
                None => devices.push((
                    device_key,
                    device.fingerprint,
                    Call::RegisterDevice(device.dmi.clone()),
                )),
                Some(fp) if *fp != device.fingerprint => {
                    devices.push((
                        device_key,
                        device.fingerprint,
                        Call::UpdateDevice(device.dmi.clone()),
                    ));
                }
                Some(_) => {}
            }
        }
        for key in sent.keys().filter(|k| !want.contains_key(*k)) {
            let (namespace, name) = (key.1.clone(), key.2.clone());
            let call = if key.0 == "device" {
                Call::RemoveDevice { namespace, name }
            } else {
                Call::RemoveModel { namespace, name }
            };
            removals.push((key.clone(), call));
        }
        // Devices before models among removals (a model is removed once nothing uses it).
        removals.sort_by_key(|(k, _)| k.0 != "device");
        for (key, fingerprint, call) in models.into_iter().chain(devices) {
            out.push(Action {
                protocol: protocol.clone(),
                call,
                key,
                fingerprint: Some(fingerprint),
            });
        }
        for (key, call) in removals {
            out.push(Action {
                protocol: protocol.clone(),
                call,
                key,
                fingerprint: None,
            });
        }
    }
    out
}

/// A lazily connected channel to a mapper's unix socket.
pub fn mapper_channel(address: &str) -> Result<Channel, tonic::transport::Error> {
    let path = address.to_string();
    // The URI is not used for a unix socket, only required by the builder.
    Ok(Endpoint::try_from("http://mapper.invalid")?
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        })))
}

async fn call(
    client: &mut DeviceMapperServiceClient<Channel>,
    call: Call,
) -> Result<(), tonic::Status> {
    match call {
        Call::CreateModel(model) => client
            .create_device_model(proto::CreateDeviceModelRequest { model: Some(model) })
            .await
            .map(drop),
        Call::UpdateModel(model) => client
            .update_device_model(proto::UpdateDeviceModelRequest { model: Some(model) })
            .await
            .map(drop),
        Call::RegisterDevice(device) => {
            match client
                .register_device(proto::RegisterDeviceRequest {
                    device: Some(device.clone()),
                })
                .await
            {
                // It already has it (it restarted with our data, or a call's answer was lost):
                // bring it up to date instead.
                Err(s) if s.code() == tonic::Code::AlreadyExists => client
                    .update_device(proto::UpdateDeviceRequest {
                        device: Some(device),
                    })
                    .await
                    .map(drop),
                other => other.map(drop),
            }
        }
        Call::UpdateDevice(device) => client
            .update_device(proto::UpdateDeviceRequest {
                device: Some(device),
            })
            .await
            .map(drop),
        Call::RemoveDevice { namespace, name } => client
            .remove_device(proto::RemoveDeviceRequest {
                device_name: name,
                device_namespace: namespace,
            })
            .await
            .map(drop),
        Call::RemoveModel { namespace, name } => client
            .remove_device_model(proto::RemoveDeviceModelRequest {
                model_name: name,
                model_namespace: namespace,
            })
            .await
            .map(drop),
    }
}

/// One pass: plan, then call; returns how many calls failed.
pub async fn pass(
    dmi: &Dmi,
    clients: &mut HashMap<String, DeviceMapperServiceClient<Channel>>,
) -> usize {
    let catalog = dmi.refresh_catalog();
    let (mappers, sent) = match dmi.book.mappers().and_then(|m| {
        let sent = m
            .iter()
            .map(|r| dmi.book.sent(&r.protocol).map(|s| (r.protocol.clone(), s)))
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        Ok((m, sent))
    }) {
        Ok(got) => got,
        Err(e) => {
            tracing::error!(error = %e, "dmi book");
            return 1;
        }
    };
    let _ = dmi.book.retain_devices(|k| catalog.devices.contains_key(k));
    let addresses: HashMap<&str, &str> = mappers
        .iter()
        .map(|m| (m.protocol.as_str(), m.address.as_str()))
        .collect();
    let mut failed = 0;
    let mut down: Vec<String> = Vec::new();
    for action in plan(&catalog, &mappers, &sent) {
        if down.contains(&action.protocol) {
            failed += 1;
            continue;
        }
        let Some(address) = addresses.get(action.protocol.as_str()) else {
            continue;
        };
        if !clients.contains_key(*address) {
            match mapper_channel(address) {
                Ok(ch) => {
                    clients.insert((*address).to_string(), DeviceMapperServiceClient::new(ch));
                }
                Err(e) => {
                    tracing::warn!(address, error = %e, "mapper address");
                    down.push(action.protocol.clone());
                    failed += 1;
                    continue;
                }
            }
        }
        let Some(client) = clients.get_mut(*address) else {
            continue;
        };
        let what = format!("{:?}", std::mem::discriminant(&action.call));
        match call(client, action.call.clone()).await {
            Ok(()) => {
                dmi.metrics.mapper_call(true);
                if let Err(e) =
                    dmi.book
                        .mark_sent(&action.protocol, action.key.clone(), action.fingerprint)
                {
                    tracing::error!(error = %e, "dmi book");
                }
            }
            Err(status) => {
                dmi.metrics.mapper_call(false);
                tracing::info!(protocol = %action.protocol, key = ?action.key, call = %what, code = ?status.code(), message = status.message(), "mapper call failed; retrying later");
                // Unreachable: skip the rest of this mapper's calls for this pass.
                if status.code() == tonic::Code::Unavailable {
                    clients.remove(*address);
                    down.push(action.protocol.clone());
                }
                failed += 1;
            }
        }
    }
    failed
}

/// Runs passes on every change (store or registration) and every [`RETRY`] while calls fail.
pub async fn run(dmi: Arc<Dmi>, cancel: CancellationToken) {
    let mut clients = HashMap::new();
    loop {
        let failed = pass(&dmi, &mut clients).await;
        let wait = if failed > 0 { RETRY } else { RETRY * 12 };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = dmi.changed.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dmi::catalog::tests_data::{DEVICE, MODEL};

    fn mapper(protocol: &str) -> MapperRecord {
        MapperRecord {
            protocol: protocol.into(),
            name: format!("{protocol}-mapper"),
            version: "v1".into(),
            api_version: "v1beta1".into(),
            address: format!("/run/{protocol}.sock"),
        }
    }

    fn kinds(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| {
                let call = match &a.call {
                    Call::CreateModel(_) => "create-model",
                    Call::UpdateModel(_) => "update-model",
                    Call::RegisterDevice(_) => "register",
                    Call::UpdateDevice(_) => "update",
                    Call::RemoveDevice { .. } => "remove",
                    Call::RemoveModel { .. } => "remove-model",
                };
                format!("{}:{call}:{}", a.protocol, a.key.2)
            })
            .collect()
    }

    fn applied(actions: &[Action]) -> BTreeMap<String, Sent> {
        let mut sent: BTreeMap<String, Sent> = BTreeMap::new();
        for a in actions {
            let s = sent.entry(a.protocol.clone()).or_default();
            match a.fingerprint {
                Some(fp) => s.insert(a.key.clone(), fp),
                None => s.remove(&a.key),
            };
        }
        sent
    }

    #[test]
    fn the_mapper_of_the_protocol_gets_what_changed_and_only_that() {
        let (catalog, _) = Catalog::build([DEVICE], [MODEL]);
        let mappers = [mapper("modbus"), mapper("opcua")];
        let first = plan(&catalog, &mappers, &BTreeMap::new());
        assert_eq!(
            kinds(&first),
            ["modbus:create-model:thermo", "modbus:register:t0"]
        );
        let sent = applied(&first);
        assert!(
            plan(&catalog, &mappers, &sent).is_empty(),
            "nothing changed, nothing sent"
        );
        // A desired value changed: one UpdateDevice.
        let changed = DEVICE.replace(r#""value":"10""#, r#""value":"20""#);
        let (c2, _) = Catalog::build([changed.as_str()], [MODEL]);
        let second = plan(&c2, &mappers, &sent);
        assert_eq!(kinds(&second), ["modbus:update:t0"]);
        let Call::UpdateDevice(d) = &second[0].call else {
            unreachable!()
        };
        assert_eq!(
            d.spec.as_ref().unwrap().properties[0]
                .desired
                .as_ref()
                .unwrap()
                .value,
            "20"
        );
        // A model change: UpdateDeviceModel (KubeEdge sends nothing).
        let model2 = MODEL
            .replace(r#""unit""#, r#""x""#)
            .replace("ReadOnly", "ReadWrite");
        let (c3, _) = Catalog::build([DEVICE], [model2.as_str()]);
        assert_eq!(
            kinds(&plan(&c3, &mappers, &sent)),
            ["modbus:update-model:thermo"]
        );
        // Gone: the device first, then its model.
        let (empty, _) = Catalog::build([], [MODEL]);
        assert_eq!(
            kinds(&plan(&empty, &mappers, &sent)),
            ["modbus:remove:t0", "modbus:remove-model:thermo"]
        );
    }

    #[test]
    fn a_device_waits_for_its_model_and_for_its_mapper() {
        let (no_model, _) = Catalog::build([DEVICE], []);
        assert!(plan(&no_model, &[mapper("modbus")], &BTreeMap::new()).is_empty());
        let (catalog, _) = Catalog::build([DEVICE], [MODEL]);
        assert!(plan(&catalog, &[mapper("opcua")], &BTreeMap::new()).is_empty());
        assert_eq!(
            kinds(&plan(&catalog, &[mapper("modbus")], &BTreeMap::new())),
            ["modbus:create-model:thermo", "modbus:register:t0"]
        );
        // The protocol comes from the model when the Device names none.
        let bare = DEVICE.replace(r#""protocolName":"modbus","#, "");
        let (c2, _) = Catalog::build([bare.as_str()], [MODEL]);
        assert_eq!(plan(&c2, &[mapper("modbus")], &BTreeMap::new()).len(), 2);
    }
}
