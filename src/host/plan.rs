//! The reconcile decision, as a pure function: given the registry's snapshot and what this
//! host runs, which jobs to stop, start, or switch to a new plugin version. No I/O, so every
//! case is a unit test; [`reconcile`](super::reconcile) carries the plan out.

use std::collections::{BTreeMap, HashSet};

use crate::model::JobSpec;
use crate::store::control::{JobState, Snapshot};

/// A job this host runs, as the plan sees it.
#[derive(Debug, Clone, Copy)]
pub struct Running<'a> {
    pub spec: &'a JobSpec,
    /// The run of the job it serves.
    pub run: u64,
    /// The plugin version it runs.
    pub sha256: &'a str,
}

/// What to do to make this host match the registry.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Running jobs to stop: stopped, finished or removed in the registry, redefined, or
    /// restarted as a new run (a stopped job starts again only once its runner has ended).
    pub stop: Vec<String>,
    /// Jobs to start: (job, sha256 of the plugin version).
    pub start: Vec<(String, String)>,
    /// Running jobs whose plugin has a new current version: (job, new sha256, old sha256).
    pub swap: Vec<(String, String, String)>,
    /// Running jobs of the registry whose plugin is not loaded: nothing can run them.
    pub waiting: Vec<String>,
}

/// Decide. `stopping`: jobs told to stop whose runner has not ended yet. `refused`: (job,
/// run, sha256) this host refused, not tried again for that run.
pub fn plan(
    snapshot: &Snapshot,
    running: &BTreeMap<&str, Running<'_>>,
    stopping: &HashSet<String>,
    refused: &HashSet<(String, u64, String)>,
) -> Plan {
    let mut plan = Plan::default();
    for (name, job) in running {
        let keep = snapshot.jobs.get(*name).is_some_and(|entry| {
            entry.state == JobState::Running && entry.spec == *job.spec && entry.run == job.run
        });
        if !keep {
            plan.stop.push(name.to_string());
        }
    }
    for (name, entry) in &snapshot.jobs {
        if entry.state != JobState::Running || stopping.contains(name) || plan.stop.contains(name) {
            continue;
        }
        let Some(version) = snapshot.plugins.get(&entry.spec.plugin) else {
            plan.waiting.push(name.clone());
            continue;
        };
        if refused.contains(&(name.clone(), entry.run, version.sha256.clone())) {
            continue;
        }
        match running.get(name.as_str()) {
            None => plan.start.push((name.clone(), version.sha256.clone())),
            Some(job) if job.sha256 != version.sha256 => {
                plan.swap
                    .push((name.clone(), version.sha256.clone(), job.sha256.to_string()))
            }
            Some(_) => {}
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::control::{JobEntry, PluginVersion};

    fn version(sha: &str) -> PluginVersion {
        PluginVersion {
            sha256: sha.into(),
            size: 1,
            loaded_at: 0,
            origin: "t".into(),
            by: "t".into(),
        }
    }

    fn entry(plugin: &str, state: JobState, run: u64) -> JobEntry {
        JobEntry {
            spec: JobSpec::new("j", "stream:s", plugin),
            state,
            changed_at: 0,
            updated_at: None,
            file_spec: None,
            reason: None,
            run,
        }
    }

    /// The registry: plugin `p` at version `sha`, job `j` on `p` in `state` at `run`.
    fn snapshot(sha: Option<&str>, state: JobState, run: u64) -> Snapshot {
        let mut s = Snapshot::default();
        if let Some(sha) = sha {
            s.plugins.insert("p".into(), version(sha));
        }
        s.jobs.insert("j".into(), entry("p", state, run));
        s
    }

    fn decide(snapshot: &Snapshot, running: Option<(&JobSpec, u64, &str)>) -> Plan {
        let running: BTreeMap<&str, Running<'_>> = running
            .map(|(spec, run, sha256)| ("j", Running { spec, run, sha256 }))
            .into_iter()
            .collect();
        plan(snapshot, &running, &HashSet::new(), &HashSet::new())
    }

    #[test]
    fn a_new_job_is_started_on_its_plugins_current_version() {
        let decided = decide(&snapshot(Some("v1"), JobState::Running, 1), None);
        assert_eq!(decided.start, vec![("j".to_string(), "v1".to_string())]);
        assert!(decided.stop.is_empty() && decided.swap.is_empty());
    }

    #[test]
    fn a_stopped_or_removed_job_is_stopped() {
        let spec = JobSpec::new("j", "stream:s", "p");
        let stopped = snapshot(Some("v1"), JobState::Stopped, 1);
        assert_eq!(decide(&stopped, Some((&spec, 1, "v1"))).stop, vec!["j"]);
        let finished = snapshot(Some("v1"), JobState::Finished, 1);
        assert_eq!(decide(&finished, Some((&spec, 1, "v1"))).stop, vec!["j"]);
        let mut removed = snapshot(Some("v1"), JobState::Running, 1);
        removed.jobs.clear();
        assert_eq!(decide(&removed, Some((&spec, 1, "v1"))).stop, vec!["j"]);
        // Nothing starts a stopped job that is not running here.
        assert_eq!(decide(&stopped, None), Plan::default());
    }

    #[test]
    fn a_restarted_run_or_a_redefinition_stops_the_old_runner_first() {
        let spec = JobSpec::new("j", "stream:s", "p");
        let restarted = snapshot(Some("v1"), JobState::Running, 2);
        let decided = decide(&restarted, Some((&spec, 1, "v1")));
        assert_eq!(decided.stop, vec!["j"]);
        // Started again once the old runner has ended (a later reconcile), not now.
        assert!(decided.start.is_empty());
        let mut redefined = snapshot(Some("v1"), JobState::Running, 1);
        redefined.jobs.get_mut("j").unwrap().spec.batch = 7;
        assert_eq!(decide(&redefined, Some((&spec, 1, "v1"))).stop, vec!["j"]);
        // While its runner drains, the job is not started either.
        let stopping = HashSet::from(["j".to_string()]);
        let decided = plan(&restarted, &BTreeMap::new(), &stopping, &HashSet::new());
        assert_eq!(decided, Plan::default());
    }

    #[test]
    fn a_new_version_is_swapped_in() {
        let spec = JobSpec::new("j", "stream:s", "p");
        let decided = decide(
            &snapshot(Some("v2"), JobState::Running, 1),
            Some((&spec, 1, "v1")),
        );
        assert_eq!(
            decided.swap,
            vec![("j".to_string(), "v2".to_string(), "v1".to_string())]
        );
        assert!(decided.stop.is_empty() && decided.start.is_empty());
        let same = decide(
            &snapshot(Some("v1"), JobState::Running, 1),
            Some((&spec, 1, "v1")),
        );
        assert_eq!(same, Plan::default());
    }

    #[test]
    fn a_refused_version_is_not_tried_again_in_the_same_run() {
        let spec = JobSpec::new("j", "stream:s", "p");
        let refused = HashSet::from([("j".to_string(), 1, "v2".to_string())]);
        let running = BTreeMap::from([(
            "j",
            Running {
                spec: &spec,
                run: 1,
                sha256: "v1",
            },
        )]);
        let snap = snapshot(Some("v2"), JobState::Running, 1);
        assert_eq!(
            plan(&snap, &running, &HashSet::new(), &refused),
            Plan::default()
        );
        // Nor started, when nothing runs it here.
        assert_eq!(
            plan(&snap, &BTreeMap::new(), &HashSet::new(), &refused),
            Plan::default()
        );
        // A new run of the job tries again.
        let next = snapshot(Some("v2"), JobState::Running, 2);
        let decided = plan(&next, &BTreeMap::new(), &HashSet::new(), &refused);
        assert_eq!(decided.start, vec![("j".to_string(), "v2".to_string())]);
    }

    #[test]
    fn a_job_whose_plugin_was_unloaded_waits() {
        let decided = decide(&snapshot(None, JobState::Running, 1), None);
        assert_eq!(decided.waiting, vec!["j"]);
        assert!(decided.start.is_empty());
        // One already running keeps its version until the job is stopped.
        let spec = JobSpec::new("j", "stream:s", "p");
        let decided = decide(
            &snapshot(None, JobState::Running, 1),
            Some((&spec, 1, "v1")),
        );
        assert_eq!(decided.waiting, vec!["j"]);
        assert!(decided.stop.is_empty() && decided.swap.is_empty());
    }

    #[test]
    fn a_state_from_a_newer_version_is_not_run() {
        let decided = decide(&snapshot(Some("v1"), JobState::Unknown, 1), None);
        assert_eq!(decided, Plan::default());
    }
}
