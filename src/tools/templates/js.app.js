// {{name}}: a sluice plugin. Counts events per value of field `kind` (a job counter) and emits
// {kind, count} to the stream named by config `target` (default: the source stream + ":counts").
//
// It is of the world `batch-plugin`: the host hands it a whole batch of events in one call to
// `handleBatch` (a call into JavaScript costs more than most handlers' own work), which reports
// each event's result with `finish`. Write your logic in `handle` (state it keeps lives on the
// module, as `handler` does); `handleBatch` needs no change.
import { finish } from 'sluice:plugin/batch@0.1.0';
import { configGet } from 'sluice:plugin/config@0.1.0';
import { counterAdd } from 'sluice:plugin/counters@0.1.0';
import { emit } from 'sluice:plugin/effects@0.1.0';
import { log } from 'sluice:plugin/log@0.1.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export const handler = {
  init(config) {},

  handle(event) {
    // Entries, list items and channel messages carry fields; lifecycle events, file changes
    // (see the Python and Rust templates) and kinds added later: not ours.
    if (!['stream-entry', 'list-item', 'channel-message'].includes(event.kind)) {
      return { tag: 'skip' };
    }
    const field = event.fields.find(([name]) => name === 'kind');
    const kind = field ? decoder.decode(field[1]) : 'none';
    try {
      const count = counterAdd(kind, 1n, undefined);
      log('info', `${kind} #${count}`);
      const target = configGet('target') ?? `${event.source}:counts`;
      emit(target, [['kind', encoder.encode(kind)], ['count', encoder.encode(String(count))]]);
    } catch (e) {
      throw { message: String(e?.payload ?? e) };
    }
    return { tag: 'ack' };
  },
};

export const batchHandler = {
  handleBatch(events) {
    for (const event of events) {
      let outcome;
      try {
        outcome = { tag: 'ok', val: handler.handle(event) };
      } catch (e) {
        outcome = { tag: 'err', val: { message: String(e?.message ?? e) } };
      }
      // False: the host takes no more events in this call (the rest come later).
      if (!finish(outcome)) return;
    }
  },
};
