//! Errors of the balancer, each with a short label for metrics.

use edgefleet_kit::MetricLabel;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Kit(#[from] edgefleet_kit::Error),
    #[error("spec.hubSelector: {0}")]
    Selector(String),
    #[error("encoding an order: {0}")]
    Encode(#[from] serde_json::Error),
}

impl MetricLabel for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube_api",
            Self::Kit(e) => e.metric_label(),
            Self::Selector(_) => "invalid_spec",
            Self::Encode(_) => "encode",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
