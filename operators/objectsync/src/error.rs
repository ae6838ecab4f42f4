//! Errors of the objectsync operator, each with a short label for metrics.

use edgefleet_kit::MetricLabel;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Kit(#[from] edgefleet_kit::Error),
    #[error("{failed} of {total} writes for node {node} failed; first: {first}")]
    Writes {
        node: String,
        failed: usize,
        total: usize,
        first: Box<Error>,
    },
    #[error("building a JSON patch: {0}")]
    Patch(#[source] serde_json::Error),
    #[error("reconcile did not finish within {0:?}")]
    Timeout(std::time::Duration),
}

impl MetricLabel for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube_api",
            Self::Kit(e) => e.metric_label(),
            Self::Writes { first, .. } => first.metric_label(),
            Self::Patch(_) => "patch",
            Self::Timeout(_) => "timeout",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
