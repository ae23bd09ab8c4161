/**
 * The local cache's rules (src/cache.ts), the same cases as the Python client's
 * tests/unit/test_client_core.py: when a local answer may be given (heartbeats, lag, the
 * bound), which RPC answers may be cached, what a new change log or catalog drops, and expiry
 * on the server's clock. Fake clocks; no I/O.
 */

import assert from "node:assert/strict";
import { test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";

import { LocalCache, snapshotOf } from "../src/cache.js";
import { EntitlementsError } from "../src/errors.js";
import {
  GetEntitlementsResponseSchema,
  ListPlansResponseSchema,
  type WatchEntitlementsResponse,
  WatchEntitlementsResponseSchema,
} from "../src/gen/entitlements/v1/entitlement_service_pb.js";

class FakeClock {
  now = 100_000;
  readonly read = (): number => this.now;
}

function beat(
  version: bigint,
  more: { lagMs?: number; logId?: string; fingerprint?: string; serverMs?: number } = {},
): WatchEntitlementsResponse {
  return create(WatchEntitlementsResponseSchema, {
    subject: "",
    version,
    lag: durationFromMs(more.lagMs ?? 0),
    logId: more.logId ?? "",
    catalogFingerprint: more.fingerprint ?? "",
    ...(more.serverMs !== undefined ? { serverTime: timestampFromMs(more.serverMs) } : {}),
  });
}

function identified(version: bigint, logId = "log-a", fingerprint = "cat-1"): WatchEntitlementsResponse {
  return beat(version, { logId, fingerprint });
}

function change(subject: string, plan: string, version: bigint, validUntilMs?: number): WatchEntitlementsResponse {
  return create(WatchEntitlementsResponseSchema, {
    subject,
    version,
    entitlements: {
      subject,
      plan,
      version,
      features: plan === "pro" ? ["dataExport"] : [],
      ...(validUntilMs !== undefined ? { validUntil: timestampFromMs(validUntilMs) } : {}),
    },
  });
}

function snap(subject: string, plan: string, version: bigint) {
  return snapshotOf(create(GetEntitlementsResponseSchema, { subject, plan, version }));
}

test("local answers only within maxStalenessMs of the last heartbeat", () => {
  const clock = new FakeClock();
  const cache = new LocalCache(100, 5_000, clock.read);
  assert.equal(cache.synced, false); // nothing heard yet
  cache.apply(change("user_a", "pro", 7n));
  assert.equal(cache.synced, false);
  assert.equal(cache.fresh("user_a"), undefined); // no heartbeat yet
  cache.apply(beat(10n));
  assert.ok(cache.synced && cache.fresh("user_a"));
  clock.now += 4_900;
  assert.ok(cache.synced);
  clock.now += 200; // 5.1 s since the last heartbeat
  assert.equal(cache.synced, false);
  assert.equal(cache.fresh("user_a"), undefined);
  cache.apply(beat(11n));
  assert.ok(cache.synced);
});

test("the server's lag counts toward the bound", () => {
  const clock = new FakeClock();
  const cache = new LocalCache(100, 5_000, clock.read);
  cache.apply(beat(10n, { lagMs: 3_000 }));
  clock.now += 1_900;
  assert.ok(cache.synced);
  clock.now += 200;
  assert.equal(cache.synced, false);
});

test("an RPC answer older than the stream, or asked before it moved on, is not cached", () => {
  const cache = new LocalCache(100, 5_000, new FakeClock().read);
  cache.apply(beat(1n));
  cache.apply(change("user_a", "pro", 9n));
  cache.putFromRpc(snap("user_a", "free", 8n), cache.generation); // a lagging replica
  assert.equal(cache.fresh("user_a")?.entitlements.plan, "pro");
  const asked = cache.generation;
  cache.apply(beat(10n)); // the stream moved on meanwhile
  cache.putFromRpc(snap("user_b", "pro", 3n), asked);
  assert.equal(cache.fresh("user_b"), undefined);
  cache.putFromRpc(snap("user_b", "pro", 3n), cache.generation);
  assert.equal(cache.fresh("user_b")?.entitlements.plan, "pro");
});

test("a lost stream is not trusted until it beats again; silence is noticed", () => {
  const clock = new FakeClock();
  const cache = new LocalCache(100, 3_000, clock.read);
  cache.apply(change("user_a", "pro", 7n));
  cache.apply(beat(8n));
  cache.lost();
  assert.equal(cache.synced, false);
  assert.equal(cache.fresh("user_a"), undefined);
  cache.apply(beat(8n));
  assert.ok(cache.fresh("user_a"));
  cache.streamStarted();
  clock.now += 2_000;
  assert.equal(cache.silentTooLong(), false);
  clock.now += 1_500;
  assert.ok(cache.silentTooLong());
  assert.throws(() => new LocalCache(100, 500), (err: unknown) => {
    return err instanceof EntitlementsError && err.code === "INVALID_ARGUMENT" && /maxStalenessMs/.test(err.message);
  });
});

test("another change log drops every local answer", () => {
  const cache = new LocalCache(100, 5_000, new FakeClock().read);
  cache.apply(change("user_a", "pro", 7n));
  cache.apply(identified(10n));
  assert.ok(cache.fresh("user_a"));
  assert.equal(cache.watchRequest().logId, "log-a"); // a resumed stream names its log
  cache.apply(identified(3n, "log-b")); // the database was replaced
  assert.equal(cache.fresh("user_a"), undefined);
  assert.equal(cache.entries.size, 0);
  assert.deepEqual([cache.logId, cache.resumeVersion], ["log-b", 3n]);
  assert.ok(cache.synced); // the stream itself is of the new log: trusted again
});

test("another catalog drops every answer until the plans are read again", () => {
  const cache = new LocalCache(100, 5_000, new FakeClock().read);
  cache.plansLoaded(create(ListPlansResponseSchema, { features: ["x"], catalogFingerprint: "cat-1" }));
  cache.apply(change("user_a", "pro", 7n));
  cache.apply(identified(10n));
  assert.ok(cache.fresh("user_a"));
  const generation = cache.generation;
  cache.apply(identified(11n, "log-a", "cat-2"));
  assert.ok(cache.catalogStale && !cache.synced && cache.entries.size === 0);
  cache.putFromRpc(snap("user_a", "pro", 7n), generation); // asked before: not cached
  assert.equal(cache.entries.size, 0);
  cache.apply(identified(12n, "log-a", "cat-2"));
  assert.equal(cache.synced, false); // still stale until ListPlans is read again
  cache.plansLoaded(create(ListPlansResponseSchema, { features: ["x", "y"], catalogFingerprint: "cat-2" }));
  cache.apply(identified(13n, "log-a", "cat-2"));
  assert.ok(cache.synced && !cache.catalogStale);
  assert.deepEqual([...cache.features], ["x", "y"]);
});

test("a reset forgets the log, so the next one is not a change", () => {
  const cache = new LocalCache(100, 5_000, new FakeClock().read);
  cache.apply(identified(10n));
  cache.reset();
  assert.deepEqual(cache.watchRequest(), {});
  cache.apply(change("user_a", "pro", 4n));
  cache.apply(identified(5n, "log-b"));
  assert.ok(cache.fresh("user_a"));
});

for (const skewS of [-120, -1, 0, 1, 120]) {
  test(`valid_until is judged on the server's clock (this machine ${skewS} s off)`, () => {
    const serverMs = 1_800_000_000_000;
    let wall = serverMs + skewS * 1000;
    const cache = new LocalCache(100, 5_000, new FakeClock().read, () => wall);
    cache.apply(change("user_a", "pro", 7n, serverMs + 1_000));
    cache.apply(beat(10n, { serverMs }));
    assert.ok(cache.fresh("user_a")); // 1 s before the end, on the server's clock
    wall += 999;
    assert.ok(cache.fresh("user_a"));
    wall += 2; // the server's clock has passed valid_until
    assert.equal(cache.fresh("user_a"), undefined);
  });
}

test("decide: a feature of the snapshot, one the catalog has, an unknown one", () => {
  const cache = new LocalCache(100, 5_000, new FakeClock().read);
  cache.plansLoaded(create(ListPlansResponseSchema, { features: ["dataExport", "aiInsights"] }));
  const pro = snapshotOf(create(GetEntitlementsResponseSchema, { subject: "u", plan: "pro", features: ["dataExport"] }));
  assert.equal(cache.decide(pro, "dataExport"), true);
  assert.equal(cache.decide(pro, "aiInsights"), false);
  assert.throws(() => cache.decide(pro, "teleport"), (err: unknown) => {
    return err instanceof EntitlementsError && err.code === "INVALID_ARGUMENT" && err.message === "unknown feature 'teleport'";
  });
});

test("bounded: the least recently stored subject goes first", () => {
  const cache = new LocalCache(2, 5_000, new FakeClock().read);
  cache.apply(beat(1n));
  for (const [i, who] of ["a", "b", "c"].entries()) cache.apply(change(who, "pro", BigInt(i + 2)));
  assert.deepEqual([...cache.entries.keys()], ["b", "c"]);
});
