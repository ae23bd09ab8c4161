/** Wire messages to the plain answers of types.ts (pure). */

import type { DescEnum } from "@bufbuild/protobuf";
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";

import {
  type CanUseResponse,
  type GetEntitlementsResponse,
  type Limit as LimitMessage,
  type MeteredLimit as MeteredLimitMessage,
  type Override as OverrideMessage,
  EntitlementStatusSchema,
  ReasonSchema,
} from "./gen/entitlements/v1/entitlement_service_pb.js";
import type {
  CanUseResult,
  EntitlementStatusName,
  Entitlements,
  Limit,
  MeteredLimit,
  Override,
  ReasonName,
} from "./types.js";

export function headerRecord(init: HeadersInit | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (init) new Headers(init).forEach((value, key) => (out[key] = value));
  return out;
}

/** The proto name of an enum value (`REASON_FEATURE_IN_PLAN`), as the JSON API spells it. */
export function enumName<T extends string>(schema: DescEnum, value: number, prefix: string): T {
  return (schema.value[value]?.name ?? `${prefix}UNSPECIFIED`) as T;
}

export function date(ts: Timestamp | undefined): Date | null {
  return ts ? timestampDate(ts) : null;
}

export function limitsRecord(limits: { [key: string]: LimitMessage }): Record<string, Limit> {
  const out: Record<string, Limit> = {};
  for (const [name, l] of Object.entries(limits)) {
    out[name] = { value: l.value, unlimited: l.unlimited };
  }
  return out;
}

export function meteredLimit(m: MeteredLimitMessage): MeteredLimit {
  return {
    limit: m.limit,
    periodStart: date(m.periodStart),
    resetsAt: date(m.resetsAt),
    usage: m.hasUsage ? { used: m.used, reserved: m.reserved, remaining: m.remaining } : null,
  };
}

export function override(o: OverrideMessage): Override {
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

export function canUseResult(r: CanUseResponse): CanUseResult {
  return {
    allowed: r.allowed,
    plan: r.plan,
    reason: enumName<ReasonName>(ReasonSchema, r.reason, "REASON_"),
    validUntil: date(r.validUntil),
  };
}

export function entitlements(r: GetEntitlementsResponse): Entitlements {
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
