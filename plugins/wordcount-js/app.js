// wordcount (JavaScript): counts the words of field `text` in job counters; when a word's
// count reaches config `threshold` (default 3), emits {word, count} to config `target`
// (default the source stream + ":words"). Behaves exactly like plugins/wordcount-rust.
// Built against the `batch-plugin` world: besides `handle`, it exports `handleBatch`, which the
// host calls with a whole batch of events (one call into JavaScript instead of one per event),
// reporting each event's result with `finish` as soon as it has it.
import { finish } from 'sluice:plugin/batch@0.1.0';
import { counterAdd } from 'sluice:plugin/counters@0.1.0';
import { emit } from 'sluice:plugin/effects@0.1.0';

const settings = { threshold: 3n, target: undefined };
const encoder = new TextEncoder();
const decoder = new TextDecoder();

// Letters (anything with case) and digits; the engine's regexps have no \p{…} classes.
const isWordChar = (c) => (c >= '0' && c <= '9') || c.toLowerCase() !== c.toUpperCase();

function splitWords(text) {
  const words = [];
  let word = '';
  for (const c of text) {
    if (isWordChar(c)) {
      word += c;
    } else if (word) {
      words.push(word);
      word = '';
    }
  }
  if (word) words.push(word);
  return words;
}

export const handler = {
  init(config) {
    for (const [key, value] of config) {
      if (key === 'threshold') {
        if (!/^-?\d+$/.test(value)) throw `threshold must be an integer, got "${value}"`;
        settings.threshold = BigInt(value);
      } else if (key === 'target') {
        settings.target = value;
      }
    }
  },

  handle(event) {
    const field = event.fields.find(([name]) => name === 'text');
    if (!field) return { tag: 'skip' };
    const target = settings.target ?? `${event.source}:words`;
    const words = splitWords(decoder.decode(field[1]).toLowerCase());
    try {
      for (const word of words) {
        const count = counterAdd(word, 1n, undefined);
        if (count === settings.threshold) {
          emit(target, [['word', encoder.encode(word)], ['count', encoder.encode(String(count))]]);
        }
      }
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
      if (!finish(outcome)) return;
    }
  },
};
