//! Clients spread over child processes (one process holds only about 19k sockets): each worker
//! is the running program again, with the same arguments and three hidden flags that make it a
//! worker, `--worker-index`, `--start-at-us` (the common start, Unix µs) and `--run-id`.
//! A worker writes its results to stdout as lines the parent reads.

use anyhow::{Context, Result};
use std::process::{Child, Command, Stdio};

/// The hidden flags that turn a run into worker `index`'s share.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WorkerFlags {
    #[arg(long, hide = true)]
    pub worker_index: Option<u64>,
    #[arg(long, hide = true)]
    pub start_at_us: Option<u64>,
    #[arg(long, hide = true)]
    pub run_id: Option<String>,
}

impl WorkerFlags {
    /// `(index, start_at_us, run_id)` when this process is a worker.
    pub fn get(&self) -> Option<(u64, u64, &str)> {
        Some((
            self.worker_index?,
            self.start_at_us?,
            self.run_id.as_deref()?,
        ))
    }
}

/// Starts worker `index`, its stdout piped (and its stdin, with `stdin`: a worker can be
/// told to finish by closing it).
pub fn spawn(index: u64, start_at_us: u64, run_id: &str, stdin: bool) -> Result<Child> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args().skip(1))
        .args([
            "--worker-index",
            &index.to_string(),
            "--start-at-us",
            &start_at_us.to_string(),
            "--run-id",
            run_id,
        ])
        .stdout(Stdio::piped());
    if stdin {
        cmd.stdin(Stdio::piped());
    }
    cmd.spawn().context("starting a worker process")
}
