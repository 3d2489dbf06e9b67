//! `sluice:plugin/clock`: the host's wall clock.

use std::time::{SystemTime, UNIX_EPOCH};

use super::super::bindings::sluice::plugin::clock::Host;
use super::HostState;

impl Host for HostState {
    fn now(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}
