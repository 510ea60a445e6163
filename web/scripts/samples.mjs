// Writes samples.json: a few real MNIST test images for the demo page.
// Usage: node web/scripts/samples.mjs MODELS_DIR OUT_FILE [COUNT]

import { writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { mnistSamples } from './npy.mjs';

const [modelsDir, out, count = '12'] = process.argv.slice(2);
if (!modelsDir || !out) {
  console.error('usage: node samples.mjs MODELS_DIR OUT_FILE [COUNT]');
  process.exit(2);
}
const samples = mnistSamples(resolve(modelsDir), Number(count)).map((s) => ({
  index: s.index,
  label: s.label,
  shape: [28, 28],
  // Pixel intensities 0-255, row by row (the model takes them divided by 255).
  pixels: Array.from(s.pixels, (v) => Math.round(v * 255)),
}));
writeFileSync(out, JSON.stringify({ source: 'MNIST test set (models/mnist_test_images.npy)', samples }));
console.log(`wrote ${samples.length} samples to ${out}`);
