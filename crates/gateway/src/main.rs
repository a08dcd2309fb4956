//! `roomcast`: read like a runbook. Config, telemetry, runtime, serve, drain.

use anyhow::Context;
use clap::Parser;
use gateway::{init_telemetry, Config};

fn main() -> anyhow::Result<()> {
    // 1. Config: flags and ROOMCAST_* variables, checked before anything starts.
    let config = Config::parse();
    config
        .validate()
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;

    // 2. Telemetry.
    init_telemetry(&config);
    if config.allow_anonymous {
        tracing::warn!(
            "anonymous clients are allowed (--allow-anonymous): anyone can connect without a token"
        );
    }

    // 3. The runtime: --worker-threads, or one thread per core.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the runtime")?;

    // 4. Serve until SIGTERM or Ctrl-C, then 5. drain within --drain-deadline.
    runtime.block_on(gateway::run(config, shutdown_signal()))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = ctrl_c => tracing::info!("interrupt received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
