// The package as an app gets it from npm: `npm pack`, unpacked into a fresh app's
// node_modules, then
// - a Vite app and a webpack app (no bundler configuration) are built, served from loopback
//   and predict in headless Chromium against three real parties; neither bundle carries a
//   Node module or `ws`, and each emits the .wasm;
// - a typed example (test/typed-example.ts) passes a strict `tsc --noEmit` with no DOM and no
//   Node types, and wrong inputs fail to type-check.
// Run after scripts/build-web.sh and `cargo build --release -p sotto` (or SOTTO_BIN=...):
//   node web/test/bundlers.mjs

import { execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { startParties } from './servers.mjs';

const WEB = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const failures = [];
function check(ok, what) {
  console.log(`  ${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures.push(what);
  return ok;
}

const work = mkdtempSync(join(tmpdir(), 'sotto-bundlers-'));
let parties = null;
let browser = null;
const httpServers = [];

/** `npm pack` of web/, unpacked as node_modules/sotto-client of a new app directory. */
function appWithPackage(name) {
  const app = join(work, name);
  const dest = join(app, 'node_modules/sotto-client');
  mkdirSync(dest, { recursive: true });
  execFileSync('tar', ['-xzf', TARBALL, '-C', dest, '--strip-components=1']);
  return app;
}

const MAIN = `import { connect, isSottoError } from 'sotto-client';
const q = new URLSearchParams(location.search);
try {
  const client = await connect({ p0: q.get('p0'), p1: q.get('p1') });
  const r = await client.predict(new Float32Array(client.inputSize));
  console.log('bundle-result ' + JSON.stringify({ ok: true, label: r.label, state: client.state }));
  client.close();
} catch (e) {
  console.log('bundle-result ' + JSON.stringify({ ok: false, sotto: isSottoError(e), message: String(e && e.message) }));
}
`;

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm' };

/** Serves `dir` on loopback; resolves to its base URL. */
async function serve(dir) {
  const server = createServer(async (req, res) => {
    let path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    if (path.endsWith('/')) path += 'index.html';
    if (path.includes('..')) return res.writeHead(400).end();
    try {
      const body = await readFile(join(dir, path));
      res.writeHead(200, { 'content-type': TYPES[extname(path)] || 'application/octet-stream' });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  httpServers.push(server);
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${server.address().port}`;
}

/** Opens the built app in Chromium and returns what it reported. */
async function runInBrowser(base) {
  const page = await browser.newPage();
  const notes = [];
  let report;
  const reported = new Promise((r) => (report = r));
  page.on('console', (m) => {
    if (m.text().startsWith('bundle-result ')) report(JSON.parse(m.text().slice(14)));
    else notes.push(m.text());
  });
  page.on('pageerror', (e) => notes.push(e.message));
  await page.goto(`${base}/?p0=${encodeURIComponent(parties.p0Url)}&p1=${encodeURIComponent(parties.p1Url)}`);
  let timer;
  const r = await Promise.race([
    reported,
    new Promise((r) => {
      timer = setTimeout(() => r({ ok: false, message: `nothing reported: ${notes.join(' | ')}` }), 20_000);
    }),
  ]).finally(() => clearTimeout(timer));
  await page.close();
  return r;
}

/** All files under `dir`. */
function files(dir) {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile())
    .map((d) => join(d.parentPath ?? d.path, d.name));
}

function checkBundle(name, out) {
  const all = files(out);
  const js = all.filter((f) => f.endsWith('.js')).map((f) => readFileSync(f, 'utf8')).join('\n');
  const wasm = all.filter((f) => f.endsWith('.wasm'));
  check(wasm.length === 1, `${name}: the .wasm is emitted (${wasm.map((f) => f.slice(out.length + 1)).join(', ')})`);
  check(!/node:fs|node:url|["']ws["']|ws\/lib|websocket-server/.test(js), `${name}: no Node module and no ws in the bundle`);
  return js.length;
}

async function viteApp() {
  console.log('vite');
  const app = appWithPackage('vite-app');
  writeFileSync(join(app, 'index.html'), '<!doctype html><meta charset="utf-8"><script type="module" src="/main.js"></script>');
  writeFileSync(join(app, 'main.js'), MAIN);
  const { build } = await import(join(WEB, 'node_modules/vite/dist/node/index.js'));
  const warnings = [];
  const t0 = performance.now();
  await build({
    root: app,
    configFile: false,
    logLevel: 'silent',
    build: {
      outDir: join(app, 'dist'),
      target: 'es2022',
      rollupOptions: { onwarn: (w) => warnings.push(w.message) },
    },
    customLogger: { info() {}, warn: (m) => warnings.push(m), warnOnce: (m) => warnings.push(m), error: (m) => warnings.push(m), clearScreen() {}, hasWarned: false, hasErrorLogged: () => false },
  });
  console.log(`  built in ${(performance.now() - t0).toFixed(0)} ms`);
  check(warnings.length === 0, `vite: no warnings${warnings.length ? `: ${warnings.join(' | ')}` : ''}`);
  const size = checkBundle('vite', join(app, 'dist'));
  const r = await runInBrowser(await serve(join(app, 'dist')));
  check(r.ok && /^\d$/.test(String(r.label)) && r.state === 'open', `vite: the app predicts in Chromium (${r.ok ? `label ${r.label}` : r.message}); ${size} bytes of JS`);
}

async function webpackApp() {
  console.log('webpack');
  const app = appWithPackage('webpack-app');
  writeFileSync(join(app, 'main.js'), MAIN);
  const { default: webpack } = await import(join(WEB, 'node_modules/webpack/lib/index.js'));
  const out = join(app, 'dist');
  const t0 = performance.now();
  const stats = await new Promise((ok, fail) =>
    webpack(
      {
        mode: 'production',
        target: 'web',
        context: app,
        entry: './main.js',
        output: { path: out, filename: 'main.js', publicPath: 'auto' },
        experiments: { topLevelAwait: true },
        resolve: { modules: [join(app, 'node_modules')] },
        resolveLoader: { modules: [join(WEB, 'node_modules')] },
        performance: { hints: false },
      },
      (e, s) => (e ? fail(e) : ok(s)),
    ),
  );
  console.log(`  built in ${(performance.now() - t0).toFixed(0)} ms`);
  const info = stats.toJson({ all: false, errors: true, warnings: true });
  const msgs = [...info.errors, ...info.warnings].map((m) => m.message ?? String(m));
  check(!stats.hasErrors() && !stats.hasWarnings(), `webpack: no errors or warnings${msgs.length ? `: ${msgs.join(' | ').slice(0, 600)}` : ''}`);
  writeFileSync(join(out, 'index.html'), '<!doctype html><meta charset="utf-8"><script src="main.js"></script>');
  const size = checkBundle('webpack', out);
  const r = await runInBrowser(await serve(out));
  check(r.ok && /^\d$/.test(String(r.label)), `webpack: the app predicts in Chromium (${r.ok ? `label ${r.label}` : r.message}); ${size} bytes of JS`);
}

function typedExample() {
  console.log('tsc');
  const app = appWithPackage('typed-app');
  copyFileSync(join(WEB, 'test/typed-example.ts'), join(app, 'example.ts'));
  const tsconfig = {
    compilerOptions: {
      strict: true,
      noEmit: true,
      target: 'es2022',
      module: 'esnext',
      moduleResolution: 'bundler',
      lib: ['es2022'],
      types: [],
      skipLibCheck: false,
      exactOptionalPropertyTypes: true,
      noUncheckedIndexedAccess: true,
    },
    files: ['example.ts'],
  };
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify(tsconfig));
  const tsc = join(WEB, 'node_modules/typescript/bin/tsc');
  let out = '';
  let ok = true;
  try {
    out = execFileSync(process.execPath, [tsc, '-p', app], { encoding: 'utf8' });
  } catch (e) {
    ok = false;
    out = `${e.stdout}${e.stderr}`;
  }
  check(ok, `strict tsc --noEmit of a typed example, lib es2022 only (no DOM, no Node types)${ok ? '' : `:\n${out}`}`);
  // The same with a wrong input must fail.
  writeFileSync(
    join(app, 'example.ts'),
    `import type { SottoClient } from 'sotto-client';\ndeclare const c: SottoClient;\nvoid c.predict({ length: 784 });\n`,
  );
  let refused = false;
  try {
    execFileSync(process.execPath, [tsc, '-p', app], { encoding: 'utf8' });
  } catch (e) {
    refused = /TS2345|not assignable/.test(`${e.stdout}`);
  }
  check(refused, 'tsc refuses predict({length: 784})');
}

let TARBALL;
try {
  const t0 = performance.now();
  const packed = JSON.parse(execFileSync('npm', ['pack', '--json', '--pack-destination', work], { cwd: WEB, encoding: 'utf8' }));
  TARBALL = join(work, packed[0].filename);
  const names = packed[0].files.map((f) => f.path).sort();
  console.log(`npm pack: ${packed[0].filename}, ${packed[0].size} bytes, ${names.join(' ')}`);
  for (const f of ['LICENSE', 'index.js', 'node.js', 'client.js', 'index.d.ts', 'pkg/sotto_client_bg.wasm', 'pkg/sotto_client.js']) {
    check(names.includes(f), `the tarball has ${f}`);
  }
  check(!names.some((f) => f.startsWith('test/') || f.startsWith('demo/')), 'the tarball has no tests or demo');
  typedExample();
  parties = await startParties();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  await viteApp();
  await webpackApp();
  console.log(`bundler checks took ${((performance.now() - t0) / 1000).toFixed(1)} s`);
} catch (e) {
  failures.push(e.stack || e.message);
} finally {
  await browser?.close().catch(() => {});
  for (const s of httpServers) s.close();
  await parties?.stop().catch(() => {});
  rmSync(work, { recursive: true, force: true });
}
if (failures.length) {
  console.log(`\nbundler checks FAILED (${failures.length}):\n- ${failures.join('\n- ')}`);
  process.exit(1);
}
console.log('bundler checks passed');
