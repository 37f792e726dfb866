// A fast fake APNs for benchmarks, on Node's built-in http2 module (no npm packages).
//
// The Python fake (tests/delivery/fake_apns.py) stays for the behaviour tests: it records every
// request, but tops out near 2,000 req/s, below what a lean sender reaches. This one keeps only
// counters, so its own ceiling (measured with h2load in bench/H2_SENDERS.md) is far above it.
//
//   node bench/fake_apns_fast.mjs [--port 0] [--tls --cert C --key K]
//        [--unregistered-prefix dead] [--bad-prefix bad0] [--max-streams 1000]
//        [--goaway-after N]
//
// Cleartext it speaks HTTP/2 with prior knowledge (h2c), as the Python fake does; with --tls it
// does TLS with ALPN h2 only, as Apple does. It listens on 127.0.0.1 only. The first line on
// stdout is its URL; then it answers one line per command read on stdin:
//   stats  -> {"requests":..,"statuses":{"200":..},"connections":..,"streams":..,
//              "cpu_seconds":..,"uptime_seconds":..}
//   reset  -> the same stats, then zeroes the counters (CPU time is never reset: diff it)
//   quit   -> exits (so does the end of stdin)
//
// Answers, like APNs: POST /3/device/<token> gets 200 with an apns-id header (the request's, or
// a new one). A token starting with --unregistered-prefix gets 410 {"reason":"Unregistered",
// "timestamp":ms}; one starting with --bad-prefix gets 400 {"reason":"BadDeviceToken"}; a body
// over 4096 bytes gets 413 PayloadTooLarge; no apns-topic gets 400 MissingTopic; another path
// 404 BadPath; another method 405 MethodNotAllowed. The body is always read to its end first
// (so flow control is exercised). --goaway-after N sends GOAWAY on a connection after its N-th
// request has been answered (Apple does that too), so clients must reconnect.

import http2 from "node:http2";
import crypto from "node:crypto";
import fs from "node:fs";
import readline from "node:readline";

const args = {
  port: 0,
  tls: false,
  cert: null,
  key: null,
  unregisteredPrefix: null,
  badPrefix: null,
  maxStreams: 1000, // what APNs advertises once a provider token is accepted
  goawayAfter: 0,
};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const name = argv[i];
  const value = () => {
    if (i + 1 >= argv.length) fail(`${name} needs a value`);
    return argv[++i];
  };
  if (name === "--port") args.port = Number(value());
  else if (name === "--tls") args.tls = true;
  else if (name === "--cert") args.cert = value();
  else if (name === "--key") args.key = value();
  else if (name === "--unregistered-prefix") args.unregisteredPrefix = value();
  else if (name === "--bad-prefix") args.badPrefix = value();
  else if (name === "--max-streams") args.maxStreams = Number(value());
  else if (name === "--goaway-after") args.goawayAfter = Number(value());
  else fail(`unknown option ${name}`);
}
if (args.tls && !(args.cert && args.key)) fail("--tls needs --cert and --key");

function fail(message) {
  process.stderr.write(`fake_apns_fast: ${message}\n`);
  process.exit(2);
}

const PATH_PREFIX = "/3/device/";
const MAX_BODY = 4096; // Apple's limit for a regular push
const counters = { requests: 0, statuses: {}, connections: 0, streams: 0 };
const started = process.hrtime.bigint();

function reasonBody(reason, withTimestamp) {
  const body = withTimestamp ? { reason, timestamp: Date.now() } : { reason };
  return Buffer.from(JSON.stringify(body));
}

function answer(stream, status, apnsId, reason, withTimestamp = false) {
  counters.requests++;
  counters.statuses[status] = (counters.statuses[status] || 0) + 1;
  if (stream.destroyed || stream.closed) return;
  if (status === 200) {
    stream.respond({ ":status": 200, "apns-id": apnsId }, { endStream: true });
    return;
  }
  const body = reasonBody(reason, withTimestamp);
  stream.respond({
    ":status": status,
    "apns-id": apnsId,
    "content-type": "application/json",
    "content-length": body.length,
  });
  stream.end(body);
}

function onStream(stream, headers) {
  counters.streams++;
  const session = stream.session;
  session.lastStreamId = Math.max(session.lastStreamId, stream.id);
  let size = 0;
  // Only the length matters: the body is read to its end (granting flow control) and dropped.
  stream.on("data", (chunk) => {
    size += chunk.length;
  });
  stream.on("error", () => {}); // a client reset is its business
  stream.on("end", () => {
    const path = headers[":path"] || "";
    const apnsId = headers["apns-id"] || crypto.randomUUID().toUpperCase();
    if (headers[":method"] !== "POST") {
      answer(stream, 405, apnsId, "MethodNotAllowed");
    } else if (!path.startsWith(PATH_PREFIX) || path.length === PATH_PREFIX.length) {
      answer(stream, 404, apnsId, "BadPath");
    } else if (size > MAX_BODY) {
      answer(stream, 413, apnsId, "PayloadTooLarge");
    } else if (!headers["apns-topic"]) {
      answer(stream, 400, apnsId, "MissingTopic");
    } else {
      const token = path.slice(PATH_PREFIX.length);
      if (args.unregisteredPrefix && token.startsWith(args.unregisteredPrefix)) {
        answer(stream, 410, apnsId, "Unregistered", true);
      } else if (args.badPrefix && token.startsWith(args.badPrefix)) {
        answer(stream, 400, apnsId, "BadDeviceToken");
      } else {
        answer(stream, 200, apnsId);
      }
    }
    if (args.goawayAfter > 0 && ++session.answered === args.goawayAfter) {
      // NO_ERROR with the last stream id seen: streams up to it are still answered, any above
      // it were never processed (the client must retry them); close() waits for the open ones.
      session.goaway(http2.constants.NGHTTP2_NO_ERROR, session.lastStreamId);
      session.close();
    }
  });
}

const settings = { maxConcurrentStreams: args.maxStreams };
const server = args.tls
  ? http2.createSecureServer({
      cert: fs.readFileSync(args.cert),
      key: fs.readFileSync(args.key),
      allowHTTP1: false,
      ALPNProtocols: ["h2"],
      settings,
    })
  : http2.createServer({ settings });
server.on("session", (session) => {
  counters.connections++;
  session.answered = 0;
  session.lastStreamId = 0;
  session.on("error", () => {});
});
server.on("stream", onStream);
server.on("sessionError", () => {});

function stats() {
  const usage = process.cpuUsage();
  return {
    ...counters,
    statuses: { ...counters.statuses },
    cpu_seconds: (usage.user + usage.system) / 1e6,
    uptime_seconds: Number(process.hrtime.bigint() - started) / 1e9,
  };
}

server.listen(args.port, "127.0.0.1", () => {
  const { port } = server.address();
  process.stdout.write(`${args.tls ? "https" : "http"}://127.0.0.1:${port}\n`);
});

const commands = readline.createInterface({ input: process.stdin });
commands.on("line", (line) => {
  const command = line.trim();
  if (command === "stats") {
    process.stdout.write(JSON.stringify(stats()) + "\n");
  } else if (command === "reset") {
    process.stdout.write(JSON.stringify(stats()) + "\n");
    Object.assign(counters, { requests: 0, statuses: {}, connections: 0, streams: 0 });
  } else if (command === "quit") {
    process.exit(0);
  } else if (command) {
    process.stdout.write(JSON.stringify({ error: `unknown command ${command}` }) + "\n");
  }
});
commands.on("close", () => process.exit(0));
