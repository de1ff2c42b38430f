"""Files API through the official SDK: upload, retrieve, list/paginate, content, delete."""

from __future__ import annotations

import time

import openai
import pytest

from batchd_compat import FILE_KEYS, chat_line, jsonl_bytes, uniq

THIRTY_DAYS = 30 * 86400


def _assert_file_shape(f, *, size: int, filename: str, purpose: str) -> None:
    assert f.object == "file"
    assert isinstance(f.id, str) and f.id
    assert f.bytes == size
    assert isinstance(f.created_at, int)
    assert abs(f.created_at - time.time()) < 120
    assert f.filename == filename
    assert f.purpose == purpose
    assert f.status == "processed"


def test_upload_bytes_retrieve_and_content(h):
    data = jsonl_bytes([chat_line("a", "hello there"), chat_line("b", "general kenobi")])
    name = f"{uniq('bytes')}.jsonl"
    f = h.client.files.create(file=(name, data), purpose="batch")
    _assert_file_shape(f, size=len(data), filename=name, purpose="batch")
    assert f._request_id, "x-request-id missing on files.create"
    # purpose=batch files expire after 30 days by default
    assert f.expires_at == f.created_at + THIRTY_DAYS

    raw = h.client.files.with_raw_response.retrieve(f.id)
    body = raw.http_response.json()
    assert FILE_KEYS <= set(body), f"missing keys: {FILE_KEYS - set(body)}"
    got = raw.parse()
    assert got.model_dump() == f.model_dump()
    assert got._request_id

    content = h.client.files.content(f.id)
    assert content.content == data
    assert content.text == data.decode()


def test_upload_raw_bytes_gets_default_filename(h):
    data = b'{"x": 1}\n'
    f = h.client.files.create(file=data, purpose="user_data")
    # httpx gives an unnamed bytes part the filename "upload"
    _assert_file_shape(f, size=len(data), filename="upload", purpose="user_data")
    assert f.expires_at is None, "non-batch files have no default expiry"
    assert h.download(f.id) == data


def test_upload_from_path(h):
    rows = [chat_line(f"p{i}", f"line number {i}") for i in range(3)]
    path = h.write_jsonl(rows, name=f"{uniq('path')}.jsonl")
    f = h.client.files.create(file=path, purpose="batch")
    _assert_file_shape(f, size=path.stat().st_size, filename=path.name, purpose="batch")
    assert h.download(f.id) == path.read_bytes()


def test_upload_expires_after(h):
    f = h.client.files.create(
        file=("exp.jsonl", b"{}\n"),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert f.expires_at == f.created_at + 3600
    g = h.client.files.create(
        file=("exp2.jsonl", b"{}\n"),
        purpose="user_data",
        expires_after={"anchor": "created_at", "seconds": 2592000},
    )
    assert g.expires_at == g.created_at + 2592000


def test_wait_for_processing(h):
    f = h.upload([chat_line("w", "wait")])
    done = h.client.files.wait_for_processing(f.id, poll_interval=0.1, max_wait_seconds=10)
    assert done.id == f.id
    assert done.status == "processed"


def test_delete(h):
    f = h.upload([chat_line("d", "delete me")])
    d = h.client.files.delete(f.id)
    assert d.id == f.id
    assert d.object == "file"
    assert d.deleted is True
    assert d._request_id
    with pytest.raises(openai.NotFoundError) as ei:
        h.client.files.retrieve(f.id)
    assert ei.value.status_code == 404
    with pytest.raises(openai.NotFoundError):
        h.client.files.content(f.id)
    with pytest.raises(openai.NotFoundError):
        h.client.files.delete(f.id)
    assert f.id not in {x.id for x in h.client.files.list(purpose="batch")}


def test_list_pagination_order_and_purpose_filter(h):
    # purpose "assistants" is used by no other test, so the listing holds exactly our files
    ids = []
    for i in range(5):
        f = h.client.files.create(file=(f"pg{i}.txt", f"file {i}\n".encode()), purpose="assistants")
        ids.append(f.id)
    # a file with another purpose must be filtered out
    other = h.client.files.create(file=("other.txt", b"other\n"), purpose="user_data")

    # desc (default) via the auto-paginating page object, 2 per page
    page = h.client.files.list(purpose="assistants", limit=2)
    assert len(page.data) == 2
    assert page.has_more is True
    assert page._request_id
    pages = list(page.iter_pages())
    assert [len(p.data) for p in pages] == [2, 2, 1], [[f.id for f in p.data] for p in pages]
    assert [p.has_more for p in pages] == [True, True, False]
    desc = [f.id for f in h.client.files.list(purpose="assistants", limit=2)]
    assert desc == list(reversed(ids))
    assert other.id not in desc

    asc_page = h.client.files.list(purpose="assistants", limit=2, order="asc")
    asc_items = list(asc_page)
    assert [f.id for f in asc_items] == ids
    assert all(f.purpose == "assistants" for f in asc_items)
    created = [f.created_at for f in asc_items]
    assert created == sorted(created)

    # explicit cursor
    after = h.client.files.list(purpose="assistants", limit=2, order="asc", after=ids[1])
    assert [f.id for f in after.data] == ids[2:4]
    assert after.has_more is True

    # unfiltered listing also contains both purposes, newest first
    all_ids = [f.id for f in h.client.files.list(limit=3)]
    assert len(all_ids) == len(set(all_ids))
    assert other.id in all_ids and set(ids) <= set(all_ids)
    assert all_ids.index(other.id) < all_ids.index(ids[-1])


def test_list_envelope(h):
    f = h.client.files.create(file=("env.txt", b"envelope\n"), purpose="vision")
    raw = h.client.files.with_raw_response.list(purpose="vision", limit=1)
    body = raw.http_response.json()
    assert body["object"] == "list"
    assert body["has_more"] is False
    assert [x["id"] for x in body["data"]] == [f.id]
    assert body["first_id"] == f.id
    assert body["last_id"] == f.id
    assert raw.http_response.headers.get("x-request-id")

    # empty page: first_id/last_id null (no test uploads fine-tune files)
    empty = h.client.files.with_raw_response.list(purpose="fine-tune").http_response.json()
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    assert list(h.client.files.list(purpose="fine-tune")) == []
