// Headless Debian Chromium driven by playwright-core (which never downloads
// a browser of its own), and the tiny page servers the tests load pages from.

import { existsSync } from "node:fs";
import http from "node:http";
import { chromium } from "playwright-core";

/** Debian's Chromium (`apt-get install -y chromium`); `CHROMIUM=/path` overrides it. */
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

/** Flags that work here as root in a container; playwright adds headless and a fresh profile. */
const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Launches Chromium, or fails (never skips) with what to install. */
export async function launchChromium() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: run \`apt-get install -y chromium\` (or set CHROMIUM)`);
  }
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS, timeout: 30_000 });
}

/**
 * The test page: a classic script that records load errors, then a module
 * script that imports the SDK from `etsBase` (a cross-origin static import)
 * and exposes it as `window.sdk`, and `window.ETS` = `etsBase`.
 * @param {string} etsBase
 */
export function testPage(etsBase) {
  const base = JSON.stringify(etsBase);
  return `<!doctype html>
<meta charset="utf-8">
<title>ETS SDK test page</title>
<script>
  window.ETS = ${base};
  window.loadErrors = [];
  addEventListener("error", (e) => window.loadErrors.push(String(e.message || e.type)));
</script>
<script type="module">
  import * as sdk from ${JSON.stringify(`${etsBase}/sdk/tvm.mjs`)};
  window.sdk = sdk;
</script>
<p>ETS SDK test page</p>
`;
}

/**
 * A page server on its own loopback port (so its own origin) that answers
 * every GET with `html()` (a function, so the page can name an ETS started
 * after this server, whose allowlist needs this server's origin).
 * @param {() => string} html
 */
export async function startPageServer(html) {
  const server = http.createServer((req, res) => {
    if (req.url === "/favicon.ico") {
      res.writeHead(204).end();
      return;
    }
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store" });
    res.end(html());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(undefined)));
  const { port } = /** @type {import("node:net").AddressInfo} */ (server.address());
  return {
    origin: `http://127.0.0.1:${port}`,
    close() {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve(undefined)));
    },
  };
}

/**
 * Opens `url` in a fresh context (own cache and IndexedDB) and waits until
 * the SDK module is imported; fails with the page's errors otherwise.
 * @param {import("playwright-core").Browser} browser
 * @param {string} url
 */
export async function openSdkPage(browser, url) {
  const context = await browser.newContext();
  const page = await context.newPage();
  /** @type {string[]} */
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.goto(url);
  try {
    await page.waitForFunction(() => "sdk" in window, null, { timeout: 10_000 });
  } catch (err) {
    throw new Error(`the page did not import the SDK: ${errors.join("; ") || err}`);
  }
  return { context, page, errors };
}

/**
 * Records the requests the browser really sends (preflights included).
 * @param {import("playwright-core").Page} page
 */
export function recordRequests(page) {
  /** @type {{method: string, url: string}[]} */
  const requests = [];
  page.on("request", (r) => requests.push({ method: r.method(), url: r.url() }));
  return {
    requests,
    /** @param {string} method @param {string} url */
    count: (method, url) => requests.filter((r) => r.method === method && r.url === url).length,
  };
}
