// wordcount (C): counts the words of field `text` in job counters; when a word's count reaches
// config `threshold` (default 3), emits {word, count} to config `target` (default the source
// stream + ":words"). Behaves like plugins/wordcount-rust for ASCII text (letters are
// lower-cased in ASCII only; other bytes >= 0x80 are kept as part of words).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin.h"

static int64_t threshold = 3;
static char *target = NULL;

static char *dup_n(const uint8_t *s, size_t n) {
  char *out = malloc(n + 1);
  memcpy(out, s, n);
  out[n] = 0;
  return out;
}

bool exports_sluice_plugin_handler_init(plugin_list_tuple2_string_string_t *config, plugin_string_t *err) {
  for (size_t i = 0; i < config->len; i++) {
    char *key = dup_n(config->ptr[i].f0.ptr, config->ptr[i].f0.len);
    char *value = dup_n(config->ptr[i].f1.ptr, config->ptr[i].f1.len);
    if (strcmp(key, "threshold") == 0) {
      char *end;
      threshold = strtoll(value, &end, 10);
      if (*value == 0 || *end != 0) {
        plugin_string_dup(err, "threshold must be an integer");
        free(key);
        free(value);
        plugin_list_tuple2_string_string_free(config);
        return false;
      }
      free(value);
    } else if (strcmp(key, "target") == 0) {
      free(target);
      target = value;
    } else {
      free(value);
    }
    free(key);
  }
  plugin_list_tuple2_string_string_free(config);
  return true;
}

static int is_word_byte(uint8_t c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}

// Count one word; emit it when it reaches the threshold. False (with *err set) on failure.
static bool count_word(const char *word, const char *dest, plugin_string_t *err) {
  plugin_string_t name;
  plugin_string_set(&name, word);
  int64_t count;
  if (!sluice_plugin_counters_counter_add(&name, 1, NULL, &count, err)) return false;
  if (count != threshold) return true;
  char digits[24];
  snprintf(digits, sizeof digits, "%lld", (long long)count);
  sluice_plugin_types_field_t fields[2];
  plugin_string_set(&fields[0].f0, "word");
  fields[0].f1.ptr = (uint8_t *)word;
  fields[0].f1.len = strlen(word);
  plugin_string_set(&fields[1].f0, "count");
  fields[1].f1.ptr = (uint8_t *)digits;
  fields[1].f1.len = strlen(digits);
  sluice_plugin_effects_list_field_t list = {fields, 2};
  plugin_string_t stream;
  plugin_string_set(&stream, dest);
  return sluice_plugin_effects_emit(&stream, &list, err);
}

bool exports_sluice_plugin_handler_handle(exports_sluice_plugin_handler_event_t *event,
                                          exports_sluice_plugin_handler_disposition_t *ret,
                                          exports_sluice_plugin_handler_handler_error_t *err) {
  plugin_list_u8_t *text = NULL;
  for (size_t i = 0; i < event->fields.len; i++) {
    plugin_string_t *name = &event->fields.ptr[i].f0;
    if (name->len == 4 && memcmp(name->ptr, "text", 4) == 0) text = &event->fields.ptr[i].f1;
  }
  if (text == NULL) {
    ret->tag = SLUICE_PLUGIN_TYPES_DISPOSITION_SKIP;
    exports_sluice_plugin_handler_event_free(event);
    return true;
  }
  char *dest = target ? strdup(target) : NULL;
  if (dest == NULL) {
    dest = malloc(event->source.len + 7);
    memcpy(dest, event->source.ptr, event->source.len);
    memcpy(dest + event->source.len, ":words", 7);
  }
  char *word = malloc(text->len + 1);
  size_t n = 0;
  bool ok = true;
  plugin_string_t message = {0};
  for (size_t i = 0; i <= text->len && ok; i++) {
    uint8_t c = i < text->len ? text->ptr[i] : ' ';
    if (is_word_byte(c)) {
      word[n++] = (c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c;
    } else if (n > 0) {
      word[n] = 0;
      ok = count_word(word, dest, &message);
      n = 0;
    }
  }
  free(word);
  free(dest);
  exports_sluice_plugin_handler_event_free(event);
  if (!ok) {
    err->message = message;
    return false;
  }
  ret->tag = SLUICE_PLUGIN_TYPES_DISPOSITION_ACK;
  return true;
}
