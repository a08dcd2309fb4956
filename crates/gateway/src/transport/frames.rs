//! The inbound half of every WebSocket endpoint: frames in, whole messages out.
//!
//! One loop for the native protocol, Socket.IO and the test echo endpoint, so that the
//! conformance tests that run against the echo endpoint cover what clients really talk to.
//! Pings are answered, a Close is validated and echoed (RFC 6455 §5.5.1), fragments are
//! reassembled under the message limit, and every violation becomes its close code, queued on
//! the outbound so that the writer task sends it.

use super::close::{close_code_for, echo_close, CLOSE_GRACE};
use super::reassembly::{Reassembler, Step};
use super::writer::LastSeen;
use crate::metrics::Metrics;
use bytes::Bytes;
use fan_out::Outbound;
use fastwebsockets::{Frame, OpCode, WebSocketRead};
use protocol::CloseCode;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncRead, ReadHalf};
use tokio::time::{timeout, Instant};

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

/// The read half of one connection and what reading needs: reassembly, the outbound queue
/// (for pongs and closes), and the heartbeat clock the writer checks.
pub(super) struct Frames<S> {
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
    pub(super) async fn next(&mut self) -> Read {
        let mut no_obligations = |_: Frame<'_>| async { Ok::<(), Infallible>(()) };
        loop {
            let mut frame = match self.reader.read_frame(&mut no_obligations).await {
                Ok(frame) => frame,
                Err(e) => {
                    return match close_code_for(&e) {
                        Some((code, why)) => self.violation(code, why),
                        None => Read::Ended(Ending::Gone),
                    }
                }
            };
            self.last_seen
                .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            self.metrics.bytes_in.inc_by(frame.payload.len() as u64);
            if let Some(why) = frame_violation(&mut frame) {
                return self.violation(CloseCode::PROTOCOL_ERROR, why);
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
                            Read::Ended(Ending::Closed)
                        }
                        Err((code, why)) => self.violation(code, why),
                    }
                }
                opcode => self.reassembler.push(opcode, frame.fin, &frame.payload),
            };
            match step {
                Step::Continue => continue,
                Step::Fail(code, why) => return self.violation(code, why),
                Step::Message { text, payload } => return Read::Message { text, payload },
            }
        }
    }

    /// Queues our Close with `code`; the writer sends it.
    fn violation(&self, code: u16, why: &'static str) -> Read {
        self.outbound.close(code, why);
        Read::Ended(Ending::Violation)
    }

    /// After our Close went out: give the client a moment to answer it, for a clean close.
    pub(super) async fn await_close(&mut self) {
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
