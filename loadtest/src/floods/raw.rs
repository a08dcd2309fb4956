//! A WebSocket client written straight onto a TCP socket, for clients that must be able to
//! stop reading completely: no library task reads behind our back, and the receive buffer can
//! be made small so that the server's side fills quickly.

use anyhow::{anyhow, bail, Result};
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RawWs {
    pub tcp: TcpStream,
    buf: Vec<u8>,
}

/// A frame as read: opcode and payload.
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawWs {
    /// Opens `base/ws?format=json&token=…` with a receive buffer of `rcvbuf` bytes.
    pub async fn open(
        base: &str,
        source: Option<IpAddr>,
        token: &str,
        rcvbuf: u32,
    ) -> Result<RawWs> {
        let mut tcp = super::tcp(base, source, Some(rcvbuf)).await?;
        let host = base.trim_start_matches("ws://").trim_end_matches('/');
        let key = "Zmxvb2RzLXNsb3ctcmVhZA==";
        tcp.write_all(
            format!(
                "GET /ws?format=json&token={token} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
        let mut ws = RawWs {
            tcp,
            buf: Vec::new(),
        };
        let head = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(end) = find(&ws.buf, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&ws.buf[..end]).to_string();
                    ws.buf.drain(..end + 4);
                    return Ok::<_, anyhow::Error>(head);
                }
                ws.fill().await?;
            }
        })
        .await??;
        if !head.starts_with("HTTP/1.1 101") {
            bail!("upgrade refused: {}", head.lines().next().unwrap_or(""));
        }
        Ok(ws)
    }

    async fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.tcp.read(&mut chunk).await?;
        if n == 0 {
            bail!("eof");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The next whole frame (server frames are unmasked).
    pub async fn next_frame(&mut self) -> Result<Frame> {
        loop {
            if let Some((frame, used)) = parse(&self.buf)? {
                self.buf.drain(..used);
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Sends one masked text frame.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        let payload = text.as_bytes();
        let mut out = vec![0x81u8];
        let n = payload.len();
        if n < 126 {
            out.push(0x80 | n as u8);
        } else if n <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        let mask = fastrand::u32(..).to_be_bytes();
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&out).await?;
        Ok(())
    }

    /// Reads text frames until one starts with `prefix`; returns it.
    pub async fn until_text(&mut self, prefix: &str, limit: Duration) -> Result<String> {
        tokio::time::timeout(limit, async {
            loop {
                let f = self.next_frame().await?;
                if f.opcode == 0x8 {
                    bail!("closed: {:?}", close_code(&f.payload));
                }
                if f.opcode == 0x1 {
                    let t = String::from_utf8_lossy(&f.payload).to_string();
                    if t.starts_with(prefix) {
                        return Ok(t);
                    }
                }
            }
        })
        .await
        .map_err(|_| anyhow!("nothing starting with {prefix} within {limit:?}"))?
    }

    /// Reads everything until a Close frame (its code) or the end of the stream (`None`);
    /// counts the data frames on the way.
    pub async fn drain_to_close(&mut self, limit: Duration) -> (Option<u16>, u64) {
        let mut frames = 0;
        let res = tokio::time::timeout(limit, async {
            loop {
                match self.next_frame().await {
                    Ok(f) if f.opcode == 0x8 => return close_code(&f.payload),
                    Ok(_) => frames += 1,
                    Err(_) => return None,
                }
            }
        })
        .await;
        (res.unwrap_or(None), frames)
    }
}

fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A whole frame at the start of `b`, and how many bytes it took.
fn parse(b: &[u8]) -> Result<Option<(Frame, usize)>> {
    if b.len() < 2 {
        return Ok(None);
    }
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, mut at) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([b[2], b[3]]) as usize, 4)
        }
        127 => {
            if b.len() < 10 {
                return Ok(None);
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(n) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if masked {
        bail!("a masked server frame");
    }
    if b.len() < at + len {
        return Ok(None);
    }
    let payload = b[at..at + len].to_vec();
    at += len;
    Ok(Some((Frame { opcode, payload }, at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_whole_frames_only() {
        let mut b = vec![0x81, 0x03, b'a', b'b'];
        assert!(parse(&b).ok().flatten().is_none(), "incomplete");
        b.push(b'c');
        b.extend_from_slice(&[0x88, 0x02, 0x0f, 0xa9]);
        let Some((f, used)) = parse(&b).ok().flatten() else {
            panic!("a whole text frame")
        };
        assert_eq!((f.opcode, f.payload.as_slice(), used), (1, &b"abc"[..], 5));
        let Some((close, _)) = parse(&b[used..]).ok().flatten() else {
            panic!("a close frame")
        };
        assert_eq!(close_code(&close.payload), Some(4009));
        let mut long = vec![0x82, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(7u8, 256));
        assert_eq!(
            parse(&long)
                .ok()
                .flatten()
                .map(|(f, n)| (f.payload.len(), n)),
            Some((256, 260))
        );
        assert!(
            parse(&[0x81, 0x81, 0, 0, 0, 0, 0]).is_err(),
            "masked server frame"
        );
    }
}
