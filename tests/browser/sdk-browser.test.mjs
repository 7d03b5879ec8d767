// The browser SDK in headless Chromium against a real `twistd -n ets` in
// production configuration: the test page is served by its own node server
// (its own origin, the only one on ORIGIN_ALLOWLIST), imports /sdk/tvm.mjs
// cross-origin from ETS, and ETS relays to a recording node upstream.

import assert from "node:assert/strict";
import http from "node:http";
import { after, before, test } from "node:test";

import { launchChromium, openSdkPage, recordRequests, startPageServer, testPage } from "./support/browser.mjs";
import { SIGNING_KEY, startEts } from "./support/ets.mjs";
import { LATER_EVENTS, startUpstream } from "./support/upstream.mjs";

const UPSTREAM_SECRET = "browser-e2e-upstream-secret-4d1c";

/** @type {Awaited<ReturnType<typeof startUpstream>>} */ let upstream;
/** @type {import("./support/ets.mjs").Ets} */ let ets;
/** @type {Awaited<ReturnType<typeof startPageServer>>} */ let allowed;
/** @type {Awaited<ReturnType<typeof startPageServer>>} */ let foreign;
/** @type {import("playwright-core").Browser} */ let browser;

before(async () => {
  upstream = await startUpstream();
  // Both page servers name ETS lazily: its port is known only once it runs.
  allowed = await startPageServer(() => testPage(ets.base));
  foreign = await startPageServer(() => testPage(ets.base));
  [ets, browser] = await Promise.all([
    startEts({
      ORIGIN_ALLOWLIST: allowed.origin,
      TVM_JWT_HS256_KEY: SIGNING_KEY,
      UPSTREAM_BASE_URL: upstream.base,
      UPSTREAM_SERVICE_SECRET: UPSTREAM_SECRET,
    }),
    launchChromium(),
  ]);
});

after(async () => {
  await browser?.close();
  await ets?.stop();
  await Promise.all([upstream?.close(), allowed?.close(), foreign?.close()]);
});

/** The upstream requests received for `path`. @param {string} path */
const receivedAt = (path) => upstream.received.filter((r) => r.path === path);

test("a page on another origin imports the SDK from ETS and its postJson reaches the upstream, with the secret added and no credentials forwarded", async (t) => {
  const { context, page } = await openSdkPage(browser, `${allowed.origin}/`);
  t.after(() => context.close());

  const where = await page.evaluate(() => ({
    page: location.origin,
    modules: performance.getEntriesByType("resource").map((e) => e.name),
  }));
  assert.notEqual(where.page, ets.base, "the page must be on its own origin");
  assert.ok(where.modules.includes(`${ets.base}/sdk/tvm.mjs`), `SDK not loaded from ETS: ${where.modules}`);

  const answer = await page.evaluate(async () => {
    const client = window.sdk.createGatewayClient({ baseUrl: window.ETS });
    return client.postJson({ hello: "from Chromium" }, { path: "/api/echo?lang=en" });
  });

  assert.deepEqual(answer, { method: "POST", path: "/api/echo", body: { hello: "from Chromium" } });
  const got = receivedAt("/api/echo");
  assert.equal(got.length, 1);
  const [request] = got;
  assert.equal(request.method, "POST");
  assert.deepEqual(JSON.parse(request.body), { hello: "from Chromium" });
  assert.equal(request.query.get("lang"), "en");
  assert.deepEqual(request.query.getAll("key"), [UPSTREAM_SECRET], "ETS adds the upstream secret once");
  assert.equal(request.headers.authorization, undefined, "Authorization must not reach the upstream");
  assert.equal(request.headers.dpop, undefined, "DPoP must not reach the upstream");
});

test("fetchResponse hands a server-sent-events answer to the page as it streams: the first event is read before the upstream sends the rest", async (t) => {
  const { context, page } = await openSdkPage(browser, `${allowed.origin}/`);
  t.after(() => context.close());
  t.after(() => upstream.release());

  await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    w.events = [];
    w.streamDone = false;
    (async () => {
      const client = w.sdk.createGatewayClient({ baseUrl: w.ETS });
      const res = await client.fetchResponse(undefined, { path: "/api/stream", method: "GET" });
      w.streamStatus = res.status;
      w.streamType = res.headers.get("content-type");
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          for (const line of block.split("\n")) {
            if (line.startsWith("data:")) w.events.push(JSON.parse(line.slice(5)));
          }
        }
      }
      w.streamDone = true;
    })().catch((e) => {
      w.streamError = String(e);
    });
  });

  // The upstream has sent event 1 and now holds the stream open.
  await page
    .waitForFunction(() => window.events.length > 0 || window.streamError, null, { timeout: 8_000 })
    .catch(() => assert.fail("no event reached the page while the upstream held the stream open (buffered?)"));
  assert.equal(upstream.stream.state, "holding", "the upstream must still be holding the rest of the stream");
  const early = await page.evaluate(() => ({ events: window.events, done: window.streamDone, error: window.streamError }));
  assert.equal(early.error, undefined);
  assert.deepEqual(early.events, [{ n: 1 }], "event 1 must reach the page while the stream is open");
  assert.equal(early.done, false);

  upstream.release();
  await page.waitForFunction(() => window.streamDone || window.streamError, null, { timeout: 10_000 });
  const late = await page.evaluate(() => ({
    events: window.events,
    error: window.streamError,
    status: window.streamStatus,
    type: window.streamType,
  }));
  assert.equal(late.error, undefined);
  assert.equal(late.status, 200);
  assert.match(late.type, /^text\/event-stream/);
  assert.deepEqual(
    late.events,
    Array.from({ length: 1 + LATER_EVENTS }, (_, i) => ({ n: i + 1 })),
  );
  assert.equal(upstream.stream.heldTimedOut, false);
});

test("a page on an origin that is not allowlisted gets a rejected promise and nothing reaches the upstream", async (t) => {
  const { context, page } = await openSdkPage(browser, `${foreign.origin}/`);
  t.after(() => context.close());
  const net = recordRequests(page);

  const outcome = await page.evaluate(async () => {
    const client = window.sdk.createGatewayClient({ baseUrl: window.ETS });
    try {
      await client.postJson({ hello: "from a stranger" }, { path: "/api/foreign" });
      return { resolved: true };
    } catch (e) {
      return {
        resolved: false,
        name: e?.name,
        gatewayError: e instanceof window.sdk.GatewayError,
        typeError: e instanceof TypeError,
        code: e?.code,
      };
    }
  });

  assert.equal(outcome.resolved, false, "the call must reject");
  assert.ok(outcome.gatewayError || outcome.typeError, `rejected with ${JSON.stringify(outcome)}`);
  // The browser hides the 403 (no CORS headers for this origin): the SDK
  // sees a network failure.
  assert.equal(outcome.code, "network_error");
  assert.ok(
    net.count("OPTIONS", `${ets.base}/tvm/issue`) + net.count("POST", `${ets.base}/tvm/issue`) >= 1,
    "the browser did try the token endpoint",
  );
  assert.equal(receivedAt("/api/foreign").length, 0);
});

test("the SDK's private key cannot be exported from the page, and it is the key the token is bound to", async (t) => {
  const { context, page } = await openSdkPage(browser, `${allowed.origin}/`);
  t.after(() => context.close());

  const result = await page.evaluate(async () => {
    const client = window.sdk.createGatewayClient({ baseUrl: window.ETS });
    const token = await client.getToken();
    const { privateKey, publicKey } = await client.keyPair();
    /** @param {string} format */
    const tryExport = (format) =>
      crypto.subtle.exportKey(format, privateKey).then(
        () => "exported",
        (e) => `rejected: ${e.name}`,
      );
    const b64 = token.accessToken.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(b64));
    const { crv, kty, x, y } = await crypto.subtle.exportKey("jwk", publicKey);
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(JSON.stringify({ crv, kty, x, y })));
    const jkt = btoa(String.fromCharCode(...new Uint8Array(digest))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    return {
      extractable: privateKey.extractable,
      usages: privateKey.usages,
      jwk: await tryExport("jwk"),
      pkcs8: await tryExport("pkcs8"),
      jkt,
      cnf: claims.cnf?.jkt,
      thumbprint: await client.thumbprint(),
      keyStore: client.inspect().keyStore,
    };
  });

  assert.equal(result.extractable, false);
  assert.deepEqual(result.usages, ["sign"]);
  assert.match(result.jwk, /^rejected: /);
  assert.match(result.pkcs8, /^rejected: /);
  assert.equal(result.jkt, result.cnf, "the token's cnf.jkt is this key's thumbprint");
  assert.equal(result.thumbprint, result.jkt);
  assert.equal(result.keyStore, "indexeddb", "Chromium keeps the key in IndexedDB");
});

test("a reload of the page keeps the same key (from IndexedDB), still non-extractable", async (t) => {
  const { context, page } = await openSdkPage(browser, `${allowed.origin}/`);
  t.after(() => context.close());
  const probe = () =>
    page.evaluate(async () => {
      const client = window.sdk.createGatewayClient({ baseUrl: window.ETS });
      const { privateKey } = await client.keyPair();
      return { thumbprint: await client.thumbprint(), extractable: privateKey.extractable, store: client.inspect().keyStore };
    });

  const first = await probe();
  await page.reload();
  await page.waitForFunction(() => "sdk" in window, null, { timeout: 10_000 });
  const second = await probe();

  assert.equal(first.store, "indexeddb");
  assert.equal(second.thumbprint, first.thumbprint);
  assert.equal(second.extractable, false);
});

test("concurrent calls from one client share exactly one /tvm/issue request (counted on the browser's network)", async (t) => {
  const { context, page } = await openSdkPage(browser, `${allowed.origin}/`);
  t.after(() => context.close());
  const net = recordRequests(page);
  const N = 6;

  const answers = await page.evaluate(async (n) => {
    const client = window.sdk.createGatewayClient({ baseUrl: window.ETS });
    return Promise.all(
      Array.from({ length: n }, (_, i) => client.postJson({ call: i }, { path: "/api/concurrent" })),
    );
  }, N);

  assert.equal(net.count("POST", `${ets.base}/tvm/issue`), 1, "exactly one mint");
  assert.equal(net.count("POST", `${ets.base}/api/concurrent`), N, "no call was retried");
  assert.deepEqual(
    answers.map((a) => a.body.call),
    Array.from({ length: N }, (_, i) => i),
  );
  assert.equal(receivedAt("/api/concurrent").length, N);
});

test(
  "HEAD requests (a CDN or browser revalidating the SDK, a load balancer probing /health) never put the upstream secret in ETS's log",
  async () => {
    /** @param {string} path */
    const head = (path) =>
      new Promise((resolve, reject) => {
        http
          .request(`${ets.base}${path}`, { method: "HEAD" }, (res) => {
            res.resume();
            res.on("end", () => resolve(res.statusCode));
          })
          .on("error", reject)
          .end();
      });
    assert.equal(await head("/sdk/tvm.mjs"), 200);
    assert.equal(await head("/health"), 200);
    assert.equal(await head("/no-such-path"), 404);
    await new Promise((r) => setTimeout(r, 500)); // let twistd's log reach the file
    assert.ok(!ets.output().includes(UPSTREAM_SECRET), "the upstream secret is in ETS's log");
  },
);
