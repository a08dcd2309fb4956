//! The writer task: drains a connection's outbound queue onto the socket, pings the client,
//! and closes the connection when asked or when the client goes silent.

use crate::metrics::Metrics;
use fan_out::{OutFrame, Outbound};
use fastwebsockets::{Frame, OpCode, Payload, WebSocketWrite};
use protocol::CloseCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWrite;
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

pub struct WriterConfig {
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub write_timeout: Duration,
}

/// Milliseconds since `epoch` at which the reader last heard from the client.
pub type LastSeen = Arc<AtomicU64>;

pub async fn run<W: AsyncWrite + Unpin>(
    mut ws: WebSocketWrite<W>,
    mut rx: UnboundedReceiver<OutFrame>,
    outbound: Arc<Outbound>,
    last_seen: LastSeen,
    epoch: Instant,
    config: WriterConfig,
    metrics: Arc<Metrics>,
) -> WriterEnd {
    let data_opcode = if outbound.format().is_text() {
        OpCode::Text
    } else {
        OpCode::Binary
    };
    let mut ping = tokio::time::interval_at(epoch + config.ping_interval, config.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let silent_limit = (config.ping_interval + config.pong_timeout).as_millis() as u64;
    loop {
        tokio::select! {
            frame = rx.recv() => {
                let Some(frame) = frame else { return WriterEnd::SocketGone };
                let result = match frame {
                    OutFrame::Data(bytes) => {
                        let len = bytes.len();
                        // A slow consumer's backlog is dropped so its Close goes out promptly.
                        let r = if outbound.is_discarding() {
                            Ok(())
                        } else {
                            metrics.outbound_queue_bytes.observe(outbound.queued_bytes() as f64);
                            let frame = Frame::new(true, data_opcode, None, Payload::Borrowed(&bytes));
                            let r = write(&mut ws, frame, config.write_timeout).await;
                            metrics.bytes_out.inc_by(len as u64);
                            r
                        };
                        outbound.written(len);
                        r
                    }
                    OutFrame::Pong(payload) => {
                        write(&mut ws, Frame::pong(Payload::Borrowed(&payload)), config.write_timeout).await
                    }
                    OutFrame::Close(code, reason) => {
                        let _ = write(&mut ws, Frame::close(code, reason.as_bytes()), config.write_timeout).await;
                        let _ = timeout(config.write_timeout, ws.flush()).await;
                        return WriterEnd::Closed(code);
                    }
                };
                if result.is_err() {
                    return WriterEnd::SocketGone;
                }
                // Batch: flush only when nothing else is waiting.
                if rx.is_empty() && !matches!(timeout(config.write_timeout, ws.flush()).await, Ok(Ok(()))) {
                    return WriterEnd::SocketGone;
                }
            }
            _ = ping.tick() => {
                let silent_ms = (epoch.elapsed().as_millis() as u64).saturating_sub(last_seen.load(Ordering::Relaxed));
                if silent_ms > silent_limit {
                    outbound.close(CloseCode::HEARTBEAT_TIMEOUT, "heartbeat timeout");
                    let _ = write(&mut ws, Frame::close(CloseCode::HEARTBEAT_TIMEOUT, b"heartbeat timeout"), config.write_timeout).await;
                    return WriterEnd::HeartbeatTimeout;
                }
                let ping = Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b""));
                if write(&mut ws, ping, config.write_timeout).await.is_err()
                    || !matches!(timeout(config.write_timeout, ws.flush()).await, Ok(Ok(())))
                {
                    return WriterEnd::SocketGone;
                }
            }
        }
    }
}

async fn write<W: AsyncWrite + Unpin>(
    ws: &mut WebSocketWrite<W>,
    frame: Frame<'_>,
    limit: Duration,
) -> Result<(), ()> {
    if ws.is_closed() {
        return Err(());
    }
    match timeout(limit, ws.write_frame(frame)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}
