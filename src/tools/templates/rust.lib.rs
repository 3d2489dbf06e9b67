//! {{name}}: a sluice plugin. Counts events per value of field `kind` (a job counter) and
//! emits `{kind, count}` to the stream named by config `target` (default: the source stream
//! + ":counts").

wit_bindgen::generate!({ world: "plugin", path: "wit" });

use exports::sluice::plugin::handler::{Disposition, Event, Guest, HandlerError};
use sluice::plugin::config::config_get;
use sluice::plugin::counters::counter_add;
use sluice::plugin::effects::emit;
use sluice::plugin::log::{Level, log};

struct Plugin;

impl Guest for Plugin {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn handle(event: Event) -> Result<Disposition, HandlerError> {
        // Lifecycle events (`job-started`, `job-finished`) and kinds added later: not ours.
        if event.kind != "stream-entry" {
            return Ok(Disposition::Skip);
        }
        let error = |message: String| HandlerError { message };
        let kind = event
            .fields
            .iter()
            .find(|(name, _)| name == "kind")
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_else(|| "none".into());
        let count = counter_add(&kind, 1, None).map_err(error)?;
        log(Level::Info, &format!("{kind} #{count}"));
        let target = config_get("target").unwrap_or_else(|| format!("{}:counts", event.source));
        let fields = vec![
            ("kind".to_string(), kind.into_bytes()),
            ("count".to_string(), count.to_string().into_bytes()),
        ];
        emit(&target, &fields).map_err(error)?;
        Ok(Disposition::Ack)
    }
}

export!(Plugin);
