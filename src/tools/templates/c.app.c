// {{name}}: a sluice plugin. Counts events per value of field `kind` (a job counter) and
// emits {kind, count} to the stream named by config `target` (default: the source stream +
// ":counts").
//
// plugin.h is written by `wit-bindgen c` at build time (./build.sh). Strings are not
// NUL-terminated: a plugin_string_t is a pointer and a length. The host owns nothing the
// plugin is handed: free the event (and config) when done, as below.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin.h"

bool exports_sluice_plugin_handler_init(plugin_list_tuple2_string_string_t *config, plugin_string_t *err) {
  plugin_list_tuple2_string_string_free(config);
  return true;
}

static bool is_kind(const plugin_string_t *kind, const char *name) {
  size_t n = strlen(name);
  return kind->len == n && memcmp(kind->ptr, name, n) == 0;
}

bool exports_sluice_plugin_handler_handle(exports_sluice_plugin_handler_event_t *event,
                                          exports_sluice_plugin_handler_disposition_t *ret,
                                          exports_sluice_plugin_handler_handler_error_t *err) {
  // Entries, list items and channel messages carry fields; lifecycle events, file changes
  // (see the Python and Rust templates) and kinds added later: not ours.
  if (!is_kind(&event->kind, "stream-entry") && !is_kind(&event->kind, "list-item") &&
      !is_kind(&event->kind, "channel-message")) {
    exports_sluice_plugin_handler_event_free(event);
    ret->tag = SLUICE_PLUGIN_TYPES_DISPOSITION_SKIP;
    return true;
  }
  plugin_string_t kind;
  plugin_string_set(&kind, "none");
  for (size_t i = 0; i < event->fields.len; i++) {
    plugin_string_t *name = &event->fields.ptr[i].f0;
    if (name->len == 4 && memcmp(name->ptr, "kind", 4) == 0) {
      kind.ptr = event->fields.ptr[i].f1.ptr;
      kind.len = event->fields.ptr[i].f1.len;
    }
  }
  bool ok = true;
  plugin_string_t message = {0};
  int64_t count;
  if (!sluice_plugin_counters_counter_add(&kind, 1, NULL, &count, &message)) {
    ok = false;
    goto done;
  }
  char text[300];
  snprintf(text, sizeof text, "%.*s #%lld", (int)(kind.len > 256 ? 256 : kind.len), (char *)kind.ptr,
           (long long)count);
  plugin_string_t line;
  plugin_string_set(&line, text);
  sluice_plugin_log_log(SLUICE_PLUGIN_LOG_LEVEL_INFO, &line);

  plugin_string_t key, target;
  plugin_string_set(&key, "target");
  bool configured = sluice_plugin_config_config_get(&key, &target);
  if (!configured) {
    target.len = event->source.len + 7;
    target.ptr = malloc(target.len);
    memcpy(target.ptr, event->source.ptr, event->source.len);
    memcpy(target.ptr + event->source.len, ":counts", 7);
  }
  char digits[24];
  snprintf(digits, sizeof digits, "%lld", (long long)count);
  sluice_plugin_types_field_t fields[2];
  plugin_string_set(&fields[0].f0, "kind");
  fields[0].f1.ptr = kind.ptr;
  fields[0].f1.len = kind.len;
  plugin_string_set(&fields[1].f0, "count");
  fields[1].f1.ptr = (uint8_t *)digits;
  fields[1].f1.len = strlen(digits);
  sluice_plugin_effects_list_field_t list = {fields, 2};
  ok = sluice_plugin_effects_emit(&target, &list, &message);
  plugin_string_free(&target);

done:
  exports_sluice_plugin_handler_event_free(event);
  if (!ok) {
    err->message = message;
    return false;
  }
  ret->tag = SLUICE_PLUGIN_TYPES_DISPOSITION_ACK;
  return true;
}
