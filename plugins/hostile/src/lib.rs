//! hostile: a test fixture that attacks the host, one attack per `action` field. Every
//! attack must end as a failure of its own event (or a refusal of the plugin), never as harm
//! to the host, Redis or another job.
//!
//! - `ok` (or no `action`): ack;
//! - `spin`: compute forever;
//! - `alloc`: allocate memory until stopped;
//! - `sleep`: `std::thread::sleep` for an hour (a blocking WASI poll, where no epoch fires);
//! - `read-then-sleep`: read job state, then sleep for an hour;
//! - `fields`: `n` emits (default 1000) of `m` empty fields each (default 1000) to `target`;
//! - `effects`: `n` effects (default 1000) of `kind`: `emit` (one field each, to `target`),
//!   `counter` (`counter-incr` of counters `c0`…), `window` (`window-add` of ids to window
//!   `w`), `kv` (`kv set` of keys `k0`…): the most a legal event may buffer;
//! - `huge-error`: return a handler error of `mb` MiB (default 60);
//! - `huge-dead-letter`: answer dead-letter with a reason of `mb` MiB (default 60);
//! - `trim`: `emit-capped` one entry to `target` with `max-len` field `max_len` (default 0:
//!   trim it to nothing);
//! - `enqueue`: enqueue a task on `queue`;
//! - `emit`: emit the event's fields to `target`.
//!
//! Config `init`: `sleep` sleeps in `init` for an hour; `sleep-on-host` does so only when a
//! job-state read succeeds (so on a host, not in the CLI's checks, which have no state).

wit_bindgen::generate!({ world: "plugin", path: "../../wit" });

use std::time::Duration;

use exports::sluice::plugin::handler::{Disposition, Event, Guest, HandlerError};
use sluice::plugin::counters::{counter_incr, window_add};
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
            "spin" => loop {
                std::hint::black_box(&event);
            },
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
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
            "effects" => {
                let n = number(&event, "n", 1000);
                for i in 0..n {
                    match text(&event, "kind", "emit").as_str() {
                        "counter" => counter_incr(&format!("c{i}"), 1, None),
                        "window" => window_add("w", &format!("{}-{i}", event.id)),
                        "kv" => kv::set(&format!("k{i}"), b"v", None),
                        _ => emit(&target, &[("f".to_string(), b"v".to_vec())]),
                    }
                    .map_err(failed)?;
                }
            }
            "huge-error" => return Err(failed("e".repeat(number(&event, "mb", 60) << 20))),
            "huge-dead-letter" => {
                return Ok(Disposition::DeadLetter("d".repeat(number(&event, "mb", 60) << 20)));
            }
            "trim" => {
                let fields = vec![("hostile".to_string(), b"trim".to_vec())];
                let max_len = text(&event, "max_len", "0").parse().unwrap_or(0);
                emit_capped(&target, &fields, max_len).map_err(failed)?;
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
