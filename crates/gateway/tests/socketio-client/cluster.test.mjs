// No sticky sessions: stock socket.io-client 4.8 through nginx round-robin in front of three
// gateways on one Redis Cluster (run by cluster.sh, which sets ROOMCAST_URL to nginx and
// ROOMCAST_GATEWAYS to the gateways themselves).
import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import jwt from "jsonwebtoken";

const URL = process.env.ROOMCAST_URL ?? "http://127.0.0.1:9110";
const GATEWAYS = (process.env.ROOMCAST_GATEWAYS ?? "").trim().split(/\s+/).filter(Boolean);
const SECRET = process.env.ROOMCAST_JWT_SECRET ?? "secret";
const token = (sub) => jwt.sign({ sub, exp: Math.floor(Date.now() / 1000) + 3600 }, SECRET);
const unique = (p) => `${p}-${Math.random().toString(36).slice(2, 10)}`;
const byDefault = (user, opts = {}) => io(URL, { auth: { token: token(user) }, reconnection: false, forceNew: true, ...opts });

const once = (emitter, event, ms = 8000) =>
  new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    emitter.once(event, (...args) => {
      clearTimeout(t);
      resolve(args);
    });
  });
const until = async (cond, ms = 10000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
};
const call = (socket, event, arg) => socket.timeout(8000).emitWithAck(event, arg);

const relayed = async () => {
  let sum = 0;
  for (const g of GATEWAYS) {
    const text = await (await fetch(`${g}/metrics`)).text();
    const m = text.match(/roomcast_socketio_relayed_total\{outcome="relayed"\} (\d+)/);
    sum += m ? Number(m[1]) : 0;
  }
  return sum;
};

test("raw long-polling through round-robin: every request finds its session", async () => {
  assert.equal(GATEWAYS.length, 3);
  const before = await relayed();
  const open = await (await fetch(`${URL}/socket.io/?EIO=4&transport=polling`)).text();
  const sid = JSON.parse(open.slice(1)).sid;
  const at = `${URL}/socket.io/?EIO=4&transport=polling&sid=${sid}`;
  const connect = `40${JSON.stringify({ token: token("raw-poll") })}`;
  assert.equal(await (await fetch(at, { method: "POST", body: connect })).text(), "ok");
  assert.match(await (await fetch(at)).text(), /^40\{"sid"/);
  for (let i = 1; i <= 12; i++) {
    const post = await fetch(at, { method: "POST", body: `42${i}["presence",{"room":"nowhere"}]` });
    assert.equal(post.status, 200);
    assert.equal(await post.text(), "ok");
    const got = await (await fetch(at)).text();
    assert.ok(got.includes(`43${i}[`), `ack ${i}: ${got}`);
  }
  assert.ok((await relayed()) - before >= 12, "most requests were relayed to the owner");
  await fetch(at, { method: "POST", body: "1" });
});

test("default clients connect over polling, upgrade, and get every message, in order", async () => {
  const room = unique("cluster");
  const clients = [0, 1, 2, 3].map((i) => byDefault(`cl-${i}`));
  const pollOnly = byDefault("cl-poll", { transports: ["polling"] });
  const all = [...clients, pollOnly];
  const upgraded = clients.map(
    (c) => new Promise((resolve) => c.io.on("open", () => c.io.engine.once("upgrade", (t) => resolve(t.name)))),
  );
  await Promise.all(all.map((c) => once(c, "connect")));
  assert.deepEqual(await Promise.all(upgraded), ["websocket", "websocket", "websocket", "websocket"]);
  assert.equal(pollOnly.io.engine.transport.name, "polling");
  assert.ok((await call(clients[0], "create_room", { room, options: { historySize: 500 } })).ok);
  for (const c of all.slice(1)) assert.ok((await call(c, "join", { room })).ok);
  const seen = all.map(() => []);
  all.forEach((c, i) => c.on("message", (m) => seen[i].push(m.offset)));
  // Three publishers at once (one of them polling only), 20 messages each.
  const pubs = [clients[1], clients[2], pollOnly];
  const acks = await Promise.all(pubs.flatMap((p, n) => [...Array(20).keys()].map((i) => call(p, "publish", { room, data: { n, i } }))));
  assert.ok(acks.every((a) => a.ok), JSON.stringify(acks.find((a) => !a.ok)));
  const expected = [...Array(60).keys()].map((i) => i + 1);
  await until(() => seen.every((s) => s.length >= 60));
  seen.forEach((s, i) => assert.deepEqual(s, expected, `client ${i}`));
  all.forEach((c) => c.close());
});

test("recovery through round-robin: a killed transport comes back with what it missed", async () => {
  const room = unique("cluster-rec");
  const s = byDefault("cl-rec", { reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 200 });
  const pub = byDefault("cl-rec-pub");
  await Promise.all([once(s, "connect"), once(pub, "connect")]);
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
  assert.equal(s.recovered, true);
  await call(pub, "publish", { room, data: 7 });
  await until(() => seen.length >= 7);
  assert.deepEqual(seen, [1, 2, 3, 4, 5, 6, 7]);
  s.close();
  pub.close();
});
