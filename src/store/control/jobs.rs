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
        let Some((json, run)) = self.job_json(name).await? else {
            return Ok(None);
        };
        let mut entry: JobEntry = decode(&format!("job {name}"), &json)?;
        entry.run = run;
        Ok(Some((entry, json)))
    }

    /// A job's entry as stored (JSON) and its run.
    async fn job_json(&mut self, name: &str) -> Result<Option<(String, u64)>> {
        let (json, run): (Option<String>, Option<u64>) = redis::pipe()
            .atomic()
            .hget(self.keys.ctl_jobs(), name)
            .hget(self.keys.ctl_runs(), name)
            .query_async(&mut self.conn)
            .await?;
        Ok(json.map(|json| (json, run.unwrap_or(0))))
    }

    /// Stop or resume a job (every host follows).
    pub async fn set_job_state(&mut self, name: &str, state: JobState) -> Result<()> {
        match self.change_state(name, state, None).await? {
            true => Ok(()),
            false => Err(ControlError::Refused(format!(
                "job `{name}` changed meanwhile; try again"
            ))),
        }
    }

    /// Mark run `run` of a job finished, if it is still that run and running (a host's view
    /// may be a second old). False when it is not.
    pub async fn finish_job(&mut self, name: &str, run: u64) -> Result<bool> {
        self.change_state(name, JobState::Finished, Some(run)).await
    }

    /// Compare-and-set the state: written only if neither the entry nor its run changed
    /// since it was read (and, with `expect_run`, only while that run is running).
    async fn change_state(
        &mut self,
        name: &str,
        state: JobState,
        expect_run: Option<u64>,
    ) -> Result<bool> {
        let script = &*scripts::JOB_STATE;
        for _ in 0..5 {
            // The entry as stored, not decoded into this version's types: a state change
            // works on a job whose spec this version cannot read, and fields a newer version
            // wrote (in the entry or its spec) survive it.
            let (json, run) = self
                .job_json(name)
                .await?
                .ok_or_else(|| ControlError::Refused(format!("no job named `{name}`")))?;
            if let Some(expected) = expect_run {
                let current: serde_json::Value = decode(&format!("job {name}"), &json)?;
                let running = current.get("state").and_then(|s| s.as_str()) == Some("running");
                if run != expected || !running {
                    return Ok(false);
                }
            }
            let patched = patch(
                &json,
                &[
                    ("state", serde_json::to_value(state).unwrap_or_default()),
                    ("changed_at", now_ms().into()),
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
                return Ok(true);
            }
        }
        Ok(false)
    }
}
