//! Jobs in the registry: registering a new run, reading entries, state changes as
//! compare-and-set scripts that keep fields of other versions.

use super::{ControlError, JobEntry, JobState, Registry, Result, decode, encode, patch};
use crate::model::{JobSpec, now_ms};
use crate::store::scripts;

impl Registry {
    /// Register a job and mark it running (a new run). A job of the same name is replaced
    /// only when it is stopped or finished; `if_absent` (jobs of a config file at start) leaves any existing job alone.
    /// Returns false when nothing was written because of `if_absent`.
    pub async fn start_job(&mut self, spec: &JobSpec, if_absent: bool) -> Result<bool> {
        let entry = JobEntry {
            spec: spec.clone(),
            state: JobState::Running,
            changed_at: now_ms(),
            run: 0,
        };
        let script = &*scripts::JOB_START;
        let written: i64 = script
            .key(self.keys.ctl_jobs())
            .key(self.keys.ctl_runs())
            .arg(&spec.name)
            .arg(encode(&entry))
            .arg(if if_absent { "1" } else { "0" })
            .invoke_async(&mut self.conn)
            .await?;
        match written {
            -1 => Err(ControlError::Refused(format!(
                "a job named `{}` is running; stop it first",
                spec.name
            ))),
            0 => Ok(false),
            _ => {
                self.notify(&format!("job {}", spec.name)).await?;
                Ok(true)
            }
        }
    }

    /// The registry entry of one job.
    pub async fn job(&mut self, name: &str) -> Result<Option<JobEntry>> {
        Ok(self.job_raw(name).await?.map(|(entry, _)| entry))
    }

    /// A job's entry, with the JSON it was read from (for compare-and-set).
    async fn job_raw(&mut self, name: &str) -> Result<Option<(JobEntry, String)>> {
        let (json, run): (Option<String>, Option<u64>) = redis::pipe()
            .atomic()
            .hget(self.keys.ctl_jobs(), name)
            .hget(self.keys.ctl_runs(), name)
            .query_async(&mut self.conn)
            .await?;
        let Some(json) = json else { return Ok(None) };
        let mut entry: JobEntry = decode(&format!("job {name}"), &json)?;
        entry.run = run.unwrap_or(0);
        Ok(Some((entry, json)))
    }

    /// Stop or resume a job (every host follows).
    pub async fn set_job_state(&mut self, name: &str, state: JobState) -> Result<JobEntry> {
        self.change_state(name, state, None).await?.ok_or_else(|| {
            ControlError::Refused(format!("job `{name}` changed meanwhile; try again"))
        })
    }

    /// Mark run `run` of a job finished, if it is still that run and running (a host's view
    /// may be a second old). None when it is not.
    pub async fn finish_job(&mut self, name: &str, run: u64) -> Result<Option<JobEntry>> {
        self.change_state(name, JobState::Finished, Some(run)).await
    }

    /// Compare-and-set the state: written only if neither the entry nor its run changed
    /// since it was read (and, with `expect_run`, only while that run is running).
    async fn change_state(
        &mut self,
        name: &str,
        state: JobState,
        expect_run: Option<u64>,
    ) -> Result<Option<JobEntry>> {
        let script = &*scripts::JOB_STATE;
        for _ in 0..5 {
            let (mut entry, json) = self
                .job_raw(name)
                .await?
                .ok_or_else(|| ControlError::Refused(format!("no job named `{name}`")))?;
            if let Some(run) = expect_run
                && (entry.run != run || entry.state != JobState::Running)
            {
                return Ok(None);
            }
            let run = entry.run;
            entry.state = state;
            entry.changed_at = now_ms();
            // Patch the JSON as it was read rather than encode `entry`: fields a newer
            // version wrote (in the entry or its spec) survive this version's state change.
            let patched = patch(
                &json,
                &[
                    ("state", serde_json::to_value(state).unwrap_or_default()),
                    ("changed_at", entry.changed_at.into()),
                ],
            )?;
            let written: i64 = script
                .key(self.keys.ctl_jobs())
                .key(self.keys.ctl_runs())
                .arg(name)
                .arg(&json)
                .arg(run.to_string())
                .arg(patched)
                .invoke_async(&mut self.conn)
                .await?;
            if written == 1 {
                self.notify(&format!("job {name}")).await?;
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }
}
