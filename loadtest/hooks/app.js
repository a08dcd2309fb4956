// The app behind --connect-proxy and --publish-proxy for loadtest/hooks.sh: the contract of
// docs/protocol.md ("The app's proxies"), answered as fast as Node's http module allows, so
// that the figures are the gateway's cost of asking, not an app's own work.
//
//   node loadtest/hooks/app.js PORT [accept|rewrite]
//
// POST /connect: allows, with presence info (`{"info":{"n":1}}`), as the proxy test's app does.
// POST /publish: `accept` answers `{}`; `rewrite` answers `{"data": <the data it was sent>}`,
// the rewrite path end to end (the request parsed, the data re-serialized and re-validated by
// the gateway) while keeping the load generator's payload, which it checks on delivery.
// POST /hooks (--webhook-url): 204, events counted.
// GET /count: the requests answered so far, per path, as JSON.
"use strict";
const http = require("http");

const port = Number(process.argv[2]);
const mode = process.argv[3] || "accept";
if (!port || !["accept", "rewrite"].includes(mode)) {
  console.error("usage: app.js PORT [accept|rewrite]");
  process.exit(2);
}
const counts = { connect: 0, publish: 0, hooks: 0, events: 0, other: 0 };

function answer(res, status, body) {
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}

const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/count") return answer(res, 200, JSON.stringify(counts));
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    if (req.url === "/connect") {
      counts.connect++;
      return answer(res, 200, '{"info":{"n":1}}');
    }
    if (req.url === "/publish") {
      counts.publish++;
      if (mode === "accept") return answer(res, 200, "{}");
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString());
      } catch (e) {
        return answer(res, 400, '{"error":"bad json"}');
      }
      return answer(res, 200, JSON.stringify({ data: body.data }));
    }
    if (req.url === "/hooks") {
      counts.hooks++;
      try {
        counts.events += JSON.parse(Buffer.concat(chunks).toString()).length || 0;
      } catch (e) {
        // A body that is not an array is still acknowledged: the count is only a look.
      }
      res.writeHead(204);
      return res.end();
    }
    counts.other++;
    answer(res, 404, "{}");
  });
});
// The gateways keep their connections alive (idle ones closed after 30 s): outlive that.
server.keepAliveTimeout = 60_000;
server.headersTimeout = 65_000;
server.listen(port, "127.0.0.1");
