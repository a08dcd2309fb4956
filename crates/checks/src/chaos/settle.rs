//! The reckoning at the end of a `chaos` run: who lost what, and the totals.

use super::client::Client;
use super::record::{ClientLog, PublisherLog};
use super::LIST_CAP;
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub clients: u64,
    pub joined_at_start: u64,
    pub reconnects: u64,
    pub failed_attempts: u64,
    pub failed_to_reconnect: Vec<u64>,
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub unanswered: u64,
    pub failed_but_delivered: u64,
    pub unanswered_but_delivered: u64,
    pub delivered: u64,
    pub lost: u64,
    pub lost_behind_epoch_change: u64,
    /// Acknowledged messages that reached none of their room's members.
    pub lost_everywhere: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub offset_anomalies: u64,
    pub epoch_changes: u64,
}

/// Acknowledged publishes, (publisher, seq, sent ms), per room.
type Acked = HashMap<u64, Vec<(u64, u64, u64)>>;

/// Compares every member's deliveries with its room's acknowledged publishes, fills in the
/// losses of every client and publisher, and sums up.
pub fn settle(clients: &mut [Client]) -> Summary {
    let acked = acked_by_room(clients);
    let reached = count_lost(clients, &acked);
    count_delivered_anyway(clients);
    let lost_everywhere = acked
        .values()
        .flatten()
        .filter(|(p, seq, _)| !reached.contains_key(&(*p, *seq)))
        .count() as u64;
    summarize(clients, lost_everywhere)
}

fn acked_by_room(clients: &[Client]) -> Acked {
    let mut acked = Acked::new();
    for pl in clients.iter().filter_map(|c| c.publog.as_ref()) {
        let list = acked.entry(pl.room).or_default();
        list.extend(
            pl.acked_seqs
                .iter()
                .map(|(seq, t)| (pl.publisher, *seq, *t)),
        );
    }
    acked
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
            if client.log.epoch_changes.iter().any(|e| e.ms >= sent) {
                behind += 1;
            }
            lost.push((p, seq, sent));
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
        if let Some(pl) = clients[i].publog.as_mut() {
            pl.failed_but_delivered = failed;
            pl.unanswered_but_delivered = unanswered;
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
        acked: sum_pubs(|p| p.acked),
        failed: sum_pubs(|p| p.failed.len() as u64),
        unanswered: sum_pubs(|p| p.unanswered.len() as u64),
        failed_but_delivered: sum_pubs(|p| p.failed_but_delivered),
        unanswered_but_delivered: sum_pubs(|p| p.unanswered_but_delivered),
        delivered: sum_logs(|l| l.delivered),
        lost: sum_logs(|l| l.lost),
        lost_behind_epoch_change: sum_logs(|l| l.lost_behind_epoch_change),
        lost_everywhere,
        duplicates: sum_logs(|l| l.duplicates.len() as u64),
        out_of_order: sum_logs(|l| l.out_of_order.len() as u64),
        offset_anomalies: sum_logs(|l| l.offset_anomalies.len() as u64),
        epoch_changes: sum_logs(|l| {
            l.epoch_changes
                .iter()
                .filter(|e| !e.from.is_empty())
                .count() as u64
        }),
    }
}
