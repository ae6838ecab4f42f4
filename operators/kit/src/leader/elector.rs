//! [`LeaderElector`]: publishes "am I leader" while a lease manager follows and leads.

use std::time::Duration;

use jiff::Timestamp;
use kube::Client;
use kube_lease_manager::LeaseManager;
use prometheus::IntGauge;
use tokio::{
    sync::watch,
    time::{Instant, sleep, sleep_until},
};
use tokio_util::sync::CancellationToken;

use super::{
    LeaseTiming,
    lease::{LeaseConfig, Look},
};
use crate::{Error, Result, cli::CommonArgs};

/// Elects one leader among an operator's replicas. See the [`leader`](crate::leader) docs for the
/// guarantee.
///
/// ```ignore
/// let elector = LeaderElector::new(client, "edgefleet-system", "edgefleet-rollout", "pod-a",
///     LeaseTiming::new(15, 5)?).with_leader_gauge(metrics.leader.clone());
/// let mut leading = elector.subscribe();
/// tokio::spawn(elector.run(shutdown.clone()));
/// ```
pub struct LeaderElector {
    lease: Option<LeaseConfig>,
    leading: watch::Sender<bool>,
    gauge: Option<IntGauge>,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lease = self.lease.as_ref();
        f.debug_struct("LeaderElector")
            .field("namespace", &lease.map(|l| &l.namespace))
            .field("lease", &lease.map(|l| &l.name))
            .field("identity", &lease.map(|l| &l.identity))
            .field("timing", &lease.map(|l| l.timing))
            .field("leading", &*self.leading.borrow())
            .finish()
    }
}

impl LeaderElector {
    /// An elector on Lease `namespace/lease_name` for replica `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        lease_name: &str,
        identity: &str,
        timing: LeaseTiming,
    ) -> Self {
        let lease = LeaseConfig {
            client,
            namespace: namespace.to_owned(),
            name: lease_name.to_owned(),
            identity: identity.to_owned(),
            timing,
        };
        Self {
            lease: Some(lease),
            leading: watch::Sender::new(false),
            gauge: None,
        }
    }

    /// No election: this replica leads from [`run`](Self::run) until shutdown
    /// (`--leader-elect=false`).
    pub fn disabled() -> Self {
        Self {
            lease: None,
            leading: watch::Sender::new(false),
            gauge: None,
        }
    }

    /// The elector the shared flags ask for; `default_lease_name` unless
    /// `--leader-election-id` is given.
    ///
    /// # Errors
    /// [`Error::LeaseTiming`] for impossible `--lease-*-seconds`.
    pub fn from_args(client: Client, args: &CommonArgs, default_lease_name: &str) -> Result<Self> {
        if !args.leader_elect {
            return Ok(Self::disabled());
        }
        Ok(Self::new(
            client,
            &args.leader_election_namespace,
            args.lease_name(default_lease_name),
            &args.identity,
            args.lease_timing()?,
        ))
    }

    /// Also reflect leadership in `gauge` (1 leading, 0 not), e.g. `ReconcileMetrics::leader`.
    pub fn with_leader_gauge(mut self, gauge: IntGauge) -> Self {
        gauge.set(i64::from(*self.leading.borrow()));
        self.gauge = Some(gauge);
        self
    }

    /// "Am I leader": `true` from a confirmed acquisition until leadership is lost or released.
    ///
    /// Copy the value out (`*rx.borrow()`, or drop what `wait_for` returns) rather than holding
    /// the borrow across an `.await`: a held borrow blocks the elector's next update.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Runs the election until `shutdown` trips, then steps down and releases the Lease.
    ///
    /// Never fails: API errors are logged and retried with back-off, stepping down first when
    /// leading.
    pub async fn run(self, shutdown: CancellationToken) {
        match self.lease.clone() {
            None => {
                self.publish(true);
                shutdown.cancelled().await;
            }
            Some(lease) => self.run_lease(&lease, &shutdown).await,
        }
        self.publish(false);
    }

    fn publish(&self, leading: bool) {
        let changed = self.leading.send_if_modified(|current| {
            let changed = *current != leading;
            *current = leading;
            changed
        });
        if let Some(gauge) = &self.gauge {
            gauge.set(i64::from(leading));
        }
        if changed {
            let lease = self.lease.as_ref().map(|l| l.name.as_str());
            let identity = self.lease.as_ref().map(|l| l.identity.as_str());
            tracing::info!(leading, lease, identity, "leadership changed");
        }
    }

    /// One lease manager per attempt; a failed attempt steps down, releases, backs off, retries.
    async fn run_lease(&self, lease: &LeaseConfig, shutdown: &CancellationToken) {
        let mut backoff = Backoff::new();
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                built = lease.manager() => match built {
                    Ok(manager) => {
                        let result = self.drive(lease, &manager, shutdown).await;
                        self.publish(false);
                        if !matches!(result, Ok(Ended::Released)) {
                            lease.release(&manager).await;
                        }
                        result
                    }
                    Err(e) => Err(e),
                },
            };
            let e = match result {
                Ok(Ended::Shutdown) => return,
                // A fresh manager reads the Lease at once and takes it.
                Ok(Ended::Released) => continue,
                Err(e) => e,
            };
            if started.elapsed() > lease.timing.duration() {
                backoff.reset();
            }
            let delay = backoff.next();
            tracing::warn!(error = %e, lease = %lease.name, retry_in = ?delay, "leader election failed");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = sleep(delay) => {}
            }
        }
    }

    /// Follows, then leads while the manager holds the Lease and renewals are confirmed.
    /// `Err` on a failure that needs a fresh manager.
    async fn drive(
        &self,
        lease: &LeaseConfig,
        manager: &LeaseManager,
        shutdown: &CancellationToken,
    ) -> Result<Ended> {
        let mut holds = false;
        loop {
            holds = if holds {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(Ended::Shutdown),
                    e = self.confirm_renewals(lease) => return Err(e),
                    changed = manager.changed() => changed?,
                }
            } else {
                let acquired = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(Ended::Shutdown),
                    acquired = lease.follow(manager) => acquired?,
                };
                if !acquired {
                    return Ok(Ended::Released);
                }
                true
            };
            if !holds {
                self.publish(false);
            }
        }
    }

    /// Publishes `true` once the Lease shows this replica's fresh renewal, then confirms each
    /// renewal after it is due. Returns (never `Ok`) when a check fails: time to step down.
    async fn confirm_renewals(&self, lease: &LeaseConfig) -> Error {
        let grace = lease.timing.grace();
        let poll = (grace / 8).max(Duration::from_millis(100));
        // Just acquired, or found our own stale entry after a restart: the manager renews it
        // right away, so give that up to `grace` to show.
        let (mut renewed, mut expires) =
            match wait_renewal(lease, None, Instant::now() + grace, poll).await {
                Ok(seen) => seen,
                Err(e) => return e,
            };
        self.publish(true);
        loop {
            // The manager renews `grace` before expiry. Look from `grace/4` after that, and
            // keep looking (a loaded API server answers slowly) until `grace/4` before expiry:
            // a read slower than one poll must not cost the lead, an unconfirmed one must end it.
            sleep_until(expires.checked_sub(grace * 3 / 4).unwrap_or(expires)).await;
            let deadline = expires.checked_sub(grace / 4).unwrap_or(expires);
            (renewed, expires) = match wait_renewal(lease, Some(renewed), deadline, poll).await {
                Ok(seen) => seen,
                Err(e) => return e,
            };
        }
    }
}

/// Reads the Lease every `poll` until it shows a renewal newer than `after` (any fresh one for
/// `None`); the last reason it did not, by `deadline`, or at once when another replica holds it.
async fn wait_renewal(
    lease: &LeaseConfig,
    after: Option<Timestamp>,
    deadline: Instant,
    poll: Duration,
) -> Result<(Timestamp, Instant)> {
    loop {
        let why = match lease.look(deadline).await {
            Look::Held { renewed, expires } if after.is_none_or(|a| renewed > a) => {
                return Ok((renewed, expires));
            }
            Look::Held { .. } => lease.unconfirmed("the renewal has not landed".into()),
            Look::NotYet(e) => e,
            Look::Lost(e) => return Err(e),
        };
        if Instant::now() + poll >= deadline {
            return Err(why);
        }
        sleep(poll).await;
    }
}

/// Why one lease manager's run ended without an error.
enum Ended {
    Shutdown,
    /// The holder released the Lease while we followed.
    Released,
}

/// 1 s doubling to 30 s between failed election attempts.
struct Backoff(Duration);

impl Backoff {
    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    fn new() -> Self {
        Self(Self::MIN)
    }

    fn next(&mut self) -> Duration {
        let delay = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        delay
    }

    fn reset(&mut self) {
        self.0 = Self::MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::timeout;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::new();
        let seen: Vec<u64> = (0..7).map(|_| b.next().as_secs()).collect();
        assert_eq!(seen, [1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert_eq!(b.next(), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn disabled_elector_leads_until_shutdown() {
        let gauge = IntGauge::new("leader", "test").unwrap();
        let elector = LeaderElector::disabled().with_leader_gauge(gauge.clone());
        let mut leading = elector.subscribe();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(elector.run(shutdown.clone()));
        leading.wait_for(|l| *l).await.unwrap();
        assert_eq!(gauge.get(), 1);
        shutdown.cancel();
        task.await.unwrap();
        assert!(!*leading.borrow());
        assert_eq!(gauge.get(), 0);
    }

    /// No API server behind the client: the elector never leads, keeps retrying, and still
    /// stops promptly on shutdown.
    #[tokio::test]
    async fn unreachable_api_server_never_leads_and_shuts_down() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let gauge = IntGauge::new("leader", "test").unwrap();
        let elector = LeaderElector::new(
            client,
            "default",
            "edgefleet-test",
            "pod-a",
            LeaseTiming::new(2, 1).unwrap(),
        )
        .with_leader_gauge(gauge.clone());
        let leading = elector.subscribe();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(elector.run(shutdown.clone()));
        sleep(Duration::from_millis(1500)).await;
        assert!(!*leading.borrow());
        assert_eq!(gauge.get(), 0);
        shutdown.cancel();
        timeout(Duration::from_secs(3), task)
            .await
            .unwrap()
            .unwrap();
    }
}
