//! The in-memory adapter: one node, so publishing is local delivery.

use crate::adapter::{FanOut, FanOutError};
use crate::dispatch::{deliver, DeliveryHooks};
use crate::outbound::WriteMode;
use crate::registry::Registry;
use async_trait::async_trait;
use protocol::clock::now_ms;
use protocol::envelope::Envelope;
use std::collections::HashSet;
use std::sync::Arc;

pub struct MemoryFanOut {
    registry: Arc<Registry>,
    hooks: Arc<dyn DeliveryHooks>,
    subscribed: parking_lot::Mutex<HashSet<String>>,
}

impl MemoryFanOut {
    pub fn new(registry: Arc<Registry>, hooks: Arc<dyn DeliveryHooks>) -> MemoryFanOut {
        MemoryFanOut {
            registry,
            hooks,
            subscribed: parking_lot::Mutex::new(HashSet::new()),
        }
    }

    /// Delivers synchronously. The memory room store calls this from its publish sink, under
    /// the room's lock, which keeps delivery in offset order. One envelope per call, nothing
    /// known to be behind it: pushes may write directly.
    pub fn deliver_now(&self, envelope: &Envelope) {
        deliver(
            &self.registry,
            envelope,
            &*self.hooks,
            now_ms(),
            WriteMode::Direct,
        );
    }
}

#[async_trait]
impl FanOut for MemoryFanOut {
    async fn publish(&self, envelope: Envelope) -> Result<(), FanOutError> {
        self.deliver_now(&envelope);
        Ok(())
    }

    fn subscribe(&self, room: &str) {
        self.subscribed.lock().insert(room.to_string());
    }

    fn unsubscribe(&self, room: &str) {
        self.subscribed.lock().remove(room);
    }

    fn subscribed(&self) -> usize {
        self.subscribed.lock().len()
    }

    fn healthy(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::NoHooks;
    use crate::outbound::{OutFrame, Outbound};
    use crate::registry::LocalConn;
    use protocol::frame::{PresenceAction, Publication};
    use protocol::{Data, Format};

    #[tokio::test]
    async fn encodes_once_per_format_and_skips_the_joiner() {
        let registry = Arc::new(Registry::new());
        let fanout = MemoryFanOut::new(registry.clone(), Arc::new(NoHooks));
        let mut rxs = Vec::new();
        for (id, format) in [
            ("a", Format::Json),
            ("b", Format::MsgPack),
            ("c", Format::Json),
        ] {
            let (outbound, rx) = Outbound::new(format, 1 << 20);
            registry.register(LocalConn {
                conn_id: id.into(),
                user: id.into(),
                outbound: Arc::new(outbound),
                namespace: None,
            });
            registry.join("r", id);
            registry.activate("r", id, "e", 0);
            rxs.push(rx);
        }
        let publication = Publication {
            room: "r".into(),
            offset: 1,
            epoch: "e".into(),
            from: "a".into(),
            data: Data::from_value(&serde_json::json!("hi")).expect("data"),
            ts: 1,
        };
        fanout
            .publish(Envelope::Message(publication))
            .await
            .expect("publish");
        let frames: Vec<bytes::Bytes> = rxs
            .iter_mut()
            .map(|rx| match rx.try_recv() {
                Ok(OutFrame::Data(b)) => b,
                other => panic!("expected data, got {other:?}"),
            })
            .collect();
        // The two JSON members share one buffer: same pointer, no copy.
        assert_eq!(frames[0].as_ptr(), frames[2].as_ptr());
        assert_ne!(frames[0], frames[1]);

        fanout
            .publish(Envelope::Presence {
                room: "r".into(),
                action: PresenceAction::Join,
                user: "a".into(),
                conn_id: "a".into(),
            })
            .await
            .expect("publish");
        assert!(rxs[0].try_recv().is_err(), "the joiner gets no echo");
        assert!(rxs[1].try_recv().is_ok());
    }
}
