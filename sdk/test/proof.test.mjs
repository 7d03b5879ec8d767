// DPoP proofs: header, claims, raw r||s signature, clock correction, key.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createGatewayClient } from "../tvm.mjs";
import { BASE, fakeGateway, fakeClock, sha256, thumbprint, verifyProof, decodeJws } from "../test-support/fake-gateway.mjs";

function setup({ serverAheadMs = 0, ...gwOptions } = {}) {
  const clock = fakeClock();
  const gw = fakeGateway({ serverNow: () => clock.now() + serverAheadMs, ...gwOptions });
  const client = createGatewayClient({ baseUrl: BASE, fetch: gw.fetch, keyStore: "memory", now: clock.now });
  return { clock, gw, client };
}

/** ECDSA raw r||s -> DER, i.e. what the old SDK wrongly did in reverse. */
function rawToDer(raw) {
  const int = (bytes) => {
    let i = 0;
    while (i < bytes.length - 1 && bytes[i] === 0) i++;
    let v = bytes.slice(i);
    if (v[0] & 0x80) v = Uint8Array.of(0, ...v);
    return Uint8Array.of(0x02, v.length, ...v);
  };
  const r = int(raw.slice(0, 32));
  const s = int(raw.slice(32));
  return Uint8Array.of(0x30, r.length + s.length, ...r, ...s);
}

test("proof header is dpop+jwt / ES256 with a public-only jwk matching the token's cnf", async () => {
  const { gw, client } = setup();
  await client.postJson({ a: 1 });
  assert.deepEqual(gw.rejected, []);
  const [{ header }] = gw.proofs;
  assert.deepEqual(Object.keys(header).sort(), ["alg", "jwk", "typ"]);
  assert.equal(header.typ, "dpop+jwt");
  assert.equal(header.alg, "ES256");
  assert.deepEqual(Object.keys(header.jwk).sort(), ["crv", "kty", "x", "y"]);
  assert.equal(header.jwk.d, undefined);
  assert.deepEqual(gw.issued[0].dpopPublicJwk, header.jwk);
  assert.equal(await client.thumbprint(), await thumbprint(header.jwk));
});

test("signature is raw r||s (64 bytes, verifies as is), not DER", async () => {
  const { gw, client } = setup();
  await client.postJson({});
  const dpop = gw.apiRequests[0].headers.get("DPoP");
  const { signature, header, signingInput } = decodeJws(dpop);
  assert.equal(signature.length, 64);
  const key = await crypto.subtle.importKey("jwk", header.jwk, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
  const data = new TextEncoder().encode(signingInput);
  assert.equal(await crypto.subtle.verify({ name: "ECDSA", hash: "SHA-256" }, key, signature, data), true);
  // The fake server would refuse the DER form: the check above is meaningful.
  const der = Buffer.from(rawToDer(signature)).toString("base64url");
  const derProof = `${signingInput}.${der}`;
  const verdict = await verifyProof(derProof, { method: "POST", url: `${BASE}/api`, serverSec: Math.floor(Date.now() / 1000) });
  assert.equal(verdict.code, "bad_dpop_sig");
});

test("claims: htm, htu without query/fragment, integer iat, ath, fresh jti", async () => {
  const { gw, client } = setup();
  await client.postJson({ q: 1 }, { path: "/api/search?q=hello&key=x#frag" });
  await client.fetchResponse(undefined, { path: "/api/items/7?page=2", method: "get" });
  await client.fetchResponse("x", { path: "/api/items", method: "put" });
  assert.deepEqual(gw.rejected, []);
  const [a, b, c] = gw.proofs.map((p) => p.payload);
  assert.equal(a.htm, "POST");
  assert.equal(a.htu, `${BASE}/api/search`);
  assert.equal(gw.apiRequests[0].url, `${BASE}/api/search?q=hello&key=x#frag`);
  assert.equal(b.htm, "GET");
  assert.equal(b.htu, `${BASE}/api/items/7`);
  assert.equal(c.htm, "PUT");
  const token = gw.apiRequests[0].token;
  assert.equal(a.ath, await sha256(token));
  for (const p of [a, b, c]) {
    assert.ok(Number.isInteger(p.iat));
    assert.match(p.jti, /^[A-Za-z0-9_-]{22}$/); // 16 random bytes
    assert.equal(p.nonce, undefined);
  }
  assert.equal(new Set([a.jti, b.jti, c.jti]).size, 3);
  assert.equal(gw.apiRequests[0].headers.get("Authorization"), `DPoP ${token}`);
});

test("htu is normalised from baseUrl (host case, default port, trailing slash, path prefix)", async () => {
  const gw = fakeGateway();
  const client = createGatewayClient({ baseUrl: "HTTPS://ETS.Example:443/gw/", fetch: gw.fetch, keyStore: "memory" });
  await client.postJson({}, { path: "api/x" });
  assert.equal(gw.requests[0].url, "https://ets.example/gw/tvm/issue");
  assert.equal(gw.proofs[0].payload.htu, "https://ets.example/gw/api/x");
});

for (const [label, aheadMs] of [["ahead of", 3_600_000], ["behind", -7_200_500]]) {
  test(`iat is corrected by serverTime when the server clock is ${label} the client`, async () => {
    const { gw, client, clock } = setup({ serverAheadMs: aheadMs });
    await client.postJson({});
    clock.advance(12_345);
    await client.postJson({});
    assert.deepEqual(gw.rejected, []);
    const serverSec = Math.floor((clock.now() + aheadMs) / 1000);
    const [first, second] = gw.proofs.map((p) => p.payload.iat);
    // serverTime is whole seconds, so the correction may lag by under 1 s.
    assert.ok(serverSec - second <= 1 && second <= serverSec, `iat ${second} vs server ${serverSec}`);
    assert.equal(second - first, 12);
    assert.ok(Math.abs(client.inspect().clockOffsetMs - aheadMs) < 1000);
  });
}

test("private key is not extractable; the public key is", async () => {
  const { client } = setup();
  const { privateKey, publicKey } = await client.keyPair();
  assert.equal(privateKey.extractable, false);
  assert.equal(privateKey.algorithm.namedCurve, "P-256");
  await assert.rejects(crypto.subtle.exportKey("jwk", privateKey));
  await assert.rejects(crypto.subtle.exportKey("pkcs8", privateKey));
  const jwk = await crypto.subtle.exportKey("jwk", publicKey);
  assert.equal(jwk.d, undefined);
  assert.equal(client.inspect().keyStore, "memory");
});

test("one key per client, distinct between clients", async () => {
  const a = setup().client;
  const b = setup().client;
  assert.equal(await a.thumbprint(), await a.thumbprint());
  assert.notEqual(await a.thumbprint(), await b.thumbprint());
});
