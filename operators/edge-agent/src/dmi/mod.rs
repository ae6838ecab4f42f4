//! The edge end of KubeEdge's Device Management Interface (DMI v1beta1): gRPC over a unix socket
//! between the agent and the node's device mappers, wire-compatible with KubeEdge's `api.proto`
//! (`proto/dmi_v1beta1.proto`), so an unmodified mapper-framework mapper plugs in.
//!
//! - [`catalog`] (pure): the delivered Devices/DeviceModels as DMI messages, the report checks.
//! - [`server`]: `DeviceManagerService` for the mappers (register, twins, states).
//! - [`deliver`]: calls each mapper's `DeviceMapperService` until it holds the node's devices.
//! - [`book`]: registrations, what each mapper holds, latest reports (SQLite, bounded).
//!
//! Flow: the hub delivers a Device → the store ([`WatchedStore`]) signals → [`deliver`] sends
//! RegisterDevice/UpdateDevice to the mapper of its protocol → the mapper reports → [`server`]
//! checks and keeps the latest value per property in the [`book::Book`] → pending reports go to
//! the hub when a session is up (latest per property, so an outage of any length is bounded).

pub mod book;
pub mod catalog;
pub mod deliver;
pub mod hollow;
pub mod proto;
pub mod server;
pub mod uplink;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use edgefleet_channel::ResourceType;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::{Applied, Key, Listed, Object, Store, StoreError};
use book::Book;
use catalog::Catalog;

/// Largest gRPC message a mapper may send (a report of 256 twins of 4 KiB fits; a flood of
/// bytes does not).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

#[derive(Clone, Debug)]
pub struct DmiConfig {
    /// The agent's DMI socket (KubeEdge: /etc/kubeedge/dmi.sock).
    pub socket: PathBuf,
    /// Requests per second each mapper may make, and its burst.
    pub rate_per_second: f64,
    pub burst: f64,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One token bucket per mapper (keyed by protocol).
pub struct Limiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Limiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        Limiter {
            rate: rate.max(0.001),
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `key`'s bucket; false when empty.
    pub fn take(&self, key: &str) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return false;
        };
        let now = Instant::now();
        let (tokens, last) = buckets.entry(key.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// DMI counters, rendered after the agent's own (`edgefleet_agent_dmi_*`).
#[derive(Debug, Default)]
pub struct DmiMetrics {
    pub registrations: AtomicU64,
    pub twins: AtomicU64,
    pub states: AtomicU64,
    pub mapper_calls_ok: AtomicU64,
    pub mapper_calls_failed: AtomicU64,
    refused: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl DmiMetrics {
    pub fn refused(&self, reason: &'static str) {
        if let Ok(mut r) = self.refused.lock() {
            *r.entry(reason).or_default() += 1;
        }
    }

    pub fn refused_count(&self, reason: &str) -> u64 {
        self.refused
            .lock()
            .map(|r| r.get(reason).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn registered(&self) {
        self.registrations.fetch_add(1, Ordering::Relaxed);
    }

    fn twins(&self, n: usize) {
        self.twins.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn states(&self) {
        self.states.fetch_add(1, Ordering::Relaxed);
    }

    fn mapper_call(&self, ok: bool) {
        let c = if ok {
            &self.mapper_calls_ok
        } else {
            &self.mapper_calls_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, v) in [
            (
                "mapper_registrations_total",
                "MapperRegister calls accepted.",
                &self.registrations,
            ),
            (
                "twins_total",
                "Twin values kept from mapper reports.",
                &self.twins,
            ),
            (
                "states_total",
                "Device states kept from mapper reports.",
                &self.states,
            ),
            (
                "mapper_calls_total{result=\"ok\"}",
                "Calls to mappers.",
                &self.mapper_calls_ok,
            ),
            (
                "mapper_calls_total{result=\"failed\"}",
                "",
                &self.mapper_calls_failed,
            ),
        ] {
            let base = name.split('{').next().unwrap_or(name);
            if !help.is_empty() {
                let _ = writeln!(
                    out,
                    "# HELP edgefleet_agent_dmi_{base} {help}\n# TYPE edgefleet_agent_dmi_{base} counter"
                );
            }
            let _ = writeln!(
                out,
                "edgefleet_agent_dmi_{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP edgefleet_agent_dmi_refused_total Mapper requests refused, by reason.\n# TYPE edgefleet_agent_dmi_refused_total counter"
        );
        if let Ok(r) = self.refused.lock() {
            for (reason, n) in r.iter() {
                let _ = writeln!(
                    out,
                    "edgefleet_agent_dmi_refused_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }
        out
    }
}

/// The DMI side's shared state.
pub struct Dmi {
    pub store: Arc<dyn Store>,
    pub book: Arc<Book>,
    pub config: DmiConfig,
    pub limiter: Limiter,
    pub metrics: Arc<DmiMetrics>,
    /// A Device/DeviceModel changed or a mapper registered: [`deliver`] runs a pass.
    pub changed: Arc<Notify>,
    /// A report was kept: the uplink sends what is pending.
    pub reported: Arc<Notify>,
    catalog: RwLock<Arc<Catalog>>,
}

impl Dmi {
    /// `changed` is the one the store wrapper ([`WatchedStore`]) signals.
    pub fn new(
        store: Arc<dyn Store>,
        book: Arc<Book>,
        config: DmiConfig,
        changed: Arc<Notify>,
    ) -> Arc<Self> {
        let limiter = Limiter::new(config.rate_per_second, config.burst);
        let dmi = Arc::new(Dmi {
            store,
            book,
            config,
            limiter,
            metrics: Arc::new(DmiMetrics::default()),
            changed,
            reported: Arc::new(Notify::new()),
            catalog: RwLock::new(Arc::new(Catalog::default())),
        });
        dmi.refresh_catalog();
        dmi
    }

    /// What the sessions send to the hub.
    pub fn uplink(&self) -> uplink::UplinkSource {
        uplink::UplinkSource {
            book: self.book.clone(),
            reported: self.reported.clone(),
        }
    }

    /// The catalog as last read.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// Re-reads the Devices and DeviceModels from the store.
    pub fn refresh_catalog(&self) -> Arc<Catalog> {
        let listed = match self.store.export() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "store");
                return self.catalog();
            }
        };
        let mut devices = Vec::new();
        let mut models = Vec::new();
        for Listed { resource, .. } in listed {
            let mut parts = resource.splitn(3, '/');
            let (Some(ns), Some(type_), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (into, t) = match type_ {
                "device" => (&mut devices, ResourceType::Device),
                "devicemodel" => (&mut models, ResourceType::DeviceModel),
                _ => continue,
            };
            if let Ok(Some(o)) = self.store.get(&Key::new(t, ns, name)) {
                into.push(o.body);
            }
        }
        let (catalog, skipped) = Catalog::build(
            devices.iter().map(String::as_str),
            models.iter().map(String::as_str),
        );
        for s in skipped {
            tracing::warn!(object = %s, "not a Device/DeviceModel the mappers can use");
        }
        let catalog = Arc::new(catalog);
        if let Ok(mut c) = self.catalog.write() {
            *c = catalog.clone();
        }
        catalog
    }
}

/// A store that signals when a Device or DeviceModel changes.
pub struct WatchedStore {
    pub inner: Arc<dyn Store>,
    pub changed: Arc<Notify>,
}

impl WatchedStore {
    fn signal(&self, key: &Key, applied: &Applied) {
        if applied.changed && matches!(key.type_, ResourceType::Device | ResourceType::DeviceModel)
        {
            self.changed.notify_one();
        }
    }
}

impl Store for WatchedStore {
    fn put(&self, key: &Key, object: Object) -> Result<Applied, StoreError> {
        let applied = self.inner.put(key, object)?;
        self.signal(key, &applied);
        Ok(applied)
    }

    fn delete(&self, key: &Key, uid: &str, resource_version: &str) -> Result<Applied, StoreError> {
        let applied = self.inner.delete(key, uid, resource_version)?;
        self.signal(key, &applied);
        Ok(applied)
    }

    fn get(&self, key: &Key) -> Result<Option<Object>, StoreError> {
        self.inner.get(key)
    }

    fn list(
        &self,
        type_: ResourceType,
        namespace: &str,
    ) -> Result<Vec<(String, Object)>, StoreError> {
        self.inner.list(type_, namespace)
    }

    fn export(&self) -> Result<Vec<Listed>, StoreError> {
        self.inner.export()
    }
}

/// Binds the DMI socket (a stale one from a previous run is replaced; mode 0660) and serves
/// `DeviceManagerService` until `cancel`; runs [`deliver::run`] beside it.
pub async fn serve(
    dmi: Arc<Dmi>,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let path = dmi.config.socket.clone();
    let listener = bind(&path)?;
    tracing::info!(socket = %path.display(), "DMI server listening");
    tokio::spawn(deliver::run(dmi.clone(), cancel.clone()));
    let service = proto::device_manager_service_server::DeviceManagerServiceServer::new(
        server::DmiServer(dmi),
    )
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    Ok(tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, cancel.cancelled())
            .await
        {
            tracing::error!(error = %e, "DMI server stopped");
        }
    }))
}

fn bind(path: &Path) -> Result<tokio::net::UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing stale {}: {e}", path.display())),
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| format!("binding {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mapper_has_its_own_bucket() {
        let limiter = Limiter::new(0.001, 3.0);
        let a: Vec<bool> = (0..5).map(|_| limiter.take("modbus")).collect();
        assert_eq!(a, [true, true, true, false, false]);
        assert!(limiter.take("opcua"), "another mapper is not affected");
    }
}
