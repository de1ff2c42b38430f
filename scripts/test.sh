#!/usr/bin/env bash
# The whole test suite: formatting and lints, Rust unit and integration tests
# (the real server against a fake backend), then the official OpenAI Python and
# Node SDKs driving the real binary over HTTP. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
# `cargo test` also builds both binaries (the integration tests run them), with
# the same features as the tests: a separate `cargo build` would resolve
# features differently and compile llama.cpp once more.
echo "== cargo test"
cargo test --locked

# Bounded fuzzing of the JSONL validator and the multipart upload path; prints
# each target's execution count.
echo "== cargo fuzz"
scripts/fuzz.sh "${BATCHD_FUZZ_SECONDS:-60}"

# The container image cannot be built here (its base images come from a
# container registry, out of reach): the Dockerfile and docker/ are linted.
echo "== Dockerfile lint"
scripts/lint-dockerfile.sh

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
export BATCHD_BIN="$target_dir/debug/batchd"
export BATCHD_FAKE_BACKEND_BIN="$target_dir/debug/batchd-fake-backend"
export BATCHD_DEFAULT_MODEL="$PWD/.models/gemma-3-270m-q4_k_m.gguf"

echo "== OpenAI Python SDK compatibility"
.venv-compat/bin/python -m pytest tests/compat/python -q -p no:cacheprovider
echo "== OpenAI Node SDK compatibility"
(cd tests/compat/node && npm test)

# The same suites against a batchd on PostgreSQL (a throwaway cluster,
# scripts/pg-test-cluster.sh) with its file bytes in a real S3-compatible
# server (s3s-fs): the SDKs must not see a difference. The default-model test
# starts its own server on the defaults, so it is not repeated.
echo "== OpenAI Python and Node SDK compatibility, on PostgreSQL + S3"
BATCHD_COMPAT_BACKENDS=postgres,s3 .venv-compat/bin/python -m pytest tests/compat/python -q -p no:cacheprovider \
  --ignore tests/compat/python/test_default_model.py
(cd tests/compat/node && BATCHD_COMPAT_BACKENDS=postgres,s3 npm test)
