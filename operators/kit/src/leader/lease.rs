//! The Lease itself: building the manager, following, watching for a release, confirming
//! renewals, releasing.

use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt,
        watcher::{self, Event, watcher},
    },
};
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerError, LeaseParams};
use tokio::time::{Instant, timeout};

use super::LeaseTiming;
use crate::{Error, Result};

/// What one read of the Lease showed.
pub(super) enum Look {
    /// Ours, renewed at `renewed`, valid until `expires` (by this replica's clock).
    Held {
        renewed: Timestamp,
        expires: Instant,
    },
    /// Not confirmed yet: the read failed or was slow, or the renewal has not landed.
    NotYet(Error),
    /// Another replica holds it.
    Lost(Error),
}

/// Where the Lease is and who this replica is.
#[derive(Clone)]
pub(super) struct LeaseConfig {
    pub(super) client: Client,
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) identity: String,
    pub(super) timing: LeaseTiming,
}

impl LeaseConfig {
    /// A fresh lease manager; creates the Lease when missing.
    pub(super) async fn manager(&self) -> Result<LeaseManager> {
        let params = LeaseParams::new(&self.identity, self.timing.duration, self.timing.grace);
        let build = LeaseManager::new(
            self.client.clone(),
            &self.name,
            &self.namespace,
            params,
            LeaseCreateMode::AutoCreate,
        );
        match timeout(self.timing.duration(), build).await {
            Ok(built) => Ok(built?),
            Err(_) => Err(self.unconfirmed("reading or creating the Lease timed out".into())),
        }
    }

    /// Waits until the manager takes the Lease (`true`), or until its holder releases it
    /// (`false`): the manager itself would only look again when the old term ends, so the caller
    /// builds a fresh one that takes the Lease now.
    pub(super) async fn follow(&self, manager: &LeaseManager) -> Result<bool> {
        // Restarting `changed()` is safe; the bound recovers from a request hung on a dead
        // connection (kube clients have no read timeout by default).
        let bound = self.timing.duration() + self.timing.grace();
        let acquire = async {
            loop {
                if let Ok(changed) = timeout(bound, manager.changed()).await
                    && changed?
                {
                    return Ok(true);
                }
            }
        };
        tokio::select! {
            acquired = acquire => acquired,
            () = self.released() => Ok(false),
        }
    }

    /// Returns once the Lease, seen held, is seen free (released or deleted). Watch errors
    /// (e.g. no `watch` permission) only lose the fast handover, so they are retried quietly.
    async fn released(&self) {
        let api = Api::<Lease>::namespaced(self.client.clone(), &self.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        let mut held = false;
        while let Some(event) = events.next().await {
            let free = match event {
                Ok(Event::Apply(l) | Event::InitApply(l)) => {
                    l.spec.and_then(|s| s.holder_identity).is_none()
                }
                Ok(Event::Delete(_)) => true,
                Ok(Event::Init | Event::InitDone) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, lease = %self.name, "watching the lease failed");
                    continue;
                }
            };
            if free && held {
                return;
            }
            held = !free;
        }
        std::future::pending().await
    }

    /// Reads the Lease, the read bounded by `deadline`: held by us and valid for more than
    /// `grace/2`?
    pub(super) async fn look(&self, deadline: Instant) -> Look {
        let api = Api::<Lease>::namespaced(self.client.clone(), &self.namespace);
        let bound = deadline.saturating_duration_since(Instant::now());
        let lease = match timeout(bound, api.get(&self.name)).await {
            Ok(Ok(lease)) => lease,
            Ok(Err(e)) => {
                return Look::NotYet(self.unconfirmed(format!("reading the Lease failed: {e}")));
            }
            Err(_) => {
                return Look::NotYet(
                    self.unconfirmed(format!("reading the Lease took over {bound:?}")),
                );
            }
        };
        let spec = lease.spec.unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            let holder = spec.holder_identity.unwrap_or_default();
            return Look::Lost(self.unconfirmed(format!("held by {holder:?}")));
        }
        let Some(renewed) = spec.renew_time else {
            return Look::NotYet(self.unconfirmed("no renewTime".into()));
        };
        let valid_for = spec
            .lease_duration_seconds
            .map_or(self.timing.duration, |d| u64::try_from(d).unwrap_or(0))
            .min(self.timing.duration);
        let age = renewed.0.duration_until(Timestamp::now());
        let left = SignedDuration::from_secs(i64::try_from(valid_for).unwrap_or(0))
            .checked_sub(age)
            .and_then(|left| Duration::try_from(left).ok())
            .unwrap_or(Duration::ZERO);
        if left <= self.timing.grace() / 2 {
            return Look::NotYet(self.unconfirmed(format!("renewal is overdue ({left:?} left)")));
        }
        Look::Held {
            renewed: renewed.0,
            expires: Instant::now() + left,
        }
    }

    /// Frees the Lease for a successor if it still names us. Checked here because the manager
    /// decides from its cached view, which is stale when another replica took the Lease.
    pub(super) async fn release(&self, manager: &LeaseManager) {
        let release = async {
            let api = Api::<Lease>::namespaced(self.client.clone(), &self.namespace);
            let lease = api.get(&self.name).await.map_err(LeaseManagerError::from)?;
            let holder = lease.spec.and_then(|s| s.holder_identity);
            if holder.as_deref() != Some(self.identity.as_str()) {
                return Ok(false);
            }
            manager.release().await?;
            Ok::<_, Error>(true)
        };
        match timeout(self.timing.grace(), release).await {
            Ok(Ok(true)) => tracing::info!(lease = %self.name, "lease released"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, lease = %self.name, "releasing the lease failed")
            }
            Err(_) => tracing::warn!(lease = %self.name, "releasing the lease timed out"),
        }
    }

    pub(super) fn unconfirmed(&self, reason: String) -> Error {
        Error::LeaseNotConfirmed {
            lease: format!("{}/{}", self.namespace, self.name),
            reason,
        }
    }
}
