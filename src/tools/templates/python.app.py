"""{{name}}: a sluice plugin. Counts events per value of field `kind` (a job counter) and emits
{kind, count} to the stream named by config `target` (default: the source stream + ":counts").

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


def handle(event):
    # Lifecycle events (`job-started`, `job-finished`) and kinds added later: not ours.
    if event.kind != "stream-entry":
        return types.Disposition_Skip()
    kind = next((v.decode("utf-8", "replace") for k, v in event.fields if k == "kind"), "none")
    try:
        count = counters.counter_add(kind, 1, None)
        log.log(log.Level.INFO, f"{kind} #{count}")
        target = config.config_get("target") or event.source + ":counts"
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
