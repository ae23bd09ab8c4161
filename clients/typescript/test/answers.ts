/**
 * `node build-test/test/answers.js HTTP_BASE GRPC_BASE TOKEN SUBJECT`: the wrapper's answers
 * for SUBJECT over both transports, printed as proto JSON (int64 as strings, enums by name,
 * timestamps RFC 3339), for tests/e2e/test_same_answers.py to compare with curl and grpcurl.
 */

import {
  type CanUseResult,
  type EntitlementsClient,
  type Limit,
  type MeteredLimit,
  connectTransport,
  createEntitlementsClient,
} from "../src/index.js";
import { grpcTransport } from "../src/node.js";

type Json = Record<string, unknown>;

function when(date: Date | null, name = "validUntil"): Json {
  return date ? { [name]: date.toISOString() } : {};
}

function metered(m: MeteredLimit): Json {
  return {
    limit: m.limit,
    ...when(m.periodStart, "periodStart"),
    ...when(m.resetsAt, "resetsAt"),
    ...(m.usage
      ? {
          hasUsage: true,
          used: String(m.usage.used),
          reserved: String(m.usage.reserved),
          remaining: String(m.usage.remaining),
        }
      : {}),
  };
}

function limits(record: Record<string, Limit>): Json {
  return Object.fromEntries(
    Object.entries(record).map(([k, l]) => [k, { value: String(l.value), unlimited: l.unlimited }]),
  );
}

function canUse(a: CanUseResult): Json {
  return { allowed: a.allowed, plan: a.plan, reason: a.reason, ...when(a.validUntil) };
}

async function answers(client: EntitlementsClient, subject: string): Promise<Json> {
  const l = await client.getLimits(subject);
  const c = await client.checkLimit(subject, "maxHabits", 9n, 1n);
  const batch = await client.batchCanUse([
    { subject, feature: "dataExport" },
    { subject, feature: "aiInsights" },
  ]);
  return {
    CanUse: canUse(await client.canUse(subject, "dataExport")),
    GetLimits: {
      plan: l.plan,
      limits: limits(l.limits),
      ...when(l.validUntil),
      metered: l.metered.map(metered),
    },
    CheckLimit: {
      allowed: c.allowed,
      limit: String(c.limit),
      remaining: String(c.remaining),
      unlimited: c.unlimited,
      plan: c.plan,
      ...when(c.validUntil),
    },
    BatchCanUse: { results: batch.map(canUse) },
  };
}

const [httpBase, grpcBase, token, subject] = process.argv.slice(2);
if (!httpBase || !grpcBase || !token || !subject) {
  console.error("usage: answers.js HTTP_BASE GRPC_BASE TOKEN SUBJECT");
  process.exit(2);
}
const connect = createEntitlementsClient(connectTransport({ baseUrl: httpBase }), { token });
const grpc = createEntitlementsClient(grpcTransport({ baseUrl: grpcBase }), { token });
console.log(
  JSON.stringify({
    connect: await answers(connect, subject),
    grpc: await answers(grpc, subject),
  }),
);
