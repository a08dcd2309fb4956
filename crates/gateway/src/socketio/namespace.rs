//! The Socket.IO layer of one connection: the namespaces it joined, and what their packets do.
//!
//! Each joined namespace is a socket with its own id and, in roomcast mode, its own
//! [`Session`]: `/` shares room names with native clients; every other namespace allowed by
//! `--socketio-namespaces` is isolated by an internal room prefix (`admin/` for `/admin`)
//! that no client-chosen name can produce, since `/` is outside the room-name grammar. Its
//! events reach the client through a small forwarder that strips the prefix again and adds
//! the namespace to the packet.

use super::recovery;
use crate::admission::{self, gate::UserSlot, Refusal};
use crate::auth::Identity;
use crate::backend_hooks::connect::{Asking, Handshake, Refused};
use crate::node::Node;
use crate::session::{self, Session};
use crate::transport::Live;
use bytes::Bytes;
use fan_out::{LocalConn, OutFrame, Outbound};
use protocol::codec::{encode, request_from_value};
use protocol::frame::{ErrorBody, Event, OkBody, Op};
use protocol::socketio::{self as sio, Kind, Packet};
use protocol::{CloseCode, ErrorCode, Format};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::Arc;

/// The events that map onto protocol ops, each with one object argument: every op but `ping`
/// (Engine.IO has its own heartbeat).
fn is_op_event(name: &str) -> bool {
    name != "ping" && Op::NAMES.contains(&name)
}

/// What a packet asks of the connection.
pub enum Next {
    Continue,
    Close(u16, &'static str),
    /// A publish whose checks passed: the connection polls it once (which sends its store
    /// command) before it reads on, then lets it finish alongside the next packets. It sends
    /// its own ack.
    Publish(Pipelined),
}

/// A publish in flight, answering its ack when done.
pub type Pipelined = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub fn push(outbound: &Outbound, text: String) {
    let _ = outbound.push(Bytes::from(text));
}

/// Queues an ACK. Byte strings in it (history, a join's recovered messages) go out as
/// attachments: a BINARY_ACK, queued as one bundle (see `protocol::socketio::BUNDLE`).
fn push_ack(outbound: &Outbound, namespace: &str, id: u64, mut args: Value) {
    if let Some(ok) = args.get_mut(0).and_then(|body| body.get_mut("ok")) {
        fit_attachments(ok);
    }
    let attachments = sio::extract_binary(&mut args);
    if attachments.is_empty() {
        push(outbound, sio::ack(namespace, id, &args));
    } else {
        let text = sio::binary(true, namespace, Some(id), attachments.len(), &args);
        let _ = outbound.push(Bytes::from(sio::bundle(&text, &attachments)));
    }
}

/// Cuts a reply's message list so that its byte strings fit in one packet's attachments
/// (`sio::MAX_ATTACHMENTS`): the stock client's decoder refuses a packet with more, and closes
/// the whole connection. Each message holds at most that many (`MAX_BYTE_STRINGS` at
/// publish), so at least one always fits.
///
/// - `history` (`messages`, newest last) keeps its newest messages; the client pages on with
///   `before` set to the first offset it got.
/// - a join's `missed` (oldest first) keeps its oldest; the client reads the rest with
///   `history`.
///
/// Either way the reply says `partial: true`.
fn fit_attachments(ok: &mut Value) {
    let Value::Object(map) = ok else {
        return;
    };
    for (key, newest_last) in [("messages", true), ("missed", false)] {
        let Some(Value::Array(items)) = map.get_mut(key) else {
            continue;
        };
        let counts: Vec<usize> = items.iter().map(count_binary).collect();
        if counts.iter().sum::<usize>() <= sio::MAX_ATTACHMENTS {
            continue;
        }
        let mut total = 0;
        let mut fits = |c: &usize| {
            total += c;
            total <= sio::MAX_ATTACHMENTS
        };
        if newest_last {
            let keep = counts.iter().rev().take_while(|c| fits(c)).count();
            items.drain(..items.len() - keep);
        } else {
            let keep = counts.iter().take_while(|c| fits(c)).count();
            items.truncate(keep);
        }
        map.insert("partial".into(), Value::Bool(true));
    }
}

/// The byte strings (`$bin` wrappers) in a value.
fn count_binary(value: &Value) -> usize {
    if protocol::data::is_binary_wrapper(value) {
        return 1;
    }
    match value {
        Value::Object(map) => map.values().map(count_binary).sum(),
        Value::Array(items) => items.iter().map(count_binary).sum(),
        _ => 0,
    }
}

pub fn random_id() -> String {
    (0..20).map(|_| fastrand::alphanumeric()).collect()
}

/// One joined namespace.
struct Socket {
    /// The socket id the client was given (kept across a recovery).
    sid: String,
    /// Roomcast mode: the ops' view of this socket. `None` in conformance mode.
    session: Option<Arc<Session>>,
    /// Its place under `--max-conns-per-user`: on this node, and in the cluster.
    _user_slot: Option<UserSlot>,
    _user_entry: Option<crate::users::UserEntry>,
    /// The recovery id handed out in the CONNECT reply (roomcast mode, recovery on).
    pid: Option<String>,
    /// Forwards a non-`/` namespace's events into the connection (see module docs).
    forwarder: Option<tokio::task::JoinHandle<()>>,
}

pub struct Sockets<'a> {
    live: Live,
    pub node: &'a Arc<Node>,
    pub ip: IpAddr,
    pub outbound: Arc<Outbound>,
    /// The Engine.IO handshake, for the connect proxy (when there is one).
    pub handshake: Option<Arc<Handshake>>,
    joined: Joined,
    /// Whether any namespace was ever joined (the connect timeout stops then).
    pub ever_joined: bool,
}

/// The namespaces a connection joined, by name. A list sized to what it holds, not a map: a
/// connection nearly always joins one namespace, and a `HashMap`'s first table (room for 3)
/// was about 0.9 KiB of every idle Socket.IO connection (heaptrack).
#[derive(Default)]
struct Joined(Vec<(String, Socket)>);

impl Joined {
    fn contains_key(&self, ns: &str) -> bool {
        self.0.iter().any(|(n, _)| n == ns)
    }

    fn get(&self, ns: &str) -> Option<&Socket> {
        self.0.iter().find(|(n, _)| n == ns).map(|(_, s)| s)
    }

    fn remove(&mut self, ns: &str) -> Option<Socket> {
        let at = self.0.iter().position(|(n, _)| n == ns)?;
        Some(self.0.swap_remove(at).1)
    }

    fn insert(&mut self, ns: String, socket: Socket) {
        match self.0.iter_mut().find(|(n, _)| *n == ns) {
            Some((_, known)) => *known = socket,
            None => {
                self.0.reserve_exact(1);
                self.0.push((ns, socket));
            }
        }
    }
}

/// The internal room prefix of a namespace: empty for `/`, else the name without its leading
/// slash, plus `/`.
pub fn room_prefix(namespace: &str) -> String {
    match namespace {
        "/" => String::new(),
        ns => format!("{}/", ns.trim_start_matches('/')),
    }
}

/// Takes the namespace prefix off the room names of an event object or an `ok` reply body:
/// its `room`, and the `room` of each message in its `missed` or `messages`. Client `data`
/// is left alone, whatever keys it holds.
pub fn strip_rooms(value: &mut Value, prefix: &str) {
    let Value::Object(map) = value else {
        return;
    };
    if let Some(Value::String(room)) = map.get_mut("room") {
        if let Some(rest) = room.strip_prefix(prefix) {
            *room = rest.to_string();
        }
    }
    for key in ["missed", "messages"] {
        if let Some(Value::Array(items)) = map.get_mut(key) {
            items.iter_mut().for_each(|m| strip_rooms(m, prefix));
        }
    }
}

/// Puts a namespace's prefix on the room an op names. A server-chosen name gets it from
/// `create_room` itself (`Session::room_prefix`).
fn prefix_op(op: &mut Op, prefix: &str) {
    let room = match op {
        Op::CreateRoom {
            room: Some(room), ..
        }
        | Op::Join { room, .. }
        | Op::Leave { room }
        | Op::Publish { room, .. }
        | Op::Presence { room }
        | Op::History { room, .. } => room,
        Op::CreateRoom { room: None, .. } | Op::Ping | Op::Refresh { .. } => return,
    };
    room.insert_str(0, prefix);
}

impl<'a> Sockets<'a> {
    pub fn new(
        node: &'a Arc<Node>,
        ip: IpAddr,
        outbound: Arc<Outbound>,
        live: Live,
    ) -> Sockets<'a> {
        Sockets {
            live,
            node,
            ip,
            outbound,
            handshake: None,
            joined: Joined::default(),
            ever_joined: false,
        }
    }

    fn allowed(&self, namespace: &str) -> bool {
        namespace == "/"
            || self
                .node
                .config
                .socketio_namespaces
                .iter()
                .any(|n| n == namespace)
    }

    /// Handles one whole packet, with its binary attachments.
    pub async fn packet(&mut self, p: Packet, attachments: Vec<Vec<u8>>) -> Next {
        if p.kind == Kind::Connect {
            if !self.allowed(&p.namespace) {
                push(
                    &self.outbound,
                    sio::connect_error(&p.namespace, "Invalid namespace", None),
                );
                return Next::Continue;
            }
            if self.joined.contains_key(&p.namespace) {
                return Next::Close(CloseCode::PROTOCOL_ERROR, "namespace already joined");
            }
            return self.connect(&p).await;
        }
        // Anything else in a namespace this connection has not joined is a protocol error.
        if !self.joined.contains_key(&p.namespace) {
            return Next::Close(CloseCode::PROTOCOL_ERROR, "namespace not joined");
        }
        match p.kind {
            Kind::Disconnect => {
                // A deliberate leave: nothing is kept for recovery.
                if let Some(socket) = self.joined.remove(&p.namespace) {
                    self.end(&p.namespace, socket, false).await;
                }
                Next::Continue
            }
            Kind::Event | Kind::BinaryEvent => {
                if self.node.config.socketio_conformance {
                    self.conformance_event(&p, attachments)
                } else {
                    self.event(p, attachments).await
                }
            }
            Kind::Ack | Kind::BinaryAck => Next::Continue,
            Kind::Connect | Kind::ConnectError => {
                Next::Close(CloseCode::PROTOCOL_ERROR, "CONNECT_ERROR from a client")
            }
        }
    }

    async fn connect(&mut self, p: &Packet) -> Next {
        let ns = p.namespace.clone();
        if self.node.config.socketio_conformance {
            self.connect_conformance(p);
            return Next::Continue;
        }
        let auth = p.payload.as_ref();
        let (identity, user_slot) = match self.admit(&ns, auth).await {
            Ok(admitted) => admitted,
            Err((refusal, data)) => {
                self.node.metrics.rejected(refusal.rejection);
                push(
                    &self.outbound,
                    sio::connect_error(&ns, &refusal.reason, Some(data)),
                );
                return Next::Continue;
            }
        };
        // The cluster-wide count, after the node's own (in `admit`).
        let conn_id: Arc<str> = Arc::from(self.node.next_conn_id());
        let user_entry =
            match crate::users::register(self.node, &identity.user, &conn_id, "socketio").await {
                Ok(entry) => entry,
                Err(refusal) => {
                    self.node.metrics.rejected(refusal.rejection);
                    let data = Some(json!({ "code": "connection_limit" }));
                    push(
                        &self.outbound,
                        sio::connect_error(&ns, &refusal.reason, data),
                    );
                    return Next::Continue;
                }
            };
        let (session, forwarder) = self.open_session(&ns, identity, conn_id);
        let recovery_on = !self.node.config.socketio_recovery_window.is_zero();
        let mut sid = session.conn_id.to_string();
        let mut pid = recovery_on.then(random_id);
        if recovery_on {
            if let Some(restored) = recovery::restore(self.node, &session, &ns, auth).await {
                sid = restored.sid;
                pid = Some(restored.pid);
            }
        }
        let reply = match &pid {
            Some(pid) => sio::connect_ok_with_pid(&ns, &sid, pid),
            None => sio::connect_ok(&ns, &sid),
        };
        push(&self.outbound, reply);
        if let Ok(bytes) = encode(
            &Event::TrafficStatus(&self.node.traffic.current()),
            Format::SocketIo,
        ) {
            let _ = session.outbound.push(bytes);
        }
        self.joined.insert(
            ns,
            Socket {
                sid,
                session: Some(Arc::new(session)),
                _user_slot: Some(user_slot),
                _user_entry: Some(user_entry),
                pid,
                forwarder,
            },
        );
        self.ever_joined = true;
        Next::Continue
    }

    /// The test-suite server: every socket is welcome and hears its own auth back.
    fn connect_conformance(&mut self, p: &Packet) {
        let ns = p.namespace.clone();
        let sid = random_id();
        push(&self.outbound, sio::connect_ok(&ns, &sid));
        let auth = p.payload.clone().unwrap_or_else(|| json!({}));
        push(&self.outbound, sio::event(&ns, "auth", &auth));
        self.joined.insert(
            ns,
            Socket {
                sid,
                session: None,
                _user_slot: None,
                _user_entry: None,
                pid: None,
                forwarder: None,
            },
        );
        self.ever_joined = true;
    }

    /// The CONNECT packet's token, the connect proxy, and the per-user limit. A refusal
    /// comes with the data (`{code, message?}`) that the client's `connect_error` carries.
    ///
    /// The connect proxy is asked here, at each namespace CONNECT, rather than at the
    /// Engine.IO handshake: the token and the `auth` payload only exist here, identities are
    /// per namespace, and this refusal is what the client library surfaces (`connect_error`,
    /// where `io.use()` middleware refusals arrive too).
    async fn admit(
        &self,
        ns: &str,
        auth: Option<&Value>,
    ) -> Result<(Identity, UserSlot), (Refusal, Value)> {
        let token = auth.and_then(|a| a.get("token")).and_then(Value::as_str);
        let (mut identity, claims) = self
            .node
            .auth
            .authenticate_claims(token, self.ip)
            .map_err(|e| (Refusal::auth(&e), json!({ "code": "unauthorized" })))?;
        if let (Some(proxy), Some(handshake)) = (&self.node.hooks.connect, &self.handshake) {
            let asking = Asking {
                protocol: "socketio",
                namespace: Some(ns),
                ip: self.ip,
                claims: claims.as_ref(),
                handshake,
                auth,
            };
            match proxy.check(self.node, &mut identity, asking).await {
                Ok(info) => identity.info = info.map(Arc::new),
                Err(refused) => {
                    let data = match &refused {
                        Refused::App(e) => json!({ "code": e.code, "message": e.message }),
                        Refused::Unavailable => json!({ "code": "unavailable" }),
                    };
                    let mut refusal = Refusal::proxy(&refused);
                    // The client's `connect_error` shows the app's own message, as an
                    // `io.use()` middleware's `next(new Error(message))` would.
                    if let Refused::App(e) = &refused {
                        if !e.message.is_empty() {
                            refusal.reason = e.message.clone();
                        }
                    }
                    return Err((refusal, data));
                }
            }
        }
        let slot = admission::admit_user(self.node, &identity)
            .map_err(|refusal| (refusal, json!({ "code": "connection_limit" })))?;
        Ok((identity, slot))
    }

    /// Opens the namespace's session: its identity seen through the namespace's room prefix,
    /// its outbound (the connection's own for `/`, else one forwarded into it), the recovery
    /// journal, and its place in the registry.
    fn open_session(
        &self,
        ns: &str,
        identity: Identity,
        conn_id: Arc<str>,
    ) -> (Session, Option<tokio::task::JoinHandle<()>>) {
        let prefix = room_prefix(ns);
        let identity = Identity {
            user: identity.user,
            // The `rooms` claim speaks of the namespace's own names.
            rooms: identity
                .rooms
                .map(|patterns| patterns.iter().map(|p| format!("{prefix}{p}")).collect()),
            expires_at_ms: identity.expires_at_ms,
            info: identity.info,
            token_user: identity.token_user,
        };
        let (outbound, forwarder) = if ns == "/" {
            (self.outbound.clone(), None)
        } else {
            let (out, rx) = Outbound::new(Format::SocketIo, self.node.config.outbound_queue_bytes);
            let out = Arc::new(out);
            let task = tokio::spawn(forward(
                rx,
                out.clone(),
                self.outbound.clone(),
                ns.to_string(),
                prefix.clone(),
            ));
            (out, Some(task))
        };
        if !self.node.config.socketio_recovery_window.is_zero() {
            outbound.start_journal(recovery::JOURNAL_LEN);
        }
        let user: Arc<str> = Arc::from(identity.user.as_str());
        self.live.add(conn_id.clone(), user.clone());
        // The connection's own queue: the expiry notice is a DISCONNECT of this namespace.
        self.node.expiries.track(
            &conn_id,
            identity.expires_at_ms,
            &self.outbound,
            crate::expiry::Notice::SocketIo {
                namespace: Arc::from(ns),
            },
        );
        self.node.registry.register(LocalConn {
            conn_id: conn_id.clone(),
            user,
            outbound: outbound.clone(),
            namespace: Some(Arc::from(ns)),
        });
        let session = Session {
            conn_id,
            identity,
            outbound,
            room_prefix: prefix,
            publish_seq: Default::default(),
            publish_turns: Default::default(),
        };
        (session, forwarder)
    }

    /// The test-suite handlers: `message` → `message-back`, `message-with-ack` → ack.
    fn conformance_event(&self, p: &Packet, attachments: Vec<Vec<u8>>) -> Next {
        let Some((name, args)) = p.event() else {
            return Next::Close(CloseCode::PROTOCOL_ERROR, "bad event");
        };
        let ns = &p.namespace;
        let binary = !attachments.is_empty();
        let text = match (name, p.ack) {
            ("message", _) => {
                let mut out = vec![json!("message-back")];
                out.extend_from_slice(args);
                let payload = Value::Array(out);
                if binary {
                    sio::binary(false, ns, None, attachments.len(), &payload)
                } else {
                    format!("{}{}", event_prefix(ns), payload)
                }
            }
            ("message-with-ack", Some(id)) => {
                let payload = Value::Array(args.to_vec());
                if binary {
                    sio::binary(true, ns, Some(id), attachments.len(), &payload)
                } else {
                    sio::ack(ns, id, &payload)
                }
            }
            _ => return Next::Continue,
        };
        push(&self.outbound, text);
        for a in attachments {
            let _ = self.outbound.push_message(false, Bytes::from(a));
        }
        Next::Continue
    }

    async fn event(&mut self, mut p: Packet, attachments: Vec<Vec<u8>>) -> Next {
        if let Some(payload) = p.payload.as_mut() {
            if sio::fill_placeholders(payload, &attachments).is_err() {
                return Next::Close(CloseCode::PROTOCOL_ERROR, "bad attachment placeholder");
            }
        }
        let ns = p.namespace.clone();
        let Some(session) = self.joined.get(&ns).and_then(|s| s.session.as_ref()) else {
            return Next::Close(CloseCode::PROTOCOL_ERROR, "namespace not joined");
        };
        let Some((name, args)) = p.event() else {
            return Next::Close(CloseCode::PROTOCOL_ERROR, "bad event");
        };
        let ack = p.ack;
        let prefix = session.room_prefix.as_str();
        let outbound = &self.outbound;
        let reply = |mut body: Value| {
            if let Some(id) = ack {
                if let Some(ok) = body.get_mut("ok") {
                    strip_rooms(ok, prefix);
                }
                push_ack(outbound, &ns, id, json!([body]));
            }
        };
        if !is_op_event(name) {
            reply(
                json!({ "error": ErrorBody::new(ErrorCode::BadRequest, format!("unknown event '{name}'")) }),
            );
            return Next::Continue;
        }
        // The native request: the event's object argument plus `op` (and an id for decoding).
        let mut request = match args.first() {
            Some(Value::Object(o)) => Value::Object(o.clone()),
            None => json!({}),
            Some(_) => {
                reply(
                    json!({ "error": ErrorBody::new(ErrorCode::BadRequest, "the argument must be an object") }),
                );
                return Next::Continue;
            }
        };
        if let Some(obj) = request.as_object_mut() {
            obj.insert("op".into(), json!(name));
            obj.insert("id".into(), json!(ack.unwrap_or(0)));
        }
        let mut op = match request_from_value(request) {
            Ok(r) => r.op,
            Err(e) => {
                reply(json!({ "error": ErrorBody::new(ErrorCode::BadRequest, e.message) }));
                return Next::Continue;
            }
        };
        if !prefix.is_empty() {
            prefix_op(&mut op, prefix);
        }
        if let Op::Publish { room, data, msg_id } = op {
            let timer = self.node.metrics.op_duration("publish").start_timer();
            let admitted = match session::admit_publish(self.node, session, &room, &data).await {
                Ok(admitted) => admitted,
                Err(error) => {
                    reply(json!({ "error": error }));
                    return Next::Continue;
                }
            };
            let (node, session, outbound) =
                (self.node.clone(), session.clone(), self.outbound.clone());
            return Next::Publish(Box::pin(async move {
                let result = session::finish_publish(
                    &node,
                    &session,
                    &room,
                    data,
                    msg_id.as_ref(),
                    admitted,
                )
                .await;
                timer.observe_duration();
                if let Some(id) = ack {
                    // A publish's success names no room and holds no bytes: printed straight,
                    // one per publish, without the value tree the other replies go through.
                    let body = match result {
                        Ok(
                            body @ (OkBody::Published { .. } | OkBody::PublishedEphemeral { .. }),
                        ) => match sio::ack_ok(&ns, id, &body) {
                            Ok(text) => return push(&outbound, text),
                            Err(_) => json!({ "ok": body }),
                        },
                        Ok(body) => json!({ "ok": body }),
                        Err(error) => json!({ "error": error }),
                    };
                    push_ack(&outbound, &ns, id, json!([body]));
                }
            }));
        }
        let (result, after) = session::handle(self.node, session, op).await;
        match result {
            Ok(body) => reply(json!({ "ok": body })),
            Err(error) => reply(json!({ "error": error })),
        }
        session::after_reply(self.node, session, after);
        Next::Continue
    }

    /// Ends one namespace socket. `recoverable`: the connection was lost rather than left on
    /// purpose, so its rooms and position are saved for `--socketio-recovery-window`.
    async fn end(&self, namespace: &str, socket: Socket, recoverable: bool) {
        if let Some(task) = &socket.forwarder {
            task.abort();
        }
        let Some(session) = socket.session else {
            return;
        };
        // Boxed: the connection's future lives as long as it does, and should not grow by a
        // timer it holds only at its end.
        let _place = Box::pin(self.node.departure()).await;
        if recoverable {
            if let Some(pid) = &socket.pid {
                recovery::save(self.node, &session, namespace, &socket.sid, pid).await;
            }
        }
        session::cleanup(self.node, &session.conn_id, &session.identity.user).await;
        self.live.remove(&session.conn_id);
    }

    /// Ends every namespace socket when the connection goes.
    pub async fn end_all(&mut self, recoverable: bool) {
        let joined = std::mem::take(&mut self.joined.0);
        for (namespace, socket) in joined {
            self.end(&namespace, socket, recoverable).await;
        }
    }
}

/// `42` or `42/ns,`: an EVENT's header.
fn event_prefix(namespace: &str) -> String {
    if namespace == "/" {
        "42".to_string()
    } else {
        format!("42{namespace},")
    }
}

/// Carries a non-`/` namespace's events into the connection: `42[…]` becomes `42/ns,[…]`
/// with the room prefix stripped. A close (slow consumer, kick) closes the connection.
async fn forward(
    mut rx: fan_out::FrameReceiver,
    from: Arc<Outbound>,
    to: Arc<Outbound>,
    namespace: String,
    prefix: String,
) {
    let header = event_prefix(&namespace);
    while let Some(frame) = rx.recv().await {
        match frame {
            OutFrame::Data(bytes) if bytes.first() == Some(&sio::BUNDLE) => {
                from.written(bytes.len());
                let Some(bundle) = namespaced_bundle(&bytes, &namespace, &prefix) else {
                    continue;
                };
                if to.push(Bytes::from(bundle)).is_err() {
                    from.close(CloseCode::SLOW_CONSUMER, "connection closing");
                    return;
                }
            }
            OutFrame::Data(bytes) | OutFrame::Message { bytes, .. } => {
                from.written(bytes.len());
                let Some(body) = bytes.strip_prefix(b"42") else {
                    continue;
                };
                let Ok(mut value) = protocol::value::from_slice(body) else {
                    continue;
                };
                // `["name", {event}, "offset"?]`
                if let Value::Array(args) = &mut value {
                    args.iter_mut().for_each(|a| strip_rooms(a, &prefix));
                }
                if to.push(Bytes::from(format!("{header}{value}"))).is_err() {
                    from.close(CloseCode::SLOW_CONSUMER, "connection closing");
                    return;
                }
            }
            OutFrame::Close(code, reason) => {
                to.close(code, &reason);
                return;
            }
            // A namespace's own queue has no socket: neither comes here.
            OutFrame::Pong(_) | OutFrame::Rest => {}
        }
    }
}

/// A BINARY_EVENT bundle of `/` (`45<n>-[…]` and its attachments) for a namespace: the same
/// attachments, the packet with the namespace and without the room prefix.
fn namespaced_bundle(bytes: &[u8], namespace: &str, prefix: &str) -> Option<Vec<u8>> {
    let mut messages = sio::messages(bytes);
    let (_, text) = messages.next()?;
    let attachments: Vec<Vec<u8>> = messages.map(|(_, part)| part.to_vec()).collect();
    let text = std::str::from_utf8(text).ok()?.strip_prefix("45")?;
    let (count, body) = text.split_once('-')?;
    if count.parse::<usize>().ok()? != attachments.len() {
        return None;
    }
    let mut value = protocol::value::from_str(body).ok()?;
    if let Value::Array(args) = &mut value {
        args.iter_mut().for_each(|a| strip_rooms(a, prefix));
    }
    let text = sio::binary(false, namespace, None, attachments.len(), &value);
    Some(sio::bundle(&text, &attachments))
}
