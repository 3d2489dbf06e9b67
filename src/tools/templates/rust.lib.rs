//! {{name}}: a sluice plugin. Counts events per value of field `kind` (a job counter) and
//! emits `{kind, count}` to the stream named by config `target` (default: the source stream
//! + ":counts"). A file change from a scan job (`file-created`, `file-modified`,
//! `file-deleted`) is counted per change and emitted as `{change, path, size}`.

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
        let error = |message: String| HandlerError { message };
        let field = |name: &str| {
            event
                .fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, value)| value.clone())
        };
        let target = config_get("target").unwrap_or_else(|| format!("{}:counts", event.source));
        if event.kind.starts_with("file-") {
            // A scan job's file change: `path` is relative to the scanned root (the event's
            // source); with `scan.read = true` the file can be opened at source + "/" + path
            // (std::fs works: the root is preopened read-only).
            let count = counter_add(&event.kind, 1, None).map_err(error)?;
            let path = field("path").unwrap_or_default();
            log(
                Level::Info,
                &format!("{} {} #{count}", event.kind, String::from_utf8_lossy(&path)),
            );
            let fields = vec![
                ("change".to_string(), event.kind.clone().into_bytes()),
                ("path".to_string(), path),
                ("size".to_string(), field("size").unwrap_or_else(|| b"0".to_vec())),
            ];
            emit(&target, &fields).map_err(error)?;
            return Ok(Disposition::Ack);
        }
        // Lifecycle events (`job-started`, `job-finished`) and dir-* events: not ours.
        if !matches!(
            event.kind.as_str(),
            "stream-entry" | "list-item" | "channel-message"
        ) {
            return Ok(Disposition::Skip);
        }
        let kind = field("kind")
            .map(|value| String::from_utf8_lossy(&value).into_owned())
            .unwrap_or_else(|| "none".into());
        let count = counter_add(&kind, 1, None).map_err(error)?;
        log(Level::Info, &format!("{kind} #{count}"));
        let fields = vec![
            ("kind".to_string(), kind.into_bytes()),
            ("count".to_string(), count.to_string().into_bytes()),
        ];
        emit(&target, &fields).map_err(error)?;
        Ok(Disposition::Ack)
    }
}

export!(Plugin);
