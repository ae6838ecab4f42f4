//! Logging: JSON in production, human text on a terminal, level from a RUST_LOG-style filter.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::{Error, Result, cli::LogFormat};

/// Installs the global tracing subscriber, writing to stderr.
///
/// `LogFormat::Auto` picks JSON when stderr is not a terminal (a pod's log collector) and text
/// when it is (a developer). JSON lines carry the current span's fields, so the
/// `name`/`namespace` of the reconcile span appear on every line it logs.
///
/// # Errors
/// [`Error::LogFilter`] for a bad filter, [`Error::TracingInit`] when a subscriber is already
/// installed (a second call): tracing has one global subscriber per process.
pub fn init_tracing(format: LogFormat, filter: &str) -> Result<()> {
    let env_filter = EnvFilter::try_new(filter).map_err(|source| Error::LogFilter {
        filter: filter.to_owned(),
        source,
    })?;
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    let installed = if use_json(format, terminal) {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.with_ansi(terminal).try_init()
    };
    installed.map_err(Error::TracingInit)
}

fn use_json(format: LogFormat, terminal: bool) -> bool {
    match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_choice() {
        assert!(use_json(LogFormat::Json, true));
        assert!(!use_json(LogFormat::Text, false));
        assert!(use_json(LogFormat::Auto, false));
        assert!(!use_json(LogFormat::Auto, true));
    }

    #[test]
    fn bad_filter_is_an_error() {
        let err = init_tracing(LogFormat::Text, "kube=loud").unwrap_err();
        assert_eq!(err.metric_label(), "log_filter");
    }

    // The only test in this binary that installs the global subscriber.
    #[test]
    fn second_init_is_an_error_not_a_panic() {
        // "off": keep other tests' logs out of the test output.
        init_tracing(LogFormat::Json, "off").unwrap();
        let err = init_tracing(LogFormat::Text, "info").unwrap_err();
        assert_eq!(err.metric_label(), "tracing_init");
    }
}
