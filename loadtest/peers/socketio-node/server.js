// The peer: what teams run today, in its recommended multi-node form. Socket.IO 4.8 with the
// sharded Redis adapter (SSUBSCRIBE/SPUBLISH, one channel per room: "dynamic" mode) on the same
// Redis Cluster as roomcast. It implements the same room operations with acks, so that a
// scenario means the same work on both: create_room, join, leave, publish, and `message`
// events to the room.
//
//   PORT=3001 REDIS_CLUSTER=redis://127.0.0.1:7000,redis://127.0.0.1:7001 node server.js
"use strict";
const { createServer } = require("http");
const { Server } = require("socket.io");
const { createShardedAdapter } = require("@socket.io/redis-adapter");
const { createCluster } = require("redis");

const port = Number(process.env.PORT || 3001);
const rootNodes = (process.env.REDIS_CLUSTER || "redis://127.0.0.1:7000")
  .split(",")
  .map((url) => ({ url }));

async function main() {
  const pubClient = createCluster({ rootNodes });
  const subClient = pubClient.duplicate();
  await Promise.all([pubClient.connect(), subClient.connect()]);

  const httpServer = createServer((req, res) => {
    res.statusCode = req.url === "/healthz" ? 200 : 404;
    res.end(req.url === "/healthz" ? "ok\n" : "");
  });
  const io = new Server(httpServer, {
    transports: ["websocket"],
    adapter: createShardedAdapter(pubClient, subClient, { subscriptionMode: "dynamic" }),
  });

  // The room registry lives in Redis, like roomcast's, so create/join mean the same thing.
  const roomKey = (room) => `peer:room:{${room}}`;
  const valid = (room) => typeof room === "string" && /^[A-Za-z0-9_.:-]{1,128}$/.test(room);
  const reply = (ack, body) => typeof ack === "function" && ack(body);

  io.on("connection", (socket) => {
    socket.on("create_room", async (arg, ack) => {
      const room = arg && arg.room ? arg.room : Math.random().toString(36).slice(2, 10);
      if (!valid(room)) return reply(ack, { error: { code: "bad_request", message: "bad room" } });
      const created = await pubClient.set(roomKey(room), "1", { NX: true });
      if (!created) return reply(ack, { error: { code: "room_exists", message: "room exists" } });
      socket.join(room);
      reply(ack, { ok: { room } });
    });
    socket.on("join", async (arg, ack) => {
      const room = arg && arg.room;
      if (!valid(room)) return reply(ack, { error: { code: "bad_request", message: "bad room" } });
      if (!(await pubClient.exists(roomKey(room)))) {
        return reply(ack, { error: { code: "not_found", message: "room not found" } });
      }
      socket.join(room);
      reply(ack, { ok: { room } });
    });
    socket.on("leave", (arg, ack) => {
      const room = arg && arg.room;
      if (!socket.rooms.has(room)) return reply(ack, { error: { code: "not_member", message: "not a member" } });
      socket.leave(room);
      reply(ack, { ok: {} });
    });
    socket.on("publish", (arg, ack) => {
      const room = arg && arg.room;
      if (!socket.rooms.has(room)) return reply(ack, { error: { code: "not_member", message: "not a member" } });
      io.to(room).emit("message", { room, from: socket.id, data: arg.data, ts: Date.now() });
      reply(ack, { ok: {} });
    });
  });

  httpServer.listen(port, "127.0.0.1", () => console.log(`socket.io peer listening on ${port}`));
  const stop = () => io.close(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
