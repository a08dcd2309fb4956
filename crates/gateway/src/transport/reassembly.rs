//! Message reassembly: data and continuation frames in, whole messages (or a close code) out.
//!
//! The frame decoder ([`super::decoder`]) limits single frames only, so continuation frames
//! are collected here with a cap on the whole message (RFC 6455 section 5.4, fragmentation),
//! and text is checked for UTF-8 as it arrives (section 8.1). Pure state machine, no I/O.
//! Payloads are taken by value: an unfragmented message is the decoder's buffer, not a copy.

use fastwebsockets::OpCode;
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

/// A fragmented message being collected.
#[derive(Debug)]
struct Partial {
    text: bool,
    buf: Vec<u8>,
    /// For text: how many leading bytes of `buf` are known to be valid UTF-8. The bytes after
    /// it are at most an incomplete sequence that the next fragment may finish.
    checked: usize,
}

impl Partial {
    /// Checks the UTF-8 of a text message as far as it has arrived, so that an invalid
    /// sequence fails the connection at the fragment that holds it (RFC 6455 section 8.1,
    /// "fail fast"), not when the message is complete. Binary messages are not checked.
    fn check_utf8(&mut self) -> Result<(), ()> {
        if !self.text {
            return Ok(());
        }
        match std::str::from_utf8(&self.buf[self.checked..]) {
            Ok(_) => {
                self.checked = self.buf.len();
                Ok(())
            }
            // The valid prefix ends in a sequence that is cut short: wait for more.
            Err(e) if e.error_len().is_none() => {
                self.checked += e.valid_up_to();
                Ok(())
            }
            Err(_) => Err(()),
        }
    }
}

#[derive(Debug)]
pub struct Reassembler {
    max: usize,
    partial: Option<Partial>,
}

impl Reassembler {
    pub fn new(max_message_bytes: usize) -> Reassembler {
        Reassembler {
            max: max_message_bytes,
            partial: None,
        }
    }

    /// Whether a fragmented message is being collected.
    #[cfg(test)]
    pub fn is_collecting(&self) -> bool {
        self.partial.is_some()
    }

    /// Feeds one data or continuation frame.
    pub fn push(&mut self, opcode: OpCode, fin: bool, payload: impl Into<Vec<u8>>) -> Step {
        let payload = payload.into();
        match opcode {
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    self.partial = None;
                    // A final text frame is checked for UTF-8 before anything else, as
                    // fastwebsockets did before this decoder replaced it (1007 rather than
                    // 1002 when both rules are broken).
                    if opcode == OpCode::Text && fin && std::str::from_utf8(&payload).is_err() {
                        return Step::Fail(CloseCode::INVALID_PAYLOAD, "invalid UTF-8");
                    }
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
                    return finish(text, payload);
                }
                let mut partial = Partial {
                    text,
                    buf: payload,
                    checked: 0,
                };
                if partial.check_utf8().is_err() {
                    return Step::Fail(CloseCode::INVALID_PAYLOAD, "invalid UTF-8");
                }
                self.partial = Some(partial);
                Step::Continue
            }
            OpCode::Continuation => {
                let Some(partial) = self.partial.as_mut() else {
                    return Step::Fail(CloseCode::PROTOCOL_ERROR, "continuation without a message");
                };
                if partial.buf.len() + payload.len() > self.max {
                    self.partial = None;
                    return Step::Fail(CloseCode::MESSAGE_TOO_BIG, "message too big");
                }
                partial.buf.extend_from_slice(&payload);
                if partial.check_utf8().is_err() {
                    self.partial = None;
                    return Step::Fail(CloseCode::INVALID_PAYLOAD, "invalid UTF-8");
                }
                if !fin {
                    return Step::Continue;
                }
                match self.partial.take() {
                    // Everything before `checked` is valid already: check only the tail,
                    // which must now be complete.
                    Some(Partial { text, buf, checked }) => {
                        if text && std::str::from_utf8(&buf[checked..]).is_err() {
                            return Step::Fail(CloseCode::INVALID_PAYLOAD, "invalid UTF-8");
                        }
                        Step::Message { text, payload: buf }
                    }
                    None => Step::Fail(CloseCode::PROTOCOL_ERROR, "continuation without a message"),
                }
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
            r.push(OpCode::Text, true, [0xff, 0xfe]),
            Step::Fail(1007, "invalid UTF-8")
        );
        // UTF-8 split across fragments is fine once whole.
        assert_eq!(r.push(OpCode::Text, false, [0xc3]), Step::Continue);
        assert_eq!(
            r.push(OpCode::Continuation, true, [0xa9]),
            Step::Message {
                text: true,
                payload: "é".as_bytes().to_vec()
            }
        );
    }

    #[test]
    fn a_new_message_inside_a_fragmented_one() {
        let mut r = Reassembler::new(100);
        assert_eq!(r.push(OpCode::Text, false, b"ab"), Step::Continue);
        assert_eq!(
            r.push(OpCode::Binary, true, b"x"),
            Step::Fail(1002, "new message inside a fragmented one")
        );
        // A final text frame with invalid UTF-8 there earns 1007, not 1002.
        assert_eq!(r.push(OpCode::Text, false, b"ab"), Step::Continue);
        assert_eq!(
            r.push(OpCode::Text, true, [0xff]),
            Step::Fail(1007, "invalid UTF-8")
        );
        assert_eq!(r.push(OpCode::Text, false, b"ab"), Step::Continue);
        assert_eq!(
            r.push(OpCode::Text, true, b"ok"),
            Step::Fail(1002, "new message inside a fragmented one")
        );
        // An unfragmented message keeps the frame's buffer.
        let payload = Vec::with_capacity(64);
        let at = payload.as_ptr();
        match r.push(OpCode::Binary, true, payload) {
            Step::Message { payload, .. } => assert_eq!(payload.as_ptr(), at),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_utf8_fails_at_the_fragment_that_holds_it() {
        let mut r = Reassembler::new(100);
        // A fragment that ends inside a sequence is fine...
        assert_eq!(r.push(OpCode::Text, false, b"ab\xf4"), Step::Continue);
        // ...until the next one makes it invalid (U+110000 and above).
        assert_eq!(
            r.push(OpCode::Continuation, false, [0x90]),
            Step::Fail(1007, "invalid UTF-8")
        );
        // The failed message is gone.
        assert_eq!(
            r.push(OpCode::Continuation, true, b"x"),
            Step::Fail(1002, "continuation without a message")
        );
        // Invalid in the first fragment already.
        assert_eq!(
            r.push(OpCode::Text, false, [0xed, 0xa0, 0x80]),
            Step::Fail(1007, "invalid UTF-8")
        );
        // A sequence cut short by the final fragment.
        assert_eq!(r.push(OpCode::Text, false, b"ok"), Step::Continue);
        assert_eq!(
            r.push(OpCode::Continuation, true, [0xe2, 0x82]),
            Step::Fail(1007, "invalid UTF-8")
        );
        // A four-byte character split one byte per fragment.
        assert_eq!(r.push(OpCode::Text, false, [0xf0]), Step::Continue);
        assert_eq!(r.push(OpCode::Continuation, false, [0x9f]), Step::Continue);
        assert_eq!(r.push(OpCode::Continuation, false, [0x98]), Step::Continue);
        assert_eq!(
            r.push(OpCode::Continuation, true, [0x80]),
            Step::Message {
                text: true,
                payload: "\u{1f600}".as_bytes().to_vec()
            }
        );
        // Binary is never checked.
        assert_eq!(r.push(OpCode::Binary, false, [0xff]), Step::Continue);
        assert_eq!(
            r.push(OpCode::Continuation, true, [0xfe]),
            Step::Message {
                text: false,
                payload: vec![0xff, 0xfe]
            }
        );
    }
}
