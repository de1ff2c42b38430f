// Files API through the official OpenAI Node SDK.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  startServers,
  toFile,
  uploadJsonl,
  downloadText,
  expectApiError,
  countRequests,
  chatLine,
  toJsonl,
  LIMITS,
  OpenAI,
} from './harness.mjs';

const { NotFoundError, BadRequestError, APIError } = OpenAI;

const THIRTY_DAYS = 30 * 24 * 3600;

function assertFileObject(f, { filename, purpose, bytes } = {}) {
  assert.equal(f.object, 'file');
  assert.equal(typeof f.id, 'string');
  assert.ok(f.id.length > 0);
  assert.ok(Number.isInteger(f.bytes), `bytes is an integer: ${f.bytes}`);
  assert.ok(Number.isInteger(f.created_at), `created_at is integer unix seconds: ${f.created_at}`);
  const now = Math.floor(Date.now() / 1000);
  assert.ok(Math.abs(now - f.created_at) < 120, `created_at ${f.created_at} close to now ${now}`);
  assert.equal(f.status, 'processed');
  assert.ok('expires_at' in f, 'expires_at key present');
  if (filename !== undefined) assert.equal(f.filename, filename);
  if (purpose !== undefined) assert.equal(f.purpose, purpose);
  if (bytes !== undefined) assert.equal(f.bytes, bytes);
}

describe('files', { timeout: 60_000 }, () => {
  let h;
  let client;

  before(async () => {
    h = await startServers();
    client = h.client;
  });
  after(async () => {
    await h?.stop();
  });

  it('upload with toFile returns a processed File object; retrieve returns the same', async () => {
    const text = toJsonl([chatLine('a', 'hello'), chatLine('b', 'world')]);
    const created = await client.files.create({
      file: await toFile(Buffer.from(text), 'requests.jsonl'),
      purpose: 'batch',
    });
    assertFileObject(created, { filename: 'requests.jsonl', purpose: 'batch', bytes: Buffer.byteLength(text) });
    assert.equal(created.expires_at, created.created_at + THIRTY_DAYS, 'batch files expire after 30 days');
    assert.ok(created._request_id, 'x-request-id exposed as _request_id');

    const got = await client.files.retrieve(created.id);
    assertFileObject(got, { filename: 'requests.jsonl', purpose: 'batch', bytes: created.bytes });
    assert.equal(got.id, created.id);
    assert.equal(got.created_at, created.created_at);
    assert.equal(got.expires_at, created.expires_at);
  });

  it('non-batch purpose has expires_at null unless expires_after is given', async () => {
    const plain = await client.files.create({
      file: await toFile(Buffer.from('some user data'), 'notes.txt'),
      purpose: 'user_data',
    });
    assertFileObject(plain, { purpose: 'user_data', filename: 'notes.txt' });
    assert.equal(plain.expires_at, null);

    const expiring = await client.files.create({
      file: await toFile(Buffer.from('short lived'), 'short.txt'),
      purpose: 'user_data',
      expires_after: { anchor: 'created_at', seconds: 3600 },
    });
    assertFileObject(expiring, { purpose: 'user_data' });
    assert.equal(expiring.expires_at, expiring.created_at + 3600);
  });

  it('waitForProcessing resolves with a processed file', async () => {
    const f = await uploadJsonl(client, [chatLine('w', 'wait')], { filename: 'wait.jsonl' });
    const done = await client.files.waitForProcessing(f.id, { pollInterval: 50, maxWait: 10_000 });
    assert.equal(done.id, f.id);
    assert.equal(done.status, 'processed');
  });

  it('files.content returns a fetch Response with the exact uploaded bytes', async () => {
    const text = toJsonl([chatLine('c1', 'ünïcödé ✓'), chatLine('c2', 'second')]);
    const f = await uploadJsonl(client, text, { filename: 'content.jsonl' });
    const res = await client.files.content(f.id);
    assert.ok(res instanceof Response, 'files.content() resolves to a Response');
    assert.equal(res.status, 200);
    const buf = Buffer.from(await res.arrayBuffer());
    assert.ok(buf.equals(Buffer.from(text, 'utf8')), 'content bytes equal uploaded bytes');
    assert.equal(buf.length, f.bytes);
  });

  it('list paginates with limit=2 across several pages (for await), order desc by default and asc on request', async () => {
    const ids = [];
    for (let i = 0; i < 5; i++) {
      const f = await client.files.create({
        file: await toFile(Buffer.from(`page item ${i}`), `page-${i}.txt`),
        purpose: 'vision',
      });
      ids.push(f.id);
    }

    // first page by hand
    const first = await client.files.list({ purpose: 'vision', limit: 2 });
    assert.equal(first.data.length, 2);
    assert.equal(first.has_more, true);
    assert.ok(first.hasNextPage());
    const second = await first.getNextPage();
    assert.equal(second.data.length, 2);
    assert.equal(second.has_more, true);
    const third = await second.getNextPage();
    assert.equal(third.data.length, 1);
    assert.equal(third.has_more, false);
    assert.equal(third.hasNextPage(), false);

    // whole iteration with for await, default order (desc)
    const before = h.requests.length;
    const desc = [];
    for await (const f of client.files.list({ purpose: 'vision', limit: 2 })) {
      assert.equal(f.object, 'file');
      assert.equal(f.purpose, 'vision');
      desc.push(f);
    }
    const pageRequests = h.requests.slice(before).filter((r) => new URL(r.url).pathname.endsWith('/files'));
    assert.equal(pageRequests.length, 3, 'three page requests for 5 items with limit 2');
    assert.equal(new URL(pageRequests[0].url).searchParams.get('after'), null);
    assert.equal(new URL(pageRequests[1].url).searchParams.get('after'), desc[1].id, 'cursor = last id of page 1');
    assert.equal(new URL(pageRequests[2].url).searchParams.get('after'), desc[3].id, 'cursor = last id of page 2');

    const descIds = desc.map((f) => f.id);
    assert.deepEqual(new Set(descIds), new Set(ids), 'every uploaded file listed exactly once');
    assert.equal(descIds.length, ids.length);
    for (let i = 1; i < desc.length; i++) {
      assert.ok(desc[i - 1].created_at >= desc[i].created_at, 'desc: created_at non-increasing');
    }
    assert.deepEqual(descIds, [...ids].reverse(), 'default order is newest first');

    const asc = [];
    for await (const f of client.files.list({ purpose: 'vision', limit: 2, order: 'asc' })) asc.push(f.id);
    assert.deepEqual(asc, ids, 'order=asc is oldest first');

    const explicitDesc = [];
    for await (const f of client.files.list({ purpose: 'vision', limit: 2, order: 'desc' })) explicitDesc.push(f.id);
    assert.deepEqual(explicitDesc, descIds);
  });

  it('list envelope: object list, first_id/last_id, has_more; empty page has null ids', async () => {
    const raw = await client.files.list({ purpose: 'vision', limit: 2 }).asResponse();
    const body = await raw.json();
    assert.equal(body.object, 'list');
    assert.equal(body.data.length, 2);
    assert.equal(body.first_id, body.data[0].id);
    assert.equal(body.last_id, body.data[1].id);
    assert.equal(body.has_more, true);
    assert.ok(raw.headers.get('x-request-id'), 'x-request-id on list');

    const emptyRaw = await client.files.list({ purpose: 'fine-tune' }).asResponse();
    const empty = await emptyRaw.json();
    assert.deepEqual(empty, { object: 'list', data: [], first_id: null, last_id: null, has_more: false });

    const page = await client.files.list({ purpose: 'fine-tune' });
    assert.equal(page.data.length, 0);
    assert.equal(page.hasNextPage(), false);
  });

  it('purpose filter returns only files with that purpose', async () => {
    const a = await client.files.create({
      file: await toFile(Buffer.from('assistant doc'), 'doc.txt'),
      purpose: 'assistants',
    });
    const all = [];
    for await (const f of client.files.list()) all.push(f);
    assert.ok(all.some((f) => f.purpose === 'batch'));
    assert.ok(all.some((f) => f.purpose === 'assistants'));

    const filtered = [];
    for await (const f of client.files.list({ purpose: 'assistants' })) filtered.push(f);
    assert.deepEqual(
      filtered.map((f) => f.id),
      [a.id],
    );
    const batchOnly = [];
    for await (const f of client.files.list({ purpose: 'batch', limit: 2 })) batchOnly.push(f);
    assert.ok(batchOnly.length >= 3);
    assert.ok(batchOnly.every((f) => f.purpose === 'batch'));
  });

  it('delete returns {id, object, deleted}; afterwards retrieve/content/delete give NotFoundError', async () => {
    const f = await uploadJsonl(client, [chatLine('d', 'delete me')], { filename: 'del.jsonl' });
    const del = await client.files.delete(f.id);
    assert.deepEqual({ ...del }, { id: f.id, object: 'file', deleted: true });

    const e1 = await expectApiError(client.files.retrieve(f.id), NotFoundError, { status: 404 });
    assert.ok(e1.requestID, 'requestID set on NotFoundError');
    await expectApiError(client.files.content(f.id), NotFoundError, { status: 404 });
    await expectApiError(client.files.delete(f.id), NotFoundError, { status: 404 });

    const listed = [];
    for await (const x of client.files.list()) listed.push(x.id);
    assert.ok(!listed.includes(f.id), 'deleted file not listed');
  });

  it('unknown file id -> NotFoundError with the OpenAI error envelope and requestID', async () => {
    const id = 'file-doesnotexist0000000000';
    const err = await expectApiError(client.files.retrieve(id), NotFoundError, {
      status: 404,
      param: 'id',
      code: null,
      type: 'invalid_request_error',
    });
    assert.equal(err.error.message, `No such File object: ${id}`);
    assert.ok(typeof err.requestID === 'string' && err.requestID.length > 0, 'requestID set');
    assert.equal(err.message, `404 No such File object: ${id}`);

    await expectApiError(client.files.content(id), NotFoundError, { status: 404 });
  });

  it('invalid purpose -> BadRequestError param purpose, code invalid_value', async () => {
    const err = await expectApiError(
      client.files.create({ file: await toFile(Buffer.from('x'), 'x.txt'), purpose: 'not-a-purpose' }),
      BadRequestError,
      { status: 400, param: 'purpose', code: 'invalid_value' },
    );
    assert.ok(err.requestID);
  });

  it('upload larger than max_upload_bytes -> 413 (every time, not a connection reset)', async () => {
    // The server must answer 413 in a way the client can read: if it closes the
    // connection while the client is still sending the body, Node's fetch reports
    // EPIPE/ECONNRESET (APIConnectionError) instead of the 413. Several attempts make
    // that race show up reliably.
    const countFiles = async () => {
      let n = 0;
      for await (const _ of client.files.list()) n++;
      return n;
    };
    const filesBefore = await countFiles();
    const big = Buffer.alloc(LIMITS.max_upload_bytes + 1024, 'a');
    const noRetry = h.makeClient({ clientOptions: { maxRetries: 0 } });
    const outcomes = [];
    for (let i = 0; i < 8; i++) {
      const err = await expectApiError(
        noRetry.files.create({ file: await toFile(big, 'big.jsonl'), purpose: 'batch' }),
        APIError,
      );
      outcomes.push(err.status ?? `${err.constructor.name}(${err.cause?.cause?.code ?? err.cause?.code ?? err.message})`);
    }
    assert.deepEqual(outcomes, Array(8).fill(413), `outcomes of 8 oversized uploads: ${outcomes.join(', ')}`);
    assert.equal(await countFiles(), filesBefore, 'no file stored for rejected uploads');
  });

  it('unknown route -> 404 with OpenAI error envelope and x-request-id', async () => {
    const before = countRequests(h.requests, 'GET', '/v1/definitely-not-a-route');
    const err = await expectApiError(client.get('/definitely-not-a-route'), NotFoundError, { status: 404 });
    assert.equal(typeof err.error?.message, 'string', `error envelope: ${JSON.stringify(err.error)}`);
    assert.ok('type' in err.error && 'param' in err.error && 'code' in err.error, 'all four error keys');
    assert.ok(err.requestID);
    assert.equal(countRequests(h.requests, 'GET', '/v1/definitely-not-a-route') - before, 1, '404 not retried');
  });
});
