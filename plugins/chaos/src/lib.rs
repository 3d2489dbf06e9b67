//! chaos: a test fixture steered by the event's `action` field (else, for a list item or a
//! channel message, whose one field is `payload`, by that payload).
//!
//! - `ok` (or no `action`): ack, no effects;
//! - `emit`: emit the fields to config `target` (default source + `:out`), ack; with a
//!   field `max_len`, trim the target to about that many entries;
//! - `now`: emit `{now: <host clock ms>}` and the event's other fields to the target, ack;
//! - `error`: return a handler error (message from field `message`, default "chaos error");
//! - `trap`: panic (a trap in the host);
//! - `loop`: spin forever (stopped by the host's deadline);
//! - `alloc`: grow memory until stopped (by the host's memory cap);
//! - `log`: log field `message` at info level, ack;
//! - `retry` (optional `after_ms`), `dead-letter`, `skip`: answer that disposition;
//! - `fail-until`: fail until the delivery count reaches field `n`, then ack;
//! - `kv-set` (fields `key`, `value`, optional `ttl`), `kv-delete` (`key`): write job state;
//! - `kv-get` (`key`): emit `{value}` (empty if unset) to the target;
//! - `kv-incr` (`key`): read-modify-write: read the key as a number (0 if unset), write it
//!   back plus one;
//! - `window` (`name`, `id`, `seconds`): add `id` to the window, emit `{count}` of the last
//!   `seconds` to the target;
//! - `enqueue` (`queue`, `payload`, optional `delay_ms`): push a task onto a sluice queue.
//!
//! With a field `spin_ms`, it first busy-waits that long (to make handling take real time).
//! With config `fail_all = "true"`, every stream entry fails (a downstream that is down).
//!
//! Built with the feature `batch` (the `chaos-batch` crate), it is of the `batch-plugin` world:
//! `handle-batch` runs each event through `handle` and reports it with `batch.finish`, except
//! as config `batch` says: `no-finish` returns without finishing anything, `extra-finish`
//! finishes each event twice, `hoard` first takes 1 MiB of memory per event of the call (as a
//! language converting the whole batch at once would), `trap-after-stop` panics once
//! `finish` said stop; and the action `finish-in-handle` calls `batch.finish` from `handle`
//! (not allowed: it fails the event).

#[cfg(not(feature = "batch"))]
wit_bindgen::generate!({ world: "plugin", path: "../../wit" });
#[cfg(feature = "batch")]
wit_bindgen::generate!({ world: "batch-plugin", path: "../../wit" });

use exports::sluice::plugin::handler::{Disposition, Event, Guest, HandlerError};
use sluice::plugin::config::config_get;
use sluice::plugin::clock::now;
use sluice::plugin::counters::{window_add, window_count};
use sluice::plugin::kv;
use sluice::plugin::effects::{emit, emit_capped, enqueue};
use sluice::plugin::log::{Level, log};

struct Chaos;

fn field<'a>(event: &'a Event, name: &str) -> Option<&'a [u8]> {
    event
        .fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

fn text(event: &Event, name: &str, default: &str) -> String {
    field(event, name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| default.to_string())
}

impl Guest for Chaos {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        match config.iter().find(|(k, _)| k == "init") {
            Some((_, v)) if v == "fail" => Err("init told to fail by config".into()),
            Some((_, v)) if v == "panic" => panic!("init told to panic by config"),
            _ => Ok(()),
        }
    }

    fn handle(event: Event) -> Result<Disposition, HandlerError> {
        // A downstream that is down, as the job's config says (`job update --set`).
        if event.kind == "stream-entry" && config_get("fail_all").as_deref() == Some("true") {
            return Err(HandlerError {
                message: "downstream unavailable (config fail_all)".into(),
            });
        }
        if let Ok(ms) = text(&event, "spin_ms", "0").parse::<u64>()
            && ms > 0
        {
            let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        // A list item's or a channel message's one field is its payload: that steers it. A
        // stream entry's `payload` is data (the bench's entries carry one).
        let action = field(&event, "action").or_else(|| {
            (event.kind != "stream-entry")
                .then(|| field(&event, "payload"))
                .flatten()
        });
        match action.unwrap_or(b"ok") {
            b"ok" => Ok(Disposition::Ack),
            b"emit" => {
                let target =
                    config_get("target").unwrap_or_else(|| format!("{}:out", event.source));
                let result = match text(&event, "max_len", "").parse::<u64>() {
                    Ok(max_len) => emit_capped(&target, &event.fields, max_len),
                    Err(_) => emit(&target, &event.fields),
                };
                result.map_err(|message| HandlerError { message })?;
                Ok(Disposition::Ack)
            }
            b"now" => {
                let target =
                    config_get("target").unwrap_or_else(|| format!("{}:out", event.source));
                let mut fields = vec![("now".to_string(), now().to_string().into_bytes())];
                fields.extend(event.fields.iter().filter(|(k, _)| k != "action").cloned());
                emit(&target, &fields).map_err(|message| HandlerError { message })?;
                Ok(Disposition::Ack)
            }
            b"error" => Err(HandlerError {
                message: text(&event, "message", "chaos error"),
            }),
            b"trap" => panic!("chaos trap on event {}", event.id),
            b"loop" => loop {
                std::hint::black_box(&event);
            },
            b"alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            b"log" => {
                log(Level::Info, &text(&event, "message", "chaos log"));
                Ok(Disposition::Ack)
            }
            b"kv-set" => {
                let ttl = text(&event, "ttl", "").parse().ok();
                let value = field(&event, "value").unwrap_or_default().to_vec();
                kv::set(&text(&event, "key", ""), &value, ttl).map_err(|message| HandlerError { message })?;
                Ok(Disposition::Ack)
            }
            b"kv-delete" => {
                kv::delete(&text(&event, "key", "")).map_err(|message| HandlerError { message })?;
                Ok(Disposition::Ack)
            }
            b"kv-get" => {
                let value = kv::get(&text(&event, "key", ""))
                    .map_err(|message| HandlerError { message })?
                    .unwrap_or_default();
                let target =
                    config_get("target").unwrap_or_else(|| format!("{}:out", event.source));
                emit(&target, &[("value".to_string(), value)])
                    .map_err(|message| HandlerError { message })?;
                Ok(Disposition::Ack)
            }
            b"kv-incr" => {
                let key = text(&event, "key", "");
                let n: u64 = kv::get(&key)
                    .map_err(|message| HandlerError { message })?
                    .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
                    .unwrap_or(0);
                kv::set(&key, (n + 1).to_string().as_bytes(), None)
                    .map_err(|message| HandlerError { message })?;
                Ok(Disposition::Ack)
            }
            b"window" => {
                let name = text(&event, "name", "w");
                window_add(&name, &text(&event, "id", "")).map_err(|message| HandlerError { message })?;
                let seconds = text(&event, "seconds", "60").parse().unwrap_or(60);
                let count = window_count(&name, seconds).map_err(|message| HandlerError { message })?;
                let target =
                    config_get("target").unwrap_or_else(|| format!("{}:out", event.source));
                emit(&target, &[("count".to_string(), count.to_string().into_bytes())])
                    .map_err(|message| HandlerError { message })?;
                Ok(Disposition::Ack)
            }
            b"enqueue" => {
                let delay = text(&event, "delay_ms", "0").parse().unwrap_or(0);
                let payload = field(&event, "payload").unwrap_or_default().to_vec();
                enqueue(&text(&event, "queue", ""), &payload, delay)
                    .map_err(|message| HandlerError { message })?;
                Ok(Disposition::Ack)
            }
            b"retry" => Ok(Disposition::Retry(
                field(&event, "after_ms").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()),
            )),
            b"dead-letter" => Ok(Disposition::DeadLetter(text(&event, "message", "chaos"))),
            b"skip" => Ok(Disposition::Skip),
            #[cfg(feature = "batch")]
            b"finish-in-handle" => {
                sluice::plugin::batch::finish(Ok(&Disposition::Ack));
                Ok(Disposition::Ack)
            }
            b"fail-until" => {
                let n: u32 = text(&event, "n", "1").parse().unwrap_or(1);
                if event.delivery_count >= n {
                    Ok(Disposition::Ack)
                } else {
                    Err(HandlerError {
                        message: format!("failing delivery {} of {n}", event.delivery_count),
                    })
                }
            }
            other => Err(HandlerError {
                message: format!("unknown action {:?}", String::from_utf8_lossy(other)),
            }),
        }
    }
}

#[cfg(feature = "batch")]
impl exports::sluice::plugin::batch_handler::Guest for Chaos {
    fn handle_batch(events: Vec<Event>) {
        let how = config_get("batch").unwrap_or_default();
        let hoard: Vec<Vec<u8>> = if how == "hoard" {
            events.iter().map(|_| vec![1u8; 1 << 20]).collect()
        } else {
            Vec::new()
        };
        std::hint::black_box(&hoard);
        for event in events {
            let result = <Chaos as Guest>::handle(event);
            if how == "no-finish" {
                return;
            }
            let more = sluice::plugin::batch::finish(result.as_ref());
            if how == "extra-finish" {
                sluice::plugin::batch::finish(result.as_ref());
            }
            if !more {
                if how == "trap-after-stop" {
                    panic!("chaos: trapping after the host said stop");
                }
                return;
            }
        }
    }
}

export!(Chaos);
