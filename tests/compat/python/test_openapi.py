"""batchd's real responses checked against /openapi.yaml.

Every request here goes through `Api.call`, which sends it with raw httpx2 (no
SDK parsing in between), requires the status the test expects, and then checks
the response against what openapi.yaml declares for that path + method +
status: the media type, the body schema (JSON Schema 2020-12, `$ref`s resolved
through a `referencing` registry holding the whole document) and every
required header (`x-request-id` everywhere, `x-should-retry` on 409).
The lines of batch output/error files are checked against `BatchRequestOutput`.

The last test asserts that every path + method the YAML documents was called at
least once, so a route added to or renamed in the spec without a test here is
noticed.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any, Optional

import httpx2
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from batchd_compat import CHAT, MAX_UPLOAD_BYTES, TERMINAL_STATUSES, chat_line, jsonl_bytes, uniq

SPEC_PATH = Path(__file__).resolve().parents[3] / "openapi.yaml"
SPEC: dict = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
# The whole OpenAPI document is registered as one 2020-12 resource, so every
# `#/components/...` reference inside it resolves against the document itself.
SPEC_URI = "https://batchd.invalid/openapi.yaml"
REGISTRY = Registry().with_resource(SPEC_URI, DRAFT202012.create_resource(SPEC))

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
POLL_S = 0.05
WAIT_S = 30.0

# (path template, method) -> statuses seen; filled by Api.call, read by the last test.
EXERCISED: dict[tuple[str, str], set[int]] = {}
REQUEST_IDS: list[str] = []


# ---------------------------------------------------------------------------
# spec helpers
# ---------------------------------------------------------------------------


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _pointer(*tokens: str) -> str:
    return "#" + "".join("/" + _escape(t) for t in tokens)


def _at(pointer: str) -> Any:
    node: Any = SPEC
    for raw in pointer.lstrip("#").split("/")[1:]:
        node = node[raw.replace("~1", "/").replace("~0", "~")]
    return node


def _deref(pointer: str) -> tuple[dict, str]:
    """Follows OpenAPI (non-schema) `$ref`s, e.g. to components/responses or components/headers."""
    node = _at(pointer)
    while "$ref" in node:
        pointer = node["$ref"]
        assert pointer.startswith("#/"), f"only local refs are supported: {pointer}"
        node = _at(pointer)
    return node, pointer


@functools.lru_cache(maxsize=None)
def _validator(schema_pointer: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": SPEC_URI + schema_pointer}, registry=REGISTRY)


def assert_valid(instance: Any, schema_pointer: str, what: str = "") -> None:
    errors = sorted(_validator(schema_pointer).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  at {e.json_path}: {e.message}" for e in errors[:20]]
        raise AssertionError(
            f"{what or 'instance'} does not match {schema_pointer}:\n"
            + "\n".join(lines)
            + f"\ninstance: {json.dumps(instance)[:2000]}"
        )


def component(name: str) -> str:
    return _pointer("components", "schemas", name)


def documented_operations() -> set[tuple[str, str]]:
    return {(p, m) for p, item in SPEC["paths"].items() for m in item if m in HTTP_METHODS}


# ---------------------------------------------------------------------------
# raw HTTP client that checks each response against the spec
# ---------------------------------------------------------------------------


class Api:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx2.Client(
            timeout=30, trust_env=False, headers={"Authorization": "Bearer test", "Accept": "application/json"}
        )

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, template: str, expect: int, *, path: Optional[dict] = None, **kw: Any):
        method = method.lower()
        op = SPEC["paths"].get(template, {}).get(method)
        assert op is not None, f"{method.upper()} {template} is not documented in openapi.yaml"
        r = self.http.request(method.upper(), self.url + template.format(**(path or {})), **kw)
        EXERCISED.setdefault((template, method), set()).add(r.status_code)
        what = f"{method.upper()} {r.request.url.path} -> {r.status_code}"
        assert r.status_code == expect, f"{what}, expected {expect}: {r.text[:2000]}"
        self.check(r, _pointer("paths", template, method, "responses"), what)
        return r

    @staticmethod
    def check(r, responses_pointer: str, what: str) -> None:
        status = str(r.status_code)
        assert status in _at(responses_pointer), f"{what}: status {status} is not documented"
        response, pointer = _deref(f"{responses_pointer}/{status}")

        rid = r.headers.get("x-request-id")
        assert rid, f"{what}: no x-request-id header"
        REQUEST_IDS.append(rid)
        for name, _ in response.get("headers", {}).items():
            header, hpointer = _deref(f"{pointer}/headers/{_escape(name)}")
            value = r.headers.get(name)
            if header.get("required"):
                assert value is not None, f"{what}: required header {name!r} missing"
            if value is not None and "schema" in header:
                assert_valid(value, f"{hpointer}/schema", f"{what}: header {name}")

        content = response.get("content")
        if not content:
            assert not r.content, f"{what}: body sent where the spec documents none"
            return
        media = r.headers.get("content-type", "").split(";")[0].strip().lower()
        assert media in content, f"{what}: content-type {media!r}, documented: {sorted(content)}"
        body = r.json() if media.endswith("json") else r.text
        assert_valid(body, f"{pointer}/content/{_escape(media)}/schema", what)

    # ---- conveniences ----------------------------------------------------

    def upload(self, data: bytes, purpose: str = "batch", expect: int = 200, filename: Optional[str] = None, **form):
        fields = {"purpose": purpose, **form}
        files = {"file": (filename or f"{uniq('oa')}.jsonl", data, "application/octet-stream")}
        return self.call("post", "/v1/files", expect, data=fields, files=files)

    def batch(self, batch_id: str, expect: int = 200):
        return self.call("get", "/v1/batches/{batch_id}", expect, path={"batch_id": batch_id})

    def create_batch(self, input_file_id: str, expect: int = 200, **extra: Any):
        body = {"input_file_id": input_file_id, "endpoint": CHAT, "completion_window": "24h", **extra}
        return self.call("post", "/v1/batches", expect, json=body)

    def cancel(self, batch_id: str, expect: int = 200):
        return self.call("post", "/v1/batches/{batch_id}/cancel", expect, path={"batch_id": batch_id})

    def wait(self, batch_id: str, until=lambda b: b["status"] in TERMINAL_STATUSES) -> dict:
        deadline = time.monotonic() + WAIT_S
        while True:
            b = self.batch(batch_id).json()  # every poll is validated too
            if until(b):
                return b
            assert time.monotonic() < deadline, f"batch {batch_id} stuck: {b}"
            time.sleep(POLL_S)

    def content(self, file_id: str) -> bytes:
        return self.call(
            "get",
            "/v1/files/{file_id}/content",
            200,
            path={"file_id": file_id},
            headers={"Accept": "application/binary"},
        ).content

    def result_lines(self, file_id: Optional[str]) -> list[dict]:
        """Downloads an output/error file; checks its File object and each line."""
        if file_id is None:
            return []
        f = self.call("get", "/v1/files/{file_id}", 200, path={"file_id": file_id}).json()
        assert f["purpose"] == "batch_output", f
        lines = [json.loads(raw) for raw in self.content(file_id).decode("utf-8").splitlines() if raw.strip()]
        for i, line in enumerate(lines, 1):
            assert_valid(line, component("BatchRequestOutput"), f"{f['filename']} line {i}")
        return lines


@pytest.fixture(scope="module")
def api(servers):
    a = Api(servers["url"])
    yield a
    a.close()


def _has_error(r, **expected: Any) -> dict:
    err = r.json()["error"]
    for k, v in expected.items():
        assert err[k] == v, (k, err)
    return err


# ---------------------------------------------------------------------------
# the spec itself
# ---------------------------------------------------------------------------


def test_spec_schemas_are_valid_and_refs_resolve():
    for name, schema in SPEC["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)

    resolver = REGISTRY.resolver(base_uri=SPEC_URI)

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                resolver.lookup(ref)  # raises Unresolvable on a dangling ref
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}/{i}")

    walk(SPEC, "#")
    assert documented_operations(), "no operations found in openapi.yaml"


def test_checker_catches_drift():
    """Guards the checker itself: a broken resolver would otherwise let everything pass."""
    good = {"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": None}}
    assert_valid(good, component("ErrorResponse"))
    extra = {"error": {**good["error"], "extra": 1}}
    missing = {"error": {k: v for k, v in good["error"].items() if k != "code"}}
    wrong_type = {"error": {**good["error"], "param": 3}}
    for bad in (extra, missing, wrong_type):
        with pytest.raises(AssertionError):
            assert_valid(bad, component("ErrorResponse"))
    with pytest.raises(AssertionError):  # nested $ref: Batch -> BatchRequestCounts
        assert_valid({"request_counts": {"total": 1}}, component("Batch"))


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------


def test_files_upload_retrieve_list_content_delete(api):
    data = jsonl_bytes([chat_line("f1", "hello spec")])
    f = api.upload(data).json()
    assert f["purpose"] == "batch" and f["bytes"] == len(data) and f["expires_at"] is not None

    expiry = {"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}
    g = api.upload(b"some text\n", purpose="user_data", **expiry).json()
    assert g["expires_at"] == g["created_at"] + 3600

    same = api.call("get", "/v1/files/{file_id}", 200, path={"file_id": f["id"]}).json()
    assert same == f
    assert api.content(f["id"]) == data

    # several items of one purpose, in both orders and paged
    ids = [api.upload(b"{}\n", purpose="evals").json()["id"] for _ in range(3)]
    listed = api.call("get", "/v1/files", 200, params={"purpose": "evals"}).json()
    assert set(ids) <= {x["id"] for x in listed["data"]}
    assert all(x["purpose"] == "evals" for x in listed["data"])
    assert listed["first_id"] == listed["data"][0]["id"] and listed["last_id"] == listed["data"][-1]["id"]
    page = api.call("get", "/v1/files", 200, params={"purpose": "evals", "limit": 2}).json()
    assert len(page["data"]) == 2 and page["has_more"] is True
    api.call("get", "/v1/files", 200, params={"purpose": "evals", "order": "asc", "after": page["last_id"]})
    api.call("get", "/v1/files", 200)  # unfiltered: every file of the session, output files included

    # empty page with a purpose filter (batchd never creates assistants_output files)
    empty = api.call("get", "/v1/files", 200, params={"purpose": "assistants_output"}).json()
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}

    deleted = api.call("delete", "/v1/files/{file_id}", 200, path={"file_id": g["id"]}).json()
    assert deleted == {"id": g["id"], "object": "file", "deleted": True}
    api.call("get", "/v1/files/{file_id}", 404, path={"file_id": g["id"]})


def test_uploads_create_parts_complete_cancel(api):
    a, b = b'{"k":1}\n', b'{"k":2}\n'
    up = api.call("post", "/v1/uploads", 200, json={"bytes": len(a) + len(b), "filename": "u.jsonl", "mime_type": "txt", "purpose": "batch"}).json()
    assert up["status"] == "pending" and up["file"] is None
    ids = [
        api.call("post", "/v1/uploads/{upload_id}/parts", 200, path={"upload_id": up["id"]}, files={"data": ("upload", part)}).json()["id"]
        for part in (a, b)
    ]
    done = api.call("post", "/v1/uploads/{upload_id}/complete", 200, path={"upload_id": up["id"]}, json={"part_ids": ids}).json()
    assert done["status"] == "completed" and done["file"]["bytes"] == len(a) + len(b)
    api.call("post", "/v1/uploads/{upload_id}/cancel", 409, path={"upload_id": up["id"]})
    other = api.call("post", "/v1/uploads", 200, json={"bytes": 5, "filename": "c.jsonl", "mime_type": "txt", "purpose": "batch"}).json()
    assert api.call("post", "/v1/uploads/{upload_id}/cancel", 200, path={"upload_id": other["id"]}).json()["status"] == "cancelled"
    api.call("post", "/v1/uploads/{upload_id}/parts", 404, path={"upload_id": "upload_none"}, files={"data": ("upload", b"x")})
    api.call("post", "/v1/uploads/{upload_id}/complete", 404, path={"upload_id": "upload_none"}, json={"part_ids": []})
    api.call("post", "/v1/uploads", 400, json={"filename": "x"})


def test_file_errors(api):
    missing = {"file_id": "file-doesnotexist000000000"}
    r = api.call("get", "/v1/files/{file_id}", 404, path=missing)
    _has_error(r, param="id", code=None, type="invalid_request_error")
    api.call("delete", "/v1/files/{file_id}", 404, path=missing)
    api.call("get", "/v1/files/{file_id}/content", 404, path=missing)

    r = api.upload(b"{}\n", purpose="not-a-purpose", expect=400)
    _has_error(r, param="purpose", code="invalid_value")
    api.call("get", "/v1/files", 400, params={"limit": 0})
    api.call("get", "/v1/files", 400, params={"order": "sideways"})

    r = api.upload(b"x" * (MAX_UPLOAD_BYTES + 1), purpose="batch", expect=413)
    assert r.json()["error"]["message"]


# ---------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------


def test_completed_batch_with_error_file(api):
    tag = uniq("oa")
    rows = [
        chat_line(f"{tag}-ok-1", "first fine line"),
        chat_line(f"{tag}-ok-2", "second fine line"),
        chat_line(f"{tag}-bad", "this one fails [status=400]"),
    ]
    f = api.upload(jsonl_bytes(rows)).json()
    created = api.create_batch(
        f["id"],
        metadata={"suite": "openapi"},
        output_expires_after={"anchor": "created_at", "seconds": 7200},
    ).json()
    assert created["status"] == "validating" and created["expires_at"] == created["created_at"] + 86400
    early = api.batch(created["id"]).json()  # most likely still validating or in_progress
    assert early["id"] == created["id"]

    b = api.wait(created["id"])
    assert b["status"] == "completed", b
    assert b["request_counts"] == {"total": 3, "completed": 2, "failed": 1}, b
    assert b["usage"] is not None and b["errors"] is None

    out = api.result_lines(b["output_file_id"])
    err = api.result_lines(b["error_file_id"])
    assert sorted(x["custom_id"] for x in out) == [f"{tag}-ok-1", f"{tag}-ok-2"]
    assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in out)
    assert [x["custom_id"] for x in err] == [f"{tag}-bad"]
    assert err[0]["response"]["status_code"] == 400 and err[0]["error"] is None
    assert "error" in err[0]["response"]["body"]

    r = api.cancel(b["id"], expect=409)
    assert r.headers["x-should-retry"] == "false"
    _has_error(r, type="invalid_request_error", param=None, code=None)


def test_failed_validation_batches(api):
    rows = [
        "{not json",
        {"method": "POST", "url": CHAT, "body": {"model": "fake-model", "messages": []}},  # no custom_id
    ]
    f = api.upload(jsonl_bytes(rows)).json()
    b = api.wait(api.create_batch(f["id"]).json()["id"])
    assert b["status"] == "failed", b
    assert b["errors"]["object"] == "list"
    assert [e["line"] for e in b["errors"]["data"]] == [1, 2], b["errors"]
    assert b["output_file_id"] is None and b["error_file_id"] is None

    # a nonexistent input file is not a create-time error; it fails with a file-level error
    b = api.wait(api.create_batch("file-doesnotexist000000000").json()["id"])
    assert b["status"] == "failed", b
    assert [(e["code"], e["param"], e["line"]) for e in b["errors"]["data"]] == [
        ("invalid_request", "file_id", None)
    ], b["errors"]

    r = api.cancel(b["id"], expect=409)
    assert r.headers["x-should-retry"] == "false"


def test_cancelled_batch(api):
    tag = uniq("oc")
    # fake-model-2 runs 4 lines at a time, so most lines are still queued when the cancel lands
    rows = [chat_line(f"{tag}-{i}", f"slow {i} [delay_ms=800]", model="fake-model-2") for i in range(12)]
    f = api.upload(jsonl_bytes(rows)).json()
    bid = api.create_batch(f["id"]).json()["id"]
    api.wait(bid, until=lambda b: b["status"] != "validating")

    c = api.cancel(bid).json()
    assert c["status"] in ("cancelling", "cancelled") and c["cancelling_at"] is not None, c
    b = api.wait(bid)
    assert b["status"] == "cancelled", b

    err = api.result_lines(b["error_file_id"])
    out = api.result_lines(b["output_file_id"])
    assert sorted(x["custom_id"] for x in out + err) == sorted(r["custom_id"] for r in rows)
    never_ran = [x for x in err if x["response"] is None]
    assert never_ran and all(x["error"]["code"] == "batch_cancelled" for x in never_ran), err

    again = api.cancel(bid).json()  # cancelling a cancelled batch is accepted
    assert again["status"] == "cancelled"


def test_batch_stats(api):
    data = jsonl_bytes([chat_line("s1", "one two three"), chat_line("s2", "four")])
    file_id = api.upload(data).json()["id"]
    batch = api.call("post", "/v1/batches", 200, json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}).json()
    deadline = time.monotonic() + WAIT_S
    while api.call("get", "/v1/batches/{batch_id}", 200, path={"batch_id": batch["id"]}).json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(POLL_S)
    stats = api.call("get", "/v1/batches/{batch_id}/stats", 200, path={"batch_id": batch["id"]}).json()
    assert stats["lines_done"] == stats["lines_total"] == 2
    assert stats["output_tokens"] > 0 and stats["lines_per_second"] > 0
    api.call("get", "/v1/batches/{batch_id}/stats", 404, path={"batch_id": "batch_nope"})


def test_list_batches(api):
    f = api.upload(jsonl_bytes([chat_line("l1", "listed")])).json()
    ids = [api.create_batch(f["id"]).json()["id"] for _ in range(3)]
    page = api.call("get", "/v1/batches", 200, params={"limit": 2}).json()
    assert [b["id"] for b in page["data"]] == ids[::-1][:2]  # newest first
    assert page["has_more"] is True and page["last_id"] == ids[1]
    rest = api.call("get", "/v1/batches", 200, params={"after": page["last_id"], "limit": 100}).json()
    assert rest["data"][0]["id"] == ids[0]
    api.call("get", "/v1/batches", 200)
    api.call("get", "/v1/batches", 400, params={"limit": 101})
    for bid in ids:
        api.wait(bid)


def test_batch_errors(api):
    f = api.upload(jsonl_bytes([chat_line("e1", "errors")])).json()
    bad = {"input_file_id": f["id"], "endpoint": "/v1/x", "completion_window": "24h"}
    r = api.call("post", "/v1/batches", 400, json=bad)
    _has_error(r, param="endpoint", code="invalid_value", type="invalid_request_error")
    r = api.create_batch(f["id"], expect=400, metadata={"tags": ["a"]})
    _has_error(r, param="metadata.tags", code="invalid_type")
    api.create_batch(f["id"], expect=400, completion_window="1h")
    other = api.upload(b"{}\n", purpose="user_data").json()
    r = api.create_batch(other["id"], expect=400)  # input file must have purpose=batch
    _has_error(r, param="input_file_id")

    missing = {"batch_id": "batch_doesnotexist0000000000000000"}
    api.call("get", "/v1/batches/{batch_id}", 404, path=missing)
    api.call("post", "/v1/batches/{batch_id}/cancel", 404, path=missing)


# ---------------------------------------------------------------------------
# models, unknown routes
# ---------------------------------------------------------------------------


def test_models(api):
    models = api.call("get", "/v1/models", 200).json()
    assert {"fake-model", "fake-model-2", "dead-model"} <= {m["id"] for m in models["data"]}


def test_unknown_route_is_error_envelope(api):
    # not an operation of the spec; the conventions promise the envelope and x-request-id anyway
    for method, path in (("GET", "/v1/definitely-not-a-route"), ("DELETE", "/v1/batches")):
        r = api.http.request(method, api.url + path)
        assert r.status_code == 404, (method, path, r.status_code)
        assert r.headers.get("x-request-id")
        assert_valid(r.json(), component("ErrorResponse"), f"{method} {path}")


def test_oversized_batch_create_body_is_error_envelope(api):
    body = {"input_file_id": "file-x", "endpoint": CHAT, "completion_window": "24h", "pad": "a" * (3 << 20)}
    r = api.http.post(api.url + "/v1/batches", json=body)
    assert 400 <= r.status_code < 500 and r.headers.get("x-request-id")
    assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.text[:200])
    assert_valid(r.json(), component("ErrorResponse"))


# ---------------------------------------------------------------------------
# coverage of the spec (keep last)
# ---------------------------------------------------------------------------


def test_every_documented_operation_was_exercised(request):
    mine = [i for i in request.session.items if i.module is request.module and i is not request.node]
    expected = {n for n, obj in vars(request.module).items() if n.startswith("test_") and callable(obj)}
    expected.discard(request.node.originalname)
    if {i.originalname for i in mine} != expected:
        pytest.skip("only meaningful when every test of test_openapi.py runs")

    missing = sorted(f"{m.upper()} {p}" for p, m in documented_operations() - set(EXERCISED))
    assert not missing, f"operations documented in openapi.yaml but never called: {missing}"
    assert len(REQUEST_IDS) == len(set(REQUEST_IDS)), "x-request-id values repeat"
