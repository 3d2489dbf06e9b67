// Build a JavaScript plugin into a component: node build-js.mjs <dir> <out.wasm>
// <dir>/app.js is an ES module exporting `handler` and `batchHandler` (the world
// sluice:plugin/batch-plugin: handler and batch-handler).
// Every optional WASI feature is disabled, so the component imports only our world.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const [dir, out] = process.argv.slice(2);
if (!dir || !out) {
  console.error('usage: node build-js.mjs <plugin dir> <out.wasm>');
  process.exit(2);
}
const { component } = await componentize({
  sourcePath: join(dir, 'app.js'),
  witPath: new URL('../wit', import.meta.url).pathname,
  worldName: 'batch-plugin',
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
await writeFile(out, component);
console.log(`built ${out} (${component.length} bytes)`);
