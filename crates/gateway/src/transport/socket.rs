//! One upgraded WebSocket: our reader ([`Frames`]) on the read half, our writer task on the
//! write half. Every endpoint drives it the same way: [`Socket::read`] until the end, then
//! [`Socket::finish`].
//!
//! The upgraded connection is taken apart down to its `TcpStream` (hyper's `Upgraded` is a
//! boxed stream plus the bytes hyper read past the request; fastwebsockets' `WebSocket` adds an
//! 8 KiB read buffer): the stream is split into its owned halves, which share one `Arc` and no
//! lock, and the bytes hyper read ahead are handed to the reader. A stream that is not hyper's
//! TCP connection (TLS, say, or a test's in-memory stream; none in the server today) still
//! works: it is split with `tokio::io::split` instead, hyper's read-ahead bytes staying in
//! `Upgraded`.
//!
//! A WebSocket that upgrades an Engine.IO long-polling session starts as a [`Probe`]: it reads,
//! and writes the probe answer itself, while the session's queue still drains over polling;
//! [`Probe::attach`] then hands it the session's queue and starts the writer, so that nothing
//! queued is lost or reordered by the switch. It is taken apart the same way, so an upgraded
//! session holds no read buffer while idle either.

use super::frames::{Ending, Frames, Read, Source};
use super::heartbeat::{self, Beat, Liveness};
use super::writer::{self, PingKind, WriterConfig, WriterEnd};
use crate::metrics::Metrics;
use fan_out::Outbound;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use protocol::Format;
use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// What a socket is opened with.
#[derive(Debug, Clone, Copy)]
pub struct SocketConfig {
    /// What the outbound queue's data frames are (text or binary).
    pub format: Format,
    /// The largest whole message a client may send.
    pub max_message_bytes: usize,
    /// The outbound queue's bound; over it the client is a slow consumer (4009).
    pub queue_bytes: usize,
    pub writer: WriterConfig,
}

/// One connection's socket. `S` is the stream it was opened on (kept in the type so that
/// drivers can stay generic over it); the halves themselves are in the reader and the writer
/// task.
pub struct Socket<S> {
    frames: Frames,
    pub outbound: Arc<Outbound>,
    writer_task: JoinHandle<WriterEnd>,
    /// Set when `read` saw the writer end.
    writer_end: Option<WriterEnd>,
    stream: PhantomData<fn() -> S>,
}

/// A stream taken apart: a reader's source, bytes already read from it, and the write half.
struct Halves {
    source: Source,
    pending: Vec<u8>,
    write: WriteHalf,
}

/// The write half of a taken-apart stream. The TCP case is the server's, kept concrete so that
/// its writer task is not dynamically dispatched; anything else is boxed (tests, and a
/// stream hyper could not give back as TCP).
enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Stream(Box<dyn AsyncWrite + Send + Unpin>),
}

/// What the writer task needs besides the write half.
struct WriterParts {
    rx: fan_out::FrameReceiver,
    outbound: Arc<Outbound>,
    beat: Arc<Beat>,
    config: WriterConfig,
    metrics: Arc<Metrics>,
}

impl WriterParts {
    fn spawn(self, io: WriteHalf) -> JoinHandle<WriterEnd> {
        match io {
            WriteHalf::Tcp(io) => {
                // Shared with the queue, so that a push finding nothing queued writes at once.
                let sink = Arc::new(TcpSink {
                    half: io,
                    metrics: self.metrics.clone(),
                });
                self.outbound.write_directly_to(sink.clone());
                self.spawn_on(SharedTcp(sink))
            }
            WriteHalf::Stream(io) => self.spawn_on(io),
        }
    }

    fn spawn_on<W: AsyncWrite + Unpin + Send + 'static>(self, io: W) -> JoinHandle<WriterEnd> {
        tokio::spawn(writer::run(
            io,
            self.rx,
            self.outbound,
            self.beat,
            self.config.heartbeat.map(|h| h.kind),
            self.config.write_timeout,
            self.metrics,
        ))
    }
}

/// A TCP write half shared by the writer task and direct pushes ([`fan_out::DirectWrite`]).
/// Everything goes through `&self` (`try_write_vectored`, readiness), and the two never
/// write at once (`Outbound`'s `writing`).
struct TcpSink {
    half: OwnedWriteHalf,
    metrics: Arc<Metrics>,
}

impl fan_out::DirectWrite for TcpSink {
    fn try_write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        self.half.try_write_vectored(bufs)
    }

    fn wrote_data(&self, bytes: u64) {
        self.metrics.bytes_out.inc_by(bytes);
    }
}

/// The writer task's side of a [`TcpSink`].
struct SharedTcp(Arc<TcpSink>);

impl SharedTcp {
    fn poll_with(
        &self,
        cx: &mut std::task::Context<'_>,
        mut f: impl FnMut(&OwnedWriteHalf) -> std::io::Result<usize>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.half.as_ref().poll_write_ready(cx))?;
            match f(&self.0.half) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return std::task::Poll::Ready(other),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.poll_with(cx, |h| h.try_write(buf))
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.poll_with(cx, |h| h.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    /// What `OwnedWriteHalf` does when dropped, done now: the queue may hold the half a
    /// little longer.
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(
            socket2::SockRef::from(self.0.half.as_ref()).shutdown(std::net::Shutdown::Write),
        )
    }
}

/// `value` as a `T`, if that is what it is; else `value` back.
fn downcast<T: 'static, S: 'static>(value: S) -> Result<T, S> {
    let mut slot = Some(value);
    if let Some(t) = (&mut slot as &mut dyn Any).downcast_mut::<Option<T>>() {
        if let Some(t) = t.take() {
            return Ok(t);
        }
    }
    match slot {
        Some(value) => Err(value),
        None => unreachable!("emptied only by a successful downcast"),
    }
}

/// Splits `stream`: hyper's TCP connection into its owned halves, anything else with
/// `tokio::io::split`.
fn split<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S) -> Halves {
    let upgraded = match downcast::<TokioIo<Upgraded>, S>(stream) {
        Ok(io) => io.into_inner(),
        Err(other) => return split_stream(other),
    };
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let (read, write) = parts.io.into_inner().into_split();
            Halves {
                source: Source::Tcp(read),
                // A copy, so that hyper's read buffer is freed now.
                pending: parts.read_buf.to_vec(),
                write: WriteHalf::Tcp(write),
            }
        }
        Err(upgraded) => split_stream(TokioIo::new(upgraded)),
    }
}

fn split_stream<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> Halves {
    let (read, write) = tokio::io::split(stream);
    Halves {
        source: Source::Stream(Box::new(read)),
        pending: Vec::new(),
        write: WriteHalf::Stream(Box::new(write)),
    }
}

/// Whether the reader counts any frame as an answer to a ping: yes for WebSocket pings (and
/// without pings, where it does not matter); with Engine.IO pings only the driver's pong
/// packets do.
fn frames_answer(config: &SocketConfig) -> bool {
    config.writer.heartbeat.map(|h| h.kind) != Some(PingKind::EngineIo)
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Socket<S> {
    /// Splits an upgraded WebSocket: our reader, which answers pings, echoes closes,
    /// reassembles and refuses messages over `max_message_bytes`, and a writer task draining a
    /// new outbound queue.
    pub fn open(
        ws: fastwebsockets::WebSocket<S>,
        config: SocketConfig,
        metrics: Arc<Metrics>,
    ) -> Socket<S> {
        let (outbound, rx) = Outbound::new(config.format, config.queue_bytes);
        let outbound = Arc::new(outbound);
        // Nothing has been read through `ws` (its read buffer is empty and dropped here).
        Probe::split(ws, config, metrics, outbound.clone()).attach(outbound, rx)
    }

    /// The next whole message, or the end of the connection. Cancel-safe (what was read is
    /// kept in the socket), though there is no need to race it against anything but the
    /// connection's own end.
    pub async fn read(&mut self) -> Read {
        // A finished task's handle must not be polled again.
        if self.writer_end.is_some() {
            return Read::Ended(Ending::Closed);
        }
        tokio::select! {
            biased;
            end = &mut self.writer_task => {
                self.writer_end = Some(end.unwrap_or(WriterEnd::SocketGone));
                Read::Ended(Ending::Closed)
            }
            read = self.frames.next() => {
                if read == Read::Ended(Ending::Gone) {
                    self.writer_task.abort();
                }
                read
            }
        }
    }

    /// The handle through which the driver reports answers to pings only it can recognise
    /// (Engine.IO's pong packet).
    pub fn liveness(&self) -> Liveness {
        Liveness(self.frames.beat().clone())
    }

    /// After the loop: lets the writer send our Close (for at most `limit`), gives the client
    /// a moment to answer it, and stops the writer. Returns how the writer ended.
    pub async fn finish(&mut self, limit: Duration) -> Option<WriterEnd> {
        // Boxed: the drivers' futures live as long as their connections, and the timers in
        // here would make every idle one larger for what happens once, at its end.
        Box::pin(self.finish_inner(limit)).await
    }

    async fn finish_inner(&mut self, limit: Duration) -> Option<WriterEnd> {
        let end = match self.writer_end.take() {
            Some(end) => Some(end),
            None => timeout(limit, &mut self.writer_task)
                .await
                .ok()
                .and_then(Result::ok),
        };
        if let Some(WriterEnd::Closed(_)) = end {
            self.frames.await_close().await;
        }
        self.writer_task.abort();
        end
    }
}

/// A WebSocket not yet given a queue: it reads, and writes text messages directly. Used for
/// the Engine.IO probe (`2probe` → `3probe`) of a long-polling session's upgrade, and, attached
/// at once, by [`Socket::open`].
pub struct Probe<S> {
    frames: Frames,
    write: WriteHalf,
    config: SocketConfig,
    metrics: Arc<Metrics>,
    stream: PhantomData<fn() -> S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Probe<S> {
    /// Takes an upgraded WebSocket apart (see the module's introduction); the writer waits
    /// for [`Probe::attach`].
    pub fn open(
        ws: fastwebsockets::WebSocket<S>,
        config: SocketConfig,
        metrics: Arc<Metrics>,
    ) -> Probe<S> {
        // Until `attach`, pongs and closes the reader queues go nowhere: a probe that fails
        // is simply dropped, and the session carries on over polling.
        let (placeholder, _) = Outbound::new(config.format, 0);
        Probe::split(ws, config, metrics, Arc::new(placeholder))
    }

    /// The split itself; `outbound` takes the reader's pongs and closes until `attach`.
    fn split(
        ws: fastwebsockets::WebSocket<S>,
        config: SocketConfig,
        metrics: Arc<Metrics>,
        outbound: Arc<Outbound>,
    ) -> Probe<S> {
        let halves = split(ws.into_inner());
        let frames = Frames::new(
            halves.source,
            halves.pending,
            config.max_message_bytes,
            outbound,
            Arc::new(Beat::new()),
            frames_answer(&config),
            metrics.clone(),
        );
        Probe {
            frames,
            write: halves.write,
            config,
            metrics,
            stream: PhantomData,
        }
    }

    /// The next whole message, or the end.
    pub async fn read(&mut self) -> Read {
        self.frames.next().await
    }

    /// Writes one text message now, within the write timeout.
    pub async fn send_text(&mut self, text: &str) -> bool {
        let mut buf = Vec::with_capacity(text.len() + 2);
        writer::put_frame(&mut buf, writer::OP_TEXT, text.as_bytes());
        let io: &mut (dyn AsyncWrite + Send + Unpin) = match &mut self.write {
            WriteHalf::Tcp(io) => io,
            WriteHalf::Stream(io) => io,
        };
        let write = async {
            io.write_all(&buf).await?;
            io.flush().await
        };
        matches!(
            timeout(self.config.writer.write_timeout, write).await,
            Ok(Ok(()))
        )
    }

    /// Becomes a full socket: `rx` (the receiving end of `outbound`) is drained onto the
    /// WebSocket by a new writer task, in queue order. The heartbeat state starts afresh here
    /// (pongs queued on a probe's placeholder were never sent, so they must not count against
    /// the cap), and only here is the connection registered with the ping ticker.
    pub fn attach(mut self, outbound: Arc<Outbound>, rx: fan_out::FrameReceiver) -> Socket<S> {
        let beat = Arc::new(Beat::new());
        if let Some(schedule) = self.config.writer.heartbeat {
            heartbeat::register(schedule, &beat);
        }
        self.frames.attach(outbound.clone(), beat.clone());
        let writer_task = WriterParts {
            rx,
            outbound: outbound.clone(),
            beat,
            config: self.config.writer,
            metrics: self.metrics,
        }
        .spawn(self.write);
        Socket {
            frames: self.frames,
            outbound,
            writer_task,
            writer_end: None,
            stream: PhantomData,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::transport::writer::Heartbeat;
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::net::TcpStream;

    fn config(heartbeat: Option<Heartbeat>) -> SocketConfig {
        SocketConfig {
            format: Format::Json,
            max_message_bytes: 1000,
            queue_bytes: 1 << 20,
            writer: WriterConfig {
                heartbeat,
                write_timeout: Duration::from_secs(5),
            },
        }
    }

    /// A socket on an in-memory stream (so through `tokio::io::split`), and the client's end.
    fn open(heartbeat: Option<Heartbeat>) -> (Socket<DuplexStream>, DuplexStream) {
        let (client, server) = tokio::io::duplex(4096);
        let ws = fastwebsockets::WebSocket::after_handshake(server, fastwebsockets::Role::Server);
        let socket = Socket::open(ws, config(heartbeat), Arc::new(Metrics::new().unwrap()));
        (socket, client)
    }

    /// Serves one HTTP/1 connection on `io` the way the server does, upgrades it, and hands
    /// the opened socket back.
    async fn serve_upgrade<I>(io: I) -> Socket<TokioIo<Upgraded>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        let service = hyper::service::service_fn(move |mut req| {
            let tx = tx.lock().unwrap().take();
            async move {
                let (response, upgrade) = fastwebsockets::upgrade::upgrade(&mut req).unwrap();
                tokio::spawn(async move {
                    let ws = upgrade.await.unwrap();
                    let socket = Socket::open(ws, config(None), Arc::new(Metrics::new().unwrap()));
                    let _ = tx.unwrap().send(socket);
                });
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        );
        rx.await.unwrap()
    }

    /// An upgrade request with two masked text frames right behind it, in one write (so
    /// hyper reads them with the request), and the length of hyper's 101 response.
    fn request_and_frames() -> Vec<u8> {
        let mut bytes = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\n\r\n"
            .to_vec();
        bytes.extend_from_slice(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i']);
        bytes.extend_from_slice(&[0x81, 0x82, 1, 1, 1, 1, b'y' ^ 1, b'o' ^ 1]);
        bytes
    }

    /// Reads the 101 response, then checks the socket reads both frames and echoes.
    async fn check_upgraded<C: AsyncRead + AsyncWrite + Unpin>(
        socket: &mut Socket<TokioIo<Upgraded>>,
        client: &mut C,
    ) {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            client.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"));
        for want in [&b"hi"[..], b"yo"] {
            let Read::Message { payload, .. } = socket.read().await else {
                panic!("no message");
            };
            assert_eq!(payload, want);
            socket
                .outbound
                .push_message(true, Bytes::from(payload))
                .unwrap();
            let mut got = [0u8; 4];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(&got[2..], want);
        }
    }

    #[tokio::test]
    async fn the_server_reads_the_tcp_stream_itself() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(&request_and_frames()).await.unwrap();
        let mut socket = serve_upgrade(server).await;
        assert!(socket.frames.is_tcp());
        check_upgraded(&mut socket, &mut client).await;
    }

    #[tokio::test]
    async fn an_upgraded_stream_that_is_not_tcp_falls_back() {
        // What TLS or any other wrapper would be: hyper's `Upgraded` cannot be taken apart.
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(&request_and_frames()).await.unwrap();
        let mut socket = serve_upgrade(server).await;
        assert!(!socket.frames.is_tcp());
        check_upgraded(&mut socket, &mut client).await;
    }

    #[tokio::test]
    async fn echo_over_any_stream() {
        let (mut socket, mut client) = open(None);
        client
            .write_all(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i'])
            .await
            .unwrap();
        let Read::Message { text, payload } = socket.read().await else {
            panic!("no message");
        };
        assert!(text);
        socket
            .outbound
            .push_message(true, Bytes::from(payload))
            .unwrap();
        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0x81, 2, b'h', b'i']);
    }

    #[tokio::test]
    async fn pings_then_a_heartbeat_timeout() {
        let heartbeat = Heartbeat {
            ping_interval: Duration::from_millis(100),
            pong_timeout: Duration::from_millis(50),
            kind: PingKind::WebSocket,
        };
        // Before the open: the ping is counted from the connection's registration in it.
        let started = tokio::time::Instant::now();
        let (mut socket, mut client) = open(Some(heartbeat));
        // A ping, one interval after the open.
        let mut got = [0u8; 2];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0x89, 0]);
        assert!(started.elapsed() >= Duration::from_millis(100));
        // Not answered: silent for more than 150 ms at the next visit, so 4010.
        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0x88, 19, 0x0f, 0xaa], "close 4010");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(socket.read().await, Read::Ended(Ending::Closed));
        assert_eq!(
            socket.finish(Duration::from_secs(1)).await,
            Some(WriterEnd::HeartbeatTimeout)
        );
    }

    #[tokio::test]
    async fn engine_io_pings_are_answered_by_the_driver_only() {
        let heartbeat = Heartbeat {
            ping_interval: Duration::from_millis(100),
            pong_timeout: Duration::from_millis(50),
            kind: PingKind::EngineIo,
        };
        let (mut socket, mut client) = open(Some(heartbeat));
        let liveness = socket.liveness();
        let started = tokio::time::Instant::now();
        // Answered (the driver saw `3`) twice: no close.
        for _ in 0..2 {
            let mut got = [0u8; 3];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [0x81, 1, b'2'], "an Engine.IO ping");
            liveness.heard();
        }
        // Then only WebSocket frames (a masked pong frame, a masked text message): they do
        // not answer an Engine.IO ping, so 4010 "ping timeout" follows.
        client.write_all(&[0x8A, 0x80, 1, 2, 3, 4]).await.unwrap();
        client
            .write_all(&[0x81, 0x81, 0, 0, 0, 0, b'x'])
            .await
            .unwrap();
        let reader = async {
            loop {
                let mut head = [0u8; 2];
                client.read_exact(&mut head).await.unwrap();
                let mut body = vec![0u8; usize::from(head[1])];
                client.read_exact(&mut body).await.unwrap();
                if head[0] == 0x88 {
                    return body;
                }
                assert_eq!((head[0], &body[..]), (0x81, &b"2"[..]));
            }
        };
        let socket_side = async {
            let Read::Message { payload, .. } = socket.read().await else {
                panic!("no message");
            };
            assert_eq!(payload, b"x");
            socket.read().await
        };
        let (close, ended) = tokio::join!(reader, socket_side);
        assert_eq!(&close[..2], &[0x0f, 0xaa], "close 4010");
        assert_eq!(&close[2..], b"ping timeout");
        assert_eq!(ended, Read::Ended(Ending::Closed));
        assert!(started.elapsed() >= Duration::from_millis(350));
    }

    #[tokio::test]
    async fn an_answering_client_stays() {
        let heartbeat = Heartbeat {
            ping_interval: Duration::from_millis(60),
            pong_timeout: Duration::from_millis(30),
            kind: PingKind::WebSocket,
        };
        let (mut socket, mut client) = open(Some(heartbeat));
        let mut pings = 0;
        let reader = async {
            loop {
                let mut got = [0u8; 2];
                client.read_exact(&mut got).await.unwrap();
                assert_eq!(got, [0x89, 0]);
                pings += 1;
                // A pong (masked, empty).
                client.write_all(&[0x8A, 0x80, 1, 2, 3, 4]).await.unwrap();
                if pings == 6 {
                    return;
                }
            }
        };
        tokio::select! {
            _ = reader => {}
            read = socket.read() => panic!("socket ended: {read:?}"),
        }
        assert_eq!(pings, 6);
    }
}
