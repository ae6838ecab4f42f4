//! The node's identity: a client certificate (CN = node name) issued by the hub's CA.
//!
//! First start: generate a P-256 key and a CSR, `POST /v1/bootstrap` with the token, write
//! `node.key`, `node.crt` and `ca.crt` (mode 0600, written to a temporary file, fsynced, renamed)
//! into the data dir. Later starts load the files and never need the token again.
//!
//! The bootstrap call authenticates the hub with `--hub-ca` when given. Without it the agent has
//! nothing to check the hub against yet and trusts the first answer (like `kubeadm join
//! --discovery-token-unsafe-skip-ca-verification`); it logs a warning. The session itself is
//! always verified against the CA the hub returned.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edgefleet_channel::bootstrap::{BOOTSTRAP_PATH, BootstrapRequest, BootstrapResponse};
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

const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30);

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
    Refused { status: u16, body: String },
    #[error("bootstrap answer: {0}")]
    Answer(String),
    #[error("no certificate yet and no bootstrap token given")]
    NoToken,
}

impl IdentityError {
    /// A refusal the agent cannot fix by retrying (bad token, bad request).
    pub fn is_permanent(&self) -> bool {
        matches!(self, IdentityError::Refused { status, .. } if (400..500).contains(status) && *status != 429)
            || matches!(self, IdentityError::NoToken)
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
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node);
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key.serialize_pem(), csr))
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
    let identity = bootstrap(node, hub, token, hub_ca).await?;
    if let Some(dir) = dir {
        identity.save(dir)?;
        tracing::info!(node, dir = %dir.display(), "bootstrapped: certificate stored");
    }
    Ok(Obtained {
        identity,
        bootstrapped: true,
    })
}

/// `POST /v1/bootstrap`: the token and a CSR for a signed certificate and the hub's CA.
pub async fn bootstrap(
    node: &str,
    hub: &HubAddr,
    token: &str,
    hub_ca: Option<&str>,
) -> Result<Identity, IdentityError> {
    let (key_pem, csr) = key_and_csr(node)?;
    let request = BootstrapRequest {
        node_name: node.to_string(),
        token: token.to_string(),
        csr,
    };
    let body = serde_json::to_vec(&request).map_err(|e| IdentityError::Answer(e.to_string()))?;
    let config = bootstrap_tls(hub_ca)?;
    let (status, answer) = tokio::time::timeout(BOOTSTRAP_TIMEOUT, post(hub, config, body))
        .await
        .map_err(|_| IdentityError::Transport("timed out".into()))??;
    if status != 200 {
        return Err(IdentityError::Refused {
            status,
            body: String::from_utf8_lossy(&answer).chars().take(200).collect(),
        });
    }
    let answer: BootstrapResponse =
        serde_json::from_slice(&answer).map_err(|e| IdentityError::Answer(e.to_string()))?;
    let identity = Identity {
        key_pem,
        cert_pem: answer.certificate,
        ca_pem: answer.ca,
    };
    // Refuse an answer we could not use, before it is written anywhere.
    identity.client_config()?;
    Ok(identity)
}

fn bootstrap_tls(hub_ca: Option<&str>) -> Result<Arc<ClientConfig>, IdentityError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = match hub_ca {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(pem, "--hub-ca")? {
                roots.add(cert)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            // Once per process: `simulate` bootstraps thousands of agents.
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!("bootstrap without --hub-ca: trusting the hub's first answer");
            });
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(TrustFirstUse(provider())))
                .with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

async fn post(
    hub: &HubAddr,
    config: Arc<ClientConfig>,
    body: Vec<u8>,
) -> Result<(u16, Bytes), IdentityError> {
    let transport = |e: &dyn std::fmt::Display| IdentityError::Transport(e.to_string());
    let tcp = TcpStream::connect((hub.host.as_str(), hub.port))
        .await
        .map_err(|e| transport(&e))?;
    let server_name = hub.server_name().map_err(|e| transport(&e))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| transport(&e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| transport(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = http::Request::post(BOOTSTRAP_PATH)
        .header(http::header::HOST, hub.authority())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| transport(&e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| transport(&e))?;
    let status = response.status().as_u16();
    let answer = Limited::new(response.into_body(), 256 * 1024)
        .collect()
        .await
        .map_err(|e| transport(&e))?
        .to_bytes();
    Ok((status, answer))
}

/// Accepts the hub's certificate without a CA to check it against (first bootstrap only).
#[derive(Debug)]
struct TrustFirstUse(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for TrustFirstUse {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
