//! `kubectl-edgefleet`: found by kubectl on PATH, run as `kubectl edgefleet ...`.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = kubectl_edgefleet::cli::Cli::parse();
    match kubectl_edgefleet::run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(kubectl_edgefleet::exit::ERROR)
        }
    }
}
