//! What both test tools share: `roomcast-loadtest` (the load generator, this package's binary)
//! and `roomcast-checks` (the pass/fail fault checks, crates/checks).
//!
//! - [`ws`]: the one WebSocket client (sockets from chosen source addresses, the upgrade with
//!   admission refusals told apart, the welcome, request/reply);
//! - [`proto`]: the three client protocols (native JSON and MessagePack, Socket.IO);
//! - [`procs`]: CPU and memory of the system under test, from /proc;
//! - [`workers`]: running a tool's clients in child processes of itself;
//! - the small helpers below: clock, tokens, source addresses, latency histograms, the
//!   (publisher, seq) pairs a receiver has had.

pub mod procs;
pub mod proto;
pub mod workers;
pub mod ws;

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in microseconds.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// An HS256 token for `sub`, valid for a day.
pub fn mint(secret: &str, sub: &str) -> Option<String> {
    let exp = now_us() / 1_000_000 + 86_400;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": sub, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .ok()
}

/// `--source-ips`: addresses and ranges, e.g. `127.0.0.2-127.0.0.50,10.0.0.1`.
pub fn parse_sources(spec: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in spec.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (Ipv4Addr, Ipv4Addr) = (a.parse()?, b.parse()?);
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a {
                    bail!("empty range {part}");
                }
                out.extend((a..=b).map(|n| IpAddr::V4(n.into())));
            }
            None => out.push(part.parse()?),
        }
    }
    Ok(out)
}

/// Latencies in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant, valid bounds")
}

/// The (publisher, seq) pairs a receiver has had: a bitset of seqs per publisher.
#[derive(Debug, Default)]
pub struct Seen(HashMap<u64, Vec<u64>>);

impl Seen {
    /// Notes (`p`, `s`); false if it was there already (a duplicate).
    pub fn insert(&mut self, p: u64, s: u64) -> bool {
        let bits = self.0.entry(p).or_default();
        let (word, bit) = ((s / 64) as usize, s % 64);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        let new = bits[word] & (1 << bit) == 0;
        bits[word] |= 1 << bit;
        new
    }

    pub fn contains(&self, p: u64, s: u64) -> bool {
        self.0
            .get(&p)
            .and_then(|bits| bits.get((s / 64) as usize))
            .is_some_and(|w| w & (1 << (s % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ranges() {
        assert_eq!(
            parse_sources("127.0.0.2-127.0.0.4,10.0.0.1")
                .ok()
                .map(|v| v.len()),
            Some(4)
        );
        assert!(parse_sources("127.0.0.4-127.0.0.2").is_err());
    }

    #[test]
    fn seen_pairs() {
        let mut seen = Seen::default();
        assert!(seen.insert(1, 130));
        assert!(!seen.insert(1, 130));
        assert!(seen.contains(1, 130) && !seen.contains(1, 129) && !seen.contains(2, 130));
    }
}
