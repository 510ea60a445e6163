// sotto-client for browsers and bundlers (the package's "browser" and "default" entry).
//
// The input is secret-shared inside the WebAssembly module (crates/sotto-client, `wasm`
// feature): P0 receives `x − PRG(seed)`, P1 the 32-byte seed alone, so neither server sees
// the input or the output; the client adds the two output shares. This entry fetches the
// .wasm next to this file (bundlers see the `new URL(..., import.meta.url)` and emit it) unless
// `load({wasm})` or `connect({wasm})` supplies it, and uses the page's WebSocket. It imports
// no Node module and sets no global.

import { makeApi, SottoError } from './client.js';

export { SottoClient, SottoError, isSottoError, imageDataToInput } from './client.js';

const api = makeApi({
  defaultWasm: () => new URL('./pkg/sotto_client_bg.wasm', import.meta.url),
  async fetchWasm(src) {
    try {
      return await fetch(src);
    } catch (e) {
      throw new SottoError(`could not fetch the sotto WebAssembly module from ${src}: ${e?.message ?? e}`, {
        kind: 'wasm_fetch',
        cause: e,
      });
    }
  },
  async webSocket() {
    return globalThis.WebSocket;
  },
});

/** Loads and compiles the WebAssembly module once (connect() calls it). */
export const load = api.load;
/** Connects to P0 and P1 of one deployment. */
export const connect = api.connect;
/** The models a server serves (GET /v1/models). */
export const listModels = api.listModels;
