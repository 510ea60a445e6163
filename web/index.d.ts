// Types of sotto-client (web/index.js).

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
  /** The largest batch one `predictBatch` may carry. */
  readonly maxBatch: number;
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

/** One input: values batch-free in the model's input shape (flat or nested), or an image. */
export type Input = Float32Array | ArrayLike<number> | NestedNumbers | ImageData;
/** A nested array of numbers. */
export type NestedNumbers = ReadonlyArray<number | NestedNumbers>;

/**
 * Errors from connect() and predictions are `Error` objects (TypeError for arguments of the
 * wrong type) with these extra properties.
 */
export interface SottoError extends Error {
  /** "input" (the input does not fit the model), "server" (a server refused), "connection" (failed, closed or timed out) or "protocol". */
  kind: 'input' | 'server' | 'connection' | 'protocol';
  /** For server errors: "P0" or "P1". */
  server?: 'P0' | 'P1';
  /** For server errors: the server's error code (see ErrorCode). */
  code?: ErrorCode;
}

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

/** Options of connect(). */
export interface ConnectOptions {
  /** P0's base URL, e.g. "ws://127.0.0.1:8100" (http(s):// URLs also work; /v1/ws is appended). */
  p0: string;
  /** P1's base URL. */
  p1: string;
  /** The model id; empty or absent for the servers' default model. */
  model?: string;
  /** Deadline of the connection setup and of each step of a prediction, ms (default 10 000). */
  timeoutMs?: number;
}

/** Options of imageDataToInput(). */
export interface ImageOptions {
  /** Frame the ink like MNIST: bounding box scaled into 20×20, centred by its centre of mass in 28×28 (default false: plain resize). */
  center?: boolean;
}

/** A connection to P0 and P1 for one model. Predictions may overlap. */
export declare class SottoClient {
  private constructor();
  /** The model's manifest. */
  readonly manifest: Manifest;
  /** Values per input (the product of manifest.inputShape). */
  readonly inputSize: number;
  /**
   * Predicts one input privately. Rejects with a SottoError when the input does not fit the
   * model (the connection stays usable), when a server refuses, when a step takes longer than
   * timeoutMs, or at once when a connection closes.
   */
  predict(input: Input): Promise<Prediction>;
  /** Predicts several inputs in one request (at most the servers' --max-batch). */
  predictBatch(inputs: Input[]): Promise<BatchPrediction>;
  /** Bytes sent to each server since connect(). */
  bytesSent(): BytesSent;
  /** What each server received of the last input (empty arrays before the first prediction). */
  lastSent(): LastSent;
  /** Closes both connections; predictions still waiting reject. */
  close(): void;
}

/**
 * Connects to P0 and P1, asks both for the model and checks that they describe it the same
 * way. Loads the WebAssembly module on first use. Rejects with a SottoError when a server is
 * unreachable, refuses, or does not answer within timeoutMs.
 */
export declare function connect(options: ConnectOptions): Promise<SottoClient>;

/**
 * Loads the WebAssembly module (connect() does it on first use). In Node it also sets
 * globalThis.WebSocket from the `ws` package when there is none.
 */
export declare function load(): Promise<void>;

/**
 * Converts an ImageData (e.g. a canvas drawing) into a model input of `inputShape`: for
 * one-channel models the alpha channel when the image has transparency, otherwise the
 * luminance (inverted on a light background), so that the digit is white on black in [0, 1]
 * like MNIST; three-channel models get RGB in [0, 1]. Resized by area averaging.
 */
export declare function imageDataToInput(
  imageData: ImageData,
  inputShape: readonly number[],
  options?: ImageOptions,
): Float32Array;
