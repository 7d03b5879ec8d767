// A real `twistd -n ets` process for the browser and Node.js end-to-end tests.
//
// Like tests/e2e/daemon.py: the venv's twistd (the installed package, not the
// source tree), a scratch working directory, an environment without
// PYTHONPATH and without any ETS variable of the caller, a free loopback
// port, and a wait for /health before the test starts.

import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (this file is tests/browser/support/ets.mjs). */
export const REPO = fileURLToPath(new URL("../../../", import.meta.url));

/** twistd of the project's venv; `TWISTD=/path/to/twistd` overrides it. */
export const TWISTD = process.env.TWISTD || path.join(REPO, ".venv", "bin", "twistd");

/** A production signing key for the tests (≥ 32 bytes). */
export const SIGNING_KEY = "browser-e2e-signing-key-0123456789abcdef";

/** A loopback port that nothing listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = /** @type {net.AddressInfo} */ (server.address());
      server.close(() => resolve(port));
    });
  });
}

/** @type {string[] | undefined} */
let variableNames;

/**
 * Every environment variable ETS reads, asked from the installed package
 * itself (ets_twisted.config.VARIABLES), so a variable added to ETS later is
 * dropped here too.
 */
function etsVariables() {
  if (!variableNames) {
    const python = path.join(path.dirname(TWISTD), "python");
    const env = { ...process.env };
    delete env.PYTHONPATH;
    const out = execFileSync(
      python,
      ["-c", "from ets_twisted.config import VARIABLES\nfor v in VARIABLES: print(v.env)"],
      { cwd: os.tmpdir(), env, encoding: "utf8" },
    );
    variableNames = out.split("\n").filter(Boolean);
    if (!variableNames.includes("ORIGIN_ALLOWLIST")) throw new Error(`unexpected ETS variable list: ${out}`);
  }
  return variableNames;
}

/**
 * This process's environment without PYTHONPATH and without any ETS
 * variable, plus `extra`.
 * @param {Record<string, string>} extra
 */
export function cleanEnv(extra) {
  const env = { ...process.env };
  for (const name of [...etsVariables(), "PYTHONPATH"]) delete env[name];
  return { ...env, ...extra };
}

/**
 * @typedef {object} Ets
 * @property {number} port
 * @property {string} base       `http://127.0.0.1:PORT`
 * @property {() => string} output  what twistd printed so far
 * @property {() => Promise<number | null>} stop  SIGTERM, wait, clean up; the exit code
 */

/**
 * Starts `twistd -n ets` with `env` (LISTEN_ADDR defaults to a free
 * 127.0.0.1 port) and waits until /health answers 200.
 * @param {Record<string, string>} [env]
 * @param {{timeoutMs?: number}} [options]
 * @returns {Promise<Ets>}
 */
export async function startEts(env = {}, { timeoutMs = 20_000 } = {}) {
  if (!existsSync(TWISTD)) {
    throw new Error(`${TWISTD} does not exist: run \`make install\` at the repository root first (or set TWISTD)`);
  }
  const port = await freePort();
  const cwd = mkdtempSync(path.join(os.tmpdir(), "ets-browser-"));
  const logPath = path.join(cwd, "twistd.out");
  const logFd = openSync(logPath, "w");
  const child = spawn(TWISTD, ["-n", "--pidfile=", "ets"], {
    cwd,
    env: cleanEnv({ LISTEN_ADDR: `127.0.0.1:${port}`, ...env }),
    stdio: ["ignore", logFd, logFd],
  });
  closeSync(logFd);
  /** @type {number | null} */
  let exitCode = null;
  let exited = false;
  const exit = new Promise((resolve) =>
    child.once("exit", (code, signal) => {
      exited = true;
      exitCode = code ?? (signal ? -1 : null);
      resolve(exitCode);
    }),
  );
  const output = () => {
    try {
      return readFileSync(logPath, "utf8");
    } catch {
      return "";
    }
  };
  const base = `http://127.0.0.1:${port}`;

  let stopped = false;
  async function stop() {
    if (!stopped) {
      stopped = true;
      if (!exited) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
        await exit;
        clearTimeout(timer);
      }
      const text = output();
      rmSync(cwd, { recursive: true, force: true });
      ets.output = () => text;
    }
    return exitCode;
  }

  /** @type {Ets} */
  const ets = { port, base, output, stop };
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited) {
      const text = output();
      await stop();
      throw new Error(`twistd exited early (${exitCode}):\n${text}`);
    }
    try {
      const res = await fetch(`${base}/health`, { signal: AbortSignal.timeout(2000) });
      if (res.status === 200) return ets;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const text = output();
  await stop();
  throw new Error(`twistd did not answer /health within ${timeoutMs} ms:\n${text}`);
}
