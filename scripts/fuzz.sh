#!/usr/bin/env bash
# Runs batchd's cargo-fuzz targets for a bounded time each and prints how many
# inputs each one executed. Used by scripts/test.sh; also useful by hand for a
# longer run:  scripts/fuzz.sh 600
#
# The targets (fuzz/fuzz_targets/): `jsonl_line` (the batch input validator)
# and `multipart_upload` (POST /v1/files through the real router and store).
# Stable Rust is enough: RUSTC_BOOTSTRAP lets cargo-fuzz pass its -Z flags, and
# no sanitizer runtime is needed (`-s none`; batchd has no unsafe code).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi
export RUSTC_BOOTSTRAP=1

cd fuzz
cargo fuzz build -s none
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in jsonl_line multipart_upload; do
    mkdir -p "$work/$target"
    log="$work/$target.log"
    # A crash makes libFuzzer exit non-zero and write the input to fuzz/artifacts/.
    if ! cargo fuzz run -s none "$target" "$work/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -max_len=8192 -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz $target: FAILED (reproducer in fuzz/artifacts/$target/)"
        exit 1
    fi
    runs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*')
    corpus=$(find "$work/$target" -type f | wc -l)
    echo "fuzz $target: $runs inputs in ${seconds}s, no crash, corpus $corpus"
done
