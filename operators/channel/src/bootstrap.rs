//! A node's first start: token + CSR → certificate signed by the hub's CA.

use serde::{Deserialize, Serialize};

/// `POST` here (server-authenticated TLS, no client certificate yet).
pub const BOOTSTRAP_PATH: &str = "/v1/bootstrap";
/// The Secret (in the hub's namespace) holding the bootstrap token under [`TOKEN_KEY`].
pub const TOKEN_SECRET: &str = "edgefleet-hub-bootstrap";
pub const TOKEN_KEY: &str = "token";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapRequest {
    pub node_name: String,
    pub token: String,
    /// PEM-encoded PKCS#10 request whose subject CN is `node_name`.
    pub csr: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapResponse {
    /// PEM client certificate, CN = node name.
    pub certificate: String,
    /// PEM CA certificate: the agent trusts the hub (and its replicas) through it.
    pub ca: String,
}
