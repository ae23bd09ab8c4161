/** The plain answers of the client (int64 as `bigint`, enums by proto name, `Date | null`). */

import type { EntitlementStatus, Reason } from "./gen/entitlements/v1/entitlement_service_pb.js";

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
