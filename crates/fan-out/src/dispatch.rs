//! Local delivery of one envelope to this node's members of its room.

use crate::outbound::PushError;
use crate::registry::{Registry, MAX_PENDING};
use bytes::Bytes;
use protocol::codec::encode;
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
            *slot = encode(&self.event, format).ok();
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

/// Delivers an envelope to local connections. Never waits.
pub fn deliver(registry: &Registry, envelope: &Envelope, hooks: &dyn DeliveryHooks, now_ms: u64) {
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
            push_to_room(registry, room, skip, None, &mut encoded, hooks);
        }
        Envelope::RoomClosed { room, reason } => {
            let mut encoded = Encoded::new(Event::RoomClosed { room, reason });
            push_to_room(registry, room, None, None, &mut encoded, hooks);
            registry.clear_room(room);
        }
        Envelope::DisconnectUser { user } => {
            for conn in registry.conns_of_user(user) {
                conn.outbound
                    .close(CloseCode::KICKED, "disconnected by the server");
            }
        }
        Envelope::Probe { .. } => {}
    }
}

/// Queues an event to every local member of a room. A message (`publication`) for a member
/// whose join is still pending is held for [`Registry::activate`] instead.
fn push_to_room(
    registry: &Registry,
    room: &str,
    skip: Option<&str>,
    publication: Option<&Publication>,
    encoded: &mut Encoded<'_>,
    hooks: &dyn DeliveryHooks,
) {
    let (mut frames, mut bytes) = (0u64, 0u64);
    registry.for_each_member(room, |m| {
        let member = &m.conn;
        if skip == Some(&*member.conn_id) {
            return;
        }
        if publication.is_some_and(|p| m.covers(p)) {
            return;
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
            return;
        }
        let Some(payload) = encoded.get(member.outbound.format()) else {
            return;
        };
        let len = payload.len() as u64;
        let pushed = match publication {
            Some(p) => member.outbound.push_publication(payload, p),
            None => member.outbound.push(payload),
        };
        match pushed {
            Ok(()) => {
                frames += 1;
                bytes += len;
            }
            Err(PushError::SlowConsumer) => hooks.slow_consumer(),
            Err(PushError::Closed) => {}
        }
    });
    if frames > 0 {
        hooks.delivered(frames, bytes);
    }
}

/// Queues held messages to one member after its join reply (see [`Registry::activate`]).
pub fn deliver_held(
    conn: &crate::registry::LocalConn,
    held: &[Publication],
    hooks: &dyn DeliveryHooks,
) {
    for publication in held {
        let Ok(bytes) = encode(&Event::Message(publication), conn.outbound.format()) else {
            continue;
        };
        let len = bytes.len() as u64;
        match conn.outbound.push_publication(bytes, publication) {
            Ok(()) => hooks.delivered(1, len),
            Err(PushError::SlowConsumer) => hooks.slow_consumer(),
            Err(PushError::Closed) => return,
        }
    }
}
