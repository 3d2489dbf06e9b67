//! `sluice:plugin/log`: guest logs go to the host's tracing, tagged with job, plugin and event.

use super::super::bindings::sluice::plugin::log::{Host, Level};
use super::{HostState, truncate};

impl Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let message = truncate(message, self.guest.limits.max_log_bytes);
        let job = &*self.guest.job;
        let plugin = &*self.guest.plugin;
        let event = self.call.event_id.as_deref().unwrap_or("-");
        match level {
            Level::Trace => tracing::trace!(target: "plugin", job, plugin, event, "{message}"),
            Level::Debug => tracing::debug!(target: "plugin", job, plugin, event, "{message}"),
            Level::Info => tracing::info!(target: "plugin", job, plugin, event, "{message}"),
            Level::Warn => tracing::warn!(target: "plugin", job, plugin, event, "{message}"),
            Level::Error => tracing::error!(target: "plugin", job, plugin, event, "{message}"),
        }
    }
}
