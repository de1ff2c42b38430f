"""Shared helpers for the batchd OpenAI-SDK compatibility suite.

Process management, constants, JSONL line builders and the `Harness` object
that conftest.py hands to tests as fixture `h`.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import httpx2
import openai
import pytest

# ---------------------------------------------------------------------------
# Constants shared by tests (must match the config written below).
# ---------------------------------------------------------------------------

MAX_BATCH_LINES = 1000
MAX_BATCH_INPUT_BYTES = 1048576
MAX_LINE_BYTES = 65536
MAX_UPLOAD_BYTES = 4194304
MAX_ATTEMPTS = 3
SLOW_MODEL_CONCURRENCY = 4  # fake-model-2

STARTUP_TIMEOUT_S = 30.0
BATCH_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.1

TERMINAL_STATUSES = {"completed", "failed", "expired", "cancelled"}

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"

# Contract §4.5: every key of the Batch object.
BATCH_KEYS = {
    "id",
    "object",
    "endpoint",
    "model",
    "errors",
    "input_file_id",
    "completion_window",
    "status",
    "output_file_id",
    "error_file_id",
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "request_counts",
    "usage",
    "metadata",
}

FILE_KEYS = {"id", "object", "bytes", "created_at", "expires_at", "filename", "purpose", "status"}

LISTEN_RE = re.compile(r"listening on (http://[^\s]+)")

_LOGS: list[str] = []


# ---------------------------------------------------------------------------
# Process management
# ---------------------------------------------------------------------------


class _Proc:
    def __init__(self, name: str, cmd: list[str], log_dir: Path) -> None:
        self.name = name
        self.cmd = cmd
        self.stderr_path = log_dir / f"{name}.stderr.log"
        self.stdout_lines: list[str] = []
        self._q: "queue.Queue[Optional[str]]" = queue.Queue()
        self._stderr = open(self.stderr_path, "wb")
        _LOGS.append(str(self.stderr_path))
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:  # keeps draining after startup so the pipe never fills
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self.stdout_lines.append(line)
            self._q.put(line)
        self._q.put(None)

    def stderr_text(self) -> str:
        try:
            self._stderr.flush()
        except ValueError:
            pass
        try:
            return self.stderr_path.read_text(errors="replace")[-8000:]
        except OSError:
            return "<stderr unavailable>"

    def _fail(self, why: str) -> None:
        self.stop()
        pytest.fail(
            f"{self.name}: {why}\ncommand: {' '.join(self.cmd)}\n"
            f"stdout so far: {self.stdout_lines!r}\nstderr:\n{self.stderr_text()}",
            pytrace=False,
        )

    def wait_listening(self, must_start_with: str, timeout: float = STARTUP_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail(f"no '{must_start_with} ... listening on' line within {timeout:.0f}s")
            try:
                line = self._q.get(timeout=min(remaining, 0.25))
            except queue.Empty:
                rc = self.proc.poll()
                if rc is not None:
                    # give the reader a moment to flush remaining stdout
                    time.sleep(0.1)
                    self._fail(f"exited with code {rc} before printing the listening line")
                continue
            if line is None:
                rc = self.proc.wait(timeout=5)
                self._fail(f"closed stdout (exit code {rc}) before printing the listening line")
            m = LISTEN_RE.search(line)
            if m and line.strip().startswith(must_start_with):
                return m.group(1).rstrip("/")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        try:
            self._stderr.close()
        except Exception:
            pass


def _closed_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def compat_backends() -> set[str]:
    """What $BATCHD_COMPAT_BACKENDS asks batchd to run on besides its
    defaults (SQLite, local disk): "s3" puts file bytes in a real
    S3-compatible server (s3s-fs, installed by scripts/setup.sh), "postgres"
    the metadata in a throwaway PostgreSQL cluster (scripts/pg-test-cluster.sh)."""
    wanted = {b.strip() for b in os.environ.get("BATCHD_COMPAT_BACKENDS", "").split(",") if b.strip()}
    unknown = wanted - {"s3", "postgres"}
    if unknown:
        pytest.fail(f"BATCHD_COMPAT_BACKENDS: unknown {sorted(unknown)}", pytrace=False)
    return wanted


def start_s3(base: Path, procs: list) -> str:
    """Starts s3s-fs on a free loopback port with a bucket `compat`, and
    returns the `[storage]` section that points batchd at it."""
    binary = shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs")
    if not os.path.exists(binary):
        pytest.fail("s3s-fs not found; scripts/setup.sh installs it", pytrace=False)
    root = base / "s3"
    (root / "compat").mkdir(parents=True)
    port = _closed_port()
    proc = _Proc(
        "s3s-fs",
        [binary, "--host", "127.0.0.1", "--port", str(port), "--access-key", "compat-key", "--secret-key", "compat-secret", str(root)],
        base,
    )
    procs.append(proc)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.proc.poll() is not None:
                proc._fail("did not listen")
            time.sleep(0.05)
    return f"""
[storage]
url = "s3://compat/batchd"
endpoint = "http://127.0.0.1:{port}"
region = "us-east-1"
access_key_id = "compat-key"
secret_access_key = "compat-secret"
"""


def start_postgres() -> str:
    """Starts a PostgreSQL cluster that lives as long as this process, and
    returns the `[store]` section that points batchd at it."""
    script = Path(__file__).resolve().parents[3] / "scripts" / "pg-test-cluster.sh"
    done = subprocess.run([str(script), str(os.getpid())], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.fail(f"pg-test-cluster.sh failed: {done.stderr}", pytrace=False)
    return f'\n[store]\nurl = "{done.stdout.strip()}"\n'


def _require_bin(var: str) -> str:
    path = os.environ.get(var)
    if not path:
        pytest.fail(f"environment variable {var} is not set (path to the binary)", pytrace=False)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{var}={path!r} is not an executable file", pytrace=False)
    return path


# ---------------------------------------------------------------------------
# Harness
# ---------------------------------------------------------------------------


def words(text: str) -> int:
    """Fake backend token formula: whitespace-separated words, at least 1."""
    return max(1, len(text.split()))


def uniq(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass(repr=False)
class Harness:
    client: openai.OpenAI
    url: str  # batchd base URL, no /v1
    backend_url: str  # fake backend base URL, no /v1
    tmp: Path
    seen_statuses: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Harness(url={self.url!r}, backend_url={self.backend_url!r})"

    # ---- JSONL / line builders -------------------------------------------

    def write_jsonl(self, rows: Iterable[Any], name: Optional[str] = None) -> Path:
        """Write rows (dicts -> compact JSON; str -> written verbatim) to a .jsonl file."""
        path = self.tmp / (name or f"{uniq('in')}.jsonl")
        path.write_bytes(jsonl_bytes(rows))
        return path

    # ---- SDK wrappers -----------------------------------------------------

    def upload(self, rows_or_bytes: Any, purpose: str = "batch", filename: Optional[str] = None):
        if isinstance(rows_or_bytes, (bytes, bytearray)):
            data = bytes(rows_or_bytes)
        else:
            data = jsonl_bytes(rows_or_bytes)
        f = self.client.files.create(file=(filename or f"{uniq('in')}.jsonl", data), purpose=purpose)
        assert f.id, f
        return f

    def create_batch(
        self,
        input_file_id: str,
        endpoint: str = CHAT,
        metadata: Optional[dict] = None,
        **kw: Any,
    ):
        if metadata is not None:
            kw["metadata"] = metadata
        return self.client.batches.create(
            input_file_id=input_file_id, endpoint=endpoint, completion_window="24h", **kw
        )

    def wait_batch(
        self,
        batch_id: str,
        until: Callable[[Any], bool] = lambda b: b.status in TERMINAL_STATUSES,
        timeout: float = BATCH_TIMEOUT_S,
        what: str = "terminal status",
    ):
        statuses: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            b = self.client.batches.retrieve(batch_id)
            if not statuses or statuses[-1] != b.status:
                statuses.append(b.status)
            self.seen_statuses[batch_id] = statuses
            if until(b):
                return b
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"batch {batch_id} did not reach {what} within {timeout}s; "
                    f"statuses seen: {statuses}; last: {b.to_dict()}"
                )
            time.sleep(POLL_INTERVAL_S)

    def run_batch(self, rows: Any, endpoint: str = CHAT, metadata: Optional[dict] = None, **kw: Any):
        f = self.upload(rows)
        b = self.create_batch(f.id, endpoint=endpoint, metadata=metadata, **kw)
        assert b.status == "validating", b
        return self.wait_batch(b.id)

    def download(self, file_id: str) -> bytes:
        return self.client.files.content(file_id).content

    def download_lines(self, file_id: Optional[str]) -> list[dict]:
        if file_id is None:
            return []
        data = self.download(file_id)
        out = []
        for raw in data.decode("utf-8").split("\n"):
            if raw.strip():
                out.append(json.loads(raw))
        return out

    def raw_batch(self, batch_id: str) -> dict:
        """The batch exactly as sent on the wire (via the SDK's raw-response API)."""
        raw = self.client.batches.with_raw_response.retrieve(batch_id)
        return raw.http_response.json()

    # ---- fake backend -----------------------------------------------------

    def backend_stats(self) -> dict:
        r = httpx2.get(f"{self.backend_url}/fake/stats", timeout=10)
        r.raise_for_status()
        return r.json()

    # ---- clients ------------------------------------------------------------

    def counting_client(self, **kw: Any):
        """An SDK client (default retry policy) that records every HTTP request it sends."""
        sent: list[httpx2.Request] = []

        def hook(request: httpx2.Request) -> None:
            sent.append(request)

        http_client = openai.DefaultHttpxClient(event_hooks={"request": [hook]})
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="test", http_client=http_client, **kw)
        return client, sent


def jsonl_bytes(rows: Iterable[Any]) -> bytes:
    parts = []
    for r in rows:
        if isinstance(r, (bytes, bytearray)):
            parts.append(bytes(r))
        elif isinstance(r, str):
            parts.append(r.encode("utf-8"))
        else:
            parts.append(json.dumps(r, separators=(",", ":")).encode("utf-8"))
    if not parts:
        return b""
    return b"\n".join(parts) + b"\n"


def chat_line(custom_id: str, text: str, model: str = "fake-model", **body_extra: Any) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 50}
    body.update(body_extra)
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def completion_line(custom_id: str, prompt: str, model: str = "fake-model") -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": COMPLETIONS,
        "body": {"model": model, "prompt": prompt, "max_tokens": 20},
    }


def embedding_line(custom_id: str, inp: Any, model: str = "fake-model") -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": EMBEDDINGS, "body": {"model": model, "input": inp}}


def responses_line(custom_id: str, inp: str, model: str = "fake-model") -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": RESPONSES, "body": {"model": model, "input": inp}}
