//! The inbound half of every WebSocket endpoint: frames in, whole messages out.
//!
//! One loop for the native protocol, Socket.IO and the test echo endpoint, so that the
//! conformance tests that run against the echo endpoint cover what clients really talk to.
//! Pings are answered, a Close is validated and echoed (RFC 6455 §5.5.1), fragments are
//! reassembled under the message limit, and every violation becomes its close code, queued on
//! the outbound so that the writer task sends it.

use super::reader::{close_code_for, echo_close, Reassembler, Step};
use super::writer::LastSeen;
use crate::metrics::Metrics;
use bytes::Bytes;
use fan_out::Outbound;
use fastwebsockets::{Frame, OpCode, WebSocketRead};
use protocol::CloseCode;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, ReadHalf};
use tokio::time::{timeout, Instant};

/// How long to wait for the client's Close after ours, for a clean close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What the client sent next.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A whole data message (text is valid UTF-8).
    Message { text: bool, payload: Vec<u8> },
    /// The client closed; its Close was echoed.
    Closed,
    /// A protocol violation; our Close with this code is queued.
    Violation(u16),
    /// The socket is gone without a close handshake.
    Gone,
}

pub struct Frames<S> {
    pub(super) reader: WebSocketRead<ReadHalf<S>>,
    pub(super) reassembler: Reassembler,
    pub(super) outbound: Arc<Outbound>,
    pub(super) last_seen: LastSeen,
    pub(super) epoch: Instant,
    pub(super) metrics: Arc<Metrics>,
}

/// The largest payload of a control frame (RFC 6455 section 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// What fastwebsockets 0.10 lets through and RFC 6455 forbids: a client frame without a mask
/// (section 5.1: the server MUST close the connection), and a Close or Pong over 125 bytes
/// (section 5.5; fastwebsockets checks Ping only). Reserved bits and opcodes, fragmented
/// control frames and oversized pings are refused by fastwebsockets itself.
fn frame_violation(frame: &mut Frame<'_>) -> Option<&'static str> {
    // The mask is private to `Frame`, but its header encoding shows it: bit 7 of the
    // second byte. 16 bytes fit any header (at most 14).
    let mut head = [0u8; 16];
    frame.fmt_head(&mut head);
    if head[1] & 0x80 == 0 {
        return Some("client frames must be masked");
    }
    let control = matches!(frame.opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
    if control && frame.payload.len() > MAX_CONTROL_PAYLOAD {
        return Some("control frame over 125 bytes");
    }
    None
}

impl<S: AsyncRead + Unpin> Frames<S> {
    /// Reads until a whole message or the end of the connection. Not cancel-safe (a frame
    /// may be half read): only race it against the connection's own end.
    pub async fn next(&mut self) -> Inbound {
        let mut no_obligations = |_: Frame<'_>| async { Ok::<(), Infallible>(()) };
        loop {
            let mut frame = match self.reader.read_frame(&mut no_obligations).await {
                Ok(frame) => frame,
                Err(e) => {
                    return match close_code_for(&e) {
                        Some((code, why)) => {
                            self.outbound.close(code, why);
                            Inbound::Violation(code)
                        }
                        None => Inbound::Gone,
                    }
                }
            };
            self.last_seen
                .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            self.metrics.bytes_in.inc_by(frame.payload.len() as u64);
            if let Some(why) = frame_violation(&mut frame) {
                self.outbound.close(CloseCode::PROTOCOL_ERROR, why);
                return Inbound::Violation(CloseCode::PROTOCOL_ERROR);
            }
            let step = match frame.opcode {
                OpCode::Ping => {
                    self.outbound.pong(Bytes::copy_from_slice(&frame.payload));
                    continue;
                }
                OpCode::Pong => continue,
                OpCode::Close => {
                    return match echo_close(&frame.payload) {
                        Ok(code) => {
                            self.outbound.close(code, "");
                            Inbound::Closed
                        }
                        Err((code, why)) => {
                            self.outbound.close(code, why);
                            Inbound::Violation(code)
                        }
                    }
                }
                opcode => self.reassembler.push(opcode, frame.fin, &frame.payload),
            };
            match step {
                Step::Continue => continue,
                Step::Fail(code, why) => {
                    self.outbound.close(code, why);
                    return Inbound::Violation(code);
                }
                Step::Message { text, payload } => return Inbound::Message { text, payload },
            }
        }
    }

    /// After our Close went out: give the client a moment to answer it, for a clean close.
    pub async fn await_close(&mut self) {
        let mut no_obligations = |_: Frame<'_>| async { Ok::<(), Infallible>(()) };
        let _ = timeout(CLOSE_GRACE, async {
            while let Ok(frame) = self.reader.read_frame(&mut no_obligations).await {
                if frame.opcode == OpCode::Close {
                    break;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::Payload;

    fn frame(opcode: OpCode, mask: Option<[u8; 4]>, len: usize) -> Frame<'static> {
        Frame::new(true, opcode, mask, Payload::Owned(vec![b'x'; len]))
    }

    #[test]
    fn unmasked_frames_and_long_control_frames_are_violations() {
        let mask = Some([1, 2, 3, 4]);
        assert_eq!(
            frame_violation(&mut frame(OpCode::Text, mask, 70_000)),
            None
        );
        assert_eq!(frame_violation(&mut frame(OpCode::Close, mask, 125)), None);
        assert_eq!(
            frame_violation(&mut frame(OpCode::Text, None, 3)),
            Some("client frames must be masked")
        );
        for opcode in [OpCode::Close, OpCode::Ping, OpCode::Pong] {
            assert_eq!(
                frame_violation(&mut frame(opcode, mask, 126)),
                Some("control frame over 125 bytes")
            );
        }
        assert_eq!(frame_violation(&mut frame(OpCode::Binary, mask, 126)), None);
    }
}
