//! End-to-end tests against the real local control plane (`hack/cluster up`).
//! One test binary, a module per area, so the workspace links once.

mod agent;
mod api_client;
mod balancer;
mod balancer_bed;
mod channel;
mod chart;
mod crds;
mod device;
mod device_edge;
mod device_hub;
mod gitops;
mod helm;
mod hostile;
mod hub;
mod identity;
mod leader;
mod leases;
mod namespaced;
mod objectsync;
mod observability;
mod plugin;
mod rollout;
mod rollout_defects;
mod rollout_end;
mod rollout_kill;
mod rollout_workloads;
mod samples;
mod testbed;
mod validation;
