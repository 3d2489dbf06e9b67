//! Jobs in the registry: registering a new run, reading entries, state changes as
//! compare-and-set scripts that keep fields of other versions.

use super::{
    ControlError, JobEntry, JobState, Registry, Result, decode, encode, patch, spec_digest,
};
use crate::model::{JobSpec, now_ms};
use crate::store::scripts;

impl Registry {
    /// Register a job and mark it running (a new run). A job of the same name is replaced
    /// only when it is stopped or finished. `from_file` (a config file's job): only if no job
    /// of that name exists, and the definition is remembered as the file's
    /// ([`JobEntry::file_spec`]). Returns false when nothing was written because of
    /// `from_file`.
    pub async fn start_job(&mut self, spec: &JobSpec, from_file: bool) -> Result<bool> {
        let if_absent = from_file;
        let entry = JobEntry {
            spec: spec.clone(),
            state: JobState::Running,
            changed_at: now_ms(),
            updated_at: None,
            file_spec: from_file.then(|| spec_digest(spec)),
            reason: None,
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
        match self.change_state(name, state, None, None).await? {
            true => Ok(()),
            false => Err(ControlError::Refused(format!(
                "job `{name}` changed meanwhile; try again"
            ))),
        }
    }

    /// Mark run `run` of a job finished, if it is still that run and running (a host's view
    /// may be a second old). False when it is not.
    pub async fn finish_job(&mut self, name: &str, run: u64) -> Result<bool> {
        self.change_state(name, JobState::Finished, Some(run), None)
            .await
    }

    /// Pause run `run` of a job (its breaker tripped), with the reason, if it is still that
    /// run and running. False when it is not (another host paused it first, or an operator
    /// changed it).
    pub async fn pause_job(&mut self, name: &str, run: u64, reason: &str) -> Result<bool> {
        self.change_state(name, JobState::Paused, Some(run), Some(reason))
            .await
    }

    /// Compare-and-set the state: written only if neither the entry nor its run changed
    /// since it was read (and, with `expect_run`, only while that run is running).
    async fn change_state(
        &mut self,
        name: &str,
        state: JobState,
        expect_run: Option<u64>,
        reason: Option<&str>,
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
                    // A reason belongs to the pause it explains: any other change drops it.
                    ("reason", reason.into()),
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

    /// Rewrite a job's definition, keeping its state and run: hosts running it stop it
    /// (in-flight batches commit) and start it again with the new definition. `change` gets
    /// the entry as stored and returns the new spec, or None to leave the job as it is; with
    /// `file_spec`, the entry also records it as the config file's definition. Compare-and-
    /// set: fields of the stored JSON this version does not know are kept. Returns the entry
    /// written, or None when `change` left it.
    pub async fn update_job(
        &mut self,
        name: &str,
        mut change: impl FnMut(&JobEntry) -> Result<Option<JobSpec>>,
        file_spec: Option<String>,
    ) -> Result<Option<JobEntry>> {
        let script = &*scripts::JOB_STATE;
        for _ in 0..5 {
            let (json, run) = self
                .job_json(name)
                .await?
                .ok_or_else(|| ControlError::Refused(format!("no job named `{name}`")))?;
            let mut entry: JobEntry = decode(&format!("job {name}"), &json)?;
            entry.run = run;
            let Some(spec) = change(&entry)? else {
                return Ok(None);
            };
            if spec.name != name {
                return Err(ControlError::Refused(format!(
                    "a job cannot be renamed (`{name}` → `{}`)",
                    spec.name
                )));
            }
            let mut stored: serde_json::Value = decode(&format!("job {name}"), &json)?;
            let new_spec = serde_json::to_value(&spec).unwrap_or_default();
            if let (Some(old), Some(new)) = (
                stored.get_mut("spec").and_then(|s| s.as_object_mut()),
                new_spec.as_object(),
            ) {
                for (k, v) in new {
                    old.insert(k.clone(), v.clone());
                }
            }
            let now = now_ms();
            let mut fields = vec![("updated_at", serde_json::Value::from(now))];
            if let Some(digest) = &file_spec {
                fields.push(("file_spec", digest.clone().into()));
            }
            let patched = patch(&stored.to_string(), &fields)?;
            let written: i64 = script
                .key(self.keys.ctl_jobs())
                .key(self.keys.ctl_runs())
                .arg(name)
                .arg(&json)
                .arg(run.to_string())
                .arg(&patched)
                .invoke_async(&mut self.conn)
                .await?;
            if written == 1 {
                self.notify(&format!("job {name}")).await?;
                entry.spec = spec;
                entry.updated_at = Some(now);
                if file_spec.is_some() {
                    entry.file_spec = file_spec;
                }
                return Ok(Some(entry));
            }
        }
        Err(ControlError::Refused(format!(
            "job `{name}` kept changing meanwhile; try again"
        )))
    }

    /// Delete a job's registry entry (hosts forget it); refused while it is running. An entry
    /// that does not decode (damaged, written by hand) is deleted too: no host runs it.
    /// Returns the entry deleted (None: it was corrupt).
    pub async fn delete_job(&mut self, name: &str) -> Result<Option<JobEntry>> {
        let script = &*scripts::JOB_DELETE;
        for _ in 0..5 {
            let Some((json, _)) = self.job_json(name).await? else {
                return Err(ControlError::Refused(format!("no job named `{name}`")));
            };
            let entry = decode::<JobEntry>(&format!("job {name}"), &json).ok();
            if entry.as_ref().is_some_and(|e| e.state == JobState::Running) {
                return Err(ControlError::Refused(format!(
                    "job `{name}` is running; stop it first (`sluice job stop {name}`)"
                )));
            }
            let deleted: i64 = script
                .key(self.keys.ctl_jobs())
                .arg(name)
                .arg(&json)
                .invoke_async(&mut self.conn)
                .await?;
            if deleted == 1 {
                self.notify(&format!("job {name}")).await?;
                return Ok(entry);
            }
        }
        Err(ControlError::Refused(format!(
            "job `{name}` kept changing meanwhile; try again"
        )))
    }
}
