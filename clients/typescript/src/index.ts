/**
 * `@plan-entitlements/client`: a small typed wrapper over the generated Connect-ES clients for
 * `entitlements.v1.EntitlementService` and `entitlements.v1.UsageService` (metered limits:
 * usage.ts). It works over any Connect-ES transport:
 *
 * - `connectTransport()` (here): the Connect protocol over plain `fetch` (browsers, Next.js,
 *   edge runtimes, Node ≥ 18), to the service's `ENTITLEMENTS_HTTP_LISTEN` address;
 * - `grpcTransport()` (`@plan-entitlements/client/node`): gRPC over HTTP/2 with
 *   `@connectrpc/connect-node`, to `ENTITLEMENTS_LISTEN`.
 *
 * Answers are plain objects: int64 values are `bigint`, enums are their proto names
 * (`"REASON_FEATURE_IN_PLAN"`, as grpcurl and the JSON API show them), timestamps are `Date`
 * or `null` (unset: the answer does not change by time alone). Errors are `ConnectError`s with
 * the service's codes (`Code.InvalidArgument` for an unknown feature, `Code.Unauthenticated`
 * without the read token, …).
 */

import type { DescEnum } from "@bufbuild/protobuf";
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import { type CallOptions, type Client, type Transport, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";

import {
  type CanUseResponse,
  type GetEntitlementsResponse,
  type Limit as LimitMessage,
  type MeteredLimit as MeteredLimitMessage,
  type Override as OverrideMessage,
  EntitlementService,
  EntitlementStatus,
  EntitlementStatusSchema,
  Reason,
  ReasonSchema,
} from "./gen/entitlements/v1/entitlement_service_pb.js";
import { UsageService } from "./gen/entitlements/v1/usage_service_pb.js";
import { type UsageMethods, usageMethods } from "./usage.js";

export { Code, ConnectError } from "@connectrpc/connect";
export type { Transport } from "@connectrpc/connect";
export { EntitlementService } from "./gen/entitlements/v1/entitlement_service_pb.js";
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

/** Why a `canUse` answer is what it is: the proto names of `entitlements.v1.Reason`. */
export type ReasonName = `REASON_${keyof typeof Reason}`;
/** Where the effective plan comes from: the proto names of `entitlements.v1.EntitlementStatus`. */
export type EntitlementStatusName = `ENTITLEMENT_STATUS_${keyof typeof EntitlementStatus}`;

export interface Limit {
  /** Meaningless when `unlimited`. */
  value: bigint;
  unlimited: boolean;
}

/** A metered limit's current period, and its usage in answers read from the service. */
export interface MeteredLimit {
  limit: string;
  periodStart: Date | null;
  /** `null` for `reset = "never"`. */
  resetsAt: Date | null;
  /** `null` where the answer carries no usage (watch events: it would go stale). */
  usage: { used: bigint; reserved: bigint; remaining: bigint } | null;
}

/** A per-customer override in force (one of `feature` and `limit` is set, the other ""). */
export interface Override {
  overrideId: string;
  feature: string;
  limit: string;
  /** For a feature: granted (`true`) or withheld (`false`). */
  enabled: boolean;
  /** For a limit: the value that replaces the plan's. */
  value: Limit | null;
  expiresAt: Date | null;
  reason: string;
}

export interface CanUseResult {
  allowed: boolean;
  plan: string;
  reason: ReasonName;
  /** The earliest instant this answer changes by time alone; `null`: never. */
  validUntil: Date | null;
}

export interface LimitsResult {
  plan: string;
  limits: Record<string, Limit>;
  validUntil: Date | null;
  metered: MeteredLimit[];
}

export interface CheckLimitResult {
  allowed: boolean;
  /** The limit's value (meaningless when `unlimited`). */
  limit: bigint;
  /** max(0, limit − currentUsage); meaningless when `unlimited`. */
  remaining: bigint;
  unlimited: boolean;
  plan: string;
  validUntil: Date | null;
}

export interface Entitlements {
  subject: string;
  plan: string;
  features: string[];
  limits: Record<string, Limit>;
  status: EntitlementStatusName;
  validUntil: Date | null;
  /** Per-subject change counter. */
  version: bigint;
  overrides: Override[];
  /** The entitling item is a free trial, ending at `trialEndsAt`. */
  trial: boolean;
  trialEndsAt: Date | null;
  metered: MeteredLimit[];
}

export interface FeatureCheck {
  subject: string;
  feature: string;
}

/** One message of `watch()`: a changed subject, or a heartbeat ("caught up"). */
export type WatchEvent =
  | { kind: "change"; subject: string; version: bigint; entitlements: Entitlements }
  | {
      kind: "heartbeat";
      /** Resume from here (`sinceVersion`) after a reconnect: nothing is missed. */
      version: bigint;
      serverTime: Date | null;
      /** Every change committed before `serverTime − lagMs` has been sent. */
      lagMs: number;
    };

export interface WatchOptions {
  /** Empty or unset: every subject. */
  subjects?: string[];
  /** Resume point: every change with a higher version, then live. */
  sinceVersion?: bigint;
  signal?: AbortSignal;
}

export interface ClientOptions {
  /** ENTITLEMENTS_READ_TOKEN of the service, sent as `authorization: Bearer <token>`. */
  token?: string;
  /** Deadline of each unary call (default 5000 ms); `watch` has none. */
  timeoutMs?: number;
}

/** Entitlement checks, and the usage of metered limits (`consume`, `reportUsage`, `reserve`,
 * `commit`, `release`, `getUsage`: usage.ts). */
export interface EntitlementsClient extends UsageMethods {
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
  watch(options?: WatchOptions): AsyncIterable<WatchEvent>;
  /** The generated Connect-ES client, for what the wrapper does not cover (ListPlans). */
  readonly raw: Client<typeof EntitlementService>;
  /** The generated Connect-ES client of UsageService. */
  readonly rawUsage: Client<typeof UsageService>;
}

/** The Connect protocol over `fetch` (JSON by default; `binary: true` for protobuf). */
export function connectTransport(options: {
  baseUrl: string;
  binary?: boolean;
  fetch?: typeof globalThis.fetch;
}): Transport {
  return createConnectTransport({
    baseUrl: options.baseUrl,
    useBinaryFormat: options.binary ?? false,
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });
}

export function createEntitlementsClient(
  transport: Transport,
  options: ClientOptions = {},
): EntitlementsClient {
  const raw = createClient(EntitlementService, transport);
  const auth: Record<string, string> = options.token
    ? { authorization: `Bearer ${options.token}` }
    : {};
  const timeoutMs = options.timeoutMs ?? 5000;
  const call = (extra?: CallOptions): CallOptions => ({
    timeoutMs,
    ...extra,
    headers: { ...auth, ...headerRecord(extra?.headers) },
  });

  const rawUsage = createClient(UsageService, transport);

  return {
    raw,
    rawUsage,
    ...usageMethods(rawUsage, call),
    async canUse(subject, feature, extra) {
      return canUseResult(await raw.canUse({ subject, feature }, call(extra)));
    },
    async getLimits(subject, extra) {
      const r = await raw.getLimits({ subject }, call(extra));
      return {
        plan: r.plan,
        limits: limitsRecord(r.limits),
        validUntil: date(r.validUntil),
        metered: r.metered.map(meteredLimit),
      };
    },
    async checkLimit(subject, limit, currentUsage, requested = 1n, extra) {
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
    async getEntitlements(subject, extra) {
      return entitlements(await raw.getEntitlements({ subject }, call(extra)));
    },
    async batchCanUse(checks, extra) {
      const r = await raw.batchCanUse({ checks }, call(extra));
      return r.results.map(canUseResult);
    },
    async *watch(watchOptions = {}) {
      const stream = raw.watchEntitlements(
        {
          subjects: watchOptions.subjects ?? [],
          ...(watchOptions.sinceVersion !== undefined
            ? { sinceVersion: watchOptions.sinceVersion }
            : {}),
        },
        {
          headers: auth,
          ...(watchOptions.signal ? { signal: watchOptions.signal } : {}),
        },
      );
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
      }
    },
  };
}

function headerRecord(init: HeadersInit | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (init) new Headers(init).forEach((value, key) => (out[key] = value));
  return out;
}

/** The proto name of an enum value (`REASON_FEATURE_IN_PLAN`), as the JSON API spells it. */
function enumName<T extends string>(schema: DescEnum, value: number, prefix: string): T {
  return (schema.value[value]?.name ?? `${prefix}UNSPECIFIED`) as T;
}

function date(ts: Timestamp | undefined): Date | null {
  return ts ? timestampDate(ts) : null;
}

function limitsRecord(limits: { [key: string]: LimitMessage }): Record<string, Limit> {
  const out: Record<string, Limit> = {};
  for (const [name, l] of Object.entries(limits)) {
    out[name] = { value: l.value, unlimited: l.unlimited };
  }
  return out;
}

function meteredLimit(m: MeteredLimitMessage): MeteredLimit {
  return {
    limit: m.limit,
    periodStart: date(m.periodStart),
    resetsAt: date(m.resetsAt),
    usage: m.hasUsage ? { used: m.used, reserved: m.reserved, remaining: m.remaining } : null,
  };
}

function override(o: OverrideMessage): Override {
  return {
    overrideId: o.overrideId,
    feature: o.feature,
    limit: o.limit,
    enabled: o.enabled,
    value: o.value ? { value: o.value.value, unlimited: o.value.unlimited } : null,
    expiresAt: date(o.expiresAt),
    reason: o.reason,
  };
}

function canUseResult(r: CanUseResponse): CanUseResult {
  return {
    allowed: r.allowed,
    plan: r.plan,
    reason: enumName<ReasonName>(ReasonSchema, r.reason, "REASON_"),
    validUntil: date(r.validUntil),
  };
}

function entitlements(r: GetEntitlementsResponse): Entitlements {
  return {
    subject: r.subject,
    plan: r.plan,
    features: [...r.features],
    limits: limitsRecord(r.limits),
    status: enumName<EntitlementStatusName>(
      EntitlementStatusSchema,
      r.status,
      "ENTITLEMENT_STATUS_",
    ),
    validUntil: date(r.validUntil),
    version: r.version,
    overrides: r.overrides.map(override),
    trial: r.trial,
    trialEndsAt: date(r.trialEndsAt),
    metered: r.metered.map(meteredLimit),
  };
}
