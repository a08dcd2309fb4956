//! Serving: the accept loop, and the node's whole life from bind to drained exit.

use crate::admission::Rejection;
use crate::config::Config;
use crate::drain;
use crate::http;
use crate::node::Node;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Accepts connections until `stop` turns true, then drops the listener.
pub async fn accept_loop(node: Arc<Node>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors or similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                node.metrics.rejected(Rejection::AcceptError);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Left alone, the kernel grows a slow reader's send buffer to `tcp_wmem`'s maximum
        // (4 MiB here) before our outbound queue even starts to fill: memory that no queue
        // limit counts. A fixed buffer keeps a socket's total within queue + buffer.
        if node.config.tcp_send_buffer_bytes > 0 {
            let _ = socket2::SockRef::from(&stream)
                .set_send_buffer_size(node.config.tcp_send_buffer_bytes);
        }
        let node = node.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| http::route(node.clone(), peer, req));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
    tracing::info!("stopped accepting connections");
}

/// A running node: its address, and the handle that drains it.
pub struct Running {
    pub node: Arc<Node>,
    pub addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
    upkeep: tokio::task::JoinHandle<()>,
    archiver: Option<crate::archiver::Archiver>,
    webhooks: Option<crate::webhooks::deliver::Delivery>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("addr", &self.addr).finish()
    }
}

/// Binds, builds the node the config names ([`Node::open`]: backend and archive), and
/// starts serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let node = Node::open(config, addr).await?;
    if !node.config.redis_cluster.is_empty() {
        // `@socket.io/redis-emitter` channels (unless turned off).
        crate::socketio::emitter::start(node.clone()).await?;
    }
    Ok(serve(node, listener).await)
}

/// Starts serving an already built node on a bound listener.
pub async fn serve(node: Arc<Node>, listener: TcpListener) -> Running {
    let addr = node.addr;
    let (first_round, first_round_done) = tokio::sync::oneshot::channel();
    let upkeep = tokio::spawn(node.clone().run_upkeep(first_round));
    let _ = first_round_done.await;
    let archiver = crate::archiver::start(&node);
    let webhooks = crate::webhooks::deliver::start(&node);
    // Ends with the runtime, like the heartbeat tickers: nothing to stop at a drain.
    tokio::spawn(node.expiries.clone().run());
    let (stop, stop_rx) = watch::channel(false);
    let accept = tokio::spawn(accept_loop(node.clone(), listener, stop_rx));
    Running {
        node,
        addr,
        stop,
        accept,
        upkeep,
        archiver,
        webhooks,
    }
}

impl Running {
    /// Drains (see [`drain::run`]) and stops.
    pub async fn drain(self) {
        let deadline = tokio::time::Instant::now() + self.node.config.drain_deadline;
        drain::run(&self.node, &self.stop).await;
        let _ = self.accept.await;
        // Stage 6 (drain.rs): the closed connections' user registry entries removed, so
        // that their places and `user_offline` are not left to a peer's reaping; before the
        // webhooks' flush, which sends the `user_offline` these removals queue. Connections
        // still open at the deadline keep theirs: then only what is left of the deadline.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let within = if self.node.registry.connection_count() == 0 {
            left.max(Duration::from_secs(1))
        } else {
            left
        };
        if !self.node.user_entries.none_left(within).await {
            tracing::warn!(
                entries = self.node.user_entries.count(),
                "user registry entries left at exit; left to reaping"
            );
        }
        if let Some(archiver) = self.archiver {
            // Stage 7 (drain.rs): at least a second, even when the deadline has passed.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            archiver.stop(left.max(Duration::from_secs(1))).await;
        }
        if let Some(webhooks) = self.webhooks {
            // After the last connections closed: their leave and offline events are queued.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            webhooks
                .stop(&self.node, left.max(Duration::from_secs(1)))
                .await;
        }
        self.upkeep.abort();
    }
}

/// The whole life of a node: start, serve until `shutdown` resolves, drain.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let running = start(config).await?;
    tracing::info!(addr = %running.addr, node = %running.node.id, backend = running.node.backends.name, "roomcast listening");
    shutdown.await;
    running.drain().await;
    Ok(())
}
