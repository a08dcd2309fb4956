//! Getting in: one attempt (upgrade and welcome), and attempts until welcomed that honour
//! `Retry-After`, with every refusal counted.

use roomcast_loadtest::now_us;
use roomcast_loadtest::proto::Protocol;
use roomcast_loadtest::ws::{self, Conn, Dial, Refused};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// One attempt: upgrade `base/ws` with `token` (native JSON) and read the welcome.
pub async fn open(base: &str, token: &str, dial: &Dial) -> Result<(Conn, Value), Refused> {
    let mut conn = ws::connect(base, Protocol::Json, Some(token), dial).await?;
    let welcome = conn.welcome(Duration::from_secs(15)).await?;
    Ok((conn, welcome))
}

/// Refusals seen on the way in.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Admission {
    pub attempts: u64,
    /// HTTP 503 answers, and those among them without a usable `Retry-After`.
    pub refused_503: u64,
    pub refused_503_without_retry_after: u64,
    /// Other HTTP statuses.
    pub refused_other_status: u64,
    /// Closed with 4008 after the upgrade.
    pub refused_4008: u64,
    pub refused_other_close: u64,
    pub io_errors: u64,
    /// The `Retry-After` values seen (seconds → count).
    pub retry_after_values: BTreeMap<String, u64>,
}

impl Admission {
    pub fn merge(&mut self, o: &Admission) {
        self.attempts += o.attempts;
        self.refused_503 += o.refused_503;
        self.refused_503_without_retry_after += o.refused_503_without_retry_after;
        self.refused_other_status += o.refused_other_status;
        self.refused_4008 += o.refused_4008;
        self.refused_other_close += o.refused_other_close;
        self.io_errors += o.io_errors;
        for (k, v) in &o.retry_after_values {
            *self.retry_after_values.entry(k.clone()).or_default() += v;
        }
    }

    /// Counts a refusal; returns the seconds to wait before the next attempt: `Retry-After`
    /// when there is one, else one.
    fn refused(&mut self, why: &Refused) -> f64 {
        match *why {
            Refused::Status { code, retry_after } => {
                if code == 503 {
                    self.refused_503 += 1;
                    match retry_after {
                        Some(s) => *self.retry_after_values.entry(format!("{s}")).or_default() += 1,
                        None => self.refused_503_without_retry_after += 1,
                    }
                } else {
                    self.refused_other_status += 1;
                }
                retry_after.unwrap_or(1.0)
            }
            Refused::Close(code) => {
                if code == 4008 {
                    self.refused_4008 += 1;
                } else {
                    self.refused_other_close += 1;
                }
                1.0
            }
            Refused::Io(_) => {
                self.io_errors += 1;
                1.0
            }
        }
    }
}

/// Connects until welcomed or `deadline_us` passes, waiting `Retry-After` plus up to as much
/// again (jitter) after a 503, and about a second (with jitter) after anything else.
pub async fn open_retrying(
    base: &str,
    token: &str,
    dial: &Dial,
    deadline_us: u64,
    adm: &mut Admission,
) -> anyhow::Result<(Conn, Value)> {
    loop {
        adm.attempts += 1;
        let wait = match open(base, token, dial).await {
            Ok(pair) => return Ok(pair),
            Err(why) => adm.refused(&why),
        };
        let sleep = wait * (1.0 + fastrand::f64());
        if now_us() + (sleep * 1e6) as u64 > deadline_us {
            anyhow::bail!("gave up at the deadline");
        }
        tokio::time::sleep(Duration::from_secs_f64(sleep)).await;
    }
}
