//! JWT: HS256, RS256 and ES256; expiry, bad signatures, and the `rooms` claim.

#![allow(clippy::unwrap_used)]

mod support;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use support::*;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn signed(alg: Algorithm, key: &EncodingKey, claims: serde_json::Value) -> String {
    encode(&Header::new(alg), &claims, key).unwrap()
}

#[tokio::test]
async fn hs256_valid_expired_and_bad_signature() {
    let server = start(&["--jwt-leeway", "0s"]).await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let valid = signed(
        Algorithm::HS256,
        &key,
        json!({"sub": "ann", "exp": now_secs() + 60}),
    );
    let c = Client::connect_query(server.addr, &format!("token={valid}"), Fmt::Json).await;
    assert_eq!(c.welcome["user"], "ann");

    let expired = signed(
        Algorithm::HS256,
        &key,
        json!({"sub": "ann", "exp": now_secs() - 60}),
    );
    assert_eq!(
        Client::open(server.addr, &format!("token={expired}"), Fmt::Json)
            .await
            .closed()
            .await,
        4001
    );

    let forged = signed(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"other"),
        json!({"sub": "ann", "exp": now_secs() + 60}),
    );
    assert_eq!(
        Client::open(server.addr, &format!("token={forged}"), Fmt::Json)
            .await
            .closed()
            .await,
        4001
    );

    let not_yet = signed(
        Algorithm::HS256,
        &key,
        json!({"sub": "ann", "nbf": now_secs() + 600}),
    );
    assert_eq!(
        Client::open(server.addr, &format!("token={not_yet}"), Fmt::Json)
            .await
            .closed()
            .await,
        4001
    );

    // A token without `sub` is the client's address.
    let nosub = signed(Algorithm::HS256, &key, json!({"exp": now_secs() + 60}));
    let c = Client::connect_query(server.addr, &format!("token={nosub}"), Fmt::Json).await;
    assert_eq!(c.welcome["user"], "anon:127.0.0.1");
    // No token, anonymous allowed.
    let c = Client::connect_query(server.addr, "", Fmt::Json).await;
    assert_eq!(c.welcome["user"], "anon:127.0.0.1");
}

#[tokio::test]
async fn bearer_header_carries_the_token() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = start(&[]).await;
    let mut req = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("hdr", json!({})))
            .parse()
            .unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let welcome: serde_json::Value =
        serde_json::from_str(ws.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(welcome["user"], "hdr");
}

#[tokio::test]
async fn rs256_and_es256_public_keys() {
    for (alg, private, public) in [
        (Algorithm::RS256, "rsa_private.pem", "rsa_public.pem"),
        (Algorithm::ES256, "ec_private.pem", "ec_public.pem"),
    ] {
        let public = fixture(public);
        let server = start(&["--jwt-public-key", &public]).await;
        let pem = std::fs::read(fixture(private)).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let t = signed(
            alg,
            &key,
            json!({"sub": format!("{alg:?}-user"), "exp": now_secs() + 60}),
        );
        let c = Client::connect_query(server.addr, &format!("token={t}"), Fmt::Json).await;
        assert_eq!(c.welcome["user"], json!(format!("{alg:?}-user")));
        // The HS256 secret still works alongside (two keys at once).
        Client::connect(server.addr, "hs", Fmt::Json).await;
        // A token signed by another key pair is refused.
        let other = EncodingKey::from_secret(b"x");
        let bad = signed(
            Algorithm::HS256,
            &other,
            json!({"sub": "x", "exp": now_secs() + 60}),
        );
        assert_eq!(
            Client::open(server.addr, &format!("token={bad}"), Fmt::Json)
                .await
                .closed()
                .await,
            4001
        );
    }
}

#[tokio::test]
async fn the_rooms_claim_limits_rooms() {
    let server = start(&[]).await;
    let t = token("limited", json!({"rooms": ["team:*"]}));
    let mut c = Client::connect_query(server.addr, &format!("token={t}"), Fmt::Json).await;
    c.ok(json!({"op": "create_room", "room": "team:red"})).await;
    assert_eq!(
        c.err(json!({"op": "create_room", "room": "other"})).await["code"],
        "forbidden"
    );
    let mut owner = Client::connect(server.addr, "owner", Fmt::Json).await;
    owner
        .ok(json!({"op": "create_room", "room": "elsewhere"}))
        .await;
    assert_eq!(
        c.err(json!({"op": "join", "room": "elsewhere"})).await["code"],
        "forbidden"
    );
    // An auto-named room cannot match a pattern, so it is refused before any work.
    assert_eq!(
        c.err(json!({"op": "create_room"})).await["code"],
        "forbidden"
    );
    assert_eq!(server.node.metrics.room_creations.get(), 2);
}
