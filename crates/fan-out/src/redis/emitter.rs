//! Classic (not sharded) pub/sub for `@socket.io/redis-emitter` compatibility: the channels
//! that Node back ends publish to with `PUBLISH` (`protocol::emitter` names and decodes them).
//!
//! In Redis Cluster a classic `PUBLISH` travels over the cluster bus to every node, so one
//! subscription anywhere in the cluster hears every message: every roomcast node subscribes,
//! with a subscriber client of its own (the room fan-out's subscriber only does sharded
//! pub/sub), and delivers to its own Socket.IO sockets, as each Node server did with the Redis
//! adapter.
//!
//! Kept alive like the room subscriptions (see the module above): the subscriber reconnects
//! forever (`redis_cluster::builder`), every reconnect resubscribes everything, and a
//! backstop resubscribes every `resubscribe_every` (SUBSCRIBE and PSUBSCRIBE of a channel
//! already subscribed are no-ops). The read loop only `try_send`s into a bounded queue; a full
//! queue, or fred's event channel lagging, drops and counts. Pub/sub is at-most-once, and these
//! messages have no offsets: a message published while no subscription is live is lost, as it
//! was with the Node adapter.

use crate::adapter::FanOutError;
use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

/// What to subscribe to, and how.
#[derive(Debug, Clone)]
pub struct ClassicSubscription {
    /// Seed nodes, `redis://host:port`.
    pub urls: Vec<String>,
    pub command_timeout: Duration,
    /// Patterns to PSUBSCRIBE.
    pub patterns: Vec<String>,
    /// Channels to SUBSCRIBE.
    pub channels: Vec<String>,
    /// Messages that may wait for the consumer before new ones are dropped.
    pub queue: usize,
    pub resubscribe_every: Duration,
}

/// One message: the channel it was published on, and its payload.
pub type ClassicMessage = (String, Bytes);

/// Connects a subscriber (or starts connecting: a node may start before Redis), subscribes,
/// and returns the receiving end of its bounded queue. `dropped` is told how many messages
/// were lost before the queue (full, or fred lagging).
pub async fn subscribe_classic(
    config: ClassicSubscription,
    dropped: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<mpsc::Receiver<ClassicMessage>, FanOutError> {
    let subscriber = redis_cluster::builder(
        &config.urls,
        config.command_timeout,
        redis_cluster::Events::Messages,
    )
    .map_err(FanOutError::Config)?
    .build_subscriber_client()
    .map_err(|e| FanOutError::Unavailable(e.to_string()))?;
    subscriber
        .init()
        .await
        .map_err(|e| FanOutError::Unavailable(e.to_string()))?;
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    tokio::spawn(read_loop(subscriber.clone(), tx, dropped));
    let config = Arc::new(config);
    subscribe_all(&subscriber, &config).await;
    tokio::spawn(keep_subscribed(subscriber, config));
    Ok(rx)
}

/// Subscribes to every pattern and channel; failures are logged (the next reconnect or the
/// backstop tries again).
async fn subscribe_all(subscriber: &SubscriberClient, config: &ClassicSubscription) {
    if !config.patterns.is_empty() {
        if let Err(e) = subscriber.psubscribe(config.patterns.clone()).await {
            tracing::warn!(error = %e, "emitter PSUBSCRIBE failed; retrying later");
        }
    }
    if !config.channels.is_empty() {
        if let Err(e) = subscriber.subscribe(config.channels.clone()).await {
            tracing::warn!(error = %e, "emitter SUBSCRIBE failed; retrying later");
        }
    }
}

/// Resubscribes after every reconnect of the subscriber, and every `resubscribe_every`.
async fn keep_subscribed(subscriber: SubscriberClient, config: Arc<ClassicSubscription>) {
    let mut reconnects = subscriber.reconnect_rx();
    let mut backstop = tokio::time::interval(config.resubscribe_every.max(Duration::from_secs(1)));
    backstop.tick().await;
    loop {
        tokio::select! {
            event = reconnects.recv() => match event {
                // A lag only means several reconnects: one resubscribe covers them.
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            _ = backstop.tick() => {}
        }
        subscribe_all(&subscriber, &config).await;
    }
}

/// Hands every message to the queue. Never awaits anything but the next message.
async fn read_loop(
    subscriber: SubscriberClient,
    tx: mpsc::Sender<ClassicMessage>,
    dropped: Arc<dyn Fn(u64) + Send + Sync>,
) {
    let mut rx = subscriber.message_rx();
    loop {
        let msg = match rx.recv().await {
            Ok(msg) => msg,
            Err(RecvError::Lagged(n)) => {
                dropped(n);
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let bytes = match msg.value {
            Value::Bytes(b) => b,
            Value::String(s) => s.into_inner(),
            _ => continue,
        };
        match tx.try_send((msg.channel.to_string(), bytes)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => dropped(1),
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}
