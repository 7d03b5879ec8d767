// The development-mode demo page (/demo/) in headless Chromium, against a
// real `twistd -n ets` with no ETS configuration at all (LISTEN_ADDR only):
// what a newcomer sees after `make run`.

import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { launchChromium } from "./support/browser.mjs";
import { startEts } from "./support/ets.mjs";

/** Screenshots go here (gitignored). */
const OUT = fileURLToPath(new URL("./out/", import.meta.url));

/** @type {import("./support/ets.mjs").Ets} */ let ets;
/** @type {import("playwright-core").Browser} */ let browser;

before(async () => {
  [ets, browser] = await Promise.all([startEts(), launchChromium()]);
});

after(async () => {
  await browser?.close();
  await ets?.stop();
});

test("the demo page, opened on localhost, calls dev-mode ETS on 127.0.0.1 and shows the thumbprint, the token, the proof, the relayed answer and the stream; its screenshot is a PNG", async (t) => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  t.after(() => context.close());
  const page = await context.newPage();
  /** @type {string[]} */
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  /** @type {string[]} */
  const sdkLoads = [];
  page.on("response", (r) => r.url().endsWith("/sdk/tvm.mjs") && sdkLoads.push(`${r.status()} ${r.url()}`));

  await page.goto(`http://localhost:${ets.port}/demo/`);
  await page.waitForSelector('#status:is([data-state="done"], [data-state="error"])', { timeout: 20_000 });
  const statusText = await page.textContent("#status");
  assert.equal(await page.getAttribute("#status", "data-state"), "done", `demo failed: ${statusText} ${errors}`);

  const path = `${OUT}demo.png`;
  mkdirSync(OUT, { recursive: true });
  await page.screenshot({ path, fullPage: true });

  // The SDK came from the other loopback name: a cross-origin import.
  assert.deepEqual(sdkLoads, [`200 http://127.0.0.1:${ets.port}/sdk/tvm.mjs`]);
  assert.equal(await page.textContent("#gateway"), `http://127.0.0.1:${ets.port}`);

  const thumbprint = (await page.textContent("#thumbprint")) ?? "";
  assert.match(thumbprint, /^[A-Za-z0-9_-]{43}$/, "a base64url SHA-256 thumbprint");
  assert.match((await page.textContent("#key-export")) ?? "", /^refused by the browser/);

  const claims = (await page.textContent("#claims")) ?? "";
  assert.ok(claims.includes(thumbprint), "the token's cnf.jkt (the thumbprint) is shown");
  assert.match(claims, /"ets"/, "iss/aud are shown");
  assert.equal(await page.getAttribute("#cnf-check", "data-ok"), "true");

  const proof = JSON.parse((await page.textContent("#proof-payload")) ?? "{}");
  assert.equal(proof.htm, "GET", "the proof of the last call (the stream)");
  assert.equal(proof.htu, `http://127.0.0.1:${ets.port}/api/stream`);
  assert.equal(JSON.parse((await page.textContent("#proof-header")) ?? "{}").typ, "dpop+jwt");

  const answer = JSON.parse((await page.textContent("#answer")) ?? "{}");
  assert.equal(answer.method, "POST");
  assert.equal(answer.path, "/api/echo");
  assert.equal(JSON.parse(answer.body).hello, "from the ETS demo");
  assert.equal(answer.headers.authorization, undefined);
  assert.equal(await page.getAttribute("#answer-check", "data-ok"), "true");

  const events = await page.locator("#events li").allTextContents();
  assert.equal(events.length, 5, `the five events of the echo stream: ${events}`);
  assert.match(events[0], /"event": ?1/);
  assert.match(events[4], /"event": ?5/);

  const png = readFileSync(path);
  assert.ok(png.length > 10_000, `screenshot too small: ${png.length} bytes`);
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], "PNG signature");
  assert.deepEqual(errors, []);
});
