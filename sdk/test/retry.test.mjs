// 401 handling: nonce retry, expired-token retry, both bounded.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createGatewayClient, GatewayError } from "../tvm.mjs";
import { BASE, fakeGateway, fakeClock, json, unauthorized } from "../test-support/fake-gateway.mjs";

function setup(gwOptions = {}, clientOptions = {}) {
  const clock = fakeClock();
  const gw = fakeGateway({ serverNow: clock.now, ...gwOptions });
  const client = createGatewayClient({ baseUrl: BASE, fetch: gw.fetch, keyStore: "memory", now: clock.now, ...clientOptions });
  return { clock, gw, client };
}

test("use_dpop_nonce: one retry with a fresh proof carrying the nonce; later calls reuse it", async () => {
  const events = [];
  const { gw, client } = setup({ nonce: "nonce-A" }, { onDebug: (e) => events.push(e.type) });
  const answer = await client.postJson({ x: 1 }, { path: "/api/chat" });
  assert.ok(answer.ok);
  const [first, second] = gw.apiRequests;
  assert.equal(gw.apiRequests.length, 2);
  assert.deepEqual(gw.rejected, [{ code: "use_dpop_nonce", url: `${BASE}/api/chat` }]);
  assert.notEqual(first.headers.get("DPoP"), second.headers.get("DPoP"));
  assert.equal(second.proof.payload.nonce, "nonce-A");
  assert.equal(second.body, first.body); // same body resent
  assert.ok(events.includes("retry"));

  await client.postJson({});
  assert.equal(gw.apiRequests.length, 3); // no 401 this time
  assert.equal(gw.proofs.at(-1).payload.nonce, "nonce-A");
  assert.equal(gw.mints, 1);
  const jtis = gw.apiRequests.map((r) => JSON.parse(Buffer.from(r.headers.get("DPoP").split(".")[1], "base64url")).jti);
  assert.equal(new Set(jtis).size, 3); // fresh jti on every request and every retry
});

test("any answer's DPoP-Nonce updates the kept nonce", async () => {
  let n = 0;
  const { gw, client } = setup({ onApi: () => json(200, { ok: true }, { "DPoP-Nonce": `rolling-${++n}` }) });
  await client.postJson({});
  await client.postJson({});
  await client.fetchResponse(undefined, { method: "GET" });
  assert.deepEqual(
    gw.proofs.map((p) => p.payload.nonce),
    [undefined, "rolling-1", "rolling-2"],
  );
  assert.equal(client.inspect().nonce, "rolling-3");
});

test("use_dpop_nonce signalled only by WWW-Authenticate (non-JSON body) is retried too", async () => {
  let first = true;
  const { gw, client } = setup({
    onApi: () => {
      if (!first) return undefined;
      first = false;
      return new Response("nonce please", {
        status: 401,
        headers: { "WWW-Authenticate": 'DPoP algs="ES256", error="use_dpop_nonce"', "DPoP-Nonce": "hdr-nonce" },
      });
    },
  });
  assert.ok((await client.postJson({})).ok);
  assert.equal(gw.proofs[1].payload.nonce, "hdr-nonce");
});

test("the nonce retry happens once: a second use_dpop_nonce is surfaced", async () => {
  let n = 0;
  const { gw, client } = setup({ onApi: () => unauthorized("use_dpop_nonce", { "DPoP-Nonce": `n${++n}` }) });
  const err = await client.postJson({}).catch((e) => e);
  assert.ok(err instanceof GatewayError);
  assert.equal(err.status, 401);
  assert.equal(err.code, "use_dpop_nonce");
  assert.deepEqual(err.body, { error: "use_dpop_nonce" });
  assert.equal(gw.apiRequests.length, 2);
  assert.equal(client.inspect().nonce, "n2");
});

test("use_dpop_nonce without a DPoP-Nonce header is not retried", async () => {
  const { gw, client } = setup({ onApi: () => unauthorized("use_dpop_nonce") });
  await assert.rejects(client.postJson({}), { code: "use_dpop_nonce" });
  assert.equal(gw.apiRequests.length, 1);
});

test("expired token (401 invalid_token): drop it, mint once more, retry once", async () => {
  const { gw, client } = setup();
  await client.postJson({});
  const oldToken = gw.apiRequests[0].token;
  gw.expire(oldToken); // the server says expired while the client thinks it is fresh
  assert.ok((await client.postJson({})).ok);
  assert.equal(gw.mints, 2);
  assert.equal(gw.apiRequests.length, 3);
  assert.deepEqual(gw.rejected, []); // invalid_token comes before the proof check
  const retry = gw.apiRequests[2];
  assert.notEqual(retry.token, oldToken);
  assert.equal(retry.headers.get("Authorization"), `DPoP ${retry.token}`);
  assert.equal(retry.proof.payload.ath, gw.proofs.at(-1).payload.ath);
});

test("a second invalid_token is surfaced as GatewayError, not looped", async () => {
  const { gw, client } = setup({ onApi: () => unauthorized("invalid_token") });
  const err = await client.postJson({}).catch((e) => e);
  assert.ok(err instanceof GatewayError);
  assert.equal(err.status, 401);
  assert.equal(err.code, "invalid_token");
  assert.equal(gw.mints, 2);
  assert.equal(gw.apiRequests.length, 2);
});

test("bad_claims also re-mints once; unrelated 401s are surfaced at once", async () => {
  let answered = false;
  const remint = setup({ onApi: () => (answered ? undefined : ((answered = true), unauthorized("bad_claims"))) });
  assert.ok((await remint.client.postJson({})).ok);
  assert.equal(remint.gw.mints, 2);

  const other = setup({ onApi: () => unauthorized("bad_dpop_sig") });
  await assert.rejects(other.client.postJson({}), { status: 401, code: "bad_dpop_sig" });
  assert.equal(other.gw.apiRequests.length, 1);
  assert.equal(other.gw.mints, 1);
});

test("nonce and token retries combine, each at most once", async () => {
  const { gw, client } = setup({ nonce: "N" });
  await client.postJson({}); // learns the nonce
  gw.expire(gw.apiRequests.at(-1).token);
  gw.nonce = "N2"; // and the nonce rotates as well
  assert.ok((await client.postJson({})).ok);
  // invalid_token -> re-mint -> use_dpop_nonce -> retry with N2
  assert.equal(gw.mints, 2);
  assert.equal(gw.proofs.at(-1).payload.nonce, "N2");
  assert.equal(gw.apiRequests.length, 5);
});

test("concurrent 401 invalid_token calls share one re-mint", async () => {
  const { gw, client } = setup();
  await client.postJson({});
  gw.expire(gw.apiRequests[0].token);
  await Promise.all([client.postJson({}), client.postJson({}), client.postJson({})]);
  assert.equal(gw.mints, 2);
});

test("a ReadableStream body is sent once (half duplex) and never retried", async () => {
  const { gw, client } = setup({ nonce: "N" });
  const body = new ReadableStream({
    start(c) {
      c.enqueue(new TextEncoder().encode("chunk"));
      c.close();
    },
  });
  const res = await client.fetchResponse(body, { path: "/api/upload" });
  assert.equal(res.status, 401);
  assert.equal(gw.apiRequests.length, 1);
  assert.equal(gw.apiRequests[0].init.duplex, "half");
  assert.equal(gw.apiRequests[0].body, body);
  // the nonce was kept, so the next stream goes through at once
  const res2 = await client.fetchResponse(new ReadableStream({ start: (c) => c.close() }), { path: "/api/upload" });
  assert.equal(res2.status, 200);
});

test("a local clock that jumped back (dpop_iat_too_old) is re-learned by one re-mint", async () => {
  const { gw, client, clock } = setup();
  const serverTime = clock.now();
  gw.serverNow = () => serverTime; // the server's clock stays put...
  await client.postJson({});
  clock.advance(-600_000); // ...while the local clock goes back 10 minutes
  assert.ok((await client.postJson({})).ok);
  assert.deepEqual(gw.rejected.map((r) => r.code), ["dpop_iat_too_old"]);
  assert.equal(gw.mints, 2);
  assert.equal(Math.round(client.inspect().clockOffsetMs / 1000), 600);
});
