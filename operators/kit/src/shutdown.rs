//! One shutdown signal for the whole process.

use tokio_util::sync::CancellationToken;

/// Returns a token that trips on the first SIGTERM (the kubelet stopping the pod) or SIGINT
/// (Ctrl-C). Clone it into every controller, server and elector; each stops gracefully when it
/// trips.
///
/// A second signal exits the process at once (exit code 130), for a human whose graceful
/// shutdown is stuck; in a pod the kubelet's SIGKILL after the grace period does the same.
///
/// The signal handlers are installed before this returns, so a signal that arrives right after
/// cannot kill the process with the default action.
///
/// # Panics
/// Outside a Tokio runtime (it spawns the listener task, like `tokio::spawn`).
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trip = token.clone();
    let mut signals = Signals::install();
    tokio::spawn(async move {
        let name = signals.next().await;
        tracing::info!(signal = name, "shutting down");
        trip.cancel();
        let name = signals.next().await;
        tracing::warn!(signal = name, "second signal: exiting now");
        std::process::exit(130);
    });
    token
}

#[cfg(unix)]
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

#[cfg(unix)]
impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, signal = name, "cannot listen for signal");
                None
            }
        };
        Self {
            term: install(SignalKind::terminate(), "SIGTERM"),
            int: install(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// Waits for the next SIGTERM or SIGINT and returns its name.
    async fn next(&mut self) -> &'static str {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = recv(&mut self.term) => "SIGTERM",
            () = recv(&mut self.int) => "SIGINT",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Self {
        Signals
    }

    async fn next(&mut self) -> &'static str {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        "Ctrl-C"
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sigterm_trips_the_token() {
        let token = shutdown_signal();
        let child = token.clone();
        assert!(!token.is_cancelled());
        // The handler is installed by now, so this signal cannot kill the test process.
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(5), child.cancelled())
            .await
            .unwrap();
    }
}
