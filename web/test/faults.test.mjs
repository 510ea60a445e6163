// Faults with real `sotto serve` processes: a server killed while predictions are in flight.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { connect } from 'sotto-client';
import { mnistSamples } from '../scripts/npy.mjs';
import { startParties, MODELS } from './servers.mjs';

let parties;
let samples;

before(async () => {
  samples = mnistSamples(MODELS, 8);
  parties = await startParties();
});

after(async () => {
  await parties?.stop();
});

/** Resolves to {ok, value|error, ms} once `p` settles, measured from `t0`. */
const settle = (p, t0) =>
  p.then(
    (value) => ({ ok: true, value, ms: Date.now() - t0 }),
    (error) => ({ ok: false, error, ms: Date.now() - t0 }),
  );

test('P1 killed while predictions are in flight: every pending prediction rejects within 5 s', async (t) => {
  const client = await connect({ p0: parties.p0Url, p1: parties.p1Url, timeoutMs: 20000 });
  try {
    // Warm up: the connection works.
    const first = await client.predict(samples[0].pixels);
    assert.equal(first.label, samples[0].label);

    const t0 = Date.now();
    const flying = [
      ...samples.map((s) => client.predict(s.pixels)),
      // A batch P0 has no material ready for: still waiting when P1 dies.
      client.predictBatch(new Array(Math.min(64, client.manifest.maxBatch)).fill(samples[1].pixels)),
      client.predictBatch(new Array(client.manifest.maxBatch).fill(samples[2].pixels)),
    ].map((p) => settle(p, t0));
    await new Promise((r) => setTimeout(r, 5));
    const killedAt = Date.now() - t0;
    await parties.kill('p1');
    let hang;
    const results = await Promise.race([
      Promise.all(flying),
      new Promise((_, fail) => {
        hang = setTimeout(() => fail(new Error('predictions hung after P1 died')), 8000);
      }),
    ]).finally(() => clearTimeout(hang));
    const failed = results.filter((r) => !r.ok);
    for (const r of failed) t.diagnostic(`after ${r.ms - killedAt} ms: ${r.error.message}`);
    assert.ok(failed.length > 0, 'some prediction was still in flight when P1 died');
    for (const r of failed) {
      assert.ok(r.error instanceof Error, `rejects with an Error, got ${r.error}`);
      assert.ok(
        ['connection', 'server'].includes(r.error.kind),
        `kind ${r.error.kind}: ${r.error.message}`,
      );
      assert.ok(r.ms - killedAt < 5000, `rejected ${r.ms - killedAt} ms after the kill: ${r.error.message}`);
    }
    // The client knows P1 is gone: the next prediction fails at once, naming it.
    const t1 = Date.now();
    await assert.rejects(client.predict(samples[3].pixels), (e) => {
      assert.equal(e.kind, 'connection');
      assert.match(e.message, /P1 closed the connection/);
      return true;
    });
    assert.ok(Date.now() - t1 < 1000);
  } finally {
    client.close();
  }
});

test('connecting to a deployment whose P1 is down fails quickly', async () => {
  const t0 = Date.now();
  await assert.rejects(
    connect({ p0: parties.p0Url, p1: parties.p1Url, timeoutMs: 4000 }),
    (e) => e instanceof Error && e.kind === 'connection' && /^P1 /.test(e.message),
  );
  assert.ok(Date.now() - t0 < 4500);
});
