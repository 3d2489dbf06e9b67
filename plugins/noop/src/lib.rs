//! noop: acks every stream entry and skips lifecycle events, importing nothing — the
//! benchmark's measure of what the sandbox itself costs per event. (`chaos` answers `ack` too,
//! but it imports job state, so its batches are committed one after the other.)

wit_bindgen::generate!({ world: "plugin", path: "../../wit" });

use exports::sluice::plugin::handler::{Disposition, Event, Guest, HandlerError};

struct Noop;

impl Guest for Noop {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn handle(event: Event) -> Result<Disposition, HandlerError> {
        Ok(if event.kind == "stream-entry" {
            Disposition::Ack
        } else {
            Disposition::Skip
        })
    }
}

export!(Noop);
