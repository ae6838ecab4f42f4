//! The hub: the cloud end of the edge channel.
//!
//! | module | does |
//! |---|---|
//! | [`server`] | TLS listener: bootstrap endpoint, WebSocket upgrade with identity and capacity checks |
//! | [`session`] | one edge session: reader/scheduler loop + writer task |
//! | [`queue`] | a node's queue: latest wins per UID, window, resend, give up (pure) |
//! | [`route`] | the watchers' events → what each connected node lacks, queued on its session |
//! | [`device`] | device twin/state reports → `Device.status`: coalesced, ordered, bounded |
//! | [`edge`] | edge → cloud: node registration, heartbeat, twin relay, queries |
//! | [`lease`] | node Leases of connected nodes: one write each, earliest first, own budget |
//! | [`identity`] | the CA Secret, node certificates, TLS config, CN checks |
//! | [`enroll`] | join tokens, CSR API approval and signing, renewal |
//! | [`records`] | one identity per node: records, session admission, revocation |
//! | [`token_use`] | which nodes a join token bootstrapped, one patch per token at a time |
//! | [`limit`] | token buckets for the bootstrap endpoint |
//! | [`report`] | the load report ConfigMap |
//! | [`release`] | carrying out the balancer's release order: out of rotation, close, back |
//! | [`hub`] | shared state: config, session registry, metrics |
//! | [`status`] | the coalescing, bounded status board and the writer that drains it |
//! | [`cache`] | reflector stores and the UID → nodes index (data only) |
//! | [`wire`] | what is queued and sent: payloads, delivered kinds, acked-version rules |
//!
//! Dependencies point down this table (`wire` at the bottom; `server` → `session` → `route`,
//! `edge`, `lease` → `hub` → `status`, `cache` → `wire`); no module extends another's type.

pub mod cache;
pub mod device;
pub mod edge;
pub mod enroll;
pub mod error;
pub mod hub;
pub mod identity;
pub mod lease;
pub mod limit;
pub mod metrics;
pub mod queue;
pub mod records;
pub mod release;
pub mod report;
pub mod route;
pub mod server;
pub mod session;
pub mod status;
pub mod token_use;
pub mod wire;

/// Locks a mutex, recovering the data of a poisoned one (a panicking holder cannot leave these
/// maps half-updated: every critical section is a few infallible map operations).
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub use error::{Error, Result};

/// The prefix of every metric this binary exports.
pub const METRICS_PREFIX: &str = "edgefleet_hub";

/// Every metric `edgefleet-hub` exports (what its `main` registers), named without serving
/// them: the dashboards and alert rules are checked against this list.
pub fn metric_names() -> Vec<String> {
    let registry = prometheus::Registry::new();
    let mut names = Vec::new();
    if let Ok(m) = metrics::HubMetrics::register(&registry) {
        names.extend(m.names());
    }
    names.extend(records::IdentityMetrics::names());
    if let Ok(layer) = edgefleet_kit::CountRequestsLayer::register(&registry, METRICS_PREFIX) {
        names.extend(edgefleet_kit::names_of(&[layer.counter()]));
    }
    names.sort();
    names
}
