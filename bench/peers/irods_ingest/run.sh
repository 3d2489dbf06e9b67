#!/usr/bin/env bash
# Benchmark peer: irods-capability-automated-ingest 0.7.0 (iRODS's Redis +
# Celery filesystem ingest tool), run WITHOUT an iRODS server, with the no-op
# event handler beside this script (see no_op.py for why that works).
#
#   run.sh REDIS_URL TREE_DIR
#
# REDIS_URL: redis://HOST:PORT[/DB] (the tool parses it by hand: the port is
#            required and a password is not supported). Used as the Celery
#            broker and as the tool's own Redis (job counters, locks, cache).
# TREE_DIR:  the directory to ingest.
#
# Starts a Celery worker with 2 processes (IRODS_BENCH_WORKERS overrides),
# times a first pass over TREE_DIR (cold cache) and a second identical pass
# (nothing changed, so the tool's per-file cache skips every file), stops the
# worker, and prints one JSON line on stdout:
#   {"files": N, "first_s": .., "first_files_per_s": .., "second_s": .., "second_files_per_s": ..}
# Times are the wall time of `irods_capability_automated_ingest start
# --synchronous` (the package's console script; the docs call it irods_sync),
# which returns only once every task of the job has finished: its monitor
# polls the job's task counter once a second, so each time includes up to ~1 s
# of polling slack plus ~0.5 s of CLI start-up. A side poller measures the
# first-task-to-last-task time at 10 ms resolution; that goes to stderr only.
#
# Needs the venv bench/peers/.irods-venv (see requirements.txt beside this
# file); exits 3 if it is missing. Progress and diagnostics go to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$(cd "$here/.." && pwd)/.irods-venv"
workers="${IRODS_BENCH_WORKERS:-2}"
target="/tempZone/home/rods/bench"

if [ $# -ne 2 ]; then
    echo "usage: $0 REDIS_URL TREE_DIR" >&2
    exit 2
fi
redis_url="$1"
tree="$2"

if [ ! -x "$venv/bin/irods_capability_automated_ingest" ] || [ ! -x "$venv/bin/celery" ]; then
    cat >&2 <<EOF
run.sh: the irods ingest venv is missing: $venv
Create it with:
  python3 -m venv $venv
  $venv/bin/pip install -r $here/requirements.txt
EOF
    exit 3
fi
if [ ! -d "$tree" ]; then
    echo "run.sh: not a directory: $tree" >&2
    exit 2
fi
tree="$(realpath "$tree")"

# The tool splits CELERY_BROKER_URL on ':' and '/' itself (irods_sync.py,
# get_celery_broker_info), so insist on redis://HOST:PORT/DB.
if [[ "$redis_url" =~ ^redis://([^:/@]+):([0-9]+)(/([0-9]+))?/?$ ]]; then
    redis_url="redis://${BASH_REMATCH[1]}:${BASH_REMATCH[2]}/${BASH_REMATCH[4]:-0}"
else
    echo "run.sh: REDIS_URL must look like redis://HOST:PORT[/DB] (no password), got: $1" >&2
    exit 2
fi

py="$venv/bin/python"
export CELERY_BROKER_URL="$redis_url"
# Fake iRODS credentials: with all five set the tool builds an iRODSSession
# from them and never reads ~/.irods/irods_environment.json. Creating the
# session does not connect; with the NO_OP handler (and --initial_ingest, and
# the patch in no_op.py) nothing ever sends a request.
export IRODS_HOST=localhost IRODS_PORT=1247 IRODS_USER_NAME=rods \
    IRODS_ZONE_NAME=tempZone IRODS_PASSWORD=x
unset IRODS_ENVIRONMENT_FILE
export PYTHONDONTWRITEBYTECODE=1

if ! "$py" -c 'import sys, redis; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=5).ping()' "$redis_url" 2>/dev/null; then
    echo "run.sh: no Redis answers at $redis_url" >&2
    exit 1
fi

files="$(find "$tree" -type f | wc -l)"
tag="sluice_bench_$$"
workdir="$(mktemp -d)"
worker_pid=""
poller_pid=""

# Deletes, by SCAN, keys matching the given glob patterns (glob characters in
# the literal parts are escaped by the caller).
redis_del() {
    "$py" - "$redis_url" "$@" <<'EOF'
import sys, redis
r = redis.Redis.from_url(sys.argv[1])
for pattern in sys.argv[2:]:
    batch = []
    for key in r.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            r.delete(*batch)
            batch = []
    if batch:
        r.delete(*batch)
EOF
}

glob_escape() {
    "$py" -c 'import re, sys; print(re.sub(r"([*?\[\]\\])", r"\\\1", sys.argv[1]))' "$1"
}
tree_glob="$(glob_escape "$tree")"
target_glob="$(glob_escape "$target")"

stop_worker() {
    if [ -n "$poller_pid" ] && kill -0 "$poller_pid" 2>/dev/null; then
        kill "$poller_pid" 2>/dev/null || true
        wait "$poller_pid" 2>/dev/null || true
    fi
    poller_pid=""
    if [ -n "$worker_pid" ] && kill -0 "$worker_pid" 2>/dev/null; then
        # SIGTERM = Celery's warm shutdown: finish running tasks, then exit
        # (the main process also stops its pool children).
        kill -TERM "$worker_pid" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$worker_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$worker_pid" 2>/dev/null; then
            echo "run.sh: worker $worker_pid did not stop in 15 s, killing it" >&2
            pkill -KILL -P "$worker_pid" 2>/dev/null || true
            kill -KILL "$worker_pid" 2>/dev/null || true
        fi
        wait "$worker_pid" 2>/dev/null || true
    fi
    worker_pid=""
}

cleanup() {
    local rc=$?
    stop_worker
    # The job bookkeeping keys and the per-file cache this run wrote.
    redis_del "*:/${tag}_*" "sync_time:/${tree_glob}*:${target_glob}" 2>/dev/null || true
    # The tool writes each job's handler source to /tmp/event_handler<JOB><uuid>.py.
    rm -f /tmp/event_handler"${tag}"_*.py
    rm -rf "$workdir"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A cold first pass: forget any cache a previous run left for this tree and
# target (the cache key is "sync_time:/<file path>:<target>", shared by all
# jobs, which is also what makes the second pass skip unchanged files).
redis_del "sync_time:/${tree_glob}*:${target_glob}"

echo "run.sh: starting a Celery worker with $workers processes on $redis_url" >&2
# -l warning: at info level the tool itself logs several JSON lines per file.
"$venv/bin/celery" -A irods_capability_automated_ingest worker \
    -Q restart,path,file -c "$workers" -P prefork -l warning \
    -n "${tag}@%h" \
    >"$workdir/worker.log" 2>&1 &
worker_pid=$!

# Wait until the worker answers a control ping, so that its start-up is not
# timed.
if ! "$py" - "$tag" <<'EOF'
import sys, time
from irods_capability_automated_ingest.celery import app
deadline = time.time() + 60
while time.time() < deadline:
    replies = app.control.ping(destination=[sys.argv[1] + "@" + __import__("socket").gethostname()], timeout=0.5)
    if replies:
        sys.exit(0)
sys.exit(1)
EOF
then
    echo "run.sh: the Celery worker did not come up; its log:" >&2
    cat "$workdir/worker.log" >&2
    exit 1
fi

# One pass: runs the job synchronously, echoes "<wall seconds> <tasks span seconds>".
run_pass() {
    local job="$1" t0 t1 rc=0 span
    # Side poller: time from when the job's task counter first goes above 0
    # to when it is back at 0, polled every 10 ms.
    "$py" - "$redis_url" "$job" >"$workdir/$job.span" <<'EOF' &
import sys, time, redis
r = redis.Redis.from_url(sys.argv[1])
key = "tasks:/" + sys.argv[2]
start = None
while True:
    v = r.get(key)
    now = time.time()
    if start is None and v is not None and int(v) > 0:
        start = now
    elif start is not None and (v is None or int(v) == 0):
        print(f"{now - start:.3f}")
        break
    time.sleep(0.01)
EOF
    poller_pid=$!
    t0="$(date +%s.%N)"
    "$venv/bin/irods_capability_automated_ingest" start "$tree" "$target" \
        --event_handler "$here/no_op.py" --initial_ingest --synchronous \
        --job_name "$job" >"$workdir/$job.log" 2>&1 || rc=$?
    t1="$(date +%s.%N)"
    if [ "$rc" -ne 0 ]; then
        echo "run.sh: pass $job failed (exit $rc); its output:" >&2
        cat "$workdir/$job.log" >&2
        echo "run.sh: worker log:" >&2
        tail -50 "$workdir/worker.log" >&2
        return 1
    fi
    for _ in $(seq 1 100); do
        kill -0 "$poller_pid" 2>/dev/null || break
        sleep 0.05
    done
    kill "$poller_pid" 2>/dev/null || true
    wait "$poller_pid" 2>/dev/null || true
    poller_pid=""
    span="$(cat "$workdir/$job.span" 2>/dev/null || true)"
    echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }') ${span:-nan}"
}

# Every file and directory the job finished has a cache entry.
cache_entries() {
    "$py" - "$redis_url" "sync_time:/${tree_glob}*:${target_glob}" <<'EOF'
import sys, redis
r = redis.Redis.from_url(sys.argv[1])
print(sum(1 for _ in r.scan_iter(match=sys.argv[2], count=1000)))
EOF
}

echo "run.sh: first pass over $tree ($files files)" >&2
out="$(run_pass "${tag}_1")"
read -r first_s first_span <<<"$out"
entries="$(cache_entries)"
dirs="$(find "$tree" -type d | wc -l)"
if [ "$entries" -lt $((files + dirs)) ]; then
    echo "run.sh: after the first pass only $entries of $((files + dirs)) files and directories are in the cache" >&2
    exit 1
fi

echo "run.sh: second pass (unchanged files)" >&2
out="$(run_pass "${tag}_2")"
read -r second_s second_span <<<"$out"

stop_worker

echo "run.sh: wall ${first_s} s / ${second_s} s; first task to last task ${first_span} s / ${second_span} s" >&2
awk -v n="$files" -v a="$first_s" -v b="$second_s" 'BEGIN {
    printf "{\"files\": %d, \"first_s\": %.3f, \"first_files_per_s\": %.1f, \"second_s\": %.3f, \"second_files_per_s\": %.1f}\n",
        n, a, (a > 0 ? n / a : 0), b, (b > 0 ? n / b : 0)
}'
