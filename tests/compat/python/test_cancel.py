"""Batch cancellation through the official SDK."""

from __future__ import annotations

import openai
import pytest

from batchd_compat import chat_line, uniq

FAST = 4
SLOW = 20


def _slow_rows(tag: str, fast: int = FAST, slow: int = SLOW, delay_ms: int = 1500):
    # fake-model-2 runs at most 4 requests at once, so most slow lines are still queued at cancel time
    rows = [chat_line(f"{tag}-fast-{i}", f"fast {i} {tag}", model="fake-model-2") for i in range(fast)]
    rows += [
        chat_line(f"{tag}-slow-{i}", f"slow {i} {tag} [delay_ms={delay_ms}]", model="fake-model-2")
        for i in range(slow)
    ]
    return rows


def _check_cancelled_results(h, b, rows):
    total = len(rows)
    assert b.status == "cancelled", b
    assert b.cancelling_at is not None and b.cancelled_at is not None, b
    assert b.created_at <= b.cancelling_at <= b.cancelled_at
    assert b.completed_at is None and b.failed_at is None and b.expired_at is None
    assert b.request_counts.total == total

    out = h.download_lines(b.output_file_id)
    err = h.download_lines(b.error_file_id)
    ids = [ln["custom_id"] for ln in out + err]
    assert sorted(ids) == sorted(r["custom_id"] for r in rows), "every custom_id exactly once across output+error"

    for ln in out:
        assert set(ln) == {"id", "custom_id", "response", "error"}
        assert ln["id"].startswith("batch_req_")
        assert ln["error"] is None
        assert ln["response"]["status_code"] == 200
        assert isinstance(ln["response"]["body"], dict)

    cancelled_lines = [ln for ln in err if ln["response"] is None]
    assert cancelled_lines, "unexecuted lines must appear in the error file"
    for ln in cancelled_lines:
        assert set(ln) == {"id", "custom_id", "response", "error"}
        assert ln["id"].startswith("batch_req_")
        assert ln["error"]["code"] == "batch_cancelled", ln
        assert isinstance(ln["error"]["message"], str) and ln["error"]["message"]

    assert b.request_counts.completed == len(out)
    # batchd counts unexecuted lines as failed (docs/compatibility.md), so the counts add up to total
    assert b.request_counts.failed == len(err), (b.request_counts, len(err))
    assert b.request_counts.completed + b.request_counts.failed == total
    if b.output_file_id is None:
        assert not out
    if b.error_file_id is not None:
        ef = h.client.files.retrieve(b.error_file_id)
        assert ef.filename == f"{b.id}_error.jsonl"
        assert ef.purpose == "batch_output"
    return out, err, cancelled_lines


def test_cancel_running_batch_keeps_partial_results(h):
    tag = uniq("cx")
    rows = _slow_rows(tag)
    before = h.backend_stats()["requests"]
    f = h.upload(rows)
    b = h.create_batch(f.id)
    h.wait_batch(
        b.id,
        until=lambda x: x.request_counts.completed >= 1 or x.status in ("completed", "failed"),
        timeout=30,
        what="at least one completed line",
    )
    c = h.client.batches.cancel(b.id)
    assert c._request_id
    assert c.id == b.id
    assert c.status == "cancelling", c
    assert c.cancelling_at is not None

    final = h.wait_batch(b.id)
    out, err, cancelled_lines = _check_cancelled_results(h, final, rows)
    assert final.output_file_id is not None, "partial results must be in the output file"
    assert len(out) >= 1
    # not every line reached the backend
    sent = h.backend_stats()["requests"] - before
    assert sent < len(rows), sent
    assert len(cancelled_lines) >= len(rows) - sent

    # cancelling an already cancelled batch is accepted
    again = h.client.batches.cancel(b.id)
    assert again.status == "cancelled"
    assert again.cancelled_at == final.cancelled_at


def test_cancel_immediately_after_create(h):
    tag = uniq("ci")
    rows = _slow_rows(tag, fast=0, slow=12, delay_ms=800)
    f = h.upload(rows)
    b = h.create_batch(f.id)
    before = h.backend_stats()["requests"]
    c = h.client.batches.cancel(b.id)
    assert c.status == "cancelling", c
    final = h.wait_batch(b.id)
    if final.in_progress_at is None:
        # cancelled while still validating: nothing was read or executed, no result files
        assert final.status == "cancelled", final
        assert final.cancelling_at is not None and final.cancelled_at is not None
        assert final.completed_at is None and final.failed_at is None
        assert (final.request_counts.total, final.request_counts.completed, final.request_counts.failed) == (0, 0, 0)
        assert final.output_file_id is None and final.error_file_id is None
        assert h.backend_stats()["requests"] == before
    else:
        _check_cancelled_results(h, final, rows)


def _assert_conflict_single_request(h, batch_id: str, status: str) -> None:
    client, sent = h.counting_client()  # default max_retries=2
    assert client.max_retries == 2
    try:
        with pytest.raises(openai.ConflictError) as ei:
            client.batches.cancel(batch_id)
    finally:
        client.close()
    e = ei.value
    cancel_requests = [r for r in sent if r.url.path.endswith(f"/batches/{batch_id}/cancel")]
    assert len(cancel_requests) == 1, (
        f"the 409 reached the server {len(cancel_requests)} times "
        f"(x-should-retry={e.response.headers.get('x-should-retry')!r})"
    )
    assert cancel_requests[0].method == "POST"
    assert e.status_code == 409
    assert e.response.headers.get("x-should-retry") == "false"
    assert e.request_id
    assert e.type == "invalid_request_error"
    assert status in e.message


def test_cancel_completed_batch_conflict_without_retry(h):
    b = h.run_batch([chat_line("done", "already done")])
    assert b.status == "completed"
    _assert_conflict_single_request(h, b.id, "completed")
    assert h.client.batches.retrieve(b.id).status == "completed"


def test_cancel_failed_batch_conflict_without_retry(h):
    b = h.run_batch([])  # empty file -> failed
    assert b.status == "failed"
    _assert_conflict_single_request(h, b.id, "failed")
    assert h.client.batches.retrieve(b.id).status == "failed"


def test_cancel_unknown_batch_is_not_found(h):
    with pytest.raises(openai.NotFoundError) as ei:
        h.client.batches.cancel("batch_doesnotexist0000000000000000")
    assert ei.value.status_code == 404
    assert ei.value.request_id
