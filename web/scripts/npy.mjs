// A reader for plain .npy files (format 1.0-3.0, C order, little-endian numeric dtypes).

import { readFileSync } from 'node:fs';

const DTYPES = {
  '|u1': [Uint8Array, 1],
  '<u1': [Uint8Array, 1],
  '|i1': [Int8Array, 1],
  '<i4': [Int32Array, 4],
  '<u4': [Uint32Array, 4],
  '<i8': [BigInt64Array, 8],
  '<f4': [Float32Array, 4],
  '<f8': [Float64Array, 8],
};

/**
 * Reads a .npy file.
 * @param {string | URL} path
 * @returns {{dtype: string, shape: number[], data: ArrayLike<number | bigint>}}
 */
export function readNpy(path) {
  const buf = readFileSync(path);
  if (buf.length < 10 || buf.toString('latin1', 0, 6) !== '\x93NUMPY') {
    throw new Error(`${path}: not a .npy file`);
  }
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', start, start + headerLen);
  const descr = /'descr'\s*:\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || !fortran || shapeText === undefined) throw new Error(`${path}: bad .npy header`);
  if (fortran === 'True') throw new Error(`${path}: Fortran order is not supported`);
  const kind = DTYPES[descr];
  if (!kind) throw new Error(`${path}: dtype ${descr} is not supported`);
  const shape = shapeText
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const [Ctor, size] = kind;
  const offset = start + headerLen;
  if (buf.length - offset !== count * size) {
    throw new Error(`${path}: ${buf.length - offset} data bytes, shape needs ${count * size}`);
  }
  // Copy into an aligned buffer of its own.
  const bytes = new Uint8Array(count * size);
  bytes.set(buf.subarray(offset));
  return { dtype: descr, shape, data: new Ctor(bytes.buffer) };
}

/** The first `n` MNIST test images (as [0, 1] Float32Arrays of 784) and their labels. */
export function mnistSamples(modelsDir, n) {
  const images = readNpy(new URL(`file://${modelsDir}/mnist_test_images.npy`));
  const labels = readNpy(new URL(`file://${modelsDir}/mnist_test_labels.npy`));
  const [total, h, w] = images.shape;
  const per = h * w;
  const out = [];
  for (let i = 0; i < Math.min(n, total); i++) {
    const x = new Float32Array(per);
    for (let j = 0; j < per; j++) x[j] = images.data[i * per + j] / 255;
    out.push({ index: i, label: Number(labels.data[i]), pixels: x });
  }
  return out;
}
