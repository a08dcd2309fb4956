//! Security controls on real sockets: key rotation, `aud`/`iss`, clock-skew leeway, the
//! `Origin` allowlist, the `rooms` claim on every op, connections per user, and admission
//! control (503 with `Retry-After`). See docs/security.md for the threat table.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::*;

/// Whether a WebSocket with this token is admitted (welcome) or refused (its close code).
async fn admitted(addr: std::net::SocketAddr, token: &str) -> Result<(), u16> {
    let mut c = Client::open(addr, &format!("token={token}"), Fmt::Json).await;
    match c.recv().await {
        In::Msg(v) if v["event"] == "welcome" => Ok(()),
        In::Close(code) => Err(code),
        other => panic!("unexpected {other:?}"),
    }
}

/// The status and head of the response to a raw WebSocket upgrade request.
async fn upgrade_status(addr: std::net::SocketAddr, path: &str, extra: &str) -> (u16, String) {
    let up = raw_ws::upgrade(addr, path, extra).await.unwrap();
    (up.status, up.head)
}

#[tokio::test]
async fn two_keys_during_a_rotation_and_no_third() {
    let server = start_bare(&[
        "--jwt-secret",
        "the-new-key",
        "--jwt-secret-previous",
        "the-old-key",
    ])
    .await;
    let claims = json!({"sub": "rot", "exp": now_secs() + 60});
    assert_eq!(
        admitted(server.addr, &hs256("the-new-key", claims.clone())).await,
        Ok(())
    );
    assert_eq!(
        admitted(server.addr, &hs256("the-old-key", claims.clone())).await,
        Ok(())
    );
    assert_eq!(
        admitted(server.addr, &hs256("a-stolen-key", claims)).await,
        Err(4001)
    );
    // No token and no --allow-anonymous: refused too.
    let mut c = Client::open(server.addr, "", Fmt::Json).await;
    assert_eq!(c.closed().await, 4001);
}

#[tokio::test]
async fn audience_issuer_and_clock_skew() {
    let server = start_bare(&[
        "--jwt-secret",
        "k",
        "--jwt-audience",
        "roomcast",
        "--jwt-issuer",
        "https://auth.example",
        "--jwt-leeway",
        "30s",
    ])
    .await;
    let now = now_secs();
    let good =
        json!({"sub": "u", "aud": "roomcast", "iss": "https://auth.example", "exp": now + 60});
    assert_eq!(
        admitted(server.addr, &hs256("k", good.clone())).await,
        Ok(())
    );
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    assert_eq!(
        admitted(server.addr, &hs256("k", wrong_aud)).await,
        Err(4001)
    );
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.example");
    assert_eq!(
        admitted(server.addr, &hs256("k", wrong_iss)).await,
        Err(4001)
    );
    let mut no_aud = good.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_eq!(admitted(server.addr, &hs256("k", no_aud)).await, Err(4001));
    let mut no_iss = good.clone();
    no_iss.as_object_mut().unwrap().remove("iss");
    assert_eq!(admitted(server.addr, &hs256("k", no_iss)).await, Err(4001));
    // Within the leeway, a just-expired or not-quite-valid token still passes ...
    let mut skewed = good.clone();
    skewed["exp"] = json!(now - 10);
    skewed["nbf"] = json!(now + 10);
    assert_eq!(admitted(server.addr, &hs256("k", skewed)).await, Ok(()));
    // ... beyond it, not.
    let mut expired = good.clone();
    expired["exp"] = json!(now - 90);
    assert_eq!(admitted(server.addr, &hs256("k", expired)).await, Err(4001));
    let mut early = good;
    early["nbf"] = json!(now + 90);
    assert_eq!(admitted(server.addr, &hs256("k", early)).await, Err(4001));
}

#[tokio::test]
async fn origin_allowlist() {
    let server = start(&["--allowed-origins", "https://app.example.com"]).await;
    let (status, _) = upgrade_status(server.addr, "/ws", "Origin: https://evil.example\r\n").await;
    assert_eq!(status, 403);
    let (status, _) = upgrade_status(
        server.addr,
        "/socket.io/?EIO=4&transport=websocket",
        "Origin: https://evil.example\r\n",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) =
        upgrade_status(server.addr, "/ws", "Origin: https://app.example.com\r\n").await;
    assert_eq!(status, 101);
    // Not a browser: no Origin, not affected.
    let (status, _) = upgrade_status(server.addr, "/ws", "").await;
    assert_eq!(status, 101);
    assert_eq!(
        server
            .node
            .metrics
            .connections_rejected
            .with_label_values(&["origin"])
            .get(),
        2
    );
}

#[tokio::test]
async fn the_rooms_claim_holds_for_every_op() {
    let server = start(&[]).await;
    let mut owner = Client::connect(server.addr, "owner", Fmt::Json).await;
    owner
        .ok(json!({"op": "create_room", "room": "private"}))
        .await;
    owner.ok(json!({"op": "join", "room": "private"})).await;
    let t = token("outsider", json!({"rooms": ["public:*"]}));
    let mut c = Client::connect_query(server.addr, &format!("token={t}"), Fmt::Json).await;
    for op in [
        json!({"op": "join", "room": "private"}),
        json!({"op": "publish", "room": "private", "data": "x"}),
        json!({"op": "presence", "room": "private"}),
        json!({"op": "history", "room": "private"}),
    ] {
        assert_eq!(c.err(op.clone()).await["code"], "forbidden", "{op}");
    }
    c.ok(json!({"op": "create_room", "room": "public:1"})).await;
    c.ok(json!({"op": "join", "room": "public:1"})).await;
}

#[tokio::test]
async fn connections_per_user() {
    let server = start(&["--max-conns-per-user", "2"]).await;
    let t = token("greedy", json!({}));
    let _a = Client::connect_query(server.addr, &format!("token={t}"), Fmt::Json).await;
    let b = Client::connect_query(server.addr, &format!("token={t}"), Fmt::Json).await;
    assert_eq!(admitted(server.addr, &t).await, Err(4008));
    // Someone else is not affected, and a freed slot can be used again.
    assert_eq!(
        admitted(server.addr, &token("modest", json!({}))).await,
        Ok(())
    );
    drop(b);
    eventually("the slot is freed", || {
        server.node.registry.user_connection_count("greedy") < 2
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(admitted(server.addr, &t).await, Ok(()));
}

#[tokio::test]
async fn admission_control_answers_503_with_retry_after() {
    let server = start(&["--max-handshake-rate", "3"]).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(upgrade_status(server.addr, "/ws", "").await);
    }
    let refused: Vec<&(u16, String)> = statuses.iter().filter(|(s, _)| *s == 503).collect();
    assert!(!refused.is_empty(), "{statuses:?}");
    assert!(refused[0].1.to_ascii_lowercase().contains("retry-after: 1"));
    let full = start(&["--max-connections", "1"]).await;
    let _held = Client::connect(full.addr, "first", Fmt::Json).await;
    let (status, head) = upgrade_status(full.addr, "/ws", "").await;
    assert_eq!(status, 503, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 5"));
}
