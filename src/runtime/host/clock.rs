//! `sluice:plugin/clock`: the host's wall clock.

use super::super::bindings::sluice::plugin::clock::Host;
use super::HostState;
use crate::model::now_ms;

impl Host for HostState {
    fn now(&mut self) -> u64 {
        now_ms()
    }
}
