//! Plugin versions in the registry: loading bytes as the current version, listing, rollback,
//! unload; bytes are deleted once no plugin's version list names them.

use std::collections::HashSet;

use redis::AsyncCommands;

use super::{
    ControlError, JobState, MAX_VERSIONS, PluginVersion, Registry, Result, decode, encode,
};
use crate::model::{now_ms, short};

impl Registry {
    /// Store `bytes` (already checked by the caller) as the current version of `name`.
    /// Loading the bytes of the current version again changes nothing (returns false).
    pub async fn load_plugin(
        &mut self,
        name: &str,
        bytes: &[u8],
        sha256: &str,
        origin: &str,
        by: &str,
    ) -> Result<(PluginVersion, bool)> {
        if let Some(current) = self.plugin(name).await?
            && current.sha256 == sha256
        {
            return Ok((current, false));
        }
        let version = PluginVersion {
            sha256: sha256.to_string(),
            size: bytes.len() as u64,
            loaded_at: now_ms(),
            origin: origin.to_string(),
            by: by.to_string(),
        };
        let _: () = self.conn.set(self.keys.ctl_blob(sha256), bytes).await?;
        self.make_current(name, &version).await?;
        Ok((version, true))
    }

    async fn make_current(&mut self, name: &str, version: &PluginVersion) -> Result<()> {
        let json = encode(version);
        let versions = self.keys.ctl_versions(name);
        let dropped: Vec<String> = self.conn.lrange(&versions, MAX_VERSIONS - 1, -1).await?;
        let _: () = redis::pipe()
            .atomic()
            .hset(self.keys.ctl_plugins(), name, &json)
            .lpush(&versions, &json)
            .ltrim(&versions, 0, MAX_VERSIONS - 1)
            .query_async(&mut self.conn)
            .await?;
        for json in dropped {
            if let Ok(v) = decode::<PluginVersion>("version", &json) {
                self.delete_blob_if_unused(&v.sha256).await?;
            }
        }
        self.notify(&format!("plugin {name}")).await
    }

    /// The current version of `name`.
    pub async fn plugin(&mut self, name: &str) -> Result<Option<PluginVersion>> {
        let json: Option<String> = self.conn.hget(self.keys.ctl_plugins(), name).await?;
        json.map(|j| decode(&format!("plugin {name}"), &j))
            .transpose()
    }

    /// The versions of `name`, newest first.
    pub async fn versions(&mut self, name: &str) -> Result<Vec<PluginVersion>> {
        let list: Vec<String> = self
            .conn
            .lrange(self.keys.ctl_versions(name), 0, -1)
            .await?;
        Ok(list
            .iter()
            .filter_map(|j| {
                decode("version", j)
                    .inspect_err(|e| tracing::error!("plugin {name}: {e}"))
                    .ok()
            })
            .collect())
    }

    /// A component's bytes.
    pub async fn blob(&mut self, sha256: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.conn.get(self.keys.ctl_blob(sha256)).await?)
    }

    /// Make an earlier version current again: `to` (a sha256 or a unique prefix of one), or
    /// the newest version older than the current one with different bytes.
    pub async fn rollback(&mut self, name: &str, to: Option<&str>) -> Result<PluginVersion> {
        let current = self
            .plugin(name)
            .await?
            .ok_or_else(|| ControlError::Refused(format!("no plugin named `{name}`")))?;
        let versions = self.versions(name).await?;
        let target = match to {
            Some(prefix) => {
                let matching: Vec<&PluginVersion> = versions
                    .iter()
                    .filter(|v| v.sha256.starts_with(prefix))
                    .collect();
                let distinct: HashSet<&str> = matching.iter().map(|v| v.sha256.as_str()).collect();
                match distinct.len() {
                    0 => {
                        return Err(ControlError::Refused(format!(
                            "plugin `{name}` has no version {prefix}"
                        )));
                    }
                    1 => matching[0].clone(),
                    _ => {
                        return Err(ControlError::Refused(format!(
                            "{prefix} names several versions of `{name}`; give more of the sha256"
                        )));
                    }
                }
            }
            None => versions
                .iter()
                .find(|v| v.sha256 != current.sha256)
                .cloned()
                .ok_or_else(|| {
                    ControlError::Refused(format!("plugin `{name}` has no earlier version"))
                })?,
        };
        if target.sha256 == current.sha256 {
            return Err(ControlError::Refused(format!(
                "{} is already the current version of `{name}`",
                short(&target.sha256)
            )));
        }
        if self.blob(&target.sha256).await?.is_none() {
            return Err(ControlError::Refused(format!(
                "the bytes of {} are gone from Redis; load the file again",
                short(&target.sha256)
            )));
        }
        let version = PluginVersion {
            loaded_at: now_ms(),
            ..target
        };
        self.make_current(name, &version).await?;
        Ok(version)
    }

    /// Remove a plugin. Refused while a running job uses it, unless `force`, which stops
    /// those jobs first; returns the jobs stopped.
    pub async fn unload(&mut self, name: &str, force: bool) -> Result<Vec<String>> {
        if self.plugin(name).await?.is_none() {
            return Err(ControlError::Refused(format!("no plugin named `{name}`")));
        }
        let snapshot = self.snapshot().await?;
        let users: Vec<String> = snapshot
            .jobs
            .iter()
            .filter(|(_, j)| j.spec.plugin == name && j.state == JobState::Running)
            .map(|(n, _)| n.clone())
            .collect();
        if !users.is_empty() && !force {
            return Err(ControlError::Refused(format!(
                "plugin `{name}` is used by running jobs: {}; stop them first or use --force",
                users.join(", ")
            )));
        }
        for job in &users {
            self.set_job_state(job, JobState::Stopped).await?;
        }
        let versions = self.versions(name).await?;
        let _: () = redis::pipe()
            .atomic()
            .hdel(self.keys.ctl_plugins(), name)
            .del(self.keys.ctl_versions(name))
            .query_async(&mut self.conn)
            .await?;
        for v in versions {
            self.delete_blob_if_unused(&v.sha256).await?;
        }
        self.notify(&format!("plugin {name}")).await?;
        Ok(users)
    }

    async fn delete_blob_if_unused(&mut self, sha256: &str) -> Result<()> {
        let names: Vec<String> = self.conn.hkeys(self.keys.ctl_plugins()).await?;
        for name in names {
            let list: Vec<String> = self
                .conn
                .lrange(self.keys.ctl_versions(&name), 0, -1)
                .await?;
            if list.iter().any(|j| j.contains(sha256)) {
                return Ok(());
            }
        }
        let _: () = self.conn.del(self.keys.ctl_blob(sha256)).await?;
        Ok(())
    }
}
