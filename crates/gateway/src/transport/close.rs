//! The close handshake (RFC 6455 section 7): how a peer's Close is validated and echoed, and
//! how a connection that is refused after its upgrade is closed cleanly. (The codes a broken
//! frame earns are the decoder's, [`super::decoder`].)

use fastwebsockets::{Frame, OpCode, WebSocket};
use protocol::CloseCode;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;

/// How long to wait for the client's Close after ours, for a clean close handshake.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Validates a received Close payload and picks the code to echo (section 5.5.1: a status
/// code the peer may send, and a UTF-8 reason).
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

/// Closes a connection that was upgraded but not admitted (a refused token, a per-address
/// or per-user limit), with a full close handshake: browsers cannot read the HTTP status of a
/// failed upgrade, but they do see a close code.
pub async fn reject<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocket<S>,
    code: u16,
    reason: &str,
) {
    if ws
        .write_frame(Frame::close(code, reason.as_bytes()))
        .await
        .is_err()
    {
        return;
    }
    let _ = ws.flush().await;
    let _ = timeout(CLOSE_GRACE, async {
        while let Ok(frame) = ws.read_frame().await {
            if frame.opcode == OpCode::Close {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_frames() {
        assert_eq!(echo_close(&[]), Ok(1000));
        assert_eq!(echo_close(&[3, 0xe8]), Ok(1000));
        assert!(echo_close(&[1]).is_err());
        assert!(echo_close(&[0x03, 0xed]).is_err(), "1005 may not be sent");
        assert!(echo_close(&[0x03, 0xe8, 0xff]).is_err());
    }
}
