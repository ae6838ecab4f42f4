//! [`run_while_leader`]: start and stop a controller with leadership.

use std::future::Future;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::LeaderElector;

/// Runs the future `make_future` builds only while `elector` says this replica leads: starts it
/// when leadership is gained, drops it (cancelling it at its next `.await`) when leadership is
/// lost, builds a fresh one when leadership returns.
///
/// Returns when `shutdown` trips, or when the future completes by itself. Either way the
/// controller is dropped first and the Lease released after, so a successor never starts while
/// this replica still runs. With [`LeaderElector::disabled`] the future simply runs until
/// shutdown.
///
/// The elector runs on its own task, so a busy controller cannot delay lease renewals.
pub async fn run_while_leader<F, Fut>(
    elector: LeaderElector,
    shutdown: CancellationToken,
    mut make_future: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut leading = elector.subscribe();
    let stop_elector = CancellationToken::new();
    let elector_task = tokio::spawn(elector.run(stop_elector.clone()));
    lead(&mut leading, &shutdown, &mut make_future).await;
    stop_elector.cancel();
    if let Err(e) = elector_task.await {
        tracing::error!(error = %e, "leader elector task failed");
    }
}

/// The start/stop loop of [`run_while_leader`], apart from the elector so tests can drive it.
async fn lead<F, Fut>(
    leading: &mut watch::Receiver<bool>,
    shutdown: &CancellationToken,
    make_future: &mut F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            alive = wait_for(leading, true) => if !alive { return },
        }
        tracing::info!("leading: starting controllers");
        let work = make_future();
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            alive = wait_for(leading, false) => {
                if !alive {
                    return;
                }
                tracing::warn!("leadership lost: stopped controllers");
            }
            () = work => {
                tracing::warn!("controllers returned while leading");
                return;
            }
        }
    }
}

/// Waits until the channel holds `want`; `false` if the elector is gone.
async fn wait_for(rx: &mut watch::Receiver<bool>, want: bool) -> bool {
    rx.wait_for(|leading| *leading == want).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };
    use tokio::time::timeout;

    /// Counts starts, and drops (a dropped future is a stopped controller).
    #[derive(Clone, Default)]
    struct Probe {
        started: Arc<AtomicUsize>,
        dropped: Arc<AtomicUsize>,
    }

    struct DropGuard(Arc<AtomicUsize>);
    impl Drop for DropGuard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Probe {
        fn controller(&self) -> impl Future<Output = ()> + use<> {
            self.started.fetch_add(1, Ordering::SeqCst);
            let guard = DropGuard(self.dropped.clone());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
            }
        }

        fn counts(&self) -> (usize, usize) {
            (
                self.started.load(Ordering::SeqCst),
                self.dropped.load(Ordering::SeqCst),
            )
        }
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn lead_starts_stops_and_restarts_with_leadership() {
        let (tx, mut rx) = watch::channel(false);
        let shutdown = CancellationToken::new();
        let probe = Probe::default();
        let p = probe.clone();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let mut make = || p.controller();
                lead(&mut rx, &shutdown, &mut make).await;
            }
        });
        settle().await;
        assert_eq!(probe.counts(), (0, 0), "not leading: nothing runs");
        tx.send_replace(true);
        settle().await;
        assert_eq!(probe.counts(), (1, 0), "leading: started");
        tx.send_replace(false);
        settle().await;
        assert_eq!(probe.counts(), (1, 1), "lost: dropped");
        tx.send_replace(true);
        settle().await;
        assert_eq!(probe.counts(), (2, 1), "regained: a fresh one");
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(probe.counts(), (2, 2), "shutdown: dropped");
    }

    #[tokio::test]
    async fn run_while_leader_without_election_runs_until_shutdown() {
        let probe = Probe::default();
        let p = probe.clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_while_leader(
            LeaderElector::disabled(),
            shutdown.clone(),
            move || p.controller(),
        ));
        settle().await;
        assert_eq!(probe.counts(), (1, 0));
        shutdown.cancel();
        timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(probe.counts(), (1, 1));
    }

    #[tokio::test]
    async fn run_while_leader_returns_when_the_controller_does() {
        let shutdown = CancellationToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let make = move || {
            r.fetch_add(1, Ordering::SeqCst);
            async {}
        };
        timeout(
            Duration::from_secs(5),
            run_while_leader(LeaderElector::disabled(), shutdown, make),
        )
        .await
        .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
