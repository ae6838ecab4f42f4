//! The cloud ↔ edge wire, shared by the hub (cloud end) and the edge-agent (edge end).
//!
//! It speaks KubeEdge's cloudhub envelope (beehive `model.Message` as JSON text frames over a
//! WebSocket) so that an edgefleet agent and a KubeEdge edgecore are interchangeable on the wire.
//! The contract between hub, agent and the objectsync operator is written down in
//! `docs/channel.md`.
//!
//! - [`envelope`]: the message, its header and route, ACKs.
//! - [`resource`]: the `<namespace>/<type>/<name>` resource strings.
//! - [`session`]: URL, headers, timings and close codes of a session.
//! - [`device`]: device twin and state reports (KubeEdge's topics and content), edge → cloud.
//! - [`bootstrap`]: the token → certificate exchange of a node's first start.

pub mod bootstrap;
pub mod device;
pub mod envelope;
pub mod resource;
pub mod session;

pub use envelope::{Message, Operation};
pub use resource::{Resource, ResourceType};
