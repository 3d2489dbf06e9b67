// Build {{name}}.wasm (a WebAssembly component) from app.js with componentize-js.
// Every optional WASI feature is disabled: the component imports only the sluice world.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';

const { component } = await componentize({
  sourcePath: 'app.js',
  witPath: 'wit',
  worldName: 'batch-plugin',
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
await writeFile('{{name}}.wasm', component);
console.log('built {{name}}.wasm');
