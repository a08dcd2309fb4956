//! Test support: start a real node on 127.0.0.1:0 and speak the real protocol to it.
//! [`raw_ws`] is a WebSocket client by hand, for frames no client library would send.

#![allow(clippy::unwrap_used, dead_code)]

pub mod archival;
pub mod raw_ws;
pub mod sio;

use futures_util::{SinkExt, StreamExt};
use gateway::{Config, Running};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret";
pub const API_KEY: &str = "test-api-key";
pub const WAIT: Duration = Duration::from_secs(5);

/// A config with exactly `args`, listening on 127.0.0.1:0: no test defaults.
pub fn bare_config(args: &[&str]) -> Config {
    let mut all = vec!["roomcast", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    <Config as clap::Parser>::parse_from(all)
}

/// A config with test defaults plus `args`.
pub fn config(args: &[&str]) -> Config {
    let mut all = vec![
        "--allow-anonymous",
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
        "--traffic-interval",
        "200ms",
        "--drain-delay",
        "0s",
        "--drain-window",
        "200ms",
        "--drain-deadline",
        "3s",
    ];
    all.extend_from_slice(args);
    bare_config(&all)
}

/// A node with test defaults plus `args`.
pub async fn start(args: &[&str]) -> Running {
    start_config(config(args)).await
}

/// A node with exactly these flags (no test defaults, for auth in particular).
pub async fn start_bare(args: &[&str]) -> Running {
    start_config(bare_config(args)).await
}

pub async fn start_config(config: Config) -> Running {
    gateway::start(config).await.unwrap()
}

/// An HS256 token for `sub`, valid for an hour, with extra claims merged in.
pub fn token(sub: &str, extra: Value) -> String {
    let mut claims = json!({"sub": sub, "exp": now_secs() + 3600});
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    hs256(SECRET, claims)
}

/// `claims` signed with HS256 and `secret`.
pub fn hs256(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    Json,
    MsgPack,
}

impl Fmt {
    pub fn query(self) -> &'static str {
        match self {
            Fmt::Json => "format=json",
            Fmt::MsgPack => "format=msgpack",
        }
    }
}

/// What arrives on a client socket.
#[derive(Debug, Clone, PartialEq)]
pub enum In {
    Msg(Value),
    Close(u16),
    Gone,
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub fmt: Fmt,
    next_id: u64,
    /// Events seen while waiting for something else, in order.
    pub backlog: VecDeque<Value>,
    pub welcome: Value,
}

impl Client {
    /// Connects as `user` (a token is minted) and reads the welcome and traffic_status.
    pub async fn connect(addr: std::net::SocketAddr, user: &str, fmt: Fmt) -> Client {
        let query = format!("{}&token={}", fmt.query(), token(user, json!({})));
        Client::connect_query(addr, &query, fmt).await
    }

    pub async fn connect_query(addr: std::net::SocketAddr, query: &str, fmt: Fmt) -> Client {
        let mut c = Client::open(addr, query, fmt).await;
        let welcome = c.recv_msg().await;
        assert_eq!(welcome["event"], "welcome", "first frame: {welcome}");
        let status = c.recv_msg().await;
        assert_eq!(status["event"], "traffic_status", "second frame: {status}");
        c.welcome = welcome;
        c
    }

    /// Opens the socket without reading anything.
    pub async fn open(addr: std::net::SocketAddr, query: &str, fmt: Fmt) -> Client {
        let url = format!("ws://{addr}/ws?{query}");
        let (ws, _) = tokio_tungstenite::connect_async(url.into_client_request().unwrap())
            .await
            .unwrap();
        Client {
            ws,
            fmt,
            next_id: 0,
            backlog: VecDeque::new(),
            welcome: Value::Null,
        }
    }

    pub fn conn_id(&self) -> String {
        self.welcome["connId"].as_str().unwrap().to_string()
    }

    pub fn encode(&self, v: &Value) -> Message {
        match self.fmt {
            Fmt::Json => Message::text(v.to_string()),
            Fmt::MsgPack => Message::binary(rmp_serde::to_vec_named(v).unwrap()),
        }
    }

    pub async fn send(&mut self, v: Value) {
        let m = self.encode(&v);
        self.ws.send(m).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// Sends a raw frame (no validation by the client library).
    pub async fn send_frame(&mut self, opcode: OpCode, fin: bool, payload: Vec<u8>) {
        self.ws
            .send(Message::Frame(Frame::message(payload, opcode, fin)))
            .await
            .unwrap();
    }

    pub async fn send_text_bytes(&mut self, payload: Vec<u8>) {
        self.send_frame(OpCode::Data(Data::Text), true, payload)
            .await;
    }

    /// Next message or close, within [`WAIT`].
    pub async fn recv(&mut self) -> In {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next()).await;
            let Ok(next) = next else {
                panic!("nothing received within {WAIT:?}");
            };
            match next {
                None | Some(Err(_)) => return In::Gone,
                Some(Ok(Message::Text(t))) => return In::Msg(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Binary(b))) => return In::Msg(rmp_serde::from_slice(&b).unwrap()),
                Some(Ok(Message::Close(frame))) => {
                    return In::Close(frame.map_or(1005, |f| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn recv_msg(&mut self) -> Value {
        match self.recv().await {
            In::Msg(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Sends a request with the next id and returns its reply; events that arrive first go
    /// to the backlog.
    pub async fn request(&mut self, mut op: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        op["id"] = json!(id);
        self.send(op).await;
        self.reply_to(id).await
    }

    pub async fn reply_to(&mut self, id: u64) -> Value {
        loop {
            let m = self.recv_msg().await;
            if m.get("event").is_some()
                || m["id"] != json!(id) && m.get("id").is_some() && m["id"].as_u64() >= Some(1000)
            {
                // Events, and replies to requests sent with explicit ids (>= 1000) by `send`.
                self.backlog.push_back(m);
            } else if m["id"] == json!(id) {
                return m;
            } else {
                panic!("unexpected reply {m} while waiting for id {id}");
            }
        }
    }

    /// `ok` body of a request, panicking on an error reply.
    pub async fn ok(&mut self, op: Value) -> Value {
        let reply = self.request(op.clone()).await;
        assert!(reply.get("ok").is_some(), "{op} failed: {reply}");
        reply["ok"].clone()
    }

    /// The error code of a request that must fail.
    pub async fn err(&mut self, op: Value) -> Value {
        let reply = self.request(op.clone()).await;
        assert!(reply.get("error").is_some(), "{op} should fail: {reply}");
        reply["error"].clone()
    }

    /// The next event called `name`, skipping (and keeping) others.
    pub async fn event(&mut self, name: &str) -> Value {
        if let Some(pos) = self.backlog.iter().position(|e| e["event"] == name) {
            return self.backlog.remove(pos).unwrap();
        }
        loop {
            let m = self.recv_msg().await;
            if m["event"] == name {
                return m;
            }
            self.backlog.push_back(m);
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn closed(&mut self) -> u16 {
        loop {
            match self.recv().await {
                In::Msg(m) => self.backlog.push_back(m),
                In::Close(code) => return code,
                In::Gone => panic!("connection dropped without a close frame"),
            }
        }
    }

    /// Asserts nothing arrives for a short while.
    pub async fn quiet(&mut self, ms: u64) {
        if let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(ms), self.ws.next()).await
        {
            if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
                panic!("expected silence, got {m:?}");
            }
        }
    }
}

/// A raw HTTP/1.1 request on a fresh connection; returns (status, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, String) {
    http_with(addr, method, path, key, &[], body).await
}

/// [`http`] with extra headers.
pub async fn http_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    for (name, value) in headers {
        auth.push_str(&format!("{name}: {value}\r\n"));
    }
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub async fn http_json(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let (status, body) = http(addr, method, path, key, body).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Waits until `f` holds, polling.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- Real processes: gateways, nginx, Redis Cluster -------------------------------------

/// Seed URLs of the cluster that `make test` started, from the named variable.
pub fn redis_urls(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run `make test`, which starts the Redis Clusters the tests use")
    })
}

/// The port of the first seed of the cluster that `make test` started for the tests.
pub fn first_redis_port() -> u16 {
    port(
        redis_urls("ROOMCAST_TEST_REDIS_CLUSTER")
            .split(',')
            .next()
            .unwrap(),
    )
}

/// Runs redis-cli against one port and returns its output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A `roomcast` process.
pub struct Gateway {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub id: String,
}

impl Gateway {
    /// Starts the binary with `args` and waits until it listens. Its log goes to
    /// `$TMPDIR/roomcast-test-<id>.log`.
    pub fn spawn(id: &str, args: &[&str]) -> Gateway {
        use std::io::{BufRead, BufReader, Write};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--jwt-secret",
                SECRET,
                "--allow-anonymous",
            ])
            .args(["--api-key", API_KEY, "--node-id", id])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let log_path = std::env::temp_dir().join(format!("roomcast-test-{id}.log"));
        let mut log = std::fs::File::create(&log_path).unwrap();
        let addr = loop {
            let line = lines
                .next()
                .expect("roomcast exited before listening")
                .unwrap();
            let _ = writeln!(log, "{line}");
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["fields"]["message"] == "roomcast listening" {
                break v["fields"]["addr"].as_str().unwrap().parse().unwrap();
            }
        };
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
            }
        });
        Gateway {
            child,
            addr,
            id: id.to_string(),
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (a drain); whether `kill` succeeded.
    pub fn sigterm(&self) -> bool {
        sigterm(self.child.id())
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// Waits for `/readyz` to say ready.
    pub async fn ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while http(self.addr, "GET", "/readyz", None, "").await.0 != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never became ready",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `N` gateways on the Redis Cluster named by `var` (see [`redis_urls`]), with
/// `--traffic-interval 250ms` and `args`, all ready. Their ids are `<prefix><random>-<i>`.
pub async fn cluster_gateways<const N: usize>(
    var: &str,
    prefix: &str,
    args: &[&str],
) -> [Gateway; N] {
    let urls = redis_urls(var);
    let tag = fastrand::u32(..);
    let mut all = vec![
        "--redis-cluster",
        urls.as_str(),
        "--traffic-interval",
        "250ms",
    ];
    all.extend_from_slice(args);
    let nodes: [Gateway; N] =
        std::array::from_fn(|i| Gateway::spawn(&format!("{prefix}{tag:x}-{i}"), &all));
    for n in &nodes {
        n.ready().await;
    }
    nodes
}

/// `kill -TERM pid`; whether it succeeded.
fn sigterm(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// nginx in front of some gateways, from deploy/nginx/roomcast.conf.template.
pub struct Nginx {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
    dir: std::path::PathBuf,
}

impl Nginx {
    pub fn start(upstreams: &[std::net::SocketAddr]) -> Nginx {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let dir = std::env::temp_dir().join(format!("roomcast-nginx-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let template = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/nginx/roomcast.conf.template"
        ))
        .unwrap();
        let servers: String = upstreams
            .iter()
            .map(|u| format!("server {u} max_fails=1 fail_timeout=5s;\n        "))
            .collect();
        let conf = template
            .replace("@PREFIX@", dir.to_str().unwrap())
            .replace("@LISTEN@", &addr.to_string())
            .replace("@UPSTREAMS@", &servers);
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let nginx = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nginx");
        let child = std::process::Command::new(nginx)
            .args([
                "-p",
                dir.to_str().unwrap(),
                "-c",
                conf_path.to_str().unwrap(),
                "-g",
                "daemon off;",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let n = Nginx { child, addr, dir };
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return n;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nginx did not start");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master must take its workers down with it.
        sigterm(self.child.id());
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A room name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

// --- The failover cluster: ports and health -----------------------------------------

/// The port of `host:port`, of a URL, or of a `cluster nodes` address (`host:port@bus`).
pub fn port(addr: &str) -> u16 {
    addr.split('@')
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The first port of the failover cluster (`ROOMCAST_TEST_FAILOVER_CLUSTER`).
pub fn base_port() -> u16 {
    port(
        redis_urls("ROOMCAST_TEST_FAILOVER_CLUSTER")
            .split(',')
            .next()
            .unwrap(),
    )
}

/// Waits until every node agrees that the cluster is healthy and fully replicated again.
pub async fn cluster_settled() {
    cluster_settled_at(base_port()).await
}

/// [`cluster_settled`] for the cluster whose first node listens on `base`.
pub async fn cluster_settled_at(base: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ok = (base..base + 6)
            .all(|p| redis_cli(p, &["cluster", "info"]).contains("cluster_state:ok"));
        let nodes = redis_cli(base, &["cluster", "nodes"]);
        let replicas = nodes
            .lines()
            .filter(|l| l.contains("slave") && !l.contains("fail"))
            .count();
        if ok && replicas == 3 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster did not settle:\n{nodes}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Restarts a killed node of the failover cluster with its old config
/// (`deploy/local/redis-cluster.sh revive`); it rejoins as a replica.
pub fn revive(port: u16) {
    let dir = std::env::var("ROOMCAST_TEST_FAILOVER_DIR").unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/local/redis-cluster.sh"
    );
    let status = std::process::Command::new("bash")
        .args([
            script,
            "revive",
            &port.to_string(),
            &base_port().to_string(),
            &dir,
        ])
        .status()
        .unwrap();
    assert!(status.success());
}
