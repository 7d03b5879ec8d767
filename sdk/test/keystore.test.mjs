// Key storage: IndexedDB persistence, fallbacks to memory, forgetting the key.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { createGatewayClient } from "../tvm.mjs";
import { BASE, fakeGateway } from "../test-support/fake-gateway.mjs";

/**
 * The part of IndexedDB the SDK uses, over Maps. Values are stored by
 * reference, as a browser's structured clone of a CryptoKey keeps it usable.
 */
function fakeIndexedDB({ failOpen = false, refuseCryptoKeys = false } = {}) {
  const databases = new Map();
  const later = (fn) => setTimeout(fn, 0);
  const request = (run) => {
    const req = { result: undefined, error: null, onsuccess: null, onerror: null };
    later(() => {
      try {
        req.result = run();
        req.onsuccess?.();
      } catch (e) {
        req.error = e;
        req.onerror?.();
      }
    });
    return req;
  };
  const database = (stores) => ({
    createObjectStore: (name) => stores.set(name, new Map()),
    close() {},
    transaction(name, mode) {
      const store = stores.get(name);
      const tx = { error: null, oncomplete: null, onerror: null, onabort: null };
      setTimeout(() => later(() => tx.oncomplete?.()), 0); // after its requests
      tx.objectStore = () => ({
        get: (key) => request(() => store.get(key)),
        put(value, key) {
          assert.equal(mode, "readwrite");
          if (refuseCryptoKeys) throw new DOMException("CryptoKey could not be cloned", "DataCloneError");
          return request(() => store.set(key, value));
        },
        delete: (key) => request(() => store.delete(key)),
      });
      return tx;
    },
  });
  return {
    databases,
    open(name) {
      const req = { result: undefined, error: null, onsuccess: null, onerror: null, onupgradeneeded: null };
      later(() => {
        if (failOpen) {
          req.error = new DOMException("The user denied permission", "InvalidStateError");
          return req.onerror?.();
        }
        let stores = databases.get(name);
        const fresh = !stores;
        if (fresh) databases.set(name, (stores = new Map()));
        req.result = database(stores);
        if (fresh) req.onupgradeneeded?.();
        req.onsuccess?.();
      });
      return req;
    },
  };
}

afterEach(() => {
  delete globalThis.indexedDB;
});

const makeClient = (gw, options = {}) => createGatewayClient({ baseUrl: BASE, fetch: gw.fetch, ...options });

test("without indexedDB the key lives in memory", async () => {
  const gw = fakeGateway();
  const client = makeClient(gw);
  await client.postJson({});
  assert.equal(client.inspect().keyStore, "memory");
});

test("with indexedDB (the default) the key survives a reload and stays non-extractable", async () => {
  globalThis.indexedDB = fakeIndexedDB();
  const gw = fakeGateway();
  const first = makeClient(gw);
  await first.postJson({});
  assert.equal(first.inspect().keyStore, "indexeddb");
  const stored = globalThis.indexedDB.databases.get("ets-tvm").get("keys").get(BASE);
  assert.equal(stored.privateKey.extractable, false);

  const reloaded = makeClient(gw); // a new page with the same gateway
  assert.equal(await reloaded.thumbprint(), await first.thumbprint());
  await reloaded.postJson({});
  assert.deepEqual(gw.rejected, []);
  await assert.rejects(crypto.subtle.exportKey("jwk", (await reloaded.keyPair()).privateKey));

  const memory = makeClient(gw, { keyStore: "memory" });
  assert.notEqual(await memory.thumbprint(), await first.thumbprint());
  assert.equal(memory.inspect().keyStore, "memory");
});

test("clear({ key: true }) forgets the key, in IndexedDB too", async () => {
  globalThis.indexedDB = fakeIndexedDB();
  const gw = fakeGateway();
  const client = makeClient(gw);
  const before = await client.thumbprint();
  await client.postJson({});
  await client.clear({ key: true });
  assert.equal(globalThis.indexedDB.databases.get("ets-tvm").get("keys").has(BASE), false);
  const after = await client.thumbprint();
  assert.notEqual(after, before);
  await client.postJson({});
  assert.equal(gw.mints, 2);
  assert.deepEqual(gw.rejected, []);
  assert.equal(await makeClient(gw).thumbprint(), after);
});

for (const [label, idb] of [
  ["IndexedDB cannot be opened", { failOpen: true }],
  ["IndexedDB refuses to store CryptoKeys", { refuseCryptoKeys: true }],
]) {
  test(`falls back to memory when ${label}`, async () => {
    globalThis.indexedDB = fakeIndexedDB(idb);
    const events = [];
    const gw = fakeGateway();
    const client = makeClient(gw, { onDebug: (e) => events.push(e.type) });
    assert.ok((await client.postJson({})).ok);
    assert.equal(client.inspect().keyStore, "memory");
    assert.ok(events.includes("keystore_fallback"));
    assert.deepEqual(gw.rejected, []);
  });
}
