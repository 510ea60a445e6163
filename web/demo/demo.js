// The sotto demo page: draw or pick a digit, predict it privately through P0 and P1, show
// the answer and what each server received. Plain ES module, no dependencies beyond the
// sotto package served next to this file.

const SIDE = 28; // MNIST side

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// ---------- start-up ----------

// Everything the first prediction needs is asked for at once, as this module starts and
// before the rest of the page is set up: the client's modules, where P1 is, the sample digits
// and the compiled WebAssembly (compiled while the modules load and P0 says where P1 is, not
// after). start() takes these the first time it runs.
let boot = {
  module: importClient(),
  urls: serverUrls(),
  samples: loadSamples(),
  wasm: compileWasm(),
};
for (const p of Object.values(boot)) p.catch(() => {}); // start() awaits each and shows a failure

function importClient() {
  return import('./sotto/index.js').catch((e) => {
    throw new Error(`Could not load the sotto client (sotto/index.js and its WebAssembly): ${errText(e)}`);
  });
}

// The client's WebAssembly (index.html preloads it), compiled while the modules load, so that
// connect() only instantiates it. Undefined on any failure: connect() then fetches the file
// itself and says what is wrong with it.
function compileWasm() {
  if (typeof WebAssembly !== 'object' || typeof WebAssembly.compileStreaming !== 'function') {
    return Promise.resolve(undefined);
  }
  return fetch('sotto/pkg/sotto_client_bg.wasm')
    .then((r) => (r.ok ? WebAssembly.compileStreaming(r) : undefined))
    .catch(() => undefined);
}

let resolveReady;
let rejectReady;
const ready = new Promise((res, rej) => {
  resolveReady = res;
  rejectReady = rej;
});
ready.catch(() => {}); // awaited by tests; a failure is shown on the page

// What tests (and the curious) can read.
const demo = {
  ready,
  last: null,
  latencies: [],
  predictions: 0,
  firstPredictionMs: null,
  state: 'connecting',
  error: null,
  samples: [],
  urls: null,
  manifest: null,
};
window.sottoDemo = demo;

let client = null;
let samples = [];
let busy = false;
let pending = null;
let sottoModule = null;

// ---------- status and errors ----------

// Tests (and embedding pages) can listen for this event instead of polling sottoDemo.
function changed() {
  window.dispatchEvent(new CustomEvent('sotto:update', { detail: demo }));
}

function setState(state, text) {
  demo.state = state;
  const s = $('status');
  s.dataset.state = state;
  s.textContent = text;
  changed();
}

function showError(message) {
  demo.error = message;
  const e = $('error');
  e.textContent = message;
  e.hidden = false;
}

function clearError() {
  demo.error = null;
  $('error').hidden = true;
  $('error').textContent = '';
}

function errText(e) {
  if (e == null) return 'unknown error';
  if (typeof e === 'string') return e;
  return e.message || String(e);
}

// ---------- where the servers are ----------

function p0FromOrigin() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}`;
}

async function serverUrls() {
  const p0 = params.get('p0') || p0FromOrigin();
  let p1 = params.get('p1');
  if (!p1) {
    // P0 (which serves this page) tells where P1 is.
    const base = params.get('p0')
      ? params.get('p0').replace(/^ws(s?):/, 'http$1:')
      : location.origin;
    let r;
    try {
      r = await fetch(`${base.replace(/\/$/, '')}/v1/deployment`, { cache: 'no-store' });
    } catch (e) {
      throw new Error(
        `Cannot reach P0 at ${base} (${errText(e)}). Is it running? ` +
          '(sotto demo, or sotto serve --role p0 --web web/dist)',
      );
    }
    if (!r.ok) {
      throw new Error(
        `P0 at ${base} answered ${r.status} to GET /v1/deployment, so this page cannot tell ` +
          'where P1 is. Add ?p1=ws://HOST:PORT to the address.',
      );
    }
    let d;
    try {
      d = await r.json();
    } catch (e) {
      throw new Error(`P0's /v1/deployment is not JSON: ${errText(e)}`);
    }
    p1 = d && d.p1;
    if (!p1) {
      throw new Error(
        'P0 did not say where P1 is (GET /v1/deployment has no p1). ' +
          'Add ?p1=ws://HOST:PORT to the address.',
      );
    }
  }
  return { p0, p1 };
}

// ---------- samples ----------

// samples.json: an array (or {samples: [...]}) of {label, pixels|image|values|data|input};
// values in 0..1 (or 0..255 bytes, divided by 255 here).
function parseSamples(json) {
  const list = Array.isArray(json) ? json : json && (json.samples || json.images || []);
  const labels = !Array.isArray(json) && json && Array.isArray(json.labels) ? json.labels : null;
  const out = [];
  list.forEach((s, i) => {
    let values = Array.isArray(s) ? s : s.pixels || s.image || s.values || s.data || s.input || s.x;
    if (!values) return;
    if (Array.isArray(values[0])) values = values.flat(Infinity);
    const x = Float32Array.from(values, Number);
    let max = 0;
    for (const v of x) max = Math.max(max, v);
    if (max > 1.0001) for (let j = 0; j < x.length; j++) x[j] /= 255;
    const label = s.label ?? s.y ?? (labels ? labels[i] : null);
    out.push({ input: x, label: label == null ? null : Number(label) });
  });
  return out;
}

async function loadSamples() {
  const r = await fetch('samples.json', { cache: 'no-store' });
  if (!r.ok) throw new Error(`samples.json: HTTP ${r.status}`);
  return parseSamples(await r.json());
}

function drawGray(canvas, values, side = SIDE) {
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(side, side);
  for (let i = 0; i < side * side; i++) {
    const g = Math.max(0, Math.min(255, Math.round((values[i] || 0) * 255)));
    img.data[4 * i] = g;
    img.data[4 * i + 1] = g;
    img.data[4 * i + 2] = g;
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

let samplesShown = null; // the samples the buttons show

function showSamples() {
  if (samplesShown === samples) return;
  samplesShown = samples;
  renderSamples();
}

function renderSamples() {
  const box = $('samples');
  box.textContent = '';
  if (samples.length === 0) {
    const s = document.createElement('span');
    s.className = 'hint';
    s.textContent = 'No samples found (samples.json is empty).';
    box.append(s);
    return;
  }
  samples.forEach((s, i) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.testid = `sample-${i}`;
    b.dataset.index = String(i);
    if (s.label != null) b.dataset.label = String(s.label);
    b.setAttribute('aria-pressed', 'false');
    b.setAttribute(
      'aria-label',
      `MNIST test digit ${i + 1}` + (s.label != null ? `, labelled ${s.label}` : ''),
    );
    b.title = s.label != null ? `MNIST test digit (true label ${s.label})` : 'MNIST test digit';
    const c = document.createElement('canvas');
    c.width = SIDE;
    c.height = SIDE;
    drawGray(c, s.input);
    b.append(c);
    b.addEventListener('click', () => pickSample(i));
    box.append(b);
  });
}

function markSample(i) {
  for (const b of $('samples').querySelectorAll('button')) {
    b.setAttribute('aria-pressed', String(Number(b.dataset.index) === i));
  }
}

function pickSample(i) {
  const s = samples[i];
  if (!s) return;
  // The prediction goes first; the page repaints once it is back (a repaint while the
  // servers answer would only delay reading their replies).
  request(s.input, s.label != null ? `MNIST test digit labelled ${s.label}` : 'MNIST test digit', () => {
    markSample(i);
    clearPad();
  });
}

// ---------- drawing ----------

const pad = $('pad');
const pctx = pad.getContext('2d');
let drawing = null; // {id, x, y}
let inked = false;

function clearPad() {
  pctx.fillStyle = '#000';
  pctx.fillRect(0, 0, pad.width, pad.height);
  inked = false;
}

function padPoint(ev) {
  const r = pad.getBoundingClientRect();
  return {
    x: ((ev.clientX - r.left) * pad.width) / r.width,
    y: ((ev.clientY - r.top) * pad.height) / r.height,
  };
}

function strokeTo(p) {
  pctx.strokeStyle = '#fff';
  pctx.lineWidth = pad.width / 13;
  pctx.lineCap = 'round';
  pctx.lineJoin = 'round';
  pctx.beginPath();
  pctx.moveTo(drawing.x, drawing.y);
  pctx.lineTo(p.x, p.y);
  pctx.stroke();
  drawing.x = p.x;
  drawing.y = p.y;
}

pad.addEventListener('pointerdown', (ev) => {
  if (drawing || (ev.pointerType === 'mouse' && ev.button !== 0)) return;
  ev.preventDefault();
  pad.setPointerCapture(ev.pointerId);
  const p = padPoint(ev);
  drawing = { id: ev.pointerId, x: p.x, y: p.y };
  pctx.fillStyle = '#fff';
  pctx.beginPath();
  pctx.arc(p.x, p.y, pad.width / 26, 0, 2 * Math.PI);
  pctx.fill();
  inked = true;
  markSample(-1);
});

pad.addEventListener('pointermove', (ev) => {
  if (!drawing || ev.pointerId !== drawing.id) return;
  ev.preventDefault();
  const evs = typeof ev.getCoalescedEvents === 'function' ? ev.getCoalescedEvents() : [];
  for (const e of evs.length ? evs : [ev]) strokeTo(padPoint(e));
});

function penUp(ev) {
  if (!drawing || ev.pointerId !== drawing.id) return;
  drawing = null;
  if (inked && client) request(padInput(), 'your drawing');
}
pad.addEventListener('pointerup', penUp);
pad.addEventListener('pointercancel', penUp);

// The drawing as an MNIST-like input (the package frames it like MNIST: the ink scaled into
// 20×20 and centred by mass in 28×28, white on black, values in 0..1).
function padInput() {
  const img = pctx.getImageData(0, 0, pad.width, pad.height);
  return sottoModule.imageDataToInput(img, client.manifest.inputShape, { center: true });
}

// The keyboard: arrows move a cursor (one MNIST pixel a step, Shift: three), Space puts the
// pen down or lifts it (lifting predicts), Enter predicts, Delete/Backspace/Escape clears.
const cursor = $('cursor');
const key = { x: pad.width / 2, y: pad.height / 2, pen: false };

function showCursor() {
  cursor.hidden = document.activeElement !== pad;
  cursor.style.left = `${(100 * key.x) / pad.width}%`;
  cursor.style.top = `${(100 * key.y) / pad.height}%`;
  cursor.classList.toggle('down', key.pen);
}

function penDownAt(p) {
  drawing = { id: 'keyboard', x: p.x, y: p.y };
  pctx.fillStyle = '#fff';
  pctx.beginPath();
  pctx.arc(p.x, p.y, pad.width / 26, 0, 2 * Math.PI);
  pctx.fill();
  inked = true;
  markSample(-1);
}

pad.addEventListener('focus', showCursor);
pad.addEventListener('blur', () => {
  if (key.pen) {
    key.pen = false;
    drawing = null;
  }
  showCursor();
});
pad.addEventListener('keydown', (ev) => {
  const step = (pad.width / SIDE) * (ev.shiftKey ? 3 : 1);
  const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  if (moves[ev.key]) {
    const [dx, dy] = moves[ev.key];
    key.x = Math.min(pad.width - 1, Math.max(0, key.x + dx * step));
    key.y = Math.min(pad.height - 1, Math.max(0, key.y + dy * step));
    if (key.pen && drawing) strokeTo({ x: key.x, y: key.y });
  } else if (ev.key === ' ') {
    key.pen = !key.pen;
    if (key.pen && !drawing) penDownAt(key);
    else if (!key.pen && drawing && drawing.id === 'keyboard') {
      drawing = null;
      if (inked && client) request(padInput(), 'your drawing');
    }
  } else if (ev.key === 'Enter') {
    if (inked && client) request(padInput(), 'your drawing');
  } else if (['Delete', 'Backspace', 'Escape'].includes(ev.key)) {
    key.pen = false;
    drawing = null;
    clearPad();
    $('source').textContent = '';
  } else {
    return;
  }
  ev.preventDefault();
  showCursor();
});

$('clear').addEventListener('click', () => {
  clearPad();
  $('source').textContent = '';
});

// ---------- predictions ----------

// What connecting changes on the page (status, model, server addresses, the sample buttons) is
// drawn with the first answer, not between connecting and that answer: the page's layout and
// paint would then run on this thread while the servers' replies wait for it (the first
// prediction took 11-22 ms that way in headless Chromium here, 5-8 ms this way).
const afterAnswer = [];

function showAfterAnswer() {
  for (const f of afterAnswer.splice(0)) f();
}

// Predicts `input` once the current prediction (if any) is back; a newer request replaces
// one still waiting. `then` runs when the result (or error) is in, before it is shown.
function request(input, source, then = null) {
  pending = { input, source, then };
  if (!busy) pump();
}

async function pump() {
  busy = true;
  while (pending) {
    const job = pending;
    pending = null;
    if (!client) {
      if (demo.state !== 'error') pending = job; // shown once connected
      break;
    }
    await predictOne(job);
  }
  busy = false;
}

async function predictOne({ input, source, then }) {
  const t0 = performance.now();
  let r;
  try {
    r = await client.predict(input);
  } catch (e) {
    showAfterAnswer();
    if (then) then();
    const hint =
      e && e.kind === 'connection'
        ? ' The server may have stopped or the network dropped; “Reconnect” tries again.'
        : '';
    showError(`Prediction failed: ${errText(e)}.${hint}`.replace(/\.\./g, '.'));
    setState('error', 'Prediction failed');
    $('retry').hidden = false;
    return;
  }
  const latencyMs = typeof r.latencyMs === 'number' ? r.latencyMs : performance.now() - t0;
  showAfterAnswer();
  if (then) then();
  if (demo.error) clearError();
  let sent = null;
  try {
    sent = client.lastSent();
  } catch {
    sent = null;
  }
  // The model's probabilities, or (for a model ending in logits) their softmax, computed here.
  const logits = Array.from(r.logits);
  const probabilities = r.probabilities ? Array.from(r.probabilities) : softmax(logits);
  const label = Number(r.label);
  demo.latencies.push(latencyMs);
  demo.predictions += 1;
  demo.last = {
    input: Float32Array.from(input),
    label,
    logits,
    probabilities,
    latencyMs,
    bytesSent: r.bytesSent ? { p0: r.bytesSent.p0, p1: r.bytesSent.p1 } : null,
    source,
  };
  showResult(r, probabilities, label, latencyMs, source, input, sent);
  if (demo.firstPredictionMs == null) {
    demo.firstPredictionMs = performance.now();
    resolveReady(demo);
  }
  changed();
}

function softmax(v) {
  const max = Math.max(...v);
  const e = v.map((x) => Math.exp(x - max));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

function median(xs) {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const k = s.length >> 1;
  return s.length % 2 ? s[k] : (s[k - 1] + s[k]) / 2;
}

const ms = (x) => `${x < 10 ? x.toFixed(2) : x.toFixed(1)} ms`;
// Thousands separated by commas, as en-US writes them. Not toLocaleString: its first call
// loads the browser's number-formatting data, which took 20-130 ms of the first prediction's
// display (page load → first prediction shown) in headless Chromium.
const grouped = (n) => String(Math.trunc(Number(n))).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
const bytes = (n) => `${grouped(n)} bytes`;

function initBars(n) {
  const ol = $('bars');
  ol.textContent = '';
  for (let d = 0; d < n; d++) {
    const li = document.createElement('li');
    li.dataset.testid = `bar-${d}`;
    li.dataset.p = '0';
    const k = document.createElement('span');
    k.textContent = String(d);
    k.setAttribute('aria-hidden', 'true');
    const track = document.createElement('span');
    track.className = 'track';
    track.setAttribute('role', 'meter');
    track.setAttribute('aria-valuemin', '0');
    track.setAttribute('aria-valuemax', '100');
    track.setAttribute('aria-valuenow', '0');
    track.setAttribute('aria-label', `Probability of ${d}`);
    const fill = document.createElement('span');
    fill.className = 'fill';
    fill.style.display = 'block';
    track.append(fill);
    const pct = document.createElement('span');
    pct.className = 'pct';
    pct.textContent = '–';
    li.append(k, track, pct);
    ol.append(li);
  }
}

function showResult(r, probs, label, latencyMs, source, input, sent) {
  const lab = $('label');
  lab.textContent = String(label);
  lab.dataset.label = String(label);
  lab.dataset.count = String(demo.predictions);
  lab.setAttribute('aria-label', `Predicted digit: ${label}`);
  $('quick').textContent = String(label);
  $('source').textContent = source ? `from ${source}` : '';
  const ol = $('bars');
  if (ol.children.length !== probs.length) initBars(probs.length);
  probs.forEach((p, d) => {
    const li = ol.children[d];
    li.dataset.p = String(p);
    li.classList.toggle('top', d === label);
    li.querySelector('.fill').style.width = `${(100 * p).toFixed(1)}%`;
    const track = li.querySelector('.track');
    track.setAttribute('aria-valuenow', (100 * p).toFixed(1));
    li.querySelector('.pct').textContent = `${(100 * p).toFixed(1)}%`;
  });
  $('latency').textContent = ms(latencyMs);
  const med = median(demo.latencies);
  $('median').textContent = `${ms(med)} over ${demo.latencies.length} prediction${demo.latencies.length === 1 ? '' : 's'}`;
  $('median').dataset.ms = String(med);
  let total = null;
  try {
    total = client.bytesSent();
  } catch {
    total = null;
  }
  const per = r.bytesSent || {};
  const line = (now, tot) =>
    [now != null ? `${bytes(now)} for this prediction` : null, tot != null ? `${bytes(tot)} in all` : null]
      .filter(Boolean)
      .join(', ');
  $('bytes-p0').textContent = line(per.p0, total && total.p0);
  $('bytes-p1').textContent = line(per.p1, total && total.p1);
  drawGray($('view-input'), input);
  if (sent && sent.p0) showP0(sent.p0);
  if (sent && sent.p1) showP1(sent.p1);
  setState('ready', `Connected: private predictions with ${demo.manifest ? demo.manifest.modelId : 'the model'}`);
}

// P0's share: one little-endian element per input value (8 bytes, or with private weights
// ⌈(k+1)/8⌉ bytes of a k-bit code's share: manifest.inputBits); a random byte of each as a
// gray level.
function showP0(b) {
  const k = demo.manifest && demo.manifest.inputBits;
  const w = k ? Math.ceil((k + 1) / 8) : 8;
  const at = w >= 2 ? w - 2 : 0; // every bit of a share is uniform; this byte is full
  const n = Math.floor(b.length / w);
  const side = Math.max(1, Math.ceil(Math.sqrt(n)));
  const c = $('view-p0');
  if (c.width !== side) {
    c.width = side;
    c.height = side;
  }
  const ctx = c.getContext('2d');
  const img = ctx.createImageData(side, side);
  for (let i = 0; i < side * side; i++) {
    const g = i < n ? b[w * i + at] : 0;
    img.data[4 * i] = g;
    img.data[4 * i + 1] = g;
    img.data[4 * i + 2] = g;
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  $('p0-size').textContent = `${grouped(n)} numbers (${bytes(b.length)})`;
}

function showP1(b) {
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  // Two groups of four bytes per line.
  $('view-p1').textContent = hex.replace(/(.{8})(.{8})?/g, (_, a, b) => (b ? `${a} ${b}\n` : `${a}\n`)).trim();
}

// ---------- start ----------

async function start() {
  setState('connecting', 'Connecting to P0 and P1…');
  $('retry').hidden = true;
  clearError();
  if (client) {
    const old = client;
    client = null; // first: its close event is then not shown as a lost connection
    try {
      old.close();
    } catch {
      /* already closed */
    }
  }
  const first = boot;
  boot = null;
  const mod = sottoModule ? Promise.resolve(sottoModule) : first ? first.module : importClient();
  const urlsP = first ? first.urls : serverUrls();
  const wasmP = first ? first.wasm : Promise.resolve(undefined);
  const samplesP = samples.length
    ? Promise.resolve(samples)
    : (first ? first.samples : loadSamples()).catch((e) => {
        showError(`Could not load the sample digits: ${errText(e)}. You can still draw.`);
        return [];
      });
  // The sample digits are kept as soon as they are in; like the rest of what connecting
  // changes on the page, their buttons are drawn with the first answer (see afterAnswer).
  const loaded = samples.length
    ? Promise.resolve()
    : samplesP.then((s) => {
        samples = s;
        demo.samples = s;
      });
  let urls = null;
  try {
    const [m, u, wasm] = await Promise.all([mod, urlsP, wasmP]);
    sottoModule = m;
    urls = u;
    demo.urls = urls;
    try {
      client = await m.connect({
        p0: urls.p0,
        p1: urls.p1,
        model: params.get('model') || '',
        timeoutMs: 10000,
        ...(wasm ? { wasm } : {}),
      });
    } catch (e) {
      throw new Error(`Could not connect to the servers (P0 ${urls.p0}, P1 ${urls.p1}): ${errText(e)}`);
    }
    demo.manifest = client.manifest;
    const mine = client;
    client.addEventListener('close', (ev) => {
      if (client !== mine) return;
      // Noticed at once (no prediction needed): say so and offer to reconnect.
      showError(`Lost the connection: ${errText(ev.error)}. “Reconnect” tries again.`.replace(/\.\./g, '.'));
      setState('error', 'Disconnected');
      $('retry').hidden = false;
    });
  } catch (e) {
    if (urls) showUrls(urls);
    showError(errText(e));
    setState('error', 'Not connected');
    $('retry').hidden = false;
    rejectReady(e);
    loaded.then(showSamples);
    return;
  }
  const mf = client.manifest || {};
  const connected = () => {
    showUrls(urls);
    $('model').textContent = mf.modelId || mf.model_id || '(default)';
    setState('ready', `Connected: private predictions with ${mf.modelId || mf.model_id || 'the model'}`);
    showSamples();
  };
  await loaded;
  if (!demo.last && !pending && samples.length) {
    afterAnswer.push(connected);
    pickSample(0);
    return;
  }
  connected();
  if (pending && !busy) pump();
  else if (!demo.last && !pending) resolveReady(demo); // nothing to predict yet
}

function showUrls(urls) {
  $('url-p0').textContent = urls.p0;
  $('url-p1').textContent = urls.p1;
}

$('retry').addEventListener('click', () => {
  start();
});

clearPad();
initBars(10);
start();
