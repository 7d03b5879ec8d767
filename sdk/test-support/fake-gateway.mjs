// A fake ETS gateway that plays the server side of the SPEC inside the test
// process: its `fetch` is injected into the client. It really verifies every
// DPoP proof with WebCrypto (raw r||s ES256) and checks the claims, so a test
// that passes has sent proofs a real ETS would accept.
//
// Lives outside test/ because `node --test test/` would run it as a test file.

const utf8 = new TextEncoder();

export const BASE = "https://ets.example";

/** @param {ArrayBuffer | Uint8Array} bytes */
export function b64url(bytes) {
  return Buffer.from(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes)).toString("base64url");
}

/** @param {string} text */
export async function sha256(text) {
  return b64url(await crypto.subtle.digest("SHA-256", utf8.encode(text)));
}

/** RFC 7638 thumbprint of an EC public JWK. */
export function thumbprint({ crv, kty, x, y }) {
  return sha256(JSON.stringify({ crv, kty, x, y }));
}

/** Decodes a compact JWS without checking it. @param {string} jws */
export function decodeJws(jws) {
  const [h, p, s] = jws.split(".");
  return {
    header: JSON.parse(Buffer.from(h, "base64url").toString()),
    payload: JSON.parse(Buffer.from(p, "base64url").toString()),
    signature: new Uint8Array(Buffer.from(s, "base64url")),
    signingInput: `${h}.${p}`,
  };
}

/** JSON answer with the gateway's headers. */
export function json(status, body, headers = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json", ...headers },
  });
}

/** 401 as ETS answers it: JSON code plus WWW-Authenticate. */
export function unauthorized(code, headers = {}) {
  const wwwError =
    code === "use_dpop_nonce" ? "use_dpop_nonce" : code.includes("dpop") || code === "replay" ? "invalid_dpop_proof" : "invalid_token";
  return json(401, { error: code }, { "WWW-Authenticate": `DPoP algs="ES256", error="${wwwError}"`, ...headers });
}

/**
 * Verifies a DPoP proof like ETS does. Returns `{ code }` on failure (the
 * SPEC's error code) or `{ proof }` (decoded) on success.
 */
export async function verifyProof(jws, { method, url, token, jkt, serverSec, nonce, seenJti }) {
  const parts = jws.split(".");
  if (parts.length !== 3) return { code: "bad_dpop" };
  let proof;
  try {
    proof = decodeJws(jws);
  } catch {
    return { code: "bad_dpop" };
  }
  const { header, payload, signature, signingInput } = proof;
  if (header.typ !== "dpop+jwt" || header.alg !== "ES256") return { code: "bad_dpop_header" };
  const jwk = header.jwk;
  if (!jwk || Object.keys(jwk).sort().join() !== "crv,kty,x,y" || jwk.kty !== "EC" || jwk.crv !== "P-256") {
    return { code: "bad_dpop_key" };
  }
  // JOSE ES256 is raw r||s: exactly 64 bytes. A DER signature is 70-72.
  if (signature.length !== 64) return { code: "bad_dpop_sig" };
  const key = await crypto.subtle.importKey("jwk", jwk, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
  const ok = await crypto.subtle.verify({ name: "ECDSA", hash: "SHA-256" }, key, signature, utf8.encode(signingInput));
  if (!ok) return { code: "bad_dpop_sig" };
  if (jkt && (await thumbprint(jwk)) !== jkt) return { code: "cnf_mismatch" };
  if (payload.htm !== method) return { code: "htm_mismatch" };
  const expected = new URL(url);
  expected.search = "";
  expected.hash = "";
  if (payload.htu !== expected.href) return { code: "htu_mismatch" };
  if (typeof payload.jti !== "string" || !payload.jti || payload.jti.length > 256) return { code: "missing_dpop_jti" };
  if (!Number.isInteger(payload.iat)) return { code: "missing_dpop_iat" };
  if (payload.iat > serverSec + 5) return { code: "dpop_iat_in_future" };
  if (payload.iat < serverSec - 300) return { code: "dpop_iat_too_old" };
  if (token !== undefined && payload.ath !== (await sha256(token))) return { code: "ath_mismatch" };
  if (nonce && payload.nonce !== nonce) return { code: "use_dpop_nonce" };
  if (seenJti) {
    if (seenJti.has(payload.jti)) return { code: "replay" };
    seenJti.add(payload.jti);
  }
  return { proof };
}

/**
 * Creates a fake gateway.
 *
 * Options: `lifetime` (token seconds, 300), `serverNow` (() => ms, server
 * clock), `nonce` (string: nonces required; the 401 hands it out),
 * `onIssue(body, ctx)` / `onApi(ctx)` may return a Response to override the
 * default answer (ctx has `url`, `method`, `headers`, `body`, `token`).
 */
export function fakeGateway(options = {}) {
  const gw = {
    lifetime: 300,
    serverNow: () => Date.now(),
    nonce: null,
    onIssue: null,
    onApi: null,
    ...options,
    /** Every fetch the client made: { url, method, headers, body, init }. */
    requests: [],
    /** Bodies of token requests (parsed). */
    issued: [],
    /** Decoded proofs that verified. */
    proofs: [],
    /** Proofs that failed verification: { code, url }. */
    rejected: [],
    /** token -> { jkt, exp } */
    tokens: new Map(),
    seenJti: new Set(),
    get mints() {
      return this.issued.length;
    },
    get apiRequests() {
      return this.requests.filter((r) => !r.url.endsWith("/tvm/issue"));
    },
    /** Makes a token expire now (server side). */
    expire(token) {
      this.tokens.get(token).exp = 0;
    },
  };

  gw.fetch = async (input, init = {}) => {
    const url = String(input);
    const method = init.method ?? "GET";
    const headers = new Headers(init.headers);
    const record = { url, method, headers, body: init.body, init };
    gw.requests.push(record);
    const serverSec = Math.floor(gw.serverNow() / 1000);
    const path = new URL(url).pathname;

    if (path.endsWith("/tvm/issue")) {
      const body = JSON.parse(init.body);
      gw.issued.push(body);
      const override = await gw.onIssue?.(body, record);
      if (override) return override;
      const jwk = body.dpopPublicJwk;
      if (!jwk || Object.keys(jwk).sort().join() !== "crv,kty,x,y") return json(400, { error: "invalid_jwk" });
      const accessToken = `tok-${gw.issued.length}-${b64url(crypto.getRandomValues(new Uint8Array(8)))}`;
      gw.tokens.set(accessToken, { jkt: await thumbprint(jwk), exp: serverSec + gw.lifetime });
      return json(200, { accessToken, expiresIn: gw.lifetime, tokenType: "DPoP", serverTime: serverSec }, { "Cache-Control": "no-store" });
    }

    // /api: token, then proof, in the SPEC's order.
    const auth = headers.get("Authorization") ?? "";
    const token = auth.startsWith("DPoP ") ? auth.slice(5) : null;
    if (!token) return json(401, { error: "missing_bearer" }, { "WWW-Authenticate": 'DPoP algs="ES256"' });
    const known = gw.tokens.get(token);
    if (!known || known.exp <= serverSec) return unauthorized("invalid_token");
    const dpop = headers.get("DPoP");
    if (!dpop) return unauthorized("missing_dpop");
    const result = await verifyProof(dpop, {
      method,
      url,
      token,
      jkt: known.jkt,
      serverSec,
      nonce: gw.nonce,
      seenJti: gw.seenJti,
    });
    if (result.code) {
      gw.rejected.push({ code: result.code, url });
      return unauthorized(result.code, result.code === "use_dpop_nonce" ? { "DPoP-Nonce": gw.nonce } : {});
    }
    gw.proofs.push(result.proof);
    record.proof = result.proof;
    record.token = token;
    const override = await gw.onApi?.(record);
    if (override) return override;
    return json(200, { ok: true, method, path, n: gw.apiRequests.length });
  };
  return gw;
}

/** A controllable clock: `clock.now()` in ms, `clock.advance(ms)`. */
export function fakeClock(start = 1_767_225_600_000) {
  let t = start;
  return {
    now: () => t,
    advance(ms) {
      t += ms;
    },
    set(ms) {
      t = ms;
    },
  };
}
