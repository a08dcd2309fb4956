//! Floods and slow consumers (issue 7): four checks that run real clients over real sockets
//! against running gateways, print their numbers, and fail (exit code 1) when a bound does not
//! hold.
//!
//! | check | what it does |
//! |---|---|
//! | `storm` | N clients (re)connect to one gateway within a window; they honour `Retry-After` |
//! | `flood` | one user publishes as fast as it can through every gateway; others measure latency |
//! | `slow` | clients that stop reading, in a busy room: 4009, memory, the others |
//! | `room` | one room of N members over every gateway, plus churn; presence must be exact |
//!
//! `loadtest/floods.sh` starts the gateways and Redis Cluster and runs them (`make floods`).

mod connect;
mod flood;
mod measure;
mod outcome;
mod peer;
mod room;
mod slow;
mod storm;

use anyhow::Result;
use clap::Subcommand;
use roomcast_loadtest::ws::Dial;
use roomcast_loadtest::{mint, parse_sources};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum Check {
    /// Reconnect storm against one gateway.
    Storm(storm::Args),
    /// One user floods publishes through every gateway.
    Flood(flood::Args),
    /// Clients that stop reading, in a busy room.
    Slow(slow::Args),
    /// One huge room over every gateway, with churn; presence must be exact.
    Room(room::Args),
}

pub async fn run(check: Check) -> Result<()> {
    match check {
        Check::Storm(a) => storm::run(a).await,
        Check::Flood(a) => flood::run(a).await,
        Check::Slow(a) => slow::run(a).await,
        Check::Room(a) => room::run(a).await,
    }
}

/// Flags every check takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Gateway base URLs (`ws://host:port`), comma separated; clients go round-robin.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8281")]
    pub url: Vec<String>,
    /// HS256 secret the gateways verify (`--jwt-secret`); one user per client.
    #[arg(long, default_value = "floods-secret")]
    pub jwt_secret: String,
    /// Source addresses for client sockets, e.g. `127.0.0.2-127.0.0.40`.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Gateway pids, to sample their resident memory from /proc.
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Write the numbers as JSON to this file.
    #[arg(long)]
    pub json: Option<String>,
}

impl Common {
    pub fn sources(&self) -> Result<Vec<IpAddr>> {
        match &self.source_ips {
            Some(spec) => parse_sources(spec),
            None => Ok(Vec::new()),
        }
    }

    /// `http://host:port` of gateway `i`.
    pub fn http(&self, i: usize) -> String {
        self.url[i % self.url.len()].replacen("ws://", "http://", 1)
    }

    pub fn token(&self, user: &str) -> String {
        mint(&self.jwt_secret, user).unwrap_or_default()
    }
}

/// How the checks' clients open sockets: small buffers (tens of thousands of clients in one
/// process), 15 s for the upgrade.
pub fn dial(source: Option<IpAddr>) -> Dial {
    Dial {
        source,
        small_buffers: true,
        handshake_timeout: Duration::from_secs(15),
        ..Dial::default()
    }
}

/// Source address `i` of `sources`, round-robin (none when there are none).
pub fn pick(sources: &[IpAddr], i: usize) -> Option<IpAddr> {
    (!sources.is_empty()).then(|| sources[i % sources.len()])
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh run id, so that rooms and users of one run never meet another's.
pub fn run_id() -> String {
    format!("{:06x}", fastrand::u32(..0xff_ffff))
}
