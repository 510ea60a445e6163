// Types of sotto-client (index.js for browsers and bundlers, node.js for Node: one API).
// Self-contained: no DOM or Node types are needed (structural types stand in for ImageData,
// WebSocket, Response, AbortSignal and events; URL and WebAssembly.Module are used when the
// project's libraries declare them).

/** The platform's URL type when declared (DOM or Node types), else never. */
type PlatformURL = typeof globalThis extends { URL: abstract new (...args: any) => infer U } ? U : never;
/** The platform's WebAssembly.Module type when declared, else never. */
type PlatformWasmModule = typeof globalThis extends { WebAssembly: { Module: abstract new (...args: any) => infer M } }
  ? M
  : never;

/** What a client knows about a model (from the servers' manifest). */
export interface Manifest {
  /** Model id. */
  readonly modelId: string;
  /** Input shape without the batch dimension, e.g. [784] or [28, 28, 1]. */
  readonly inputShape: readonly number[];
  /** Values per example in the model's output. */
  readonly outputLen: number;
  /** Largest input magnitude the model accepts (inputs outside ±inputBound are refused). */
  readonly inputBound: number;
  /** Fractional bits of the fixed-point input encoding. */
  readonly fracBits: number;
  /** Fractional bits of the output. */
  readonly outFrac: number;
  /** True when the model ends with a softmax that the client applies (probabilities are then given). */
  readonly softmaxAtClient: boolean;
  /** The deployment's id (the same at P0 and P1; the client refuses servers of two deployments). */
  readonly deployment: string;
  /** The largest batch one `predictBatch` may carry (larger ones are refused before sending). */
  readonly maxBatch: number;
  /**
   * With private weights, the width `k` of the input range the servers enforce: the client
   * sends a share of each value's `k`-bit code and a wrap bit (`⌈(k+1)/8⌉` bytes instead of
   * 8), and whatever a client sends decodes to a value near that range. `null` when inputs
   * are shared modulo 2^64 (public weights).
   */
  readonly inputBits: number | null;
}

/** Bytes sent to each server. */
export interface BytesSent {
  /** Bytes sent to P0 (frames, headers included). */
  p0: number;
  /** Bytes sent to P1 (frames, headers included). */
  p1: number;
}

/** The result of one prediction. */
export interface Prediction {
  /** The model's outputs (logits), `outputLen` values. */
  logits: Float64Array;
  /** Softmax of the logits when the model ends with a softmax; otherwise null. */
  probabilities: Float64Array | null;
  /** Index of the largest output. */
  label: number;
  /** Wall time of the private prediction (sharing, both servers, reconstruction), ms. */
  latencyMs: number;
  /** Bytes this prediction sent to each server. */
  bytesSent: BytesSent;
}

/** The result of a batch prediction (one request for all inputs). */
export interface BatchPrediction {
  /** Each input's outputs. */
  logits: Float64Array[];
  /** Each input's probabilities, or null (see Prediction.probabilities). */
  probabilities: Float64Array[] | null;
  /** Each input's label. */
  labels: number[];
  /** Wall time of the whole batch, ms. */
  latencyMs: number;
  /** Bytes this request sent to each server. */
  bytesSent: BytesSent;
}

/** What each server received of the last input. */
export interface LastSent {
  /** The input share P0 received: `x − PRG(seed)` in the model's fixed-point ring, 8 bytes per value (little-endian). */
  p0: Uint8Array;
  /** The 32-byte seed P1 received. */
  p1: Uint8Array;
}

/** An image (a canvas's ImageData, or anything shaped like one): RGBA bytes, row by row. */
export interface ImageDataLike {
  readonly width: number;
  readonly height: number;
  readonly data: Uint8ClampedArray;
}

/** One input: values in the model's input shape (flat, or nested one level per dimension), or an image. */
export type Input = Float32Array | Float64Array | readonly number[] | readonly (readonly number[])[] | NestedNumbers | ImageDataLike;
/** A nested array of numbers (e.g. [28][28] or [28][28][1]). */
export type NestedNumbers = readonly (number | NestedNumbers)[];

/**
 * The codes of server errors (the same list as sotto-wire's `ErrorCode`; a test keeps them
 * equal). "busy" and "not_ready" are worth retrying later; the others describe the request.
 */
export type ErrorCode =
  | 'bad_hello'
  | 'unknown_model'
  | 'bad_frame'
  | 'bad_message'
  | 'bad_shape'
  | 'too_large'
  | 'busy'
  | 'idle'
  | 'too_many_errors'
  | 'not_ready'
  | 'no_material'
  | 'unknown_session'
  | 'session_failed'
  | 'unauthenticated'
  | 'rate_limited';

/**
 * What went wrong:
 * - `input`: the input does not fit the model (length, bound, a batch over maxBatch); nothing was sent.
 * - `server`: a server refused or failed the request (`server` and `code` say which and why).
 * - `connection`: a server is unreachable, closed the connection, or did not answer within timeoutMs.
 * - `protocol`: a server sent something the protocol does not allow.
 * - `bad_deployment`: the two URLs are not P0 and P1 of one deployment (swapped, the same server twice, two deployments); refused before any share or seed was sent.
 * - `no_websocket`: no WebSocket class (Node 20 without the `ws` package).
 * - `wasm_fetch`: the .wasm could not be fetched or read.
 * - `wasm_blocked`: the page's Content Security Policy forbids WebAssembly (add 'wasm-unsafe-eval' to script-src).
 * - `wasm_compile`: the bytes are not a WebAssembly module.
 * - `wasm_instantiate`: the module does not fit this package's JavaScript (another version).
 */
export type ErrorKind =
  | 'input'
  | 'server'
  | 'connection'
  | 'protocol'
  | 'bad_deployment'
  | 'no_websocket'
  | 'wasm_fetch'
  | 'wasm_blocked'
  | 'wasm_compile'
  | 'wasm_instantiate';

/**
 * The error of everything sotto-client does. Arguments of the wrong type throw a TypeError,
 * and a call whose AbortSignal fires rejects with the signal's reason (as fetch does).
 */
export declare class SottoError extends Error {
  constructor(message: string, details: { kind: ErrorKind; code?: ErrorCode; server?: 'P0' | 'P1'; cause?: unknown });
  readonly name: 'SottoError';
  /** What went wrong (see ErrorKind). */
  readonly kind: ErrorKind;
  /** For `server` errors: the server's error code. */
  readonly code?: ErrorCode;
  /** For `server` errors: which server, "P0" or "P1". */
  readonly server?: 'P0' | 'P1';
}

/** True for a SottoError (also one from another copy of this package). */
export declare function isSottoError(e: unknown): e is SottoError;

/** A WebSocket class (the browser's, or `ws`'s in Node). */
export type WebSocketClass = new (url: string) => object;

/** Where the WebAssembly module comes from: a URL (string or URL), a fetch Response (or a promise of one), its bytes, or a compiled module. */
export type WasmSource =
  | string
  | PlatformURL
  | { readonly ok: boolean; readonly status: number; arrayBuffer(): Promise<ArrayBuffer> }
  | PromiseLike<{ readonly ok: boolean; readonly status: number; arrayBuffer(): Promise<ArrayBuffer> }>
  | ArrayBuffer
  | ArrayBufferView
  | PlatformWasmModule;

/** Options of load(). */
export interface LoadOptions {
  /** The module (default: `pkg/sotto_client_bg.wasm` next to the package's JavaScript, also exported as `sotto-client/wasm`). */
  wasm?: WasmSource;
}

/** Reconnection after a lost connection: exponential back-off with jitter, from minDelayMs up to maxDelayMs. */
export interface ReconnectOptions {
  /** Attempts before giving up (default Infinity). */
  retries?: number;
  /** First delay, ms (default 250). */
  minDelayMs?: number;
  /** Largest delay, ms (default 30 000). */
  maxDelayMs?: number;
}

/** A minimal AbortSignal (the platform's). */
export interface AbortSignalLike {
  readonly aborted: boolean;
  readonly reason: unknown;
  throwIfAborted(): void;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

/** Options of connect(). */
export interface ConnectOptions {
  /** P0's base URL, e.g. "ws://127.0.0.1:8100" (http(s):// also works; /v1/ws is appended unless present). */
  p0: string | PlatformURL;
  /** P1's base URL. */
  p1: string | PlatformURL;
  /** The model id; empty or absent for the servers' default model (see listModels()). */
  model?: string;
  /** Deadline of the connection setup and of each prediction, ms (default 10 000). */
  timeoutMs?: number;
  /** The API key, for deployments that require one. */
  apiKey?: string;
  /** Aborts connecting (the promise rejects with the signal's reason). */
  signal?: AbortSignalLike;
  /** Reconnect after a lost connection (default false). */
  reconnect?: boolean | ReconnectOptions;
  /** The WebSocket class (default: the browser's; in Node the `ws` package, else Node's global). */
  WebSocket?: WebSocketClass;
  /** Where the WebAssembly module comes from (see load()). */
  wasm?: WasmSource;
}

/** Options of a prediction. */
export interface PredictOptions {
  /** Aborts the prediction: it rejects with the signal's reason and late replies are dropped. */
  signal?: AbortSignalLike;
}

/** Options of imageDataToInput(). */
export interface ImageOptions {
  /** Frame the ink like MNIST: bounding box scaled into 20×20, centred by its centre of mass in 28×28 (default false: plain resize). */
  center?: boolean;
}

/** The connection's state: "open", "reconnecting" (with `reconnect`), or "closed" (for good). */
export type ConnectionState = 'open' | 'reconnecting' | 'closed';

/** An event of a SottoClient (a DOM/Node Event at run time). */
export interface SottoEvent {
  readonly type: string;
}

/** The `statechange` event. */
export interface StateChangeEvent extends SottoEvent {
  readonly type: 'statechange';
  readonly state: ConnectionState;
}

/** The `close` event: the connection was lost (or closed by close()). */
export interface CloseEvent extends SottoEvent {
  readonly type: 'close';
  /** Why. */
  readonly error: SottoError;
  /** True when a reconnect follows (then `reconnect` or a final `close` comes later). */
  readonly reconnecting: boolean;
}

/** The `reconnect` event: connected again. */
export interface ReconnectEvent extends SottoEvent {
  readonly type: 'reconnect';
  /** Which attempt succeeded (1 for the first). */
  readonly attempt: number;
}

/** The events of a SottoClient. */
export interface SottoClientEventMap {
  statechange: StateChangeEvent;
  close: CloseEvent;
  reconnect: ReconnectEvent;
}

/** A connection to P0 and P1 for one model (an EventTarget). Predictions may overlap. */
export declare class SottoClient {
  private constructor();
  /** The connection's state; a lost connection is noticed at once (`statechange` and `close` events). */
  readonly state: ConnectionState;
  /** The model's manifest. */
  readonly manifest: Manifest;
  /** Values per input (the product of manifest.inputShape). */
  readonly inputSize: number;
  /**
   * Predicts one input privately. Rejects with a SottoError when the input does not fit the
   * model (nothing is sent; the connection stays usable), when a server refuses, when a step
   * takes longer than timeoutMs, or at once when a connection closes.
   */
  predict(input: Input, options?: PredictOptions): Promise<Prediction>;
  /** Predicts several inputs in one request (at most manifest.maxBatch, else a SottoError of kind `input` before anything is sent). */
  predictBatch(inputs: readonly Input[], options?: PredictOptions): Promise<BatchPrediction>;
  /** Bytes sent to each server since connect() (or the last reconnect). */
  bytesSent(): BytesSent;
  /** What each server received of the last input (empty arrays before the first prediction). */
  lastSent(): LastSent;
  /** Closes both connections and stops reconnecting; predictions still waiting reject. Never keeps Node running. */
  close(): void;
  addEventListener<K extends keyof SottoClientEventMap>(
    type: K,
    listener: (ev: SottoClientEventMap[K]) => void,
    options?: boolean | { once?: boolean; signal?: AbortSignalLike },
  ): void;
  removeEventListener<K extends keyof SottoClientEventMap>(type: K, listener: (ev: SottoClientEventMap[K]) => void): void;
  dispatchEvent(event: SottoEvent): boolean;
  // Also `[Symbol.dispose]()` (calls close()), for `using client = await connect(...)`; not
  // declared here so that projects without the esnext.disposable library type-check.
}

/**
 * Connects to P0 and P1, checks they are P0 and P1 of one deployment serving the model (a
 * SottoError of kind `bad_deployment` otherwise, before anything secret is sent). Loads the
 * WebAssembly module on first use. Throws a TypeError for URLs that are not ws(s):// or
 * http(s):// URLs.
 */
export declare function connect(options: ConnectOptions): Promise<SottoClient>;

/**
 * Loads and compiles the WebAssembly module (connect() does it on first use; later calls
 * return the first call's promise once it succeeded). Every failure is a SottoError of kind
 * `wasm_fetch`, `wasm_blocked`, `wasm_compile` or `wasm_instantiate`.
 */
export declare function load(options?: LoadOptions): Promise<void>;

/** The models a server serves (its GET /v1/models), e.g. to choose `model` for connect(). */
export declare function listModels(server: string | PlatformURL, options?: { signal?: AbortSignalLike }): Promise<Manifest[]>;

/**
 * Converts an ImageData (e.g. a canvas drawing) into a model input of `inputShape`: for
 * one-channel models the alpha channel when the image has transparency, otherwise the
 * luminance (inverted on a light background), so that the digit is white on black in [0, 1]
 * like MNIST; three-channel models get RGB in [0, 1]. Resized by area averaging.
 */
export declare function imageDataToInput(
  imageData: ImageDataLike,
  inputShape: readonly number[],
  options?: ImageOptions,
): Float32Array;
