//! `kubectl edgefleet`: the day-2 view of an edgefleet installation.
//!
//! - `rollout status JOB [-w]`: progress bar, per-batch table, recent failures; `-w` watches
//!   the RolloutJob until it is done (redrawn in place on a terminal, one line per change
//!   otherwise) and exits non-zero when it ended Failed, Aborted or RolledBack.
//! - `rollout pause|resume|approve|abort|rollback JOB`: merge patches of the job's spec.
//! - `sync status NODE`: what an edge node has acknowledged, and what is pending.
//! - `hub status`: the hub replicas' load reports, the expected share of each, the balance.
//! - `token create|list|revoke`: scoped, expiring join tokens for edge nodes.
//! - `device status DEVICE`: desired vs reported per property, state, sync state.
//! - `node list|revoke`: edge node identities; revoking one closes its sessions everywhere.
//!
//! Rendering is pure (`render` functions over fixtures, unit-tested); the modules' `run`
//! functions fetch and print.

pub mod cli;
pub mod device;
pub mod error;
pub mod hub;
pub mod identity;
pub mod kube_ctx;
pub mod rollout;
pub mod sync;
pub mod table;

pub use error::{Error, Result};

/// Field manager of every write the plugin makes.
pub const FIELD_MANAGER: &str = "kubectl-edgefleet";

/// Process exit codes.
pub mod exit {
    /// Done; with `-w`, the rollout completed.
    pub const OK: u8 = 0;
    /// An error (no cluster, no access, not found, bad flags).
    pub const ERROR: u8 = 1;
    /// With `-w`: the rollout ended without completing (Failed, Aborted, RolledBack).
    pub const ROLLOUT_UNSUCCESSFUL: u8 = 3;
}

/// Runs one command line; returns the exit code.
pub async fn run(cli: cli::Cli) -> Result<u8> {
    let ctx = kube_ctx::Ctx::new(&cli.global).await?;
    match cli.command {
        cli::Command::Rollout(cmd) => rollout::run(&ctx, cmd).await,
        cli::Command::Sync(cli::SyncCommand::Status(args)) => sync::run(&ctx, args).await,
        cli::Command::Hub(cli::HubCommand::Status(args)) => hub::run(&ctx, args).await,
        cli::Command::Token(cmd) => identity::token(&ctx, cmd).await,
        cli::Command::Node(cmd) => identity::node(&ctx, cmd).await,
        cli::Command::Device(cli::DeviceCommand::Status(args)) => device::run(&ctx, args).await,
    }
}

/// Writes `text` to stdout; a closed pipe is an error, not a panic (`println!` would panic).
pub fn out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::Output(e.to_string()))
}

/// Serializes `value` as `-o json` or `-o yaml` wants it.
pub fn serialize<T: serde::Serialize>(value: &T, format: cli::Output) -> Result<String> {
    match format {
        cli::Output::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| Error::Output(e.to_string())),
        cli::Output::Yaml => serde_yaml::to_string(value).map_err(|e| Error::Output(e.to_string())),
        cli::Output::Table => Err(Error::Usage("table output is not serialized".into())),
    }
}
