/**
 * End to end: the wrapper against a real service (started by the test), over the Connect
 * transport (fetch; JSON and binary) and the gRPC transport (connect-node), with the same
 * expectations for each.
 */

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  ConnectError,
  EntitlementsError,
  type EntitlementsClient,
  type ErrorCode,
  InvalidArgument,
  type Transport,
  Unauthenticated,
  Unavailable,
  connectTransport,
  createEntitlementsClient,
} from "../src/index.js";
import { grpcTransport } from "../src/node.js";
import { Stack } from "./stack.js";

let stack: Stack;

before(async () => {
  stack = await Stack.start();
});

after(async () => {
  await stack?.stop();
});

const transports: Record<string, (s: Stack) => Transport> = {
  "connect (fetch, JSON)": (s) => connectTransport({ baseUrl: s.info.http }),
  "connect (fetch, binary)": (s) => connectTransport({ baseUrl: s.info.http, binary: true }),
  "grpc (connect-node)": (s) => grpcTransport({ baseUrl: s.info.grpc }),
};

let keys = 0;
/** A fresh idempotency key. */
function key(): string {
  keys += 1;
  return `ts-key-${process.pid}-${keys}`;
}

function slug(name: string): string {
  return name.replace(/\W+/g, "_");
}

/** The call fails with an EntitlementsError of `code`, an instance of `Class`, whose cause
 * is the transport's ConnectError. */
async function rejectsWith(
  promise: Promise<unknown>,
  code: ErrorCode,
  Class: new (...args: never[]) => EntitlementsError = EntitlementsError,
): Promise<EntitlementsError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof EntitlementsError, `not an EntitlementsError: ${String(err)}`);
    assert.ok(err instanceof Class, `not a ${Class.name}: ${err.name}`);
    assert.equal(err.code, code, err.message);
    assert.equal(err.name, Class === EntitlementsError ? err.constructor.name : Class.name);
    assert.ok(err.cause instanceof ConnectError);
    return err;
  }
  assert.fail(`expected ${code}`);
}

/** A port nothing listens on (bound, then closed). */
async function closedPort(): Promise<number> {
  const { createServer } = await import("node:net");
  const server = createServer();
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  const address = server.address();
  await new Promise((ok) => server.close(ok));
  assert.ok(address && typeof address === "object");
  return address.port;
}

const unreachable: Record<string, (port: number) => Transport> = {
  "connect (fetch, JSON)": (port) => connectTransport({ baseUrl: `http://127.0.0.1:${port}` }),
  "connect (fetch, binary)": (port) =>
    connectTransport({ baseUrl: `http://127.0.0.1:${port}`, binary: true }),
  "grpc (connect-node)": (port) => grpcTransport({ baseUrl: `http://127.0.0.1:${port}` }),
};

for (const [name, makeTransport] of Object.entries(transports)) {
  describe(name, () => {
    let client: EntitlementsClient;
    before(() => {
      client = createEntitlementsClient(makeTransport(stack), { token: stack.info.token });
    });

    test("canUse: a paid subject, with the reason's name and a Date", async () => {
      const answer = await client.canUse(stack.info.paid, "dataExport");
      assert.equal(answer.allowed, true);
      assert.equal(answer.plan, "pro");
      assert.equal(answer.reason, "REASON_GRANTED_BY_OVERRIDE");
      assert.ok(answer.validUntil instanceof Date);
      assert.ok(answer.validUntil.getTime() > Date.now());
    });

    test("canUse: a subject never seen is on the free plan", async () => {
      const answer = await client.canUse(stack.info.free, "dataExport");
      assert.deepEqual(answer, {
        allowed: false,
        plan: "free",
        reason: "REASON_FEATURE_NOT_IN_PLAN",
        validUntil: null,
      });
    });

    test("getLimits: int64 as bigint", async () => {
      const free = await client.getLimits(stack.info.free);
      assert.equal(free.plan, "free");
      assert.deepEqual(free.limits.maxHabits, { value: 10n, unlimited: false });
      assert.deepEqual(free.limits.maxGoals, { value: 3n, unlimited: false });
      const paid = await client.getLimits(stack.info.paid);
      assert.equal(paid.limits.maxHabits?.unlimited, true);
      // The metered limit: its period, and its usage as the service keeps it.
      assert.deepEqual(free.limits.aiInsightsPerMonth, { value: 20n, unlimited: false });
      assert.deepEqual(
        free.metered.map((m) => [m.limit, m.periodStart instanceof Date, m.resetsAt instanceof Date]),
        [["aiInsightsPerMonth", true, true]],
      );
      assert.deepEqual(free.metered[0]?.usage, { used: 0n, reserved: 0n, remaining: 20n });
    });

    test("checkLimit", async () => {
      const fits = await client.checkLimit(stack.info.free, "maxHabits", 9n, 1n);
      assert.deepEqual(
        { allowed: fits.allowed, limit: fits.limit, remaining: fits.remaining },
        { allowed: true, limit: 10n, remaining: 1n },
      );
      const over = await client.checkLimit(stack.info.free, "maxHabits", 10);
      assert.equal(over.allowed, false);
      assert.equal(over.remaining, 0n);
    });

    test("batchCanUse keeps the request order", async () => {
      const answers = await client.batchCanUse([
        { subject: stack.info.paid, feature: "advancedAnalytics" },
        { subject: stack.info.free, feature: "advancedAnalytics" },
        { subject: stack.info.free, feature: "aiInsights" },
      ]);
      assert.deepEqual(
        answers.map((a) => [a.allowed, a.plan]),
        [
          [true, "pro"],
          [false, "free"],
          [true, "free"],
        ],
      );
    });

    test("getEntitlements: the status by name, the version as bigint", async () => {
      const e = await client.getEntitlements(stack.info.paid);
      assert.equal(e.status, "ENTITLEMENT_STATUS_GRANTED");
      assert.equal(typeof e.version, "bigint");
      assert.ok(e.version > 0n);
      assert.ok(e.features.includes("dataExport"));
      assert.deepEqual([e.trial, e.trialEndsAt, e.overrides], [false, null, []]);
      assert.deepEqual(
        e.metered.map((m) => [m.limit, m.usage?.remaining]),
        [["aiInsightsPerMonth", 500n]],
      );
    });

    test("an unknown feature is InvalidArgument, naming it", async () => {
      const err = await rejectsWith(
        client.canUse(stack.info.free, "teleport"),
        "INVALID_ARGUMENT",
        InvalidArgument,
      );
      assert.equal(err.message, "unknown feature 'teleport'");
      await rejectsWith(client.allowed(stack.info.free, "teleport"), "INVALID_ARGUMENT");
    });

    test("without the read token: Unauthenticated", async () => {
      const anonymous = createEntitlementsClient(makeTransport(stack));
      await rejectsWith(
        anonymous.canUse(stack.info.free, "aiInsights"),
        "UNAUTHENTICATED",
        Unauthenticated,
      );
    });

    test("an unreachable service is Unavailable (as in Python), not Unknown", async () => {
      const make = unreachable[name];
      assert.ok(make);
      const nowhere = createEntitlementsClient(make(await closedPort()));
      await rejectsWith(nowhere.canUse(stack.info.free, "aiInsights"), "UNAVAILABLE", Unavailable);
      await rejectsWith(nowhere.getUsage(stack.info.free), "UNAVAILABLE", Unavailable);
    });

    test("consume: allowed up to the free limit (20), refused after, nothing recorded", async () => {
      const subject = `user_ts_consume_${slug(name)}`;
      const first = await client.consume(subject, "aiInsightsPerMonth", 15, key());
      assert.deepEqual(
        [first.allowed, first.used, first.remaining, first.limitValue, first.duplicate],
        [true, 15n, 5n, 20n, false],
      );
      assert.ok(first.resetsAt instanceof Date && first.resetsAt.getTime() > Date.now());
      const over = await client.consume(subject, "aiInsightsPerMonth", 6n, key());
      assert.deepEqual([over.allowed, over.used, over.remaining], [false, 15n, 5n]);
      const last = await client.consume(subject, "aiInsightsPerMonth", 5, key());
      assert.deepEqual([last.allowed, last.used, last.remaining], [true, 20n, 0n]);
      const refused = await client.consume(subject, "aiInsightsPerMonth", 1, key());
      assert.deepEqual([refused.allowed, refused.used, refused.remaining], [false, 20n, 0n]);
    });

    test("consume: a retried idempotency key is the first answer, counted once", async () => {
      const subject = `user_ts_retry_${slug(name)}`;
      const k = key();
      const first = await client.consume(subject, "aiInsightsPerMonth", 3, k);
      const again = await client.consume(subject, "aiInsightsPerMonth", 3, k);
      assert.deepEqual(again, { ...first, duplicate: true });
      const usage = await client.getUsage(subject);
      assert.deepEqual(
        usage.map((u) => [u.limit, u.used, u.reserved, u.remaining, u.limitValue, u.unlimited]),
        [["aiInsightsPerMonth", 3n, 0n, 17n, 20n, false]],
      );
      assert.ok(usage[0]?.periodStart instanceof Date);
    });

    test("reserve, commit, release and reportUsage", async () => {
      const subject = `user_ts_reserve_${slug(name)}`;
      const held = await client.reserve(subject, "aiInsightsPerMonth", 12, key(), 60);
      assert.equal(held.allowed, true);
      assert.ok(held.reservationId && held.expiresAt instanceof Date);
      assert.equal(held.remaining, 8n);
      const refused = await client.reserve(subject, "aiInsightsPerMonth", 9, key());
      assert.deepEqual([refused.allowed, refused.reservationId], [false, null]);
      assert.deepEqual(await client.commit(held.reservationId, 7), {
        used: 7n,
        remaining: 13n,
        unlimited: false,
      });
      const second = await client.reserve(subject, "aiInsightsPerMonth", 13, key());
      assert.ok(second.reservationId);
      assert.equal((await client.release(second.reservationId)).remaining, 13n);
      const over = await client.reportUsage(subject, "aiInsightsPerMonth", { delta: 25 }, key());
      assert.deepEqual([over.used, over.remaining], [32n, 0n]);
      const set = await client.reportUsage(subject, "aiInsightsPerMonth", { set: 4n }, key());
      assert.deepEqual([set.used, set.remaining], [4n, 16n]);
    });

    test("usage errors: a limit that is not metered, a missing token", async () => {
      const err = await rejectsWith(
        client.consume(stack.info.free, "maxHabits", 1, key()),
        "INVALID_ARGUMENT",
      );
      assert.match(err.message, /maxHabits/);
      await rejectsWith(
        client.consume(stack.info.free, "aiInsightsPerMonth", 0, key()),
        "INVALID_ARGUMENT",
      );
      const anonymous = createEntitlementsClient(makeTransport(stack));
      await rejectsWith(
        anonymous.consume(stack.info.free, "aiInsightsPerMonth", 1, key()),
        "UNAUTHENTICATED",
      );
      await rejectsWith(anonymous.getUsage(stack.info.free), "UNAUTHENTICATED");
    });

    test("watch: a heartbeat, then the change of a subject granted meanwhile", async () => {
      const subject = `user_ts_watch_${name.replace(/\W+/g, "_")}`;
      const abort = new AbortController();
      const events = client.watch({ subjects: [subject], signal: abort.signal })[
        Symbol.asyncIterator
      ]();
      try {
        const first = await events.next();
        assert.equal(first.done, false);
        assert.equal(first.value.kind, "heartbeat");
        assert.equal(typeof first.value.version, "bigint");
        await stack.grant(subject);
        for (;;) {
          const next = await events.next();
          assert.equal(next.done, false);
          if (next.value.kind === "change") {
            assert.equal(next.value.subject, subject);
            assert.equal(next.value.entitlements.plan, "pro");
            assert.equal(next.value.entitlements.status, "ENTITLEMENT_STATUS_GRANTED");
            break;
          }
        }
      } finally {
        abort.abort();
        await events.return?.(undefined).catch(() => undefined);
      }
    });
  });
}
