//! The reckoning at the end of a `chaos` run: who lost what, what diverged, and the totals.

use super::client::Client;
use super::diverge::{self, Found, Member};
use super::record::{ClientLog, PublisherLog};
use super::LIST_CAP;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Serialize)]
pub struct Summary {
    pub clients: u64,
    pub joined_at_start: u64,
    pub reconnects: u64,
    pub failed_attempts: u64,
    pub failed_to_reconnect: Vec<u64>,
    /// Distinct messages, and every attempt to publish them (retries = attempts - sent).
    pub sent: u64,
    pub attempts: u64,
    pub retries: u64,
    pub acked: u64,
    /// `ok` answers with `duplicate: true` (counted in `acked` once per message).
    pub duplicate_acks: u64,
    /// Error answers `timeout` (outcome unknown) and `unavailable` (not applied), retried or not.
    pub timeouts: u64,
    pub unavailable: u64,
    /// Messages given up with an error, and whose last attempt got no answer.
    pub failed: u64,
    pub unanswered: u64,
    pub failed_but_delivered: u64,
    pub unanswered_but_delivered: u64,
    /// Given up, every answer saying "not applied", yet delivered.
    pub not_applied_but_delivered: u64,
    pub delivered: u64,
    pub lost: u64,
    pub lost_behind_epoch_change: u64,
    /// Lost with no epoch change seen by the member after it was sent.
    pub lost_silently: u64,
    /// Acknowledged messages that reached none of their room's members.
    pub lost_everywhere: u64,
    /// A (publisher, seq) delivered more than once to one member.
    pub duplicates: u64,
    /// A publisher's seq delivered after a higher one (retried messages excepted).
    pub out_of_order: u64,
    /// Retried messages delivered after newer ones (expected).
    pub reordered_by_retry: u64,
    pub offset_anomalies: u64,
    pub epoch_changes: u64,
    /// Positions holding two messages, and acknowledged offsets where members did not get the
    /// message (diverge.rs).
    pub divergences: u64,
    /// Acknowledged at a position that members hold with another message, in an epoch every
    /// holder then saw replaced (the acknowledged message is lost behind the epoch change).
    pub divergences_behind_epoch_change: u64,
}

/// Acknowledged publishes, (publisher, seq, sent ms), per room.
type Acked = HashMap<u64, Vec<(u64, u64, u64)>>;

/// Compares every member's deliveries with its room's acknowledged publishes, fills in the
/// losses of every client and publisher, finds the divergences, and sums up.
pub fn settle(clients: &mut [Client]) -> (Summary, Found) {
    let acked = acked_by_room(clients);
    excuse_retried(clients);
    let reached = count_lost(clients, &acked);
    count_delivered_anyway(clients);
    let lost_everywhere = acked
        .values()
        .flatten()
        .filter(|(p, seq, _)| !reached.contains_key(&(*p, *seq)))
        .count() as u64;
    let members: Vec<Member> = (clients.iter())
        .map(|c| Member {
            room: c.log.room,
            got: &c.check.positions,
            left: (c.log.epoch_changes.iter())
                .filter(|e| !e.from.is_empty())
                .map(|e| e.from.as_str())
                .collect(),
        })
        .collect();
    let found = diverge::find(
        &members,
        (clients.iter().filter_map(|c| c.publog.as_ref()))
            .map(|pl| (pl.room, pl.publisher, pl.acked_msgs.as_slice())),
    );
    let mut summary = summarize(clients, lost_everywhere);
    summary.divergences = found.divergences.len() as u64;
    summary.divergences_behind_epoch_change = found.behind_epoch_change.len() as u64;
    (summary, found)
}

fn acked_by_room(clients: &[Client]) -> Acked {
    let mut acked = Acked::new();
    for pl in clients.iter().filter_map(|c| c.publog.as_ref()) {
        let list = acked.entry(pl.room).or_default();
        list.extend((pl.acked_msgs.iter()).map(|a| (pl.publisher, a.seq, a.sent)));
    }
    acked
}

/// Moves the out-of-order deliveries of retried messages apart: a retry is sent after newer
/// messages, so it may land after them.
fn excuse_retried(clients: &mut [Client]) {
    let retried: HashSet<(u64, u64)> = (clients.iter().filter_map(|c| c.publog.as_ref()))
        .flat_map(|pl| pl.retries.iter().map(|r| (pl.publisher, r.0)))
        .collect();
    for c in clients.iter_mut() {
        let log = &mut c.log;
        let (excused, kept) =
            (log.out_of_order.drain(..)).partition(|x| retried.contains(&(x.0, x.1)));
        log.out_of_order = kept;
        log.reordered_by_retry = excused;
    }
}

/// A message is lost for a client when it was acknowledged, sent after the client first
/// joined, and never delivered to it. Returns how many members each message reached.
fn count_lost(clients: &mut [Client], acked: &Acked) -> HashMap<(u64, u64), u64> {
    let mut reached: HashMap<(u64, u64), u64> = HashMap::new();
    for client in clients.iter_mut() {
        let Some(joined) = client.log.first_joined_ms else {
            continue;
        };
        let mut lost = Vec::new();
        let mut behind = 0u64;
        let room_acked = acked.get(&client.log.room).map(Vec::as_slice);
        for &(p, seq, sent) in room_acked.unwrap_or(&[]) {
            if sent < joined {
                continue;
            }
            if client.check.seen.contains(p, seq) {
                *reached.entry((p, seq)).or_default() += 1;
                continue;
            }
            let seen_change = client.log.epoch_changes.iter().any(|e| e.ms >= sent);
            behind += u64::from(seen_change);
            lost.push((p, seq, sent, u8::from(seen_change)));
        }
        let log = &mut client.log;
        log.lost = lost.len() as u64;
        log.lost_behind_epoch_change = behind;
        lost.truncate(LIST_CAP);
        log.lost_list = lost;
    }
    reached
}

/// Failed or unanswered publishes that were delivered after all.
fn count_delivered_anyway(clients: &mut [Client]) {
    for i in 0..clients.len() {
        let Some(pl) = &clients[i].publog else {
            continue;
        };
        let (p, room) = (pl.publisher, pl.room);
        let delivered_anywhere = |seq: u64| {
            clients
                .iter()
                .filter(|c| c.log.room == room)
                .any(|c| c.check.seen.contains(p, seq))
        };
        let failed = pl.failed.iter().filter(|f| delivered_anywhere(f.0)).count() as u64;
        let unanswered = pl
            .unanswered
            .iter()
            .filter(|u| delivered_anywhere(u.0))
            .count() as u64;
        let not_applied: Vec<(u64, u64)> = (pl.failed.iter())
            .filter(|f| !f.4 && delivered_anywhere(f.0))
            .map(|f| (f.0, f.1))
            .collect();
        if let Some(pl) = clients[i].publog.as_mut() {
            pl.failed_but_delivered = failed;
            pl.unanswered_but_delivered = unanswered;
            pl.not_applied_but_delivered = not_applied;
        }
    }
}

fn summarize(clients: &[Client], lost_everywhere: u64) -> Summary {
    let logs: Vec<&ClientLog> = clients.iter().map(|c| &c.log).collect();
    let pubs: Vec<&PublisherLog> = clients.iter().filter_map(|c| c.publog.as_ref()).collect();
    let sum_logs = |f: fn(&ClientLog) -> u64| logs.iter().map(|l| f(l)).sum::<u64>();
    let sum_pubs = |f: fn(&PublisherLog) -> u64| pubs.iter().map(|p| f(p)).sum::<u64>();
    Summary {
        clients: clients.len() as u64,
        joined_at_start: clients
            .iter()
            .filter(|c| c.log.first_joined_ms.is_some_and(|j| j <= c.ctx.start_ms))
            .count() as u64,
        reconnects: sum_logs(|l| {
            l.sessions
                .iter()
                .filter(|s| s.joined_ms.is_some())
                .count()
                .saturating_sub(1) as u64
        }),
        failed_attempts: sum_logs(|l| l.failed_attempts),
        failed_to_reconnect: logs
            .iter()
            .filter(|l| !l.connected_at_end)
            .map(|l| l.client)
            .collect(),
        sent: sum_pubs(|p| p.sent),
        attempts: sum_pubs(|p| p.attempts),
        retries: sum_pubs(|p| p.retries.len() as u64),
        acked: sum_pubs(|p| p.acked),
        duplicate_acks: sum_pubs(|p| p.duplicate_acks.len() as u64),
        timeouts: sum_pubs(|p| count_code(p, "timeout")),
        unavailable: sum_pubs(|p| count_code(p, "unavailable")),
        failed: sum_pubs(|p| p.failed.len() as u64),
        unanswered: sum_pubs(|p| p.unanswered.len() as u64),
        failed_but_delivered: sum_pubs(|p| p.failed_but_delivered),
        unanswered_but_delivered: sum_pubs(|p| p.unanswered_but_delivered),
        not_applied_but_delivered: sum_pubs(|p| p.not_applied_but_delivered.len() as u64),
        delivered: sum_logs(|l| l.delivered),
        lost: sum_logs(|l| l.lost),
        lost_behind_epoch_change: sum_logs(|l| l.lost_behind_epoch_change),
        lost_silently: sum_logs(|l| l.lost - l.lost_behind_epoch_change),
        lost_everywhere,
        duplicates: sum_logs(|l| l.duplicates.len() as u64),
        out_of_order: sum_logs(|l| l.out_of_order.len() as u64),
        reordered_by_retry: sum_logs(|l| l.reordered_by_retry.len() as u64),
        offset_anomalies: sum_logs(|l| l.offset_anomalies.len() as u64),
        epoch_changes: sum_logs(|l| {
            l.epoch_changes
                .iter()
                .filter(|e| !e.from.is_empty())
                .count() as u64
        }),
        divergences: 0,
        divergences_behind_epoch_change: 0,
    }
}

fn count_code(p: &PublisherLog, code: &str) -> u64 {
    p.errors.iter().filter(|e| e.3 == code).count() as u64
}
