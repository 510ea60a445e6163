// A typed use of sotto-client, checked by `tsc --strict --noEmit` with only the ES2022
// library (no DOM, no Node types) in test/bundlers.mjs. It is type-checked, not run.
import {
  connect,
  listModels,
  load,
  imageDataToInput,
  isSottoError,
  SottoError,
  type BatchPrediction,
  type ErrorCode,
  type ErrorKind,
  type ImageDataLike,
  type Manifest,
  type Prediction,
  type SottoClient,
} from 'sotto-client';

declare const pixels: Float32Array;
declare const rows: number[][];
declare const image: ImageDataLike;
declare const bytes: Uint8Array;
declare const signal: { aborted: boolean; reason: unknown; throwIfAborted(): void; addEventListener(t: 'abort', l: () => void, o?: { once?: boolean }): void; removeEventListener(t: 'abort', l: () => void): void };

const retryLater: readonly ErrorCode[] = ['busy', 'not_ready'];

export async function main(): Promise<number> {
  await load({ wasm: bytes });
  const models: Manifest[] = await listModels('https://p0.example:8100');
  const model = models[0]?.modelId ?? '';
  const client: SottoClient = await connect({
    p0: 'wss://p0.example:8100',
    p1: 'wss://p1.example:8101',
    model,
    apiKey: 'key',
    timeoutMs: 5000,
    signal,
    reconnect: { retries: 5, minDelayMs: 100 },
  });
  client.addEventListener('close', (e) => {
    const kind: ErrorKind = e.error.kind;
    void kind;
    void e.reconnecting;
  });
  client.addEventListener('statechange', (e) => void e.state);
  try {
    const one: Prediction = await client.predict(pixels, { signal });
    const nested: Prediction = await client.predict(rows);
    const fromImage = await client.predict(imageDataToInput(image, client.manifest.inputShape, { center: true }));
    const batch: BatchPrediction = await client.predictBatch([pixels, rows, image]);
    return one.label + nested.label + fromImage.label + (batch.labels[0] ?? 0) + client.manifest.maxBatch;
  } catch (e) {
    if (isSottoError(e) && e.kind === 'server' && e.code !== undefined && retryLater.includes(e.code)) return -1;
    if (e instanceof SottoError && e.kind === 'bad_deployment') return -2;
    throw e;
  } finally {
    client.close();
  }
}
