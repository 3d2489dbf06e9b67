//! echo: emits each event's fields unchanged to the stream named by config key `target`
//! (default: the source stream + `:out`), then acks.

use std::cell::RefCell;

wit_bindgen::generate!({ world: "plugin", path: "../../wit" });

use exports::sluice::plugin::handler::{Disposition, Event, Guest, HandlerError};
use sluice::plugin::effects::emit;

thread_local! {
    /// From `init`: the configured target stream, if any.
    static TARGET: RefCell<Option<String>> = const { RefCell::new(None) };
}

struct Echo;

impl Guest for Echo {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let target = config.into_iter().find(|(k, _)| k == "target").map(|(_, v)| v);
        if target.as_deref() == Some("") {
            return Err("config `target` must not be empty".into());
        }
        TARGET.with(|t| *t.borrow_mut() = target);
        Ok(())
    }

    fn handle(event: Event) -> Result<Disposition, HandlerError> {
        let target = TARGET
            .with(|t| t.borrow().clone())
            .unwrap_or_else(|| format!("{}:out", event.source));
        emit(&target, &event.fields).map_err(|message| HandlerError { message })?;
        Ok(Disposition::Ack)
    }
}

export!(Echo);
