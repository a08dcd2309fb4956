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
    /// (publisher, seq, sent ms, delivered ms, where it was got: `epoch:offset …`)
    pub duplicates: Vec<(u64, u64, u64, u64, String)>,
    /// A seq lower than one already delivered from its publisher; at the end, the ones of
    /// messages that were retried move to `reordered_by_retry` (a retry goes out after newer
    /// messages, which keep the schedule).
    pub out_of_order: Vec<(u64, u64, u64, u64)>,
    pub reordered_by_retry: Vec<(u64, u64, u64, u64)>,
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
    /// (publisher, seq, sent ms, behind an epoch change this client saw: 0 or 1), at most
    /// `LIST_CAP`.
    pub lost_list: Vec<(u64, u64, u64, u8)>,
}

/// One acknowledged message, for the loss and divergence reckoning.
#[derive(Debug, Clone)]
pub struct AckedMsg {
    pub seq: u64,
    /// When it was first sent (Unix ms; its `t`).
    pub sent: u64,
    /// The offset of the `ok` (the original one for a `duplicate: true`).
    pub offset: u64,
    /// The `ok`'s own `epoch`, when the gateway gives one.
    pub epoch: Option<String>,
    /// Otherwise the epoch the publisher was in, when that is unambiguous: the same when the
    /// message was first sent and when it was acknowledged, and the acknowledged offset above
    /// the last one the publisher had seen at the first send.
    pub seen_epoch: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct PublisherLog {
    pub publisher: u64,
    pub room: u64,
    pub client: u64,
    /// Distinct messages (each with its own `msgId`), and every attempt to publish them.
    pub sent: u64,
    pub attempts: u64,
    /// Messages acknowledged (once each, whether by a first `ok` or a `duplicate: true`).
    pub acked: u64,
    /// Schedule slots that fell while the publisher was not joined.
    pub skipped: u64,
    /// Acknowledged publishes per second since the start of publishing.
    pub acked_per_sec: Vec<u64>,
    /// Every error answer, retried or not: (seq, sent ms, answer ms, code).
    pub errors: Vec<(u64, u64, u64, String)>,
    /// Every retry: (seq, first sent ms, retry ms).
    pub retries: Vec<(u64, u64, u64)>,
    /// `ok` answers with `duplicate: true`: (seq, first sent ms, answer ms).
    pub duplicate_acks: Vec<(u64, u64, u64)>,
    /// Given up: (seq, sent ms, last answer ms, last code, whether any attempt may have been
    /// applied: a `timeout`, an `internal` or no answer).
    pub failed: Vec<(u64, u64, u64, String, bool)>,
    /// The last attempt got no answer (the connection or the run ended): (seq, sent ms).
    pub unanswered: Vec<(u64, u64)>,
    /// Filled in at the end: failed or unanswered publishes that members received anyway.
    pub failed_but_delivered: u64,
    pub unanswered_but_delivered: u64,
    /// Failed publishes whose every answer said it was not applied (`unavailable` and the
    /// like, never `timeout`), yet delivered: (seq, sent ms).
    pub not_applied_but_delivered: Vec<(u64, u64)>,
    #[serde(skip)]
    pub acked_msgs: Vec<AckedMsg>,
    /// When publishing started (Unix ms), for `acked_per_sec`.
    #[serde(skip)]
    pub start_ms: u64,
}
