//! The conformance suite that every backend must pass, unchanged.
//!
//! Each function takes a backend and a unique `prefix` for its keys, so the suite can run
//! against a shared Redis Cluster without collisions. Timestamps are explicit, so nothing
//! here sleeps: backends must honour the `now_ms` they are given.
//!
//! It panics on the first violation, like any test.

#![allow(clippy::unwrap_used)]

use crate::limits::RateLimits;
use crate::model::{Idempotency, MemberRecord, NodeInfo, Publisher, RoomConfig};
use crate::rooms::RoomStore;
use crate::traffic::TrafficCounters;
use crate::StateError;
use protocol::frame::Since;
use protocol::Data;

fn member(conn: &str, user: &str, node: &str) -> MemberRecord {
    MemberRecord {
        user: user.into(),
        conn_id: conn.into(),
        node: node.into(),
        info: None,
    }
}

fn config(max_members: Option<u32>, history_size: u32) -> RoomConfig {
    RoomConfig {
        max_members,
        history_size,
        ttl_secs: 3600,
    }
}

fn data(n: u64) -> Data {
    Data::from_value(&serde_json::json!({ "n": n })).unwrap()
}

/// Rooms, members, offsets, history and recovery.
pub async fn rooms(store: &dyn RoomStore, prefix: &str) {
    let now = 1_700_000_000_000u64;
    let room = format!("{prefix}room");

    // Only create makes a room.
    let a = member(&format!("{prefix}c1"), "alice", "n1");
    // The connect proxy's `info` travels with a member, and presence shows it.
    let b = MemberRecord {
        info: Some(r#"{"name":"Bob","tier":2}"#.into()),
        ..member(&format!("{prefix}c2"), "bob", "n2")
    };
    assert_eq!(
        store.join(&room, &a, None, now).await.unwrap_err(),
        StateError::NotFound
    );
    let created = store.create(&room, &config(Some(2), 3), now).await.unwrap();
    assert_eq!(created.offset, 0);
    assert!(!created.epoch.is_empty());
    assert_eq!(
        store
            .create(&room, &config(None, 3), now)
            .await
            .unwrap_err(),
        StateError::RoomExists
    );

    // Join, capacity, idempotent re-join.
    let j = store.join(&room, &a, None, now).await.unwrap();
    assert_eq!(
        (j.offset, j.epoch.as_str(), j.members.len()),
        (0, created.epoch.as_str(), 1)
    );
    assert!(!j.already_member);
    assert!(j.occupied, "the first member occupies the room");
    let again = store.join(&room, &a, None, now).await.unwrap();
    assert!(again.already_member && !again.occupied);
    assert!(!store.join(&room, &b, None, now).await.unwrap().occupied);
    let c = member(&format!("{prefix}c3"), "carol", "n1");
    assert_eq!(
        store.join(&room, &c, None, now).await.unwrap_err(),
        StateError::RoomFull
    );
    let members = store.members(&room, Some(&a.conn_id)).await.unwrap();
    assert_eq!(
        members.iter().map(|m| m.user.as_str()).collect::<Vec<_>>(),
        vec!["alice", "bob"]
    );
    assert_eq!(members[0].info, None);
    assert_eq!(
        members[1].info,
        Some(serde_json::json!({"name": "Bob", "tier": 2}))
    );

    // Membership gates publish, presence and history.
    assert_eq!(
        store
            .publish(
                &room,
                Some(Publisher::member(&c.conn_id)),
                "carol",
                data(0),
                None,
                now
            )
            .await
            .unwrap_err(),
        StateError::NotMember
    );
    assert_eq!(
        store.members(&room, Some(&c.conn_id)).await.unwrap_err(),
        StateError::NotMember
    );
    assert_eq!(
        store
            .history(&room, Some(&c.conn_id), 10, None)
            .await
            .unwrap_err(),
        StateError::NotMember
    );

    // Offsets are gapless; history is capped at history_size and newest last.
    for n in 1..=5 {
        let p = store
            .publish(
                &room,
                Some(Publisher::member(&a.conn_id)),
                "alice",
                data(n),
                None,
                now + n,
            )
            .await
            .unwrap()
            .publication;
        assert_eq!(p.offset, n);
        assert_eq!(p.epoch, created.epoch);
        assert_eq!(p.ts, now + n);
    }
    let server = store
        .publish(&room, None, "server", data(6), None, now)
        .await
        .unwrap()
        .publication;
    assert_eq!((server.offset, server.from.as_str()), (6, "server"));
    let (history, epoch) = store
        .history(&room, Some(&b.conn_id), 100, None)
        .await
        .unwrap();
    assert_eq!(epoch, created.epoch);
    assert_eq!(
        history.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    assert_eq!(history[0].data, data(4));
    let (page, _) = store.history(&room, None, 1, Some(6)).await.unwrap();
    assert_eq!(page.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![5]);

    // Recovery: inside the window, at the head, outside it, wrong epoch.
    let since = |offset| Since {
        offset,
        epoch: created.epoch.clone(),
    };
    let j = store.join(&room, &b, Some(&since(4)), now).await.unwrap();
    assert_eq!(j.recovered, Some(true));
    assert_eq!(
        j.missed.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![5, 6]
    );
    let j = store.join(&room, &b, Some(&since(6)), now).await.unwrap();
    assert_eq!((j.recovered, j.missed.len()), (Some(true), 0));
    let j = store.join(&room, &b, Some(&since(1)), now).await.unwrap();
    assert_eq!((j.recovered, j.missed.len()), (Some(false), 0));
    let other = Since {
        offset: 5,
        epoch: "another-epoch".into(),
    };
    let j = store.join(&room, &b, Some(&other), now).await.unwrap();
    assert_eq!((j.recovered, j.missed.len()), (Some(false), 0));

    // Info, leave, count.
    let info = store.info(&room).await.unwrap();
    assert_eq!((info.offset, info.members.len()), (6, 2));
    assert!(store.leave(&room, &b.conn_id, now).await.unwrap());
    assert!(!store.leave(&room, &b.conn_id, now).await.unwrap());
    assert!(!store
        .leave(&format!("{prefix}none"), &b.conn_id, now)
        .await
        .unwrap());
    assert!(store.count().await.unwrap() >= 1);

    // A dead node's members can be swept.
    let d = MemberRecord {
        info: Some(r#"{"n":1}"#.into()),
        ..member(&format!("{prefix}c4"), "dave", &format!("{prefix}dead"))
    };
    store.join(&room, &d, None, now).await.unwrap();
    let swept = store
        .remove_node_members(&format!("{prefix}dead"), &|_| false)
        .await
        .unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(
        (swept[0].room.as_str(), swept[0].member.user.as_str()),
        (room.as_str(), "dave")
    );
    assert!(!swept[0].vacated, "others are still in the room");
    assert_eq!(swept[0].member.node, format!("{prefix}dead"));
    assert_eq!(store.info(&room).await.unwrap().members.len(), 1);

    // A node restarted under the same id sweeps its earlier incarnations' members only.
    let node = format!("{prefix}again");
    let restart = format!("{prefix}restart");
    store.create(&restart, &config(None, 3), now).await.unwrap();
    let old = member(&format!("{node}.inc1.1"), "erin", &node);
    let new = member(&format!("{node}.inc2.1"), "fred", &node);
    store.join(&restart, &old, None, now).await.unwrap();
    store.join(&restart, &new, None, now).await.unwrap();
    let keep = format!("{node}.inc2.");
    let swept = store
        .remove_node_members(&node, &|c| c.starts_with(&keep))
        .await
        .unwrap();
    assert_eq!(
        swept
            .iter()
            .map(|d| d.member.user.as_str())
            .collect::<Vec<_>>(),
        vec!["erin"]
    );
    let users: Vec<String> = store
        .info(&restart)
        .await
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.user)
        .collect();
    assert!(users.contains(&"fred".to_string()) && !users.contains(&"erin".to_string()));
    let out = store.depart(&restart, &new.conn_id, now).await.unwrap();
    assert!(
        out.was_member && out.vacated,
        "the last member out vacates the room"
    );
    store.close(&restart).await.unwrap();

    // A dead node that held a room's last members vacates it, once.
    let lonely = format!("{prefix}lonely");
    let gone = format!("{prefix}gone");
    store.create(&lonely, &config(None, 3), now).await.unwrap();
    for i in 0..2 {
        let m = member(&format!("{gone}.1.{i}"), "gina", &gone);
        store.join(&lonely, &m, None, now).await.unwrap();
    }
    let swept = store.remove_node_members(&gone, &|_| false).await.unwrap();
    assert_eq!(swept.len(), 2);
    assert_eq!(swept.iter().filter(|d| d.vacated).count(), 1);
    let rejoin = member(&format!("{prefix}c9"), "hank", "n1");
    assert!(
        store
            .join(&lonely, &rejoin, None, now)
            .await
            .unwrap()
            .occupied
    );
    let out = store.depart(&lonely, &rejoin.conn_id, now).await.unwrap();
    assert!(out.vacated);
    assert_eq!(
        store.depart(&lonely, &rejoin.conn_id, now).await.unwrap(),
        crate::Departure::default()
    );
    store.close(&lonely).await.unwrap();

    // Retiring an epoch restarts offsets and history, once.
    let (fresh, changed) = store.reset_epoch(&room, &created.epoch).await.unwrap();
    assert!(changed);
    assert_ne!(fresh, created.epoch);
    assert_eq!(
        store.reset_epoch(&room, &created.epoch).await.unwrap(),
        (fresh.clone(), false)
    );
    let p = store
        .publish(&room, None, "server", data(7), None, now)
        .await
        .unwrap()
        .publication;
    assert_eq!((p.offset, p.epoch.as_str()), (1, fresh.as_str()));
    let (h, _) = store.history(&room, None, 100, None).await.unwrap();
    assert_eq!(h.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![1]);

    // Close removes the room and returns its members; re-creating starts a new epoch.
    let former = store.close(&room).await.unwrap();
    assert_eq!(former.len(), 1);
    assert_eq!(store.info(&room).await.unwrap_err(), StateError::NotFound);
    assert_eq!(store.close(&room).await.unwrap_err(), StateError::NotFound);
    let again = store.create(&room, &config(None, 3), now).await.unwrap();
    assert_ne!(again.epoch, created.epoch);
    assert_eq!(again.offset, 0);
    store.close(&room).await.unwrap();

    // Part of `rooms`, so that every backend's suite runs it as it stands.
    ephemeral(store, prefix).await;
}

/// An ephemeral room (`history_size` 0): publishes are not sequenced (offset 0, no epoch),
/// keep no history, ignore idempotency keys, and `since` never recovers; membership still
/// gates `publish`. The store tells which rooms it knows to be ephemeral without I/O.
pub async fn ephemeral(store: &dyn RoomStore, prefix: &str) {
    let now = 1_700_000_000_000u64;
    let room = format!("{prefix}typing");
    let a = member(&format!("{prefix}e1"), "alice", "n1");
    let b = member(&format!("{prefix}e2"), "bob", "n1");
    let c = member(&format!("{prefix}e3"), "carol", "n1");
    let created = store.create(&room, &config(None, 0), now).await.unwrap();
    assert!(created.config.is_ephemeral());
    assert!(store.is_ephemeral(&room), "known from the creation");
    let j = store.join(&room, &a, None, now).await.unwrap();
    assert!(j.ephemeral);
    assert_eq!((j.offset, j.epoch.as_str()), (0, created.epoch.as_str()));
    store.join(&room, &b, None, now).await.unwrap();

    let unsequenced = |p: &protocol::frame::Publication, from: &str| {
        assert!(p.is_ephemeral(), "{p:?}");
        assert_eq!((p.offset, p.epoch.as_str()), (0, ""));
        assert_eq!((p.room.as_str(), p.from.as_str()), (room.as_str(), from));
    };
    // Through `publish` (the server API's path, and a node that has not seen the room yet).
    for n in 1..=3 {
        let p = store
            .publish(
                &room,
                Some(Publisher::member(&a.conn_id)),
                "alice",
                data(n),
                None,
                now + n,
            )
            .await
            .unwrap();
        assert!(!p.duplicate);
        unsequenced(&p.publication, "alice");
        assert_eq!(
            (p.publication.data.clone(), p.publication.ts),
            (data(n), now + n)
        );
    }
    let server = store
        .publish(&room, None, "server", data(4), None, now)
        .await
        .unwrap();
    unsequenced(&server.publication, "server");
    // Idempotency keys do not apply: at most once, and a retry is another message.
    let key = Some(Idempotency {
        key: "alice\nm1",
        window_ms: 60_000,
    });
    for _ in 0..2 {
        let p = store
            .publish(
                &room,
                Some(Publisher::member(&a.conn_id)),
                "alice",
                data(5),
                key,
                now,
            )
            .await
            .unwrap();
        assert!(!p.duplicate, "no key is recorded in an ephemeral room");
        unsequenced(&p.publication, "alice");
    }
    // Membership still gates `publish`.
    assert_eq!(
        store
            .publish(
                &room,
                Some(Publisher::member(&c.conn_id)),
                "carol",
                data(6),
                None,
                now
            )
            .await
            .unwrap_err(),
        StateError::NotMember
    );
    // The gateway's path, for a member it holds.
    let p = store
        .publish_ephemeral(&room, &b.conn_id, "bob", data(7), now)
        .await
        .unwrap();
    unsequenced(&p.publication, "bob");

    // Nothing was sequenced or kept.
    let info = store.info(&room).await.unwrap();
    assert_eq!(
        (info.offset, info.epoch.as_str()),
        (0, created.epoch.as_str())
    );
    let (history, epoch) = store
        .history(&room, Some(&a.conn_id), 100, None)
        .await
        .unwrap();
    assert!(history.is_empty(), "{history:?}");
    assert_eq!(epoch, created.epoch);
    // `since` never recovers, not even from the join point: what was sent meanwhile is gone.
    for offset in [0, 3] {
        let since = Since {
            offset,
            epoch: created.epoch.clone(),
        };
        let j = store.join(&room, &b, Some(&since), now).await.unwrap();
        assert_eq!(
            (j.recovered, j.missed.len(), j.ephemeral),
            (Some(false), 0, true)
        );
    }

    // Another room is not ephemeral; a closed one is forgotten, and its name may come back
    // with history.
    let plain = format!("{prefix}plain");
    store.create(&plain, &config(None, 3), now).await.unwrap();
    assert!(!store.is_ephemeral(&plain));
    assert!(!store.join(&plain, &a, None, now).await.unwrap().ephemeral);
    store.close(&plain).await.unwrap();
    store.close(&room).await.unwrap();
    assert!(!store.is_ephemeral(&room));
    store.create(&room, &config(None, 3), now).await.unwrap();
    assert!(!store.is_ephemeral(&room));
    store.join(&room, &a, None, now).await.unwrap();
    let p = store
        .publish(
            &room,
            Some(Publisher::member(&a.conn_id)),
            "alice",
            data(8),
            None,
            now,
        )
        .await
        .unwrap();
    assert_eq!(p.publication.offset, 1, "sequenced again");
    store.close(&room).await.unwrap();
}

/// Empty rooms expire after their TTL; rooms with members do not. Real time (about 3 s),
/// because Redis expires keys on its own clock.
/// Idempotent publishes: a key repeated within its window gets the first offset (and epoch) and
/// publishes nothing, also after the room moved to a new epoch.
pub async fn idempotency(store: &dyn RoomStore, prefix: &str) {
    let room = format!("{prefix}idem");
    let now = 1_700_000_000_000u64;
    let created = store.create(&room, &config(None, 10), now).await.unwrap();
    let key = |k| {
        Some(Idempotency {
            key: k,
            window_ms: 1_000,
        })
    };
    let first = store
        .publish(&room, None, "server", data(1), key("u\nm1"), now)
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.publication.offset, 1);
    let again = store
        .publish(&room, None, "server", data(1), key("u\nm1"), now + 10)
        .await
        .unwrap();
    assert!(again.duplicate, "a retry within the window is a duplicate");
    assert_eq!(
        (again.publication.offset, again.publication.epoch.as_str()),
        (1, created.epoch.as_str())
    );
    let other = store
        .publish(&room, None, "server", data(2), key("v\nm1"), now + 20)
        .await
        .unwrap();
    assert_eq!((other.publication.offset, other.duplicate), (2, false));
    let (history, _) = store.history(&room, None, 100, None).await.unwrap();
    assert_eq!(history.len(), 2, "the duplicate was not published");

    // A new epoch does not forget the keys: the first publish was delivered in the old one.
    let (fresh, _) = store.reset_epoch(&room, &created.epoch).await.unwrap();
    let after_reset = store
        .publish(&room, None, "server", data(1), key("u\nm1"), now + 30)
        .await
        .unwrap();
    assert!(after_reset.duplicate);
    assert_eq!(
        (
            after_reset.publication.offset,
            after_reset.publication.epoch.as_str()
        ),
        (1, created.epoch.as_str())
    );
    let new_key = store
        .publish(&room, None, "server", data(3), key("u\nm3"), now + 40)
        .await
        .unwrap();
    assert_eq!(
        (
            new_key.publication.offset,
            new_key.publication.epoch,
            new_key.duplicate
        ),
        (1, fresh, false)
    );
    store.close(&room).await.unwrap();
}

pub async fn expiry(store: &dyn RoomStore, prefix: &str) {
    let now = protocol::clock::now_ms;
    let room = format!("{prefix}ttl");
    let cfg = RoomConfig {
        max_members: None,
        history_size: 10,
        ttl_secs: 1,
    };
    store.create(&room, &cfg, now()).await.unwrap();
    let a = member(&format!("{prefix}t1"), "alice", "n1");
    store.join(&room, &a, None, now()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let expired = store.maintain(now()).await.unwrap();
    assert!(
        !expired.contains(&room),
        "a room with members must not expire"
    );
    assert!(
        store.info(&room).await.is_ok(),
        "a room with members must not expire"
    );
    store.leave(&room, &a.conn_id, now()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    // Reported once (the webhooks' room_closed): by the first maintenance that sees it gone.
    let mut reports = store.maintain(now()).await.unwrap();
    reports.extend(store.maintain(now()).await.unwrap());
    assert_eq!(reports.iter().filter(|r| **r == room).count(), 1);
    assert_eq!(store.info(&room).await.unwrap_err(), StateError::NotFound);
}

/// Sliding windows and token buckets.
pub async fn limits(limits: &dyn RateLimits, prefix: &str) {
    let now = 1_700_000_000_000u64;
    let key = format!("{prefix}create:alice");
    for i in 0..5 {
        assert!(
            limits
                .window_acquire(&key, 5, 60_000, now + i)
                .await
                .unwrap()
                .allowed
        );
    }
    let refused = limits
        .window_acquire(&key, 5, 60_000, now + 10)
        .await
        .unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.retry_after_ms, 60_000 - 10);
    // A refused attempt was not recorded: one minute after the first, one slot frees.
    assert!(
        limits
            .window_acquire(&key, 5, 60_000, now + 60_000)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !limits
            .window_acquire(&key, 5, 60_000, now + 60_000)
            .await
            .unwrap()
            .allowed
    );
    // Release gives an acquisition back.
    limits.window_release(&key, now + 60_000).await.unwrap();
    assert!(
        limits
            .window_acquire(&key, 5, 60_000, now + 60_001)
            .await
            .unwrap()
            .allowed
    );
    // Keys are independent.
    assert!(
        limits
            .window_acquire(&format!("{prefix}create:bob"), 5, 60_000, now + 10)
            .await
            .unwrap()
            .allowed
    );

    let bucket = format!("{prefix}publish:alice");
    for _ in 0..4 {
        assert!(
            limits
                .bucket_take(&bucket, 2.0, 4, now)
                .await
                .unwrap()
                .allowed
        );
    }
    let d = limits.bucket_take(&bucket, 2.0, 4, now).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ms, 500);
    assert!(
        limits
            .bucket_take(&bucket, 2.0, 4, now + 500)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !limits
            .bucket_take(&bucket, 2.0, 4, now + 500)
            .await
            .unwrap()
            .allowed
    );
    // Refill is capped at the burst.
    for _ in 0..4 {
        assert!(
            limits
                .bucket_take(&bucket, 2.0, 4, now + 100_000)
                .await
                .unwrap()
                .allowed
        );
    }
    assert!(
        !limits
            .bucket_take(&bucket, 2.0, 4, now + 100_000)
            .await
            .unwrap()
            .allowed
    );

    // Several at once (a node's lease): as many as the bucket holds, up to the number asked.
    let bucket = format!("{prefix}publish:carol");
    let g = limits
        .bucket_take_n(&bucket, 2.0, 10, 4, now)
        .await
        .unwrap();
    assert_eq!((g.granted, g.retry_after_ms), (4, 0));
    let g = limits
        .bucket_take_n(&bucket, 2.0, 10, 8, now)
        .await
        .unwrap();
    assert_eq!(g.granted, 6, "what is left of the burst");
    let g = limits
        .bucket_take_n(&bucket, 2.0, 10, 8, now)
        .await
        .unwrap();
    assert_eq!((g.granted, g.retry_after_ms), (0, 500));
    let g = limits
        .bucket_take_n(&bucket, 2.0, 10, 8, now + 1_500)
        .await
        .unwrap();
    assert_eq!(g.granted, 3, "refilled at 2 a second, whole tokens only");
}

/// Creation buckets and the node registry. Counts are compared as deltas, because a shared
/// backend may hold other tests' creations.
pub async fn traffic(traffic: &dyn TrafficCounters, prefix: &str) {
    let now = 4_000_000_000_000u64 + fastrand::u64(0..1_000_000) * 1000;
    let sum = |b: Vec<(u64, u64)>| b.iter().map(|(_, c)| c).sum::<u64>();
    let before = sum(traffic.creation_buckets(now + 2_500, 60_000).await.unwrap());
    traffic.record_creation(now).await.unwrap();
    traffic.record_creation(now + 10).await.unwrap();
    traffic.record_creation(now + 2_000).await.unwrap();
    let buckets = traffic.creation_buckets(now + 2_500, 60_000).await.unwrap();
    assert_eq!(sum(buckets.clone()) - before, 3);
    assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0), "oldest first");
    let later = sum(traffic
        .creation_buckets(now + 61_500, 60_000)
        .await
        .unwrap());
    assert_eq!(
        later, 1,
        "only the creation at +2 s is inside the window at +61.5 s"
    );

    let node = NodeInfo {
        id: format!("{prefix}node"),
        addr: "127.0.0.1:1".into(),
        connections: 7,
        started_at: 1,
    };
    let t = 1_700_000_000_000u64;
    assert_eq!(
        traffic.heartbeat(&node, t, 3_000).await.unwrap(),
        None,
        "never claimed"
    );
    let live = traffic.live_nodes(t + 1_000).await.unwrap();
    assert!(live.iter().any(|n| n == &node));
    let live = traffic.live_nodes(t + 4_000).await.unwrap();
    assert!(!live.iter().any(|n| n.id == node.id));
    // A dead node is claimed once, by one caller.
    assert!(!traffic
        .claim_dead_nodes(t + 1_000)
        .await
        .unwrap()
        .contains(&node.id));
    assert!(traffic
        .claim_dead_nodes(t + 4_000)
        .await
        .unwrap()
        .contains(&node.id));
    assert!(!traffic
        .claim_dead_nodes(t + 5_000)
        .await
        .unwrap()
        .contains(&node.id));
    // A claimed node learns when from its next heartbeats (read, not consumed).
    for _ in 0..2 {
        assert_eq!(
            traffic.heartbeat(&node, t + 6_000, 3_000).await.unwrap(),
            Some(t + 4_000)
        );
    }
}

/// Saved sessions: a blob comes back once, and not after its expiry (real time: the expiry
/// is the backend's own clock).
pub async fn sessions(store: &dyn crate::SessionStore, prefix: &str) {
    let key = format!("{prefix}pid-{}", fastrand::u64(..));
    assert_eq!(store.take_session(&key).await.unwrap(), None);
    store.save_session(&key, "{\"a\":1}", 10_000).await.unwrap();
    assert_eq!(
        store.take_session(&key).await.unwrap().as_deref(),
        Some("{\"a\":1}")
    );
    assert_eq!(store.take_session(&key).await.unwrap(), None, "single use");
    store.save_session(&key, "old", 10_000).await.unwrap();
    store.save_session(&key, "new", 10_000).await.unwrap();
    assert_eq!(
        store.take_session(&key).await.unwrap().as_deref(),
        Some("new")
    );
    store.save_session(&key, "short", 50).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    assert_eq!(store.take_session(&key).await.unwrap(), None, "expired");
}

/// The archiver's feed: dirty marks, reads after the cursor, the cursor's advance, leases.
/// Other tests may share the backend (and its dirty-room shards), so only this prefix's rooms
/// are looked at. Leases lapse in real time on Redis, so their last check sleeps briefly.
pub async fn archive_feed<S>(store: &S, prefix: &str)
where
    S: RoomStore + crate::ArchiveFeed + ?Sized,
{
    use crate::archive_feed::archive_shard;
    let now = 1_700_000_000_000u64;
    let dirty =
        |rooms: Vec<crate::DirtyRoom>, room: &str| rooms.iter().filter(|d| d.room == room).count();
    store.enable_archiving(crate::ARCHIVE_BACKLOG_CAP);
    let room = format!("{prefix}arch");
    let shard = archive_shard(&room);
    let created = store.create(&room, &config(None, 3), now).await.unwrap();
    assert_eq!(
        dirty(store.dirty_rooms(shard, 10_000).await.unwrap(), &room),
        0
    );
    for n in 1..=5 {
        store
            .publish(&room, None, "alice", data(n), None, now + n)
            .await
            .unwrap();
    }

    // Marked once, at the first unarchived message's time.
    let marks = store.dirty_rooms(shard, 10_000).await.unwrap();
    assert_eq!(dirty(marks.clone(), &room), 1);
    let mark = marks.iter().find(|d| d.room == room).unwrap();
    assert_eq!(mark.since_ms, now + 1);

    // `history` answers the window; the archiver reads past it, nothing was trimmed.
    let (window, _) = store.history(&room, None, 100, None).await.unwrap();
    assert_eq!(
        window.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    let read = store.read_unarchived(&room, 2).await.unwrap().unwrap();
    assert_eq!(
        (read.epoch.as_str(), read.cursor, read.offset),
        (created.epoch.as_str(), 0, 5)
    );
    assert_eq!(
        read.messages.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(read.messages[0].data, data(1));
    assert_eq!(
        (read.messages[0].from.as_str(), read.messages[0].ts),
        ("alice", now + 1)
    );

    // A partial advance leaves the room dirty; the rest, then clean.
    assert!(store
        .advance_cursor(&room, &created.epoch, 2, mark.since_ms)
        .await
        .unwrap());
    assert_eq!(
        dirty(store.dirty_rooms(shard, 10_000).await.unwrap(), &room),
        1
    );
    let read = store.read_unarchived(&room, 100).await.unwrap().unwrap();
    assert_eq!(read.cursor, 2);
    assert_eq!(
        read.messages.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert!(!store
        .advance_cursor(&room, &created.epoch, 5, mark.since_ms)
        .await
        .unwrap());
    assert_eq!(
        dirty(store.dirty_rooms(shard, 10_000).await.unwrap(), &room),
        0
    );

    // The cursor never goes back, and ignores another epoch's advance.
    store
        .advance_cursor(&room, &created.epoch, 3, now)
        .await
        .unwrap();
    store
        .advance_cursor(&room, "other-epoch", 9, now)
        .await
        .unwrap();
    let read = store.read_unarchived(&room, 100).await.unwrap().unwrap();
    assert_eq!((read.cursor, read.messages.len()), (5, 0));

    // Marked again by the next publish, which trims the history to the window again.
    store
        .publish(&room, None, "bob", data(6), None, now + 100)
        .await
        .unwrap();
    let marks = store.dirty_rooms(shard, 10_000).await.unwrap();
    assert_eq!(
        marks.iter().find(|d| d.room == room).map(|d| d.since_ms),
        Some(now + 100)
    );
    let read = store.read_unarchived(&room, 100).await.unwrap().unwrap();
    assert_eq!(
        read.messages.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![6]
    );
    let (window, _) = store.history(&room, None, 100, None).await.unwrap();
    assert_eq!(
        window.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );

    // A new epoch starts with its cursor at 0.
    let (epoch, changed) = store.reset_epoch(&room, &created.epoch).await.unwrap();
    assert!(changed);
    let read = store.read_unarchived(&room, 100).await.unwrap().unwrap();
    assert_eq!(
        (read.epoch.as_str(), read.cursor, read.offset),
        (epoch.as_str(), 0, 0)
    );
    assert!(!store.advance_cursor(&room, &epoch, 0, now).await.unwrap());

    // A room that is gone reads as `None` and loses its mark.
    let gone = format!("{prefix}gone");
    store.create(&gone, &config(None, 3), now).await.unwrap();
    store
        .publish(&gone, None, "alice", data(1), None, now)
        .await
        .unwrap();
    store.close(&gone).await.unwrap();
    assert_eq!(store.read_unarchived(&gone, 10).await.unwrap(), None);
    let gone_shard = archive_shard(&gone);
    assert_eq!(
        dirty(store.dirty_rooms(gone_shard, 10_000).await.unwrap(), &gone),
        0
    );

    // Ephemeral rooms keep nothing, so they are never marked.
    let eph = format!("{prefix}eph");
    store.create(&eph, &config(None, 0), now).await.unwrap();
    store
        .publish(&eph, None, "alice", data(1), None, now)
        .await
        .unwrap();
    let eph_shard = archive_shard(&eph);
    assert_eq!(
        dirty(store.dirty_rooms(eph_shard, 10_000).await.unwrap(), &eph),
        0
    );

    // Leases: one holder at a time, renewed by it, released only by it.
    let lease = format!("{prefix}lease");
    assert!(store.lease(&lease, "a", 10_000, now).await.unwrap());
    assert!(!store.lease(&lease, "b", 10_000, now).await.unwrap());
    assert!(store.lease(&lease, "a", 10_000, now).await.unwrap());
    store.release_lease(&lease, "b").await.unwrap();
    assert!(!store.lease(&lease, "b", 10_000, now).await.unwrap());
    assert_eq!(
        store.lease_holder(&lease, now).await.unwrap().as_deref(),
        Some("a")
    );
    store.release_lease(&lease, "a").await.unwrap();
    assert_eq!(store.lease_holder(&lease, now).await.unwrap(), None);
    assert!(store.lease(&lease, "b", 10_000, now).await.unwrap());
    // A lapsed lease is free (a killed holder's shards move).
    let short = format!("{prefix}short");
    let real = protocol::clock::now_ms();
    assert!(store.lease(&short, "a", 100, real).await.unwrap());
    assert!(!store.lease(&short, "b", 100, real + 10).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    assert_eq!(store.lease_holder(&short, real + 250).await.unwrap(), None);
    assert!(store.lease(&short, "b", 100, real + 250).await.unwrap());
}

/// Sleep and wake: while the archive is on, a room empty past its TTL stays until the sweep
/// removes it (saved first), only if it is still as read; a woken room has its epoch, its
/// offset going on, its window refilled and its cursor at the offset; two wakes at once make
/// one room.
pub async fn sleep<S>(store: &S, prefix: &str)
where
    S: RoomStore + crate::ArchiveFeed + ?Sized,
{
    use crate::archive_feed::archive_shard;
    use crate::model::Wake;
    let now = 1_700_000_000_000u64;
    store.enable_archiving(crate::ARCHIVE_BACKLOG_CAP);
    let room = format!("{prefix}sleepy");
    let shard = archive_shard(&room);
    let due = |rooms: Vec<String>, room: &str| rooms.iter().any(|r| r == room);
    let cfg = RoomConfig {
        max_members: Some(5),
        history_size: 3,
        ttl_secs: 60,
    };
    let created = store.create(&room, &cfg, now).await.unwrap();
    let a = member(&format!("{prefix}s1"), "alice", "n1");
    store.join(&room, &a, None, now).await.unwrap();
    for n in 1..=5 {
        store
            .publish(&room, None, "alice", data(n), None, now + n)
            .await
            .unwrap();
    }
    let left_at = now + 10;
    store.leave(&room, &a.conn_id, left_at).await.unwrap();
    let expiry = left_at + 60_000;
    assert!(!due(
        store
            .expired_rooms(shard, expiry - 1, 10_000)
            .await
            .unwrap(),
        &room
    ));
    assert!(due(
        store.expired_rooms(shard, expiry, 10_000).await.unwrap(),
        &room
    ));
    // Past its TTL it is still there: it leaves only through the sweep, saved first.
    store.maintain(expiry + 1).await.unwrap();
    let state = store.sleep_state(&room).await.unwrap().unwrap();
    assert_eq!(
        (
            state.epoch.as_str(),
            state.offset,
            state.archived,
            state.members
        ),
        (created.epoch.as_str(), 5, 0, 0)
    );
    assert_eq!((state.config.clone(), state.created_at), (cfg.clone(), now));
    let messages = store
        .read_unarchived(&room, 100)
        .await
        .unwrap()
        .unwrap()
        .messages;
    store
        .advance_cursor(&room, &created.epoch, 5, now)
        .await
        .unwrap();
    assert_eq!(store.sleep_state(&room).await.unwrap().unwrap().archived, 5);

    // Not as read (another offset, another epoch): it stays.
    let t = expiry + 1;
    assert!(!store
        .forget_slept(&room, &created.epoch, 4, t)
        .await
        .unwrap());
    assert!(!store.forget_slept(&room, "other", 5, t).await.unwrap());
    assert!(store.info(&room).await.is_ok());
    // As read: gone, out of the index, and gone again is fine.
    assert!(store
        .forget_slept(&room, &created.epoch, 5, t)
        .await
        .unwrap());
    assert_eq!(store.info(&room).await.unwrap_err(), StateError::NotFound);
    assert_eq!(store.sleep_state(&room).await.unwrap(), None);
    assert!(!due(
        store.expired_rooms(shard, t, 10_000).await.unwrap(),
        &room
    ));
    assert!(store
        .forget_slept(&room, &created.epoch, 5, t)
        .await
        .unwrap());
    assert_eq!(
        store.join(&room, &a, None, t).await.unwrap_err(),
        StateError::NotFound
    );

    // Wake: same epoch, the offset goes on, the window refilled, the cursor at the offset.
    let wake = Wake {
        epoch: created.epoch.clone(),
        offset: 5,
        config: cfg.clone(),
        created_at: now,
        history: messages,
    };
    let woken = store.wake(&room, &wake, t).await.unwrap();
    assert_eq!(
        (woken.epoch.as_str(), woken.offset, woken.created_at),
        (created.epoch.as_str(), 5, now)
    );
    assert_eq!(woken.config, cfg);
    assert_eq!(
        store.wake(&room, &wake, t).await.unwrap_err(),
        StateError::RoomExists
    );
    assert_eq!(
        store.create(&room, &cfg, t).await.unwrap_err(),
        StateError::RoomExists
    );
    let (window, epoch) = store.history(&room, None, 100, None).await.unwrap();
    assert_eq!(epoch, created.epoch);
    assert_eq!(
        window.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!(window[2].data, data(5));
    let since = Since {
        offset: 3,
        epoch: created.epoch.clone(),
    };
    let j = store.join(&room, &a, Some(&since), t).await.unwrap();
    assert_eq!(j.recovered, Some(true));
    assert_eq!(
        j.missed.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![4, 5]
    );
    // An occupied room is never forgotten.
    assert!(!store
        .forget_slept(&room, &created.epoch, 5, t + 10_000_000)
        .await
        .unwrap());
    let p = store
        .publish(&room, None, "alice", data(6), None, t)
        .await
        .unwrap();
    assert_eq!(
        (p.publication.offset, p.publication.epoch.as_str()),
        (6, created.epoch.as_str())
    );
    let read = store.read_unarchived(&room, 100).await.unwrap().unwrap();
    assert_eq!(read.cursor, 5);
    assert_eq!(
        read.messages.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![6]
    );

    // Two wakes at once: one room, one epoch.
    let twin = format!("{prefix}twin");
    let wake = Wake {
        epoch: "e-twin".into(),
        offset: 7,
        config: cfg.clone(),
        created_at: now,
        history: Vec::new(),
    };
    let (x, y) = tokio::join!(store.wake(&twin, &wake, t), store.wake(&twin, &wake, t));
    assert_eq!(
        [x.is_ok(), y.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{x:?} {y:?}"
    );
    let info = store.info(&twin).await.unwrap();
    assert_eq!((info.epoch.as_str(), info.offset), ("e-twin", 7));
    let p = store
        .publish(&twin, None, "bob", data(8), None, t)
        .await
        .unwrap();
    assert_eq!(p.publication.offset, 8);
}

/// The user registry: a cap over every node's connections, and a dead node's connections no
/// longer counted once its heartbeat lapsed and it was reaped (as the claimer of a dead node
/// does: [`TrafficCounters::live_nodes`] no longer lists it, then
/// [`crate::UserRegistry::remove_node_users`]).
pub async fn users(
    registry: &dyn crate::UserRegistry,
    traffic: &dyn TrafficCounters,
    prefix: &str,
) {
    use crate::users::{UserAdmission, UserConn};
    let t = 1_650_000_000_000u64;
    let user = format!("{prefix}alice");
    let (a, b) = (format!("{prefix}node-a"), format!("{prefix}node-b"));
    let conn = |node: &str, n: u32| UserConn {
        conn_id: format!("{node}.i.{n}"),
        node: node.to_string(),
        transport: if n.is_multiple_of(2) {
            "native"
        } else {
            "socketio"
        }
        .into(),
        since_ms: t + u64::from(n),
    };
    assert!(registry.user_conns(&user).await.unwrap().is_empty());
    assert_eq!(
        registry
            .add_user_conn(&user, &conn(&a, 1), 3)
            .await
            .unwrap(),
        UserAdmission::Admitted { first: true }
    );
    assert_eq!(
        registry
            .add_user_conn(&user, &conn(&a, 2), 3)
            .await
            .unwrap(),
        UserAdmission::Admitted { first: false }
    );
    assert_eq!(
        registry
            .add_user_conn(&user, &conn(&b, 3), 3)
            .await
            .unwrap(),
        UserAdmission::Admitted { first: false }
    );
    // The cap spans nodes; a retry of a counted connection still passes.
    assert_eq!(
        registry
            .add_user_conn(&user, &conn(&b, 4), 3)
            .await
            .unwrap(),
        UserAdmission::Full { count: 3 }
    );
    assert!(matches!(
        registry
            .add_user_conn(&user, &conn(&b, 3), 3)
            .await
            .unwrap(),
        UserAdmission::Admitted { .. }
    ));
    let other = format!("{prefix}bob");
    assert!(matches!(
        registry
            .add_user_conn(&other, &conn(&b, 9), 3)
            .await
            .unwrap(),
        UserAdmission::Admitted { first: true }
    ));
    let conns = registry.user_conns(&user).await.unwrap();
    assert_eq!(conns, vec![conn(&a, 1), conn(&a, 2), conn(&b, 3)]);
    let mut held = registry.node_user_conns(&b).await.unwrap();
    held.sort();
    let mut expected = vec![
        (other.clone(), conn(&b, 9).conn_id),
        (user.clone(), conn(&b, 3).conn_id),
    ];
    expected.sort();
    assert_eq!(held, expected);

    // A disconnect frees a place; a removal by the wrong node or of an unknown id does not.
    assert!(!registry
        .remove_user_conn(&user, &b, &conn(&a, 2).conn_id)
        .await
        .unwrap());
    assert!(!registry.remove_user_conn(&user, &a, "nope").await.unwrap());
    assert!(!registry
        .remove_user_conn(&user, &a, &conn(&a, 2).conn_id)
        .await
        .unwrap());
    assert_eq!(registry.user_conns(&user).await.unwrap().len(), 2);
    assert!(matches!(
        registry
            .add_user_conn(&user, &conn(&b, 4), 3)
            .await
            .unwrap(),
        UserAdmission::Admitted { first: false }
    ));

    // Node a stops heartbeating and b goes on: a lapses and is reaped, its connections with
    // it, and no other node's. The current incarnation of a restarted node is kept.
    let info = |id: &str| NodeInfo {
        id: id.to_string(),
        addr: "127.0.0.1:1".into(),
        connections: 2,
        started_at: t,
    };
    traffic.heartbeat(&info(&a), t, 3_000).await.unwrap();
    traffic.heartbeat(&info(&b), t, 3_000).await.unwrap();
    traffic
        .heartbeat(&info(&b), t + 3_000, 3_000)
        .await
        .unwrap();
    let live = traffic.live_nodes(t + 4_000).await.unwrap();
    assert!(live.iter().any(|n| n.id == b) && !live.iter().any(|n| n.id == a));
    let keep = format!("{a}.j.");
    let kept = UserConn {
        conn_id: format!("{keep}1"),
        ..conn(&a, 5)
    };
    assert!(matches!(
        registry.add_user_conn(&user, &kept, 0).await.unwrap(),
        UserAdmission::Admitted { .. }
    ));
    let removed = registry.remove_node_users(&a, Some(&keep)).await.unwrap();
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(removed[0].conn_id, conn(&a, 1).conn_id);
    assert!(!removed[0].last);
    assert_eq!(
        registry.user_conns(&user).await.unwrap(),
        vec![kept.clone(), conn(&b, 3), conn(&b, 4)]
    );
    assert!(registry
        .remove_node_users(&a, Some(&keep))
        .await
        .unwrap()
        .is_empty());

    // The last connection of a user: `last` at disconnect and at reaping.
    assert!(!registry
        .remove_user_conn(&user, &b, &conn(&b, 3).conn_id)
        .await
        .unwrap());
    assert!(!registry
        .remove_user_conn(&user, &a, &kept.conn_id)
        .await
        .unwrap());
    let removed = registry.remove_node_users(&b, None).await.unwrap();
    let mut lasts: Vec<(String, bool)> = removed.into_iter().map(|r| (r.user, r.last)).collect();
    lasts.sort();
    assert_eq!(lasts, vec![(user.clone(), true), (other.clone(), true)]);
    assert!(registry.user_conns(&user).await.unwrap().is_empty());
    assert!(registry.user_conns(&other).await.unwrap().is_empty());
}

/// The webhook event queue: order, reading without removing, acknowledging a batch, queues
/// kept apart. `now_ms` explicit (the memory backend stamps entries with it).
pub async fn event_queue(queue: &dyn crate::EventQueue, prefix: &str) {
    let (a, b) = (format!("{prefix}q0"), format!("{prefix}q1"));
    assert!(queue.read_events(&a, 10).await.unwrap().is_empty());
    assert_eq!(queue.queued_events(&a).await.unwrap(), 0);
    for i in 0..5 {
        let body = format!("{{\"n\":{i}}}");
        queue.append_event(&a, &body, 1_000 + i).await.unwrap();
    }
    queue
        .append_event(&b, "{\"other\":true}", 2_000)
        .await
        .unwrap();
    let head = queue.read_events(&a, 3).await.unwrap();
    assert_eq!(
        head.iter().map(|e| e.body.as_str()).collect::<Vec<_>>(),
        vec!["{\"n\":0}", "{\"n\":1}", "{\"n\":2}"]
    );
    assert!(head.iter().all(|e| e.appended_ms > 0));
    // Reading again gives the same head: nothing is removed before the acknowledgement.
    assert_eq!(queue.read_events(&a, 3).await.unwrap(), head);
    let ids: Vec<String> = head.iter().map(|e| e.entry.clone()).collect();
    queue.ack_events(&a, &ids).await.unwrap();
    queue.ack_events(&a, &ids).await.unwrap();
    let rest = queue.read_events(&a, 10).await.unwrap();
    assert_eq!(
        rest.iter().map(|e| e.body.as_str()).collect::<Vec<_>>(),
        vec!["{\"n\":3}", "{\"n\":4}"]
    );
    assert_eq!(queue.queued_events(&a).await.unwrap(), 2);
    assert_eq!(queue.queued_events(&b).await.unwrap(), 1);
    let ids: Vec<String> = rest.iter().map(|e| e.entry.clone()).collect();
    queue.ack_events(&a, &ids).await.unwrap();
    assert_eq!(queue.queued_events(&a).await.unwrap(), 0);
    let other = queue.read_events(&b, 10).await.unwrap();
    queue
        .ack_events(&b, &[other[0].entry.clone()])
        .await
        .unwrap();
}
