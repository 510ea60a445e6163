// sotto-client's shared part: the client class, errors, loading and input conversion. The
// entry points (index.js for browsers and bundlers, node.js for Node) give it what differs
// between platforms: where the .wasm is by default, how to read it, and the WebSocket class.
// Nothing here touches a global or runs at import time.

import init, { WasmClient } from './pkg/sotto_client.js';

/**
 * The error of everything sotto-client does (arguments of the wrong type are TypeErrors, and
 * an aborted call rejects with its signal's reason, as fetch does).
 */
export class SottoError extends Error {
  /**
   * @param {string} message
   * @param {{kind: string, code?: string, server?: 'P0'|'P1', cause?: unknown}} details
   */
  constructor(message, { kind, code, server, cause } = { kind: 'protocol' }) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'SottoError';
    this.kind = kind;
    if (code !== undefined) this.code = code;
    if (server !== undefined) this.server = server;
  }
}

/** True for a SottoError, also one from another copy of this package. */
export function isSottoError(e) {
  return (
    e instanceof SottoError ||
    (e != null && typeof e === 'object' && e.name === 'SottoError' && typeof e.kind === 'string')
  );
}

/** A SottoError from the wasm client's Error (which carries kind, code, server). */
function fromWasm(e) {
  if (isSottoError(e)) return e;
  if (e != null && typeof e === 'object' && typeof e.kind === 'string') {
    return new SottoError(e.message, { kind: e.kind, code: e.code, server: e.server });
  }
  if (e instanceof TypeError) return e;
  return new SottoError(String(e?.message ?? e), { kind: 'protocol', cause: e });
}

// ---------------------------------------------------------------------------------------
// Loading the WebAssembly module.

let loading = null;

const isResponse = (v) =>
  v != null && typeof v === 'object' && typeof v.arrayBuffer === 'function' && typeof v.ok === 'boolean';

async function compileResponse(res, where) {
  if (!res.ok) {
    throw new SottoError(`could not fetch the sotto WebAssembly module from ${where}: HTTP ${res.status}`, {
      kind: 'wasm_fetch',
    });
  }
  const type = (res.headers?.get?.('content-type') || '').split(';')[0].trim();
  if (typeof WebAssembly.compileStreaming === 'function' && type === 'application/wasm') {
    return WebAssembly.compileStreaming(res);
  }
  let bytes;
  try {
    bytes = await res.arrayBuffer();
  } catch (e) {
    throw new SottoError(`could not read the sotto WebAssembly module from ${where}: ${e?.message ?? e}`, {
      kind: 'wasm_fetch',
      cause: e,
    });
  }
  return WebAssembly.compile(bytes);
}

function compileError(e, where) {
  if (isSottoError(e)) return e;
  const text = String(e?.message ?? e);
  if (/unsafe-eval|Content.Security.Policy|CSP/i.test(text)) {
    return new SottoError(
      `the page's Content Security Policy blocks WebAssembly: add 'wasm-unsafe-eval' to script-src (${text})`,
      { kind: 'wasm_blocked', cause: e },
    );
  }
  return new SottoError(`${where} is not a usable sotto WebAssembly module: ${text}`, {
    kind: 'wasm_compile',
    cause: e,
  });
}

async function loadOnce(platform, wasm) {
  let src = wasm ?? platform.defaultWasm();
  let module;
  let where = 'the module given';
  if (src instanceof WebAssembly.Module) {
    module = src;
  } else {
    if (src != null && typeof src.then === 'function') src = await src;
    try {
      if (typeof src === 'string' || src instanceof URL) {
        where = String(src);
        const got = await platform.fetchWasm(src);
        module = await (isResponse(got) ? compileResponse(got, where) : WebAssembly.compile(got));
      } else if (isResponse(src)) {
        where = src.url || 'the Response given';
        module = await compileResponse(src, where);
      } else if (src instanceof ArrayBuffer || ArrayBuffer.isView(src)) {
        module = await WebAssembly.compile(src);
      } else if (src instanceof WebAssembly.Module) {
        module = src;
      } else {
        throw new TypeError('load: wasm must be a URL, a string, a Response, bytes or a WebAssembly.Module');
      }
    } catch (e) {
      if (e instanceof TypeError && /^load:/.test(e.message)) throw e;
      throw compileError(e, where);
    }
  }
  try {
    await init({ module_or_path: module });
  } catch (e) {
    throw new SottoError(`the sotto WebAssembly module does not instantiate (${e?.message ?? e}); is it from another version of the package?`, {
      kind: 'wasm_instantiate',
      cause: e,
    });
  }
}

function loader(platform) {
  return function load(options = {}) {
    if (options == null || typeof options !== 'object') throw new TypeError('load: options must be an object');
    if (!loading) {
      loading = loadOnce(platform, options.wasm);
      loading.catch(() => {
        loading = null;
      });
    }
    return loading;
  };
}

// ---------------------------------------------------------------------------------------
// Connecting.

const SCHEMES = new Set(['ws:', 'wss:', 'http:', 'https:']);

function serverUrl(v, name) {
  const s = v instanceof URL ? v.href : v;
  if (typeof s !== 'string' || s === '') {
    throw new TypeError(`connect: ${name} must be the server's URL (ws://host:port), got ${typeof v}`);
  }
  let u;
  try {
    u = new URL(s);
  } catch {
    throw new TypeError(`connect: ${name} is not a URL: ${JSON.stringify(s)}`);
  }
  if (!SCHEMES.has(u.protocol) || !u.host) {
    throw new TypeError(`connect: ${name} must be a ws://, wss://, http:// or https:// URL, got ${JSON.stringify(s)}`);
  }
  return s;
}

const sleep = (ms, signal) =>
  new Promise((ok) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      ok();
    }
    signal?.addEventListener('abort', done, { once: true });
  });

/** Opens a WasmClient and waits until both servers answered (or the signal aborts). */
async function open(cfg, onClose, signal) {
  signal?.throwIfAborted();
  let inner;
  try {
    inner = new WasmClient(cfg.p0, cfg.p1, cfg.model, cfg.apiKey, cfg.timeoutMs, cfg.WebSocket, (e) =>
      onClose(inner, e),
    );
  } catch (e) {
    throw fromWasm(e);
  }
  const abort = () => inner.close();
  signal?.addEventListener('abort', abort, { once: true });
  try {
    await inner.ready();
  } catch (e) {
    if (signal?.aborted) throw signal.reason;
    throw fromWasm(e);
  } finally {
    signal?.removeEventListener('abort', abort);
  }
  return inner;
}

function connector(platform, load) {
  return async function connect(options) {
    if (options == null || typeof options !== 'object') {
      throw new TypeError('connect: options must be an object {p0, p1, ...}');
    }
    const { model = '', timeoutMs = 10000, apiKey, signal, reconnect = false, wasm } = options;
    const cfg = {
      p0: serverUrl(options.p0, 'p0'),
      p1: serverUrl(options.p1, 'p1'),
      model,
      apiKey,
      timeoutMs,
      WebSocket: options.WebSocket,
    };
    if (typeof model !== 'string') throw new TypeError('connect: model must be a string');
    if (apiKey !== undefined && typeof apiKey !== 'string') throw new TypeError('connect: apiKey must be a string');
    if (!Number.isInteger(timeoutMs) || timeoutMs <= 0 || timeoutMs > 0xffffffff) {
      throw new TypeError('connect: timeoutMs must be a positive integer (milliseconds)');
    }
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw new TypeError('connect: signal must be an AbortSignal');
    }
    const retry = reconnectOptions(reconnect);
    signal?.throwIfAborted();
    await load(wasm === undefined ? {} : { wasm });
    signal?.throwIfAborted();
    if (cfg.WebSocket === undefined) cfg.WebSocket = await platform.webSocket();
    if (typeof cfg.WebSocket !== 'function') {
      throw new SottoError(
        'no WebSocket class: pass connect({WebSocket}) (in Node 20, install the `ws` package)',
        { kind: 'no_websocket' },
      );
    }
    const box = { client: null };
    const inner = await open(cfg, (which, e) => box.client?._lost(which, e), signal);
    box.client = new SottoClient(TOKEN, inner, cfg, retry, box);
    return box.client;
  };
}

function reconnectOptions(r) {
  if (r === false || r == null) return null;
  const o = r === true ? {} : r;
  if (typeof o !== 'object') throw new TypeError('connect: reconnect must be a boolean or {retries, minDelayMs, maxDelayMs}');
  const { retries = Infinity, minDelayMs = 250, maxDelayMs = 30000 } = o;
  if (!(retries >= 0) || !(minDelayMs >= 0) || !(maxDelayMs >= minDelayMs)) {
    throw new TypeError('connect: reconnect needs retries ≥ 0 and 0 ≤ minDelayMs ≤ maxDelayMs');
  }
  return { retries, minDelayMs, maxDelayMs };
}

/** Lists the models a server serves (GET /v1/models), as manifests. */
function modelLister() {
  return async function listModels(server, { signal } = {}) {
    const base = new URL(serverUrl(server, 'server'));
    base.protocol = base.protocol === 'wss:' || base.protocol === 'https:' ? 'https:' : 'http:';
    base.pathname = base.pathname.replace(/\/+$/, '').replace(/\/v1\/ws$/, '') + '/v1/models';
    let res;
    try {
      res = await fetch(base, { signal, headers: { accept: 'application/json' } });
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      throw new SottoError(`cannot reach ${base}: ${e?.message ?? e}`, { kind: 'connection', cause: e });
    }
    if (!res.ok) throw new SottoError(`${base} answered HTTP ${res.status}`, { kind: 'connection' });
    let list;
    try {
      list = await res.json();
    } catch (e) {
      throw new SottoError(`${base} did not answer JSON: ${e?.message ?? e}`, { kind: 'protocol', cause: e });
    }
    if (!Array.isArray(list)) throw new SottoError(`${base} did not answer a list`, { kind: 'protocol' });
    return list.map(camelManifest);
  };
}

function camelManifest(m) {
  return Object.freeze({
    modelId: m.model_id,
    inputShape: Object.freeze([...(m.input_shape ?? [])]),
    outputLen: m.output_len,
    inputBound: m.input_bound,
    fracBits: m.frac_bits,
    outFrac: m.out_frac,
    softmaxAtClient: m.softmax_at_client,
    deployment: m.deployment,
    maxBatch: m.max_batch,
    inputBits: m.input_bits ?? null,
  });
}

/**
 * The package's functions for one platform.
 * @param {{defaultWasm: () => any, fetchWasm: (src: string|URL) => Promise<any>, webSocket: () => Promise<any>}} platform
 */
export function makeApi(platform) {
  const load = loader(platform);
  return { load, connect: connector(platform, load), listModels: modelLister() };
}

// ---------------------------------------------------------------------------------------
// The client.

const TOKEN = Symbol('sotto-client');
const product = (shape) => shape.reduce((a, b) => a * b, 1);
const sameModel = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const DISPOSE = Symbol.dispose ?? Symbol.for('Symbol.dispose');

function stateEvent(type, fields) {
  const ev = new Event(type);
  return Object.assign(ev, fields);
}

/**
 * A connection to P0 and P1 for one model (from connect()). Events: `statechange` (its
 * `state`), `close` (its `error`, and `reconnecting` when a reconnect follows), `reconnect`.
 */
export class SottoClient extends EventTarget {
  #inner;
  #manifest;
  #cfg;
  #retry;
  #state = 'open';
  #closing = null; // AbortController of a reconnect loop
  #userClosed = false;
  #lastError = null;

  /** @internal */
  constructor(token, inner, cfg, retry) {
    if (token !== TOKEN) throw new TypeError('SottoClient: use connect()');
    super();
    this.#inner = inner;
    this.#cfg = cfg;
    this.#retry = retry;
    const m = inner.manifest();
    this.#manifest = Object.freeze({ ...m, inputShape: Object.freeze([...m.inputShape]) });
  }

  /** "open", "reconnecting" or "closed". */
  get state() {
    return this.#state;
  }

  /** The model: modelId, inputShape, outputLen, inputBound, fracBits, outFrac, softmaxAtClient, deployment, maxBatch, inputBits. */
  get manifest() {
    return this.#manifest;
  }

  /** Values per input (the product of inputShape). */
  get inputSize() {
    return product(this.#manifest.inputShape);
  }

  #setState(state) {
    if (this.#state === state) return;
    this.#state = state;
    this.dispatchEvent(stateEvent('statechange', { state }));
  }

  /** @internal The wasm client `which` ended with `e`. */
  _lost(which, e) {
    if (which !== this.#inner || this.#state === 'closed') return;
    const error = fromWasm(e);
    if (this.#userClosed) return;
    this.#lastError = error;
    const again = this.#retry != null && error.kind !== 'bad_deployment';
    this.#setState(again ? 'reconnecting' : 'closed');
    this.dispatchEvent(stateEvent('close', { error, reconnecting: again }));
    if (again) this.#reconnectLoop(error);
  }

  async #reconnectLoop(lastError) {
    const { retries, minDelayMs, maxDelayMs } = this.#retry;
    const ac = new AbortController();
    this.#closing = ac;
    let error = lastError;
    for (let attempt = 0; attempt < retries && !ac.signal.aborted; attempt++) {
      const delay = Math.min(maxDelayMs, minDelayMs * 2 ** Math.min(attempt, 30));
      await sleep(delay * (0.5 + Math.random() / 2), ac.signal);
      if (ac.signal.aborted) return;
      try {
        const inner = await open(this.#cfg, (which, e) => this._lost(which, e), ac.signal);
        const m = inner.manifest();
        if (!sameModel({ ...m, inputShape: [...m.inputShape] }, { ...this.#manifest, inputShape: [...this.#manifest.inputShape] })) {
          inner.close();
          error = new SottoError('after reconnecting, the servers describe another model or deployment', {
            kind: 'bad_deployment',
          });
          break;
        }
        this.#inner = inner;
        this.#closing = null;
        this.#setState('open');
        this.dispatchEvent(stateEvent('reconnect', { attempt: attempt + 1 }));
        return;
      } catch (e) {
        if (ac.signal.aborted) return;
        error = fromWasm(e);
        if (error.kind === 'bad_deployment') break;
      }
    }
    this.#closing = null;
    if (this.#userClosed) return;
    this.#lastError = error;
    this.#setState('closed');
    this.dispatchEvent(stateEvent('close', { error, reconnecting: false }));
  }

  #notOpen() {
    if (this.#state === 'reconnecting') {
      return new SottoError(`not connected (reconnecting): ${this.#lastError?.message}`, { kind: 'connection' });
    }
    const e = this.#lastError;
    return e ? new SottoError(e.message, { kind: e.kind, code: e.code, server: e.server }) : new SottoError('the client is closed', { kind: 'connection' });
  }

  async #run(x, n, signal) {
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw new TypeError('signal must be an AbortSignal');
    signal?.throwIfAborted();
    if (this.#state !== 'open') throw this.#notOpen();
    const inner = this.#inner;
    let req;
    try {
      req = inner.begin(x, n);
    } catch (e) {
      throw fromWasm(e);
    }
    const abort = () => inner.cancel(req.id);
    signal?.addEventListener('abort', abort, { once: true });
    try {
      return await req.done;
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      throw fromWasm(e);
    } finally {
      signal?.removeEventListener('abort', abort);
    }
  }

  /**
   * Predicts one input: a Float32Array, a (nested) array of numbers, or an ImageData-like
   * object ({width, height, data: Uint8ClampedArray}).
   */
  async predict(input, { signal } = {}) {
    const x = toFloat32(input, this.#manifest);
    const t0 = performance.now();
    const r = await this.#run(x, 1, signal);
    return {
      logits: r.logits,
      probabilities: r.probabilities,
      label: r.labels[0],
      latencyMs: performance.now() - t0,
      bytesSent: { p0: r.sentP0, p1: r.sentP1 },
    };
  }

  /** Predicts several inputs in one request (at most manifest.maxBatch). */
  async predictBatch(inputs, { signal } = {}) {
    if (!Array.isArray(inputs) || inputs.length === 0) {
      throw new TypeError('predictBatch: inputs must be a non-empty array of inputs');
    }
    const max = this.#manifest.maxBatch;
    if (max > 0 && inputs.length > max) {
      throw new SottoError(
        `bad input: a batch of ${inputs.length} inputs is over the servers' limit of ${max} per request (manifest.maxBatch): split it`,
        { kind: 'input' },
      );
    }
    const parts = inputs.map((i) => toFloat32(i, this.#manifest));
    const x = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      x.set(p, at);
      at += p.length;
    }
    const t0 = performance.now();
    const r = await this.#run(x, inputs.length, signal);
    const k = r.outputLen;
    const rows = (v) => inputs.map((_, i) => v.slice(i * k, (i + 1) * k));
    return {
      logits: rows(r.logits),
      probabilities: r.probabilities ? rows(r.probabilities) : null,
      labels: r.labels,
      latencyMs: performance.now() - t0,
      bytesSent: { p0: r.sentP0, p1: r.sentP1 },
    };
  }

  /** Bytes sent to each server so far (frames, headers included; since the last reconnect). */
  bytesSent() {
    return this.#inner.bytesSent();
  }

  /** What each server received of the last input: P0's share bytes, P1's 32-byte seed. */
  lastSent() {
    return this.#inner.lastSent();
  }

  /** Closes both connections; predictions still waiting reject; stops reconnecting. */
  close() {
    if (this.#userClosed) return;
    this.#userClosed = true;
    this.#closing?.abort();
    this.#inner.close();
    if (this.#state !== 'closed') {
      const error = new SottoError('the client closed its connection to P0', { kind: 'connection' });
      this.#lastError = error;
      this.#setState('closed');
      this.dispatchEvent(stateEvent('close', { error, reconnecting: false }));
    }
  }

  /** `using client = await connect(...)` closes it at the end of the block. */
  [DISPOSE]() {
    this.close();
  }
}

// ---------------------------------------------------------------------------------------
// Inputs.

function isImageData(v) {
  return (
    v != null &&
    typeof v === 'object' &&
    Number.isInteger(v.width) &&
    Number.isInteger(v.height) &&
    v.data instanceof Uint8ClampedArray
  );
}

function flatten(v, out) {
  for (let i = 0; i < v.length; i++) {
    const e = v[i];
    if (typeof e === 'number') out.push(e);
    else if (Array.isArray(e) || (ArrayBuffer.isView(e) && !(e instanceof DataView))) flatten(e, out);
    else throw new TypeError(`input: element ${out.length} is not a number (${typeof e})`);
  }
  return out;
}

function toFloat32(input, manifest) {
  if (input instanceof Float32Array) return input;
  if (isImageData(input)) return imageDataToInput(input, manifest.inputShape);
  if (ArrayBuffer.isView(input) && !(input instanceof DataView)) return Float32Array.from(input);
  if (Array.isArray(input)) return Float32Array.from(flatten(input, []));
  throw new TypeError('input must be a Float32Array, an array of numbers or an ImageData');
}

/** Height, width, channels and layout of an image input shape. */
function imageLayout(shape) {
  const s = [...shape];
  while (s.length > 3 && s[0] === 1) s.shift();
  if (s.length === 3) {
    if (s[0] <= 4 && s[2] > 4) return { c: s[0], h: s[1], w: s[2], chw: true };
    return { h: s[0], w: s[1], c: s[2], chw: false };
  }
  if (s.length === 2) return { h: s[0], w: s[1], c: 1, chw: true };
  if (s.length === 1) {
    const side = Math.round(Math.sqrt(s[0]));
    if (side * side === s[0]) return { h: side, w: side, c: 1, chw: true };
  }
  throw new TypeError(`imageDataToInput: cannot read input shape [${shape}] as an image`);
}

/** For each destination index, the source indices and weights of an area-average resample. */
function areaWeights(sn, dn) {
  const scale = sn / dn;
  const out = [];
  for (let d = 0; d < dn; d++) {
    const a = d * scale;
    const b = (d + 1) * scale;
    const list = [];
    for (let s = Math.floor(a); s < Math.min(Math.ceil(b), sn); s++) {
      const w = Math.min(b, s + 1) - Math.max(a, s);
      if (w > 1e-9) list.push([s, w]);
    }
    const sum = list.reduce((t, [, w]) => t + w, 0);
    out.push(list.map(([s, w]) => [s, w / sum]));
  }
  return out;
}

/** Area-average resample of a w×h plane (or a sub-rectangle) to dw×dh. */
function resample(src, sw, rect, dw, dh) {
  const { x, y, w, h } = rect;
  const wx = areaWeights(w, dw);
  const wy = areaWeights(h, dh);
  const tmp = new Float64Array(dw * h);
  for (let r = 0; r < h; r++) {
    const row = (y + r) * sw + x;
    for (let d = 0; d < dw; d++) {
      let v = 0;
      for (const [s, k] of wx[d]) v += src[row + s] * k;
      tmp[r * dw + d] = v;
    }
  }
  const out = new Float64Array(dw * dh);
  for (let d = 0; d < dh; d++) {
    for (let c = 0; c < dw; c++) {
      let v = 0;
      for (const [s, k] of wy[d]) v += tmp[s * dw + c] * k;
      out[d * dw + c] = v;
    }
  }
  return out;
}

/** MNIST-style framing: the ink's bounding box scaled to fit `box` px, centred by mass. */
function centreLikeMnist(gray, sw, sh, w, h, box) {
  let x0 = sw, y0 = sh, x1 = -1, y1 = -1;
  for (let y = 0; y < sh; y++) {
    for (let x = 0; x < sw; x++) {
      if (gray[y * sw + x] > 0.05) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  if (x1 < 0) return new Float64Array(w * h);
  const bw = x1 - x0 + 1;
  const bh = y1 - y0 + 1;
  const scale = box / Math.max(bw, bh);
  const dw = Math.max(1, Math.round(bw * scale));
  const dh = Math.max(1, Math.round(bh * scale));
  const digit = resample(gray, sw, { x: x0, y: y0, w: bw, h: bh }, dw, dh);
  let m = 0, mx = 0, my = 0;
  for (let y = 0; y < dh; y++) {
    for (let x = 0; x < dw; x++) {
      const v = digit[y * dw + x];
      m += v;
      mx += v * x;
      my += v * y;
    }
  }
  const ox = Math.round(w / 2 - (m > 0 ? mx / m : dw / 2) - 0.5);
  const oy = Math.round(h / 2 - (m > 0 ? my / m : dh / 2) - 0.5);
  const out = new Float64Array(w * h);
  for (let y = 0; y < dh; y++) {
    for (let x = 0; x < dw; x++) {
      const tx = x + Math.min(Math.max(ox, 0), w - dw);
      const ty = y + Math.min(Math.max(oy, 0), h - dh);
      if (tx >= 0 && tx < w && ty >= 0 && ty < h) out[ty * w + tx] = digit[y * dw + x];
    }
  }
  return out;
}

/**
 * Converts an ImageData (e.g. a canvas drawing) to a model input of `inputShape`: one channel
 * from the alpha channel when the image has transparency (ink on a transparent canvas),
 * otherwise from the luminance, inverted when the background is light, so that the digit is
 * white on black in [0, 1] like MNIST; three-channel models get RGB in [0, 1]. The image is
 * resized by area averaging, or with `{center: true}` framed like MNIST (the ink's bounding
 * box scaled into 20×20 and centred by its centre of mass in 28×28).
 */
export function imageDataToInput(imageData, inputShape, options = {}) {
  if (!isImageData(imageData)) throw new TypeError('imageDataToInput: not an ImageData');
  const { width: sw, height: sh, data } = imageData;
  if (data.length !== sw * sh * 4) throw new TypeError('imageDataToInput: data is not RGBA');
  const { h, w, c, chw } = imageLayout(inputShape);
  const n = sw * sh;
  const planes = [];
  if (c === 1) {
    let transparent = false;
    for (let i = 0; i < n; i++) {
      if (data[i * 4 + 3] !== 255) {
        transparent = true;
        break;
      }
    }
    const gray = new Float64Array(n);
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const a = data[i * 4 + 3] / 255;
      if (transparent) {
        gray[i] = a;
      } else {
        gray[i] = (0.299 * data[i * 4] + 0.587 * data[i * 4 + 1] + 0.114 * data[i * 4 + 2]) / 255;
      }
      sum += gray[i];
    }
    if (!transparent && n > 0 && sum / n > 0.5) {
      for (let i = 0; i < n; i++) gray[i] = 1 - gray[i];
    }
    const centre = options.center ?? false;
    planes.push(
      centre
        ? centreLikeMnist(gray, sw, sh, w, h, Math.round((Math.min(w, h) * 20) / 28))
        : resample(gray, sw, { x: 0, y: 0, w: sw, h: sh }, w, h),
    );
  } else {
    for (let ch = 0; ch < c; ch++) {
      const plane = new Float64Array(n);
      for (let i = 0; i < n; i++) plane[i] = ch < 3 ? data[i * 4 + ch] / 255 : data[i * 4 + 3] / 255;
      planes.push(resample(plane, sw, { x: 0, y: 0, w: sw, h: sh }, w, h));
    }
  }
  const out = new Float32Array(h * w * c);
  for (let ch = 0; ch < c; ch++) {
    for (let i = 0; i < h * w; i++) {
      const v = Math.min(1, Math.max(0, planes[ch][i]));
      out[chw ? ch * h * w + i : i * c + ch] = v;
    }
  }
  return out;
}
