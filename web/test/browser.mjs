// The demo page in headless Chromium against three real parties (`sotto serve` helper, P1,
// and P0 serving web/dist, started by web/test/servers.mjs). Checks:
// - load → first prediction shown (printed; target ≤ 1 s), from navigation start in a browser
//   that has finished starting (both browsers wait 1 s after launch before opening the page:
//   Chromium's own start-up work, such as building its omnibox popup, used about one of the
//   two cores for up to 0.7 s, which is not the page's load);
// - digits drawn with the mouse and with a finger, and a picked MNIST sample: the label shown
//   is the plaintext model's (`sotto plain` on the exact input the page predicted), logits
//   agree, and the sample's true label is read;
// - every WebSocket frame the page sent: P1 got the hello and one fresh 32-byte seed per
//   prediction and nothing else; P0 one fresh 784 × 8-byte share per prediction; no payload
//   to either server contains an input value in fixed point (i64 LE, frac bits) or as float32;
// - ~30 predictions through the demo page in a Chromium that no DevTools client watches the
//   network of, before the test's own browser starts: the median browser prediction latency
//   (printed; target ≤ 10 ms), the latency a person's browser shows. Playwright enables the
//   DevTools Network domain on every page it drives, and Chromium then reports each WebSocket
//   frame, its payload included, to the test over the DevTools pipe, on the same two cores as
//   the prediction (measured about 1 ms of the median here). Then ~30 more through the test's
//   page (printed as "with DevTools watching the sockets"). Each with P0's and P1's own time
//   per prediction from their /metrics. That browser's own load → first prediction is printed
//   too (no DevTools client injects scripts into its page while it loads; the checked figure is
//   the test's page's, below). Clicks come once the previous answer is painted, as a
//   person's do. Like `sotto bench`, the runs are served from a pool of dealt sessions filled
//   before them (P0 runs with a pool of twice the predictions the test makes up to the end of
//   the runs, and the test waits until it is full): a pool that fell below half during a run
//   would have the helper deal, and P0 and P1 prepare, a refill on the same two cores while
//   the predictions run, which is not the prediction's latency (SOTTO_WEB_POOL=16, the
//   servers' default, measures with that);
// - nothing loaded from outside P0, no page errors, fits a 390 px wide screen;
// - a digit drawn from the keyboard;
// - a page with CSP `script-src 'self' 'wasm-unsafe-eval'` predicts, one with `'self'` alone
//   gets a SottoError of kind wasm_blocked;
// - clear errors for an unreachable P1 and an unreachable P0; a P1 lost after connecting is
//   shown at once, without a click, with a Reconnect button.
// Screenshots go to target/web-test/. Exits non-zero on a failed check (a missed latency
// target only with SOTTO_WEB_STRICT=1). Run: node web/test/browser.mjs, after
// scripts/build-web.sh and `cargo build --release -p sotto` (or SOTTO_BIN=...).

import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';
import { WebSocket } from 'ws';

import { freePort, startParties as startHarness } from './servers.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const DIST = join(ROOT, 'web/dist');
const SOTTO = process.env.SOTTO_BIN || join(ROOT, 'target/release/sotto');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const OUT_DIR = join(ROOT, 'target/web-test');
const RUNS = 30;
// Sessions of P0's pool (see the header): twice the predictions up to the end of the two
// timed runs.
const POOL = Number(process.env.SOTTO_WEB_POOL) || 2 * (2 * RUNS + 10);
const HEADER = 32;
const KIND = { hello: 1, inputShare: 3, inputSeed: 4, close: 8, inputBits: 12 };
const DEADLINE_MS = 120_000;

const failures = [];
const notes = [];
function check(ok, what) {
  if (ok) {
    console.log(`  ok   ${what}`);
  } else {
    console.log(`  FAIL ${what}`);
    failures.push(what);
  }
  return ok;
}
const STRICT = process.env.SOTTO_WEB_STRICT === '1';
function target(ok, what) {
  console.log(`  ${ok ? 'ok  ' : 'SLOW'} ${what}`);
  if (!ok) (STRICT ? failures : notes).push(`target missed: ${what}`);
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const k = s.length >> 1;
  return s.length % 2 ? s[k] : (s[k - 1] + s[k]) / 2;
};

// ---------- the plaintext model ----------

const scratch = mkdtempSync(join(tmpdir(), 'sotto-browser-'));

function plain(model, inputs) {
  const file = join(scratch, `x-${Date.now()}-${Math.random().toString(36).slice(2)}.json`);
  const flat = [];
  for (const x of inputs) for (const v of x) flat.push(v);
  writeFileSync(file, JSON.stringify(flat));
  const out = execFileSync(SOTTO, ['plain', '--model', model, '--input', file], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return JSON.parse(out);
}

function softmax(v) {
  const m = Math.max(...v);
  const e = v.map((x) => Math.exp(x - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

const maxDiff = (a, b) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

// ---------- frames ----------

function parseFrame(buf) {
  if (buf.length < HEADER || buf.toString('latin1', 0, 4) !== 'SOTW') return null;
  return {
    kind: buf[5],
    len: buf.readUInt32LE(28),
    payload: buf.subarray(HEADER),
    size: buf.length,
  };
}

// The 8-byte encodings that would betray an input: each nonzero value in fixed point
// (round(v · 2^f) as i64 LE) and each pair of consecutive float32 values that is not all zero.
// The input range the bundled model's private-weights deployment enforces: 18 bits.
const INPUT_BITS = 18;

function leakPatterns(input, fracBits) {
  const fixed = new Map();
  const floats = new Map();
  const scale = 2 ** fracBits;
  for (let i = 0; i < input.length; i++) {
    const v = input[i];
    if (v !== 0) {
      const r = Math.sign(v) * Math.round(Math.abs(v) * scale); // Rust's f64::round
      const b = Buffer.alloc(8);
      b.writeBigInt64LE(BigInt(r));
      fixed.set(b.toString('hex'), b);
    }
    if (i + 1 < input.length && (v !== 0 || input[i + 1] !== 0)) {
      const b = Buffer.from(new Float32Array([v, input[i + 1]]).buffer);
      floats.set(b.toString('hex'), b);
    }
  }
  // The k-bit codes a private-weights client shares ((x·2^f + 2^(k−1)) mod 2^k, ⌈(k+1)/8⌉
  // bytes each), four in a row (three bytes alone would turn up in random shares by chance).
  const codes = new Map();
  const width = Math.ceil((INPUT_BITS + 1) / 8);
  const code = (v) => (Math.sign(v) * Math.round(Math.abs(v) * scale) + 2 ** (INPUT_BITS - 1)) % 2 ** INPUT_BITS;
  for (let i = 0; i + 4 <= input.length; i++) {
    const w = input.slice(i, i + 4);
    if (w.every((v) => v === 0)) continue;
    const b = Buffer.alloc(4 * width);
    w.forEach((v, j) => b.writeUIntLE(code(v), j * width, width));
    codes.set(b.toString('hex'), b);
  }
  return { fixed: [...fixed.values()], floats: [...floats.values()], codes: [...codes.values()] };
}

function findLeak(payloads, patterns) {
  for (const p of patterns) {
    for (const f of payloads) {
      if (f.length >= p.length && f.indexOf(p) !== -1) return p.toString('hex');
    }
  }
  return null;
}

// Milliseconds per prediction between two readings of serverTime, or null.
const perPrediction = (a, b) => (a && b && b.count > a.count ? ((b.sum - a.sum) / (b.count - a.count)) * 1000 : null);

// Where a run's mean latency went: P0's and P1's own time, and the rest.
function breakdown(mean, own0, own1) {
  return (
    `mean ${mean.toFixed(2)} ms, of which P0's own time per prediction (its session's start → output share queued): ${own0.toFixed(2)} ms mean` +
    (own1 !== null ? `, P1's ${own1.toFixed(2)} ms` : '') +
    `; the rest (the browser's share and reconstruction, its network stack, the sockets, P0 taking a session) ${(mean - Math.max(own0, own1 ?? 0)).toFixed(2)} ms`
  );
}

// Dealt sessions ready in P0's pool (from /metrics), or null.
async function poolReady(http) {
  try {
    const text = await (await fetch(`${http}/metrics`)).text();
    const m = text.match(/^sotto_pool_ready_sessions(?:\{[^}]*\})? ([0-9.eE+-]+)$/m);
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

// A server's prediction time histogram (sum in seconds, count) from /metrics, or null.
async function serverTime(http) {
  try {
    const text = await (await fetch(`${http}/metrics`)).text();
    const num = (name) => {
      const m = text.match(new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.eE+-]+)$`, 'm'));
      return m ? Number(m[1]) : NaN;
    };
    const sum = num('sotto_prediction_seconds_sum');
    const count = num('sotto_prediction_seconds_count');
    return Number.isFinite(sum) && Number.isFinite(count) ? { sum, count } : null;
  } catch {
    return null;
  }
}

// The demo page at `url` in a Chromium driven through the DevTools protocol directly, with
// only the Runtime domain in use (no Network domain: the browser reports no frame to anyone),
// clicking the samples `runs` times from inside the page, each click once the previous answer
// is painted. Returns the page's latencies of those predictions.
async function unwatchedRun(url, runs) {
  const profile = mkdtempSync(join(tmpdir(), 'sotto-chromium-'));
  const proc = spawn(
    CHROMIUM,
    [
      '--headless',
      '--no-sandbox',
      '--remote-debugging-port=0',
      `--user-data-dir=${profile}`,
      '--no-first-run',
      '--no-default-browser-check',
      '--disable-breakpad',
      '--disable-crash-reporter',
      'about:blank',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  unwatched = proc;
  let ws = null;
  let endpoint = null;
  try {
    endpoint = await new Promise((ok, fail) => {
      let text = '';
      const timer = setTimeout(() => fail(new Error('Chromium did not open its DevTools port within 15 s')), 15_000);
      proc.stderr.on('data', (d) => {
        text += d;
        const m = text.match(/DevTools listening on (ws:\/\/\S+)/);
        if (m) {
          clearTimeout(timer);
          ok(m[1]);
        }
      });
      proc.once('exit', (code) => {
        clearTimeout(timer);
        fail(new Error(`Chromium exited (${code}): ${text.slice(-500)}`));
      });
    });
    const port = new URL(endpoint).port;
    // The page opens once the browser has finished starting (see the load in main()).
    await new Promise((r) => setTimeout(r, 1000));
    const res = await fetch(`http://127.0.0.1:${port}/json/new?${encodeURIComponent(url)}`, { method: 'PUT' });
    const target = await res.json();
    ws = new WebSocket(target.webSocketDebuggerUrl, { perMessageDeflate: false });
    await new Promise((ok, fail) => {
      ws.once('open', ok);
      ws.once('error', fail);
    });
    let id = 0;
    const waiting = new Map();
    ws.on('message', (d) => {
      const m = JSON.parse(d);
      if (m.id && waiting.has(m.id)) {
        waiting.get(m.id)(m);
        waiting.delete(m.id);
      }
    });
    const evaluate = async (fn, arg) => {
      const n = ++id;
      const reply = new Promise((ok) => waiting.set(n, ok));
      ws.send(
        JSON.stringify({
          id: n,
          method: 'Runtime.evaluate',
          params: { expression: `(${fn})(${JSON.stringify(arg)})`, awaitPromise: true, returnByValue: true },
        }),
      );
      const r = await reply;
      if (r.error) throw new Error(`DevTools: ${r.error.message}`);
      if (r.result.exceptionDetails) throw new Error(`in the page: ${r.result.exceptionDetails.exception?.description ?? r.result.exceptionDetails.text}`);
      return r.result.result.value;
    };
    const t = performance.now();
    let first = null;
    for (;;) {
      const st = await evaluate(
        () => (window.sottoDemo ? { n: sottoDemo.predictions, state: sottoDemo.state, error: sottoDemo.error, first: sottoDemo.firstPredictionMs } : null),
        null,
      );
      if (st && st.state === 'error') throw new Error(`the unwatched page failed: ${st.error}`);
      if (st && st.n >= 1) {
        first = st.first;
        break;
      }
      if (performance.now() - t > 15_000) throw new Error('the unwatched page showed no prediction within 15 s');
      await new Promise((r) => setTimeout(r, 50));
    }
    // The whole run inside the page: nothing crosses the DevTools pipe while it lasts.
    const latencies = await evaluate(
      async (runs) => {
        const frame = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
        const before = sottoDemo.latencies.length;
        const count = sottoDemo.samples.length;
        for (let i = 0; i < runs; i++) {
          await frame();
          const n = sottoDemo.predictions;
          const shown = new Promise((resolve) => {
            const on = () => {
              if (sottoDemo.predictions > n || sottoDemo.state === 'error') {
                removeEventListener('sotto:update', on);
                resolve();
              }
            };
            addEventListener('sotto:update', on);
          });
          document.querySelector(`[data-testid=sample-${i % count}]`).click();
          await shown;
          if (sottoDemo.state === 'error') throw new Error(sottoDemo.error);
        }
        return sottoDemo.latencies.slice(before);
      },
      runs,
    );
    return { latencies, first };
  } finally {
    ws?.close();
    // Closed through the DevTools protocol (its helper processes end with it), else killed.
    if (proc.exitCode === null && proc.signalCode === null) {
      const exited = new Promise((r) => proc.once('exit', r));
      let closed = false;
      if (endpoint) {
        try {
          const b = new WebSocket(endpoint, { perMessageDeflate: false });
          await new Promise((ok, fail) => {
            b.once('open', ok);
            b.once('error', fail);
          });
          b.send(JSON.stringify({ id: 1, method: 'Browser.close' }));
          closed = await Promise.race([exited.then(() => true), new Promise((r) => setTimeout(() => r(false), 5000))]);
          b.terminate();
        } catch {
          closed = false;
        }
      }
      if (!closed) {
        proc.kill('SIGKILL');
        await exited;
      }
    }
    unwatched = null;
    try {
      rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 });
    } catch (e) {
      console.log(`  (could not remove ${profile}: ${e.message})`);
    }
  }
}

// ---------- the run ----------

let servers = null;
let browser = null;
let unwatched = null; // the Chromium of unwatchedRun while it runs

async function startParties() {
  // Three `sotto serve` processes (helper, P1, P0 with --web web/dist) from web/test/servers.mjs.
  const s = await startHarness({ web: DIST, extraArgs: ['--pool', `1:${POOL}`] });
  // Both servers' pools full (each prepares every announced session: P1 may still be at it
  // when P0's pool is full) before the page loads: no dealing or preparing while the
  // predictions are timed.
  const t = performance.now();
  let ready = [null, null];
  while (performance.now() - t < 60_000) {
    ready = [await poolReady(s.httpP0), await poolReady(s.httpP1)];
    if (ready.every((r) => r !== null && r >= POOL)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  console.log(
    `pools: P0 ${ready[0] ?? '?'}, P1 ${ready[1] ?? '?'} of ${POOL} sessions ready after ${(performance.now() - t).toFixed(0)} ms`,
  );
  return s;
}

async function stopAll() {
  unwatched?.kill('SIGKILL');
  const b = browser;
  browser = null;
  if (b) await b.close().catch(() => {});
  const s = servers;
  servers = null;
  if (s) {
    try {
      await s.stop();
    } catch (e) {
      console.error(`stopping the servers: ${e.message}`);
    }
  }
  rmSync(scratch, { recursive: true, force: true });
}

async function main() {
  const t0 = performance.now();
  if (!existsSync(join(DIST, 'index.html')) || !existsSync(join(DIST, 'sotto/index.js'))) {
    throw new Error(`${DIST} has no page or package: run bash scripts/build-web.sh first`);
  }
  if (!existsSync(SOTTO)) throw new Error(`no sotto binary at ${SOTTO} (set SOTTO_BIN or cargo build --release -p sotto)`);
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM} (apt-get install -y chromium)`);

  servers = await startParties();
  const pageUrl = `${servers.httpP0}/`;
  console.log(`parties up in ${(performance.now() - t0).toFixed(0)} ms; page ${pageUrl}`);

  // The latency a person sees: the demo page in a browser nobody watches (see unwatchedRun),
  // before the test's own browser starts (its idle work would share the two cores).
  console.log(`${RUNS} predictions in a browser no DevTools client watches the network of`);
  const unwatchedResult = await (async () => {
    const pool0 = await poolReady(servers.httpP0);
    const s0 = await serverTime(servers.httpP0);
    const s0p1 = await serverTime(servers.httpP1);
    const { latencies: lat, first } = await unwatchedRun(pageUrl, RUNS);
    const s1 = await serverTime(servers.httpP0);
    const s1p1 = await serverTime(servers.httpP1);
    const pool1 = await poolReady(servers.httpP0);
    check(lat.length === RUNS, `${RUNS} latencies recorded`);
    const med = median(lat);
    const mean = lat.reduce((a, b) => a + b, 0) / lat.length;
    const own0 = perPrediction(s0, s1);
    const own1 = perPrediction(s0p1, s1p1);
    console.log(`  median browser prediction latency ${med.toFixed(2)} ms (min ${Math.min(...lat).toFixed(2)}, max ${Math.max(...lat).toFixed(2)})`);
    if (own0 !== null) console.log(`  ${breakdown(mean, own0, own1)}`);
    console.log(`  P0's pool: ${pool0 ?? '?'} sessions ready before this run, ${pool1 ?? '?'} after (of ${POOL}; below half would have the helper deal during a run)`);
    // This browser's own load → first prediction: no DevTools client injects scripts into the
    // page or watches its network while it loads (the test's page below has both). Printed only.
    if (typeof first === 'number') {
      console.log(`  load → first prediction shown in this browser: ${first.toFixed(0)} ms after navigation start (page clock)`);
    }
    return { median: med, first };
  })();

  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  const context = await browser.newContext({ viewport: { width: 1100, height: 1000 } });
  const page = await context.newPage();

  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error') pageErrors.push(`console: ${m.text()}`);
  });
  const outside = [];
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (!['ws:', 'wss:', 'data:', 'blob:'].includes(u.protocol) && u.origin !== new URL(pageUrl).origin) {
      outside.push(r.url());
    }
  });
  const sockets = []; // {url, frames: [Buffer]}
  page.on('websocket', (ws) => {
    const rec = { url: ws.url(), frames: [] };
    sockets.push(rec);
    ws.on('framesent', (f) => {
      rec.frames.push(Buffer.isBuffer(f.payload) ? Buffer.from(f.payload) : Buffer.from(String(f.payload), 'utf8'));
    });
  });

  // 1. Load → first prediction shown, in a browser that has finished starting: right after
  // launch Chromium does start-up work of its own on the same two cores (building its omnibox
  // popup page took about one core for 0.7 s in some launches), which a person's running
  // browser has long done. The page's clock starts at navigation, as before.
  await page.goto('about:blank');
  await new Promise((r) => setTimeout(r, 1000));
  console.log('load');
  const tNav = performance.now();
  await page.goto(pageUrl);
  await page.waitForFunction(
    () => window.sottoDemo && (window.sottoDemo.predictions >= 1 || window.sottoDemo.state === 'error'),
    null,
    { timeout: 15_000, polling: 5 },
  );
  const loadMs = performance.now() - tNav;
  const boot = await page.evaluate(() => ({
    state: sottoDemo.state,
    error: sottoDemo.error,
    first: sottoDemo.firstPredictionMs,
    urls: sottoDemo.urls,
    manifest: sottoDemo.manifest && JSON.parse(JSON.stringify(sottoDemo.manifest)),
    label: document.querySelector('[data-testid=label]').textContent,
  }));
  if (!check(boot.state !== 'error', `page connects (state ${boot.state}${boot.error ? `: ${boot.error}` : ''})`)) {
    throw new Error(`the page did not connect: ${boot.error}`);
  }
  console.log(
    `  load → first prediction shown: ${boot.first.toFixed(0)} ms after navigation start (page clock), ${loadMs.toFixed(0)} ms seen from the test`,
  );
  target(boot.first <= 1000, `load → first prediction ≤ 1 s (${boot.first.toFixed(0)} ms)`);
  check(/^\d$/.test(boot.label), `a label is shown (${boot.label})`);
  const m = boot.manifest || {};
  const fracBits = m.fracBits ?? m.frac_bits ?? 16;
  const modelId = m.modelId ?? m.model_id ?? 'network_a';
  const modelFile = existsSync(join(ROOT, `models/${modelId}.onnx`))
    ? join(ROOT, `models/${modelId}.onnx`)
    : join(ROOT, 'models/network_a.onnx');
  console.log(`  model ${modelId} (${modelFile.slice(ROOT.length + 1)}), ${fracBits} fractional bits; P0 ${boot.urls.p0}, P1 ${boot.urls.p1}`);

  const samples = await page.evaluate(() => sottoDemo.samples.map((s) => ({ label: s.label, input: Array.from(s.input) })));
  check(samples.length >= 10, `${samples.length} MNIST samples shown`);
  const samplePlain = plain(modelFile, samples.map((s) => s.input));
  const inputs = samples.map((s) => s.input); // everything predicted, for the leak check

  const count = () => page.evaluate(() => sottoDemo.predictions);
  // The page's last prediction and what it shows.
  const readLast = (p) =>
    p.evaluate(() => ({
      state: sottoDemo.state,
      error: sottoDemo.error,
      last: sottoDemo.last && { ...sottoDemo.last, input: Array.from(sottoDemo.last.input) },
      shown: document.querySelector('[data-testid=label]').textContent,
      bars: [...document.querySelectorAll('[data-testid^=bar-]')].map((b) => Number(b.dataset.p)),
    }));
  // Waits (on the page's own event, no polling that would compete with the prediction) until
  // the page has shown more than `before` predictions or reports an error.
  async function waitNext(before) {
    let timer;
    await Promise.race([
      page.evaluate(
        (n) =>
          new Promise((resolve) => {
            const done = () => sottoDemo.predictions > n || sottoDemo.state === 'error';
            if (done()) return resolve();
            const on = () => {
              if (done()) {
                removeEventListener('sotto:update', on);
                resolve();
              }
            };
            addEventListener('sotto:update', on);
          }),
        before,
      ),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error('no prediction shown within 10 s')), 10_000);
      }),
    ]).finally(() => clearTimeout(timer));
    const r = await readLast(page);
    if (r.state === 'error') throw new Error(`prediction failed on the page: ${r.error}`);
    return r;
  }

  function agrees(what, r) {
    const p = plain(modelFile, [r.last.input]);
    const want = p.labels[0];
    const gap = maxDiff(r.last.logits, p.logits[0]);
    const exact = maxDiff(r.last.logits, p.logits_fixed[0]);
    check(String(r.shown) === String(r.last.label), `${what}: the page shows the label it computed (${r.shown})`);
    check(r.last.label === want, `${what}: label ${r.last.label} = plaintext model's label ${want}`);
    check(gap < 0.01, `${what}: logits within 0.01 of the plaintext model's (max diff ${gap.toExponential(2)})`);
    check(exact === 0, `${what}: logits equal the fixed-point model's bit for bit (max diff ${exact})`);
    const probs = softmax(r.last.logits);
    check(
      r.bars.length === 10 && maxDiff(r.bars, r.last.probabilities || probs) < 1e-9,
      `${what}: ten probability bars, as predicted`,
    );
    return p;
  }

  // 2. Draw a stroke with the mouse (a 7: a bar, then down); pen up predicts.
  console.log('draw');
  const box = await page.locator('[data-testid=canvas]').boundingBox();
  async function stroke(points) {
    const at = ([fx, fy]) => [box.x + fx * box.width, box.y + fy * box.height];
    const before = await count();
    await page.mouse.move(...at(points[0]));
    await page.mouse.down();
    for (let k = 1; k < points.length; k++) {
      const [[x0, y0], [x1, y1]] = [points[k - 1], points[k]];
      for (let j = 1; j <= 8; j++) await page.mouse.move(...at([x0 + ((x1 - x0) * j) / 8, y0 + ((y1 - y0) * j) / 8]));
    }
    await page.mouse.up();
    return waitNext(before);
  }
  const drawn = await stroke([[0.3, 0.25], [0.7, 0.25], [0.6, 0.45], [0.5, 0.8]]);
  let n;
  check(drawn.last.input.some((v) => v > 0.5), 'the drawn stroke reached the model input');
  inputs.push(drawn.last.input);
  agrees('drawn digit', drawn);
  console.log(`  drawn digit read as ${drawn.last.label}`);

  // 3. Pick a confidently classified sample.
  console.log('sample');
  let pick = samples.findIndex(
    (s, i) => samplePlain.labels[i] === s.label && Math.max(...softmax(samplePlain.logits[i])) > 0.95,
  );
  if (pick < 0) pick = samples.findIndex((s, i) => samplePlain.labels[i] === s.label);
  check(pick >= 0, 'a sample the plaintext model classifies correctly');
  n = await count();
  await page.click(`[data-testid=sample-${pick}]`);
  const picked = await waitNext(n);
  check(maxDiff(picked.last.input, samples[pick].input) === 0, `sample ${pick}: the page predicted the sample's pixels`);
  agrees(`sample ${pick}`, picked);
  check(picked.last.label === samples[pick].label, `sample ${pick}: label ${picked.last.label} = true label ${samples[pick].label}`);

  // 4. ~30 predictions through the page. The sample buttons are clicked from inside the page
  // (button.click(), the page's own handler): Playwright's click runs its own checks in the page
  // while the prediction is under way, which adds several ms that no person's click causes.
  // Each click waits until the page has painted the previous answer (two animation frames), as
  // a person's would: clicked at once, the browser renders the previous answer (style, layout,
  // raster, compositing) on the same two cores while the next prediction is under way, which
  // measured 0.3-2.6 ms of the median here.
  console.log(`${RUNS} predictions`);
  const before = await page.evaluate(() => sottoDemo.latencies.length);
  const server0 = await serverTime(servers.httpP0);
  const server0p1 = await serverTime(servers.httpP1);
  const poolBefore = await poolReady(servers.httpP0);
  let wrong = 0;
  const tRuns = performance.now();
  for (let i = 0; i < RUNS; i++) {
    const k = i % samples.length;
    n = await count();
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    await page.evaluate((k) => document.querySelector(`[data-testid=sample-${k}]`).click(), k);
    const r = await waitNext(n);
    if (r.last.label !== samplePlain.labels[k]) wrong += 1;
  }
  const runsMs = performance.now() - tRuns;
  const server1 = await serverTime(servers.httpP0);
  const server1p1 = await serverTime(servers.httpP1);
  const poolAfter = await poolReady(servers.httpP0);
  const lat = (await page.evaluate(() => sottoDemo.latencies)).slice(before);
  const med = median(lat);
  check(lat.length === RUNS, `${RUNS} latencies recorded`);
  check(wrong === 0, `${RUNS} sample predictions agree with the plaintext model (${wrong} differ)`);
  console.log(
    `  with DevTools watching the sockets: median ${med.toFixed(2)} ms (min ${Math.min(...lat).toFixed(2)}, max ${Math.max(...lat).toFixed(2)}); ${RUNS} clicks in ${runsMs.toFixed(0)} ms`,
  );
  const own0 = perPrediction(server0, server1);
  const own1 = perPrediction(server0p1, server1p1);
  if (own0 !== null) console.log(`  ${breakdown(lat.reduce((a, b) => a + b, 0) / lat.length, own0, own1)}`);
  console.log(
    `  P0's pool: ${poolBefore ?? '?'} sessions ready before this run, ${poolAfter ?? '?'} after (of ${POOL}; below half would have the helper deal during a run)`,
  );
  target(unwatchedResult.median <= 10, `median browser prediction latency ≤ 10 ms (${unwatchedResult.median.toFixed(2)} ms)`);
  const shownMedian = await page.evaluate(() => Number(document.querySelector('[data-testid=median]').dataset.ms));
  const allMedian = median(await page.evaluate(() => sottoDemo.latencies));
  check(Math.abs(shownMedian - allMedian) < 1e-9, `the page shows the median of its predictions (${shownMedian.toFixed(2)} ms)`);

  // A second drawing (a 3, several segments of one stroke) for the screenshot.
  console.log('draw again');
  await page.click('[data-testid=clear]');
  const three = await stroke([[0.3, 0.2], [0.6, 0.2], [0.65, 0.3], [0.45, 0.48], [0.65, 0.6], [0.65, 0.75], [0.3, 0.8]]);
  inputs.push(three.last.input);
  agrees('drawn 3', three);
  console.log(`  drawn 3 read as ${three.last.label}`);

  // Drawing from the keyboard: focus the pad, pen down, a vertical bar (a 1), pen up predicts.
  console.log('keyboard');
  await page.click('[data-testid=clear]');
  await page.focus('[data-testid=canvas]');
  check(await page.evaluate(() => !document.querySelector('[data-testid=cursor]').hidden), 'the keyboard cursor shows on focus');
  for (let i = 0; i < 8; i++) await page.keyboard.press('ArrowUp');
  n = await count();
  await page.keyboard.press('Space');
  for (let i = 0; i < 16; i++) await page.keyboard.press('ArrowDown');
  await page.keyboard.press('Space');
  const keyed = await waitNext(n);
  check(keyed.last.source === 'your drawing' && keyed.last.input.some((v) => v > 0.5), 'a keyboard drawing is predicted');
  inputs.push(keyed.last.input);
  agrees('keyboard drawing', keyed);
  console.log(`  keyboard drawing read as ${keyed.last.label}`);

  // 5. What the servers received.
  console.log('frames');
  const total = await count();
  const host = (u) => new URL(u).host;
  const to = (url) => sockets.filter((s) => host(s.url) === host(url));
  const p0s = to(boot.urls.p0);
  const p1s = to(boot.urls.p1);
  check(p0s.length === 1 && p1s.length === 1, `one WebSocket to each server (${p0s.length} to P0, ${p1s.length} to P1)`);
  const frames1 = p1s.flatMap((s) => s.frames).map(parseFrame);
  const frames0 = p0s.flatMap((s) => s.frames).map(parseFrame);
  check(frames0.every(Boolean) && frames1.every(Boolean), 'every frame sent is a sotto frame');
  const hello1 = frames1.filter((f) => f && f.kind === KIND.hello);
  const seeds = frames1.filter((f) => f && f.kind === KIND.inputSeed);
  const other1 = frames1.filter((f) => f && ![KIND.hello, KIND.inputSeed, KIND.close].includes(f.kind));
  const bytes1 = frames1.reduce((a, f) => a + (f ? f.size : 0), 0);
  const helloBytes = hello1.reduce((a, f) => a + f.size, 0);
  check(hello1.length === 1, 'P1 got one hello');
  check(
    seeds.length === total && seeds.every((f) => f.len === 32 && f.size === HEADER + 32),
    `P1 got one 32-byte seed per prediction (${seeds.length} seeds for ${total} predictions)`,
  );
  check(other1.length === 0, 'P1 got nothing else');
  check(
    bytes1 <= helloBytes + total * (HEADER + 32),
    `P1 received ${bytes1} bytes = hello ${helloBytes} + ${total} × 64`,
  );
  check(new Set(seeds.map((f) => f.payload.toString('hex'))).size === seeds.length, 'every seed is fresh');
  // Private weights: shares of the 18-bit input codes and a wrap bit, 3 bytes per value.
  const shares = frames0.filter((f) => f && f.kind === KIND.inputBits);
  check(
    shares.length === total && shares.every((f) => f.len === 784 * 3),
    `P0 got one input share (784 × 3 bytes) per prediction (${shares.length})`,
  );
  check(new Set(shares.map((f) => f.payload.toString('hex'))).size === shares.length, 'every share to P0 is fresh (repeated samples too)');
  const payloads = [...frames0, ...frames1].filter(Boolean).map((f) => f.payload);
  let fixedLeak = null;
  let floatLeak = null;
  let codeLeak = null;
  for (const x of inputs) {
    const pat = leakPatterns(x, fracBits);
    fixedLeak ||= findLeak(payloads, pat.fixed);
    floatLeak ||= findLeak(payloads, pat.floats);
    codeLeak ||= findLeak(payloads, pat.codes);
  }
  check(!fixedLeak, `no server received an input value in fixed point${fixedLeak ? ` (found ${fixedLeak})` : ''}`);
  check(!codeLeak, `no server received the input's ${INPUT_BITS}-bit codes unshared${codeLeak ? ` (found ${codeLeak})` : ''}`);
  check(!floatLeak, `no server received input values as float32${floatLeak ? ` (found ${floatLeak})` : ''}`);
  // The sanity of the check itself: the unshared encoding of the last input would be found.
  const lastX = await page.evaluate(() => Array.from(sottoDemo.last.input));
  const clear = Buffer.alloc(lastX.length * 8);
  lastX.forEach((v, i) => clear.writeBigInt64LE(BigInt(Math.sign(v) * Math.round(Math.abs(v) * 2 ** fracBits)), 8 * i));
  check(findLeak([clear], leakPatterns(lastX, fracBits).fixed) !== null, 'the leak check finds an unshared input');
  const width = Math.ceil((INPUT_BITS + 1) / 8);
  const clearCodes = Buffer.alloc(lastX.length * width);
  lastX.forEach((v, i) =>
    clearCodes.writeUIntLE((Math.sign(v) * Math.round(Math.abs(v) * 2 ** fracBits) + 2 ** (INPUT_BITS - 1)) % 2 ** INPUT_BITS, width * i, width),
  );
  check(findLeak([clearCodes], leakPatterns(lastX, fracBits).codes) !== null, 'the leak check finds unshared input codes');
  const shown = await page.evaluate(() => ({
    p0: document.querySelector('[data-testid=view-p0]').width,
    p1: document.querySelector('[data-testid=view-p1]').textContent.replace(/\s+/g, ''),
  }));
  check(shown.p1 === seeds[seeds.length - 1].payload.toString('hex'), 'the page shows the seed P1 received');
  check(shown.p0 === 28, 'the page draws what P0 received as 28×28');

  // 6. The page loaded nothing from elsewhere and logged no errors.
  check(outside.length === 0, `nothing fetched from outside P0${outside.length ? `: ${outside.join(', ')}` : ''}`);
  check(pageErrors.length === 0, `no page errors${pageErrors.length ? `: ${pageErrors.join(' | ')}` : ''}`);

  // 7. Screenshots (of the drawn 3).
  mkdirSync(OUT_DIR, { recursive: true });
  const shot = join(OUT_DIR, 'demo.png');
  await page.screenshot({ path: shot, fullPage: true });
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, hasTouch: true });
  await phone.goto(pageUrl);
  await phone.waitForFunction(() => window.sottoDemo && (sottoDemo.predictions >= 1 || sottoDemo.state === 'error'), null, {
    timeout: 10_000,
  });
  // Draw with a finger (touch events through the DevTools protocol): a 1.
  const pbox = await phone.locator('[data-testid=canvas]').boundingBox();
  const cdp = await phone.context().newCDPSession(phone);
  const touchAt = (fy) => [{ x: pbox.x + pbox.width * 0.5, y: pbox.y + pbox.height * fy }];
  const phoneBefore = await phone.evaluate(() => sottoDemo.predictions);
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchStart', touchPoints: touchAt(0.2) });
  for (let i = 1; i <= 12; i++) {
    await cdp.send('Input.dispatchTouchEvent', { type: 'touchMove', touchPoints: touchAt(0.2 + (0.6 * i) / 12) });
  }
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchEnd', touchPoints: [] });
  await phone.waitForFunction((n) => sottoDemo.predictions > n || sottoDemo.state === 'error', phoneBefore, {
    timeout: 10_000,
  });
  const touched = await readLast(phone);
  check(touched.last.source === 'your drawing', `a finger drawing is predicted (read as ${touched.last.label})`);
  agrees('finger drawing', touched);
  const wide = await phone.evaluate(() => document.documentElement.scrollWidth);
  check(wide <= 390, `fits a phone-width screen (scroll width ${wide} px at 390 px)`);
  const phoneShot = join(OUT_DIR, 'demo-phone.png');
  await phone.screenshot({ path: phoneShot, fullPage: true });
  await phone.close();

  // 8. An unreachable P1 gives a clear error.
  console.log('unreachable server');
  const dead = await freePort();
  const bad = await browser.newPage();
  await bad.goto(`${pageUrl.replace(/\/+$/, '')}/?p1=ws://127.0.0.1:${dead}`);
  await bad.waitForFunction(() => window.sottoDemo && (sottoDemo.state === 'error' || sottoDemo.predictions > 0), null, {
    timeout: 15_000,
  });
  const err = await bad.evaluate(() => ({
    state: sottoDemo.state,
    text: document.querySelector('[data-testid=error]').textContent,
    visible: !document.querySelector('[data-testid=error]').hidden,
  }));
  check(err.state === 'error' && err.visible && /P1|connect/i.test(err.text), `unreachable P1 is reported: "${err.text}"`);
  await bad.close();
  const bad0 = await browser.newPage();
  await bad0.goto(`${pageUrl.replace(/\/+$/, '')}/?p0=ws://127.0.0.1:${dead}`);
  await bad0.waitForFunction(() => window.sottoDemo && (sottoDemo.state === 'error' || sottoDemo.predictions > 0), null, {
    timeout: 15_000,
  });
  const err0 = await bad0.evaluate(() => ({ state: sottoDemo.state, text: document.querySelector('[data-testid=error]').textContent }));
  check(err0.state === 'error' && /Cannot reach P0/.test(err0.text), `unreachable P0 is reported: "${err0.text}"`);
  await bad0.close();

  // 8b. Content Security Policy: with script-src 'self' 'wasm-unsafe-eval' and connect-src
  // naming both servers, a page loads the package and predicts; without 'wasm-unsafe-eval'
  // load() rejects with kind wasm_blocked.
  console.log('content security policy');
  // The page comes from a small loopback server of this test (a page Playwright fulfilled
  // itself would count as public and be refused loopback sockets by Chromium's local network
  // checks), with the policy as a response header.
  const { createServer } = await import('node:http');
  const { readFile } = await import('node:fs/promises');
  const cspServer = createServer(async (req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    const policy = path.startsWith('/strict/') ? "'self'" : "'self' 'wasm-unsafe-eval'";
    const csp = `default-src 'none'; script-src ${policy}; connect-src 'self' ${servers.p0Url} ${servers.p1Url}`;
    const rel = path.replace(/^\/strict\//, '/');
    const send = (type, body) => {
      res.writeHead(200, { 'content-type': type, 'content-security-policy': csp });
      res.end(body);
    };
    if (rel === '/csp.html') {
      return send('text/html', '<!doctype html><meta charset="utf-8"><title>csp</title><script type="module" src="csp.js"></script>');
    }
    if (rel === '/csp.js') {
      // A file ('self'): the policy allows no inline script.
      return send(
        'text/javascript',
        `import { connect } from './sotto/index.js';
        try {
          const c = await connect({ p0: ${JSON.stringify(servers.p0Url)}, p1: ${JSON.stringify(servers.p1Url)} });
          const r = await c.predict(new Float32Array(784));
          console.log('csp-result ' + JSON.stringify({ ok: true, label: r.label }));
          c.close();
        } catch (e) {
          console.log('csp-result ' + JSON.stringify({ ok: false, kind: e.kind, message: e.message }));
        }`,
      );
    }
    if (/^\/sotto\/[\w/.-]+$/.test(rel) && !rel.includes('..')) {
      try {
        const body = await readFile(join(DIST, rel));
        return send(rel.endsWith('.wasm') ? 'application/wasm' : 'text/javascript', body);
      } catch {
        // fall through
      }
    }
    res.writeHead(404);
    res.end();
  });
  await new Promise((r) => cspServer.listen(0, '127.0.0.1', r));
  const cspBase = `http://127.0.0.1:${cspServer.address().port}`;
  const cspPage = async (prefix) => {
    const p = await browser.newPage();
    const errs = [];
    let report;
    const reported = new Promise((r) => (report = r));
    p.on('pageerror', (e) => errs.push(e.message));
    // The page reports on the console: Playwright's own page functions may be blocked by the CSP.
    p.on('console', (m) => {
      if (m.text().startsWith('csp-result ')) report(JSON.parse(m.text().slice(11)));
      else errs.push(`console: ${m.text()}`);
    });
    await p.goto(`${cspBase}${prefix}/csp.html`);
    let timer;
    const r = await Promise.race([
      reported,
      new Promise((_, fail) => {
        timer = setTimeout(() => fail(new Error(`the CSP page reported nothing: ${errs.join(' | ')}`)), 15_000);
      }),
    ]).finally(() => clearTimeout(timer));
    await p.close();
    return { ...r, errs };
  };
  const allowed = await cspPage('');
  check(
    allowed.ok && /^\d$/.test(String(allowed.label)),
    `CSP script-src 'self' 'wasm-unsafe-eval': loads and predicts (${allowed.ok ? allowed.label : `${allowed.message} ${allowed.errs.join(' | ')}`})`,
  );
  const blocked = await cspPage('/strict');
  cspServer.close();
  check(
    !blocked.ok && blocked.kind === 'wasm_blocked' && /wasm-unsafe-eval/.test(blocked.message),
    `CSP script-src 'self': a SottoError of kind wasm_blocked (${blocked.kind}: ${blocked.message})`,
  );

  // 9. P1 goes away after the page connected: the page says so at once, without a click,
  // and offers to reconnect.
  console.log('server lost');
  const tKill = performance.now();
  await servers.kill('p1');
  await page.waitForFunction(() => sottoDemo.state === 'error', null, { timeout: 15_000, polling: 20 });
  const noticedMs = performance.now() - tKill;
  const lost = await page.evaluate(() => ({
    state: sottoDemo.state,
    text: document.querySelector('[data-testid=error]').textContent,
    retry: !document.querySelector('#retry').hidden,
    status: document.querySelector('[data-testid=status]').textContent,
  }));
  check(
    lost.state === 'error' && /P1/.test(lost.text) && lost.retry,
    `a lost P1 is shown without a click, ${noticedMs.toFixed(0)} ms after the kill, with a Reconnect button: "${lost.text}" (${lost.status})`,
  );
  check(noticedMs < 2000, `the loss is shown within 2 s (${noticedMs.toFixed(0)} ms)`);
  // Reconnecting while P1 is down fails with a clear message, and the button stays.
  await page.click('[data-testid=retry]');
  await page.waitForFunction(() => sottoDemo.state === 'error', null, { timeout: 15_000 });
  const again = await page.evaluate(() => ({
    text: document.querySelector('[data-testid=error]').textContent,
    retry: !document.querySelector('#retry').hidden,
  }));
  check(/P1/.test(again.text) && again.retry, `reconnecting to a dead P1 says so: "${again.text}"`);

  return {
    loadMs: boot.first,
    unwatchedLoadMs: unwatchedResult.first,
    median: unwatchedResult.median,
    watched: med,
    shot,
    phoneShot,
    seconds: (performance.now() - t0) / 1000,
  };
}

const timer = setTimeout(() => {
  console.error(`browser test: no result after ${DEADLINE_MS / 1000} s`);
  stopAll().finally(() => process.exit(1));
}, DEADLINE_MS);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    stopAll().finally(() => process.exit(130));
  });
}

let result = null;
try {
  result = await main();
} catch (e) {
  failures.push(e.message);
  console.error(`browser test: ${e.stack || e.message}`);
} finally {
  await stopAll();
  clearTimeout(timer);
}

if (result) {
  console.log(
    `\nload → first prediction ${result.loadMs.toFixed(0)} ms${typeof result.unwatchedLoadMs === 'number' ? ` (${result.unwatchedLoadMs.toFixed(0)} ms in the browser no DevTools client watches)` : ''}; median browser prediction latency ${result.median.toFixed(2)} ms (${result.watched.toFixed(2)} ms with DevTools watching the sockets); ${result.seconds.toFixed(1)} s in all`,
  );
  console.log(`screenshot: ${result.shot} (phone: ${result.phoneShot})`);
}
for (const n of notes) console.log(`note: ${n}`);
if (failures.length) {
  console.log(`\nbrowser test FAILED (${failures.length}):\n- ${failures.join('\n- ')}`);
  process.exit(1);
}
console.log('browser test passed');
