"""Input-file validation: the batch is created, then fails with errors.data entries {code, message, param, line}."""

from __future__ import annotations

import json

import pytest

from batchd_compat import (
    CHAT,
    COMPLETIONS,
    MAX_BATCH_INPUT_BYTES,
    MAX_BATCH_LINES,
    MAX_LINE_BYTES,
    chat_line,
)

ANY = object()  # param not pinned down by the interface for file-level errors


def _ok(i: int, model: str = "fake-model") -> dict:
    return chat_line(f"req-{i}", f"valid line {i}", model=model)


def _without(row: dict, key: str) -> dict:
    row = json.loads(json.dumps(row))
    row.pop(key)
    return row


def _body_without(row: dict, key: str) -> dict:
    row = json.loads(json.dumps(row))
    row["body"].pop(key)
    return row


def _padded(i: int, size: int) -> dict:
    row = _ok(i)
    base = len(json.dumps(row, separators=(",", ":")))
    row["body"]["messages"][0]["content"] += " " + "x" * max(0, size - base - 1)
    return row


CASES = {
    "invalid_json_line": ([_ok(1), "{not json at all", _ok(3)], [("invalid_json_line", None, 2)]),
    "missing_custom_id": ([_ok(1), _without(_ok(2), "custom_id")], [("missing_required_parameter", "custom_id", 2)]),
    "missing_method": ([_ok(1), _without(_ok(2), "method")], [("missing_required_parameter", "method", 2)]),
    "missing_url": ([_ok(1), _without(_ok(2), "url")], [("missing_required_parameter", "url", 2)]),
    "missing_body": ([_ok(1), _without(_ok(2), "body")], [("missing_required_parameter", "body", 2)]),
    "invalid_url": (
        [{**_ok(1), "url": COMPLETIONS}, _ok(2)],
        [("invalid_url", "url", 1)],
    ),
    "streaming_unsupported": (
        [_ok(1), chat_line("req-2", "stream please", stream=True)],
        [("streaming_unsupported", "body.stream", 2)],
    ),
    "model_not_found": (
        [chat_line("req-1", "unknown model", model="no-such-model")],
        [("model_not_found", "body.model", 1)],
    ),
    "model_missing": (
        [_body_without(_ok(1), "model")],
        [("invalid_request", "body.model", 1)],
    ),
    "messages_missing": (
        [_ok(1), _body_without(_ok(2), "messages")],
        [("invalid_request", "body.messages", 2)],
    ),
    "duplicate_custom_id": (
        [_ok(1), _ok(2), chat_line("req-1", "same id again"), _ok(4)],
        [("duplicate_custom_id", "custom_id", 3)],
    ),
    "mixed_models": (
        [_ok(1), _ok(2), _ok(3, model="fake-model-2"), _ok(4)],
        [("mixed_models", "body.model", 3)],
    ),
    "empty_file": ([], [("empty_file", ANY, None)]),
    "too_many_lines": (
        [_ok(i) for i in range(1, MAX_BATCH_LINES + 2)],
        [("too_many_lines", ANY, None)],
    ),
    "file_too_large": (
        # each line below max_line_bytes, few lines, but the total exceeds max_batch_input_bytes
        [_padded(i, 60000) for i in range(1, MAX_BATCH_INPUT_BYTES // 60000 + 3)],
        [("file_too_large", ANY, None)],
    ),
    "line_too_large": (
        [_ok(1), _padded(2, MAX_LINE_BYTES + 1000), _ok(3)],
        [("line_too_large", ANY, 2)],
    ),
    "several_errors_in_line_order": (
        [
            _ok(1),
            "not json",
            _without(_ok(3), "custom_id"),
            _ok(4),
            chat_line("req-5", "streaming", stream=True),
        ],
        [
            ("invalid_json_line", None, 2),
            ("missing_required_parameter", "custom_id", 3),
            ("streaming_unsupported", "body.stream", 5),
        ],
    ),
}


def assert_validation_failed(h, batch_id: str, expected) -> None:
    b = h.wait_batch(batch_id)
    assert b.status == "failed", b
    assert b.failed_at is not None and b.failed_at >= b.created_at
    assert b.in_progress_at is None and b.finalizing_at is None and b.completed_at is None
    assert b.output_file_id is None and b.error_file_id is None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (0, 0, 0)

    raw = h.raw_batch(batch_id)
    assert raw["errors"]["object"] == "list"
    data = raw["errors"]["data"]
    got = [(e.get("code"), e.get("param"), e.get("line")) for e in data]
    assert len(data) == len(expected), got
    for entry, (code, param, line) in zip(data, expected):
        assert entry["code"] == code, got
        if param is not ANY:
            assert entry["param"] == param, got
        assert entry["line"] == line, got
        assert isinstance(entry["message"], str) and entry["message"], entry
    # the SDK model exposes the same entries
    assert [e.code for e in b.errors.data] == [c for c, _, _ in expected]


@pytest.mark.parametrize("case", list(CASES))
def test_validation_error(h, case):
    rows, expected = CASES[case]
    f = h.upload(rows)
    b = h.create_batch(f.id, endpoint=CHAT)
    assert b.status == "validating"
    assert_validation_failed(h, b.id, expected)


def test_nonexistent_input_file(h):
    b = h.create_batch("file-doesnotexist00000000000")
    assert b.status == "validating"
    final = h.wait_batch(b.id)
    assert final.status == "failed"
    raw = h.raw_batch(b.id)
    data = raw["errors"]["data"]
    assert len(data) == 1, data
    assert data[0]["code"] == "invalid_request"
    assert data[0]["param"] == "file_id"
    assert data[0]["line"] is None
    assert isinstance(data[0]["message"], str) and data[0]["message"]
    assert (final.request_counts.total, final.request_counts.completed, final.request_counts.failed) == (0, 0, 0)


def test_exactly_max_lines_is_accepted(h):
    rows = [chat_line(f"max-{i}", "w") for i in range(MAX_BATCH_LINES)]
    b = h.run_batch(rows)
    assert b.status == "completed", b
    assert (b.request_counts.total, b.request_counts.completed) == (MAX_BATCH_LINES, MAX_BATCH_LINES)
    assert len(h.download_lines(b.output_file_id)) == MAX_BATCH_LINES
