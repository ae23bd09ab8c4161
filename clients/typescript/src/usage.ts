/**
 * The usage of metered limits (`entitlements.v1.UsageService`, SPEC §10.1): `consume`,
 * `reportUsage`, `reserve`, `commit`, `release` and `getUsage`, on the same transport, token
 * and deadline as the rest of the client (see index.ts). Consumption is always answered by the
 * service: nothing here counts or approves usage locally. Errors are `EntitlementsError`s
 * (index.ts maps them, errors.ts), as for every other method (`InvalidArgument` for an unknown
 * or non-metered limit, an amount ≤ 0 or an empty idempotency key; `Unavailable` when the
 * database is down, nothing recorded).
 */

import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import type { CallOptions, Client } from "@connectrpc/connect";

import { UsageService } from "./gen/entitlements/v1/usage_service_pb.js";

export { UsageService } from "./gen/entitlements/v1/usage_service_pb.js";

/** What is counted of one metered limit after a call. */
export interface UsageTotals {
  /** Used in the current period (reserved units not included). */
  used: bigint;
  /** limit − used − reserved, never below 0; meaningless when `unlimited`. */
  remaining: bigint;
  unlimited: boolean;
}

export interface ConsumeResult extends UsageTotals {
  /** Recorded: `amount` fitted the limit. When false nothing was recorded. */
  allowed: boolean;
  /** The limit's value in the subject's current terms (plan or override). */
  limitValue: bigint;
  /** When the period's usage starts again from zero; `null` for `reset = "never"`. */
  resetsAt: Date | null;
  /** The idempotency key was seen before: this is the first call's answer. */
  duplicate: boolean;
}

export interface ReportUsageResult extends UsageTotals {
  limitValue: bigint;
  resetsAt: Date | null;
  duplicate: boolean;
}

export interface ReserveResult extends UsageTotals {
  allowed: boolean;
  /** For `commit` / `release`; `null` when not allowed. */
  reservationId: string | null;
  /** When the units are given back if neither committed nor released. */
  expiresAt: Date | null;
  resetsAt: Date | null;
  duplicate: boolean;
}

/** One metered limit's usage in the subject's current period. */
export interface MeteredUsage extends UsageTotals {
  limit: string;
  reserved: bigint;
  limitValue: bigint;
  periodStart: Date | null;
  resetsAt: Date | null;
}

/** `reportUsage`'s change: units to add (negative to correct), or the period's total. */
export type UsageChange = { delta: bigint | number } | { set: bigint | number };

export interface UsageMethods {
  /**
   * Atomic check-and-record of `amount` units of a metered limit. Retrying with the same
   * `idempotencyKey` (per subject and limit) returns the first answer with `duplicate: true`.
   */
  consume(
    subject: string,
    limit: string,
    amount: bigint | number,
    idempotencyKey: string,
    options?: CallOptions,
  ): Promise<ConsumeResult>;
  /** Records usage without a check (it may pass the limit; `remaining` is then 0). */
  reportUsage(
    subject: string,
    limit: string,
    change: UsageChange,
    idempotencyKey: string,
    options?: CallOptions,
  ): Promise<ReportUsageResult>;
  /** Holds `amount` units (they count as used) for `ttlSeconds` (0: the service's 5 min). */
  reserve(
    subject: string,
    limit: string,
    amount: bigint | number,
    idempotencyKey: string,
    ttlSeconds?: bigint | number,
    options?: CallOptions,
  ): Promise<ReserveResult>;
  /** Records the actual amount (at most the reserved one) and ends the reservation. */
  commit(
    reservationId: string,
    amount: bigint | number,
    options?: CallOptions,
  ): Promise<UsageTotals>;
  /** Gives a reservation's units back. */
  release(reservationId: string, options?: CallOptions): Promise<UsageTotals>;
  /** The subject's usage of every metered limit in its current period. */
  getUsage(subject: string, options?: CallOptions): Promise<MeteredUsage[]>;
}

/** The usage methods over `raw`, each call's options made by `call` (token, deadline). */
export function usageMethods(
  raw: Client<typeof UsageService>,
  call: (extra?: CallOptions) => CallOptions,
): UsageMethods {
  return {
    async consume(subject, limit, amount, idempotencyKey, extra) {
      const r = await raw.consume(
        { subject, limit, amount: BigInt(amount), idempotencyKey },
        call(extra),
      );
      return {
        allowed: r.allowed,
        ...totals(r),
        limitValue: r.limitValue,
        resetsAt: date(r.resetsAt),
        duplicate: r.duplicate,
      };
    },
    async reportUsage(subject, limit, change, idempotencyKey, extra) {
      const r = await raw.reportUsage(
        {
          subject,
          limit,
          change:
            "delta" in change
              ? { case: "delta", value: BigInt(change.delta) }
              : { case: "set", value: BigInt(change.set) },
          idempotencyKey,
        },
        call(extra),
      );
      return {
        ...totals(r),
        limitValue: r.limitValue,
        resetsAt: date(r.resetsAt),
        duplicate: r.duplicate,
      };
    },
    async reserve(subject, limit, amount, idempotencyKey, ttlSeconds = 0n, extra) {
      const r = await raw.reserve(
        {
          subject,
          limit,
          amount: BigInt(amount),
          ttlSeconds: BigInt(ttlSeconds),
          idempotencyKey,
        },
        call(extra),
      );
      return {
        allowed: r.allowed,
        reservationId: r.reservationId === "" ? null : r.reservationId,
        expiresAt: date(r.expiresAt),
        ...totals(r),
        resetsAt: date(r.resetsAt),
        duplicate: r.duplicate,
      };
    },
    async commit(reservationId, amount, extra) {
      const r = await raw.commitReservation({ reservationId, amount: BigInt(amount) }, call(extra));
      return totals(r);
    },
    async release(reservationId, extra) {
      return totals(await raw.releaseReservation({ reservationId }, call(extra)));
    },
    async getUsage(subject, extra) {
      const r = await raw.getUsage({ subject }, call(extra));
      return r.usage.map((u) => ({
        limit: u.limit,
        ...totals(u),
        reserved: u.reserved,
        limitValue: u.limitValue,
        periodStart: date(u.periodStart),
        resetsAt: date(u.resetsAt),
      }));
    },
  };
}

function totals(r: UsageTotals): UsageTotals {
  return { used: r.used, remaining: r.remaining, unlimited: r.unlimited };
}

function date(ts: Timestamp | undefined): Date | null {
  return ts ? timestampDate(ts) : null;
}
