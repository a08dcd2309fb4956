//! A small webhook receiver for the tests: an HTTP server on 127.0.0.1:0 that records every
//! POST (body, signature header) and answers what the test says: 200 by default, a queue of
//! statuses to answer first, or "down" (new connections are closed at once, requests get 503).

#![allow(clippy::unwrap_used, dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One POST the app received.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: String,
    pub signature: Option<String>,
    /// The status it was answered with.
    pub status: u16,
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    answers: Mutex<VecDeque<u16>>,
    delays: Mutex<VecDeque<std::time::Duration>>,
    down: AtomicBool,
}

pub struct App {
    pub addr: std::net::SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    pub async fn start() -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if shared.down.load(Ordering::Acquire) {
                    drop(stream);
                    continue;
                }
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        App { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// Answers the next POSTs with these statuses, then 200 again.
    pub fn answer_next(&self, statuses: &[u16]) {
        self.state.answers.lock().extend(statuses);
    }

    /// Answers the next POSTs only after these delays (a slow app).
    pub fn delay_next(&self, delays: &[std::time::Duration]) {
        self.state.delays.lock().extend(delays);
    }

    /// Down: new connections closed at once, requests on kept-alive ones answered 503.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::Release);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().clone()
    }

    /// Every event of every POST answered 2xx, in the order they arrived (duplicates kept).
    pub fn accepted(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .flat_map(|r| serde_json::from_str::<Vec<Value>>(&r.body).unwrap())
            .collect()
    }

    /// [`App::accepted`] with each event id once (its first arrival): what an app that
    /// dedupes by id sees.
    pub fn deduped(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        self.accepted()
            .into_iter()
            .filter(|e| seen.insert(e["id"].as_str().unwrap().to_string()))
            .collect()
    }
}

async fn answer(
    state: Arc<State>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let signature = req
        .headers()
        .get("x-roomcast-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req.into_body().collect().await?.to_bytes();
    let delay = state.delays.lock().pop_front();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let status = if state.down.load(Ordering::Acquire) {
        503
    } else {
        state.answers.lock().pop_front().unwrap_or(200)
    };
    state.received.lock().push(Received {
        body: String::from_utf8_lossy(&body).to_string(),
        signature,
        status,
    });
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    Ok(response)
}

/// The events of `room`, as (type, user) pairs, in order.
pub fn of_room(events: &[Value], room: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["room"] == room)
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["user"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The events of `user` that have no room (online, offline), as types, in order.
pub fn of_user(events: &[Value], user: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["user"] == user && e.get("room").is_none())
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}
