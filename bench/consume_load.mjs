// Consume load generator for make bench (bench/consume.py starts it).
//
// h2load, which measures CanUse, sends one fixed body, and every Consume needs its own
// idempotency key. This is the same HTTP/2 engine (Node's http2 is nghttp2, as h2load is) and
// the same shape (connections x streams in flight), with a fresh key per call: the load
// generator stays cheap beside the service on a 2-core machine, as h2load does.
//
// Usage: node consume_load.mjs HOST:PORT CALLS CONNECTIONS STREAMS METER KEYPREFIX SUBJECT...
// Prints one JSON object: calls, seconds, latencies' p50/p99 (ms), allowed calls per subject,
// and failures (non-OK grpc-status).
//
// CONSUME_RATE=N (calls/s) makes it open-loop, as h2load --rps does and as a latency target at
// a given rate means: call i is due at i/N seconds, sent then if fewer than CONNECTIONS x STREAMS
// are in flight, and its latency counts from when it was due, so a server that falls behind
// shows its queue in the tail (no coordinated omission).
import http2 from "node:http2";

const [target, callsArg, connArg, streamsArg, meter, prefix, ...subjects] = process.argv.slice(2);
const calls = Number(callsArg);
const connections = Number(connArg);
const streams = Number(streamsArg);

function varint(n) {
  const out = [];
  let v = BigInt(n);
  while (v > 127n) {
    out.push(Number((v & 127n) | 128n));
    v >>= 7n;
  }
  out.push(Number(v));
  return Buffer.from(out);
}

function field(number, value) {
  if (typeof value === "string") {
    const bytes = Buffer.from(value, "utf8");
    return Buffer.concat([varint((number << 3) | 2), varint(bytes.length), bytes]);
  }
  return Buffer.concat([varint(number << 3), varint(value)]);
}

function request(subject, key) {
  const message = Buffer.concat([
    field(1, subject),
    field(2, meter),
    field(3, 1),
    field(4, key),
  ]);
  const frame = Buffer.alloc(5);
  frame.writeUInt32BE(message.length, 1);
  return Buffer.concat([frame, message]);
}

// ConsumeResponse field 1 (allowed) is the first byte pair when true: tag 0x08, value 1.
function allowed(body) {
  return body.length > 6 && body[5] === 0x08 && body[6] === 1;
}

const sessions = Array.from({ length: connections }, () => http2.connect(`http://${target}`));
const latencies = [];
const allowedBy = {};
let failures = 0;
let next = 0;

function call(session, due) {
  return new Promise((resolve) => {
    const i = next++;
    const subject = subjects[i % subjects.length];
    const started = due ?? process.hrtime.bigint();
    const stream = session.request({
      ":method": "POST",
      ":path": "/entitlements.v1.UsageService/Consume",
      "content-type": "application/grpc",
      te: "trailers",
    });
    const chunks = [];
    let status = null;
    stream.on("trailers", (t) => {
      status = t["grpc-status"];
    });
    stream.on("response", (h) => {
      if (h["grpc-status"] !== undefined) status = h["grpc-status"];
    });
    stream.on("data", (c) => chunks.push(c));
    stream.on("close", () => {
      latencies.push(Number(process.hrtime.bigint() - started) / 1e6);
      if (status !== "0") failures++;
      else if (allowed(Buffer.concat(chunks))) allowedBy[subject] = (allowedBy[subject] ?? 0) + 1;
      resolve();
    });
    stream.end(request(subject, `${prefix}-${i}`));
  });
}

async function lane(session) {
  while (next < calls) await call(session);
}

// Open loop: every millisecond, send what is due, at most `connections x streams` in flight.
async function paced(rate) {
  const cap = connections * streams;
  let inFlight = 0;
  let sent = 0;
  const start = process.hrtime.bigint();
  const gap = 1e9 / rate;
  await new Promise((done) => {
    const tick = () => {
      const now = process.hrtime.bigint();
      while (sent < calls && inFlight < cap) {
        const due = start + BigInt(Math.round(sent * gap));
        if (due > now) break;
        inFlight++;
        call(sessions[sent++ % connections], due).then(() => {
          inFlight--;
          if (sent === calls && inFlight === 0) done();
        });
      }
      if (sent < calls) setTimeout(tick, 1);
    };
    tick();
  });
}

const rate = Number(process.env.CONSUME_RATE ?? "0");
const started = process.hrtime.bigint();
if (rate > 0) await paced(rate);
else await Promise.all(sessions.flatMap((s) => Array.from({ length: streams }, () => lane(s))));
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
for (const s of sessions) s.close();
latencies.sort((a, b) => a - b);
const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
process.stdout.write(
  JSON.stringify({
    calls,
    seconds,
    p50_ms: at(0.5),
    p99_ms: at(0.99),
    allowed: allowedBy,
    failures,
  }),
);
