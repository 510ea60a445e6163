// sotto-client for Node (the package's "node" entry): the same API as index.js, reading the
// .wasm from disk and taking the WebSocket class from the optional `ws` package (Node 20 has
// no WebSocket; Node 22's global one is used when `ws` is not installed). Nothing global is
// set: the class is handed to the client.

import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

import { makeApi, SottoError } from './client.js';

export { SottoClient, SottoError, isSottoError, imageDataToInput } from './client.js';

let wsClass = null;

async function webSocket() {
  if (wsClass) return wsClass;
  let ws = null;
  try {
    ws = await import('ws');
  } catch {
    ws = null;
  }
  const Base = ws ? (ws.WebSocket ?? ws.default) : null;
  if (typeof Base === 'function') {
    // No compression (shares are random: it would only cost time), and a closing handshake
    // that cannot keep the process alive for long when a server does not answer it. The
    // socket itself does not keep Node running: while the client waits for something (the
    // setup, a prediction) its deadline timer does, so a script that forgets close() still
    // exits once its work is done.
    wsClass = class SottoNodeWebSocket extends Base {
      constructor(url) {
        super(url, { perMessageDeflate: false, closeTimeout: 1000 });
        this.once('upgrade', (res) => res.socket?.unref?.());
      }
    };
  } else {
    wsClass = globalThis.WebSocket ?? null;
  }
  return wsClass;
}

const api = makeApi({
  defaultWasm: () => new URL('./pkg/sotto_client_bg.wasm', import.meta.url),
  async fetchWasm(src) {
    const s = String(src);
    const remote = /^https?:/i.test(s);
    try {
      if (remote) return await fetch(s);
      return await readFile(/^file:/i.test(s) ? fileURLToPath(s) : s);
    } catch (e) {
      throw new SottoError(`could not read the sotto WebAssembly module from ${s}: ${e?.message ?? e}`, {
        kind: 'wasm_fetch',
        cause: e,
      });
    }
  },
  webSocket,
});

/** Loads and compiles the WebAssembly module once (connect() calls it). */
export const load = api.load;
/** Connects to P0 and P1 of one deployment. */
export const connect = api.connect;
/** The models a server serves (GET /v1/models). */
export const listModels = api.listModels;
