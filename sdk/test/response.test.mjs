// postJson / fetchResponse: error mapping, raw responses, streaming, bodies, abort.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createGatewayClient, GatewayError } from "../tvm.mjs";
import { BASE, fakeGateway, json } from "../test-support/fake-gateway.mjs";

function setup(gwOptions = {}) {
  const gw = fakeGateway(gwOptions);
  const client = createGatewayClient({ baseUrl: BASE, fetch: gw.fetch, keyStore: "memory" });
  return { gw, client };
}

test("postJson sends JSON with the DPoP headers and returns the parsed answer", async () => {
  const { gw, client } = setup({ onApi: (r) => json(200, { echo: JSON.parse(r.body) }) });
  const answer = await client.postJson({ q: "é", n: [1, 2] }, { path: "/api/search?lang=fr", headers: { "X-Trace": "t1" } });
  assert.deepEqual(answer, { echo: { q: "é", n: [1, 2] } });
  const req = gw.apiRequests[0];
  assert.equal(req.method, "POST");
  assert.equal(req.url, `${BASE}/api/search?lang=fr`);
  assert.equal(req.headers.get("Content-Type"), "application/json");
  assert.equal(req.headers.get("Accept"), "application/json");
  assert.equal(req.headers.get("X-Trace"), "t1");
  assert.match(req.headers.get("Authorization"), /^DPoP tok-1-/);
  assert.equal(req.headers.get("DPoP").split(".").length, 3);
  assert.equal(gw.requests[0].headers.get("Content-Type"), "application/json"); // the mint
});

test("GatewayError for 403 origin_not_allowed (mint), 429 with Retry-After, 502 non-JSON", async () => {
  const forbidden = setup({ onIssue: () => json(403, { error: "origin_not_allowed" }) });
  const e403 = await forbidden.client.postJson({}).catch((e) => e);
  assert.ok(e403 instanceof GatewayError && e403 instanceof Error);
  assert.equal(e403.name, "GatewayError");
  assert.equal(e403.status, 403);
  assert.equal(e403.code, "origin_not_allowed");
  assert.deepEqual(e403.body, { error: "origin_not_allowed" });
  assert.equal(e403.retryAfter, null);

  const limited = setup({ onApi: () => json(429, { error: "rate_limited", message: "slow down" }, { "Retry-After": "3" }) });
  const e429 = await limited.client.postJson({}).catch((e) => e);
  assert.equal(e429.status, 429);
  assert.equal(e429.code, "rate_limited");
  assert.deepEqual(e429.body, { error: "rate_limited", message: "slow down" });
  assert.equal(e429.retryAfter, 3);

  const bad = setup({ onApi: () => new Response("<html>Bad Gateway</html>", { status: 502, headers: { "Content-Type": "text/html" } }) });
  const e502 = await bad.client.postJson({}).catch((e) => e);
  assert.equal(e502.status, 502);
  assert.equal(e502.code, "http_502");
  assert.equal(e502.body, "<html>Bad Gateway</html>");

  const upstream = setup({ onApi: () => json(504, { error: "upstream_timeout" }) });
  await assert.rejects(upstream.client.postJson({}), { status: 504, code: "upstream_timeout" });
});

test("network failure of an API call: GatewayError network_error with the cause", async () => {
  const gw = fakeGateway();
  const client = createGatewayClient({
    baseUrl: BASE,
    keyStore: "memory",
    fetch: (url, init) => (url.endsWith("/tvm/issue") ? gw.fetch(url, init) : Promise.reject(new TypeError("Failed to fetch"))),
  });
  const err = await client.postJson({}).catch((e) => e);
  assert.ok(err instanceof GatewayError);
  assert.equal(err.status, 0);
  assert.equal(err.code, "network_error");
  assert.equal(err.body, null);
  assert.equal(err.cause.message, "Failed to fetch");
  await assert.rejects(client.fetchResponse({}), { code: "network_error" });
});

test("2xx answers: empty body is null, non-JSON is invalid_response", async () => {
  const empty = setup({ onApi: () => new Response(null, { status: 204 }) });
  assert.equal(await empty.client.postJson({}), null);
  const html = setup({ onApi: () => new Response("<p>hi</p>", { status: 200 }) });
  await assert.rejects(html.client.postJson({}), { code: "invalid_response", status: 200, body: "<p>hi</p>" });
});

test("fetchResponse returns the raw Response for a non-2xx answer without throwing", async () => {
  const { client } = setup({ onApi: () => json(404, { error: "not_found" }) });
  const res = await client.fetchResponse({ a: 1 }, { path: "/api/missing" });
  assert.ok(res instanceof Response);
  assert.equal(res.status, 404);
  assert.equal(res.ok, false);
  assert.deepEqual(await res.json(), { error: "not_found" });
});

test("fetchResponse returns a surfaced 401 with its body unread", async () => {
  const { client } = setup({ onApi: () => json(401, { error: "replay" }, { "WWW-Authenticate": 'DPoP error="invalid_dpop_proof"' }) });
  const res = await client.fetchResponse({});
  assert.equal(res.status, 401);
  assert.deepEqual(await res.json(), { error: "replay" });
});

test("a streamed answer is readable chunk by chunk as it arrives", async () => {
  const enc = new TextEncoder();
  let controller;
  const stream = new ReadableStream({ start: (c) => (controller = c) });
  const { client } = setup({ onApi: () => new Response(stream, { headers: { "Content-Type": "text/event-stream" } }) });
  controller.enqueue(enc.encode("data: one\n\n"));
  const res = await client.fetchResponse({ stream: true }, { path: "/api/stream" });
  assert.equal(res.headers.get("Content-Type"), "text/event-stream");
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  assert.equal(dec.decode((await reader.read()).value), "data: one\n\n");
  // The second chunk does not exist yet: the SDK did not wait for the end.
  const pending = reader.read();
  controller.enqueue(enc.encode("data: two\n\n"));
  assert.equal(dec.decode((await pending).value), "data: two\n\n");
  controller.close();
  assert.equal((await reader.read()).done, true);
});

test("fetchResponse bodies: raw types as is, others as JSON, none for GET/HEAD", async () => {
  const { gw, client } = setup();
  const blob = new Blob(["b"], { type: "text/plain" });
  const form = new FormData();
  form.set("f", "1");
  const params = new URLSearchParams({ p: "1" });
  const bytes = new Uint8Array([1, 2, 3]);
  const buffer = bytes.buffer;
  for (const raw of ["text", blob, form, params, bytes, buffer]) await client.fetchResponse(raw);
  const sent = gw.apiRequests.map((r) => r.body);
  assert.deepEqual(sent, ["text", blob, form, params, bytes, buffer]);
  assert.ok(gw.apiRequests.every((r) => !r.headers.has("Content-Type")));

  await client.fetchResponse({ a: 1 }, { method: "patch" });
  let last = gw.apiRequests.at(-1);
  assert.equal(last.method, "PATCH");
  assert.equal(last.body, '{"a":1}');
  assert.equal(last.headers.get("Content-Type"), "application/json");

  await client.fetchResponse([1], { headers: { "Content-Type": "application/vnd.x+json" } });
  assert.equal(gw.apiRequests.at(-1).headers.get("Content-Type"), "application/vnd.x+json");

  await client.fetchResponse({ ignored: true }, { method: "GET", path: "/api/items?x=1" });
  await client.fetchResponse("ignored", { method: "head" });
  for (const r of gw.apiRequests.slice(-2)) assert.equal(r.body, undefined);
  assert.deepEqual(gw.apiRequests.slice(-2).map((r) => r.method), ["GET", "HEAD"]);
  assert.deepEqual(gw.rejected, []);
});

test("signal is passed to fetch; an abort rejects with AbortError, not GatewayError", async () => {
  const { gw, client } = setup({
    onApi: (r) =>
      new Promise((_, reject) => {
        // like fetch: reject when the signal is (or becomes) aborted
        const signal = r.init.signal;
        if (signal.aborted) reject(signal.reason);
        signal.addEventListener("abort", () => reject(signal.reason));
      }),
  });
  const controller = new AbortController();
  const pending = client.postJson({}, { signal: controller.signal });
  while (gw.apiRequests.length === 0) await new Promise((r) => setTimeout(r, 1));
  assert.equal(gw.apiRequests[0].init.signal, controller.signal);
  controller.abort();
  await assert.rejects(pending, (e) => e.name === "AbortError" && !(e instanceof GatewayError));
  // already aborted: nothing is sent
  await assert.rejects(client.fetchResponse({}, { signal: AbortSignal.abort() }), { name: "AbortError" });
  assert.equal(gw.apiRequests.length, 1);
});

test("options are validated", () => {
  assert.throws(() => createGatewayClient({}), TypeError);
  assert.throws(() => createGatewayClient({ baseUrl: BASE, keyStore: "localStorage" }), /keyStore/);
});

test("in a page, baseUrl defaults to the page's origin and may be relative", () => {
  globalThis.location = { href: "https://app.example/x/page.html?a=1#h" };
  try {
    const base = (baseUrl) => createGatewayClient({ baseUrl, keyStore: "memory" }).inspect().baseUrl;
    assert.equal(base(undefined), "https://app.example");
    assert.equal(base("/gw/"), "https://app.example/gw");
    assert.equal(base("https://ets.example/?x=1"), "https://ets.example");
  } finally {
    delete globalThis.location;
  }
});
