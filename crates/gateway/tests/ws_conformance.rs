//! WebSocket conformance (RFC 6455) over raw TCP, after the Autobahn|Testsuite case groups 1–7,
//! 9 and 10, against the echo endpoint `GET /test/echo` (`--test-echo`). The echo endpoint
//! shares the read loop, reassembly, close rules and writer with `/ws` and `/socket.io/`.
//!
//! The client side is written by hand (`support::raw_ws`): the HTTP upgrade, masked frames
//! with any opcode, RSV bits, fin flag and length, written whole, frame by frame or in small
//! chops. Every frame the server sends is checked too (unmasked, RSV 0, a known opcode,
//! control frames final and at most 125 bytes, valid close codes and UTF-8 reasons), and
//! every case ends with the close handshake and the server closing TCP.
//!
//! One test per group runs a table of cases and prints `group N: P passed, F failed`.
//! Case ids follow Autobahn's where a case maps onto one; `X` marks cases of our own.
//! Run: `cargo test -p gateway --test ws_conformance -- --nocapture`. See docs/conformance.md.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::raw_ws::{
    accept_key, base64, binary, close, cont, describe, fragments, handshake, ping, pong, text,
    Frame, Got, RawWs, BINARY, CLOSE, TEXT,
};
use tokio::time::timeout;

/// The message limit of the nodes under test (`--max-message-bytes`).
const LIMIT: usize = 1 << 20;

/// A socket on the echo endpoint.
async fn echo(addr: SocketAddr) -> Result<RawWs, String> {
    RawWs::open(addr, "/test/echo").await
}

// --- Cases -----------------------------------------------------------------------------

/// One step of a case, in order: something to write, or something the server must send next.
#[derive(Debug)]
enum Step {
    /// Frames in one write.
    Send(Vec<Frame>),
    /// One write per frame.
    Each(Vec<Frame>),
    /// The frames' bytes in writes of this many bytes.
    Chop(Vec<Frame>, usize),
    /// Bytes as they are.
    Raw(Vec<u8>),
    Sleep(u64),
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Pong(Vec<u8>),
}

/// How a case ends.
#[derive(Debug)]
enum End {
    /// The connection is still healthy: our Close(1000) is echoed, then TCP closes.
    Open,
    /// The server fails the connection with this close code, then closes TCP.
    Fail(u16),
    /// We sent a Close: the server answers with this code (empty counts as 1000), then
    /// closes TCP without waiting for us.
    Echo(u16),
}

#[derive(Debug)]
struct Case {
    id: String,
    what: String,
    steps: Vec<Step>,
    end: End,
}

fn case(id: impl Into<String>, what: impl Into<String>, steps: Vec<Step>, end: End) -> Case {
    Case {
        id: id.into(),
        what: what.into(),
        steps,
        end,
    }
}

fn bytes_of(frames: &[Frame]) -> Vec<u8> {
    frames.iter().flat_map(Frame::encode).collect()
}

async fn run_case(addr: SocketAddr, case: &Case) -> Result<(), String> {
    let mut ws = echo(addr).await?;
    for (i, step) in case.steps.iter().enumerate() {
        let sent = match step {
            Step::Send(frames) => ws.write(&bytes_of(frames)).await,
            Step::Each(frames) => {
                let mut sent = Ok(());
                for f in frames {
                    sent = ws.write(&f.encode()).await;
                    if sent.is_err() {
                        break;
                    }
                }
                sent
            }
            Step::Chop(frames, n) => {
                let mut sent = Ok(());
                for chunk in bytes_of(frames).chunks(*n) {
                    sent = ws.write(chunk).await;
                    if sent.is_err() {
                        break;
                    }
                }
                sent
            }
            Step::Raw(bytes) => ws.write(bytes).await,
            _ => Ok(()),
        };
        match (sent, &case.end) {
            (Ok(()), _) => {}
            // A case that must fail the connection: the server may fail it (send its Close and
            // drop the TCP connection) while the client is still sending the rest of the
            // case, byte by byte on a loaded machine. A write that then fails is the server
            // having failed the connection; its Close may already be lost to the reset.
            (Err(_), End::Fail(code)) => {
                let _ = ws.expect_close(&[*code]).await;
                return Ok(());
            }
            (Err(e), _) => return Err(e),
        }
        let want = match step {
            Step::Send(_) | Step::Each(_) | Step::Chop(..) | Step::Raw(_) => continue,
            Step::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                continue;
            }
            Step::Text(b) => Got::Text(b.clone()),
            Step::Binary(b) => Got::Binary(b.clone()),
            Step::Pong(b) => Got::Pong(b.clone()),
        };
        let got = ws
            .next()
            .await
            .map_err(|e| format!("step {i}: want {}: {e}", describe(&want)))?;
        if got != want {
            return Err(format!(
                "step {i}: want {}, got {}",
                describe(&want),
                describe(&got)
            ));
        }
    }
    match case.end {
        End::Open => {
            ws.write(&close(1000, b"").encode()).await?;
            ws.expect_close(&[1000]).await?;
        }
        End::Fail(code) => {
            ws.expect_close(&[code]).await?;
            // Our answer to its Close; the server may be gone already.
            let _ = ws.write(&close(code, b"").encode()).await;
        }
        End::Echo(code) => ws.expect_close(&[code]).await?,
    }
    ws.expect_eof().await
}

/// Runs a group's cases one connection each, prints the count and every failure, and
/// asserts that all passed.
async fn run_group(group: u32, addr: SocketAddr, cases: Vec<Case>) {
    let mut passed = 0;
    let mut failures = Vec::new();
    for case in &cases {
        match timeout(Duration::from_secs(30), run_case(addr, case)).await {
            Ok(Ok(())) => passed += 1,
            Ok(Err(e)) => failures.push(format!("{} ({}): {e}", case.id, case.what)),
            Err(_) => failures.push(format!("{} ({}): timed out", case.id, case.what)),
        }
    }
    println!("group {group}: {passed} passed, {} failed", failures.len());
    for f in &failures {
        println!("  FAILED {f}");
    }
    assert!(
        failures.is_empty(),
        "group {group}: {} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

async fn echo_node() -> gateway::Running {
    let limit = LIMIT.to_string();
    support::start(&[
        "--test-echo",
        "--max-message-bytes",
        &limit,
        "--outbound-queue-bytes",
        "16777216",
        "--ping-interval",
        "60s",
    ])
    .await
}

/// A payload of `n` bytes that makes a shift or a lost chunk visible. Text is ASCII.
fn payload(n: usize, text: bool) -> Vec<u8> {
    (0..n)
        .map(|i| {
            if text {
                b'a' + (i % 26) as u8
            } else {
                (i.wrapping_mul(31) ^ (i >> 8)) as u8
            }
        })
        .collect()
}

fn echo_of(opcode: u8, payload: Vec<u8>) -> Step {
    if opcode == TEXT {
        Step::Text(payload)
    } else {
        Step::Binary(payload)
    }
}

// --- Group 1: framing ------------------------------------------------------------------

fn group1() -> Vec<Case> {
    let mut cases = Vec::new();
    for (sub, opcode, kind) in [(1, TEXT, "text"), (2, BINARY, "binary")] {
        let lengths = [0usize, 125, 126, 127, 128, 65535, 65536];
        for (k, n) in lengths.into_iter().enumerate() {
            let p = payload(n, opcode == TEXT);
            cases.push(case(
                format!("1.{sub}.{}", k + 1),
                format!("{kind}, {n} bytes"),
                vec![
                    Step::Send(vec![Frame::new(opcode, p.clone())]),
                    echo_of(opcode, p),
                ],
                End::Open,
            ));
        }
        let p = payload(65536, opcode == TEXT);
        cases.push(case(
            format!("1.{sub}.8"),
            format!("{kind}, 65536 bytes written in chops of 997"),
            vec![
                Step::Chop(vec![Frame::new(opcode, p.clone())], 997),
                echo_of(opcode, p),
            ],
            End::Open,
        ));
    }
    cases.push(case(
        "1.X.1",
        "an unmasked client frame fails the connection (RFC 6455 5.1)",
        vec![Step::Send(vec![text("Hello").unmasked()])],
        End::Fail(1002),
    ));
    cases.push(case(
        "1.X.2",
        "several frames in one write",
        vec![
            Step::Send(vec![text("one"), binary(vec![2]), text("three")]),
            Step::Text(b"one".to_vec()),
            Step::Binary(vec![2]),
            Step::Text(b"three".to_vec()),
        ],
        End::Open,
    ));
    let mut long_form = vec![0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0];
    long_form.extend_from_slice(b"Hello");
    cases.push(case(
        "1.X.3",
        "a short payload in the 64-bit length form (zero mask)",
        vec![Step::Raw(long_form), Step::Text(b"Hello".to_vec())],
        End::Open,
    ));
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_framing() {
    let node = echo_node().await;
    run_group(1, node.addr, group1()).await;
}

// --- Group 2: pings and pongs ----------------------------------------------------------

fn group2() -> Vec<Case> {
    let bin = vec![0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff];
    let p125 = vec![0xfe; 125];
    let ten: Vec<Vec<u8>> = (0..10)
        .map(|i| format!("payload-{i}").into_bytes())
        .collect();
    vec![
        case(
            "2.1",
            "ping, empty",
            vec![Step::Send(vec![ping("")]), Step::Pong(Vec::new())],
            End::Open,
        ),
        case(
            "2.2",
            "ping with a text payload",
            vec![
                Step::Send(vec![ping("Hello, world!")]),
                Step::Pong(b"Hello, world!".to_vec()),
            ],
            End::Open,
        ),
        case(
            "2.3",
            "ping with a binary payload",
            vec![Step::Send(vec![ping(bin.clone())]), Step::Pong(bin)],
            End::Open,
        ),
        case(
            "2.4",
            "ping with 125 bytes",
            vec![
                Step::Send(vec![ping(p125.clone())]),
                Step::Pong(p125.clone()),
            ],
            End::Open,
        ),
        case(
            "2.5",
            "ping with 126 bytes",
            vec![Step::Send(vec![ping(vec![0xfe; 126])])],
            End::Fail(1002),
        ),
        case(
            "2.6",
            "ping with 125 bytes, written byte by byte",
            vec![Step::Chop(vec![ping(p125.clone())], 1), Step::Pong(p125)],
            End::Open,
        ),
        case(
            "2.7",
            "unsolicited pong, empty: ignored",
            vec![Step::Send(vec![pong("")])],
            End::Open,
        ),
        case(
            "2.8",
            "unsolicited pong with payload: ignored",
            vec![Step::Send(vec![pong("unsolicited pong payload")])],
            End::Open,
        ),
        case(
            "2.9",
            "unsolicited pong, then ping: only the ping is answered",
            vec![
                Step::Send(vec![pong("unsolicited pong payload"), ping("ping payload")]),
                Step::Pong(b"ping payload".to_vec()),
            ],
            End::Open,
        ),
        case(
            "2.10",
            "10 pings in a row, each answered",
            std::iter::once(Step::Send(ten.iter().map(|p| ping(p.clone())).collect()))
                .chain(ten.iter().map(|p| Step::Pong(p.clone())))
                .collect(),
            End::Open,
        ),
        case(
            "2.11",
            "10 pings in a row, written byte by byte",
            std::iter::once(Step::Chop(ten.iter().map(|p| ping(p.clone())).collect(), 1))
                .chain(ten.iter().map(|p| Step::Pong(p.clone())))
                .collect(),
            End::Open,
        ),
        case(
            "2.X.1",
            "pong with 126 bytes (control frames carry at most 125)",
            vec![Step::Send(vec![pong(vec![0xfe; 126])])],
            End::Fail(1002),
        ),
        case(
            "2.X.2",
            "unmasked ping",
            vec![Step::Send(vec![ping("x").unmasked()])],
            End::Fail(1002),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_pings_and_pongs() {
    let node = echo_node().await;
    run_group(2, node.addr, group2()).await;
}

// --- Group 3: reserved bits ------------------------------------------------------------

fn group3() -> Vec<Case> {
    let hello = || text("Hello");
    let echo = || Step::Text(b"Hello".to_vec());
    vec![
        case(
            "3.1",
            "text with RSV = 1",
            vec![Step::Send(vec![hello().rsv(1)])],
            End::Fail(1002),
        ),
        case(
            "3.2",
            "text, text with RSV = 2, ping",
            vec![Step::Send(vec![hello(), hello().rsv(2), ping("")]), echo()],
            End::Fail(1002),
        ),
        case(
            "3.3",
            "text, text with RSV = 3, ping, frame by frame",
            vec![Step::Each(vec![hello(), hello().rsv(3), ping("")]), echo()],
            End::Fail(1002),
        ),
        case(
            "3.4",
            "text, text with RSV = 4, ping, byte by byte",
            vec![
                Step::Chop(vec![hello(), hello().rsv(4), ping("")], 1),
                echo(),
            ],
            End::Fail(1002),
        ),
        case(
            "3.5",
            "binary with RSV = 5",
            vec![Step::Send(vec![binary(vec![0xff; 8]).rsv(5)])],
            End::Fail(1002),
        ),
        case(
            "3.6",
            "ping with RSV = 6",
            vec![Step::Send(vec![ping("Hello").rsv(6)])],
            End::Fail(1002),
        ),
        case(
            "3.7",
            "close with RSV = 7",
            vec![Step::Send(vec![close(1000, b"").rsv(7)])],
            End::Fail(1002),
        ),
        case(
            "3.X.1",
            "continuation with RSV = 4 inside a fragmented text",
            vec![Step::Send(vec![text("Hel").nofin(), cont("lo").rsv(4)])],
            End::Fail(1002),
        ),
        case(
            "3.X.2",
            "pong with RSV = 1",
            vec![Step::Send(vec![pong("").rsv(1)])],
            End::Fail(1002),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_reserved_bits() {
    let node = echo_node().await;
    run_group(3, node.addr, group3()).await;
}

// --- Group 4: opcodes ------------------------------------------------------------------

fn group4() -> Vec<Case> {
    let mut cases = Vec::new();
    for (sub, opcodes) in [(1, [3u8, 4, 5, 6, 7]), (2, [11, 12, 13, 14, 15])] {
        let kind = if sub == 1 { "non-control" } else { "control" };
        for (k, op) in opcodes.into_iter().enumerate() {
            let bad = Frame::new(
                op,
                if k % 2 == 1 {
                    b"reserved".to_vec()
                } else {
                    Vec::new()
                },
            );
            let steps = match k {
                0 | 1 => vec![Step::Send(vec![bad])],
                2 | 3 => vec![
                    Step::Send(vec![text("Hello"), bad, ping("")]),
                    Step::Text(b"Hello".to_vec()),
                ],
                _ => vec![
                    Step::Chop(vec![text("Hello"), bad, ping("")], 1),
                    Step::Text(b"Hello".to_vec()),
                ],
            };
            cases.push(case(
                format!("4.{sub}.{}", k + 1),
                format!("reserved {kind} opcode {op}"),
                steps,
                End::Fail(1002),
            ));
        }
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g4_opcodes() {
    let node = echo_node().await;
    run_group(4, node.addr, group4()).await;
}

// --- Group 5: fragmentation ------------------------------------------------------------

fn group5() -> Vec<Case> {
    let frag = || vec![text("fragment1").nofin(), cont("fragment2")];
    let whole = || Step::Text(b"fragment1fragment2".to_vec());
    let with_ping = || {
        vec![
            text("fragment1").nofin(),
            ping("ping payload"),
            cont("fragment2"),
        ]
    };
    let mut cases = vec![
        case(
            "5.1",
            "ping in 2 fragments",
            vec![Step::Send(vec![
                ping("fragment1").nofin(),
                cont("fragment2"),
            ])],
            End::Fail(1002),
        ),
        case(
            "5.2",
            "pong in 2 fragments",
            vec![Step::Send(vec![
                pong("fragment1").nofin(),
                cont("fragment2"),
            ])],
            End::Fail(1002),
        ),
        case(
            "5.3",
            "text in 2 fragments",
            vec![Step::Send(frag()), whole()],
            End::Open,
        ),
        case(
            "5.4",
            "text in 2 fragments, frame by frame",
            vec![Step::Each(frag()), whole()],
            End::Open,
        ),
        case(
            "5.5",
            "text in 2 fragments, byte by byte",
            vec![Step::Chop(frag(), 1), whole()],
            End::Open,
        ),
        case(
            "5.6",
            "text in 2 fragments, ping in between",
            vec![
                Step::Send(with_ping()),
                Step::Pong(b"ping payload".to_vec()),
                whole(),
            ],
            End::Open,
        ),
        case(
            "5.7",
            "text in 2 fragments, ping in between, frame by frame",
            vec![
                Step::Each(with_ping()),
                Step::Pong(b"ping payload".to_vec()),
                whole(),
            ],
            End::Open,
        ),
        case(
            "5.8",
            "text in 2 fragments, ping in between, byte by byte",
            vec![
                Step::Chop(with_ping(), 1),
                Step::Pong(b"ping payload".to_vec()),
                whole(),
            ],
            End::Open,
        ),
    ];
    // 5.9–5.14: a continuation with nothing to continue, final or not, then a text.
    for (k, fin) in [(9, true), (12, false)] {
        let lone = || {
            let c = cont("non-continuation payload");
            let c = if fin { c } else { c.nofin() };
            vec![c, text("Hello, world!")]
        };
        let what = format!("continuation (fin {fin}) with nothing to continue");
        cases.push(case(
            format!("5.{k}"),
            what.clone(),
            vec![Step::Send(lone())],
            End::Fail(1002),
        ));
        cases.push(case(
            format!("5.{}", k + 1),
            format!("{what}, frame by frame"),
            vec![Step::Each(lone())],
            End::Fail(1002),
        ));
        cases.push(case(
            format!("5.{}", k + 2),
            format!("{what}, byte by byte"),
            vec![Step::Chop(lone(), 1)],
            End::Fail(1002),
        ));
    }
    cases.extend([
        case(
            "5.15",
            "text in 2 fragments, then a continuation with nothing to continue",
            vec![
                Step::Send(vec![
                    text("fragment1").nofin(),
                    cont("fragment2"),
                    cont("fragment3").nofin(),
                    text("fragment4"),
                ]),
                whole(),
            ],
            End::Fail(1002),
        ),
        case(
            "5.16",
            "2x (lone non-final continuation, then text in 2 fragments)",
            vec![Step::Send(vec![
                cont("fragment1").nofin(),
                text("fragment2").nofin(),
                cont("fragment3"),
            ])],
            End::Fail(1002),
        ),
        case(
            "5.17",
            "2x (lone final continuation, then text in 2 fragments)",
            vec![Step::Send(vec![
                cont("fragment1"),
                text("fragment2").nofin(),
                cont("fragment3"),
            ])],
            End::Fail(1002),
        ),
        case(
            "5.18",
            "text in 2 fragments, both with the text opcode",
            vec![Step::Send(vec![
                text("fragment1").nofin(),
                text("fragment2"),
            ])],
            End::Fail(1002),
        ),
    ]);
    for (k, each) in [(19, false), (20, true)] {
        let first = vec![
            text("fragment1").nofin(),
            cont("fragment2").nofin(),
            ping("pongme 1!"),
        ];
        let second = vec![
            cont("fragment3").nofin(),
            cont("fragment4").nofin(),
            ping("pongme 2!"),
            cont("fragment5"),
        ];
        let send = |f: Vec<Frame>| if each { Step::Each(f) } else { Step::Send(f) };
        cases.push(case(
            format!("5.{k}"),
            format!(
                "5 fragments with pings and a pause in between{}",
                if each { ", frame by frame" } else { "" }
            ),
            vec![
                send(first),
                Step::Pong(b"pongme 1!".to_vec()),
                Step::Sleep(200),
                send(second),
                Step::Pong(b"pongme 2!".to_vec()),
                Step::Text(b"fragment1fragment2fragment3fragment4fragment5".to_vec()),
            ],
            End::Open,
        ));
    }
    let bin = payload(3000, false);
    cases.extend([
        case(
            "5.X.1",
            "binary in 3 fragments",
            vec![
                Step::Send(fragments(BINARY, &bin, 1000)),
                Step::Binary(bin.clone()),
            ],
            End::Open,
        ),
        case(
            "5.X.2",
            "close in 2 fragments",
            vec![Step::Send(vec![close(1000, b"frag").nofin(), cont("ment")])],
            End::Fail(1002),
        ),
        case(
            "5.X.3",
            "unsolicited pong between fragments: ignored",
            vec![
                Step::Send(vec![
                    text("fragment1").nofin(),
                    pong("x"),
                    cont("fragment2"),
                ]),
                whole(),
            ],
            End::Open,
        ),
        case(
            "5.X.4",
            "binary inside a fragmented text",
            vec![Step::Send(vec![text("fragment1").nofin(), binary(vec![1])])],
            End::Fail(1002),
        ),
        case(
            "5.X.5",
            "text of 5 empty fragments",
            vec![
                Step::Send(vec![
                    text("").nofin(),
                    cont("").nofin(),
                    cont("").nofin(),
                    cont("").nofin(),
                    cont(""),
                ]),
                Step::Text(Vec::new()),
            ],
            End::Open,
        ),
        case(
            "5.X.6",
            "close between fragments ends the connection cleanly",
            vec![Step::Send(vec![
                text("fragment1").nofin(),
                close(1000, b""),
            ])],
            End::Echo(1000),
        ),
    ]);
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_fragmentation() {
    let node = echo_node().await;
    run_group(5, node.addr, group5()).await;
}

// --- Group 6: UTF-8 --------------------------------------------------------------------

/// "κόσμε": two, three, two, two and two bytes.
const KOSME: &[u8] = &[
    0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5,
];

/// Samples after Autobahn 6.5–6.23 (Markus Kuhn's UTF-8 stress test): subgroup, bytes, valid.
fn utf8_samples() -> Vec<(u32, Vec<u8>, bool)> {
    let mut s: Vec<(u32, Vec<u8>, bool)> = Vec::new();
    let mut add = |sub: u32, valid: bool, seqs: &[&[u8]]| {
        for seq in seqs {
            s.push((sub, seq.to_vec(), valid));
        }
    };
    // 6.5 valid text.
    add(
        5,
        true,
        &[KOSME, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5-Hello"],
    );
    // 6.6: every prefix of "κόσμε" is valid exactly at a character boundary; added below.
    // 6.7 first possible sequence of each length.
    add(
        7,
        true,
        &[b"\x00", b"\xc2\x80", b"\xe0\xa0\x80", b"\xf0\x90\x80\x80"],
    );
    // 6.8 first possible 5- and 6-byte sequences (not UTF-8 since RFC 3629).
    add(
        8,
        false,
        &[b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80"],
    );
    // 6.9 last possible sequence of each length.
    add(
        9,
        true,
        &[b"\x7f", b"\xdf\xbf", b"\xef\xbf\xbf", b"\xf4\x8f\xbf\xbf"],
    );
    // 6.10 last possible 4-, 5-, 6-byte patterns beyond U+10FFFF.
    add(
        10,
        false,
        &[
            b"\xf7\xbf\xbf\xbf",
            b"\xfb\xbf\xbf\xbf\xbf",
            b"\xfd\xbf\xbf\xbf\xbf\xbf",
        ],
    );
    // 6.11 other boundaries: U+D7FF, U+E000, U+FFFD, U+10FFFF valid; U+110000 not.
    add(
        11,
        true,
        &[
            b"\xed\x9f\xbf",
            b"\xee\x80\x80",
            b"\xef\xbf\xbd",
            b"\xf4\x8f\xbf\xbf",
        ],
    );
    add(11, false, &[b"\xf4\x90\x80\x80"]);
    // 6.12 unexpected continuation bytes.
    add(
        12,
        false,
        &[
            b"\x80",
            b"\xbf",
            b"\x80\xbf",
            b"\x80\xbf\x80",
            b"\x80\xbf\x80\xbf",
            b"\x80\xbf\x80\xbf\x80",
            b"\x80\xbf\x80\xbf\x80\xbf",
            b"\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f",
        ],
    );
    // 6.13 lonely start bytes, each followed by a space.
    add(
        13,
        false,
        &[
            b"\xc0 \xc1 ",
            b"\xe0 \xe1 ",
            b"\xf0 \xf1 ",
            b"\xf8 \xf9 ",
            b"\xfc \xfd ",
        ],
    );
    // 6.14 sequences with the last continuation byte missing.
    add(
        14,
        false,
        &[
            b"\xc0",
            b"\xe0\x80",
            b"\xf0\x80\x80",
            b"\xf8\x80\x80\x80",
            b"\xfc\x80\x80\x80\x80",
            b"\xdf",
            b"\xef\xbf",
            b"\xf7\xbf\xbf",
            b"\xfb\xbf\xbf\xbf",
            b"\xfd\xbf\xbf\xbf\xbf",
        ],
    );
    // 6.15 all of 6.14 concatenated.
    add(
        15,
        false,
        &[b"\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80\xfc\x80\x80\x80\x80\xdf\xef\xbf\xf7\xbf\xbf\xfb\xbf\xbf\xbf\xfd\xbf\xbf\xbf\xbf"],
    );
    // 6.16 impossible bytes.
    add(16, false, &[b"\xfe", b"\xff", b"\xfe\xfe\xff\xff"]);
    // 6.17 overlong '/'.
    add(
        17,
        false,
        &[
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xf0\x80\x80\xaf",
            b"\xf8\x80\x80\x80\xaf",
            b"\xfc\x80\x80\x80\x80\xaf",
        ],
    );
    // 6.18 maximum overlong sequences.
    add(
        18,
        false,
        &[
            b"\xc1\xbf",
            b"\xe0\x9f\xbf",
            b"\xf0\x8f\xbf\xbf",
            b"\xf8\x87\xbf\xbf\xbf",
            b"\xfc\x83\xbf\xbf\xbf\xbf",
        ],
    );
    // 6.19 overlong NUL.
    add(
        19,
        false,
        &[
            b"\xc0\x80",
            b"\xe0\x80\x80",
            b"\xf0\x80\x80\x80",
            b"\xf8\x80\x80\x80\x80",
            b"\xfc\x80\x80\x80\x80\x80",
        ],
    );
    // 6.20 single UTF-16 surrogates.
    add(
        20,
        false,
        &[
            b"\xed\xa0\x80",
            b"\xed\xad\xbf",
            b"\xed\xae\x80",
            b"\xed\xaf\xbf",
            b"\xed\xb0\x80",
            b"\xed\xbe\x80",
            b"\xed\xbf\xbf",
        ],
    );
    // 6.21 paired UTF-16 surrogates.
    add(
        21,
        false,
        &[
            b"\xed\xa0\x80\xed\xb0\x80",
            b"\xed\xa0\x80\xed\xbf\xbf",
            b"\xed\xad\xbf\xed\xb0\x80",
            b"\xed\xad\xbf\xed\xbf\xbf",
            b"\xed\xae\x80\xed\xb0\x80",
            b"\xed\xae\x80\xed\xbf\xbf",
            b"\xed\xaf\xbf\xed\xb0\x80",
            b"\xed\xaf\xbf\xed\xbf\xbf",
        ],
    );
    // 6.22 noncharacters are valid UTF-8.
    add(
        22,
        true,
        &[
            b"\xef\xbf\xbe",
            b"\xef\xbf\xbf",
            b"\xf0\x9f\xbf\xbe",
            b"\xf0\x9f\xbf\xbf",
            b"\xf3\xbf\xbf\xbe",
            b"\xf4\x8f\xbf\xbe",
            b"\xef\xb7\x90",
            b"\xef\xb7\xaf",
        ],
    );
    // 6.23 U+FFFD and friends: valid.
    add(
        23,
        true,
        &[b"\xef\xbf\xbd", b"\xef\xbb\xbf", b"a\xef\xbf\xbdb"],
    );
    // 6.6 prefixes of "κόσμε".
    for n in 1..=KOSME.len() {
        s.push((6, KOSME[..n].to_vec(), matches!(n, 2 | 5 | 7 | 9 | 11)));
    }
    s
}

fn group6() -> Vec<Case> {
    let mut cases = Vec::new();
    // 6.1 empty text in several forms.
    cases.push(case(
        "6.1.1",
        "empty text",
        vec![Step::Send(vec![text("")]), Step::Text(Vec::new())],
        End::Open,
    ));
    cases.push(case(
        "6.1.2",
        "empty text in 3 empty fragments",
        vec![
            Step::Send(vec![text("").nofin(), cont("").nofin(), cont("")]),
            Step::Text(Vec::new()),
        ],
        End::Open,
    ));
    cases.push(case(
        "6.1.3",
        "text with empty first and last fragments",
        vec![
            Step::Send(vec![text("").nofin(), cont("middle").nofin(), cont("")]),
            Step::Text(b"middle".to_vec()),
        ],
        End::Open,
    ));
    // 6.2 valid multi-byte text, whole and split at every possible point.
    let hello = "Hello-µ@ßöäüàá-UTF-8!!".as_bytes().to_vec();
    cases.push(case(
        "6.2.1",
        "valid UTF-8 in one frame",
        vec![
            Step::Send(vec![text(hello.clone())]),
            Step::Text(hello.clone()),
        ],
        End::Open,
    ));
    cases.push(case(
        "6.2.2",
        "valid UTF-8 in 2 fragments, split inside a character",
        vec![
            // Byte 7 is the second byte of "µ".
            Step::Send(vec![
                text(hello[..7].to_vec()).nofin(),
                cont(hello[7..].to_vec()),
            ]),
            Step::Text(hello.clone()),
        ],
        End::Open,
    ));
    cases.push(case(
        "6.2.3",
        "valid UTF-8, written byte by byte",
        vec![
            Step::Chop(vec![text(hello.clone())], 1),
            Step::Text(hello.clone()),
        ],
        End::Open,
    ));
    cases.push(case(
        "6.2.4",
        "valid UTF-8, one fragment per byte",
        vec![
            Step::Send(fragments(TEXT, &hello, 1)),
            Step::Text(hello.clone()),
        ],
        End::Open,
    ));
    // 6.3 invalid text, whole and one fragment per byte.
    let mut edited = KOSME.to_vec();
    edited.extend_from_slice(b"\xed\xa0\x80edited");
    cases.push(case(
        "6.3.1",
        "invalid UTF-8 (a surrogate) in one frame",
        vec![Step::Send(vec![text(edited.clone())])],
        End::Fail(1007),
    ));
    cases.push(case(
        "6.3.2",
        "invalid UTF-8 (a surrogate), one fragment per byte",
        vec![Step::Send(fragments(TEXT, &edited, 1))],
        End::Fail(1007),
    ));
    // 6.4 fail fast: the connection fails at the fragment holding the invalid sequence,
    // before the message is complete (the rest is never sent).
    let fast: [(&str, Vec<Frame>); 4] = [
        (
            "invalid code point in the 2nd of 3 fragments",
            vec![text(KOSME).nofin(), cont(&b"\xf4\x90\x80\x80"[..]).nofin()],
        ),
        (
            "invalid sequence split over 2 fragments",
            vec![
                text([KOSME, &b"\xf4"[..]].concat()).nofin(),
                cont(&b"\x90\x80\x80"[..]).nofin(),
            ],
        ),
        (
            "invalid in the 1st fragment",
            vec![text([&b"\xed\xa0\x80"[..], KOSME].concat()).nofin()],
        ),
        (
            "invalid at the 12th of many one-byte fragments",
            fragments(TEXT, &[KOSME, &b"\xf4\x90\x80\x80edited"[..]].concat(), 1)
                .into_iter()
                .take(13)
                .map(Frame::nofin)
                .collect(),
        ),
    ];
    for (k, (what, frames)) in fast.into_iter().enumerate() {
        cases.push(case(
            format!("6.4.{}", k + 1),
            format!("fail fast: {what}"),
            vec![Step::Each(frames)],
            End::Fail(1007),
        ));
    }
    // 6.5–6.23: each sample whole (w) and one fragment per byte (f).
    let mut n = std::collections::HashMap::new();
    for (sub, bytes, valid) in utf8_samples() {
        let k = n.entry(sub).or_insert(0);
        *k += 1;
        for (suffix, frames) in [
            ("w", vec![text(bytes.clone())]),
            ("f", fragments(TEXT, &bytes, 1)),
        ] {
            let what = format!("{} {bytes:02x?}", if valid { "valid" } else { "invalid" });
            let (steps, end) = if valid {
                (
                    vec![Step::Send(frames), Step::Text(bytes.clone())],
                    End::Open,
                )
            } else {
                (vec![Step::Send(frames)], End::Fail(1007))
            };
            cases.push(case(format!("6.{sub}.{k}{suffix}"), what, steps, end));
        }
    }
    // Binary messages are never checked.
    cases.push(case(
        "6.X.1",
        "invalid UTF-8 in a binary message is echoed",
        vec![
            Step::Send(vec![binary(edited.clone())]),
            Step::Binary(edited),
        ],
        End::Open,
    ));
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g6_utf8() {
    let node = echo_node().await;
    run_group(6, node.addr, group6()).await;
}

// --- Group 7: close handling -----------------------------------------------------------

fn group7() -> Vec<Case> {
    let big = payload(256 * 1024, true);
    let mut cases = vec![
        case(
            "7.1.1",
            "text, then close",
            vec![
                Step::Send(vec![text("Hello World!"), close(1000, b"")]),
                Step::Text(b"Hello World!".to_vec()),
            ],
            End::Echo(1000),
        ),
        case(
            "7.1.2",
            "close twice: the second is ignored",
            vec![Step::Send(vec![close(1000, b""), close(1000, b"")])],
            End::Echo(1000),
        ),
        case(
            "7.1.3",
            "close, then ping: no pong",
            vec![Step::Send(vec![close(1000, b""), ping("")])],
            End::Echo(1000),
        ),
        case(
            "7.1.4",
            "close, then text: no echo",
            vec![Step::Send(vec![close(1000, b""), text("Hello World!")])],
            End::Echo(1000),
        ),
        case(
            "7.1.5",
            "first fragment, close, last fragment: no echo",
            vec![Step::Send(vec![
                text("fragment1").nofin(),
                close(1000, b""),
                cont("fragment2"),
            ])],
            End::Echo(1000),
        ),
        case(
            "7.1.6",
            "256 KiB text, close, ping",
            vec![
                Step::Send(vec![text(big.clone()), close(1000, b""), ping("")]),
                Step::Text(big),
            ],
            End::Echo(1000),
        ),
        case(
            "7.3.1",
            "close with no payload",
            vec![Step::Send(vec![Frame::new(CLOSE, Vec::new())])],
            End::Echo(1000),
        ),
        case(
            "7.3.2",
            "close with a 1-byte payload",
            vec![Step::Send(vec![Frame::new(CLOSE, vec![0x03])])],
            End::Fail(1002),
        ),
        case(
            "7.3.3",
            "close with code 1000",
            vec![Step::Send(vec![close(1000, b"")])],
            End::Echo(1000),
        ),
        case(
            "7.3.4",
            "close with code and reason",
            vec![Step::Send(vec![close(1000, b"Hello World!")])],
            End::Echo(1000),
        ),
        case(
            "7.3.5",
            "close with a 123-byte reason (125-byte payload)",
            vec![Step::Send(vec![close(1000, &[b'*'; 123])])],
            End::Echo(1000),
        ),
        case(
            "7.3.6",
            "close with a 124-byte reason (126-byte payload)",
            vec![Step::Send(vec![close(1000, &[b'*'; 124])])],
            End::Fail(1002),
        ),
        case(
            "7.5.1",
            "close reason with invalid UTF-8",
            vec![Step::Send(vec![close(
                1000,
                &[KOSME, &b"\xed\xa0\x80edited"[..]].concat(),
            )])],
            End::Fail(1007),
        ),
    ];
    let valid = [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ];
    for (k, code) in valid.into_iter().enumerate() {
        cases.push(case(
            format!("7.7.{}", k + 1),
            format!("valid close code {code} is echoed"),
            vec![Step::Send(vec![close(code, b"")])],
            End::Echo(code),
        ));
    }
    let invalid = [0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999];
    for (k, code) in invalid.into_iter().enumerate() {
        cases.push(case(
            format!("7.9.{}", k + 1),
            format!("invalid close code {code}"),
            vec![Step::Send(vec![close(code, b"")])],
            End::Fail(1002),
        ));
    }
    for (k, code) in [5000, 65535].into_iter().enumerate() {
        cases.push(case(
            format!("7.13.{}", k + 1),
            format!("close code {code}, beyond the defined ranges"),
            vec![Step::Send(vec![close(code, b"")])],
            End::Fail(1002),
        ));
    }
    cases.push(case(
        "7.X.1",
        "close written byte by byte",
        vec![Step::Chop(vec![close(4000, b"bye")], 1)],
        End::Echo(4000),
    ));
    cases.push(case(
        "7.X.2",
        "a close reason with multi-byte UTF-8 is accepted",
        vec![Step::Send(vec![close(1001, KOSME)])],
        End::Echo(1001),
    ));
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g7_close() {
    let node = echo_node().await;
    run_group(7, node.addr, group7()).await;

    // The client drops TCP right after the handshake, and in the middle of a frame: the
    // node carries on.
    let ws = echo(node.addr).await.unwrap();
    drop(ws);
    let mut ws = echo(node.addr).await.unwrap();
    let half = text("Hello").encode();
    ws.write(&half[..4]).await.unwrap();
    drop(ws);
    let mut ws = echo(node.addr).await.unwrap();
    ws.write(&text("still here").encode()).await.unwrap();
    assert_eq!(ws.next().await.unwrap(), Got::Text(b"still here".to_vec()));
    // Our Close, answered, and TCP closed by the server without waiting for us.
    ws.write(&close(1000, b"").encode()).await.unwrap();
    ws.expect_close(&[1000]).await.unwrap();
    let started = tokio::time::Instant::now();
    ws.expect_eof().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    println!("group 7 extra 7.X.3 (TCP dropped by the client, node carries on): passed");
}

// --- Group 9: limits and performance ---------------------------------------------------

fn group9() -> Vec<Case> {
    let mut cases = Vec::new();
    for (sub, opcode, kind) in [(1, TEXT, "text"), (2, BINARY, "binary")] {
        for (k, n) in [64 * 1024, 256 * 1024, LIMIT].into_iter().enumerate() {
            let p = payload(n, opcode == TEXT);
            cases.push(case(
                format!("9.{sub}.{}", k + 1),
                format!("{kind}, {n} bytes in one frame"),
                vec![
                    Step::Send(vec![Frame::new(opcode, p.clone())]),
                    echo_of(opcode, p),
                ],
                End::Open,
            ));
        }
        cases.push(case(
            format!("9.{sub}.X"),
            format!("{kind}, one byte over the limit in one frame"),
            vec![Step::Send(vec![Frame::new(
                opcode,
                payload(LIMIT + 1, opcode == TEXT),
            )])],
            End::Fail(1009),
        ));
    }
    for (sub, opcode, kind) in [(3, TEXT, "text"), (4, BINARY, "binary")] {
        let p = payload(256 * 1024, opcode == TEXT);
        let sizes = [64, 256, 1024, 4096, 16 * 1024, 64 * 1024, 256 * 1024];
        for (k, size) in sizes.into_iter().enumerate() {
            cases.push(case(
                format!("9.{sub}.{}", k + 1),
                format!("{kind}, 256 KiB in fragments of {size}"),
                vec![
                    Step::Send(fragments(opcode, &p, size)),
                    echo_of(opcode, p.clone()),
                ],
                End::Open,
            ));
        }
        let at_limit = payload(LIMIT, opcode == TEXT);
        cases.push(case(
            format!("9.{sub}.8"),
            format!("{kind}, exactly the limit in fragments of 64 KiB"),
            vec![
                Step::Send(fragments(opcode, &at_limit, 64 * 1024)),
                echo_of(opcode, at_limit),
            ],
            End::Open,
        ));
        cases.push(case(
            format!("9.{sub}.X"),
            format!("{kind}, one byte over the limit in fragments of 64 KiB"),
            vec![Step::Send(fragments(
                opcode,
                &payload(LIMIT + 1, opcode == TEXT),
                64 * 1024,
            ))],
            End::Fail(1009),
        ));
    }
    for (sub, opcode, kind) in [(5, TEXT, "text"), (6, BINARY, "binary")] {
        let p = payload(256 * 1024, opcode == TEXT);
        for (k, chop) in [64, 128, 256, 512, 1024, 2048].into_iter().enumerate() {
            cases.push(case(
                format!("9.{sub}.{}", k + 1),
                format!("{kind}, 256 KiB frame written in chops of {chop}"),
                vec![
                    Step::Chop(vec![Frame::new(opcode, p.clone())], chop),
                    echo_of(opcode, p.clone()),
                ],
                End::Open,
            ));
        }
    }
    for (sub, opcode, kind) in [(7, TEXT, "text"), (8, BINARY, "binary")] {
        for (k, n) in [0, 16, 64, 256, 1024, 4096].into_iter().enumerate() {
            let p = payload(n, opcode == TEXT);
            let steps = (0..1000)
                .flat_map(|_| {
                    [
                        Step::Send(vec![Frame::new(opcode, p.clone())]),
                        echo_of(opcode, p.clone()),
                    ]
                })
                .collect();
            cases.push(case(
                format!("9.{sub}.{}", k + 1),
                format!("1000 {kind} messages of {n} bytes, one round trip each"),
                steps,
                End::Open,
            ));
        }
    }
    let many: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("message {i}").into_bytes())
        .collect();
    cases.push(case(
        "9.X.1",
        "1000 small messages in one write, echoed in order",
        std::iter::once(Step::Send(many.iter().map(|m| text(m.clone())).collect()))
            .chain(many.iter().map(|m| Step::Text(m.clone())))
            .collect(),
        End::Open,
    ));
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g9_limits_and_performance() {
    let node = echo_node().await;
    let started = std::time::Instant::now();
    run_group(9, node.addr, group9()).await;
    println!("group 9 took {:?}", started.elapsed());
}

// --- Group 10: misc --------------------------------------------------------------------

fn group10() -> Vec<Case> {
    let t = payload(65536, true);
    let b = payload(65536, false);
    vec![
        case(
            "10.1.1",
            "64 KiB text in fragments of 1300: whole and intact, however it is framed",
            vec![Step::Send(fragments(TEXT, &t, 1300)), Step::Text(t.clone())],
            End::Open,
        ),
        case(
            "10.X.1",
            "64 KiB binary in fragments of 1300, written in chops of 1000",
            vec![
                Step::Chop(fragments(BINARY, &b, 1300), 1000),
                Step::Binary(b),
            ],
            End::Open,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g10_misc() {
    let node = echo_node().await;
    run_group(10, node.addr, group10()).await;
}

// --- The endpoint itself ---------------------------------------------------------------

#[tokio::test]
async fn echo_endpoint_is_404_without_test_echo() {
    let node = support::start(&[]).await;
    let (status, ws) = handshake(node.addr, "/test/echo").await.unwrap();
    assert_eq!(status, 404);
    assert!(ws.is_none());
    let (status, _) = support::http(node.addr, "GET", "/test/echo", None, "").await;
    assert_eq!(status, 404);
}

#[test]
fn accept_key_matches_rfc_6455_example() {
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
}
