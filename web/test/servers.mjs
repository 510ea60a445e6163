// Starts a real sotto deployment on loopback for the web tests: a helper, P1 and P0, each a
// `sotto serve` process, with fresh party keys and the network_a model shared for them.
//
//   const parties = await startParties({ web: 'web/dist' });
//   ... parties.p0Url, parties.p1Url (ws://), parties.httpP0 (http://, serves `web`) ...
//   await parties.kill('p1');   // SIGKILL one process
//   await parties.stop();       // always, also on failure
//
// The binary is $SOTTO_BIN or target/release/sotto (build it with
// `cargo build --release -p sotto`).

import { spawn, execFile } from 'node:child_process';
import { mkdtemp, rm, access } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The repository root. */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
/** The models directory. */
export const MODELS = join(ROOT, 'models');
/** The sotto binary the tests use. */
export const SOTTO = process.env.SOTTO_BIN || join(ROOT, 'target/release/sotto');

/** Fails with a clear message when the sotto binary is missing. */
export async function checkBinary() {
  try {
    await access(SOTTO);
  } catch {
    throw new Error(
      `no sotto binary at ${SOTTO}: build it with \`cargo build --release -p sotto\` or set SOTTO_BIN`,
    );
  }
}

/** A free loopback TCP port (bound to port 0, then released). */
export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.unref();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Runs `sotto ARGS...` to completion and returns its stdout. */
export async function sotto(args, opts = {}) {
  const { stdout } = await run(SOTTO, args, { maxBuffer: 64 << 20, ...opts });
  return stdout;
}

/**
 * Starts helper, P1 and P0, and waits until P0's /health answers 200 (its pool is ready).
 * @param {{web?: string, model?: string, readyTimeoutMs?: number, extraArgs?: string[], verbose?: boolean}} [options]
 *   web: a directory P0 (and P1) serve at `/`; model: the ONNX model (default network_a).
 * @returns {Promise<{p0Url: string, p1Url: string, helperUrl: string, httpP0: string,
 *   httpP1: string, modelId: string, dir: string, ports: {p0: number, p1: number, helper: number},
 *   logs: () => string, kill: (role: 'p0'|'p1'|'helper') => Promise<void>, stop: () => Promise<void>}>}
 */
export async function startParties(options = {}) {
  const {
    web,
    model = join(MODELS, 'network_a.onnx'),
    readyTimeoutMs = 30000,
    extraArgs = [],
    verbose = false,
  } = options;
  await checkBinary();
  const dir = await mkdtemp(join(tmpdir(), 'sotto-web-test-'));
  const procs = new Map();
  const output = [];
  const stop = async () => {
    await Promise.all([...procs.keys()].map((role) => kill(role)));
    await rm(dir, { recursive: true, force: true });
  };
  const kill = async (role) => {
    const p = procs.get(role);
    if (!p) return;
    procs.delete(role);
    if (p.exitCode === null && p.signalCode === null) {
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGKILL');
      await exited;
    }
  };
  try {
    await sotto(['certs', '--out', dir]);
    const net = join(dir, 'net');
    await sotto(['share-model', model, '--out', net]);
    const [ph, p1, p0] = [await freePort(), await freePort(), await freePort()];
    const common = ['--model', `net=${net}`, ...extraArgs];
    const webArgs = web ? ['--web', resolve(ROOT, web)] : [];
    const start = (role, args) => {
      const keyFile = ['--key-file', join(dir, `${role}.keys`)];
      const p = spawn(SOTTO, ['serve', '--role', role, ...args, ...keyFile, ...common], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const keep = (chunk) => {
        const text = chunk.toString();
        output.push(`[${role}] ${text}`);
        if (output.length > 500) output.shift();
        if (verbose) process.stderr.write(`[${role}] ${text}`);
      };
      p.stdout.on('data', keep);
      p.stderr.on('data', keep);
      p.on('error', (e) => output.push(`[${role}] spawn error: ${e.message}\n`));
      procs.set(role, p);
      return p;
    };
    start('helper', ['--listen', `127.0.0.1:${ph}`]);
    start('p1', ['--listen', `127.0.0.1:${p1}`, '--helper', `ws://127.0.0.1:${ph}`, ...webArgs]);
    start('p0', [
      '--listen',
      `127.0.0.1:${p0}`,
      '--p1',
      `ws://127.0.0.1:${p1}`,
      '--helper',
      `ws://127.0.0.1:${ph}`,
      ...webArgs,
    ]);
    const deadline = Date.now() + readyTimeoutMs;
    for (;;) {
      for (const [role, p] of procs) {
        if (p.exitCode !== null || p.signalCode !== null) {
          throw new Error(`sotto serve --role ${role} exited (${p.exitCode ?? p.signalCode}):\n${output.join('')}`);
        }
      }
      try {
        const r = await fetch(`http://127.0.0.1:${p0}/health`, { signal: AbortSignal.timeout(1000) });
        if (r.status === 200) break;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        throw new Error(`P0 was not ready within ${readyTimeoutMs} ms:\n${output.join('')}`);
      }
      await sleep(100);
    }
    return {
      p0Url: `ws://127.0.0.1:${p0}`,
      p1Url: `ws://127.0.0.1:${p1}`,
      helperUrl: `ws://127.0.0.1:${ph}`,
      httpP0: `http://127.0.0.1:${p0}`,
      httpP1: `http://127.0.0.1:${p1}`,
      modelId: 'net',
      dir,
      ports: { p0, p1, helper: ph },
      logs: () => output.join(''),
      kill,
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
