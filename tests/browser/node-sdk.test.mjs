// The same SDK file, unchanged, in Node.js against a real `twistd -n ets`.
//
// Node's fetch sends no Origin header, and ETS admits only allowlisted
// origins, so a server-side caller passes a `fetch` that adds the Origin it
// is allowlisted under (the SDK's documented `fetch` option).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";

import { createGatewayClient, GatewayError } from "../../sdk/tvm.mjs";
import { REPO, SIGNING_KEY, startEts } from "./support/ets.mjs";
import { startUpstream } from "./support/upstream.mjs";

const ORIGIN = "https://app.example";

/** @type {Awaited<ReturnType<typeof startUpstream>>} */ let upstream;
/** @type {import("./support/ets.mjs").Ets} */ let ets;

before(async () => {
  upstream = await startUpstream();
  ets = await startEts({
    ORIGIN_ALLOWLIST: ORIGIN,
    TVM_JWT_HS256_KEY: SIGNING_KEY,
    UPSTREAM_BASE_URL: upstream.base,
  });
});

after(async () => {
  await ets?.stop();
  await upstream?.close();
});

/** fetch with the allowlisted Origin added to every request. @type {typeof fetch} */
const fetchWithOrigin = (input, init = {}) => {
  const headers = new Headers(init.headers);
  headers.set("Origin", ORIGIN);
  return fetch(input, { ...init, headers });
};

test("the file ETS serves at /sdk/tvm.mjs is the sdk/tvm.mjs imported here (so this test covers what browsers get)", async () => {
  const served = await (await fetch(`${ets.base}/sdk/tvm.mjs`)).text();
  assert.equal(served, readFileSync(`${REPO}sdk/tvm.mjs`, "utf8"), "stale install? run `make install`");
});

test("in Node.js 20 the SDK mints a token and postJson reaches the upstream through ETS, with credentials not forwarded", async () => {
  const client = createGatewayClient({ baseUrl: ets.base, keyStore: "memory", fetch: fetchWithOrigin });

  const answer = await client.postJson({ from: "node" }, { path: "/api/node" });

  assert.deepEqual(answer, { method: "POST", path: "/api/node", body: { from: "node" } });
  const got = upstream.received.filter((r) => r.path === "/api/node");
  assert.equal(got.length, 1);
  assert.equal(got[0].headers.authorization, undefined);
  assert.equal(got[0].headers.dpop, undefined);
  assert.equal(client.inspect().keyStore, "memory");
});

test("in Node.js without an Origin header the mint is refused: postJson rejects with GatewayError 403 origin_not_allowed", async () => {
  const client = createGatewayClient({ baseUrl: ets.base, keyStore: "memory" });

  await assert.rejects(client.postJson({ from: "node" }, { path: "/api/no-origin" }), (err) => {
    assert.ok(err instanceof GatewayError);
    assert.equal(err.status, 403);
    assert.equal(err.code, "origin_not_allowed");
    return true;
  });
  assert.equal(upstream.received.filter((r) => r.path === "/api/no-origin").length, 0);
});
