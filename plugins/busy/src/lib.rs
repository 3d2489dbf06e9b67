//! busy: a plugin that only computes — for each stream entry, `rounds` passes (config, default
//! 2000) of a 64-bit FNV-1a hash over its fields, then `ack`; lifecycle events are skipped. It
//! imports nothing and reads no state, so a job's `concurrency` can run it on several
//! instances at once: the benchmark's measure of how a CPU-bound plugin scales with it.

wit_bindgen::generate!({ world: "plugin", path: "../../wit" });

use std::sync::atomic::{AtomicU32, Ordering};

use exports::sluice::plugin::handler::{Disposition, Event, Guest, HandlerError};

static ROUNDS: AtomicU32 = AtomicU32::new(2000);

struct Busy;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

impl Guest for Busy {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        for (key, value) in config {
            if key == "rounds" {
                let n = value
                    .parse()
                    .map_err(|_| format!("rounds must be a whole number, got {value:?}"))?;
                ROUNDS.store(n, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn handle(event: Event) -> Result<Disposition, HandlerError> {
        if event.kind != "stream-entry" {
            return Ok(Disposition::Skip);
        }
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for _ in 0..ROUNDS.load(Ordering::Relaxed) {
            for (name, value) in &event.fields {
                hash = fnv1a(fnv1a(hash, name.as_bytes()), value);
            }
        }
        // The result is used, so the work cannot be optimised away.
        Ok(if hash == 0 {
            Disposition::Skip
        } else {
            Disposition::Ack
        })
    }
}

export!(Busy);
