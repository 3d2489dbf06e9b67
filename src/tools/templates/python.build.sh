#!/usr/bin/env bash
# Build {{name}}.wasm (a WebAssembly component) from app.py with componentize-py.
set -euo pipefail
cd "$(dirname "$0")"
scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
"$scripts/componentize-py" --version 2>/dev/null | grep -q 0.25.1 || python3 -m pip install -q componentize-py==0.25.1
"$scripts/componentize-py" -d wit -w batch-plugin componentize app -o "{{name}}.wasm"
echo "built {{name}}.wasm"
