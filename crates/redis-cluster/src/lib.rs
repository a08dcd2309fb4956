//! Redis Cluster access shared by the room store (`room-state`) and the fan-out (`fan-out`):
//! the fred settings both use ([`builder`]), and a [`Router`] that sends each keyed command to
//! its slot's primary through a client of that primary alone.
//!
//! Why a router of our own: fred 10.1 runs one routing task per clustered client. When one
//! primary dies, that task loops in its reconnect, whose cluster sync connects to every
//! primary `CLUSTER SLOTS` lists, and fails as long as the dead one is listed (until its
//! replica is promoted). Meanwhile every command of that client waits, whatever its shard.
//! Here each primary has its own *centralized* fred client: a dead primary's client
//! reconnects on its own, and commands for the other shards never wait for it.

mod router;

pub use router::{parse_slots, Router};

use fred::prelude::{Builder, Config, ServerConfig};
use fred::types::config::{ReconnectPolicy, UnresponsiveConfig};
use std::time::Duration;

/// Parses seed URLs (`redis://host:port`) into host and port. Errors name the bad URL.
pub fn seed_hosts(urls: &[String]) -> Result<Vec<(String, u16)>, String> {
    let mut hosts = Vec::new();
    for url in urls {
        let rest = url
            .trim()
            .strip_prefix("redis://")
            .ok_or_else(|| format!("not a redis:// URL: {url}"))?;
        let (host, port) = rest
            .trim_end_matches('/')
            .rsplit_once(':')
            .ok_or_else(|| format!("no port in {url}"))?;
        let port: u16 = port.parse().map_err(|_| format!("bad port in {url}"))?;
        hosts.push((host.to_string(), port));
    }
    if hosts.is_empty() {
        return Err("no Redis Cluster seed nodes".into());
    }
    Ok(hosts)
}

/// How many events (pub/sub messages, reconnects, topology changes) a client's broadcast
/// channels hold before a slow reader misses some (`Lagged`).
///
/// Tokio's broadcast channel allocates every slot up front, and a fred client has eight of
/// them: at 16k slots that is about 20 MB per client, whether or not anything listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Events {
    /// A subscriber: pub/sub messages arrive in bursts and must not be dropped (16k).
    Messages,
    /// A command client: only topology changes and reconnects are read, if anything (fred's
    /// default of 32).
    Few,
}

impl Events {
    fn capacity(self) -> usize {
        match self {
            Events::Messages => 16 * 1024,
            Events::Few => 32,
        }
    }
}

/// A fred builder for a clustered client on `urls`, with every setting that matters made
/// explicit (see [`configure`]).
pub fn builder(
    urls: &[String],
    command_timeout: Duration,
    events: Events,
) -> Result<Builder, String> {
    let hosts = seed_hosts(urls)?;
    Ok(configure(
        ServerConfig::new_clustered(hosts),
        command_timeout,
        events,
    ))
}

/// A fred builder for `server` with the settings every roomcast client uses.
///
/// fred's defaults do not suit a server (see `docs/architecture.md`, "fred"): no reconnect
/// policy, no command timeout, no unresponsive-socket detection, and event channels of 32,
/// which drop pub/sub messages (`Lagged`) under any burst. Every one is set here; the event
/// channels only as large as the client needs ([`Events`]).
pub fn configure(server: ServerConfig, command_timeout: Duration, events: Events) -> Builder {
    let config = Config {
        server,
        // A node may start before Redis; it reports unready until the cluster answers.
        fail_fast: false,
        ..Config::default()
    };
    let mut builder = Builder::from_config(config);
    builder
        .with_performance_config(|p| {
            p.default_command_timeout = command_timeout;
            // fred's event channels drop messages past this (Lagged).
            p.broadcast_channel_capacity = events.capacity();
        })
        .with_connection_config(|c| {
            // TCP_NODELAY is left off (fred's default): turning it on moved neither p99 nor
            // CPU per delivery at the bench's chat rate (docs/benchmarks.md, session 15).
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            c.max_command_attempts = 3;
            c.max_redirections = 5;
            c.cluster_cache_update_delay = Duration::from_millis(100);
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(Duration::from_secs(5)),
                interval: Duration::from_secs(1),
            };
            // Bounded: past it commands fail with Backpressure instead of queueing forever.
            c.max_command_buffer_len = 100_000;
        })
        // Retry forever, 50 ms doubling to 250 ms, with jitter. A clustered client (the
        // subscriber, the fan-out's topology pool) runs one routing task for every shard, so
        // its reconnect stalls every shard until the dead primary's replica is promoted; a
        // short cap resumes it within 250 ms of the promotion. The router's per-primary
        // clients stall only their own shard.
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 250, 2));
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_urls_must_be_redis_urls_with_ports() {
        let ok = vec!["redis://127.0.0.1:7000/".to_string()];
        assert_eq!(
            seed_hosts(&ok).ok(),
            Some(vec![("127.0.0.1".to_string(), 7000)])
        );
        for bad in ["127.0.0.1:7000", "redis://127.0.0.1", "redis://h:port"] {
            assert!(seed_hosts(&[bad.to_string()]).is_err(), "{bad}");
        }
        assert!(seed_hosts(&[]).is_err());
    }
}
