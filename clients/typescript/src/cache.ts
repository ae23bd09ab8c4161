/**
 * The local cache and its freshness rules, as the Python client's (`entitlements_client.core
 * .LocalCache`, SPEC §9 and §10.5), with the same option names in this client's spelling
 * (`maxStalenessMs` for `max_staleness`, `maxCachedSubjects` for `max_cached_subjects`). Pure:
 * no I/O; follow.ts feeds it from the watch stream.
 *
 * - A local answer is given only while the last heartbeat, aged by the time since it arrived
 *   plus the lag it reported, is within `maxStalenessMs`; otherwise the client asks the service
 *   (and fails with its error if that fails).
 * - Heartbeats carry the change log's identity (`log_id`, new when the database is wiped,
 *   replaced or restored) and the catalog's fingerprint: when either changes, every local
 *   answer is dropped (and the catalog read again).
 * - An answer's `validUntil` is judged on the server's clock: this machine's clock corrected
 *   by the offset the heartbeats show.
 */

import { timestampMs } from "@bufbuild/protobuf/wkt";

import type {
  GetEntitlementsResponse,
  ListPlansResponse,
  WatchEntitlementsResponse,
} from "./gen/entitlements/v1/entitlement_service_pb.js";
import { entitlements } from "./convert.js";
import { InvalidArgument } from "./errors.js";
import type { Entitlements } from "./types.js";

export const DEFAULT_MAX_STALENESS_MS = 5_000;
/** The service beats every second: a bound below two beats would flicker. */
export const MIN_MAX_STALENESS_MS = 2_000;
export const DEFAULT_MAX_CACHED_SUBJECTS = 100_000;

/** What may be answered locally for one subject: never usage (only the service counts it). */
export interface Snapshot {
  readonly entitlements: Entitlements;
  readonly features: ReadonlySet<string>;
  readonly validUntilMs: number | null;
  readonly version: bigint;
}

export function snapshotOf(m: GetEntitlementsResponse): Snapshot {
  const e = entitlements(m);
  // Periods only: the usage an RPC answer carries would go stale here.
  e.metered = e.metered.map((p) => ({ ...p, usage: null }));
  return {
    entitlements: e,
    features: new Set(e.features),
    validUntilMs: m.validUntil ? timestampMs(m.validUntil) : null,
    version: m.version,
  };
}

export class LocalCache {
  /** Subject → snapshot, least recently stored first (bounded by `maxSubjects`). */
  readonly entries = new Map<string, Snapshot>();
  // The newest version the stream showed per subject: an older RPC answer (from a replica
  // that has not seen the change yet) is never cached.
  private readonly watched = new Map<string, bigint>();
  generation = 0;
  resumeVersion: bigint | null = null;
  /** Every feature the catalog names (ListPlans): a check naming another is an error. */
  features: ReadonlySet<string> = new Set();
  logId = "";
  catalogFingerprint = "";
  /** A heartbeat showed another catalog: ListPlans must be read again before trusting. */
  catalogStale = false;
  /** The server's wall clock minus this machine's, in ms, from the last heartbeat. */
  clockOffsetMs = 0;
  private heardAt: number | null = null;
  private trustUntil = Number.NEGATIVE_INFINITY;

  constructor(
    readonly maxSubjects: number = DEFAULT_MAX_CACHED_SUBJECTS,
    readonly maxStalenessMs: number = DEFAULT_MAX_STALENESS_MS,
    private readonly clock: () => number = () => performance.now(),
    private readonly wall: () => number = () => Date.now(),
  ) {
    if (!(maxStalenessMs >= MIN_MAX_STALENESS_MS)) {
      throw new InvalidArgument(
        `maxStalenessMs must be at least ${MIN_MAX_STALENESS_MS} (heartbeats come every second)`);
    }
  }

  /** True only while a local answer cannot be older than `maxStalenessMs`. */
  get synced(): boolean {
    return this.clock() <= this.trustUntil;
  }

  /** The snapshot when it may answer now, else `undefined` (then the service is asked). */
  fresh(subject: string): Snapshot | undefined {
    if (this.clock() > this.trustUntil) return undefined;
    const snap = this.entries.get(subject);
    if (snap === undefined) return undefined;
    if (snap.validUntilMs !== null && this.serverNowMs() >= snap.validUntilMs) return undefined;
    return snap;
  }

  /** The server's time now: this machine's clock corrected by the heartbeats. */
  serverNowMs(): number {
    return this.wall() + this.clockOffsetMs;
  }

  /** The local answer for `feature`; an unknown feature is an error, as on the server. */
  decide(snap: Snapshot, feature: string): boolean {
    if (snap.features.has(feature)) return true;
    if (this.features.has(feature)) return false;
    throw new InvalidArgument(`unknown feature '${feature}'`);
  }

  /** Cache an RPC answer unless the stream moved on since it was asked for, or showed a
   * newer version of this subject. */
  putFromRpc(snap: Snapshot, generation: number): void {
    if (this.trustUntil === Number.NEGATIVE_INFINITY || generation !== this.generation) return;
    if (snap.version < (this.watched.get(snap.entitlements.subject) ?? 0n)) return;
    this.store(snap);
  }

  /** One watch message: a change, or a heartbeat ("caught up", with the lag). */
  apply(m: WatchEntitlementsResponse): void {
    this.generation += 1;
    this.heardAt = this.clock();
    if (m.subject !== "") {
      if (!m.entitlements) return;
      const snap = snapshotOf(m.entitlements);
      const subject = snap.entitlements.subject;
      const seen = this.watched.get(subject) ?? 0n;
      this.watched.delete(subject);
      this.watched.set(subject, snap.version > seen ? snap.version : seen);
      if (this.watched.size > 2 * this.maxSubjects) this.dropOldest(this.watched);
      this.store(snap);
    } else {
      if (m.serverTime) this.clockOffsetMs = timestampMs(m.serverTime) - this.wall();
      this.checkIdentity(m.logId, m.catalogFingerprint);
      if (!this.catalogStale) {
        const lagMs = m.lag ? Number(m.lag.seconds) * 1000 + m.lag.nanos / 1e6 : 0;
        this.trustUntil = this.clock() + this.maxStalenessMs - lagMs;
      }
    }
    this.resumeVersion = m.version;
  }

  /** ListPlans' answer: the features any check may name, and the catalog's fingerprint. */
  plansLoaded(plans: ListPlansResponse): void {
    this.features = new Set(plans.features);
    if (plans.catalogFingerprint && plans.catalogFingerprint !== this.catalogFingerprint) {
      if (this.catalogFingerprint) this.forget();
      this.catalogFingerprint = plans.catalogFingerprint;
    }
    this.catalogStale = false;
  }

  /** The stream broke: not trusted until it has caught up again. */
  lost(): void {
    this.trustUntil = Number.NEGATIVE_INFINITY;
    this.generation += 1;
  }

  /** The resume point is gone (OUT_OF_RANGE): forget everything, watch from now. */
  reset(): void {
    this.forget();
    this.resumeVersion = null;
    this.logId = "";
  }

  watchRequest(): { sinceVersion?: bigint; logId?: string } {
    return this.resumeVersion === null
      ? {}
      : { sinceVersion: this.resumeVersion, logId: this.logId };
  }

  streamStarted(): void {
    this.heardAt = this.clock();
  }

  /** Nothing heard for longer than `maxStalenessMs`: the path is presumed dead. */
  silentTooLong(): boolean {
    return this.heardAt !== null && this.clock() - this.heardAt > this.maxStalenessMs;
  }

  /** Drop every local answer when the change log or the catalog is not theirs. */
  private checkIdentity(logId: string, fingerprint: string): void {
    const logChanged = Boolean(logId && this.logId && logId !== this.logId);
    const catalogChanged = Boolean(
      fingerprint && this.catalogFingerprint && fingerprint !== this.catalogFingerprint,
    );
    if (logChanged || catalogChanged) this.forget();
    if (catalogChanged) this.catalogStale = true;
    this.logId = logId || this.logId;
    this.catalogFingerprint = fingerprint || this.catalogFingerprint;
  }

  private forget(): void {
    this.trustUntil = Number.NEGATIVE_INFINITY;
    this.generation += 1;
    this.entries.clear();
    this.watched.clear();
  }

  private store(snap: Snapshot): void {
    const subject = snap.entitlements.subject;
    this.entries.delete(subject);
    this.entries.set(subject, snap);
    if (this.entries.size > this.maxSubjects) this.dropOldest(this.entries);
  }

  private dropOldest(map: Map<string, unknown>): void {
    const oldest = map.keys().next();
    if (!oldest.done) map.delete(oldest.value);
  }
}
