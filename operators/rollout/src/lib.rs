//! The rollout operator: reconciles `RolloutJob`s — batched image rollouts across many edge
//! workloads, pulling the new image on each node before its pod is swapped.
//!
//! | step | module |
//! |---|---|
//! | read the cluster into targets | [`snapshot`] |
//! | decide (pure) | [`plan`], [`prepull`] (pod shape, pull outcome), [`workload`] (patches) |
//! | act | [`act`] |
//! | status, events, gauges | [`status`], [`report`] |
//! | wire it up | [`controller`], [`metrics`] |

pub mod act;
pub mod controller;
pub mod error;
pub mod metrics;
pub mod plan;
pub mod prepull;
pub mod report;
pub mod snapshot;
pub mod status;
pub mod workload;
