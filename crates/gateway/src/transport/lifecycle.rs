//! One connection's life, the same for every endpoint: the upgrade completes, the checks that
//! a client hears about as a close code run (the per-address limit here, then the driver's
//! own: a token, the per-user limit), the protocol driver serves the connection, and whatever
//! happens, a panic included, the connection's sessions are cleaned up and its admission slots
//! given back (they are guards held by the [`Ticket`]).
//!
//! A panic in the driver is caught at its poll (`catch_unwind`), as a task boundary would
//! catch it, but without a second task per connection: the connection is one task (and its
//! writer another), whose future holds the driver's state and little else.
//!
//! A driver (native, Socket.IO, the test echo) only speaks its protocol.

use super::close;
use super::writer::WriterEnd;
use crate::admission::{Refusal, Rejection, Ticket};
use crate::metrics::DisconnectReason;
use crate::node::Node;
use crate::session;
use fan_out::Outbound;
use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::WebSocket;
use futures_util::FutureExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use protocol::CloseCode;
use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// An upgraded HTTP connection.
pub type Ws = WebSocket<TokioIo<Upgraded>>;

/// A protocol spoken over the shared transport.
pub trait Driver: Send + 'static {
    /// The `protocol` and `format` labels of `roomcast_connections`.
    fn labels(&self) -> [&'static str; 2];

    /// The protocol's own admission after the upgrade (a token, the per-user limit); a
    /// refusal closes the connection with its code before anything else is sent.
    /// May ask the app (the connect proxy), so it is async.
    fn admit(&mut self, _node: &Node) -> impl Future<Output = Result<(), Refusal>> + Send {
        std::future::ready(Ok(()))
    }

    /// Speaks the protocol until the connection ends. Every session it opens goes into
    /// `live` while it is open, so that a panic still cleans it up.
    fn serve(
        self,
        node: Arc<Node>,
        ws: Ws,
        live: Live,
    ) -> impl Future<Output = DisconnectReason> + Send;
}

/// One open session: `(conn_id, user)`.
type Open = (Arc<str>, Arc<str>);

/// The sessions a connection has open.
#[derive(Debug, Clone, Default)]
pub struct Live(Arc<Mutex<Vec<Open>>>);

impl Live {
    pub fn add(&self, conn_id: Arc<str>, user: Arc<str>) {
        let mut open = self.0.lock();
        // Mostly one session per connection: room for exactly it, not the usual four.
        open.reserve_exact(1);
        open.push((conn_id, user));
    }

    pub fn remove(&self, conn_id: &str) {
        self.0.lock().retain(|(c, _)| &**c != conn_id);
    }

    fn take(&self) -> Vec<Open> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// Runs one connection from the end of its upgrade to its cleanup.
///
/// A plain fn returning an `async move` block, not an `async fn`: an async fn's future keeps
/// each argument twice (captured, and moved into a local), and this future lives as long as
/// its connection (rust-lang/rust#62958; `-Zprint-type-sizes` showed 200 B here).
pub fn run<D: Driver>(
    node: Arc<Node>,
    upgrade: UpgradeFut,
    ticket: Ticket,
    driver: D,
) -> impl Future<Output = ()> + Send {
    let (mut ticket, mut driver) = (ticket, driver);
    async move {
        let ws = match upgrade.await {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        // Boxed, with the socket moved in and out: the admission (which may ask the app, the
        // connect proxy) and a refusal's close handshake are not kept in the connection's
        // long-lived future, and the socket is not held across an await of this one.
        let Some(ws) = Box::pin(admit(&node, &mut ticket, &mut driver, ws)).await else {
            return;
        };
        let labels = driver.labels();
        serve_admitted(node, ticket, labels, move |node, live| {
            driver.serve(node, ws, live)
        })
        .await;
    }
}

/// The per-address limit and the driver's own admission; a refusal closes the socket with
/// its code before anything else is sent (`None`).
async fn admit<D: Driver>(node: &Node, ticket: &mut Ticket, driver: &mut D, ws: Ws) -> Option<Ws> {
    let admitted = match ticket.admit_ip(node) {
        Ok(()) => driver.admit(node).await,
        Err(refusal) => Err(refusal),
    };
    let Err(refusal) = admitted else {
        return Some(ws);
    };
    node.metrics.rejected(refusal.rejection);
    if refusal.rejection == Rejection::Auth {
        node.metrics.disconnect(DisconnectReason::Auth);
    }
    close::reject(ws, refusal.code, &refusal.reason).await;
    None
}

/// Serves an admitted connection, whatever carries it (a WebSocket, or an Engine.IO
/// long-polling session): counted in `roomcast_connections` under `labels`, its driver's
/// panic caught (no task of its own: a WebSocket's connection task, or the task a polling
/// session's open spawned, runs it), its sessions cleaned up whatever happens, and its
/// admission places given back when it ends (the `ticket` is dropped last).
#[allow(clippy::manual_async_fn)] // on purpose: see `run`
pub fn serve_admitted<F, Fut>(
    node: Arc<Node>,
    ticket: Ticket,
    labels: [&'static str; 2],
    serve: F,
) -> impl Future<Output = ()> + Send
where
    F: FnOnce(Arc<Node>, Live) -> Fut + Send,
    Fut: Future<Output = DisconnectReason> + Send + 'static,
{
    // An `async move` block rather than an async fn: see `run`.
    async move {
        node.metrics.connections_accepted.inc();
        let gauge = node.metrics.connections.with_label_values(&labels);
        gauge.inc();
        // A panic in the driver (none is known: the decoders are fuzzed and frame sequences
        // property-tested) is caught here and still ends in a full cleanup. Nothing the driver
        // shares is left half-changed by one: its locks are held for map operations only, and
        // parking_lot's do not poison.
        let live = Live::default();
        let serve = AssertUnwindSafe(serve(node.clone(), live.clone())).catch_unwind();
        let reason = match serve.await {
            Ok(reason) => reason,
            Err(panic) => {
                tracing::error!(
                    panic = panic_message(panic.as_ref()),
                    "connection driver panicked; cleaning up"
                );
                Box::pin(abandon_all(&node, &live)).await;
                DisconnectReason::ProtocolError
            }
        };
        gauge.dec();
        node.metrics.disconnect(reason);
        drop(ticket);
    }
}

/// What a panic said, when it said it with a string.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    match panic.downcast_ref::<&'static str>() {
        Some(s) => s,
        None => panic.downcast_ref::<String>().map_or("?", String::as_str),
    }
}

/// Closes the sessions a connection had open when its driver panicked.
async fn abandon_all(node: &Node, live: &Live) {
    for (conn_id, user) in live.take() {
        session::abandon(node, &conn_id, &user).await;
    }
}

/// Why a served connection ended, from how its writer ended; `fallback` is what the driver
/// saw (the client closed, broke the protocol, timed out).
pub fn disconnect_reason(
    end: Option<WriterEnd>,
    outbound: &Outbound,
    fallback: DisconnectReason,
) -> DisconnectReason {
    match end {
        Some(WriterEnd::Closed(code)) => match code {
            CloseCode::SERVICE_RESTART => DisconnectReason::Drain,
            CloseCode::KICKED => DisconnectReason::Kicked,
            CloseCode::SLOW_CONSUMER => DisconnectReason::SlowConsumer,
            CloseCode::HEARTBEAT_TIMEOUT => DisconnectReason::Timeout,
            CloseCode::TOKEN_EXPIRED => DisconnectReason::Auth,
            _ => fallback,
        },
        Some(WriterEnd::HeartbeatTimeout) => DisconnectReason::Timeout,
        // A slow consumer whose socket stayed blocked never got its Close frame.
        _ if outbound.is_discarding() => DisconnectReason::SlowConsumer,
        _ => fallback,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::Config;
    use crate::transport::{Socket, SocketConfig, WriterConfig};
    use fan_out::LocalConn;
    use futures_util::StreamExt;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use protocol::Format;
    use std::time::Duration;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::Message;

    /// What an idle connection's two tasks hold, for each endpoint: the future of its
    /// connection task (`run` with the driver inside) and of its writer task. Printed with
    /// `--nocapture`; bounded so that a change that makes every idle connection pay for a
    /// rare path (an inline close handshake, a large op) shows up here.
    #[tokio::test]
    async fn idle_connection_futures_stay_small() {
        let config = <Config as clap::Parser>::parse_from(["roomcast", "--allow-anonymous"]);
        let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
        let node = Node::embedded(config, addr).unwrap();
        let peer: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let upgrade = || {
            let mut req = hyper::Request::builder()
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                .header("sec-websocket-version", "13")
                .body(())
                .unwrap();
            let ticket = crate::admission::admit(&node, peer, req.headers()).unwrap();
            let (_, fut) = fastwebsockets::upgrade::upgrade(&mut req).unwrap();
            (fut, ticket)
        };
        let (fut, ticket) = upgrade();
        let auth = node.auth.authenticate(None, peer.ip());
        let native = std::mem::size_of_val(&run(
            node.clone(),
            fut,
            ticket,
            crate::native::connection::Native::new(Format::Json, auth),
        ));
        let (fut, ticket) = upgrade();
        let socketio = std::mem::size_of_val(&run(
            node.clone(),
            fut,
            ticket,
            crate::socketio::connection::SocketIo {
                mode: crate::socketio::connection::Mode::SocketIo,
                ip: peer.ip(),
                handshake: None,
            },
        ));
        let (fut, ticket) = upgrade();
        let echo = std::mem::size_of_val(&run(node.clone(), fut, ticket, super::super::echo::Echo));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_, write) = tcp.into_split();
        let (outbound, rx) = Outbound::new(Format::Json, 1 << 20);
        let writer = std::mem::size_of_val(&crate::transport::writer::run(
            write,
            rx,
            Arc::new(outbound),
            Arc::new(crate::transport::heartbeat::Beat::new()),
            Some(crate::transport::writer::PingKind::WebSocket),
            Duration::from_secs(1),
            node.metrics.clone(),
        ));
        println!(
            "connection future: native {native} B, socket.io {socketio} B, echo {echo} B; \
             writer future {writer} B"
        );
        assert!(writer <= 512, "writer future: {writer} B");
        assert!(echo <= 1024, "echo connection future: {echo} B");
        // 3,176 and 2,544 B while these layers were async fns (each argument kept twice).
        assert!(native <= 2816, "native connection future: {native} B");
        assert!(
            socketio <= 2304,
            "socket.io connection future: {socketio} B"
        );
    }

    /// A driver that opens a session and then panics.
    struct Panics;

    impl Driver for Panics {
        fn labels(&self) -> [&'static str; 2] {
            ["echo", "raw"]
        }

        async fn serve(self, node: Arc<Node>, ws: Ws, live: Live) -> DisconnectReason {
            let socket = Socket::open(
                ws,
                SocketConfig {
                    format: Format::Json,
                    max_message_bytes: 1000,
                    queue_bytes: 1 << 20,
                    writer: WriterConfig::without_pings(&node.config),
                },
                node.metrics.clone(),
            );
            node.registry.register(LocalConn {
                conn_id: Arc::from("c1"),
                user: Arc::from("u1"),
                outbound: socket.outbound.clone(),
                namespace: None,
            });
            live.add(Arc::from("c1"), Arc::from("u1"));
            panic!("a driver bug");
        }
    }

    #[tokio::test]
    async fn a_panicking_driver_is_cleaned_up() {
        let config = <Config as clap::Parser>::parse_from(["roomcast", "--allow-anonymous"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let node = Node::embedded(config, addr).unwrap();
        let served = node.clone();
        tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.unwrap();
            let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let node = served.clone();
                async move {
                    let ticket = crate::admission::admit(&node, peer, req.headers())
                        .map_err(|_| "refused")?;
                    let (response, upgrade) =
                        fastwebsockets::upgrade::upgrade(&mut req).map_err(|_| "not an upgrade")?;
                    tokio::spawn(run(node, upgrade, ticket, Panics));
                    Ok::<_, &str>(response)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
            .await
            .unwrap();
        // The session's socket is closed with 1011...
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                assert_eq!(u16::from(frame.code), CloseCode::INTERNAL_ERROR)
            }
            other => panic!("want a close, got {other:?}"),
        }
        // ...and the connection is gone from the registry and the gauge, counted once.
        let reason = DisconnectReason::ProtocolError.as_str();
        for _ in 0..100 {
            if node.metrics.disconnects.with_label_values(&[reason]).get() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            node.metrics.disconnects.with_label_values(&[reason]).get(),
            1
        );
        assert!(node.registry.conns_of_user("u1").is_empty());
        let gauge = node.metrics.connections.with_label_values(&["echo", "raw"]);
        assert_eq!(gauge.get(), 0);
    }
}
