//! A node's first start and its later renewals: the join token, its CA pin, the CSR exchange.
//!
//! A join token is `<ca-pin>.<token-id>.<token-secret>`, KubeEdge's `<caHash>.<token>` with
//! Kubernetes' bootstrap-token shape inside: `ca-pin` is the lowercase hex SHA-256 of the hub
//! CA's DER certificate, `token-id` 6 and `token-secret` 16 characters of `[a-z0-9]`. The agent
//! checks the hub's chain against the pin before it sends anything; the hub only ever sees
//! `<token-id>.<token-secret>` and stores a SHA-256 of the secret, never the secret.

use serde::{Deserialize, Serialize};

/// `POST` here (server-authenticated TLS, no client certificate yet).
pub const BOOTSTRAP_PATH: &str = "/v1/bootstrap";
/// `POST` here with the current client certificate (mTLS): a new certificate, same node.
pub const RENEW_PATH: &str = "/v1/renew";
/// The signer of node client certificates in the Kubernetes CSR API.
pub const SIGNER_NAME: &str = "edgefleet.io/edge-node";
/// Type of the join-token Secrets (in the hub's namespace). Not `bootstrap.kubernetes.io/token`:
/// kube's own bootstrap signer and token cleaner leave these alone, and kube-apiserver never
/// accepts them as credentials.
pub const TOKEN_SECRET_TYPE: &str = "edgefleet.io/join-token";
/// Join-token Secrets are named this plus the token id.
pub const TOKEN_SECRET_PREFIX: &str = "edgefleet-join-token-";
/// Label on every join-token Secret (`kubectl get secret -l edgefleet.io/join-token`).
pub const TOKEN_LABEL: &str = "edgefleet.io/join-token";
/// Secret data keys, after `bootstrap.kubernetes.io/token` where one fits.
pub const TOKEN_ID_KEY: &str = "token-id";
/// Hex SHA-256 of the token secret (the secret itself is never stored).
pub const TOKEN_SECRET_HASH_KEY: &str = "token-secret-sha256";
/// RFC 3339 time after which the token is refused.
pub const TOKEN_EXPIRATION_KEY: &str = "expiration";
pub const TOKEN_DESCRIPTION_KEY: &str = "description";
/// `"true"`: the token may bootstrap edge nodes.
pub const TOKEN_USAGE_KEY: &str = "usage-bootstrap-edgefleet";
/// Scope: exactly one of these. The node name, or the group as `<label key>=<value>`.
pub const TOKEN_SCOPE_NODE_KEY: &str = "scope-node";
pub const TOKEN_SCOPE_GROUP_KEY: &str = "scope-group";
/// Annotation the hub keeps on a token Secret: the node names it bootstrapped (last few).
pub const TOKEN_USED_BY_ANNOTATION: &str = "edgefleet.io/used-by";

/// The node identity records: one ConfigMap per node in the hub's namespace, named this plus
/// the node name, labelled [`IDENTITY_LABEL`] and [`IDENTITY_STATE_LABEL`].
pub const IDENTITY_PREFIX: &str = "edgefleet-node-identity-";
pub const IDENTITY_LABEL: &str = "edgefleet.io/node-identity";
/// `active` or `revoked`.
pub const IDENTITY_STATE_LABEL: &str = "edgefleet.io/identity-state";
pub const STATE_ACTIVE: &str = "active";
pub const STATE_REVOKED: &str = "revoked";
/// Record data keys.
pub const IDENTITY_NODE_KEY: &str = "node";
/// Hex SHA-256 of the node's public key (SubjectPublicKeyInfo DER): the identity.
pub const IDENTITY_KEY_KEY: &str = "publicKeySHA256";
pub const IDENTITY_SERIAL_KEY: &str = "serial";
pub const IDENTITY_NOT_AFTER_KEY: &str = "notAfter";
pub const IDENTITY_TOKEN_KEY: &str = "tokenID";
pub const IDENTITY_CSR_KEY: &str = "csr";
pub const IDENTITY_REVOKED_AT_KEY: &str = "revokedAt";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapRequest {
    pub node_name: String,
    /// `<token-id>.<token-secret>` (a full join token is accepted too; its pin is ignored).
    pub token: String,
    /// PEM-encoded PKCS#10 request whose subject CN is `node_name`.
    pub csr: String,
}

/// `POST /v1/renew`: the node is the client certificate's CN.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewRequest {
    /// PEM PKCS#10 request, CN = the node, signed by the key of the current certificate.
    pub csr: String,
}

/// 200 answer of bootstrap and renew.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapResponse {
    /// PEM client certificate, CN = node name.
    pub certificate: String,
    /// PEM CA certificate: the agent trusts the hub (and its replicas) through it.
    pub ca: String,
}

/// 202 answer of a bootstrap that waits for an administrator: the agent keeps its key and asks
/// again with the same CSR (with back-off) until the CSR is approved or denied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingResponse {
    /// The CertificateSigningRequest to approve (`kubectl certificate approve <csr>`).
    pub csr_name: String,
    pub reason: String,
}

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Hex SHA-256 of the hub CA's DER certificate; `None` for a bare `<id>.<secret>`.
    pub ca_pin: Option<String>,
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_pin", &self.ca_pin)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn is_token_part(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl JoinToken {
    /// `<pin>.<id>.<secret>` or `<id>.<secret>`; `None` for anything else.
    pub fn parse(text: &str) -> Option<JoinToken> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        let (pin, id, secret) = match parts.as_slice() {
            [pin, id, secret] => (Some(*pin), *id, *secret),
            [id, secret] => (None, *id, *secret),
            _ => return None,
        };
        if let Some(pin) = pin
            && !(pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return None;
        }
        (is_token_part(id, 6) && is_token_part(secret, 16)).then(|| JoinToken {
            ca_pin: pin.map(str::to_ascii_lowercase),
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// A new random token (no pin yet).
    pub fn generate() -> JoinToken {
        JoinToken {
            ca_pin: None,
            id: random_part(6),
            secret: random_part(16),
        }
    }

    /// What the hub is sent: `<id>.<secret>`.
    pub fn credential(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The whole token as an administrator hands it out.
    pub fn full(&self) -> String {
        match &self.ca_pin {
            Some(pin) => format!("{pin}.{}.{}", self.id, self.secret),
            None => self.credential(),
        }
    }
}

fn random_part(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in uuid::Uuid::new_v4().as_bytes() {
            // 252 = 7 × 36: no modulo bias.
            if *b < 252 && out.len() < len {
                out.push(char::from(ALPHABET[usize::from(*b) % 36]));
            }
        }
    }
    out
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The pin of a CA: hex SHA-256 of its first certificate's DER; `None` without one.
pub fn ca_pin(ca_pem: &str) -> Option<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .next()?
        .ok()?;
    Some(sha256_hex(der.as_ref()))
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The identity record name of a node.
pub fn identity_record_name(node: &str) -> String {
    format!("{IDENTITY_PREFIX}{node}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_parse_and_round_trip() {
        let pin = "ab".repeat(32);
        let t = JoinToken::parse(&format!("{pin}.abcdef.0123456789abcdef")).unwrap();
        assert_eq!(t.ca_pin.as_deref(), Some(pin.as_str()));
        assert_eq!(t.credential(), "abcdef.0123456789abcdef");
        assert_eq!(t.full(), format!("{pin}.abcdef.0123456789abcdef"));
        let bare = JoinToken::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(bare.ca_pin, None);
        for bad in [
            "",
            "abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcde",
            "ABCDEF.0123456789abcdef",
            "zz.abcdef.0123456789abcdef",
            "a.b.c.d",
            &format!("{}.abcdef.0123456789abcdef", "g".repeat(64)),
        ] {
            assert_eq!(JoinToken::parse(bad), None, "{bad}");
        }
        let g = JoinToken::generate();
        assert_eq!(JoinToken::parse(&g.full()), Some(g.clone()));
        assert!(
            !format!("{g:?}").contains(&g.secret),
            "Debug hides the secret"
        );
    }

    #[test]
    fn hashes_and_comparison() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(ca_pin("not pem"), None);
    }
}
