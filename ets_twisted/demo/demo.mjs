// The ETS demo page: imports the SDK from ETS on another origin, then shows
// each step of a call. Everything shown is written with textContent.

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));

/**
 * ETS's other loopback name, so that the page (on this origin) and ETS (on
 * that one) differ, as a real app and its gateway do. Development mode
 * allowlists localhost, 127.0.0.1 and [::1] on its port.
 */
function gatewayOrigin() {
  const here = new URL(location.href);
  const other = { localhost: "127.0.0.1", "127.0.0.1": "localhost", "[::1]": "localhost" }[here.hostname];
  return other ? `${here.protocol}//${other}${here.port ? `:${here.port}` : ""}` : here.origin;
}

const gateway = gatewayOrigin();
const sdkUrl = `${gateway}/sdk/tvm.mjs`;

$("page-origin").textContent = location.origin;
$("gateway").textContent = gateway;
$("sdk-url").textContent = sdkUrl;
$("snippet").textContent = `import { createGatewayClient } from "${sdkUrl}";

const client = createGatewayClient({ baseUrl: "${gateway}" });
const answer = await client.postJson({ hello: "ETS" }, { path: "/api/echo" });`;

/** @param {"loading" | "running" | "done" | "error"} state @param {string} text */
function status(state, text) {
  const el = $("status");
  el.dataset.state = state;
  el.textContent = text;
}

/** base64url JSON (a JWT or JWS part) → object; for display only, nothing is verified here. */
function decodePart(/** @type {string} */ part) {
  const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

const pretty = (/** @type {unknown} */ v) => JSON.stringify(v, null, 2);

/** @param {number} seconds */
function when(seconds) {
  const delta = Math.round(seconds - Date.now() / 1000);
  const rel = delta === 0 ? "now" : delta > 0 ? `in ${delta} s` : `${-delta} s ago`;
  return `${seconds}  (${new Date(seconds * 1000).toISOString()}, ${rel})`;
}

/** @param {string} id @param {string} text */
function addItem(id, text) {
  const li = document.createElement("li");
  li.textContent = text;
  $(id).append(li);
  return li;
}

/** @param {string} id @param {boolean} ok @param {string} text */
function check(id, ok, text) {
  const el = $(id);
  el.textContent = `${ok ? "✓" : "✗"} ${text}`;
  el.dataset.ok = String(ok);
}

/** The last request the SDK sent with a proof (our `fetch` wrapper sees it). */
let lastProof = /** @type {{method: string, url: string, proof: string} | null} */ (null);

/** @type {typeof fetch} */
const recordingFetch = (input, init) => {
  const headers = new Headers(init?.headers);
  const proof = headers.get("DPoP");
  if (proof) lastProof = { method: init?.method ?? "GET", url: String(input), proof };
  return fetch(input, init);
};

function showProof() {
  if (!lastProof) return;
  const [header, payload] = lastProof.proof.split(".");
  $("proof-request").textContent = `${lastProof.method} ${lastProof.url}`;
  $("proof-header").textContent = pretty(decodePart(header));
  $("proof-payload").textContent = pretty(decodePart(payload));
}

/** @param {Record<string, unknown>} header @param {Record<string, unknown>} claims */
function showClaims(header, claims) {
  const rows = $("claims");
  rows.replaceChildren();
  const describe = {
    iss: "issuer",
    aud: "audience",
    iat: "issued at",
    nbf: "not before",
    exp: "expires",
    jti: "token id",
    cnf: "confirmation: the key's thumbprint",
  };
  for (const [name, value] of Object.entries(claims)) {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.textContent = name;
    const what = document.createElement("td");
    what.className = "what";
    what.textContent = describe[/** @type {keyof typeof describe} */ (name)] ?? "";
    const td = document.createElement("td");
    const code = document.createElement("code");
    code.textContent = typeof value === "number" && ["iat", "nbf", "exp"].includes(name) ? when(value) : JSON.stringify(value);
    td.append(code);
    tr.append(th, what, td);
    rows.append(tr);
  }
  const tr = document.createElement("tr");
  tr.className = "jose-header";
  const th = document.createElement("th");
  th.textContent = "header";
  const what = document.createElement("td");
  what.className = "what";
  what.textContent = "signed by ETS";
  const td = document.createElement("td");
  const code = document.createElement("code");
  code.textContent = JSON.stringify(header);
  td.append(code);
  tr.append(th, what, td);
  rows.append(tr);
}

/** Reads server-sent events from a Response body, calling `onEvent` per `data:` line as it arrives. */
async function readEvents(/** @type {Response} */ res, /** @type {(data: string) => void} */ onEvent) {
  const reader = /** @type {ReadableStream<Uint8Array>} */ (res.body).pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) if (line.startsWith("data:")) onEvent(line.slice(5).trim());
    }
  }
}

/** @param {unknown} err @param {any} GatewayError */
function explain(err, GatewayError) {
  if (err instanceof GatewayError) {
    const e = /** @type {any} */ (err);
    if (e.code === "network_error") {
      return `${e.message}. Is ETS running, and is this page opened on localhost or 127.0.0.1 (development mode allows those origins)?`;
    }
    if (e.code === "origin_not_allowed") return `${e.message}: open this page on http://localhost:PORT/demo/ of a development-mode ETS.`;
    return `${e.message} ${pretty(e.body)}`;
  }
  return String(err);
}

async function main() {
  let sdk;
  try {
    sdk = await import(sdkUrl);
  } catch (err) {
    status("error", `Could not import the SDK from ${sdkUrl}: ${err}`);
    return;
  }
  const { createGatewayClient, GatewayError } = sdk;
  const client = createGatewayClient({
    baseUrl: gateway,
    fetch: recordingFetch,
    onDebug: (/** @type {{type: string}} */ event) => {
      const { type, ...detail } = event;
      const shown = Object.fromEntries(Object.entries(detail).map(([k, v]) => [k, v instanceof Error ? v.message : v]));
      addItem("log", `${new Date().toISOString().slice(11, 23)}  ${type} ${JSON.stringify(shown)}`);
    },
  });

  async function run() {
    $("run").toggleAttribute("disabled", true);
    $("new-key").toggleAttribute("disabled", true);
    $("events").replaceChildren();
    status("running", "Running…");
    try {
      // 1. The key.
      const thumbprint = await client.thumbprint();
      $("thumbprint").textContent = thumbprint;
      $("key-store").textContent =
        client.inspect().keyStore === "indexeddb" ? "IndexedDB (a reload keeps the key)" : "memory (a reload makes a new key)";
      const { privateKey } = await client.keyPair();
      $("key-export").textContent = await crypto.subtle.exportKey("jwk", privateKey).then(
        () => "exported (this should never happen)",
        (e) => `refused by the browser (${e.name}): extractable = ${privateKey.extractable}`,
      );

      // 2. The token.
      const token = await client.getToken();
      const [header, payload] = token.accessToken.split(".");
      const claims = decodePart(payload);
      showClaims(decodePart(header), claims);
      check("cnf-check", claims.cnf?.jkt === thumbprint, "cnf.jkt is this page's key thumbprint");

      // 3 and 4. A call: its proof, and the relayed answer.
      const answer = await client.postJson({ hello: "from the ETS demo", sentAt: new Date().toISOString() }, { path: "/api/echo" });
      showProof();
      $("answer").textContent = pretty(answer);
      const forwarded = Object.keys(answer?.headers ?? {});
      check(
        "answer-check",
        !forwarded.includes("authorization") && !forwarded.includes("dpop"),
        "the upstream received neither Authorization nor DPoP; ETS added X-Forwarded-*",
      );

      // 5. A stream, event by event.
      const started = performance.now();
      const res = await client.fetchResponse(undefined, { path: "/api/stream", method: "GET" });
      showProof();
      if (!res.ok) throw new Error(`stream answered ${res.status}: ${await res.text()}`);
      await readEvents(res, (data) => {
        const seconds = ((performance.now() - started) / 1000).toFixed(2);
        addItem("events", `+${seconds} s  ${data}`);
      });
      status("done", "Done: every step worked.");
    } catch (err) {
      status("error", `Failed: ${explain(err, GatewayError)}`);
    } finally {
      $("run").toggleAttribute("disabled", false);
      $("new-key").toggleAttribute("disabled", false);
    }
  }

  $("run").addEventListener("click", () => run());
  $("new-key").addEventListener("click", async () => {
    await client.clear({ key: true });
    await run();
  });
  await run();
}

main();
