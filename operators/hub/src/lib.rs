//! The hub: the cloud end of the edge channel.
//!
//! | module | does |
//! |---|---|
//! | [`server`] | TLS listener: bootstrap endpoint, WebSocket upgrade with identity and capacity checks |
//! | [`session`] | one edge session: reader/scheduler loop + writer task |
//! | [`queue`] | a node's queue: latest wins per UID, window, resend, give up (pure) |
//! | [`deliver`] | reflectors, UID → nodes index, what a sync needs sent, ACK status writes |
//! | [`edge`] | edge → cloud: node registration, heartbeat + Lease, twin relay, queries |
//! | [`identity`] | the CA Secret, node certificates, TLS config, CN checks |
//! | [`enroll`] | join tokens, CSR API approval and signing, renewal |
//! | [`records`] | one identity per node: records, session admission, revocation |
//! | [`limit`] | token buckets for the bootstrap endpoint |
//! | [`report`] | the load report ConfigMap |
//! | [`hub`] | shared state: config, session registry, metrics |

pub mod deliver;
pub mod edge;
pub mod enroll;
pub mod error;
pub mod hub;
pub mod identity;
pub mod limit;
pub mod metrics;
pub mod queue;
pub mod records;
pub mod report;
pub mod server;
pub mod session;

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
