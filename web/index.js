// sotto-client: private predictions from a browser or Node.
//
// The input is secret-shared inside the WebAssembly module (crates/sotto-client, `wasm`
// feature): P0 receives `x − PRG(seed)`, P1 the 32-byte seed alone, so neither server sees
// the input or the output; the client adds the two output shares. This file loads the module
// (by URL in browsers, from disk in Node), supplies a WebSocket in Node 20 (the `ws` package)
// and converts inputs.

import init, { WasmClient } from './pkg/sotto_client.js';

const isNode =
  typeof process !== 'undefined' &&
  process.versions != null &&
  process.versions.node != null &&
  typeof window === 'undefined';

let loading = null;

/**
 * Loads and instantiates the WebAssembly module once (connect() calls it). In Node it also
 * installs `globalThis.WebSocket` from the `ws` package when the runtime has none.
 * @returns {Promise<void>}
 */
export function load() {
  if (!loading) {
    loading = (async () => {
      const wasmUrl = new URL('./pkg/sotto_client_bg.wasm', import.meta.url);
      if (isNode) {
        const { readFile } = await import('node:fs/promises');
        const bytes = await readFile(wasmUrl);
        await init({ module_or_path: bytes });
        if (typeof globalThis.WebSocket === 'undefined') {
          const ws = await import('ws');
          globalThis.WebSocket = ws.WebSocket ?? ws.default;
        }
      } else {
        await init({ module_or_path: wasmUrl });
      }
    })();
    loading.catch(() => {
      loading = null;
    });
  }
  return loading;
}

/**
 * Connects to P0 and P1 and fetches the model's manifest.
 * @param {{p0: string, p1: string, model?: string, timeoutMs?: number}} options
 * @returns {Promise<SottoClient>}
 */
export async function connect({ p0, p1, model = '', timeoutMs = 10000 } = {}) {
  if (typeof p0 !== 'string' || typeof p1 !== 'string' || !p0 || !p1) {
    throw new TypeError('connect: p0 and p1 must be the servers\' URLs (ws://host:port)');
  }
  if (typeof model !== 'string') throw new TypeError('connect: model must be a string');
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0 || timeoutMs > 0xffffffff) {
    throw new TypeError('connect: timeoutMs must be a positive integer (milliseconds)');
  }
  await load();
  const inner = await WasmClient.connect(p0, p1, model, timeoutMs);
  return new SottoClient(inner);
}

const product = (shape) => shape.reduce((a, b) => a * b, 1);

/** A connection to P0 and P1 for one model (from connect()). */
export class SottoClient {
  #inner;
  #manifest;

  /** @param {WasmClient} inner */
  constructor(inner) {
    this.#inner = inner;
    const m = inner.manifest();
    this.#manifest = Object.freeze({ ...m, inputShape: Object.freeze([...m.inputShape]) });
  }

  /** The model: modelId, inputShape, outputLen, inputBound, fracBits, outFrac, softmaxAtClient, deployment, maxBatch. */
  get manifest() {
    return this.#manifest;
  }

  /** Values per input (the product of inputShape). */
  get inputSize() {
    return product(this.#manifest.inputShape);
  }

  /**
   * Predicts one input: a Float32Array, a (nested) array of numbers, or an ImageData.
   * @param {Float32Array | ArrayLike<number> | any[] | ImageData} input
   */
  async predict(input) {
    const x = toFloat32(input, this.#manifest);
    const t0 = performance.now();
    const r = await this.#inner.predict(x, 1);
    return {
      logits: r.logits,
      probabilities: r.probabilities,
      label: r.labels[0],
      latencyMs: performance.now() - t0,
      bytesSent: { p0: r.sentP0, p1: r.sentP1 },
    };
  }

  /**
   * Predicts several inputs in one request.
   * @param {Array<Float32Array | ArrayLike<number> | any[] | ImageData>} inputs
   */
  async predictBatch(inputs) {
    if (!Array.isArray(inputs) || inputs.length === 0) {
      throw new TypeError('predictBatch: inputs must be a non-empty array of inputs');
    }
    const parts = inputs.map((i) => toFloat32(i, this.#manifest));
    const x = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      x.set(p, at);
      at += p.length;
    }
    const t0 = performance.now();
    const r = await this.#inner.predict(x, inputs.length);
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

  /** Bytes sent to each server so far (frames, headers included). */
  bytesSent() {
    return this.#inner.bytesSent();
  }

  /** What each server received of the last input: P0's share bytes, P1's 32-byte seed. */
  lastSent() {
    return this.#inner.lastSent();
  }

  /** Closes both connections; predictions still waiting reject. */
  close() {
    this.#inner.close();
  }
}

function isImageData(v) {
  if (typeof ImageData !== 'undefined' && v instanceof ImageData) return true;
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
    else if (Array.isArray(e) || ArrayBuffer.isView(e)) flatten(e, out);
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
 * @param {ImageData} imageData
 * @param {number[]} inputShape
 * @param {{center?: boolean}} [options]
 * @returns {Float32Array}
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
