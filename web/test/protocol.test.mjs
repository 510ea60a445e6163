// The client's side of the wire protocol against scripted servers (the `ws` package): replies
// out of order and ahead of time, timeouts, server errors, closed connections, bad frames.
// Real-server tests are in client.test.mjs and faults.test.mjs.

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';

import { connect, isSottoError, SottoError } from 'sotto-client';
import { KIND, TAGGED_SEED, encode, json, MANIFEST, outputShares, scripted as scriptedServers, tagBook } from './scripted.mjs';

const errorFrame = (session, step, code, message) =>
  encode(KIND.Error, session, step, json({ code, message }));

const deployments = [];
afterEach(async () => {
  for (const d of deployments.splice(0)) {
    await d.close();
    for (const h of d.hellos) assert.equal(h.role, 'Client');
  }
});

/**
 * Two scripted servers (./scripted.mjs), closed after the test, whose hellos must all come
 * from a client. `on(role, frame, socket)` handles every frame after the hello;
 * `hello(role, frame, socket)` may replace the manifest answer.
 */
async function scripted(options) {
  const d = await scriptedServers(options);
  deployments.push(d);
  return { p0: d.p0, p1: d.p1 };
}

const softmax = (v) => {
  const m = Math.max(...v);
  const e = v.map((x) => Math.exp(x - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
};

test('share and seed go out at once under one tag; replies out of order reach their predictions', async () => {
  // P0 holds requests until three arrived, then answers them in reverse order; P1 answers
  // each seed as soon as P0 has seen its request (P1 never learns the request number).
  const book = tagBook();
  const held = [];
  const seeds = [];
  const addr = await scripted({
    on(role, f, ws) {
      if (role === 'P0') {
        assert.equal(f.kind, KIND.InputShare);
        assert.notEqual(f.session, 0n);
        assert.equal(f.payload.length, 4 * 8);
        book.set(f.session, f.step);
        held.push(f);
        if (held.length === 3) {
          for (const h of [...held].reverse()) {
            ws.send(encode(KIND.Output, h.session, 0, outputShares([h.step, -h.step, 0.5])[0]));
          }
        }
      } else {
        assert.equal(f.kind, KIND.InputSeed);
        assert.equal(f.step, TAGGED_SEED);
        assert.equal(f.payload.length, 32);
        seeds.push({ tag: f.session, seed: Buffer.from(f.payload) });
        book.get(f.session).then((step) => {
          ws.send(encode(KIND.Output, f.session, 0, outputShares([step, -step, 0.5])[1]));
        });
      }
    },
  });
  const c = await connect({ ...addr, timeoutMs: 2000 });
  try {
    assert.equal(c.manifest.modelId, 'toy');
    const rs = await Promise.all([1, 2, 3].map(() => c.predict([0.1, 0.2, 0.3, 0.4])));
    rs.forEach((r, i) => {
      const step = i + 1; // request numbers follow the calls
      assert.deepEqual(Array.from(r.logits), [step, -step, 0.5]);
      assert.equal(r.label, 0);
      const p = softmax([step, -step, 0.5]);
      r.probabilities.forEach((v, k) => assert.ok(Math.abs(v - p[k]) < 1e-12));
    });
    // One fresh tag per prediction, each with its own seed; the tags are the shares' tags.
    assert.equal(new Set(seeds.map((s) => s.tag)).size, 3);
    assert.equal(new Set(seeds.map((s) => s.seed.toString('hex'))).size, 3);
    assert.deepEqual(new Set(seeds.map((s) => s.tag)), new Set(held.map((h) => h.session)));
    // lastSent() is what the servers received.
    const last = c.lastSent();
    assert.deepEqual(Buffer.from(last.p1), seeds[seeds.length - 1].seed);
    assert.equal(last.p0.length, 32);
  } finally {
    c.close();
  }
});

test('a server error for a request rejects that prediction only', async () => {
  const book = tagBook();
  const addr = await scripted({
    on(role, f, ws) {
      if (role === 'P0') {
        book.set(f.session, f.step);
        if (f.step === 1) ws.send(errorFrame(f.session, 1, 'not_ready', 'the parties are not ready'));
        else if (f.step === 3) ws.send(errorFrame(0, 3, 'busy', 'try later')); // by request number only
        else ws.send(encode(KIND.Output, f.session, 0, outputShares([1, 2, 3])[0]));
        return;
      }
      book.get(f.session).then((step) => {
        if (step === 2) ws.send(errorFrame(f.session, 0, 'session_failed', 'P1: link lost'));
        else ws.send(encode(KIND.Output, f.session, 0, outputShares([1, 2, 3])[1]));
      });
    },
  });
  const c = await connect({ ...addr });
  try {
    await assert.rejects(c.predict([0, 0, 0, 0]), (e) => {
      assert.equal(e.message, 'P0 refused: the parties are not ready (not_ready)');
      assert.deepEqual([e.kind, e.server, e.code], ['server', 'P0', 'not_ready']);
      return true;
    });
    // Request 2: P1 fails it.
    await assert.rejects(c.predict([0, 0, 0, 0]), (e) => {
      assert.equal(e.message, 'P1 refused: P1: link lost (session_failed)');
      assert.deepEqual([e.kind, e.server, e.code], ['server', 'P1', 'session_failed']);
      return true;
    });
    // Request 3: P0 refuses it by number.
    await assert.rejects(c.predict([0, 0, 0, 0]), (e) => e.code === 'busy' && e.server === 'P0');
    // Request 4 works.
    const ok = await c.predict([0, 0, 0, 0]);
    assert.deepEqual(Array.from(ok.logits), [1, 2, 3]);
  } finally {
    c.close();
  }
});

test('a session error from P1 names P1 and its code', async () => {
  const addr = await scripted({
    on(role, f, ws) {
      // P0 stays silent.
      if (role === 'P1') ws.send(errorFrame(f.session, 0, 'bad_shape', 'an input seed is 32 bytes, got 31'));
    },
  });
  const c = await connect({ ...addr, timeoutMs: 3000 });
  try {
    const t0 = Date.now();
    await assert.rejects(c.predict([0, 0, 0, 0]), (e) => {
      assert.equal(e.message, 'P1 refused: an input seed is 32 bytes, got 31 (bad_shape)');
      assert.deepEqual([e.server, e.code], ['P1', 'bad_shape']);
      return true;
    });
    // The first error wins at once: no wait for P0's output.
    assert.ok(Date.now() - t0 < 1000);
  } finally {
    c.close();
  }
});

test('timeouts: a silent hello, silent servers, a missing output', async () => {
  // No manifest: connect rejects after timeoutMs.
  let addr = await scripted({ hello: () => {} });
  let t0 = Date.now();
  await assert.rejects(connect({ ...addr, timeoutMs: 300 }), (e) => {
    assert.equal(e.kind, 'connection');
    assert.match(e.message, /^P[01] \(ws:\/\/127\.0\.0\.1:\d+\/v1\/ws\) did not answer within 300 ms$/);
    return true;
  });
  assert.ok(Date.now() - t0 < 1500);

  // Neither server answers.
  addr = await scripted({ on: () => {} });
  let c = await connect({ ...addr, timeoutMs: 300 });
  t0 = Date.now();
  await assert.rejects(c.predict([0, 0, 0, 0]), /^SottoError: neither P0 nor P1 answered within 300 ms$/);
  assert.ok(Date.now() - t0 >= 250 && Date.now() - t0 < 1500);
  c.close();

  // P1 never answers the seed.
  addr = await scripted({
    on(role, f, ws) {
      if (role === 'P0') ws.send(encode(KIND.Output, f.session, 0, outputShares([0, 0, 0])[0]));
    },
  });
  c = await connect({ ...addr, timeoutMs: 300 });
  await assert.rejects(c.predict([0, 0, 0, 0]), /^SottoError: P1 did not answer within 300 ms \(no output share\)$/);
  c.close();
});

test('a connection closing mid-prediction rejects every waiting prediction at once', async () => {
  let p1Socket;
  const addr = await scripted({
    on(role, f, ws) {
      if (role === 'P1') p1Socket = ws;
    },
  });
  const c = await connect({ ...addr, timeoutMs: 10000 });
  const pending = [1, 2, 3].map(() => c.predict([0, 0, 0, 0]).catch((e) => e));
  while (!p1Socket) await new Promise((r) => setTimeout(r, 5));
  await new Promise((r) => setTimeout(r, 20));
  const t0 = Date.now();
  p1Socket.close(1011, 'going away');
  const errors = await Promise.all(pending);
  assert.ok(Date.now() - t0 < 1000);
  for (const e of errors) {
    assert.ok(e instanceof Error);
    assert.equal(e.message, 'P1 closed the connection (code 1011: going away)');
  }
  await assert.rejects(c.predict([0, 0, 0, 0]), /P1 closed the connection/);
  c.close();
});

test('bad replies: different manifests, a garbage frame, an unknown model', async () => {
  let addr = await scripted({
    hello(role, f, ws) {
      const m = role === 'P0' ? { ...MANIFEST, role } : { ...MANIFEST, role, frac_bits: 12 };
      ws.send(encode(KIND.Manifest, 0, 0, json(m)));
    },
  });
  await assert.rejects(connect(addr), (e) => {
    assert.equal(e.kind, 'bad_deployment');
    assert.match(e.message, /^P0 and P1 describe model "toy" differently/);
    return true;
  });

  // Roles: one server for both, swapped servers, two deployments; nothing is sent after the
  // hello (a share or a seed reaching the wrong server would reveal the input).
  const cases = [
    [(role) => ({ ...MANIFEST, role: 'P0' }), /both URLs reach a P0/],
    [(role) => ({ ...MANIFEST, role: role === 'P0' ? 'P1' : 'P0' }), /P0 and P1 URLs are swapped/],
    [(role) => ({ ...MANIFEST, role, deployment: role === 'P0' ? MANIFEST.deployment : '77'.repeat(16) }), /not one deployment/],
    [(role) => { const { role: _r, ...m } = { ...MANIFEST }; return m; }, /protocol: P0/],
  ];
  for (const [manifest, why] of cases) {
    let after = 0;
    addr = await scripted({
      hello(role, f, ws) {
        ws.send(encode(KIND.Manifest, 0, 0, json(manifest(role))));
      },
      on() {
        after += 1;
      },
    });
    await assert.rejects(connect(addr), (e) => {
      assert.ok(isSottoError(e) && e instanceof SottoError);
      assert.match(e.message, why);
      // A missing role is a manifest that does not parse; the others are not a pair.
      assert.equal(e.kind, /protocol/.test(String(why)) ? 'protocol' : 'bad_deployment');
      return true;
    });
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(after, 0, 'no frame may follow the hello when the roles are wrong');
  }

  addr = await scripted({
    on(role, f, ws) {
      if (role === 'P0') ws.send(Buffer.from('definitely not a frame, but long enough to have a header'));
    },
  });
  const c = await connect(addr);
  await assert.rejects(c.predict([0, 0, 0, 0]), (e) => {
    assert.equal(e.kind, 'protocol');
    assert.match(e.message, /^protocol: P0 sent a bad frame: not a sotto frame/);
    return true;
  });
  c.close();

  addr = await scripted({
    hello(role, f, ws) {
      ws.send(errorFrame(0, 0, 'unknown_model', `no model ${JSON.stringify(JSON.parse(f.payload).model_id)} here`));
    },
  });
  await assert.rejects(connect({ ...addr, model: 'zzz' }), /refused: no model "zzz" here \(unknown_model\)/);
});
