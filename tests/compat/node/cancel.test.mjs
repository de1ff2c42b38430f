// Batch cancellation through the official OpenAI Node SDK.
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
  BATCH_KEYS,
  OpenAI,
} from './harness.mjs';

const { ConflictError } = OpenAI;

describe('cancel', { timeout: 60_000 }, () => {
  let h;
  let client;

  before(async () => {
    h = await startServers();
    client = h.client;
  });
  after(async () => {
    await h?.stop();
  });

  it('cancel a slow batch -> cancelling -> cancelled, partial output, batch_cancelled lines', async () => {
    // fake-model-serial has max_concurrency = 1: lines run one after another.
    const model = 'fake-model-serial';
    const lines = [
      chatLine('fast-1', 'quick one', { model }),
      chatLine('slow-2', '[delay_ms=1500] slow two', { model }),
      chatLine('slow-3', '[delay_ms=1500] slow three', { model }),
      chatLine('slow-4', '[delay_ms=1500] slow four', { model }),
      chatLine('slow-5', '[delay_ms=1500] slow five', { model }),
      chatLine('slow-6', '[delay_ms=1500] slow six', { model }),
    ];
    const input = await uploadJsonl(client, lines);
    const created = await client.batches.create({
      input_file_id: input.id,
      endpoint: '/v1/chat/completions',
      completion_window: '24h',
    });

    // wait until the first (fast) line is done and the batch is running
    const { batch: running } = await waitForBatch(client, created.id, {
      timeoutMs: 10_000,
      until: (b) => b.status === 'in_progress' && b.request_counts.completed >= 1,
    });
    assert.equal(running.request_counts.total, 6);
    assert.ok(running.request_counts.completed < 6);

    const cancelling = await client.batches.cancel(created.id);
    for (const k of BATCH_KEYS) assert.ok(k in cancelling, `key ${k} in cancel response`);
    assert.ok(
      ['cancelling', 'cancelled'].includes(cancelling.status),
      `cancel response status is cancelling (or already cancelled), got ${cancelling.status}`,
    );
    assert.ok(Number.isInteger(cancelling.cancelling_at), 'cancelling_at set');

    const { batch, statuses } = await waitForBatch(client, created.id, { timeoutMs: 15_000 });
    assert.equal(batch.status, 'cancelled', `statuses: ${statuses.join(' -> ')}`);
    assert.ok(Number.isInteger(batch.cancelled_at), 'cancelled_at set');
    assert.ok(Number.isInteger(batch.cancelling_at));
    assert.ok(batch.cancelling_at <= batch.cancelled_at);
    assert.equal(batch.completed_at, null);
    assert.equal(batch.request_counts.total, 6);

    // partial results
    assert.ok(batch.output_file_id, 'output file holds the partial results');
    const out = byCustomId(await downloadJsonl(client, batch.output_file_id));
    assert.ok(out.has('fast-1'), 'the line finished before cancel is in the output file');
    for (const line of out.values()) {
      assert.equal(line.error, null);
      assert.equal(line.response.status_code, 200);
      assert.ok(line.id.startsWith('batch_req_'));
    }
    assert.ok(out.size < 6, 'not every line ran');

    assert.ok(batch.error_file_id, 'error file holds the never-executed lines');
    const errs = byCustomId(await downloadJsonl(client, batch.error_file_id));
    const cancelledLines = [...errs.values()].filter((l) => l.error?.code === 'batch_cancelled');
    assert.ok(cancelledLines.length >= 1, 'at least one batch_cancelled line');
    for (const l of cancelledLines) {
      assert.deepEqual(Object.keys(l).sort(), ['custom_id', 'error', 'id', 'response']);
      assert.ok(l.id.startsWith('batch_req_'));
      assert.equal(l.response, null, 'never-executed line has response null');
      assert.equal(typeof l.error.message, 'string');
    }
    // lines 3..6 can never have started before the cancel (serial model, 1.5 s each)
    for (const id of ['slow-4', 'slow-5', 'slow-6']) {
      assert.equal(errs.get(id)?.error?.code, 'batch_cancelled', `${id} is batch_cancelled`);
    }
    // every input line accounted for exactly once across both files
    const all = [...out.keys(), ...errs.keys()].sort();
    assert.deepEqual(all, lines.map((l) => l.custom_id).sort());
    assert.equal(batch.request_counts.completed, out.size);

    // cancelling an already cancelled batch is accepted (200)
    const again = await client.batches.cancel(created.id);
    assert.equal(again.status, 'cancelled');
  });

  it('cancel of a completed batch -> ConflictError (409, x-should-retry false, not retried)', async () => {
    const { batch } = await runBatch(client, [chatLine('done-1', 'finish fast')]);
    assert.equal(batch.status, 'completed');
    const path = `/v1/batches/${batch.id}/cancel`;
    const before = countRequests(h.requests, 'POST', path);
    const err = await expectApiError(client.batches.cancel(batch.id), ConflictError, {
      status: 409,
      type: 'invalid_request_error',
    });
    assert.ok(err.requestID, 'requestID set');
    assert.equal(err.headers.get('x-should-retry'), 'false');
    assert.equal(countRequests(h.requests, 'POST', path) - before, 1, 'SDK did not retry the 409');
    assert.match(err.message, /completed/);

    const still = await client.batches.retrieve(batch.id);
    assert.equal(still.status, 'completed');
    assert.equal(still.cancelling_at, null);
  });

  it('cancel of a failed batch -> ConflictError', async () => {
    const { batch } = await runBatch(client, ['{not json']);
    assert.equal(batch.status, 'failed');
    const err = await expectApiError(client.batches.cancel(batch.id), ConflictError, { status: 409 });
    assert.equal(err.headers.get('x-should-retry'), 'false');
  });
});
