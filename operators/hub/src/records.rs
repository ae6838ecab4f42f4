//! Node identities: one record per node (ConfigMap `edgefleet-node-identity-<node>` in the hub's
//! namespace) holding the hash of the one public key the node may use and whether it is
//! revoked. Every replica watches the records: a session is admitted only with the recorded
//! key of an active record, and a record that turns revoked (or moves to another key) closes
//! the node's session on every replica within a watch event.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use edgefleet_channel::bootstrap::{
    IDENTITY_KEY_KEY, IDENTITY_LABEL, IDENTITY_NODE_KEY, IDENTITY_STATE_LABEL, STATE_ACTIVE,
    STATE_REVOKED, identity_record_name,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::watcher;
use prometheus::{IntCounterVec, Opts, Registry};

use crate::hub::{Hub, lock};
use crate::limit::Limiter;

/// WebSocket close code of a session whose identity was revoked or superseded.
pub const CLOSE_REVOKED: u16 = 4003;

/// What a record says about a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Hex SHA-256 of the node's public key.
    pub key: String,
    pub revoked: bool,
}

/// The record in a ConfigMap, `None` when it is not one.
pub fn record_of(cm: &ConfigMap) -> Option<(String, Record)> {
    let data = cm.data.as_ref()?;
    let node = data.get(IDENTITY_NODE_KEY)?.clone();
    let key = data.get(IDENTITY_KEY_KEY).cloned().unwrap_or_default();
    let revoked = cm
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(IDENTITY_STATE_LABEL))
        .is_some_and(|s| s == STATE_REVOKED);
    Some((node, Record { key, revoked }))
}

/// Why a session is not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// No record: the certificate predates this hub or the record was deleted.
    Unknown,
    Revoked,
    /// The node's identity is another key now (a second identity was approved).
    Superseded,
    /// The API could not be asked.
    Unavailable,
}

impl Gate {
    pub fn label(self) -> &'static str {
        match self {
            Gate::Unknown => "identity_unknown",
            Gate::Revoked => "identity_revoked",
            Gate::Superseded => "identity_superseded",
            Gate::Unavailable => "identity_unavailable",
        }
    }
}

/// The admission rule for a session presenting `key` given the node's record.
pub fn decide(record: Option<&Record>, key: &str) -> Result<(), Gate> {
    match record {
        None => Err(Gate::Unknown),
        Some(r) if r.revoked => Err(Gate::Revoked),
        Some(r) if r.key != key => Err(Gate::Superseded),
        Some(_) => Ok(()),
    }
}

/// `edgefleet_hub_bootstrap_total{outcome}` and the renewals.
#[derive(Clone, Debug)]
pub struct IdentityMetrics {
    pub bootstrap: IntCounterVec,
    pub renewals: IntCounterVec,
}

impl IdentityMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = IdentityMetrics {
            bootstrap: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_bootstrap_total",
                    "Bootstrap requests by outcome (issued, pending, denied, rate_limited, bad_token, expired_token, out_of_scope, bad_request, error, busy).",
                ),
                &["outcome"],
            )?,
            renewals: IntCounterVec::new(
                Opts::new(
                    "edgefleet_hub_certificate_renewals_total",
                    "Certificate renewals by outcome (issued, refused, error, busy).",
                ),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(m.bootstrap.clone()))?;
        registry.register(Box::new(m.renewals.clone()))?;
        Ok(m)
    }

    pub fn names() -> Vec<String> {
        vec![
            "edgefleet_hub_bootstrap_total".into(),
            "edgefleet_hub_certificate_renewals_total".into(),
        ]
    }
}

/// The identity side of a replica: the record cache, the keys of the sessions it admitted,
/// the bootstrap rate limits and the certificate lifetime.
#[derive(Debug)]
pub struct Identities {
    records: Mutex<HashMap<String, Record>>,
    /// The key each admitted session of this replica presented, by node.
    admitted: Mutex<HashMap<String, String>>,
    pub per_address: Limiter,
    pub per_node: Limiter,
    /// Enrolments (bootstraps and renewals) doing API work at once. One is half a dozen API
    /// calls; a fleet enrolling at once must queue at its agents (503 + Retry-After), not in
    /// the API server — unbounded, 20,000 first contacts timed every call out and none got in.
    pub enrolling: tokio::sync::Semaphore,
    pub metrics: IdentityMetrics,
    pub cert_lifetime: Duration,
    /// Which nodes each join token bootstrapped, written coalesced.
    pub token_use: crate::token_use::TokenUse,
    /// The watch listed every record once: sessions are admitted from the cache from now on
    /// (before, each would cost a GET — a reconnect storm after a restart must not).
    synced: std::sync::atomic::AtomicBool,
}

impl Identities {
    pub fn new(
        metrics: IdentityMetrics,
        cert_lifetime: Duration,
        bootstrap_burst: u32,
        enrolments_in_flight: usize,
    ) -> Self {
        Identities {
            records: Mutex::new(HashMap::new()),
            admitted: Mutex::new(HashMap::new()),
            // A few tries at once, then one every 10 s (address) / 30 s (name).
            per_address: Limiter::new(bootstrap_burst, Duration::from_secs(10), 100_000),
            per_node: Limiter::new(bootstrap_burst, Duration::from_secs(30), 100_000),
            enrolling: tokio::sync::Semaphore::new(enrolments_in_flight.max(1)),
            metrics,
            cert_lifetime,
            token_use: crate::token_use::TokenUse::default(),
            synced: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn cached(&self, node: &str) -> Option<Record> {
        lock(&self.records).get(node).cloned()
    }

    fn store(&self, node: &str, record: Option<Record>) -> Option<Record> {
        let mut map = lock(&self.records);
        match record {
            Some(r) => map.insert(node.to_string(), r),
            None => map.remove(node),
        }
    }

    /// Admits a session of `node` presenting `key`: the cache when it agrees, else the record
    /// as the API has it now (a record written a moment ago by another replica).
    pub async fn admit(&self, hub: &Hub, node: &str, key: &str) -> Result<(), Gate> {
        if decide(self.cached(node).as_ref(), key).is_ok() {
            self.admitted(node, key);
            return Ok(());
        }
        let fresh = fetch(&records_api(hub), node)
            .await
            .map_err(|_| Gate::Unavailable)?;
        self.store(node, fresh.clone());
        decide(fresh.as_ref(), key)?;
        self.admitted(node, key);
        Ok(())
    }

    fn admitted(&self, node: &str, key: &str) {
        lock(&self.admitted).insert(node.to_string(), key.to_string());
    }

    /// Applies a record seen by the watch: closes the node's session on this replica when the
    /// session's key is no longer the node's active identity.
    fn apply(&self, hub: &Hub, node: &str, record: Option<Record>) {
        self.store(node, record.clone());
        let Some(session) = hub.registry.get(node) else {
            return;
        };
        let key = lock(&self.admitted).get(node).cloned().unwrap_or_default();
        if let Err(gate) = decide(record.as_ref(), &key) {
            tracing::info!(%node, reason = gate.label(), "closing the session of a node whose identity changed");
            hub.metrics.refused.with_label_values(&[gate.label()]).inc();
            session.request_close(CLOSE_REVOKED, gate.label().to_string());
        }
    }
}

pub fn records_api(hub: &Hub) -> Api<ConfigMap> {
    Api::namespaced(hub.client.clone(), &hub.config.namespace)
}

/// The node's record as the API has it now.
pub async fn fetch(api: &Api<ConfigMap>, node: &str) -> Result<Option<Record>, kube::Error> {
    Ok(api
        .get_opt(&identity_record_name(node))
        .await?
        .as_ref()
        .and_then(record_of)
        .map(|(_, r)| r))
}

/// Writes the node's record: active, with `key` (replacing any earlier key or revocation).
pub async fn write_active(
    api: &Api<ConfigMap>,
    node: &str,
    data: BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    let name = identity_record_name(node);
    let mut cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([
                (IDENTITY_LABEL.to_string(), "true".to_string()),
                (IDENTITY_STATE_LABEL.to_string(), STATE_ACTIVE.to_string()),
                ("app.kubernetes.io/part-of".into(), "edgefleet".into()),
            ])),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    for _ in 0..5 {
        match api.get_opt(&name).await? {
            None => match api.create(&PostParams::default(), &cm).await {
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                other => return other.map(|_| ()),
            },
            Some(existing) => {
                cm.metadata.resource_version = existing.metadata.resource_version;
                match api.replace(&name, &PostParams::default(), &cm).await {
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    other => return other.map(|_| ()),
                }
            }
        }
    }
    Err(kube::Error::Service(
        "identity record: too many conflicts".into(),
    ))
}

/// Watches the records until shutdown; revocations close sessions here within one event.
pub async fn run_watcher(hub: Arc<Hub>, identities: Arc<Identities>) {
    let api = records_api(&hub);
    let config = watcher::Config::default().labels(IDENTITY_LABEL);
    let mut stream = watcher(api, config).boxed();
    let mut seen_in_relist: Option<HashMap<String, Record>> = None;
    loop {
        let event = tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            e = stream.next() => e,
        };
        match event {
            None => return,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "identity record watch");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Some(Ok(watcher::Event::Init)) => seen_in_relist = Some(HashMap::new()),
            Some(Ok(watcher::Event::InitApply(cm))) => {
                if let (Some(seen), Some((node, record))) =
                    (seen_in_relist.as_mut(), record_of(&cm))
                {
                    seen.insert(node, record);
                }
            }
            Some(Ok(watcher::Event::InitDone)) => {
                let seen = seen_in_relist.take().unwrap_or_default();
                let gone: Vec<String> = lock(&identities.records)
                    .keys()
                    .filter(|n| !seen.contains_key(*n))
                    .cloned()
                    .collect();
                for node in gone {
                    identities.apply(&hub, &node, None);
                }
                for (node, record) in seen {
                    identities.apply(&hub, &node, Some(record));
                }
                identities
                    .synced
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Some(Ok(watcher::Event::Apply(cm))) => {
                if let Some((node, record)) = record_of(&cm) {
                    identities.apply(&hub, &node, Some(record));
                }
            }
            Some(Ok(watcher::Event::Delete(cm))) => {
                if let Some((node, _)) = record_of(&cm) {
                    identities.apply(&hub, &node, None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_admitted_only_with_the_active_recorded_key() {
        let active = Record {
            key: "k1".into(),
            revoked: false,
        };
        let revoked = Record {
            key: "k1".into(),
            revoked: true,
        };
        for (record, key, want) in [
            (Some(&active), "k1", Ok(())),
            (Some(&active), "k2", Err(Gate::Superseded)),
            (Some(&revoked), "k1", Err(Gate::Revoked)),
            (None, "k1", Err(Gate::Unknown)),
        ] {
            assert_eq!(decide(record, key), want, "{record:?} {key}");
        }
    }

    #[test]
    fn records_read_from_configmaps() {
        let mut cm = ConfigMap {
            data: Some(BTreeMap::from([
                (IDENTITY_NODE_KEY.to_string(), "edge-1".to_string()),
                (IDENTITY_KEY_KEY.to_string(), "k1".to_string()),
            ])),
            ..Default::default()
        };
        assert_eq!(
            record_of(&cm),
            Some((
                "edge-1".into(),
                Record {
                    key: "k1".into(),
                    revoked: false
                }
            ))
        );
        cm.metadata.labels = Some(BTreeMap::from([(
            IDENTITY_STATE_LABEL.to_string(),
            STATE_REVOKED.to_string(),
        )]));
        assert!(record_of(&cm).unwrap().1.revoked);
        assert_eq!(record_of(&ConfigMap::default()), None);
    }
}
