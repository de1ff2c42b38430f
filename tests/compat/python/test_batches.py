"""Batch lifecycle through the official SDK: create, poll, results, usage, endpoints, retries, listing."""

from __future__ import annotations

import time

from batchd_compat import (
    BATCH_KEYS,
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    MAX_ATTEMPTS,
    RESPONSES,
    chat_line,
    completion_line,
    embedding_line,
    responses_line,
    uniq,
    words,
)

LINE_KEYS = {"id", "custom_id", "response", "error"}
RESPONSE_KEYS = {"status_code", "request_id", "body"}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def expected_usage(texts, *, embeddings: bool = False) -> dict:
    inp = sum(words(t) for t in texts)
    out = 0 if embeddings else sum(words(t) + 1 for t in texts)
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": inp + out,
    }


def assert_success_line(line: dict, custom_id: str) -> dict:
    assert set(line) == LINE_KEYS, line
    assert isinstance(line["id"], str) and line["id"].startswith("batch_req_"), line["id"]
    assert line["custom_id"] == custom_id
    assert line["error"] is None
    resp = line["response"]
    assert isinstance(resp, dict) and set(resp) == RESPONSE_KEYS, resp
    assert resp["status_code"] == 200
    assert isinstance(resp["request_id"], str) and resp["request_id"], resp
    assert isinstance(resp["body"], dict), "response.body must be a JSON object, not a string"
    return resp["body"]


def assert_http_error_line(line: dict, custom_id: str, status: int) -> dict:
    assert set(line) == LINE_KEYS, line
    assert isinstance(line["id"], str) and line["id"].startswith("batch_req_"), line["id"]
    assert line["custom_id"] == custom_id
    assert line["error"] is None, line
    resp = line["response"]
    assert isinstance(resp, dict) and set(resp) == RESPONSE_KEYS, resp
    assert resp["status_code"] == status, resp
    assert isinstance(resp["request_id"], str) and resp["request_id"], resp
    assert isinstance(resp["body"], dict)
    err = resp["body"]["error"]
    assert err["message"] == f"fake backend error {status}"
    assert err["type"] == "fake_error"
    return err


def by_custom_id(lines):
    out = {}
    for ln in lines:
        assert ln["custom_id"] not in out, f"custom_id {ln['custom_id']} appears twice"
        out[ln["custom_id"]] = ln
    return out


def assert_timestamps_completed(b) -> None:
    assert b.status == "completed", b
    assert isinstance(b.created_at, int)
    assert b.in_progress_at is not None and b.finalizing_at is not None and b.completed_at is not None, b
    assert b.created_at <= b.in_progress_at <= b.finalizing_at <= b.completed_at, b
    assert b.expires_at == b.created_at + 86400
    assert b.failed_at is None and b.expired_at is None
    assert b.cancelling_at is None and b.cancelled_at is None
    assert b.errors is None or not b.errors.data


def assert_result_files(h, b) -> None:
    if b.output_file_id is not None:
        f = h.client.files.retrieve(b.output_file_id)
        assert f.purpose == "batch_output"
        assert f.filename == f"{b.id}_output.jsonl"
        assert f.status == "processed"
        assert f.bytes == len(h.download(f.id))
    if b.error_file_id is not None:
        f = h.client.files.retrieve(b.error_file_id)
        assert f.purpose == "batch_output"
        assert f.filename == f"{b.id}_error.jsonl"
        assert f.status == "processed"
        assert f.bytes == len(h.download(f.id))


# ---------------------------------------------------------------------------
# create
# ---------------------------------------------------------------------------


def test_create_returns_validating_batch_with_every_key(h):
    f = h.upload([chat_line("c1", "hello world")])
    raw = h.client.batches.with_raw_response.create(
        input_file_id=f.id,
        endpoint=CHAT,
        completion_window="24h",
        metadata={"purpose": "compat", "n": "1"},
    )
    body = raw.http_response.json()
    assert raw.http_response.headers.get("x-request-id")
    b = raw.parse()
    assert b._request_id
    assert set(body) >= BATCH_KEYS, f"missing keys: {BATCH_KEYS - set(body)}"
    assert body["object"] == "batch"
    assert body["id"].startswith("batch_")
    assert body["status"] == "validating"
    assert body["endpoint"] == CHAT
    assert body["input_file_id"] == f.id
    assert body["completion_window"] == "24h"
    assert isinstance(body["created_at"], int)
    assert body["expires_at"] == body["created_at"] + 86400
    assert body["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert body["metadata"] == {"purpose": "compat", "n": "1"}
    for k in (
        "output_file_id",
        "error_file_id",
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
        "errors",
    ):
        assert body[k] is None, (k, body[k])
    h.wait_batch(b.id)


def test_create_without_metadata_has_null_metadata(h):
    f = h.upload([chat_line("m1", "no metadata")])
    b = h.create_batch(f.id)
    assert h.raw_batch(b.id)["metadata"] is None
    h.wait_batch(b.id)


# ---------------------------------------------------------------------------
# chat end to end
# ---------------------------------------------------------------------------


def test_chat_batch_end_to_end(h):
    ok_texts = {
        "ok-1": "hello world",
        "ok-2": "the quick brown fox jumps over the lazy dog",
        "ok-3": "one",
        "ok-4": "  spaced   out\twords  ",
    }
    bad = {"bad-1": "please fail [status=400]", "bad-2": "nope [status=422] at all"}
    rows = []
    for cid in ["ok-1", "bad-1", "ok-2", "ok-3", "bad-2", "ok-4"]:
        rows.append(chat_line(cid, ok_texts.get(cid) or bad[cid]))
    # a multi-message request: text = contents joined with "\n"
    rows.append(
        {
            "custom_id": "ok-5",
            "method": "POST",
            "url": CHAT,
            "body": {
                "model": "fake-model",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "say hi"},
                ],
            },
        }
    )
    ok_texts["ok-5"] = "be brief\nsay hi"

    meta = {"suite": "compat", "case": "e2e"}
    b = h.run_batch(rows, metadata=meta)
    assert_timestamps_completed(b)
    assert b.model == "fake-model"
    assert b.metadata == meta
    assert b.request_counts.total == 7
    assert b.request_counts.completed == 5
    assert b.request_counts.failed == 2
    assert b.output_file_id and b.error_file_id
    assert b.usage is not None
    assert b.usage.model_dump() == expected_usage(ok_texts.values())

    raw = h.raw_batch(b.id)
    assert set(raw) >= BATCH_KEYS, f"missing keys: {BATCH_KEYS - set(raw)}"
    assert raw["usage"] == expected_usage(ok_texts.values())

    assert_result_files(h, b)
    out = by_custom_id(h.download_lines(b.output_file_id))
    err = by_custom_id(h.download_lines(b.error_file_id))
    assert set(out) == set(ok_texts)
    assert set(err) == set(bad)
    assert not set(out) & set(err), "custom_id in both files"

    line_ids = [ln["id"] for ln in list(out.values()) + list(err.values())]
    assert len(line_ids) == len(set(line_ids)), "batch_req ids must be unique"

    for cid, text in ok_texts.items():
        body = assert_success_line(out[cid], cid)
        assert body["object"] == "chat.completion"
        assert body["model"] == "fake-model"
        assert body["choices"][0]["message"] == {"role": "assistant", "content": f"echo: {text}"}
        w = words(text)
        assert body["usage"] == {"prompt_tokens": w, "completion_tokens": w + 1, "total_tokens": 2 * w + 1}

    assert_http_error_line(err["bad-1"], "bad-1", 400)
    assert_http_error_line(err["bad-2"], "bad-2", 422)


def test_all_success_has_null_error_file(h):
    texts = [f"text number {i}" for i in range(5)]
    b = h.run_batch([chat_line(f"s{i}", t) for i, t in enumerate(texts)])
    assert_timestamps_completed(b)
    assert b.error_file_id is None
    assert b.output_file_id is not None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (5, 5, 0)
    assert b.usage.model_dump() == expected_usage(texts)
    out = by_custom_id(h.download_lines(b.output_file_id))
    assert set(out) == {f"s{i}" for i in range(5)}
    assert_result_files(h, b)


def test_all_failed_still_completes_with_null_output_file(h):
    b = h.run_batch([chat_line(f"f{i}", f"fail {i} [status=400]") for i in range(3)])
    assert_timestamps_completed(b)
    assert b.output_file_id is None
    assert b.error_file_id is not None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (3, 0, 3)
    err = by_custom_id(h.download_lines(b.error_file_id))
    assert set(err) == {"f0", "f1", "f2"}
    for cid, ln in err.items():
        assert_http_error_line(ln, cid, 400)
    assert_result_files(h, b)


def test_many_lines_each_custom_id_exactly_once(h):
    n = 60
    rows = []
    ok, bad = set(), set()
    for i in range(n):
        if i % 7 == 3:
            rows.append(chat_line(f"id-{i}", f"bad {i} [status=400]"))
            bad.add(f"id-{i}")
        else:
            rows.append(chat_line(f"id-{i}", f"good {i}"))
            ok.add(f"id-{i}")
    b = h.run_batch(rows)
    assert_timestamps_completed(b)
    out = h.download_lines(b.output_file_id)
    err = h.download_lines(b.error_file_id)
    all_ids = [ln["custom_id"] for ln in out + err]
    assert sorted(all_ids) == sorted(ok | bad)
    assert {ln["custom_id"] for ln in out} == ok
    assert {ln["custom_id"] for ln in err} == bad
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (n, len(ok), len(bad))


# ---------------------------------------------------------------------------
# other endpoints
# ---------------------------------------------------------------------------


def test_completions_endpoint(h):
    texts = {"c1": "complete this sentence", "c2": "another prompt here please"}
    b = h.run_batch([completion_line(k, v) for k, v in texts.items()], endpoint=COMPLETIONS)
    assert_timestamps_completed(b)
    assert b.endpoint == COMPLETIONS
    assert b.model == "fake-model"
    assert (b.request_counts.completed, b.request_counts.failed) == (2, 0)
    assert b.usage.model_dump() == expected_usage(texts.values())
    out = by_custom_id(h.download_lines(b.output_file_id))
    for cid, text in texts.items():
        body = assert_success_line(out[cid], cid)
        assert body["object"] == "text_completion"
        assert body["choices"][0]["text"] == f"echo: {text}"
        w = words(text)
        assert body["usage"] == {"prompt_tokens": w, "completion_tokens": w + 1, "total_tokens": 2 * w + 1}


def test_embeddings_endpoint(h):
    rows = [
        embedding_line("e1", "embed this text"),
        embedding_line("e2", "x"),
        embedding_line("e3", ["alpha", "beta", "gamma"]),
    ]
    b = h.run_batch(rows, endpoint=EMBEDDINGS)
    assert_timestamps_completed(b)
    assert b.endpoint == EMBEDDINGS
    assert (b.request_counts.completed, b.request_counts.failed) == (3, 0)
    out = by_custom_id(h.download_lines(b.output_file_id))
    total_in = 0
    for cid, n_inputs in (("e1", 1), ("e2", 1), ("e3", 3)):
        body = assert_success_line(out[cid], cid)
        assert body["object"] == "list"
        assert len(body["data"]) == n_inputs
        for i, d in enumerate(body["data"]):
            assert d["object"] == "embedding" and d["index"] == i and len(d["embedding"]) == 8
        assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"]
        total_in += body["usage"]["prompt_tokens"]
    assert out["e1"]["response"]["body"]["usage"]["prompt_tokens"] == 3
    assert out["e2"]["response"]["body"]["usage"]["prompt_tokens"] == 1
    # embeddings: output_tokens 0, usage summed from the backend's prompt_tokens
    assert b.usage.model_dump() == {
        "input_tokens": total_in,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": total_in,
    }


def test_responses_endpoint(h):
    texts = {"r1": "respond to me", "r2": "hi"}
    b = h.run_batch([responses_line(k, v) for k, v in texts.items()], endpoint=RESPONSES)
    assert_timestamps_completed(b)
    assert b.endpoint == RESPONSES
    assert (b.request_counts.completed, b.request_counts.failed) == (2, 0)
    assert b.usage.model_dump() == expected_usage(texts.values())
    out = by_custom_id(h.download_lines(b.output_file_id))
    for cid, text in texts.items():
        body = assert_success_line(out[cid], cid)
        assert body["object"] == "response"
        assert body["status"] == "completed"
        assert body["output"][0]["content"][0]["text"] == f"echo: {text}"
        w = words(text)
        assert body["usage"] == {"input_tokens": w, "output_tokens": w + 1, "total_tokens": 2 * w + 1}


def test_second_model_is_reported(h):
    b = h.run_batch([chat_line("m2", "other model", model="fake-model-2")])
    assert_timestamps_completed(b)
    assert b.model == "fake-model-2"
    body = assert_success_line(h.download_lines(b.output_file_id)[0], "m2")
    assert body["model"] == "fake-model-2"


# ---------------------------------------------------------------------------
# transient failures and retries
# ---------------------------------------------------------------------------


def test_transient_failures_are_retried(h):
    text = f"flaky {uniq()} [fail_times=2]"
    before = h.backend_stats()["requests"]
    b = h.run_batch([chat_line("flaky", text), chat_line("steady", "steady line")])
    after = h.backend_stats()["requests"]
    assert_timestamps_completed(b)
    assert (b.request_counts.completed, b.request_counts.failed) == (2, 0)
    assert b.error_file_id is None
    out = by_custom_id(h.download_lines(b.output_file_id))
    body = assert_success_line(out["flaky"], "flaky")
    assert body["choices"][0]["message"]["content"] == f"echo: {text}"
    # 3 attempts for the flaky line + 1 for the steady one
    assert after - before == 4


def test_persistent_5xx_exhausts_max_attempts(h):
    text = f"always down {uniq()} [fail_times=50]"
    before = h.backend_stats()["requests"]
    b = h.run_batch([chat_line("down", text)])
    after = h.backend_stats()["requests"]
    assert_timestamps_completed(b)
    assert (b.request_counts.completed, b.request_counts.failed) == (0, 1)
    assert b.output_file_id is None
    err = by_custom_id(h.download_lines(b.error_file_id))
    line = err["down"]
    assert set(line) == LINE_KEYS
    assert line["response"]["status_code"] == 503, line
    assert isinstance(line["response"]["body"], dict)
    assert after - before == MAX_ATTEMPTS


def test_rate_limited_is_retried_then_reported(h):
    before = h.backend_stats()["requests"]
    b = h.run_batch([chat_line("rl", f"limited {uniq()} [status=429]")])
    after = h.backend_stats()["requests"]
    assert_timestamps_completed(b)
    assert (b.request_counts.completed, b.request_counts.failed) == (0, 1)
    err = by_custom_id(h.download_lines(b.error_file_id))
    assert_http_error_line(err["rl"], "rl", 429)
    assert after - before == MAX_ATTEMPTS


def test_non_retryable_4xx_is_sent_once(h):
    before = h.backend_stats()["requests"]
    b = h.run_batch([chat_line("once", f"bad request {uniq()} [status=400]")])
    after = h.backend_stats()["requests"]
    assert_timestamps_completed(b)
    assert after - before == 1


def test_dead_model_lines_end_in_error_file(h):
    n = 3
    b = h.run_batch([chat_line(f"dead-{i}", f"unreachable {i}", model="dead-model") for i in range(n)])
    assert_timestamps_completed(b)
    assert b.model == "dead-model"
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (n, 0, n)
    assert b.output_file_id is None
    assert b.error_file_id is not None
    err = by_custom_id(h.download_lines(b.error_file_id))
    assert set(err) == {f"dead-{i}" for i in range(n)}
    for cid, ln in err.items():
        assert set(ln) == LINE_KEYS, ln
        assert ln["id"].startswith("batch_req_")
        # a connection failure has no HTTP response: either error is filled, or a 5xx response is synthesised
        if ln["response"] is None:
            assert isinstance(ln["error"], dict) and ln["error"].get("code") and ln["error"].get("message"), ln
        else:
            assert ln["response"]["status_code"] >= 500, ln
    assert_result_files(h, b)


# ---------------------------------------------------------------------------
# listing
# ---------------------------------------------------------------------------


def test_batches_list_pagination_newest_first(h):
    f = h.upload([chat_line("l1", "list me")])
    created = [h.create_batch(f.id, metadata={"i": str(i)}).id for i in range(5)]

    page = h.client.batches.list(limit=2)
    assert page._request_id
    assert len(page.data) == 2
    assert page.has_more is True
    assert [b.id for b in page.data] == created[::-1][:2]

    # the auto-paginating iterator walks every page with after=<last id>
    pages = []
    for p in page.iter_pages():
        assert len(p.data) <= 2
        pages.append(p)
        if len(pages) >= 3:
            break
    assert len(pages) == 3
    ids = [b.id for p in pages for b in p.data]
    assert ids[:5] == created[::-1]

    all_batches = list(h.client.batches.list(limit=2))
    all_ids = [b.id for b in all_batches]
    assert len(all_ids) == len(set(all_ids)), "pagination repeated an item"
    assert all_ids[:5] == created[::-1]
    created_at = [b.created_at for b in all_batches]
    assert created_at == sorted(created_at, reverse=True)

    after = h.client.batches.list(after=created[3], limit=2)
    assert [b.id for b in after.data] == [created[2], created[1]]

    # default limit is 20
    default = h.client.batches.with_raw_response.list().http_response.json()
    assert default["object"] == "list"
    assert len(default["data"]) == min(20, len(all_ids))
    assert default["has_more"] is (len(all_ids) > 20)
    assert default["first_id"] == all_ids[0]
    assert default["last_id"] == default["data"][-1]["id"]

    for bid in created:
        h.wait_batch(bid)


def test_live_request_counts_while_in_progress(h):
    # fake-model-2 has max_concurrency 4: 12 x 300 ms lines take >= ~0.9 s
    rows = [chat_line(f"live-{i}", f"slow {i} [delay_ms=300]", model="fake-model-2") for i in range(12)]
    f = h.upload(rows)
    b = h.create_batch(f.id)
    mid = h.wait_batch(
        b.id,
        until=lambda x: x.status in ("in_progress", "finalizing", "completed") and x.request_counts.total == 12,
        what="in_progress with total=12",
    )
    assert mid.in_progress_at is not None
    assert mid.model == "fake-model-2"
    final = h.wait_batch(b.id)
    assert_timestamps_completed(final)
    assert (final.request_counts.total, final.request_counts.completed) == (12, 12)
    assert "in_progress" in h.seen_statuses[b.id], h.seen_statuses[b.id]


def test_retrieve_roundtrip_and_request_id(h):
    b = h.run_batch([chat_line("rt", "round trip")])
    again = h.client.batches.retrieve(b.id)
    assert again._request_id
    assert again.model_dump() == b.model_dump()
    assert time.time() - b.completed_at < 120
