//! What the archive's tests share: a SQLite archive in a temporary directory, waiting for the
//! archiver to catch up (by the archive's high water and by the nodes' lag metric), and a
//! switch in front of PostgreSQL that takes the archive down for one gateway without touching
//! the server other tests share.

use super::http;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// `sqlite://<a fresh temporary directory>/roomcast.db`, and the directory (to remove).
pub fn sqlite_url(name: &str) -> (String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(super::unique(&format!("roomcast-{name}")));
    std::fs::create_dir_all(&dir).unwrap();
    (format!("sqlite://{}/roomcast.db", dir.display()), dir)
}

/// Waits (30 s at most) until the archive's high water of the room's epoch is `upto`.
pub async fn caught_up(archive: &dyn archive::Archive, room: &str, epoch: &str, upto: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let high = archive.high_water(room, epoch).await.unwrap();
        if high == Some(upto) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the archive did not catch up: high water {high:?}, want {upto}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (30 s at most) until the room's archive cursor in Redis (`arch` in its meta hash) is
/// `upto`. The archiver commits to the archive first and moves the cursor after, so a test
/// that counts on the backlog cap (which reads the cursor) waits for this, not only for
/// [`caught_up`].
pub async fn cursor_at(room: &str, upto: u64) {
    let key = format!("rc:{{r:{room}}}:m");
    let base = super::first_redis_port();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let arch = super::redis_cli(base, &["-c", "hget", &key, "arch"]);
        if arch.trim().parse::<u64>().ok() == Some(upto) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the archive cursor of {room} is {arch:?}, want {upto}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every archived message of the room's epoch, paged from the newest to the first, 100 at a
/// time (as a client pages), oldest first.
pub async fn archived(
    archive: &dyn archive::Archive,
    room: &str,
    epoch: &str,
) -> Vec<protocol::frame::Publication> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = archive.page(room, epoch, before, 100).await.unwrap();
        let Some(first) = page.first() else { break };
        before = Some(first.offset);
        all.splice(0..0, page);
    }
    all
}

/// The value of an unlabelled metric on a node's `/metrics` (`None`: not exported).
pub async fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = http(addr, "GET", "/metrics", None, "").await;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits (30 s at most) until the nodes' `roomcast_archive_lag_messages` add up to 0 and every
/// one of them reports it (each node reports the shards it holds).
pub async fn lag_is_zero(nodes: &[SocketAddr]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut total = 0.0;
        let mut all = true;
        for &addr in nodes {
            match metric(addr, "roomcast_archive_lag_messages").await {
                Some(v) => total += v,
                None => all = false,
            }
        }
        if all && total == 0.0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "archive lag never reached 0 (last: {total}, all reported: {all})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP relay in front of PostgreSQL. A gateway given [`PgSwitch::url`] reaches the server
/// through it; [`PgSwitch::cut`] resets its connections and refuses new ones (to the gateway,
/// the database is down), [`PgSwitch::restore`] lets them through again. Other clients of the
/// server are not affected, so a test using it can run beside others.
pub struct PgSwitch {
    pub url: String,
    open: Arc<AtomicBool>,
    relays: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl PgSwitch {
    /// A relay to the server `postgres_url` names (`postgres://user@host:port/db`).
    pub async fn start(postgres_url: &str) -> PgSwitch {
        let (head, rest) = postgres_url.split_once('@').unwrap();
        let (target, db) = rest.split_once('/').unwrap();
        let target = target.to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("{head}@{}/{db}", listener.local_addr().unwrap());
        let open = Arc::new(AtomicBool::new(true));
        let relays: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (o, r) = (open.clone(), relays.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !o.load(Ordering::Acquire) {
                    // Dropped at once: the client's connect or handshake fails.
                    continue;
                }
                let target = target.clone();
                let relay = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut relays = r.lock().unwrap();
                relays.retain(|h| !h.is_finished());
                relays.push(relay.abort_handle());
            }
        })
        .abort_handle();
        PgSwitch {
            url,
            open,
            relays,
            accept,
        }
    }

    /// The database goes away for this relay's clients: open connections are reset (their
    /// next query fails), new ones are refused.
    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        for relay in self.relays.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    /// The database is back.
    pub fn restore(&self) {
        self.open.store(true, Ordering::Release);
    }
}

impl Drop for PgSwitch {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The JSON of an error reply's code, or `""`.
pub fn error_code(reply: &Value) -> String {
    reply["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
