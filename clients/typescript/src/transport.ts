/**
 * The Connect transport over `fetch`, with two repairs to what `fetch` does on Node:
 *
 * - An abort is carried to the response body by this module, not only by `fetch`'s own
 *   `signal`: on Node 20 (undici) the link from the caller's signal to a running fetch is a
 *   weak reference, so after a garbage collection an aborted `watch()` kept reading forever.
 *   Here the signal's listener holds the body's reader, and cancels it.
 * - A request that never reached the service (connection refused, DNS, reset before an answer)
 *   is `Code.Unavailable`, as the gRPC transport says it, not `fetch failed` as `Code.Unknown`.
 */

import { Code, ConnectError, type Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";

/** The Connect protocol over `fetch` (JSON by default; `binary: true` for protobuf). */
export function connectTransport(options: {
  baseUrl: string;
  binary?: boolean;
  fetch?: typeof globalThis.fetch;
}): Transport {
  return createConnectTransport({
    baseUrl: options.baseUrl,
    useBinaryFormat: options.binary ?? false,
    fetch: abortableFetch(options.fetch ?? ((input, init) => globalThis.fetch(input, init))),
  });
}

/** `base`, whose response bodies stop when the request's signal aborts (see above). */
export function abortableFetch(base: typeof globalThis.fetch): typeof globalThis.fetch {
  return async (input, init) => {
    const signal = init?.signal ?? undefined;
    let response: Response;
    try {
      response = await base(input, init);
    } catch (err) {
      if (signal?.aborted) throw err;
      const detail = err instanceof Error && err.cause instanceof Error ? err.cause.message : "";
      throw new ConnectError(
        `the service could not be reached${detail ? ` (${detail})` : ""}`,
        Code.Unavailable,
        undefined,
        undefined,
        err,
      );
    }
    if (!signal || !response.body) return response;
    return new Response(cancelledBy(signal, response.body), {
      status: response.status,
      statusText: response.statusText,
      headers: response.headers,
    });
  };
}

function cancelledBy(signal: AbortSignal, body: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  let onAbort: (() => void) | undefined;
  const done = (): void => {
    if (onAbort) signal.removeEventListener("abort", onAbort);
  };
  return new ReadableStream<Uint8Array>({
    start(controller) {
      onAbort = () => {
        const reason: unknown = signal.reason ?? new DOMException("aborted", "AbortError");
        controller.error(reason);
        reader.cancel(reason).catch(() => undefined);
      };
      if (signal.aborted) onAbort();
      else signal.addEventListener("abort", onAbort, { once: true });
    },
    async pull(controller) {
      try {
        const { done: end, value } = await reader.read();
        if (end) {
          done();
          controller.close();
        } else {
          controller.enqueue(value);
        }
      } catch (err) {
        done();
        controller.error(err);
      }
    },
    cancel(reason) {
      done();
      return reader.cancel(reason);
    },
  });
}
