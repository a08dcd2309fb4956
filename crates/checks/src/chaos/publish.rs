//! A `chaos` publisher's messages until the fate of each is known.
//!
//! Every message has its own `msgId` (`p<publisher>-<seq>`). An answer that says it was not
//! applied (`unavailable`), or that its outcome is unknown (`timeout`, or a connection that
//! ended before the answer), sends it again with the same `msgId` and the same content after a
//! backoff, up to [`MAX_TRIES`] attempts within [`RETRY_WITHIN_MS`] of the first: the
//! gateway answers a repeat it already applied with its original offset and
//! `duplicate: true`, so an acknowledged message has one identity and one position. New
//! messages keep the open-loop schedule meanwhile (client.rs); only one attempt of a message
//! is in flight at a time.

use super::record::{AckedMsg, PublisherLog};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// Attempts per message, the first included.
pub const MAX_TRIES: u32 = 5;
/// No new attempt is scheduled later than this after the first one (well inside the
/// gateway's idempotency window, 120 s by default).
pub const RETRY_WITHIN_MS: u64 = 8000;
/// The first retry's delay; it doubles with each attempt, up to [`BACKOFF_MAX_MS`].
const BACKOFF_MS: u64 = 250;
const BACKOFF_MAX_MS: u64 = 2000;
/// Request ids of publishes start here (a connection's own requests count from 1).
const FIRST_ID: u64 = 1_000_000;

/// Codes after which the message is sent again.
fn retryable(code: &str) -> bool {
    matches!(code, "unavailable" | "timeout")
}

/// Codes that leave the outcome unknown (the message may have been applied).
fn unknown_outcome(code: &str) -> bool {
    matches!(code, "timeout" | "internal")
}

/// What a publisher has seen of its room: the epoch and the last offset.
pub type View = Option<(String, u64)>;

struct Msg {
    data: Value,
    msg_id: String,
    first_ms: u64,
    tries: u32,
    /// When to send it again; `None` while an attempt is in flight.
    retry_at: Option<u64>,
    /// Some attempt got `timeout`, `internal` or no answer.
    maybe_applied: bool,
    last_code: String,
    last_answer_ms: u64,
    /// The publisher's view when the message was first sent.
    view: View,
}

#[derive(Default)]
pub struct Outbox {
    msgs: BTreeMap<u64, Msg>,
    /// Request id → seq, for the attempts in flight on the current connection.
    in_flight: HashMap<u64, u64>,
    next_id: u64,
}

impl Outbox {
    /// A new message; [`Outbox::attempt`] sends it.
    pub fn add(&mut self, seq: u64, data: Value, msg_id: String, now: u64, view: View) {
        let msg = Msg {
            data,
            msg_id,
            first_ms: now,
            tries: 0,
            retry_at: Some(now),
            maybe_applied: false,
            last_code: String::new(),
            last_answer_ms: 0,
            view,
        };
        self.msgs.insert(seq, msg);
    }

    /// When the next retry is due (Unix ms).
    pub fn next_due(&self) -> Option<u64> {
        self.msgs.values().filter_map(|m| m.retry_at).min()
    }

    /// The messages due by `now`, in seq order.
    pub fn due(&self, now: u64) -> Vec<u64> {
        (self.msgs.iter())
            .filter(|(_, m)| m.retry_at.is_some_and(|t| t <= now))
            .map(|(s, _)| *s)
            .collect()
    }

    /// One attempt of message `seq` in `room`: its request id and arguments. Counts it (a
    /// retry when it is not the first).
    pub fn attempt(
        &mut self,
        seq: u64,
        room: &str,
        now: u64,
        log: &mut PublisherLog,
    ) -> Option<(u64, Value)> {
        let msg = self.msgs.get_mut(&seq)?;
        msg.tries += 1;
        msg.retry_at = None;
        self.next_id += 1;
        let id = FIRST_ID + self.next_id;
        self.in_flight.insert(id, seq);
        log.attempts += 1;
        if msg.tries == 1 {
            log.sent += 1;
        } else {
            log.retries.push((seq, msg.first_ms, now));
        }
        let args = json!({ "room": room, "data": msg.data, "msgId": msg.msg_id });
        Some((id, args))
    }

    /// The answer `v` to request `id`, with the publisher's view now. False if `id` is not a
    /// publish in flight.
    pub fn answered(
        &mut self,
        id: u64,
        v: &Value,
        now: u64,
        view: &View,
        log: &mut PublisherLog,
    ) -> bool {
        let Some(seq) = self.in_flight.remove(&id) else {
            return false;
        };
        match v.get("error") {
            Some(e) => {
                let code = e["code"].as_str().unwrap_or("error").to_string();
                let after = e["retryAfterMs"].as_u64();
                self.failed_attempt(seq, code, after, now, log);
            }
            None => self.acked(seq, &v["ok"], now, view, log),
        }
        true
    }

    fn acked(&mut self, seq: u64, ok: &Value, now: u64, view: &View, log: &mut PublisherLog) {
        let Some(msg) = self.msgs.remove(&seq) else {
            return;
        };
        let offset = ok["offset"].as_u64().unwrap_or(0);
        let duplicate = ok["duplicate"].as_bool() == Some(true);
        if duplicate {
            log.duplicate_acks.push((seq, msg.first_ms, now));
        }
        let seen_epoch = match (&msg.view, view) {
            (Some((e0, o0)), Some((e1, _))) if e0 == e1 && offset > *o0 => Some(e1.clone()),
            _ => None,
        };
        log.acked += 1;
        log.acked_msgs.push(AckedMsg {
            seq,
            sent: msg.first_ms,
            offset,
            epoch: ok["epoch"].as_str().map(str::to_string),
            seen_epoch,
        });
        let second = (now.saturating_sub(log.start_ms) / 1000) as usize;
        if log.acked_per_sec.len() <= second {
            log.acked_per_sec.resize(second + 1, 0);
        }
        log.acked_per_sec[second] += 1;
    }

    /// An error answer: retried after a backoff, or given up.
    fn failed_attempt(
        &mut self,
        seq: u64,
        code: String,
        retry_after: Option<u64>,
        now: u64,
        log: &mut PublisherLog,
    ) {
        let Some(msg) = self.msgs.get_mut(&seq) else {
            return;
        };
        log.errors.push((seq, msg.first_ms, now, code.clone()));
        msg.maybe_applied |= unknown_outcome(&code);
        msg.last_answer_ms = now;
        let again = retryable(&code);
        msg.last_code = code;
        if !again || !self.schedule(seq, retry_after, now) {
            self.give_up(seq, log);
        }
    }

    /// Schedules the next attempt of `seq`; false when it has no attempt left.
    fn schedule(&mut self, seq: u64, retry_after: Option<u64>, now: u64) -> bool {
        let Some(msg) = self.msgs.get_mut(&seq) else {
            return false;
        };
        let backoff = (BACKOFF_MS << msg.tries.saturating_sub(1).min(8)).min(BACKOFF_MAX_MS);
        let delay = backoff.max(retry_after.unwrap_or(0).min(BACKOFF_MAX_MS));
        let at = now + delay + fastrand::u64(0..100);
        if msg.tries >= MAX_TRIES || at > msg.first_ms + RETRY_WITHIN_MS {
            return false;
        }
        msg.retry_at = Some(at);
        true
    }

    /// The connection ended: the attempts in flight have an unknown outcome; each is sent again
    /// once the publisher is back in (right away), or given up.
    pub fn connection_lost(&mut self, now: u64, log: &mut PublisherLog) {
        let mut seqs: Vec<u64> = self.in_flight.drain().map(|(_, s)| s).collect();
        seqs.sort_unstable();
        for seq in seqs {
            let Some(msg) = self.msgs.get_mut(&seq) else {
                continue;
            };
            msg.maybe_applied = true;
            msg.last_code.clear();
            let left = msg.tries < MAX_TRIES && now <= msg.first_ms + RETRY_WITHIN_MS;
            if left {
                msg.retry_at = Some(now);
            } else {
                self.give_up(seq, log);
            }
        }
    }

    /// The run is over: whatever is left is given up.
    pub fn finish(&mut self, log: &mut PublisherLog) {
        self.in_flight.clear();
        let seqs: Vec<u64> = self.msgs.keys().copied().collect();
        for seq in seqs {
            if let Some(msg) = self.msgs.get_mut(&seq) {
                // Sent, never answered: in flight when the run ended.
                if msg.retry_at.is_none() {
                    msg.last_code.clear();
                }
            }
            self.give_up(seq, log);
        }
    }

    /// Records the fate of a message that gets no further attempt: failed with its last code,
    /// or unanswered when its last attempt got no answer.
    fn give_up(&mut self, seq: u64, log: &mut PublisherLog) {
        let Some(msg) = self.msgs.remove(&seq) else {
            return;
        };
        if msg.tries == 0 {
            return; // never sent (the run ended first)
        }
        if msg.last_code.is_empty() {
            log.unanswered.push((seq, msg.first_ms));
        } else {
            let m = msg.maybe_applied;
            log.failed
                .push((seq, msg.first_ms, msg.last_answer_ms, msg.last_code, m));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox_with(seq: u64) -> (Outbox, PublisherLog) {
        let mut ob = Outbox::default();
        ob.add(
            seq,
            json!({"p": 0, "s": seq}),
            format!("p0-{seq}"),
            1000,
            None,
        );
        (ob, PublisherLog::default())
    }

    #[test]
    fn an_unavailable_answer_is_retried_with_the_same_msg_id() {
        let (mut ob, mut log) = outbox_with(1);
        let (id, args) = ob.attempt(1, "r", 1000, &mut log).expect("due");
        assert_eq!(args["msgId"], "p0-1");
        let err = json!({"id": id, "error": {"code": "unavailable", "retryAfterMs": 1000}});
        assert!(ob.answered(id, &err, 1010, &None, &mut log));
        let due = ob.next_due().expect("a retry");
        assert!((2010..2110).contains(&due));
        assert_eq!(ob.due(due), vec![1]);
        let (id2, args2) = ob.attempt(1, "r", due, &mut log).expect("retry");
        assert_ne!(id, id2);
        assert_eq!(
            (args2["msgId"].clone(), args2["data"].clone()),
            (args["msgId"].clone(), args["data"].clone())
        );
        let ok = json!({"id": id2, "ok": {"offset": 7, "duplicate": true}});
        assert!(ob.answered(id2, &ok, due + 5, &None, &mut log));
        assert_eq!(
            (log.sent, log.attempts, log.acked, log.retries.len()),
            (1, 2, 1, 1)
        );
        assert_eq!((log.errors.len(), log.duplicate_acks.len()), (1, 1));
        assert_eq!(log.acked_msgs[0].offset, 7);
        assert!(ob.next_due().is_none());
    }

    #[test]
    fn retries_are_bounded() {
        let (mut ob, mut log) = outbox_with(1);
        let mut now = 1000;
        for _ in 0..MAX_TRIES {
            let Some((id, _)) = ob.attempt(1, "r", now, &mut log) else {
                break;
            };
            let err = json!({"error": {"code": "timeout"}});
            ob.answered(id, &err, now, &None, &mut log);
            match ob.next_due() {
                Some(t) => now = t,
                None => break,
            }
        }
        assert!(ob.next_due().is_none());
        assert_eq!(log.failed.len(), 1);
        let (_, _, _, code, maybe_applied) = &log.failed[0];
        assert_eq!((code.as_str(), *maybe_applied), ("timeout", true));
        assert!(log.attempts <= u64::from(MAX_TRIES));
        assert!(log.retries.iter().all(|r| r.2 <= 1000 + RETRY_WITHIN_MS));
    }

    #[test]
    fn a_lost_connection_sends_again_and_a_final_refusal_is_definite() {
        let (mut ob, mut log) = outbox_with(3);
        ob.attempt(3, "r", 1000, &mut log);
        ob.connection_lost(1200, &mut log);
        assert_eq!(ob.due(1200), vec![3]);
        let (id, _) = ob.attempt(3, "r", 1500, &mut log).expect("again");
        let err = json!({"error": {"code": "not_member"}});
        ob.answered(id, &err, 1600, &None, &mut log);
        assert_eq!(log.failed.len(), 1);
        assert!(log.failed[0].4, "the lost attempt may have been applied");
        let (mut ob, mut log) = outbox_with(4);
        ob.attempt(4, "r", 1000, &mut log);
        ob.finish(&mut log);
        assert_eq!((log.unanswered.len(), log.failed.len()), (1, 0));
    }

    #[test]
    fn the_epoch_of_an_ack_is_inferred_only_when_unambiguous() {
        let (mut ob, mut log) = outbox_with(1);
        ob.msgs.get_mut(&1).expect("added").view = Some(("e1".into(), 10));
        let (id, _) = ob.attempt(1, "r", 1000, &mut log).expect("due");
        let view = Some(("e1".to_string(), 11));
        ob.answered(id, &json!({"ok": {"offset": 11}}), 1001, &view, &mut log);
        assert_eq!(log.acked_msgs[0].seen_epoch.as_deref(), Some("e1"));
        let (mut ob, mut log) = outbox_with(2);
        ob.msgs.get_mut(&2).expect("added").view = Some(("e1".into(), 10));
        let (id, _) = ob.attempt(2, "r", 1000, &mut log).expect("due");
        // A new epoch restarts offsets: 1 is not after 10, so e1 is not assumed.
        ob.answered(id, &json!({"ok": {"offset": 1}}), 1001, &view, &mut log);
        assert_eq!(log.acked_msgs[0].seen_epoch, None);
    }
}
