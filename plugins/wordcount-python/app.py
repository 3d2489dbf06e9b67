"""wordcount (Python): counts the words of field `text` in job counters; when a word's count
reaches config `threshold` (default 3), emits {word, count} to config `target` (default the
source stream + ":words"). Behaves exactly like plugins/wordcount-rust.

Built against the `batch-plugin` world: besides `handle`, it exports `handle_batch`, which
the host calls with a whole batch of events (one call into Python instead of one per event),
reporting each event's result with `batch.finish` as soon as it has it."""

import re

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import batch, counters, effects, types

WORD = re.compile(r"[^\W_]+")

settings = {"threshold": 3, "target": None}


class Handler(exports.Handler):
    def init(self, config):
        for key, value in config:
            if key == "threshold":
                try:
                    settings["threshold"] = int(value)
                except ValueError:
                    raise Err(f"threshold must be an integer, got {value!r}")
            elif key == "target":
                settings["target"] = value

    def handle(self, event):
        return handle(event)


def handle(event):
    text = next((v for k, v in event.fields if k == "text"), None)
    if text is None:
        return types.Disposition_Skip()
    target = settings["target"] or event.source + ":words"
    try:
        for word in WORD.findall(text.decode("utf-8", "replace").lower()):
            count = counters.counter_add(word, 1, None)
            if count == settings["threshold"]:
                effects.emit(target, [("word", word.encode()), ("count", str(count).encode())])
    except Err as e:
        raise Err(types.HandlerError(message=str(e.value)))
    return types.Disposition_Ack()


class BatchHandler(exports.BatchHandler):
    def handle_batch(self, events):
        for event in events:
            try:
                outcome = Ok(handle(event))
            except Err as e:
                outcome = e
            if not batch.finish(outcome):
                return
