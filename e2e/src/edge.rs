//! The edge channel in e2e: hub replicas run as the chart's ServiceAccount (see [`Operator`]),
//! hollow edge agents (`edge-agent simulate`) as a child process that can be killed and
//! restarted, and the small HTTP reads the tests make of their endpoints.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;

use edgefleet_channel::bootstrap::{
    JoinToken, TOKEN_EXPIRATION_KEY, TOKEN_ID_KEY, TOKEN_LABEL, TOKEN_SCOPE_GROUP_KEY,
    TOKEN_SCOPE_NODE_KEY, TOKEN_SECRET_HASH_KEY, TOKEN_SECRET_PREFIX, TOKEN_SECRET_TYPE,
    TOKEN_USAGE_KEY, ca_pin, sha256_hex,
};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use serde::Deserialize;

use crate::operator::{Operator, SYSTEM_NAMESPACE, binary};
use crate::{repo_root, wait_for};

/// A free loopback port (bound and released: good enough when the caller binds it at once).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `GET path` over plain HTTP/1.0: `(status, body)`.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut conn = std::net::TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("HTTP response without a header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("HTTP response without a status")?;
    Ok((status, body.to_string()))
}

/// Prometheus text: the samples whose name starts with `prefix`, keyed by name plus labels.
pub fn metrics(addr: &str, prefix: &str) -> Result<std::collections::BTreeMap<String, f64>> {
    let (status, body) = http_get(addr, "/metrics")?;
    if status != 200 {
        bail!("GET {addr}/metrics: HTTP {status}");
    }
    Ok(body
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect())
}

/// A hub replica: the `edgefleet-hub` process and the address it serves sessions on.
pub struct HubProcess {
    pub op: Operator,
    pub addr: SocketAddr,
}

impl HubProcess {
    /// Starts a hub replica for `namespace` on a free port and waits until it listens.
    pub async fn start(namespace: &str, extra: &[&str]) -> Result<HubProcess> {
        Self::start_inner(None, namespace, extra).await
    }

    /// [`HubProcess::start`] as ServiceAccount `serviceaccount` of the system namespace,
    /// watching `watch` (a comma-separated list of namespaces): see [`Operator::start_as`].
    pub async fn start_as(serviceaccount: &str, watch: &str, extra: &[&str]) -> Result<HubProcess> {
        Self::start_inner(Some(serviceaccount), watch, extra).await
    }

    async fn start_inner(
        serviceaccount: Option<&str>,
        namespace: &str,
        extra: &[&str],
    ) -> Result<HubProcess> {
        let port = free_port()?;
        let mut args = vec![
            format!("--listen=127.0.0.1:{port}"),
            "--report-seconds=1".to_string(),
        ];
        // Fast renewals by default; a test may set its own (a flag is taken once).
        if !extra.iter().any(|a| a.starts_with("--lease-renew-seconds")) {
            args.push("--lease-renew-seconds=2".to_string());
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let op = match serviceaccount {
            Some(sa) => Operator::start_as("hub", sa, namespace, &args).await?,
            None => Operator::start_with_args("hub", namespace, &args).await?,
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let hub = HubProcess { op, addr };
        hub.wait_listening().await?;
        Ok(hub)
    }

    pub async fn wait_listening(&self) -> Result<()> {
        let addr = self.addr;
        wait_for(
            "the hub to listen",
            Duration::from_secs(60),
            || async move { Ok(tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())) },
        )
        .await
    }

    /// SIGKILL and start again on the same port (a crashed replica's pod coming back).
    pub async fn restart(&mut self) -> Result<()> {
        self.op.restart()?;
        self.wait_listening().await
    }

    pub fn url(&self) -> String {
        format!("wss://{}", self.addr)
    }
}

/// The scope of a join token made by a test.
#[derive(Clone, Debug)]
pub enum TokenScope {
    Node(String),
    /// `<label>=<value>`.
    Group(String),
}

/// A join token (`<ca-pin>.<id>.<secret>`) as `kubectl edgefleet token create` makes it: a
/// Secret in the system namespace with the secret's hash, the scope and an expiry `ttl` from
/// now (negative: already expired). Waits for the hubs' CA, whose hash the token pins.
pub async fn join_token(client: &Client, scope: TokenScope, ttl_seconds: i64) -> Result<String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let ca = wait_for("the hub CA", Duration::from_secs(30), || async {
        Ok(api
            .get_opt("edgefleet-hub-ca")
            .await?
            .and_then(|s| s.data)
            .and_then(|d| d.get("ca.crt").cloned())
            .and_then(|b| String::from_utf8(b.0).ok()))
    })
    .await?;
    let mut token = JoinToken::generate();
    token.ca_pin = Some(ca_pin(&ca).context("no certificate in the hub CA")?);
    let expiration = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(ttl_seconds))?
        .to_string();
    let (scope_key, scope_value) = match scope {
        TokenScope::Node(n) => (TOKEN_SCOPE_NODE_KEY, n),
        TokenScope::Group(g) => (TOKEN_SCOPE_GROUP_KEY, g),
    };
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(format!("{TOKEN_SECRET_PREFIX}{}", token.id)),
            labels: Some(BTreeMap::from([(
                TOKEN_LABEL.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some(TOKEN_SECRET_TYPE.to_string()),
        string_data: Some(BTreeMap::from([
            (TOKEN_ID_KEY.to_string(), token.id.clone()),
            (
                TOKEN_SECRET_HASH_KEY.to_string(),
                sha256_hex(token.secret.as_bytes()),
            ),
            (TOKEN_EXPIRATION_KEY.to_string(), expiration),
            (TOKEN_USAGE_KEY.to_string(), "true".to_string()),
            (scope_key.to_string(), scope_value),
        ])),
        ..Default::default()
    };
    api.create(&PostParams::default(), &secret).await?;
    Ok(token.full())
}

/// A group join token for test nodes (names no Node holds yet: approved on first use), an
/// hour long, written to a file for `--token-file`.
pub async fn bootstrap_token_file(client: &Client, dir: &std::path::Path) -> Result<PathBuf> {
    let token = join_token(
        client,
        TokenScope::Group("edgefleet.io/e2e-group=e2e".into()),
        3600,
    )
    .await?;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("token");
    std::fs::write(&path, token)?;
    Ok(path)
}

/// What a hollow agent's store holds of one object.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct StoredObject {
    pub resource: String,
    pub uid: String,
    pub resource_version: String,
}

/// `edge-agent simulate`: hollow agents in one child process, killed on drop.
pub struct Simulator {
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    pub admin: String,
}

impl Simulator {
    /// Starts `edge-agent simulate` with `args` (nodes, prefix, hubs, token, stores) plus an
    /// admin address of its own; the log goes to `hack/.cluster/logs/e2e-<name>.log`.
    pub fn start(name: &str, args: &[String]) -> Result<Simulator> {
        let admin = format!("127.0.0.1:{}", free_port()?);
        let mut sim = Simulator {
            args: args.to_vec(),
            child: None,
            log: repo_root()
                .join("hack/.cluster/logs")
                .join(format!("e2e-{name}.log")),
            admin,
        };
        sim.spawn()?;
        Ok(sim)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(binary("edge-agent")?)
            .args(["--log-format=text", "--log-level=info", "simulate"])
            .args(self.args.iter())
            .arg(format!("--admin-addr={}", self.admin))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting edge-agent simulate")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: every session drops at once, as when an edge site loses power.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// One hollow agent's store, from the simulator's admin endpoint.
    pub fn objects(&self, node: &str) -> Result<Vec<StoredObject>> {
        let (status, body) = http_get(&self.admin, &format!("/agents/{node}/objects"))?;
        if status != 200 {
            bail!("GET /agents/{node}/objects: HTTP {status}: {body}");
        }
        let mut objects: Vec<StoredObject> = serde_json::from_str(&body)?;
        objects.sort();
        Ok(objects)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- last lines of {} ----", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
