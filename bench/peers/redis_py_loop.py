"""A peer for `sluice bench`: the consumer loop users of redis-py write by hand.

XREADGROUP a batch, call a handler per entry, XACK the batch; until COUNT entries are
acked. The stream is already filled. Prints one JSON line: events/s and this process's CPU
time per event.

    SLUICE_BENCH_REDIS=URL python3 redis_py_loop.py STREAM GROUP COUNT BATCH
"""

import json
import os
import sys
import time

import redis


def handle(entry_id, fields):
    """The no-op handler (what sluice's no-op plugin does)."""
    return True


def main():
    url = os.environ["SLUICE_BENCH_REDIS"]
    stream, group, count, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    r = redis.Redis.from_url(url)
    r.xgroup_create(stream, group, id="0", mkstream=True)
    done = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while done < count:
        reply = r.xreadgroup(group, "peer", {stream: ">"}, count=batch, block=100)
        if not reply:
            continue
        entries = reply[0][1]
        ids = [entry_id for entry_id, fields in entries if handle(entry_id, fields)]
        r.xack(stream, group, *ids)
        done += len(ids)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(json.dumps({"events_per_s": done / elapsed, "cpu_us_per_event": cpu * 1e6 / done}))


if __name__ == "__main__":
    main()
