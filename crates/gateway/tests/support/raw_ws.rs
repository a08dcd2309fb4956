//! A raw WebSocket client over TCP (RFC 6455), for tests that must send frames no client
//! library would: the HTTP upgrade by hand, client frames with any opcode, RSV bits, fin flag,
//! length and mask, and a reader that checks every server frame (unmasked, RSV 0, a known
//! opcode, control frames final and at most 125 bytes, text and close reasons UTF-8) and
//! reassembles the server's own fragments.

use super::WAIT;
use base64::Engine;
use sha1::{Digest, Sha1};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

pub const CONT: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

// --- Writing ---------------------------------------------------------------------------

/// A frame as the client writes it: masked unless told otherwise. Nothing is checked, so
/// that tests can send any frame, valid or not.
#[derive(Debug, Clone)]
pub struct Frame {
    pub fin: bool,
    /// The three RSV bits as a number, RSV1 = 4, RSV2 = 2, RSV3 = 1 (Autobahn's notation).
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A final, masked frame.
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            fin: true,
            rsv: 0,
            opcode,
            masked: true,
            payload: payload.into(),
        }
    }

    pub fn nofin(mut self) -> Frame {
        self.fin = false;
        self
    }

    pub fn rsv(mut self, rsv: u8) -> Frame {
        self.rsv = rsv;
        self
    }

    pub fn unmasked(mut self) -> Frame {
        self.masked = false;
        self
    }

    /// The frame's bytes (section 5.2), with a random mask key.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(fastrand::u32(..).to_be_bytes())
    }

    /// The frame's bytes, masked with `key` unless the frame is unmasked.
    pub fn encode_with(&self, key: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(u8::from(self.fin) << 7) | ((self.rsv & 7) << 4) | (self.opcode & 15)];
        let mask_bit = if self.masked { 0x80 } else { 0 };
        let n = self.payload.len();
        if n < 126 {
            out.push(mask_bit | n as u8);
        } else if n <= 0xffff {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        if self.masked {
            out.extend_from_slice(&key);
            out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(&self.payload);
        }
        out
    }
}

pub fn text(payload: impl Into<Vec<u8>>) -> Frame {
    Frame::new(TEXT, payload)
}
pub fn binary(payload: impl Into<Vec<u8>>) -> Frame {
    Frame::new(BINARY, payload)
}
pub fn cont(payload: impl Into<Vec<u8>>) -> Frame {
    Frame::new(CONT, payload)
}
pub fn ping(payload: impl Into<Vec<u8>>) -> Frame {
    Frame::new(PING, payload)
}
pub fn pong(payload: impl Into<Vec<u8>>) -> Frame {
    Frame::new(PONG, payload)
}
pub fn close(code: u16, reason: &[u8]) -> Frame {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    Frame::new(CLOSE, payload)
}

/// A text or binary message cut into fragments of `size` bytes (at least one fragment).
pub fn fragments(opcode: u8, payload: &[u8], size: usize) -> Vec<Frame> {
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![&[]]
    } else {
        payload.chunks(size).collect()
    };
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| Frame {
            fin: i == last,
            ..Frame::new(if i == 0 { opcode } else { CONT }, c)
        })
        .collect()
}

// --- Close codes and the handshake's keys ----------------------------------------------

/// Close codes an endpoint may put in a Close frame (RFC 6455 section 7.4, and the IANA
/// registry for 1012–1014): the tests' own statement of the rule, not the server's.
pub fn sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The code of a Close frame's payload (`None` when empty), checking its form: not a lone
/// byte, and a UTF-8 reason.
pub fn close_code(payload: &[u8]) -> Result<Option<u16>, String> {
    match payload.len() {
        0 => Ok(None),
        1 => Err("server close with a 1-byte payload".into()),
        _ => {
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err("server close reason is not UTF-8".into());
            }
            Ok(Some(u16::from_be_bytes([payload[0], payload[1]])))
        }
    }
}

/// The `Sec-WebSocket-Accept` a server must answer to `key` (section 4.2.2).
pub fn accept_key(key: &str) -> String {
    base64(&Sha1::digest(format!(
        "{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    )))
}

pub fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

// --- Reading ---------------------------------------------------------------------------

/// What the server sent, after reassembly of its own fragments.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The Close frame's payload.
    Close(Vec<u8>),
    Eof,
}

pub fn describe(got: &Got) -> String {
    fn short(b: &[u8]) -> String {
        if b.len() <= 40 {
            format!("{b:02x?}")
        } else {
            format!("{} bytes starting {:02x?}", b.len(), &b[..16])
        }
    }
    match got {
        Got::Text(b) => format!("text {}", short(b)),
        Got::Binary(b) => format!("binary {}", short(b)),
        Got::Ping(b) => format!("ping {}", short(b)),
        Got::Pong(b) => format!("pong {}", short(b)),
        Got::Close(b) => format!("close {}", short(b)),
        Got::Eof => "TCP closed".to_string(),
    }
}

/// A response to an upgrade request: its status and head, and the connection (bytes after
/// the head stay buffered).
pub struct Upgrade {
    pub status: u16,
    pub head: String,
    /// The `Sec-WebSocket-Key` sent.
    pub key: String,
    pub ws: RawWs,
}

impl Upgrade {
    /// A response header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Sends an upgrade request for `path` with a fresh key and `extra` headers (each ending in
/// CRLF), and reads the response head. Nothing in the response is checked.
pub async fn upgrade(addr: SocketAddr, path: &str, extra: &str) -> Result<Upgrade, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let key = base64(&fastrand::u128(..).to_be_bytes());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    let mut ws = RawWs {
        tcp,
        buf: Vec::new(),
        partial: None,
    };
    ws.write(request.as_bytes()).await?;
    let end = loop {
        if let Some(i) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !timeout(WAIT, ws.read_more())
            .await
            .map_err(|_| "no handshake response")??
        {
            return Err("closed during the handshake".into());
        }
    };
    let head = String::from_utf8_lossy(&ws.buf[..end]).to_string();
    ws.buf.drain(..end);
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    Ok(Upgrade {
        status,
        head,
        key,
        ws,
    })
}

/// The opening handshake, checked: on 101, the right `Sec-WebSocket-Accept`, `Upgrade:
/// websocket`, and no extension (permessage-deflate is offered; compression is out of scope,
/// docs/conformance.md). Returns the status code and, on 101, the socket.
pub async fn handshake(addr: SocketAddr, path: &str) -> Result<(u16, Option<RawWs>), String> {
    let up = upgrade(
        addr,
        path,
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    )
    .await?;
    if up.status != 101 {
        return Ok((up.status, None));
    }
    let head = &up.head;
    let expected = accept_key(&up.key);
    if up.header("sec-websocket-accept").as_deref() != Some(expected.as_str()) {
        return Err(format!(
            "bad Sec-WebSocket-Accept (want {expected}): {head}"
        ));
    }
    if !up
        .header("upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    {
        return Err(format!("no Upgrade: websocket: {head}"));
    }
    if up.header("sec-websocket-extensions").is_some() {
        return Err(format!("an extension was accepted: {head}"));
    }
    Ok((up.status, Some(up.ws)))
}

pub struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// A data message the server is sending in fragments: opcode and bytes so far.
    partial: Option<(u8, Vec<u8>)>,
}

impl RawWs {
    /// A socket on `path`, after a checked handshake that must answer 101.
    pub async fn open(addr: SocketAddr, path: &str) -> Result<RawWs, String> {
        match handshake(addr, path).await? {
            (101, Some(ws)) => Ok(ws),
            (status, _) => Err(format!("upgrade answered {status}")),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.tcp.write_all(bytes).await.map_err(|e| e.to_string())?;
        self.tcp.flush().await.map_err(|e| e.to_string())
    }

    /// Half-closes our side: no more bytes from us.
    pub async fn shutdown(&mut self) -> Result<(), String> {
        self.tcp.shutdown().await.map_err(|e| e.to_string())
    }

    /// Reads more bytes into the buffer; false at EOF (a reset counts as EOF).
    pub async fn read_more(&mut self) -> Result<bool, String> {
        self.buf.reserve(64 * 1024);
        match self.tcp.read_buf(&mut self.buf).await {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Bytes read but not yet part of a whole frame.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The next whole server frame in the buffer, checked against what a server may send;
    /// `None` while more bytes are needed.
    fn buffered_frame(&mut self) -> Result<Option<(bool, u8, Vec<u8>)>, String> {
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        if b0 & 0x70 != 0 {
            return Err(format!("server frame with RSV bits: {b0:#04x}"));
        }
        if b1 & 0x80 != 0 {
            return Err("server frame is masked".into());
        }
        if !matches!(opcode, CONT | TEXT | BINARY | CLOSE | PING | PONG) {
            return Err(format!("server frame with reserved opcode {opcode}"));
        }
        let (len, head): (usize, usize) = match b1 & 0x7f {
            126 if self.buf.len() >= 4 => (
                usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                4,
            ),
            127 if self.buf.len() >= 10 => {
                let n = u64::from_be_bytes(self.buf[2..10].try_into().unwrap());
                (usize::try_from(n).map_err(|_| "absurd length")?, 10)
            }
            126 | 127 => return Ok(None),
            n => (usize::from(n), 2),
        };
        if opcode >= CLOSE && (!fin || len > 125) {
            return Err(format!("bad server control frame: fin {fin}, {len} bytes"));
        }
        if self.buf.len() < head.saturating_add(len) {
            return Ok(None);
        }
        let payload = self.buf[head..head + len].to_vec();
        self.buf.drain(..head + len);
        Ok(Some((fin, opcode, payload)))
    }

    /// One server frame, reading as needed; `None` at EOF.
    async fn read_frame(&mut self) -> Result<Option<(bool, u8, Vec<u8>)>, String> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(Some(frame));
            }
            if !self.read_more().await? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err("TCP closed inside a frame".into());
            }
        }
    }

    /// Adds a frame to the message being reassembled; a whole message or a control frame
    /// comes out, `None` while a fragmented message is still open.
    fn assemble(&mut self, fin: bool, opcode: u8, payload: Vec<u8>) -> Result<Option<Got>, String> {
        let whole = match opcode {
            PING => return Ok(Some(Got::Ping(payload))),
            PONG => return Ok(Some(Got::Pong(payload))),
            CLOSE => return Ok(Some(Got::Close(payload))),
            TEXT | BINARY => {
                if self.partial.is_some() {
                    return Err("server started a message inside another".into());
                }
                if !fin {
                    self.partial = Some((opcode, payload));
                    return Ok(None);
                }
                (opcode, payload)
            }
            _ => {
                let Some((_, buf)) = self.partial.as_mut() else {
                    return Err("server continuation without a message".into());
                };
                buf.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                self.partial.take().unwrap()
            }
        };
        Ok(Some(match whole {
            (TEXT, b) => {
                if std::str::from_utf8(&b).is_err() {
                    return Err("server sent invalid UTF-8 in a text message".into());
                }
                Got::Text(b)
            }
            (_, b) => Got::Binary(b),
        }))
    }

    /// The next message or control frame in what was read so far, without reading more;
    /// `None` while more bytes are needed. Pings are returned, not answered.
    pub fn buffered(&mut self) -> Result<Option<Got>, String> {
        while let Some((fin, opcode, payload)) = self.buffered_frame()? {
            if let Some(got) = self.assemble(fin, opcode, payload)? {
                return Ok(Some(got));
            }
        }
        Ok(None)
    }

    /// The next message, pong, close or EOF, within [`WAIT`]. Server pings are answered and
    /// skipped; server fragments are reassembled (Autobahn group 10: any framing of an echo
    /// is fine).
    pub async fn next(&mut self) -> Result<Got, String> {
        timeout(WAIT, self.next_inner())
            .await
            .map_err(|_| format!("nothing within {WAIT:?}"))?
    }

    async fn next_inner(&mut self) -> Result<Got, String> {
        loop {
            let Some((fin, opcode, payload)) = self.read_frame().await? else {
                if self.partial.is_some() {
                    return Err("TCP closed inside a fragmented message".into());
                }
                return Ok(Got::Eof);
            };
            match self.assemble(fin, opcode, payload)? {
                Some(Got::Ping(payload)) => {
                    let _ = self.write(&pong(payload).encode()).await;
                }
                Some(got) => return Ok(got),
                None => {}
            }
        }
    }

    /// A close frame from the server, checked: a code it may send, a UTF-8 reason, and one
    /// of `want` (an empty close stands for 1000).
    pub async fn expect_close(&mut self, want: &[u16]) -> Result<(), String> {
        let got = self.next().await?;
        let Got::Close(payload) = got else {
            return Err(format!("want close {want:?}, got {}", describe(&got)));
        };
        let code = close_code(&payload)?;
        if let Some(code) = code {
            if !sendable(code) {
                return Err(format!(
                    "server sent close code {code}, invalid on the wire"
                ));
            }
        }
        if !want.contains(&code.unwrap_or(1000)) {
            return Err(format!("want close {want:?}, got {code:?}"));
        }
        Ok(())
    }

    /// After the close handshake the server closes TCP, sending nothing more.
    pub async fn expect_eof(&mut self) -> Result<(), String> {
        match self.next().await {
            Ok(Got::Eof) => Ok(()),
            Ok(got) => Err(format!("want TCP closed, got {}", describe(&got))),
            Err(e) => Err(format!("want TCP closed: {e}")),
        }
    }
}
