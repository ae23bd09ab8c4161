/**
 * `@plan-entitlements/client`: a small typed wrapper over the generated Connect-ES clients for
 * `entitlements.v1.EntitlementService` and `entitlements.v1.UsageService` (metered limits:
 * usage.ts). It works over any Connect-ES transport:
 *
 * - `connectTransport()` (transport.ts): the Connect protocol over plain `fetch` (browsers,
 *   Next.js, edge runtimes, Node ≥ 20), to the service's `ENTITLEMENTS_HTTP_LISTEN` address;
 * - `grpcTransport()` (`@plan-entitlements/client/node`): gRPC over HTTP/2 with
 *   `@connectrpc/connect-node`, to `ENTITLEMENTS_LISTEN`, TLS and mutual TLS included.
 *
 * Answers are plain objects (types.ts): int64 values are `bigint`, enums are their proto names
 * (`"REASON_FEATURE_IN_PLAN"`), timestamps are `Date` or `null`. Errors are `EntitlementsError`s
 * (errors.ts), named as the Python client's exceptions (`Unavailable`, `InvalidArgument`, …).
 *
 * With `localCache: true` the client follows WatchEntitlements (follow.ts) and answers
 * `allowed()` and `snapshot()` in-process while the cache is fresh (cache.ts: the Python
 * client's staleness contract); every other method always asks the service.
 */

import { type CallOptions, type Client, type Transport, createClient } from "@connectrpc/connect";

import {
  DEFAULT_MAX_CACHED_SUBJECTS,
  DEFAULT_MAX_STALENESS_MS,
  LocalCache,
  type Snapshot,
  snapshotOf,
} from "./cache.js";
import { canUseResult, date, entitlements, headerRecord, limitsRecord, meteredLimit } from "./convert.js";
import { entitlementsError, guarded } from "./errors.js";
import { Follower } from "./follow.js";
import { EntitlementService } from "./gen/entitlements/v1/entitlement_service_pb.js";
import { UsageService } from "./gen/entitlements/v1/usage_service_pb.js";
import type {
  CanUseResult,
  CheckLimitResult,
  Entitlements,
  FeatureCheck,
  LimitsResult,
  WatchEvent,
  WatchOptions,
} from "./types.js";
import { type UsageMethods, usageMethods } from "./usage.js";

export { Code, ConnectError } from "@connectrpc/connect";
export type { Transport } from "@connectrpc/connect";
export { DEFAULT_MAX_STALENESS_MS, MIN_MAX_STALENESS_MS } from "./cache.js";
export {
  DeadlineExceeded,
  EntitlementsError,
  type ErrorCode,
  FailedPrecondition,
  Internal,
  InvalidArgument,
  NotFound,
  PermissionDenied,
  ResourceExhausted,
  Unauthenticated,
  Unavailable,
} from "./errors.js";
export { EntitlementService } from "./gen/entitlements/v1/entitlement_service_pb.js";
export { connectTransport } from "./transport.js";
export type * from "./types.js";
export {
  type ConsumeResult,
  type MeteredUsage,
  type ReportUsageResult,
  type ReserveResult,
  type UsageChange,
  type UsageMethods,
  type UsageTotals,
  UsageService,
} from "./usage.js";

export interface ClientOptions {
  /** ENTITLEMENTS_READ_TOKEN of the service, sent as `authorization: Bearer <token>`. */
  token?: string;
  /** Deadline of each unary call (default 5000 ms); `watch` has none. */
  timeoutMs?: number;
  /**
   * Follow WatchEntitlements and answer `allowed()` / `snapshot()` in-process while fresh
   * (the Python client's `local_cache=True`). Call `close()` when done.
   */
  localCache?: boolean;
  /** Local answers only within this long of the last heartbeat (default 5000, at least 2000;
   * Python's `max_staleness`). */
  maxStalenessMs?: number;
  /** Subjects held, least recently stored dropped first (default 100 000). */
  maxCachedSubjects?: number;
}

/** Entitlement checks, and the usage of metered limits (`consume`, `reportUsage`, `reserve`,
 * `commit`, `release`, `getUsage`: usage.ts). */
export interface EntitlementsClient extends UsageMethods {
  /**
   * May `subject` use `feature`? From the local cache while it is fresh (`localCache: true`),
   * else the service's answer (an `EntitlementsError` when it cannot answer). An unknown
   * feature is `InvalidArgument` either way.
   */
  allowed(subject: string, feature: string): Promise<boolean>;
  /** The subject's entitlements as the local cache holds them (one RPC when it does not, or
   * when it is not fresh); metered periods without usage (`usage: null`). */
  snapshot(subject: string): Promise<Entitlements>;
  /** The service's answer, with its reason (always an RPC). */
  canUse(subject: string, feature: string, options?: CallOptions): Promise<CanUseResult>;
  getLimits(subject: string, options?: CallOptions): Promise<LimitsResult>;
  checkLimit(
    subject: string,
    limit: string,
    currentUsage: bigint | number,
    requested?: bigint | number,
    options?: CallOptions,
  ): Promise<CheckLimitResult>;
  getEntitlements(subject: string, options?: CallOptions): Promise<Entitlements>;
  /** Up to 1000 checks; results in request order. */
  batchCanUse(checks: FeatureCheck[], options?: CallOptions): Promise<CanUseResult[]>;
  /** The stream of changes and heartbeats; it ends (no error) when `signal` aborts. */
  watch(options?: WatchOptions): AsyncIterable<WatchEvent>;
  /** True only while a local answer cannot be older than `maxStalenessMs`. */
  readonly synced: boolean;
  /** Resolves true once the local cache has caught up, false after `timeoutMs` (default 10 s). */
  waitSynced(timeoutMs?: number): Promise<boolean>;
  /** Stops following the stream (with `localCache`); the client still answers by RPC. */
  close(): Promise<void>;
  /** The local cache (`localCache: true`), for inspection; `null` without one. */
  readonly cache: LocalCache | null;
  /** The generated Connect-ES client, for what the wrapper does not cover (ListPlans). */
  readonly raw: Client<typeof EntitlementService>;
  /** The generated Connect-ES client of UsageService. */
  readonly rawUsage: Client<typeof UsageService>;
}

export function createEntitlementsClient(
  transport: Transport,
  options: ClientOptions = {},
): EntitlementsClient {
  const raw = createClient(EntitlementService, transport);
  const rawUsage = createClient(UsageService, transport);
  const auth: Record<string, string> = options.token
    ? { authorization: `Bearer ${options.token}` }
    : {};
  const timeoutMs = options.timeoutMs ?? 5000;
  const call = (extra?: CallOptions): CallOptions => ({
    timeoutMs,
    ...extra,
    headers: { ...auth, ...headerRecord(extra?.headers) },
  });
  const cache = options.localCache
    ? new LocalCache(
        options.maxCachedSubjects ?? DEFAULT_MAX_CACHED_SUBJECTS,
        options.maxStalenessMs ?? DEFAULT_MAX_STALENESS_MS,
      )
    : null;
  const follower = cache ? new Follower(raw, cache, auth, timeoutMs) : null;

  /** The subject's snapshot: fresh from the cache, else one RPC (cached when still trusted). */
  async function snapshotFor(subject: string): Promise<Snapshot> {
    const held = cache?.fresh(subject);
    if (held) return held;
    const generation = cache?.generation ?? 0;
    const snap = snapshotOf(await raw.getEntitlements({ subject }, call()));
    cache?.putFromRpc(snap, generation);
    return snap;
  }

  const rpc = guarded({
    ...usageMethods(rawUsage, call),
    async allowed(subject: string, feature: string): Promise<boolean> {
      if (cache) {
        let snap = cache.fresh(subject);
        if (snap === undefined && cache.synced) snap = await snapshotFor(subject);
        if (snap !== undefined) return cache.decide(snap, feature);
      }
      return (await raw.canUse({ subject, feature }, call())).allowed;
    },
    async snapshot(subject: string): Promise<Entitlements> {
      return (await snapshotFor(subject)).entitlements;
    },
    async canUse(subject: string, feature: string, extra?: CallOptions): Promise<CanUseResult> {
      return canUseResult(await raw.canUse({ subject, feature }, call(extra)));
    },
    async getLimits(subject: string, extra?: CallOptions): Promise<LimitsResult> {
      const r = await raw.getLimits({ subject }, call(extra));
      return {
        plan: r.plan,
        limits: limitsRecord(r.limits),
        validUntil: date(r.validUntil),
        metered: r.metered.map(meteredLimit),
      };
    },
    async checkLimit(
      subject: string,
      limit: string,
      currentUsage: bigint | number,
      requested: bigint | number = 1n,
      extra?: CallOptions,
    ): Promise<CheckLimitResult> {
      const r = await raw.checkLimit(
        { subject, limit, currentUsage: BigInt(currentUsage), requested: BigInt(requested) },
        call(extra),
      );
      return {
        allowed: r.allowed,
        limit: r.limit,
        remaining: r.remaining,
        unlimited: r.unlimited,
        plan: r.plan,
        validUntil: date(r.validUntil),
      };
    },
    async getEntitlements(subject: string, extra?: CallOptions): Promise<Entitlements> {
      return entitlements(await raw.getEntitlements({ subject }, call(extra)));
    },
    async batchCanUse(checks: FeatureCheck[], extra?: CallOptions): Promise<CanUseResult[]> {
      const r = await raw.batchCanUse({ checks }, call(extra));
      return r.results.map(canUseResult);
    },
  });

  return {
    ...rpc,
    raw,
    rawUsage,
    cache,
    get synced() {
      return cache?.synced ?? false;
    },
    async waitSynced(waitMs = 10_000) {
      const until = performance.now() + waitMs;
      while (!(cache?.synced ?? false)) {
        if (!cache || performance.now() >= until) return false;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      return true;
    },
    async close() {
      await follower?.close();
    },
    watch(watchOptions = {}) {
      return watchEvents(raw, auth, watchOptions);
    },
  };
}

/** `watch()`: ends quietly when the caller's signal aborts, on either transport. */
async function* watchEvents(
  raw: Client<typeof EntitlementService>,
  auth: Record<string, string>,
  watchOptions: WatchOptions,
): AsyncGenerator<WatchEvent> {
  const signal = watchOptions.signal;
  if (signal?.aborted) return;
  const stream = raw.watchEntitlements(
    {
      subjects: watchOptions.subjects ?? [],
      ...(watchOptions.sinceVersion !== undefined
        ? { sinceVersion: watchOptions.sinceVersion }
        : {}),
    },
    { headers: auth, ...(signal ? { signal } : {}) },
  );
  try {
    for await (const m of stream) {
      if (m.subject === "") {
        const lag = m.lag;
        yield {
          kind: "heartbeat",
          version: m.version,
          serverTime: date(m.serverTime),
          lagMs: lag ? Number(lag.seconds) * 1000 + lag.nanos / 1e6 : 0,
        };
      } else if (m.entitlements) {
        yield {
          kind: "change",
          subject: m.subject,
          version: m.version,
          entitlements: entitlements(m.entitlements),
        };
      }
      if (signal?.aborted) return;
    }
  } catch (err) {
    if (signal?.aborted) return;
    throw entitlementsError(err);
  }
}
