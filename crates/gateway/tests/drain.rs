//! SIGTERM on a real `roomcast` process: unready at once, keep serving for the delay, then
//! `reconnect` + close 1012 spread over the window, and exit before the deadline.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::*;

#[tokio::test]
async fn sigterm_drains_within_the_deadline() {
    let mut node = Gateway::spawn(
        &unique("drain"),
        &[
            "--drain-delay",
            "1s",
            "--drain-window",
            "1s",
            "--drain-deadline",
            "4s",
        ],
    );
    let addr = node.addr;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = Client::connect(
            addr,
            &format!("u{i}"),
            if i % 2 == 0 { Fmt::Json } else { Fmt::MsgPack },
        )
        .await;
        if i == 0 {
            c.ok(json!({"op": "create_room", "room": "drain"})).await;
        } else {
            c.ok(json!({"op": "join", "room": "drain"})).await;
        }
        clients.push(c);
    }
    assert_eq!(http(addr, "GET", "/readyz", None, "").await.0, 200);

    let sigterm = Instant::now();
    assert!(node.sigterm());
    // Readiness flips at once; the node keeps serving during the delay.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(http(addr, "GET", "/readyz", None, "").await.0, 503);
    assert_eq!(http(addr, "GET", "/healthz", None, "").await.0, 200);
    let mut late = Client::connect(addr, "late", Fmt::Json).await;
    late.ok(json!({"op": "join", "room": "drain"})).await;
    clients.push(late);

    // Every client hears `reconnect`, then 1012; the closes are spread over the window.
    // Each client is read by its own task, so one late close does not delay the others.
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let r = c.event("reconnect").await;
                assert_eq!(r["reason"], "drain");
                assert!(r["afterMs"].as_u64().unwrap() <= 1000, "{r}");
                assert_eq!(c.closed().await, 1012);
                sigterm.elapsed()
            })
        })
        .collect();
    let mut closed_at = Vec::new();
    for t in tasks {
        closed_at.push(t.await.unwrap());
    }
    let first = *closed_at.iter().min().unwrap();
    let last = *closed_at.iter().max().unwrap();
    assert!(
        first >= Duration::from_millis(900),
        "closes started before the drain delay: {first:?}"
    );
    assert!(
        last - first >= Duration::from_millis(300),
        "closes not spread: {first:?}..{last:?}"
    );

    // New connections are refused after the delay, and the process exits before the deadline.
    let status = tokio::task::spawn_blocking(move || node.wait())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        sigterm.elapsed() < Duration::from_secs(4),
        "exited after {:?}",
        sigterm.elapsed()
    );
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
