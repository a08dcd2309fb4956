//! What `chaos` writes about every client and publisher (`--json`, read by
//! deploy/local/chaos_report.py). All times are Unix ms.

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
pub struct Session {
    pub connected_ms: u64,
    pub node: String,
    pub joined_ms: Option<u64>,
    /// `recovered` of the re-join (absent on a first join).
    pub recovered: Option<bool>,
    pub missed: usize,
    pub end_ms: Option<u64>,
    /// How it ended: `close <code>`, `eof`, `error: …`, `end` (the run ended).
    pub end: String,
    /// `afterMs` of a `reconnect` event received in this session.
    pub reconnect_after_ms: Option<u64>,
}

impl Session {
    pub fn new(connected_ms: u64, node: &str) -> Session {
        Session {
            connected_ms,
            node: node.to_string(),
            joined_ms: None,
            recovered: None,
            missed: 0,
            end_ms: None,
            end: String::new(),
            reconnect_after_ms: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct EpochChange {
    pub ms: u64,
    pub from: String,
    pub from_offset: u64,
    pub to: String,
    pub to_offset: u64,
    /// `live` (a message of a new epoch) or `rejoin` (`recovered: false`).
    pub how: &'static str,
}

#[derive(Debug, Serialize)]
pub struct OffsetAnomaly {
    pub ms: u64,
    pub epoch: String,
    pub expected: u64,
    pub got: u64,
    /// `live` or `missed` (inside a recovery).
    pub source: &'static str,
}

#[derive(Debug, Default, Serialize)]
pub struct ClientLog {
    pub client: u64,
    pub room: u64,
    pub publisher: Option<u64>,
    pub first_joined_ms: Option<u64>,
    pub sessions: Vec<Session>,
    /// Silences of at least `GAP_MS` between deliveries: (from, to).
    pub gaps: Vec<(u64, u64)>,
    pub last_delivery_ms: u64,
    pub delivered: u64,
    /// (publisher, seq, sent ms, delivered ms)
    pub duplicates: Vec<(u64, u64, u64, u64)>,
    pub out_of_order: Vec<(u64, u64, u64, u64)>,
    pub offset_anomalies: Vec<OffsetAnomaly>,
    pub epoch_changes: Vec<EpochChange>,
    /// Connection or join attempts that failed.
    pub failed_attempts: u64,
    /// Error codes of failed joins.
    pub join_errors: BTreeMap<String, u64>,
    pub connected_at_end: bool,
    /// Filled in at the end: acknowledged, sent after the first join, never delivered.
    pub lost: u64,
    pub lost_behind_epoch_change: u64,
    /// (publisher, seq, sent ms), at most `LIST_CAP`.
    pub lost_list: Vec<(u64, u64, u64)>,
}

#[derive(Debug, Default, Serialize)]
pub struct PublisherLog {
    pub publisher: u64,
    pub room: u64,
    pub client: u64,
    pub sent: u64,
    pub acked: u64,
    /// Schedule slots that fell while the publisher was not joined.
    pub skipped: u64,
    /// Acknowledged publishes per second since the start of publishing.
    pub acked_per_sec: Vec<u64>,
    /// (seq, sent ms, answer ms, code)
    pub failed: Vec<(u64, u64, u64, String)>,
    /// Sent but the connection ended before the answer: (seq, sent ms).
    pub unanswered: Vec<(u64, u64)>,
    /// Filled in at the end: failed or unanswered publishes that members received anyway.
    pub failed_but_delivered: u64,
    pub unanswered_but_delivered: u64,
    #[serde(skip)]
    pub acked_seqs: Vec<(u64, u64)>, // (seq, sent ms)
}
