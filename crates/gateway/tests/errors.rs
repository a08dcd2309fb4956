//! Every error code of protocol v1, each triggered for real.

#![allow(clippy::unwrap_used)]

mod support;

use async_trait::async_trait;
use fan_out::{MemoryFanOut, Registry};
use gateway::{Backends, Metrics, Node};
use protocol::envelope::Envelope;
use protocol::frame::{Member, Publication, Since};
use protocol::Data;
use room_state::{
    Idempotency, JoinOutcome, MemberRecord, MemoryState, Published, RemovedUserConn, RoomConfig,
    RoomInfo, RoomStore, StateError, TrafficCounters, UserAdmission, UserConn, UserRegistry,
};
use serde_json::json;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

#[tokio::test]
async fn client_errors() {
    let server = start(&[
        "--max-data-bytes",
        "1000",
        "--publish-rate",
        "1",
        "--publish-burst",
        "3",
    ])
    .await;
    let addr = server.addr;
    let mut a = Client::connect(addr, "alice", Fmt::Json).await;
    let mut b = Client::connect(addr, "bob", Fmt::Json).await;

    // bad_request: unknown op, missing fields, bad room names, bad options.
    for op in [
        json!({"op": "fly"}),
        json!({"op": "join"}),
        json!({"op": "join", "room": "has space"}),
        json!({"op": "join", "room": "x".repeat(129)}),
        json!({"op": "join", "room": ""}),
        json!({"op": "create_room", "options": {"maxMembers": 0}}),
        json!({"op": "create_room", "options": {"historySize": 100000}}),
        json!({"op": "history", "room": "r", "limit": -1}),
    ] {
        assert_eq!(a.err(op.clone()).await["code"], "bad_request", "{op}");
    }

    // not_found: only create_room makes a room.
    assert_eq!(
        a.err(json!({"op": "join", "room": "nowhere"})).await["code"],
        "not_found"
    );

    // room_exists
    a.ok(json!({"op": "create_room", "room": "r", "options": {"maxMembers": 2}}))
        .await;
    assert_eq!(
        b.err(json!({"op": "create_room", "room": "r"})).await["code"],
        "room_exists"
    );

    // not_member: publish, presence, history and leave need membership.
    for op in ["publish", "presence", "history", "leave"] {
        let e = b.err(json!({"op": op, "room": "r", "data": 1})).await;
        assert_eq!(e["code"], "not_member", "{op}");
    }

    // room_full
    b.ok(json!({"op": "join", "room": "r"})).await;
    let mut c = Client::connect(addr, "carol", Fmt::Json).await;
    assert_eq!(
        c.err(json!({"op": "join", "room": "r"})).await["code"],
        "room_full"
    );

    // payload_too_large: data over --max-data-bytes.
    let e = a
        .err(json!({"op": "publish", "room": "r", "data": "x".repeat(2000)}))
        .await;
    assert_eq!(e["code"], "payload_too_large");

    // rate_limited: the publish bucket (burst 3, 1/s), with retryAfterMs.
    for _ in 0..3 {
        a.ok(json!({"op": "publish", "room": "r", "data": 1})).await;
    }
    let e = a
        .err(json!({"op": "publish", "room": "r", "data": 1}))
        .await;
    assert_eq!(e["code"], "rate_limited");
    let retry = e["retryAfterMs"].as_u64().unwrap();
    assert!((1..=1000).contains(&retry), "{e}");
    // The bucket is per user: bob is unaffected.
    b.ok(json!({"op": "publish", "room": "r", "data": 2})).await;

    // Error messages are for people, and codes are what clients switch on.
    assert!(e["message"].as_str().unwrap().len() > 3);
}

#[tokio::test]
async fn unauthorized_and_forbidden() {
    let server = start(&[]).await;
    // unauthorized: the server API with a wrong key.
    let (status, body) = http_json(server.addr, "GET", "/api/rooms/x", Some("nope"), "").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("unauthorized"))
    );
    // forbidden: a room outside the token's `rooms` claim, for every op that names one.
    let t = token("zed", json!({"rooms": ["game:*", "lobby"]}));
    let mut z = Client::connect_query(server.addr, &format!("token={t}"), Fmt::Json).await;
    let mut owner = Client::connect(server.addr, "owner", Fmt::Json).await;
    owner
        .ok(json!({"op": "create_room", "room": "secret"}))
        .await;
    for op in ["join", "publish", "presence", "history"] {
        let e = z.err(json!({"op": op, "room": "secret", "data": 1})).await;
        assert_eq!(e["code"], "forbidden", "{op}");
    }
    assert_eq!(
        z.err(json!({"op": "create_room", "room": "secret2"})).await["code"],
        "forbidden"
    );
    z.ok(json!({"op": "create_room", "room": "game:1"})).await;
    z.ok(json!({"op": "create_room", "room": "lobby"})).await;
    // forbidden: more rooms than --max-rooms-per-conn.
    let server = start(&["--max-rooms-per-conn", "1"]).await;
    let mut c = Client::connect(server.addr, "c", Fmt::Json).await;
    c.ok(json!({"op": "create_room", "room": "one"})).await;
    assert_eq!(
        c.err(json!({"op": "create_room", "room": "two"})).await["code"],
        "forbidden"
    );
}

/// `Faulty::mode` that leaves every answer right but makes the room count take 30 s.
const SLOW: u8 = 3;
/// `Faulty::mode` in which only leaving a room fails (unavailable), as a backend too loaded
/// to answer fails when thousands of clients leave at once.
const LEAVES_FAIL: u8 = 4;

/// The embedded store with a switch that makes it fail like an unreachable or broken backend.
struct Faulty {
    inner: Arc<MemoryState>,
    mode: AtomicU8,
}

impl Faulty {
    fn check(&self) -> Result<(), StateError> {
        match self.mode.load(Ordering::SeqCst) {
            1 => Err(StateError::Unavailable(
                "connection refused (injected)".into(),
            )),
            2 => Err(StateError::Internal(
                "WRONGTYPE secret internals (injected)".into(),
            )),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl RoomStore for Faulty {
    async fn create(
        &self,
        room: &str,
        config: &RoomConfig,
        now_ms: u64,
    ) -> Result<RoomInfo, StateError> {
        self.check()?;
        self.inner.create(room, config, now_ms).await
    }
    async fn wake(
        &self,
        room: &str,
        wake: &room_state::Wake,
        now_ms: u64,
    ) -> Result<RoomInfo, StateError> {
        self.check()?;
        self.inner.wake(room, wake, now_ms).await
    }
    async fn join(
        &self,
        room: &str,
        member: &MemberRecord,
        since: Option<&Since>,
        now_ms: u64,
    ) -> Result<JoinOutcome, StateError> {
        self.check()?;
        self.inner.join(room, member, since, now_ms).await
    }
    async fn leave(&self, room: &str, conn_id: &str, now_ms: u64) -> Result<bool, StateError> {
        self.inner.leave(room, conn_id, now_ms).await
    }
    async fn depart(
        &self,
        room: &str,
        conn_id: &str,
        now_ms: u64,
    ) -> Result<room_state::Departure, StateError> {
        if self.mode.load(Ordering::SeqCst) == LEAVES_FAIL {
            return Err(StateError::Unavailable("timed out (injected)".into()));
        }
        self.inner.depart(room, conn_id, now_ms).await
    }
    async fn publish(
        &self,
        room: &str,
        conn_id: Option<room_state::Publisher<'_>>,
        from: &str,
        data: Data,
        idempotency: Option<Idempotency<'_>>,
        now_ms: u64,
    ) -> Result<Published, StateError> {
        self.check()?;
        self.inner
            .publish(room, conn_id, from, data, idempotency, now_ms)
            .await
    }
    async fn members(
        &self,
        room: &str,
        requester: Option<&str>,
    ) -> Result<Vec<Member>, StateError> {
        self.check()?;
        self.inner.members(room, requester).await
    }
    async fn history(
        &self,
        room: &str,
        requester: Option<&str>,
        limit: usize,
        before: Option<u64>,
    ) -> Result<(Vec<Publication>, String), StateError> {
        self.check()?;
        self.inner.history(room, requester, limit, before).await
    }
    async fn info(&self, room: &str) -> Result<RoomInfo, StateError> {
        self.inner.info(room).await
    }
    async fn close(&self, room: &str) -> Result<Vec<MemberRecord>, StateError> {
        self.inner.close(room).await
    }
    async fn count(&self) -> Result<u64, StateError> {
        if self.mode.load(Ordering::SeqCst) == SLOW {
            // A backend too loaded to answer: the upkeep round waits here.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        self.inner.count().await
    }
    async fn remove_node_members(
        &self,
        node: &str,
        keep: &(dyn for<'c> Fn(&'c str) -> bool + Send + Sync),
    ) -> Result<Vec<room_state::Departed>, StateError> {
        self.inner.remove_node_members(node, keep).await
    }
    async fn maintain(&self, now_ms: u64) -> Result<Vec<String>, StateError> {
        self.inner.maintain(now_ms).await
    }
    async fn health(&self) -> Result<(), StateError> {
        self.check()
    }
    async fn reset_epoch(&self, room: &str, old_epoch: &str) -> Result<(String, bool), StateError> {
        self.inner.reset_epoch(room, old_epoch).await
    }
}

/// A node on the embedded store behind [`Faulty`] (mode 0: no faults yet), with test defaults
/// plus `args`; and the store itself, to look behind the switch.
async fn faulty_node(args: &[&str]) -> (gateway::Running, Arc<Faulty>, Arc<MemoryState>) {
    let (node, listener, faulty, state) = faulty_parts(args, 0).await;
    (gateway::serve(node, listener).await, faulty, state)
}

/// A node on a [`Faulty`] backend in `mode` from the start, and its listener, not serving yet.
async fn faulty_parts(
    args: &[&str],
    mode: u8,
) -> (
    Arc<Node>,
    tokio::net::TcpListener,
    Arc<Faulty>,
    Arc<MemoryState>,
) {
    faulty_parts_with(args, mode, |state| state).await
}

/// [`faulty_parts`], with the user registry made by `users` from the embedded store.
async fn faulty_parts_with(
    args: &[&str],
    mode: u8,
    users: impl FnOnce(Arc<MemoryState>) -> Arc<dyn UserRegistry>,
) -> (
    Arc<Node>,
    tokio::net::TcpListener,
    Arc<Faulty>,
    Arc<MemoryState>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::new().unwrap());
    let registry = Arc::new(Registry::new());
    let state = Arc::new(MemoryState::new());
    let fanout = Arc::new(MemoryFanOut::new(registry.clone(), metrics.clone()));
    let sink = fanout.clone();
    state.set_sink(Arc::new(move |p| {
        sink.deliver_now(&Envelope::Message(p.clone()))
    }));
    let faulty = Arc::new(Faulty {
        inner: state.clone(),
        mode: AtomicU8::new(mode),
    });
    let backends = Backends {
        rooms: faulty.clone(),
        limits: state.clone(),
        sessions: state.clone(),
        archive_feed: state.clone(),
        events: state.clone(),
        users: users(state.clone()),
        traffic: state.clone(),
        fanout,
        name: "faulty",
    };
    let node = Node::with_backends(config(args), addr, backends, registry, metrics).unwrap();
    (node, listener, faulty, state)
}

#[tokio::test]
async fn unavailable_and_internal_hide_their_details() {
    let (server, faulty, _) = faulty_node(&[]).await;
    let addr = server.addr;

    let mut c = Client::connect(addr, "u", Fmt::Json).await;
    c.ok(json!({"op": "create_room", "room": "r"})).await;

    faulty.mode.store(1, Ordering::SeqCst);
    let e = c
        .err(json!({"op": "publish", "room": "r", "data": 1}))
        .await;
    assert_eq!(e["code"], "unavailable");
    assert!(e["retryAfterMs"].is_u64());
    assert!(!e.to_string().contains("refused"), "no internals: {e}");
    // Readiness follows the backend.
    let node = server.node.clone();
    node.refresh_traffic().await;
    assert_eq!(http(addr, "GET", "/readyz", None, "").await.0, 503);
    assert_eq!(http(addr, "GET", "/healthz", None, "").await.0, 200);

    faulty.mode.store(2, Ordering::SeqCst);
    let e = c.err(json!({"op": "history", "room": "r"})).await;
    assert_eq!(e["code"], "internal");
    assert!(!e.to_string().contains("WRONGTYPE"), "no internals: {e}");
    assert!(
        node.metrics
            .backend_errors
            .with_label_values(&["history"])
            .get()
            >= 1
    );

    faulty.mode.store(0, Ordering::SeqCst);
    c.ok(json!({"op": "publish", "room": "r", "data": 1})).await;
    node.refresh_traffic().await;
    assert_eq!(http(addr, "GET", "/readyz", None, "").await.0, 200);
}

/// An upkeep round stuck on a backend too loaded to answer (here: the room count) does not
/// hold back the heartbeat: the node stays live to its peers, so none of them declares it
/// dead and makes it tell every client to reconnect.
#[tokio::test]
async fn a_stuck_round_does_not_hold_back_the_heartbeat() {
    // Rounds every 200 ms (the tests' default), a node dead after 600 ms without a heartbeat.
    let (_server, faulty, state) = faulty_node(&["--node-ttl", "600ms"]).await;
    assert_eq!(
        state
            .live_nodes(protocol::clock::now_ms())
            .await
            .unwrap()
            .len(),
        1
    );

    faulty.mode.store(SLOW, Ordering::SeqCst);
    // Two and a half node TTLs, every round stuck from the first.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let live = state.live_nodes(protocol::clock::now_ms()).await.unwrap();
        assert_eq!(
            live.len(),
            1,
            "the node's heartbeat lapsed behind a stuck round"
        );
    }
    faulty.mode.store(0, Ordering::SeqCst);
}

/// Nor does a stuck first round, which a node runs before it serves: it clears what an earlier
/// incarnation of its id left behind, and after a crash with 19,000 clients that took 25 s.
/// The node was declared dead by its peers before it served anyone (`make bench`'s restarts).
#[tokio::test]
async fn a_stuck_first_round_does_not_hold_back_the_heartbeat() {
    let (node, listener, faulty, state) = faulty_parts(&["--node-ttl", "600ms"], SLOW).await;
    let serving = tokio::spawn(gateway::serve(node, listener));
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..15 {
        let live = state.live_nodes(protocol::clock::now_ms()).await.unwrap();
        assert_eq!(live.len(), 1, "the heartbeat lapsed behind the first round");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!serving.is_finished(), "the first round was not stuck");
    faulty.mode.store(0, Ordering::SeqCst);
    // The stuck round times out, and the node serves.
    let server = tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .unwrap()
        .unwrap();
    let mut c = Client::connect(server.addr, "u", Fmt::Json).await;
    c.ok(json!({"op": "create_room", "room": "r"})).await;
}

/// A connection whose leave failed at disconnect (the backend did not answer) is taken out of
/// its rooms by the node's reconcile (every 30 traffic intervals: 6 s here): its peers see it
/// leave, and the room's members are the live ones again.
#[tokio::test]
async fn a_leave_that_failed_at_disconnect_is_reconciled() {
    let (server, faulty, _) = faulty_node(&[]).await;
    let mut stays = Client::connect(server.addr, "stays", Fmt::Json).await;
    stays
        .ok(json!({"op": "create_room", "room": "r", "options": {"presence": true}}))
        .await;
    let mut goes = Client::connect(server.addr, "goes", Fmt::Json).await;
    goes.ok(json!({"op": "join", "room": "r"})).await;
    let joined = stays.event("presence").await;
    assert_eq!(joined["action"], "join", "{joined}");

    faulty.mode.store(LEAVES_FAIL, Ordering::SeqCst);
    drop(goes);
    // The leave at disconnect failed: still a member as far as the backend knows.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(members(&mut stays).await, 2);
    faulty.mode.store(0, Ordering::SeqCst);

    // Judged at the second reconcile after it connected (the first only sets the floor).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while members(&mut stays).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gone connection is still a member"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let left = stays.event("presence").await;
    assert_eq!(left["action"], "leave", "{left}");
    assert_eq!(left["user"], "goes", "{left}");
}

/// How many members room `r` has, by its presence.
async fn members(c: &mut Client) -> usize {
    let p = c.ok(json!({"op": "presence", "room": "r"})).await;
    p["members"].as_array().map_or(0, Vec::len)
}

/// Disconnects' backend work runs a bounded number at a time (`Node::departure`): a place
/// frees up for the next one as soon as one is done, and one that finds no place within the
/// command timeout (every place held by work waiting on a dead backend) goes ahead without.
#[tokio::test]
async fn disconnects_wait_for_a_place_but_not_past_the_command_timeout() {
    let (node, _listener, _, _) = faulty_parts(&["--redis-command-timeout", "300ms"], 0).await;
    let mut held = Vec::new();
    while let Ok(Some(place)) =
        tokio::time::timeout(Duration::from_millis(50), node.departure()).await
    {
        held.push(place);
        assert!(held.len() <= 10_000, "no bound on the places");
    }
    assert!(held.len() >= 64, "only {} places", held.len());
    // All taken: the next one waits, and gets a place as soon as one is let go.
    let waiting = {
        let node = node.clone();
        tokio::spawn(async move { node.departure().await.is_some() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());
    held.pop();
    assert!(waiting.await.unwrap(), "a freed place was not handed on");
    // The waiter is done: its place taken again, all are held.
    held.push(node.departure().await.unwrap());
    // None frees up: after the command timeout it goes ahead without one.
    let started = tokio::time::Instant::now();
    assert!(node.departure().await.is_none());
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// A user registry entry's removal at disconnect takes one of those places too: with all but
/// two held, ten clients that leave at once have at most two removals in flight, and all ten
/// are removed.
#[tokio::test]
async fn user_entry_removals_wait_for_a_place() {
    let most = Arc::new(AtomicUsize::new(0));
    let counted = most.clone();
    let (node, listener, _, state) =
        faulty_parts_with(&["--redis-command-timeout", "5s"], 0, move |state| {
            Arc::new(SlowRemovals {
                state,
                now: AtomicUsize::new(0),
                most: counted,
            })
        })
        .await;
    let server = gateway::serve(node.clone(), listener).await;
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(Client::connect(server.addr, &format!("u{i}"), Fmt::Json).await);
    }
    let mut held = Vec::new();
    while let Ok(Some(place)) =
        tokio::time::timeout(Duration::from_millis(50), node.departure()).await
    {
        held.push(place);
    }
    held.truncate(held.len() - 2);
    drop(clients);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for i in 0..10 {
        while !state.user_conns(&format!("u{i}")).await.unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "u{i} never removed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} removals at once with two places free");
    assert!(most >= 1);
}

/// The embedded user registry, with removals that take 200 ms and count how many run at once.
struct SlowRemovals {
    state: Arc<MemoryState>,
    now: AtomicUsize,
    most: Arc<AtomicUsize>,
}

#[async_trait]
impl UserRegistry for SlowRemovals {
    async fn add_user_conn(
        &self,
        user: &str,
        conn: &UserConn,
        max: u64,
    ) -> Result<UserAdmission, StateError> {
        self.state.add_user_conn(user, conn, max).await
    }

    async fn remove_user_conn(
        &self,
        user: &str,
        node: &str,
        conn_id: &str,
    ) -> Result<bool, StateError> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.state.remove_user_conn(user, node, conn_id).await
    }

    async fn user_conns(&self, user: &str) -> Result<Vec<UserConn>, StateError> {
        self.state.user_conns(user).await
    }

    async fn node_user_conns(&self, node: &str) -> Result<Vec<(String, String)>, StateError> {
        self.state.node_user_conns(node).await
    }

    async fn remove_node_users(
        &self,
        node: &str,
        keep_prefix: Option<&str>,
    ) -> Result<Vec<RemovedUserConn>, StateError> {
        self.state.remove_node_users(node, keep_prefix).await
    }
}
