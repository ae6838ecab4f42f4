//! The command line, kubectl-style: `--kubeconfig`, `--context`, `-n/--namespace` anywhere.

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-edgefleet",
    bin_name = "kubectl edgefleet",
    version,
    about = "Day-2 view of edgefleet: rollouts, edge delivery, hub balance",
    after_help = "Exit codes: 0 ok (with -w: the rollout completed), 1 error, 3 with -w: the rollout ended Failed, Aborted or RolledBack."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// kubectl's connection flags.
#[derive(Debug, Args, Clone, Default)]
pub struct Global {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace; for `sync` and `hub`: all namespaces).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// RolloutJobs: status, watch, pause, resume, approve, abort, rollback.
    #[command(subcommand, visible_alias = "rj")]
    Rollout(RolloutCommand),
    /// ObjectSyncs: what an edge node has acknowledged and what is pending.
    #[command(subcommand)]
    Sync(SyncCommand),
    /// Hub replicas: sessions per replica and balance.
    #[command(subcommand)]
    Hub(HubCommand),
    /// Join tokens for edge nodes: create (scoped to a node or a group, expiring), list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Edge node identities: list, revoke (a stolen box).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Devices: desired vs reported per property, state, sync state.
    #[command(subcommand)]
    Device(DeviceCommand),
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// One Device: desired, the value the mapper holds, reported (and how long ago) and the
    /// sync state of each property; the device's state and conditions.
    Status(DeviceArgs),
}

#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// The Device's name.
    pub device: String,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

/// Token and node commands work in the hub's namespace: `-n`, else `edgefleet-system`.
pub const DEFAULT_HUB_NAMESPACE: &str = "edgefleet-system";

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token and print it once: `<ca-pin>.<token-id>.<token-secret>`.
    Create(TokenCreateArgs),
    /// The join tokens: id, scope, expiry, the nodes that used them.
    List(ListArgs),
    /// Delete a join token: no further bootstrap with it (issued certificates stay valid).
    Revoke(TokenIdArg),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["node", "group"])))]
pub struct TokenCreateArgs {
    /// The one node name this token may bootstrap.
    #[arg(long)]
    pub node: Option<String>,
    /// The group it may bootstrap: `<label>=<value>` of the Node objects
    /// (a bare value means `topology.edgefleet.io/station=<value>`).
    #[arg(long)]
    pub group: Option<String>,
    /// Lifetime: `90m`, `24h`, `7d`.
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    /// Free text kept with the token.
    #[arg(long, default_value = "")]
    pub description: String,
}

#[derive(Debug, Args)]
pub struct TokenIdArg {
    /// The token id (the 6 characters after the CA pin).
    pub id: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Node identities: state (active, revoked), key, expiry, the token that issued them.
    List(ListArgs),
    /// Revoke a node's identity: its sessions close on every hub replica, its certificate is
    /// refused, and a new bootstrap of the name waits for `kubectl certificate approve`.
    Revoke(NodeArg),
}

#[derive(Debug, Args)]
pub struct NodeArg {
    /// The node's name.
    pub node: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// Human-readable tables.
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Progress, batches and recent failures of a RolloutJob.
    Status(StatusArgs),
    /// Set spec.paused: work in flight finishes, nothing new starts.
    Pause(JobArg),
    /// Clear spec.paused; also approves a step pause that waits for a person.
    Resume(JobArg),
    /// Set spec.approvedBatch: go on past the step pause after batch N (default: the current).
    Approve(ApproveArgs),
    /// Set spec.abort: stop for good, updated targets keep the new image. Cannot be undone.
    Abort(JobArg),
    /// Set spec.rollback: restore the previous image on every updated target. Cannot be undone.
    Rollback(JobArg),
}

#[derive(Debug, Args)]
pub struct JobArg {
    /// The RolloutJob's name.
    pub job: String,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The RolloutJob's name.
    pub job: String,
    /// The batch to approve (default: the current batch).
    #[arg(long)]
    pub batch: Option<i32>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The RolloutJob's name.
    pub job: String,
    /// Watch until the job is Completed, Aborted, RolledBack or Failed.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// With -w: give up after this many seconds (exit 1).
    #[arg(long)]
    pub timeout: Option<u64>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// The objects an edge node should have: delivered, pending, stale, deleting.
    Status(SyncArgs),
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The edge node's name.
    pub node: String,
    /// A sync trailing the live object longer than this is stale (the objectsync operator's
    /// resend window).
    #[arg(long, default_value_t = 30)]
    pub stale_after_seconds: i64,
    /// Show only objects that are not delivered.
    #[arg(long)]
    pub pending: bool,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum HubCommand {
    /// Sessions per hub replica, expected share and balance, from the load reports.
    Status(HubArgs),
}

#[derive(Debug, Args)]
pub struct HubArgs {
    /// A report older than this is stale and left out of the balance (default: the
    /// HubBalancer's reportStaleAfterSeconds, else 30).
    #[arg(long)]
    pub stale_after_seconds: Option<i64>,
    /// Allowed percentage over the expected share (default: the HubBalancer's
    /// tolerancePercent, else 10).
    #[arg(long)]
    pub tolerance_percent: Option<i64>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}
