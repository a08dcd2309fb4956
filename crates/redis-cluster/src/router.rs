//! One centralized fred client per primary, and our own slot map.

use fred::clients::Client;
use fred::error::Error;
use fred::interfaces::{ClientLike, ClusterInterface};
use fred::prelude::ServerConfig;
use fred::types::Value;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const SLOTS: usize = 16384;

/// How often the slot map is read again when nothing asked for it sooner.
const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// How long the client of a node that is no longer a primary is kept: long enough for the
/// commands routed to it before the failover to finish or be redirected.
const RETIRE_AFTER: Duration = Duration::from_secs(60);

/// The shortest pause between two refreshes asked for by errors.
const REFRESH_GAP: Duration = Duration::from_millis(100);

/// Routes keyed commands to their slot's primary, each primary through its own client, so a
/// primary that fails stalls only the commands for its own slots. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    seeds: Vec<(String, u16)>,
    command_timeout: Duration,
    state: RwLock<State>,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
    wake: Notify,
    /// Bumped whenever a slot changes owner.
    changed: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// The clients of the seeds, the primaries, and past primaries for [`RETIRE_AFTER`], by
    /// `host:port`. A client whose node is down keeps reconnecting on its own, with nothing
    /// waiting on it.
    clients: HashMap<String, Client>,
    /// Clients of nodes that are neither seeds nor primaries now, and since when: a demoted
    /// or removed node's client is closed after [`RETIRE_AFTER`] (a node that comes back
    /// as a primary gets a new one).
    retiring: HashMap<String, Instant>,
    /// The primaries, as last read from `CLUSTER SLOTS`, in the order they were listed.
    primaries: Vec<Arc<str>>,
    /// Slot → index into `primaries` (`u16::MAX` while unknown).
    owner: Vec<u16>,
}

impl Router {
    /// Makes a client for every seed, reads the slot map once (without failing when the
    /// cluster does not answer yet: it is read again every couple of seconds), and starts the
    /// refresh task. Fails only on settings that can never work (a bad URL).
    pub async fn connect(urls: &[String], command_timeout: Duration) -> Result<Router, String> {
        let seeds = crate::seed_hosts(urls)?;
        let inner = Arc::new(Inner {
            seeds,
            command_timeout,
            state: RwLock::new(State {
                owner: vec![u16::MAX; SLOTS],
                ..State::default()
            }),
            refreshing: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            changed: tokio::sync::watch::channel(0).0,
        });
        let router = Router { inner };
        for (host, port) in router.inner.seeds.clone() {
            router.client_at(&host, port).map_err(|e| e.to_string())?;
        }
        if let Err(e) = router.refresh().await {
            tracing::warn!(error = %e, "slot map not read yet; retrying in the background");
        }
        tokio::spawn(refresh_loop(Arc::downgrade(&router.inner)));
        Ok(router)
    }

    /// The client of the primary that owns `key`'s slot (by its hash tag), or any primary
    /// while the slot map is unknown.
    pub fn client_for_key(&self, key: &str) -> Client {
        self.client_for_slot(fred::util::redis_keyslot(key.as_bytes()))
    }

    /// The client of the primary that owns `slot`.
    pub fn client_for_slot(&self, slot: u16) -> Client {
        self.routed(slot).0
    }

    /// The client for `slot`, with the address of the primary it reaches (`None` while the
    /// slot's owner is unknown and any client stands in).
    fn routed(&self, slot: u16) -> (Client, Option<Arc<str>>) {
        {
            let state = self.inner.state.read();
            let owner = state.owner.get(slot as usize).copied().unwrap_or(u16::MAX);
            if let Some((addr, client)) = state
                .primaries
                .get(owner as usize)
                .and_then(|addr| state.clients.get(&**addr).map(|c| (addr, c)))
            {
                return (client.clone(), Some(addr.clone()));
            }
        }
        (self.any(), None)
    }

    /// The address (`host:port`) of the primary that owns `slot` in the map, if known.
    pub fn owner_of(&self, slot: u16) -> Option<Arc<str>> {
        let state = self.inner.state.read();
        let owner = state.owner.get(slot as usize).copied()?;
        state.primaries.get(owner as usize).cloned()
    }

    /// A client for a command without a key: a connected primary if there is one.
    pub fn any(&self) -> Client {
        let state = self.inner.state.read();
        let primaries = state
            .primaries
            .iter()
            .filter_map(|a| state.clients.get(&**a));
        let mut first = None;
        for client in primaries {
            if client.is_connected() {
                return client.clone();
            }
            first.get_or_insert(client);
        }
        if let Some(client) = first {
            return client.clone();
        }
        // No slot map yet: a connected seed, or any.
        let mut all = state.clients.values();
        state
            .clients
            .values()
            .find(|c| c.is_connected())
            .or_else(|| all.next())
            .cloned()
            .unwrap_or_else(|| {
                // Unreachable: `connect` made a client per seed, and there is at least one.
                let (host, port) = &self.inner.seeds[0];
                crate::configure(
                    ServerConfig::new_centralized(host.clone(), *port),
                    self.inner.command_timeout,
                    crate::Events::Few,
                )
                .build()
                .unwrap_or_default()
            })
    }

    /// Changes whenever a slot changes owner in the map (a refresh, or a MOVED followed):
    /// what a subscriber watches to resubscribe at once after a failover.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// The primaries' addresses (`host:port`) as last read.
    pub fn primaries(&self) -> Vec<String> {
        let state = self.inner.state.read();
        state.primaries.iter().map(|a| a.to_string()).collect()
    }

    /// Every primary as last read, with its client (`host:port`, client): for work that must
    /// reach each primary, such as loading scripts before they are needed.
    pub fn primary_clients(&self) -> Vec<(Arc<str>, Client)> {
        let state = self.inner.state.read();
        state
            .primaries
            .iter()
            .filter_map(|a| state.clients.get(&**a).map(|c| (a.clone(), c.clone())))
            .collect()
    }

    /// Runs `f` on the client of `key`'s primary. On a MOVED or ASK reply, routes the slot to
    /// the node named, refreshes the map, and runs `f` once more on the new owner (a
    /// redirected command was not applied). Any other error asks for a refresh soon.
    pub async fn run<T, F, Fut>(&self, key: &str, f: F) -> Result<T, Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        Ok(self.run_at(key, f).await?.0)
    }

    /// [`Router::run`], also telling which primary (`host:port`) gave the answer, as the map
    /// stood when the command was sent: what a caller keeps to check, after the slot changes
    /// owner, that the new owner holds what the old one acknowledged.
    pub async fn run_at<T, F, Fut>(
        &self,
        key: &str,
        mut f: F,
    ) -> Result<(T, Option<Arc<str>>), Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let (client, addr) = self.routed(slot);
        match f(client).await {
            Err(e) if redirect(&e).is_some() => {
                if let Some((host, port)) = redirect(&e) {
                    tracing::debug!(slot, host, port, "redirected; retrying on the new owner");
                    self.route(slot, &host, port);
                }
                if let Err(e) = self.refresh().await {
                    tracing::debug!(error = %e, "slot map refresh after a redirection failed");
                }
                let (client, addr) = self.routed(slot);
                let result = f(client).await;
                if result.is_err() {
                    self.refresh_soon();
                }
                Ok((result?, addr))
            }
            Err(e) => {
                self.refresh_soon();
                Err(e)
            }
            Ok(v) => Ok((v, addr)),
        }
    }

    /// Asks the background task to read the slot map again now.
    pub fn refresh_soon(&self) {
        self.inner.wake.notify_one();
    }

    /// Reads `CLUSTER SLOTS` from a connected node (primaries first) and installs it.
    pub async fn refresh(&self) -> Result<(), Error> {
        let _one = self.inner.refreshing.lock().await;
        let candidates: Vec<(String, Client)> = {
            let state = self.inner.state.read();
            let mut c: Vec<(String, Client)> = state
                .primaries
                .iter()
                .map(|a| &**a)
                .chain(
                    state
                        .clients
                        .keys()
                        .map(String::as_str)
                        .filter(|a| !state.primaries.iter().any(|p| **p == **a)),
                )
                .filter_map(|a| state.clients.get(a).map(|c| (a.to_string(), c.clone())))
                .collect();
            // Connected ones first: a dead node would hold the refresh for a command timeout.
            c.sort_by_key(|(_, c)| !c.is_connected());
            c
        };
        let mut last = Error::new(fred::error::ErrorKind::Cluster, "no Redis node to ask");
        for (addr, client) in candidates {
            let reply =
                tokio::time::timeout(self.inner.command_timeout, client.cluster_slots::<Value>())
                    .await;
            let reply = match reply {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    last = e;
                    continue;
                }
                Err(_) => {
                    last = Error::new(fred::error::ErrorKind::Timeout, "CLUSTER SLOTS timed out");
                    continue;
                }
            };
            let asked_host = addr.rsplit_once(':').map_or("", |(h, _)| h).to_string();
            match parse_slots(reply, &asked_host) {
                Some(ranges) if !ranges.is_empty() => {
                    self.install(ranges);
                    return Ok(());
                }
                _ => {
                    last = Error::new(
                        fred::error::ErrorKind::Protocol,
                        "unexpected CLUSTER SLOTS reply",
                    );
                }
            }
        }
        Err(last)
    }

    /// Installs a slot map: `(start, end, host, port)` per range.
    fn install(&self, ranges: Vec<(u16, u16, String, u16)>) {
        let mut primaries: Vec<Arc<str>> = Vec::new();
        let mut owner = vec![u16::MAX; SLOTS];
        for (start, end, host, port) in ranges {
            if self.client_at(&host, port).is_err() {
                continue;
            }
            let addr = format!("{host}:{port}");
            let index = match primaries.iter().position(|a| **a == *addr) {
                Some(i) => i,
                None => {
                    primaries.push(addr.into());
                    primaries.len() - 1
                }
            };
            for slot in start..=end.min(SLOTS as u16 - 1) {
                owner[slot as usize] = index as u16;
            }
        }
        let changed = {
            let mut state = self.inner.state.write();
            let owners_before: Vec<Option<&Arc<str>>> = state
                .owner
                .iter()
                .map(|i| state.primaries.get(*i as usize))
                .collect();
            let changed = owners_before
                .iter()
                .zip(&owner)
                .any(|(before, i)| *before != primaries.get(*i as usize));
            if changed {
                tracing::info!(?primaries, "slot map changed");
            }
            state.primaries = primaries;
            state.owner = owner;
            self.retire_unused(&mut state);
            changed
        };
        if changed {
            self.inner.changed.send_modify(|n| *n += 1);
        }
    }

    /// Closes the clients of nodes that have been neither a seed nor a primary for
    /// [`RETIRE_AFTER`]. Without this a long-lived gateway keeps a client (and its
    /// reconnect loop) for every node that ever was a primary.
    fn retire_unused(&self, state: &mut State) {
        let now = Instant::now();
        let State {
            clients,
            retiring,
            primaries,
            ..
        } = state;
        let in_use = |addr: &str| {
            primaries.iter().any(|p| **p == *addr)
                || self
                    .inner
                    .seeds
                    .iter()
                    .any(|(h, p)| format!("{h}:{p}") == addr)
        };
        retiring.retain(|addr, _| clients.contains_key(addr) && !in_use(addr));
        for addr in clients.keys() {
            if !in_use(addr) {
                retiring.entry(addr.clone()).or_insert(now);
            }
        }
        let due: Vec<String> = retiring
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= RETIRE_AFTER)
            .map(|(addr, _)| addr.clone())
            .collect();
        for addr in due {
            retiring.remove(&addr);
            if let Some(client) = clients.remove(&addr) {
                tracing::info!(node = %addr, "closing the client of a node that is no longer a primary");
                tokio::spawn(async move {
                    let _ = client.quit().await;
                });
            }
        }
    }

    /// Routes one slot to `host:port` until the next refresh (after a MOVED).
    fn route(&self, slot: u16, host: &str, port: u16) {
        if self.client_at(host, port).is_err() {
            return;
        }
        let addr = format!("{host}:{port}");
        let mut state = self.inner.state.write();
        let index = match state.primaries.iter().position(|a| **a == *addr) {
            Some(i) => i,
            None => {
                state.primaries.push(addr.into());
                state.primaries.len() - 1
            }
        };
        let changed = match state.owner.get_mut(slot as usize) {
            Some(o) if *o != index as u16 => {
                *o = index as u16;
                true
            }
            _ => false,
        };
        drop(state);
        if changed {
            self.inner.changed.send_modify(|n| *n += 1);
        }
    }

    /// The client for `host:port`, made and connecting (in the background) if new.
    fn client_at(&self, host: &str, port: u16) -> Result<Client, Error> {
        let addr = format!("{host}:{port}");
        if let Some(c) = self.inner.state.read().clients.get(&addr) {
            return Ok(c.clone());
        }
        let client = crate::configure(
            ServerConfig::new_centralized(host.to_string(), port),
            self.inner.command_timeout,
            crate::Events::Few,
        )
        .build()?;
        let mut state = self.inner.state.write();
        if let Some(c) = state.clients.get(&addr) {
            return Ok(c.clone());
        }
        // Connects and reconnects on its own task; commands wait for it (up to their timeout).
        drop(client.connect());
        state.clients.insert(addr, client.clone());
        Ok(client)
    }
}

/// Reads the slot map again every [`REFRESH_EVERY`], or sooner when asked, while the router
/// lives.
async fn refresh_loop(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let woken = tokio::select! {
            _ = strong.wake.notified() => true,
            _ = tokio::time::sleep(REFRESH_EVERY) => false,
        };
        // Only this task holds it: the router is gone.
        if Arc::strong_count(&strong) == 1 {
            return;
        }
        let router = Router { inner: strong };
        if let Err(e) = router.refresh().await {
            tracing::debug!(error = %e, "slot map refresh failed");
        }
        drop(router);
        if woken {
            tokio::time::sleep(REFRESH_GAP).await;
        }
    }
}

/// The node a MOVED or ASK reply names.
fn redirect(e: &Error) -> Option<(String, u16)> {
    let details = e.details().trim_start();
    let rest = details
        .strip_prefix("MOVED ")
        .or_else(|| details.strip_prefix("ASK "))?;
    let target = rest.split_whitespace().nth(1)?;
    let (host, port) = target.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
}

/// `CLUSTER SLOTS` as `(start, end, host, port)` of each range's primary. An empty host means
/// the node that answered.
pub fn parse_slots(reply: Value, asked_host: &str) -> Option<Vec<(u16, u16, String, u16)>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut out = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let start = u16::try_from(fields.first()?.as_i64()?).ok()?;
        let end = u16::try_from(fields.get(1)?.as_i64()?).ok()?;
        let Value::Array(primary) = fields.get(2)? else {
            return None;
        };
        let mut host = primary.first()?.as_string()?;
        if host.is_empty() || host == "?" {
            host = asked_host.to_string();
        }
        let port = u16::try_from(primary.get(1)?.as_i64()?).ok()?;
        out.push((start, end, host, port));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirections_name_their_target() {
        let moved = Error::new(fred::error::ErrorKind::Cluster, "MOVED 3999 127.0.0.1:6381");
        assert_eq!(redirect(&moved), Some(("127.0.0.1".into(), 6381)));
        let ask = Error::new(fred::error::ErrorKind::Cluster, "ASK 1 10.0.0.2:7000");
        assert_eq!(redirect(&ask), Some(("10.0.0.2".into(), 7000)));
        let other = Error::new(fred::error::ErrorKind::Cluster, "CLUSTERDOWN no");
        assert_eq!(redirect(&other), None);
    }

    #[test]
    fn cluster_slots_replies_parse() {
        let node = |h: &str, p: i64| Value::Array(vec![h.into(), p.into(), "id".into()]);
        let reply = Value::Array(vec![
            Value::Array(vec![0.into(), 5460.into(), node("127.0.0.1", 7000)]),
            Value::Array(vec![
                5461.into(),
                16383.into(),
                node("", 7001),
                node("127.0.0.1", 7004),
            ]),
        ]);
        assert_eq!(
            parse_slots(reply, "10.0.0.9"),
            Some(vec![
                (0, 5460, "127.0.0.1".into(), 7000),
                (5461, 16383, "10.0.0.9".into(), 7001)
            ])
        );
        assert_eq!(parse_slots(Value::Null, ""), None);
    }
}
