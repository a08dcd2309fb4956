// Connect latency through two gateways, interleaved (A, B, A, B, …) so that a shared machine's
// drift hits both alike: loadtest/hooks.sh runs it with A a gateway without --connect-proxy
// and B one with it. Needs Node 20's WebSocket (`node --experimental-websocket`).
//
//   node --experimental-websocket loadtest/hooks/connect.js PROTOCOL N SECRET URL_A URL_B
//
// PROTOCOL: native (`/ws?format=json&token=…`, timed to the `welcome` frame) or socketio
// (`/socket.io/?EIO=4&transport=websocket`, CONNECT with `{token}`, timed to the namespace's
// CONNECT answer `40{…}`). Each connection is opened, timed, closed, and its close awaited
// before the next starts. Prints one JSON line: per gateway the median, p90, p99 and max (ms).
"use strict";
const crypto = require("crypto");

const [protocol, nStr, secret, urlA, urlB] = process.argv.slice(2);
const n = Number(nStr);
if (!["native", "socketio"].includes(protocol) || !n || !secret || !urlA || !urlB) {
  console.error("usage: connect.js native|socketio N SECRET URL_A URL_B");
  process.exit(2);
}

const b64url = (b) => Buffer.from(b).toString("base64url");
function mint(sub) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub, exp: Math.floor(Date.now() / 1000) + 86400 }));
  const sig = crypto.createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

// Opens one connection and resolves with the ms until it is admitted; rejects on a close or
// an error first.
function once(base, user) {
  const token = mint(user);
  return new Promise((resolve, reject) => {
    const began = process.hrtime.bigint();
    const url = protocol === "native"
      ? `${base}/ws?format=json&token=${token}`
      : `${base}/socket.io/?EIO=4&transport=websocket`;
    const ws = new WebSocket(url);
    let done = false;
    const finish = (err, ms) => {
      if (done) return;
      done = true;
      ws.onclose = () => (err ? reject(err) : resolve(ms));
      ws.close();
    };
    ws.onmessage = (ev) => {
      const text = typeof ev.data === "string" ? ev.data : "";
      const ms = Number(process.hrtime.bigint() - began) / 1e6;
      if (protocol === "native") {
        if (text.includes('"event":"welcome"')) finish(null, ms);
        else finish(new Error(`first frame: ${text}`));
      } else if (text.startsWith("0{")) {
        ws.send(`40${JSON.stringify({ token })}`);
      } else if (text.startsWith("40")) {
        finish(null, ms);
      } else if (text.startsWith("44")) {
        finish(new Error(`connect_error: ${text}`));
      }
    };
    ws.onerror = (e) => { if (!done) { done = true; reject(new Error(`error: ${e.message || e}`)); } };
    ws.onclose = (e) => { if (!done) { done = true; reject(new Error(`closed ${e.code} ${e.reason}`)); } };
  });
}

function stats(t) {
  const s = [...t].sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return { n: s.length, median_ms: q(0.5), p90_ms: q(0.9), p99_ms: q(0.99), max_ms: s[s.length - 1] };
}

(async () => {
  const times = [[], []];
  const errors = [0, 0];
  // A few unmeasured connects each: the gateways' pools (Redis, the app's keep-alive) warm.
  for (let i = 0; i < 20; i++) for (const u of [urlA, urlB]) await once(u, `warm-${i}`).catch(() => {});
  for (let i = 0; i < n; i++) {
    // Alternate which goes first, so neither always follows the other's close.
    const order = i % 2 ? [1, 0] : [0, 1];
    for (const k of order) {
      try {
        times[k].push(await once(k ? urlB : urlA, `u-${k}-${i}`));
      } catch (e) {
        errors[k]++;
        if (errors[k] <= 3) console.error(`${k ? "B" : "A"}: ${e.message}`);
      }
    }
  }
  console.log(JSON.stringify({ protocol, a: { ...stats(times[0]), errors: errors[0] }, b: { ...stats(times[1]), errors: errors[1] } }));
})();
