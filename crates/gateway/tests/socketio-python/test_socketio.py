"""python-socketio's client against a real roomcast process: the same scenario as the
socket.io-client test (socketio-client/socketio.test.mjs), from a second, independent
implementation. Run by run.sh (part of `make test`) with ROOMCAST_URL and ROOMCAST_JWT_SECRET.
"""

import json
import os
import socket
import threading
import time
import unittest
import uuid

import jwt
import socketio
import websocket

URL = os.environ.get("ROOMCAST_URL", "http://127.0.0.1:8080")
SECRET = os.environ.get("ROOMCAST_JWT_SECRET", "secret")


def token(sub):
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def until(cond, secs=5.0):
    end = time.time() + secs
    while not cond():
        if time.time() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


class Recorder:
    """Collects the events a client receives."""

    def __init__(self, client, *events):
        self.seen = {e: [] for e in events}
        for e in events:
            client.on(e, self._handler(e))

    def _handler(self, event):
        def handle(*args):
            self.seen[event].append(args)

        return handle


class RecoveringClient(socketio.Client):
    """python-socketio has no connection state recovery of its own, so this adds what
    socket.io-client does: remember `pid` from the CONNECT reply and the last string argument
    of each event as the offset, and send both in the auth of the next CONNECT."""

    def __init__(self, user, **kw):
        super().__init__(**kw)
        self.user = user
        self.pid = None
        self.offset = None
        self.recovered = False

    def auth(self):
        a = {"token": token(self.user)}
        if self.pid:
            a["pid"] = self.pid
            if self.offset:
                a["offset"] = self.offset
        return a

    def _handle_connect(self, namespace, data):
        data = data or {}
        self.recovered = bool(self.pid) and data.get("pid") == self.pid
        self.pid = data.get("pid", self.pid)
        return super()._handle_connect(namespace, data)

    def _handle_event(self, namespace, id, data):
        if self.pid and len(data) > 1 and isinstance(data[-1], str):
            self.offset = data[-1]
        return super()._handle_event(namespace, id, data)


def connect(user, **kw):
    c = socketio.Client(reconnection=False)
    c.connect(URL, transports=["websocket"], auth={"token": token(user)}, wait_timeout=5, **kw)
    return c


class SocketIoPython(unittest.TestCase):
    def test_connect_with_token_and_traffic_status(self):
        c = socketio.Client(reconnection=False)
        rec = Recorder(c, "traffic_status")
        c.connect(URL, transports=["websocket"], auth={"token": token("py-a")}, wait_timeout=5)
        until(lambda: rec.seen["traffic_status"])
        status = rec.seen["traffic_status"][0][0]
        self.assertIn(status["level"], ["normal", "high", "critical"])
        self.assertIn("roomCreationEnabled", status)
        c.disconnect()

    def test_bad_token_is_unauthorized(self):
        c = socketio.Client(reconnection=False)
        errors = []
        c.on("connect_error", lambda data: errors.append(data))
        with self.assertRaises(socketio.exceptions.ConnectionError):
            c.connect(URL, transports=["websocket"], auth={"token": "not-a-jwt"}, wait_timeout=5)
        self.assertEqual(errors, [{"message": "invalid token", "data": {"code": "unauthorized"}}])

    def test_every_event_with_its_ack(self):
        c = connect("py-ops")
        room = unique("py-room")
        created = c.call("create_room", {"room": room, "options": {"historySize": 10}}, timeout=5)
        self.assertEqual(created["ok"]["room"], room)
        joined = c.call("join", {"room": room}, timeout=5)
        self.assertEqual(joined["ok"]["offset"], 0)
        published = c.call("publish", {"room": room, "data": {"n": 1}}, timeout=5)
        self.assertEqual(published["ok"]["offset"], 1)
        presence = c.call("presence", {"room": room}, timeout=5)
        self.assertEqual([m["user"] for m in presence["ok"]["members"]], ["py-ops"])
        history = c.call("history", {"room": room}, timeout=5)
        self.assertEqual([m["data"] for m in history["ok"]["messages"]], [{"n": 1}])
        left = c.call("leave", {"room": room}, timeout=5)
        self.assertEqual(left, {"ok": {}})
        unknown = c.call("dance", {}, timeout=5)
        self.assertEqual(unknown["error"]["code"], "bad_request")
        c.disconnect()

    def test_binary_publish_arrives_as_bytes(self):
        a, b = connect("py-bin-a"), connect("py-bin-b")
        room = unique("py-bin")
        a.call("create_room", {"room": room}, timeout=5)
        rec = Recorder(b, "message")
        b.call("join", {"room": room}, timeout=5)
        a.call("join", {"room": room}, timeout=5)
        ack = a.call("publish", {"room": room, "data": b"\x01\x02\xff"}, timeout=5)
        self.assertIn("ok", ack)
        until(lambda: rec.seen["message"])
        # Bytes stay bytes (an attachment), not a list of numbers.
        self.assertEqual(rec.seen["message"][0][0]["data"], b"\x01\x02\xff")
        a.disconnect()
        b.disconnect()

    def test_default_transports_and_polling_only(self):
        # python-socketio's default: long-polling first, then the upgrade to WebSocket.
        a = socketio.Client(reconnection=False)
        a.connect(URL, auth={"token": token("py-dflt")}, wait_timeout=5)
        until(lambda: a.transport() == "websocket")
        b = socketio.Client(reconnection=False)
        b.connect(URL, transports=["polling"], auth={"token": token("py-poll")}, wait_timeout=5)
        self.assertEqual(b.transport(), "polling")
        room = unique("py-transports")
        a.call("create_room", {"room": room}, timeout=5)
        self.assertIn("ok", b.call("join", {"room": room}, timeout=5))
        recs = [Recorder(c, "message") for c in (a, b)]
        for i in range(10):
            sender = a if i % 2 else b
            self.assertIn("ok", sender.call("publish", {"room": room, "data": i}, timeout=5))
        self.assertIn("ok", b.call("publish", {"room": room, "data": b"\x01\xff"}, timeout=5))
        for rec in recs:
            until(lambda: len(rec.seen["message"]) == 11)
            got = [m[0]["data"] for m in rec.seen["message"]]
            self.assertEqual(got, list(range(10)) + [b"\x01\xff"])
        a.disconnect()
        b.disconnect()

    def test_mixed_room_with_a_native_client(self):
        s = connect("py-mixed")
        room = unique("py-mixed")
        s.call("create_room", {"room": room}, timeout=5)
        s.call("join", {"room": room}, timeout=5)
        rec = Recorder(s, "message", "presence")
        ws = websocket.create_connection(
            URL.replace("http", "ws") + "/ws?token=" + token("native-peer"), timeout=5
        )
        frames = []

        def next_frame(pred):
            end = time.time() + 5
            while time.time() < end:
                for f in frames:
                    if pred(f):
                        frames.remove(f)
                        return f
                frames.append(json.loads(ws.recv()))
            raise AssertionError("no such frame")

        ws.send(json.dumps({"id": 1, "op": "join", "room": room}))
        next_frame(lambda f: f.get("id") == 1)
        until(lambda: any(p[0]["user"] == "native-peer" for p in rec.seen["presence"]))
        ws.send(json.dumps({"id": 2, "op": "publish", "room": room, "data": "from native"}))
        until(lambda: rec.seen["message"])
        self.assertEqual(rec.seen["message"][0][0]["data"], "from native")
        s.call("publish", {"room": room, "data": "from python"}, timeout=5)
        f = next_frame(lambda f: f.get("event") == "message" and f.get("data") == "from python")
        self.assertEqual((f["data"], f["from"]), ("from python", "py-mixed"))
        ws.close()
        s.disconnect()

    def test_recovery_after_the_connection_was_killed(self):
        room = unique("py-recover")
        pub = connect("py-publisher")
        pub.call("create_room", {"room": room}, timeout=5)
        c = RecoveringClient("py-recover", reconnection=True, reconnection_delay=0.1,
                             reconnection_delay_max=0.2, randomization_factor=0)
        seen = []
        c.on("message", lambda m, *rest: seen.append(m["data"]))
        c.connect(URL, transports=["websocket"], auth=c.auth, wait_timeout=5)
        self.assertTrue(c.pid, "the CONNECT reply carries a pid")
        self.assertFalse(c.recovered)
        c.call("join", {"room": room}, timeout=5)
        for i in (1, 2, 3):
            pub.call("publish", {"room": room, "data": i}, timeout=5)
        until(lambda: len(seen) == 3)
        # Kill the TCP connection under the client; it reconnects by itself.
        reconnected = threading.Event()
        c.on("connect", lambda: reconnected.set())
        c.eio.ws.sock.shutdown(socket.SHUT_RDWR)
        until(lambda: not c.connected, 5)
        for i in (4, 5, 6):
            pub.call("publish", {"room": room, "data": i}, timeout=5)
        self.assertTrue(reconnected.wait(10), "reconnected")
        self.assertTrue(c.recovered, "the server restored the socket")
        pub.call("publish", {"room": room, "data": 7}, timeout=5)
        until(lambda: len(seen) >= 7)
        self.assertEqual(seen, [1, 2, 3, 4, 5, 6, 7])
        c.disconnect()
        pub.disconnect()


if __name__ == "__main__":
    unittest.main(verbosity=2)
