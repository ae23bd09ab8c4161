/**
 * TLS options of the gRPC transport against a real service on a mutual-TLS port
 * (ts_stack --tls: ENTITLEMENTS_TLS_CERT/KEY and ENTITLEMENTS_TLS_CLIENT_CA set, certificates
 * made for 127.0.0.1 and localhost by one CA): the CA and a client certificate get answers,
 * the local cache included; no client certificate, one from another CA, another CA to trust
 * or a server name the certificate does not carry get an EntitlementsError.
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";

import { type EntitlementsClient, EntitlementsError, createEntitlementsClient } from "../src/index.js";
import { type GrpcTls, grpcTransport, tlsFromEnv, tlsFromFiles } from "../src/node.js";
import { Stack } from "./stack.js";

let stack: Stack;
let files: NonNullable<Stack["info"]["tls"]>;

before(async () => {
  stack = await Stack.start(["--tls"]);
  assert.ok(stack.info.tls, "ts_stack --tls gave no certificates");
  files = stack.info.tls;
});

after(async () => {
  await stack?.stop();
});

function client(tls: GrpcTls, baseUrl = stack.info.grpc): EntitlementsClient {
  return createEntitlementsClient(grpcTransport({ baseUrl, tls }), {
    token: stack.info.token,
    timeoutMs: 3_000,
  });
}

async function refused(c: EntitlementsClient): Promise<void> {
  await assert.rejects(c.canUse(stack.info.paid, "dataExport"), (err: unknown) => {
    assert.ok(err instanceof EntitlementsError, String(err));
    assert.equal(err.code, "UNAVAILABLE", err.message);
    return true;
  });
}

test("mutual TLS: the CA and a client certificate (from files, as PEM text)", async () => {
  const fromFiles = client(tlsFromFiles({ ca: files.ca, cert: files.cert, key: files.key }));
  assert.equal((await fromFiles.canUse(stack.info.paid, "dataExport")).allowed, true);
  const asText = client({
    ca: readFileSync(files.ca, "utf8"),
    cert: readFileSync(files.cert, "utf8"),
    key: readFileSync(files.key, "utf8"),
  });
  assert.equal((await asText.getLimits(stack.info.free)).plan, "free");
});

test("tlsFromEnv: the Python client's and the CLI's variables", async () => {
  const tls = tlsFromEnv({
    ENTITLEMENTS_TLS_CA: files.ca,
    ENTITLEMENTS_TLS_CLIENT_CERT: files.cert,
    ENTITLEMENTS_TLS_CLIENT_KEY: files.key,
  });
  assert.ok(tls);
  assert.equal((await client(tls).canUse(stack.info.paid, "dataExport")).allowed, true);
  assert.equal(tlsFromEnv({}), undefined);
  assert.throws(() => tlsFromEnv({ ENTITLEMENTS_TLS_CLIENT_CERT: files.cert }), EntitlementsError);
  assert.throws(
    () => tlsFromEnv({ ENTITLEMENTS_TLS_CA: files.ca, ENTITLEMENTS_TLS_CLIENT_CERT: files.cert }),
    /go together/,
  );
  assert.throws(() => tlsFromFiles({ ca: "/nonexistent/ca.pem" }), /ca=\/nonexistent\/ca.pem: cannot be read/);
});

test("serverName: checked against the certificate's names", async () => {
  const ok = tlsFromFiles({ ca: files.ca, cert: files.cert, key: files.key, serverName: "localhost" });
  assert.equal((await client(ok).canUse(stack.info.paid, "dataExport")).allowed, true);
  const wrong = tlsFromFiles({
    ca: files.ca,
    cert: files.cert,
    key: files.key,
    serverName: "entitlements.example.com",
  });
  await refused(client(wrong));
});

test("refused: no client certificate, one from another CA, another CA to trust", async () => {
  await refused(client(tlsFromFiles({ ca: files.ca })));
  await refused(client(tlsFromFiles({ ca: files.ca, cert: files.rogueCert, key: files.rogueKey })));
  await refused(client(tlsFromFiles({ ca: files.rogueCert, cert: files.cert, key: files.key })));
  assert.throws(() => grpcTransport({ baseUrl: stack.info.grpc, tls: { cert: "x" } }), /go together/);
});

test("the local cache over TLS", async () => {
  const c = createEntitlementsClient(
    grpcTransport({ baseUrl: stack.info.grpc, tls: tlsFromFiles({ ca: files.ca, cert: files.cert, key: files.key }) }),
    { token: stack.info.token, localCache: true },
  );
  try {
    assert.ok(await c.waitSynced(10_000));
    assert.equal(await c.allowed(stack.info.paid, "dataExport"), true);
    assert.ok(c.cache?.fresh(stack.info.paid));
  } finally {
    await c.close();
  }
});
