// A peer for `sluice bench`: a BullMQ worker with a no-op processor.
//
// Adds COUNT jobs to a fresh queue (addBulk, not timed), then times a Worker of the given
// concurrency from its start until it has completed them all. Jobs are removed on
// completion (what a high-volume BullMQ user sets). Prints one JSON line.
//
//     SLUICE_BENCH_REDIS=URL node bullmq_worker.mjs QUEUE COUNT CONCURRENCY
import { Queue, Worker } from "bullmq";

const url = process.env.SLUICE_BENCH_REDIS;
const [name, countArg, concurrencyArg] = process.argv.slice(2);
const count = Number(countArg);
const concurrency = Number(concurrencyArg);
// redis://[:password@]host:port[/db] or unix:///path/to/socket (the bench's own Redis).
const u = new URL(url);
const connection =
  u.protocol === "unix:"
    ? { path: decodeURIComponent(u.pathname), maxRetriesPerRequest: null }
    : {
        host: u.hostname,
        port: Number(u.port || 6379),
        password: u.password ? decodeURIComponent(u.password) : undefined,
        db: Number((u.pathname || "/0").slice(1) || 0),
        maxRetriesPerRequest: null,
      };

const queue = new Queue(name, { connection });
await queue.obliterate({ force: true }).catch(() => {});
const payload = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
for (let added = 0; added < count; added += 1000) {
  const n = Math.min(1000, count - added);
  await queue.addBulk(
    Array.from({ length: n }, () => ({
      name: "e",
      data: { t: 0, payload },
      opts: { removeOnComplete: true, removeOnFail: true },
    })),
  );
}

let completed = 0;
let finish;
const finished = new Promise((resolve) => (finish = resolve));
const cpu0 = process.cpuUsage();
const t0 = process.hrtime.bigint();
const worker = new Worker(name, async () => true, { connection, concurrency, autorun: false });
worker.on("completed", () => {
  completed += 1;
  if (completed === count) finish();
});
worker.run();
await finished;
const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
const cpu = process.cpuUsage(cpu0);
await worker.close();
await queue.obliterate({ force: true }).catch(() => {});
await queue.close();
console.log(
  JSON.stringify({
    events_per_s: count / elapsed,
    cpu_us_per_event: (cpu.user + cpu.system) / count,
  }),
);
