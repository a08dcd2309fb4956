//! Property: whatever frames a client sends — any opcode, RSV bits, fin flag, length, masked
//! or not, cut off mid-header or mid-payload, followed by garbage — the server answers (echo,
//! pong, replies) and/or closes with a close code it documents, closes TCP, and never panics:
//! after every case the node still accepts a fresh connection and serves it.
//!
//! For the echo endpoint a sequence that breaks no rule also has an exact oracle: every
//! whole message echoed, every ping answered, in order, then the close echoed.
//!
//! Frames are written by hand over raw TCP. `PROPTEST_CASES` does not apply: the case count
//! is fixed so the test stays within seconds in debug builds. See docs/conformance.md.

#![allow(clippy::unwrap_used)]

mod support;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;
use support::raw_ws::{
    close, close_code, fragments, ping, pong, sendable, text, Frame, Got, RawWs, BINARY, CLOSE,
    CONT, PING, PONG, TEXT,
};
use tokio::time::timeout;

const CASES: u32 = 256;
/// `--max-message-bytes` of the node under test: small, so the limit is hit often.
const LIMIT: usize = 2048;
/// No more bytes from the server for this long: it waits for more of a frame.
const QUIET: Duration = Duration::from_millis(250);
/// After our half-close, the server must close TCP within this.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Close codes the server documents: `protocol::CloseCode` and RFC 6455's 1000, 1002, 1007,
/// 1009. An echo of a valid code the client sent is allowed too.
const DOCUMENTED: [u16; 11] = [
    1000, 1002, 1007, 1009, 1012, 4000, 4001, 4003, 4008, 4009, 4010,
];

/// The codes the server accepts in a client's Close: its own rule, which the oracle follows.
fn accepted_from_peer(code: u16) -> bool {
    protocol::CloseCode::is_valid_from_peer(code)
}

// --- A panic in a node's task fails the test ----------------------------------------

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// The name of the runtime threads that run the nodes' tasks.
const NODE_THREADS: &str = "node-under-test";

/// How many cases left the server waiting for more of a frame (reported, not asserted).
static HALF_CLOSED: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // The nodes' tasks run on the runtime's worker threads; a failing case panics on
            // the test thread instead, and must not count against the other test.
            let thread = std::thread::current();
            if thread.name() == Some(NODE_THREADS) {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

// --- What a case sends -----------------------------------------------------------------

/// A well-formed building block, before mutations.
#[derive(Debug, Clone)]
enum Item {
    /// A data message in `pieces` fragments, with a ping after the first one.
    Message {
        text: bool,
        payload: Vec<u8>,
        pieces: usize,
        ping: Option<Vec<u8>>,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, Vec<u8>)>),
}

/// A change that (usually) breaks a rule; `at` picks a frame modulo their number.
#[derive(Debug, Clone)]
enum Mutation {
    Rsv { at: usize, rsv: u8 },
    Opcode { at: usize, opcode: u8 },
    FlipFin { at: usize },
    Unmask { at: usize },
    Corrupt { at: usize, byte: usize, xor: u8 },
    Grow { at: usize, extra: usize },
}

/// What follows the frames.
#[derive(Debug, Clone)]
enum Tail {
    Nothing,
    /// The last `n` bytes are never sent: a frame cut off in its header or payload.
    Truncate(usize),
    /// Random bytes.
    Garbage(Vec<u8>),
    /// A header whose length is absurd (2^63 - 1) or longer than what follows.
    Lying {
        absurd: bool,
    },
}

#[derive(Debug, Clone)]
struct Case {
    items: Vec<Item>,
    mutations: Vec<Mutation>,
    tail: Tail,
    /// Write the bytes in pieces of this size (else in one write).
    chop: Option<usize>,
    mask: [u8; 4],
}

fn payload_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(any::<char>(), 0..40).prop_map(|c| c.into_iter().collect::<String>().into_bytes()),
        2 => vec(any::<u8>(), 0..200),
        3 => select(vec![
            r#"{"id":1,"op":"ping"}"#,
            r#"{"id":2,"op":"join","room":"prop-room"}"#,
            r#"{"id":3,"op":"publish","room":"prop-room","data":{"n":1}}"#,
            r#"{"id":4,"op":"nope"}"#,
            r#"{"op":"ping"}"#,
            "{",
            "",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => (0usize..3000).prop_map(|n| vec![b'a'; n]),
    ]
}

fn item_strategy() -> impl Strategy<Value = Item> {
    let control = || vec(any::<u8>(), 0..130);
    prop_oneof![
        6 => (
            prop::bool::weighted(0.7),
            payload_strategy(),
            1usize..5,
            prop::option::weighted(0.2, vec(any::<u8>(), 0..20)),
        )
            .prop_map(|(text, payload, pieces, ping)| Item::Message {
                text,
                payload,
                pieces,
                ping,
            }),
        2 => control().prop_map(Item::Ping),
        1 => control().prop_map(Item::Pong),
        1 => prop::option::of((
            select(vec![1000u16, 1001, 1003, 1005, 1007, 1011, 1012, 3000, 4000, 4999, 5000, 0, 999]),
            prop_oneof![
                Just(Vec::new()),
                Just("bye".as_bytes().to_vec()),
                Just(vec![0xff, 0xfe]),
                Just(vec![b'r'; 124]),
            ],
        ))
        .prop_map(Item::Close),
    ]
}

fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..8).prop_map(|(at, rsv)| Mutation::Rsv { at, rsv }),
        (any::<usize>(), 0u8..16).prop_map(|(at, opcode)| Mutation::Opcode { at, opcode }),
        any::<usize>().prop_map(|at| Mutation::FlipFin { at }),
        any::<usize>().prop_map(|at| Mutation::Unmask { at }),
        (any::<usize>(), any::<usize>(), 1u8..=255).prop_map(|(at, byte, xor)| Mutation::Corrupt {
            at,
            byte,
            xor
        }),
        (any::<usize>(), 1usize..200).prop_map(|(at, extra)| Mutation::Grow { at, extra }),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        vec(item_strategy(), 0..8),
        prop_oneof![3 => Just(Vec::new()), 2 => vec(mutation_strategy(), 1..4)],
        prop_oneof![
            12 => Just(Tail::Nothing),
            2 => (1usize..16).prop_map(Tail::Truncate),
            1 => vec(any::<u8>(), 1..40).prop_map(Tail::Garbage),
            1 => any::<bool>().prop_map(|absurd| Tail::Lying { absurd }),
        ],
        prop::option::weighted(0.3, 1usize..64),
        any::<[u8; 4]>(),
    )
        .prop_map(|(items, mutations, tail, chop, mask)| Case {
            items,
            mutations,
            tail,
            chop,
            mask,
        })
}

fn frames_of(items: &[Item]) -> Vec<Frame> {
    let mut frames = Vec::new();
    for item in items {
        match item {
            Item::Message {
                text,
                payload,
                pieces,
                ping: between,
            } => {
                let opcode = if *text { TEXT } else { BINARY };
                let size = payload.len().div_ceil(*pieces).max(1);
                let mut message = fragments(opcode, payload, size);
                if let (Some(p), true) = (between, message.len() > 1) {
                    message.insert(1, ping(p.clone()));
                }
                frames.extend(message);
            }
            Item::Ping(p) => frames.push(ping(p.clone())),
            Item::Pong(p) => frames.push(pong(p.clone())),
            Item::Close(Some((code, reason))) => frames.push(close(*code, reason)),
            Item::Close(None) => frames.push(Frame::new(CLOSE, Vec::new())),
        }
    }
    frames
}

fn mutate(frames: &mut [Frame], mutations: &[Mutation]) {
    if frames.is_empty() {
        return;
    }
    let n = frames.len();
    for m in mutations {
        match *m {
            Mutation::Rsv { at, rsv } => frames[at % n].rsv = rsv,
            Mutation::Opcode { at, opcode } => frames[at % n].opcode = opcode,
            Mutation::FlipFin { at } => frames[at % n].fin ^= true,
            Mutation::Unmask { at } => frames[at % n].masked = false,
            Mutation::Corrupt { at, byte, xor } => {
                let p = &mut frames[at % n].payload;
                if !p.is_empty() {
                    let i = byte % p.len();
                    p[i] ^= xor;
                }
            }
            Mutation::Grow { at, extra } => {
                frames[at % n]
                    .payload
                    .extend(std::iter::repeat_n(b'g', extra));
            }
        }
    }
}

/// The bytes of a case, ending with a well-formed Close(1000) of ours, and the frames.
fn bytes_of(case: &Case) -> (Vec<u8>, Vec<Frame>) {
    let mut frames = frames_of(&case.items);
    mutate(&mut frames, &case.mutations);
    let mut bytes: Vec<u8> = frames
        .iter()
        .flat_map(|f| f.encode_with(case.mask))
        .collect();
    match &case.tail {
        Tail::Nothing => {}
        Tail::Truncate(n) => bytes.truncate(bytes.len().saturating_sub(*n)),
        Tail::Garbage(g) => bytes.extend_from_slice(g),
        Tail::Lying { absurd: true } => {
            bytes.extend_from_slice(&[0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
            bytes.extend_from_slice(&case.mask);
        }
        Tail::Lying { absurd: false } => {
            bytes.extend_from_slice(&[0x82, 0xfe, 0x01, 0x00]);
            bytes.extend_from_slice(&case.mask);
            bytes.extend_from_slice(&[0u8; 10]);
        }
    }
    bytes.extend(close(1000, b"").encode_with(case.mask));
    (bytes, frames)
}

/// What the echo endpoint must send for a sequence that breaks no rule, or `None` when the
/// sequence breaks one (then only the general property applies).
fn echo_oracle(case: &Case, frames: &[Frame]) -> Option<Vec<Seen>> {
    if !case.mutations.is_empty() || !matches!(case.tail, Tail::Nothing) {
        return None;
    }
    let mut out = Vec::new();
    let mut partial: Option<(u8, Vec<u8>)> = None;
    for f in frames {
        if !f.masked || f.rsv != 0 {
            return None;
        }
        let is_control = f.opcode >= CLOSE;
        if is_control && (!f.fin || f.payload.len() > 125) {
            return None;
        }
        match f.opcode {
            PING => out.push(Seen::Pong(f.payload.clone())),
            PONG => {}
            CLOSE => {
                let code = match f.payload.len() {
                    0 => 1000,
                    1 => return None,
                    _ => u16::from_be_bytes([f.payload[0], f.payload[1]]),
                };
                if !accepted_from_peer(code)
                    || std::str::from_utf8(&f.payload[2.min(f.payload.len())..]).is_err()
                {
                    return None;
                }
                out.push(Seen::Close(Some(code)));
                return Some(out);
            }
            TEXT | BINARY | CONT => {
                let (opcode, mut buf) = match (f.opcode, partial.take()) {
                    (CONT, Some(p)) => p,
                    (CONT, None) | (_, Some(_)) => return None,
                    (op, None) => (op, Vec::new()),
                };
                buf.extend_from_slice(&f.payload);
                if buf.len() > LIMIT {
                    return None;
                }
                if !f.fin {
                    partial = Some((opcode, buf));
                    continue;
                }
                if opcode == TEXT {
                    if std::str::from_utf8(&buf).is_err() {
                        return None;
                    }
                    out.push(Seen::Text(buf));
                } else {
                    out.push(Seen::Binary(buf));
                }
            }
            _ => return None,
        }
    }
    // Our own Close(1000) ends the sequence; a message still open is dropped.
    out.push(Seen::Close(Some(1000)));
    Some(out)
}

// --- What the server sends --------------------------------------------------------------

/// What the server sent, in the oracle's terms: a Close by its code.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>),
}

/// Moves what the bytes read so far complete into `seen` (server pings are not answered).
fn take_buffered(raw: &mut RawWs, seen: &mut Vec<Seen>) -> Result<(), String> {
    while let Some(got) = raw.buffered()? {
        seen.push(match got {
            Got::Text(b) => Seen::Text(b),
            Got::Binary(b) => Seen::Binary(b),
            Got::Pong(b) => Seen::Pong(b),
            Got::Close(payload) => Seen::Close(close_code(&payload)?),
            Got::Ping(_) | Got::Eof => continue,
        });
    }
    Ok(())
}

/// Reads until the server closes TCP. When it goes quiet first (it waits for the rest of a
/// frame that never comes), half-closes our side, which it must treat as the end.
async fn read_to_end(raw: &mut RawWs) -> Result<Vec<Seen>, String> {
    let mut seen = Vec::new();
    let mut half_closed = false;
    loop {
        take_buffered(raw, &mut seen)?;
        let limit = if half_closed { CLOSE_WITHIN } else { QUIET };
        match timeout(limit, raw.read_more()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                take_buffered(raw, &mut seen)?;
                if raw.buffered_bytes() > 0 {
                    return Err("TCP closed inside a server frame".into());
                }
                return Ok(seen);
            }
            Ok(Err(e)) => return Err(e),
            Err(_) if half_closed => return Err("the server never closed TCP".into()),
            Err(_) => {
                // The server may be gone already; then the read below sees EOF.
                let _ = raw.shutdown().await;
                half_closed = true;
                HALF_CLOSED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The codes of the Close frames a server reads in `bytes`, framed as RFC 6455 section 5.2
/// frames them (a masked frame's payload unmasked with its key, an unmasked one read as it
/// is), up to the first incomplete frame.
fn close_codes_in(bytes: &[u8]) -> Vec<u16> {
    let mut codes = Vec::new();
    let mut at = 0usize;
    while bytes.len() >= at + 2 {
        let opcode = bytes[at] & 0x0f;
        let masked = bytes[at + 1] & 0x80 != 0;
        let (len, mut head) = match bytes[at + 1] & 0x7f {
            126 if bytes.len() >= at + 4 => (
                u64::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
                4,
            ),
            127 if bytes.len() >= at + 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&bytes[at + 2..at + 10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => break,
            n => (u64::from(n), 2),
        };
        let mut key = [0u8; 4];
        if masked {
            if bytes.len() < at + head + 4 {
                break;
            }
            key.copy_from_slice(&bytes[at + head..at + head + 4]);
            head += 4;
        }
        let Ok(len) = usize::try_from(len) else { break };
        let start = at + head;
        if bytes.len().saturating_sub(start) < len {
            break;
        }
        if opcode == CLOSE && len >= 2 {
            codes.push(u16::from_be_bytes([
                bytes[start] ^ key[0],
                bytes[start + 1] ^ key[1],
            ]));
        }
        at = start + len;
    }
    codes
}

#[test]
fn a_close_cut_short_reads_its_code_from_the_next_header() {
    // The CI case: Close(4000) cut by one byte, then our Close(1000), mask [0, 44, 0, 0]:
    // the server reads code 0x0f, (0x88 ^ 44) = 4004 and may echo it.
    let mask = [0, 44, 0, 0];
    let mut bytes = close(4000, b"").encode_with(mask);
    bytes.pop();
    bytes.extend(close(1000, b"").encode_with(mask));
    assert_eq!(close_codes_in(&bytes), vec![4004]);
    let mut whole = close(4000, b"").encode_with(mask);
    whole.extend(close(1000, b"").encode_with(mask));
    assert_eq!(close_codes_in(&whole), vec![4000, 1000]);
}

// --- The property ----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Echo,
    Native,
}

fn path(endpoint: Endpoint) -> String {
    match endpoint {
        Endpoint::Echo => "/test/echo".to_string(),
        Endpoint::Native => format!(
            "/ws?format=json&token={}",
            support::token(&format!("prop-{:08x}", fastrand::u32(..)), json!({}))
        ),
    }
}

async fn check(addr: SocketAddr, endpoint: Endpoint, case: &Case) -> Result<(), String> {
    let (bytes, frames) = bytes_of(case);
    let mut raw = RawWs::open(addr, &path(endpoint)).await?;
    // Writes may fail once the server has closed: what it sent still counts.
    match case.chop {
        Some(n) => {
            for chunk in bytes.chunks(n) {
                if raw.write(chunk).await.is_err() {
                    break;
                }
            }
        }
        None => {
            let _ = raw.write(&bytes).await;
        }
    }
    let seen = read_to_end(&mut raw).await?;

    // Codes the client itself sent in a Close the server may echo. Read from the bytes as
    // sent, not from the frames: a truncated or mutated stream re-frames differently (a Close
    // cut short takes its code's second byte from the next frame's header, as the server
    // reads it).
    let ours: Vec<u16> = close_codes_in(&bytes).into_iter().chain([1000]).collect();
    let closes: Vec<(usize, Option<u16>)> = seen
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Seen::Close(c) => Some((i, *c)),
            _ => None,
        })
        .collect();
    if closes.len() > 1 {
        return Err(format!("more than one Close: {closes:?}"));
    }
    if let Some(&(i, code)) = closes.first() {
        if i != seen.len() - 1 {
            return Err(format!("frames after the server's Close: {:?}", &seen[i..]));
        }
        if let Some(code) = code {
            let echoed = ours.contains(&code) && accepted_from_peer(code);
            if !sendable(code) || !(DOCUMENTED.contains(&code) || echoed) {
                return Err(format!("undocumented or invalid close code {code}"));
            }
        }
    }
    match endpoint {
        Endpoint::Echo => {
            if let Some(want) = echo_oracle(case, &frames) {
                if seen != want {
                    return Err(format!("a valid sequence: want {want:?}, got {seen:?}"));
                }
            }
        }
        Endpoint::Native => {
            // Everything the native endpoint says is JSON text (welcome, replies, events).
            for s in &seen {
                if let Seen::Text(t) = s {
                    serde_json::from_slice::<Value>(t)
                        .map_err(|e| format!("native frame is not JSON ({e}): {t:02x?}"))?;
                }
                if let Seen::Binary(_) = s {
                    return Err("binary frame on a JSON connection".into());
                }
            }
        }
    }
    Ok(())
}

/// A fresh connection is served normally.
async fn alive(addr: SocketAddr, endpoint: Endpoint) -> Result<(), String> {
    let mut raw = RawWs::open(addr, &path(endpoint)).await?;
    let (request, want) = match endpoint {
        Endpoint::Echo => ("alive", 1),
        Endpoint::Native => (r#"{"id":1,"op":"ping"}"#, 3),
    };
    raw.write(&text(request).encode_with([7, 7, 7, 7])).await?;
    let mut seen = Vec::new();
    while seen.len() < want {
        match timeout(CLOSE_WITHIN, raw.read_more()).await {
            Ok(Ok(true)) => take_buffered(&mut raw, &mut seen)?,
            _ => return Err(format!("no answer on a fresh connection: {seen:?}")),
        }
    }
    let last = match seen.last() {
        Some(Seen::Text(t)) => t.clone(),
        other => return Err(format!("fresh connection answered {other:?}")),
    };
    match endpoint {
        Endpoint::Echo if last == b"alive" => Ok(()),
        Endpoint::Native => {
            let v: Value = serde_json::from_slice(&last).map_err(|e| e.to_string())?;
            if v["id"] == json!(1) && v.get("ok").is_some() {
                Ok(())
            } else {
                Err(format!("fresh connection: ping answered {v}"))
            }
        }
        _ => Err(format!("fresh connection echoed {last:02x?}")),
    }
}

/// The property for one case: the server answers `case` by the rules, then a fresh
/// connection still works.
async fn survives(addr: SocketAddr, endpoint: Endpoint, case: &Case) -> Result<(), String> {
    check(addr, endpoint, case).await?;
    alive(addr, endpoint).await
}

/// Cases a run once found: the server's answer was right and the oracle was wrong.
fn regressions() -> Vec<Case> {
    vec![
        // A Close(4000) cut one byte short takes its code's low byte from our final Close's
        // header: the server reads, and echoes, 4004 (CI, session 12's last stop).
        Case {
            items: vec![
                Item::Close(Some((4000, Vec::new()))),
                Item::Message {
                    text: false,
                    payload: vec![123],
                    pieces: 1,
                    ping: None,
                },
            ],
            mutations: Vec::new(),
            tail: Tail::Truncate(8),
            chop: None,
            mask: [0, 44, 0, 0],
        },
    ]
}

fn run(endpoint: Endpoint) {
    count_panics();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(NODE_THREADS)
        .enable_all()
        .build()
        .unwrap();
    let limit = LIMIT.to_string();
    let node = rt.block_on(support::start(&[
        "--test-echo",
        "--max-message-bytes",
        &limit,
        "--ping-interval",
        "60s",
    ]));
    let addr = node.addr;
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        // A failing case can cost seconds (a node that never closes TCP), so shrinking is
        // bounded.
        max_shrink_iters: 64,
        max_shrink_time: 60_000,
        ..Config::default()
    });
    // Cases that once failed, checked first on every run (no failure persistence file).
    for case in regressions() {
        let outcome = rt.block_on(survives(addr, endpoint, &case));
        assert_eq!(outcome, Ok(()), "{endpoint:?}, regression case {case:?}");
    }
    let clean = std::cell::Cell::new(0usize);
    let result = runner.run(&case_strategy(), |case| {
        if endpoint == Endpoint::Echo {
            let (_, frames) = bytes_of(&case);
            clean.set(clean.get() + usize::from(echo_oracle(&case, &frames).is_some()));
        }
        let outcome = rt.block_on(survives(addr, endpoint, &case));
        let panics = PANICS.load(Ordering::SeqCst);
        if panics > 0 {
            return Err(TestCaseError::fail(format!(
                "{panics} panic(s) in a node's tasks"
            )));
        }
        outcome.map_err(TestCaseError::fail)
    });
    println!(
        "{endpoint:?}: {CASES} cases, {} of the runs checked against the exact oracle, \
         {} half-closes so far (both tests)",
        clean.get(),
        HALF_CLOSED.load(Ordering::Relaxed)
    );
    drop(node);
    rt.shutdown_timeout(Duration::from_secs(1));
    result.unwrap();
}

#[test]
fn echo_endpoint_survives_any_frames() {
    run(Endpoint::Echo);
}

#[test]
fn native_endpoint_survives_any_frames() {
    run(Endpoint::Native);
}
