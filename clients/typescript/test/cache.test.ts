/**
 * The local cache against a real service (`localCache: true`), over the gRPC and the Connect
 * transport, with the cases of the Python client's tests (tests/e2e/test_cache_identity.py,
 * tests/integration/test_freshness.py): answers in-process while fresh; the stream stopped
 * (the service frozen by SIGSTOP); a half-open link (a proxy that stops forwarding, every
 * socket open); the database wiped (a new change log). In each, from `maxStalenessMs` after the
 * fault no answer is a stale local one: the client asks the service, or fails with an
 * EntitlementsError.
 */

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  type EntitlementsClient,
  EntitlementsError,
  type Transport,
  connectTransport,
  createEntitlementsClient,
} from "../src/index.js";
import { grpcTransport } from "../src/node.js";
import { Stack } from "./stack.js";
import { StallingProxy } from "./stall_proxy.js";

const BOUND_MS = 2_000; // maxStalenessMs, its minimum (two heartbeats)
const FEATURE = "dataExport"; // pro has it, free does not

let stack: Stack;

before(async () => {
  stack = await Stack.start();
});

after(async () => {
  await stack?.stop();
});

const transports: Record<string, { make: (base: string) => Transport; base: (s: Stack) => string }> = {
  grpc: { make: (base) => grpcTransport({ baseUrl: base }), base: (s) => s.info.grpc },
  connect: { make: (base) => connectTransport({ baseUrl: base }), base: (s) => s.info.http },
};

let subjects = 0;
function subject(what: string): string {
  subjects += 1;
  return `user_ts_cache_${what}_${process.pid}_${subjects}`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((ok) => setTimeout(ok, ms));
}

function localClient(transport: Transport): EntitlementsClient {
  return createEntitlementsClient(transport, {
    token: stack.info.token,
    localCache: true,
    maxStalenessMs: BOUND_MS,
    timeoutMs: 1_000,
  });
}

/** The client answers `expected` from its local cache (synced, the subject held). */
async function heldLocally(client: EntitlementsClient, who: string, expected: boolean): Promise<void> {
  assert.ok(await client.waitSynced(10_000), "never synced");
  const deadline = performance.now() + 5_000;
  for (;;) {
    assert.equal(await client.allowed(who, FEATURE), expected);
    if (client.cache?.fresh(who)) return;
    assert.ok(performance.now() < deadline, "never held locally");
    await sleep(50);
  }
}

/** Until `condition` holds; its time in ms; fails after `ms`. */
async function eventually(condition: () => boolean, ms: number): Promise<number> {
  const started = performance.now();
  while (!condition()) {
    assert.ok(performance.now() - started < ms, `not within ${ms} ms`);
    await sleep(20);
  }
  return performance.now() - started;
}

/** After the bound the client answers by the service, which cannot answer: it must fail. */
async function failsLoudly(client: EntitlementsClient, who: string): Promise<void> {
  await assert.rejects(client.allowed(who, FEATURE), (err: unknown) => {
    assert.ok(err instanceof EntitlementsError, String(err));
    assert.ok(["UNAVAILABLE", "DEADLINE_EXCEEDED"].includes(err.code), err.code);
    return true;
  });
}

for (const [name, { make, base }] of Object.entries(transports)) {
  describe(`${name}: local cache`, () => {
    test("answers in-process while fresh (no RPC), and follows a change", async () => {
      const who = subject(`local_${name}`);
      const client = localClient(make(base(stack)));
      try {
        await heldLocally(client, who, false);
        const raw = client.raw as unknown as Record<string, unknown>;
        const rpcs = { canUse: raw.canUse, getEntitlements: raw.getEntitlements };
        raw.canUse = raw.getEntitlements = () => {
          throw new Error("an RPC was made: the local cache should have answered");
        };
        const started = performance.now();
        for (let i = 0; i < 10_000; i++) assert.equal(await client.allowed(who, FEATURE), false);
        const perCheckUs = ((performance.now() - started) * 1000) / 10_000;
        console.log(`# ${name}: a local allowed() took ${perCheckUs.toFixed(2)} µs`);
        await assert.rejects(client.allowed(who, "teleport"), /unknown feature 'teleport'/);
        await stack.grant(who); // arrives by the stream
        await eventually(() => client.cache?.fresh(who)?.entitlements.plan === "pro", 3_000);
        assert.equal(await client.allowed(who, FEATURE), true);
        Object.assign(raw, rpcs);
      } finally {
        await client.close();
      }
    });

    test("the stream stopped (service frozen): no local answer past the bound", async () => {
      const who = subject(`stopped_${name}`);
      await stack.grant(who);
      const client = localClient(make(base(stack)));
      try {
        await heldLocally(client, who, true);
        await stack.pause();
        try {
          const took = await eventually(() => !client.synced, BOUND_MS + 1_000);
          assert.equal(client.cache?.fresh(who), undefined);
          await failsLoudly(client, who);
          console.log(`# ${name}: stopped stream noticed after ${took.toFixed(0)} ms`);
        } finally {
          await stack.resume();
        }
        assert.ok(await client.waitSynced(15_000), "not synced again after the service resumed");
        assert.equal(await client.allowed(who, FEATURE), true);
      } finally {
        await client.close();
      }
    });

    test("a half-open link (a proxy that stops forwarding): no local answer past the bound", async () => {
      const who = subject(`halfopen_${name}`);
      await stack.grant(who);
      const upstream = Number(new URL(base(stack)).port);
      const proxy = await StallingProxy.start(upstream);
      const client = localClient(make(`http://127.0.0.1:${proxy.port}`));
      try {
        await heldLocally(client, who, true);
        proxy.stall();
        const took = await eventually(() => !client.synced, BOUND_MS + 1_500);
        await failsLoudly(client, who);
        console.log(`# ${name}: half-open link noticed after ${took.toFixed(0)} ms`);
      } finally {
        await client.close();
        await proxy.close();
      }
    });

    test("a wiped database (new change log) drops the local answers", async () => {
      const who = subject(`wiped_${name}`);
      await stack.grant(who);
      const client = localClient(make(base(stack)));
      try {
        await heldLocally(client, who, true);
        const logId = client.cache?.logId;
        assert.ok(logId);
        await stack.wipe(); // returns once the service serves again: `who` is free there
        const back = performance.now();
        const wrong: number[] = [];
        while (performance.now() - back < BOUND_MS + 2_000) {
          const at = performance.now() - back;
          try {
            const answer = await client.allowed(who, FEATURE);
            if (at > BOUND_MS && answer !== false) wrong.push(Math.round(at));
          } catch (err) {
            assert.ok(err instanceof EntitlementsError, String(err)); // not an answer
          }
          await sleep(50);
        }
        assert.deepEqual(wrong, [], "stale local answers after the bound (ms after back)");
        assert.ok(await client.waitSynced(10_000));
        assert.equal(await client.allowed(who, FEATURE), false);
        assert.ok(client.cache?.logId && client.cache.logId !== logId, "the log id did not change");
      } finally {
        await client.close();
      }
    });
  });
}
