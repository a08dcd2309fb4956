//! `--readyz`: each gateway's `GET /readyz`, polled every [`READYZ_EVERY`] until the run ends,
//! every change of answer recorded.

use super::{now_ms, END};
use crate::http;
use serde::Serialize;
use std::time::Duration;
use tokio::sync::watch;

/// How often `/readyz` is polled.
pub const READYZ_EVERY: Duration = Duration::from_millis(150);

#[derive(Debug, Default, Serialize)]
pub struct ReadyzLog {
    /// (Unix ms, answer) at every change of answer.
    pub changes: Vec<(u64, String)>,
    pub polls: u64,
    /// The longest time between two polls, in ms (shows whether polling kept up).
    pub max_poll_gap_ms: u64,
}

/// One `GET /readyz`: `200`, `503 <reason>`, `refused`, `timeout` or `error`.
async fn readyz_once(base: &str) -> String {
    match http::get(base, "/readyz", Duration::from_secs(1)).await {
        Err(http::Failed::Timeout) => "timeout".into(),
        Err(http::Failed::Refused) => "refused".into(),
        Err(http::Failed::Other(_)) => "error".into(),
        Ok((code, body)) => {
            let body = body.trim();
            if code == 200 || body.is_empty() {
                code.to_string()
            } else {
                format!("{code} {body}")
            }
        }
    }
}

/// Polls `base` (`http://host:port`) until the run's phase is [`END`].
pub async fn poll(base: String, phase: watch::Receiver<u8>) -> ReadyzLog {
    let mut log = ReadyzLog::default();
    let mut last_poll = 0u64;
    while *phase.borrow() < END {
        let now = now_ms();
        if last_poll > 0 {
            log.max_poll_gap_ms = log.max_poll_gap_ms.max(now.saturating_sub(last_poll));
        }
        last_poll = now;
        let answer = readyz_once(&base).await;
        log.polls += 1;
        if log.changes.last().map(|c| &c.1) != Some(&answer) {
            log.changes.push((now, answer));
        }
        tokio::time::sleep(READYZ_EVERY).await;
    }
    log
}
