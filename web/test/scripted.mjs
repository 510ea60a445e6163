// Scripted sotto servers for the package's tests (the `ws` package): a hello is answered
// with a manifest of the server's role unless `hello` answers it; `on` handles every frame
// after the hello. Also the frame codec and output shares.

import assert from 'node:assert/strict';
import { WebSocketServer } from 'ws';

export const KIND = { Hello: 1, Manifest: 2, InputShare: 3, InputSeed: 4, Output: 6, Error: 7, Close: 8, Session: 9, InputBits: 12 };
/** The `step` of a seed frame whose `session` is the request's tag. */
export const TAGGED_SEED = 1;
const MASK = (1n << 64n) - 1n;

export function encode(kind, session, step, payload = new Uint8Array(0)) {
  const b = Buffer.alloc(32 + payload.length);
  b.write('SOTW', 0, 'latin1');
  b[4] = 1;
  b[5] = kind;
  const s = BigInt(session);
  b.writeBigUInt64LE(s & MASK, 8);
  b.writeBigUInt64LE(s >> 64n, 16);
  b.writeUInt32LE(step, 24);
  b.writeUInt32LE(payload.length, 28);
  Buffer.from(payload).copy(b, 32);
  return b;
}

export function decode(buf) {
  const b = Buffer.from(buf);
  assert.equal(b.toString('latin1', 0, 4), 'SOTW');
  return {
    kind: b[5],
    session: b.readBigUInt64LE(8) | (b.readBigUInt64LE(16) << 64n),
    step: b.readUInt32LE(24),
    payload: b.subarray(32, 32 + b.readUInt32LE(28)),
  };
}

export const json = (v) => Buffer.from(JSON.stringify(v));

export const MANIFEST = {
  model_id: 'toy',
  input_shape: [4],
  frac_bits: 16,
  output_len: 3,
  out_frac: 16,
  softmax_at_client: true,
  input_bound: 1,
  deployment: '5e'.repeat(16),
  max_batch: 128,
};

/** Output shares of `values` (fixed point, 16 fractional bits): [for P0, for P1]. */
export function outputShares(values) {
  const a = Buffer.alloc(values.length * 8);
  const b = Buffer.alloc(values.length * 8);
  values.forEach((v, i) => {
    const enc = BigInt.asUintN(64, BigInt(Math.round(v * 65536)));
    const r = BigInt.asUintN(64, BigInt(0x1234567 * (i + 1)) * 0x9e3779b97f4a7c15n);
    a.writeBigUInt64LE(r, i * 8);
    b.writeBigUInt64LE(BigInt.asUintN(64, enc - r), i * 8);
  });
  return [a, b];
}

/** A server that answers every prediction with `values`, under the request's tag. */
export const answering =
  (values = [1, 2, 3]) =>
  (role, f, ws) => {
    ws.send(encode(KIND.Output, f.session, 0, outputShares(values)[role === 'P0' ? 0 : 1]));
  };

/**
 * Request numbers by tag, as P0 learns them from the input shares: P1 sees only the tag, and
 * a seed may reach P1 before its share reaches P0. `get(tag)` resolves once P0 saw it.
 */
export function tagBook() {
  const steps = new Map();
  const waiting = new Map();
  return {
    set(tag, step) {
      steps.set(tag, step);
      for (const r of waiting.get(tag) ?? []) r(step);
      waiting.delete(tag);
    },
    get(tag) {
      if (steps.has(tag)) return Promise.resolve(steps.get(tag));
      return new Promise((r) => waiting.set(tag, [...(waiting.get(tag) ?? []), r]));
    },
  };
}

/**
 * Two scripted servers: {p0, p1, servers: {P0, P1}, hellos: [], paths: [], close()}.
 * @param {{on?: Function, hello?: Function, manifest?: object}} options
 */
export async function scripted({ on = () => {}, hello, manifest = MANIFEST } = {}) {
  const hellos = [];
  const paths = [];
  const make = (role) =>
    new Promise((ready) => {
      const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 }, () => ready(wss));
      wss.on('connection', (ws, req) => {
        paths.push(req.url);
        let greeted = false;
        ws.on('message', (data) => {
          const f = decode(data);
          if (!greeted) {
            greeted = true;
            assert.equal(f.kind, KIND.Hello);
            hellos.push({ ...JSON.parse(f.payload), server: role });
            if (hello) return hello(role, f, ws);
            return ws.send(encode(KIND.Manifest, 0, 0, json({ ...manifest, role })));
          }
          on(role, f, ws);
        });
      });
    });
  const P0 = await make('P0');
  const P1 = await make('P1');
  return {
    p0: `ws://127.0.0.1:${P0.address().port}`,
    p1: `ws://127.0.0.1:${P1.address().port}`,
    servers: { P0, P1 },
    hellos,
    paths,
    async close() {
      for (const s of [P0, P1]) {
        for (const c of s.clients) c.terminate();
        await new Promise((r) => s.close(r));
      }
    },
  };
}
