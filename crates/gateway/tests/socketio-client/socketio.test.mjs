// A stock socket.io-client 4.8 against a real roomcast process: the seed app's front-end code
// (`socket.on('traffic_status', …)`, `socket.emit('join', …, ack)`) works unchanged.
// Run by `make test` (deploy/local/test.sh) with ROOMCAST_URL and ROOMCAST_JWT_SECRET set.
import { test } from "node:test";
import assert from "node:assert/strict";
import { io, Manager } from "socket.io-client";
import jwt from "jsonwebtoken";

const URL = process.env.ROOMCAST_URL ?? "http://127.0.0.1:8080";
const SECRET = process.env.ROOMCAST_JWT_SECRET ?? "secret";
const token = (sub, extra = {}) => jwt.sign({ sub, exp: Math.floor(Date.now() / 1000) + 3600, ...extra }, SECRET);
const unique = (p) => `${p}-${Math.random().toString(36).slice(2, 10)}`;

function connect(user, opts = {}) {
  return io(URL, { transports: ["websocket"], auth: { token: token(user) }, reconnection: false, forceNew: true, ...opts });
}

const once = (socket, event, ms = 5000) =>
  new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    socket.once(event, (...args) => {
      clearTimeout(t);
      resolve(args);
    });
  });

const until = async (cond, ms = 5000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
};

// The seed front end's calls: emit with an ack callback, as a promise.
const call = (socket, event, arg) => socket.timeout(5000).emitWithAck(event, arg);

test("connects with a token and gets traffic_status pushed", async () => {
  const socket = connect("alice");
  const [status] = await once(socket, "traffic_status");
  assert.equal(socket.connected, true);
  assert.ok(["normal", "high", "critical"].includes(status.level));
  assert.equal(typeof status.roomCreationEnabled, "boolean");
  assert.equal(typeof status.timestamp, "number");
  assert.equal(status.event, undefined, "the event name is not repeated in the payload");
  socket.close();
});

test("a bad token is a CONNECT_ERROR with code unauthorized", async () => {
  const socket = io(URL, { transports: ["websocket"], auth: { token: "not.a.jwt" }, reconnection: false, forceNew: true });
  const [err] = await once(socket, "connect_error");
  assert.equal(err.message, "invalid token");
  assert.deepEqual(err.data, { code: "unauthorized" });
  socket.close();
});

test("every event answers through its ack, like the native reply body", async () => {
  const room = unique("sio");
  const a = connect("ann");
  const b = connect("ben");
  await Promise.all([once(a, "connect"), once(b, "connect")]);

  const created = await call(a, "create_room", { room, options: { historySize: 10 } });
  assert.equal(created.ok.room, room);
  assert.equal(typeof created.ok.epoch, "string");

  const joinedPresence = once(a, "presence");
  const joined = await call(b, "join", { room });
  assert.equal(joined.ok.offset, 0);
  assert.equal(joined.ok.members.length, 2);
  const [p] = await joinedPresence;
  assert.deepEqual([p.action, p.user], ["join", "ben"]);

  const messageAtB = once(b, "message");
  const published = await call(a, "publish", { room, data: { text: "hello" } });
  assert.deepEqual(published, { ok: { offset: 1 } });
  const [m] = await messageAtB;
  assert.deepEqual([m.room, m.offset, m.from, m.data], [room, 1, "ann", { text: "hello" }]);

  const presence = await call(b, "presence", { room });
  assert.deepEqual(presence.ok.members.map((x) => x.user), ["ann", "ben"]);
  const history = await call(b, "history", { room, limit: 5 });
  assert.equal(history.ok.messages.length, 1);
  assert.equal(history.ok.messages[0].data.text, "hello");

  const leave = await call(b, "leave", { room });
  assert.deepEqual(leave, { ok: {} });
  const notMember = await call(b, "publish", { room, data: 1 });
  assert.equal(notMember.error.code, "not_member");
  const missing = await call(b, "join", { room: unique("nowhere") });
  assert.equal(missing.error.code, "not_found");
  const unknown = await call(b, "fly", { room });
  assert.equal(unknown.error.code, "bad_request");
  a.close();
  b.close();
});

test("binary data in publish arrives as Buffers: nested, several attachments, history, native JSON", async () => {
  const room = unique("bin");
  const a = connect("bina");
  const b = connect("binb");
  await Promise.all([once(a, "connect"), once(b, "connect")]);
  await call(a, "create_room", { room });
  await call(b, "join", { room });
  const ws = new WebSocket(`${URL.replace("http", "ws")}/ws?token=${token("bin-native")}`);
  const frames = [];
  ws.onmessage = (e) => frames.push(JSON.parse(e.data));
  await new Promise((r) => (ws.onopen = r));
  ws.send(JSON.stringify({ id: 1, op: "join", room }));
  await until(() => frames.some((f) => f.id === 1));
  const got = once(b, "message");
  const file = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 255]);
  const thumb = Buffer.from([1, 2, 3]);
  const r = await call(a, "publish", { room, data: { file, name: "a.png", thumbs: [thumb] } });
  assert.equal(r.ok.offset, 1);
  const [m] = await got;
  assert.ok(Buffer.isBuffer(m.data.file), `a Buffer, not ${JSON.stringify(m.data.file)}`);
  assert.ok(Buffer.isBuffer(m.data.thumbs[0]));
  assert.deepEqual([m.data.file, m.data.name, m.data.thumbs[0]], [file, "a.png", thumb]);
  // A native JSON client gets the documented wrapper.
  await until(() => frames.some((f) => f.event === "message"));
  const native = frames.find((f) => f.event === "message");
  assert.deepEqual(native.data, {
    file: { $bin: file.toString("base64") },
    name: "a.png",
    thumbs: [{ $bin: thumb.toString("base64") }],
  });
  // And what a JSON client publishes as the wrapper reaches Socket.IO as a Buffer.
  const fromNative = once(b, "message");
  ws.send(JSON.stringify({ id: 2, op: "publish", room, data: [{ $bin: "AAEC" }] }));
  const [n] = await fromNative;
  assert.ok(Buffer.isBuffer(n.data[0]));
  assert.deepEqual(n.data[0], Buffer.from([0, 1, 2]));
  // History keeps it (a binary ack).
  const h = await call(b, "history", { room });
  assert.ok(Buffer.isBuffer(h.ok.messages[0].data.file));
  assert.deepEqual(h.ok.messages[0].data.file, file);
  ws.close();
  a.close();
  b.close();
});

test("a Socket.IO client and a native client share a room", async () => {
  const room = unique("mixed");
  const s = connect("sio-user");
  await once(s, "connect");
  await call(s, "create_room", { room });
  const ws = new WebSocket(`${URL.replace("http", "ws")}/ws?token=${token("native-user")}`);
  const frames = [];
  const waiters = [];
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    frames.push(m);
    waiters.splice(0).forEach((w) => w());
  };
  const next = async (pred) => {
    for (;;) {
      const i = frames.findIndex(pred);
      if (i >= 0) return frames.splice(i, 1)[0];
      await new Promise((r) => waiters.push(r));
    }
  };
  await new Promise((r) => (ws.onopen = r));
  // Listening before the join: the presence event may reach the Socket.IO client before the
  // join's reply reaches the native one.
  const presence = once(s, "presence");
  ws.send(JSON.stringify({ id: 1, op: "join", room }));
  await next((m) => m.id === 1);
  const [p] = await presence;
  assert.equal(p.user, "native-user");
  ws.send(JSON.stringify({ id: 2, op: "publish", room, data: "from native" }));
  const [m] = await once(s, "message");
  assert.equal(m.data, "from native");
  const fromSio = next((f) => f.event === "message" && f.data === "from socket.io");
  await call(s, "publish", { room, data: "from socket.io" });
  const f = await fromSio;
  assert.equal(f.from, "sio-user");
  ws.close();
  s.close();
});

test("recovery: a killed connection gets its rooms and missed messages back", async () => {
  const room = unique("recover");
  const s = io(URL, { transports: ["websocket"], auth: { token: token("rec-user") }, forceNew: true,
    reconnectionDelay: 100, reconnectionDelayMax: 200 });
  await once(s, "connect");
  assert.equal(s.recovered, false);
  const pub = connect("rec-publisher");
  await once(pub, "connect");
  await call(pub, "create_room", { room });
  const joined = await call(s, "join", { room });
  assert.ok(joined.ok, JSON.stringify(joined));
  const seen = [];
  s.on("message", (m) => seen.push(m.data));
  for (const i of [1, 2, 3]) await call(pub, "publish", { room, data: i });
  await until(() => seen.length === 3);
  // Kill the transport; the client reconnects by itself with {pid, offset}.
  const gone = once(s, "disconnect");
  s.io.engine.close();
  await gone;
  const back = once(s, "connect");
  // Message 5 is binary: the replay sends it as attachments too.
  const five = Buffer.from([5, 0, 255]);
  for (const i of [4, 5, 6]) await call(pub, "publish", { room, data: i === 5 ? five : i });
  await back;
  assert.equal(s.recovered, true, "the server restored the socket");
  await call(pub, "publish", { room, data: 7 });
  await until(() => seen.length >= 7);
  assert.ok(Buffer.isBuffer(seen[4]), "a replayed Buffer is a Buffer");
  assert.deepEqual(seen, [1, 2, 3, 4, five, 6, 7], "every message once, in order");
  // A second recovery from the same pid is refused: saved state is single use.
  s.close();
  pub.close();
});

test("recovery fails cleanly with a foreign or unknown pid", async () => {
  const s = connect("someone", { auth: { token: token("someone"), pid: "no-such-pid", offset: "1:abc:room" } });
  await once(s, "connect");
  assert.equal(s.recovered, false);
  const ok = await call(s, "presence", { room: "nowhere" });
  assert.ok(ok.error);
  s.close();
});

test("namespaces: /admin is isolated from /, on one connection; unknown ones are refused", async () => {
  const m = new Manager(URL, { transports: ["websocket"], reconnection: false, forceNew: true });
  const main = m.socket("/", { auth: { token: token("ns-user") } });
  const admin = m.socket("/admin", { auth: { token: token("ns-user") } });
  await Promise.all([once(main, "connect"), once(admin, "connect")]);
  const room = unique("lobby");
  assert.ok((await call(main, "create_room", { room })).ok);
  const created = await call(admin, "create_room", { room });
  assert.ok(created.ok, `same name, other namespace: ${JSON.stringify(created)}`);
  assert.equal(created.ok.room, room, "the client sees its own room name");
  assert.ok((await call(main, "join", { room })).ok);
  assert.ok((await call(admin, "join", { room })).ok);
  const mainSaw = [];
  main.on("message", (x) => mainSaw.push(x));
  const [[msg]] = await Promise.all([once(admin, "message"), call(admin, "publish", { room, data: "admin only" })]);
  assert.equal(msg.room, room);
  assert.equal(msg.data, "admin only");
  // Binary in a namespace: the room prefix is stripped and the attachments follow.
  const blob = Buffer.from([9, 8, 7, 0, 255]);
  const [[bin]] = await Promise.all([once(admin, "message"), call(admin, "publish", { room, data: { blob, more: [blob] } })]);
  assert.equal(bin.room, room);
  assert.ok(Buffer.isBuffer(bin.data.blob) && Buffer.isBuffer(bin.data.more[0]));
  assert.deepEqual(bin.data, { blob, more: [blob] });
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(mainSaw.length, 0, "/ did not see /admin's messages");
  const nope = m.socket("/nope", { auth: { token: token("ns-user") } });
  const [err] = await once(nope, "connect_error");
  assert.equal(err.message, "Invalid namespace");
  main.close();
  admin.close();
  nope.close();
});

test("the seed app's front-end code works unchanged", async () => {
  const HOT = process.env.ROOMCAST_HOT_URL;
  assert.ok(HOT, "run.sh starts a node that runs hot");
  const banners = [];
  const disabled = [];
  const updates = [];
  const showTrafficBanner = (message) => banners.push(message);
  const disableCreateRoomButton = (retryAfter) => disabled.push(retryAfter);
  const updateUI = (status) => updates.push(status);
  const fetch = (path) => globalThis.fetch(`${HOT}${path}`);
  const socket = io(HOT, { transports: ["websocket"], auth: { token: token("seed-user") }, forceNew: true });

  // ---- verbatim from the seed guide (shared/seeds, "Frontend Implementation Example") ----
  // Listen for traffic status updates
  socket.on('traffic_status', (status) => {
    if (status.level === 'critical') {
      // Show banner: "High traffic - some features may be delayed"
      showTrafficBanner(status.message);
    }

    if (!status.roomCreationEnabled) {
      // Disable create room button
      disableCreateRoomButton(status.retryAfter);
    }
  });

  // Poll status endpoint periodically
  const poll = setInterval(async () => {
    const response = await fetch('/status');
    const status = await response.json();
    updateUI(status);
  }, 200); // Every minute (200 ms here)
  // ---- end of the seed code ----

  await once(socket, "connect");
  // Two users create two rooms: the node goes critical and pauses creation.
  for (const user of ["seed-a", "seed-b"]) {
    const c = io(HOT, { transports: ["websocket"], auth: { token: token(user) }, reconnection: false, forceNew: true });
    await once(c, "connect");
    await call(c, "create_room", { room: unique("seed") });
    c.close();
  }
  await until(() => disabled.length > 0 && banners.length > 0 && updates.some((u) => u.level === "critical"), 8000).catch((e) => {
    throw new Error(`${e.message}: ${JSON.stringify({ banners, disabled, updates: updates.slice(-2) })}`);
  });
  assert.equal(typeof banners[0], "string");
  assert.ok(disabled[0] > 0, `retryAfter in ms: ${disabled[0]}`);
  const refused = await call(socket, "create_room", { room: unique("seed") });
  assert.equal(refused.error.code, "creation_paused");
  clearInterval(poll);
  socket.close();
});
