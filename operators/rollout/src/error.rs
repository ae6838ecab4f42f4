//! Errors of the rollout operator, each with a short label for metrics.

use edgefleet_kit::MetricLabel;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Kit(#[from] edgefleet_kit::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("RolloutJob has no {0}")]
    MissingField(&'static str),
    #[error("reconcile did not finish within {0:?}")]
    Timeout(std::time::Duration),
    #[error("building a patch: {0}")]
    Patch(#[from] serde_json::Error),
    #[error("{workload} was taken by RolloutJob {holder} at the same time; this job waits for it")]
    LockTaken { workload: String, holder: String },
    #[error("pod {0} exists and is not this job's pre-pull pod for that node and attempt")]
    PrePullNameTaken(String),
}

impl MetricLabel for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube_api",
            Self::Kit(e) => e.metric_label(),
            Self::Finalizer(_) => "finalizer",
            Self::MissingField(_) => "missing_field",
            Self::Timeout(_) => "timeout",
            Self::Patch(_) => "patch",
            Self::LockTaken { .. } => "lock_taken",
            Self::PrePullNameTaken(_) => "prepull_name_taken",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
