#!/usr/bin/env bash
# Installs what building and testing batchd needs on a fresh Debian machine:
# system packages, the Python and Node packages of the SDK compatibility suites.
# Safe to run again: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

build_only=false
[ "${1:-}" = "--build-only" ] && build_only=true

# cmake and clang build llama.cpp (the embedded engine); libclang drives bindgen.
# postgresql: the server binaries (initdb, postgres) of the throwaway cluster
# that the PostgreSQL store's tests start (tests/common/postgres.rs).
need_apt=()
for pkg in pkg-config curl cmake clang libclang-dev postgresql; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

if $build_only; then
  exit 0
fi

# cargo-fuzz runs the fuzz targets (scripts/fuzz.sh) with the stable toolchain.
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

# An S3-compatible server for the object-store tests (tests/s3_storage.rs):
# s3s-fs, pure Rust, from crates.io. 0.14.1 is the last release that builds
# with this machine's rustc 1.95.
if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]; then
  echo "setup: installing s3s-fs"
  cargo install s3s-fs --version 0.14.1 --features binary --locked
fi

# Python SDK suite: a virtualenv inside the checkout, pinned requirements.
if [ ! -x .venv-compat/bin/python ]; then
  python3 -m venv .venv-compat
fi
req=tests/compat/python/requirements.txt
stamp=.venv-compat/.requirements-installed
if [ ! -f "$stamp" ] || ! cmp -s "$req" "$stamp"; then
  echo "setup: installing Python test packages"
  .venv-compat/bin/pip install -q --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi

# Node SDK suite: exactly what package-lock.json pins.
if [ ! -d tests/compat/node/node_modules/openai ] || [ tests/compat/node/package-lock.json -nt tests/compat/node/node_modules ]; then
  echo "setup: installing Node test packages"
  (cd tests/compat/node && npm ci --no-audit --no-fund --loglevel=error)
fi

# The default model, for the end-to-end test through the real engine.
scripts/setup-model.sh .models/gemma-3-270m-q4_k_m.gguf
