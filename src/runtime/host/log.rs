//! `sluice:plugin/log`: guest logs go to the host's tracing, tagged with job, plugin and event
//! (and are kept per call for `sluice plugin test`).

use super::super::bindings::sluice::plugin::log::{Host, Level};
use super::{HostState, MAX_LOGS_KEPT, truncate};

impl Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let message = truncate(message, self.guest.limits.max_log_bytes);
        // The call's span (see `crate::logging`) adds stream, version and attempt; job and
        // event are said here too, for filters that leave the span out (`warn,plugin=info`).
        let job = &*self.guest.job;
        let plugin = &*self.guest.plugin;
        let event = self.call.event_id.as_deref().unwrap_or("-");
        let name = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        let _span = self.event_span().entered();
        match level {
            Level::Trace => tracing::trace!(target: "plugin", job, plugin, event, "{message}"),
            Level::Debug => tracing::debug!(target: "plugin", job, plugin, event, "{message}"),
            Level::Info => tracing::info!(target: "plugin", job, plugin, event, "{message}"),
            Level::Warn => tracing::warn!(target: "plugin", job, plugin, event, "{message}"),
            Level::Error => tracing::error!(target: "plugin", job, plugin, event, "{message}"),
        }
        if self.call.logs.len() < MAX_LOGS_KEPT {
            self.call.logs.push(format!("{name}: {message}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Limits;
    use super::super::test_support::state;
    use super::*;

    #[test]
    fn logs_are_kept_per_call_and_bounded() {
        let mut s = state(&[], Limits::default());
        for i in 0..MAX_LOGS_KEPT + 5 {
            s.log(Level::Info, format!("line {i}"));
        }
        assert_eq!(s.call.logs.len(), MAX_LOGS_KEPT);
        assert_eq!(s.call.logs[0], "info: line 0");
    }
}
