//! The node's identity: a client certificate (CN = node name) issued by the hub's CA.
//!
//! First start: generate a P-256 key and a CSR, `POST /v1/bootstrap` with the join token, write
//! `node.key`, `node.crt` and `ca.crt` (mode 0600, written to a temporary file, fsynced, renamed)
//! into the data dir. Later starts load the files and never need the token again.
//!
//! The join token `<ca-pin>.<id>.<secret>` pins the hub CA (hex SHA-256 of its DER, as
//! KubeEdge's `<caHash>.<token>`): the bootstrap connection is accepted only if the hub's chain
//! holds that CA and the hub's certificate verifies against it, and the CA the hub returns must
//! be the pinned one — a first contact cannot be intercepted. `--hub-ca` does the same with a
//! PEM file; without a pin or `--hub-ca` the agent refuses to bootstrap.
//!
//! A bootstrap the hub leaves to an administrator answers 202 (pending approval): the agent
//! keeps its key (`node.key.pending` in the data dir, in memory for hollow agents) and asks
//! again with the same key, with back-off, until the CSR is approved.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edgefleet_channel::bootstrap::{
    BOOTSTRAP_PATH, BootstrapRequest, BootstrapResponse, JoinToken, PendingResponse, ca_pin,
    sha256_hex,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;

use crate::hub::HubAddr;

pub const KEY_FILE: &str = "node.key";
pub const CERT_FILE: &str = "node.crt";
pub const CA_FILE: &str = "ca.crt";
/// The key of a bootstrap waiting for approval.
pub const PENDING_KEY_FILE: &str = "node.key.pending";

const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30);
const PIN_MISMATCH: &str = "the hub's CA is not the one the join token pins";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no usable PEM in {0}")]
    Pem(String),
    #[error("generating key or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("bootstrap transport: {0}")]
    Transport(String),
    #[error("bootstrap refused: HTTP {status}: {body}")]
    Refused {
        status: u16,
        body: String,
        /// The hub's `Retry-After`: a busy or rate-limiting hub says when to come back.
        retry_after: Option<Duration>,
    },
    #[error("bootstrap answer: {0}")]
    Answer(String),
    #[error("no certificate yet and no bootstrap token given")]
    NoToken,
    #[error("malformed join token (want <ca-pin>.<token-id>.<token-secret>)")]
    BadToken,
    #[error("the join token pins no hub CA and no --hub-ca was given")]
    NoPin,
    #[error("the hub's CA is not the one the join token pins")]
    PinMismatch,
    #[error("waiting for approval of {csr}: {reason}")]
    Pending { csr: String, reason: String },
}

impl IdentityError {
    /// When the hub asked to be tried again (its `Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IdentityError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A refusal the agent cannot fix by retrying (bad token, bad request).
    pub fn is_permanent(&self) -> bool {
        matches!(self, IdentityError::Refused { status, .. } if (400..500).contains(status) && *status != 429)
            || matches!(
                self,
                IdentityError::NoToken
                    | IdentityError::BadToken
                    | IdentityError::NoPin
                    | IdentityError::PinMismatch
            )
    }
}

/// PEM texts of a node identity.
#[derive(Clone, Debug)]
pub struct Identity {
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

impl Identity {
    /// Loads the identity files from `dir`; `Ok(None)` when there are none yet.
    pub fn load(dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let read = |name: &str| {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(IdentityError::Read { path, source }),
            }
        };
        match (read(KEY_FILE)?, read(CERT_FILE)?, read(CA_FILE)?) {
            (Some(key_pem), Some(cert_pem), Some(ca_pem)) => Ok(Some(Identity {
                key_pem,
                cert_pem,
                ca_pem,
            })),
            _ => Ok(None),
        }
    }

    /// Writes the three files, each 0600 and durable before this returns.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        std::fs::create_dir_all(dir).map_err(|source| IdentityError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        for (name, text) in [
            (KEY_FILE, &self.key_pem),
            (CERT_FILE, &self.cert_pem),
            (CA_FILE, &self.ca_pem),
        ] {
            write_private(&dir.join(name), text.as_bytes())?;
        }
        // The renames themselves are durable once the directory is synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The mTLS client configuration of the session: trusts only the hub CA.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, IdentityError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs(&self.ca_pem, "ca.crt")? {
            roots.add(cert)?;
        }
        let chain = certs(&self.cert_pem, "node.crt")?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|_| IdentityError::Pem("node.key".into()))?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(Arc::new(config))
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| IdentityError::Pem(what.into()))?;
    if certs.is_empty() {
        return Err(IdentityError::Pem(what.into()));
    }
    Ok(certs)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let err = |source| IdentityError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// A fresh P-256 key and a PKCS#10 request with CN = `node`: `(key PEM, CSR PEM)`.
pub fn key_and_csr(node: &str) -> Result<(String, String), IdentityError> {
    let key = rcgen::KeyPair::generate()?.serialize_pem();
    let csr = csr_for(node, &key)?;
    Ok((key, csr))
}

/// An identity and where it came from.
#[derive(Clone, Debug)]
pub struct Obtained {
    pub identity: Identity,
    /// Issued now with the bootstrap token (else loaded from the data dir).
    pub bootstrapped: bool,
}

/// The node's identity: loaded from `dir` when present, else bootstrapped (and saved when a
/// `dir` is given; hollow agents without a data dir keep it in memory).
pub async fn obtain(
    dir: Option<&Path>,
    node: &str,
    hub: &HubAddr,
    token: Option<&str>,
    hub_ca: Option<&str>,
) -> Result<Obtained, IdentityError> {
    if let Some(dir) = dir
        && let Some(identity) = Identity::load(dir)?
    {
        return Ok(Obtained {
            identity,
            bootstrapped: false,
        });
    }
    let token = token.ok_or(IdentityError::NoToken)?;
    let identity = bootstrap_in(dir, node, hub, token, hub_ca).await?;
    if let Some(dir) = dir {
        identity.save(dir)?;
        tracing::info!(node, dir = %dir.display(), "bootstrapped: certificate stored");
    }
    Ok(Obtained {
        identity,
        bootstrapped: true,
    })
}

/// `POST /v1/bootstrap`: the join token and a CSR for a signed certificate and the hub's CA.
/// `dir` keeps the key of a pending request (see [`PENDING_KEY_FILE`]).
pub async fn bootstrap(
    node: &str,
    hub: &HubAddr,
    token: &str,
    hub_ca: Option<&str>,
) -> Result<Identity, IdentityError> {
    bootstrap_in(None, node, hub, token, hub_ca).await
}

async fn bootstrap_in(
    dir: Option<&Path>,
    node: &str,
    hub: &HubAddr,
    token: &str,
    hub_ca: Option<&str>,
) -> Result<Identity, IdentityError> {
    let token = JoinToken::parse(token).ok_or(IdentityError::BadToken)?;
    let key_pem = pending_key(dir, node)?;
    let csr = csr_for(node, &key_pem)?;
    let request = BootstrapRequest {
        node_name: node.to_string(),
        token: token.credential(),
        csr,
    };
    let body = serde_json::to_vec(&request).map_err(|e| IdentityError::Answer(e.to_string()))?;
    let config = bootstrap_tls(token.ca_pin.as_deref(), hub_ca)?;
    let Answer {
        status,
        retry_after,
        body: answer,
    } = tokio::time::timeout(BOOTSTRAP_TIMEOUT, post(hub, config, BOOTSTRAP_PATH, body))
        .await
        .map_err(|_| IdentityError::Transport("timed out".into()))??;
    if status == 202 {
        let pending: PendingResponse =
            serde_json::from_slice(&answer).map_err(|e| IdentityError::Answer(e.to_string()))?;
        return Err(IdentityError::Pending {
            csr: pending.csr_name,
            reason: pending.reason,
        });
    }
    if status != 200 {
        return Err(IdentityError::Refused {
            status,
            body: String::from_utf8_lossy(&answer).chars().take(200).collect(),
            retry_after,
        });
    }
    let answer: BootstrapResponse =
        serde_json::from_slice(&answer).map_err(|e| IdentityError::Answer(e.to_string()))?;
    if let Some(pin) = &token.ca_pin
        && ca_pin(&answer.ca).as_deref() != Some(pin.as_str())
    {
        return Err(IdentityError::PinMismatch);
    }
    let identity = Identity {
        key_pem,
        cert_pem: answer.certificate,
        ca_pem: answer.ca,
    };
    // Refuse an answer we could not use, before it is written anywhere.
    identity.client_config()?;
    forget_pending_key(dir, node);
    Ok(identity)
}

/// Keys of pending bootstraps of agents without a data dir, by node.
static PENDING: std::sync::Mutex<Option<std::collections::HashMap<String, String>>> =
    std::sync::Mutex::new(None);

/// The key of this node's bootstrap: the pending one if a request waits, else a new one
/// (kept so the next attempt asks with the same key).
fn pending_key(dir: Option<&Path>, node: &str) -> Result<String, IdentityError> {
    if let Some(dir) = dir {
        let path = dir.join(PENDING_KEY_FILE);
        if let Ok(pem) = std::fs::read_to_string(&path) {
            return Ok(pem);
        }
        let pem = rcgen::KeyPair::generate()?.serialize_pem();
        std::fs::create_dir_all(dir).map_err(|source| IdentityError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        write_private(&path, pem.as_bytes())?;
        return Ok(pem);
    }
    let mut map = PENDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let map = map.get_or_insert_with(Default::default);
    if let Some(pem) = map.get(node) {
        return Ok(pem.clone());
    }
    let pem = rcgen::KeyPair::generate()?.serialize_pem();
    map.insert(node.to_string(), pem.clone());
    Ok(pem)
}

fn forget_pending_key(dir: Option<&Path>, node: &str) {
    match dir {
        Some(dir) => {
            let _ = std::fs::remove_file(dir.join(PENDING_KEY_FILE));
        }
        None => {
            let mut map = PENDING
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(map) = map.as_mut() {
                map.remove(node);
            }
        }
    }
}

/// A PKCS#10 request with CN = `node`, signed by `key_pem`.
pub fn csr_for(node: &str, key_pem: &str) -> Result<String, IdentityError> {
    let key = rcgen::KeyPair::from_pem(key_pem)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node);
    Ok(params.serialize_request(&key)?.pem()?)
}

fn bootstrap_tls(
    pin: Option<&str>,
    hub_ca: Option<&str>,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = match (pin, hub_ca) {
        (_, Some(pem)) => {
            if let Some(pin) = pin
                && ca_pin(pem).as_deref() != Some(pin)
            {
                return Err(IdentityError::PinMismatch);
            }
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(pem, "--hub-ca")? {
                roots.add(cert)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (Some(pin), None) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCa {
                pin: pin.to_string(),
                provider: provider(),
            }))
            .with_no_client_auth(),
        (None, None) => return Err(IdentityError::NoPin),
    };
    Ok(Arc::new(config))
}

/// `POST path` with a JSON body over `config`: (status, body).
/// A hub's answer to a POST: status, `Retry-After` (seconds form) and body.
pub(crate) struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// `Retry-After` in its seconds form (the hub never sends a date), capped at an hour.
pub(crate) fn retry_after(value: Option<&http::HeaderValue>) -> Option<Duration> {
    let seconds: u64 = value?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds.min(3600)))
}

pub(crate) async fn post(
    hub: &HubAddr,
    config: Arc<ClientConfig>,
    path: &str,
    body: Vec<u8>,
) -> Result<Answer, IdentityError> {
    let transport = |e: &dyn std::fmt::Display| IdentityError::Transport(e.to_string());
    let tcp = TcpStream::connect((hub.host.as_str(), hub.port))
        .await
        .map_err(|e| transport(&e))?;
    let server_name = hub.server_name().map_err(|e| transport(&e))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| {
            // The pin did not match: retrying cannot help, and must not send the token.
            if e.to_string().contains(PIN_MISMATCH) {
                IdentityError::PinMismatch
            } else {
                transport(&e)
            }
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| transport(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = http::Request::post(path)
        .header(http::header::HOST, hub.authority())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| transport(&e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| transport(&e))?;
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers().get(http::header::RETRY_AFTER));
    let body = Limited::new(response.into_body(), 256 * 1024)
        .collect()
        .await
        .map_err(|e| transport(&e))?
        .to_bytes();
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// Accepts the hub only if its chain carries the CA whose DER hashes to the token's pin and
/// the hub's certificate verifies against that CA (first bootstrap only).
#[derive(Debug)]
struct PinnedCa {
    pin: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sha256_hex(c.as_ref()) == self.pin)
            .ok_or_else(|| rustls::Error::General(PIN_MISMATCH.into()))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_nothing_else() {
        let h = |v: &str| http::HeaderValue::from_str(v).unwrap();
        for (value, want) in [
            ("7", Some(7)),
            (" 30 ", Some(30)),
            ("99999", Some(3600)),
            ("-1", None),
            ("Wed, 21 Oct 2026 07:28:00 GMT", None),
            ("", None),
        ] {
            assert_eq!(
                retry_after(Some(&h(value))),
                want.map(Duration::from_secs),
                "{value:?}"
            );
        }
        assert_eq!(retry_after(None), None);
        let busy = IdentityError::Refused {
            status: 503,
            body: "busy".into(),
            retry_after: Some(Duration::from_secs(4)),
        };
        assert_eq!(busy.retry_after(), Some(Duration::from_secs(4)));
        assert!(!busy.is_permanent());
    }

    #[test]
    fn csr_names_the_node() {
        let (key, csr) = key_and_csr("edge-0042").unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        let cn = parsed
            .params
            .distinguished_name
            .get(&rcgen::DnType::CommonName)
            .cloned();
        assert_eq!(
            cn,
            Some(rcgen::DnValue::Utf8String("edge-0042".to_string()))
        );
    }

    /// A CA that signs the node's CSR, as the hub does.
    pub(crate) fn issued(node: &str) -> Identity {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let (key_pem, csr) = key_and_csr(node).unwrap();
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        let cert = csr.signed_by(&issuer).unwrap();
        Identity {
            key_pem,
            cert_pem: cert.pem(),
            ca_pem: ca_cert.pem(),
        }
    }

    #[test]
    fn identity_files_are_private_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Identity::load(dir.path()).unwrap().is_none());
        let identity = issued("edge-1");
        identity.save(dir.path()).unwrap();
        #[cfg(unix)]
        for name in [KEY_FILE, CERT_FILE, CA_FILE] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let loaded = Identity::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.cert_pem, identity.cert_pem);
        loaded.client_config().unwrap();
    }

    #[tokio::test]
    async fn stored_files_are_used_without_a_bootstrap() {
        let dir = tempfile::tempdir().unwrap();
        issued("edge-1").save(dir.path()).unwrap();
        // No hub listens on port 1: only the stored files can answer.
        let hub: HubAddr = "wss://127.0.0.1:1".parse().unwrap();
        let obtained = obtain(Some(dir.path()), "edge-1", &hub, Some("t"), None)
            .await
            .unwrap();
        assert!(!obtained.bootstrapped);
    }

    #[tokio::test]
    async fn without_files_or_token_there_is_nothing_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let hub: HubAddr = "wss://127.0.0.1:1".parse().unwrap();
        let err = obtain(Some(dir.path()), "edge-1", &hub, None, None)
            .await
            .unwrap_err();
        assert!(err.is_permanent());
    }

    #[tokio::test]
    async fn a_token_must_pin_the_hub_ca() {
        let hub: HubAddr = "wss://127.0.0.1:1".parse().unwrap();
        let bare = "abcdef.0123456789abcdef";
        let err = bootstrap("edge-1", &hub, bare, None).await.unwrap_err();
        assert!(matches!(err, IdentityError::NoPin), "{err}");
        assert!(err.is_permanent());
        let err = bootstrap("edge-1", &hub, "not-a-token", None)
            .await
            .unwrap_err();
        assert!(matches!(err, IdentityError::BadToken), "{err}");
        // A --hub-ca that is not the pinned CA.
        let ca = issued("edge-1").ca_pem;
        let pinned = format!("{}.{bare}", "0".repeat(64));
        let err = bootstrap("edge-1", &hub, &pinned, Some(&ca))
            .await
            .unwrap_err();
        assert!(matches!(err, IdentityError::PinMismatch), "{err}");
        // The right pin gets as far as the network.
        let pin = ca_pin(&ca).unwrap();
        let err = bootstrap("edge-1", &hub, &format!("{pin}.{bare}"), Some(&ca))
            .await
            .unwrap_err();
        assert!(matches!(err, IdentityError::Transport(_)), "{err}");
    }

    #[test]
    fn a_pending_bootstrap_keeps_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let first = pending_key(Some(dir.path()), "edge-1").unwrap();
        assert_eq!(pending_key(Some(dir.path()), "edge-1").unwrap(), first);
        forget_pending_key(Some(dir.path()), "edge-1");
        assert_ne!(pending_key(Some(dir.path()), "edge-1").unwrap(), first);
        let mem = pending_key(None, "edge-9").unwrap();
        assert_eq!(pending_key(None, "edge-9").unwrap(), mem);
    }
}
