//! The edge end of edgefleet's cloud-edge channel (contract: `docs/channel.md`).
//!
//! - [`session`]: one mTLS WebSocket session to a hub, kept up with jittered back-off.
//! - [`handler`]: store first, ACK second; refusals of malformed or foreign frames.
//! - [`store`]: the [`store::Store`] trait, SQLite (durable) and in-memory implementations.
//! - [`identity`]: join token (CA-pinned) → certificate, kept in the data dir.
//! - [`renew`]: the certificate renewed before expiry with the current one, no reconnect.
//! - [`api`]: the local read-only API in the Kubernetes shape, served offline too.
//! - [`simulate`]: thousands of hollow agents in one process.

pub mod api;
pub mod backoff;
pub mod cli;
pub mod dmi;
pub mod handler;
pub mod hub;
pub mod identity;
pub mod metrics;
pub mod node;
pub mod renew;
pub mod session;
pub mod simulate;
pub mod store;

#[cfg(test)]
pub(crate) mod tests_support {
    use std::time::Duration;

    pub fn session_config(node: &str) -> crate::session::SessionConfig {
        crate::session::SessionConfig {
            node: node.to_string(),
            project_id: edgefleet_channel::session::DEFAULT_PROJECT_ID.to_string(),
            hubs: crate::hub::HubAddr {
                host: "127.0.0.1".into(),
                port: 1,
            }
            .into(),
            keepalive: Duration::from_secs(15),
            status_interval: Duration::from_secs(300),
            node_status: true,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(60),
            read_buffer: 4096,
        }
    }
}
