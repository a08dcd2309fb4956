// @socket.io/redis-emitter compatibility (issue 13 part 4): a Node service publishes with the
// stock emitter through a node-redis cluster client; stock socket.io-client 4.8 clients on all
// three gateways (run by cluster.sh, started with --socketio-namespaces /admin) get exactly the
// events meant for them, binary as binary, and nothing for rooms they are not in or excluded
// from.
import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import jwt from "jsonwebtoken";
import { createCluster } from "redis";
import { Emitter } from "@socket.io/redis-emitter";

const GATEWAYS = (process.env.ROOMCAST_GATEWAYS ?? "").trim().split(/\s+/).filter(Boolean);
const REDIS = (process.env.ROOMCAST_REDIS_URLS ?? "").split(",").filter(Boolean);
const SECRET = process.env.ROOMCAST_JWT_SECRET ?? "secret";
const token = (sub) => jwt.sign({ sub, exp: Math.floor(Date.now() / 1000) + 3600 }, SECRET);
const unique = (p) => `${p}-${Math.random().toString(36).slice(2, 10)}`;

const connect = (gateway, ns, user) =>
  new Promise((resolve, reject) => {
    const s = io(`${gateway}${ns}`, {
      auth: { token: token(user) },
      transports: ["websocket"],
      reconnection: false,
      forceNew: true,
    });
    const t = setTimeout(() => reject(new Error(`${user}: no connect`)), 8000);
    s.once("connect", () => {
      clearTimeout(t);
      resolve(s);
    });
    s.once("connect_error", (e) => reject(e));
  });
const call = (socket, event, arg) => socket.timeout(8000).emitWithAck(event, arg);

// Events this test emits; roomcast's own (traffic_status, presence…) are left out.
const OURS = new Set(["text", "obj", "buf", "file", "two", "multi", "exc", "all", "adm", "admall", "done"]);
const plain = (v) => {
  if (Buffer.isBuffer(v) || v instanceof ArrayBuffer || ArrayBuffer.isView(v)) return { bytes: [...Buffer.from(v)] };
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
};

test("@socket.io/redis-emitter events reach the right Socket.IO clients on every gateway", async () => {
  assert.equal(GATEWAYS.length, 3, "three gateways");
  assert.ok(REDIS.length > 0, "ROOMCAST_REDIS_URLS");
  const [g0, g1, g2] = GATEWAYS;
  const r1 = unique("em1"), r2 = unique("em2"), r3 = unique("em3"), ar = unique("emadm");
  const sockets = {
    a0: await connect(g0, "/", "a0"), a1: await connect(g1, "/", "a1"), a2: await connect(g2, "/", "a2"),
    b0: await connect(g0, "/", "b0"), b1: await connect(g1, "/", "b1"), b2: await connect(g2, "/", "b2"),
    c1: await connect(g1, "/", "c1"),
    // In a `/` room named like the /admin room: must not get /admin's events.
    d2: await connect(g2, "/", "d2"),
    x0: await connect(g0, "/admin", "x0"), x2: await connect(g2, "/admin", "x2"),
    y1: await connect(g1, "/admin", "y1"),
  };
  const got = Object.fromEntries(Object.keys(sockets).map((k) => [k, []]));
  for (const [name, s] of Object.entries(sockets)) {
    s.onAny((ev, ...args) => {
      if (OURS.has(ev)) got[name].push([ev, ...args.map(plain)]);
    });
  }
  const { a0, a1, a2, b0, b1, b2, c1, d2, x0, x2 } = sockets;
  // The creators join what they create: sockets of their own, outside the checked ones.
  const creator = await connect(g0, "/", "creator");
  const adminCreator = await connect(g1, "/admin", "admin-creator");
  for (const room of [r1, r2, r3, ar]) assert.ok((await call(creator, "create_room", { room })).ok, room);
  assert.ok((await call(adminCreator, "create_room", { room: ar })).ok, "the /admin room");
  for (const s of [a0, a1, a2, c1]) assert.ok((await call(s, "join", { room: r1 })).ok);
  for (const s of [b0, b1, b2]) assert.ok((await call(s, "join", { room: r2 })).ok);
  assert.ok((await call(c1, "join", { room: r3 })).ok);
  assert.ok((await call(d2, "join", { room: ar })).ok);
  for (const s of [x0, x2]) assert.ok((await call(s, "join", { room: ar })).ok);

  const redis = createCluster({ rootNodes: REDIS.map((url) => ({ url })) });
  redis.on("error", () => {});
  await redis.connect();
  try {
    const emitter = new Emitter(redis);
    const admin = emitter.of("/admin");
    emitter.to(r1).emit("text", "hello");
    emitter.to(r1).emit("obj", { a: 1, nested: { b: [1, 2], s: "x" } });
    emitter.to(r1).emit("buf", Buffer.from([1, 2, 3]));
    emitter.to(r1).emit("file", { file: Buffer.from([0, 255, 7]), name: "a.png" });
    emitter.to(r1).emit("two", Buffer.from([1]), "mid", Buffer.from([2, 3]));
    emitter.to([r1, r2]).emit("multi", 1);
    emitter.to([r1, r2]).except(r3).emit("exc", 2);
    emitter.emit("all", 3);
    admin.to(ar).emit("adm", { x: Buffer.from([9, 8]) });
    admin.emit("admall", "every /admin socket");
    emitter.emit("done");
    admin.emit("done");
    // Classic pub/sub keeps order per publishing connection only, and node-redis sends each
    // PUBLISH to any node of the cluster: events may arrive in any order, so the lists are
    // compared as sets (each event exactly once).
    const inR1 = [
      ["text", "hello"],
      ["obj", { a: 1, nested: { b: [1, 2], s: "x" } }],
      ["buf", { bytes: [1, 2, 3] }],
      ["file", { file: { bytes: [0, 255, 7] }, name: "a.png" }],
      ["two", { bytes: [1] }, "mid", { bytes: [2, 3] }],
      ["multi", 1],
    ];
    const a = [...inR1, ["exc", 2], ["all", 3], ["done"]];
    const b = [["multi", 1], ["exc", 2], ["all", 3], ["done"]];
    const x = [["adm", { x: { bytes: [9, 8] } }], ["admall", "every /admin socket"], ["done"]];
    const expected = {
      a0: a, a1: a, a2: a,
      b0: b, b1: b, b2: b,
      c1: [...inR1, ["all", 3], ["done"]],
      d2: [["all", 3], ["done"]],
      x0: x, x2: x,
      y1: [["admall", "every /admin socket"], ["done"]],
    };
    const end = Date.now() + 10000;
    while (Object.entries(expected).some(([k, e]) => got[k].length < e.length)) {
      if (Date.now() > end) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    await new Promise((r) => setTimeout(r, 500)); // nothing extra arrives late
    const sorted = (o) =>
      Object.fromEntries(Object.entries(o).map(([k, v]) => [k, v.map((e) => JSON.stringify(e)).sort()]));
    assert.deepEqual(sorted(got), sorted(expected));
    // Each binary event arrived as attachments: a Buffer in the client, not an array.
    const metrics = await (await fetch(`${g1}/metrics`)).text();
    assert.match(metrics, /roomcast_socketio_emitter_messages_total\{result="delivered"\} [1-9]/);

    // disconnectSockets: every socket of the room, on every gateway, is disconnected.
    const closed = [b0, b1, b2].map((s) => new Promise((resolve) => s.once("disconnect", resolve)));
    emitter.in(r2).disconnectSockets(true);
    await Promise.race([
      Promise.all(closed),
      new Promise((_, reject) => setTimeout(() => reject(new Error("not disconnected")), 8000)),
    ]);
    assert.ok(a0.connected && a1.connected && a2.connected && c1.connected, "other rooms stay");
  } finally {
    await redis.quit().catch(() => {});
    for (const s of [...Object.values(sockets), creator, adminCreator]) s.disconnect();
  }
});
