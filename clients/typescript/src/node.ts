/**
 * Node-only transports (`@plan-entitlements/client/node`): gRPC over HTTP/2 to the service's
 * `ENTITLEMENTS_LISTEN` address, with `@connectrpc/connect-node`. Kept apart from the main
 * entry so that browser and edge bundles never pull in `node:http2`.
 *
 * TLS as the Python client and the CLI have it: `ca` trusts the service's certificate (its
 * ENTITLEMENTS_TLS_CERT), `cert` + `key` add a client certificate (when the service sets
 * ENTITLEMENTS_TLS_CLIENT_CA: mutual TLS), `serverName` checks the certificate against another
 * name than the URL's host. `tlsFromEnv()` reads the same variables as the CLI.
 */

import { readFileSync } from "node:fs";

import type { Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { InvalidArgument } from "./errors.js";

/** PEM text or bytes (read them with `tlsFromFiles` / `tlsFromEnv`). */
export interface GrpcTls {
  /** The CA that signed the service's certificate; unset: the system's CAs. */
  ca?: string | Uint8Array;
  /** A client certificate and its key, together (mutual TLS). */
  cert?: string | Uint8Array;
  key?: string | Uint8Array;
  /** The name the service's certificate must carry, when it is not the URL's host. */
  serverName?: string;
}

export interface GrpcTransportOptions {
  /** `http://127.0.0.1:50051`; `https://…` with TLS (implied by `tls`). */
  baseUrl: string;
  tls?: GrpcTls;
}

// Keepalive as the Python client's: a ping every 10 s, the connection dropped (and its streams
// failed) when no answer comes within 5 s; the service permits pings every 5 s.
const PING_INTERVAL_MS = 10_000;
const PING_TIMEOUT_MS = 5_000;

/** gRPC to `baseUrl`, over TLS when `tls` is given (or the URL is `https://`). */
export function grpcTransport(options: GrpcTransportOptions): Transport {
  const { tls } = options;
  if (tls && (tls.cert === undefined) !== (tls.key === undefined)) {
    throw new InvalidArgument("a client certificate and its key go together");
  }
  let baseUrl = options.baseUrl;
  if (tls && baseUrl.startsWith("http://")) baseUrl = `https://${baseUrl.slice("http://".length)}`;
  return createGrpcTransport({
    baseUrl,
    pingIntervalMs: PING_INTERVAL_MS,
    pingTimeoutMs: PING_TIMEOUT_MS,
    pingIdleConnection: true,
    ...(tls
      ? {
          nodeOptions: {
            ...(tls.ca !== undefined ? { ca: pem(tls.ca) } : {}),
            ...(tls.cert !== undefined ? { cert: pem(tls.cert) } : {}),
            ...(tls.key !== undefined ? { key: pem(tls.key) } : {}),
            ...(tls.serverName !== undefined ? { servername: tls.serverName } : {}),
          },
        }
      : {}),
  });
}

function pem(value: string | Uint8Array): string | Buffer {
  return typeof value === "string" ? value : Buffer.from(value);
}

/** TLS settings from PEM files (a file that cannot be read is an error naming it). */
export function tlsFromFiles(files: {
  ca?: string;
  cert?: string;
  key?: string;
  serverName?: string;
}): GrpcTls {
  const read = (name: string, path: string | undefined): Buffer | undefined => {
    if (!path) return undefined;
    try {
      return readFileSync(path);
    } catch (err) {
      const why = err instanceof Error && "code" in err ? String(err.code) : "unreadable";
      throw new InvalidArgument(`${name}=${path}: cannot be read (${why})`);
    }
  };
  const tls: GrpcTls = {};
  const ca = read("ca", files.ca);
  const cert = read("cert", files.cert);
  const key = read("key", files.key);
  if (ca) tls.ca = ca;
  if (cert) tls.cert = cert;
  if (key) tls.key = key;
  if (files.serverName) tls.serverName = files.serverName;
  return tls;
}

/**
 * ENTITLEMENTS_TLS_CA, ENTITLEMENTS_TLS_CLIENT_CERT and ENTITLEMENTS_TLS_CLIENT_KEY (the Python
 * client's and the CLI's names); `undefined` when ENTITLEMENTS_TLS_CA is unset.
 */
export function tlsFromEnv(env: Record<string, string | undefined> = process.env): GrpcTls | undefined {
  const ca = env.ENTITLEMENTS_TLS_CA || undefined;
  const cert = env.ENTITLEMENTS_TLS_CLIENT_CERT || undefined;
  const key = env.ENTITLEMENTS_TLS_CLIENT_KEY || undefined;
  if (!ca) {
    if (cert || key) {
      throw new InvalidArgument("ENTITLEMENTS_TLS_CLIENT_CERT needs ENTITLEMENTS_TLS_CA");
    }
    return undefined;
  }
  if ((cert === undefined) !== (key === undefined)) {
    throw new InvalidArgument(
      "ENTITLEMENTS_TLS_CLIENT_CERT and ENTITLEMENTS_TLS_CLIENT_KEY go together");
  }
  return tlsFromFiles({ ca, cert, key });
}
