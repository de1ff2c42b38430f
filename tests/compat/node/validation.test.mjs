// Input-file validation (status validating -> failed with errors.data) through the official OpenAI Node SDK.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startServers, runBatch, chatLine, embeddingLine, LIMITS, BATCH_KEYS } from './harness.mjs';

/** Runs a batch over `lines` and asserts it failed validation with exactly `expected` errors. */
async function expectValidationFailure(client, lines, expected, { endpoint = '/v1/chat/completions' } = {}) {
  const { batch, statuses } = await runBatch(client, lines, { endpoint });
  assert.equal(batch.status, 'failed', `statuses ${statuses.join(' -> ')}; batch ${JSON.stringify(batch)}`);
  for (const k of BATCH_KEYS) assert.ok(k in batch, `key ${k} present on failed batch`);
  assert.ok(batch.errors && typeof batch.errors === 'object', 'errors set');
  assert.equal(batch.errors.object, 'list');
  assert.ok(Array.isArray(batch.errors.data));
  // an expected entry without a `param` key leaves param unchecked (the contract does not fix it)
  const got = batch.errors.data.map((e, i) => {
    const g = { code: e.code, param: e.param, line: e.line };
    if (expected[i] && !('param' in expected[i])) delete g.param;
    return g;
  });
  assert.deepEqual(got, expected, `errors.data = ${JSON.stringify(batch.errors.data)}`);
  for (const e of batch.errors.data) {
    assert.deepEqual(Object.keys(e).sort(), ['code', 'line', 'message', 'param']);
    assert.ok(typeof e.message === 'string' && e.message.length > 0, 'message set');
  }
  assert.ok(Number.isInteger(batch.failed_at), 'failed_at set');
  assert.equal(batch.in_progress_at, null);
  assert.equal(batch.completed_at, null);
  assert.equal(batch.output_file_id, null);
  assert.equal(batch.error_file_id, null);
  assert.deepEqual(batch.request_counts, { total: 0, completed: 0, failed: 0 });
  return batch;
}

describe('validation', { timeout: 90_000 }, () => {
  let h;
  let client;
  let requestsBefore;

  before(async () => {
    h = await startServers();
    client = h.client;
    requestsBefore = (await h.fakeStats()).requests;
  });
  after(async () => {
    await h?.stop();
  });

  it('invalid_json_line (param null, 1-based line)', async () => {
    await expectValidationFailure(client, [chatLine('a', 'ok'), '{"custom_id": "b", this is not json', chatLine('c', 'ok')], [
      { code: 'invalid_json_line', param: null, line: 2 },
    ]);
  });

  for (const missing of ['custom_id', 'method', 'url', 'body']) {
    it(`missing_required_parameter: ${missing}`, async () => {
      const bad = chatLine('m-2', 'missing');
      delete bad[missing];
      await expectValidationFailure(client, [chatLine('m-1', 'ok'), bad], [
        { code: 'missing_required_parameter', param: missing, line: 2 },
      ]);
    });
  }

  it('invalid_url (url does not match the batch endpoint)', async () => {
    await expectValidationFailure(
      client,
      [chatLine('u-1', 'ok'), chatLine('u-2', 'ok'), chatLine('u-3', 'wrong url', { url: '/v1/embeddings' })],
      [{ code: 'invalid_url', param: 'url', line: 3 }],
    );
  });

  it('streaming_unsupported (body.stream true)', async () => {
    await expectValidationFailure(client, [chatLine('s-1', 'stream me', { extraBody: { stream: true } })], [
      { code: 'streaming_unsupported', param: 'body.stream', line: 1 },
    ]);
  });

  it('model_not_found (model not configured)', async () => {
    await expectValidationFailure(client, [chatLine('n-1', 'who', { model: 'no-such-model' })], [
      { code: 'model_not_found', param: 'body.model', line: 1 },
    ]);
  });

  it('invalid_request: missing model / chat without messages', async () => {
    const noModel = chatLine('r-1', 'x');
    delete noModel.body.model;
    await expectValidationFailure(client, [noModel], [{ code: 'invalid_request', param: 'body.model', line: 1 }]);

    const noMessages = chatLine('r-2', 'x');
    delete noMessages.body.messages;
    await expectValidationFailure(client, [noMessages], [{ code: 'invalid_request', param: 'body.messages', line: 1 }]);
  });

  it('duplicate_custom_id (line = the repeated line)', async () => {
    await expectValidationFailure(
      client,
      [chatLine('dup', 'first'), chatLine('other', 'x'), chatLine('dup', 'again')],
      [{ code: 'duplicate_custom_id', param: 'custom_id', line: 3 }],
    );
  });

  it('mixed_models (line = first line with a different model)', async () => {
    await expectValidationFailure(
      client,
      [
        chatLine('mm-1', 'x'),
        chatLine('mm-2', 'x'),
        chatLine('mm-3', 'x', { model: 'fake-model-2' }),
      ],
      [{ code: 'mixed_models', param: 'body.model', line: 3 }],
    );
  });

  it('empty_file (line null)', async () => {
    await expectValidationFailure(client, '', [{ code: 'empty_file', line: null }]);
  });

  it('too_many_lines (line null)', async () => {
    const lines = Array.from({ length: LIMITS.max_batch_lines + 1 }, (_, i) => chatLine(`t-${i}`, 'x'));
    await expectValidationFailure(client, lines, [{ code: 'too_many_lines', line: null }]);
  });

  it('exactly max_batch_lines lines is accepted', async () => {
    const lines = Array.from({ length: LIMITS.max_batch_lines }, (_, i) => chatLine(`ok-${i}`, 'x'));
    const { batch } = await runBatch(client, lines, { timeoutMs: 60_000 });
    assert.equal(batch.status, 'completed', JSON.stringify(batch.errors));
    assert.deepEqual(batch.request_counts, { total: 1000, completed: 1000, failed: 0 });
  });

  it('file_too_large (line null)', async () => {
    const filler = 'w '.repeat(3000);
    const lines = Array.from({ length: 200 }, (_, i) => chatLine(`big-${i}`, filler));
    const size = lines.reduce((a, l) => a + JSON.stringify(l).length + 1, 0);
    assert.ok(size > LIMITS.max_batch_input_bytes && size < LIMITS.max_upload_bytes, `input size ${size}`);
    await expectValidationFailure(client, lines, [{ code: 'file_too_large', line: null }]);
  });

  it('line_too_large (line n)', async () => {
    const huge = chatLine('huge', 'x'.repeat(LIMITS.max_line_bytes + 10));
    await expectValidationFailure(client, [chatLine('small', 'x'), huge], [
      { code: 'line_too_large', line: 2 },
    ]);
  });

  it('several problems are all reported, in line order', async () => {
    const noCustomId = chatLine('x', 'x');
    delete noCustomId.custom_id;
    await expectValidationFailure(
      client,
      [
        chatLine('g-1', 'fine'),
        'not json at all',
        noCustomId,
        chatLine('g-4', 'wrong url', { url: '/v1/completions' }),
        chatLine('g-5', 'stream', { extraBody: { stream: true } }),
      ],
      [
        { code: 'invalid_json_line', param: null, line: 2 },
        { code: 'missing_required_parameter', param: 'custom_id', line: 3 },
        { code: 'invalid_url', param: 'url', line: 4 },
        { code: 'streaming_unsupported', param: 'body.stream', line: 5 },
      ],
    );
  });

  it('embeddings batch: wrong url on an embeddings batch', async () => {
    await expectValidationFailure(
      client,
      [embeddingLine('e-1', 'x'), chatLine('e-2', 'chat in an embeddings batch')],
      [{ code: 'invalid_url', param: 'url', line: 2 }],
      { endpoint: '/v1/embeddings' },
    );
  });

  it('failed validation never reached the backend', async () => {
    // only the "exactly max_batch_lines" batch executed in this file
    const after = (await h.fakeStats()).requests;
    assert.equal(after - requestsBefore, LIMITS.max_batch_lines);
  });
});
