/**
 * One error tree, the same names as the Python client's exceptions (`entitlements_client`):
 * every failure of this client — an RPC over either transport, or a local answer — is an
 * `EntitlementsError`, whose `code` names what went wrong, and a subclass of it for the codes an
 * app acts on (`Unavailable`: retry or fail closed; `InvalidArgument`: fix the call; …). The
 * original `ConnectError`, when there is one, is the `cause`.
 *
 * Mapped in one place (`entitlementsError`): an unreachable service is `Unavailable` on both
 * transports (fetch reports a refused connection as `Code.Unknown`; transport.ts turns it into
 * `Code.Unavailable` before it gets here).
 */

import { Code, ConnectError } from "@connectrpc/connect";

/** The gRPC status names, spelled as the Python client's `EntitlementsError.code` is
 * (`"INVALID_ARGUMENT"`); the classes carry the Python exceptions' names (`InvalidArgument`). */
export type ErrorCode =
  | "CANCELLED"
  | "UNKNOWN"
  | "INVALID_ARGUMENT"
  | "DEADLINE_EXCEEDED"
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "PERMISSION_DENIED"
  | "RESOURCE_EXHAUSTED"
  | "FAILED_PRECONDITION"
  | "ABORTED"
  | "OUT_OF_RANGE"
  | "UNIMPLEMENTED"
  | "INTERNAL"
  | "UNAVAILABLE"
  | "DATA_LOSS"
  | "UNAUTHENTICATED";

export class EntitlementsError extends Error {
  /** What went wrong, by gRPC status name (`"UNAVAILABLE"`, `"INVALID_ARGUMENT"`, …). */
  readonly code: ErrorCode;

  constructor(message: string, code: ErrorCode = "UNKNOWN", options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name; // the class: "Unavailable", … (the Python exception's name)
  }
}

/** The service cannot be reached, or cannot answer now (its database is down): retry later. */
export class Unavailable extends EntitlementsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, "UNAVAILABLE", options);
  }
}
/** The request is wrong (an unknown feature or limit, a bad amount): the message says how. */
export class InvalidArgument extends EntitlementsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, "INVALID_ARGUMENT", options);
  }
}
export class PermissionDenied extends EntitlementsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, "PERMISSION_DENIED", options);
  }
}
/** No read token, or a wrong one (the service's ENTITLEMENTS_READ_TOKEN). */
export class Unauthenticated extends EntitlementsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, "UNAUTHENTICATED", options);
  }
}
export class NotFound extends EntitlementsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, "NOT_FOUND", options);
  }
}
/** A bound of the service was reached (streams, subjects per watch, message size). */
export class ResourceExhausted extends EntitlementsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, "RESOURCE_EXHAUSTED", options);
  }
}
/** No answer within the call's deadline (`timeoutMs`). */
export class DeadlineExceeded extends EntitlementsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, "DEADLINE_EXCEEDED", options);
  }
}
export class FailedPrecondition extends EntitlementsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, "FAILED_PRECONDITION", options);
  }
}
export class Internal extends EntitlementsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, "INTERNAL", options);
  }
}

type Subclass = new (message: string, options?: { cause?: unknown }) => EntitlementsError;

const CLASSES: Partial<Record<Code, Subclass>> = {
  [Code.Unavailable]: Unavailable,
  [Code.InvalidArgument]: InvalidArgument,
  [Code.PermissionDenied]: PermissionDenied,
  [Code.Unauthenticated]: Unauthenticated,
  [Code.NotFound]: NotFound,
  [Code.ResourceExhausted]: ResourceExhausted,
  [Code.DeadlineExceeded]: DeadlineExceeded,
  [Code.FailedPrecondition]: FailedPrecondition,
  [Code.Internal]: Internal,
};

const NAMES: Record<Code, ErrorCode> = {
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

// Node's codes for a connection or TLS handshake that failed: the service was not reached, as
// gRPC's own clients (and so the Python client) report it (UNAVAILABLE), whatever code the
// transport chose (connect-node says Internal for a certificate it cannot verify).
const UNREACHED =
  /^(ERR_TLS_|ERR_SSL_|UNABLE_TO_|CERT_|SELF_SIGNED|DEPTH_ZERO|E(CONNREFUSED|CONNRESET|PIPE|TIMEDOUT|HOSTUNREACH|NETUNREACH|NOTFOUND|AI_AGAIN)$)/;

function unreached(connect: ConnectError): string | undefined {
  const cause: unknown = connect.cause;
  if (cause instanceof Error && "code" in cause && typeof cause.code === "string") {
    if (UNREACHED.test(cause.code)) return `the service could not be reached (${cause.message})`;
  }
  return undefined;
}

/**
 * Any failure as an `EntitlementsError` (the one mapping from Connect/gRPC codes).
 * `callerAborted`: the caller's own signal aborted the call; otherwise a stream the transport
 * closed with CANCEL (a TLS peer that refused the client's certificate) is `Unavailable`.
 */
export function entitlementsError(err: unknown, callerAborted = false): EntitlementsError {
  if (err instanceof EntitlementsError) return err;
  const connect = ConnectError.from(err);
  const lost = unreached(connect);
  if (lost !== undefined) return new Unavailable(lost, { cause: connect });
  if (connect.code === Code.Canceled && !callerAborted) {
    return new Unavailable(`the connection closed before an answer (${connect.rawMessage})`, {
      cause: connect,
    });
  }
  const Class = CLASSES[connect.code];
  // rawMessage: the service's own message ("unknown feature 'teleport'"), without the
  // "[invalid_argument]" prefix ConnectError adds.
  return Class
    ? new Class(connect.rawMessage, { cause: connect })
    : new EntitlementsError(connect.rawMessage, NAMES[connect.code], { cause: connect });
}

/** `methods` with every function's rejection mapped by `entitlementsError`. */
export function guarded<T extends object>(methods: T): T {
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(methods)) {
    out[name] =
      typeof value === "function"
        ? async (...args: unknown[]) => {
            try {
              return await (value as (...a: unknown[]) => Promise<unknown>)(...args);
            } catch (err) {
              throw entitlementsError(err, args.some(aborted));
            }
          }
        : value;
  }
  return out as T;
}

/** A call's options whose `signal` has aborted. */
function aborted(arg: unknown): boolean {
  if (typeof arg !== "object" || arg === null || !("signal" in arg)) return false;
  const signal: unknown = arg.signal;
  return signal instanceof AbortSignal && signal.aborted;
}
