//! Keeps every primary's script cache loaded before a command needs it.
//!
//! Why: a primary answers `NOSCRIPT` when its cache is empty (a fresh cluster, a promoted
//! replica, a restarted node). `evalsha_with_reload` recovers a single command, but a
//! connection's pipelined publishes all get `NOSCRIPT` together and are then re-sent each on
//! its own, in whatever order their futures wake; the store's per-connection order check
//! (`Publisher::seq`) must then refuse the ones that land behind a later publish. Loading the
//! scripts ahead of use makes that a failover-only event instead of the first thing a fresh
//! cluster does.
//!
//! When:
//! - at start, on every primary the router knows;
//! - whenever the slot map changes owner (a failover promotes a replica whose cache is empty);
//! - every [`CHECK_EVERY`], `SCRIPT EXISTS` on each primary (one command per primary), which
//!   finds a primary restarted in place, or flushed, without an owner change.

use super::RedisState;
use fred::prelude::*;
use std::sync::Weak;
use std::time::Duration;

/// How often every primary is asked whether it still has the scripts.
const CHECK_EVERY: Duration = Duration::from_secs(10);

pub(super) fn start(state: &std::sync::Arc<RedisState>) {
    let weak = std::sync::Arc::downgrade(state);
    let changes = state.router.changes();
    tokio::spawn(run(weak, changes));
}

async fn run(state: Weak<RedisState>, mut changes: tokio::sync::watch::Receiver<u64>) {
    loop {
        if let Some(state) = state.upgrade() {
            warm_all(&state).await;
        } else {
            return;
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

/// Loads what each primary lacks. A primary that does not answer is left to the next pass
/// (and to `evalsha_with_reload`).
async fn warm_all(state: &RedisState) {
    let scripts: Vec<_> = state.scripts.all().collect();
    let hashes: Vec<String> = scripts.iter().map(|s| s.sha1().to_string()).collect();
    for (addr, client) in state.router.primary_clients() {
        let present: Vec<bool> = match client.script_exists(hashes.clone()).await {
            Ok(present) => present,
            Err(e) => {
                tracing::debug!(primary = %addr, error = %e, "script check failed");
                continue;
            }
        };
        let mut loaded = 0;
        for (script, here) in scripts
            .iter()
            .zip(present.iter().chain(std::iter::repeat(&false)))
        {
            if *here {
                continue;
            }
            let Some(lua) = script.lua() else { continue };
            match client.script_load::<String, _>(lua.clone()).await {
                Ok(_) => loaded += 1,
                Err(e) => {
                    tracing::debug!(primary = %addr, error = %e, "script load failed");
                    break;
                }
            }
        }
        if loaded > 0 {
            tracing::info!(primary = %addr, loaded, "loaded scripts ahead of use");
        }
    }
}
