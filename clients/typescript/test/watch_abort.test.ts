/**
 * `watch()` stops when its signal aborts, on both transports, also after a garbage collection:
 * on Node 20 (undici) fetch followed the caller's signal through a weak reference, so once
 * collected an aborted Connect watch kept reading heartbeats forever. The abort comes while
 * the consumer waits for the next event (mid-read), right after `global.gc()` (the test
 * script runs node with --expose-gc); the iteration must end within 400 ms — long before the
 * next heartbeat (one a second) — with no further event and no error.
 */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { type Transport, connectTransport, createEntitlementsClient } from "../src/index.js";
import { grpcTransport } from "../src/node.js";
import { Stack } from "./stack.js";

let stack: Stack;

before(async () => {
  stack = await Stack.start();
});

after(async () => {
  await stack?.stop();
});

const gc = (globalThis as { gc?: () => void }).gc;

const transports: Record<string, (s: Stack) => Transport> = {
  "connect (fetch, JSON)": (s) => connectTransport({ baseUrl: s.info.http }),
  "connect (fetch, binary)": (s) => connectTransport({ baseUrl: s.info.http, binary: true }),
  "grpc (connect-node)": (s) => grpcTransport({ baseUrl: s.info.grpc }),
};

for (const [name, makeTransport] of Object.entries(transports)) {
  test(`${name}: an aborted watch ends at once, after a garbage collection too`, async () => {
    assert.equal(typeof gc, "function", "run node with --expose-gc (npm test does)");
    const client = createEntitlementsClient(makeTransport(stack), { token: stack.info.token });
    for (let round = 0; round < 2; round++) {
      const abort = new AbortController();
      let events = 0;
      let abortedAt = 0;
      const ended = (async () => {
        for await (const event of client.watch({ signal: abort.signal })) {
          events += 1;
          assert.equal(event.kind, "heartbeat");
          if (events === 2) {
            // Mid-read: the consumer waits for the next heartbeat, ~1 s away.
            setTimeout(() => {
              gc?.();
              gc?.();
              abortedAt = performance.now();
              abort.abort();
            }, 20);
          }
        }
        return performance.now() - abortedAt;
      })();
      const timeout = new Promise<never>((_, fail) =>
        setTimeout(() => fail(new Error("the aborted watch is still running after 5 s")), 5_000),
      );
      const tookMs = await Promise.race([ended, timeout]);
      assert.equal(events, 2, "an event arrived after the abort");
      assert.ok(abortedAt > 0 && tookMs < 400, `ended ${tookMs.toFixed(0)} ms after the abort`);
    }
  });
}

test("a watch whose signal is already aborted yields nothing", async () => {
  const client = createEntitlementsClient(connectTransport({ baseUrl: stack.info.http }), {
    token: stack.info.token,
  });
  const events = [];
  for await (const event of client.watch({ signal: AbortSignal.abort() })) events.push(event);
  assert.deepEqual(events, []);
});
