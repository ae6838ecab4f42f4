//! Certificate renewal: at a random point in the last 10–30 % of the certificate's life (so a
//! fleet issued on one day does not renew in one minute), `POST /v1/renew` over mTLS with the
//! current certificate and a CSR of the same key. The new certificate is stored and used by
//! the next connection; the running session is not touched (no reconnect storm).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgefleet_channel::bootstrap::{BootstrapResponse, RENEW_PATH, RenewRequest};
use rustls::ClientConfig;
use tokio_util::sync::CancellationToken;

use crate::hub::Hubs;
use crate::identity::{Identity, IdentityError, csr_for, post};

/// The client configuration sessions connect with; swapped when the certificate is renewed.
#[derive(Debug)]
pub struct TlsSlot(RwLock<Arc<ClientConfig>>);

impl TlsSlot {
    pub fn new(config: Arc<ClientConfig>) -> Self {
        TlsSlot(RwLock::new(config))
    }

    pub fn get(&self) -> Arc<ClientConfig> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, config: Arc<ClientConfig>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
    }
}

/// `(not_before, not_after)` of the first certificate in `pem`, unix seconds.
pub fn validity(pem: &str) -> Option<(i64, i64)> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&p.contents).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// When to renew: `not_before + life × (1 − f)`, `f` = `fraction` scaled into [0.1, 0.3].
pub fn renew_at(not_before: i64, not_after: i64, fraction: f64) -> i64 {
    let life = (not_after - not_before).max(0) as f64;
    let f = 0.1 + 0.2 * fraction.clamp(0.0, 1.0);
    not_before + (life * (1.0 - f)) as i64
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// One renewal against one hub: the new identity (same key).
pub async fn renew_once(
    node: &str,
    hub: &crate::hub::HubAddr,
    current: &Identity,
) -> Result<Identity, IdentityError> {
    let csr = csr_for(node, &current.key_pem)?;
    let body = serde_json::to_vec(&RenewRequest { csr })
        .map_err(|e| IdentityError::Answer(e.to_string()))?;
    let crate::identity::Answer {
        status,
        retry_after,
        body: answer,
    } = tokio::time::timeout(
        Duration::from_secs(30),
        post(hub, current.client_config()?, RENEW_PATH, body),
    )
    .await
    .map_err(|_| IdentityError::Transport("timed out".into()))??;
    if status != 200 {
        return Err(IdentityError::Refused {
            status,
            body: String::from_utf8_lossy(&answer).chars().take(200).collect(),
            retry_after,
        });
    }
    let answer: BootstrapResponse =
        serde_json::from_slice(&answer).map_err(|e| IdentityError::Answer(e.to_string()))?;
    let renewed = Identity {
        key_pem: current.key_pem.clone(),
        cert_pem: answer.certificate,
        ca_pem: answer.ca,
    };
    renewed.client_config()?;
    Ok(renewed)
}

/// Renews `identity` before each expiry until `cancel`: stores it in `dir` (when given), swaps
/// `slot`, counts in `renewed`. A failed attempt is retried after a tenth of the time left
/// (at least 5 s), on another hub.
pub async fn keep_renewed(
    node: String,
    mut identity: Identity,
    dir: Option<PathBuf>,
    hubs: Hubs,
    slot: Arc<TlsSlot>,
    metrics: Arc<crate::metrics::Metrics>,
    cancel: CancellationToken,
) {
    let mut cursor = hubs.cursor();
    loop {
        let Some((not_before, not_after)) = validity(&identity.cert_pem) else {
            tracing::warn!(%node, "cannot read the certificate's validity; not renewing");
            return;
        };
        let at = renew_at(not_before, not_after, fastrand::f64());
        let wait = u64::try_from(at - now()).unwrap_or(0);
        tracing::debug!(%node, in_seconds = wait, "next certificate renewal");
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(wait)) => {}
        }
        loop {
            match renew_once(&node, cursor.next_hub(), &identity).await {
                Ok(fresh) => {
                    if let Some(dir) = &dir
                        && let Err(e) = fresh.save(dir)
                    {
                        tracing::warn!(%node, error = %e, "storing the renewed certificate");
                    }
                    match fresh.client_config() {
                        Ok(config) => slot.set(config),
                        Err(e) => tracing::warn!(%node, error = %e, "renewed certificate unusable"),
                    }
                    crate::metrics::inc(&metrics.renewals);
                    tracing::info!(%node, "certificate renewed");
                    identity = fresh;
                    break;
                }
                Err(e) => {
                    let left = u64::try_from(not_after - now()).unwrap_or(0);
                    // A busy hub's Retry-After is honoured while the certificate has time.
                    let hint = e.retry_after().filter(|h| h.as_secs() < left / 2);
                    let retry =
                        Duration::from_secs((left / 10).max(5)).max(hint.unwrap_or_default());
                    tracing::warn!(%node, error = %e, ?retry, "certificate renewal failed");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_in_the_last_ten_to_thirty_percent() {
        assert_eq!(renew_at(0, 1000, 0.0), 900);
        assert_eq!(renew_at(0, 1000, 1.0), 700);
        assert_eq!(renew_at(100, 1100, 0.5), 900);
        for i in 0..=100 {
            let at = renew_at(0, 10_000, f64::from(i) / 100.0);
            assert!((7000..=9000).contains(&at), "{at}");
        }
        assert_eq!(renew_at(10, 5, 0.5), 10, "a broken validity renews at once");
    }

    #[test]
    fn validity_of_an_issued_certificate() {
        let id = crate::identity::tests::issued("edge-1");
        let (nb, na) = validity(&id.cert_pem).unwrap();
        assert!(na > nb);
        assert_eq!(validity("junk"), None);
    }
}
