// Token refresh in headless Chromium against a real `twistd -n ets` whose
// tokens live 22 s: the SDK refreshes a token once 20 s or less remain, so
// a call made a few seconds after the first mint needs a new token.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { launchChromium, openSdkPage, recordRequests, startPageServer, testPage } from "./support/browser.mjs";
import { SIGNING_KEY, startEts } from "./support/ets.mjs";
import { startUpstream } from "./support/upstream.mjs";

/** @type {Awaited<ReturnType<typeof startUpstream>>} */ let upstream;
/** @type {import("./support/ets.mjs").Ets} */ let ets;
/** @type {Awaited<ReturnType<typeof startPageServer>>} */ let pages;
/** @type {import("playwright-core").Browser} */ let browser;

before(async () => {
  upstream = await startUpstream();
  pages = await startPageServer(() => testPage(ets.base));
  [ets, browser] = await Promise.all([
    startEts({
      ORIGIN_ALLOWLIST: pages.origin,
      TVM_JWT_HS256_KEY: SIGNING_KEY,
      UPSTREAM_BASE_URL: upstream.base,
      TOKEN_LIFETIME_SECONDS: "22",
    }),
    launchChromium(),
  ]);
});

after(async () => {
  await browser?.close();
  await ets?.stop();
  await Promise.all([upstream?.close(), pages?.close()]);
});

test("a short-lived token is refreshed transparently: calls 3 s apart both succeed, with a second mint and no failed request", async (t) => {
  const { context, page } = await openSdkPage(browser, `${pages.origin}/`);
  t.after(() => context.close());
  const net = recordRequests(page);
  /** @type {number[]} */
  const statuses = [];
  page.on("response", (r) => r.url().startsWith(`${ets.base}/`) && statuses.push(r.status()));

  const result = await page.evaluate(async () => {
    const w = /** @type {any} */ (window);
    const client = w.sdk.createGatewayClient({ baseUrl: w.ETS });
    const claims = (/** @type {string} */ jwt) =>
      JSON.parse(atob(jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    const first = await client.postJson({ call: 1 }, { path: "/api/refresh" });
    const token1 = (await client.getToken()).accessToken;
    // 22 s tokens: with more than 20 s left, the next call reuses the token.
    const second = await client.postJson({ call: 2 }, { path: "/api/refresh" });
    const token2 = (await client.getToken()).accessToken;
    await new Promise((r) => setTimeout(r, 3000));
    // Now 19 s or less remain: the SDK mints before calling.
    const third = await client.postJson({ call: 3 }, { path: "/api/refresh" });
    const token3 = (await client.getToken()).accessToken;
    return {
      answers: [first, second, third].map((a) => a.body.call),
      sameAfterOneCall: token1 === token2,
      refreshed: token3 !== token1,
      lifetime: claims(token1).exp - claims(token1).iat,
      boundToSameKey: claims(token1).cnf.jkt === claims(token3).cnf.jkt,
    };
  });

  assert.equal(result.lifetime, 22, "ETS issued 22 s tokens");
  assert.deepEqual(result.answers, [1, 2, 3], "every call succeeded");
  assert.equal(result.sameAfterOneCall, true, "no refresh while more than 20 s remain");
  assert.equal(result.refreshed, true, "a new token after the refresh margin");
  assert.equal(result.boundToSameKey, true);
  assert.equal(net.count("POST", `${ets.base}/tvm/issue`), 2, "two mints");
  assert.equal(net.count("POST", `${ets.base}/api/refresh`), 3, "no call was retried");
  assert.deepEqual(
    statuses.filter((s) => s >= 400),
    [],
    "the refresh happened before the old token was refused",
  );
  assert.equal(upstream.received.filter((r) => r.path === "/api/refresh").length, 3);
});
