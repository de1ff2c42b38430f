#!/usr/bin/env bash
# Runs batchd's main job on its embedded defaults: installs the build
# dependencies and the default model, builds in release mode, and starts the
# server on 127.0.0.1:8080 serving Gemma 3 270M through the embedded CPU
# engine. Extra arguments go to `batchd serve` (for example --config FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --build-only
scripts/setup-model.sh
cargo build --release --locked --bin batchd
exec target/release/batchd serve "$@"
