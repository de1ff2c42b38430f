"""Session harness for the official-OpenAI-Python-SDK compatibility suite.

Starts the fake backend ($BATCHD_FAKE_BACKEND_BIN) and batchd ($BATCHD_BIN serve)
once per session, and hands tests a `Harness` (fixture `h`) holding an
`openai.OpenAI` client pointed at batchd plus helpers built on the SDK's own calls.
"""

from __future__ import annotations

import openai
import pytest

from batchd_compat import (
    MAX_ATTEMPTS,
    MAX_BATCH_INPUT_BYTES,
    MAX_BATCH_LINES,
    MAX_LINE_BYTES,
    MAX_UPLOAD_BYTES,
    SLOW_MODEL_CONCURRENCY,
    _LOGS,
    Harness,
    _closed_port,
    _Proc,
    _require_bin,
    compat_backends,
    start_postgres,
    start_s3,
)


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    batchd_bin = _require_bin("BATCHD_BIN")
    fake_bin = _require_bin("BATCHD_FAKE_BACKEND_BIN")
    base = tmp_path_factory.mktemp("batchd")
    procs: list[_Proc] = []
    try:
        fake = _Proc("fake-backend", [fake_bin, "--listen", "127.0.0.1:0"], base)
        procs.append(fake)
        fake_url = fake.wait_listening("fake backend")

        dead_port = _closed_port()
        storage = start_s3(base, procs) if "s3" in compat_backends() else ""
        if "postgres" in compat_backends():
            storage += start_postgres()
        data_dir = base / "data"
        data_dir.mkdir()
        config = f"""\
[server]
listen = "127.0.0.1:0"
data_dir = "{data_dir}"

[limits]
max_upload_bytes = {MAX_UPLOAD_BYTES}
max_batch_input_bytes = {MAX_BATCH_INPUT_BYTES}
max_batch_lines = {MAX_BATCH_LINES}
max_line_bytes = {MAX_LINE_BYTES}

[execution]
max_attempts = {MAX_ATTEMPTS}
retry_initial_backoff_ms = 20
retry_max_backoff_ms = 100
request_timeout_secs = 10

[[models]]
name = "fake-model"
url = "{fake_url}/v1"

[[models]]
name = "fake-model-2"
url = "{fake_url}/v1"
max_concurrency = {SLOW_MODEL_CONCURRENCY}

[[models]]
name = "dead-model"
url = "http://127.0.0.1:{dead_port}/v1"
{storage}"""
        cfg_path = base / "batchd.toml"
        cfg_path.write_text(config)

        server = _Proc("batchd", [batchd_bin, "serve", "--config", str(cfg_path)], base)
        procs.append(server)
        url = server.wait_listening("batchd")
        yield {"url": url, "backend_url": fake_url, "base": base, "procs": procs}
    finally:
        for p in reversed(procs):
            p.stop()


@pytest.fixture(scope="session")
def client(servers):
    c = openai.OpenAI(base_url=f"{servers['url']}/v1", api_key="test")
    yield c
    c.close()


@pytest.fixture(scope="session")
def backend_url(servers):
    return servers["backend_url"]


@pytest.fixture(scope="session")
def h(servers, client, tmp_path_factory) -> Harness:
    return Harness(
        client=client,
        url=servers["url"],
        backend_url=servers["backend_url"],
        tmp=tmp_path_factory.mktemp("jsonl"),
    )


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if exitstatus != 0 and _LOGS:
        terminalreporter.write_line("batchd compat: process stderr logs: " + ", ".join(_LOGS))
