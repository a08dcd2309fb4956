// A stock socket.io-client 4.8 with its DEFAULT options (HTTP long-polling first, then the
// upgrade to WebSocket), and with `transports: ["polling"]` only, against a real roomcast
// process. Run by run.sh (make test) with ROOMCAST_URL and ROOMCAST_JWT_SECRET set.
import { test } from "node:test";
import assert from "node:assert/strict";
import { io, Manager } from "socket.io-client";
import jwt from "jsonwebtoken";

const URL = process.env.ROOMCAST_URL ?? "http://127.0.0.1:8080";
const SECRET = process.env.ROOMCAST_JWT_SECRET ?? "secret";
const token = (sub) => jwt.sign({ sub, exp: Math.floor(Date.now() / 1000) + 3600 }, SECRET);
const unique = (p) => `${p}-${Math.random().toString(36).slice(2, 10)}`;

// No `transports` option: what `io(URL)` does in every browser.
const byDefault = (user, opts = {}) => io(URL, { auth: { token: token(user) }, reconnection: false, forceNew: true, ...opts });
const pollingOnly = (user, opts = {}) => byDefault(user, { transports: ["polling"], ...opts });

const once = (emitter, event, ms = 5000) =>
  new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    emitter.once(event, (...args) => {
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

const call = (socket, event, arg) => socket.timeout(5000).emitWithAck(event, arg);

test("default options: polling first, then the upgrade to WebSocket", async () => {
  const s = byDefault("default-user");
  const upgraded = new Promise((resolve) => s.io.on("open", () => s.io.engine.once("upgrade", (t) => resolve(t.name))));
  const [status] = await once(s, "traffic_status");
  assert.ok(["normal", "high", "critical"].includes(status.level));
  assert.equal(await upgraded, "websocket");
  assert.equal(s.io.engine.transport.name, "websocket");
  const room = unique("dflt");
  assert.ok((await call(s, "create_room", { room })).ok);
  const got = once(s, "message");
  assert.deepEqual(await call(s, "publish", { room, data: "after the upgrade" }), { ok: { offset: 1 } });
  assert.equal((await got)[0].data, "after the upgrade");
  s.close();
});

test("events with acks, rooms and binary: a default client and a polling-only one share a room", async () => {
  const room = unique("mixed-transports");
  const a = byDefault("ann-dflt");
  const b = pollingOnly("ben-poll");
  await Promise.all([once(a, "connect"), once(b, "connect")]);
  assert.equal(b.io.engine.transport.name, "polling");
  const created = await call(a, "create_room", { room, options: { historySize: 10 } });
  assert.equal(created.ok.room, room);
  const presence = once(a, "presence");
  const joined = await call(b, "join", { room });
  assert.equal(joined.ok.members.length, 2);
  assert.deepEqual([(await presence)[0].action, (await presence)[0].user], ["join", "ben-poll"]);

  const seenA = [];
  const seenB = [];
  a.on("message", (m) => seenA.push(m.data));
  b.on("message", (m) => seenB.push(m.data));
  for (let i = 1; i <= 20; i++) {
    await call(i % 2 ? a : b, "publish", { room, data: i });
  }
  // Binary from the client: Buffers travel as attachments and arrive as Buffers, over
  // polling (`b` + base64) as over WebSocket.
  const r = await call(b, "publish", { room, data: { blob: Buffer.from([1, 2, 3, 250]) } });
  assert.equal(r.ok.offset, 21);
  await until(() => seenA.length === 21 && seenB.length === 21);
  const expected = [...Array(20).keys()].map((i) => i + 1);
  assert.deepEqual(seenA.slice(0, 20), expected, "every message, in order, over WebSocket");
  assert.deepEqual(seenB.slice(0, 20), expected, "every message, in order, over polling");
  assert.ok(Buffer.isBuffer(seenA[20].blob) && Buffer.isBuffer(seenB[20].blob));
  assert.deepEqual(seenA[20], { blob: Buffer.from([1, 2, 3, 250]) });
  assert.deepEqual(seenB[20], { blob: Buffer.from([1, 2, 3, 250]) });

  const history = await call(b, "history", { room, limit: 5 });
  assert.equal(history.ok.messages.length, 5);
  assert.deepEqual(await call(b, "leave", { room }), { ok: {} });
  assert.equal((await call(b, "publish", { room, data: 1 })).error.code, "not_member");
  assert.equal((await call(b, "fly", { room })).error.code, "bad_request");
  a.close();
  b.close();
});

test("polling only: a burst of server events is batched and arrives whole, in order", async () => {
  const room = unique("burst");
  // Five publishers, each within the publish burst (40 per user).
  const pubs = [0, 1, 2, 3, 4].map((i) => byDefault(`burst-pub-${i}`));
  const sub = pollingOnly("burst-sub");
  await Promise.all([...pubs, sub].map((s) => once(s, "connect")));
  await call(pubs[0], "create_room", { room, options: { historySize: 500 } });
  for (const s of [...pubs.slice(1), sub]) assert.ok((await call(s, "join", { room })).ok);
  const seen = [];
  sub.on("message", (m) => seen.push(m.offset));
  const acks = await Promise.all(
    pubs.flatMap((p, n) => [...Array(30).keys()].map((i) => call(p, "publish", { room, data: { n, i, pad: "x".repeat(200) } }))),
  );
  assert.ok(acks.every((a) => a.ok), JSON.stringify(acks.find((a) => !a.ok)));
  await until(() => seen.length === 150, 10000);
  assert.deepEqual(seen, [...Array(150).keys()].map((i) => i + 1));
  [...pubs, sub].forEach((s) => s.close());
});

test("polling only: namespaces on one connection, and a refused one", async () => {
  const m = new Manager(URL, { transports: ["polling"], reconnection: false, forceNew: true });
  const main = m.socket("/", { auth: { token: token("ns-poll") } });
  const admin = m.socket("/admin", { auth: { token: token("ns-poll") } });
  await Promise.all([once(main, "connect"), once(admin, "connect")]);
  const room = unique("lobby");
  assert.ok((await call(main, "create_room", { room })).ok);
  assert.ok((await call(admin, "create_room", { room })).ok, "same name, other namespace");
  const [[msg]] = await Promise.all([once(admin, "message"), call(admin, "publish", { room, data: "admin only" })]);
  assert.equal(msg.room, room);
  const nope = m.socket("/nope", { auth: { token: token("ns-poll") } });
  const [err] = await once(nope, "connect_error");
  assert.equal(err.message, "Invalid namespace");
  const bad = pollingOnly("x", { auth: { token: "not.a.jwt" } });
  const [refused] = await once(bad, "connect_error");
  assert.deepEqual(refused.data, { code: "unauthorized" });
  main.close();
  admin.close();
  nope.close();
  bad.close();
});

for (const [name, make] of [["polling only", pollingOnly], ["default options", byDefault]]) {
  test(`recovery, ${name}: a killed connection gets its rooms and missed messages back`, async () => {
    const room = unique("recover");
    const s = make("rec-" + name.replace(" ", "-"), { reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 200 });
    await once(s, "connect");
    const pub = byDefault("rec-pub");
    await once(pub, "connect");
    await call(pub, "create_room", { room });
    assert.ok((await call(s, "join", { room })).ok);
    const seen = [];
    s.on("message", (m) => seen.push(m.data));
    for (const i of [1, 2, 3]) await call(pub, "publish", { room, data: i });
    await until(() => seen.length === 3);
    const gone = once(s, "disconnect");
    s.io.engine.close();
    await gone;
    const back = once(s, "connect");
    for (const i of [4, 5, 6]) await call(pub, "publish", { room, data: i });
    await back;
    assert.equal(s.recovered, true, "the server restored the socket");
    await call(pub, "publish", { room, data: 7 });
    await until(() => seen.length >= 7);
    assert.deepEqual(seen, [1, 2, 3, 4, 5, 6, 7], "every message once, in order");
    s.close();
    pub.close();
  });
}
