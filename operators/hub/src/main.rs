//! `edgefleet-hub`: the cloud end of the edge channel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use edgefleet_hub::cache::Caches;
use edgefleet_hub::hub::{Config, Hub};
use edgefleet_hub::identity::{self, Ca};
use edgefleet_hub::metrics::HubMetrics;
use edgefleet_hub::records::{self, Identities, IdentityMetrics};
use edgefleet_hub::status::{self, StatusBoard};
use edgefleet_hub::{hub, lease, release, report, route, server};
use edgefleet_kit as kit;

/// mimalloc: a reconnect storm's buffers (thousands of TLS handshakes at once) go back to the
/// system after it; glibc's per-thread arenas kept them (hack/bench/channel, RSS after a storm).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Holds edge nodes' WebSocket sessions, delivers their objects with ACK, relays heartbeats and
/// device twins, publishes its load report.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: kit::CommonArgs,

    /// Address of the edge WebSocket/TLS listener (also serves /v1/bootstrap).
    #[arg(long, env = "EDGEFLEET_HUB_LISTEN", default_value = "0.0.0.0:10000")]
    listen: SocketAddr,

    /// Sessions this replica accepts before answering 503 + Retry-After.
    #[arg(long, env = "EDGEFLEET_HUB_MAX_SESSIONS", default_value_t = 20_000)]
    max_sessions: usize,

    /// Messages in flight per session before waiting for ACKs.
    #[arg(long, env = "EDGEFLEET_HUB_WINDOW", default_value_t = 8)]
    window: usize,

    /// Base of the jittered Retry-After and reconnect hints, seconds.
    #[arg(long, env = "EDGEFLEET_HUB_RETRY_AFTER_SECONDS", default_value_t = 10)]
    retry_after_seconds: u64,

    /// Names in the serving certificate (comma separated): the Service's DNS names, addresses.
    #[arg(
        long,
        env = "EDGEFLEET_HUB_TLS_SANS",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    tls_sans: Vec<String>,

    /// How often the Leases of connected, heartbeating nodes are renewed, seconds.
    #[arg(long, env = "EDGEFLEET_HUB_LEASE_RENEW_SECONDS", default_value_t = 10)]
    lease_renew_seconds: u64,

    /// Lease renewals in flight at most: the renewer's own budget, which no other API work of the
    /// hub can take. Renewals per second ≈ this ÷ the API server's write latency; a replica
    /// holding N nodes needs ≥ N ÷ 40 a second (hack/bench/lease-writes measures a cluster).
    #[arg(
        long,
        env = "EDGEFLEET_HUB_LEASE_RENEWALS_IN_FLIGHT",
        default_value_t = 64
    )]
    lease_renewals_in_flight: usize,

    /// How often the load report is rewritten, seconds.
    #[arg(long, env = "EDGEFLEET_HUB_REPORT_SECONDS", default_value_t = 5)]
    report_seconds: u64,

    /// Concurrent ObjectSync status writes.
    #[arg(long, env = "EDGEFLEET_HUB_STATUS_WRITERS", default_value_t = 64)]
    status_writers: usize,

    /// ObjectSyncs the status board holds waiting for a write (one entry per sync, however many
    /// ACKs); beyond it an ACK is counted as given up and left to resync.
    #[arg(
        long,
        env = "EDGEFLEET_HUB_STATUS_PENDING_MAX",
        default_value_t = 500_000
    )]
    status_pending_max: usize,

    /// This replica's pod UID (downward API `metadata.uid`, the chart's `POD_UID`): written in the load report, and
    /// release orders naming another UID are ignored.
    #[arg(long, env = "POD_UID", default_value = "")]
    pod_uid: String,

    /// On a release order, out of the load balancer's rotation this long before the first
    /// close, seconds (at least the LB's health-check `inter × fall`).
    #[arg(long, env = "EDGEFLEET_HUB_RELEASE_DRAIN_SECONDS", default_value_t = 3)]
    release_drain_seconds: u64,

    /// A release order's closes are spread over this window, seconds.
    #[arg(
        long,
        env = "EDGEFLEET_HUB_RELEASE_WINDOW_SECONDS",
        default_value_t = 10
    )]
    release_window_seconds: u64,

    /// At most this many release closes a second.
    #[arg(long, env = "EDGEFLEET_HUB_RELEASE_RATE", default_value_t = 200)]
    release_rate: u32,

    /// Lifetime of issued node certificates, seconds (agents renew in the last 10–30 %).
    #[arg(long, env = "EDGEFLEET_HUB_NODE_CERT_SECONDS", default_value_t = 365 * 86_400)]
    node_cert_seconds: u64,

    /// Bootstrap attempts allowed at once per source address and per node name; then one per
    /// 10 s (address) and per 30 s (name).
    #[arg(long, env = "EDGEFLEET_HUB_BOOTSTRAP_BURST", default_value_t = 10)]
    bootstrap_burst: u32,

    /// Bootstraps and renewals doing API work at once; more are answered 503 with a
    /// Retry-After (the agents come back later, spread by jitter).
    #[arg(
        long,
        env = "EDGEFLEET_HUB_ENROLMENTS_IN_FLIGHT",
        default_value_t = 64,
        value_parser = clap::value_parser!(u64).range(1..=1024)
    )]
    enrolments_in_flight: u64,

    /// Device reports: at most one Device status write per device per this interval, ms.
    #[arg(long, env = "EDGEFLEET_HUB_DEVICE_FLUSH_MS", default_value_t = 1000)]
    device_flush_ms: u64,

    /// Devices with reports waiting for a write, at most; beyond it a report is answered busy
    /// (the edge resends it) and counted.
    #[arg(
        long,
        env = "EDGEFLEET_HUB_DEVICE_PENDING_MAX",
        default_value_t = 100_000
    )]
    device_pending_max: usize,

    /// Device status writes started per second, at most: the API server's share for device
    /// twins beside node Leases. A backlog waits on the hub (one entry per device, its reports
    /// coalescing) and drains oldest first.
    #[arg(
        long,
        env = "EDGEFLEET_HUB_DEVICE_WRITES_PER_SECOND",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    device_writes_per_second: u32,

    /// Device status writes in flight at once (a write waits for the API server's answer; the
    /// budget above bounds the rate, this the concurrency it takes to reach it).
    #[arg(
        long,
        env = "EDGEFLEET_HUB_DEVICE_WRITERS",
        default_value_t = 16,
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    device_writers: u16,

    /// An unchanged reported value is written again (fresh timestamp) after this many seconds.
    #[arg(
        long,
        env = "EDGEFLEET_HUB_DEVICE_REFRESH_SECONDS",
        default_value_t = 60
    )]
    device_refresh_seconds: u64,
}

/// `--max-sessions`, capped to what the open-file limit allows once raised to the hard limit
/// (Rust, unlike Go, keeps the inherited soft limit, often 1,024): each session is a socket, and
/// a hub past its limit fails every accept (API connections too) instead of answering 503.
fn max_sessions(wanted: usize) -> usize {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(files) => {
            let cap = edgefleet_hub::server::session_capacity(wanted, files);
            if cap < wanted {
                tracing::warn!(
                    open_files = files,
                    wanted,
                    sessions = cap,
                    "the open-file limit caps sessions below --max-sessions; raise the hard limit (ulimit -Hn, the container runtime's LimitNOFILE)"
                );
            } else {
                tracing::info!(open_files = files, sessions = cap, "session capacity");
            }
            cap
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the open-file limit; --max-sessions kept");
            wanted
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let kit::Started {
        shutdown,
        registry,
        readiness,
        server: http,
        client,
        heartbeat,
    } = kit::start(&cli.common, edgefleet_hub::METRICS_PREFIX).await?;
    let metrics = HubMetrics::register(&registry)?;
    let namespace = cli.common.leader_election_namespace.clone();
    let secrets = hub::secrets(&client, &namespace);
    let ca = Ca::load_or_create(&secrets)
        .await
        .context("loading the hub CA")?;
    let ids = Arc::new(Identities::new(
        IdentityMetrics::register(&registry)?,
        Duration::from_secs(cli.node_cert_seconds.max(60)),
        cli.bootstrap_burst,
        usize::try_from(cli.enrolments_in_flight).unwrap_or(64),
    ));
    let tls = identity::server_config(&ca, &cli.tls_sans)?;

    let config = Config {
        namespace,
        identity: cli.common.identity.clone(),
        max_sessions: max_sessions(cli.max_sessions),
        window: cli.window,
        retry_after_seconds: cli.retry_after_seconds,
        lease_renew_interval: Duration::from_secs(cli.lease_renew_seconds.max(1)),
        lease_renewals_in_flight: cli.lease_renewals_in_flight.max(1),
        report_interval: Duration::from_secs(cli.report_seconds.max(1)),
        devices: edgefleet_hub::device::Settings {
            flush_interval: Duration::from_millis(cli.device_flush_ms.max(10)),
            pending_max: cli.device_pending_max.max(1),
            refresh: Duration::from_secs(cli.device_refresh_seconds),
            writes_per_second: cli.device_writes_per_second,
            writers: usize::from(cli.device_writers),
            ..Default::default()
        },
    };
    // One ObjectSync store and object watch per watched namespace, or one cluster-wide.
    let (caches, writers) = Caches::new(&cli.common.watch_scopes());
    let caches = Arc::new(caches);
    let board = Arc::new(StatusBoard::new(cli.status_pending_max));
    // The hub's tasks stop on their own token, tripped after sessions were told to reconnect.
    let stop = tokio_util::sync::CancellationToken::new();
    let hub = Arc::new(Hub::new(
        config,
        client,
        heartbeat,
        metrics,
        caches,
        board.clone(),
        ca,
        stop.clone(),
    ));

    let watchers = tokio::spawn(route::run_watchers(hub.clone(), writers));
    let status = tokio::spawn(status::run(
        status::Writer {
            client: hub.client.clone(),
            caches: hub.caches.clone(),
            metrics: hub.metrics.clone(),
            board,
        },
        cli.status_writers.max(1),
    ));
    let leases = tokio::spawn(lease::run(hub.clone()));
    let devices = tokio::spawn(edgefleet_hub::device::flush::run(hub.clone()));
    let releaser = Arc::new(release::Releaser::new(
        release::Settings {
            pod_uid: cli.pod_uid.clone(),
            drain: Duration::from_secs(cli.release_drain_seconds),
            window: Duration::from_secs(cli.release_window_seconds),
            rate: cli.release_rate.max(1),
        },
        readiness.clone(),
    ));
    let reports = tokio::spawn(report::run(hub.clone(), releaser));
    let identities = tokio::spawn(records::run_watcher(hub.clone(), ids.clone()));

    // Identity records first (up to 30 s): a reconnect storm after a restart is admitted from
    // them, not by one GET each.
    for _ in 0..300 {
        if ids.is_synced() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ids.is_synced() {
        tracing::warn!(
            "identity records not listed after 30 s; serving anyway (records read per session)"
        );
    }
    // Sessions are taken then, before the caches are synced: a reconnecting node gets its
    // Lease renewed without waiting for the lists, and its syncs are evaluated as the
    // ObjectSync list streams in (objects not yet held are fetched).
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "edge listener up");
    let serving = tokio::spawn(server::serve(listener, tls, hub.clone(), ids));
    if !route::wait_ready(&hub, Duration::from_secs(60)).await {
        tracing::warn!("caches not synced after 60 s; ready anyway");
    }
    readiness.set_ready(true);

    shutdown.cancelled().await;
    readiness.set_ready(false);
    tracing::info!(
        sessions = hub.registry.len(),
        "shutting down: sessions told to reconnect elsewhere"
    );
    stop.cancel();
    // Sessions close with CLOSE_RECONNECT on `stop`; give them a moment to say so.
    for _ in 0..50 {
        if hub.registry.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    serving.abort();
    watchers.abort();
    leases.abort();
    devices.abort();
    reports.abort();
    identities.abort();
    status.abort();
    http.wait().await?;
    Ok(())
}
