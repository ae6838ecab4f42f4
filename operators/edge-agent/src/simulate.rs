//! `edge-agent simulate --nodes N`: N hollow agents in one process (edgefleet's Edgemark).
//!
//! Each agent has its own node name, its own certificate (bootstrapped with the token, or loaded
//! from `--data-dir/<node>/` when present — a pre-issued set can be shared between runs), its
//! own store (in memory, or `--data-dir/<node>/store.db` with `--sqlite`) and runs the same
//! [`session::run`] as the real agent, as one task. Starts are staggered (`--ramp-per-second`).
//! With several `--hub` addresses each agent picks its own at random, so the fleet spreads over
//! the hub replicas.
//!
//! Admin server: `/metrics`, `/healthz`, `GET /agents` (node, connected) and
//! `GET /agents/{node}/objects` (`[{resource, uid, resourceVersion}]`, for the chaos test that
//! checks every agent's store against the API).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::identity;
use crate::metrics::{Metrics, inc};
use crate::session::{self, Agent, SessionConfig};
use crate::store::{MemoryStore, SqliteStore, Store};

/// A simulated agent as the admin server sees it.
pub struct Hollow {
    pub store: Arc<dyn Store>,
    pub connected: Arc<AtomicBool>,
}

#[derive(Clone)]
pub struct Fleet {
    pub agents: Arc<BTreeMap<String, Hollow>>,
    pub metrics: Arc<Metrics>,
}

pub struct SimulateOptions {
    pub nodes: usize,
    pub name_prefix: String,
    /// Digits of the zero-padded index in node names.
    pub name_width: usize,
    pub start_index: usize,
    pub ramp_per_second: u32,
    pub data_dir: Option<PathBuf>,
    pub sqlite: bool,
    /// Obtain each identity into `data_dir`, then stop (no session).
    pub enrol_only: bool,
    pub token: Option<String>,
    pub hub_ca: Option<String>,
    /// Template: `node` is replaced per agent.
    pub session: SessionConfig,
    /// Hollow devices per agent (benchmarks), reporting through the agent's session.
    pub devices: Option<crate::dmi::hollow::HollowDevices>,
}

pub fn node_name(prefix: &str, width: usize, index: usize) -> String {
    format!("{prefix}{index:0width$}")
}

/// Builds the fleet (stores opened, nothing connected yet).
pub fn fleet(opts: &SimulateOptions) -> Result<Fleet, crate::store::StoreError> {
    let mut agents = BTreeMap::new();
    for i in opts.start_index..opts.start_index + opts.nodes {
        let node = node_name(&opts.name_prefix, opts.name_width, i);
        let store: Arc<dyn Store> = match (&opts.data_dir, opts.sqlite) {
            (Some(dir), true) => {
                let dir = dir.join(&node);
                let _ = std::fs::create_dir_all(&dir);
                Arc::new(SqliteStore::open(&dir.join("store.db"))?)
            }
            _ => Arc::new(MemoryStore::new()),
        };
        agents.insert(
            node,
            Hollow {
                store,
                connected: Arc::new(AtomicBool::new(false)),
            },
        );
    }
    Ok(Fleet {
        agents: Arc::new(agents),
        metrics: Arc::new(Metrics::default()),
    })
}

/// Starts every agent, `ramp_per_second` at a time, and returns when `cancel` trips and all
/// have stopped.
pub async fn run(opts: SimulateOptions, fleet: Fleet, cancel: CancellationToken) {
    let opts = Arc::new(opts);
    let mut tasks = tokio::task::JoinSet::new();
    let pause = Duration::from_secs(1) / opts.ramp_per_second.max(1);
    for (node, hollow) in fleet.agents.iter() {
        if cancel.is_cancelled() {
            break;
        }
        let opts = opts.clone();
        let node = node.clone();
        let store = hollow.store.clone();
        let connected = hollow.connected.clone();
        let metrics = fleet.metrics.clone();
        let stop = cancel.clone();
        tasks.spawn(async move {
            metrics.agents.fetch_add(1, Ordering::Relaxed);
            hollow_agent(&opts, node, store, connected, metrics.clone(), &stop).await;
            metrics.agents.fetch_sub(1, Ordering::Relaxed);
        });
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

async fn hollow_agent(
    opts: &SimulateOptions,
    node: String,
    store: Arc<dyn Store>,
    connected: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    cancel: &CancellationToken,
) {
    let mut config = opts.session.clone();
    config.node = node.clone();
    let dir = opts.data_dir.as_ref().map(|d| d.join(&node));
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    // Each agent walks the hub list on its own: random picks spread the fleet over the hubs.
    let mut hubs = config.hubs.cursor();
    let (tls, identity, bootstrapped) = loop {
        let obtained = identity::obtain(
            dir.as_deref(),
            &node,
            hubs.next_hub(),
            opts.token.as_deref(),
            opts.hub_ca.as_deref(),
        )
        .await
        .and_then(|o| Ok((o.identity.client_config()?, o.identity, o.bootstrapped)));
        match obtained {
            Ok(got) => break got,
            Err(e) if e.is_permanent() => {
                tracing::error!(%node, error = %e, "no identity: this agent stays down");
                return;
            }
            Err(e) => {
                tracing::info!(%node, error = %e, "bootstrap failed, retrying");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff.next_delay(e.retry_after())) => {}
                }
            }
        }
    };
    if bootstrapped {
        inc(&metrics.bootstraps);
    }
    if opts.enrol_only {
        return;
    }
    let tls = Arc::new(crate::renew::TlsSlot::new(tls));
    tokio::spawn(crate::renew::keep_renewed(
        node.clone(),
        identity,
        dir.clone(),
        config.hubs.clone(),
        tls.clone(),
        metrics.clone(),
        cancel.clone(),
    ));
    let uplink = opts.devices.clone().map(|devices| {
        let source = crate::dmi::uplink::UplinkSource {
            book: Arc::new(crate::dmi::book::Book::memory(Default::default())),
            reported: Arc::new(tokio::sync::Notify::new()),
        };
        tokio::spawn(crate::dmi::hollow::run(
            node.clone(),
            devices,
            source.clone(),
            cancel.clone(),
        ));
        source
    });
    let agent = Agent {
        config,
        tls,
        store,
        metrics,
        connected,
        uplink,
    };
    session::run(&agent, cancel).await;
}

pub fn admin_router(fleet: Fleet) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|State(f): State<Fleet>| async move { f.metrics.render() }),
        )
        .route("/agents", get(agents))
        .route("/agents/{node}/objects", get(objects))
        .with_state(fleet)
}

async fn agents(State(fleet): State<Fleet>) -> Response {
    let list: Vec<_> = fleet
        .agents
        .iter()
        .map(|(node, h)| json!({"node": node, "connected": h.connected.load(Ordering::Relaxed)}))
        .collect();
    axum::Json(list).into_response()
}

async fn objects(State(fleet): State<Fleet>, Path(node): Path<String>) -> Response {
    let Some(hollow) = fleet.agents.get(&node) else {
        return crate::api::status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no simulated agent {node:?}"),
            None,
        );
    };
    match hollow.store.export() {
        Ok(list) => axum::Json(list).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Key, Object};
    use edgefleet_channel::ResourceType;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn options(nodes: usize) -> SimulateOptions {
        SimulateOptions {
            nodes,
            name_prefix: "hollow-".into(),
            name_width: 5,
            start_index: 3,
            ramp_per_second: 1000,
            data_dir: None,
            enrol_only: false,
            sqlite: false,
            token: None,
            hub_ca: None,
            session: crate::tests_support::session_config("x"),
            devices: None,
        }
    }

    #[tokio::test]
    async fn admin_exports_each_agents_store() {
        let fleet = fleet(&options(2)).unwrap();
        assert_eq!(
            fleet.agents.keys().collect::<Vec<_>>(),
            ["hollow-00003", "hollow-00004"]
        );
        fleet.agents["hollow-00004"]
            .store
            .put(
                &Key::new(ResourceType::ConfigMap, "ns", "cm"),
                Object {
                    uid: "u".into(),
                    resource_version: "5".into(),
                    body: "{}".into(),
                },
            )
            .unwrap();
        let app = admin_router(fleet);
        let get = |path: &'static str| {
            let app = app.clone();
            async move {
                let r = app
                    .oneshot(
                        http::Request::get(path)
                            .body(axum::body::Body::empty())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let code = r.status();
                let body: serde_json::Value =
                    serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes())
                        .unwrap_or_default();
                (code, body)
            }
        };
        let (code, body) = get("/agents/hollow-00004/objects").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            body,
            json!([{"resource": "ns/configmap/cm", "uid": "u", "resourceVersion": "5"}])
        );
        let (_, body) = get("/agents/hollow-00003/objects").await;
        assert_eq!(body, json!([]));
        let (code, _) = get("/agents/nobody/objects").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        let (_, body) = get("/agents").await;
        assert_eq!(body[0], json!({"node": "hollow-00003", "connected": false}));
    }

    #[test]
    fn node_names_are_zero_padded_to_the_width() {
        assert_eq!(node_name("hollow-edge-", 5, 7), "hollow-edge-00007");
        assert_eq!(node_name("edge-", 4, 7), "edge-0007");
        assert_eq!(node_name("edge-", 4, 12345), "edge-12345");
    }

    #[tokio::test]
    async fn a_fleet_without_identity_stops_cleanly() {
        // No token, no data dir: every agent gives up at once (permanent), run returns.
        let opts = options(3);
        let fleet = fleet(&opts).unwrap();
        let metrics = fleet.metrics.clone();
        tokio::time::timeout(
            Duration::from_secs(10),
            run(opts, fleet, CancellationToken::new()),
        )
        .await
        .unwrap();
        assert_eq!(metrics.agents.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.bootstraps.load(Ordering::Relaxed), 0);
    }
}
