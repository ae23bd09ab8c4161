/**
 * Node-only transports (`@plan-entitlements/client/node`): gRPC over HTTP/2 to the service's
 * `ENTITLEMENTS_LISTEN` address, with `@connectrpc/connect-node`. Kept apart from the main
 * entry so that browser and edge bundles never pull in `node:http2`.
 */

import type { Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

/** gRPC to `baseUrl` (`http://127.0.0.1:50051`; `https://…` when the service has TLS). */
export function grpcTransport(options: { baseUrl: string }): Transport {
  return createGrpcTransport({ baseUrl: options.baseUrl });
}
