//! Local delivery of one envelope to this node's members of its room.

use crate::outbound::{PushError, WriteMode};
use crate::registry::{Registry, MAX_PENDING};
use bytes::Bytes;
use protocol::codec::encode_event;
use protocol::envelope::Envelope;
use protocol::frame::{Event, PresenceAction, Publication};
use protocol::{CloseCode, Format};

/// What the gateway wants to know about deliveries (metrics). Called on the hot path: keep
/// implementations to atomic increments.
pub trait DeliveryHooks: Send + Sync {
    /// `frames` were queued to local connections.
    fn delivered(&self, frames: u64, bytes: u64);
    /// A connection overflowed its outbound queue and is being closed with 4009.
    fn slow_consumer(&self);
    /// Milliseconds from publish (the envelope's timestamp) to local delivery.
    fn publish_latency(&self, ms: f64);
}

/// Pub/sub health, reported by adapters that cross nodes. Defaults record nothing.
pub trait PubSubHooks: Send + Sync {
    /// Messages lost before delivery (a full queue, or the client library lagging).
    fn pubsub_dropped(&self, _n: u64) {}
    /// A join's starting point ([`crate::FanOut::track`]) was dropped on a full queue. No
    /// message is lost, but the room's sequence then starts at the next message that arrives:
    /// one lost between the join and that one is not repaired.
    fn hint_dropped(&self) {}
    /// Room channels subscribed again by the periodic reconcile.
    fn resubscribed(&self, _n: u64) {}
    /// Messages recovered from history after a gap in a room's offsets.
    fn repaired(&self, _n: u64) {}
    /// Messages received twice and not delivered again.
    fn duplicate(&self) {}
    /// An offset reused with other content (state lost in a hard failover): epoch retired.
    fn conflict(&self) {}
}

/// Hooks that record nothing.
#[derive(Debug, Default)]
pub struct NoHooks;

impl PubSubHooks for NoHooks {}

impl DeliveryHooks for NoHooks {
    fn delivered(&self, _: u64, _: u64) {}
    fn slow_consumer(&self) {}
    fn publish_latency(&self, _: f64) {}
}

/// One event, encoded at most once per format, on first use.
struct Encoded<'a> {
    event: Event<'a>,
    bytes: [Option<Bytes>; 3],
}

impl<'a> Encoded<'a> {
    fn new(event: Event<'a>) -> Self {
        Encoded {
            event,
            bytes: [None, None, None],
        }
    }

    fn get(&mut self, format: Format) -> Option<Bytes> {
        let slot = &mut self.bytes[format.index()];
        if slot.is_none() {
            *slot = encode_event(&self.event, format).ok();
        }
        slot.clone()
    }
}

/// Sends one event to every local connection (a traffic level change), encoded at most once
/// per format. Never waits.
pub fn broadcast(registry: &Registry, event: Event<'_>) {
    let mut encoded = Encoded::new(event);
    for conn in registry.all() {
        if let Some(bytes) = encoded.get(conn.outbound.format()) {
            let _ = conn.outbound.push(bytes);
        }
    }
}

/// Delivers an envelope to local connections. Never waits. `mode` says whether pushes may
/// write to sockets themselves ([`WriteMode`]): a caller with more envelopes waiting says
/// [`WriteMode::Queued`].
pub fn deliver(
    registry: &Registry,
    envelope: &Envelope,
    hooks: &dyn DeliveryHooks,
    now_ms: u64,
    mode: WriteMode,
) {
    match envelope {
        Envelope::Message(publication) => {
            hooks.publish_latency(now_ms.saturating_sub(publication.ts) as f64);
            let mut encoded = Encoded::new(Event::Message(publication));
            push_to_room(
                registry,
                &publication.room,
                None,
                Some(publication),
                &mut encoded,
                hooks,
                mode,
            );
        }
        Envelope::Presence {
            room,
            action,
            user,
            conn_id,
        } => {
            let mut encoded = Encoded::new(Event::Presence {
                room,
                action: *action,
                user,
                conn_id,
            });
            // A joiner does not get its own join back.
            let skip = (*action == PresenceAction::Join).then_some(conn_id.as_str());
            push_to_room(registry, room, skip, None, &mut encoded, hooks, mode);
        }
        Envelope::RoomClosed { room, reason } => {
            let mut encoded = Encoded::new(Event::RoomClosed { room, reason });
            push_to_room(registry, room, None, None, &mut encoded, hooks, mode);
            registry.clear_room(room);
        }
        Envelope::DisconnectUser { user } => {
            for conn in registry.conns_of_user(user) {
                conn.outbound
                    .close(CloseCode::KICKED, "disconnected by the server");
            }
        }
        Envelope::UserMessage { user, data, ts } => {
            // Every local connection of the user, native and Socket.IO (each namespace's
            // socket), once; not journaled: it has no position in any room.
            let conns = registry.conns_of_user(user);
            let mut encoded = Encoded::new(Event::UserMessage { data, ts: *ts });
            let (mut frames, mut bytes) = (0u64, 0u64);
            for conn in conns {
                let Some(payload) = encoded.get(conn.outbound.format()) else {
                    continue;
                };
                let len = payload.len() as u64;
                match conn.outbound.push_with(payload, mode) {
                    Ok(()) => {
                        frames += 1;
                        bytes += len;
                    }
                    Err(PushError::SlowConsumer) => hooks.slow_consumer(),
                    Err(PushError::Closed) => {}
                }
            }
            if frames > 0 {
                hooks.delivered(frames, bytes);
            }
        }
        Envelope::Probe { .. } => {}
    }
}

/// Queues an event to every local member of a room. A message (`publication`) for a member
/// whose join is still pending is held for [`Registry::activate`] instead: an ephemeral one
/// too, so that a joiner's reply still comes before its room's first message (`activate`
/// releases it: its empty epoch is never the reply's).
fn push_to_room(
    registry: &Registry,
    room: &str,
    skip: Option<&str>,
    publication: Option<&Publication>,
    encoded: &mut Encoded<'_>,
    hooks: &dyn DeliveryHooks,
    mode: WriteMode,
) {
    let (mut frames, mut bytes) = (0u64, 0u64);
    registry.with_members(room, |members| {
        // A big room's members are queued to: one write syscall per member, made here under
        // the registry's lock, would hold up every join and leave on the node meanwhile,
        // where the writer tasks make them on every core.
        let mode = if members.len() > DIRECT_WRITE_MAX_MEMBERS {
            WriteMode::Queued
        } else {
            mode
        };
        for m in members {
            let member = &m.conn;
            if skip == Some(&*member.conn_id) {
                continue;
            }
            if publication.is_some_and(|p| m.covers(p)) {
                continue;
            }
            if let (Some(pending), Some(publication)) = (&m.pending, publication) {
                let mut held = pending.lock();
                if held.len() < MAX_PENDING {
                    held.push(publication.clone());
                } else if member
                    .outbound
                    .close(CloseCode::SLOW_CONSUMER, "slow consumer")
                {
                    hooks.slow_consumer();
                }
                continue;
            }
            let Some(payload) = encoded.get(member.outbound.format()) else {
                continue;
            };
            let len = payload.len() as u64;
            let pushed = match publication {
                // An ephemeral message is not journaled: it has no position a Socket.IO
                // client could name (no recovery offset), and a recovery could not replay it.
                Some(p) if !p.is_ephemeral() => member.outbound.push_publication(payload, p, mode),
                _ => member.outbound.push_with(payload, mode),
            };
            match pushed {
                Ok(()) => {
                    frames += 1;
                    bytes += len;
                }
                Err(PushError::SlowConsumer) => hooks.slow_consumer(),
                Err(PushError::Closed) => {}
            }
        }
    });
    if frames > 0 {
        hooks.delivered(frames, bytes);
    }
}

/// Above this many local members in a room, its deliveries are queued, not written directly
/// ([`WriteMode`]).
const DIRECT_WRITE_MAX_MEMBERS: usize = 64;

/// Queues one event, already encoded for Socket.IO, to chosen Socket.IO sockets (a
/// `@socket.io/redis-emitter` broadcast: [`Registry::socketio_targets`]). Not journaled: such
/// an event has no position in any room's history. Never waits. Returns how many took it.
pub fn deliver_encoded(
    conns: &[crate::registry::LocalConn],
    payload: &Bytes,
    hooks: &dyn DeliveryHooks,
) -> u64 {
    let (mut frames, mut bytes) = (0u64, 0u64);
    for conn in conns {
        match conn.outbound.push(payload.clone()) {
            Ok(()) => {
                frames += 1;
                bytes += payload.len() as u64;
            }
            Err(PushError::SlowConsumer) => hooks.slow_consumer(),
            Err(PushError::Closed) => {}
        }
    }
    if frames > 0 {
        hooks.delivered(frames, bytes);
    }
    frames
}

/// Queues held messages to one member after its join reply (see [`Registry::activate`]).
pub fn deliver_held(
    conn: &crate::registry::LocalConn,
    held: &[Publication],
    hooks: &dyn DeliveryHooks,
) {
    // Several at once: the writer writes them together.
    let mode = if held.len() > 1 {
        WriteMode::Queued
    } else {
        WriteMode::Direct
    };
    for publication in held {
        let Ok(bytes) = encode_event(&Event::Message(publication), conn.outbound.format()) else {
            continue;
        };
        let len = bytes.len() as u64;
        let pushed = if publication.is_ephemeral() {
            conn.outbound.push_with(bytes, mode)
        } else {
            conn.outbound.push_publication(bytes, publication, mode)
        };
        match pushed {
            Ok(()) => hooks.delivered(1, len),
            Err(PushError::SlowConsumer) => hooks.slow_consumer(),
            Err(PushError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::{OutFrame, Outbound};
    use crate::registry::LocalConn;
    use protocol::Data;
    use std::sync::Arc;

    fn member(
        registry: &Registry,
        id: &str,
        format: Format,
    ) -> (Arc<Outbound>, crate::FrameReceiver) {
        let (outbound, rx) = Outbound::new(format, 1 << 20);
        let outbound = Arc::new(outbound);
        registry.register(LocalConn {
            conn_id: id.into(),
            user: id.into(),
            outbound: outbound.clone(),
            namespace: None,
        });
        registry.join("r", id);
        (outbound, rx)
    }

    fn ephemeral(n: u64) -> Publication {
        Publication {
            room: "r".into(),
            offset: Publication::EPHEMERAL_OFFSET,
            epoch: String::new(),
            from: "u".into(),
            data: Data::from_value(&serde_json::json!(n)).expect("data"),
            ts: 1,
        }
    }

    fn texts(rx: &mut crate::FrameReceiver) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(OutFrame::Data(b)) = rx.try_recv() {
            out.push(String::from_utf8_lossy(&b).into_owned());
        }
        out
    }

    /// A socket that takes everything, counting the writes.
    #[derive(Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    impl crate::outbound::DirectWrite for Counting {
        fn try_write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(bufs.iter().map(|b| b.len()).sum())
        }
        fn wrote_data(&self, _: u64) {}
    }

    /// `n` members of room "r" whose sockets take direct writes, and a presence event to them
    /// in `mode`: how many frames went straight to a socket, and how many were queued.
    fn direct_and_queued(n: usize, mode: WriteMode) -> (usize, usize) {
        let registry = Registry::new();
        let mut members = Vec::new();
        for i in 0..n {
            let (outbound, rx) = member(&registry, &format!("m{i}"), Format::Json);
            let socket = Arc::new(Counting::default());
            outbound.write_directly_to(socket.clone());
            registry.activate("r", &format!("m{i}"), "e", 0);
            members.push((socket, rx));
        }
        let presence = Envelope::Presence {
            room: "r".into(),
            action: PresenceAction::Leave,
            user: "u".into(),
            conn_id: "gone".into(),
        };
        deliver(&registry, &presence, &NoHooks, 1, mode);
        let direct = members
            .iter()
            .map(|(s, _)| s.0.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        let queued = members.iter_mut().map(|(_, rx)| texts(rx).len()).sum();
        (direct, queued)
    }

    #[test]
    fn small_rooms_write_directly_and_big_rooms_and_backlogs_queue() {
        assert_eq!(direct_and_queued(10, WriteMode::Direct), (10, 0));
        assert_eq!(direct_and_queued(10, WriteMode::Queued), (0, 10));
        let big = DIRECT_WRITE_MAX_MEMBERS + 1;
        assert_eq!(direct_and_queued(big, WriteMode::Direct), (0, big));
    }

    #[test]
    fn encoded_events_reach_the_chosen_sockets_once_and_are_not_journaled() {
        let registry = Registry::new();
        let (a, mut a_rx) = member(&registry, "a", Format::SocketIo);
        let (_, mut b_rx) = member(&registry, "b", Format::SocketIo);
        a.start_journal(16);
        let conns: Vec<LocalConn> = registry
            .all()
            .into_iter()
            .filter(|c| &*c.conn_id == "a")
            .collect();
        let payload = Bytes::from_static(br#"42["news","hi"]"#);
        assert_eq!(deliver_encoded(&conns, &payload, &NoHooks), 1);
        assert_eq!(texts(&mut a_rx), vec![r#"42["news","hi"]"#.to_string()]);
        assert!(texts(&mut b_rx).is_empty());
        assert!(a.journal().expect("journal").entries.is_empty());
        a.close(CloseCode::KICKED, "gone");
        assert_eq!(deliver_encoded(&conns, &payload, &NoHooks), 0);
    }

    #[test]
    fn ephemeral_messages_reach_every_member_in_order_and_are_not_journaled() {
        let registry = Registry::new();
        let (_, mut native) = member(&registry, "a", Format::Json);
        let (sio, mut sio_rx) = member(&registry, "b", Format::SocketIo);
        sio.start_journal(16);
        for id in ["a", "b"] {
            registry.activate("r", id, "e", 0);
        }
        // A third joins while messages flow: they wait for its reply, then come in order.
        let (_, mut late) = member(&registry, "c", Format::Json);
        for n in 1..=3 {
            deliver(
                &registry,
                &Envelope::Message(ephemeral(n)),
                &NoHooks,
                1,
                WriteMode::Direct,
            );
        }
        let expected: Vec<String> = (1..=3)
            .map(|n| format!(r#"{{"event":"message","room":"r","from":"u","data":{n},"ts":1}}"#))
            .collect();
        assert_eq!(texts(&mut native), expected, "no offset, no epoch");
        let sio_frames = texts(&mut sio_rx);
        assert_eq!(sio_frames.len(), 3);
        assert!(
            sio_frames[0].ends_with(r#""ts":1}]"#),
            "no recovery offset: {}",
            sio_frames[0]
        );
        let journal = sio.journal().expect("journal");
        assert!(journal.entries.is_empty(), "{journal:?}");
        assert!(texts(&mut late).is_empty(), "held until the join reply");
        let (conn, held) = registry.activate("r", "c", "e", 0);
        deliver_held(&conn.expect("a member"), &held, &NoHooks);
        assert_eq!(texts(&mut late), expected);
    }
}
