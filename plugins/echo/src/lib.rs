//! echo: emits each stream entry's fields unchanged to the stream named by config key
//! `target` (default: the source stream + `:out`), then acks. Lifecycle events
//! (`job-started`, `job-finished`) are emitted as `{kind, id}` to config `lifecycle_target`
//! when it is set, and skipped otherwise. With config `with_kind = true`, each emitted entry
//! starts with the event's `kind` and `source` (for sources whose events are of several
//! kinds, a scan's file changes say). With config `with_content = true`, a file change's
//! entry ends with the file's `content` (read at source + "/" + path, as a scan job with
//! `scan.read` lets a plugin), or `read_error` when it cannot be read.
//!
//! Built with the feature `batch` (the `echo-batch` crate), it is of the `batch-plugin` world
//! too: `handle-batch` runs each event through `handle` and reports it with `batch.finish`.

use std::cell::RefCell;

#[cfg(not(feature = "batch"))]
wit_bindgen::generate!({ world: "plugin", path: "../../wit" });
#[cfg(feature = "batch")]
wit_bindgen::generate!({ world: "batch-plugin", path: "../../wit" });

use exports::sluice::plugin::handler::{Disposition, Event, Guest, HandlerError};
use sluice::plugin::effects::emit;

thread_local! {
    /// From `init`: the configured target stream, if any, and the lifecycle target.
    static TARGETS: RefCell<(Option<String>, Option<String>)> = const { RefCell::new((None, None)) };
    /// From `init`: whether emitted entries start with the event's kind and source.
    static WITH_KIND: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// From `init`: whether a file change's entry carries the file's content.
    static WITH_CONTENT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

struct Echo;

impl Guest for Echo {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let get = |key: &str| config.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let target = get("target");
        if target.as_deref() == Some("") {
            return Err("config `target` must not be empty".into());
        }
        TARGETS.with(|t| *t.borrow_mut() = (target, get("lifecycle_target")));
        WITH_KIND.with(|w| w.set(get("with_kind").as_deref() == Some("true")));
        WITH_CONTENT.with(|w| w.set(get("with_content").as_deref() == Some("true")));
        Ok(())
    }

    fn handle(event: Event) -> Result<Disposition, HandlerError> {
        let (target, lifecycle) = TARGETS.with(|t| t.borrow().clone());
        let error = |message| HandlerError { message };
        // Lifecycle events are notices; every other kind (a stream entry, a list item, a
        // channel message) is input whose fields are echoed.
        if event.kind == "job-started" || event.kind == "job-finished" {
            let Some(lifecycle) = lifecycle else {
                return Ok(Disposition::Skip);
            };
            let fields = vec![
                ("kind".to_string(), event.kind.into_bytes()),
                ("id".to_string(), event.id.into_bytes()),
            ];
            emit(&lifecycle, &fields).map_err(error)?;
            return Ok(Disposition::Ack);
        }
        let target = target.unwrap_or_else(|| format!("{}:out", event.source));
        let mut event = event;
        if WITH_CONTENT.with(|w| w.get()) && event.kind.starts_with("file-") {
            let path = event.fields.iter().find(|(k, _)| k == "path").map(|(_, v)| v.clone());
            let path = format!("{}/{}", event.source, String::from_utf8_lossy(&path.unwrap_or_default()));
            event.fields.push(match std::fs::read(&path) {
                Ok(content) => ("content".to_string(), content),
                Err(e) => ("read_error".to_string(), e.to_string().into_bytes()),
            });
        }
        if WITH_KIND.with(|w| w.get()) {
            let mut fields = vec![
                ("kind".to_string(), event.kind.into_bytes()),
                ("source".to_string(), event.source.into_bytes()),
            ];
            fields.extend(event.fields);
            emit(&target, &fields).map_err(error)?;
        } else {
            emit(&target, &event.fields).map_err(error)?;
        }
        Ok(Disposition::Ack)
    }
}

#[cfg(feature = "batch")]
impl exports::sluice::plugin::batch_handler::Guest for Echo {
    fn handle_batch(events: Vec<Event>) {
        for event in events {
            if !sluice::plugin::batch::finish(<Echo as Guest>::handle(event).as_ref()) {
                return;
            }
        }
    }
}

export!(Echo);
