#!/usr/bin/env bash
# Print the source directory of crate NAME at exact VERSION, downloading it from crates.io into
# cargo's registry if needed (`cargo metadata` on a throw-away manifest; nothing is built).
#   crate-src.sh NAME VERSION
set -euo pipefail
name=$1 version=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src" && touch "$tmp/src/lib.rs"
cat >"$tmp/Cargo.toml" <<TOML
[package]
name = "crate-src-probe"
version = "0.0.0"
edition = "2021"
[dependencies]
$name = "=$version"
[workspace]
TOML
cargo metadata --quiet --format-version 1 --manifest-path "$tmp/Cargo.toml" |
  python3 -c '
import json, os, sys
meta = json.load(sys.stdin)
name, version = sys.argv[1], sys.argv[2]
for p in meta["packages"]:
    if p["name"] == name and p["version"] == version:
        print(os.path.dirname(p["manifest_path"]))
        break
else:
    sys.exit(f"crate {name} {version} not found")' "$name" "$version"
