// @ts-check
/**
 * ETS browser SDK: calls an API through the ETS gateway with a short-lived
 * access token bound to a DPoP key (RFC 9449) that never leaves WebCrypto.
 *
 * Dependency-free ES module; runs unchanged in current browsers and in
 * Node.js >= 20 (both provide `crypto.subtle`, `fetch`, `TextEncoder`, `btoa`).
 *
 * ```js
 * import { createGatewayClient } from "https://ets.example.com/sdk/tvm.mjs";
 * const client = createGatewayClient({ baseUrl: "https://ets.example.com" });
 * const answer = await client.postJson({ q: "hello" }, { path: "/api/search" });
 * ```
 *
 * @module @ets/tvm
 */

/** Refresh the token when this much lifetime or less remains (corrected clock). */
const REFRESH_MARGIN_MS = 20_000;
/** First wait after a failed mint; doubles per consecutive failure... */
const BACKOFF_FIRST_MS = 500;
/** ...up to this bound, so a client is never locked out for long. */
const BACKOFF_MAX_MS = 30_000;

const IDB_NAME = "ets-tvm";
const IDB_STORE = "keys";
const EC_P256 = { name: "ECDSA", namedCurve: "P-256" };
const ES256 = { name: "ECDSA", hash: "SHA-256" };

/**
 * 401 codes that a new token cures: the token is expired or invalid, bound to
 * another key, or our clock drifted since the last mint (a mint re-learns the
 * offset from `serverTime`).
 */
const REMINT_CODES = new Set([
  "invalid_token",
  "bad_claims",
  "cnf_mismatch",
  "dpop_iat_in_future",
  "dpop_iat_too_old",
]);

const utf8 = new TextEncoder();

/**
 * Error thrown for a gateway answer that is not 2xx (and for network failures).
 */
export class GatewayError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string, body?: unknown, retryAfter?: number | null, cause?: unknown}} [details]
   */
  constructor(message, { status = 0, code = "network_error", body = null, retryAfter = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "GatewayError";
    /** HTTP status; 0 when no answer arrived. */
    this.status = status;
    /** The answer's `error` member, else `"http_<status>"`; `"network_error"` when no answer arrived. */
    this.code = code;
    /** The answer body: parsed JSON when it is JSON, else its text; `null` when no answer arrived. */
    this.body = body;
    /** `Retry-After` in seconds (e.g. on 429), or `null`. */
    this.retryAfter = retryAfter;
  }
}

/**
 * Creates a client for one ETS gateway.
 *
 * @param {import("./tvm.d.ts").GatewayClientOptions} [options]
 * @returns {import("./tvm.d.ts").GatewayClient}
 */
export function createGatewayClient(options = {}) {
  const {
    tokenPath = "/tvm/issue",
    apiPath = "/api",
    etsTokenProvider,
    onDebug,
    now = Date.now,
  } = options;
  const base = normaliseBase(options.baseUrl);
  const fetchFn = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  const keyStore = options.keyStore ?? (typeof globalThis.indexedDB === "undefined" ? "memory" : "indexeddb");
  if (keyStore !== "indexeddb" && keyStore !== "memory") {
    throw new TypeError(`keyStore must be "indexeddb" or "memory", not ${JSON.stringify(keyStore)}`);
  }
  const tokenUrl = joinUrl(base, tokenPath);

  /** Everything the client remembers between calls. */
  const state = {
    /** @type {Promise<KeyMaterial> | null} */ key: null,
    /** @type {"indexeddb" | "memory" | null} */ keyStore: null,
    /** @type {Token | null} */ token: null,
    /** @type {Promise<Token> | null} */ minting: null,
    /** @type {string | null} */ nonce: null,
    /** Server clock minus local clock, learned from `serverTime`. */ offsetMs: 0,
    failures: 0,
    retryAt: 0,
    /** @type {unknown} */ lastError: null,
  };

  /** @param {string} type @param {Record<string, unknown>} [detail] */
  function debug(type, detail = {}) {
    if (!onDebug) return;
    try {
      onDebug({ type, ...detail });
    } catch {
      // A broken debug hook must not break requests.
    }
  }

  const serverNow = () => now() + state.offsetMs;

  // --- key ---------------------------------------------------------------

  /** The key pair, created (or loaded from IndexedDB) once; a failure is retried next time. */
  function getKey() {
    state.key ??= loadKey().catch((err) => {
      state.key = null;
      throw err;
    });
    return state.key;
  }

  /** @returns {Promise<KeyMaterial>} */
  async function loadKey() {
    if (!globalThis.crypto?.subtle) {
      throw new Error("ETS SDK: crypto.subtle is unavailable (WebCrypto needs a secure context: https or localhost)");
    }
    /** @type {CryptoKeyPair | undefined} */
    let pair;
    let store = /** @type {"indexeddb" | "memory"} */ ("memory");
    if (keyStore === "indexeddb" && globalThis.indexedDB) {
      try {
        pair = await idbKeyPair(globalThis.indexedDB, base);
        store = "indexeddb";
      } catch (error) {
        // Private modes and some engines refuse to store CryptoKeys: a key
        // that lives as long as the page is still a working key.
        debug("keystore_fallback", { error });
      }
    }
    pair ??= await generateKeyPair();
    const { kty, crv, x, y } = await crypto.subtle.exportKey("jwk", pair.publicKey);
    if (kty !== "EC" || crv !== "P-256" || !x || !y) throw new Error("ETS SDK: unexpected public key");
    state.keyStore = store;
    return {
      pair,
      // Only the public members go to the server (and into proofs).
      publicJwk: { kty, crv, x, y },
      // RFC 7638: the required members in lexicographic order, no spaces.
      jkt: await sha256(JSON.stringify({ crv, kty, x, y })),
    };
  }

  // --- token -------------------------------------------------------------

  /** @param {Token} token */
  const remainingMs = (token) => token.expiresAtServerMs - serverNow();

  /**
   * A token with more than the refresh margin left, minting when needed.
   * While a refresh fails, the old token is used until it actually expires.
   * @param {AbortSignal | undefined} signal
   * @returns {Promise<Token>}
   */
  async function currentToken(signal) {
    const token = state.token;
    if (token && remainingMs(token) > REFRESH_MARGIN_MS) return token;
    try {
      return await abortable(startMint(), signal);
    } catch (err) {
      if (token && token === state.token && remainingMs(token) > 0 && !isAbort(err)) return token;
      throw err;
    }
  }

  /**
   * Single flight: concurrent callers share one mint. Inside the back-off
   * window after a failed mint, callers are rejected at once with that
   * failure instead of hitting the issuer again (no timers: the next call
   * after the window tries again).
   * @returns {Promise<Token>}
   */
  function startMint() {
    if (state.minting) return state.minting;
    if (state.lastError && now() < state.retryAt) return Promise.reject(state.lastError);
    state.minting = mint().finally(() => {
      state.minting = null;
    });
    return state.minting;
  }

  /** @returns {Promise<Token>} */
  async function mint() {
    const key = await getKey();
    /** @type {Record<string, unknown>} */
    const request = { dpopPublicJwk: key.publicJwk };
    if (etsTokenProvider) {
      // Provider errors (e.g. the user has not solved the challenge) reach
      // the caller as they are and start no back-off: the server was not asked.
      const etsToken = await etsTokenProvider();
      if (etsToken != null) request.etsToken = etsToken;
    }
    try {
      const res = await send(tokenUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(request),
      });
      const receivedAt = now();
      if (!res.ok) throw await errorFromResponse(res, "token request");
      const answer = await readJson(res, "token request");
      const { accessToken, expiresIn, serverTime, tokenType = "DPoP" } = answer ?? {};
      if (typeof accessToken !== "string" || !accessToken || !(Number.isFinite(expiresIn) && expiresIn > 0)) {
        throw new GatewayError("token request: malformed answer", { status: res.status, code: "invalid_response", body: answer });
      }
      if (Number.isFinite(serverTime)) {
        // serverTime is whole seconds (floored), so this errs on the side of
        // proofs that look slightly old, which the server tolerates far
        // better (max age) than proofs from the future (small skew).
        state.offsetMs = serverTime * 1000 - receivedAt;
      }
      const issuedAtServerMs = Number.isFinite(serverTime) ? serverTime * 1000 : serverNow();
      /** @type {Token} */
      const token = {
        accessToken,
        tokenType,
        expiresIn,
        expiresAtServerMs: issuedAtServerMs + expiresIn * 1000,
        ath: await sha256(accessToken),
      };
      state.token = token;
      state.failures = 0;
      state.retryAt = 0;
      state.lastError = null;
      debug("mint", { expiresIn, clockOffsetMs: state.offsetMs });
      return token;
    } catch (err) {
      state.failures += 1;
      let delay = Math.min(BACKOFF_FIRST_MS * 2 ** (state.failures - 1), BACKOFF_MAX_MS);
      const retryAfter = err instanceof GatewayError ? err.retryAfter : null;
      // Honour the server's Retry-After, but never beyond the bound.
      if (retryAfter) delay = Math.min(Math.max(delay, retryAfter * 1000), BACKOFF_MAX_MS);
      state.retryAt = now() + delay;
      state.lastError = err;
      debug("mint_failed", { error: err, retryInMs: delay });
      throw err;
    }
  }

  /** @param {Token} token @returns {import("./tvm.d.ts").TokenInfo} */
  const tokenInfo = (token) => ({
    accessToken: token.accessToken,
    tokenType: token.tokenType,
    expiresIn: token.expiresIn,
    expiresAt: token.expiresAtServerMs - state.offsetMs,
  });

  // --- requests ----------------------------------------------------------

  /**
   * fetch, with the nonce learned from every answer and network failures
   * turned into GatewayError (aborts stay AbortError).
   * @param {string} url @param {RequestInit} init
   */
  async function send(url, init) {
    let res;
    try {
      res = await fetchFn(url, init);
    } catch (err) {
      if (isAbort(err) || init.signal?.aborted) throw err;
      throw new GatewayError(`network error: ${init.method} ${url}`, { cause: err });
    }
    const nonce = res.headers.get("DPoP-Nonce");
    if (nonce) state.nonce = nonce;
    return res;
  }

  /**
   * A fresh DPoP proof: new jti, current (corrected) iat, current nonce.
   * @param {string} htm @param {string} htu @param {Token} token
   */
  async function proof(htm, htu, token) {
    const key = await getKey();
    const header = { typ: "dpop+jwt", alg: "ES256", jwk: key.publicJwk };
    /** @type {Record<string, unknown>} */
    const claims = {
      jti: base64url(crypto.getRandomValues(new Uint8Array(16))),
      htm,
      htu,
      iat: Math.floor(serverNow() / 1000),
      ath: token.ath,
    };
    if (state.nonce) claims.nonce = state.nonce;
    const input = `${base64urlJson(header)}.${base64urlJson(claims)}`;
    // WebCrypto's ECDSA output is already the IEEE P1363 r||s (64 bytes for
    // P-256) that JWS ES256 wants: converting it "from DER" would break it.
    const signature = await crypto.subtle.sign(ES256, key.pair.privateKey, utf8.encode(input));
    return `${input}.${base64url(signature)}`;
  }

  /**
   * Sends an authorised request, retrying once for a nonce and once for a
   * new token.
   * @param {string} method @param {string | undefined} path
   * @param {BodyInit | undefined} body @param {Headers} headers
   * @param {AbortSignal | undefined} signal
   * @returns {Promise<Response>}
   */
  async function call(method, path, body, headers, signal) {
    signal?.throwIfAborted();
    const url = joinUrl(base, path ?? apiPath);
    const htu = stripQuery(url);
    /** @type {RequestInit & {duplex?: string}} */
    const init = { method, headers, body, signal };
    // A stream can be sent only once: it is never retried.
    const oneShot = typeof ReadableStream !== "undefined" && body instanceof ReadableStream;
    if (oneShot) init.duplex = "half";
    let token = await currentToken(signal);
    let nonceRetried = false;
    let tokenRetried = false;
    for (;;) {
      headers.set("Authorization", `DPoP ${token.accessToken}`);
      headers.set("DPoP", await proof(method, htu, token));
      const res = await send(url, init);
      if (res.status !== 401 || oneShot) return res;
      const code = await authErrorCode(res);
      // send() has already kept the answer's nonce for the next proof.
      const nonceRetry = code === "use_dpop_nonce" && !nonceRetried && !!res.headers.get("DPoP-Nonce");
      const tokenRetry = !nonceRetry && !!code && REMINT_CODES.has(code) && !tokenRetried;
      if (!nonceRetry && !tokenRetry) return res;
      await res.body?.cancel().catch(() => {});
      debug("retry", { reason: code });
      if (nonceRetry) {
        nonceRetried = true;
      } else {
        tokenRetried = true;
        // Another call may have replaced the token meanwhile: drop only ours.
        if (state.token === token) state.token = null;
        token = await currentToken(signal);
      }
    }
  }

  return {
    /**
     * POSTs `payload` as JSON and returns the parsed JSON answer (`null` for
     * an empty body). Any non-2xx answer throws a GatewayError; a network
     * failure throws one with code `network_error`; an abort rejects with
     * the signal's reason.
     * @param {unknown} payload
     * @param {import("./tvm.d.ts").CallOptions} [options]
     */
    async postJson(payload, { path, signal, headers } = {}) {
      const h = new Headers(headers);
      if (!h.has("Content-Type")) h.set("Content-Type", "application/json");
      if (!h.has("Accept")) h.set("Accept", "application/json");
      const res = await call("POST", path, JSON.stringify(payload ?? null), h, signal);
      if (!res.ok) throw await errorFromResponse(res, "request");
      return readJson(res, "request");
    },

    /**
     * Sends a request and returns the raw Response, 2xx or not, so that a
     * stream can be read as it arrives. A string, Blob, ArrayBuffer(View),
     * FormData, URLSearchParams or ReadableStream payload is sent as is,
     * anything else as JSON; GET and HEAD send no body.
     * @param {unknown} [payload]
     * @param {import("./tvm.d.ts").FetchResponseOptions} [options]
     */
    async fetchResponse(payload, { path, method = "POST", signal, headers } = {}) {
      const m = method.toUpperCase();
      const h = new Headers(headers);
      /** @type {BodyInit | undefined} */
      let body;
      if (m !== "GET" && m !== "HEAD" && payload !== undefined) {
        if (isBodyInit(payload)) {
          body = /** @type {BodyInit} */ (payload);
        } else {
          body = JSON.stringify(payload);
          if (!h.has("Content-Type")) h.set("Content-Type", "application/json");
        }
      }
      return call(m, path, body, h, signal);
    },

    /**
     * The current access token, minting one when needed.
     * @param {{signal?: AbortSignal}} [options]
     */
    async getToken({ signal } = {}) {
      return tokenInfo(await currentToken(signal));
    },

    /** RFC 7638 thumbprint of the public key (the token's `cnf.jkt`). */
    async thumbprint() {
      return (await getKey()).jkt;
    },

    /** The WebCrypto key pair (the private key is non-extractable): for debugging and tests. */
    async keyPair() {
      return (await getKey()).pair;
    },

    /**
     * Forgets the token, the nonce and the mint back-off; with `{key: true}`
     * also the key pair (deleted from IndexedDB), e.g. on logout.
     * @param {{key?: boolean}} [options]
     */
    async clear({ key = false } = {}) {
      state.token = null;
      state.nonce = null;
      state.failures = 0;
      state.retryAt = 0;
      state.lastError = null;
      if (!key) return;
      state.key = null;
      state.keyStore = null;
      if (keyStore === "indexeddb" && globalThis.indexedDB) {
        await idbDelete(globalThis.indexedDB, base).catch((error) => debug("keystore_delete_failed", { error }));
      }
    },

    /** A snapshot of the client's state, for debugging. */
    inspect() {
      return {
        baseUrl: base,
        keyStore: state.keyStore,
        token: state.token && tokenInfo(state.token),
        nonce: state.nonce,
        clockOffsetMs: state.offsetMs,
        minting: state.minting !== null,
        failures: state.failures,
        retryAt: state.lastError ? state.retryAt : null,
        lastError: state.lastError,
      };
    },
  };
}

// --- helpers ---------------------------------------------------------------

/**
 * @typedef {{ pair: CryptoKeyPair, publicJwk: {kty: string, crv: string, x: string, y: string}, jkt: string }} KeyMaterial
 * @typedef {{ accessToken: string, tokenType: string, expiresIn: number, expiresAtServerMs: number, ath: string }} Token
 */

/**
 * `baseUrl` as an absolute URL without trailing slash, query or fragment;
 * a relative one is resolved against the page, a missing one is the page's origin.
 * @param {string | URL | undefined} baseUrl
 */
function normaliseBase(baseUrl) {
  const location = /** @type {{href?: string} | undefined} */ (globalThis.location);
  if (baseUrl === undefined && !location?.href) throw new TypeError("createGatewayClient: baseUrl is required");
  const url = new URL(baseUrl ?? "/", location?.href);
  url.search = "";
  url.hash = "";
  return url.href.replace(/\/+$/, "");
}

/** @param {string} base @param {string} path */
function joinUrl(base, path) {
  return new URL(base + (path.startsWith("/") ? path : `/${path}`)).href;
}

/** The DPoP `htu`: the request URL without query and fragment. @param {string} url */
function stripQuery(url) {
  const u = new URL(url);
  u.search = "";
  u.hash = "";
  return u.href;
}

/** Values fetch sends as they are (everything else becomes JSON). @param {unknown} v */
function isBodyInit(v) {
  return (
    typeof v === "string" ||
    v instanceof ArrayBuffer ||
    ArrayBuffer.isView(v) ||
    (typeof Blob !== "undefined" && v instanceof Blob) ||
    (typeof FormData !== "undefined" && v instanceof FormData) ||
    (typeof URLSearchParams !== "undefined" && v instanceof URLSearchParams) ||
    (typeof ReadableStream !== "undefined" && v instanceof ReadableStream)
  );
}

/** @param {unknown} err */
function isAbort(err) {
  const name = /** @type {{name?: string} | null} */ (err)?.name;
  return name === "AbortError" || name === "TimeoutError";
}

/**
 * Waits for a shared promise, giving up (only for this caller) on abort.
 * @template T @param {Promise<T>} promise @param {AbortSignal | undefined} signal
 * @returns {Promise<T>}
 */
function abortable(promise, signal) {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/**
 * The error code of a 401: the JSON `error` (specific), else the
 * `WWW-Authenticate` error (generic; also readable when the body is not JSON).
 * Reads a clone so the caller still gets an unread Response.
 * @param {Response} res
 */
async function authErrorCode(res) {
  try {
    const body = await res.clone().json();
    if (typeof body?.error === "string") return body.error;
  } catch {
    // not JSON: fall back to the header
  }
  const match = /\berror="([^"]*)"/i.exec(res.headers.get("WWW-Authenticate") ?? "");
  return match ? match[1] : null;
}

/** @param {Response} res @param {string} what */
async function errorFromResponse(res, what) {
  const text = await res.text().catch(() => "");
  /** @type {unknown} */
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {
    // keep the text
  }
  const error = /** @type {{error?: unknown} | null} */ (body)?.error;
  const code = typeof error === "string" && error ? error : `http_${res.status}`;
  const seconds = Number(res.headers.get("Retry-After"));
  const retryAfter = res.headers.has("Retry-After") && Number.isFinite(seconds) ? seconds : null;
  return new GatewayError(`${what} failed: ${res.status} ${code}`, { status: res.status, code, body, retryAfter });
}

/** A 2xx body as JSON; an empty body is `null`. @param {Response} res @param {string} what */
async function readJson(res, what) {
  const text = await res.text();
  if (!text.trim()) return null;
  try {
    return JSON.parse(text);
  } catch (cause) {
    throw new GatewayError(`${what}: answer is not JSON`, { status: res.status, code: "invalid_response", body: text, cause });
  }
}

/** @param {ArrayBuffer | Uint8Array} bytes */
function base64url(bytes) {
  let binary = "";
  for (const b of new Uint8Array(bytes)) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** @param {unknown} value */
const base64urlJson = (value) => base64url(utf8.encode(JSON.stringify(value)));

/** base64url SHA-256 of a string (for `ath` and the thumbprint). @param {string} text */
async function sha256(text) {
  return base64url(await crypto.subtle.digest("SHA-256", utf8.encode(text)));
}

function generateKeyPair() {
  // extractable=false covers the private key; WebCrypto keeps public keys exportable regardless.
  return /** @type {Promise<CryptoKeyPair>} */ (crypto.subtle.generateKey(EC_P256, false, ["sign", "verify"]));
}

// --- IndexedDB key store ---------------------------------------------------

/** @param {IDBRequest | IDBOpenDBRequest} req @returns {Promise<any>} */
function idbResult(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/** @param {IDBTransaction} tx @returns {Promise<void>} */
function idbDone(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error("IndexedDB transaction aborted"));
  });
}

/** @param {IDBFactory} idb @returns {Promise<IDBDatabase>} */
function idbOpen(idb) {
  const req = idb.open(IDB_NAME, 1);
  req.onupgradeneeded = () => req.result.createObjectStore(IDB_STORE);
  return idbResult(req);
}

/**
 * The stored key pair for `name`, or a new one that is stored. Two tabs
 * racing here each store a pair and the last one wins; that is harmless
 * because each tab keeps using (and minting for) the pair it holds.
 * @param {IDBFactory} idb @param {string} name @returns {Promise<CryptoKeyPair>}
 */
async function idbKeyPair(idb, name) {
  const db = await idbOpen(idb);
  try {
    const stored = await idbResult(db.transaction(IDB_STORE, "readonly").objectStore(IDB_STORE).get(name));
    if (
      stored?.privateKey?.type === "private" &&
      stored.privateKey.extractable === false &&
      stored.privateKey.algorithm?.namedCurve === "P-256" &&
      stored.publicKey?.type === "public"
    ) {
      return { privateKey: stored.privateKey, publicKey: stored.publicKey };
    }
    const pair = await generateKeyPair();
    const tx = db.transaction(IDB_STORE, "readwrite");
    tx.objectStore(IDB_STORE).put({ privateKey: pair.privateKey, publicKey: pair.publicKey }, name);
    await idbDone(tx);
    return pair;
  } finally {
    db.close();
  }
}

/** @param {IDBFactory} idb @param {string} name */
async function idbDelete(idb, name) {
  const db = await idbOpen(idb);
  try {
    const tx = db.transaction(IDB_STORE, "readwrite");
    tx.objectStore(IDB_STORE).delete(name);
    await idbDone(tx);
  } finally {
    db.close();
  }
}
