"""{{name}}: a sluice plugin. Counts events per value of field `kind` (a job counter) and emits
{kind, count} to the stream named by config `target` (default: the source stream + ":counts").
A file change from a scan job (`file-created`, `file-modified`, `file-deleted`) is counted per
change and emitted as {change, path, size}.

It is of the world `batch-plugin`: the host hands it a whole batch of events in one call to
`handle_batch` (a call into Python costs more than most handlers' own work), which reports
each event's result with `batch.finish`; `Handler.handle` serves single events. Write your
logic in the module-level `handle` below; keep what `init` sets up at module level too (the
classes are only the doors the host comes in by). `handle_batch` needs no change."""

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import batch, config, counters, effects, log, types

# What `init` was given (the job's config), for every event.
settings = {}


def field(event, name, default=b""):
    return next((v for k, v in event.fields if k == name), default)


def handle(event):
    try:
        target = config.config_get("target") or event.source + ":counts"
        if event.kind.startswith("file-"):
            # A scan job's file change: `path` is relative to the scanned root (the event's
            # source); with `scan.read = true` the file can be opened at source + "/" + path.
            count = counters.counter_add(event.kind, 1, None)
            path = field(event, "path")
            log.log(log.Level.INFO, f"{event.kind} {path.decode('utf-8', 'replace')} #{count}")
            effects.emit(target, [("change", event.kind.encode()), ("path", path),
                                  ("size", field(event, "size", b"0"))])
            return types.Disposition_Ack()
        # Lifecycle events (`job-started`, `job-finished`) and dir-* events: not ours.
        if event.kind not in ("stream-entry", "list-item", "channel-message"):
            return types.Disposition_Skip()
        kind = field(event, "kind", b"none").decode("utf-8", "replace")
        count = counters.counter_add(kind, 1, None)
        log.log(log.Level.INFO, f"{kind} #{count}")
        effects.emit(target, [("kind", kind.encode()), ("count", str(count).encode())])
    except Err as e:
        raise Err(types.HandlerError(message=str(e.value)))
    return types.Disposition_Ack()


class Handler(exports.Handler):
    def init(self, config_pairs):
        settings.update(config_pairs)

    def handle(self, event):
        return handle(event)


class BatchHandler(exports.BatchHandler):
    def handle_batch(self, events):
        for event in events:
            try:
                outcome = Ok(handle(event))
            except Err as e:
                outcome = e
            # False: the host takes no more events in this call (the rest come later).
            if not batch.finish(outcome):
                return
