//! `sluice:plugin/config`: read-only access to the job's `[job.config]`.

use super::super::bindings::sluice::plugin::config::Host;
use super::HostState;

impl Host for HostState {
    fn config_get(&mut self, key: String) -> Option<String> {
        self.guest.config.get(&key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Limits;
    use super::super::test_support::state;
    use super::*;

    #[test]
    fn reads_the_jobs_config_only() {
        let mut s = state(&[("target", "out")], Limits::default());
        assert_eq!(s.config_get("target".into()), Some("out".into()));
        assert_eq!(s.config_get("missing".into()), None);
    }
}
