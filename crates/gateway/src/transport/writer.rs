//! The writer task: drains a connection's outbound queue onto the socket, pings the client
//! when the heartbeat ticker ([`super::heartbeat`]) says so, and closes the connection when
//! asked or when the client goes silent.
//!
//! Frames are encoded here rather than through fastwebsockets' writer: server frames are
//! unmasked, so a frame is a 2-to-10-byte header plus the shared payload. Every frame that is
//! already queued goes out in one `write` (a batch of up to 64 KiB), instead of one system call
//! per frame: under fan-out load that is the difference between a syscall per delivery and a
//! syscall per burst. The batch buffer is dropped after each write, so an idle connection
//! keeps no write buffer, and it has no timer of its own either: an idle writer waits on its
//! queue and on its heartbeat flag, nothing else.

use super::heartbeat::{Beat, Due};
use crate::config::Config;
use crate::metrics::Metrics;
use bytes::Bytes;
use fan_out::{header, FrameHeader, OutFrame, Outbound};
use protocol::{CloseCode, Format};
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

/// How the writer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterEnd {
    /// It sent Close with this code.
    Closed(u16),
    /// The client stopped answering pings.
    HeartbeatTimeout,
    /// The socket failed or a write took too long.
    SocketGone,
}

/// How the writer treats one connection.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Pings from the shared ticker ([`super::heartbeat`]); `None`: no pings at all.
    pub heartbeat: Option<Heartbeat>,
    /// A write that takes longer ends the connection.
    pub write_timeout: Duration,
}

impl WriterConfig {
    /// WebSocket pings per `--ping-interval` and `--pong-timeout`.
    pub fn with_pings(config: &Config) -> WriterConfig {
        WriterConfig {
            heartbeat: Some(Heartbeat {
                ping_interval: config.ping_interval,
                pong_timeout: config.pong_timeout,
                kind: PingKind::WebSocket,
            }),
            write_timeout: config.write_timeout,
        }
    }

    /// Engine.IO pings per `--socketio-ping-interval` and `--socketio-ping-timeout`, from the
    /// same ticker as WebSocket pings: no timer and no task of its own per connection.
    pub fn with_engine_io_pings(config: &Config) -> WriterConfig {
        WriterConfig {
            heartbeat: Some(Heartbeat {
                ping_interval: config.socketio_ping_interval,
                pong_timeout: config.socketio_ping_timeout,
                kind: PingKind::EngineIo,
            }),
            write_timeout: config.write_timeout,
        }
    }

    /// No pings from the ticker: a Socket.IO session that began with long-polling keeps its
    /// own Engine.IO heartbeat task across the upgrade (see `socketio::heartbeat`), and
    /// tests.
    pub fn without_pings(config: &Config) -> WriterConfig {
        WriterConfig {
            heartbeat: None,
            write_timeout: config.write_timeout,
        }
    }
}

/// Ping every `ping_interval`; a client that has not answered a ping within `pong_timeout`,
/// and silent for `ping_interval + pong_timeout`, is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub kind: PingKind,
}

/// What a ping is on the wire, and what answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingKind {
    /// A WebSocket Ping frame (RFC 6455 section 5.5.2); any frame from the client answers it.
    WebSocket,
    /// An Engine.IO ping packet, the text message `2`; only a pong packet (`3`) answers it,
    /// which the driver reports ([`super::Socket::liveness`]), as the reference server
    /// counts only pongs.
    EngineIo,
}

impl PingKind {
    /// The whole ping frame.
    fn frame(self) -> &'static [u8] {
        match self {
            PingKind::WebSocket => &PING_FRAME,
            PingKind::EngineIo => &ENGINE_IO_PING_FRAME,
        }
    }

    /// The reason in the Close that a heartbeat timeout sends (4010 for both).
    fn timeout_reason(self) -> &'static str {
        match self {
            PingKind::WebSocket => "heartbeat timeout",
            PingKind::EngineIo => "ping timeout",
        }
    }
}

/// Bytes gathered into one write at most.
const BATCH: usize = 64 * 1024;

pub(super) const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Appends one unmasked, final frame (its header from [`header`], the one encoder of it that
/// the direct write uses too).
pub(super) fn put_frame(buf: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    buf.extend_from_slice(header(opcode, payload.len()).as_slice());
    buf.extend_from_slice(payload);
}

fn put_close(buf: &mut Vec<u8>, code: u16, reason: &str) {
    let mut payload = code.to_be_bytes().to_vec();
    // A control frame carries at most 125 bytes.
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    payload.extend_from_slice(reason);
    put_frame(buf, OP_CLOSE, &payload);
}

/// The frames queued at one moment, encoded for one write.
///
/// The first frame, when it is a plain data frame, is not copied: its header is built here and
/// its payload is the shared `Bytes` every recipient holds, written together with one vectored
/// write. That is the whole batch whenever the writer keeps up (one frame per wake-up), so a
/// delivery then allocates and copies nothing here. Frames queued behind it are copied into
/// `buf`, sized once from the queue's byte count.
struct Batch {
    /// What a direct write left of a frame ([`Outbound::take_rest`]): first of all.
    rest: Option<Bytes>,
    lead: Option<(FrameHeader, Bytes)>,
    buf: Vec<u8>,
    /// Set when the batch ends with our Close.
    closing: Option<u16>,
    data_bytes: u64,
}

impl Batch {
    /// One data frame. A slow consumer's backlog is dropped so its Close goes out promptly.
    fn data(&mut self, outbound: &Outbound, opcode: u8, bytes: &[u8]) {
        if !outbound.is_discarding() {
            self.reserve(outbound, bytes.len());
            put_frame(&mut self.buf, opcode, bytes);
            self.data_bytes += bytes.len() as u64;
        }
        outbound.written(bytes.len());
    }

    /// Sizes `buf` on first use for everything queued now (headers included), so that a batch
    /// costs one allocation rather than one per doubling.
    fn reserve(&mut self, outbound: &Outbound, len: usize) {
        if self.buf.capacity() == 0 {
            let queued = outbound.queued_bytes().max(len);
            self.buf.reserve((queued + queued / 8 + 16).min(BATCH + 16));
        }
    }

    /// The bytes to write, in order.
    fn slices(&self) -> [IoSlice<'_>; 4] {
        let (header, payload): (&[u8], &[u8]) = match &self.lead {
            Some((h, p)) => (h.as_slice(), p),
            None => (&[], &[]),
        };
        [
            IoSlice::new(self.rest.as_deref().unwrap_or_default()),
            IoSlice::new(header),
            IoSlice::new(payload),
            IoSlice::new(&self.buf),
        ]
    }

    fn is_empty(&self) -> bool {
        self.rest.is_none() && self.lead.is_none() && self.buf.is_empty()
    }

    fn len(&self) -> usize {
        self.rest.as_ref().map_or(0, Bytes::len)
            + self.buf.len()
            + self.lead.as_ref().map_or(0, |(_, p)| p.len())
    }
}

/// Encodes `first` and whatever else is queued, up to [`BATCH`] bytes or a Close.
fn batch(
    first: OutFrame,
    rx: &mut fan_out::FrameReceiver,
    outbound: &Outbound,
    beat: &Beat,
    data_opcode: u8,
) -> Batch {
    let mut b = Batch {
        rest: outbound.take_rest(),
        lead: None,
        buf: Vec::new(),
        closing: None,
        data_bytes: 0,
    };
    if let Some(rest) = &b.rest {
        outbound.written(rest.len());
    }
    let mut next = Some(first);
    while let Some(frame) = next.take() {
        outbound.took();
        match frame {
            // A Socket.IO bundle is a packet and its attachments: several messages, one item.
            OutFrame::Data(bytes)
                if outbound.format() == Format::SocketIo
                    && bytes.first() == Some(&protocol::socketio::BUNDLE) =>
            {
                if !outbound.is_discarding() {
                    b.reserve(outbound, bytes.len());
                    for (text, part) in protocol::socketio::messages(&bytes) {
                        put_frame(&mut b.buf, if text { OP_TEXT } else { OP_BINARY }, part);
                        b.data_bytes += part.len() as u64;
                    }
                }
                outbound.written(bytes.len());
            }
            // The batch's first frame: written from where it is, not copied.
            OutFrame::Data(bytes) if b.lead.is_none() && b.buf.is_empty() => {
                outbound.written(bytes.len());
                if !outbound.is_discarding() {
                    b.data_bytes += bytes.len() as u64;
                    b.lead = Some((header(data_opcode, bytes.len()), bytes));
                }
            }
            OutFrame::Data(bytes) => b.data(outbound, data_opcode, &bytes),
            OutFrame::Message { text, bytes } => {
                b.data(outbound, if text { OP_TEXT } else { OP_BINARY }, &bytes)
            }
            OutFrame::Pong(payload) => {
                beat.pong_taken();
                put_frame(&mut b.buf, OP_PONG, &payload)
            }
            // Its rest was taken above.
            OutFrame::Rest => {}
            OutFrame::Close(code, reason) => {
                put_close(&mut b.buf, code, &reason);
                b.closing = Some(code);
                break;
            }
        }
        if b.len() < BATCH {
            next = rx.try_recv().ok();
        }
    }
    b
}

/// What the writer does next.
enum Work {
    Batch(Batch),
    Ping,
    HeartbeatTimeout,
}

/// An empty, final Ping.
const PING_FRAME: [u8; 2] = [0x80 | OP_PING, 0];

/// A final text frame holding the Engine.IO ping packet, `2`.
const ENGINE_IO_PING_FRAME: [u8; 3] = [0x80 | OP_TEXT, 1, b'2'];

/// Runs the writer until the connection ends, and says how it ended. `beat` is shared with
/// the connection's reader; the ticker's requests are waited for only with `pings`, and a
/// ping is what that kind of ping is on the wire.
///
/// This future lives as long as the connection, so it is kept small: what to do is decided
/// first (the `select!` and what it returns end there), and only then is anything written.
pub(super) async fn run<W: AsyncWrite + Unpin>(
    mut io: W,
    mut rx: fan_out::FrameReceiver,
    outbound: Arc<Outbound>,
    beat: Arc<Beat>,
    pings: Option<PingKind>,
    write_timeout: Duration,
    metrics: Arc<Metrics>,
) -> WriterEnd {
    let data_opcode = if outbound.format().is_text() {
        OP_TEXT
    } else {
        OP_BINARY
    };
    // What a ping is; used only with pings (nothing asks for one otherwise).
    let kind = pings.unwrap_or(PingKind::WebSocket);
    loop {
        let work = tokio::select! {
            frame = rx.recv() => match frame {
                Some(first) => {
                    // Nothing is taken off the queue before this: a push that would write
                    // directly meanwhile sees `first` still pending, and queues behind it.
                    outbound.start_writing().await;
                    Work::Batch(batch(first, &mut rx, &outbound, &beat, data_opcode))
                }
                None => return end(&outbound, WriterEnd::SocketGone),
            },
            due = beat.due(), if pings.is_some() => {
                outbound.start_writing().await;
                match due {
                    Due::Ping => Work::Ping,
                    Due::Timeout => Work::HeartbeatTimeout,
                }
            },
        };
        // By reference: the batch is not moved into a second place in the future.
        match &work {
            Work::Batch(b) => {
                if b.data_bytes > 0 {
                    metrics
                        .outbound_queue_bytes
                        .observe(outbound.queued_bytes() as f64);
                    metrics.bytes_out.inc_by(b.data_bytes);
                }
                if !b.is_empty()
                    && write(&mut io, &mut b.slices(), write_timeout)
                        .await
                        .is_err()
                {
                    return end(&outbound, WriterEnd::SocketGone);
                }
                if let Some(code) = b.closing {
                    // Boxed: once per connection, and kept out of the future that idles.
                    let _ = Box::pin(timeout(write_timeout, io.shutdown())).await;
                    return end(&outbound, WriterEnd::Closed(code));
                }
                outbound.done_writing();
            }
            Work::Ping => {
                let frame = &mut [IoSlice::new(kind.frame())];
                if write(&mut io, frame, write_timeout).await.is_err() {
                    return end(&outbound, WriterEnd::SocketGone);
                }
                outbound.done_writing();
                // Once it is out: the client's time to answer starts now, not when the
                // ticker asked (this task may have run late).
                beat.pinged();
            }
            Work::HeartbeatTimeout => {
                let why = kind.timeout_reason();
                outbound.close(CloseCode::HEARTBEAT_TIMEOUT, why);
                let mut buf = Vec::new();
                put_close(&mut buf, CloseCode::HEARTBEAT_TIMEOUT, why);
                let _ = write(&mut io, &mut [IoSlice::new(&buf)], write_timeout).await;
                return end(&outbound, WriterEnd::HeartbeatTimeout);
            }
        }
    }
}

/// The writer's last step, whatever the way out: no more direct writes (the socket is let go
/// of). `writing` is not given back, so no push writes to the socket again.
fn end(outbound: &Outbound, how: WriterEnd) -> WriterEnd {
    outbound.stop_direct();
    how
}

/// Writes `bufs` (in order, as one byte string) and flushes, within `limit`. The socket is
/// first offered the bytes at once, without a timer and without waiting (a no-op waker:
/// nothing is awaited): one with room in its send buffer takes a whole batch that way, in one
/// vectored write. Only a write that has to wait pays for a timer, boxed, so that the writer's
/// future, which lives as long as the connection, holds neither a timer nor a write in progress
/// while it waits for its queue.
async fn write<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut bufs: &mut [IoSlice<'_>],
    limit: Duration,
) -> Result<(), ()> {
    if write_now(io, &mut Context::from_waker(Waker::noop()), &mut bufs)? {
        return Ok(());
    }
    match Box::pin(timeout(limit, async move {
        IoSlice::advance_slices(&mut bufs, 0);
        while !bufs.is_empty() {
            let n =
                std::future::poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, bufs)).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut bufs, n);
        }
        io.flush().await
    }))
    .await
    {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Writes what the socket takes now from `bufs` (advanced past what was written), then
/// flushes: `Ok(true)` when all is written and flushed, `Ok(false)` when the socket has to be
/// waited for, `Err` when it failed.
fn write_now<W: AsyncWrite + Unpin>(
    io: &mut W,
    cx: &mut Context<'_>,
    bufs: &mut &mut [IoSlice<'_>],
) -> Result<bool, ()> {
    // Empty slices first are dropped: a write of nothing is not asked for.
    IoSlice::advance_slices(bufs, 0);
    while !bufs.is_empty() {
        match Pin::new(&mut *io).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(()),
            Poll::Ready(Ok(n)) => IoSlice::advance_slices(bufs, n),
            Poll::Pending => return Ok(false),
        }
    }
    match Pin::new(io).poll_flush(cx) {
        Poll::Ready(Ok(())) => Ok(true),
        Poll::Ready(Err(_)) => Err(()),
        Poll::Pending => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn writes_that_wait_and_writes_that_time_out() {
        let limit = Duration::from_millis(200);
        // Room for all of it: written at once.
        let (mut server, mut client) = tokio::io::duplex(1024);
        write(&mut server, &mut [IoSlice::new(&[7; 100])], limit)
            .await
            .unwrap();
        let mut got = [0u8; 100];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut got)
            .await
            .unwrap();
        assert_eq!(got, [7; 100]);
        // A 16-byte pipe and a reader that takes its time: the write waits, and completes.
        let (mut server, mut client) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 10];
            while got.len() < 1000 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let n = tokio::io::AsyncReadExt::read(&mut client, &mut buf)
                    .await
                    .unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        write(
            &mut server,
            &mut [IoSlice::new(&data)],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(reader.await.unwrap(), data);
        // Nobody reads: the write gives up after the limit.
        let (mut server, _client) = tokio::io::duplex(16);
        let started = tokio::time::Instant::now();
        assert_eq!(
            write(&mut server, &mut [IoSlice::new(&[0; 100])], limit).await,
            Err(())
        );
        assert!(started.elapsed() >= limit);
        // The peer is gone: an error at once.
        let (mut server, client) = tokio::io::duplex(16);
        drop(client);
        assert_eq!(
            write(&mut server, &mut [IoSlice::new(&[0; 10])], limit).await,
            Err(())
        );
    }

    #[test]
    fn frame_headers() {
        let mut b = Vec::new();
        put_frame(&mut b, OP_TEXT, b"hi");
        assert_eq!(b, [0x81, 2, b'h', b'i']);
        let mut b = Vec::new();
        put_frame(&mut b, OP_BINARY, &[0u8; 300]);
        assert_eq!(&b[..4], &[0x82, 126, 1, 44]);
        let mut b = Vec::new();
        put_frame(&mut b, OP_TEXT, &vec![0u8; 70_000]);
        assert_eq!(&b[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        for n in [0, 125, 126, 300, 0xffff, 0x10000, 70_000] {
            let mut b = Vec::new();
            put_frame(&mut b, OP_TEXT, &vec![0u8; n]);
            assert_eq!(header(OP_TEXT, n).as_slice(), &b[..b.len() - n], "{n}");
        }
        let mut b = Vec::new();
        put_close(&mut b, 4009, &"x".repeat(500));
        assert_eq!(b.len(), 2 + 125);
        assert_eq!(&b[..4], &[0x88, 125, 0x0f, 0xa9]);
    }
}
