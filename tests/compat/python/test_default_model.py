"""batchd's main job on its embedded defaults: no [[models]] configured, the
default model (Gemma 3 270M, installed by scripts/setup-model.sh) served by the
embedded engine, driven end to end by the official SDK."""

from __future__ import annotations

import os
import time
from pathlib import Path

import openai
import pytest

from batchd_compat import _Proc, _require_bin, jsonl_bytes

MODEL = "gemma-3-270m"


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    gguf = os.environ.get("BATCHD_DEFAULT_MODEL")
    if not gguf or not Path(gguf).is_file():
        pytest.fail("BATCHD_DEFAULT_MODEL must name the installed default model (scripts/test.sh sets it)")
    root = tmp_path_factory.mktemp("default")
    data = root / "data"
    (data / "models").mkdir(parents=True)
    (data / "models" / "gemma-3-270m-q4_k_m.gguf").symlink_to(Path(gguf).resolve())
    config = root / "batchd.toml"
    # Only the listen address and data directory: no [[models]] at all.
    config.write_text(f'[server]\nlisten = "127.0.0.1:0"\ndata_dir = "{data}"\n')
    proc = _Proc("batchd-default", [_require_bin("BATCHD_BIN"), "serve", "--config", str(config)], root)
    url = proc.wait_listening("batchd", timeout=300)
    yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    proc.stop()


def run(client, rows, endpoint):
    f = client.files.create(file=("in.jsonl", jsonl_bytes(rows)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h")
    deadline = time.monotonic() + 600
    while b.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, b
        time.sleep(0.5)
        b = client.batches.retrieve(b.id)
    return b


def lines(client, file_id):
    import json

    return [json.loads(l) for l in client.files.content(file_id).text.splitlines()]


def test_default_model_is_listed(default_server):
    ids = [m.id for m in default_server.models.list().data]
    assert ids == [MODEL]


def test_chat_batch_runs_on_the_real_model(default_server):
    prompts = ["The capital of France is", "Write one word about the sea:", "1, 2, 3, 4,"]
    rows = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": MODEL, "messages": [{"role": "user", "content": p}], "max_tokens": 12, "temperature": 0}}
        for i, p in enumerate(prompts)
    ]
    b = run(default_server, rows, "/v1/chat/completions")
    assert b.status == "completed", b
    assert b.model == MODEL
    assert b.request_counts.completed == 3 and b.request_counts.failed == 0
    out = lines(default_server, b.output_file_id)
    completion_tokens = 0
    for line in out:
        body = line["response"]["body"]
        text = body["choices"][0]["message"]["content"]
        assert isinstance(text, str) and text.strip(), line
        assert not text.startswith("echo:"), "must be text the model produced"
        usage = body["usage"]
        assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 12
        completion_tokens += usage["completion_tokens"]
    assert b.usage.output_tokens == completion_tokens
    assert b.usage.input_tokens > 15
    assert b.usage.total_tokens == b.usage.input_tokens + b.usage.output_tokens


def test_embeddings_batch_runs_on_the_real_model(default_server):
    rows = [
        {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": MODEL, "input": text}}
        for i, text in enumerate(["a cat sat on the mat", "quantum chromodynamics"])
    ]
    b = run(default_server, rows, "/v1/embeddings")
    assert b.status == "completed", b
    out = {l["custom_id"]: l["response"]["body"] for l in lines(default_server, b.output_file_id)}
    a, c = out["e0"]["data"][0]["embedding"], out["e1"]["data"][0]["embedding"]
    assert len(a) == 640  # Gemma 3 270M's width
    assert abs(sum(x * x for x in a) - 1.0) < 1e-3
    assert a != c
    assert b.usage.input_tokens > 0 and b.usage.output_tokens == 0
