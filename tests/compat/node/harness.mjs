// Test harness for the batchd OpenAI-Node-SDK compatibility suite.
//
// Starts the fake backend ($BATCHD_FAKE_BACKEND_BIN) and batchd ($BATCHD_BIN serve)
// on ephemeral loopback ports with a temporary config/data dir, and hands back an
// official `OpenAI` client pointed at batchd. Every test file starts its own pair of
// processes (node --test runs each file in its own process), so files are isolated.

import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import assert from 'node:assert/strict';

import OpenAI, { toFile } from 'openai';

export { OpenAI, toFile };

const START_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 5_000;
const MAX_CAPTURE = 64 * 1024;

export const LIMITS = Object.freeze({
  max_batch_lines: 1000,
  max_batch_input_bytes: 1048576,
  max_line_bytes: 65536,
  max_upload_bytes: 4194304,
});

export const TERMINAL_BATCH_STATUSES = new Set(['completed', 'failed', 'expired', 'cancelled']);

/** Every key of the Batch object (contract §4.5); real OpenAI sends all of them. */
export const BATCH_KEYS = Object.freeze([
  'id',
  'object',
  'endpoint',
  'model',
  'errors',
  'input_file_id',
  'completion_window',
  'status',
  'output_file_id',
  'error_file_id',
  'created_at',
  'in_progress_at',
  'expires_at',
  'finalizing_at',
  'completed_at',
  'failed_at',
  'expired_at',
  'cancelling_at',
  'cancelled_at',
  'request_counts',
  'usage',
  'metadata',
]);

function requireEnv(name) {
  const v = process.env[name];
  if (!v) {
    throw new Error(`environment variable ${name} must point at the binary (see tests/compat/node/README.md)`);
  }
  return v;
}

/** A loopback port that nothing listens on (bound, then released). */
async function closedPort() {
  return await new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * What $BATCHD_COMPAT_BACKENDS asks batchd to run on besides its defaults
 * (SQLite, local disk): "s3" puts file bytes in a real S3-compatible server
 * (s3s-fs, installed by scripts/setup.sh), "postgres" the metadata in a
 * throwaway PostgreSQL cluster (scripts/pg-test-cluster.sh).
 */
function compatBackends() {
  const wanted = new Set(
    (process.env.BATCHD_COMPAT_BACKENDS ?? '')
      .split(',')
      .map((b) => b.trim())
      .filter(Boolean),
  );
  for (const b of wanted) {
    if (b !== 's3' && b !== 'postgres') throw new Error(`BATCHD_COMPAT_BACKENDS: unknown ${b}`);
  }
  return wanted;
}

async function waitForPort(port, child, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const open = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline || child.exitCode !== null) {
      throw new Error(`s3s-fs did not listen on port ${port}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Starts s3s-fs with a bucket `compat`; returns its child and batchd's `[storage]` section. */
async function startS3(tmp) {
  const cargoBin = path.join(process.env.CARGO_HOME ?? path.join(os.homedir(), '.cargo'), 'bin', 's3s-fs');
  const binary = existsSync(cargoBin) ? cargoBin : 's3s-fs';
  const root = path.join(tmp, 's3');
  await mkdir(path.join(root, 'compat'), { recursive: true });
  const port = await closedPort();
  const child = spawn(
    binary,
    ['--host', '127.0.0.1', '--port', String(port), '--access-key', 'compat-key', '--secret-key', 'compat-secret', root],
    { stdio: 'ignore' },
  );
  liveChildren.add(child);
  child.once('exit', () => liveChildren.delete(child));
  await waitForPort(port, child, START_TIMEOUT_MS);
  const section = `
[storage]
url = "s3://compat/batchd"
endpoint = "http://127.0.0.1:${port}"
region = "us-east-1"
access_key_id = "compat-key"
secret_access_key = "compat-secret"
`;
  return { child, section };
}

/** A PostgreSQL cluster that lives as long as this process; batchd's `[store]` section. */
function startPostgres() {
  const script = path.join(path.dirname(new URL(import.meta.url).pathname), '..', '..', '..', 'scripts', 'pg-test-cluster.sh');
  const url = execFileSync(script, [String(process.pid)], { encoding: 'utf8', timeout: 60_000 }).trim();
  return `\n[store]\nurl = ${JSON.stringify(url)}\n`;
}

const liveChildren = new Set();
process.on('exit', () => {
  for (const child of liveChildren) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

/**
 * Spawns `bin args...` and resolves with { child, url } once a stdout line matches
 * /listening on (http:\/\/\S+)/. Rejects (with captured stderr) on early exit or timeout.
 */
function spawnAndWait(label, bin, args, { env = process.env, timeoutMs = START_TIMEOUT_MS } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    liveChildren.add(child);
    const logs = { stdout: '', stderr: '' };
    const append = (key, chunk) => {
      logs[key] += chunk;
      if (logs[key].length > MAX_CAPTURE) logs[key] = logs[key].slice(-MAX_CAPTURE);
    };
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (c) => append('stderr', c));

    let settled = false;
    const finish = (err, value) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) {
        try {
          child.kill('SIGKILL');
        } catch {
          // ignore
        }
        reject(err);
      } else {
        resolve(value);
      }
    };

    const rl = readline.createInterface({ input: child.stdout });
    rl.on('line', (line) => {
      append('stdout', line + '\n');
      const m = /listening on (http:\/\/\S+)/.exec(line);
      if (m && !settled) {
        finish(null, { child, url: m[1].replace(/\/+$/, ''), logs });
      }
    });

    child.on('error', (e) => finish(new Error(`${label}: failed to spawn ${bin}: ${e.message}`)));
    child.on('exit', (code, signal) => {
      liveChildren.delete(child);
      child.exitInfo = { code, signal };
      // give stderr a moment to flush before reporting
      setTimeout(
        () =>
          finish(
            new Error(
              `${label} exited early (code=${code}, signal=${signal}) before printing "listening on".\n` +
                `--- stderr ---\n${logs.stderr}\n--- stdout ---\n${logs.stdout}`,
            ),
          ),
        50,
      );
    });

    const timer = setTimeout(
      () =>
        finish(
          new Error(
            `${label} did not print "listening on" within ${timeoutMs} ms.\n` +
              `--- stderr ---\n${logs.stderr}\n--- stdout ---\n${logs.stdout}`,
          ),
        ),
      timeoutMs,
    );
  });
}

async function stopChild(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  await new Promise((resolve) => {
    const t = setTimeout(() => {
      try {
        child.kill('SIGKILL');
      } catch {
        // ignore
      }
    }, STOP_TIMEOUT_MS);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    try {
      child.kill('SIGTERM');
    } catch {
      clearTimeout(t);
      resolve();
    }
  });
}

function tomlString(s) {
  return JSON.stringify(String(s));
}

/**
 * Starts fake backend + batchd. Returns:
 *   { client, url, fakeUrl, requests, makeClient, fakeStats, stop, logs }
 * `requests` records every HTTP request the default client sends ({method, url}).
 */
export async function startServers() {
  const batchdBin = requireEnv('BATCHD_BIN');
  const fakeBin = requireEnv('BATCHD_FAKE_BACKEND_BIN');

  const tmp = await mkdtemp(path.join(os.tmpdir(), 'batchd-node-compat-'));
  let fake;
  let server;
  let s3;
  try {
    fake = await spawnAndWait('fake backend', fakeBin, ['--listen', '127.0.0.1:0']);
    const deadPort = await closedPort();
    if (compatBackends().has('s3')) s3 = await startS3(tmp);
    const store = compatBackends().has('postgres') ? startPostgres() : '';

    const config = `
[server]
listen = "127.0.0.1:0"
data_dir = ${tomlString(path.join(tmp, 'data'))}

[limits]
max_upload_bytes = ${LIMITS.max_upload_bytes}
max_batch_input_bytes = ${LIMITS.max_batch_input_bytes}
max_batch_lines = ${LIMITS.max_batch_lines}
max_line_bytes = ${LIMITS.max_line_bytes}

[execution]
max_attempts = 3
retry_initial_backoff_ms = 20
retry_max_backoff_ms = 100
request_timeout_secs = 10

[[models]]
name = "fake-model"
url = ${tomlString(fake.url + '/v1')}
max_concurrency = 16

[[models]]
name = "fake-model-2"
url = ${tomlString(fake.url + '/v1')}
max_concurrency = 16

# one request at a time: used by the cancel tests so that some lines are still queued
[[models]]
name = "fake-model-serial"
url = ${tomlString(fake.url + '/v1')}
max_concurrency = 1

[[models]]
name = "dead-model"
url = "http://127.0.0.1:${deadPort}/v1"
max_concurrency = 4
${s3?.section ?? ''}${store}`;
    const configPath = path.join(tmp, 'batchd.toml');
    await writeFile(configPath, config);

    server = await spawnAndWait('batchd', batchdBin, ['serve', '--config', configPath]);
  } catch (e) {
    await stopChild(server?.child);
    await stopChild(fake?.child);
    await stopChild(s3?.child);
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }

  const requests = [];
  const makeClient = (opts = {}) => {
    const log = opts.requestLog ?? requests;
    return new OpenAI({
      baseURL: server.url + '/v1',
      apiKey: 'test',
      timeout: 30_000,
      fetch: async (input, init) => {
        const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
        log.push({ method: (init?.method ?? 'GET').toUpperCase(), url });
        return fetch(input, init);
      },
      ...opts.clientOptions,
    });
  };

  const client = makeClient();

  const fakeStats = async () => {
    const res = await fetch(fake.url + '/fake/stats');
    assert.equal(res.status, 200, 'fake backend /fake/stats');
    return await res.json();
  };

  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await stopChild(server.child);
    await stopChild(fake.child);
    await stopChild(s3?.child);
    await rm(tmp, { recursive: true, force: true });
  };

  return {
    client,
    url: server.url,
    fakeUrl: fake.url,
    requests,
    makeClient,
    fakeStats,
    stop,
    logs: { server: server.logs, fake: fake.logs },
  };
}

// ---------------------------------------------------------------------------
// JSONL helpers

/** One chat-completions request line (object). */
export function chatLine(customId, content, { model = 'fake-model', url = '/v1/chat/completions', extraBody } = {}) {
  return {
    custom_id: customId,
    method: 'POST',
    url,
    body: { model, messages: [{ role: 'user', content }], ...extraBody },
  };
}

export function embeddingLine(customId, input, { model = 'fake-model' } = {}) {
  return { custom_id: customId, method: 'POST', url: '/v1/embeddings', body: { model, input } };
}

export function completionLine(customId, prompt, { model = 'fake-model' } = {}) {
  return { custom_id: customId, method: 'POST', url: '/v1/completions', body: { model, prompt } };
}

export function responsesLine(customId, input, { model = 'fake-model' } = {}) {
  return { custom_id: customId, method: 'POST', url: '/v1/responses', body: { model, input } };
}

/** Serialises lines (objects are JSON-encoded, strings are used verbatim) into JSONL text. */
export function toJsonl(lines) {
  if (lines.length === 0) return '';
  return lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n') + '\n';
}

/** Uploads JSONL (array of lines, or a raw string) through `files.create` + `toFile`. */
export async function uploadJsonl(client, lines, { filename = 'input.jsonl', purpose = 'batch', ...rest } = {}) {
  const text = typeof lines === 'string' ? lines : toJsonl(lines);
  const file = await toFile(Buffer.from(text, 'utf8'), filename, { type: 'application/jsonl' });
  return await client.files.create({ file, purpose, ...rest });
}

/** Polls a batch until it reaches a terminal status. Returns { batch, statuses }. */
export async function waitForBatch(
  client,
  batchId,
  { timeoutMs = 30_000, intervalMs = 50, until = (b) => TERMINAL_BATCH_STATUSES.has(b.status) } = {},
) {
  const start = Date.now();
  const statuses = [];
  for (;;) {
    const batch = await client.batches.retrieve(batchId);
    if (statuses[statuses.length - 1] !== batch.status) statuses.push(batch.status);
    if (until(batch)) return { batch, statuses };
    if (Date.now() - start > timeoutMs) {
      throw new Error(
        `batch ${batchId} did not reach the expected state within ${timeoutMs} ms; ` +
          `statuses seen: ${statuses.join(' -> ')}; last: ${JSON.stringify(batch)}`,
      );
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Upload lines, create a batch and wait until it is terminal. */
export async function runBatch(client, lines, { endpoint = '/v1/chat/completions', metadata, timeoutMs } = {}) {
  const input = await uploadJsonl(client, lines);
  const created = await client.batches.create({
    input_file_id: input.id,
    endpoint,
    completion_window: '24h',
    ...(metadata ? { metadata } : {}),
  });
  const { batch, statuses } = await waitForBatch(client, created.id, { timeoutMs });
  return { input, created, batch, statuses };
}

/** Downloads a file's content through `files.content` and returns the text. */
export async function downloadText(client, fileId) {
  const res = await client.files.content(fileId);
  assert.ok(res instanceof Response, 'files.content() should resolve to a fetch Response');
  return await res.text();
}

/** Downloads a JSONL file and parses every non-empty line. */
export async function downloadJsonl(client, fileId) {
  const text = await downloadText(client, fileId);
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l, i) => {
      try {
        return JSON.parse(l);
      } catch (e) {
        throw new Error(`line ${i + 1} of file ${fileId} is not JSON: ${l.slice(0, 200)}`);
      }
    });
}

/** Returns a Map custom_id -> line, asserting custom_ids are unique. */
export function byCustomId(lines) {
  const m = new Map();
  for (const l of lines) {
    assert.ok(!m.has(l.custom_id), `duplicate custom_id ${l.custom_id} in result file`);
    m.set(l.custom_id, l);
  }
  return m;
}

/**
 * Awaits `promise`, asserts it rejects with an instance of `ErrorClass`, and checks
 * selected fields ({status, code, param, type}). Returns the error.
 */
export async function expectApiError(promise, ErrorClass, expected = {}) {
  let err;
  try {
    const value = await promise;
    assert.fail(`expected ${ErrorClass.name}, but the call succeeded with ${JSON.stringify(value)?.slice(0, 500)}`);
  } catch (e) {
    if (e instanceof assert.AssertionError) throw e;
    err = e;
  }
  assert.ok(
    err instanceof ErrorClass,
    `expected ${ErrorClass.name}, got ${err?.constructor?.name}: ${err?.message} (status=${err?.status})`,
  );
  for (const [k, v] of Object.entries(expected)) {
    assert.deepEqual(err[k], v, `error.${k} (error body: ${JSON.stringify(err.error)})`);
  }
  return err;
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Count of recorded requests matching method and a URL pathname predicate. */
export function countRequests(requests, method, pathnameMatch) {
  return requests.filter((r) => {
    if (r.method !== method) return false;
    const p = new URL(r.url).pathname;
    return typeof pathnameMatch === 'string' ? p === pathnameMatch : pathnameMatch.test(p);
  }).length;
}
