/**
 * ETS browser SDK: calls an API through the ETS gateway with a short-lived
 * access token bound to a non-extractable DPoP key (RFC 9449).
 */

/** Options of {@link createGatewayClient}. */
export interface GatewayClientOptions {
  /**
   * Origin (optionally with a path prefix) of the ETS gateway, e.g.
   * `"https://ets.example.com"`. In a browser it defaults to the page's
   * origin and may be relative to the page.
   */
  baseUrl?: string | URL;
  /** Path of the token endpoint below `baseUrl`. Default `"/tvm/issue"`. */
  tokenPath?: string;
  /** Default path of API calls below `baseUrl` (a call's `path` replaces it). Default `"/api"`. */
  apiPath?: string;
  /**
   * Returns the bot-challenge response (Turnstile, hCaptcha, reCAPTCHA) sent
   * as `etsToken` with each mint. Called once per mint; may be async. A
   * `null`/`undefined` result sends no `etsToken`.
   */
  etsTokenProvider?: () => string | null | undefined | Promise<string | null | undefined>;
  /** fetch used for mints and API calls. Default: `globalThis.fetch`. */
  fetch?: (input: string, init: RequestInit) => Promise<Response>;
  /**
   * Where the key pair lives. `"indexeddb"` (default when `indexedDB`
   * exists) keeps it across reloads, falling back to memory when IndexedDB
   * is missing or refuses CryptoKeys; `"memory"` forgets it with the page.
   */
  keyStore?: "indexeddb" | "memory";
  /** Receives debug events (`mint`, `mint_failed`, `retry`, `keystore_fallback`, …). */
  onDebug?: (event: DebugEvent) => void;
  /** Local clock in epoch milliseconds. Default `Date.now`; meant for tests. */
  now?: () => number;
}

/** An event passed to {@link GatewayClientOptions.onDebug}. */
export interface DebugEvent {
  type: "mint" | "mint_failed" | "retry" | "keystore_fallback" | "keystore_delete_failed" | (string & {});
  [detail: string]: unknown;
}

/** The current access token. */
export interface TokenInfo {
  accessToken: string;
  /** As issued, normally `"DPoP"`; requests always use the `DPoP` scheme. */
  tokenType: string;
  /** Lifetime in seconds at issuance. */
  expiresIn: number;
  /** Expiry in epoch milliseconds of the local clock (comparable with `Date.now()`). */
  expiresAt: number;
}

/** Options of a single call. */
export interface CallOptions {
  /** Whole path below `baseUrl` (e.g. `"/api/search?q=1"`); replaces `apiPath`. */
  path?: string;
  /** Aborts this call (the shared mint, if any, goes on for other callers). */
  signal?: AbortSignal;
  /** Extra request headers. `Authorization` and `DPoP` are set by the SDK. */
  headers?: HeadersInit;
}

/** Options of {@link GatewayClient.fetchResponse}. */
export interface FetchResponseOptions extends CallOptions {
  /** HTTP method. Default `"POST"`; for GET and HEAD no body is sent. */
  method?: string;
}

/** Snapshot returned by {@link GatewayClient.inspect}, for debugging. */
export interface ClientState {
  baseUrl: string;
  /** Where the key was found or stored; `null` before the key exists. */
  keyStore: "indexeddb" | "memory" | null;
  token: TokenInfo | null;
  nonce: string | null;
  /** Server clock minus local clock, from the last token answer's `serverTime`. */
  clockOffsetMs: number;
  minting: boolean;
  /** Consecutive failed mints. */
  failures: number;
  /** Local epoch ms before which a mint is not attempted again, or `null`. */
  retryAt: number | null;
  lastError: unknown;
}

/** A client bound to one gateway and one key pair. */
export interface GatewayClient {
  /**
   * POSTs `payload` as JSON and returns the parsed JSON answer (`null` for
   * an empty body). Throws {@link GatewayError} for any non-2xx answer and
   * for network failures; an abort rejects with the signal's reason.
   */
  postJson<T = any>(payload: unknown, options?: CallOptions): Promise<T>;
  /**
   * Sends a request and returns the raw `Response`, also for non-2xx answers,
   * so that a streamed body can be read as it arrives. A string, Blob,
   * ArrayBuffer(View), FormData, URLSearchParams or ReadableStream payload is
   * sent as is, anything else as JSON; GET/HEAD send no body. A
   * ReadableStream body can be sent only once, so it is never retried.
   * Throws {@link GatewayError} only when no answer arrived (or the mint failed).
   */
  fetchResponse(payload?: unknown, options?: FetchResponseOptions): Promise<Response>;
  /** The current access token, minting one when needed. */
  getToken(options?: { signal?: AbortSignal }): Promise<TokenInfo>;
  /** RFC 7638 thumbprint (base64url SHA-256) of the public key: the token's `cnf.jkt`. */
  thumbprint(): Promise<string>;
  /**
   * The WebCrypto key pair. The private key is non-extractable, so this does
   * not expose it; meant for debugging and tests.
   */
  keyPair(): Promise<CryptoKeyPair>;
  /**
   * Forgets the token, the nonce and the mint back-off (e.g. on logout, or to
   * retry at once). With `{ key: true }` also forgets the key pair, deleting
   * it from IndexedDB, so the next call uses a new key.
   */
  clear(options?: { key?: boolean }): Promise<void>;
  /** A snapshot of the client's state, for debugging. */
  inspect(): ClientState;
}

/** Thrown for non-2xx answers and network failures. */
export class GatewayError extends Error {
  constructor(
    message: string,
    details?: { status?: number; code?: string; body?: unknown; retryAfter?: number | null; cause?: unknown },
  );
  name: "GatewayError";
  /** HTTP status; 0 when no answer arrived. */
  status: number;
  /**
   * The answer's `error` member (e.g. `"origin_not_allowed"`), else
   * `"http_<status>"`; `"network_error"` when no answer arrived;
   * `"invalid_response"` for a 2xx answer that is not the expected JSON.
   */
  code: string;
  /** Parsed JSON answer, or its text when it is not JSON; `null` without an answer. */
  body: unknown;
  /** `Retry-After` in seconds, or `null`. */
  retryAfter: number | null;
}

/** Creates a client for one ETS gateway. */
export function createGatewayClient(options?: GatewayClientOptions): GatewayClient;
