//! The inbound half of every WebSocket endpoint: frames in, whole messages out.
//!
//! One loop for the native protocol, Socket.IO and the test echo endpoint, so that the
//! conformance tests that run against the echo endpoint cover what clients really talk to.
//! Pings are answered, a Close is validated and echoed (RFC 6455 §5.5.1), fragments are
//! reassembled under the message limit, and every violation becomes its close code, queued on
//! the outbound so that the writer task sends it.
//!
//! No read buffer is held while a connection waits: the socket is polled with a buffer on the
//! stack of the poll (16 KiB, never in the connection's future), and what was read goes at
//! once into the [`Decoder`], which keeps only a partial header or the partial payload. Bytes
//! read beyond the frame that ends a message wait in `pending`, a heap buffer that exists only
//! while they do (a client that pipelines frames).

use super::close::{echo_close, CLOSE_GRACE};
use super::decoder::{Decoder, Frame, Progress, Violation};
use super::heartbeat::Beat;
use super::reassembly::{Reassembler, Step};
use crate::metrics::Metrics;
use bytes::Bytes;
use fan_out::Outbound;
use fastwebsockets::OpCode;
use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::time::timeout;

/// What a connection's loop gets next.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// A whole data message (text is valid UTF-8).
    Message { text: bool, payload: Vec<u8> },
    /// The connection is over.
    Ended(Ending),
}

/// How a connection ended, as its reader saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The client closed (its Close was echoed), or our writer ended first.
    Closed,
    /// The client broke the protocol; our Close with its code is queued.
    Violation,
    /// The socket is gone without a close handshake.
    Gone,
}

/// Bytes read from the socket at most per read: on the stack of the poll only.
const READ_CHUNK: usize = 16 * 1024;

/// Where the bytes come from.
pub(super) enum Source {
    /// The upgraded TCP connection itself (always, in the server).
    Tcp(OwnedReadHalf),
    /// Any other stream (one that is not hyper's TCP connection), through `tokio::io::split`.
    Stream(Box<dyn AsyncRead + Send + Unpin>),
}

impl Source {
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self {
            Source::Tcp(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Source::Stream(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

/// Why no frame came.
enum Stop {
    Violation(Violation),
    /// End of stream or a socket error.
    Gone,
}

/// The read half of one connection and what reading needs: the decoder, reassembly, the
/// outbound queue (for pongs and closes), and the heartbeat the ticker checks.
pub(super) struct Frames {
    source: Source,
    decoder: Decoder,
    /// Bytes read but not decoded yet, from `pending_at` on; empty (unallocated) otherwise.
    pending: Vec<u8>,
    pending_at: usize,
    reassembler: Reassembler,
    outbound: Arc<Outbound>,
    beat: Arc<Beat>,
    /// Whether any frame answers a ping (WebSocket pings); with Engine.IO pings only the
    /// driver's pong packets do.
    frames_answer: bool,
    metrics: Arc<Metrics>,
}

impl Frames {
    /// A reader on `source`; `pending` are bytes already read from it (hyper may have read
    /// past the upgrade request).
    pub(super) fn new(
        source: Source,
        pending: Vec<u8>,
        max_message_bytes: usize,
        outbound: Arc<Outbound>,
        beat: Arc<Beat>,
        frames_answer: bool,
        metrics: Arc<Metrics>,
    ) -> Frames {
        Frames {
            source,
            decoder: Decoder::new(max_message_bytes),
            pending,
            pending_at: 0,
            reassembler: Reassembler::new(max_message_bytes),
            outbound,
            beat,
            frames_answer,
            metrics,
        }
    }

    /// Gives a probe's reader the queue and heartbeat of the session it now serves (see
    /// [`super::Probe::attach`]); nothing is pending in either at that point that must be kept.
    pub(super) fn attach(&mut self, outbound: Arc<Outbound>, beat: Arc<Beat>) {
        self.outbound = outbound;
        self.beat = beat;
    }

    /// The connection's heartbeat, shared with its writer.
    pub(super) fn beat(&self) -> &Arc<Beat> {
        &self.beat
    }

    /// Reads until a whole message or the end of the connection. Cancel-safe: everything
    /// read is kept in `self`, so dropping the future loses nothing.
    pub(super) async fn next(&mut self) -> Read {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Read> {
        loop {
            let frame = match ready!(self.poll_frame(cx)) {
                Ok(frame) => frame,
                Err(Stop::Gone) => return Poll::Ready(Read::Ended(Ending::Gone)),
                Err(Stop::Violation(v)) => return Poll::Ready(self.violation(v.code, v.why)),
            };
            if self.frames_answer {
                self.beat.seen();
            }
            self.metrics.bytes_in.inc_by(frame.payload.len() as u64);
            let step = match frame.opcode {
                OpCode::Ping => {
                    // Capped: a client that pings without reading is not answered beyond
                    // what is queued for it already (see `Beat::may_queue_pong`).
                    if self.beat.may_queue_pong() {
                        self.outbound.pong(Bytes::from(frame.payload));
                    }
                    continue;
                }
                OpCode::Pong => continue,
                OpCode::Close => {
                    return Poll::Ready(match echo_close(&frame.payload) {
                        Ok(code) => {
                            self.outbound.close(code, "");
                            Read::Ended(Ending::Closed)
                        }
                        Err((code, why)) => self.violation(code, why),
                    })
                }
                opcode => self.reassembler.push(opcode, frame.fin, frame.payload),
            };
            match step {
                Step::Continue => continue,
                Step::Fail(code, why) => return Poll::Ready(self.violation(code, why)),
                Step::Message { text, payload } => {
                    return Poll::Ready(Read::Message { text, payload })
                }
            }
        }
    }

    /// The next whole frame: from the pending bytes first, then from the socket.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, Stop>> {
        // A broken stream stays broken: nothing after the bad frame is read.
        if let Some(v) = self.decoder.failure() {
            return Poll::Ready(Err(Stop::Violation(v)));
        }
        if self.pending_at < self.pending.len() {
            let (used, progress) = self.decoder.decode(&self.pending[self.pending_at..]);
            self.pending_at += used;
            if self.pending_at == self.pending.len() {
                self.pending = Vec::new();
                self.pending_at = 0;
            }
            match progress {
                Progress::Need => {}
                Progress::Frame(frame) => return Poll::Ready(Ok(frame)),
                Progress::Fail(v) => return Poll::Ready(Err(Stop::Violation(v))),
            }
        }
        loop {
            let mut storage = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut storage);
            if ready!(self.source.poll_read(cx, &mut buf)).is_err() {
                return Poll::Ready(Err(Stop::Gone));
            }
            let input = buf.filled();
            if input.is_empty() {
                return Poll::Ready(Err(Stop::Gone));
            }
            let (used, progress) = self.decoder.decode(input);
            match progress {
                Progress::Need => continue,
                Progress::Frame(frame) => {
                    if used < input.len() {
                        self.pending = input[used..].to_vec();
                        self.pending_at = 0;
                    }
                    return Poll::Ready(Ok(frame));
                }
                Progress::Fail(v) => return Poll::Ready(Err(Stop::Violation(v))),
            }
        }
    }

    /// Queues our Close with `code`; the writer sends it.
    fn violation(&self, code: u16, why: &'static str) -> Read {
        self.outbound.close(code, why);
        Read::Ended(Ending::Violation)
    }

    /// After our Close went out: give the client a moment to answer it, for a clean close.
    /// Frames before its Close are dropped; a broken frame or the end of the stream ends the
    /// wait.
    pub(super) async fn await_close(&mut self) {
        let _ = timeout(
            CLOSE_GRACE,
            poll_fn(|cx| loop {
                match ready!(self.poll_frame(cx)) {
                    Ok(frame) if frame.opcode != OpCode::Close => continue,
                    _ => return Poll::Ready(()),
                }
            }),
        )
        .await;
    }

    /// Whether the reader is on the TCP stream itself (not the fallback through
    /// `tokio::io::split`).
    #[cfg(test)]
    pub(super) fn is_tcp(&self) -> bool {
        matches!(self.source, Source::Tcp(_))
    }

    /// Whether anything is held for this connection's reading beyond its fixed-size state:
    /// a partial frame or message, or bytes read ahead.
    #[cfg(test)]
    fn holds_anything(&self) -> bool {
        self.pending.capacity() > 0
            || !self.decoder.is_between_frames()
            || self.reassembler.is_collecting()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use fan_out::OutFrame;
    use protocol::Format;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    const MASK: [u8; 4] = [1, 2, 3, 4];

    /// A masked client frame; `first` is FIN, RSV and the opcode.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mut out = vec![first, 0x80 | payload.len() as u8];
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    fn text(payload: &str) -> Vec<u8> {
        frame(0x81, payload.as_bytes())
    }

    /// A reader on one end of a real TCP connection, the client's end, and the outbound
    /// queue's receiver.
    async fn tcp_frames(pending: Vec<u8>) -> (Frames, TcpStream, fan_out::FrameReceiver) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, _write) = server.into_split();
        let (outbound, rx) = Outbound::new(Format::Json, 1 << 20);
        let frames = Frames::new(
            Source::Tcp(read),
            pending,
            1000,
            Arc::new(outbound),
            Arc::new(Beat::new()),
            true,
            Arc::new(Metrics::new().unwrap()),
        );
        (frames, client, rx)
    }

    fn message(text: &str) -> Read {
        Read::Message {
            text: true,
            payload: text.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn messages_pings_and_nothing_held_between_them() {
        let (mut frames, mut client, mut rx) = tcp_frames(Vec::new()).await;
        assert!(!frames.holds_anything());
        // Three frames in one write: the first message comes out, the rest waits in
        // `pending`, which is released once it is decoded.
        let mut bytes = text("one");
        bytes.extend(frame(0x89, b"are you there"));
        bytes.extend(frame(0x01, b"tw"));
        bytes.extend(frame(0x80, b"o"));
        client.write_all(&bytes).await.unwrap();
        assert_eq!(frames.next().await, message("one"));
        assert!(frames.pending.capacity() > 0);
        assert_eq!(frames.next().await, message("two"));
        assert!(!frames.holds_anything());
        match rx.try_recv().unwrap() {
            OutFrame::Pong(p) => assert_eq!(&p[..], b"are you there"),
            other => panic!("{other:?}"),
        }
        // A frame cut in three writes.
        let bytes = text("three");
        for part in [&bytes[..1], &bytes[1..7], &bytes[7..]] {
            client.write_all(part).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(frames.next().await, message("three"));
        assert!(!frames.holds_anything());
        // The client goes away.
        drop(client);
        assert_eq!(frames.next().await, Read::Ended(Ending::Gone));
    }

    #[tokio::test]
    async fn a_ping_flood_queues_a_bounded_number_of_pongs() {
        let (mut frames, mut client, mut rx) = tcp_frames(Vec::new()).await;
        // Pings nobody takes the pongs of (no writer here), then a message.
        let mut bytes = Vec::new();
        for _ in 0..1000 {
            bytes.extend(frame(0x89, b"p"));
        }
        bytes.extend(text("after"));
        client.write_all(&bytes).await.unwrap();
        assert_eq!(frames.next().await, message("after"));
        let mut pongs = 0;
        while let Ok(OutFrame::Pong(_)) = rx.try_recv() {
            pongs += 1;
        }
        assert_eq!(pongs, 64);
    }

    #[tokio::test]
    async fn bytes_read_before_the_reader_existed_come_first() {
        let mut early = text("early");
        early.extend_from_slice(&text("split")[..3]);
        let (mut frames, mut client, _rx) = tcp_frames(early).await;
        client.write_all(&text("split")[3..]).await.unwrap();
        assert_eq!(frames.next().await, message("early"));
        assert_eq!(frames.next().await, message("split"));
        assert!(!frames.holds_anything());
    }

    #[tokio::test]
    async fn next_is_cancel_safe() {
        let (mut frames, mut client, _rx) = tcp_frames(Vec::new()).await;
        let bytes = text("patience");
        for b in &bytes {
            client.write_all(&[*b]).await.unwrap();
            // Gives up on each read before the frame is whole; nothing is lost.
            let r = tokio::time::timeout(Duration::from_millis(2), frames.next()).await;
            if let Ok(read) = r {
                assert_eq!(read, message("patience"));
                return;
            }
        }
        assert_eq!(frames.next().await, message("patience"));
    }

    #[tokio::test]
    async fn violations_queue_their_close() {
        // The frame, its code, and whether the stream is broken from there on (a bad frame)
        // or merely the connection (a bad close payload, bad UTF-8).
        for (bytes, code, broken) in [
            (frame(0x81 | 0x40, b"rsv"), 1002, true),
            (frame(0x83, b""), 1002, true),
            (vec![0x81, 0x03, b'a', b'b', b'c'], 1002, true),
            (vec![0x82, 0xfe, 0x03, 0xe9, 1, 2, 3, 4], 1009, true),
            (frame(0x88, &[0x03]), 1002, false),
            (frame(0x81, &[0xff]), 1007, false),
        ] {
            let (mut frames, mut client, mut rx) = tcp_frames(Vec::new()).await;
            client.write_all(&bytes).await.unwrap();
            assert_eq!(frames.next().await, Read::Ended(Ending::Violation));
            match rx.try_recv().unwrap() {
                OutFrame::Close(c, _) => assert_eq!(c, code, "{bytes:02x?}"),
                other => panic!("{other:?}"),
            }
            // The wait for the client's Close ends at once when the stream is broken, else
            // at the end of the stream.
            if !broken {
                drop(client);
            }
            tokio::time::timeout(Duration::from_millis(500), frames.await_close())
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_close_is_echoed_and_awaited() {
        let (mut frames, mut client, mut rx) = tcp_frames(Vec::new()).await;
        let mut bytes = frame(0x88, &[0x0f, 0xa0, b'b', b'y', b'e']);
        bytes.extend(text("after the close"));
        client.write_all(&bytes).await.unwrap();
        assert_eq!(frames.next().await, Read::Ended(Ending::Closed));
        match rx.try_recv().unwrap() {
            OutFrame::Close(c, _) => assert_eq!(c, 4000),
            other => panic!("{other:?}"),
        }
        // After our Close: frames are dropped until the client's Close.
        client.write_all(&frame(0x88, &[0x03, 0xe8])).await.unwrap();
        tokio::time::timeout(Duration::from_millis(500), frames.await_close())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn any_stream_works_too() {
        let (mut client, server) = tokio::io::duplex(64);
        let (read, _write) = tokio::io::split(server);
        let (outbound, _rx) = Outbound::new(Format::Json, 1 << 20);
        let mut frames = Frames::new(
            Source::Stream(Box::new(read)),
            Vec::new(),
            1000,
            Arc::new(outbound),
            Arc::new(Beat::new()),
            true,
            Arc::new(Metrics::new().unwrap()),
        );
        let long = "x".repeat(100);
        let mut bytes = text(&long);
        bytes.extend(text("b"));
        tokio::spawn(async move { client.write_all(&bytes).await.unwrap() });
        assert_eq!(frames.next().await, message(&long));
        assert_eq!(frames.next().await, message("b"));
    }
}
