//! The writer task: drains a connection's outbound queue onto the socket, pings the client,
//! and closes the connection when asked or when the client goes silent.
//!
//! Frames are encoded here rather than through fastwebsockets' writer: server frames are
//! unmasked, so a frame is a 2-to-10-byte header plus the shared payload. Every frame that is
//! already queued goes out in one `write` (a batch of up to 64 KiB), instead of one system call
//! per frame: under fan-out load that is the difference between a syscall per delivery and a
//! syscall per burst. The batch buffer is dropped after each write, so an idle connection
//! keeps no write buffer.

use crate::config::Config;
use crate::metrics::Metrics;
use fan_out::{OutFrame, Outbound};
use protocol::{CloseCode, Format};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{timeout, Instant};

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
    /// WebSocket-level pings; `None` where the protocol has a heartbeat of its own
    /// (Engine.IO).
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
            }),
            write_timeout: config.write_timeout,
        }
    }

    /// No WebSocket pings: the protocol has a heartbeat of its own (Engine.IO).
    pub fn without_pings(config: &Config) -> WriterConfig {
        WriterConfig {
            heartbeat: None,
            write_timeout: config.write_timeout,
        }
    }
}

/// Ping every `ping_interval`; a client silent for `ping_interval + pong_timeout` is gone.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
}

/// Milliseconds since `epoch` at which the reader last heard from the client.
pub type LastSeen = Arc<AtomicU64>;

/// Bytes gathered into one write at most.
const BATCH: usize = 64 * 1024;

pub(super) const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Appends one unmasked, final frame.
pub(super) fn put_frame(buf: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    buf.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        buf.push(n as u8);
    } else if n <= 0xffff {
        buf.push(126);
        buf.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        buf.push(127);
        buf.extend_from_slice(&(n as u64).to_be_bytes());
    }
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
struct Batch {
    buf: Vec<u8>,
    /// Set when the batch ends with our Close.
    closing: Option<u16>,
    data_bytes: u64,
}

impl Batch {
    /// One data frame. A slow consumer's backlog is dropped so its Close goes out promptly.
    fn data(&mut self, outbound: &Outbound, opcode: u8, bytes: &[u8]) {
        if !outbound.is_discarding() {
            put_frame(&mut self.buf, opcode, bytes);
            self.data_bytes += bytes.len() as u64;
        }
        outbound.written(bytes.len());
    }
}

/// Encodes `first` and whatever else is queued, up to [`BATCH`] bytes or a Close.
fn batch(
    first: OutFrame,
    rx: &mut UnboundedReceiver<OutFrame>,
    outbound: &Outbound,
    data_opcode: u8,
) -> Batch {
    let mut b = Batch {
        buf: Vec::new(),
        closing: None,
        data_bytes: 0,
    };
    let mut next = Some(first);
    while let Some(frame) = next.take() {
        match frame {
            // A Socket.IO bundle is a packet and its attachments: several messages, one item.
            OutFrame::Data(bytes)
                if outbound.format() == Format::SocketIo
                    && bytes.first() == Some(&protocol::socketio::BUNDLE) =>
            {
                if !outbound.is_discarding() {
                    for (text, part) in protocol::socketio::messages(&bytes) {
                        put_frame(&mut b.buf, if text { OP_TEXT } else { OP_BINARY }, part);
                        b.data_bytes += part.len() as u64;
                    }
                }
                outbound.written(bytes.len());
            }
            OutFrame::Data(bytes) => b.data(outbound, data_opcode, &bytes),
            OutFrame::Message { text, bytes } => {
                b.data(outbound, if text { OP_TEXT } else { OP_BINARY }, &bytes)
            }
            OutFrame::Pong(payload) => put_frame(&mut b.buf, OP_PONG, &payload),
            OutFrame::Close(code, reason) => {
                put_close(&mut b.buf, code, &reason);
                b.closing = Some(code);
                break;
            }
        }
        if b.buf.len() < BATCH {
            next = rx.try_recv().ok();
        }
    }
    b
}

/// Runs the writer until the connection ends, and says how it ended.
pub(super) async fn run<W: AsyncWrite + Unpin>(
    mut io: W,
    mut rx: UnboundedReceiver<OutFrame>,
    outbound: Arc<Outbound>,
    last_seen: LastSeen,
    epoch: Instant,
    config: WriterConfig,
    metrics: Arc<Metrics>,
) -> WriterEnd {
    let data_opcode = if outbound.format().is_text() {
        OP_TEXT
    } else {
        OP_BINARY
    };
    // Without a heartbeat the ping timer never fires (its arm below is disabled).
    let beat = config.heartbeat.unwrap_or(Heartbeat {
        ping_interval: Duration::from_secs(3600),
        pong_timeout: Duration::ZERO,
    });
    let mut ping = tokio::time::interval_at(epoch + beat.ping_interval, beat.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let silent_limit = (beat.ping_interval + beat.pong_timeout).as_millis() as u64;
    loop {
        tokio::select! {
            frame = rx.recv() => {
                let Some(first) = frame else { return WriterEnd::SocketGone };
                let Batch { buf, closing, data_bytes } = batch(first, &mut rx, &outbound, data_opcode);
                if data_bytes > 0 {
                    metrics.outbound_queue_bytes.observe(outbound.queued_bytes() as f64);
                    metrics.bytes_out.inc_by(data_bytes);
                }
                if !buf.is_empty() && write(&mut io, &buf, config.write_timeout).await.is_err() {
                    return WriterEnd::SocketGone;
                }
                if let Some(code) = closing {
                    let _ = timeout(config.write_timeout, io.shutdown()).await;
                    return WriterEnd::Closed(code);
                }
            }
            _ = ping.tick(), if config.heartbeat.is_some() => {
                let silent_ms = (epoch.elapsed().as_millis() as u64).saturating_sub(last_seen.load(Ordering::Relaxed));
                if silent_ms > silent_limit {
                    outbound.close(CloseCode::HEARTBEAT_TIMEOUT, "heartbeat timeout");
                    let mut buf = Vec::new();
                    put_close(&mut buf, CloseCode::HEARTBEAT_TIMEOUT, "heartbeat timeout");
                    let _ = write(&mut io, &buf, config.write_timeout).await;
                    return WriterEnd::HeartbeatTimeout;
                }
                let mut buf = Vec::with_capacity(2);
                put_frame(&mut buf, OP_PING, b"");
                if write(&mut io, &buf, config.write_timeout).await.is_err() {
                    return WriterEnd::SocketGone;
                }
            }
        }
    }
}

async fn write<W: AsyncWrite + Unpin>(io: &mut W, buf: &[u8], limit: Duration) -> Result<(), ()> {
    match timeout(limit, async {
        io.write_all(buf).await?;
        io.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut b = Vec::new();
        put_close(&mut b, 4009, &"x".repeat(500));
        assert_eq!(b.len(), 2 + 125);
        assert_eq!(&b[..4], &[0x88, 125, 0x0f, 0xa9]);
    }
}
