"""Error envelopes, status-code -> exception mapping, request ids, create-time validation."""

from __future__ import annotations

import httpx2
import openai
import pytest

from batchd_compat import CHAT, MAX_UPLOAD_BYTES, chat_line

ENVELOPE_KEYS = {"message", "type", "param", "code"}


def _assert_envelope(e: openai.APIStatusError, status: int) -> dict:
    assert e.status_code == status
    assert e.request_id, "x-request-id missing on error response"
    body = e.response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert ENVELOPE_KEYS <= set(err), err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    # the SDK lifts the inner object onto the exception
    assert e.body == err
    assert e.code == err["code"] and e.param == err["param"] and e.type == err["type"]
    return err


@pytest.fixture(scope="module")
def input_file(h):
    return h.upload([chat_line("e1", "error tests")])


# ---------------------------------------------------------------------------
# 404s
# ---------------------------------------------------------------------------


def test_unknown_file_retrieve(h):
    fid = "file-doesnotexist000000000"
    with pytest.raises(openai.NotFoundError) as ei:
        h.client.files.retrieve(fid)
    err = _assert_envelope(ei.value, 404)
    assert err == {
        "message": f"No such File object: {fid}",
        "type": "invalid_request_error",
        "param": "id",
        "code": None,
    }


@pytest.mark.parametrize("op", ["content", "delete"])
def test_unknown_file_other_ops(h, op):
    with pytest.raises(openai.NotFoundError) as ei:
        getattr(h.client.files, op)("file-doesnotexist000000000")
    err = _assert_envelope(ei.value, 404)
    assert err["type"] == "invalid_request_error"


def test_unknown_batch_retrieve(h):
    with pytest.raises(openai.NotFoundError) as ei:
        h.client.batches.retrieve("batch_doesnotexist0000000000000000")
    err = _assert_envelope(ei.value, 404)
    assert err["type"] == "invalid_request_error"


def test_unknown_batch_cancel(h):
    with pytest.raises(openai.NotFoundError) as ei:
        h.client.batches.cancel("batch_doesnotexist0000000000000000")
    _assert_envelope(ei.value, 404)


def test_unknown_route_returns_openai_envelope(h):
    # the SDK cannot address arbitrary routes through a resource, so use raw httpx2
    r = httpx2.get(f"{h.url}/v1/definitely-not-a-route", headers={"Authorization": "Bearer test"}, timeout=10)
    assert r.status_code == 404
    assert r.headers.get("x-request-id")
    body = r.json()
    assert ENVELOPE_KEYS <= set(body["error"]), body
    # and through the SDK's generic request method
    with pytest.raises(openai.NotFoundError) as ei:
        h.client.get("/definitely-not-a-route", cast_to=object)
    _assert_envelope(ei.value, 404)


def test_models_endpoint_lists_configured_models(h):
    names = {m.id for m in h.client.models.list()}
    assert {"fake-model", "fake-model-2", "dead-model"} <= names


# ---------------------------------------------------------------------------
# create-time validation of batches
# ---------------------------------------------------------------------------


def test_bad_endpoint(h, input_file):
    with pytest.raises(openai.BadRequestError) as ei:
        h.client.batches.create(input_file_id=input_file.id, endpoint="/v1/x", completion_window="24h")
    err = _assert_envelope(ei.value, 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == "endpoint"
    assert err["code"] == "invalid_value"


@pytest.mark.parametrize("window", ["1h", "48h", ""])
def test_bad_completion_window(h, input_file, window):
    with pytest.raises(openai.BadRequestError) as ei:
        h.client.batches.create(input_file_id=input_file.id, endpoint=CHAT, completion_window=window)
    err = _assert_envelope(ei.value, 400)
    assert err["param"] == "completion_window"
    assert "completion_window" in err["message"]


def test_metadata_non_string_value(h, input_file):
    with pytest.raises(openai.BadRequestError) as ei:
        h.client.batches.create(
            input_file_id=input_file.id, endpoint=CHAT, completion_window="24h", metadata={"tags": ["a", "b"]}
        )
    err = _assert_envelope(ei.value, 400)
    assert err["code"] == "invalid_type"
    assert err["param"] == "metadata.tags"


def test_metadata_integer_value(h, input_file):
    with pytest.raises(openai.BadRequestError) as ei:
        h.client.batches.create(
            input_file_id=input_file.id, endpoint=CHAT, completion_window="24h", metadata={"n": 3}
        )
    err = _assert_envelope(ei.value, 400)
    assert err["code"] == "invalid_type"
    assert err["param"] == "metadata.n"


def test_metadata_too_many_keys(h, input_file):
    meta = {f"k{i}": "v" for i in range(17)}
    with pytest.raises(openai.BadRequestError) as ei:
        h.client.batches.create(input_file_id=input_file.id, endpoint=CHAT, completion_window="24h", metadata=meta)
    _assert_envelope(ei.value, 400)


def test_metadata_sixteen_keys_ok(h, input_file):
    meta = {f"k{i}": "v" * 512 for i in range(16)}
    b = h.client.batches.create(input_file_id=input_file.id, endpoint=CHAT, completion_window="24h", metadata=meta)
    assert b.metadata == meta
    h.wait_batch(b.id)


def test_metadata_key_and_value_length_limits(h, input_file):
    for meta in ({"k" * 65: "v"}, {"k": "v" * 513}):
        with pytest.raises(openai.BadRequestError) as ei:
            h.client.batches.create(
                input_file_id=input_file.id, endpoint=CHAT, completion_window="24h", metadata=meta
            )
        _assert_envelope(ei.value, 400)


def test_create_is_not_retried_on_400(h, input_file):
    client, sent = h.counting_client()
    try:
        with pytest.raises(openai.BadRequestError):
            client.batches.create(input_file_id=input_file.id, endpoint="/v1/x", completion_window="24h")
    finally:
        client.close()
    assert len(sent) == 1


# ---------------------------------------------------------------------------
# files errors
# ---------------------------------------------------------------------------


def test_bad_purpose(h):
    with pytest.raises(openai.BadRequestError) as ei:
        h.client.files.create(file=("x.jsonl", b"{}\n"), purpose="not-a-purpose")
    err = _assert_envelope(ei.value, 400)
    assert err["param"] == "purpose"
    assert err["code"] == "invalid_value"


def test_upload_too_large_is_413(h):
    with pytest.raises(openai.APIStatusError) as ei:
        h.client.files.create(file=("big.jsonl", b"x" * (MAX_UPLOAD_BYTES + 1)), purpose="batch")
    assert ei.value.status_code == 413
    assert ei.value.request_id


def test_upload_just_under_limit_is_accepted(h):
    # leave room for multipart overhead: the limit may apply to the request body
    data = b"y" * (MAX_UPLOAD_BYTES - 65536)
    f = h.client.files.create(file=("limit.bin", data), purpose="user_data")
    assert f.bytes == len(data)
    h.client.files.delete(f.id)


# ---------------------------------------------------------------------------
# request ids
# ---------------------------------------------------------------------------


def test_request_id_on_every_object(h, input_file):
    assert input_file._request_id
    b = h.create_batch(input_file.id)
    assert b._request_id
    r = h.client.batches.retrieve(b.id)
    assert r._request_id and r._request_id != b._request_id
    assert h.client.files.retrieve(input_file.id)._request_id
    assert h.client.batches.list(limit=1)._request_id
    assert h.client.files.list(limit=1)._request_id
    raw = h.client.files.with_raw_response.content(input_file.id)
    assert raw.http_response.headers.get("x-request-id")
    h.wait_batch(b.id)
