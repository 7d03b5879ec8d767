// A recording upstream on loopback (node:http) that ETS relays to.
//
// Every request is recorded (method, path, query, headers, body). A path
// ending in `/stream` answers server-sent events: the first at once, the
// rest only after the test calls `release()` (or after a safety timeout, so
// a broken test cannot hang), then the stream ends. Anything else is echoed
// as JSON `{method, path, body}` (without the query, which carries the
// upstream secret ETS adds).

import http from "node:http";

/**
 * @typedef {object} Received
 * @property {string} method
 * @property {string} path      the path without query
 * @property {URLSearchParams} query
 * @property {http.IncomingHttpHeaders} headers  lower-case names
 * @property {string} body
 */

/** Events sent after the first one, once released. */
export const LATER_EVENTS = 3;

/**
 * @param {{streamHoldMs?: number}} [options] how long a stream waits for `release()` at most
 */
export async function startUpstream({ streamHoldMs = 15_000 } = {}) {
  /** @type {Received[]} */
  const received = [];
  /** @type {Set<() => void>} */
  const waiting = new Set();
  /** Stream progress, for the tests: "idle" → "holding" (first event sent) → "ended". */
  const stream = { state: "idle", heldTimedOut: false };
  /** @type {(() => void) | null} */
  let onHolding = null;

  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const url = new URL(req.url ?? "/", "http://upstream.invalid");
    received.push({
      method: req.method ?? "",
      path: url.pathname,
      query: url.searchParams,
      headers: req.headers,
      body: Buffer.concat(chunks).toString("utf8"),
    });
    if (url.pathname.endsWith("/stream")) {
      res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
      res.write(`data: ${JSON.stringify({ n: 1 })}\n\n`);
      stream.state = "holding";
      onHolding?.();
      await new Promise((resolve) => {
        const timer = setTimeout(() => {
          stream.heldTimedOut = true;
          resolve(undefined);
        }, streamHoldMs);
        waiting.add(() => {
          clearTimeout(timer);
          resolve(undefined);
        });
      });
      for (let n = 2; n <= 1 + LATER_EVENTS; n += 1) {
        res.write(`data: ${JSON.stringify({ n })}\n\n`);
        await new Promise((r) => setTimeout(r, 50));
      }
      stream.state = "ended";
      res.end();
      return;
    }
    let body = null;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      body = Buffer.concat(chunks).toString("utf8");
    }
    const answer = JSON.stringify({ method: req.method, path: url.pathname, body });
    res.writeHead(200, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(answer) });
    res.end(answer);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(undefined)));
  const { port } = /** @type {import("node:net").AddressInfo} */ (server.address());

  return {
    base: `http://127.0.0.1:${port}`,
    received,
    stream,
    /** Resolves once a stream has sent its first event and is holding the rest. */
    holding() {
      if (stream.state === "holding") return Promise.resolve();
      return new Promise((resolve) => {
        onHolding = () => resolve(undefined);
      });
    },
    /** Lets every held stream send its remaining events and end. */
    release() {
      for (const go of waiting) go();
      waiting.clear();
    },
    close() {
      this.release();
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve(undefined)));
    },
  };
}
