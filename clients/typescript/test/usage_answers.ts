/**
 * `node build-test/test/usage_answers.js HTTP_BASE GRPC_BASE TOKEN SUBJECT STEPS_JSON`: the
 * wrapper's usage answers over both transports, printed as proto JSON (int64 as strings,
 * timestamps RFC 3339), for tests/e2e/test_same_answers.py to compare with raw gRPC and curl.
 *
 * Over each transport (subject `${SUBJECT}_connect`, `${SUBJECT}_grpc`): every step of
 * STEPS_JSON (`[{"amount": 15, "key": "a"}, …]`) as a `consume` of aiInsightsPerMonth, then
 * `getUsage`, then a `consume` without the token (its error's code number and message).
 */

import {
  ConnectError,
  type ConsumeResult,
  type EntitlementsClient,
  type MeteredUsage,
  type Transport,
  Unauthenticated,
  connectTransport,
  createEntitlementsClient,
} from "../src/index.js";
import { grpcTransport } from "../src/node.js";

type Json = Record<string, unknown>;
interface Step {
  amount: number;
  key: string;
}

const METER = "aiInsightsPerMonth";

function time(name: string, date: Date | null): Json {
  return date ? { [name]: date.toISOString() } : {};
}

function consumed(r: ConsumeResult): Json {
  return {
    allowed: r.allowed,
    used: String(r.used),
    remaining: String(r.remaining),
    unlimited: r.unlimited,
    ...time("resetsAt", r.resetsAt),
    duplicate: r.duplicate,
    limitValue: String(r.limitValue),
  };
}

function metered(u: MeteredUsage): Json {
  return {
    limit: u.limit,
    used: String(u.used),
    reserved: String(u.reserved),
    remaining: String(u.remaining),
    unlimited: u.unlimited,
    ...time("periodStart", u.periodStart),
    ...time("resetsAt", u.resetsAt),
    limitValue: String(u.limitValue),
  };
}

async function answers(
  transport: Transport,
  token: string,
  subject: string,
  steps: Step[],
): Promise<Json> {
  const client: EntitlementsClient = createEntitlementsClient(transport, { token });
  const consume: Json[] = [];
  for (const step of steps) {
    consume.push(consumed(await client.consume(subject, METER, step.amount, step.key)));
  }
  const usage = { subject, usage: (await client.getUsage(subject)).map(metered) };
  let unauthenticated: Json = {};
  try {
    await createEntitlementsClient(transport).consume(subject, METER, 1, "anonymous");
  } catch (err) {
    // An EntitlementsError named as Python's exception; the wire code is its cause's.
    if (!(err instanceof Unauthenticated) || !(err.cause instanceof ConnectError)) throw err;
    unauthenticated = { code: err.cause.code, message: err.message };
  }
  return { consume, usage, unauthenticated };
}

const [httpBase, grpcBase, token, subject, stepsJson] = process.argv.slice(2);
if (!httpBase || !grpcBase || !token || !subject || !stepsJson) {
  console.error("usage: usage_answers.js HTTP_BASE GRPC_BASE TOKEN SUBJECT STEPS_JSON");
  process.exit(2);
}
const steps = JSON.parse(stepsJson) as Step[];
console.log(
  JSON.stringify({
    connect: await answers(
      connectTransport({ baseUrl: httpBase }),
      token,
      `${subject}_connect`,
      steps,
    ),
    grpc: await answers(grpcTransport({ baseUrl: grpcBase }), token, `${subject}_grpc`, steps),
  }),
);
