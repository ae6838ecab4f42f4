//! Who is on the other end: the hub's CA (one Secret shared by every replica), node certificates
//! issued against the bootstrap token, the TLS server config (client certificates optional at
//! the TLS layer, required for a session), and the checks CN = `node_id` = path node.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tokio_rustls::rustls::{
    self, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::WebPkiClientVerifier,
};

use crate::error::{Error, Result};

/// Secret (in the hub's namespace) holding the CA every replica signs with.
pub const CA_SECRET: &str = "edgefleet-hub-ca";
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
/// Node certificates are valid this long unless `--node-cert-seconds` says otherwise.
pub const NODE_CERT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// The CA: its certificate (PEM) and signing key.
pub struct Ca {
    pub cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// Valid from yesterday for `years` years (day-precise is enough; dates avoid a time crate).
fn validity(params: &mut CertificateParams, years: i32) {
    let today = jiff::Zoned::now().date();
    let yesterday = today.yesterday().unwrap_or(today);
    let day = |d: jiff::civil::Date, plus: i32| {
        rcgen::date_time_ymd(
            i32::from(d.year()) + plus,
            u8::try_from(d.month()).unwrap_or(1),
            u8::try_from(d.day().min(28)).unwrap_or(1),
        )
    };
    params.not_before = day(yesterday, 0);
    params.not_after = day(today, years);
}

/// Valid for `lifetime` from now, to the second; backdated for clock skew by a tenth of the
/// lifetime, at most five minutes (so the agent's "last 10–30 %" stays near the real end).
fn validity_for(params: &mut CertificateParams, lifetime: std::time::Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let skew = (lifetime / 10).min(std::time::Duration::from_secs(300));
    params.not_before = epoch + now.saturating_sub(skew);
    params.not_after = epoch + now + lifetime;
}

impl Ca {
    /// A new self-signed CA (ECDSA P-256).
    pub fn generate() -> Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "edgefleet-hub-ca");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 10);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn from_pem(cert_pem: String, key_pem: String) -> Result<Ca> {
        // Parse both now so a broken Secret fails at start, not at the first bootstrap.
        let key = KeyPair::from_pem(&key_pem)?;
        Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Ca { cert_pem, key_pem })
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, key)?)
    }

    /// Signs a node's CSR: only if its subject CN is `node`; everything else in the request
    /// (SANs, extensions) is ignored — the certificate says "client `node`", nothing more.
    /// Valid for `lifetime` from now (a random serial, so a renewal of the same key differs).
    pub fn sign_node_csr(
        &self,
        node: &str,
        csr_pem: &str,
        lifetime: std::time::Duration,
    ) -> Result<String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::BadRequest(format!("csr: {e}")))?;
        let cn = csr
            .params
            .distinguished_name
            .get(&DnType::CommonName)
            .and_then(|v| match v {
                rcgen::DnValue::PrintableString(s) => Some(s.to_string()),
                rcgen::DnValue::Utf8String(s) => Some(s.clone()),
                _ => None,
            });
        if cn.as_deref() != Some(node) {
            return Err(Error::BadRequest(format!(
                "csr subject CN {cn:?} is not the node name {node:?}"
            )));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(rcgen::SerialNumber::from_slice(
            &uuid::Uuid::new_v4().as_bytes()[..15],
        ));
        validity_for(&mut params, lifetime);
        let cert = params.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok(cert.pem())
    }

    /// A serving certificate for this replica (ECDSA P-256, fresh key) with `sans`.
    pub fn server_cert(&self, sans: &[String]) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "edgefleet-hub");
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, 1);
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The CA from the shared Secret, created if absent; a replica that loses the create race
    /// reads the winner's.
    pub async fn load_or_create(secrets: &Api<Secret>) -> Result<Ca> {
        for _ in 0..5 {
            if let Some(secret) = secrets.get_opt(CA_SECRET).await? {
                let field = |k: &str| {
                    secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get(k))
                        .and_then(|b| String::from_utf8(b.0.clone()).ok())
                };
                let (Some(cert), Some(key)) = (field(CA_CERT_KEY), field(CA_KEY_KEY)) else {
                    return Err(Error::Config(format!(
                        "Secret {CA_SECRET} lacks {CA_CERT_KEY} or {CA_KEY_KEY}"
                    )));
                };
                return Ca::from_pem(cert, key);
            }
            let ca = Ca::generate()?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(CA_SECRET.into()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/part-of".into(),
                        "edgefleet".into(),
                    )])),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([
                    (
                        CA_CERT_KEY.into(),
                        ByteString(ca.cert_pem.clone().into_bytes()),
                    ),
                    (
                        CA_KEY_KEY.into(),
                        ByteString(ca.key_pem.clone().into_bytes()),
                    ),
                ])),
                ..Default::default()
            };
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(_) => return Ok(ca),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Config(format!(
            "could not create or read Secret {CA_SECRET}"
        )))
    }
}

fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("pem: {e}")))
}

/// The TLS server config: our serving certificate, client certificates verified against the CA
/// when given (optional, so the bootstrap endpoint works without one).
pub fn server_config(ca: &Ca, sans: &[String]) -> Result<Arc<ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(&ca.cert_pem)? {
        roots
            .add(cert)
            .map_err(|e| Error::Config(format!("CA certificate: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Config(format!("client verifier: {e}")))?;
    let (cert_pem, key_pem) = ca.server_cert(sans)?;
    let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| Error::Config(format!("server key: {e}")))?;
    let mut chain = certs_from_pem(&cert_pem)?;
    chain.extend(certs_from_pem(&ca.cert_pem)?);
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("tls versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, PrivateKeyDer::Pkcs8(key))
        .map_err(|e| Error::Config(format!("server certificate: {e}")))?;
    Ok(Arc::new(config))
}

/// The subject CN of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// What the hub knows of a verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCert {
    pub cn: String,
    /// Hex SHA-256 of the SubjectPublicKeyInfo: the node's identity.
    pub key: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// CN, key hash and expiry of a DER certificate.
pub fn peer_cert(der: &[u8]) -> Option<PeerCert> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(PeerCert {
        cn: cn.to_string(),
        key: edgefleet_channel::bootstrap::sha256_hex(cert.public_key().raw),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Subject CN and key hash of a PEM PKCS#10 request whose self-signature verifies.
pub fn csr_identity(csr_pem: &str) -> Result<(String, String)> {
    use x509_parser::prelude::FromDer;
    let bad = |e: &dyn std::fmt::Display| Error::BadRequest(format!("csr: {e}"));
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).map_err(|e| bad(&e))?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
            .map_err(|e| bad(&e))?;
    csr.verify_signature().map_err(|e| bad(&e))?;
    let info = &csr.certification_request_info;
    let cn = info
        .subject
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .ok_or_else(|| Error::BadRequest("csr without a subject CN".into()))?;
    Ok((
        cn.to_string(),
        edgefleet_channel::bootstrap::sha256_hex(info.subject_pki.raw),
    ))
}

/// Why a session request is refused before the upgrade (HTTP 403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoCertificate,
    HeaderMismatch,
    PathMismatch,
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NoCertificate => "no_certificate",
            Refusal::HeaderMismatch => "node_id_mismatch",
            Refusal::PathMismatch => "path_mismatch",
        }
    }
}

/// A session request is one node speaking for itself: certificate CN = `node_id` header = path
/// node. (The certificate itself was verified against the CA by the TLS layer.)
pub fn check_session_identity(
    cert_cn: Option<&str>,
    header_node: Option<&str>,
    path_node: &str,
) -> std::result::Result<(), Refusal> {
    let cn = cert_cn.ok_or(Refusal::NoCertificate)?;
    if cn != path_node {
        return Err(Refusal::PathMismatch);
    }
    if header_node != Some(cn) {
        return Err(Refusal::HeaderMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(cn: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".into()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn signs_a_csr_only_for_its_own_node_name() {
        let ca = Ca::generate().unwrap();
        let pem = ca
            .sign_node_csr("edge-1", &csr_for("edge-1"), NODE_CERT_LIFETIME)
            .unwrap();
        let der = certs_from_pem(&pem).unwrap().remove(0);
        assert_eq!(common_name(&der).as_deref(), Some("edge-1"));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(
            cert.subject_alternative_name().unwrap().is_none(),
            "SANs of the request are dropped"
        );
        assert!(matches!(
            ca.sign_node_csr("edge-1", &csr_for("edge-2"), NODE_CERT_LIFETIME),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            ca.sign_node_csr("edge-1", "garbage", NODE_CERT_LIFETIME),
            Err(Error::BadRequest(_))
        ));
    }

    #[test]
    fn ca_round_trips_through_pem_and_builds_a_server_config() {
        let ca = Ca::generate().unwrap();
        let again = Ca::from_pem(ca.cert_pem.clone(), ca.key_pem.clone()).unwrap();
        assert!(server_config(&again, &["localhost".into(), "127.0.0.1".into()]).is_ok());
        assert!(Ca::from_pem("x".into(), "y".into()).is_err());
    }

    #[test]
    fn session_identity_needs_cn_path_and_header_to_agree() {
        assert_eq!(check_session_identity(Some("a"), Some("a"), "a"), Ok(()));
        assert_eq!(
            check_session_identity(None, Some("a"), "a"),
            Err(Refusal::NoCertificate)
        );
        assert_eq!(
            check_session_identity(Some("a"), Some("a"), "b"),
            Err(Refusal::PathMismatch)
        );
        assert_eq!(
            check_session_identity(Some("a"), Some("b"), "a"),
            Err(Refusal::HeaderMismatch)
        );
        assert_eq!(
            check_session_identity(Some("a"), None, "a"),
            Err(Refusal::HeaderMismatch)
        );
    }
}
