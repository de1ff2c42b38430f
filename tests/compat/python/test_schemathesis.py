"""Property-based API fuzzing: schemathesis, driven by `openapi.yaml`, against a
fresh batchd (its own data directory, so the generated files and batches do
not disturb the other tests).

Every schemathesis check runs: no 5xx, responses and headers that match the
spec, schema-valid requests accepted, schema-violating ones refused, stateful
sequences through the spec's links (upload, then retrieve, download, delete;
create a batch, then retrieve and cancel it). The few documented exceptions
are in `schemathesis.toml` beside this file.

`BATCHD_SCHEMATHESIS_EXAMPLES` sets the examples per operation (default 100).
`BATCHD_SCHEMATHESIS_SEED` picks the generator's seed: fixed by default so CI
is repeatable; `random` explores new inputs on every run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from batchd_compat import _Proc, _require_bin

HERE = Path(__file__).resolve().parent
SPEC = HERE.parents[2] / "openapi.yaml"
CONFIG = HERE / "schemathesis.toml"


def test_schemathesis_finds_no_failure(tmp_path):
    batchd_bin = _require_bin("BATCHD_BIN")
    fake_bin = _require_bin("BATCHD_FAKE_BACKEND_BIN")
    procs: list[_Proc] = []
    try:
        fake = _Proc("st-fake-backend", [fake_bin, "--listen", "127.0.0.1:0"], tmp_path)
        procs.append(fake)
        fake_url = fake.wait_listening("fake backend")
        (tmp_path / "data").mkdir()
        config = tmp_path / "batchd.toml"
        config.write_text(
            f"""\
[server]
listen = "127.0.0.1:0"
data_dir = "{tmp_path / 'data'}"

[execution]
retry_initial_backoff_ms = 20
retry_max_backoff_ms = 100

[[models]]
name = "fake-model"
url = "{fake_url}/v1"
"""
        )
        server = _Proc("st-batchd", [batchd_bin, "serve", "--config", str(config)], tmp_path)
        procs.append(server)
        url = server.wait_listening("batchd")

        examples = os.environ.get("BATCHD_SCHEMATHESIS_EXAMPLES", "100")
        seed = os.environ.get("BATCHD_SCHEMATHESIS_SEED", "20261127")
        seed_args = [] if seed == "random" else ["--seed", seed]
        st = Path(sys.executable).with_name("schemathesis")
        result = subprocess.run(
            [str(st), "--config-file", str(CONFIG), "--no-color", "run", str(SPEC),
             "--url", url, "--max-examples", examples, *seed_args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        summary = result.stdout[-6000:]
        print(summary)
        assert result.returncode == 0, f"schemathesis found problems:\n{summary}\n{result.stderr[-2000:]}"
        assert server.proc.poll() is None, "batchd died under the fuzzer"
    finally:
        for p in reversed(procs):
            p.stop()
