"""Webhooks verified by the official SDK's `webhooks.unwrap()`: a receiver
that fails at first, a restart of batchd while the event is still pending,
then a delivery with the same `webhook-id`, signed so the SDK accepts it."""

from __future__ import annotations

import base64
import http.server
import threading
import time

import openai

from batchd_compat import _Proc, _require_bin, chat_line, jsonl_bytes

SECRET = "whsec_" + base64.b64encode(b"batchd-compat-test-webhook-key!!").decode()


class Receiver:
    def __init__(self) -> None:
        self.accept = False
        self.attempts: list[tuple[dict, bytes, int]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                status = 200 if receiver.accept else 500
                receiver.attempts.append(({k.lower(): v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, pred, what: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.attempts!r}"
            time.sleep(0.05)


def _start(batchd_bin: str, config: str, tmp_path, name: str) -> tuple[_Proc, str]:
    proc = _Proc(name, [batchd_bin, "serve", "--config", config], tmp_path)
    return proc, proc.wait_listening("batchd")


def test_webhooks_are_signed_retried_and_survive_a_restart(tmp_path):
    batchd_bin = _require_bin("BATCHD_BIN")
    fake_bin = _require_bin("BATCHD_FAKE_BACKEND_BIN")
    receiver = Receiver()
    procs: list[_Proc] = []
    try:
        fake = _Proc("wh-fake-backend", [fake_bin, "--listen", "127.0.0.1:0"], tmp_path)
        procs.append(fake)
        fake_url = fake.wait_listening("fake backend")
        config = tmp_path / "batchd.toml"
        config.write_text(
            f"""\
[server]
listen = "127.0.0.1:0"
data_dir = "{tmp_path / 'data'}"

[webhook_delivery]
allow_private_addresses = true
retry_initial_secs = 0.2

[[webhooks]]
project = "default"
url = "{receiver.url}"
secret = "{SECRET}"

[[models]]
name = "fake-model"
url = "{fake_url}/v1"
"""
        )
        server, url = _start(batchd_bin, str(config), tmp_path, "wh-batchd-1")
        procs.append(server)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        f = client.files.create(file=("in.jsonl", jsonl_bytes([chat_line("a", "hi")])), purpose="batch")
        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        while client.batches.retrieve(batch.id).status != "completed":
            time.sleep(0.05)
        receiver.wait(lambda: len(receiver.attempts) >= 2, "two failed attempts")

        # batchd stops with the event undelivered; it is delivered after a restart.
        server.stop()
        receiver.accept = True
        server, url = _start(batchd_bin, str(config), tmp_path, "wh-batchd-2")
        procs.append(server)
        receiver.wait(lambda: any(status == 200 for _, _, status in receiver.attempts), "a delivery")

        ids = {headers["webhook-id"] for headers, _, _ in receiver.attempts}
        assert len(ids) == 1, f"every attempt carries the same webhook-id: {ids}"
        headers, body, _ = next(a for a in receiver.attempts if a[2] == 200)
        assert headers["content-type"] == "application/json"
        event = openai.OpenAI(api_key="unused").webhooks.unwrap(body, headers, secret=SECRET)
        assert event.type == "batch.completed"
        assert event.data.id == batch.id
        assert event.id.startswith("evt_")
        # A wrong secret does not verify.
        wrong = "whsec_" + base64.b64encode(b"another-key-another-key-another!").decode()
        try:
            openai.OpenAI(api_key="unused").webhooks.unwrap(body, headers, secret=wrong)
            raise AssertionError("a wrong secret verified")
        except openai.InvalidWebhookSignatureError:
            pass
    finally:
        for p in reversed(procs):
            p.stop()
        receiver.server.shutdown()
