// The npm package against a real deployment: three `sotto serve` processes (helper, P1, P0)
// on loopback, the network_a MNIST model, predictions compared with the plaintext model.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { WebSocket } from 'ws';

import { connect, imageDataToInput, isSottoError, listModels } from 'sotto-client';
import { mnistSamples } from '../scripts/npy.mjs';
import { startParties, freePort, sotto, MODELS } from './servers.mjs';
import { KIND, TAGGED_SEED, decode, encode, json } from './scripted.mjs';

const N = 20;
let parties;
let client;
/** Bytes per input value in P0's share: shares of k-bit codes and a wrap bit, or 8-byte additive shares. */
const perValue = () => (client.manifest.inputBits ? Math.ceil((client.manifest.inputBits + 1) / 8) : 8);
let samples;
let plain; // {labels, logits, labels_fixed, logits_fixed} of the first N images

before(async () => {
  samples = mnistSamples(MODELS, N);
  parties = await startParties();
  const input = join(parties.dir, 'first.json');
  await writeFile(input, JSON.stringify(samples.flatMap((s) => Array.from(s.pixels))));
  plain = JSON.parse(await sotto(['plain', '--model', join(MODELS, 'network_a.onnx'), '--input', input]));
  client = await connect({ p0: parties.p0Url, p1: parties.p1Url, model: 'net' });
});

after(async () => {
  client?.close();
  await parties?.stop();
});

/** Checks a private result against the plaintext model for image `i`. */
function checkAgainstPlain(i, logits, label) {
  assert.equal(label, plain.labels_fixed[i], `image ${i}: label`);
  assert.equal(label, plain.labels[i], `image ${i}: label (float model)`);
  assert.equal(logits.length, 10);
  // exact truncation: the private logits are the fixed-point model's, bit for bit
  for (let k = 0; k < 10; k++) {
    assert.equal(logits[k], plain.logits_fixed[i][k], `image ${i} logit ${k}`);
  }
}

test('manifest', () => {
  const m = client.manifest;
  assert.equal(m.modelId, 'net');
  assert.deepEqual([...m.inputShape], [784]);
  assert.equal(m.outputLen, 10);
  assert.equal(m.inputBound, 1);
  assert.equal(m.fracBits, 16);
  assert.equal(typeof m.softmaxAtClient, 'boolean');
  assert.equal(client.inputSize, 784);
});

test(`the first ${N} MNIST test images: same labels and logits as the plaintext model`, async () => {
  let correct = 0;
  for (let i = 0; i < N; i++) {
    const r = await client.predict(samples[i].pixels);
    assert.ok(r.logits instanceof Float64Array);
    checkAgainstPlain(i, r.logits, r.label);
    assert.ok(r.latencyMs > 0);
    assert.deepEqual(r.bytesSent, { p0: 32 + 784 * perValue(), p1: 32 + 32 });
    if (r.label === samples[i].label) correct++;
    if (client.manifest.softmaxAtClient) assert.ok(r.probabilities instanceof Float64Array);
    else assert.equal(r.probabilities, null);
  }
  assert.ok(correct >= N - 2, `${correct}/${N} correct`);
});

test('what each server received: P0 shares of the 18-bit input codes and wrap bits (3 bytes per value), P1 a 32-byte seed', async () => {
  // Private weights: the servers enforce the input range on k = 18 bits (16 fractional).
  assert.equal(client.manifest.inputBits, 18);
  const before = client.bytesSent();
  await client.predict(samples[0].pixels);
  const a = client.lastSent();
  assert.equal(a.p0.length, 784 * 3);
  assert.equal(a.p1.length, 32);
  await client.predict(samples[0].pixels);
  const b = client.lastSent();
  // Fresh randomness per prediction: the same image gives unrelated shares.
  assert.notDeepEqual(Array.from(a.p1), Array.from(b.p1));
  assert.notDeepEqual(Array.from(a.p0.subarray(0, 64)), Array.from(b.p0.subarray(0, 64)));
  const after = client.bytesSent();
  assert.equal(after.p0 - before.p0, 2 * (32 + 784 * 3));
  assert.equal(after.p1 - before.p1, 2 * 64);
});

/** A raw client connection (frames by hand) to `url`'s /v1/ws, past its hello. */
async function rawClient(url) {
  const ws = new WebSocket(`${url}/v1/ws`);
  const frames = [];
  const waiting = [];
  ws.on('message', (data) => {
    const f = { ...decode(data), at: performance.now() };
    const w = waiting.findIndex((x) => x.match(f));
    if (w >= 0) waiting.splice(w, 1)[0].resolve(f);
    else frames.push(f);
  });
  await new Promise((ok, fail) => {
    ws.once('open', ok);
    ws.once('error', fail);
  });
  const c = {
    send: (kind, session, step, payload) => ws.send(encode(kind, session, step, payload)),
    /** The next frame that `match`es (within 8 s). */
    next(match) {
      const i = frames.findIndex(match);
      if (i >= 0) return Promise.resolve(frames.splice(i, 1)[0]);
      return new Promise((resolve, reject) => {
        const entry = { match, resolve };
        waiting.push(entry);
        setTimeout(() => reject(new Error('no such frame within 8 s')), 8000).unref();
      });
    },
    /** Frames received that nothing waited for. */
    unclaimed: () => frames,
    close: () => ws.close(),
  };
  c.send(KIND.Hello, 0n, 0, json({ role: 'Client', model_id: 'net' }));
  assert.equal((await c.next(() => true)).kind, KIND.Manifest);
  return c;
}

const randomTag = () => BigInt(`0x${randomBytes(16).toString('hex')}`) | 1n;
const code = (f) => JSON.parse(f.payload).code;

test('the tagged order at the wire: share and seed at once, answers under the tag; a refusal or a replay ends the seed\'s wait at once', async () => {
  const [p0, p1] = await Promise.all([rawClient(parties.p0Url), rawClient(parties.p1Url)]);
  try {
    // A prediction (random share and seed: some input, answered like any other).
    const tag = randomTag();
    const seed = randomBytes(32);
    p1.send(KIND.InputSeed, tag, TAGGED_SEED, seed); // the seed may come first
    // Shares of 18-bit codes and a wrap bit, 3 bytes each: any 19 bits encode some input.
    const share = randomBytes(784 * 3);
    for (let i = 2; i < share.length; i += 3) share[i] &= 7;
    p0.send(KIND.InputBits, tag, 7, share);
    const [o0, o1] = await Promise.all([
      p0.next((f) => f.session === tag),
      p1.next((f) => f.session === tag),
    ]);
    assert.deepEqual([o0.kind, o1.kind], [KIND.Output, KIND.Output]);
    assert.deepEqual([o0.payload.length, o1.payload.length], [80, 80]);
    // No session id reaches the client in this order.
    assert.deepEqual(p0.unclaimed().map((f) => f.kind), []);
    const t0 = performance.now();
    p1.send(KIND.InputSeed, tag, TAGGED_SEED, seed); // replayed: refused at once
    const replay = await p1.next((f) => f.session === tag);
    assert.deepEqual([replay.kind, code(replay)], [KIND.Error, 'unknown_session']);
    assert.ok(replay.at - t0 < 1000, `the replay was answered after ${(replay.at - t0).toFixed(0)} ms`);

    // P0 refuses the share (wrong size): P1 drops the waiting seed at once, not after the
    // party timeout (5 s).
    const refused = randomTag();
    const t1 = performance.now();
    p1.send(KIND.InputSeed, refused, TAGGED_SEED, randomBytes(32));
    p0.send(KIND.InputBits, refused, 8, randomBytes(8));
    const [e0, e1] = await Promise.all([
      p0.next((f) => f.session === refused),
      p1.next((f) => f.session === refused),
    ]);
    assert.deepEqual([e0.kind, code(e0), e0.step], [KIND.Error, 'bad_shape', 8]);
    assert.deepEqual([e1.kind, code(e1)], [KIND.Error, 'unknown_session']);
    assert.ok(e1.at - t1 < 1000, `P1 answered the refused request's seed after ${(e1.at - t1).toFixed(0)} ms`);
  } finally {
    p0.close();
    p1.close();
  }
  // The client is unaffected.
  const r = await client.predict(samples[0].pixels);
  checkAgainstPlain(0, r.logits, r.label);
});

test('input forms: nested arrays, typed arrays, ImageData', async () => {
  const x = samples[3].pixels;
  const nested = [];
  for (let r = 0; r < 28; r++) nested.push(Array.from(x.subarray(r * 28, (r + 1) * 28)));
  const a = await client.predict(nested);
  checkAgainstPlain(3, a.logits, a.label);
  const b = await client.predict(Float64Array.from(x));
  checkAgainstPlain(3, b.logits, b.label);
  // A 28×28 opaque ImageData of the digit, white on black: converted to the same values.
  const data = new Uint8ClampedArray(28 * 28 * 4);
  for (let i = 0; i < 784; i++) {
    const g = Math.round(x[i] * 255);
    data.set([g, g, g, 255], i * 4);
  }
  const img = { width: 28, height: 28, data };
  const c = await client.predict(img);
  checkAgainstPlain(3, c.logits, c.label);
});

test('batch prediction: one request, the same labels as single predictions', async () => {
  const idx = [0, 1, 2, 3, 4, 5, 6];
  const r = await client.predictBatch(idx.map((i) => samples[i].pixels));
  assert.equal(r.logits.length, idx.length);
  assert.equal(r.labels.length, idx.length);
  idx.forEach((i, j) => checkAgainstPlain(i, r.logits[j], r.labels[j]));
  assert.deepEqual(r.bytesSent, { p0: 32 + idx.length * 784 * perValue(), p1: 64 });
  await assert.rejects(client.predictBatch([]), TypeError);
});

test('concurrent predictions are routed to their callers', async () => {
  const idx = [...Array(12).keys()];
  const rs = await Promise.all(idx.map((i) => client.predict(samples[i].pixels)));
  rs.forEach((r, i) => checkAgainstPlain(i, r.logits, r.label));
  const bs = await Promise.all([
    client.predictBatch([samples[8].pixels, samples[9].pixels]),
    client.predict(samples[10].pixels),
    client.predictBatch([samples[11].pixels, samples[12].pixels, samples[13].pixels]),
  ]);
  checkAgainstPlain(8, bs[0].logits[0], bs[0].labels[0]);
  checkAgainstPlain(9, bs[0].logits[1], bs[0].labels[1]);
  checkAgainstPlain(10, bs[1].logits, bs[1].label);
  [11, 12, 13].forEach((i, j) => checkAgainstPlain(i, bs[2].logits[j], bs[2].labels[j]));
});

test('wrong input length: a clear Error, and the next prediction works', async () => {
  const before = client.bytesSent();
  await assert.rejects(client.predict(new Float32Array(783)), (e) => {
    assert.ok(e instanceof Error);
    assert.equal(e.kind, 'input');
    assert.match(e.message, /bad input: 783 values for 1 inputs of model net/);
    return true;
  });
  // Refused in the client: nothing was sent.
  assert.deepEqual(client.bytesSent(), before);
  const r = await client.predict(samples[5].pixels);
  checkAgainstPlain(5, r.logits, r.label);
});

test('a value outside the input bound: a clear Error, and the next prediction works', async () => {
  const x = Float32Array.from(samples[6].pixels);
  x[100] = 2.5;
  await assert.rejects(client.predict(x), (e) => {
    assert.ok(e instanceof Error);
    assert.equal(e.kind, 'input');
    assert.match(e.message, /value 2\.5 at index 100 is outside the model's input bound ±1/);
    return true;
  });
  x[100] = NaN;
  await assert.rejects(client.predict(x), /index 100 is outside/);
  await assert.rejects(client.predict(['a']), TypeError);
  const r = await client.predict(samples[6].pixels);
  checkAgainstPlain(6, r.logits, r.label);
});

test('a batch over the manifest\'s maxBatch is refused in the client; the client stays usable', async () => {
  // The smaller of --max-batch (128) and what one request may reserve of the in-flight
  // budget (70 for network A with private weights at the default budget).
  const max = client.manifest.maxBatch;
  assert.ok(Number.isInteger(max) && max >= 1 && max <= 128, `maxBatch ${max}`);
  const before = client.bytesSent();
  const big = new Array(max + 1).fill(samples[0].pixels);
  await assert.rejects(client.predictBatch(big), (e) => {
    assert.ok(isSottoError(e));
    assert.equal(e.kind, 'input');
    assert.match(e.message, new RegExp(`over the servers' limit of ${max}`));
    return true;
  });
  assert.deepEqual(client.bytesSent(), before);
  const r = await client.predict(samples[7].pixels);
  checkAgainstPlain(7, r.logits, r.label);
});

test('listModels(): the manifests each server serves, as connect() sees them', async () => {
  for (const url of [parties.p0Url, parties.httpP1, `${parties.p0Url}/v1/ws`]) {
    const list = await listModels(url);
    assert.equal(list.length, 1);
    assert.deepEqual({ ...list[0], inputShape: [...list[0].inputShape] }, { ...client.manifest, inputShape: [...client.manifest.inputShape] });
  }
});

test('swapped or doubled servers: bad_deployment before anything secret is sent', async () => {
  for (const [p0, p1, why] of [
    [parties.p1Url, parties.p0Url, /swapped/],
    [parties.p0Url, parties.p0Url, /both URLs reach a P0/],
  ]) {
    await assert.rejects(connect({ p0, p1 }), (e) => {
      assert.equal(e.kind, 'bad_deployment');
      assert.match(e.message, why);
      return true;
    });
  }
});

test('an unknown model: connect rejects with the servers\' code', async () => {
  await assert.rejects(
    connect({ p0: parties.p0Url, p1: parties.p1Url, model: 'nope' }),
    (e) => e instanceof Error && e.code === 'unknown_model' && /refused: no model "nope"/.test(e.message),
  );
});

test('the default model, and http:// base URLs', async () => {
  const c = await connect({ p0: parties.httpP0, p1: parties.httpP1 });
  try {
    assert.equal(c.manifest.modelId, 'net');
    const r = await c.predict(samples[2].pixels);
    checkAgainstPlain(2, r.logits, r.label);
  } finally {
    c.close();
  }
});

test('an unreachable server: connect rejects within a few seconds', async () => {
  const dead = await freePort();
  const t0 = Date.now();
  await assert.rejects(
    connect({ p0: parties.p0Url, p1: `ws://127.0.0.1:${dead}`, timeoutMs: 3000 }),
    (e) => {
      assert.ok(e instanceof Error);
      assert.equal(e.kind, 'connection');
      assert.match(e.message, new RegExp(`P1 \\(ws://127\\.0\\.0\\.1:${dead}/v1/ws\\)`));
      return true;
    },
  );
  assert.ok(Date.now() - t0 < 3500, `took ${Date.now() - t0} ms`);
  await assert.rejects(connect({ p0: 'not a url', p1: parties.p1Url }), TypeError);
  await assert.rejects(connect({ p1: parties.p1Url }), TypeError);
});

test('close(): waiting predictions and later ones reject', async () => {
  const c = await connect({ p0: parties.p0Url, p1: parties.p1Url });
  const pending = c.predict(samples[1].pixels);
  c.close();
  await assert.rejects(pending, (e) => e instanceof Error && e.kind === 'connection');
  await assert.rejects(c.predict(samples[1].pixels), /the client closed its connection to P0/);
});

test('imageDataToInput: alpha ink, dark ink on white, resizing, centring', () => {
  const side = 280;
  const make = (fill) => {
    const data = new Uint8ClampedArray(side * side * 4);
    for (let y = 0; y < side; y++) {
      for (let x = 0; x < side; x++) data.set(fill(x, y), (y * side + x) * 4);
    }
    return { width: side, height: side, data };
  };
  // A transparent canvas with an opaque black square (rows/cols 100..179): alpha is the ink.
  const inSquare = (x, y) => x >= 100 && x < 180 && y >= 100 && y < 180;
  const alpha = imageDataToInput(make((x, y) => (inSquare(x, y) ? [0, 0, 0, 255] : [0, 0, 0, 0])), [784]);
  assert.equal(alpha.length, 784);
  assert.equal(alpha[14 * 28 + 14], 1);
  assert.equal(alpha[0], 0);
  assert.equal(alpha[10 * 28 + 14], 1); // rows 100..110 → pixel row 10
  assert.equal(alpha[9 * 28 + 14], 0);
  // Black ink on an opaque white background: inverted, so the ink is 1.
  const light = imageDataToInput(
    make((x, y) => (inSquare(x, y) ? [0, 0, 0, 255] : [255, 255, 255, 255])),
    [1, 28, 28],
  );
  assert.equal(light[14 * 28 + 14], 1);
  assert.equal(light[0], 0);
  // A half-covered destination pixel averages.
  const half = imageDataToInput(make((x) => (x < 5 ? [0, 0, 0, 255] : [0, 0, 0, 0])), [28, 28]);
  assert.ok(Math.abs(half[0] - 0.5) < 1e-6);
  // Centring like MNIST: a small square in a corner lands in the middle, about 20 px wide.
  const corner = imageDataToInput(
    make((x, y) => (x < 40 && y < 40 ? [255, 255, 255, 255] : [0, 0, 0, 0])),
    [28, 28, 1],
    { center: true },
  );
  assert.equal(corner[14 * 28 + 14], 1);
  assert.equal(corner[0], 0);
  const ink = corner.reduce((a, b) => a + b, 0);
  assert.ok(ink > 350 && ink < 450, `ink ${ink}`);
  assert.throws(() => imageDataToInput({ width: 2, height: 2, data: new Uint8ClampedArray(3) }, [784]));
  assert.throws(() => imageDataToInput(make(() => [0, 0, 0, 0]), [10, 10, 10, 10]), /cannot read input shape/);
});
