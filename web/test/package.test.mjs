// The npm package as an app sees it, against scripted servers: loading the wasm from every
// kind of source (and each failure's kind), entry points per condition, no globals, URLs,
// limits before sending, the API key, AbortSignal, connection state and events, reconnect,
// and close() that lets Node exit.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { connect, load, listModels, isSottoError, SottoError } from 'sotto-client';
import { scripted, answering, encode, KIND, MANIFEST } from './scripted.mjs';

const WEB = join(dirname(fileURLToPath(import.meta.url)), '..');
const WASM = join(WEB, 'pkg/sotto_client_bg.wasm');
const run = promisify(execFile);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const open = [];
after(async () => {
  for (const s of open.splice(0)) await s.close();
});
async function servers(opts) {
  const s = await scripted(opts);
  open.push(s);
  return s;
}

/** Runs `code` (an ES module) in a fresh Node process in web/; resolves to {stdout, ms}. */
async function child(code, args = []) {
  const t0 = Date.now();
  const { stdout } = await run(process.execPath, [...args, '--input-type=module', '-e', code], {
    cwd: WEB,
    timeout: 20000,
  });
  return { stdout: stdout.trim(), ms: Date.now() - t0 };
}

test('load(): every failure is a SottoError with its own kind, then every source works', async () => {
  // Failures first: a failed load leaves the module unloaded (this process has not loaded it).
  await assert.rejects(load({ wasm: join(WEB, 'no-such.wasm') }), (e) => {
    assert.ok(isSottoError(e));
    assert.equal(e.kind, 'wasm_fetch');
    assert.match(e.message, /no-such\.wasm/);
    return true;
  });
  await assert.rejects(load({ wasm: new Uint8Array([1, 2, 3, 4]) }), (e) => e.kind === 'wasm_compile');
  await assert.rejects(load({ wasm: new Response('nope', { status: 404 }) }), (e) => e.kind === 'wasm_fetch' && /HTTP 404/.test(e.message));
  await assert.rejects(load({ wasm: 42 }), TypeError);
  // A CSP refusal (as Chromium words it) is told apart from a broken module.
  const compile = WebAssembly.compile;
  WebAssembly.compile = async () => {
    throw new WebAssembly.CompileError(
      "WebAssembly.compile(): Refused to compile or instantiate WebAssembly module because 'unsafe-eval' is not an allowed source of script in the following Content Security Policy directive",
    );
  };
  try {
    await assert.rejects(load({ wasm: new Uint8Array([0, 97, 115, 109]) }), (e) => {
      assert.equal(e.kind, 'wasm_blocked');
      assert.match(e.message, /wasm-unsafe-eval/);
      return true;
    });
  } finally {
    WebAssembly.compile = compile;
  }
  // A compiled module works (bytes, Response, URL and path forms run in fresh processes below).
  await load({ wasm: await WebAssembly.compile(await readFile(WASM)) });
  await load(); // once loaded, later calls resolve at once

  const forms = {
    bytes: `await load({ wasm: await readFile(${JSON.stringify(WASM)}) })`,
    response: `await load({ wasm: new Response(await readFile(${JSON.stringify(WASM)}), { headers: { 'content-type': 'application/wasm' } }) })`,
    path: `await load({ wasm: ${JSON.stringify(WASM)} })`,
    fileUrl: `await load({ wasm: new URL('file://${WASM}') })`,
    exportedSubpath: `await load({ wasm: fileURLToPath(import.meta.resolve('sotto-client/wasm')) })`,
    default: 'await load()',
  };
  for (const [name, line] of Object.entries(forms)) {
    const { stdout } = await child(
      `import { readFile } from 'node:fs/promises'; import { fileURLToPath } from 'node:url';
       import { load } from 'sotto-client'; ${line}; console.log('ok');`,
    );
    assert.equal(stdout, 'ok', name);
  }
  // Another program's module instantiates, but is not this package's.
  await assert.rejects(
    child(`import { load } from 'sotto-client';
      const bytes = new Uint8Array([0,97,115,109,1,0,0,0]);
      try { await load({ wasm: bytes }); console.log('loaded'); } catch (e) { console.log(e.kind); }`).then((r) => {
      throw new Error(r.stdout);
    }),
    /wasm_instantiate/,
  );
});

test('entry points: browsers get index.js (no Node module, no ws), Node gets node.js; nothing global is set', async () => {
  const resolve = (cond) =>
    child(`console.log(import.meta.resolve('sotto-client'))`, cond ? [`--conditions=${cond}`] : []);
  assert.match((await resolve()).stdout, /\/web\/node\.js$/);
  assert.match((await resolve('browser')).stdout, /\/web\/index\.js$/);
  for (const f of ['index.js', 'client.js', 'pkg/sotto_client.js']) {
    const src = await readFile(join(WEB, f), 'utf8');
    assert.doesNotMatch(src, /from\s+['"](node:|ws['"])|import\(\s*['"](node:|ws['"])|require\(/, `${f} imports a Node module`);
  }
  const pkg = JSON.parse(await readFile(join(WEB, 'package.json'), 'utf8'));
  assert.equal(pkg.sideEffects, false);
  assert.equal(pkg.exports['./wasm'], './pkg/sotto_client_bg.wasm');
  assert.equal(pkg.peerDependenciesMeta.ws.optional, true);
  assert.equal(pkg.dependencies, undefined);
  assert.equal(pkg.repository.directory, 'web');
  assert.ok(pkg.files.includes('LICENSE'));
  // Importing and connecting set no WebSocket global (Node 20 has none of its own).
  const s = await servers();
  const c = await connect({ p0: s.p0, p1: s.p1 });
  assert.equal(typeof globalThis.WebSocket, process.versions.node.split('.')[0] >= 22 ? 'function' : 'undefined');
  c.close();
});

test('URLs: /v1/ws is not doubled, http(s) works, anything else is a TypeError', async () => {
  const s = await servers();
  const c = await connect({ p0: `${s.p0}/v1/ws`, p1: new URL(s.p1.replace('ws:', 'http:') + '/') });
  c.close();
  assert.deepEqual(s.paths, ['/v1/ws', '/v1/ws']);
  for (const p0 of ['not a url', 'ftp://x', '', 42, undefined, 'ws://']) {
    await assert.rejects(connect({ p0, p1: s.p1 }), TypeError, `p0 = ${JSON.stringify(p0)}`);
  }
  await assert.rejects(connect({ p0: s.p0, p1: s.p1, timeoutMs: 0 }), TypeError);
  await assert.rejects(connect({ p0: s.p0, p1: s.p1, apiKey: 7 }), TypeError);
  await assert.rejects(connect(), TypeError);
});

test('the API key travels in both hellos', async () => {
  const s = await servers();
  const c = await connect({ p0: s.p0, p1: s.p1, apiKey: 'key-1', model: 'toy' });
  c.close();
  assert.deepEqual(
    s.hellos.map((h) => [h.server, h.model_id, h.api_key]).sort(),
    [
      ['P0', 'toy', 'key-1'],
      ['P1', 'toy', 'key-1'],
    ],
  );
});

test('maxBatch is enforced before anything is sent', async () => {
  let frames = 0;
  const s = await servers({
    manifest: { ...MANIFEST, max_batch: 2 },
    on(role, f, ws) {
      frames += 1;
      answering([1, 2, 3, 1, 2, 3])(role, f, ws);
    },
  });
  const c = await connect({ p0: s.p0, p1: s.p1 });
  assert.equal(c.manifest.maxBatch, 2);
  const before = c.bytesSent();
  await assert.rejects(c.predictBatch([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]), (e) => {
    assert.ok(e instanceof SottoError);
    assert.equal(e.kind, 'input');
    assert.match(e.message, /limit of 2/);
    return true;
  });
  assert.deepEqual(c.bytesSent(), before);
  assert.equal(frames, 0);
  const r = await c.predictBatch([[0, 0, 0, 0], [0, 0, 0, 0]]);
  assert.deepEqual(Array.from(r.logits[1]), [1, 2, 3]);
  c.close();
});

test('AbortSignal: a prediction rejects with the reason at once, late replies are dropped; connect aborts too', async () => {
  const held = [];
  const s = await servers({
    on(role, f, ws) {
      if (role === 'P0' && held.length === 0) held.push(() => answering()(role, f, ws));
      else answering()(role, f, ws);
    },
  });
  const c = await connect({ p0: s.p0, p1: s.p1 });
  const ac = new AbortController();
  const p = c.predict([0, 0, 0, 0], { signal: ac.signal });
  await sleep(20);
  const t0 = Date.now();
  ac.abort();
  await assert.rejects(p, (e) => e.name === 'AbortError');
  assert.ok(Date.now() - t0 < 100);
  held[0](); // P0 answers the abandoned request now: dropped, the client stays usable
  const r = await c.predict([0, 0, 0, 0]);
  assert.deepEqual(Array.from(r.logits), [1, 2, 3]);
  await assert.rejects(c.predict([0, 0, 0, 0], { signal: AbortSignal.abort(new Error('mine')) }), /mine/);
  c.close();

  // Connecting to a server that never answers the hello, aborted after 50 ms.
  const silent = await servers({ hello: () => {} });
  const t1 = Date.now();
  await assert.rejects(connect({ p0: silent.p0, p1: silent.p1, signal: AbortSignal.timeout(50) }), (e) => e.name === 'TimeoutError');
  assert.ok(Date.now() - t1 < 1000);
  await assert.rejects(connect({ p0: silent.p0, p1: silent.p1, signal: AbortSignal.abort() }), (e) => e.name === 'AbortError');
});

test('state and events: a lost connection is noticed at once, with no prediction in flight', async () => {
  const s = await servers({ on: answering() });
  const c = await connect({ p0: s.p0, p1: s.p1 });
  assert.equal(c.state, 'open');
  const seen = [];
  c.addEventListener('statechange', (e) => seen.push(`state:${e.state}`));
  const closed = new Promise((r) => c.addEventListener('close', r, { once: true }));
  const t0 = Date.now();
  for (const ws of s.servers.P1.clients) ws.close(1001, 'restarting');
  const ev = await closed;
  assert.ok(Date.now() - t0 < 500);
  assert.equal(c.state, 'closed');
  assert.deepEqual(seen, ['state:closed']);
  assert.ok(isSottoError(ev.error));
  assert.equal(ev.error.kind, 'connection');
  assert.equal(ev.error.message, 'P1 closed the connection (code 1001: restarting)');
  assert.equal(ev.reconnecting, false);
  await assert.rejects(c.predict([0, 0, 0, 0]), /P1 closed the connection/);
  c.close(); // harmless
});

test('reconnect: back-off, then open again with the same model; close() stops it', async () => {
  const s = await servers({ on: answering([4, 5, 6]) });
  const c = await connect({ p0: s.p0, p1: s.p1, reconnect: { minDelayMs: 20, maxDelayMs: 100 } });
  const seen = [];
  c.addEventListener('statechange', (e) => seen.push(e.state));
  const back = new Promise((r) => c.addEventListener('reconnect', r, { once: true }));
  for (const ws of s.servers.P0.clients) ws.terminate();
  await sleep(5);
  assert.equal(c.state, 'reconnecting');
  await assert.rejects(c.predict([0, 0, 0, 0]), /reconnecting/);
  const ev = await back;
  assert.ok(ev.attempt >= 1);
  assert.equal(c.state, 'open');
  assert.deepEqual(seen, ['reconnecting', 'open']);
  assert.deepEqual(Array.from((await c.predict([0, 0, 0, 0])).logits), [4, 5, 6]);
  // Servers gone for good: retries run out, then closed.
  const d = await connect({ p0: s.p0, p1: s.p1, reconnect: { retries: 2, minDelayMs: 10, maxDelayMs: 20 } });
  await s.close();
  open.splice(open.indexOf(s), 1);
  const final = await new Promise((r) => d.addEventListener('close', (e) => !e.reconnecting && r(e)));
  assert.equal(d.state, 'closed');
  assert.equal(final.error.kind, 'connection');
  c.close();
  assert.equal(c.state, 'closed');
});

test('close() (or Symbol.dispose) lets Node exit at once', async () => {
  const s = await servers({ on: answering() });
  for (const how of ['client.close()', 'client[Symbol.dispose]()']) {
    const { stdout, ms } = await child(`
      import { connect } from 'sotto-client';
      const client = await connect({ p0: ${JSON.stringify(s.p0)}, p1: ${JSON.stringify(s.p1)} });
      const r = await client.predict([0, 0, 0, 0]);
      globalThis.t0 = performance.now();
      ${how};
      process.on('exit', () => console.log(r.label, (performance.now() - t0).toFixed(0)));
    `);
    const [label, after] = stdout.split(' ').map(Number);
    assert.equal(label, 2);
    assert.ok(after < 1500, `${how}: the process lived ${after} ms after it (${ms} ms in all)`);
  }
});

test('a script that forgets close() still exits once its work is done; one waiting for a reply does not', async () => {
  const s = await servers({ on: answering() });
  const { stdout } = await child(`
    import { connect } from 'sotto-client';
    const client = await connect({ p0: ${JSON.stringify(s.p0)}, p1: ${JSON.stringify(s.p1)} });
    const r = await client.predict([0, 0, 0, 0]);
    globalThis.t0 = performance.now();
    process.on('exit', () => console.log(r.label, (performance.now() - t0).toFixed(0)));
  `);
  const [label, after] = stdout.split(' ').map(Number);
  assert.equal(label, 2);
  assert.ok(after < 1500, `the process lived ${after} ms after its last prediction`);
  // A prediction in flight keeps the process alive until it is answered.
  const slow = await servers({
    on: (role, f, ws) => setTimeout(() => answering()(role, f, ws), role === 'P0' ? 600 : 0),
  });
  const late = await child(`
    import { connect } from 'sotto-client';
    const client = await connect({ p0: ${JSON.stringify(slow.p0)}, p1: ${JSON.stringify(slow.p1)} });
    client.predict([0, 0, 0, 0]).then((r) => console.log('answered', r.label));
  `);
  assert.equal(late.stdout, 'answered 2');
});

test('listModels(): a server that is down is a connection error', async () => {
  const s = await servers();
  const port = new URL(s.p0).port;
  await s.close();
  open.splice(open.indexOf(s), 1);
  await assert.rejects(listModels(`ws://127.0.0.1:${port}`), (e) => e.kind === 'connection');
  await assert.rejects(listModels('nope'), TypeError);
});

test('a server that says it is the wrong role: bad_deployment, and nothing secret follows the hello', async () => {
  let after = 0;
  const s = await servers({
    hello(role, f, ws) {
      ws.send(encode(KIND.Manifest, 0, 0, Buffer.from(JSON.stringify({ ...MANIFEST, role: 'P0' }))));
    },
    on() {
      after += 1;
    },
  });
  await assert.rejects(connect({ p0: s.p0, p1: s.p1 }), (e) => e.kind === 'bad_deployment' && /both URLs reach a P0/.test(e.message));
  await sleep(30);
  assert.equal(after, 0);
});

