//! Idempotent publish retries (`msgId`) against real processes: a retry with the same key
//! after the gateway that acknowledged the first attempt was killed, and after the room's
//! shard failed over, is answered `duplicate` with the first offset and is delivered once.
//! On the failover cluster (`make test` starts it and runs these one at a time).

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;
use tokio::time::Instant;

const VAR: &str = "ROOMCAST_TEST_FAILOVER_CLUSTER";

/// How long a member is watched after a retry for a second delivery.
const AFTER_RETRY: Duration = Duration::from_millis(1500);

/// Every mode is run: without `--durable-publish` the store's script announces the message;
/// with it the node does after the replica's WAIT (and must not announce a duplicate).
const MODES: [&[&str]; 2] = [&[], &["--durable-publish"]];

/// `cluster nodes` as seen by the first node, split into fields.
fn cluster_nodes() -> (String, Vec<Vec<String>>) {
    let nodes = redis_cli(base_port(), &["cluster", "nodes"]);
    let lines = nodes
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.len() >= 8)
        .collect();
    (nodes, lines)
}

/// The id and port of the primary that serves `key`'s slot right now, if any.
fn primary_of(key: &str) -> Option<(String, u16)> {
    let slot: u16 = redis_cli(base_port(), &["cluster", "keyslot", key])
        .trim()
        .parse()
        .unwrap();
    let (_, lines) = cluster_nodes();
    lines
        .iter()
        .filter(|f| f[2].contains("master") && !f[2].contains("fail"))
        .find(|f| {
            f[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
            })
        })
        .map(|f| (f[0].clone(), port(&f[1])))
}

/// The (primary, replica) ports that serve `key`'s slot, on a settled cluster.
fn shard_of(key: &str) -> (u16, u16) {
    let (nodes, lines) = cluster_nodes();
    let (id, primary) = primary_of(key).unwrap_or_else(|| panic!("no primary for {key}:\n{nodes}"));
    let replica = lines
        .iter()
        .find(|f| f[3] == id && !f[2].contains("fail"))
        .map(|f| port(&f[1]))
        .unwrap_or_else(|| panic!("no replica of :{primary}:\n{nodes}"));
    (primary, replica)
}

/// A graceful `CLUSTER FAILOVER` of the room's shard: waits until the replica is the primary
/// and the cluster is healthy and fully replicated again (the old primary is its replica).
async fn fail_over(room: &str) {
    let key = format!("rc:{{r:{room}}}:m");
    let (primary, replica) = shard_of(&key);
    let out = redis_cli(replica, &["cluster", "failover"]);
    assert!(out.contains("OK"), "CLUSTER FAILOVER on :{replica}: {out}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while primary_of(&key).map(|p| p.1) != Some(replica) {
        assert!(
            Instant::now() < deadline,
            ":{replica} never took over from :{primary}:\n{}",
            redis_cli(base_port(), &["cluster", "nodes"])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster_settled().await;
    eprintln!("room {room}: shard failed over from :{primary} to :{replica}");
}

/// Every `message` event `c` receives within `within` (its backlog's first). Waits in short
/// steps: `Client::recv` gives up (panics) after 5 s of silence.
async fn messages_within(c: &mut Client, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return out;
        }
        let step = left.min(Duration::from_millis(500));
        if let Ok(m) = tokio::time::timeout(step, c.event("message")).await {
            out.push(m);
        }
    }
}

/// `message` events until one at `offset` arrives (within 10 s), all of them.
async fn messages_until(c: &mut Client, offset: u64, who: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out: Vec<Value> = Vec::new();
    while !out.iter().any(|m| m["offset"] == json!(offset)) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{who} never received offset {offset}; got {out:?}"
        );
        let step = left.min(Duration::from_millis(500));
        if let Ok(m) = tokio::time::timeout(step, c.event("message")).await {
            out.push(m);
        }
    }
    out
}

/// A publish with `msgId`, retried with the same key while the answer is `unavailable` or
/// `timeout` (what the protocol tells a client to do), for at most 15 s. The `ok` body.
async fn publish_retrying(c: &mut Client, room: &str, data: &Value, msg_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = c
            .request(json!({"op": "publish", "room": room, "data": data, "msgId": msg_id}))
            .await;
        if let Some(ok) = reply.get("ok") {
            return ok.clone();
        }
        let code = reply["error"]["code"].as_str().unwrap_or("?");
        assert!(
            matches!(code, "unavailable" | "timeout"),
            "publish with msgId {msg_id} failed: {reply}"
        );
        assert!(
            Instant::now() < deadline,
            "publish with msgId {msg_id} still failing after 15 s: {reply}"
        );
        eprintln!("publish with msgId {msg_id}: {reply}; retrying with the same key");
        let wait = reply["error"]["retryAfterMs"]
            .as_u64()
            .unwrap_or(200)
            .min(1000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// Two gateways on the failover cluster with `mode`; a room created by a publisher (a user
/// of its own) on gateway 0, a member on gateway 1, and two plain publishes the member has
/// received. Returns the gateways, the publisher, its user, the member, the room and the
/// room's epoch.
async fn room_on_two_gateways(
    prefix: &str,
    mode: &[&str],
) -> ([Gateway; 2], Client, String, Client, String, String) {
    cluster_settled().await;
    let gateways: [Gateway; 2] = cluster_gateways(VAR, prefix, mode).await;
    let room = unique("retry");
    let user = unique("retrier");
    let mut publisher = Client::connect(gateways[0].addr, &user, Fmt::Json).await;
    let created = publisher
        .ok(json!({"op": "create_room", "room": room}))
        .await;
    assert_eq!(created["offset"], 0, "{created}");
    let mut member = Client::connect(gateways[1].addr, &unique("member"), Fmt::Json).await;
    member.ok(json!({"op": "join", "room": room})).await;
    for i in 1..=2u64 {
        let ok = publisher
            .ok(json!({"op": "publish", "room": room, "data": format!("plain-{i}")}))
            .await;
        assert_eq!(ok["offset"], json!(i), "{ok}");
    }
    let got = messages_until(&mut member, 2, "the member").await;
    let offsets: Vec<&Value> = got.iter().map(|m| &m["offset"]).collect();
    assert_eq!(offsets, [&json!(1), &json!(2)], "{got:?}");
    let epoch = got[0]["epoch"].as_str().unwrap().to_string();
    (gateways, publisher, user, member, room, epoch)
}

/// The first publish with `msgId` on a healthy cluster: acknowledged at offset 3, not a
/// duplicate.
async fn first_attempt(publisher: &mut Client, room: &str, data: &Value, msg_id: &str) -> u64 {
    let ok = publisher
        .ok(json!({"op": "publish", "room": room, "data": data, "msgId": msg_id}))
        .await;
    assert!(ok.get("duplicate").is_none(), "a first attempt: {ok}");
    assert_eq!(ok["offset"], 3, "{ok}");
    3
}

/// What must hold after the retry of `msg_id` was answered `duplicate`: the member, which
/// has already been given `seen` (its messages since offset 3 was sequenced), receives
/// nothing more within [`AFTER_RETRY`], and got `data` exactly once, at `offset`; history
/// holds it once, at `offset`; a new key is sequenced at `offset + 1`, without a hole, in
/// the same epoch.
#[allow(clippy::too_many_arguments)]
async fn delivered_once(
    mode: &[&str],
    publisher: &mut Client,
    member: &mut Client,
    mut seen: Vec<Value>,
    room: &str,
    epoch: &str,
    data: &Value,
    offset: u64,
) {
    let late = messages_within(member, AFTER_RETRY).await;
    assert!(
        late.is_empty(),
        "{mode:?}: the member received more after the duplicate retry: {late:?}"
    );
    seen.extend(late);
    let copies: Vec<&Value> = seen.iter().filter(|m| m["data"] == *data).collect();
    assert_eq!(
        copies.len(),
        1,
        "{mode:?}: the member received {data} {} times: {seen:?}",
        copies.len()
    );
    assert_eq!(
        (copies[0]["offset"].clone(), copies[0]["epoch"].clone()),
        (json!(offset), json!(epoch)),
        "{mode:?}: {}",
        copies[0]
    );

    let history = publisher.ok(json!({"op": "history", "room": room})).await;
    let messages = history["messages"].as_array().unwrap();
    let offsets: Vec<u64> = messages
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        offsets,
        (1..=offset).collect::<Vec<_>>(),
        "{mode:?}: {history}"
    );
    let in_history: Vec<&Value> = messages.iter().filter(|m| m["data"] == *data).collect();
    assert_eq!(in_history.len(), 1, "{mode:?}: {history}");
    assert_eq!(
        in_history[0]["offset"],
        json!(offset),
        "{mode:?}: {history}"
    );
    assert_eq!(history["epoch"], json!(epoch), "{mode:?}: {history}");

    // A new key: the next offset, delivered once.
    let next = json!(unique("next"));
    let ok = publish_retrying(publisher, room, &next, &unique("k")).await;
    assert!(ok.get("duplicate").is_none(), "{mode:?}: a new key: {ok}");
    assert_eq!(
        ok["offset"],
        json!(offset + 1),
        "{mode:?}: a hole or a reuse: {ok}"
    );
    let got = messages_until(member, offset + 1, "the member").await;
    assert_eq!(got.len(), 1, "{mode:?}: {got:?}");
    assert_eq!(
        (got[0]["data"].clone(), got[0]["epoch"].clone()),
        (next, json!(epoch)),
        "{mode:?}: {}",
        got[0]
    );
}

/// The gateway that acknowledged a publish is killed (kill -9); the client reconnects to
/// another gateway, joins again and retries with the same `msgId`.
#[tokio::test]
async fn serial_retry_after_a_killed_gateway_is_delivered_once() {
    for mode in MODES {
        let t0 = Instant::now();
        let ([mut a, b], mut publisher, user, mut member, room, epoch) =
            room_on_two_gateways("rk", mode).await;
        let msg_id = unique("k");
        let data = json!({"text": "once", "key": msg_id});
        let offset = first_attempt(&mut publisher, &room, &data, &msg_id).await;
        // The gateway dies right after it acknowledged: the client retries elsewhere.
        a.kill9();
        drop(publisher);
        let seen = messages_until(&mut member, offset, "the member").await;

        let mut publisher = Client::connect(b.addr, &user, Fmt::Json).await;
        let joined = publisher.ok(json!({"op": "join", "room": room})).await;
        assert_eq!(
            (joined["offset"].clone(), joined["epoch"].clone()),
            (json!(offset), json!(epoch)),
            "{mode:?}: {joined}"
        );
        let retry = publish_retrying(&mut publisher, &room, &data, &msg_id).await;
        assert_eq!(
            retry,
            json!({"offset": offset, "epoch": epoch, "duplicate": true}),
            "{mode:?}: the retry after the kill"
        );
        delivered_once(
            mode,
            &mut publisher,
            &mut member,
            seen,
            &room,
            &epoch,
            &data,
            offset,
        )
        .await;
        drop(b);
        eprintln!(
            "{mode:?}: retry after a killed gateway: one delivery, in {:?}",
            t0.elapsed()
        );
    }
}

/// The room's shard fails over (graceful `CLUSTER FAILOVER`) after a publish was
/// acknowledged; the client retries with the same `msgId`, on the same connection and then
/// from another gateway.
#[tokio::test]
async fn serial_retry_after_a_failover_is_delivered_once() {
    for mode in MODES {
        let t0 = Instant::now();
        let ([a, b], mut publisher, user, mut member, room, epoch) =
            room_on_two_gateways("rf", mode).await;
        let msg_id = unique("k");
        let data = json!({"text": "once", "key": msg_id});
        let offset = first_attempt(&mut publisher, &room, &data, &msg_id).await;
        fail_over(&room).await;
        let seen = messages_until(&mut member, offset, "the member").await;

        let retry = publish_retrying(&mut publisher, &room, &data, &msg_id).await;
        let duplicate = json!({"offset": offset, "epoch": epoch, "duplicate": true});
        assert_eq!(retry, duplicate, "{mode:?}: the retry after the failover");
        // The same user from the other gateway, too.
        let mut elsewhere = Client::connect(b.addr, &user, Fmt::Json).await;
        elsewhere.ok(json!({"op": "join", "room": room})).await;
        let again = publish_retrying(&mut elsewhere, &room, &data, &msg_id).await;
        assert_eq!(
            again, duplicate,
            "{mode:?}: the retry from the other gateway"
        );
        delivered_once(
            mode,
            &mut publisher,
            &mut member,
            seen,
            &room,
            &epoch,
            &data,
            offset,
        )
        .await;
        drop((a, b));
        cluster_settled().await;
        eprintln!(
            "{mode:?}: retry after a failover: one delivery, in {:?}",
            t0.elapsed()
        );
    }
}
