//! `edge-agent run` (one node) and `edge-agent simulate --nodes N` (hollow agents).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Parser;
use edgefleet_channel::resource::is_valid_name;
use edgefleet_edge_agent::backoff::Backoff;
use edgefleet_edge_agent::cli::{self, Cli, Command, RunArgs, SimulateArgs};
use edgefleet_edge_agent::metrics::{Metrics, inc};
use edgefleet_edge_agent::session::{self, Agent, SessionConfig};
use edgefleet_edge_agent::simulate::{self, SimulateOptions};
use edgefleet_edge_agent::store::{SqliteStore, Store};
use edgefleet_edge_agent::{api, dmi, identity, renew};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli::init_tracing(cli.log_format, &cli.log_filter) {
        eprintln!("edge-agent: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match &cli.command {
        // One node, one session: a single thread keeps RSS and wake-ups small.
        Command::Run(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Command::Simulate(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.worker_threads.max(1))
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edge-agent: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Simulate(args) => simulate(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "edge-agent stopped");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    addr: std::net::SocketAddr,
    app: axum::Router,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    tracing::info!(%addr, "serving");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
    });
    Ok(())
}

async fn run(args: RunArgs) -> Result<(), String> {
    let node = args.node_name.clone();
    if !is_valid_name(&node) {
        return Err(format!("node name {node:?} is not a valid Kubernetes name"));
    }
    let cancel = cli::shutdown_signal();
    create_private_dir(&args.data_dir)?;
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&args.data_dir.join("store.db")).map_err(|e| e.to_string())?);
    let metrics = Arc::new(Metrics::default());
    let (store, uplink) = if args.dmi.dmi {
        let (store, uplink) = start_dmi(&args, store, &metrics, &cancel).await?;
        (store, Some(uplink))
    } else {
        (store, None)
    };
    metrics
        .agents
        .store(1, std::sync::atomic::Ordering::Relaxed);
    // Serve what is stored before anything else: offline, this is all the node has.
    serve(
        args.listen,
        api::router(api::ApiState {
            store: store.clone(),
            metrics: metrics.clone(),
        }),
        cancel.clone(),
    )
    .await?;
    let token = args.hub.token()?;
    let hub_ca = args.hub.hub_ca()?;
    let config = args.hub.session(&node, 16 * 1024)?;
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    // Bootstrap walks the hub list as sessions do: a failed attempt moves to another hub.
    let mut hubs = config.hubs.cursor();
    let (tls, identity, bootstrapped) = loop {
        match identity::obtain(
            Some(&args.data_dir),
            &node,
            hubs.next_hub(),
            token.as_deref(),
            hub_ca.as_deref(),
        )
        .await
        .and_then(|o| Ok((o.identity.client_config()?, o.identity, o.bootstrapped)))
        {
            Ok(got) => break got,
            Err(e) if e.is_permanent() => return Err(e.to_string()),
            Err(e) => {
                // A busy hub's Retry-After spreads a fleet's first enrolment over time.
                let delay = backoff.next_delay(e.retry_after());
                tracing::warn!(error = %e, ?delay, "no certificate yet; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    if bootstrapped {
        inc(&metrics.bootstraps);
    }
    let tls = Arc::new(renew::TlsSlot::new(tls));
    tokio::spawn(renew::keep_renewed(
        node.clone(),
        identity,
        Some(args.data_dir.clone()),
        config.hubs.clone(),
        tls.clone(),
        metrics.clone(),
        cancel.clone(),
    ));
    let agent = Agent {
        config,
        tls,
        store,
        metrics,
        connected: Arc::new(AtomicBool::new(false)),
        uplink,
    };
    session::run(&agent, &cancel).await;
    Ok(())
}

/// Starts the DMI server; the store it returns signals Device/DeviceModel changes to it.
async fn start_dmi(
    args: &RunArgs,
    store: Arc<dyn Store>,
    metrics: &Metrics,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(Arc<dyn Store>, dmi::uplink::UplinkSource), String> {
    let changed = Arc::new(tokio::sync::Notify::new());
    let store: Arc<dyn Store> = Arc::new(dmi::WatchedStore {
        inner: store,
        changed: changed.clone(),
    });
    let book = dmi::book::Book::open(
        &args.data_dir.join("dmi.db"),
        dmi::book::BookLimits {
            max_twins: args.dmi.dmi_max_twins,
        },
    )
    .map_err(|e| format!("dmi store: {e}"))?;
    let config = dmi::DmiConfig {
        socket: args
            .dmi
            .dmi_socket
            .clone()
            .unwrap_or_else(|| args.data_dir.join("dmi.sock")),
        rate_per_second: args.dmi.dmi_rate,
        burst: args.dmi.dmi_burst,
    };
    let dmi = dmi::Dmi::new(store.clone(), Arc::new(book), config, changed);
    let _ = metrics.dmi.set(dmi.metrics.clone());
    let uplink = dmi.uplink();
    // Without its socket the agent still syncs objects and serves them: DMI is not worth an
    // agent that is down.
    if let Err(e) = dmi::serve(dmi, cancel.clone()).await {
        tracing::error!(error = %e, "DMI server not started; mappers cannot connect");
    }
    Ok((store, uplink))
}

fn create_private_dir(dir: &std::path::Path) -> Result<(), String> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))
}

async fn simulate(args: SimulateArgs) -> Result<(), String> {
    let cancel = cli::shutdown_signal();
    // One socket per hollow agent: the soft open-file limit (often 1,024) up to the hard one.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(files) if files < args.nodes as u64 + 256 => tracing::warn!(
            open_files = files,
            nodes = args.nodes,
            "the open-file limit is below one socket per agent; raise the hard limit (ulimit -Hn)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "raising the open-file limit"),
    }
    if let Some(dir) = &args.data_dir {
        create_private_dir(dir)?;
    }
    let opts = SimulateOptions {
        nodes: args.nodes,
        name_prefix: args.name_prefix.clone(),
        name_width: args.name_width,
        start_index: args.start_index,
        ramp_per_second: args.ramp_per_second,
        data_dir: args.data_dir.clone(),
        sqlite: args.sqlite,
        enrol_only: args.enrol_only,
        token: args.hub.token()?,
        hub_ca: args.hub.hub_ca()?,
        // Hollow agents receive little: a 4 KiB read buffer (it grows for a large frame).
        session: SessionConfig {
            node_status: args.node_status,
            ..args.hub.session("", 4 * 1024)?
        },
        devices: args.devices()?,
    };
    let fleet = simulate::fleet(&opts).map_err(|e| e.to_string())?;
    serve(
        args.admin_addr,
        simulate::admin_router(fleet.clone()),
        cancel.clone(),
    )
    .await?;
    tracing::info!(
        nodes = args.nodes,
        hubs = %opts.session.hubs,
        node_status = args.node_status,
        "starting hollow agents"
    );
    let enrol_only = opts.enrol_only;
    let started = std::time::Instant::now();
    simulate::run(opts, fleet.clone(), cancel).await;
    if enrol_only {
        // Agents that stopped for good (a refused token) have no identity: said, and a failure.
        let enrolled = fleet
            .agents
            .keys()
            .filter(|node| {
                args.data_dir.as_ref().is_some_and(|d| {
                    matches!(
                        identity::Identity::load(&d.join(node.as_str())),
                        Ok(Some(_))
                    )
                })
            })
            .count();
        tracing::info!(
            enrolled,
            bootstrapped = fleet
                .metrics
                .bootstraps
                .load(std::sync::atomic::Ordering::Relaxed),
            seconds = started.elapsed().as_secs_f64(),
            "enrolment done"
        );
        if enrolled < args.nodes {
            return Err(format!(
                "{} of {} agents have no identity",
                args.nodes - enrolled,
                args.nodes
            ));
        }
    }
    Ok(())
}
