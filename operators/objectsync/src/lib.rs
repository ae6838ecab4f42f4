//! The objectsync operator: the single writer of ObjectSyncs. One sync per (edge node, object
//! it needs) — pods bound to the node, the ConfigMaps and Secrets they reference, Devices bound
//! to it and their DeviceModels — named `<node>.<uid>`, labelled by node, held by a finalizer
//! until the edge acknowledged the object's delete. Trailing deliveries are handed back to the
//! hub (resync annotation); a deleted node's syncs are removed through the node index.
//!
//! | step | module |
//! |---|---|
//! | what a pod references (pure) | [`refs`] |
//! | the cluster, reduced and indexed by node | [`watch`] → [`index`] |
//! | which node to look at | [`queue`] |
//! | decide (pure) | [`plan`] |
//! | act | [`act`] |
//! | wire it up, census | [`controller`], [`metrics`] |

pub mod act;
pub mod controller;
pub mod error;
pub mod index;
pub mod metrics;
pub mod plan;
pub mod queue;
pub mod refs;
pub mod watch;
