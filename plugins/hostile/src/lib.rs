//! hostile: a test fixture that attacks the host, one attack per `action` field. Every
//! attack must end as a failure of its own event (or a refusal of the plugin), never as harm
//! to the host, Redis or another job.
//!
//! - `ok` (or no `action`): ack;
//! - `sleep`: `std::thread::sleep` for an hour (a blocking WASI poll, where no epoch fires);
//! - `read-then-sleep`: read job state, then sleep for an hour;
//! - `fields`: `n` emits (default 1000) of `m` empty fields each (default 1000) to `target`;
//! - `huge-error`: return a handler error of `mb` MiB (default 60);
//! - `huge-dead-letter`: answer dead-letter with a reason of `mb` MiB (default 60);
//! - `trim`: `emit-capped` one entry to `target` with `max-len` 0 (trims it to nothing);
//! - `enqueue`: enqueue a task on `queue`;
//! - `emit`: emit the event's fields to `target`.
//!
//! Config `init`: `sleep` sleeps in `init` for an hour; `sleep-on-host` does so only when a
//! job-state read succeeds (so on a host, not in the CLI's checks, which have no state).

wit_bindgen::generate!({ world: "plugin", path: "../../wit" });

use std::time::Duration;

use exports::sluice::plugin::handler::{Disposition, Event, Guest, HandlerError};
use sluice::plugin::effects::{emit, emit_capped, enqueue};
use sluice::plugin::kv;

struct Hostile;

const HOUR: Duration = Duration::from_secs(3600);

fn text(event: &Event, name: &str, default: &str) -> String {
    event
        .fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| default.to_string())
}

fn number(event: &Event, name: &str, default: usize) -> usize {
    text(event, name, "").parse().unwrap_or(default)
}

fn failed(message: String) -> HandlerError {
    HandlerError { message }
}

impl Guest for Hostile {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        match config.iter().find(|(k, _)| k == "init").map(|(_, v)| v.as_str()) {
            Some("sleep") => std::thread::sleep(HOUR),
            Some("sleep-on-host") if kv::get("probe").is_ok() => std::thread::sleep(HOUR),
            _ => {}
        }
        Ok(())
    }

    fn handle(event: Event) -> Result<Disposition, HandlerError> {
        let target = text(&event, "target", &format!("{}:out", event.source));
        match text(&event, "action", "ok").as_str() {
            "ok" => {}
            "sleep" => std::thread::sleep(HOUR),
            "read-then-sleep" => {
                kv::get("probe").map_err(failed)?;
                std::thread::sleep(HOUR);
            }
            "fields" => {
                let fields: Vec<(String, Vec<u8>)> =
                    (0..number(&event, "m", 1000)).map(|_| (String::new(), Vec::new())).collect();
                for _ in 0..number(&event, "n", 1000) {
                    emit(&target, &fields).map_err(failed)?;
                }
            }
            "huge-error" => return Err(failed("e".repeat(number(&event, "mb", 60) << 20))),
            "huge-dead-letter" => {
                return Ok(Disposition::DeadLetter("d".repeat(number(&event, "mb", 60) << 20)));
            }
            "trim" => {
                let fields = vec![("hostile".to_string(), b"trim".to_vec())];
                emit_capped(&target, &fields, 0).map_err(failed)?;
            }
            "enqueue" => {
                enqueue(&text(&event, "queue", "q"), b"hostile", 0).map_err(failed)?;
            }
            "emit" => emit(&target, &event.fields).map_err(failed)?,
            other => return Err(failed(format!("hostile: unknown action `{other}`"))),
        }
        Ok(Disposition::Ack)
    }
}

export!(Hostile);
