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
