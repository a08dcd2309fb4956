//! The frame decoder: a client's bytes in, whole frames out (RFC 6455 section 5.2). Pure
//! state machine, no I/O, like [`super::reassembly`], which the frames it makes are fed to.
//!
//! Bytes may arrive cut anywhere: [`Decoder::decode`] takes what there is, keeps a partial
//! header (at most 14 bytes) or a partial payload in its own state, and says how much it used.
//! So the reader needs no buffer of its own between reads: an idle connection holds a decoder
//! of a few dozen bytes and nothing on the heap, and a frame's payload is allocated once, at
//! its announced length (which is checked against the message limit first), and unmasked as
//! it is copied in.
//!
//! The rules, in the order they are checked (the order fastwebsockets 0.10 checked them in,
//! which the conformance tests pin, then the ones it left to us):
//!
//! 1. RSV1-3 must be 0: no extension is negotiated (section 5.2) → 1002.
//! 2. The opcode must be defined: 0x3-0x7 and 0xB-0xF are reserved (section 5.2) → 1002.
//! 3. Control frames must not be fragmented (section 5.5) → 1002.
//! 4. A Ping carries at most 125 bytes (section 5.5) → 1002.
//! 5. A frame longer than the message limit is refused before its payload is read → 1009.
//! 6. Client frames must be masked (section 5.1: the server MUST close the connection) → 1002.
//! 7. A Close or Pong carries at most 125 bytes (section 5.5) → 1002.
//!
//! Lengths come in the 7-bit, 16-bit and 64-bit forms; a longer form than needed is accepted
//! (as fastwebsockets did), and a 64-bit length with its top bit set is just too long (1009).
//! After a violation the decoder is spent: it repeats the violation and reads nothing more.

use fastwebsockets::OpCode;
use protocol::CloseCode;

/// The largest payload of a control frame (RFC 6455 section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The longest header: 2 bytes, a 64-bit length, a 4-byte mask.
const MAX_HEAD: usize = 14;

/// Payload bytes reserved up front at most; a longer frame's buffer grows as it arrives (up to
/// its announced length), so a client that announces a large frame and sends nothing does not
/// make us hold the whole announced length.
const RESERVE_UP_FRONT: usize = 64 * 1024;

/// One whole frame, unmasked.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: Vec<u8>,
}

/// A rule the client broke: the close code it earns, and the reason sent with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub why: &'static str,
}

const fn protocol_error(why: &'static str) -> Violation {
    Violation {
        code: CloseCode::PROTOCOL_ERROR,
        why,
    }
}

/// What a call to [`Decoder::decode`] came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Every byte was used; more are needed for a frame.
    Need,
    /// A whole frame; the bytes after it were not used.
    Frame(Frame),
    /// The client broke a rule.
    Fail(Violation),
}

#[derive(Debug)]
enum State {
    /// Collecting a header: the first `have` bytes of `head`.
    Head { head: [u8; MAX_HEAD], have: u8 },
    /// Collecting the `len` bytes of a payload.
    Payload {
        fin: bool,
        opcode: OpCode,
        mask: [u8; 4],
        len: usize,
        payload: Vec<u8>,
    },
    /// A rule was broken; nothing more is read.
    Failed(Violation),
}

const START: State = State::Head {
    head: [0; MAX_HEAD],
    have: 0,
};

#[derive(Debug)]
pub struct Decoder {
    /// The largest frame payload (`--max-message-bytes`; a message of several frames is
    /// capped by the reassembler).
    max: usize,
    state: State,
}

/// A header so far: either what it still lacks, or, once whole, the frame it announces.
enum Head {
    Short(usize),
    Whole {
        fin: bool,
        opcode: OpCode,
        mask: Option<[u8; 4]>,
        len: u64,
    },
}

/// Checks the first two bytes (rules 1 and 2) and reads the header as far as it goes.
fn parse_head(head: &[u8]) -> Result<Head, Violation> {
    if head.len() < 2 {
        return Ok(Head::Short(2));
    }
    let (b0, b1) = (head[0], head[1]);
    if b0 & 0x70 != 0 {
        return Err(protocol_error("reserved bits set"));
    }
    let opcode = match b0 & 0x0f {
        0x0 => OpCode::Continuation,
        0x1 => OpCode::Text,
        0x2 => OpCode::Binary,
        0x8 => OpCode::Close,
        0x9 => OpCode::Ping,
        0xA => OpCode::Pong,
        _ => return Err(protocol_error("reserved opcode")),
    };
    let masked = b1 & 0x80 != 0;
    let extra = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let need = 2 + extra + if masked { 4 } else { 0 };
    if head.len() < need {
        return Ok(Head::Short(need));
    }
    let len = match extra {
        0 => u64::from(b1 & 0x7f),
        2 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        _ => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&head[2..10]);
            u64::from_be_bytes(n)
        }
    };
    let mask = masked.then(|| {
        let at = 2 + extra;
        [head[at], head[at + 1], head[at + 2], head[at + 3]]
    });
    Ok(Head::Whole {
        fin: b0 & 0x80 != 0,
        opcode,
        mask,
        len,
    })
}

fn is_control(opcode: OpCode) -> bool {
    matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong)
}

impl Decoder {
    pub fn new(max_message_bytes: usize) -> Decoder {
        Decoder {
            max: max_message_bytes,
            state: START,
        }
    }

    /// Whether no part of a frame is held: the decoder is between frames.
    #[cfg(test)]
    pub fn is_between_frames(&self) -> bool {
        matches!(self.state, State::Head { have: 0, .. })
    }

    /// The rule the client broke, once it broke one.
    pub fn failure(&self) -> Option<Violation> {
        match self.state {
            State::Failed(violation) => Some(violation),
            _ => None,
        }
    }

    /// Uses bytes from the front of `input` until a frame is whole, a rule is broken, or the
    /// input runs out. Returns how many bytes were used and what came of them: after a
    /// [`Progress::Frame`] the rest of `input` is the next frame's; after [`Progress::Need`]
    /// all of it was used.
    pub fn decode(&mut self, input: &[u8]) -> (usize, Progress) {
        let mut used = 0;
        loop {
            match &mut self.state {
                State::Failed(violation) => return (used, Progress::Fail(*violation)),
                State::Head { head, have } => {
                    let have_now = usize::from(*have);
                    let parsed = parse_head(&head[..have_now]);
                    let need = match parsed {
                        Err(violation) => return (used, self.fail(violation)),
                        Ok(Head::Short(need)) => need,
                        Ok(Head::Whole {
                            fin,
                            opcode,
                            mask,
                            len,
                        }) => match self.start_payload(fin, opcode, mask, len) {
                            Ok(Some(frame)) => return (used, Progress::Frame(frame)),
                            Ok(None) => continue,
                            Err(violation) => return (used, self.fail(violation)),
                        },
                    };
                    let take = (need - have_now).min(input.len() - used);
                    if take == 0 {
                        return (used, Progress::Need);
                    }
                    head[have_now..have_now + take].copy_from_slice(&input[used..used + take]);
                    *have += take as u8;
                    used += take;
                }
                State::Payload {
                    fin,
                    opcode,
                    mask,
                    len,
                    payload,
                } => {
                    let take = (*len - payload.len()).min(input.len() - used);
                    if take == 0 && payload.len() < *len {
                        return (used, Progress::Need);
                    }
                    append_unmasked(payload, &input[used..used + take], *mask, *len);
                    used += take;
                    if payload.len() == *len {
                        let frame = Frame {
                            fin: *fin,
                            opcode: *opcode,
                            payload: std::mem::take(payload),
                        };
                        self.state = START;
                        return (used, Progress::Frame(frame));
                    }
                }
            }
        }
    }

    /// A whole header: rules 3 to 7, then an empty frame at once or a payload to collect.
    fn start_payload(
        &mut self,
        fin: bool,
        opcode: OpCode,
        mask: Option<[u8; 4]>,
        len: u64,
    ) -> Result<Option<Frame>, Violation> {
        let control = is_control(opcode);
        if control && !fin {
            return Err(protocol_error("fragmented control frame"));
        }
        let over_control = len > MAX_CONTROL_PAYLOAD as u64;
        if opcode == OpCode::Ping && over_control {
            return Err(protocol_error("control frame over 125 bytes"));
        }
        let len = match usize::try_from(len) {
            Ok(len) if len <= self.max => len,
            _ => {
                return Err(Violation {
                    code: CloseCode::MESSAGE_TOO_BIG,
                    why: "message too big",
                })
            }
        };
        let Some(mask) = mask else {
            return Err(protocol_error("client frames must be masked"));
        };
        if control && over_control {
            return Err(protocol_error("control frame over 125 bytes"));
        }
        if len == 0 {
            self.state = START;
            return Ok(Some(Frame {
                fin,
                opcode,
                payload: Vec::new(),
            }));
        }
        self.state = State::Payload {
            fin,
            opcode,
            mask,
            len,
            payload: Vec::with_capacity(len.min(RESERVE_UP_FRONT)),
        };
        Ok(None)
    }

    fn fail(&mut self, violation: Violation) -> Progress {
        self.state = State::Failed(violation);
        Progress::Fail(violation)
    }
}

/// Appends `chunk` to a payload of `len` bytes in all, unmasking it: payload byte `i` was
/// sent XORed with `mask[i % 4]` (RFC 6455 section 5.3). Grows the buffer geometrically but
/// never past `len`.
fn append_unmasked(payload: &mut Vec<u8>, chunk: &[u8], mask: [u8; 4], len: usize) {
    let start = payload.len();
    let want = start + chunk.len();
    if want > payload.capacity() {
        let grown = (payload.capacity() * 2).max(want).min(len);
        payload.reserve_exact(grown - start);
    }
    payload.extend_from_slice(chunk);
    unmask(&mut payload[start..], mask, start % 4);
}

/// XORs `bytes` with the mask, `bytes[0]` being payload byte number `phase` (mod 4).
fn unmask(bytes: &mut [u8], mask: [u8; 4], phase: usize) {
    let key = [
        mask[phase % 4],
        mask[(phase + 1) % 4],
        mask[(phase + 2) % 4],
        mask[(phase + 3) % 4],
    ];
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = bytes.chunks_exact_mut(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    // A multiple of 8 bytes went by, so the key's phase is unchanged for the rest.
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: `first` is the first byte (FIN, RSV, opcode), masked with `mask`.
    fn encode(first: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        let m = if mask.is_some() { 0x80 } else { 0 };
        let n = payload.len();
        if n < 126 {
            out.push(m | n as u8);
        } else if n <= 0xffff {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        match mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    fn text(payload: &[u8]) -> Vec<u8> {
        encode(0x81, Some(MASK), payload)
    }

    /// Everything `input` decodes to, fed in pieces of `piece` bytes (0: all at once).
    fn decode_all(max: usize, input: &[u8], piece: usize) -> Vec<Progress> {
        let mut d = Decoder::new(max);
        let mut out = Vec::new();
        let piece = if piece == 0 {
            input.len().max(1)
        } else {
            piece
        };
        for mut chunk in input.chunks(piece) {
            while !chunk.is_empty() {
                let (used, progress) = d.decode(chunk);
                assert!(used <= chunk.len());
                chunk = &chunk[used..];
                match progress {
                    Progress::Need => assert!(chunk.is_empty(), "Need with bytes left"),
                    Progress::Fail(v) => {
                        out.push(Progress::Fail(v));
                        // Spent: the same violation again, nothing used.
                        assert_eq!(d.decode(b"\x81\x80abcd"), (0, Progress::Fail(v)));
                        assert_eq!(d.failure(), Some(v));
                        return out;
                    }
                    frame => out.push(frame),
                }
            }
        }
        out
    }

    fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Progress {
        Progress::Frame(Frame {
            fin,
            opcode,
            payload: payload.to_vec(),
        })
    }

    fn fail(code: u16, why: &'static str) -> Vec<Progress> {
        vec![Progress::Fail(Violation { code, why })]
    }

    #[test]
    fn lengths_in_all_three_forms() {
        for n in [0, 1, 125, 126, 127, 128, 65535, 65536, 100_000] {
            let payload: Vec<u8> = (0..n).map(|i| (i * 7 + i / 256) as u8).collect();
            let bytes = encode(0x82, Some(MASK), &payload);
            assert_eq!(
                decode_all(1 << 20, &bytes, 0),
                vec![frame(true, OpCode::Binary, &payload)],
                "{n} bytes"
            );
        }
        // A short payload in a longer form than needed is accepted.
        let mut long = vec![0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0];
        long.extend_from_slice(b"Hello");
        assert_eq!(
            decode_all(100, &long, 0),
            vec![frame(true, OpCode::Text, b"Hello")]
        );
        let mut mid = vec![0x81, 0x80 | 126, 0, 2, 1, 2, 3, 4];
        mid.extend_from_slice(&[b'h' ^ 1, b'i' ^ 2]);
        assert_eq!(
            decode_all(100, &mid, 0),
            vec![frame(true, OpCode::Text, b"hi")]
        );
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        let payload: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
        let mut bytes = text(b"Hello");
        bytes.extend(encode(0x02, Some(MASK), &payload)); // binary, not final
        bytes.extend(encode(0x89, Some([9, 8, 7, 6]), b"ping!"));
        bytes.extend(encode(0x80, Some(MASK), b"")); // final continuation, empty
        bytes.extend(encode(0x88, Some(MASK), &[0x03, 0xe8]));
        let want = vec![
            frame(true, OpCode::Text, b"Hello"),
            frame(false, OpCode::Binary, &payload),
            frame(true, OpCode::Ping, b"ping!"),
            frame(true, OpCode::Continuation, b""),
            frame(true, OpCode::Close, &[0x03, 0xe8]),
        ];
        assert_eq!(decode_all(1000, &bytes, 0), want);
        for piece in 1..=bytes.len() {
            assert_eq!(decode_all(1000, &bytes, piece), want, "pieces of {piece}");
        }
        // Two pieces, cut at every byte.
        for cut in 0..=bytes.len() {
            let mut d = Decoder::new(1000);
            let mut got = Vec::new();
            for mut part in [&bytes[..cut], &bytes[cut..]] {
                while !part.is_empty() {
                    let (used, p) = d.decode(part);
                    part = &part[used..];
                    if p != Progress::Need {
                        got.push(p);
                    }
                }
            }
            assert_eq!(got, want, "cut at {cut}");
            assert!(d.is_between_frames());
        }
    }

    #[test]
    fn masks_at_every_phase() {
        // Payloads of every length around the 8-byte word size, each with its own mask.
        for n in 0..40usize {
            let payload: Vec<u8> = (0..n as u8).collect();
            let key = [n as u8, 0xff, 0x5a, 0x01];
            let bytes = encode(0x82, Some(key), &payload);
            for piece in [1, 3, 5, 7, 9, bytes.len()] {
                assert_eq!(
                    decode_all(100, &bytes, piece),
                    vec![frame(true, OpCode::Binary, &payload)]
                );
            }
        }
        // The zero mask leaves the payload as sent.
        let bytes = encode(0x81, Some([0; 4]), b"plain");
        assert_eq!(
            decode_all(100, &bytes, 0),
            vec![frame(true, OpCode::Text, b"plain")]
        );
    }

    #[test]
    fn violations_and_their_codes() {
        let max = 1000;
        // Rule 1: RSV bits, whatever else the frame is.
        for rsv in 1..8u8 {
            assert_eq!(
                decode_all(max, &encode(0x81 | rsv << 4, Some(MASK), b"x"), 0),
                fail(1002, "reserved bits set")
            );
        }
        // Rule 2: reserved opcodes.
        for op in [3u8, 4, 5, 6, 7, 11, 12, 13, 14, 15] {
            assert_eq!(
                decode_all(max, &encode(0x80 | op, Some(MASK), b""), 0),
                fail(1002, "reserved opcode")
            );
        }
        // Rule 3: fragmented control frames.
        for op in [0x8u8, 0x9, 0xA] {
            assert_eq!(
                decode_all(max, &encode(op, Some(MASK), b""), 0),
                fail(1002, "fragmented control frame")
            );
        }
        // Rule 4, and 7: control frames carry at most 125 bytes; 125 is fine.
        for op in [0x88u8, 0x89, 0x8A] {
            let mut ok = vec![0x03, 0xe8];
            ok.resize(125, b'r');
            assert_eq!(decode_all(max, &encode(op, Some(MASK), &ok), 0).len(), 1);
            assert_eq!(
                decode_all(max, &encode(op, Some(MASK), &[b'r'; 126]), 0),
                fail(1002, "control frame over 125 bytes")
            );
        }
        // Rule 5: over the limit, in any length form; at the limit is fine.
        assert_eq!(
            decode_all(max, &encode(0x82, Some(MASK), &vec![0; max]), 0).len(),
            1
        );
        for n in [max + 1, 70_000] {
            assert_eq!(
                decode_all(max, &encode(0x82, Some(MASK), &vec![0; n]), 0),
                fail(1009, "message too big")
            );
        }
        let absurd = [
            0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4,
        ];
        assert_eq!(decode_all(max, &absurd, 0), fail(1009, "message too big"));
        let top_bit = [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4];
        assert_eq!(decode_all(max, &top_bit, 0), fail(1009, "message too big"));
        // Rule 6: unmasked frames, data and control alike.
        for first in [0x81u8, 0x82, 0x80, 0x89, 0x8A, 0x88] {
            assert_eq!(
                decode_all(max, &encode(first, None, b"Hi"), 0),
                fail(1002, "client frames must be masked")
            );
        }
        // The order: a fragmented ping over 125 bytes is a fragmented control frame; an
        // unmasked frame over the limit is too big; an unmasked long pong is unmasked.
        assert_eq!(
            decode_all(max, &encode(0x09, Some(MASK), &[0; 200]), 0),
            fail(1002, "fragmented control frame")
        );
        assert_eq!(
            decode_all(max, &encode(0x82, None, &vec![0; max + 1]), 0),
            fail(1009, "message too big")
        );
        assert_eq!(
            decode_all(max, &encode(0x8A, None, &[0; 200]), 0),
            fail(1002, "client frames must be masked")
        );
        // A close over 125 bytes and over the limit is too big (the limit is checked first).
        assert_eq!(
            decode_all(100, &encode(0x88, Some(MASK), &[0; 200]), 0),
            fail(1009, "message too big")
        );
    }

    #[test]
    fn a_violation_ends_at_the_frame_that_holds_it() {
        // Good frames before it come out; the bad header is refused as soon as it is whole,
        // byte by byte too, before any of its payload.
        let mut bytes = text(b"one");
        bytes.extend(encode(0x81, None, b"unmasked"));
        for piece in [0, 1, 2, 3] {
            assert_eq!(
                decode_all(100, &bytes, piece),
                vec![
                    frame(true, OpCode::Text, b"one"),
                    Progress::Fail(protocol_error("client frames must be masked"))
                ]
            );
        }
        // RSV bits fail on the first two bytes, before the rest of the header.
        let mut d = Decoder::new(100);
        assert_eq!(d.decode(&[0xC1]), (1, Progress::Need));
        assert_eq!(
            d.decode(&[0xff]),
            (1, Progress::Fail(protocol_error("reserved bits set")))
        );
    }

    #[test]
    fn partial_state_is_small_and_released() {
        let mut d = Decoder::new(1 << 20);
        assert!(d.is_between_frames());
        // A 1 MiB frame announced, 10 bytes sent: 10 bytes held, not 1 MiB.
        let mut head = vec![0x82, 0x80 | 127];
        head.extend_from_slice(&(1u64 << 20).to_be_bytes());
        head.extend_from_slice(&MASK);
        head.extend_from_slice(&[0; 10]);
        assert_eq!(d.decode(&head), (head.len(), Progress::Need));
        assert!(!d.is_between_frames());
        match &d.state {
            State::Payload { payload, .. } => assert!(payload.capacity() <= RESERVE_UP_FRONT),
            other => panic!("{other:?}"),
        }
        // Fed the rest, it never holds more than the frame.
        let rest = vec![0u8; (1 << 20) - 10];
        for chunk in rest.chunks(16 * 1024) {
            let (used, p) = d.decode(chunk);
            assert_eq!(used, chunk.len());
            if let Progress::Frame(f) = p {
                assert_eq!(f.payload.len(), 1 << 20);
                assert_eq!(f.payload.capacity(), 1 << 20);
            }
            if let State::Payload { payload, len, .. } = &d.state {
                assert!(payload.capacity() <= *len);
            }
        }
        assert!(d.is_between_frames());
        assert!(std::mem::size_of::<Decoder>() <= 64);
    }

    /// A frame a client might send, good or bad.
    fn arb_frame() -> impl Strategy<Value = (u8, bool, Option<[u8; 4]>, Vec<u8>)> {
        (
            prop_oneof![
                8 => prop::sample::select(vec![0x0u8, 0x1, 0x2, 0x8, 0x9, 0xA]),
                1 => 0u8..16,
            ],
            prop::bool::weighted(0.8),
            prop::option::weighted(0.95, any::<[u8; 4]>()),
            prop_oneof![
                4 => prop::collection::vec(any::<u8>(), 0..130),
                1 => prop::collection::vec(any::<u8>(), 0..3000),
            ],
        )
            .prop_map(|(op, fin, mask, payload)| {
                (op | if fin { 0x80 } else { 0 }, fin, mask, payload)
            })
    }

    /// The rules, written out plainly: what a frame must decode to.
    fn oracle(first: u8, mask: Option<[u8; 4]>, payload: &[u8], max: usize) -> Progress {
        let op = first & 0x0f;
        let fin = first & 0x80 != 0;
        let opcode = match op {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return Progress::Fail(protocol_error("reserved opcode")),
        };
        let control = op >= 8;
        if control && !fin {
            return Progress::Fail(protocol_error("fragmented control frame"));
        }
        if op == 0x9 && payload.len() > 125 {
            return Progress::Fail(protocol_error("control frame over 125 bytes"));
        }
        if payload.len() > max {
            return Progress::Fail(Violation {
                code: 1009,
                why: "message too big",
            });
        }
        if mask.is_none() {
            return Progress::Fail(protocol_error("client frames must be masked"));
        }
        if control && payload.len() > 125 {
            return Progress::Fail(protocol_error("control frame over 125 bytes"));
        }
        frame(fin, opcode, payload)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any sequence of frames, cut into any pieces: what comes out is what the rules say,
        /// frame by frame, up to the first violation.
        #[test]
        fn decodes_like_the_rules_say(
            frames in prop::collection::vec(arb_frame(), 0..8),
            pieces in prop::collection::vec(1usize..50, 1..20),
            max in prop::sample::select(vec![0usize, 10, 125, 2048]),
        ) {
            let mut bytes = Vec::new();
            let mut want = Vec::new();
            for (first, _, mask, payload) in &frames {
                bytes.extend(encode(*first, *mask, payload));
                let expected = oracle(*first, *mask, payload, max);
                let failed = matches!(expected, Progress::Fail(_));
                want.push(expected);
                if failed {
                    break;
                }
            }
            let mut d = Decoder::new(max);
            let mut got = Vec::new();
            let mut rest = &bytes[..];
            let mut sizes = pieces.iter().cycle();
            'feed: while !rest.is_empty() {
                let n = (*sizes.next().unwrap()).min(rest.len());
                let mut chunk = &rest[..n];
                rest = &rest[n..];
                while !chunk.is_empty() {
                    let (used, p) = d.decode(chunk);
                    prop_assert!(used <= chunk.len());
                    chunk = &chunk[used..];
                    match p {
                        Progress::Need => prop_assert!(chunk.is_empty()),
                        Progress::Fail(_) => {
                            got.push(p);
                            break 'feed;
                        }
                        p => got.push(p),
                    }
                }
            }
            prop_assert_eq!(got, want);
        }

        /// Garbage never panics, and the decoder always uses what it is given or stops.
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600), max in 0usize..300) {
            let mut d = Decoder::new(max);
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let (used, p) = d.decode(rest);
                rest = &rest[used..];
                match p {
                    Progress::Need => prop_assert!(rest.is_empty()),
                    Progress::Fail(_) => break,
                    Progress::Frame(f) => prop_assert!(f.payload.len() <= max),
                }
            }
        }
    }
}
