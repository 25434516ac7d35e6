// The reference queue for `cargo bench --bench leadrelay`: graphile-worker 0.16
// (the last release that runs on Node 20), installed by the benchmark at run
// time into a temporary directory and never committed. Prints one JSON line.
//
// node reference.mjs CONNECTION_STRING throughput JOBS CONCURRENCY
// node reference.mjs CONNECTION_STRING latency SAMPLES
// node reference.mjs CONNECTION_STRING timing JOBS DELAY_MS
// node reference.mjs CONNECTION_STRING migrate   (installs its schema only)
import { run, runMigrations, makeWorkerUtils, Logger } from 'graphile-worker';

const [connectionString, mode, a, b] = process.argv.slice(2);
// A silent logger: graphile-worker logs every job by default, which would
// measure the terminal, not the queue.
const logger = new Logger(() => () => {});
const percentile = (xs, p) => {
  const s = [...xs].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.round((s.length - 1) * p))];
};

await runMigrations({ connectionString, logger });
const utils = await makeWorkerUtils({ connectionString, logger });

if (mode === 'migrate') {
  console.log(JSON.stringify({ migrated: true }));
} else if (mode === 'throughput') {
  const jobs = Number(a), concurrency = Number(b);
  await utils.withPgClient((c) => c.query(
    "select graphile_worker.add_job('noop', '{}'::json) from generate_series(1, $1)", [jobs]));
  let done = 0, started;
  let finish;
  const finished = new Promise((r) => { finish = r; });
  const runner = await run({
    connectionString, concurrency, noHandleSignals: true, pollInterval: 1000, logger,
    taskList: { noop: async () => { if (started === undefined) started = process.hrtime.bigint(); if (++done === jobs) finish(); } },
  });
  const t0 = process.hrtime.bigint();
  await finished;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  await runner.stop();
  console.log(JSON.stringify({ jobs, concurrency, seconds, jobs_per_second: jobs / seconds }));
} else if (mode === 'latency') {
  const samples = Number(a);
  let resolve;
  const runner = await run({
    connectionString, concurrency: 1, noHandleSignals: true, pollInterval: 1000, logger,
    taskList: { lat: async () => resolve(process.hrtime.bigint()) },
  });
  const ms = [];
  for (let i = 0; i < samples; i++) {
    const ran = new Promise((r) => { resolve = r; });
    const t0 = process.hrtime.bigint();
    await utils.addJob('lat', { i });
    ms.push(Number((await ran) - t0) / 1e6);
  }
  await runner.stop();
  console.log(JSON.stringify({ samples, p50_ms: percentile(ms, 0.5), p99_ms: percentile(ms, 0.99), max_ms: Math.max(...ms) }));
} else if (mode === 'timing') {
  const jobs = Number(a), delay = Number(b);
  const late = [];
  let finish;
  const finished = new Promise((r) => { finish = r; });
  const runAt = new Date(Date.now() + delay);
  const runner = await run({
    connectionString, concurrency: 10, noHandleSignals: true, pollInterval: 2000, logger,
    taskList: { at: async () => { late.push(Date.now() - runAt.getTime()); if (late.length === jobs) finish(); } },
  });
  await utils.withPgClient((c) => c.query(
    "select graphile_worker.add_job('at', '{}'::json, run_at := $2) from generate_series(1, $1)", [jobs, runAt]));
  await finished;
  await runner.stop();
  console.log(JSON.stringify({ jobs, p50_ms: percentile(late, 0.5), p99_ms: percentile(late, 0.99), max_ms: Math.max(...late) }));
}
await utils.release();
process.exit(0);
