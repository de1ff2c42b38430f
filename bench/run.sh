#!/usr/bin/env bash
# Builds batchd in release mode and runs one benchmark from bench/.
# Usage: bench/run.sh BENCH [args...], for example
#   bench/run.sh overhead [--lines N] [--concurrency C]
#   bench/run.sh models [--lines N] [--slots S] [--ms-per-token T]
#   bench/run.sh engine [--model FILE.gguf] [--tokens N] [--threads T]
#   bench/run.sh fleet [--lines N-per-backend] [--slots S] [--ms-per-token T]
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:?usage: bench/run.sh BENCH [args...]}"
shift
cargo build --release --locked --bins
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
cargo bench --locked --bench "$name" -- --bin-dir "$target_dir/release" "$@"
