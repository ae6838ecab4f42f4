//! The kit's one error type.

use std::net::SocketAddr;

/// What can go wrong in the shared runtime.
///
/// Each variant has a short, stable [`metric_label`](Error::metric_label) so an operator can count
/// kit failures in its `reconcile_errors_total{error}` without leaking message text into labels.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--log-level` / `RUST_LOG` is not a valid filter directive.
    #[error("invalid log filter {filter:?}: {source}")]
    LogFilter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },

    /// A global tracing subscriber was already installed (e.g. `init_tracing` called twice).
    #[error("tracing is already initialised: {0}")]
    TracingInit(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// A metric could not be created or registered (bad name, duplicate registration).
    #[error("metrics registration failed: {0}")]
    Metrics(#[from] prometheus::Error),

    /// The metrics/health listener could not bind its address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// The metrics/health server stopped with an I/O error, or its task died.
    #[error("metrics/health server failed: {0}")]
    Serve(String),

    /// Lease timings that cannot work: both must be positive and grace shorter than duration.
    #[error(
        "invalid lease timing: duration {duration}s, grace {grace}s (need 0 < grace < duration)"
    )]
    LeaseTiming { duration: u64, grace: u64 },

    /// The lease manager failed to reach or update the Lease (logged and retried by the elector).
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),

    /// This replica could not confirm its lease renewal in time, so it stepped down.
    #[error("leader election: lease {lease} not confirmed in time: {reason}")]
    LeaseNotConfirmed { lease: String, reason: String },

    /// A server-side apply was rejected or could not be sent.
    #[error("server-side apply of {kind} {name} failed: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    /// No kubeconfig or in-cluster configuration was found.
    #[error("cannot find a Kubernetes client configuration: {0}")]
    KubeConfig(#[from] kube::config::InferConfigError),

    /// A configuration was found but no client could be built from it (e.g. TLS material).
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),

    /// An object could not be turned into an apply body.
    #[error("cannot serialize {kind} {name} for apply: {source}")]
    Serialize {
        kind: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// A short static label for metrics (`reconcile_errors_total{error="..."}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::LogFilter { .. } => "log_filter",
            Error::TracingInit(_) => "tracing_init",
            Error::Metrics(_) => "metrics",
            Error::Bind { .. } => "bind",
            Error::Serve(_) => "serve",
            Error::LeaseTiming { .. } => "lease_timing",
            Error::Lease(_) => "lease",
            Error::LeaseNotConfirmed { .. } => "lease_not_confirmed",
            Error::Apply { .. } => "apply",
            Error::Serialize { .. } => "serialize",
            Error::KubeConfig(_) => "kube_config",
            Error::Client(_) => "client",
        }
    }
}

impl crate::metrics::MetricLabel for Error {
    fn metric_label(&self) -> &'static str {
        Error::metric_label(self)
    }
}

/// The kit's `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
