#!/usr/bin/env bash
# `make demo`: start `sluice run` on examples/sluice.toml with an embedded Redis in a
# temporary data dir, publish sample events, show what the echo plugin produced and the
# job's counters; publish events that trap, loop, eat memory or fail and show them retried
# and dead-lettered; then stop the host (SIGTERM) and clean up. With DASHBOARD=1 (and
# DASHBOARD_PORT, default 9090) the host serves the dashboard and waits for Enter first.
set -euo pipefail
cd "$(dirname "$0")/.."

SLUICE=${SLUICE:-target/debug/sluice}
CONFIG=examples/sluice.toml
COUNT=${COUNT:-300}
export SLUICE_DATA_DIR
SLUICE_DATA_DIR=$(mktemp -d /tmp/sluice-demo.XXXXXX)
pid=

cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid" || true
  fi
  rm -rf "$SLUICE_DATA_DIR"
}
trap cleanup EXIT

# `make demo DASHBOARD=1`: the host also serves the dashboard, and waits at the end.
DASHBOARD_ADDR=127.0.0.1:${DASHBOARD_PORT:-9090}
admin=()
if [ -n "${DASHBOARD:-}" ]; then admin=(--admin "$DASHBOARD_ADDR"); fi

echo "== starting: $SLUICE run --config $CONFIG ${admin[*]} (embedded Redis in $SLUICE_DATA_DIR)"
"$SLUICE" run --config "$CONFIG" "${admin[@]}" &
pid=$!

status() { "$SLUICE" --config "$CONFIG" job status echo-events "$@"; }
for _ in $(seq 300); do
  status >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "sluice run exited early"; exit 1; }
  sleep 0.1
done

echo "== publishing $COUNT events to stream 'events'"
"$SLUICE" --config "$CONFIG" publish events 'text=hello from the demo' 'n={i}' --count "$COUNT"

acked=0
for _ in $(seq 300); do
  acked=$(status --json | sed -n 's/.*"acked": \([0-9]*\).*/\1/p')
  [ "${acked:-0}" -ge "$COUNT" ] && break
  sleep 0.1
done

echo
echo "== publishing to stream 'chaos': 20 fine events, and one each that traps, loops forever,"
echo "   eats memory, returns an error (the chaos plugin does what the 'action' field says)"
"$SLUICE" --config "$CONFIG" publish chaos action=ok --count 20
for action in trap loop alloc error; do
  "$SLUICE" --config "$CONFIG" publish chaos "action=$action"
done
for _ in $(seq 100); do
  dead=$("$SLUICE" --config "$CONFIG" job status chaos-events --json | sed -n 's/.*"dead": \([0-9]*\).*/\1/p')
  [ "${dead:-0}" -ge 4 ] && break
  sleep 0.1
done
echo
echo "== sluice job status chaos-events (each bad event: 3 deliveries, then the dead-letter stream)"
"$SLUICE" --config "$CONFIG" job status chaos-events
echo
echo "== sluice dlq list chaos-events"
"$SLUICE" --config "$CONFIG" dlq list chaos-events

sock="$SLUICE_DATA_DIR/redis/redis.sock"
echo
echo "== what the echo plugin emitted to 'events:out' ($(redis-cli -s "$sock" XLEN events:out) entries; first 3):"
redis-cli -s "$sock" XRANGE events:out - + COUNT 3
echo
echo "== sluice job status echo-events"
status
echo
if [ "${acked:-0}" -lt "$COUNT" ]; then
  echo "demo FAILED: only ${acked:-0} of $COUNT events acked"
  exit 1
fi
echo "== live, no restart: load a Python plugin into the registry and start a finite job on it"
"$SLUICE" --config "$CONFIG" publish texts 'text=the quick brown fox jumps over the lazy dog, the end' --count 5
"$SLUICE" --config "$CONFIG" plugin load plugins/dist/wordcount-python.wasm --name words 2>/dev/null
"$SLUICE" --config "$CONFIG" job start words --source stream:texts --plugin words \
  --set threshold=5 --set target=texts:hot --finite
timeout 120 "$SLUICE" --config "$CONFIG" job watch words || { echo "demo FAILED: job words"; exit 1; }
echo "words seen 5 times, emitted by the plugin to 'texts:hot':"
redis-cli -s "$sock" XRANGE texts:hot - + | paste - - - - - | awk '{print "  " $3 " x" $5}'
echo
echo "== sluice plugin list"
"$SLUICE" --config "$CONFIG" plugin list
echo
echo "== sluice job list"
"$SLUICE" --config "$CONFIG" job list
if [ -n "${DASHBOARD:-}" ]; then
  echo
  echo "== the dashboard: http://$DASHBOARD_ADDR/ (read-only: examples/sluice.toml sets no"
  echo "   [admin] token_file). Press Enter to stop the host."
  read -r _ || true
fi
echo
echo "== stopping the host (SIGTERM)"
kill -TERM "$pid"
wait "$pid"
pid=
if [ "${dead:-0}" -lt 4 ]; then
  echo "demo FAILED: only ${dead:-0} of 4 bad events reached the dead-letter stream"
  exit 1
fi
echo "demo ok: $COUNT events handled by echo, emitted and acked; 4 bad events dead-lettered"
echo "after 3 deliveries each, while the host and the 20 fine events carried on; a Python"
echo "plugin loaded and a finite job started and finished on the running host"
