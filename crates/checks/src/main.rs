//! `roomcast-checks`: the pass/fail fault checks, run against live gateways by the scripts
//! that start them.
//!
//! - `roomcast-checks chaos …`: a checked fan-out load that survives faults, for `make chaos`
//!   (deploy/local/chaos.sh injects the faults; deploy/local/chaos_report.py judges the record);
//! - `roomcast-checks floods storm|flood|slow|room …`: floods and slow consumers, for
//!   `make floods` (loadtest/floods.sh); each prints its numbers and PASS/FAIL per bound and
//!   exits non-zero when a bound fails.
//!
//! The WebSocket client, the protocol codec and the /proc sampling are roomcast-loadtest's
//! library, shared with the load generator.

mod chaos;
mod floods;
mod http;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "roomcast-checks",
    about = "Fault checks against running roomcast gateways"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Fan-out clients that survive faults, checking offsets, epochs and every delivery
    /// (`make chaos`, deploy/local/chaos.sh).
    Chaos(chaos::Args),
    /// Floods and slow consumers: checks with bounds (`make floods`, loadtest/floods.sh).
    Floods {
        #[command(subcommand)]
        check: floods::Check,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Chaos(args) => chaos::run(args).await,
        Cmd::Floods { check } => floods::run(check).await,
    }
}
