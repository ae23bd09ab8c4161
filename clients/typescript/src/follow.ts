/**
 * Feeds a LocalCache from WatchEntitlements, as the Python client's follower and watchdog do:
 * read the catalog (ListPlans), follow the stream resuming from the last version (with the
 * log's identity), read the catalog again when a heartbeat shows another, restart the stream
 * when it falls silent for longer than the bound (a half-open link sends no error), back off
 * 50 ms → 2 s between attempts, and start from now when the resume point is gone.
 */

import { Code, type Client, ConnectError } from "@connectrpc/connect";

import type { LocalCache } from "./cache.js";
import { EntitlementService } from "./gen/entitlements/v1/entitlement_service_pb.js";

const WATCHDOG_MS = 250;

export class Follower {
  private running = true;
  private plansRead = false;
  private current: AbortController | null = null;
  private wake: (() => void) | null = null;
  private readonly watchdog: ReturnType<typeof setInterval>;
  readonly done: Promise<void>;

  constructor(
    private readonly raw: Client<typeof EntitlementService>,
    private readonly cache: LocalCache,
    private readonly headers: Record<string, string>,
    private readonly timeoutMs: number,
  ) {
    this.watchdog = setInterval(() => {
      if (this.current && this.cache.silentTooLong()) {
        this.cache.lost();
        this.current.abort(); // run() starts a new stream, resuming where this one was
      }
    }, WATCHDOG_MS);
    this.done = this.run();
  }

  /** Stops following: the stream is aborted, nothing else is started. */
  async close(): Promise<void> {
    this.running = false;
    clearInterval(this.watchdog);
    this.current?.abort();
    this.wake?.();
    await this.done;
  }

  private async readPlans(): Promise<void> {
    this.cache.plansLoaded(
      await this.raw.listPlans({}, { headers: this.headers, timeoutMs: this.timeoutMs }),
    );
    this.plansRead = true;
  }

  private async run(): Promise<void> {
    let backoffMs = 50;
    while (this.running) {
      const abort = new AbortController();
      this.current = abort;
      try {
        if (!this.plansRead) await this.readPlans();
        this.cache.streamStarted();
        const stream = this.raw.watchEntitlements(this.cache.watchRequest(), {
          headers: this.headers,
          signal: abort.signal,
        });
        for await (const message of stream) {
          this.cache.apply(message);
          if (this.cache.catalogStale) await this.readPlans();
          backoffMs = 50;
        }
      } catch (err) {
        if (err instanceof ConnectError && err.code === Code.OutOfRange) {
          this.cache.reset();
          continue;
        }
        // Any other end: the stream is lost, and started again after a pause.
      }
      this.current = null;
      this.cache.lost();
      if (!this.running) break;
      await this.pause(backoffMs);
      backoffMs = Math.min(backoffMs * 2, 2_000);
    }
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wake = null;
        resolve();
      }, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
}
