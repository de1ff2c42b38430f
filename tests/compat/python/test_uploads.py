"""The Uploads API through the official SDK: the chunked upload helper sends a
file in several parts, and the resulting File runs as a batch."""

from __future__ import annotations

import hashlib

import openai
import pytest

from batchd_compat import chat_line, jsonl_bytes, uniq


def _rows(n: int) -> list[dict]:
    return [chat_line(f"u{i}", f"uploaded in parts, line {i} " + "x" * 200) for i in range(n)]


def test_chunked_upload_helper_then_batch(h, tmp_path):
    data = jsonl_bytes(_rows(60))
    path = tmp_path / f"{uniq('chunked')}.jsonl"
    path.write_bytes(data)
    part_size = 4096  # several parts, the last one short
    upload = h.client.uploads.upload_file_chunked(
        file=path, mime_type="application/jsonl", purpose="batch", part_size=part_size,
        md5=hashlib.md5(data).hexdigest(),
    )
    assert upload.object == "upload"
    assert upload.status == "completed"
    assert upload.bytes == len(data)
    assert upload.filename == path.name
    assert upload.file is not None and upload.file.bytes == len(data)
    assert upload.expires_at == upload.created_at + 3600
    assert h.download(upload.file.id) == data
    batch = h.create_batch(upload.file.id)
    done = h.wait_batch(batch.id)
    assert done.status == "completed", done
    assert done.request_counts.completed == 60
    ids = {line["custom_id"] for line in h.download_lines(done.output_file_id)}
    assert ids == {f"u{i}" for i in range(60)}


def test_parts_assemble_in_the_order_complete_names(h):
    first, second = b'{"n":1}\n', b'{"n":2}\n'
    upload = h.client.uploads.create(bytes=len(first) + len(second), filename="two.jsonl", mime_type="txt", purpose="batch")
    assert upload.status == "pending" and upload.file is None
    p2 = h.client.uploads.parts.create(upload_id=upload.id, data=second)
    p1 = h.client.uploads.parts.create(upload_id=upload.id, data=first)
    assert p1.object == "upload.part" and p1.upload_id == upload.id
    done = h.client.uploads.complete(upload_id=upload.id, part_ids=[p1.id, p2.id])
    assert h.download(done.file.id) == first + second


def test_wrong_size_wrong_md5_and_cancel_are_refused_cleanly(h):
    upload = h.client.uploads.create(bytes=10, filename="x.jsonl", mime_type="txt", purpose="batch")
    part = h.client.uploads.parts.create(upload_id=upload.id, data=b"12345")
    with pytest.raises(openai.BadRequestError) as e:
        h.client.uploads.complete(upload_id=upload.id, part_ids=[part.id])
    assert e.value.body["param"] == "part_ids"
    part2 = h.client.uploads.parts.create(upload_id=upload.id, data=b"67890")
    with pytest.raises(openai.BadRequestError) as e:
        h.client.uploads.complete(upload_id=upload.id, part_ids=[part.id, part2.id], md5="0" * 32)
    assert e.value.body["param"] == "md5"
    cancelled = h.client.uploads.cancel(upload.id)
    assert cancelled.status == "cancelled"
    assert h.client.uploads.cancel(upload.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        h.client.uploads.parts.create(upload_id=upload.id, data=b"more")
    with pytest.raises(openai.NotFoundError):
        h.client.uploads.cancel("upload_doesnotexist")
