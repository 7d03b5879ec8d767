// Minting: single flight, refresh margin, challenge provider, failures and back-off.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createGatewayClient, GatewayError } from "../tvm.mjs";
import { BASE, fakeGateway, fakeClock, json, thumbprint } from "../test-support/fake-gateway.mjs";

function setup({ serverAheadMs = 0, client: clientOptions = {}, ...gwOptions } = {}) {
  const clock = fakeClock();
  const gw = fakeGateway({ serverNow: () => clock.now() + serverAheadMs, ...gwOptions });
  const client = createGatewayClient({ baseUrl: BASE, fetch: gw.fetch, keyStore: "memory", now: clock.now, ...clientOptions });
  return { clock, gw, client };
}

test("single flight: concurrent calls share one mint", async () => {
  const { gw, client } = setup();
  const answers = await Promise.all(Array.from({ length: 10 }, (_, i) => client.postJson({ i })));
  assert.equal(gw.mints, 1);
  assert.equal(answers.length, 10);
  assert.ok(answers.every((a) => a.ok));
  assert.equal(gw.proofs.length, 10);
  assert.equal(new Set(gw.proofs.map((p) => p.payload.jti)).size, 10);
  assert.deepEqual(gw.rejected, []);
  // getToken joins the same flight too
  const { client: c2, gw: gw2 } = setup();
  const [t1, t2] = await Promise.all([c2.getToken(), c2.getToken(), c2.postJson({})]);
  assert.equal(gw2.mints, 1);
  assert.equal(t1.accessToken, t2.accessToken);
});

test("token is reused, then refreshed when 20 s or less remain (by the corrected clock)", async () => {
  // Server clock one hour ahead: judged by the local clock alone, a 30 s
  // token would look long expired and be re-minted on every call.
  const { gw, client, clock } = setup({ lifetime: 30, serverAheadMs: 3_600_000 });
  await client.postJson({});
  assert.equal(gw.mints, 1);
  clock.advance(9_000); // 21 s left
  await client.postJson({});
  assert.equal(gw.mints, 1);
  clock.advance(1_000); // 20 s left
  await client.postJson({});
  assert.equal(gw.mints, 2);
  clock.advance(5_000); // new token has 25 s left
  await client.postJson({});
  assert.equal(gw.mints, 2);
  assert.deepEqual(gw.rejected, []);
  const tokens = gw.apiRequests.map((r) => r.token);
  assert.equal(new Set(tokens).size, 2);
  assert.equal(tokens[2], tokens[3]);
});

test("getToken reports the token with a local-clock expiry", async () => {
  const { client, clock } = setup({ serverAheadMs: -50_000 });
  const info = await client.getToken();
  assert.match(info.accessToken, /^tok-1-/);
  assert.equal(info.tokenType, "DPoP");
  assert.equal(info.expiresIn, 300);
  // serverTime is whole seconds: within a second of now + 300 s
  assert.ok(Math.abs(info.expiresAt - (clock.now() + 300_000)) < 1000);
  assert.deepEqual(client.inspect().token, info);
});

test("etsTokenProvider: a value, a promise, once per mint; absent without a provider", async () => {
  let calls = 0;
  const sync = setup({ client: { etsTokenProvider: () => `challenge-${++calls}` } });
  await Promise.all([sync.client.postJson({}), sync.client.postJson({})]);
  assert.equal(calls, 1);
  assert.equal(sync.gw.issued[0].etsToken, "challenge-1");
  await sync.client.clear();
  await sync.client.postJson({});
  assert.equal(calls, 2);
  assert.equal(sync.gw.issued[1].etsToken, "challenge-2");

  const async_ = setup({ client: { etsTokenProvider: async () => "from-promise" } });
  await async_.client.postJson({});
  assert.equal(async_.gw.issued[0].etsToken, "from-promise");

  const none = setup();
  await none.client.postJson({});
  assert.deepEqual(Object.keys(none.gw.issued[0]), ["dpopPublicJwk"]);
});

test("a provider failure reaches the caller and starts no back-off", async () => {
  let fail = true;
  const { gw, client } = setup({
    client: {
      etsTokenProvider: () => {
        if (fail) throw new Error("challenge not solved");
        return "ok";
      },
    },
  });
  await assert.rejects(client.postJson({}), /challenge not solved/);
  assert.equal(gw.requests.length, 0);
  fail = false;
  await client.postJson({}); // at once, same clock
  assert.equal(gw.mints, 1);
});

test("a failed mint is not cached: back-off then retry, doubling and bounded", async () => {
  let failing = true;
  const { gw, client, clock } = setup({
    onIssue: () => (failing ? json(503, { error: "ets_unavailable" }) : undefined),
  });
  const first = await client.postJson({}).catch((e) => e);
  assert.ok(first instanceof GatewayError);
  assert.equal(first.status, 503);
  assert.equal(first.code, "ets_unavailable");
  assert.equal(gw.mints, 1);

  // Inside the window: rejected at once with the last error, issuer not asked.
  await assert.rejects(client.postJson({}), (e) => e === first);
  assert.equal(gw.mints, 1);

  clock.advance(500);
  await assert.rejects(client.postJson({}), { code: "ets_unavailable" });
  assert.equal(gw.mints, 2);
  clock.advance(999); // second window is 1 s
  await assert.rejects(client.postJson({}));
  assert.equal(gw.mints, 2);
  clock.advance(1);
  await assert.rejects(client.postJson({}));
  assert.equal(gw.mints, 3);

  // Many failures: the window never exceeds 30 s.
  for (let i = 0; i < 12; i++) {
    clock.advance(30_000);
    await assert.rejects(client.postJson({}));
    const { retryAt, failures } = client.inspect();
    assert.equal(failures, 4 + i);
    assert.ok(retryAt - clock.now() <= 30_000);
  }
  assert.equal(client.inspect().retryAt - clock.now(), 30_000);
  assert.equal(gw.mints, 15);

  failing = false;
  clock.advance(30_000);
  assert.deepEqual(await client.postJson({}), { ok: true, method: "POST", path: "/api", n: 1 });
  assert.equal(client.inspect().failures, 0);
  assert.equal(client.inspect().retryAt, null);
});

test("network failures of the issuer back off too; clear() lifts the back-off", async () => {
  let down = true;
  const gw = fakeGateway();
  const clock = fakeClock();
  const client = createGatewayClient({
    baseUrl: BASE,
    keyStore: "memory",
    now: clock.now,
    fetch: (url, init) => (down ? Promise.reject(new TypeError("fetch failed")) : gw.fetch(url, init)),
  });
  const err = await client.postJson({}).catch((e) => e);
  assert.equal(err.code, "network_error");
  assert.equal(err.status, 0);
  assert.ok(err.cause instanceof TypeError);
  down = false;
  await assert.rejects(client.postJson({}), (e) => e === err);
  await client.clear();
  await client.postJson({});
  assert.equal(gw.mints, 1);
});

test("Retry-After of a refused mint stretches the back-off, within the 30 s bound", async () => {
  const { client, clock } = setup({ onIssue: () => json(429, { error: "rate_limited" }, { "Retry-After": "7" }) });
  const err = await client.postJson({}).catch((e) => e);
  assert.equal(err.code, "rate_limited");
  assert.equal(err.retryAfter, 7);
  assert.equal(client.inspect().retryAt - clock.now(), 7_000);

  const big = setup({ onIssue: () => json(429, { error: "rate_limited" }, { "Retry-After": "3600" }) });
  await assert.rejects(big.client.postJson({}));
  assert.equal(big.client.inspect().retryAt - big.clock.now(), 30_000);
});

test("while a refresh fails, the still-valid token keeps being used until it expires", async () => {
  let failing = false;
  const { gw, client, clock } = setup({ lifetime: 60, onIssue: () => (failing ? json(503, { error: "store_unavailable" }) : undefined) });
  await client.postJson({});
  failing = true;
  clock.advance(45_000); // 15 s left: refresh due, and it fails
  assert.ok((await client.postJson({})).ok);
  assert.equal(gw.mints, 2);
  clock.advance(15_000); // expired
  await assert.rejects(client.postJson({}), { code: "store_unavailable" });
});

test("a malformed token answer is a GatewayError invalid_response", async () => {
  const { client } = setup({ onIssue: () => json(200, { accessToken: "", expiresIn: 300 }) });
  await assert.rejects(client.getToken(), { name: "GatewayError", code: "invalid_response", status: 200 });
});

test("clear() forgets token and nonce; thumbprint is the token's cnf.jkt", async () => {
  const { gw, client } = setup({ nonce: "n1" });
  await client.postJson({});
  assert.equal(client.inspect().nonce, "n1");
  const jkt = await client.thumbprint();
  assert.equal(jkt, gw.tokens.get(gw.apiRequests.at(-1).token).jkt);
  assert.equal(jkt, await thumbprint(gw.issued[0].dpopPublicJwk));
  await client.clear();
  assert.equal(client.inspect().token, null);
  assert.equal(client.inspect().nonce, null);
  await client.postJson({});
  assert.equal(gw.mints, 2);
  assert.equal(await client.thumbprint(), jkt); // same key
});

test("an aborted caller leaves the shared mint to the others", async () => {
  let release;
  const gate = new Promise((r) => (release = r));
  const { gw, client } = setup({ onIssue: () => gate.then(() => undefined) });
  const controller = new AbortController();
  const aborted = client.postJson({}, { signal: controller.signal });
  const other = client.postJson({});
  await new Promise((r) => setTimeout(r, 10));
  controller.abort();
  await assert.rejects(aborted, { name: "AbortError" });
  release();
  assert.ok((await other).ok);
  assert.equal(gw.mints, 1);
  assert.equal(gw.apiRequests.length, 1);
});
