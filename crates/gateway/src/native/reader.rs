//! Message reassembly: frames in, whole messages (or a close code) out.
//!
//! fastwebsockets limits single frames only, so continuation frames are collected here with a
//! cap on the whole message. Pure state machine, no I/O.

use fastwebsockets::{OpCode, WebSocketError};
use protocol::CloseCode;

/// What a frame amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Need more frames.
    Continue,
    /// A whole data message.
    Message { text: bool, payload: Vec<u8> },
    /// Close the connection with this code.
    Fail(u16, &'static str),
}

#[derive(Debug)]
pub struct Reassembler {
    max: usize,
    partial: Option<(bool, Vec<u8>)>,
}

impl Reassembler {
    pub fn new(max_message_bytes: usize) -> Reassembler {
        Reassembler {
            max: max_message_bytes,
            partial: None,
        }
    }

    /// Feeds one data or continuation frame.
    pub fn push(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) -> Step {
        match opcode {
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Step::Fail(
                        CloseCode::PROTOCOL_ERROR,
                        "new message inside a fragmented one",
                    );
                }
                if payload.len() > self.max {
                    return Step::Fail(CloseCode::MESSAGE_TOO_BIG, "message too big");
                }
                let text = opcode == OpCode::Text;
                if fin {
                    return finish(text, payload.to_vec());
                }
                self.partial = Some((text, payload.to_vec()));
                Step::Continue
            }
            OpCode::Continuation => {
                let Some((text, buf)) = self.partial.as_mut() else {
                    return Step::Fail(CloseCode::PROTOCOL_ERROR, "continuation without a message");
                };
                if buf.len() + payload.len() > self.max {
                    self.partial = None;
                    return Step::Fail(CloseCode::MESSAGE_TOO_BIG, "message too big");
                }
                buf.extend_from_slice(payload);
                let text = *text;
                if fin {
                    let (_, buf) = self.partial.take().unwrap_or_default();
                    return finish(text, buf);
                }
                Step::Continue
            }
            _ => Step::Fail(CloseCode::PROTOCOL_ERROR, "unexpected opcode"),
        }
    }
}

fn finish(text: bool, payload: Vec<u8>) -> Step {
    if text && std::str::from_utf8(&payload).is_err() {
        return Step::Fail(CloseCode::INVALID_PAYLOAD, "invalid UTF-8");
    }
    Step::Message { text, payload }
}

/// The close code for a read error, or `None` when the peer is simply gone.
pub fn close_code_for(error: &WebSocketError) -> Option<(u16, &'static str)> {
    match error {
        WebSocketError::InvalidUTF8 => Some((CloseCode::INVALID_PAYLOAD, "invalid UTF-8")),
        WebSocketError::FrameTooLarge => Some((CloseCode::MESSAGE_TOO_BIG, "message too big")),
        WebSocketError::UnexpectedEOF
        | WebSocketError::IoError(_)
        | WebSocketError::ConnectionClosed => None,
        _ => Some((CloseCode::PROTOCOL_ERROR, "protocol error")),
    }
}

/// Validates a received Close payload and picks the code to echo.
pub fn echo_close(payload: &[u8]) -> Result<u16, (u16, &'static str)> {
    match payload.len() {
        0 => Ok(CloseCode::NORMAL),
        1 => Err((CloseCode::PROTOCOL_ERROR, "bad close frame")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !CloseCode::is_valid_from_peer(code) {
                return Err((CloseCode::PROTOCOL_ERROR, "bad close code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err((CloseCode::INVALID_PAYLOAD, "invalid UTF-8 in close reason"));
            }
            Ok(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembles_and_caps() {
        let mut r = Reassembler::new(10);
        assert_eq!(r.push(OpCode::Text, false, b"hello"), Step::Continue);
        assert_eq!(
            r.push(OpCode::Continuation, true, b" you"),
            Step::Message {
                text: true,
                payload: b"hello you".to_vec()
            }
        );
        assert_eq!(r.push(OpCode::Binary, false, b"123456"), Step::Continue);
        assert_eq!(
            r.push(OpCode::Continuation, false, b"12345"),
            Step::Fail(1009, "message too big")
        );
        assert_eq!(
            r.push(OpCode::Text, true, b"12345678901"),
            Step::Fail(1009, "message too big")
        );
        assert_eq!(
            r.push(OpCode::Continuation, true, b"x"),
            Step::Fail(1002, "continuation without a message")
        );
        assert_eq!(
            r.push(OpCode::Text, true, &[0xff, 0xfe]),
            Step::Fail(1007, "invalid UTF-8")
        );
        // UTF-8 split across fragments is fine once whole.
        assert_eq!(r.push(OpCode::Text, false, &[0xc3]), Step::Continue);
        assert_eq!(
            r.push(OpCode::Continuation, true, &[0xa9]),
            Step::Message {
                text: true,
                payload: "é".as_bytes().to_vec()
            }
        );
    }

    #[test]
    fn close_frames() {
        assert_eq!(echo_close(&[]), Ok(1000));
        assert_eq!(echo_close(&[3, 0xe8]), Ok(1000));
        assert!(echo_close(&[1]).is_err());
        assert!(echo_close(&[0x03, 0xed]).is_err(), "1005 may not be sent");
        assert!(echo_close(&[0x03, 0xe8, 0xff]).is_err());
    }
}
