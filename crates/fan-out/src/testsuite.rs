//! The conformance suite every fan-out adapter must pass, unchanged.
//!
//! It drives the adapter through its trait with real local connections (outbound queues in a
//! [`Registry`]) and checks what each connection receives. Room names carry `prefix`, so the
//! suite can share a Redis Cluster with other tests.

#![allow(clippy::unwrap_used)]

use crate::adapter::FanOut;
use crate::history::{HistorySource, Tail};
use crate::outbound::{OutFrame, Outbound};
use crate::registry::{LocalConn, Registry};
use protocol::envelope::Envelope;
use protocol::frame::{PresenceAction, Publication};
use protocol::{Data, Format};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

struct Conn {
    id: String,
    rx: crate::FrameReceiver,
    format: Format,
}

impl Conn {
    fn new(registry: &Registry, id: &str, user: &str, format: Format) -> Conn {
        let (outbound, rx) = Outbound::new(format, 1 << 20);
        registry.register(LocalConn {
            conn_id: id.into(),
            user: user.into(),
            outbound: Arc::new(outbound),
            namespace: None,
        });
        Conn {
            id: id.to_string(),
            rx,
            format,
        }
    }

    /// The next frame within 5 s, decoded; `None` if the connection was closed instead.
    async fn next(&mut self) -> Result<Value, u16> {
        let frame = tokio::time::timeout(Duration::from_secs(5), self.rx.recv()).await;
        match frame
            .expect("nothing delivered within 5 s")
            .expect("queue closed")
        {
            OutFrame::Data(bytes) => Ok(match self.format {
                Format::Json => serde_json::from_slice(&bytes).unwrap(),
                Format::MsgPack => rmp_serde::from_slice(&bytes).unwrap(),
                Format::SocketIo => {
                    // `42["name",{…}]` → the native object, `event` included.
                    let text = std::str::from_utf8(&bytes).unwrap();
                    let arr: Value =
                        serde_json::from_str(text.strip_prefix("42").unwrap()).unwrap();
                    let mut obj = arr[1].clone();
                    obj["event"] = arr[0].clone();
                    obj
                }
            }),
            OutFrame::Close(code, _) => Err(code),
            other => panic!("unexpected {other:?}"),
        }
    }

    async fn silent(&mut self, ms: u64) {
        if let Ok(Some(frame)) =
            tokio::time::timeout(Duration::from_millis(ms), self.rx.recv()).await
        {
            panic!("{} expected nothing, got {frame:?}", self.id);
        }
    }
}

fn message(room: &str, offset: u64) -> Envelope {
    Envelope::Message(Publication {
        room: room.into(),
        offset,
        epoch: "e1".into(),
        from: "server".into(),
        data: Data::from_value(&serde_json::json!({ "n": offset })).unwrap(),
        ts: 1,
    })
}

fn presence(room: &str, action: PresenceAction, conn: &str) -> Envelope {
    Envelope::Presence {
        room: room.into(),
        action,
        user: conn.into(),
        conn_id: conn.into(),
    }
}

/// Joins a connection to a room the way the gateway does: registry (pending), subscribe,
/// then activate at `(epoch, offset)` and tell the adapter.
fn join(fanout: &dyn FanOut, registry: &Registry, room: &str, conn: &str) {
    if registry.join(room, conn) == Some(true) {
        fanout.subscribe(room);
    }
    registry.activate(room, conn, "e1", 0);
    fanout.track(room, "e1", 0);
}

/// A history with nothing in it, for suites that publish every offset themselves (so there is
/// never a gap to repair).
pub struct NoHistory;

#[async_trait::async_trait]
impl HistorySource for NoHistory {
    async fn range(&self, _: &str, _: u64, _: u64) -> Result<Vec<Publication>, String> {
        Ok(Vec::new())
    }

    async fn retire_epoch(&self, _: &str, _: &str) -> Result<(), String> {
        Ok(())
    }

    async fn tail(&self, _: &str, _: usize) -> Result<Option<Tail>, String> {
        Ok(None)
    }
}

pub async fn run(fanout: &dyn FanOut, registry: &Registry, prefix: &str) {
    let room = format!("{prefix}room");
    let other = format!("{prefix}other");
    let mut a = Conn::new(
        registry,
        &format!("{prefix}a"),
        &format!("{prefix}alice"),
        Format::Json,
    );
    let mut b = Conn::new(
        registry,
        &format!("{prefix}b"),
        &format!("{prefix}bob"),
        Format::MsgPack,
    );
    let mut outsider = Conn::new(
        registry,
        &format!("{prefix}c"),
        &format!("{prefix}carol"),
        Format::Json,
    );
    let mut d = Conn::new(
        registry,
        &format!("{prefix}d"),
        &format!("{prefix}dora"),
        Format::SocketIo,
    );
    join(fanout, registry, &room, &a.id);
    join(fanout, registry, &room, &b.id);
    join(fanout, registry, &room, &d.id);
    join(fanout, registry, &other, &outsider.id);
    assert!(fanout.subscribed() >= 2);

    // A subscription may take a moment to be in place: announce until it is.
    let ready = presence(&room, PresenceAction::Join, "probe");
    let mut heard = false;
    for _ in 0..50 {
        fanout.publish(ready.clone()).await.unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), a.rx.recv()).await {
            heard = true;
            break;
        }
    }
    assert!(heard, "the room's channel never delivered");
    tokio::time::sleep(Duration::from_millis(300)).await;
    while a.rx.try_recv().is_ok() {}
    while b.rx.try_recv().is_ok() {}
    while d.rx.try_recv().is_ok() {}

    // Messages reach every member in order, once, in each member's format; not outsiders.
    for offset in 1..=3 {
        fanout.publish(message(&room, offset)).await.unwrap();
    }
    for conn in [&mut a, &mut b, &mut d] {
        for offset in 1..=3u64 {
            let m = conn.next().await.unwrap();
            assert_eq!(
                (m["event"].as_str(), m["offset"].as_u64()),
                (Some("message"), Some(offset))
            );
            assert_eq!(m["data"]["n"], offset);
        }
    }
    a.silent(200).await;
    outsider.silent(50).await;

    // A joiner does not get its own presence join; the others do.
    fanout
        .publish(presence(&room, PresenceAction::Join, &a.id))
        .await
        .unwrap();
    let p = b.next().await.unwrap();
    assert_eq!(
        (p["event"].as_str(), p["action"].as_str()),
        (Some("presence"), Some("join"))
    );
    a.silent(200).await;
    fanout
        .publish(presence(&room, PresenceAction::Leave, &a.id))
        .await
        .unwrap();
    assert_eq!(a.next().await.unwrap()["action"], "leave");
    assert_eq!(b.next().await.unwrap()["action"], "leave");
    assert_eq!(d.next().await.unwrap()["action"], "join");
    assert_eq!(d.next().await.unwrap()["action"], "leave");

    // room_closed reaches the members and empties the room on this node.
    fanout
        .publish(Envelope::RoomClosed {
            room: room.clone(),
            reason: "closed".into(),
        })
        .await
        .unwrap();
    for conn in [&mut a, &mut b] {
        let m = conn.next().await.unwrap();
        assert_eq!(
            (m["event"].as_str(), m["room"].as_str()),
            (Some("room_closed"), Some(room.as_str()))
        );
    }
    assert!(!registry.has_room(&room));

    // A user's connections are closed with 4003, wherever the request came from.
    fanout
        .publish(Envelope::DisconnectUser {
            user: format!("{prefix}carol"),
        })
        .await
        .unwrap();
    assert_eq!(outsider.next().await, Err(protocol::CloseCode::KICKED));

    // Leaving the last local member lets the subscription go (possibly after a delay).
    registry.unregister(&outsider.id);
    fanout.unsubscribe(&other);
    registry.unregister(&a.id);
    registry.unregister(&b.id);
    registry.unregister(&d.id);
    fanout.unsubscribe(&room);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while fanout.subscribed() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriptions never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
