//! `token create|list|revoke` and `node list|revoke`: join-token Secrets and node identity
//! records in the hub's namespace (see docs/channel.md, "Identity").

use std::collections::BTreeMap;

use edgefleet_channel::bootstrap::{
    IDENTITY_KEY_KEY, IDENTITY_LABEL, IDENTITY_NODE_KEY, IDENTITY_NOT_AFTER_KEY,
    IDENTITY_REVOKED_AT_KEY, IDENTITY_STATE_LABEL, IDENTITY_TOKEN_KEY, JoinToken, STATE_REVOKED,
    TOKEN_DESCRIPTION_KEY, TOKEN_EXPIRATION_KEY, TOKEN_ID_KEY, TOKEN_LABEL, TOKEN_SCOPE_GROUP_KEY,
    TOKEN_SCOPE_NODE_KEY, TOKEN_SECRET_HASH_KEY, TOKEN_SECRET_PREFIX, TOKEN_SECRET_TYPE,
    TOKEN_USAGE_KEY, TOKEN_USED_BY_ANNOTATION, ca_pin, identity_record_name, sha256_hex,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde::Serialize;

use crate::cli::{DEFAULT_HUB_NAMESPACE, NodeCommand, Output, TokenCommand, TokenCreateArgs};
use crate::kube_ctx::Ctx;
use crate::table::{human_duration, render};
use crate::{Error, FIELD_MANAGER, Result, exit, out, serialize};

/// The hub CA Secret (its `ca.crt` is pinned in every token).
const CA_SECRET: &str = "edgefleet-hub-ca";
const STATION_LABEL: &str = "topology.edgefleet.io/station";

fn hub_namespace(ctx: &Ctx) -> &str {
    if ctx.namespace_given {
        &ctx.namespace
    } else {
        DEFAULT_HUB_NAMESPACE
    }
}

/// `90s`, `30m`, `24h`, `7d` (or anything jiff's friendly format reads).
pub fn parse_ttl(text: &str) -> Result<SignedDuration> {
    let t = text.trim();
    let days = t
        .strip_suffix('d')
        .and_then(|d| d.parse::<i64>().ok())
        .map(|d| SignedDuration::from_hours(d * 24));
    let ttl = match days {
        Some(d) => d,
        None => t
            .parse::<SignedDuration>()
            .map_err(|e| Error::Usage(format!("--ttl {t:?}: {e}")))?,
    };
    if ttl <= SignedDuration::ZERO {
        return Err(Error::Usage("--ttl must be positive".into()));
    }
    Ok(ttl)
}

/// `--group`: `<label>=<value>`, a bare value meaning a station. The value may be empty when
/// the label is given (role labels such as `node-role.kubernetes.io/edge=` carry none).
pub fn parse_group(text: &str) -> Result<String> {
    let (k, v) = match text.split_once('=') {
        Some((k, v)) => (k, v),
        None if text.is_empty() => ("", ""),
        None => (STATION_LABEL, text),
    };
    if k.is_empty() || k.contains(char::is_whitespace) {
        return Err(Error::Usage(format!(
            "--group {text:?}: want <label>=<value>"
        )));
    }
    Ok(format!("{k}={v}"))
}

/// The Secret of a new token (its secret part only as a hash).
pub fn token_secret(
    token: &JoinToken,
    scope: (&str, &str),
    expiration: Timestamp,
    description: &str,
) -> Secret {
    let data = BTreeMap::from([
        (TOKEN_ID_KEY.to_string(), token.id.clone()),
        (
            TOKEN_SECRET_HASH_KEY.to_string(),
            sha256_hex(token.secret.as_bytes()),
        ),
        (TOKEN_EXPIRATION_KEY.to_string(), expiration.to_string()),
        (TOKEN_USAGE_KEY.to_string(), "true".to_string()),
        (TOKEN_DESCRIPTION_KEY.to_string(), description.to_string()),
        (scope.0.to_string(), scope.1.to_string()),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(format!("{TOKEN_SECRET_PREFIX}{}", token.id)),
            labels: Some(BTreeMap::from([
                (TOKEN_LABEL.to_string(), "true".to_string()),
                (
                    "app.kubernetes.io/part-of".to_string(),
                    "edgefleet".to_string(),
                ),
            ])),
            ..Default::default()
        },
        type_: Some(TOKEN_SECRET_TYPE.to_string()),
        string_data: Some(data),
        ..Default::default()
    }
}

pub async fn token(ctx: &Ctx, cmd: TokenCommand) -> Result<u8> {
    match cmd {
        TokenCommand::Create(args) => create(ctx, args).await,
        TokenCommand::List(args) => list_tokens(ctx, args.output).await,
        TokenCommand::Revoke(arg) => {
            let ns = hub_namespace(ctx);
            let name = format!("{TOKEN_SECRET_PREFIX}{}", arg.id);
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            api.delete(&name, &DeleteParams::default())
                .await
                .map_err(|e| {
                    ctx.request("delete", "secrets", "join token", Some(&name), Some(ns))
                        .error(e)
                })?;
            out(&format!("token {} revoked\n", arg.id))?;
            Ok(exit::OK)
        }
    }
}

async fn create(ctx: &Ctx, args: TokenCreateArgs) -> Result<u8> {
    let ns = hub_namespace(ctx);
    let ttl = parse_ttl(&args.ttl)?;
    let scope = match (&args.node, &args.group) {
        (Some(n), _) => (TOKEN_SCOPE_NODE_KEY, n.clone()),
        (None, Some(g)) => (TOKEN_SCOPE_GROUP_KEY, parse_group(g)?),
        (None, None) => return Err(Error::Usage("give --node or --group".into())),
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let ca = secrets.get(CA_SECRET).await.map_err(|e| {
        ctx.request("get", "secrets", "secret", Some(CA_SECRET), Some(ns))
            .error(e)
    })?;
    let pin = ca
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .and_then(|b| std::str::from_utf8(&b.0).ok())
        .and_then(ca_pin)
        .ok_or_else(|| {
            Error::Usage(format!(
                "Secret {CA_SECRET} in {ns} holds no ca.crt: is the hub installed there?"
            ))
        })?;
    let mut token = JoinToken::generate();
    token.ca_pin = Some(pin);
    let expiration = Timestamp::now()
        .checked_add(ttl)
        .map_err(|e| Error::Usage(format!("--ttl: {e}")))?;
    let secret = token_secret(&token, (scope.0, &scope.1), expiration, &args.description);
    secrets
        .create(
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &secret,
        )
        .await
        .map_err(|e| {
            ctx.request("create", "secrets", "secret", None, Some(ns))
                .error(e)
        })?;
    out(&format!("{}\n", token.full()))?;
    Ok(exit::OK)
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenRow {
    pub id: String,
    pub scope: String,
    pub expiration: String,
    pub used_by: String,
    pub description: String,
}

fn text(data: Option<&BTreeMap<String, k8s_openapi::ByteString>>, key: &str) -> String {
    data.and_then(|d| d.get(key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .unwrap_or_default()
}

/// A token Secret as a row (never its hash).
pub fn token_row(s: &Secret, now: Timestamp) -> TokenRow {
    let data = s.data.as_ref();
    let scope = match (
        text(data, TOKEN_SCOPE_NODE_KEY),
        text(data, TOKEN_SCOPE_GROUP_KEY),
    ) {
        (n, _) if !n.is_empty() => format!("node {n}"),
        (_, g) if !g.is_empty() => format!("group {g}"),
        _ => "-".into(),
    };
    let expiration = match text(data, TOKEN_EXPIRATION_KEY).parse::<Timestamp>() {
        Ok(t) if t <= now => "expired".into(),
        Ok(t) => format!("in {}", human_duration(t.duration_since(now))),
        Err(_) => "never".into(),
    };
    let used_by = s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TOKEN_USED_BY_ANNOTATION))
        .cloned()
        .unwrap_or_else(|| "-".into());
    TokenRow {
        id: text(data, TOKEN_ID_KEY),
        scope,
        expiration,
        used_by,
        description: text(data, TOKEN_DESCRIPTION_KEY),
    }
}

async fn list_tokens(ctx: &Ctx, output: Output) -> Result<u8> {
    let ns = hub_namespace(ctx);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let list = api
        .list(&ListParams::default().labels(TOKEN_LABEL))
        .await
        .map_err(|e| {
            ctx.request("list", "secrets", "secret", None, Some(ns))
                .error(e)
        })?;
    let now = Timestamp::now();
    let rows: Vec<TokenRow> = list
        .items
        .iter()
        .filter(|s| s.type_.as_deref() == Some(TOKEN_SECRET_TYPE))
        .map(|s| token_row(s, now))
        .collect();
    if output != Output::Table {
        out(&serialize(&rows, output)?)?;
        return Ok(exit::OK);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.scope.clone(),
                r.expiration.clone(),
                r.used_by.clone(),
                r.description.clone(),
            ]
        })
        .collect();
    out(&render(
        &["ID", "SCOPE", "EXPIRES", "USED-BY", "DESCRIPTION"],
        &cells,
    ))?;
    Ok(exit::OK)
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    pub node: String,
    pub state: String,
    pub key: String,
    pub not_after: String,
    pub token: String,
}

pub fn node_row(cm: &ConfigMap) -> NodeRow {
    let data = cm.data.clone().unwrap_or_default();
    let get = |k: &str| data.get(k).cloned().unwrap_or_default();
    let key = get(IDENTITY_KEY_KEY);
    NodeRow {
        node: get(IDENTITY_NODE_KEY),
        state: cm
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(IDENTITY_STATE_LABEL))
            .cloned()
            .unwrap_or_default(),
        key: if key.is_empty() {
            "-".into()
        } else {
            key.chars().take(16).collect()
        },
        not_after: get(IDENTITY_NOT_AFTER_KEY),
        token: get(IDENTITY_TOKEN_KEY),
    }
}

pub async fn node(ctx: &Ctx, cmd: NodeCommand) -> Result<u8> {
    let ns = hub_namespace(ctx);
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    match cmd {
        NodeCommand::List(args) => {
            let list = api
                .list(&ListParams::default().labels(IDENTITY_LABEL))
                .await
                .map_err(|e| {
                    ctx.request("list", "configmaps", "configmap", None, Some(ns))
                        .error(e)
                })?;
            let rows: Vec<NodeRow> = list.items.iter().map(node_row).collect();
            if args.output != Output::Table {
                out(&serialize(&rows, args.output)?)?;
                return Ok(exit::OK);
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.node.clone(),
                        r.state.clone(),
                        r.key.clone(),
                        r.not_after.clone(),
                        r.token.clone(),
                    ]
                })
                .collect();
            out(&render(
                &["NODE", "STATE", "KEY", "NOT-AFTER", "TOKEN"],
                &cells,
            ))?;
            Ok(exit::OK)
        }
        NodeCommand::Revoke(arg) => {
            let name = identity_record_name(&arg.node);
            let now = Timestamp::now().to_string();
            let patch = serde_json::json!({
                "metadata": {"labels": {
                    IDENTITY_LABEL: "true",
                    IDENTITY_STATE_LABEL: STATE_REVOKED,
                    "app.kubernetes.io/part-of": "edgefleet",
                }},
                "data": {IDENTITY_NODE_KEY: arg.node, IDENTITY_REVOKED_AT_KEY: now},
            });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            match api.patch(&name, &params, &Patch::Merge(&patch)).await {
                Ok(_) => {}
                // No record yet: create a revoked one, so the name needs approval from now on.
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    let cm = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            labels: Some(BTreeMap::from([
                                (IDENTITY_LABEL.to_string(), "true".to_string()),
                                (IDENTITY_STATE_LABEL.to_string(), STATE_REVOKED.to_string()),
                            ])),
                            ..Default::default()
                        },
                        data: Some(BTreeMap::from([
                            (IDENTITY_NODE_KEY.to_string(), arg.node.clone()),
                            (IDENTITY_REVOKED_AT_KEY.to_string(), now),
                        ])),
                        ..Default::default()
                    };
                    api.create(
                        &PostParams {
                            field_manager: Some(FIELD_MANAGER.into()),
                            ..Default::default()
                        },
                        &cm,
                    )
                    .await
                    .map_err(|e| {
                        ctx.request("create", "configmaps", "configmap", Some(&name), Some(ns))
                            .error(e)
                    })?;
                }
                Err(e) => {
                    return Err(ctx
                        .request("patch", "configmaps", "configmap", Some(&name), Some(ns))
                        .error(e));
                }
            }
            out(&format!(
                "node {} revoked: its sessions close on every hub replica; a new bootstrap needs `kubectl certificate approve`\n",
                arg.node
            ))?;
            Ok(exit::OK)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_and_groups_parse() {
        assert_eq!(parse_ttl("24h").unwrap(), SignedDuration::from_hours(24));
        assert_eq!(parse_ttl("7d").unwrap(), SignedDuration::from_hours(168));
        assert_eq!(parse_ttl("90s").unwrap(), SignedDuration::from_secs(90));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
        assert_eq!(
            parse_group("s-7").unwrap(),
            "topology.edgefleet.io/station=s-7"
        );
        assert_eq!(
            parse_group("topology.edgefleet.io/region=north").unwrap(),
            "topology.edgefleet.io/region=north"
        );
        assert_eq!(
            parse_group("node-role.kubernetes.io/edge=").unwrap(),
            "node-role.kubernetes.io/edge="
        );
        assert!(parse_group("=x").is_err());
        assert!(parse_group("").is_err());
    }

    #[test]
    fn token_secrets_keep_only_a_hash_and_list_without_it() {
        let token =
            JoinToken::parse(&format!("{}.abcdef.0123456789abcdef", "a".repeat(64))).unwrap();
        let exp: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let secret = token_secret(&token, (TOKEN_SCOPE_NODE_KEY, "edge-1"), exp, "gantry 1");
        let yaml = serde_yaml::to_string(&secret).unwrap();
        assert!(
            !yaml.contains("0123456789abcdef\n"),
            "the secret part is not stored"
        );
        assert!(yaml.contains(&sha256_hex(b"0123456789abcdef")));
        assert_eq!(secret.type_.as_deref(), Some(TOKEN_SECRET_TYPE));
        // As the API server returns it: string_data folded into data.
        let stored = Secret {
            data: secret.string_data.as_ref().map(|d| {
                d.iter()
                    .map(|(k, v)| (k.clone(), k8s_openapi::ByteString(v.clone().into_bytes())))
                    .collect()
            }),
            ..secret
        };
        let now: Timestamp = "2029-12-31T00:00:00Z".parse().unwrap();
        let row = token_row(&stored, now);
        assert_eq!(row.id, "abcdef");
        assert_eq!(row.scope, "node edge-1");
        assert_eq!(row.expiration, "in 1d");
        assert_eq!(row.used_by, "-");
        let later: Timestamp = "2031-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(token_row(&stored, later).expiration, "expired");
    }
}
