//! Enrolment: a join token plus a CSR become a CertificateSigningRequest (signer
//! `edgefleet.io/edge-node`), approved by the hub itself only for the first identity of a node
//! under a token scoped to it, else left Pending for `kubectl certificate approve`; an approved
//! request is signed by the hub's CA and recorded as the node's one identity. Renewal: the
//! holder of a live certificate gets a new one for the same key.

use std::collections::BTreeMap;
use std::time::Instant;

use edgefleet_channel::bootstrap::{
    BootstrapRequest, BootstrapResponse, IDENTITY_CSR_KEY, IDENTITY_KEY_KEY, IDENTITY_NODE_KEY,
    IDENTITY_NOT_AFTER_KEY, IDENTITY_SERIAL_KEY, IDENTITY_TOKEN_KEY, JoinToken, PendingResponse,
    RenewRequest, SIGNER_NAME, TOKEN_EXPIRATION_KEY, TOKEN_ID_KEY, TOKEN_SCOPE_GROUP_KEY,
    TOKEN_SCOPE_NODE_KEY, TOKEN_SECRET_HASH_KEY, TOKEN_SECRET_PREFIX, TOKEN_SECRET_TYPE,
    TOKEN_USAGE_KEY, constant_time_eq, sha256_hex,
};
use http::StatusCode;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

use crate::hub::Hub;
use crate::identity::{PeerCert, csr_identity, peer_cert};
use crate::records::{Identities, fetch, records_api, write_active};

/// The answer to a bootstrap or renewal.
#[derive(Debug)]
pub enum Outcome {
    Issued(BootstrapResponse),
    Pending(PendingResponse),
    Refused {
        status: StatusCode,
        outcome: &'static str,
        message: String,
    },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Issued(_) => "issued",
            Outcome::Pending(_) => "pending",
            Outcome::Refused { outcome, .. } => outcome,
        }
    }
}

fn refused(status: StatusCode, outcome: &'static str, message: impl Into<String>) -> Outcome {
    Outcome::Refused {
        status,
        outcome,
        message: message.into(),
    }
}

fn unavailable(what: &str, e: &dyn std::fmt::Display) -> Outcome {
    tracing::warn!(error = %e, "{what}");
    refused(
        StatusCode::SERVICE_UNAVAILABLE,
        "error",
        format!("{what}: try again"),
    )
}

/// A token's scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Node(String),
    /// Nodes whose label `key` is `value`.
    Group {
        key: String,
        value: String,
    },
}

/// A join token as its Secret describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: String,
    /// Unix seconds; `None`: never expires.
    pub expiration: Option<i64>,
    pub usable: bool,
    pub scope: Option<Scope>,
}

/// The token in a join-token Secret; `None` when the Secret is not one.
pub fn token_record(secret: &Secret) -> Option<TokenRecord> {
    if secret.type_.as_deref() != Some(TOKEN_SECRET_TYPE) {
        return None;
    }
    let data = secret.data.as_ref()?;
    let field = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .map(|s| s.trim().to_string())
    };
    let scope = match (field(TOKEN_SCOPE_NODE_KEY), field(TOKEN_SCOPE_GROUP_KEY)) {
        (Some(n), None) if !n.is_empty() => Some(Scope::Node(n)),
        (None, Some(g)) => g.split_once('=').and_then(|(k, v)| {
            (!k.is_empty()).then(|| Scope::Group {
                key: k.to_string(),
                value: v.to_string(),
            })
        }),
        _ => None,
    };
    Some(TokenRecord {
        id: field(TOKEN_ID_KEY)?,
        secret_sha256: field(TOKEN_SECRET_HASH_KEY)?,
        expiration: field(TOKEN_EXPIRATION_KEY)
            .and_then(|e| e.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_second()),
        usable: field(TOKEN_USAGE_KEY).as_deref() == Some("true"),
        scope,
    })
}

/// Checks a presented token against its record at `now` (unix seconds): the scope, or why not.
pub fn check_token(
    record: &TokenRecord,
    token: &JoinToken,
    now: i64,
) -> Result<Scope, (&'static str, &'static str)> {
    let hash = sha256_hex(token.secret.as_bytes());
    if record.id != token.id || !constant_time_eq(hash.as_bytes(), record.secret_sha256.as_bytes())
    {
        return Err(("bad_token", "bad token"));
    }
    if record.expiration.is_some_and(|e| e <= now) {
        return Err(("expired_token", "token expired"));
    }
    if !record.usable {
        return Err(("bad_token", "token not usable for bootstrap"));
    }
    record
        .scope
        .clone()
        .ok_or(("bad_token", "token without a scope"))
}

/// Whether the hub approves the request itself (`Ok`) or leaves it to an admin (`Err(why)`).
pub fn auto_approval(
    scope: &Scope,
    node: &str,
    node_labels: Option<&BTreeMap<String, String>>,
    record: Option<&crate::records::Record>,
    key: &str,
) -> Result<(), String> {
    if let Scope::Group { key: k, value } = scope
        && let Some(labels) = node_labels
        && labels.get(k) != Some(value)
    {
        return Err(format!(
            "node {node} exists outside the token's group {k}={value}"
        ));
    }
    match record {
        None => Ok(()),
        Some(r) if r.revoked => Err(format!("the identity of {node} was revoked")),
        Some(r) if r.key != key => Err(format!("{node} already holds a live certificate")),
        Some(_) => Ok(()),
    }
}

/// The CSR object's name: the node plus its key, so a retry finds the same request.
pub fn csr_name(node: &str, key: &str) -> String {
    let node: String = node.chars().take(200).collect();
    format!("{node}-{}", &key[..key.len().min(16)])
}

fn now_seconds() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// `POST /v1/bootstrap`.
pub async fn bootstrap(
    hub: &Hub,
    ids: &Identities,
    peer: std::net::IpAddr,
    request: &BootstrapRequest,
) -> Outcome {
    let now = Instant::now();
    let address = peer.to_string();
    // Per address only failures count (many boxes share a NAT); per name every attempt does.
    if !ids.per_address.allows(&address, now) || !ids.per_node.try_take(&request.node_name, now) {
        return refused(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many bootstrap attempts; retry later",
        );
    }
    let outcome = bootstrap_checked(hub, ids, request).await;
    if matches!(
        outcome.label(),
        "bad_token" | "expired_token" | "out_of_scope" | "bad_request" | "denied"
    ) {
        ids.per_address.charge(&address, now);
    }
    outcome
}

async fn bootstrap_checked(hub: &Hub, ids: &Identities, request: &BootstrapRequest) -> Outcome {
    if !edgefleet_channel::resource::is_valid_name(&request.node_name) {
        return refused(StatusCode::BAD_REQUEST, "bad_request", "invalid node name");
    }
    let node = request.node_name.as_str();
    let Some(token) = JoinToken::parse(&request.token) else {
        return refused(StatusCode::UNAUTHORIZED, "bad_token", "malformed token");
    };
    let secrets: Api<Secret> = Api::namespaced(hub.client.clone(), &hub.config.namespace);
    let secret = match secrets
        .get_opt(&format!("{TOKEN_SECRET_PREFIX}{}", token.id))
        .await
    {
        Ok(s) => s,
        Err(e) => return unavailable("reading the join token", &e),
    };
    let Some(record) = secret.as_ref().and_then(token_record) else {
        return refused(StatusCode::UNAUTHORIZED, "bad_token", "bad token");
    };
    let scope = match check_token(&record, &token, now_seconds()) {
        Ok(s) => s,
        Err((outcome, message)) => return refused(StatusCode::UNAUTHORIZED, outcome, message),
    };
    if let Scope::Node(n) = &scope
        && n != node
    {
        return refused(
            StatusCode::FORBIDDEN,
            "out_of_scope",
            format!("this token is for node {n}, not {node}"),
        );
    }
    let (cn, key) = match csr_identity(&request.csr) {
        Ok(x) => x,
        Err(e) => return refused(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    if cn != node {
        return refused(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("csr subject CN {cn:?} is not {node:?}"),
        );
    }
    let labels = match &scope {
        Scope::Group { .. } => match Api::<Node>::all(hub.client.clone()).get_opt(node).await {
            Ok(n) => n.map(|n| n.metadata.labels.unwrap_or_default()),
            Err(e) => return unavailable("reading the node", &e),
        },
        Scope::Node(_) => None,
    };
    let existing = match fetch(&records_api(hub), node).await {
        Ok(r) => r,
        Err(e) => return unavailable("reading the identity record", &e),
    };
    let auto = auto_approval(&scope, node, labels.as_ref(), existing.as_ref(), &key);
    let outcome = issue(hub, ids, node, &key, &request.csr, &token.id, auto).await;
    if let (Outcome::Issued(_), Some(secret)) = (&outcome, secret.as_ref()) {
        ids.token_use.note(&secrets, secret, node);
    }
    outcome
}

/// Creates or finds the CSR, approves it when `auto` allows, signs it once approved.
async fn issue(
    hub: &Hub,
    ids: &Identities,
    node: &str,
    key: &str,
    csr_pem: &str,
    token_id: &str,
    auto: Result<(), String>,
) -> Outcome {
    let api: Api<CertificateSigningRequest> = Api::all(hub.client.clone());
    let name = csr_name(node, key);
    // Create first, read only on 409: a first enrolment (the common case, a fleet coming up)
    // costs one call instead of a 404 read plus the create; a retry finds its CSR by the 409.
    let pending_reason = auto.as_ref().err().cloned().unwrap_or_default();
    let new = new_csr(
        &name,
        node,
        token_id,
        csr_pem,
        pending_reason,
        ids.cert_lifetime,
    );
    let mut csr = match api.create(&PostParams::default(), &new).await {
        Ok(c) => c,
        Err(kube::Error::Api(e)) if e.code == 409 => match api.get(&name).await {
            Ok(c) => c,
            Err(e) => return unavailable("reading the CSR", &e),
        },
        Err(e) => return unavailable("creating the CSR", &e),
    };
    if csr.spec.signer_name != SIGNER_NAME {
        return refused(
            StatusCode::CONFLICT,
            "bad_request",
            format!("CSR {name} is not for {SIGNER_NAME}"),
        );
    }
    let has = |c: &CertificateSigningRequest, t: &str| {
        c.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|x| x.type_ == t && x.status == "True"))
    };
    if has(&csr, "Denied") || has(&csr, "Failed") {
        return refused(
            StatusCode::FORBIDDEN,
            "denied",
            format!("CSR {name} was denied"),
        );
    }
    if !has(&csr, "Approved") {
        if let Err(reason) = auto {
            return Outcome::Pending(PendingResponse {
                csr_name: name.clone(),
                reason: format!("{reason}: waiting for `kubectl certificate approve {name}`"),
            });
        }
        csr = match approve(&api, &name, node, token_id).await {
            Ok(c) => c,
            Err(e) => return unavailable("approving the CSR", &e),
        };
    }
    sign(hub, ids, &api, csr, node, key, token_id).await
}

/// The CSR object for one enrolment; `pending_reason` is empty when the hub approves it itself.
fn new_csr(
    name: &str,
    node: &str,
    token_id: &str,
    csr_pem: &str,
    pending_reason: String,
    cert_lifetime: std::time::Duration,
) -> CertificateSigningRequest {
    CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".into(),
                "edgefleet".into(),
            )])),
            annotations: Some(BTreeMap::from([
                ("edgefleet.io/node".to_string(), node.to_string()),
                ("edgefleet.io/token-id".to_string(), token_id.to_string()),
                (
                    "edgefleet.io/needs-approval-because".to_string(),
                    pending_reason,
                ),
            ])),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(csr_pem.as_bytes().to_vec()),
            signer_name: SIGNER_NAME.to_string(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            // The API's floor is 10 minutes; shorter lifetimes (tests) are the hub's
            // flag, applied when signing.
            expiration_seconds: i32::try_from(cert_lifetime.as_secs().max(600)).ok(),
            ..Default::default()
        },
        status: None,
    }
}

async fn approve(
    api: &Api<CertificateSigningRequest>,
    name: &str,
    node: &str,
    token_id: &str,
) -> Result<CertificateSigningRequest, kube::Error> {
    let condition = CertificateSigningRequestCondition {
        type_: "Approved".into(),
        status: "True".into(),
        reason: Some("EdgefleetAutoApproved".into()),
        message: Some(format!(
            "edgefleet-hub: first identity of {node} under join token {token_id} scoped to it"
        )),
        last_update_time: Some(Time(jiff::Timestamp::now())),
        ..Default::default()
    };
    let patch = serde_json::json!({"status": {"conditions": [condition]}});
    api.patch_approval(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

/// Signs an approved CSR of our signer (once: a signed one is handed out again) and records
/// its key as the node's identity.
async fn sign(
    hub: &Hub,
    ids: &Identities,
    api: &Api<CertificateSigningRequest>,
    csr: CertificateSigningRequest,
    node: &str,
    key: &str,
    token_id: &str,
) -> Outcome {
    let name = csr.metadata.name.clone().unwrap_or_default();
    let existing = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .and_then(|c| String::from_utf8(c.0.clone()).ok())
        .filter(|c| !c.is_empty());
    let certificate = match existing {
        Some(c) => c,
        None => {
            let pem = String::from_utf8_lossy(&csr.spec.request.0).to_string();
            let lifetime = csr
                .spec
                .expiration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(ids.cert_lifetime, std::time::Duration::from_secs)
                .min(ids.cert_lifetime);
            let cert = match hub.ca.sign_node_csr(node, &pem, lifetime) {
                Ok(c) => c,
                Err(e) => return refused(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
            };
            let patch = serde_json::json!({"status": {"certificate": ByteString(cert.clone().into_bytes())}});
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                return unavailable("writing the signed certificate", &e);
            }
            cert
        }
    };
    let der = edgefleet_channel_der(&certificate);
    let Some(PeerCert { not_after, .. }) = der.as_deref().and_then(peer_cert) else {
        return refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "error",
            "unreadable certificate",
        );
    };
    let serial = der
        .as_deref()
        .and_then(|d| {
            x509_parser::parse_x509_certificate(d)
                .ok()
                .map(|(_, c)| c.raw_serial_as_string())
        })
        .unwrap_or_default();
    let data = BTreeMap::from([
        (IDENTITY_NODE_KEY.to_string(), node.to_string()),
        (IDENTITY_KEY_KEY.to_string(), key.to_string()),
        (IDENTITY_SERIAL_KEY.to_string(), serial),
        (
            IDENTITY_NOT_AFTER_KEY.to_string(),
            jiff::Timestamp::from_second(not_after)
                .map(|t| t.to_string())
                .unwrap_or_default(),
        ),
        (IDENTITY_TOKEN_KEY.to_string(), token_id.to_string()),
        (IDENTITY_CSR_KEY.to_string(), name.clone()),
    ]);
    if let Err(e) = write_active(&records_api(hub), node, data).await {
        return unavailable("recording the node identity", &e);
    }
    tracing::info!(%node, csr = %name, "issued a node certificate");
    Outcome::Issued(BootstrapResponse {
        certificate,
        ca: hub.ca.cert_pem.clone(),
    })
}

/// The first certificate's DER in a PEM text.
fn edgefleet_channel_der(pem: &str) -> Option<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    Some(p.contents)
}

/// `POST /v1/renew` by `peer` (already admitted: active record, same key): a fresh certificate
/// for the same key, signed directly (the identity does not change, so nothing to approve).
pub async fn renew(
    hub: &Hub,
    ids: &Identities,
    peer: &PeerCert,
    request: &RenewRequest,
) -> Outcome {
    let (cn, key) = match csr_identity(&request.csr) {
        Ok(x) => x,
        Err(e) => return refused(StatusCode::BAD_REQUEST, "refused", e.to_string()),
    };
    if cn != peer.cn || key != peer.key {
        return refused(
            StatusCode::FORBIDDEN,
            "refused",
            "a renewal keeps the node name and key of the current certificate",
        );
    }
    let certificate = match hub
        .ca
        .sign_node_csr(&peer.cn, &request.csr, ids.cert_lifetime)
    {
        Ok(c) => c,
        Err(e) => return refused(StatusCode::BAD_REQUEST, "refused", e.to_string()),
    };
    let not_after = edgefleet_channel_der(&certificate)
        .as_deref()
        .and_then(peer_cert)
        .and_then(|p| jiff::Timestamp::from_second(p.not_after).ok())
        .map(|t| t.to_string())
        .unwrap_or_default();
    let patch = serde_json::json!({"data": {IDENTITY_NOT_AFTER_KEY: not_after}});
    let name = edgefleet_channel::bootstrap::identity_record_name(&peer.cn);
    if let Err(e) = records_api(hub)
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        return unavailable("recording the renewal", &e);
    }
    tracing::info!(node = %peer.cn, "renewed a node certificate");
    Outcome::Issued(BootstrapResponse {
        certificate,
        ca: hub.ca.cert_pem.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Record;

    fn record(scope: Option<Scope>, expiration: Option<i64>) -> TokenRecord {
        TokenRecord {
            id: "abcdef".into(),
            secret_sha256: sha256_hex(b"0123456789abcdef"),
            expiration,
            usable: true,
            scope,
        }
    }

    #[test]
    fn tokens_are_checked_for_secret_expiry_usage_and_scope() {
        let token = JoinToken::parse("abcdef.0123456789abcdef").unwrap();
        let wrong = JoinToken::parse("abcdef.0123456789abcdeg").unwrap();
        let node = Some(Scope::Node("edge-1".into()));
        assert_eq!(
            check_token(&record(node.clone(), Some(200)), &token, 100),
            Ok(Scope::Node("edge-1".into()))
        );
        assert_eq!(
            check_token(&record(node.clone(), None), &wrong, 100)
                .unwrap_err()
                .0,
            "bad_token"
        );
        assert_eq!(
            check_token(&record(node.clone(), Some(100)), &token, 100)
                .unwrap_err()
                .0,
            "expired_token"
        );
        assert_eq!(
            check_token(&record(None, None), &token, 100).unwrap_err().0,
            "bad_token"
        );
        let mut unusable = record(node, None);
        unusable.usable = false;
        assert_eq!(
            check_token(&unusable, &token, 100).unwrap_err().0,
            "bad_token"
        );
    }

    #[test]
    fn token_secrets_parse() {
        let data = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            )
        };
        let secret = Secret {
            type_: Some(TOKEN_SECRET_TYPE.into()),
            data: data(&[
                (TOKEN_ID_KEY, "abcdef"),
                (TOKEN_SECRET_HASH_KEY, "h"),
                (TOKEN_EXPIRATION_KEY, "2030-01-01T00:00:00Z"),
                (TOKEN_USAGE_KEY, "true"),
                (TOKEN_SCOPE_GROUP_KEY, "topology.edgefleet.io/station=s-1"),
            ]),
            ..Default::default()
        };
        let r = token_record(&secret).unwrap();
        assert_eq!(
            r.scope,
            Some(Scope::Group {
                key: "topology.edgefleet.io/station".into(),
                value: "s-1".into()
            })
        );
        assert_eq!(r.expiration, Some(1_893_456_000));
        assert!(r.usable);
        let other = Secret {
            type_: Some("Opaque".into()),
            ..secret
        };
        assert_eq!(token_record(&other), None);
    }

    #[test]
    fn only_a_first_identity_in_scope_is_approved_automatically() {
        let group = Scope::Group {
            key: "station".into(),
            value: "s1".into(),
        };
        let in_group = BTreeMap::from([("station".to_string(), "s1".to_string())]);
        let elsewhere = BTreeMap::from([("station".to_string(), "s2".to_string())]);
        let live = Record {
            key: "k1".into(),
            revoked: false,
        };
        let revoked = Record {
            key: "k1".into(),
            revoked: true,
        };
        let node = Scope::Node("n".into());
        assert!(auto_approval(&node, "n", None, None, "k1").is_ok());
        assert!(
            auto_approval(&node, "n", None, Some(&live), "k1").is_ok(),
            "same key again"
        );
        assert!(
            auto_approval(&node, "n", None, Some(&live), "k2").is_err(),
            "a second identity"
        );
        assert!(
            auto_approval(&node, "n", None, Some(&revoked), "k1").is_err(),
            "revoked"
        );
        assert!(auto_approval(&group, "n", Some(&in_group), None, "k1").is_ok());
        assert!(
            auto_approval(&group, "n", None, None, "k1").is_ok(),
            "a new node joins its group"
        );
        assert!(
            auto_approval(&group, "n", Some(&elsewhere), None, "k1").is_err(),
            "outside the group"
        );
        assert!(
            auto_approval(&group, "n", Some(&BTreeMap::new()), None, "k1").is_err(),
            "unlabelled"
        );
    }

    #[test]
    fn csr_names_are_stable_per_key() {
        assert_eq!(
            csr_name("edge-1", "0123456789abcdef0123"),
            "edge-1-0123456789abcdef"
        );
        assert!(csr_name(&"a".repeat(253), "0123456789abcdef").len() <= 253);
    }
}
