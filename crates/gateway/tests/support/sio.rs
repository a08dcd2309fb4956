//! A raw Socket.IO client over WebSocket (Engine.IO v4 packets by hand), for tests that look
//! at the packets themselves: placeholders, attachments, acknowledgement ids.

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use tokio_tungstenite::tungstenite::Message;

use super::WAIT;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connected to the namespace `/`, its `traffic_status` read.
pub async fn sio(addr: SocketAddr) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/socket.io/?EIO=4&transport=websocket"
    ))
    .await
    .unwrap();
    assert!(sio_text(&mut ws).await.starts_with('0'));
    ws.send(Message::text("40")).await.unwrap();
    assert!(sio_text(&mut ws).await.starts_with("40"));
    assert!(sio_text(&mut ws)
        .await
        .starts_with(r#"42["traffic_status""#));
    ws
}

/// The next text message (pings answered).
pub async fn sio_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                ws.send(Message::text("3")).await.unwrap()
            }
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// The next binary message (an attachment).
pub async fn sio_binary(ws: &mut Ws) -> Vec<u8> {
    match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
        Some(Ok(Message::Binary(b))) => b.to_vec(),
        other => panic!("expected an attachment, got {other:?}"),
    }
}

/// The next text message starting with `prefix`, skipping others and attachments.
pub async fn sio_text_starting(ws: &mut Ws, prefix: &str) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                ws.send(Message::text("3")).await.unwrap()
            }
            Some(Ok(Message::Text(t))) if t.starts_with(prefix) => return t.to_string(),
            Some(Ok(
                Message::Text(_) | Message::Binary(_) | Message::Ping(_) | Message::Pong(_),
            )) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Joins `room` with acknowledgement id `ack`; the acknowledgement's text.
pub async fn sio_join(ws: &mut Ws, room: &str, ack: u64) -> String {
    ws.send(Message::text(format!(
        r#"42{ack}["join",{{"room":"{room}"}}]"#
    )))
    .await
    .unwrap();
    sio_text_starting(ws, &format!("43{ack}")).await
}
