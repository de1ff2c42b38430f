// Batches API (create / execute / results / list / errors) through the official OpenAI Node SDK.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  startServers,
  uploadJsonl,
  runBatch,
  waitForBatch,
  downloadJsonl,
  byCustomId,
  expectApiError,
  countRequests,
  chatLine,
  embeddingLine,
  completionLine,
  responsesLine,
  BATCH_KEYS,
  OpenAI,
} from './harness.mjs';

const { NotFoundError, BadRequestError } = OpenAI;

const words = (s) => Math.max(1, s.split(/\s+/).filter(Boolean).length);

function assertAllBatchKeys(b) {
  for (const k of BATCH_KEYS) assert.ok(k in b, `batch key "${k}" present (got keys ${Object.keys(b).join(',')})`);
  assert.equal(b.object, 'batch');
  assert.ok(typeof b.id === 'string' && b.id.startsWith('batch_'), `batch id ${b.id}`);
  assert.equal(b.completion_window, '24h');
  assert.ok(Number.isInteger(b.created_at));
  assert.equal(b.expires_at, b.created_at + 86400);
  assert.deepEqual(Object.keys(b.request_counts).sort(), ['completed', 'failed', 'total']);
}

function assertUsageShape(u) {
  assert.ok(u && typeof u === 'object', `usage is an object: ${JSON.stringify(u)}`);
  assert.deepEqual(Object.keys(u).sort(), [
    'input_tokens',
    'input_tokens_details',
    'output_tokens',
    'output_tokens_details',
    'total_tokens',
  ]);
  assert.ok(Number.isInteger(u.input_tokens_details.cached_tokens));
  assert.ok(Number.isInteger(u.output_tokens_details.reasoning_tokens));
}

function assertResultLineKeys(line) {
  assert.deepEqual(Object.keys(line).sort(), ['custom_id', 'error', 'id', 'response'], JSON.stringify(line));
  assert.ok(typeof line.id === 'string' && line.id.startsWith('batch_req_'), `line id ${line.id}`);
}

function assertSuccessLine(line, customId) {
  assertResultLineKeys(line);
  assert.equal(line.custom_id, customId);
  assert.equal(line.error, null);
  assert.ok(line.response && typeof line.response === 'object');
  assert.deepEqual(Object.keys(line.response).sort(), ['body', 'request_id', 'status_code']);
  assert.equal(line.response.status_code, 200);
  assert.ok(typeof line.response.request_id === 'string' && line.response.request_id.length > 0);
  assert.ok(
    line.response.body && typeof line.response.body === 'object' && !Array.isArray(line.response.body),
    `response.body must be a JSON object, got ${typeof line.response.body}`,
  );
}

describe('batches', { timeout: 90_000 }, () => {
  let h;
  let client;

  before(async () => {
    h = await startServers();
    client = h.client;
  });
  after(async () => {
    await h?.stop();
  });

  it('create returns a validating batch with every key; chat batch runs to completed with exact output lines, counts and usage', async () => {
    const texts = ['hello world', 'one two three', 'single'];
    const lines = texts.map((t, i) => chatLine(`req-${i + 1}`, t));
    const input = await uploadJsonl(client, lines);
    const created = await client.batches.create({
      input_file_id: input.id,
      endpoint: '/v1/chat/completions',
      completion_window: '24h',
      metadata: { project: 'compat', run: 'node' },
    });
    assertAllBatchKeys(created);
    assert.ok(created._request_id, 'x-request-id on create');
    assert.equal(created.status, 'validating');
    assert.equal(created.endpoint, '/v1/chat/completions');
    assert.equal(created.input_file_id, input.id);
    assert.deepEqual(created.metadata, { project: 'compat', run: 'node' });
    for (const k of [
      'errors',
      'output_file_id',
      'error_file_id',
      'in_progress_at',
      'finalizing_at',
      'completed_at',
      'failed_at',
      'expired_at',
      'cancelling_at',
      'cancelled_at',
    ]) {
      assert.equal(created[k], null, `${k} is null on create`);
    }

    const { batch, statuses } = await waitForBatch(client, created.id);
    assertAllBatchKeys(batch);
    assert.equal(batch.status, 'completed', `statuses: ${statuses.join(' -> ')}; ${JSON.stringify(batch.errors)}`);
    const order = ['validating', 'in_progress', 'finalizing', 'completed'];
    for (let i = 1; i < statuses.length; i++) {
      assert.ok(order.indexOf(statuses[i]) > order.indexOf(statuses[i - 1]), `status order ${statuses.join(' -> ')}`);
    }
    assert.equal(batch.model, 'fake-model');
    assert.deepEqual(batch.request_counts, { total: 3, completed: 3, failed: 0 });
    assert.equal(batch.errors, null);
    assert.ok(Number.isInteger(batch.in_progress_at));
    assert.ok(Number.isInteger(batch.finalizing_at));
    assert.ok(Number.isInteger(batch.completed_at));
    assert.ok(batch.created_at <= batch.in_progress_at);
    assert.ok(batch.in_progress_at <= batch.finalizing_at);
    assert.ok(batch.finalizing_at <= batch.completed_at);
    for (const k of ['failed_at', 'expired_at', 'cancelling_at', 'cancelled_at', 'error_file_id']) {
      assert.equal(batch[k], null, `${k} null on a fully successful completed batch`);
    }
    assert.deepEqual(batch.metadata, { project: 'compat', run: 'node' });

    const promptTokens = texts.reduce((a, t) => a + words(t), 0);
    const completionTokens = texts.reduce((a, t) => a + words(t) + 1, 0);
    assertUsageShape(batch.usage);
    assert.deepEqual(batch.usage, {
      input_tokens: promptTokens,
      input_tokens_details: { cached_tokens: 0 },
      output_tokens: completionTokens,
      output_tokens_details: { reasoning_tokens: 0 },
      total_tokens: promptTokens + completionTokens,
    });

    assert.ok(batch.output_file_id, 'output_file_id set');
    const outFile = await client.files.retrieve(batch.output_file_id);
    assert.equal(outFile.purpose, 'batch_output');
    assert.equal(outFile.filename, `${batch.id}_output.jsonl`);
    assert.equal(outFile.status, 'processed');

    const res = await client.files.content(batch.output_file_id);
    assert.ok(res instanceof Response);
    const raw = await res.text();
    assert.equal(Buffer.byteLength(raw), outFile.bytes, 'output file bytes match File.bytes');

    const out = await downloadJsonl(client, batch.output_file_id);
    assert.equal(out.length, 3);
    const byId = byCustomId(out);
    const lineIds = new Set();
    texts.forEach((t, i) => {
      const line = byId.get(`req-${i + 1}`);
      assert.ok(line, `output line for req-${i + 1}`);
      assertSuccessLine(line, `req-${i + 1}`);
      lineIds.add(line.id);
      const body = line.response.body;
      assert.equal(body.object, 'chat.completion');
      assert.equal(body.model, 'fake-model');
      assert.equal(body.choices[0].message.content, `echo: ${t}`);
      assert.deepEqual(body.usage, {
        prompt_tokens: words(t),
        completion_tokens: words(t) + 1,
        total_tokens: 2 * words(t) + 1,
      });
    });
    assert.equal(lineIds.size, 3, 'batch_req ids are unique');
  });

  it('backend 400 lines go to the error file with response filled; batch still completed', async () => {
    const { batch } = await runBatch(client, [
      chatLine('ok-1', 'alpha beta'),
      chatLine('bad-1', '[status=400] please fail'),
      chatLine('ok-2', 'gamma'),
    ]);
    assert.equal(batch.status, 'completed');
    assert.deepEqual(batch.request_counts, { total: 3, completed: 2, failed: 1 });
    assert.ok(batch.output_file_id);
    assert.ok(batch.error_file_id, 'error_file_id set when a line failed');
    assertUsageShape(batch.usage);
    assert.equal(batch.usage.input_tokens, words('alpha beta') + words('gamma'), 'usage sums successful lines');

    const errFile = await client.files.retrieve(batch.error_file_id);
    assert.equal(errFile.purpose, 'batch_output');
    assert.equal(errFile.filename, `${batch.id}_error.jsonl`);

    const out = byCustomId(await downloadJsonl(client, batch.output_file_id));
    assert.deepEqual([...out.keys()].sort(), ['ok-1', 'ok-2']);
    assertSuccessLine(out.get('ok-1'), 'ok-1');
    assertSuccessLine(out.get('ok-2'), 'ok-2');

    const errs = await downloadJsonl(client, batch.error_file_id);
    assert.equal(errs.length, 1);
    const e = errs[0];
    assertResultLineKeys(e);
    assert.equal(e.custom_id, 'bad-1');
    assert.equal(e.error, null, 'error is null when the backend answered');
    assert.deepEqual(Object.keys(e.response).sort(), ['body', 'request_id', 'status_code']);
    assert.equal(e.response.status_code, 400);
    assert.ok(typeof e.response.request_id === 'string');
    assert.deepEqual(e.response.body, {
      error: { message: 'fake backend error 400', type: 'fake_error', param: null, code: null },
    });
  });

  it('all lines failing -> completed, output_file_id null, error file has every line', async () => {
    const { batch } = await runBatch(client, [
      chatLine('f-1', '[status=400] a'),
      chatLine('f-2', '[status=404] b'),
    ]);
    assert.equal(batch.status, 'completed');
    assert.deepEqual(batch.request_counts, { total: 2, completed: 0, failed: 2 });
    assert.equal(batch.output_file_id, null, 'output_file_id null when no line succeeded');
    const errs = byCustomId(await downloadJsonl(client, batch.error_file_id));
    assert.equal(errs.get('f-1').response.status_code, 400);
    assert.equal(errs.get('f-2').response.status_code, 404);
  });

  it('transient 503s are retried (fail_times within max_attempts) and succeed', async () => {
    const before = (await h.fakeStats()).requests;
    const { batch } = await runBatch(client, [chatLine('retry-1', '[fail_times=2] flaky once twice')]);
    assert.equal(batch.status, 'completed');
    assert.deepEqual(batch.request_counts, { total: 1, completed: 1, failed: 0 });
    assert.equal(batch.error_file_id, null);
    const after = (await h.fakeStats()).requests;
    assert.equal(after - before, 3, 'two 503s then one success = 3 backend requests');
    const [line] = await downloadJsonl(client, batch.output_file_id);
    assertSuccessLine(line, 'retry-1');
  });

  it('persistent 503 gives up after max_attempts=3; a 400 is not retried', async () => {
    let before = (await h.fakeStats()).requests;
    const r1 = await runBatch(client, [chatLine('down-1', '[status=503] always down')]);
    assert.equal(r1.batch.status, 'completed');
    assert.deepEqual(r1.batch.request_counts, { total: 1, completed: 0, failed: 1 });
    assert.equal((await h.fakeStats()).requests - before, 3, '503 attempted max_attempts=3 times');
    const [e] = await downloadJsonl(client, r1.batch.error_file_id);
    assert.equal(e.custom_id, 'down-1');
    assert.equal(e.response.status_code, 503);
    assert.equal(e.error, null);

    before = (await h.fakeStats()).requests;
    const r2 = await runBatch(client, [chatLine('bad-once', '[status=400] no retry please')]);
    assert.deepEqual(r2.batch.request_counts, { total: 1, completed: 0, failed: 1 });
    assert.equal((await h.fakeStats()).requests - before, 1, '400 is not retried');
  });

  it('unreachable backend (dead-model) -> line fails, batch completed', async () => {
    const { batch } = await runBatch(client, [chatLine('dead-1', 'anyone there', { model: 'dead-model' })]);
    assert.equal(batch.status, 'completed', JSON.stringify(batch));
    assert.deepEqual(batch.request_counts, { total: 1, completed: 0, failed: 1 });
    assert.equal(batch.output_file_id, null);
    const errs = await downloadJsonl(client, batch.error_file_id);
    assert.equal(errs.length, 1);
    assertResultLineKeys(errs[0]);
    assert.equal(errs[0].custom_id, 'dead-1');
    assert.ok(errs[0].response !== null || errs[0].error !== null, 'failed line carries response or error');
  });

  it('embeddings endpoint', async () => {
    const { batch } = await runBatch(
      client,
      [embeddingLine('emb-1', 'the quick brown fox'), embeddingLine('emb-2', ['a b', 'c'])],
      { endpoint: '/v1/embeddings' },
    );
    assert.equal(batch.status, 'completed', JSON.stringify(batch.errors));
    assert.equal(batch.endpoint, '/v1/embeddings');
    assert.deepEqual(batch.request_counts, { total: 2, completed: 2, failed: 0 });
    assertUsageShape(batch.usage);
    assert.equal(batch.usage.output_tokens, 0, 'embeddings have no output tokens');
    assert.equal(batch.usage.input_tokens, batch.usage.total_tokens);
    const out = byCustomId(await downloadJsonl(client, batch.output_file_id));
    const e1 = out.get('emb-1');
    assertSuccessLine(e1, 'emb-1');
    assert.equal(e1.response.body.object, 'list');
    assert.equal(e1.response.body.data.length, 1);
    assert.equal(e1.response.body.data[0].object, 'embedding');
    assert.equal(e1.response.body.data[0].embedding.length, 8);
    assert.equal(e1.response.body.usage.prompt_tokens, 4);
    const e2 = out.get('emb-2');
    assertSuccessLine(e2, 'emb-2');
    assert.equal(e2.response.body.data.length, 2);
    assert.deepEqual(
      e2.response.body.data.map((d) => d.index),
      [0, 1],
    );
  });

  it('completions and responses endpoints', async () => {
    const c = await runBatch(client, [completionLine('cmp-1', 'say hi')], { endpoint: '/v1/completions' });
    assert.equal(c.batch.status, 'completed', JSON.stringify(c.batch.errors));
    const [cl] = await downloadJsonl(client, c.batch.output_file_id);
    assertSuccessLine(cl, 'cmp-1');
    assert.equal(cl.response.body.object, 'text_completion');
    assert.equal(cl.response.body.choices[0].text, 'echo: say hi');

    const r = await runBatch(client, [responsesLine('rsp-1', 'hello responses api')], { endpoint: '/v1/responses' });
    assert.equal(r.batch.status, 'completed', JSON.stringify(r.batch.errors));
    const [rl] = await downloadJsonl(client, r.batch.output_file_id);
    assertSuccessLine(rl, 'rsp-1');
    assert.equal(rl.response.body.object, 'response');
    assert.equal(rl.response.body.output[0].content[0].text, 'echo: hello responses api');
    assertUsageShape(r.batch.usage);
    assert.equal(r.batch.usage.input_tokens, 3);
    assert.equal(r.batch.usage.output_tokens, 4);
    assert.equal(r.batch.usage.total_tokens, 7);
  });

  it('batches.list paginates newest first across pages (limit 2, for await)', async () => {
    const input = await uploadJsonl(client, [chatLine('l-1', 'list me')]);
    const ids = [];
    for (let i = 0; i < 5; i++) {
      const b = await client.batches.create({
        input_file_id: input.id,
        endpoint: '/v1/chat/completions',
        completion_window: '24h',
      });
      ids.push(b.id);
    }
    const newestFirst = [...ids].reverse();

    const first = await client.batches.list({ limit: 2 });
    assert.equal(first.data.length, 2);
    assert.equal(first.has_more, true);
    assert.deepEqual(
      first.data.map((b) => b.id),
      newestFirst.slice(0, 2),
    );
    assertAllBatchKeys(first.data[0]);

    const before = h.requests.length;
    const seen = [];
    for await (const b of client.batches.list({ limit: 2 })) {
      assert.equal(b.object, 'batch');
      seen.push(b);
    }
    const pageReqs = h.requests.slice(before).filter((r) => new URL(r.url).pathname === '/v1/batches');
    assert.ok(pageReqs.length >= 3, `several pages fetched (got ${pageReqs.length})`);
    assert.equal(new URL(pageReqs[1].url).searchParams.get('after'), seen[1].id);
    assert.equal(new URL(pageReqs[1].url).searchParams.get('limit'), '2');

    const seenIds = seen.map((b) => b.id);
    assert.equal(new Set(seenIds).size, seenIds.length, 'no batch listed twice');
    assert.deepEqual(seenIds.slice(0, 5), newestFirst, 'newest first');
    for (let i = 1; i < seen.length; i++) {
      assert.ok(seen[i - 1].created_at >= seen[i].created_at, 'created_at non-increasing');
    }

    const raw = await (await client.batches.list({ limit: 2 }).asResponse()).json();
    assert.equal(raw.object, 'list');
    assert.equal(raw.has_more, true);
    assert.equal(raw.first_id, raw.data[0].id);
    assert.equal(raw.last_id, raw.data[1].id);

    // default limit 20: all batches of this file (< 20) come in one page
    const all = await client.batches.list();
    assert.equal(all.data.length, seenIds.length);
    assert.equal(all.has_more, false);

    for (const id of ids) await waitForBatch(client, id);
  });

  it('unknown batch id -> NotFoundError with requestID (retrieve and cancel)', async () => {
    const id = 'batch_00000000000000000000000000000000';
    const e1 = await expectApiError(client.batches.retrieve(id), NotFoundError, { status: 404 });
    assert.ok(typeof e1.requestID === 'string' && e1.requestID.length > 0);
    assert.equal(typeof e1.error?.message, 'string');
    const e2 = await expectApiError(client.batches.cancel(id), NotFoundError, { status: 404 });
    assert.ok(e2.requestID);
  });

  it('bad endpoint -> BadRequestError param endpoint, code invalid_value', async () => {
    const input = await uploadJsonl(client, [chatLine('x', 'y')]);
    const err = await expectApiError(
      client.batches.create({ input_file_id: input.id, endpoint: '/v1/nope', completion_window: '24h' }),
      BadRequestError,
      { status: 400, param: 'endpoint', code: 'invalid_value', type: 'invalid_request_error' },
    );
    assert.ok(err.requestID);
  });

  it('bad completion_window -> BadRequestError param completion_window', async () => {
    const input = await uploadJsonl(client, [chatLine('x', 'y')]);
    for (const cw of ['1h', '48h', '']) {
      const err = await expectApiError(
        client.batches.create({ input_file_id: input.id, endpoint: '/v1/chat/completions', completion_window: cw }),
        BadRequestError,
        { status: 400, param: 'completion_window' },
      );
      // contract §1.4: "400 whose message mentions completion_window"
      assert.match(err.message, /completion_window/, 'error message names the offending field');
    }
  });

  it('metadata: non-string value -> invalid_type param metadata.<key>; more than 16 keys -> 400', async () => {
    const input = await uploadJsonl(client, [chatLine('x', 'y')]);
    await expectApiError(
      client.batches.create({
        input_file_id: input.id,
        endpoint: '/v1/chat/completions',
        completion_window: '24h',
        metadata: { tags: ['a', 'b'] },
      }),
      BadRequestError,
      { status: 400, code: 'invalid_type', param: 'metadata.tags' },
    );
    const many = Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, 'v']));
    await expectApiError(
      client.batches.create({
        input_file_id: input.id,
        endpoint: '/v1/chat/completions',
        completion_window: '24h',
        metadata: many,
      }),
      BadRequestError,
      { status: 400 },
    );
  });

  it('nonexistent input file: create succeeds, batch fails with invalid_request param file_id', async () => {
    const created = await client.batches.create({
      input_file_id: 'file-nosuchfile000000000000',
      endpoint: '/v1/chat/completions',
      completion_window: '24h',
    });
    assertAllBatchKeys(created);
    const { batch } = await waitForBatch(client, created.id);
    assert.equal(batch.status, 'failed');
    assert.equal(batch.errors.object, 'list');
    assert.equal(batch.errors.data.length, 1);
    const [e] = batch.errors.data;
    assert.equal(e.code, 'invalid_request');
    assert.equal(e.param, 'file_id');
    assert.equal(e.line, null);
    assert.equal(typeof e.message, 'string');
    assert.ok(Number.isInteger(batch.failed_at));
    assert.deepEqual(batch.request_counts, { total: 0, completed: 0, failed: 0 });
  });

  it('every response carries x-request-id (withResponse)', async () => {
    const { response, request_id } = await client.batches.list({ limit: 1 }).withResponse();
    assert.ok(request_id);
    assert.equal(response.headers.get('x-request-id'), request_id);
    assert.ok(countRequests(h.requests, 'GET', '/v1/batches') > 0);
  });
});
