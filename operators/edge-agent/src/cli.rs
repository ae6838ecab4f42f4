//! Flags (each with an environment variable, so a unit file or a pod sets them with `env:`),
//! logging and the shutdown signal. The kit crate's patterns, without its kube dependency.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::hub::{HubAddr, Hubs};
use crate::session::SessionConfig;

#[derive(Debug, clap::Parser)]
#[command(name = "edge-agent", version, about = "edgefleet edge agent")]
pub struct Cli {
    /// Log format: auto (JSON unless stderr is a terminal), json, text.
    #[arg(
        long,
        global = true,
        env = "EDGEFLEET_LOG_FORMAT",
        default_value = "auto"
    )]
    pub log_format: LogFormat,
    /// Log filter in RUST_LOG syntax.
    #[arg(
        long = "log-level",
        global = true,
        env = "RUST_LOG",
        default_value = "info"
    )]
    pub log_filter: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the agent of this node.
    Run(RunArgs),
    /// Run N hollow agents in one process (tests and benchmarks).
    Simulate(SimulateArgs),
}

/// What every agent, real or hollow, needs to reach a hub.
#[derive(Debug, Clone, clap::Args)]
pub struct HubArgs {
    /// The hub: wss://host:port, https://host:port or host:port. Several hub replicas without a
    /// load balancer in front: repeat the flag or separate them with commas; each attempt picks
    /// one at random, a failed one moves to another.
    #[arg(long, env = "EDGEFLEET_HUB", required = true, value_delimiter = ',')]
    pub hub: Vec<HubAddr>,
    /// Join token `<ca-pin>.<token-id>.<token-secret>` from `kubectl edgefleet token create`
    /// (only needed until the node has a certificate; its CA pin authenticates the hub).
    #[arg(long, env = "EDGEFLEET_BOOTSTRAP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bootstrap token (instead of --token).
    #[arg(long, env = "EDGEFLEET_BOOTSTRAP_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA to authenticate the hub during bootstrap (not needed: the join token pins it).
    #[arg(long, env = "EDGEFLEET_HUB_CA")]
    pub hub_ca: Option<PathBuf>,
    /// KubeEdge project id (first URL segment, `project_id` header).
    #[arg(long, env = "EDGEFLEET_PROJECT_ID", default_value = edgefleet_channel::session::DEFAULT_PROJECT_ID)]
    pub project_id: String,
    /// Seconds between WebSocket pings.
    #[arg(long, env = "EDGEFLEET_KEEPALIVE_SECONDS", default_value_t = 15)]
    pub keepalive_seconds: u64,
    /// Seconds between the small node status reports (the first of a session is sent at once).
    #[arg(long, env = "EDGEFLEET_STATUS_INTERVAL_SECONDS", default_value_t = 300)]
    pub status_interval_seconds: u64,
    /// Longest reconnect back-off in seconds (full jitter under it).
    #[arg(long, env = "EDGEFLEET_BACKOFF_CAP_SECONDS", default_value_t = 60)]
    pub backoff_cap_seconds: u64,
}

impl HubArgs {
    pub fn hubs(&self) -> Result<Hubs, String> {
        Hubs::new(self.hub.clone())
    }

    pub fn token(&self) -> Result<Option<String>, String> {
        match (&self.token, &self.token_file) {
            (Some(t), _) => Ok(Some(t.trim().to_string())),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_string()))
                .map_err(|e| format!("reading {}: {e}", path.display())),
            (None, None) => Ok(None),
        }
    }

    pub fn hub_ca(&self) -> Result<Option<String>, String> {
        self.hub_ca
            .as_ref()
            .map(|p| {
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))
            })
            .transpose()
    }

    pub fn session(&self, node: &str, read_buffer: usize) -> Result<SessionConfig, String> {
        Ok(SessionConfig {
            node: node.to_string(),
            project_id: self.project_id.clone(),
            hubs: self.hubs()?,
            keepalive: Duration::from_secs(self.keepalive_seconds.max(1)),
            status_interval: Duration::from_secs(self.status_interval_seconds.max(1)),
            node_status: true,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(self.backoff_cap_seconds.max(1)),
            read_buffer,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// This node's name (the certificate's CN).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Where the certificate, key, CA and the object store live.
    #[arg(long, env = "EDGEFLEET_DATA_DIR", default_value = "/var/lib/edgefleet")]
    pub data_dir: PathBuf,
    /// Address of the local read-only API, /healthz and /metrics.
    #[arg(long, env = "EDGEFLEET_LISTEN", default_value = "127.0.0.1:10550")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub dmi: DmiArgs,
    #[command(flatten)]
    pub hub: HubArgs,
}

/// The DMI server for the node's device mappers (KubeEdge DMI v1beta1 over a unix socket).
#[derive(Debug, Clone, clap::Args)]
pub struct DmiArgs {
    /// Serve DMI to the node's mappers (`--dmi=false` turns it off).
    #[arg(
        long,
        env = "EDGEFLEET_DMI",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub dmi: bool,
    /// The DMI socket mappers connect to (KubeEdge's is /etc/kubeedge/dmi.sock); default
    /// <data-dir>/dmi.sock.
    #[arg(long, env = "EDGEFLEET_DMI_SOCKET")]
    pub dmi_socket: Option<PathBuf>,
    /// Requests per second each mapper may make (one bucket per mapper, not per node).
    #[arg(long, env = "EDGEFLEET_DMI_RATE", default_value_t = 50.0)]
    pub dmi_rate: f64,
    /// Burst of each mapper's bucket.
    #[arg(long, env = "EDGEFLEET_DMI_BURST", default_value_t = 200.0)]
    pub dmi_burst: f64,
    /// Most device properties whose latest value is kept for the hub (offline, the bound).
    #[arg(long, env = "EDGEFLEET_DMI_MAX_TWINS", default_value_t = 20_000)]
    pub dmi_max_twins: usize,
}

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// How many hollow agents.
    #[arg(long, env = "EDGEFLEET_SIM_NODES")]
    pub nodes: usize,
    /// Node names are <prefix><index, zero-padded to --name-width digits>.
    #[arg(long, env = "EDGEFLEET_SIM_PREFIX", default_value = "hollow-edge-")]
    pub name_prefix: String,
    /// Digits of the index in node names (4 matches the test bed's kwok nodes, edge-0000).
    #[arg(long, env = "EDGEFLEET_SIM_NAME_WIDTH", default_value_t = 5)]
    pub name_width: usize,
    /// First index (several simulate processes can share a hub).
    #[arg(long, env = "EDGEFLEET_SIM_START_INDEX", default_value_t = 0)]
    pub start_index: usize,
    /// Agents started per second.
    #[arg(long, env = "EDGEFLEET_SIM_RAMP", default_value_t = 200)]
    pub ramp_per_second: u32,
    /// Keep identities (and with --sqlite, stores) in <dir>/<node>/; existing ones are reused.
    #[arg(long, env = "EDGEFLEET_SIM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// One SQLite store per agent under --data-dir instead of memory.
    #[arg(long, env = "EDGEFLEET_SIM_SQLITE", requires = "data_dir")]
    pub sqlite: bool,
    /// Only enrol: each agent obtains its identity into --data-dir (bootstrap when it has none)
    /// and stops; the process exits when every agent has one. A benchmark enrols a fleet once,
    /// then measures sessions without the enrolment in the ramp.
    #[arg(long, env = "EDGEFLEET_SIM_ENROL_ONLY", requires = "data_dir")]
    pub enrol_only: bool,
    /// Admin server: /metrics, /healthz, /agents, /agents/{node}/objects.
    #[arg(long, env = "EDGEFLEET_SIM_ADMIN", default_value = "127.0.0.1:10551")]
    pub admin_addr: SocketAddr,
    /// Runtime worker threads.
    #[arg(long, env = "EDGEFLEET_SIM_WORKERS", default_value_t = 2)]
    pub worker_threads: usize,
    /// Register each hollow node and send its heartbeats over the channel (the hub then writes
    /// its Node status and Lease). `--node-status=false` when the nodes have a kubelet of their
    /// own (kwok in the test bed): the agents only receive objects, one heartbeat writer per Node.
    #[arg(
        long,
        env = "EDGEFLEET_SIM_NODE_STATUS",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub node_status: bool,
    /// Hollow devices per agent (0: none), named <node>-d<i>, properties p0.. (INT values).
    #[arg(long, env = "EDGEFLEET_SIM_DEVICES", default_value_t = 0)]
    pub devices_per_agent: usize,
    /// Properties per hollow device.
    #[arg(long, env = "EDGEFLEET_SIM_DEVICE_PROPERTIES", default_value_t = 5)]
    pub device_properties: usize,
    /// Seconds between two reports of a hollow device (fractions allowed).
    #[arg(
        long,
        env = "EDGEFLEET_SIM_DEVICE_REPORT_SECONDS",
        default_value_t = 10.0
    )]
    pub device_report_seconds: f64,
    /// Namespace of the hollow devices.
    #[arg(
        long,
        env = "EDGEFLEET_SIM_DEVICE_NAMESPACE",
        default_value = "default"
    )]
    pub device_namespace: String,
    /// A hollow property's value changes every this many reports (1: every report).
    #[arg(long, env = "EDGEFLEET_SIM_DEVICE_CHANGE_EVERY", default_value_t = 1)]
    pub device_change_every: u64,
    #[command(flatten)]
    pub hub: HubArgs,
}

impl SimulateArgs {
    /// The hollow devices asked for, if any.
    pub fn devices(&self) -> Result<Option<crate::dmi::hollow::HollowDevices>, String> {
        if self.devices_per_agent == 0 {
            return Ok(None);
        }
        if !(self.device_report_seconds.is_finite() && self.device_report_seconds >= 0.1) {
            return Err(format!(
                "--device-report-seconds {} must be at least 0.1",
                self.device_report_seconds
            ));
        }
        Ok(Some(crate::dmi::hollow::HollowDevices {
            per_agent: self.devices_per_agent,
            properties: self.device_properties,
            every: Duration::from_secs_f64(self.device_report_seconds),
            namespace: self.device_namespace.clone(),
            change_every: self.device_change_every.max(1),
        }))
    }
}

pub fn init_tracing(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("log filter {filter:?}: {e}"))?;
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    if json {
        builder.json().try_init()
    } else {
        builder.with_ansi(terminal).try_init()
    }
    .map_err(|e| e.to_string())
}

/// Trips on SIGTERM or SIGINT; a second signal exits at once.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trip = token.clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        tokio::spawn(async move {
            let (Ok(mut term), Ok(mut int)) = (term, int) else {
                tracing::error!("cannot listen for signals");
                return;
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            tracing::info!("shutting down");
            trip.cancel();
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            std::process::exit(130);
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        trip.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from([
            "edge-agent",
            "run",
            "--node-name",
            "edge-1",
            "--hub",
            "wss://h:443",
            "--token",
            "t",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            unreachable!()
        };
        assert_eq!(run.hub.hubs().unwrap().to_string(), "h:443");
        assert_eq!(run.listen.ip().to_string(), "127.0.0.1");
        assert_eq!(run.hub.token().unwrap().as_deref(), Some("t"));
        assert!(
            Cli::try_parse_from([
                "edge-agent",
                "simulate",
                "--nodes",
                "3",
                "--hub",
                "h:1",
                "--sqlite"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from(["edge-agent", "simulate", "--nodes", "3", "--hub", "h:1"]).is_ok()
        );
        assert!(Cli::try_parse_from(["edge-agent", "simulate", "--nodes", "3"]).is_err());
    }

    fn simulate_args(args: &[&str]) -> SimulateArgs {
        let mut argv = vec!["edge-agent", "simulate", "--nodes", "1", "--hub", "h:1"];
        argv.extend_from_slice(args);
        let Command::Simulate(sim) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!()
        };
        sim
    }

    #[test]
    fn hollow_agents_report_node_status_unless_told_not_to() {
        for (args, want) in [
            (&[][..], true),
            (&["--node-status"][..], true),
            (&["--node-status=true"][..], true),
            (&["--node-status=false"][..], false),
        ] {
            assert_eq!(simulate_args(args).node_status, want, "{args:?}");
        }
        assert_eq!(simulate_args(&[]).name_width, 5);
        assert_eq!(simulate_args(&["--name-width=4"]).name_width, 4);
    }

    fn hubs_of(args: &[&str]) -> String {
        let mut argv = vec!["edge-agent", "simulate", "--nodes", "1"];
        argv.extend_from_slice(args);
        let Command::Simulate(sim) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!()
        };
        sim.hub.hubs().unwrap().to_string()
    }

    #[test]
    fn several_hubs_repeated_or_comma_separated() {
        assert_eq!(
            hubs_of(&["--hub", "wss://a:1", "--hub", "wss://b:2"]),
            "a:1,b:2"
        );
        assert_eq!(hubs_of(&["--hub", "a:1,https://b:2,c"]), "a:1,b:2,c:10000");
        assert!(
            Cli::try_parse_from(["edge-agent", "simulate", "--nodes", "1", "--hub", "a:1,:2"])
                .is_err()
        );
    }
}
